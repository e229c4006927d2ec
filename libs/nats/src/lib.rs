//! How Parley's processes meet NATS: one way to connect (named, reconnecting forever), the
//! stream and consumer definitions from `nats/`, compiled in and applied idempotently at start, so
//! that any process may come up first and the files in `nats/` stay the single source of truth,
//! and one way to consume a durable consumer ([`consume`]).
//!
//! Applying a definition looks before it writes: a stream or consumer that already has what its
//! definition sets is left alone, so processes starting together on a cluster do not all send the
//! meta leader the same request. When they do race on one that does not exist yet, a clustered
//! server answers only one of the identical creates and leaves the others without a reply (seen on
//! 2.12.8: the second of two concurrent `STREAM.CREATE`s of an R3 stream times out although the
//! stream was made). A create or update that times out is therefore not a failure to retry from
//! the start, but a question the stream answers: it is waited for until it shows the definition.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use tracing::{info, warn};

pub mod buckets;
pub mod consume;
pub mod reach;

pub use async_nats;

/// The `NATS_URL` every process and the CLI use when it is unset: a local server.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// The header JetStream deduplicates publishes on.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

pub const PROJECTS_STREAM: &str = "PARLEY_PROJECTS";
pub const CHAT_STREAM: &str = "PARLEY_CHAT";
pub const DEADLETTER_STREAM: &str = "PARLEY_DEADLETTER";
pub const NOTIFICATIONS_STREAM: &str = "PARLEY_NOTIFICATIONS";
pub const EMAIL_STREAM: &str = "PARLEY_EMAIL";

const STREAM_DEFINITIONS: &[(&str, &str)] = &[
    (
        PROJECTS_STREAM,
        include_str!("../../../nats/streams/PARLEY_PROJECTS.json"),
    ),
    (CHAT_STREAM, include_str!("../../../nats/streams/PARLEY_CHAT.json")),
    (
        DEADLETTER_STREAM,
        include_str!("../../../nats/streams/PARLEY_DEADLETTER.json"),
    ),
    (
        NOTIFICATIONS_STREAM,
        include_str!("../../../nats/streams/PARLEY_NOTIFICATIONS.json"),
    ),
    (EMAIL_STREAM, include_str!("../../../nats/streams/PARLEY_EMAIL.json")),
];

/// A durable consumer definition from `nats/consumers/` and the stream it belongs to.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerDefinition {
    pub stream: &'static str,
    json: &'static str,
}

impl ConsumerDefinition {
    /// The consumer's durable name, as its definition gives it (every definition has one).
    pub fn durable_name(self) -> Result<String, SetupError> {
        Ok(consumer_config(self)?.durable_name.unwrap_or_default())
    }
}

pub const PERSISTENCE_CHAT_CONSUMER: ConsumerDefinition = ConsumerDefinition {
    stream: CHAT_STREAM,
    json: include_str!("../../../nats/consumers/persistence-chat.json"),
};

pub const PERSISTENCE_PROJECTS_CONSUMER: ConsumerDefinition = ConsumerDefinition {
    stream: PROJECTS_STREAM,
    json: include_str!("../../../nats/consumers/persistence-projects.json"),
};

pub const NOTIFICATION_MESSAGES_CONSUMER: ConsumerDefinition = ConsumerDefinition {
    stream: CHAT_STREAM,
    json: include_str!("../../../nats/consumers/notification-messages.json"),
};

/// The directory's consumer: every project event, so that closes are recorded as well as starts.
/// Gateways read its progress to know whether the directory is up to date.
pub const NOTIFICATION_DIRECTORY_CONSUMER: ConsumerDefinition = ConsumerDefinition {
    stream: PROJECTS_STREAM,
    json: include_str!("../../../nats/consumers/notification-directory.json"),
};

/// The durable name the directory's consumer had when it learnt starts only. Its successor has
/// its own name so that it reads the projects stream from the start, closes included; the
/// notification worker deletes the old one.
pub const RETIRED_NOTIFICATION_PROJECTS_CONSUMER: &str = "parley-notification-projects";

pub const EMAIL_CONSUMER: ConsumerDefinition = ConsumerDefinition {
    stream: EMAIL_STREAM,
    json: include_str!("../../../nats/consumers/email.json"),
};

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("invalid definition {name}: {source}")]
    Definition { name: String, source: serde_json::Error },
    #[error("cannot apply stream {name}: {source}")]
    Stream { name: String, source: async_nats::Error },
    #[error("cannot apply consumer {name}: {source}")]
    Consumer { name: String, source: async_nats::Error },
}

