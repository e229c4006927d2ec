//! `parley project start|close`: publishes project lifecycle events the way the marketplace does,
//! through JetStream (creating the streams if no service has yet), waiting for the ack.

use anyhow::Context as _;
use chrono::Utc;
use parley_events::{Party, ProjectClosed, ProjectStarted, subjects};
use uuid::Uuid;

#[derive(clap::Subcommand, Debug)]
pub enum ProjectCommand {
    /// Publish `parley.project.started`; prints the conversation id.
    Start {
        #[arg(long, env = "NATS_URL", default_value = parley_nats::DEFAULT_URL)]
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
        #[arg(long, env = "NATS_URL", default_value = parley_nats::DEFAULT_URL)]
        nats_url: String,
        #[arg(long)]
        project_id: Uuid,
    },
}

pub async fn run(event: ProjectCommand) -> anyhow::Result<()> {
    match event {
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
    }
}

/// Publishes to JetStream (creating the streams if no service has yet) and waits for the ack.
async fn publish(nats_url: &str, subject: &str, msg_id: &str, event: &impl serde::Serialize) -> anyhow::Result<()> {
    let js = crate::nats::connect(nats_url).await?.js;
    parley_nats::ensure_streams(&js, crate::nats::replicas()).await?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(parley_nats::MSG_ID_HEADER, msg_id);
    js.publish_with_headers(subject.to_owned(), headers, serde_json::to_vec(event)?.into())
        .await?
        .await
        .context("waiting for the JetStream ack")?;
    Ok(())
}
