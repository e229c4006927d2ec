// The Parley web chat: plain DOM on top of @parley/client, which does the connection, resuming,
// ordering, the outbox, read marks and transcript checks. This file only draws what the client
// reports and forwards what the user does.
//
// Sign-in for development: the page reads `#token=<JWT>` (and optionally `&peer=<JWT>`, the other
// participant's token, for a link that opens them in another tab) from its address.

import { ParleyClient, localStorageOutbox, tokenSubject, verifyTranscript } from "@parley/client";

const $ = (id) => document.getElementById(id);
/** A DOM element with attributes (`text` sets textContent) and children. */
function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") element.textContent = value;
    else if (name === "class") element.className = value;
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  element.append(...children.filter((child) => child !== null && child !== undefined));
  return element;
}

// ------------------------------------------------------------------------------ sign-in

const fragment = new URLSearchParams(location.hash.slice(1));
const token = fragment.get("token") ?? sessionStorage.getItem("parley-token");
const peer = fragment.get("peer");
if (!token) {
  document.body.replaceChildren(
    h("p", { class: "signin", text: "Open this page with #token=<JWT> in its address (scripts/dev.sh prints such a link)." }),
  );
  throw new Error("no token");
}
sessionStorage.setItem("parley-token", token);
if (peer) {
  const other = $("other");
  other.href = `/#${new URLSearchParams({ token: peer, peer: token })}`;
  other.hidden = false;
}
const me = tokenSubject(token);

const client = new ParleyClient({ token, storage: localStorageOutbox(`parley-outbox-${me}`) });
window.parley = client; // for the console

// ------------------------------------------------------------------------------ state

let selected = null;
/** Delivered messages per conversation, ascending by seq. */
const messages = new Map();
/** Conversations whose oldest page has been reached. */
const atStart = new Set();
const typingTimers = new Map();

const messagesOf = (id) => {
  let list = messages.get(id);
  if (!list) messages.set(id, (list = []));
  return list;
};
const other = (conversation) => conversation.participants.find((p) => p.userId !== me);
const myName = (conversation) => conversation.participants.find((p) => p.userId === me)?.displayName;
const time = (iso) => new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });

// ------------------------------------------------------------------------------ drawing

function renderList() {
  const list = client.conversations();
  const nav = $("list");
  nav.replaceChildren(
    ...list.map((conversation) => {
      const last = conversation.lastMessage;
      const who = last ? (last.senderId === me ? "You: " : "") : "";
      const button = h(
        "button",
        {
          type: "button",
          "data-testid": "conversation",
          "data-id": conversation.id,
          "aria-current": conversation.id === selected ? "true" : "false",
        },
        h(
          "div",
          { class: "row" },
          h("span", { class: "name", text: conversation.projectTitle }),
          conversation.status === "closed" ? h("span", { class: "badge", text: "closed" }) : null,
          conversation.unreadCount > 0
            ? h("span", { class: "unread", "data-testid": "unread", text: String(conversation.unreadCount) })
            : null,
        ),
        h("div", { class: "preview", "data-testid": "preview", text: last ? who + last.preview : "No messages yet" }),
      );
      button.addEventListener("click", () => select(conversation.id));
      return button;
    }),
  );
  if (list.length && !$("me").textContent) $("me").textContent = `signed in as ${myName(list[0]) ?? me}`;
}

function renderConversation() {
  const conversation = selected && client.conversation(selected);
  $("conversation").hidden = !conversation;
  $("empty").hidden = Boolean(conversation);
  if (!conversation) return;
  $("title").textContent = `${conversation.projectTitle} — with ${other(conversation)?.displayName ?? "?"}`;
  const closed = conversation.status === "closed";
  $("closed").hidden = !closed;
  $("composer").hidden = closed;
  $("body").disabled = closed;
  $("send").disabled = closed;
  $("readonly").hidden = !closed;
  renderMessages();
}

function renderMessages() {
  const conversation = selected && client.conversation(selected);
  if (!conversation) return;
  const box = $("messages");
  const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  const theirRead = other(conversation)?.lastReadSeq ?? 0;
  const delivered = messagesOf(selected);
  const seen = new Set(delivered.map((m) => m.clientMsgId).filter(Boolean));
  const items = delivered.map((message) => {
    const mine = message.senderId === me;
    return h(
      "li",
      { class: mine ? "mine" : "", "data-testid": "message", "data-seq": message.seq, "data-id": message.id },
      h("span", { class: "body", "data-testid": "body", text: message.body }),
      h(
        "span",
        { class: "meta" },
        time(message.createdAt),
        mine ? " · " : null,
        mine ? h("span", { "data-testid": "receipt", text: message.seq <= theirRead ? "read" : "sent" }) : null,
      ),
    );
  });
  const pending = client
    .outbox()
    .filter((entry) => entry.conversationId === selected && !seen.has(entry.clientMsgId))
    .map((entry) =>
      h(
        "li",
        { class: "mine pending", "data-testid": "pending" },
        h("span", { class: "body", text: entry.body }),
        h("span", { class: "meta", text: "sending…" }),
      ),
    );
  $("items").replaceChildren(...items, ...pending);
  $("earlier").hidden = atStart.has(selected) || delivered.length === 0;
  if (nearBottom) box.scrollTop = box.scrollHeight;
}

