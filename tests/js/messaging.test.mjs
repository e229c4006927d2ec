// message:send over Socket.IO: acknowledgement, live fan-out to every socket of both
// participants (and nobody else), validation, and not_found for strangers
// (contract: Objects, Rules for every write, Socket.IO).

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { isRfc3339Utc, isUuid, pollUntil, request, startStack, waitForMessage } from "./harness.mjs";

let stack;
before(async () => {
  stack = await startStack();
});
after(async () => {
  await stack?.stop();
});

const MESSAGE_KEYS = ["body", "clientMsgId", "conversationId", "createdAt", "id", "projectId", "senderId", "seq"];

/** Asserts that `ack` is `{ok: true, message}` for a send of `body` by `sender` in `project`. */
function assertSendAck(ack, { project, sender, body, clientMsgId = null }) {
  assert.deepEqual(Object.keys(ack ?? {}).sort(), ["message", "ok"], `ack: ${JSON.stringify(ack)}`);
  assert.equal(ack.ok, true);
  const { message } = ack;
  assert.deepEqual(Object.keys(message).sort(), MESSAGE_KEYS, `message: ${JSON.stringify(message)}`);
  assert.ok(isUuid(message.id), `id ${message.id}`);
  assert.equal(message.conversationId, project.conversationId);
  assert.equal(message.projectId, project.projectId);
  assert.equal(message.senderId, sender.id);
  assert.equal(message.body, body);
  assert.ok(Number.isSafeInteger(message.seq) && message.seq > 0, `seq ${message.seq}`);
  assert.ok(isRfc3339Utc(message.createdAt), `createdAt ${message.createdAt}`);
  assert.ok(Math.abs(Date.parse(message.createdAt) - Date.now()) < 60_000, `createdAt ${message.createdAt} is not now`);
  assert.equal(message.clientMsgId, clientMsgId);
}

/** Asserts that `ack` is `{ok: false, error: {code, message}}`. */
function assertRefused(ack, code, context) {
  assert.deepEqual(Object.keys(ack ?? {}).sort(), ["error", "ok"], `${context}: ack ${JSON.stringify(ack)}`);
  assert.equal(ack.ok, false, context);
  assert.deepEqual(Object.keys(ack.error).sort(), ["code", "message"], `${context}: ${JSON.stringify(ack.error)}`);
  assert.equal(ack.error.code, code, `${context}: ${JSON.stringify(ack.error)}`);
  assert.equal(typeof ack.error.message, "string", context);
}

const inConversation = (socket, conversationId) => socket.received.filter((m) => m.conversationId === conversationId);

const SENDER_TRANSPORTS = [
  ["the default transports (polling, then upgrade)", "clientDefault"],
  ['transports: ["websocket"]', "clientWs"],
];

describe("message:send fan-out", () => {
  for (const [label, senderKey] of SENDER_TRANSPORTS) {
    test(`sent over ${label}: ack, then message:new exactly once on every socket of both participants, none for a stranger`, async () => {
      const project = await stack.startProject({ title: `Fan-out over ${senderKey}` });
      const { conversationId, client, provider } = project;
      const stranger = await stack.user("Stan");
      // The stranger shares another conversation with the client: its messages are the
      // stranger's barrier (one ordered stream feeds fan-out).
      const side = await stack.startProject({ title: "Side project", client, provider: stranger });

      const sockets = {
        clientDefault: await stack.connect(client.token),
        clientWs: await stack.connect(client.token, { transports: ["websocket"] }),
        providerDefault: await stack.connect(provider.token),
        providerWs: await stack.connect(provider.token, { transports: ["websocket"] }),
        providerPolling: await stack.connect(provider.token, { transports: ["polling"] }),
      };
      const strangerSocket = await stack.connect(stranger.token, { transports: ["websocket"] });
      assert.equal(sockets.clientDefault.io.engine.transport.name, "websocket", "default transports did not upgrade");
      assert.equal(sockets.providerPolling.io.engine.transport.name, "polling");

      const sender = sockets[senderKey];
      const body = `Hello over ${senderKey}, ünïcødé ✓ ${randomUUID()}`;
      const ack = await request(sender, "message:send", { conversationId, body });
      assertSendAck(ack, { project, sender: client, body });

      // Barriers: a later message in the same conversation for the participants, and one in the
      // side conversation for the stranger. Whatever the first send fanned out has arrived by then.
      const barrier = await request(sender, "message:send", { conversationId, body: "barrier" });
      assertSendAck(barrier, { project, sender: client, body: "barrier" });
      assert.ok(barrier.message.seq > ack.message.seq, "seq does not increase");
      const sideBarrier = await request(sockets.clientWs, "message:send", {
        conversationId: side.conversationId,
        body: "side barrier",
      });
      assert.equal(sideBarrier.ok, true, JSON.stringify(sideBarrier));

      await Promise.all(
        Object.entries(sockets).map(([name, socket]) =>
          waitForMessage(socket, (m) => m.id === barrier.message.id, `barrier message:new on ${name}`),
        ),
      );
      await waitForMessage(strangerSocket, (m) => m.id === sideBarrier.message.id, "side barrier on the stranger's socket");

      for (const [name, socket] of Object.entries(sockets)) {
        assert.deepEqual(
          inConversation(socket, conversationId),
          [ack.message, barrier.message],
          `message:new events on ${name} (each exactly once, payload equal to the ack's message)`,
        );
        assert.deepEqual(socket.disconnects, [], `${name} was disconnected`);
      }
      assert.deepEqual(strangerSocket.received, [sideBarrier.message], "the stranger received another conversation's message");
    });
  }
});

