// The contract's transcript check, offline: recompute the hash chain of an export, check its
// checkpoint against it, and the checkpoint's Ed25519 signature against trusted public keys.
// Runs on WebCrypto (browsers, Node 20) and falls back to Node's `crypto` module where WebCrypto
// lacks Ed25519.

import type { TranscriptEntry, TranscriptExport, TranscriptKey, TranscriptKeys, TranscriptWitness } from "./types.js";

/** Each kind's fields, in chain order (contract, "Transcripts"). */
const FIELDS: Record<TranscriptEntry["kind"], readonly string[]> = {
  started: ["conversationId", "projectId", "projectTitle", "clientId", "clientName", "providerId", "providerName", "at"],
  message: ["seq", "id", "senderId", "body", "createdAt", "clientMsgId"],
  read: ["userId", "seq", "at"],
  closed: ["at"],
};

export type TranscriptVerification =
  | {
      ok: true;
      /** Entries covered by the signed checkpoint (all of them). */
      size: number;
      head: string;
      keyId: string;
      signedAt: string;
    }
  | {
      ok: false;
      /** The first entry that fails (its `n`), or null when the checkpoint itself fails. */
      entry: number | null;
      reason: string;
    };

export interface VerifyOptions {
  /**
   * A transcript witness kept from earlier (a Conversation's `transcript`, or a checkpoint's
   * `size` and `head`): the export must extend it.
   */
  witness?: TranscriptWitness;
  /** Which implementation checks hashes and signatures: WebCrypto when it has Ed25519 (default), or Node's `crypto`. */
  crypto?: "auto" | "webcrypto" | "node";
}

interface Backend {
  sha256(data: Uint8Array): Promise<Uint8Array>;
  verifyEd25519(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): Promise<boolean>;
}

const utf8 = new TextEncoder();

/** enc(s): the 4-byte big-endian length of the UTF-8 bytes of s, then the bytes; enc(null) = FF FF FF FF. */
function enc(value: string | null): Uint8Array {
  if (value === null) return new Uint8Array([0xff, 0xff, 0xff, 0xff]);
  const bytes = utf8.encode(value);
  const out = new Uint8Array(4 + bytes.length);
  new DataView(out.buffer).setUint32(0, bytes.length);
  out.set(bytes, 4);
  return out;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

const hex = (bytes: Uint8Array): string => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

function fromBase64(text: string): Uint8Array {
  const binary = atob(text);
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

function webCryptoBackend(): Backend | null {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) return null;
  return {
    async sha256(data) {
      return new Uint8Array(await subtle.digest("SHA-256", data as BufferSource));
    },
    async verifyEd25519(publicKey, message, signature) {
      const key = await subtle.importKey("raw", publicKey as BufferSource, { name: "Ed25519" }, false, ["verify"]);
      return subtle.verify({ name: "Ed25519" }, key, signature as BufferSource, message as BufferSource);
    },
  };
}

// Kept out of reach of bundlers' static analysis: only Node resolves it, and only on demand.
const NODE_CRYPTO = "node:crypto";

async function nodeBackend(): Promise<Backend> {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const nodeCrypto: any = await import(NODE_CRYPTO);
  return {
    async sha256(data) {
      return new Uint8Array(nodeCrypto.createHash("sha256").update(data).digest());
    },
    async verifyEd25519(publicKey, message, signature) {
      const x = btoa(String.fromCharCode(...publicKey))
        .replace(/\+/g, "-")
        .replace(/\//g, "_")
        .replace(/=+$/, "");
      const key = nodeCrypto.createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x }, format: "jwk" });
      return nodeCrypto.verify(null, message, key, signature);
    },
  };
}

/** WebCrypto when it can verify Ed25519, else Node's crypto. */
async function chooseBackend(choice: VerifyOptions["crypto"]): Promise<Backend> {
  if (choice === "node") return nodeBackend();
  const web = webCryptoBackend();
  if (choice === "webcrypto") {
    if (!web) throw new Error("WebCrypto is not available here");
    return web;
  }
  if (web) {
    try {
      await globalThis.crypto.subtle.importKey("raw", new Uint8Array(32), { name: "Ed25519" }, false, ["verify"]);
      return web;
    } catch {
      // no Ed25519 in this WebCrypto: try Node's
    }
  }
  return nodeBackend();
}

type KeysInput = TranscriptKeys | readonly TranscriptKey[] | readonly string[];

