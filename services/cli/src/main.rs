//! `parley`: the operator's command line. Shows stream and consumer status with lag, lists and
//! re-drives dead letters, publishes project lifecycle events the way the marketplace does and
//! mints development tokens (only with a secret given explicitly), generates transcript signing
//! keys, and exports, verifies and checks transcripts.
//!
//! Each command lives in its own module; this file only parses and dispatches.

mod deadletters;
mod keys;
mod nats;
mod output;
mod project;
mod status;
mod token;
mod transcript;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "parley", version, about = "Operate a Parley deployment")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Project lifecycle events, as the marketplace publishes them.
    Project {
        #[command(subcommand)]
        event: project::ProjectCommand,
    },
    /// Development tokens.
    Token {
        #[command(subcommand)]
        action: token::TokenCommand,
    },
    /// Streams and durable consumers: message counts, sizes, sequences, and each consumer's lag.
    ///
    /// For every Parley stream (and the streams behind its key-value buckets): messages, bytes,
    /// first and last sequence, number of consumers; a stream not created yet shows as `missing`.
    /// For every durable consumer on them: pending, ack pending, redelivered, ack floor (stream
    /// sequence) and lag.
    ///
    /// lag = num_pending + num_ack_pending: the messages the consumer has not been given yet plus
    /// those given to it but not acknowledged yet.
    ///
    /// Exits non-zero only when NATS or JetStream cannot be reached.
    Status(status::StatusArgs),
    /// Events that could never apply, kept in PARLEY_DEADLETTER: list and re-drive them.
    Deadletters {
        #[command(subcommand)]
        action: deadletters::DeadlettersCommand,
    },
    /// Transcript signing keys.
    Keys {
        #[command(subcommand)]
        action: keys::KeysCommand,
    },
    /// Verifiable transcripts: export one, verify an export offline, check stored chains.
    Transcript {
        #[command(subcommand)]
        action: transcript::TranscriptCommand,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("parley: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Project { event } => project::run(event).await,
        Command::Token { action } => token::run(action),
        Command::Status(args) => status::run(args).await,
        Command::Deadletters { action } => deadletters::run(action).await,
        Command::Keys { action } => keys::run(action),
        Command::Transcript { action } => transcript::run(action).await,
    }
}
