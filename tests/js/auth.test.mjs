// Identity: Socket.IO connections and HTTP calls without a valid token are refused with
// `unauthorized` (contract: Identity).

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { signJwt, startStack } from "./harness.mjs";

let stack;
before(async () => {
  stack = await startStack();
});
after(async () => {
  await stack?.stop();
});

const now = () => Math.floor(Date.now() / 1000);

/** Tokens that must be refused: `[label, () => auth option]`. */
function badAuths() {
  const userId = randomUUID();
  return [
    ["no auth at all", () => undefined],
    ["an auth object without a token", () => ({})],
    ["a garbage token", () => ({ token: "garbage" })],
    ["an expired token", () => ({ token: signJwt({ sub: userId, iat: now() - 7200, exp: now() - 3600 }, stack.secret) })],
    ["a token signed with another secret", () => ({ token: signJwt({ sub: userId, exp: now() + 3600 }, "another-secret-of-enough-length") })],
    ["a token without exp", () => ({ token: signJwt({ sub: userId }, stack.secret) })],
    ["a token whose sub is not a UUID", () => ({ token: signJwt({ sub: "alice", exp: now() + 3600 }, stack.secret) })],
    [
      "an unsigned (alg none) token",
      () => {
        const [header, claims] = signJwt({ sub: userId, exp: now() + 3600 }, stack.secret, { alg: "none", typ: "JWT" }).split(".");
        return { token: `${header}.${claims}.` };
      },
    ],
  ];
}

const TRANSPORTS = [
  ["default transports (polling, then upgrade)", undefined],
  ['transports: ["websocket"]', ["websocket"]],
];

for (const [transportLabel, transports] of TRANSPORTS) {
  describe(`Socket.IO connect with ${transportLabel}`, () => {
    for (const [label, auth] of badAuths()) {
      test(`${label} gets connect_error "unauthorized"`, async () => {
        const options = {};
        const value = auth();
        if (value !== undefined) options.auth = value;
        if (transports) options.transports = transports;
        const outcome = await stack.connectError(options);
        assert.ok(!outcome.connected, "the connection was accepted");
        assert.equal(outcome.error.message, "unauthorized");
      });
    }

    test("a token minted with the gateway's secret connects", async () => {
      const user = await stack.user("Valid");
      const socket = await stack.connect(user.token, { transports });
      assert.ok(socket.connected);
      socket.disconnect();
    });

    test("a hand-signed HS256 token with sub and a future exp connects", async () => {
      const token = signJwt({ sub: randomUUID(), exp: now() + 3600 }, stack.secret);
      const socket = await stack.connect(token, { transports });
      assert.ok(socket.connected);
      socket.disconnect();
    });
  });
}

describe("HTTP authentication", () => {
  const cases = [
    ["no Authorization header", () => ({})],
    ["a garbage bearer token", () => ({ token: "garbage" })],
    ["an expired bearer token", () => ({ token: signJwt({ sub: randomUUID(), exp: now() - 3600 }, stack.secret) })],
    ["a non-Bearer scheme", () => ({ headers: { authorization: `Basic ${Buffer.from("a:b").toString("base64")}` } })],
  ];
  for (const [label, options] of cases) {
    test(`${label} → 401 {error: {code: "unauthorized"}}`, async () => {
      const response = await stack.http("GET", "/v1/conversations", options());
      assert.equal(response.status, 401);
      assert.equal(response.body?.error?.code, "unauthorized", JSON.stringify(response.body));
      assert.equal(typeof response.body.error.message, "string");
    });
  }

  test("a valid bearer token → 200 {conversations: []}", async () => {
    const user = await stack.user("Fresh");
    const response = await stack.http("GET", "/v1/conversations", { token: user.token });
    assert.equal(response.status, 200);
    assert.deepEqual(response.body, { conversations: [] });
  });
});
