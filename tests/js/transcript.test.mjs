// Verifiable transcripts (contract, "Transcripts"), checked from outside: an export is verified
// by an independent verifier written here from the contract's text alone (Node's crypto: SHA-256
// and Ed25519, nothing of Parley's), and by `parley transcript verify`. Every kind of tampering
// with an export is rejected by both, naming the entry; a row altered in Postgres is named by
// `parley transcript check`; an earlier checkpoint is a verified prefix of a later export.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";

import { pollUntil, startStack } from "./harness.mjs";

const execFileP = promisify(execFile);
const cli = () => path.join(process.env.PARLEY_BIN_DIR, "parley");

// ------------------------------------------------------------------- the independent verifier

/** Each kind's fields, in order (contract, "Transcripts"). */
const FIELDS = {
  started: ["conversationId", "projectId", "projectTitle", "clientId", "clientName", "providerId", "providerName", "at"],
  message: ["seq", "id", "senderId", "body", "createdAt", "clientMsgId"],
  read: ["userId", "seq", "at"],
  closed: ["at"],
};

/** enc(s): 4-byte big-endian length of the UTF-8 bytes, then the bytes; enc(null) = FF FF FF FF. */
function enc(s) {
  if (s === null) return Buffer.from([0xff, 0xff, 0xff, 0xff]);
  const bytes = Buffer.from(s, "utf8");
  const length = Buffer.alloc(4);
  length.writeUInt32BE(bytes.length);
  return Buffer.concat([length, bytes]);
}

/** The raw 32-byte public key's id: the first 16 hex digits of its SHA-256. */
const keyIdOf = (raw) => createHash("sha256").update(raw).digest("hex").slice(0, 16);

/** A public KeyObject from the raw 32 bytes. */
const publicKeyOf = (raw) =>
  createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: raw.toString("base64url") }, format: "jwk" });

/**
 * `{ok: true, size, head}` or `{ok: false, entry, why}` (`entry` null when it is the checkpoint).
 * `trusted`: raw public keys.
 */
function independentVerify(exported, trusted) {
  let previous = Buffer.alloc(32);
  const entries = exported.entries;
  for (let i = 0; i < entries.length; i++) {
    const entry = entries[i];
    if (entry.n !== i) return { ok: false, entry: i, why: "order" };
    const names = FIELDS[entry.kind];
    if (!names) return { ok: false, entry: i, why: "kind" };
    const parts = [previous, enc(entry.kind)];
    for (const name of names) {
      if (!(name in entry)) return { ok: false, entry: i, why: "missing field" };
      const value = entry[name];
      if (name === "seq") {
        if (!Number.isInteger(value)) return { ok: false, entry: i, why: "missing field" };
        parts.push(enc(String(value)));
      } else if (value === null || typeof value === "string") {
        parts.push(enc(value));
      } else {
        return { ok: false, entry: i, why: "missing field" };
      }
    }
    const hash = createHash("sha256").update(Buffer.concat(parts)).digest();
    if (hash.toString("hex") !== entry.hash) return { ok: false, entry: i, why: "hash" };
    previous = hash;
  }
  const checkpoint = exported.checkpoint;
  if (checkpoint.conversationId !== exported.conversationId) return { ok: false, entry: null, why: "conversation" };
  if (checkpoint.size !== entries.length) {
    return { ok: false, entry: Math.min(checkpoint.size, entries.length), why: "size" };
  }
  if (checkpoint.head !== previous.toString("hex")) return { ok: false, entry: entries.length - 1, why: "head" };
  const raw = trusted.find((key) => keyIdOf(key) === checkpoint.keyId);
  if (!raw) return { ok: false, entry: null, why: "unknown key" };
  const text = `parley-transcript/1\n${checkpoint.conversationId}\n${checkpoint.size}\n${checkpoint.head}\n${checkpoint.signedAt}\n`;
  const good = verify(null, Buffer.from(text, "utf8"), publicKeyOf(raw), Buffer.from(checkpoint.signature, "base64"));
  if (!good) return { ok: false, entry: null, why: "signature" };
  return { ok: true, size: checkpoint.size, head: checkpoint.head };
}

/** The raw public key of a base64 Ed25519 seed (PKCS#8 wraps the seed after a fixed prefix). */
function publicKeyOfSeed(seedBase64) {
  const pkcs8 = Buffer.concat([Buffer.from("302e020100300506032b657004220420", "hex"), Buffer.from(seedBase64, "base64")]);
  const jwk = createPublicKey(createPrivateKey({ key: pkcs8, format: "der", type: "pkcs8" })).export({ format: "jwk" });
  return Buffer.from(jwk.x, "base64url");
}

// ------------------------------------------------------------------------------------ setup

let stack;
let tmp;
let fixture;
let trusted;
let exportText;
let exported;
let earlier;

async function transcriptSize(token, conversationId) {
  const { body } = await stack.http("GET", `/v1/conversations/${conversationId}`, { token });
  return body.transcript.size;
}