function renderBanner(status) {
  const banner = $("banner");
  const text = {
    connecting: "Connecting…",
    reconnecting: "Connection lost — reconnecting…",
    unauthorized: "The gateway refused this sign-in (expired token?). Open a fresh link.",
    closed: "Disconnected.",
  }[status];
  banner.hidden = !text;
  banner.textContent = text ?? "";
  banner.dataset.status = status;
  banner.className = status === "unauthorized" ? "bad" : "";
}

// ------------------------------------------------------------------------------ actions

async function select(id) {
  selected = id;
  $("transcript").hidden = true;
  $("typing").textContent = "";
  renderList();
  renderConversation();
  try {
    await client.open(id);
  } catch (error) {
    console.error("open", error);
  }
  if (selected === id) {
    renderConversation();
    markReadSoon();
  }
}

let marking = false;
/** Marks the open conversation read while the page is visible and something is unread. */
async function markReadSoon() {
  const conversation = selected && client.conversation(selected);
  if (marking || !conversation || conversation.unreadCount === 0 || document.visibilityState !== "visible") return;
  marking = true;
  try {
    await client.markRead(conversation.id);
  } catch (error) {
    console.warn("markRead", error);
  } finally {
    marking = false;
  }
  // Something may have arrived meanwhile.
  if (client.conversation(conversation.id)?.unreadCount) markReadSoon();
}

async function loadEarlier() {
  const id = selected;
  const list = messagesOf(id);
  const oldest = list[0]?.seq;
  if (oldest === undefined) return;
  const { messages: page, hasMore } = await client.history(id, { beforeSeq: oldest, limit: 50 });
  const older = page.filter((m) => m.seq < (messagesOf(id)[0]?.seq ?? Infinity));
  messagesOf(id).unshift(...older);
  if (!hasMore) atStart.add(id);
  if (selected === id) {
    const box = $("messages");
    const fromBottom = box.scrollHeight - box.scrollTop;
    renderMessages();
    box.scrollTop = box.scrollHeight - fromBottom;
  }
}

async function showTranscript() {
  const id = selected;
  const panel = $("transcript");
  panel.hidden = false;
  panel.className = "";
  panel.textContent = "Downloading the transcript…";
  try {
    const headers = { authorization: `Bearer ${token}` };
    const response = await fetch(`/v1/conversations/${id}/transcript`, { headers });
    if (!response.ok) throw new Error(`transcript: HTTP ${response.status}`);
    const text = await response.text();
    const exported = JSON.parse(text);
    const keys = await (await fetch("/v1/transcript-keys")).json();
    const witness = client.conversation(id)?.transcript;
    const result = await verifyTranscript(exported, keys, { witness });
    const download = h("a", {
      href: URL.createObjectURL(new Blob([text], { type: "application/json" })),
      download: `transcript-${id}.json`,
      text: "download",
    });
    if (result.ok) {
      panel.className = "ok";
      panel.replaceChildren(
        h("span", {
          "data-testid": "transcript-result",
          text: `verified: ${result.size} entries, signed by key ${result.keyId} at ${result.signedAt}`,
        }),
        " · ",
        download,
      );
    } else {
      panel.className = "bad";
      const where = result.entry === null ? "the checkpoint" : `entry ${result.entry}`;
      panel.replaceChildren(
        h("span", { "data-testid": "transcript-result", text: `NOT verified: ${where} fails: ${result.reason}` }),
        " · ",
        download,
      );
    }
  } catch (error) {
    panel.className = "bad";
    panel.textContent = `Could not check the transcript: ${error.message}`;
  }
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const body = $("body").value;
  if (!selected || body.trim() === "") return;
  $("body").value = "";
  client.send(selected, body).catch((error) => {
    $("typing").textContent = `Not sent: ${error.code ?? error.message}`;
  });
});
$("body").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
$("body").addEventListener("input", () => selected && client.typing(selected));
$("earlier").addEventListener("click", () => loadEarlier().catch((error) => console.error(error)));
$("transcript-button").addEventListener("click", () => showTranscript());
document.addEventListener("visibilitychange", () => markReadSoon());

// ------------------------------------------------------------------------------ client events

client.on("status", (status) => renderBanner(status));
client.on("conversations", (list) => {
  renderList();
  if (!selected && list.length) select(list[0].id);
});
client.on("conversation", (conversation) => {
  renderList();
  if (conversation.id === selected) renderConversation();
});
client.on("message", (message) => {
  messagesOf(message.conversationId).push(message);
  if (message.conversationId === selected) {
    renderMessages();
    if (message.senderId !== me) markReadSoon();
  }
});
client.on("outbox", () => renderMessages());
client.on("read", (mark) => mark.conversationId === selected && renderMessages());
client.on("typing", (event) => {
  if (event.userId === me) return;
  clearTimeout(typingTimers.get(event.conversationId));
  if (event.conversationId !== selected) return;
  const conversation = client.conversation(event.conversationId);
  const name = conversation ? other(conversation)?.displayName : "The other participant";
  $("typing").textContent = event.isTyping ? `${name} is typing…` : "";
  if (event.isTyping) {
    // The gateway says `false` within 5 s of the last refresh; this covers a lost connection.
    typingTimers.set(
      event.conversationId,
      setTimeout(() => ($("typing").textContent = ""), 6_000),
    );
  }
});
client.on("failed", (error, entry) => {
  if (entry.conversationId === selected) $("typing").textContent = `Not sent: ${error.code}`;
});
client.on("error", (error) => console.warn("parley:", error));

renderBanner("connecting");
client.connect().catch((error) => console.error("connect", error));