/// The servers of a `NATS_URL`: one URL, or several separated by commas (a cluster's seeds).
pub fn server_urls(url: &str) -> Vec<String> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Connects with a client name, reconnecting forever: a restarted nats-server is waited for, not
/// fatal. The first connect is retried as well, so a process may start before NATS is up. Each
/// connect picks its server with [`reach::ServerChoice`], so that a process that leaves a server
/// ([`reach::stay_in_reach`]) goes to another.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    let servers = server_urls(url);
    let choice = reach::ServerChoice::default();
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .reconnect_to_server_callback(move |pool, _| {
            let addr = choice.pick(&pool);
            async move { addr.map(|addr| async_nats::ReconnectToServer { addr, delay: None }) }
        })
        .connection_timeout(Duration::from_secs(5))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Disconnected => warn!("nats disconnected"),
                async_nats::Event::Connected => info!("nats connected"),
                other => info!(event = %other, "nats event"),
            }
        })
        .connect(servers)
        .await
}

/// How long a stopping process waits for its last acks to leave. With NATS unreachable a flush
/// would wait for the reconnection, that is forever; the messages concerned are redelivered.
pub const FLUSH_BOUND: Duration = Duration::from_secs(5);

/// Sends what the client has buffered (plain acks above all), waiting at most [`FLUSH_BOUND`]:
/// what a process does last before it stops.
pub async fn flush(client: &async_nats::Client) -> Result<(), async_nats::Error> {
    tokio::time::timeout(FLUSH_BOUND, client.flush())
        .await
        .map_err(|_| format!("NATS did not take the buffered messages within {FLUSH_BOUND:?}"))??;
    Ok(())
}

/// The JetStream context every Parley process uses.
pub fn jetstream(client: async_nats::Client) -> jetstream::Context {
    jetstream::new(client)
}

/// The stream definition `name` from `nats/streams/`, with `replicas` copies.
pub fn stream_config(name: &str, replicas: usize) -> Result<stream::Config, SetupError> {
    let json = STREAM_DEFINITIONS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, json)| *json)
        .ok_or_else(|| SetupError::Definition {
            name: name.into(),
            source: <serde_json::Error as serde::de::Error>::custom("no such stream in nats/streams"),
        })?;
    let mut config: stream::Config = serde_json::from_str(json).map_err(|source| SetupError::Definition {
        name: name.into(),
        source,
    })?;
    config.num_replicas = replicas;
    Ok(config)
}

/// Creates or updates every Parley stream to its definition. Idempotent; safe to race.
pub async fn ensure_streams(js: &jetstream::Context, replicas: usize) -> Result<(), SetupError> {
    for (name, definition) in STREAM_DEFINITIONS {
        let config = stream_config(name, replicas)?;
        ensure_stream(js, config, definition)
            .await
            .map_err(|source| SetupError::Stream {
                name: (*name).into(),
                source,
            })?;
    }
    Ok(())
}

/// How long a process waits for a stream or consumer whose create or update went unanswered to
/// show its definition (a new R3 stream needs its first leader elected: seconds).
const SETTLE: Duration = Duration::from_secs(30);

/// How often it looks meanwhile.
const SETTLE_POLL: Duration = Duration::from_millis(250);

/// The fields of `config` that `definition` (its JSON in `nats/`) sets, and the replicas: what a
/// server's copy must show to count as applied. Fields the definition leaves out get the
/// server's defaults and are not compared.
fn defined_fields(config: &impl serde::Serialize, definition: &str) -> Result<serde_json::Value, async_nats::Error> {
    let defined: serde_json::Map<String, serde_json::Value> = serde_json::from_str(definition)?;
    let serde_json::Value::Object(actual) = serde_json::to_value(config)? else {
        return Err("a configuration that is not a JSON object".into());
    };
    let fields = defined
        .keys()
        .map(String::as_str)
        .chain(["num_replicas"])
        .filter_map(|key| Some((key.to_owned(), actual.get(key)?.clone())))
        .collect();
    Ok(serde_json::Value::Object(fields))
}

