//! `parley token mint`: development tokens (HS256, `sub` = the user, `exp` required), only ever
//! signed with a secret given explicitly on the command line.

use chrono::Utc;
use uuid::Uuid;

#[derive(clap::Subcommand, Debug)]
pub enum TokenCommand {
    /// Print an HS256 token for a user. The secret must be given: there is no default.
    Mint {
        #[arg(long)]
        secret: String,
        #[arg(long)]
        user_id: Uuid,
        #[arg(long, default_value_t = 24)]
        ttl_hours: i64,
    },
}

pub fn run(action: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::Mint {
        secret,
        user_id,
        ttl_hours,
    } = action;
    if secret.len() < 16 {
        anyhow::bail!("--secret must be at least 16 characters");
    }
    let exp = Utc::now().timestamp() + ttl_hours * 3600;
    let claims = serde_json::json!({ "sub": user_id, "exp": exp, "iat": Utc::now().timestamp() });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?;
    println!("{token}");
    Ok(())
}