async function send(token, conversationId, body, clientMsgId) {
  const { status } = await stack.http("POST", `/v1/conversations/${conversationId}/messages`, {
    token,
    body: clientMsgId ? { body, clientMsgId } : { body },
  });
  assert.equal(status, 201);
}

async function waitForSize(token, conversationId, size) {
  await pollUntil(async () => (await transcriptSize(token, conversationId)) === size, {
    label: `transcript of ${conversationId} to reach ${size} entries`,
  });
}

before(async () => {
  stack = await startStack();
  tmp = await mkdtemp(path.join(os.tmpdir(), "parley-transcript-"));
  trusted = [publicKeyOfSeed(stack.transcriptKey)];
  fixture = await stack.startProject({ title: "Logo — final files" });
  const { conversationId, client, provider } = fixture;
  await send(client.token, conversationId, "The deadline moves to the 3rd.");
  await send(provider.token, conversationId, "Agreed: delivery on the 3rd.\nÜnïcödé ✓", "ack-1");
  await send(client.token, conversationId, "\ttabs and \"quotes\"");
  await waitForSize(client.token, conversationId, 4);
  const read = await stack.http("POST", `/v1/conversations/${conversationId}/read`, { token: provider.token });
  assert.equal(read.status, 200);
  await waitForSize(client.token, conversationId, 5);
  earlier = (await stack.http("GET", `/v1/conversations/${conversationId}/checkpoint`, { token: provider.token })).body
    .checkpoint;
  await send(provider.token, conversationId, "Delivered.");
  await send(client.token, conversationId, "Received, thanks.");
  await waitForSize(client.token, conversationId, 7);
  const response = await fetch(`${stack.url}/v1/conversations/${conversationId}/transcript`, {
    headers: { authorization: `Bearer ${client.token}` },
  });
  assert.equal(response.status, 200);
  exportText = await response.text();
  exported = JSON.parse(exportText);
});