describe("message:send validation", () => {
  test("invalid sends are refused with the contract's code, deliver and store nothing, and leave the socket usable", async () => {
    const project = await stack.startProject({ title: "Validation" });
    const { conversationId, client, provider } = project;
    const socket = await stack.connect(client.token, { transports: ["websocket"] });
    const observer = await stack.connect(provider.token, { transports: ["websocket"] });

    const invalid = [
      ["an empty body", [{ conversationId, body: "" }], "invalid_message"],
      ["a 5001-character body", [{ conversationId, body: "a".repeat(5001) }], "invalid_message"],
      ["a 5001-scalar-value body of astral characters", [{ conversationId, body: "😀".repeat(5001) }], "invalid_message"],
      ["a blank body", [{ conversationId, body: " \t\r\n  " }], "invalid_message"],
      ["a body with a control character", [{ conversationId, body: "ding\u0007" }], "invalid_message"],
      ["a numeric body", [{ conversationId, body: 42 }], "invalid_message"],
      ["an array body", [{ conversationId, body: ["hi"] }], "invalid_message"],
      ["a null body", [{ conversationId, body: null }], "invalid_message"],
      ["a missing body", [{ conversationId }], "invalid_message"],
      ["a malformed conversationId", [{ conversationId: "not-a-uuid", body: "hi" }], "invalid_request"],
      ["a numeric conversationId", [{ conversationId: 12345, body: "hi" }], "invalid_request"],
      ["a missing conversationId", [{ body: "hi" }], "invalid_request"],
      ["a string payload", ["hello"], "invalid_request"],
      ["a numeric payload", [42], "invalid_request"],
      ["an array payload", [[conversationId, "hi"]], "invalid_request"],
      ["no payload", [], "invalid_request"],
    ];
    for (const [label, payload, code] of invalid) {
      const ack = await request(socket, "message:send", ...payload);
      assertRefused(ack, code, label);
      assert.ok(socket.connected, `the socket disconnected after ${label}`);
    }

    // Valid sends still work on the same socket, at the edges of what is allowed.
    const valid = [
      "after the refusals",
      "a".repeat(5000),
      "😀".repeat(5000), // 5000 Unicode scalar values (10000 UTF-16 code units)
      "tab\tnewline\ncarriage return\r\nok",
    ];
    const accepted = [];
    for (const body of valid) {
      const ack = await request(socket, "message:send", { conversationId, body });
      assertSendAck(ack, { project, sender: client, body: body });
      accepted.push(ack.message);
    }
    assert.deepEqual(socket.disconnects, []);

    // Nothing of the refused sends was delivered...
    const last = accepted.at(-1);
    await waitForMessage(observer, (m) => m.id === last.id, "the last valid message on the provider's socket");
    assert.deepEqual(inConversation(observer, conversationId), accepted, "delivered messages");
    // ...or stored.
    const history = await pollUntil(
      async () => {
        const ack = await request(socket, "conversation:history", { conversationId, limit: 50 });
        return ack.ok && ack.messages.some((m) => m.id === last.id) ? ack : null;
      },
      { label: "the last valid message in history" },
    );
    assert.deepEqual(history.messages, accepted, "stored messages");
  });
});

describe("strangers", () => {
  test("a valid user who is not a participant gets not_found for send and history, like for a conversation that does not exist", async () => {
    const project = await stack.startProject({ title: "Private" });
    const { conversationId, client, provider } = project;
    const stranger = await stack.user("Stan");
    const strangerSocket = await stack.connect(stranger.token, { transports: ["websocket"] });
    const providerSocket = await stack.connect(provider.token, { transports: ["websocket"] });
    const missing = randomUUID();

    const send = await request(strangerSocket, "message:send", { conversationId, body: "let me in" });
    assertRefused(send, "not_found", "stranger's message:send");
    const sendMissing = await request(strangerSocket, "message:send", { conversationId: missing, body: "let me in" });
    assertRefused(sendMissing, "not_found", "message:send to a conversation that does not exist");
    assert.deepEqual(send, sendMissing, "the refusal hints that the conversation exists");

    const history = await request(strangerSocket, "conversation:history", { conversationId, limit: 10 });
    assertRefused(history, "not_found", "stranger's conversation:history");
    const historyMissing = await request(strangerSocket, "conversation:history", { conversationId: missing, limit: 10 });
    assertRefused(historyMissing, "not_found", "conversation:history of a conversation that does not exist");
    assert.deepEqual(history, historyMissing, "the refusal hints that the conversation exists");

    const list = await request(strangerSocket, "conversation:list", {});
    assert.deepEqual(list, { ok: true, conversations: [] });

    // The stranger's attempt delivered and stored nothing: the next message is the first one.
    const clientSocket = await stack.connect(client.token, { transports: ["websocket"] });
    const first = await request(clientSocket, "message:send", { conversationId, body: "first" });
    assert.equal(first.ok, true, JSON.stringify(first));
    await waitForMessage(providerSocket, (m) => m.id === first.message.id, "the client's message on the provider's socket");
    assert.deepEqual(inConversation(providerSocket, conversationId), [first.message]);
    const stored = await pollUntil(
      async () => {
        const ack = await request(clientSocket, "conversation:history", { conversationId, limit: 50 });
        return ack.ok && ack.messages.length > 0 ? ack : null;
      },
      { label: "the client's message in history" },
    );
    assert.deepEqual(stored.messages, [first.message]);
    assert.deepEqual(strangerSocket.received, []);
  });
});