/// Whether `error` says the stream does not exist.
fn stream_not_found(error: &jetstream::context::GetStreamError) -> bool {
    matches!(error.kind(), jetstream::context::GetStreamErrorKind::JetStream(e)
        if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// Creates `config`'s stream, or updates it when it differs from `definition`; a request left
/// unanswered is followed by waiting until the stream shows the definition.
async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
    definition: &str,
) -> Result<(), async_nats::Error> {
    let wanted = defined_fields(&config, definition)?;
    let unanswered = match js.get_stream(&config.name).await {
        Ok(stream) => {
            if defined_fields(&stream.cached_info().config, definition)? == wanted {
                return Ok(());
            }
            create_timed_out(js.update_stream(config.clone()).await.map(drop))?
        }
        Err(e) if stream_not_found(&e) => create_timed_out(js.create_stream(config.clone()).await.map(drop))?,
        // A stream that is being created answers nothing until its first leader is elected.
        Err(e) if e.kind() == jetstream::context::GetStreamErrorKind::Request => true,
        Err(e) => return Err(e.into()),
    };
    if !unanswered {
        return Ok(());
    }
    warn!(stream = %config.name, "no answer about the stream; waiting for it to show its definition");
    settle(&format!("stream {}", config.name), || async {
        let stream = js.get_stream(&config.name).await.ok()?;
        (defined_fields(&stream.cached_info().config, definition).ok()? == wanted).then_some(())
    })
    .await
}

/// Whether a create or update went unanswered (`Ok(true)`), was done (`Ok(false)`), or failed.
fn create_timed_out(result: Result<(), jetstream::context::CreateStreamError>) -> Result<bool, async_nats::Error> {
    match result {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == jetstream::context::CreateStreamErrorKind::TimedOut => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// Polls `shows` until it yields, for at most [`SETTLE`].
pub(crate) async fn settle<T, F, Fut>(what: &str, mut shows: F) -> Result<T, async_nats::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        if let Some(value) = shows().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("{what} did not show its definition within {SETTLE:?}").into());
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// The pull consumer configuration of `definition`.
pub fn consumer_config(definition: ConsumerDefinition) -> Result<consumer::pull::Config, SetupError> {
    serde_json::from_str(definition.json).map_err(|source| SetupError::Definition {
        name: definition.stream.into(),
        source,
    })
}

/// Creates or updates the durable pull consumer of `definition` and returns it: left alone when
/// it already has the definition, waited for when its create goes unanswered.
pub async fn ensure_pull_consumer(
    js: &jetstream::Context,
    definition: ConsumerDefinition,
) -> Result<consumer::PullConsumer, SetupError> {
    let config = consumer_config(definition)?;
    let name = config.durable_name.clone().unwrap_or_default();
    let err = |e: async_nats::Error| SetupError::Consumer {
        name: name.clone(),
        source: e,
    };
    let wanted = defined_fields(&config, definition.json).map_err(err)?;
    let stream = js.get_stream(definition.stream).await.map_err(|e| err(e.into()))?;
    let current = || async {
        let consumer: consumer::PullConsumer = stream.get_consumer(&name).await.ok()?;
        let shown = defined_fields(&consumer.cached_info().config, definition.json).ok()?;
        (shown == wanted).then_some(consumer)
    };
    if let Some(consumer) = current().await {
        return Ok(consumer);
    }
    match stream.create_consumer(config).await {
        Ok(consumer) => Ok(consumer),
        Err(e) if e.kind() == jetstream::stream::ConsumerErrorKind::TimedOut => {
            warn!(consumer = %name, "no answer to the consumer's create; waiting for it to show");
            settle(&format!("consumer {name}"), current).await.map_err(err)
        }
        Err(e) => Err(err(e.into())),
    }
}

/// Publishes, every few seconds until `shutdown`, each durable consumer's backlog as gauges:
/// `parley_consumer_pending`, `parley_consumer_ack_pending` and `parley_consumer_redelivered`,
/// labelled with the consumer's name. Every instance reports the same shared numbers.
pub fn spawn_consumer_gauges(
    js: jetstream::Context,
    definitions: Vec<ConsumerDefinition>,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            for definition in &definitions {
                let Ok(name) = definition.durable_name() else {
                    continue;
                };
                let Ok(stream) = js.get_stream_no_info(definition.stream).await else {
                    continue;
                };
                let Ok(info) = stream.consumer_info(&name).await else {
                    continue;
                };
                let label = name.clone();
                metrics::gauge!("parley_consumer_pending", "consumer" => label.clone()).set(info.num_pending as f64);
                metrics::gauge!("parley_consumer_ack_pending", "consumer" => label.clone())
                    .set(info.num_ack_pending as f64);
                metrics::gauge!("parley_consumer_redelivered", "consumer" => label).set(info.num_redelivered as f64);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_definition_in_nats_folder_parses() {
        for (name, _) in STREAM_DEFINITIONS {
            let config = stream_config(name, 3).unwrap();
            assert_eq!(config.name, *name);
            assert_eq!(config.num_replicas, 3);
            assert!(!config.subjects.is_empty());
        }
        for definition in [
            PERSISTENCE_CHAT_CONSUMER,
            PERSISTENCE_PROJECTS_CONSUMER,
            NOTIFICATION_MESSAGES_CONSUMER,
            NOTIFICATION_DIRECTORY_CONSUMER,
            EMAIL_CONSUMER,
        ] {
            let config = consumer_config(definition).unwrap();
            assert!(config.durable_name.is_some());
            assert_eq!(Some(definition.durable_name().unwrap()), config.durable_name);
            assert_eq!(config.ack_policy, consumer::AckPolicy::Explicit);
        }
    }

    #[test]
    fn a_nats_url_may_list_a_clusters_servers() {
        assert_eq!(server_urls("nats://a:4222"), vec!["nats://a:4222"]);
        assert_eq!(
            server_urls("nats://a:4222, nats://b:4222,"),
            vec!["nats://a:4222", "nats://b:4222"]
        );
    }

    #[test]
    fn the_chat_stream_deduplicates_for_hours() {
        let chat = stream_config(CHAT_STREAM, 1).unwrap();
        assert!(chat.duplicate_window >= Duration::from_secs(3600));
        assert!(chat.allow_direct);
    }
}
