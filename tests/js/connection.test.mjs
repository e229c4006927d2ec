// A socket is usable from the moment it is connected: an event emitted in the client's
// `connect` handler is answered (contract, Socket.IO: "Every client→server event takes an
// acknowledgement callback and answers ..."). socketioxide acknowledges the connect before it
// runs an async connect handler, so handlers registered there can miss an event emitted at once
// (fixed in 610b78e by setting the socket up in the connect middleware); this guards against
// that coming back. PARLEY_JS_CONNECT_SOCKETS raises the number of sockets for a stress run.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { EVENT_TIMEOUT_MS, startStack, withTimeout } from "./harness.mjs";

/** Sockets opened at once; each emits `conversation:list` from its `connect` handler. */
const SOCKETS = Number(process.env.PARLEY_JS_CONNECT_SOCKETS ?? 40);

let stack;
before(async () => {
  // One user opens all the sockets: the race is the point here, not the per-user cap.
  stack = await startStack({ gatewayEnv: { PARLEY_MAX_SOCKETS_PER_USER: String(SOCKETS) } });
});
after(async () => {
  await stack?.stop();
});


describe("events emitted as soon as the socket is connected", () => {
  for (const [label, transports] of [
    ['transports: ["websocket"]', ["websocket"]],
    ["the default transports (polling, then upgrade)", undefined],
  ]) {
    test(`are all acknowledged, with ${label}`, async () => {
      const { client } = await stack.startProject({ title: "Connect race" });
      const outcomes = await Promise.all(
        Array.from({ length: SOCKETS }, (_, i) => {
          const options = { auth: { token: client.token } };
          if (transports) options.transports = transports;
          const socket = stack.rawSocket(options);
          const answered = new Promise((resolve, reject) => {
            socket.once("connect_error", reject);
            socket.once("connect", () => {
              // What a real client does: ask for its conversations the moment it is connected.
              socket.emit("conversation:list", {}, resolve);
            });
          });
          return withTimeout(answered, EVENT_TIMEOUT_MS, `socket ${i}: ack of conversation:list emitted on connect`).then(
            (ack) => ({ ack }),
            (error) => ({ error: error.message }),
          );
        }),
      );
      const unanswered = outcomes.filter((o) => o.error);
      assert.deepEqual(unanswered, [], `${unanswered.length} of ${SOCKETS} sockets got no answer to an event emitted on connect`);
      for (const { ack } of outcomes) {
        assert.equal(ack.ok, true, JSON.stringify(ack));
        assert.equal(ack.conversations.length, 1);
      }
    });
  }
});
