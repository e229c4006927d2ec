// conversation:history and conversation:list over Socket.IO (contract: Objects, Socket.IO).

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { isRfc3339Utc, isUuid, pollUntil, request, startStack } from "./harness.mjs";

let stack;
before(async () => {
  stack = await startStack();
});
after(async () => {
  await stack?.stop();
});

const CONVERSATION_KEYS = [
  "id",
  "lastMessage",
  "participants",
  "projectId",
  "projectTitle",
  "status",
  "transcript",
  "unreadCount",
  "updatedAt",
];

describe("conversation:history and conversation:list", () => {
  test("history pages ascending by seq; list shows title, status, participants, last message and unread counts", async () => {
    const project = await stack.startProject({ title: "Kitchen renovation" });
    const { conversationId, projectId, client, provider } = project;
    const clientSocket = await stack.connect(client.token, { transports: ["websocket"] });
    const providerSocket = await stack.connect(provider.token);

    // The provider speaks first, then the client sends three messages, the last one longer
    // than a preview.
    const longBody = `${"0123456789".repeat(14)} — the end`;
    const sends = [
      [providerSocket, "Hi! When can I start?"],
      [clientSocket, "Monday works."],
      [clientSocket, "Bring the tiles, please."],
      [clientSocket, longBody],
    ];
    const sent = [];
    for (const [socket, body] of sends) {
      const ack = await request(socket, "message:send", { conversationId, body });
      assert.equal(ack.ok, true, JSON.stringify(ack));
      sent.push(ack.message);
    }
    const last = sent.at(-1);

    // History is read from what the persistence worker stored: wait until it caught up.
    const full = await pollUntil(
      async () => {
        const ack = await request(clientSocket, "conversation:history", { conversationId, limit: 10 });
        if (!ack.ok) throw new Error(JSON.stringify(ack));
        return ack.messages.some((m) => m.id === last.id) ? ack : null;
      },
      { label: "all messages in history" },
    );
    assert.deepEqual(Object.keys(full).sort(), ["hasMore", "messages", "ok"], JSON.stringify(full));
    assert.equal(full.hasMore, false);
    assert.deepEqual(full.messages, sent, "history equals the acknowledged messages, ascending by seq");
    for (let i = 1; i < full.messages.length; i++) {
      assert.ok(full.messages[i].seq > full.messages[i - 1].seq, "history is not ascending by seq");
    }

    // The other participant reads the same history.
    const providerView = await request(providerSocket, "conversation:history", { conversationId, limit: 10 });
    assert.deepEqual(providerView, full);

    // A smaller page is the latest one, still ascending, and says that more remain.
    const page = await request(clientSocket, "conversation:history", { conversationId, limit: 2 });
    assert.deepEqual(page, { ok: true, messages: sent.slice(2), hasMore: true });
    // ...and the page before it is reached with beforeSeq.
    const older = await request(clientSocket, "conversation:history", {
      conversationId,
      limit: 2,
      beforeSeq: page.messages[0].seq,
    });
    assert.deepEqual(older, { ok: true, messages: sent.slice(0, 2), hasMore: false });

    // conversation:list, for both participants.
    const listed = async (socket) => {
      const ack = await request(socket, "conversation:list", {});
      assert.deepEqual(Object.keys(ack).sort(), ["conversations", "ok"], JSON.stringify(ack));
      assert.equal(ack.ok, true);
      assert.equal(ack.conversations.length, 1, JSON.stringify(ack.conversations));
      return ack.conversations[0];
    };
    // The list is read from Postgres too; the last message is there already (history had it),
    // but poll anyway in case the summary is updated separately.
    const providerEntry = await pollUntil(
      async () => {
        const entry = await listed(providerSocket);
        return entry.lastMessage?.id === last.id ? entry : null;
      },
      { label: "the last message in the provider's conversation list" },
    );
    const clientEntry = await listed(clientSocket);

    for (const [who, entry] of [
      ["provider", providerEntry],
      ["client", clientEntry],
    ]) {
      const context = `${who}'s entry ${JSON.stringify(entry)}`;
      assert.deepEqual(Object.keys(entry).sort(), CONVERSATION_KEYS, context);
      assert.equal(entry.id, conversationId, context);
      assert.equal(entry.projectId, projectId, context);
      assert.equal(entry.projectTitle, "Kitchen renovation", context);
      assert.equal(entry.status, "active", context);
      assert.ok(isRfc3339Utc(entry.updatedAt), context);

      assert.equal(entry.participants.length, 2, context);
      const byRole = Object.fromEntries(entry.participants.map((p) => [p.role, p]));
      assert.deepEqual(Object.keys(byRole).sort(), ["client", "provider"], context);
      for (const [role, user] of [
        ["client", client],
        ["provider", provider],
      ]) {
        const participant = byRole[role];
        assert.deepEqual(Object.keys(participant).sort(), ["displayName", "lastReadSeq", "role", "userId"], context);
        assert.equal(participant.userId, user.id, context);
        assert.equal(participant.displayName, user.name, context);
        assert.ok(Number.isSafeInteger(participant.lastReadSeq) && participant.lastReadSeq >= 0, context);
      }

      const { lastMessage } = entry;
      assert.deepEqual(Object.keys(lastMessage).sort(), ["createdAt", "id", "preview", "senderId", "seq"], context);
      assert.equal(lastMessage.id, last.id, context);
      assert.equal(lastMessage.senderId, client.id, context);
      assert.equal(lastMessage.seq, last.seq, context);
      assert.equal(lastMessage.createdAt, last.createdAt, context);
      const preview = [...lastMessage.preview];
      assert.ok(preview.length <= 120, `preview has ${preview.length} characters: ${context}`);
      assert.ok(preview.length >= 100, `preview is much shorter than 120 characters: ${context}`);
      assert.ok(longBody.startsWith(lastMessage.preview.replace(/…$/, "")), `preview is not the body's start: ${context}`);

      // transcript: the chain's size (started, then the messages stored so far) and head.
      assert.deepEqual(Object.keys(entry.transcript).sort(), ["head", "size"], context);
      assert.ok(Number.isSafeInteger(entry.transcript.size) && entry.transcript.size >= 1, context);
      assert.match(entry.transcript.head, /^[0-9a-f]{64}$/, context);

      // unreadCount: the other party's messages above the caller's lastReadSeq.
      const me = who === "provider" ? provider : client;
      const myMark = entry.participants.find((p) => p.userId === me.id).lastReadSeq;
      const expected = sent.filter((m) => m.senderId !== me.id && m.seq > myMark).length;
      assert.equal(entry.unreadCount, expected, `unreadCount (lastReadSeq ${myMark}): ${context}`);
    }

    // The provider (who never read anything and spoke before every client message) has all three
    // of the client's messages unread.
    assert.equal(providerEntry.unreadCount, 3, JSON.stringify(providerEntry));
  });

  test("an empty conversation has an empty history and no last message", async () => {
    const { conversationId, client } = await stack.startProject({ title: "Quiet project" });
    const socket = await stack.connect(client.token, { transports: ["websocket"] });
    const history = await request(socket, "conversation:history", { conversationId, limit: 10 });
    assert.deepEqual(history, { ok: true, messages: [], hasMore: false });
    const list = await request(socket, "conversation:list", {});
    assert.equal(list.ok, true, JSON.stringify(list));
    assert.equal(list.conversations.length, 1);
    assert.equal(list.conversations[0].lastMessage, null);
    assert.equal(list.conversations[0].unreadCount, 0);
    assert.ok(isUuid(list.conversations[0].id));
  });
});
