// ParleyClient: the hard part of a Parley client, done once. It keeps the last seen `seq` of
// every open conversation, joins again with it after every (re)connect and pages the rest with
// history, so each message reaches the application once and in order; it sends through an
// outbox that retries with the same clientMsgId; and it keeps unread counts, read marks and
// typing from the server's events.

import { io, type ManagerOptions, type Socket, type SocketOptions } from "socket.io-client";

import { Emitter } from "./emitter.js";
import type {
  ClientToServerEvents,
  Conversation,
  ConversationReadEvent,
  ErrorBody,
  ErrorCode,
  HistoryRequest,
  Message,
  MessageNewEvent,
  MessageReadEvent,
  ServerToClientEvents,
  TypingEvent,
} from "./types.js";

/** A token, or a function giving one; the function is called on every (re)connect attempt. */
export type TokenSource = string | (() => string | Promise<string>);

/** A send not yet acknowledged. */
export interface OutboxEntry {
  clientMsgId: string;
  conversationId: string;
  body: string;
  /** When `send()` was called (RFC 3339). */
  queuedAt: string;
}

/** Where unacknowledged sends survive a reload (e.g. `localStorageOutbox()`). */
export interface OutboxStorage {
  load(): OutboxEntry[] | Promise<OutboxEntry[]>;
  save(entries: OutboxEntry[]): void | Promise<void>;
}

export type ConnectionStatus =
  /** Connecting for the first time. */
  | "connecting"
  | "connected"
  /** Lost; reconnecting on its own. */
  | "reconnecting"
  /** The gateway refused the token and no fresh one can be had (a static token): given up. */
  | "unauthorized"
  /** `close()` was called. */
  | "closed";

/** Codes of refused calls: the contract's, plus the client's own. */
export type ParleyErrorCode = ErrorCode | "timeout" | "disconnected" | "closed";

export class ParleyError extends Error {
  readonly code: ParleyErrorCode;
  readonly retryAfterMs: number | undefined;
  constructor(code: ParleyErrorCode, message: string, retryAfterMs?: number) {
    super(message);
    this.name = "ParleyError";
    this.code = code;
    this.retryAfterMs = retryAfterMs;
  }
  static from(error: ErrorBody): ParleyError {
    return new ParleyError(error.code, error.message, error.retryAfterMs);
  }
}

export interface ParleyClientOptions {
  /** The gateway's (or a same-origin proxy's) base URL; omitted in a browser: this page's origin. */
  url?: string;
  token: TokenSource;
  /** Keeps the outbox across reloads; without it the outbox lives in memory. */
  storage?: OutboxStorage;
  /** How long to wait for any acknowledgement (default 10 s). */
  ackTimeoutMs?: number;
  /** History page size when catching up (1..200, default 200). */
  pageSize?: number;
  /** While the user keeps typing, `isTyping: true` is sent again this often (default 3 s; the server drops it after 5 s). */
  typingRefreshMs?: number;
  /** After the last keystroke, `isTyping: false` is sent this much later (default 4 s). */
  typingIdleMs?: number;
  /** Extra socket.io-client options (e.g. `transports`); `auth` and `autoConnect` are the client's. */
  socketOptions?: Partial<ManagerOptions & SocketOptions>;
}

/** A read mark that moved: `userId` has read everything up to `lastReadSeq`. */
export interface ReadMark {
  conversationId: string;
  userId: string;
  lastReadSeq: number;
}

