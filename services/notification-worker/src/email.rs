//! Email digests for recipients who stay away. A pending job per (conversation, recipient) falls
//! due `PARLEY_EMAIL_DELAY_MS` after the message that queued it; then, if the recipient has no
//! connected socket, one email lists every message from the other party above both their read
//! mark and the last message an earlier digest listed. SMTP failures are retried with growing
//! delays; how far digests have gone is recorded before the job is acked, so a redelivery never
//! mails the same messages again. Jobs go through the shared consumer runtime: [`DigestSender`]
//! says what becomes of each.

use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::stream::DirectGetErrorKind;
use async_nats::jetstream::{self, kv};
use chrono::Utc;
use futures::StreamExt;
use lettre::message::header::{ContentTransferEncoding, ContentType, MessageId};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use parley_domain::validation::preview;
use parley_events::{EmailDigestJob, MessagePosted, ReadMarked, subjects};
use parley_nats::consume::{Disposition, Handler};
use tracing::{info, warn};

use crate::directory::{ConversationCard, Directory, Person};

/// Most messages one digest lists.
const MAX_LISTED: usize = 50;

/// Sends email over SMTP.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    pub fn new(url: &str, from: Mailbox) -> anyhow::Result<Self> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)?
            .timeout(Some(Duration::from_secs(20)))
            .build();
        Ok(Self { transport, from })
    }
}

/// One message as a digest lists it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub seq: u64,
    pub preview: String,
}

/// A header value from user-supplied text: control characters (CR and LF above all) become
/// spaces, so a display name or title can never start a header of its own.
fn header_safe(text: &str) -> String {
    let cleaned: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let trimmed = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    trimmed.chars().take(200).collect()
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// The digest email: subject and body name the project and the sender, the body lists the
/// previews; plain text and HTML parts, every user-supplied string escaped for where it goes.
pub fn compose_digest(
    from: &Mailbox,
    card: &ConversationCard,
    recipient: &Person,
    sender: &Person,
    listed: &[Listed],
    message_id: &str,
) -> anyhow::Result<Message> {
    let title = header_safe(&card.title);
    let sender_name = header_safe(&sender.display_name);
    let count = listed.len();
    let noun = if count == 1 { "message" } else { "messages" };
    let subject = format!("{count} new {noun} from {sender_name} in \"{title}\"");
    let to = Mailbox::new(Some(header_safe(&recipient.display_name)), recipient.email.parse()?);

    let mut text = format!(
        "{} sent you {count} new {noun} in the project \"{}\":\n\n",
        sender.display_name, card.title
    );
    let mut html = format!(
        "<p>{} sent you {count} new {noun} in the project &ldquo;{}&rdquo;:</p>\n<ul>\n",
        html_escape(&sender.display_name),
        html_escape(&card.title)
    );
    for item in listed {
        text.push_str(&format!("- {}\n", item.preview));
        html.push_str(&format!("<li>{}</li>\n", html_escape(&item.preview)));
    }
    text.push_str("\nOpen the project to reply.\n");
    html.push_str("</ul>\n<p>Open the project to reply.</p>\n");

    let message = Message::builder()
        .from(from.clone())
        .to(to)
        .subject(subject)
        .header(MessageId::from(message_id.to_owned()))
        .multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .header(ContentTransferEncoding::QuotedPrintable)
                        .body(text),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .header(ContentTransferEncoding::QuotedPrintable)
                        .body(html),
                ),
        )?;
    Ok(message)
}

/// Sends each digest job when it falls due.
pub(crate) struct DigestSender {
    pub(crate) js: jetstream::Context,
    pub(crate) directory: Directory,
    pub(crate) sent: kv::Store,
    pub(crate) mailer: Mailer,
}

impl Handler for DigestSender {
    async fn handle(&self, message: &jetstream::Message) -> Disposition {
        let Ok(job) = serde_json::from_slice::<EmailDigestJob>(&message.payload) else {
            return Disposition::terminate("a malformed email job");
        };
        // The first delivery when the count is unknown: the shortest backoff.
        let attempts = message.info().map_or(1, |info| info.delivered);
        handle(self, &job, attempts).await
    }
}

/// Growing delay for SMTP retries: 1 s, 2 s, 4 s … capped at a minute.
fn backoff(attempts: i64) -> Duration {
    let exponent = attempts.clamp(1, 7) as u32 - 1;
    Duration::from_secs(2u64.pow(exponent).min(60))
}

