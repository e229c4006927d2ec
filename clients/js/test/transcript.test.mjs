// verifyTranscript against a real export, with WebCrypto and with Node's crypto: a genuine export
// verifies; a changed body, a removed or reordered entry, a bad signature and an untrusted key are
// refused, naming the entry; a witness kept earlier must be a prefix.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { verifyTranscript } from "../dist/index.js";
import { client, closeAll, pollUntil, unlimitedStack } from "./helpers.mjs";

let stack;
let exported;
let keys;
let witness;

before(async () => {
  stack = await unlimitedStack();
  const { conversationId, client: alice, provider: bob } = await stack.startProject({ title: "Audit ✓" });
  const a = client(stack, alice.token);
  const b = client(stack, bob.token);
  await Promise.all([a.connect(), b.connect()]);
  await a.open(conversationId);
  await a.send(conversationId, "Deadline: the 3rd.\nÜnïcödé ✓");
  const reply = await b.send(conversationId, "Agreed");
  await b.markRead(conversationId);
  witness = await pollUntil(
    async () => {
      const { transcript } = (await stack.http("GET", `/v1/conversations/${conversationId}`, { token: alice.token })).body;
      return transcript.size >= 4 ? transcript : null;
    },
    { label: "transcript to hold started, two messages and a read" },
  );
  await a.send(conversationId, "Files delivered");
  await pollUntil(
    async () =>
      (await stack.http("GET", `/v1/conversations/${conversationId}`, { token: alice.token })).body.transcript.size >= 5,
    { label: "transcript to hold the last message" },
  );
  exported = (await stack.http("GET", `/v1/conversations/${conversationId}/transcript`, { token: bob.token })).body;
  keys = (await stack.http("GET", "/v1/transcript-keys")).body;
  assert.ok(exported.entries.some((e) => e.kind === "message" && e.id === reply.id));
});
after(async () => {
  closeAll();
  await stack?.stop();
});

const copy = (value) => structuredClone(value);

for (const backend of ["webcrypto", "node"]) {
  describe(`verifyTranscript (${backend})`, () => {
    const verify = (exp, k = keys, options = {}) => verifyTranscript(exp, k, { crypto: backend, ...options });

    test("a genuine export verifies, with the key list or bare base64 keys, and extends a witness", async () => {
      const result = await verify(exported);
      assert.deepEqual(result, {
        ok: true,
        size: exported.entries.length,
        head: exported.checkpoint.head,
        keyId: exported.checkpoint.keyId,
        signedAt: exported.checkpoint.signedAt,
      });
      assert.equal((await verify(exported, keys.keys.map((k) => k.publicKey))).ok, true);
      assert.equal((await verify(exported, keys, { witness })).ok, true);
    });

    test("a changed body is refused, naming its entry", async () => {
      const bad = copy(exported);
      const i = bad.entries.findIndex((e) => e.kind === "message");
      bad.entries[i].body += "!";
      assert.deepEqual(await verify(bad), { ok: false, entry: i, reason: "hash does not match its content and the entries before it" });
    });

    test("a removed, a reordered or an extra entry is refused", async () => {
      const removed = copy(exported);
      removed.entries.splice(2, 1);
      assert.equal((await verify(removed)).entry, 2);
      const swapped = copy(exported);
      [swapped.entries[1], swapped.entries[2]] = [swapped.entries[2], swapped.entries[1]];
      assert.equal((await verify(swapped)).entry, 1);
      const cut = copy(exported);
      cut.entries.pop();
      const result = await verify(cut);
      assert.equal(result.ok, false);
    });

    test("a bad signature, an untrusted key, and a witness the export does not extend are refused", async () => {
      const forged = copy(exported);
      forged.checkpoint.signedAt = "2000-01-01T00:00:00Z";
      assert.deepEqual(await verify(forged), { ok: false, entry: null, reason: "checkpoint signature does not verify" });
      const other = Buffer.alloc(32, 7).toString("base64");
      const untrusted = await verify(exported, [other]);
      assert.equal(untrusted.ok, false);
      assert.match(untrusted.reason, /not trusted/);
      const wrong = await verify(exported, keys, { witness: { size: witness.size, head: "00".repeat(32) } });
      assert.deepEqual(wrong, { ok: false, entry: witness.size - 1, reason: "differs from the witnessed transcript" });
    });
  });
}
