//! `parley deadletters list|redrive`: the operator's side of `PARLEY_DEADLETTER`. Workers record
//! there, as `parley_events::DeadLetter` JSON on `parley.deadletter.<source>`, every event that can
//! never apply; `list` shows them and `redrive` republishes a letter's original payload to its
//! original subject through JetStream and, once JetStream acknowledged it, deletes the letter.
//!
//! A letter is named by its sequence in `PARLEY_DEADLETTER` (the `SEQ` column of `list`).
//! Republishes carry `Nats-Msg-Id: parley-redrive-<stream>-<seq>` (the source stream and sequence
//! of the dead event), so re-running a redrive that was interrupted between the republish and the
//! delete cannot publish the same event twice within the stream's duplicate window.

use async_nats::jetstream::stream::{RawMessageErrorKind, Stream};
use async_nats::jetstream::{self};
use chrono::SecondsFormat;
use parley_events::DeadLetter;
use serde::Serialize;
use serde_json::Value;

use crate::nats::{self, NatsArgs};
use crate::output::{self, Align, Table, emit};

const STREAM: &str = parley_nats::DEADLETTER_STREAM;
/// Every subject of the stream, for "the next letter at or after sequence n".
const ANY_SUBJECT: &str = ">";
/// Characters of a payload shown by `list --show-payload` in a table.
const PAYLOAD_PREVIEW: usize = 60;
/// Characters of a reason shown in a table.
const REASON_PREVIEW: usize = 120;

#[derive(clap::Subcommand, Debug)]
pub enum DeadlettersCommand {
    /// List dead letters, oldest first.
    ///
    /// Each row: the letter's sequence in PARLEY_DEADLETTER (what `redrive --seq` takes), when it
    /// failed, its source stream/sequence, its original subject and why it failed.
    List(ListArgs),
    /// Republish dead letters to their original subjects, then delete them.
    ///
    /// Each letter's original payload is published again on its original subject through
    /// JetStream; once JetStream acknowledged it, the letter is deleted from PARLEY_DEADLETTER.
    /// A letter whose republish fails stays. Every consumer of the target stream sees a
    /// republished event again. Exits non-zero if any letter was not redriven.
    Redrive(RedriveArgs),
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Show at most this many letters (the oldest).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Also show each letter's original payload (cut to 60 characters in the table; whole in
    /// `--json`). Payloads may hold message bodies: share the output with care.
    #[arg(long)]
    pub show_payload: bool,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct RedriveArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub which: Which,
    /// Show what would be republished, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print a JSON array of outcomes instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Which letters `redrive` takes: some by sequence, or all.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Which {
    /// The letters to redrive, by their sequence in PARLEY_DEADLETTER (the SEQ column of `list`).
    /// Repeat the flag or separate with commas. If any is not in the stream, nothing is redriven.
    #[arg(long, value_name = "N", num_args = 1.., value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..))]
    pub seq: Vec<u64>,
    /// Redrive every letter in the stream when the command starts.
    #[arg(long)]
    pub all: bool,
}

pub async fn run(command: DeadlettersCommand) -> anyhow::Result<()> {
    match command {
        DeadlettersCommand::List(args) => list(args).await,
        DeadlettersCommand::Redrive(args) => redrive(args).await,
    }
}

/// One message of `PARLEY_DEADLETTER`.
struct Letter {
    /// Its sequence in `PARLEY_DEADLETTER`.
    seq: u64,
    /// `parley.deadletter.<source>`.
    subject: String,
    /// The record, or why it could not be read.
    record: Result<DeadLetter, String>,
}

impl Letter {
    fn from_message(message: &jetstream::message::StreamMessage) -> Letter {
        Letter {
            seq: message.sequence,
            subject: message.subject.to_string(),
            record: serde_json::from_slice(&message.payload).map_err(|e| format!("not a dead-letter record: {e}")),
        }
    }
}

/// The letters with sequence in `from..=to`, oldest first, at most `limit`.
async fn read(stream: &Stream, from: u64, to: u64, limit: usize) -> anyhow::Result<Vec<Letter>> {
    let mut letters = Vec::new();
    let mut seq = from.max(1);
    while letters.len() < limit && seq <= to {
        match stream.get_first_raw_message_by_subject(ANY_SUBJECT, seq).await {
            Ok(message) if message.sequence <= to => {
                seq = message.sequence + 1;
                letters.push(Letter::from_message(&message));
            }
            Ok(_) => break,
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
            Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {STREAM} at sequence {seq}"))),
        }
    }
    Ok(letters)
}

