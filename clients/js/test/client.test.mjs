// ParleyClient against a real gateway: live delivery once and in order, resuming after a lost
// connection (join with lastSeq, then history paging), the outbox and its retries with the same
// clientMsgId, typing, read marks and unread counts, closed conversations, token refresh.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";

import { ParleyError } from "../dist/index.js";
import {
  client,
  closeAll,
  gate,
  inOrderOnce,
  pollUntil,
  postMessages,
  received,
  signJwt,
  unlimitedStack,
  until,
} from "./helpers.mjs";

const execFileP = promisify(execFile);

let stack;
before(async () => {
  stack = await unlimitedStack();
});
after(async () => {
  closeAll();
  await stack?.stop();
});

/** Cuts the client's connection as a network failure would (socket.io-client reconnects by itself). */
async function dropConnection(c) {
  const lost = until(c, "status", (s) => s === "reconnecting");
  c.socket.io.engine.close();
  await lost;
}

describe("ParleyClient", () => {
  test("send resolves with the stored message; both sides get it once through `message`", async () => {
    const { conversationId, client: alice, provider: bob } = await stack.startProject({ title: "Basics" });
    const a = client(stack, alice.token);
    const b = client(stack, bob.token);
    await Promise.all([a.connect(), b.connect()]);
    assert.equal(a.userId, alice.id);
    const listed = b.conversations().find((c) => c.id === conversationId);
    assert.equal(listed?.projectTitle, "Basics");
    await Promise.all([a.open(conversationId), b.open(conversationId)]);

    const sent = await a.send(conversationId, "Hello Bob");
    assert.equal(sent.body, "Hello Bob");
    assert.equal(sent.senderId, alice.id);
    assert.match(sent.clientMsgId, /^[0-9a-f]{32}$/);
    const reply = await b.send(conversationId, "Hi Alice");
    for (const c of [a, b]) {
      await received(c, (m) => m.id === reply.id);
      assert.deepEqual(
        c.received.map((m) => m.id),
        [sent.id, reply.id],
      );
      assert.equal("replayed" in c.received[0], false);
    }
    assert.deepEqual(a.outbox(), []);
  });

  test("after a lost connection it joins with lastSeq: every missed message once, in order", async () => {
    const { conversationId, client: alice, provider: bob } = await stack.startProject({ title: "Resume" });
    let hold = null;
    const b = client(stack, async () => {
      if (hold) await hold.promise;
      return bob.token;
    });
    await b.connect();
    await b.open(conversationId);
    const first = await postMessages(stack, alice, conversationId, 3, "before");
    await received(b, (m) => m.id === first[2].id);

    hold = gate();
    await dropConnection(b);
    const missed = await postMessages(stack, alice, conversationId, 30, "missed");
    // Bob reads them on another device meanwhile: a join without lastSeq (which replays above
    // the read mark) would bring none of them here.
    const read = await stack.http("POST", `/v1/conversations/${conversationId}/read`, { token: bob.token, body: {} });
    assert.equal(read.status, 200);
    hold.open();
    await until(b, "synced", (id) => id === conversationId, "resync after reconnect");
    const marker = (await postMessages(stack, alice, conversationId, 1, "after"))[0];
    await received(b, (m) => m.id === marker.id);

    const ids = b.received.map((m) => m.id);
    assert.deepEqual(ids, [...first, ...missed, marker].map((m) => m.id));
    assert.ok(inOrderOnce(b.received));
    assert.equal(b.lastSeq(conversationId), marker.seq);
  });

  test("a join whose replay is incomplete is finished with history pages", async () => {
    const { conversationId, client: alice, provider: bob } = await stack.startProject({ title: "Long backlog" });
    // More than one replay holds (1000).
    const all = await postMessages(stack, alice, conversationId, 1010, "backlog");
    const b = client(stack, bob.token);
    const outgoing = [];
    b.socket.onAnyOutgoing((event, payload) => outgoing.push({ event, payload }));
    await b.connect();
    await b.open(conversationId, { lastSeq: 0 });
    assert.equal(b.received.length, all.length);
    assert.deepEqual(
      b.received.map((m) => m.id),
      all.map((m) => m.id),
    );
    const pages = outgoing.filter((o) => o.event === "conversation:history" && o.payload.afterSeq !== undefined);
    assert.ok(pages.length >= 1, "the rest was paged with history");
  });

  test("a send made while disconnected waits in the outbox and is delivered once after the reconnect", async () => {
    const { conversationId, client: alice, provider: bob } = await stack.startProject({ title: "Outbox" });
    const a = client(stack, alice.token);
    await a.connect();
    await a.open(conversationId);
    let hold = null;
    const b = client(stack, async () => {
      if (hold) await hold.promise;
      return bob.token;
    });
    await b.connect();
    hold = gate();
    await dropConnection(b);

    let settled = false;
    const sending = b.send(conversationId, "written offline").finally(() => (settled = true));
    assert.equal(b.outbox().length, 1);
    const { clientMsgId } = b.outbox()[0];
    // Nothing can reach the gateway: Alice sees nothing until Bob is back (Alice's later message
    // is the barrier).
    const barrier = await a.send(conversationId, "barrier");
    await received(a, (m) => m.id === barrier.id);
    assert.equal(settled, false);
    assert.equal(a.received.some((m) => m.body === "written offline"), false);

    hold.open();
    const message = await sending;
    assert.equal(message.clientMsgId, clientMsgId);
    assert.deepEqual(b.outbox(), []);
    const last = await a.send(conversationId, "second barrier");
    await received(a, (m) => m.id === last.id);
    assert.equal(a.received.filter((m) => m.clientMsgId === clientMsgId).length, 1);
  });

  test("a send whose ack is lost is retried with the same clientMsgId and stored once", async () => {
    const { conversationId, client: alice, provider: bob } = await stack.startProject({ title: "Lost ack" });
    const a = client(stack, alice.token);
    await a.connect();
    await a.open(conversationId);
    const b = client(stack, bob.token);
    await b.connect();
    const ids = [];
    b.socket.on("message:new", (m) => m.body === "maybe twice" && ids.push(m.id));
    const sending = b.send(conversationId, "maybe twice");
    const { clientMsgId } = b.outbox()[0];
    // Cut the connection right after the emit: the gateway may or may not have stored it.
    b.socket.io.engine.close();
    const message = await sending;
    assert.equal(message.clientMsgId, clientMsgId);
    const barrier = await a.send(conversationId, "barrier");
    await received(a, (m) => m.id === barrier.id);
    const copies = a.received.filter((m) => m.clientMsgId === clientMsgId);
    assert.equal(copies.length, 1);
    assert.equal(copies[0].id, message.id);
  });

  test("an outbox restored from storage is sent with its ids; a repeat of a stored send is not stored again", async () => {
    const { conversationId, client: alice, provider: bob } = await stack.startProject({ title: "Storage" });
    // One send already stored before the "reload", one that never left.
    const stored = await stack.http("POST", `/v1/conversations/${conversationId}/messages`, {
      token: bob.token,
      body: { body: "stored before the reload", clientMsgId: "reload-1" },
    });
    assert.equal(stored.status, 201);
    let saved = [
      { clientMsgId: "reload-1", conversationId, body: "stored before the reload", queuedAt: new Date().toISOString() },
      { clientMsgId: "reload-2", conversationId, body: "never left", queuedAt: new Date().toISOString() },
    ];
    const storage = { load: () => saved, save: (entries) => (saved = entries) };
    const b = client(stack, bob.token, { storage });
    const sent = [];
    b.on("sent", (message) => sent.push(message));
    await b.connect();
    await pollUntil(() => sent.length === 2, { label: "both restored sends acknowledged", timeoutMs: 10_000 });
    assert.equal(sent[0].id, stored.body.message.id);
    assert.equal(sent[1].clientMsgId, "reload-2");
    await pollUntil(() => saved.length === 0, { label: "storage emptied", timeoutMs: 10_000 });
    // History is written by the persistence worker, a moment after the acks.
    const history = async () =>
      (await stack.http("GET", `/v1/conversations/${conversationId}/messages`, { token: alice.token })).body.messages;
    await pollUntil(async () => (await history()).length >= 2, { label: "both in history" });
    assert.deepEqual(
      (await history()).map((m) => m.clientMsgId),
      ["reload-1", "reload-2"],
    );
  });

  test("typing reaches the other side, is refreshed while it lasts, and stops", async () => {
    const { conversationId, client: alice, provider: bob } = await stack.startProject({ title: "Typing" });
    const a = client(stack, alice.token, { typingRefreshMs: 1_000, typingIdleMs: 60_000 });
    const b = client(stack, bob.token);
    await Promise.all([a.connect(), b.connect()]);
    await Promise.all([a.open(conversationId), b.open(conversationId)]);
    const events = [];
    b.on("typing", (event) => events.push(event));
    const started = until(b, "typing", (e) => e.isTyping && e.userId === alice.id);
    a.typing(conversationId);
    await started;
    // Keystrokes for 7 s: past the server's 5 s, yet no `false` thanks to the refresh.
    const end = Date.now() + 7_000;
    while (Date.now() < end) {
      a.typing(conversationId);
      await new Promise((r) => setTimeout(r, 250));
    }
    assert.equal(events.some((e) => !e.isTyping), false, JSON.stringify(events));
    const stopped = until(b, "typing", (e) => !e.isTyping && e.userId === alice.id);
    a.stopTyping(conversationId);
    await stopped;
  });

  test("unread counts follow the events; a read mark reaches the sender", async () => {
    const { conversationId, client: alice, provider: bob } = await stack.startProject({ title: "Unread" });
    const a = client(stack, alice.token);
    const b = client(stack, bob.token);
    await Promise.all([a.connect(), b.connect()]);
    await a.open(conversationId);
    assert.equal(b.conversation(conversationId)?.unreadCount, 0);
    const m1 = await a.send(conversationId, "one");
    await a.send(conversationId, "two");
    const m3 = await a.send(conversationId, "three");
    // Bob has not opened it: the count and the preview come from the live events.
    await pollUntil(() => b.conversation(conversationId)?.unreadCount === 3, { label: "unread 3", timeoutMs: 10_000 });
    assert.equal(b.conversation(conversationId).lastMessage.preview, "three");
    assert.equal(b.conversation(conversationId).lastMessage.seq, m3.seq);
    // Bob's own message does not count.
    await b.send(conversationId, "mine");
    assert.equal(b.conversation(conversationId).unreadCount, 3);

    const seen = until(a, "read", (r) => r.userId === bob.id && r.lastReadSeq === m1.seq);
    assert.equal(await b.markRead(conversationId, m1.id), m1.seq);
    await seen;
    await pollUntil(() => b.conversation(conversationId).unreadCount === 2, { label: "unread 2", timeoutMs: 10_000 });
    const all = until(a, "read", (r) => r.userId === bob.id && r.lastReadSeq > m3.seq);
    await b.markRead(conversationId);
    await all;
    assert.equal(b.conversation(conversationId).unreadCount, 0);
    const bobInA = a.conversation(conversationId).participants.find((p) => p.userId === bob.id);
    assert.ok(bobInA.lastReadSeq > m3.seq);
  });

  test("a closed conversation refuses sends with conversation_closed; the outbox lets go", async () => {
    const project = await stack.startProject({ title: "Closing" });
    const { conversationId, client: alice } = project;
    const a = client(stack, alice.token);
    await a.connect();
    await a.open(conversationId);
    await execFileP(path.join(process.env.PARLEY_BIN_DIR, "parley"), [
      "project",
      "close",
      "--nats-url",
      stack.natsUrl,
      "--project-id",
      project.projectId,
    ]);
    await pollUntil(async () => (await a.refresh()).find((c) => c.id === conversationId)?.status === "closed", {
      label: "conversation closed",
    });
    await assert.rejects(a.send(conversationId, "too late"), (error) => {
      assert.ok(error instanceof ParleyError);
      assert.equal(error.code, "conversation_closed");
      return true;
    });
    assert.deepEqual(a.outbox(), []);
    assert.equal(a.conversation(conversationId).status, "closed");
  });

  test("a token function gives a fresh token when the old one expires and the gateway disconnects", async () => {
    const { conversationId, client: alice, provider: bob } = await stack.startProject({ title: "Expiry" });
    let calls = 0;
    const b = client(stack, () => {
      calls++;
      // Short-lived tokens: the gateway disconnects the socket when one expires.
      return signJwt({ sub: bob.id, exp: Math.floor(Date.now() / 1000) + 3 }, stack.secret);
    });
    await b.connect();
    await b.open(conversationId);
    const lost = until(b, "status", (s) => s === "reconnecting", "disconnect at token expiry");
    await lost;
    await until(b, "synced", (id) => id === conversationId, "resync with a fresh token");
    assert.ok(calls >= 2, `token function called ${calls} times`);
    const [message] = await postMessages(stack, alice, conversationId, 1, "after expiry");
    await received(b, (m) => m.id === message.id);
  });

  test("a static token the gateway refuses ends in `unauthorized`", async () => {
    const c = client(stack, signJwt({ sub: "00000000-0000-4000-8000-000000000000", exp: 1 }, stack.secret));
    await assert.rejects(c.connect(), (error) => error.code === "unauthorized");
    assert.equal(c.status, "unauthorized");
  });
});
