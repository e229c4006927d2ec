// Limits as the official socket.io-client sees them (contract: Identity, Limits): the socket cap's
// connect_error, a rate-limited ack's retryAfterMs, and the server's disconnect when a token's
// exp passes.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { EVENT_TIMEOUT_MS, request, signJwt, startStack, withTimeout } from "./harness.mjs";

let stack;
before(async () => {
  // The contract's defaults, but for the socket cap, kept small to stay quick.
  stack = await startStack({ gatewayEnv: { PARLEY_MAX_SOCKETS_PER_USER: "3" } });
});
after(async () => {
  await stack?.stop();
});

const now = () => Math.floor(Date.now() / 1000);

describe("limits", () => {
  test('a socket over the per-user cap gets connect_error "too_many_connections"', async () => {
    const user = await stack.user("Capped");
    for (let i = 0; i < 3; i++) await stack.connect(user.token, { transports: ["websocket"] });
    const outcome = await stack.connectError({ auth: { token: user.token }, transports: ["websocket"] });
    assert.ok(!outcome.connected, "a fourth socket was accepted");
    assert.equal(outcome.error.message, "too_many_connections");
  });

  test("sends past the burst are refused with rate_limited and retryAfterMs", async () => {
    const { conversationId, client } = await stack.startProject({ title: "Burst" });
    const socket = await stack.connect(client.token, { transports: ["websocket"] });
    const acks = await Promise.all(
      Array.from({ length: 40 }, (_, i) => request(socket, "message:send", { conversationId, body: `burst ${i}` })),
    );
    const accepted = acks.filter((ack) => ack.ok);
    const refused = acks.filter((ack) => !ack.ok);
    assert.ok(accepted.length >= 20 && accepted.length < 40, `${accepted.length} of 40 accepted`);
    for (const ack of refused) {
      assert.equal(ack.error.code, "rate_limited", JSON.stringify(ack));
      assert.ok(Number.isInteger(ack.error.retryAfterMs) && ack.error.retryAfterMs > 0, JSON.stringify(ack));
    }
  });

  test("a socket is disconnected by the server when its token's exp passes", async () => {
    const user = await stack.user("Brief");
    const exp = now() + 2;
    const token = signJwt({ sub: user.id, exp }, stack.secret);
    const socket = await stack.connect(token, { transports: ["websocket"] });
    const reason = await withTimeout(
      new Promise((resolve) => socket.once("disconnect", resolve)),
      EVENT_TIMEOUT_MS,
      "the disconnect at exp",
    );
    assert.equal(reason, "io server disconnect");
    assert.ok(Date.now() >= exp * 1000, "disconnected before exp");
  });
});
