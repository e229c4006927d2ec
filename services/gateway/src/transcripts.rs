//! Transcript operations (contract, "Transcripts"): the export and a checkpoint signed now, for
//! the conversation's two participants only, and the list of public keys for anyone. The
//! persistence worker chains the entries; the gateway only reads them back and signs, since it
//! alone holds `PARLEY_TRANSCRIPT_KEY`.
//!
//! An export is streamed: the conversation's header is read first (so a refusal is still a
//! proper 404 or 503), then the entries are written as Postgres sends them through a small
//! bounded channel, so a conversation of 100k messages costs the gateway a few chunks of memory,
//! never a `Vec` of its rows. The checkpoint at the end covers the size and head the conversation
//! row recorded when the export began, so the export is exactly what was chained then; a row
//! altered behind Parley's back shows as an entry whose hash fails, not as a quietly re-signed
//! chain.

use axum::body::{Body, Bytes};
use futures::StreamExt as _;
use parley_store::Store;
use parley_transcript::keys::{Checkpoint, ListedKey, TranscriptKeys};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::auth::UserId;
use crate::error::ApiError;

/// Chunks of an export in flight between Postgres and the client.
const EXPORT_CHUNKS_IN_FLIGHT: usize = 16;
/// Entries written into one chunk.
const ENTRIES_PER_CHUNK: usize = 64;

#[derive(Clone)]
pub(crate) struct Transcripts {
    store: Store,
    keys: TranscriptKeys,
}

impl Transcripts {
    pub(crate) fn new(store: Store, keys: TranscriptKeys) -> Self {
        Self { store, keys }
    }

    /// The current key and the retired ones.
    pub(crate) fn keys(&self) -> Vec<ListedKey> {
        self.keys.listed()
    }

    /// The transcript's current size and head, signed now.
    pub(crate) async fn checkpoint(&self, user: UserId, conversation_id: Uuid) -> Result<Checkpoint, ApiError> {
        let header = self.header(user, conversation_id).await?;
        Ok(self.keys.sign(conversation_id, header.size, &header.head))
    }

    /// The export, as a body that streams.
    pub(crate) async fn export(&self, user: UserId, conversation_id: Uuid) -> Result<Body, ApiError> {
        let header = self.header(user, conversation_id).await?;
        let (chunks, body) = mpsc::channel::<Result<Bytes, std::io::Error>>(EXPORT_CHUNKS_IN_FLIGHT);
        let (store, keys) = (self.store.clone(), self.keys.clone());
        tokio::spawn(async move {
            let outcome = write_export(&store, &keys, &header, &chunks).await;
            if let Err(error) = outcome {
                // The client sees the body end early (no closing checkpoint): never a whole-looking
                // export that is not one.
                tracing::error!(%conversation_id, %error, "a transcript export stopped");
                let _ = chunks.send(Err(std::io::Error::other(error))).await;
            }
        });
        let stream = futures::stream::unfold(
            body,
            |mut body| async move { body.recv().await.map(|chunk| (chunk, body)) },
        );
        Ok(Body::from_stream(stream))
    }

    async fn header(&self, user: UserId, conversation_id: Uuid) -> Result<parley_store::TranscriptHeader, ApiError> {
        let access = self
            .store
            .access(conversation_id, user.0)
            .await
            .map_err(ApiError::during("reading a conversation"))?;
        if access.is_none() {
            return Err(ApiError::not_found());
        }
        self.store
            .transcript_header(conversation_id)
            .await
            .map_err(ApiError::during("reading a transcript"))?
            .ok_or_else(ApiError::not_found)
    }
}

/// Writes the export into `chunks`; stops quietly when the client went away.
async fn write_export(
    store: &Store,
    keys: &TranscriptKeys,
    header: &parley_store::TranscriptHeader,
    chunks: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), String> {
    let mut chunk = parley_transcript::export::opening(header.conversation_id);
    let mut in_chunk = 0;
    let mut first = true;
    let mut entries = std::pin::pin!(store.transcript_entries(header.conversation_id, header.size));
    while let Some(stored) = entries.next().await {
        let stored = stored.map_err(|e| e.to_string())?;
        let entry = stored
            .entry(header)
            .map_err(|why| format!("entry {}: {why}", stored.n))?;
        // The stored hash, as chained: recomputing it here would hide a row altered since.
        let hash = stored.hash.unwrap_or(parley_transcript::GENESIS);
        chunk.extend(parley_transcript::export::entry(stored.n, &entry, &hash, first));
        first = false;
        in_chunk += 1;
        if in_chunk == ENTRIES_PER_CHUNK {
            if chunks.send(Ok(Bytes::from(std::mem::take(&mut chunk)))).await.is_err() {
                return Ok(());
            }
            in_chunk = 0;
        }
    }
    chunk.extend(parley_transcript::export::closing(&keys.sign(
        header.conversation_id,
        header.size,
        &header.head,
    )));
    let _ = chunks.send(Ok(Bytes::from(chunk))).await;
    Ok(())
}