/** The raw public keys, base64-decoded, from `GET /v1/transcript-keys` or a list of base64 strings. */
function rawKeys(keys: KeysInput): Uint8Array[] {
  const list: readonly (TranscriptKey | string)[] = Array.isArray(keys) ? keys : (keys as TranscriptKeys).keys;
  return list.map((key) => fromBase64(typeof key === "string" ? key : key.publicKey));
}

/**
 * Checks an export as the contract says: each entry's hash over the previous one and its kind's
 * fields, the checkpoint covering every entry with the chain's head, and the checkpoint's
 * signature by one of `keys` (the key is found by its id, the first 16 hex digits of the SHA-256
 * of its raw bytes). Resolves to `{ok: true, size, head, keyId, signedAt}` or to the first
 * failing entry and why; it never throws for a bad export.
 */
export async function verifyTranscript(
  exported: TranscriptExport,
  keys: KeysInput,
  options: VerifyOptions = {},
): Promise<TranscriptVerification> {
  const backend = await chooseBackend(options.crypto ?? "auto");
  const fail = (entry: number | null, reason: string): TranscriptVerification => ({ ok: false, entry, reason });
  if (!exported || typeof exported !== "object") return fail(null, "not a transcript export");
  if (exported.format !== "parley-transcript/1") return fail(null, `unknown format ${JSON.stringify(exported.format)}`);
  if (!Array.isArray(exported.entries)) return fail(null, "no entries");

  let previous: Uint8Array = new Uint8Array(32);
  const heads: string[] = [];
  for (let i = 0; i < exported.entries.length; i++) {
    const entry = exported.entries[i] as unknown as Record<string, unknown>;
    if (entry.n !== i) return fail(i, `entry ${i} is numbered ${JSON.stringify(entry.n)}`);
    const kind = entry.kind as TranscriptEntry["kind"];
    const names = Object.hasOwn(FIELDS, kind) ? FIELDS[kind] : undefined;
    if (!names) return fail(i, `unknown kind ${JSON.stringify(kind)}`);
    if (i === 0 && kind !== "started") return fail(0, "entry 0 is not `started`");
    const parts = [previous, enc(kind)];
    for (const name of names) {
      const value = entry[name];
      if (name === "seq") {
        if (!Number.isSafeInteger(value)) return fail(i, `${name} is not an integer`);
        parts.push(enc(String(value)));
      } else if (value === null || typeof value === "string") {
        parts.push(enc(value));
      } else {
        return fail(i, `${name} is missing`);
      }
    }
    const hash = await backend.sha256(concat(parts));
    const hashHex = hex(hash);
    if (hashHex !== entry.hash) return fail(i, "hash does not match its content and the entries before it");
    heads.push(hashHex);
    previous = hash;
  }

  const checkpoint = exported.checkpoint;
  if (!checkpoint || typeof checkpoint !== "object") return fail(null, "no checkpoint");
  if (checkpoint.conversationId !== exported.conversationId) return fail(null, "checkpoint is of another conversation");
  const size = exported.entries.length;
  if (checkpoint.size !== size) {
    return fail(Math.min(checkpoint.size, size), `checkpoint covers ${checkpoint.size} entries, the export has ${size}`);
  }
  const head = heads[size - 1] ?? hex(new Uint8Array(32));
  if (checkpoint.head !== head) return fail(size - 1, "checkpoint head is not the last entry's hash");

  const witness = options.witness;
  if (witness && witness.size > 0) {
    if (witness.size > size) return fail(null, `the export has ${size} entries, fewer than the ${witness.size} witnessed`);
    if (heads[witness.size - 1] !== witness.head) {
      return fail(witness.size - 1, "differs from the witnessed transcript");
    }
  }

  let publicKey: Uint8Array | undefined;
  for (const raw of rawKeys(keys)) {
    if (raw.length === 32 && hex(await backend.sha256(raw)).slice(0, 16) === checkpoint.keyId) publicKey = raw;
  }
  if (!publicKey) return fail(null, `signed by key ${checkpoint.keyId}, which is not trusted`);
  const text = `parley-transcript/1\n${checkpoint.conversationId}\n${checkpoint.size}\n${checkpoint.head}\n${checkpoint.signedAt}\n`;
  let signature: Uint8Array;
  try {
    signature = fromBase64(checkpoint.signature);
  } catch {
    return fail(null, "signature is not base64");
  }
  let good = false;
  try {
    good = await backend.verifyEd25519(publicKey, utf8.encode(text), signature);
  } catch {
    good = false;
  }
  if (!good) return fail(null, "checkpoint signature does not verify");
  return { ok: true, size, head, keyId: checkpoint.keyId, signedAt: checkpoint.signedAt };
}
