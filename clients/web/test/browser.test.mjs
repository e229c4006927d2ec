// The web chat in a real browser: Debian's Chromium driven by playwright-core, against a real
// stack (nats-server, Postgres, the persistence worker and the gateway, from the end-to-end
// tests' harness) behind the chat's own same-origin server. Two browser contexts, Alice and Bob:
// they chat, see typing and read receipts; Bob's network is cut while Alice sends 30 messages,
// which he then sees once and in order; a message Bob writes offline arrives once; the
// transcript panel verifies; a closed conversation refuses input. Every step is asserted and
// screenshotted (the folder is printed).
//
// Environment: what tests/js/harness.mjs needs (PARLEY_BIN_DIR, PARLEY_TEST_DATABASE_URL,
// PARLEY_TEST_NATS_SERVER), and optionally PARLEY_CHROMIUM (default /usr/bin/chromium) and
// PARLEY_SCREENSHOTS (default: a new folder in the system's temporary folder).

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";

import { chromium } from "playwright-core";

import { pollUntil, startStack } from "../../../tests/js/harness.mjs";
import { startServer } from "../server.mjs";

const execFileP = promisify(execFile);
const WAIT_MS = 20_000;

const CHROMIUM = process.env.PARLEY_CHROMIUM || "/usr/bin/chromium";
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

let stack;
let server;
let browser;
let project; // the conversation Alice and Bob chat in
let side; // a second one of theirs, for the list's unread count
let alice;
let bob;
let shots;
let shotNumber = 0;

/** A screenshot of `page` named after the step, in the printed folder. */
async function shot(page, name) {
  shotNumber++;
  await page.screenshot({ path: path.join(shots, `${String(shotNumber).padStart(2, "0")}-${name}.png`) });
}

/** A browser context and page signed in with `token` (a fresh context: no shared storage). */
async function signIn(token, peerToken) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 640 } });
  const page = await context.newPage();
  page.on("pageerror", (error) => console.error(`page error: ${error.message}`));
  await page.goto(`${server.url}#${new URLSearchParams({ token, peer: peerToken })}`);
  return { context, page };
}

/** The delivered messages the page shows: `[{id, seq, body, receipt}]`. */
const shown = (page) =>
  page.$$eval('[data-testid="message"]', (items) =>
    items.map((li) => ({
      id: li.dataset.id,
      seq: Number(li.dataset.seq),
      body: li.querySelector('[data-testid="body"]').textContent,
      receipt: li.querySelector('[data-testid="receipt"]')?.textContent ?? null,
    })),
  );

/** Waits until `page` shows a delivered message with exactly `body`. */
const waitForBody = (page, body) =>
  page.waitForFunction(
    (text) => [...document.querySelectorAll('[data-testid="body"]')].some((el) => el.textContent === text),
    body,
    { timeout: WAIT_MS },
  );

async function type(page, text) {
  const composer = page.getByTestId("composer");
  await composer.fill(text);
  await composer.press("Enter");
}

const select = (page, conversationId) => page.locator(`[data-testid="conversation"][data-id="${conversationId}"]`).click();

const assertOnceInOrder = (messages) => {
  assert.equal(new Set(messages.map((m) => m.id)).size, messages.length, "a message is shown twice");
  messages.forEach((m, i) => i === 0 || assert.ok(m.seq > messages[i - 1].seq, `seq ${m.seq} after ${messages[i - 1].seq}`));
};

before(async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing (scripts/test.sh installs Debian's chromium)`);
  shots = process.env.PARLEY_SCREENSHOTS || mkdtempSync(path.join(os.tmpdir(), "parley-web-screenshots-"));
  mkdirSync(shots, { recursive: true });
  console.log(`screenshots: ${shots}`);
  stack = await startStack();
  server = await startServer({ gateway: stack.url });
  const a = await stack.user("Alice");
  const b = await stack.user("Bob");
  // The side project first: the chat one is then the latest, which the page opens first.
  side = await stack.startProject({ title: "Brand guidelines", client: a, provider: b });
  project = await stack.startProject({ title: "Logo redesign", client: a, provider: b });
  // Chromium's own temporary profile per launch: fresh, deleted on close.
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true });
  alice = await signIn(a.token, b.token);
  bob = await signIn(b.token, a.token);
});

after(async () => {
  await browser?.close();
  await server?.close();
  await stack?.stop();
});

