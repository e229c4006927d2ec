// The HTTP API's send: POST /v1/conversations/{id}/messages, and its live delivery to sockets
// (contract: HTTP API, Rules for every write, Socket.IO).

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { isRfc3339Utc, isUuid, pollUntil, startStack, waitForMessage } from "./harness.mjs";

let stack;
before(async () => {
  stack = await startStack();
});
after(async () => {
  await stack?.stop();
});

const MESSAGE_KEYS = ["body", "clientMsgId", "conversationId", "createdAt", "id", "projectId", "senderId", "seq"];
const inConversation = (socket, conversationId) => socket.received.filter((m) => m.conversationId === conversationId);

describe("POST /v1/conversations/{id}/messages", () => {
  test("201 {message}, delivered as message:new to the sockets of both participants", async () => {
    const project = await stack.startProject({ title: "HTTP send" });
    const { conversationId, projectId, client, provider } = project;
    const providerSocket = await stack.connect(provider.token);
    const clientSocket = await stack.connect(client.token, { transports: ["websocket"] });

    const body = "Sent over plain HTTP ✉";
    const response = await stack.http("POST", `/v1/conversations/${conversationId}/messages`, {
      token: client.token,
      body: { body },
    });
    assert.equal(response.status, 201, JSON.stringify(response.body));
    assert.deepEqual(Object.keys(response.body).sort(), ["message"], JSON.stringify(response.body));
    const { message } = response.body;
    assert.deepEqual(Object.keys(message).sort(), MESSAGE_KEYS, JSON.stringify(message));
    assert.ok(isUuid(message.id));
    assert.equal(message.conversationId, conversationId);
    assert.equal(message.projectId, projectId);
    assert.equal(message.senderId, client.id);
    assert.equal(message.body, body);
    assert.ok(Number.isSafeInteger(message.seq) && message.seq > 0);
    assert.ok(isRfc3339Utc(message.createdAt), message.createdAt);
    assert.equal(message.clientMsgId, null);

    const delivered = await waitForMessage(providerSocket, (m) => m.id === message.id, "message:new on the provider's socket");
    assert.deepEqual(delivered, message);
    assert.deepEqual(await waitForMessage(clientSocket, (m) => m.id === message.id, "message:new on the client's socket"), message);

    // It is in history too, once the persistence worker has it.
    const history = await pollUntil(
      async () => {
        const r = await stack.http("GET", `/v1/conversations/${conversationId}/messages`, { token: provider.token });
        return r.status === 200 && r.body.messages.length > 0 ? r : null;
      },
      { label: "the message in GET .../messages" },
    );
    assert.deepEqual(history.body, { messages: [message], hasMore: false });
  });

  test("a repeated clientMsgId answers 200 with the first message and delivers nothing new", async () => {
    const { conversationId, client, provider } = await stack.startProject({ title: "Idempotent HTTP send" });
    const providerSocket = await stack.connect(provider.token, { transports: ["websocket"] });
    const clientMsgId = `retry-${randomUUID()}`;
    const path = `/v1/conversations/${conversationId}/messages`;

    const first = await stack.http("POST", path, { token: client.token, body: { body: "once", clientMsgId } });
    assert.equal(first.status, 201, JSON.stringify(first.body));
    assert.equal(first.body.message.clientMsgId, clientMsgId);
    const repeat = await stack.http("POST", path, { token: client.token, body: { body: "once", clientMsgId } });
    assert.equal(repeat.status, 200, JSON.stringify(repeat.body));
    assert.deepEqual(repeat.body, first.body);

    const barrier = await stack.http("POST", path, { token: client.token, body: { body: "barrier" } });
    assert.equal(barrier.status, 201, JSON.stringify(barrier.body));
    await waitForMessage(providerSocket, (m) => m.id === barrier.body.message.id, "the barrier on the provider's socket");
    assert.deepEqual(inConversation(providerSocket, conversationId), [first.body.message, barrier.body.message]);
  });

  test("refusals: invalid body → 400 invalid_message, stranger → 404 not_found, no token → 401", async () => {
    const { conversationId, client } = await stack.startProject({ title: "HTTP refusals" });
    const stranger = await stack.user("Stan");
    const path = `/v1/conversations/${conversationId}/messages`;
    const expectError = (response, status, code) => {
      assert.equal(response.status, status, JSON.stringify(response.body));
      assert.deepEqual(Object.keys(response.body ?? {}), ["error"], JSON.stringify(response.body));
      assert.equal(response.body.error.code, code, JSON.stringify(response.body));
      assert.equal(typeof response.body.error.message, "string");
    };

    expectError(await stack.http("POST", path, { token: client.token, body: { body: "   " } }), 400, "invalid_message");
    expectError(await stack.http("POST", path, { token: client.token, body: { body: "x".repeat(5001) } }), 400, "invalid_message");
    expectError(await stack.http("POST", path, { token: stranger.token, body: { body: "hi" } }), 404, "not_found");
    expectError(await stack.http("GET", `/v1/conversations/${conversationId}`, { token: stranger.token }), 404, "not_found");
    expectError(await stack.http("GET", path, { token: stranger.token }), 404, "not_found");
    expectError(await stack.http("POST", path, { body: { body: "hi" } }), 401, "unauthorized");
  });
});