after(async () => {
  await stack?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

/** `parley transcript verify` on `exported` (written to a file): `{code, stdout, stderr}`. */
async function cliVerify(exportedValue, extraArgs = ["--public-key", trusted[0].toString("base64")]) {
  const file = path.join(tmp, `export-${Math.random().toString(16).slice(2)}.json`);
  await writeFile(file, typeof exportedValue === "string" ? exportedValue : JSON.stringify(exportedValue));
  try {
    const { stdout, stderr } = await execFileP(cli(), ["transcript", "verify", file, ...extraArgs], {
      env: { PATH: process.env.PATH },
    });
    return { code: 0, stdout, stderr };
  } catch (error) {
    return { code: error.code, stdout: error.stdout, stderr: error.stderr };
  }
}

// ------------------------------------------------------------------------------------ tests

describe("a transcript export", () => {
  test("verifies with an independent verifier and with parley transcript verify", async () => {
    assert.equal(exported.format, "parley-transcript/1");
    assert.deepEqual(
      exported.entries.map((e) => e.kind),
      ["started", "message", "message", "message", "read", "message", "message"],
    );
    const outcome = independentVerify(exported, trusted);
    assert.deepEqual(outcome, { ok: true, size: 7, head: exported.entries[6].hash });
    const message = exported.entries.find((e) => e.clientMsgId === "ack-1");
    assert.equal(message.body, "Agreed: delivery on the 3rd.\nÜnïcödé ✓");
    assert.equal(typeof message.seq, "number");
    assert.equal(exported.entries[1].clientMsgId, null);

    const { code, stdout } = await cliVerify(exportText);
    assert.equal(code, 0);
    assert.match(stdout, new RegExp(`7 entries, head ${exported.checkpoint.head}, key ${keyIdOf(trusted[0])}`));
  });

  test("exports the same bytes twice, and the Conversation object carries the same size and head", async () => {
    const { conversationId, provider } = fixture;
    const again = await fetch(`${stack.url}/v1/conversations/${conversationId}/transcript`, {
      headers: { authorization: `Bearer ${provider.token}` },
    });
    const text = await again.text();
    // The checkpoint is signed at each export; the entries must be byte for byte the same.
    const entriesOf = (t) => t.slice(0, t.indexOf(',"checkpoint":'));
    assert.equal(entriesOf(text), entriesOf(exportText));
    const { body } = await stack.http("GET", `/v1/conversations/${conversationId}`, { token: provider.token });
    assert.deepEqual(body.transcript, { size: 7, head: exported.checkpoint.head });
    const list = await stack.http("GET", "/v1/conversations", { token: provider.token });
    assert.deepEqual(list.body.conversations[0].transcript, body.transcript);
  });

  test("reveals no email address", () => {
    assert.ok(!exportText.includes(fixture.client.email));
    assert.ok(!exportText.includes(fixture.provider.email));
    assert.ok(!exportText.includes("@"));
  });

  test("holds an earlier checkpoint as a verified prefix", () => {
    assert.equal(earlier.size, 5);
    const prefix = {
      format: exported.format,
      conversationId: exported.conversationId,
      entries: exported.entries.slice(0, earlier.size),
      checkpoint: earlier,
    };
    assert.deepEqual(independentVerify(prefix, trusted), { ok: true, size: 5, head: earlier.head });
  });

  test("and its keys are listed for anyone; the export and checkpoint only for the participants", async () => {
    const keys = await stack.http("GET", "/v1/transcript-keys");
    assert.equal(keys.status, 200);
    assert.deepEqual(keys.body.keys, [
      { keyId: keyIdOf(trusted[0]), algorithm: "ed25519", publicKey: trusted[0].toString("base64"), current: true },
    ]);
    const stranger = await stack.user("Mallory");
    for (const route of ["transcript", "checkpoint"]) {
      const refused = await stack.http("GET", `/v1/conversations/${fixture.conversationId}/${route}`, {
        token: stranger.token,
      });
      assert.equal(refused.status, 404);
      assert.equal(refused.body.error.code, "not_found");
      const anonymous = await stack.http("GET", `/v1/conversations/${fixture.conversationId}/${route}`);
      assert.equal(anonymous.status, 401);
    }
  });
});

describe("a tampered export is rejected by both verifiers, naming the entry", () => {
  const clone = () => structuredClone(exported);
  const other = generateKeyPairSync("ed25519");
  const otherRaw = Buffer.from(other.publicKey.export({ format: "jwk" }).x, "base64url");
  const resign = (e, keyId) => {
    const c = e.checkpoint;
    const text = `parley-transcript/1\n${c.conversationId}\n${c.size}\n${c.head}\n${c.signedAt}\n`;
    c.signature = sign(null, Buffer.from(text, "utf8"), other.privateKey).toString("base64");
    c.keyId = keyId;
    return e;
  };
  const cases = [
    ["a body", (e) => ((e.entries[2].body = "Delivery on the 5th."), e), 2, /entry 2: hash/],
    ["a sender", (e) => ((e.entries[1].senderId = fixture.provider.id), e), 1, /entry 1: hash/],
    ["a time", (e) => ((e.entries[3].createdAt = "2020-01-01T00:00:00.000Z"), e), 3, /entry 3: hash/],
    ["a seq", (e) => ((e.entries[5].seq += 1), e), 5, /entry 5: hash/],
    ["a removed entry", (e) => (e.entries.splice(2, 1), e), 2, /entry 2: order/],
    ["an inserted entry", (e) => (e.entries.splice(3, 0, { ...e.entries[2], body: "extra" }), e), 3, /entry 3: order/],
    ["a duplicated entry", (e) => (e.entries.splice(4, 0, structuredClone(e.entries[3])), e), 4, /entry 4: order/],
    ["swapped entries", (e) => ([e.entries[5], e.entries[6]] = [e.entries[6], e.entries[5]], e), 5, /entry 5: order/],
    ["a truncated export", (e) => (e.entries.pop(), e), 6, /entry 6: missing/],
    ["a missing field", (e) => (delete e.entries[4].userId, e), 4, /entry 4: missing field/],
    ["a re-signature with another key", (e) => resign(e, keyIdOf(otherRaw)), null, /unknown key/],
    ["another key's signature under the real key id", (e) => resign(e, e.checkpoint.keyId), null, /signature/],
  ];
  for (const [what, tamper, entry, cliMessage] of cases) {
    test(what, async () => {
      const tampered = tamper(clone());
      const outcome = independentVerify(tampered, trusted);
      assert.equal(outcome.ok, false, `${what}: the independent verifier accepted it`);
      assert.equal(outcome.entry, entry, JSON.stringify(outcome));
      const { code, stderr } = await cliVerify(tampered);
      assert.notEqual(code, 0, `${what}: parley transcript verify accepted it`);
      assert.match(stderr, cliMessage);
    });
  }
});

describe("parley transcript check", () => {
  test("names a conversation whose stored message was altered in Postgres", async () => {
    const project = await stack.startProject({ title: "Tampered later" });
    await send(project.client.token, project.conversationId, "I will pay 500.");
    await send(project.client.token, project.conversationId, "Starting now.");
    await waitForSize(project.client.token, project.conversationId, 3);
    const run = async (args) => {
      try {
        const { stdout } = await execFileP(cli(), ["transcript", "check", ...args], {
          env: { PATH: process.env.PATH, DATABASE_URL: stack.databaseUrl },
        });
        return { code: 0, stdout };
      } catch (error) {
        return { code: error.code, stdout: error.stdout, stderr: error.stderr };
      }
    };
    assert.equal((await run(["--all"])).code, 0);
    await execFileP("psql", [
      stack.databaseUrl,
      "-v",
      "ON_ERROR_STOP=1",
      "-q",
      "-c",
      `UPDATE messages SET body = 'I will pay 50.' WHERE conversation_id = '${project.conversationId}' AND chain_n = 1`,
    ]);
    for (const args of [["--conversation-id", project.conversationId], ["--all"]]) {
      const { code, stdout, stderr } = await run(args);
      assert.notEqual(code, 0);
      assert.match(stdout, new RegExp(`conversation ${project.conversationId}: entry 1: hash`));
      assert.ok(!stdout.includes(fixture.conversationId), "an untouched conversation was named");
      assert.match(stderr, /1 of \d+ conversations no longer match/);
    }
  });
});
