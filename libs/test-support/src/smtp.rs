//! A real SMTP listener for email tests: speaks enough of RFC 5321 for lettre (EHLO, MAIL, RCPT,
//! DATA, RSET, NOOP, QUIT) on a port of its own and keeps every message it accepts. It can be
//! started late on a chosen port, to play an SMTP server that was down and came back.

use std::net::TcpListener as StdListener;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// One accepted message.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    pub from: String,
    pub to: Vec<String>,
    /// The message as sent after DATA, dot-unstuffed, CRLF line ends.
    pub data: String,
}

impl ReceivedMail {
    /// The header block.
    pub fn headers(&self) -> &str {
        self.data.split("\r\n\r\n").next().unwrap_or("")
    }

    /// The value of the first header `name` (unfolded), if any.
    pub fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        let mut lines = self.headers().split("\r\n").peekable();
        while let Some(line) = lines.next() {
            if line.to_ascii_lowercase().starts_with(&prefix) {
                let mut value = line[prefix.len()..].trim().to_owned();
                while lines.peek().is_some_and(|l| l.starts_with(' ') || l.starts_with('\t')) {
                    value.push(' ');
                    value.push_str(lines.next().unwrap_or("").trim());
                }
                return Some(value);
            }
        }
        None
    }

    /// The decoded body of the first part with this content type (quoted-printable aware).
    pub fn part(&self, content_type: &str) -> Option<String> {
        let after = self.data.split(&format!("Content-Type: {content_type}")).nth(1)?;
        let (head, body) = after.split_once("\r\n\r\n")?;
        let body = body.split("\r\n--").next().unwrap_or(body);
        if head.to_ascii_lowercase().contains("quoted-printable") {
            Some(decode_quoted_printable(body))
        } else {
            Some(body.to_owned())
        }
    }
}

/// Decodes a quoted-printable body (soft line breaks and `=XX` escapes).
pub fn decode_quoted_printable(body: &str) -> String {
    let body = body.replace("=\r\n", "");
    let bytes = body.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'=')
            .then(|| body.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A listening SMTP server; stops on drop.
#[derive(Debug)]
pub struct SmtpServer {
    pub port: u16,
    mail: Arc<Mutex<Vec<ReceivedMail>>>,
    arrived: Arc<Notify>,
    task: Option<JoinHandle<()>>,
}

/// A free port nobody listens on yet (for a server that starts "later").
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl SmtpServer {
    pub async fn start() -> SmtpServer {
        Self::start_on(0).await
    }

    /// Listens on `port` (0: any free port).
    pub async fn start_on(port: u16) -> SmtpServer {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind SMTP port");
        let port = listener.local_addr().expect("addr").port();
        let mail: Arc<Mutex<Vec<ReceivedMail>>> = Arc::default();
        let arrived = Arc::new(Notify::new());
        let task = tokio::spawn({
            let mail = mail.clone();
            let arrived = arrived.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(session(stream, mail.clone(), arrived.clone()));
                }
            }
        });
        SmtpServer {
            port,
            mail,
            arrived,
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<ReceivedMail> {
        self.mail.lock().clone()
    }

    /// Waits until at least `count` messages arrived; panics after `timeout`.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            let arrived = tokio::time::timeout_at(deadline, notified).await.is_ok();
            assert!(
                arrived,
                "timed out waiting for {count} emails; got {}",
                self.received().len()
            );
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn session(stream: tokio::net::TcpStream, mail: Arc<Mutex<Vec<ReceivedMail>>>, arrived: Arc<Notify>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut reply = async |text: &str| write.write_all(format!("{text}\r\n").as_bytes()).await.is_ok();
    if !reply("220 parley-test ESMTP").await {
        return;
    }
    let (mut from, mut to) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let command = line.trim_end().to_owned();
        let upper = command.to_ascii_uppercase();
        let ok = if upper.starts_with("EHLO") {
            reply("250-parley-test\r\n250-8BITMIME\r\n250 SMTPUTF8").await
        } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
            reply("250 ok").await
        } else if upper.starts_with("MAIL FROM:") {
            from = command[10..].trim().to_owned();
            to.clear();
            reply("250 ok").await
        } else if upper.starts_with("RCPT TO:") {
            to.push(command[8..].trim().to_owned());
            reply("250 ok").await
        } else if upper.starts_with("RSET") {
            from.clear();
            to.clear();
            reply("250 ok").await
        } else if upper == "DATA" {
            if !reply("354 end with <CRLF>.<CRLF>").await {
                return;
            }
            let mut data = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                let unstuffed = line.strip_prefix('.').unwrap_or(&line);
                data.push_str(unstuffed);
            }
            mail.lock().push(ReceivedMail {
                from: from.clone(),
                to: to.clone(),
                data,
            });
            arrived.notify_waiters();
            reply("250 queued").await
        } else if upper.starts_with("QUIT") {
            let _ = reply("221 bye").await;
            return;
        } else {
            reply("502 not implemented").await
        };
        if !ok {
            return;
        }
    }
}
