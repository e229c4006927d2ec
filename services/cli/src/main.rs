//! `parley`: the operator's command line. Publishes project lifecycle events the way the
//! marketplace does and mints development tokens (only with a secret given explicitly).

use std::process::ExitCode;

use anyhow::Context as _;
use chrono::Utc;
use clap::{Parser, Subcommand};
use parley_events::{Party, ProjectClosed, ProjectStarted, subjects};
use uuid::Uuid;

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
        event: ProjectCommand,
    },
    /// Development tokens.
    Token {
        #[command(subcommand)]
        action: TokenCommand,
    },
}

#[derive(Subcommand)]
enum ProjectCommand {
    /// Publish `parley.project.started`; prints the conversation id.
    Start {
        #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        #[arg(long)]
        project_id: Uuid,
        #[arg(long)]
        title: String,
        #[arg(long)]
        client_id: Uuid,
        #[arg(long)]
        client_name: String,
        #[arg(long)]
        client_email: String,
        #[arg(long)]
        provider_id: Uuid,
        #[arg(long)]
        provider_name: String,
        #[arg(long)]
        provider_email: String,
    },
    /// Publish `parley.project.closed`.
    Close {
        #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        #[arg(long)]
        project_id: Uuid,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
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
        Command::Project { event } => match event {
            ProjectCommand::Start {
                nats_url,
                project_id,
                title,
                client_id,
                client_name,
                client_email,
                provider_id,
                provider_name,
                provider_email,
            } => {
                let event = ProjectStarted {
                    project_id,
                    title,
                    client: Party {
                        id: client_id,
                        display_name: client_name,
                        email: client_email,
                    },
                    provider: Party {
                        id: provider_id,
                        display_name: provider_name,
                        email: provider_email,
                    },
                    started_at: Utc::now(),
                };
                event.validate().map_err(anyhow::Error::msg)?;
                publish(
                    &nats_url,
                    subjects::PROJECT_STARTED,
                    &format!("started-{project_id}"),
                    &event,
                )
                .await?;
                println!("{}", parley_domain::ids::conversation_id_for_project(project_id));
                Ok(())
            }
            ProjectCommand::Close { nats_url, project_id } => {
                let event = ProjectClosed {
                    project_id,
                    closed_at: Utc::now(),
                };
                publish(
                    &nats_url,
                    subjects::PROJECT_CLOSED,
                    &format!("closed-{project_id}"),
                    &event,
                )
                .await
            }
        },
        Command::Token {
            action:
                TokenCommand::Mint {
                    secret,
                    user_id,
                    ttl_hours,
                },
        } => {
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
    }
}

/// Publishes to JetStream (creating the streams if no service has yet) and waits for the ack.
async fn publish(nats_url: &str, subject: &str, msg_id: &str, event: &impl serde::Serialize) -> anyhow::Result<()> {
    let client = async_nats::ConnectOptions::new()
        .name("parley-cli")
        .connect(nats_url)
        .await
        .with_context(|| format!("connecting to {nats_url}"))?;
    let js = parley_nats::jetstream(client);
    let replicas = std::env::var("PARLEY_STREAM_REPLICAS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    parley_nats::ensure_streams(&js, replicas).await?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(parley_nats::MSG_ID_HEADER, msg_id);
    js.publish_with_headers(subject.to_owned(), headers, serde_json::to_vec(event)?.into())
        .await?
        .await
        .context("waiting for the JetStream ack")?;
    Ok(())
}