export interface ParleyClientEvents {
  status: (status: ConnectionStatus) => void;
  /** A message of an open conversation: each once, in `seq` order, across reconnects. */
  message: (message: Message) => void;
  /** A conversation's summary changed (last message, unread count, read marks, status). */
  conversation: (conversation: Conversation) => void;
  /** The list was (re)loaded from the server. */
  conversations: (conversations: Conversation[]) => void;
  /** An open conversation caught up after a (re)join; live messages follow. */
  synced: (conversationId: string) => void;
  typing: (event: TypingEvent) => void;
  read: (mark: ReadMark) => void;
  /** The unacknowledged sends changed. */
  outbox: (entries: OutboxEntry[]) => void;
  /** A send of the outbox was stored (also for sends restored from storage, which no promise awaits). */
  sent: (message: Message, entry: OutboxEntry) => void;
  /** A send was refused for good (e.g. `conversation_closed`) and left the outbox. */
  failed: (error: ParleyError, entry: OutboxEntry) => void;
  /** Something went wrong outside any call (a join refused, storage failing, …). */
  error: (error: Error) => void;
}

interface ConversationState {
  id: string;
  summary: Conversation | null;
  /** The application has it open: joined on every connect, messages delivered. */
  open: boolean;
  /** The last seq delivered to the application; null before the first page. */
  lastSeq: number | null;
  syncing: boolean;
  /** Bumped by every sync, so a sync overtaken by a reconnect gives up. */
  generation: number;
  /** Messages held while syncing, by id. */
  buffer: Map<string, Message>;
  /** The highest seq of the current join's replay. */
  replayMax: number;
  /** `unreadCount` of the last snapshot, counted up to `baseSeq`. */
  unreadBase: number;
  baseSeq: number;
  /** Seqs of the other party's messages seen after the snapshot. */
  liveUnread: Set<number>;
  synced: Promise<void>;
  resolveSynced: () => void;
}

interface TypingState {
  active: boolean;
  lastSent: number;
  idle: ReturnType<typeof setTimeout> | undefined;
}

interface Pending {
  resolve: (message: Message) => void;
  reject: (error: ParleyError) => void;
}

type ParleySocket = Socket<ServerToClientEvents, ClientToServerEvents>;
type Requests = ClientToServerEvents;
type RequestOf<E extends keyof Requests> = Parameters<Requests[E]>[0];
type AckOf<E extends keyof Requests> = Parameters<Parameters<Requests[E]>[1]>[0];
type Success<E extends keyof Requests> = Extract<AckOf<E>, { ok: true }>;

