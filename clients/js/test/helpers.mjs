// Helpers of the package's tests: a real stack from the end-to-end tests' harness (nats-server,
// a fresh Postgres database, the persistence worker and the gateway from PARLEY_BIN_DIR), and
// small awaitables around ParleyClient's events.

import { ParleyClient } from "../dist/index.js";
import { EVENT_TIMEOUT_MS, startStack, withTimeout } from "../../../tests/js/harness.mjs";

export { pollUntil, signJwt, startStack, withTimeout } from "../../../tests/js/harness.mjs";

/** A ParleyClient of `stack` for `tokenOrFunction`, closed by `closeAll()`. */
const clients = new Set();
export function client(stack, token, options = {}) {
  const c = new ParleyClient({ url: stack.url, token, ...options });
  clients.add(c);
  c.received = [];
  c.on("message", (message) => c.received.push(message));
  c.errors = [];
  c.on("error", (error) => c.errors.push(error));
  return c;
}
export function closeAll() {
  for (const c of clients) c.close();
  clients.clear();
}

/** Resolves with the arguments of the first `event` for which `predicate` holds (checking `now()` first). */
export function until(c, event, predicate = () => true, label = event) {
  let off;
  const hit = new Promise((resolve) => {
    off = c.on(event, (...args) => {
      if (predicate(...args)) resolve(args);
    });
  });
  return withTimeout(hit, EVENT_TIMEOUT_MS, label).finally(() => off());
}

/** Resolves once `c.received` holds a message matching `predicate`. */
export async function received(c, predicate, label = "message") {
  const found = c.received.find(predicate);
  if (found) return found;
  const [message] = await until(c, "message", predicate, label);
  return message;
}

/** A promise with its resolve function, for gating a token function. */
export function gate() {
  let open;
  const promise = new Promise((resolve) => (open = resolve));
  return { promise, open };
}

/** POSTs `count` messages as `sender` over HTTP, in order; resolves to them. */
export async function postMessages(stack, sender, conversationId, count, prefix) {
  const out = [];
  for (let i = 1; i <= count; i++) {
    const { status, body } = await stack.http("POST", `/v1/conversations/${conversationId}/messages`, {
      token: sender.token,
      body: { body: `${prefix} ${i}` },
    });
    if (status !== 201) throw new Error(`POST message ${i}: ${status} ${JSON.stringify(body)}`);
    out.push(body.message);
  }
  return out;
}

/** A stack without the send rate limit (the tests send in bulk), stopped by the caller. */
export const unlimitedStack = () => startStack({ gatewayEnv: { PARLEY_SEND_RATE: "0" } });

/** Asserts seqs strictly increase and ids are unique. */
export function inOrderOnce(messages) {
  const ids = new Set(messages.map((m) => m.id));
  if (ids.size !== messages.length) return false;
  return messages.every((m, i) => i === 0 || m.seq > messages[i - 1].seq);
}
