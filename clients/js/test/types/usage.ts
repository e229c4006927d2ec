// Compiled, never run (`npm run typecheck`): the package's types hold the contract. Each
// `@ts-expect-error` is a misuse the compiler must refuse; if one compiles, the check fails.

import {
  type Ack,
  type ErrorCode,
  type Message,
  ParleyClient,
  ParleyError,
  type TranscriptExport,
  verifyTranscript,
} from "../../src/index.js";

declare const client: ParleyClient;
declare const exported: TranscriptExport;

// The raw socket is Socket<ServerToClientEvents, ClientToServerEvents>.
client.socket.emit("message:send", { conversationId: "c", body: "hi", clientMsgId: "x-1" }, (ack) => {
  if (ack.ok) {
    const seq: number = ack.message.seq;
    void seq;
  } else {
    const code: ErrorCode = ack.error.code;
    void code;
  }
});
client.socket.emit("conversation:join", { conversationId: "c", lastSeq: 3 }, (ack) => {
  if (ack.ok) {
    const complete: boolean = ack.complete;
    const unread: number = ack.conversation.unreadCount;
    void complete;
    void unread;
  }
});
client.socket.on("message:new", (message) => {
  const replayed: true | undefined = message.replayed;
  void replayed;
});
client.socket.on("conversation:typing", (event) => {
  const typing: boolean = event.isTyping;
  void typing;
});

// @ts-expect-error: `body` is required
client.socket.emit("message:send", { conversationId: "c" }, () => undefined);
// @ts-expect-error: not an event of the contract
client.socket.emit("message:delete", { id: "m" }, () => undefined);
// @ts-expect-error: lastSeq is a number
client.socket.emit("conversation:join", { conversationId: "c", lastSeq: "3" }, () => undefined);
// @ts-expect-error: not an error code of the contract
const wrong: ErrorCode = "forbidden";
void wrong;

// The client's own surface.
async function usage(): Promise<void> {
  const message: Message = await client.send("c", "hello");
  client.on("message", (m: Message) => void m.body);
  client.on("status", (status) => {
    // @ts-expect-error: not a status
    if (status === "online") return;
  });
  try {
    await client.markRead("c", message.id);
  } catch (error) {
    if (error instanceof ParleyError && error.code === "rate_limited") void error.retryAfterMs;
  }
  const result = await verifyTranscript(exported, ["base64key"]);
  if (result.ok) void result.keyId;
  else void result.entry;
  const ack: Ack<{ lastReadSeq: number }> = { ok: false, error: { code: "not_found", message: "no" } };
  void ack;
}
void usage;
