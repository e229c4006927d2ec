//! `parley status`: what JetStream holds for Parley. One row per Parley stream (and per key-value
//! bucket's stream) with its message count, size, sequence range and consumer count, then one row
//! per durable consumer on them with its backlog. A stream that does not exist yet is reported as
//! `missing`; only an unreachable NATS makes the command fail.

use futures::TryStreamExt as _;
use parley_nats::buckets;
use serde::Serialize;

use crate::nats::{self, NatsArgs};
use crate::output::{self, Align, Table, emit};

/// How `lag` is computed, shown in `--help` and under the table.
pub const LAG_HELP: &str = "lag = num_pending + num_ack_pending: the messages the consumer has not been given yet plus \
                            those given to it but not acknowledged yet, i.e. the work still ahead of it";

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Print one JSON object (`streams`, `consumers`) instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Also list ephemeral consumers (no durable name), marked as such; by default they are
    /// skipped.
    #[arg(long)]
    pub ephemeral: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub nats_url: String,
    pub server_version: String,
    pub streams: Vec<StreamStatus>,
    pub consumers: Vec<ConsumerStatus>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A stream from `nats/streams/`.
    Stream,
    /// The stream behind a key-value bucket.
    Kv,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Ok,
    Missing,
    /// JetStream answered with an error for this stream; see `error`.
    Error,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamStatus {
    pub name: String,
    pub kind: Kind,
    pub state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub messages: Option<u64>,
    pub bytes: Option<u64>,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Every consumer on the stream, durable or not.
    pub consumer_count: Option<usize>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerStatus {
    pub stream: String,
    pub name: String,
    pub durable: bool,
    pub num_pending: u64,
    pub num_ack_pending: u64,
    pub num_redelivered: u64,
    pub ack_floor_stream_seq: u64,
    /// `num_pending + num_ack_pending`.
    pub lag: u64,
}

/// Every stream `status` reports on, in display order.
fn stream_names() -> Vec<(String, Kind)> {
    let streams = [
        parley_nats::PROJECTS_STREAM,
        parley_nats::CHAT_STREAM,
        parley_nats::DEADLETTER_STREAM,
        parley_nats::NOTIFICATIONS_STREAM,
        parley_nats::EMAIL_STREAM,
    ]
    .map(|name| (name.to_owned(), Kind::Stream));
    let buckets = [
        buckets::PRESENCE_BUCKET,
        buckets::CONVERSATIONS_BUCKET,
        buckets::EMAIL_SENT_BUCKET,
    ]
    .map(|bucket| (format!("KV_{bucket}"), Kind::Kv));
    streams.into_iter().chain(buckets).collect()
}

/// Gathers the status. Fails only when NATS (or JetStream) cannot be reached.
pub async fn collect(url: &str, include_ephemeral: bool) -> anyhow::Result<Status> {
    let nats = nats::connect(url).await?;
    let mut streams = Vec::new();
    let mut consumers = Vec::new();
    for (name, kind) in stream_names() {
        let mut status = StreamStatus {
            name: name.clone(),
            kind,
            state: State::Missing,
            error: None,
            messages: None,
            bytes: None,
            first_seq: None,
            last_seq: None,
            consumer_count: None,
        };
        match nats::stream(&nats.js, &name).await {
            Ok(None) => {}
            Err(e) => {
                status.state = State::Error;
                status.error = Some(format!("{e:#}"));
            }
            Ok(Some(stream)) => {
                let state = &stream.cached_info().state;
                status.state = State::Ok;
                status.messages = Some(state.messages);
                status.bytes = Some(state.bytes);
                status.first_seq = Some(state.first_sequence);
                status.last_seq = Some(state.last_sequence);
                status.consumer_count = Some(state.consumer_count);
                let listed: Result<Vec<_>, _> = stream.consumers().try_collect().await;
                match listed {
                    Ok(mut infos) => {
                        infos.sort_by(|a, b| a.name.cmp(&b.name));
                        for info in infos {
                            let durable = info.config.durable_name.is_some();
                            if !durable && !include_ephemeral {
                                continue;
                            }
                            let num_ack_pending = info.num_ack_pending as u64;
                            consumers.push(ConsumerStatus {
                                stream: name.clone(),
                                name: info.name,
                                durable,
                                num_pending: info.num_pending,
                                num_ack_pending,
                                num_redelivered: info.num_redelivered as u64,
                                ack_floor_stream_seq: info.ack_floor.stream_sequence,
                                lag: info.num_pending + num_ack_pending,
                            });
                        }
                    }
                    Err(e) => {
                        status.state = State::Error;
                        status.error = Some(format!("listing consumers: {e}"));
                    }
                }
            }
        }
        streams.push(status);
    }
    Ok(Status {
        nats_url: url.to_owned(),
        server_version: nats.client.server_info().version,
        streams,
        consumers,
    })
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let status = collect(&args.nats.nats_url, args.ephemeral).await?;
    if args.json {
        emit(&format!("{}\n", serde_json::to_string_pretty(&status)?))
    } else {
        emit(&render(&status))
    }
}

fn number(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// The human-readable report.
pub fn render(status: &Status) -> String {
    let mut out = format!("NATS {} (server {})\n\n", status.nats_url, status.server_version);
    let mut streams = Table::new(&[
        ("STREAM", Align::Left),
        ("KIND", Align::Left),
        ("STATE", Align::Left),
        ("MESSAGES", Align::Right),
        ("BYTES", Align::Right),
        ("FIRST SEQ", Align::Right),
        ("LAST SEQ", Align::Right),
        ("CONSUMERS", Align::Right),
    ]);
    for s in &status.streams {
        let kind = match s.kind {
            Kind::Stream => "stream",
            Kind::Kv => "kv",
        };
        let state = match s.state {
            State::Ok => "ok",
            State::Missing => "missing",
            State::Error => "error",
        };
        streams.row(vec![
            s.name.clone(),
            kind.into(),
            state.into(),
            number(s.messages),
            s.bytes.map_or_else(|| "-".to_owned(), output::bytes),
            number(s.first_seq),
            number(s.last_seq),
            number(s.consumer_count.map(|c| c as u64)),
        ]);
    }
    out.push_str(&streams.render());
    for s in status.streams.iter().filter(|s| s.error.is_some()) {
        out.push_str(&format!(
            "  {}: {}\n",
            s.name,
            output::one_line(s.error.as_deref().unwrap_or_default(), 200)
        ));
    }
    out.push('\n');
    if status.consumers.is_empty() {
        out.push_str("No durable consumers yet.\n");
        return out;
    }
    let mut consumers = Table::new(&[
        ("CONSUMER", Align::Left),
        ("STREAM", Align::Left),
        ("PENDING", Align::Right),
        ("ACK PENDING", Align::Right),
        ("REDELIVERED", Align::Right),
        ("ACK FLOOR SEQ", Align::Right),
        ("LAG", Align::Right),
    ]);
    for c in &status.consumers {
        let name = if c.durable {
            c.name.clone()
        } else {
            format!("{} (ephemeral)", c.name)
        };
        consumers.row(vec![
            name,
            c.stream.clone(),
            c.num_pending.to_string(),
            c.num_ack_pending.to_string(),
            c.num_redelivered.to_string(),
            c.ack_floor_stream_seq.to_string(),
            c.lag.to_string(),
        ]);
    }
    out.push_str(&consumers.render());
    out.push_str(&format!("\n{LAG_HELP}.\n"));
    out
}