fn timestamp(letter: &DeadLetter) -> String {
    letter.failed_at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let nats = nats::connect(&args.nats.nats_url).await?;
    let Some(stream) = nats::stream(&nats.js, STREAM).await? else {
        return emit(if args.json {
            "[]\n"
        } else {
            "PARLEY_DEADLETTER does not exist yet: no dead letters.\n"
        });
    };
    let state = &stream.cached_info().state;
    let total = state.messages;
    let letters = read(&stream, state.first_sequence, state.last_sequence, args.limit).await?;

    if args.json {
        let values: Vec<Value> = letters.iter().map(|l| letter_json(l, args.show_payload)).collect();
        return emit(&format!("{}\n", serde_json::to_string_pretty(&values)?));
    }
    if letters.is_empty() {
        return emit("No dead letters.\n");
    }
    let mut columns = vec![
        ("SEQ", Align::Right),
        ("FAILED AT", Align::Left),
        ("SOURCE", Align::Left),
        ("SUBJECT", Align::Left),
        ("REASON", Align::Left),
    ];
    if args.show_payload {
        columns.push(("PAYLOAD", Align::Left));
    }
    let mut out = Table::new(&columns);
    for letter in &letters {
        let mut row = match &letter.record {
            Ok(record) => vec![
                letter.seq.to_string(),
                timestamp(record),
                format!("{}/{}", record.stream, record.stream_seq),
                output::one_line(&record.subject, 200),
                output::one_line(&record.reason, REASON_PREVIEW),
            ],
            Err(error) => vec![
                letter.seq.to_string(),
                "-".into(),
                "-".into(),
                output::one_line(&letter.subject, 200),
                format!("(unreadable) {}", output::one_line(error, REASON_PREVIEW)),
            ],
        };
        if args.show_payload {
            let payload = letter.record.as_ref().map_or("-", |r| r.payload.as_str());
            row.push(output::one_line(payload, PAYLOAD_PREVIEW));
        }
        out.row(row);
    }
    let shown = letters.len() as u64;
    let footer = if shown < total {
        format!("{shown} of {total} dead letters shown (oldest first); raise --limit to see more.")
    } else {
        format!("{total} dead letter{}.", if total == 1 { "" } else { "s" })
    };
    emit(&format!("{}\n{footer}\n", out.render()))
}

/// A letter as `list --json` prints it: the record's own fields (camelCase, as on the wire) plus
/// `seq` and `deadLetterSubject`; `payload` only when asked for.
fn letter_json(letter: &Letter, show_payload: bool) -> Value {
    let mut value = match &letter.record {
        Ok(record) => serde_json::to_value(record).unwrap_or(Value::Null),
        Err(error) => serde_json::json!({ "unreadable": error }),
    };
    if let Value::Object(map) = &mut value {
        if !show_payload {
            map.remove("payload");
        }
        map.insert("seq".into(), letter.seq.into());
        map.insert("deadLetterSubject".into(), letter.subject.clone().into());
    }
    value
}

/// What became of one letter.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Outcome {
    seq: u64,
    /// The subject it was (or would be) republished to.
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    result: Fate,
    /// Where the republished event landed.
    #[serde(skip_serializing_if = "Option::is_none")]
    republished: Option<Republished>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Fate {
    /// Republished and deleted.
    Redriven,
    /// `--dry-run`: would have been.
    WouldRedrive,
    /// Not republished; the letter stays.
    Failed,
    /// Republished, but the letter could not be deleted: it stays, and a second redrive within
    /// the duplicate window will not publish it again.
    NotDeleted,
}

impl Fate {
    fn label(&self) -> &'static str {
        match self {
            Fate::Redriven => "redriven",
            Fate::WouldRedrive => "would redrive",
            Fate::Failed => "failed",
            Fate::NotDeleted => "not deleted",
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Republished {
    stream: String,
    seq: u64,
    /// JetStream had already stored this event from an earlier redrive (within its duplicate
    /// window), so it was not stored again.
    duplicate: bool,
}

/// Why `subject` must not be republished to, if it must not.
fn refuse_subject(subject: &str) -> Option<&'static str> {
    if subject.is_empty() {
        Some("the letter has no subject")
    } else if subject.split('.').any(|t| t.is_empty() || t == "*" || t == ">") || subject.contains(char::is_whitespace)
    {
        Some("the letter's subject is not a publishable subject")
    } else if subject.starts_with("parley.deadletter.") {
        Some("the letter's subject is a dead-letter subject")
    } else {
        None
    }
}

fn join(seqs: &[u64]) -> String {
    seqs.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

async fn redrive(args: RedriveArgs) -> anyhow::Result<()> {
    let nats = nats::connect(&args.nats.nats_url).await?;
    let stream = nats::stream(&nats.js, STREAM).await?;

    let letters: Vec<Letter> = if args.which.all {
        match &stream {
            None => Vec::new(),
            Some(stream) => {
                // A snapshot: letters that arrive while this runs (even a redriven event failing
                // again) wait for the next redrive.
                let state = &stream.cached_info().state;
                read(stream, state.first_sequence, state.last_sequence, usize::MAX).await?
            }
        }
    } else {
        let mut seqs = args.which.seq.clone();
        seqs.sort_unstable();
        seqs.dedup();
        let Some(stream) = &stream else {
            anyhow::bail!(
                "no dead letter with sequence {}: {STREAM} does not exist yet; nothing was redriven",
                join(&seqs)
            );
        };
        let mut letters = Vec::new();
        let mut unknown = Vec::new();
        for seq in seqs {
            match stream.get_raw_message(seq).await {
                Ok(message) => letters.push(Letter::from_message(&message)),
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => unknown.push(seq),
                Err(e) => return Err(anyhow::Error::new(e).context(format!("reading dead letter {seq}"))),
            }
        }
        if !unknown.is_empty() {
            anyhow::bail!(
                "no dead letter with sequence {} in {STREAM} (see `parley deadletters list`); nothing was redriven",
                join(&unknown)
            );
        }
        for letter in &letters {
            let reason = match &letter.record {
                Err(error) => Some(error.clone()),
                Ok(record) => refuse_subject(&record.subject).map(str::to_owned),
            };
            if let Some(reason) = reason {
                anyhow::bail!(
                    "dead letter {} cannot be redriven: {reason}; nothing was redriven",
                    letter.seq
                );
            }
        }
        letters
    };

    let mut outcomes = Vec::new();
    for letter in letters {
        outcomes.push(redrive_one(&nats.js, stream.as_ref(), letter, args.dry_run).await);
    }

    if args.json {
        emit(&format!("{}\n", serde_json::to_string_pretty(&outcomes)?))?;
    } else if outcomes.is_empty() {
        emit("No dead letters to redrive.\n")?;
    } else {
        emit(&render_outcomes(&outcomes))?;
    }
    let failed = outcomes
        .iter()
        .filter(|o| matches!(o.result, Fate::Failed | Fate::NotDeleted))
        .count();
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} dead letters were not redriven; they stay in {STREAM}",
            outcomes.len()
        );
    }
    Ok(())
}

