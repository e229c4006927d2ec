//! Parley's key-value buckets. Their settings live here rather than in `nats/` because a bucket is
//! a stream with conventions the client library fills in; each process creates the ones it uses.
//!
//! - `PARLEY_PRESENCE`: one key per (user, gateway instance) while that instance holds a socket of
//!   the user. Gateways refresh their keys well within the bucket's one-minute age limit, so the
//!   keys of a gateway that died without cleaning up vanish within a minute.
//! - `PARLEY_CONVERSATIONS`: the directory of conversations, one entry per conversation keyed by
//!   its id ([`conversation_key`]): project title, participants' ids, roles, names and emails,
//!   and `closedAt` once the project closed. The notification workers build it from
//!   `parley.project.started` and `parley.project.closed` (in whichever order they apply them: a
//!   close seen first leaves an entry holding only `conversationId`, `projectId` and `closedAt`,
//!   which the start completes) and read it for notifications and emails; gateways read it for
//!   membership when Postgres cannot answer. Readers ignore fields they do not know, so `closedAt`
//!   broke none.
//! - `PARLEY_SENT`: per message sent with a `clientMsgId`, keyed by the message id derived from it,
//!   the conversation and stream sequence it was stored at. Gateways write it after the publish
//!   ack and read it when Postgres cannot say whether a repeat was stored: it carries idempotency
//!   past the chat stream's duplicate window (two hours) for as long as the bucket keeps a key.
//! - `PARLEY_EMAIL_SENT`: per (conversation, recipient), the last message a digest listed, so a
//!   redelivered job never mails the same messages twice.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream::DirectGetErrorKind};
use uuid::Uuid;

use crate::SetupError;

pub const PRESENCE_BUCKET: &str = "PARLEY_PRESENCE";
pub const CONVERSATIONS_BUCKET: &str = "PARLEY_CONVERSATIONS";
pub const EMAIL_SENT_BUCKET: &str = "PARLEY_EMAIL_SENT";
pub const SENT_BUCKET: &str = "PARLEY_SENT";

/// How long a presence key lives without a refresh.
pub const PRESENCE_TTL: Duration = Duration::from_secs(60);
/// How often a gateway refreshes its presence keys.
pub const PRESENCE_REFRESH: Duration = Duration::from_secs(20);

fn config(bucket: &str, description: &str, max_age: Duration, replicas: usize) -> kv::Config {
    kv::Config {
        bucket: bucket.to_owned(),
        description: description.to_owned(),
        history: 1,
        max_age,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Opens the bucket `config` describes, creating or updating it only when it is missing or
/// differs. As for the streams (see `ensure_streams`): on a cluster that just formed, processes
/// starting together send identical creates at once and the server answers only one; so a
/// bucket that is already right is left alone, and a create left unanswered is followed by
/// waiting for the bucket to appear.
async fn ensure(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, SetupError> {
    let name = config.bucket.clone();
    let failed = |source: async_nats::Error| SetupError::Stream {
        name: name.clone(),
        source,
    };
    if let Ok(stream) = js.get_stream(format!("KV_{name}")).await {
        let actual = &stream.cached_info().config;
        let same = actual.num_replicas == config.num_replicas
            && actual.max_age == config.max_age
            && actual.max_messages_per_subject == config.history;
        if same {
            return js.get_key_value(&name).await.map_err(|e| failed(e.into()));
        }
    }
    match js.create_or_update_key_value(config).await {
        Ok(store) => Ok(store),
        // Unanswered, in whichever of its requests (the client wraps a timed-out stream lookup
        // as a JetStream error): another process's create may be the one being answered.
        Err(error) => {
            tracing::warn!(bucket = %name, %error, "creating the bucket got no answer; waiting for it to appear");
            crate::settle(&format!("bucket {name}"), || async {
                js.get_key_value(&name).await.ok()
            })
            .await
            .map_err(|_| failed(error.into()))
        }
    }
}

pub async fn presence(js: &jetstream::Context, replicas: usize) -> Result<kv::Store, SetupError> {
    let description = "Which users have a connected socket, per gateway instance";
    ensure(js, config(PRESENCE_BUCKET, description, PRESENCE_TTL, replicas)).await
}

pub async fn conversations(js: &jetstream::Context, replicas: usize) -> Result<kv::Store, SetupError> {
    let description = "Conversation directory: titles, participants, closes";
    ensure(js, config(CONVERSATIONS_BUCKET, description, Duration::ZERO, replicas)).await
}

pub async fn email_sent(js: &jetstream::Context, replicas: usize) -> Result<kv::Store, SetupError> {
    let description = "Email digests already sent";
    ensure(
        js,
        config(
            EMAIL_SENT_BUCKET,
            description,
            Duration::from_secs(7 * 24 * 3600),
            replicas,
        ),
    )
    .await
}

/// Messages sent with a `clientMsgId`, each kept `ttl` after it was sent.
pub async fn sent(js: &jetstream::Context, replicas: usize, ttl: Duration) -> Result<kv::Store, SetupError> {
    let description = "Where each message sent with a clientMsgId was stored, by its id";
    ensure(js, config(SENT_BUCKET, description, ttl, replicas)).await
}

/// The directory key of a conversation.
pub fn conversation_key(conversation_id: Uuid) -> String {
    conversation_id.to_string()
}

/// The presence key of `user` on gateway `instance`.
pub fn presence_key(user: Uuid, instance: Uuid) -> String {
    format!("{user}.{instance}")
}

/// Whether `user` has a connected socket on any gateway: some `<user>.<instance>` key whose
/// latest value is a put (not a delete), younger than the bucket's age limit.
pub async fn is_online(js: &jetstream::Context, user: Uuid) -> Result<bool, async_nats::Error> {
    let stream = js.get_stream(format!("KV_{PRESENCE_BUCKET}")).await?;
    let filter = format!("$KV.{PRESENCE_BUCKET}.{user}.*");
    let subjects: Vec<String> = {
        use futures::TryStreamExt;
        let info = stream.info_with_subjects(&filter).await?;
        info.map_ok(|(subject, _)| subject).try_collect().await?
    };
    for subject in subjects {
        match stream.direct_get_last_for_subject(subject).await {
            Ok(message) => {
                let operation = message.headers.get("KV-Operation").map(|v| v.as_str().to_owned());
                if operation.is_none() || operation.as_deref() == Some("PUT") {
                    return Ok(true);
                }
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(false)
}
