// `rate_limited` is waited out: past a small send burst, every send still resolves, once and in
// the order made, and it takes the time the gateway's rate asks for.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { client, closeAll, received, startStack } from "./helpers.mjs";

let stack;
before(async () => {
  stack = await startStack({ gatewayEnv: { PARLEY_SEND_RATE: "2", PARLEY_SEND_BURST: "2" } });
});
after(async () => {
  closeAll();
  await stack?.stop();
});

test("sends past the burst wait the server's retryAfterMs and are all stored once, in order", async () => {
  const { conversationId, client: alice } = await stack.startProject({ title: "Rate" });
  const a = client(stack, alice.token);
  await a.connect();
  await a.open(conversationId);
  const started = Date.now();
  const bodies = ["one", "two", "three", "four", "five", "six"];
  const sent = await Promise.all(bodies.map((body) => a.send(conversationId, body)));
  const elapsed = Date.now() - started;
  // A burst of 2, then 2 per second: the last 4 need at least about 1.5 s.
  assert.ok(elapsed >= 1_400, `took ${elapsed} ms: the limit was not in force?`);
  assert.deepEqual(sent.map((m) => m.body), bodies);
  sent.forEach((m, i) => i === 0 || assert.ok(m.seq > sent[i - 1].seq));
  await received(a, (m) => m.id === sent.at(-1).id);
  assert.deepEqual(a.received.map((m) => m.body), bodies);
  assert.deepEqual(a.outbox(), []);
});
