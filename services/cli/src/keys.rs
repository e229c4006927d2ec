//! `parley keys generate`: a new transcript signing seed for `PARLEY_TRANSCRIPT_KEY`, and the
//! public key and key id verifiers will see, generated from the operating system's randomness.
//! The seed is printed once and kept nowhere: it is the operator's to store as a secret.

use anyhow::Context as _;

#[derive(clap::Subcommand, Debug, Clone, Copy)]
pub enum KeysCommand {
    /// Print a new Ed25519 seed (base64, for PARLEY_TRANSCRIPT_KEY) and its public key.
    Generate,
}

pub fn run(action: KeysCommand) -> anyhow::Result<()> {
    let KeysCommand::Generate = action;
    let (seed, public) = parley_transcript::keys::generate().context("no randomness from the operating system")?;
    let key = parley_transcript::keys::parse_public_key(&public)?;
    println!("PARLEY_TRANSCRIPT_KEY={seed}");
    println!(
        "# public key {public} (key id {})",
        parley_transcript::keys::key_id(&key)
    );
    Ok(())
}