const PREVIEW_LENGTH = 120;

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** 32 hex digits of randomness: a clientMsgId (the contract allows 64 of A-Za-z0-9_-). */
export function newClientMsgId(): string {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The `sub` claim of a JWT (not verified: the gateway does that). */
export function tokenSubject(token: string): string | null {
  try {
    const payload = token.split(".")[1] ?? "";
    const base64 = payload.replace(/-/g, "+").replace(/_/g, "/");
    const text = new TextDecoder().decode(Uint8Array.from(atob(base64), (c) => c.charCodeAt(0)));
    const sub = (JSON.parse(text) as { sub?: unknown }).sub;
    return typeof sub === "string" ? sub.toLowerCase() : null;
  } catch {
    return null;
  }
}

/** An outbox kept in `localStorage` under `key`, for browsers. */
export function localStorageOutbox(key = "parley-outbox"): OutboxStorage {
  return {
    load: () => {
      const text = globalThis.localStorage?.getItem(key);
      return text ? (JSON.parse(text) as OutboxEntry[]) : [];
    },
    save: (entries) => globalThis.localStorage?.setItem(key, JSON.stringify(entries)),
  };
}

/** The body cut to at most 120 characters (Unicode scalar values), as the contract's previews. */
export function previewOf(body: string): string {
  const chars = Array.from(body);
  return chars.length <= PREVIEW_LENGTH ? body : chars.slice(0, PREVIEW_LENGTH).join("");
}

export class ParleyClient extends Emitter<ParleyClientEvents> {
  readonly socket: ParleySocket;
  #token: TokenSource;
  #storage: OutboxStorage | undefined;
  #ackTimeoutMs: number;
  #pageSize: number;
  #typingRefreshMs: number;
  #typingIdleMs: number;
  #userId: string | null;
  #status: ConnectionStatus = "connecting";
  #conversations = new Map<string, ConversationState>();
  #typing = new Map<string, TypingState>();
  #outbox: OutboxEntry[] = [];
  #pending = new Map<string, Pending>();
  #pumping = false;
  #ready: Promise<void>;
  #closed = false;
  #retryTimer: ReturnType<typeof setTimeout> | undefined;
  #retries = 0;
  /** The list refresh of the current connection. */
  #listed: Promise<unknown> | undefined;

  constructor(options: ParleyClientOptions) {
    super();
    this.#token = options.token;
    this.#storage = options.storage;
    this.#ackTimeoutMs = options.ackTimeoutMs ?? 10_000;
    this.#pageSize = Math.min(200, Math.max(1, options.pageSize ?? 200));
    this.#typingRefreshMs = options.typingRefreshMs ?? 3_000;
    this.#typingIdleMs = options.typingIdleMs ?? 4_000;
    this.#userId = typeof this.#token === "string" ? tokenSubject(this.#token) : null;
    const socketOptions: Partial<ManagerOptions & SocketOptions> = {
      ...options.socketOptions,
      autoConnect: false,
      auth: (cb: (data: object) => void) => {
        this.#freshToken().then(
          (token) => cb({ token }),
          (error: unknown) => {
            this.emit("error", error instanceof Error ? error : new Error(String(error)));
            cb({ token: "" });
          },
        );
      },
    };
    this.socket = (options.url === undefined ? io(socketOptions) : io(options.url, socketOptions)) as ParleySocket;
    this.#listen();
    this.#ready = this.#loadOutbox();
  }

  // ------------------------------------------------------------------------ connection

  /** Connects (after restoring the outbox from storage); resolves once connected the first time. */
  async connect(): Promise<void> {
    await this.#ready;
    if (this.#closed) throw new ParleyError("closed", "the client is closed");
    if (this.socket.connected) return;
    const connected = new Promise<void>((resolve, reject) => {
      const offStatus = this.on("status", (status) => {
        if (status === "connected") {
          offStatus();
          resolve();
        } else if (status === "unauthorized" || status === "closed") {
          offStatus();
          reject(new ParleyError(status === "closed" ? "closed" : "unauthorized", `connection ${status}`));
        }
      });
    });
    this.socket.connect();
    await connected;
    await this.#listed?.catch(() => undefined);
  }

  /** Disconnects for good; unacknowledged sends stay in storage, their promises are rejected. */
  close(): void {
    this.#closed = true;
    clearTimeout(this.#retryTimer);
    for (const state of this.#typing.values()) clearTimeout(state.idle);
    this.socket.disconnect();
    for (const [, pending] of this.#pending) pending.reject(new ParleyError("closed", "the client was closed"));
    this.#pending.clear();
    this.#setStatus("closed");
  }

  get status(): ConnectionStatus {
    return this.#status;
  }

  /** The signed-in user's id (the token's `sub`), once known. */
  get userId(): string | null {
    return this.#userId;
  }

  async #freshToken(): Promise<string> {
    const token = typeof this.#token === "string" ? this.#token : await this.#token();
    this.#userId = tokenSubject(token) ?? this.#userId;
    return token;
  }

  #setStatus(status: ConnectionStatus): void {
    if (this.#status === status) return;
    this.#status = status;
    this.emit("status", status);
  }

  /** Connects again later, for the cases socket.io-client leaves to the application. */
  #scheduleReconnect(): void {
    if (this.#closed) return;
    clearTimeout(this.#retryTimer);
    const delay = Math.min(10_000, 250 * 2 ** this.#retries++);
    this.#retryTimer = setTimeout(() => {
      if (!this.#closed && !this.socket.connected) this.socket.connect();
    }, delay);
  }

  #listen(): void {
    const socket = this.socket;
    socket.on("connect", () => {
      this.#retries = 0;
      this.#setStatus("connected");
      void this.#onConnect();
    });
    socket.on("disconnect", (reason) => {
      for (const state of this.#conversations.values()) {
        state.syncing = false;
        state.generation++;
        state.buffer.clear();
      }
      for (const state of this.#typing.values()) {
        clearTimeout(state.idle);
        state.active = false;
      }
      if (this.#closed || reason === "io client disconnect") return;
      this.#setStatus("reconnecting");
      // The server ended it (e.g. the token expired): socket.io-client leaves reconnecting to us.
      if (reason === "io server disconnect") this.#scheduleReconnect();
    });
    socket.on("connect_error", (error) => {
      if (this.#closed) return;
      if (socket.active) {
        // A transport failure: socket.io-client retries by itself.
        if (this.#status === "connected") this.#setStatus("reconnecting");
        return;
      }
      // Refused by the gateway (`unauthorized`, `too_many_connections`).
      if (error.message === "unauthorized" && typeof this.#token === "string") {
        this.#setStatus("unauthorized");
        this.emit("error", new ParleyError("unauthorized", "the gateway refused the token"));
        return;
      }
      if (this.#status !== "connecting") this.#setStatus("reconnecting");
      this.#scheduleReconnect();
    });
    socket.on("message:new", (message) => this.#onMessage(message));
    socket.on("message:read", (event: MessageReadEvent) => this.#onRead(event.conversationId, event.userId, event.seq));
    socket.on("conversation:read", (event: ConversationReadEvent) =>
      this.#onRead(event.conversationId, event.userId, event.lastReadSeq),
    );
    socket.on("conversation:typing", (event) => this.emit("typing", event));
  }

  async #onConnect(): Promise<void> {
    // Sends first: they do not wait for the list or the joins (the gateway orders them).
    void this.#pump();
    const listed = (this.#listed = this.refresh());
    try {
      await listed;
    } catch (error) {
      this.#report(error);
    }
    for (const state of this.#conversations.values()) {
      // One that is syncing already was opened on this connection.
      if (state.open && !state.syncing) void this.#sync(state).catch((error: unknown) => this.#report(error));
    }
  }

  #report(error: unknown): void {
    if (error instanceof ParleyError && (error.code === "disconnected" || error.code === "timeout")) return;
    this.emit("error", error instanceof Error ? error : new Error(String(error)));
  }

  /** Emits a request and resolves to its acknowledgement's success, or throws a ParleyError. */
  async #request<E extends keyof Requests>(event: E, payload: RequestOf<E>): Promise<Success<E>> {
    if (!this.socket.connected) throw new ParleyError("disconnected", `not connected (${event})`);
    let answer: AckOf<E>;
    try {
      // eslint-disable-next-line @typescript-eslint/no-explicit-any
      answer = await (this.socket.timeout(this.#ackTimeoutMs) as any).emitWithAck(event, payload);
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      const code = this.socket.connected ? "timeout" : "disconnected";
      throw new ParleyError(code, `${event}: ${message}`);
    }
    if (!answer || typeof answer !== "object") throw new ParleyError("invalid_request", `${event}: malformed ack`);
    if (!answer.ok) throw ParleyError.from(answer.error);
    return answer as Success<E>;
  }

  // ------------------------------------------------------------------------ conversations

  #state(conversationId: string): ConversationState {
    let state = this.#conversations.get(conversationId);
    if (!state) {
      let resolveSynced!: () => void;
      const synced = new Promise<void>((resolve) => (resolveSynced = resolve));
      state = {
        id: conversationId,
        summary: null,
        open: false,
        lastSeq: null,
        syncing: false,
        generation: 0,
        buffer: new Map(),
        replayMax: 0,
        unreadBase: 0,
        baseSeq: 0,
        liveUnread: new Set(),
        synced,
        resolveSynced,
      };
      this.#conversations.set(conversationId, state);
    }
    return state;
  }

  /** The conversations known so far, latest activity first, with unread counts kept current. */
  conversations(): Conversation[] {
    return [...this.#conversations.values()]
      .map((state) => this.#view(state))
      .filter((conversation): conversation is Conversation => conversation !== null)
      .sort((a, b) => (a.updatedAt < b.updatedAt ? 1 : a.updatedAt > b.updatedAt ? -1 : 0));
  }

  conversation(conversationId: string): Conversation | null {
    const state = this.#conversations.get(conversationId);
    return state ? this.#view(state) : null;
  }

  /** The last seq delivered for `conversationId` (keep it to resume after a reload). */
  lastSeq(conversationId: string): number | null {
    return this.#conversations.get(conversationId)?.lastSeq ?? null;
  }

  /** Reloads the conversation list from the server (done on every connect). */
  async refresh(): Promise<Conversation[]> {
    const { conversations } = await this.#request("conversation:list", {});
    for (const conversation of conversations) this.#snapshot(this.#state(conversation.id), conversation);
    const list = this.conversations();
    this.emit("conversations", list);
    return list;
  }

  /**
   * Opens a conversation: joins it now and after every reconnect, delivering its messages through
   * the `message` event, each once, in `seq` order. Without a known `lastSeq` (from this client,
   * or given), it starts from the latest history page. Resolves once caught up.
   */
  async open(conversationId: string, options: { lastSeq?: number } = {}): Promise<Conversation> {
    const state = this.#state(conversationId);
    if (options.lastSeq !== undefined && state.lastSeq === null) state.lastSeq = options.lastSeq;
    const wasOpen = state.open;
    state.open = true;
    // A sync overtaken by a reconnect leaves it to the next one.
    if (!(!wasOpen && this.socket.connected && (await this.#sync(state)))) await state.synced;
    const view = this.#view(state);
    if (!view) throw new ParleyError("not_found", "conversation not found");
    return view;
  }

  /** Stops joining `conversationId`; its messages are no longer delivered (the summary stays current). */
  async leave(conversationId: string): Promise<void> {
    const state = this.#conversations.get(conversationId);
    if (!state?.open) return;
    state.open = false;
    state.generation++;
    state.syncing = false;
    state.buffer.clear();
    this.#resetSynced(state);
    this.stopTyping(conversationId);
    if (this.socket.connected) await this.#request("conversation:leave", { conversationId });
  }

  #resetSynced(state: ConversationState): void {
    state.synced = new Promise<void>((resolve) => (state.resolveSynced = resolve));
  }

  /**
   * Joins with the last seq, pages what the replay left, then delivers in order. Resolves to
   * false when a reconnect or a leave overtook it.
   */
  async #sync(state: ConversationState): Promise<boolean> {
    const generation = ++state.generation;
    state.syncing = true;
    state.buffer.clear();
    state.replayMax = 0;
    const current = () => state.generation === generation && state.open;
    try {
      let after = state.lastSeq;
      if (after === null) {
        // First open: the latest page is the starting point; older pages are the app's to ask for.
        const page = await this.#request("conversation:history", {
          conversationId: state.id,
          limit: Math.min(50, this.#pageSize),
        });
        if (!current()) return false;
        for (const message of page.messages) state.buffer.set(message.id, message);
        after = page.messages.reduce((max, m) => Math.max(max, m.seq), 0);
      }
      // A replay holds at most 1000 messages; the rest is paged with history. History is
      // Postgres, which may lag behind the stream the replay reads: a page can end before the
      // newest acknowledged messages. So after paging, join again from where the pages ended,
      // until a join's replay says it is complete (its messages are held like the others).
      let cursor = after;
      for (;;) {
        state.replayMax = 0;
        const joined = await this.#request("conversation:join", { conversationId: state.id, lastSeq: cursor });
        if (!current()) return false;
        this.#snapshot(state, joined.conversation);
        const replayedTo = Math.max(cursor, state.replayMax);
        if (joined.complete) break;
        let paged = replayedTo;
        for (;;) {
          const page = await this.#request("conversation:history", {
            conversationId: state.id,
            afterSeq: paged,
            limit: this.#pageSize,
          });
          if (!current()) return false;
          for (const message of page.messages) {
            state.buffer.set(message.id, message);
            paged = Math.max(paged, message.seq);
          }
          if (!page.hasMore || page.messages.length === 0) break;
        }
        if (paged === cursor) break; // neither the replay nor history moved: nothing more to get
        cursor = paged;
      }
      const held = [...state.buffer.values()].sort((a, b) => a.seq - b.seq);
      state.buffer.clear();
      state.syncing = false;
      for (const message of held) this.#deliver(state, message);
      this.emit("conversation", this.#view(state) as Conversation);
      this.emit("synced", state.id);
      state.resolveSynced();
      return true;
    } catch (error) {
      if (state.generation === generation) {
        state.syncing = false;
        state.buffer.clear();
      }
      throw error;
    }
  }

  #deliver(state: ConversationState, message: Message): void {
    if (state.lastSeq !== null && message.seq <= state.lastSeq) return; // seen already
    state.lastSeq = message.seq;
    const { replayed: _replayed, ...plain } = message as MessageNewEvent;
    this.emit("message", plain);
  }

  #onMessage(message: MessageNewEvent): void {
    const state = this.#state(message.conversationId);
    this.#track(state, message);
    if (!state.open) return;
    if (state.syncing) {
      state.buffer.set(message.id, message);
      if (message.replayed) state.replayMax = Math.max(state.replayMax, message.seq);
      return;
    }
    this.#deliver(state, message);
  }

  /** No event says a conversation closed; a refused send does (the list says so after a reconnect too). */
  #markClosed(conversationId: string): void {
    const state = this.#conversations.get(conversationId);
    if (!state?.summary || state.summary.status === "closed") return;
    state.summary.status = "closed";
    this.emit("conversation", this.#view(state) as Conversation);
  }

  /** Pages of history, as stored (not delivered through `message`): for scrolling back. */
  async history(
    conversationId: string,
    options: Omit<HistoryRequest, "conversationId"> = {},
  ): Promise<{ messages: Message[]; hasMore: boolean }> {
    const { messages, hasMore } = await this.#request("conversation:history", { conversationId, ...options });
    return { messages, hasMore };
  }

  // ------------------------------------------------------------------------ unread counts and read marks

  #myReadSeq(state: ConversationState): number {
    const me = state.summary?.participants.find((p) => p.userId === this.#userId);
    return me?.lastReadSeq ?? 0;
  }

  /** Takes a server snapshot of the conversation; live counts below it are folded in. */
  #snapshot(state: ConversationState, conversation: Conversation): void {
    const previous = state.summary;
    const next = { ...conversation, participants: conversation.participants.map((p) => ({ ...p })) };
    if (previous) {
      // Read marks never move back; keep the higher of what events said and the snapshot.
      for (const participant of next.participants) {
        const known = previous.participants.find((p) => p.userId === participant.userId);
        if (known && known.lastReadSeq > participant.lastReadSeq) participant.lastReadSeq = known.lastReadSeq;
      }
      if (previous.lastMessage && (!next.lastMessage || previous.lastMessage.seq > next.lastMessage.seq)) {
        next.lastMessage = previous.lastMessage;
        next.updatedAt = previous.updatedAt > next.updatedAt ? previous.updatedAt : next.updatedAt;
      }
    }
    state.summary = next;
    state.unreadBase = conversation.unreadCount;
    state.baseSeq = conversation.lastMessage?.seq ?? 0;
    for (const seq of state.liveUnread) if (seq <= state.baseSeq) state.liveUnread.delete(seq);
    this.emit("conversation", this.#view(state) as Conversation);
  }

  #view(state: ConversationState): Conversation | null {
    if (!state.summary) return null;
    const myRead = this.#myReadSeq(state);
    let live = 0;
    for (const seq of state.liveUnread) if (seq > state.baseSeq && seq > myRead) live++;
    const base = myRead >= state.baseSeq ? 0 : state.unreadBase;
    return {
      ...state.summary,
      participants: state.summary.participants.map((p) => ({ ...p })),
      unreadCount: base + live,
    };
  }

  /** A message seen live or in a replay: the summary's last message and the unread count. */
  #track(state: ConversationState, message: Message): void {
    const summary = state.summary;
    if (!summary) {
      // A conversation the list did not have yet (just started): load it.
      if (this.socket.connected) void this.refresh().catch((error: unknown) => this.#report(error));
      return;
    }
    if (!summary.lastMessage || message.seq > summary.lastMessage.seq) {
      summary.lastMessage = {
        id: message.id,
        senderId: message.senderId,
        preview: previewOf(message.body),
        seq: message.seq,
        createdAt: message.createdAt,
      };
      if (message.createdAt > summary.updatedAt) summary.updatedAt = message.createdAt;
    }
    if (message.senderId !== this.#userId && message.seq > state.baseSeq) state.liveUnread.add(message.seq);
    this.emit("conversation", this.#view(state) as Conversation);
  }

  #onRead(conversationId: string, userId: string, seq: number): void {
    const state = this.#conversations.get(conversationId);
    const participant = state?.summary?.participants.find((p) => p.userId === userId);
    if (state && participant && seq > participant.lastReadSeq) {
      const myReadBefore = this.#myReadSeq(state);
      participant.lastReadSeq = seq;
      if (userId === this.#userId && seq < state.baseSeq && seq > myReadBefore) {
        // Which of the snapshot's unread messages lie below the new mark is not known here.
        if (this.socket.connected) void this.refresh().catch((error: unknown) => this.#report(error));
      }
      this.emit("conversation", this.#view(state) as Conversation);
    }
    this.emit("read", { conversationId, userId, lastReadSeq: seq });
  }

  /** Moves the caller's read mark to `messageId`, or to the latest message; resolves to the mark. */
  async markRead(conversationId: string, messageId?: string): Promise<number> {
    const payload = messageId === undefined ? { conversationId } : { conversationId, messageId };
    const { lastReadSeq } = await this.#request("conversation:markRead", payload);
    if (this.#userId) this.#onRead(conversationId, this.#userId, lastReadSeq);
    return lastReadSeq;
  }

  // ------------------------------------------------------------------------ typing

  /**
   * Call on every keystroke: sends `isTyping: true` at once, again every `typingRefreshMs` while
   * keystrokes continue (the server forgets it after 5 s), and `false` after `typingIdleMs` without one.
   */
  typing(conversationId: string): void {
    let state = this.#typing.get(conversationId);
    if (!state) this.#typing.set(conversationId, (state = { active: false, lastSent: 0, idle: undefined }));
    const now = Date.now();
    if (!state.active || now - state.lastSent >= this.#typingRefreshMs) {
      state.active = true;
      state.lastSent = now;
      this.#fireAndForget(conversationId, true);
    }
    clearTimeout(state.idle);
    state.idle = setTimeout(() => this.stopTyping(conversationId), this.#typingIdleMs);
  }

  /** Sends `isTyping: false` if `true` was the last thing sent (done by `send()` too). */
  stopTyping(conversationId: string): void {
    const state = this.#typing.get(conversationId);
    if (!state) return;
    clearTimeout(state.idle);
    if (!state.active) return;
    state.active = false;
    this.#fireAndForget(conversationId, false);
  }

  #fireAndForget(conversationId: string, isTyping: boolean): void {
    if (!this.socket.connected) return;
    // Typing is best effort: over its throttle the server drops it silently.
    this.#request("conversation:typing", { conversationId, isTyping }).catch(() => undefined);
  }

  // ------------------------------------------------------------------------ sending

  /** The sends not yet acknowledged, oldest first. */
  outbox(): OutboxEntry[] {
    return this.#outbox.map((entry) => ({ ...entry }));
  }

  /**
   * Sends `body`: queued in the outbox under a fresh (or given) clientMsgId, sent as soon as
   * connected and again with the same id after a reconnect until acknowledged; `rate_limited`
   * waits the server's delay. Resolves with the stored message; rejects when the gateway refuses
   * it for good (e.g. `conversation_closed`, `invalid_message`).
   */
  send(conversationId: string, body: string, options: { clientMsgId?: string } = {}): Promise<Message> {
    if (this.#closed) return Promise.reject(new ParleyError("closed", "the client is closed"));
    const entry: OutboxEntry = {
      clientMsgId: options.clientMsgId ?? newClientMsgId(),
      conversationId,
      body,
      queuedAt: new Date().toISOString(),
    };
    this.stopTyping(conversationId);
    const promise = new Promise<Message>((resolve, reject) => this.#pending.set(entry.clientMsgId, { resolve, reject }));
    this.#outbox.push(entry);
    this.#outboxChanged();
    void this.#pump();
    return promise;
  }

  async #loadOutbox(): Promise<void> {
    if (!this.#storage) return;
    try {
      const stored = await this.#storage.load();
      const known = new Set(this.#outbox.map((e) => e.clientMsgId));
      const restored = (Array.isArray(stored) ? stored : []).filter((e) => e && !known.has(e.clientMsgId));
      this.#outbox.unshift(...restored);
      if (restored.length) this.emit("outbox", this.outbox());
    } catch (error) {
      this.#report(error);
    }
  }

  #outboxChanged(): void {
    if (this.#storage) {
      Promise.resolve()
        .then(() => this.#storage?.save(this.outbox()))
        .catch((error: unknown) => this.#report(error));
    }
    this.emit("outbox", this.outbox());
  }

  #settle(entry: OutboxEntry): void {
    const index = this.#outbox.indexOf(entry);
    if (index >= 0) this.#outbox.splice(index, 1);
    this.#outboxChanged();
  }

  /** Sends the outbox, oldest first, one at a time (so the order is the user's). */
  async #pump(): Promise<void> {
    if (this.#pumping) return;
    this.#pumping = true;
    try {
      await this.#ready;
      let backoff = 250;
      while (!this.#closed && this.socket.connected && this.#outbox.length > 0) {
        const entry = this.#outbox[0] as OutboxEntry;
        let message: Message;
        try {
          ({ message } = await this.#request("message:send", {
            conversationId: entry.conversationId,
            body: entry.body,
            clientMsgId: entry.clientMsgId,
          }));
        } catch (error) {
          if (!(error instanceof ParleyError)) throw error;
          if (error.code === "rate_limited") {
            await sleep(error.retryAfterMs ?? 1_000);
            continue;
          }
          if (error.code === "unavailable" || error.code === "timeout") {
            // Outcome unknown: the same clientMsgId again makes it safe.
            await sleep(backoff);
            backoff = Math.min(backoff * 2, 5_000);
            continue;
          }
          if (error.code === "disconnected") break; // again after the reconnect
          if (error.code === "conversation_closed") this.#markClosed(entry.conversationId);
          this.#settle(entry);
          const pending = this.#pending.get(entry.clientMsgId);
          this.#pending.delete(entry.clientMsgId);
          this.emit("failed", error, entry);
          pending?.reject(error);
          continue;
        }
        backoff = 250;
        this.#settle(entry);
        const pending = this.#pending.get(entry.clientMsgId);
        this.#pending.delete(entry.clientMsgId);
        this.emit("sent", message, entry);
        pending?.resolve(message);
      }
    } catch (error) {
      this.#report(error);
    } finally {
      this.#pumping = false;
    }
  }
}
