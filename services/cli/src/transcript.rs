//! `parley transcript export | verify | check` (contract, "Transcripts"). `export` writes a
//! conversation's transcript from Postgres, signed with `PARLEY_TRANSCRIPT_KEY`, exactly as the
//! gateway serves it (streamed, never held whole). `verify` checks an export offline, with
//! nothing but the trusted public keys, and names the first entry that fails. `check`
//! recomputes stored chains from the stored rows and names every conversation whose rows no
//! longer match, one page of conversations at a time so that `--all` runs in bounded memory.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use parley_store::Store;
use parley_transcript::keys::{TranscriptKeys, parse_public_key};
use uuid::Uuid;

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/parley";
/// Conversations `check --all` reads ids of at once.
const CHECK_PAGE: i64 = 500;

#[derive(clap::Subcommand, Debug)]
pub enum TranscriptCommand {
    /// Write a conversation's transcript export (JSON), with a checkpoint signed now.
    Export {
        #[arg(long)]
        conversation_id: Uuid,
        /// Where to write it (default: standard output).
        #[arg(long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        database: Database,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Verify an export offline: every entry's hash, their order, and the checkpoint's signature.
    ///
    /// Trusts the keys given with --public-key; without any, the public keys of
    /// PARLEY_TRANSCRIPT_KEY and PARLEY_TRANSCRIPT_RETIRED_KEYS. Exit 0 and one line naming the
    /// size, head, key and time; else non-zero and the first entry that fails, and why.
    Verify {
        file: PathBuf,
        /// A trusted public key (base64 of its raw 32 bytes); may be repeated.
        #[arg(long = "public-key")]
        public_keys: Vec<String>,
        #[arg(long, env = "PARLEY_TRANSCRIPT_KEY", hide_env_values = true)]
        transcript_key: Option<String>,
        #[arg(long, env = "PARLEY_TRANSCRIPT_RETIRED_KEYS")]
        retired_keys: Option<String>,
    },
    /// Recompute stored chains from the stored rows; name every conversation that no longer
    /// matches (exit 1 if any).
    Check {
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        conversation_id: Option<Uuid>,
        /// Every conversation, a page at a time, with progress on a terminal.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        database: Database,
    },
}

#[derive(clap::Args, Debug)]
pub struct Database {
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    database_url: String,
}

impl Database {
    fn store(&self) -> anyhow::Result<Store> {
        Store::connect_lazy(&self.database_url, 2).context("DATABASE_URL")
    }
}

#[derive(clap::Args, Debug)]
pub struct KeyArgs {
    /// Base64 of the 32-byte Ed25519 seed that signs checkpoints (the gateway's).
    #[arg(long, env = "PARLEY_TRANSCRIPT_KEY", hide_env_values = true)]
    transcript_key: String,
    #[arg(long, env = "PARLEY_TRANSCRIPT_RETIRED_KEYS")]
    retired_keys: Option<String>,
}

pub async fn run(command: TranscriptCommand) -> anyhow::Result<()> {
    match command {
        TranscriptCommand::Export {
            conversation_id,
            output,
            database,
            keys,
        } => {
            let keys = TranscriptKeys::parse(&keys.transcript_key, keys.retired_keys.as_deref())
                .context("PARLEY_TRANSCRIPT_KEY / PARLEY_TRANSCRIPT_RETIRED_KEYS")?;
            export(&database.store()?, &keys, conversation_id, output).await
        }
        TranscriptCommand::Verify {
            file,
            public_keys,
            transcript_key,
            retired_keys,
        } => verify(&file, &public_keys, transcript_key.as_deref(), retired_keys.as_deref()),
        TranscriptCommand::Check {
            conversation_id,
            all: _,
            database,
        } => check(&database.store()?, conversation_id).await,
    }
}

async fn export(
    store: &Store,
    keys: &TranscriptKeys,
    conversation_id: Uuid,
    output: Option<PathBuf>,
) -> anyhow::Result<()> {
    let header = store
        .transcript_header(conversation_id)
        .await?
        .with_context(|| format!("no conversation {conversation_id}"))?;
    let mut out: Box<dyn std::io::Write> = match &output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    out.write_all(&parley_transcript::export::opening(conversation_id))?;
    let mut entries = std::pin::pin!(store.transcript_entries(conversation_id, header.size));
    let mut first = true;
    while let Some(stored) = entries.next().await {
        let stored = stored?;
        let entry = stored
            .entry(&header)
            .map_err(|why| anyhow::anyhow!("entry {}: {why}", stored.n))?;
        let hash = stored.hash.unwrap_or(parley_transcript::GENESIS);
        out.write_all(&parley_transcript::export::entry(stored.n, &entry, &hash, first))?;
        first = false;
    }
    out.write_all(&parley_transcript::export::closing(&keys.sign(
        conversation_id,
        header.size,
        &header.head,
    )))?;
    out.flush()?;
    Ok(())
}

fn verify(file: &PathBuf, given: &[String], seed: Option<&str>, retired: Option<&str>) -> anyhow::Result<()> {
    let keys = if given.is_empty() {
        let Some(seed) = seed else {
            bail!("no key to verify with: give --public-key (or set PARLEY_TRANSCRIPT_KEY)");
        };
        TranscriptKeys::parse(seed, retired)
            .context("PARLEY_TRANSCRIPT_KEY / PARLEY_TRANSCRIPT_RETIRED_KEYS")?
            .public_keys()
    } else {
        given
            .iter()
            .map(|key| parse_public_key(key))
            .collect::<Result<Vec<_>, _>>()
            .context("--public-key")?
    };
    let text = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let export: serde_json::Value =
        serde_json::from_slice(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    match parley_transcript::verify::verify(&export, &keys) {
        Ok(verified) => {
            println!(
                "verified: conversation {}, {} entries, head {}, key {}, signed at {}",
                verified.conversation_id, verified.size, verified.head, verified.key_id, verified.signed_at
            );
            Ok(())
        }
        Err(failure) => bail!("transcript does not verify: {failure}"),
    }
}

async fn check(store: &Store, only: Option<Uuid>) -> anyhow::Result<()> {
    let progress = std::io::stderr().is_terminal();
    let (mut checked, mut failing) = (0u64, 0u64);
    let mut after = None;
    loop {
        let page = match only {
            Some(id) if after.is_none() => vec![id],
            Some(_) => Vec::new(),
            None => store.conversation_ids_after(after, CHECK_PAGE).await?,
        };
        let Some(last) = page.last().copied() else { break };
        for conversation_id in page {
            let Some(report) = store.check_transcript(conversation_id).await? else {
                bail!("no conversation {conversation_id}");
            };
            checked += 1;
            if !report.problems.is_empty() {
                failing += 1;
                if progress {
                    eprint!("\r\x1b[K");
                }
                for problem in &report.problems {
                    println!("conversation {conversation_id}: {problem}");
                }
            }
            if progress {
                eprint!("\rchecked {checked} conversations, {failing} not matching");
            }
        }
        after = Some(last);
    }
    if progress {
        eprintln!();
    }
    if failing > 0 {
        bail!("{failing} of {checked} conversations no longer match their transcript");
    }
    println!("{checked} conversations match their transcripts");
    Ok(())
}
