// @parley/client: a typed client of the Parley gateway over socket.io-client.

export * from "./types.js";
export {
  ParleyClient,
  ParleyError,
  localStorageOutbox,
  newClientMsgId,
  previewOf,
  tokenSubject,
  type ConnectionStatus,
  type OutboxEntry,
  type OutboxStorage,
  type ParleyClientEvents,
  type ParleyClientOptions,
  type ParleyErrorCode,
  type ReadMark,
  type TokenSource,
} from "./client.js";
export { verifyTranscript, type TranscriptVerification, type VerifyOptions } from "./transcript.js";