async fn handle(sender: &DigestSender, job: &EmailDigestJob, attempts: i64) -> Disposition {
    let DigestSender {
        js,
        directory,
        sent,
        mailer,
    } = sender;
    let now = Utc::now();
    if job.due_at > now {
        return Disposition::Retry {
            after: (job.due_at - now).to_std().unwrap_or_default(),
        };
    }
    let transient = |what: &str, error: &dyn std::fmt::Display| {
        warn!(what, %error, "email digest postponed");
        Disposition::Retry {
            after: backoff(attempts),
        }
    };
    let sent_key = format!("{}.{}", job.conversation_id, job.recipient_id);
    let emailed_through = match sent.get(&sent_key).await {
        Ok(Some(value)) => std::str::from_utf8(&value)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0),
        Ok(None) => 0,
        Err(error) => return transient("sent lookup", &error),
    };
    match parley_nats::buckets::is_online(js, job.recipient_id).await {
        Ok(true) => return Disposition::Ack,
        Ok(false) => {}
        Err(error) => return transient("presence", &error),
    }
    let card = match directory.card(job.conversation_id).await {
        Ok(Some(card)) => card,
        Ok(None) => return Disposition::Ack,
        Err(error) => return transient("directory", &error),
    };
    let Some(recipient) = card.person(job.recipient_id).cloned() else {
        return Disposition::Ack;
    };
    let Some(sender) = card.participants.iter().find(|p| p.id != recipient.id).cloned() else {
        return Disposition::Ack;
    };
    let unread = match unread_since(js, job, sender.id, emailed_through).await {
        Ok(unread) => unread,
        Err(error) => return transient("reading messages", &error),
    };
    if unread.is_empty() {
        return Disposition::Ack;
    }
    let through = unread.iter().map(|m| m.seq).max().unwrap_or(0);
    let message_id = format!("<digest.{sent_key}.{through}@parley>");
    let email = match compose_digest(&mailer.from, &card, &recipient, &sender, &unread, &message_id) {
        Ok(email) => email,
        Err(error) => {
            warn!(%error, "cannot compose this digest (bad address?); dropping it");
            return Disposition::Ack;
        }
    };
    if let Err(error) = mailer.transport.send(email).await {
        metrics::counter!("parley_emails_failed_total").increment(1);
        return transient("smtp", &error);
    }
    metrics::counter!("parley_emails_sent_total").increment(1);
    info!(conversation = %job.conversation_id, messages = unread.len(), "email digest sent");
    if let Err(error) = sent.put(&sent_key, through.to_string().into()).await {
        warn!(%error, "recording a sent digest failed");
    }
    Disposition::Ack
}

/// The other party's messages above the recipient's read mark and above `emailed_through`.
async fn unread_since(
    js: &jetstream::Context,
    job: &EmailDigestJob,
    sender: uuid::Uuid,
    emailed_through: u64,
) -> Result<Vec<Listed>, async_nats::Error> {
    let stream = js.get_stream_no_info(parley_nats::CHAT_STREAM).await?;
    let read_subject = subjects::conversation_reads(job.conversation_id, job.recipient_id);
    let mark = match stream.direct_get_last_for_subject(read_subject).await {
        Ok(stored) => serde_json::from_slice::<ReadMarked>(&stored.payload).map_or(0, |r| r.seq),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => 0,
        Err(e) => return Err(e.into()),
    };
    let start = u64::try_from(mark).unwrap_or(0).max(emailed_through) + 1;
    let subject = subjects::conversation_messages(job.conversation_id);
    let last = match stream.direct_get_last_for_subject(subject.clone()).await {
        Ok(stored) => stored.sequence,
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    if start > last {
        return Ok(Vec::new());
    }
    let name = format!("parley-digest-{}", uuid::Uuid::new_v4().simple());
    let consumer = stream
        .create_consumer(OrderedConfig {
            name: Some(name.clone()),
            filter_subject: subject,
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: start },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut listed = Vec::new();
    let result = async {
        while let Some(message) = tokio::time::timeout(Duration::from_secs(10), messages.next()).await? {
            let message = message?;
            let info = message.info()?;
            let seq = info.stream_sequence;
            let pending = info.pending;
            if seq > last {
                break;
            }
            if let Ok(event) = serde_json::from_slice::<MessagePosted>(&message.payload)
                && event.sender_id == sender
                && listed.len() < MAX_LISTED
            {
                listed.push(Listed {
                    seq,
                    preview: preview(&event.body),
                });
            }
            if seq >= last || pending == 0 {
                break;
            }
        }
        Ok::<_, async_nats::Error>(())
    }
    .await;
    let _ = stream.delete_consumer(&name).await;
    result.map(|()| listed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use parley_domain::Role;
    use parley_test_support::smtp::decode_quoted_printable;
    use uuid::Uuid;

    fn person(name: &str, role: Role) -> Person {
        Person {
            id: Uuid::new_v4(),
            role,
            display_name: name.into(),
            email: "x@example.test".into(),
        }
    }

    #[test]
    fn a_hostile_display_name_cannot_add_headers_or_markup() {
        let sender = person("Eve\r\nBcc: victim@example.test\r\n<b>bold</b>", Role::Provider);
        let recipient = person("Bob\nX-Injected: 1", Role::Client);
        let card = ConversationCard {
            conversation_id: Uuid::new_v4(),
            project_id: Uuid::new_v4(),
            title: "Logo <script>alert(1)</script>\r\nSubject: spoof".into(),
            participants: vec![sender.clone(), recipient.clone()],
            closed_at: None,
        };
        let listed = [Listed {
            seq: 1,
            preview: "<img src=x onerror=alert(1)> & more".into(),
        }];
        let from: Mailbox = "Parley <no-reply@parley.local>".parse().unwrap();
        let email = compose_digest(&from, &card, &recipient, &sender, &listed, "<id@parley>").unwrap();
        let raw = String::from_utf8(email.formatted()).unwrap();
        let headers = raw.split("\r\n\r\n").next().unwrap();
        for line in headers.lines() {
            assert!(
                !line.starts_with("Bcc:") && !line.starts_with("X-Injected:"),
                "injected header: {line}"
            );
        }
        assert_eq!(headers.lines().filter(|l| l.starts_with("Subject:")).count(), 1);
        let part = raw.split("Content-Type: text/html").nth(1).expect("an HTML part");
        let html = decode_quoted_printable(part.split("\r\n\r\n").nth(1).unwrap_or(""));
        assert!(
            !html.contains("<b>") && !html.contains("<script") && !html.contains("<img"),
            "{html}"
        );
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt; &amp; more"), "{html}");
        assert!(
            html.contains("Eve Bcc: victim@example.test &lt;b&gt;bold&lt;/b&gt;") || html.contains("&lt;b&gt;bold"),
            "{html}"
        );
    }

    #[test]
    fn retries_back_off_up_to_a_minute() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(50), Duration::from_secs(60));
    }
}