describe("the web chat in Chromium", { timeout: 180_000 }, () => {
  test("Alice and Bob exchange messages; the list keeps previews and unread counts", async () => {
    for (const { page } of [alice, bob]) {
      await page.locator(`[data-testid="conversation"][data-id="${project.conversationId}"][aria-current="true"]`).waitFor({ timeout: WAIT_MS });
    }
    await type(alice.page, "Hi Bob, the first sketches are attached.");
    await waitForBody(bob.page, "Hi Bob, the first sketches are attached.");
    await type(bob.page, "Thanks Alice, looking now.");
    await waitForBody(alice.page, "Thanks Alice, looking now.");
    for (const { page } of [alice, bob]) {
      assert.deepEqual(
        (await shown(page)).map((m) => m.body),
        ["Hi Bob, the first sketches are attached.", "Thanks Alice, looking now."],
      );
    }
    await shot(alice.page, "exchange-alice");
    await shot(bob.page, "exchange-bob");

    // A message in the other conversation: Bob's list shows its preview and one unread.
    await select(alice.page, side.conversationId);
    await alice.page.locator('#title:has-text("Brand guidelines")').waitFor({ timeout: WAIT_MS });
    await type(alice.page, "Also: the brand colours, when you have a minute.");
    const sideItem = bob.page.locator(`[data-testid="conversation"][data-id="${side.conversationId}"]`);
    await sideItem.locator('[data-testid="unread"]:has-text("1")').waitFor({ timeout: WAIT_MS });
    assert.equal(await sideItem.getByTestId("preview").textContent(), "Also: the brand colours, when you have a minute.");
    await shot(bob.page, "unread-in-list-bob");
    // Opening it reads it.
    await select(bob.page, side.conversationId);
    await sideItem.getByTestId("unread").waitFor({ state: "detached", timeout: WAIT_MS });
    await select(bob.page, project.conversationId);
    await select(alice.page, project.conversationId);
    await alice.page.locator('#title:has-text("Logo redesign")').waitFor({ timeout: WAIT_MS });
  });

  test("Bob sees Alice typing; Alice sees her message read", async () => {
    const composer = alice.page.getByTestId("composer");
    await composer.click();
    await composer.pressSequentially("Deadline", { delay: 50 });
    await bob.page.locator('[data-testid="typing"]:has-text("is typing")').waitFor({ timeout: WAIT_MS });
    assert.match(await bob.page.getByTestId("typing").textContent(), /^Alice.* is typing…$/);
    await shot(bob.page, "typing-bob");
    await composer.pressSequentially(" is Friday.");
    await composer.press("Enter");
    // Sending ends typing.
    await bob.page.locator('[data-testid="typing"]:has-text("is typing")').waitFor({ state: "detached", timeout: WAIT_MS });
    await waitForBody(bob.page, "Deadline is Friday.");
    // Bob has it open and visible: he reads it, and Alice's receipt says so.
    await alice.page.waitForFunction(
      () => {
        const mine = [...document.querySelectorAll('[data-testid="message"]')].filter((li) => li.querySelector('[data-testid="receipt"]'));
        return mine.length > 0 && mine.at(-1).querySelector('[data-testid="receipt"]').textContent === "read";
      },
      null,
      { timeout: WAIT_MS },
    );
    const last = (await shown(alice.page)).at(-1);
    assert.deepEqual([last.body, last.receipt], ["Deadline is Friday.", "read"]);
    await shot(alice.page, "read-alice");
  });

  test("Bob goes offline, Alice sends 30; back online, Bob sees all 30 once and in order", async () => {
    const before = await shown(bob.page);
    await bob.context.setOffline(true);
    await bob.page.locator('[data-testid="banner"][data-status="reconnecting"]').waitFor({ timeout: WAIT_MS });
    await shot(bob.page, "offline-banner-bob");

    const bodies = Array.from({ length: 30 }, (_, i) => `Offline batch ${i + 1}/30`);
    for (const body of bodies) await type(alice.page, body);
    // All 30 acknowledged and delivered back to Alice (past the gateway's send burst: the
    // client waits out `rate_limited`); Bob cannot have read them.
    await waitForBody(alice.page, bodies.at(-1));
    await alice.page.getByTestId("pending").first().waitFor({ state: "detached", timeout: WAIT_MS });
    const aliceSide = (await shown(alice.page)).slice(-30);
    assert.deepEqual(aliceSide.map((m) => m.body), bodies);
    assert.ok(aliceSide.every((m) => m.receipt === "sent"), "Bob is offline: nothing is read");
    await shot(alice.page, "sent-30-alice");

    await bob.context.setOffline(false);
    await bob.page.locator('[data-testid="banner"]').waitFor({ state: "hidden", timeout: WAIT_MS });
    await waitForBody(bob.page, bodies.at(-1));
    const after = await shown(bob.page);
    assert.deepEqual(after.slice(0, before.length), before, "what Bob had stays as it was");
    assert.deepEqual(after.slice(before.length).map((m) => m.body), bodies);
    assertOnceInOrder(after);
    assert.deepEqual(after.slice(-30).map((m) => m.id), aliceSide.map((m) => m.id));
    await shot(bob.page, "back-online-bob");
    // Back and visible, Bob reads them.
    await alice.page.waitForFunction(
      () => [...document.querySelectorAll('[data-testid="receipt"]')].at(-1)?.textContent === "read",
      null,
      { timeout: WAIT_MS },
    );
  });

  test("a message Bob sends while offline is delivered once after the reconnect", async () => {
    await bob.context.setOffline(true);
    await bob.page.locator('[data-testid="banner"][data-status="reconnecting"]').waitFor({ timeout: WAIT_MS });
    const body = "Written on the train, sent when back.";
    await type(bob.page, body);
    await bob.page.locator('[data-testid="pending"]:has-text("sending…")').waitFor({ timeout: WAIT_MS });
    await shot(bob.page, "pending-offline-bob");
    // While Bob is offline nothing reaches Alice: her own later message is the barrier.
    await type(alice.page, "Ping while you are away.");
    await waitForBody(alice.page, "Ping while you are away.");
    assert.equal((await shown(alice.page)).filter((m) => m.body === body).length, 0);

    await bob.context.setOffline(false);
    await waitForBody(alice.page, body);
    await bob.page.getByTestId("pending").waitFor({ state: "detached", timeout: WAIT_MS });
    await waitForBody(bob.page, body);
    // Once: a later message shows nothing more came before it.
    await type(alice.page, "Got it.");
    await waitForBody(alice.page, "Got it.");
    await waitForBody(bob.page, "Got it.");
    for (const { page } of [alice, bob]) {
      const messages = await shown(page);
      assert.equal(messages.filter((m) => m.body === body).length, 1);
      assertOnceInOrder(messages);
    }
    await shot(alice.page, "offline-send-arrived-alice");
  });

  test("the transcript panel verifies the export in the browser", async () => {
    await alice.page.getByRole("button", { name: "Transcript" }).click();
    const result = alice.page.getByTestId("transcript-result");
    await result.waitFor({ timeout: WAIT_MS });
    const text = await result.textContent();
    const match = /^verified: (\d+) entries, signed by key ([0-9a-f]{16}) at /.exec(text);
    assert.ok(match, text);
    const { keys } = (await stack.http("GET", "/v1/transcript-keys")).body;
    const current = keys.find((k) => k.current);
    assert.equal(match[2], current.keyId);
    // At least `started` and the messages that were in history when it was fetched.
    assert.ok(Number(match[1]) >= 2, text);
    await shot(alice.page, "transcript-alice");

    // The same package in Chromium refuses a tampered export (WebCrypto's Ed25519 and SHA-256).
    const verdict = await alice.page.evaluate(
      async ({ conversationId, token }) => {
        const { verifyTranscript } = await import("@parley/client");
        const headers = { authorization: `Bearer ${token}` };
        const exported = await (await fetch(`/v1/conversations/${conversationId}/transcript`, { headers })).json();
        const keyList = await (await fetch("/v1/transcript-keys")).json();
        const good = await verifyTranscript(exported, keyList, { crypto: "webcrypto" });
        const i = exported.entries.findIndex((e) => e.kind === "message");
        exported.entries[i].body = "tampered";
        const bad = await verifyTranscript(exported, keyList, { crypto: "webcrypto" });
        return { good: good.ok, bad, i };
      },
      { conversationId: project.conversationId, token: project.client.token },
    );
    assert.equal(verdict.good, true);
    assert.equal(verdict.bad.ok, false);
    assert.equal(verdict.bad.entry, verdict.i);
  });

  test("a closed conversation is read-only", async () => {
    await execFileP(path.join(process.env.PARLEY_BIN_DIR, "parley"), [
      "project",
      "close",
      "--nats-url",
      stack.natsUrl,
      "--project-id",
      project.projectId,
    ]);
    await pollUntil(
      async () =>
        (await stack.http("GET", `/v1/conversations/${project.conversationId}`, { token: project.client.token })).body
          .status === "closed",
      { label: "the conversation to be closed" },
    );
    // The open page learns it from the refused send, and stops taking input.
    await type(alice.page, "One more thing…");
    await alice.page.getByTestId("readonly").waitFor({ timeout: WAIT_MS });
    assert.equal(await alice.page.getByTestId("composer").isVisible(), false);
    assert.equal(await alice.page.getByTestId("composer").isEditable(), false);
    assert.equal((await shown(alice.page)).some((m) => m.body === "One more thing…"), false);
    // Bob, after a reload, sees it closed from the start: history readable, no input.
    await bob.page.reload();
    await bob.page.getByTestId("readonly").waitFor({ timeout: WAIT_MS });
    await waitForBody(bob.page, "Got it.");
    assert.equal(await bob.page.getByTestId("composer").isEditable(), false);
    assert.equal(await bob.page.getByTestId("closed-badge").isVisible(), true);
    await shot(bob.page, "closed-bob");
    const { body } = await stack.http("GET", `/v1/conversations/${project.conversationId}/messages?limit=200`, {
      token: project.client.token,
    });
    assert.equal(body.messages.some((m) => m.body === "One more thing…"), false);
  });
});
