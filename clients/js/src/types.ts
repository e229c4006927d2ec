// The objects, events and acknowledgements of Parley's client contract, as TypeScript types.
// Nothing here runs: it is what the rest of the package (and an application) is checked against.

/** A UUID string, lowercase with hyphens. */
export type Uuid = string;
/** An RFC 3339 UTC time string. */
export type Timestamp = string;

/** Every error code the gateway answers with. */
export type ErrorCode =
  | "unauthorized"
  | "not_found"
  | "invalid_message"
  | "invalid_request"
  | "conversation_closed"
  | "rate_limited"
  | "unavailable";

/** The error object of a refused acknowledgement. */
export interface ErrorBody {
  code: ErrorCode;
  message: string;
  /** Present with `rate_limited`: how long to wait before trying again. */
  retryAfterMs?: number;
}

export interface Message {
  id: Uuid;
  conversationId: Uuid;
  projectId: Uuid;
  senderId: Uuid;
  body: string;
  /** Strictly increasing within a conversation, in the order messages were accepted (gaps allowed). */
  seq: number;
  createdAt: Timestamp;
  clientMsgId: string | null;
}

/** `message:new`: a Message, flagged when it comes from a join's replay. */
export interface MessageNewEvent extends Message {
  replayed?: true;
}

export type Role = "client" | "provider";
export type ConversationStatus = "active" | "closed";

export interface Participant {
  userId: Uuid;
  role: Role;
  displayName: string;
  lastReadSeq: number;
}

export interface LastMessage {
  id: Uuid;
  senderId: Uuid;
  /** The body cut to at most 120 characters. */
  preview: string;
  seq: number;
  createdAt: Timestamp;
}

/** The conversation's transcript as of when the Conversation was read. */
export interface TranscriptWitness {
  size: number;
  head: string;
}

export interface Conversation {
  id: Uuid;
  projectId: Uuid;
  projectTitle: string;
  status: ConversationStatus;
  participants: Participant[];
  lastMessage: LastMessage | null;
  /** The other party's messages above the caller's `lastReadSeq`. */
  unreadCount: number;
  updatedAt: Timestamp;
  transcript: TranscriptWitness;
}

// ------------------------------------------------------------------------------ Socket.IO

/** Every acknowledgement: `{ok: true, ...T}` or `{ok: false, error}`. */
export type Ack<T extends object> = ({ ok: true } & T) | { ok: false; error: ErrorBody };

export interface SendRequest {
  conversationId: Uuid;
  body: string;
  clientMsgId?: string;
}
export interface JoinRequest {
  conversationId: Uuid;
  lastSeq?: number;
}
export interface LeaveRequest {
  conversationId: Uuid;
}
export interface TypingRequest {
  conversationId: Uuid;
  isTyping: boolean;
}
export interface MarkReadRequest {
  conversationId: Uuid;
  messageId?: Uuid;
}
export type ListRequest = Record<string, never>;
export interface HistoryRequest {
  conversationId: Uuid;
  beforeSeq?: number;
  afterSeq?: number;
  /** 1..200, default 50. */
  limit?: number;
}

export type SendAck = Ack<{ message: Message }>;
export type JoinAck = Ack<{ conversation: Conversation; replayed: number; complete: boolean }>;
export type LeaveAck = Ack<object>;
export type TypingAck = Ack<object>;
export type MarkReadAck = Ack<{ lastReadSeq: number }>;
export type ListAck = Ack<{ conversations: Conversation[] }>;
export type HistoryAck = Ack<{ messages: Message[]; hasMore: boolean }>;

export interface MessageReadEvent {
  conversationId: Uuid;
  messageId: Uuid;
  seq: number;
  userId: Uuid;
  readAt: Timestamp;
}
export interface ConversationReadEvent {
  conversationId: Uuid;
  userId: Uuid;
  lastReadSeq: number;
  readAt: Timestamp;
}
export interface TypingEvent {
  conversationId: Uuid;
  userId: Uuid;
  isTyping: boolean;
}

/** Client → server events, each with its acknowledgement (`Socket<ServerToClient, ClientToServer>`). */
export interface ClientToServerEvents {
  "message:send": (request: SendRequest, ack: (answer: SendAck) => void) => void;
  "conversation:join": (request: JoinRequest, ack: (answer: JoinAck) => void) => void;
  "conversation:leave": (request: LeaveRequest, ack: (answer: LeaveAck) => void) => void;
  "conversation:typing": (request: TypingRequest, ack: (answer: TypingAck) => void) => void;
  "conversation:markRead": (request: MarkReadRequest, ack: (answer: MarkReadAck) => void) => void;
  "conversation:list": (request: ListRequest, ack: (answer: ListAck) => void) => void;
  "conversation:history": (request: HistoryRequest, ack: (answer: HistoryAck) => void) => void;
}

/** Server → client events. */
export interface ServerToClientEvents {
  "message:new": (message: MessageNewEvent) => void;
  "message:read": (event: MessageReadEvent) => void;
  "conversation:read": (event: ConversationReadEvent) => void;
  "conversation:typing": (event: TypingEvent) => void;
}

/** The connect error messages the gateway gives. */
export type ConnectErrorMessage = "unauthorized" | "too_many_connections";

// ------------------------------------------------------------------------------ HTTP and transcripts

/** `GET /v1/transcript-keys`. */
export interface TranscriptKey {
  keyId: string;
  algorithm: "ed25519";
  /** Base64 of the raw 32-byte public key. */
  publicKey: string;
  current: boolean;
}
export interface TranscriptKeys {
  keys: TranscriptKey[];
}

export interface StartedEntry {
  n: number;
  kind: "started";
  conversationId: string;
  projectId: string;
  projectTitle: string;
  clientId: string;
  clientName: string;
  providerId: string;
  providerName: string;
  at: string;
  hash: string;
}
export interface MessageEntry {
  n: number;
  kind: "message";
  seq: number;
  id: string;
  senderId: string;
  body: string;
  createdAt: string;
  clientMsgId: string | null;
  hash: string;
}
export interface ReadEntry {
  n: number;
  kind: "read";
  userId: string;
  seq: number;
  at: string;
  hash: string;
}
export interface ClosedEntry {
  n: number;
  kind: "closed";
  at: string;
  hash: string;
}
export type TranscriptEntry = StartedEntry | MessageEntry | ReadEntry | ClosedEntry;

export interface Checkpoint {
  conversationId: Uuid;
  size: number;
  head: string;
  signedAt: Timestamp;
  keyId: string;
  signature: string;
}

/** `GET /v1/conversations/{id}/transcript`. */
export interface TranscriptExport {
  format: "parley-transcript/1";
  conversationId: Uuid;
  entries: TranscriptEntry[];
  checkpoint: Checkpoint;
}
