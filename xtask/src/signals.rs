//! Ctrl-C, SIGTERM and SIGHUP become a value every command can wait for, so that it stops what
//! it started — in order, Postgres last — instead of dying with it still running.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// The exit code a received signal asks for (128 + its number), once one came.
#[derive(Debug, Clone)]
pub struct Signals {
    received: watch::Receiver<Option<u8>>,
}

/// Which signal came, for passing it on to a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    Interrupt,
    Terminate,
}

impl Signals {
    /// Starts listening: from now on these signals no longer end the process.
    pub fn install() -> std::io::Result<Signals> {
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        let (tx, received) = watch::channel(None);
        tokio::spawn(async move {
            loop {
                let code = tokio::select! {
                    _ = int.recv() => 130,
                    _ = term.recv() => 143,
                    _ = hup.recv() => 129,
                };
                // The first one decides the exit code; later ones change nothing.
                tx.send_if_modified(|value| {
                    if value.is_none() {
                        *value = Some(code);
                        true
                    } else {
                        false
                    }
                });
            }
        });
        Ok(Signals { received })
    }

    /// The exit code asked for, if a signal came.
    pub fn received(&self) -> Option<u8> {
        *self.received.borrow()
    }

    pub fn kind(&self) -> Option<Received> {
        self.received().map(|code| {
            if code == 130 {
                Received::Interrupt
            } else {
                Received::Terminate
            }
        })
    }

    /// Resolves with the exit code once a signal came (at once if one already did).
    pub async fn wait(&self) -> u8 {
        let mut received = self.received.clone();
        match received.wait_for(Option::is_some).await {
            Ok(code) => code.unwrap_or(130),
            // The listener never ends; if it did, nothing will ever come.
            Err(_) => std::future::pending().await,
        }
    }
}