async fn redrive_one(js: &jetstream::Context, stream: Option<&Stream>, letter: Letter, dry_run: bool) -> Outcome {
    let mut outcome = Outcome {
        seq: letter.seq,
        subject: None,
        result: Fate::Failed,
        republished: None,
        error: None,
    };
    let record = match letter.record {
        Ok(record) => record,
        Err(error) => {
            outcome.error = Some(error);
            return outcome;
        }
    };
    outcome.subject = Some(record.subject.clone());
    if let Some(reason) = refuse_subject(&record.subject) {
        outcome.error = Some(reason.to_owned());
        return outcome;
    }
    if dry_run {
        outcome.result = Fate::WouldRedrive;
        return outcome;
    }
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        parley_nats::MSG_ID_HEADER,
        format!("parley-redrive-{}-{}", record.stream, record.stream_seq).as_str(),
    );
    let published = async {
        js.publish_with_headers(record.subject.clone(), headers, record.payload.into_bytes().into())
            .await?
            .await
    }
    .await;
    let ack = match published {
        Ok(ack) => ack,
        Err(e) => {
            outcome.error = Some(format!("republish failed: {e}"));
            return outcome;
        }
    };
    outcome.republished = Some(Republished {
        stream: ack.stream,
        seq: ack.sequence,
        duplicate: ack.duplicate,
    });
    let deleted = match stream {
        Some(stream) => stream.delete_message(letter.seq).await.map_err(|e| e.to_string()),
        None => Err(format!("{STREAM} is gone")),
    };
    match deleted {
        Ok(true) => outcome.result = Fate::Redriven,
        Ok(false) => {
            outcome.result = Fate::NotDeleted;
            outcome.error = Some("JetStream did not delete the letter".into());
        }
        Err(e) => {
            outcome.result = Fate::NotDeleted;
            outcome.error = Some(format!("deleting the letter failed: {e}"));
        }
    }
    outcome
}

fn render_outcomes(outcomes: &[Outcome]) -> String {
    let mut out = Table::new(&[
        ("SEQ", Align::Right),
        ("RESULT", Align::Left),
        ("SUBJECT", Align::Left),
        ("DETAIL", Align::Left),
    ]);
    for o in outcomes {
        let mut detail = Vec::new();
        if let Some(r) = &o.republished {
            detail.push(if r.duplicate {
                format!("already republished as {}/{} (duplicate)", r.stream, r.seq)
            } else {
                format!("republished as {}/{}", r.stream, r.seq)
            });
        }
        match o.result {
            Fate::Redriven => detail.push("letter deleted".into()),
            Fate::Failed | Fate::NotDeleted => detail.push("letter kept".into()),
            Fate::WouldRedrive => detail.push("dry run: nothing changed".into()),
        }
        if let Some(error) = &o.error {
            detail.push(output::one_line(error, 200));
        }
        out.row(vec![
            o.seq.to_string(),
            o.result.label().into(),
            o.subject
                .as_deref()
                .map_or_else(|| "-".into(), |s| output::one_line(s, 200)),
            detail.join("; "),
        ]);
    }
    out.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_non_dead_letter_subjects_are_republished() {
        assert_eq!(refuse_subject("parley.project.started"), None);
        assert!(refuse_subject("").is_some());
        assert!(refuse_subject("parley.*.started").is_some());
        assert!(refuse_subject("parley.>").is_some());
        assert!(refuse_subject("parley..x").is_some());
        assert!(refuse_subject("parley.a b").is_some());
        assert!(refuse_subject("parley.deadletter.persistence").is_some());
    }
}
