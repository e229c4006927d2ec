//! What every Parley process does the same way: read its configuration from the environment
//! (refusing to start, in one line naming the variable, when a value is bad; the variables every
//! process shares in [`config::CommonConfig`]), log with `tracing`, serve its admin endpoint, and
//! stop gracefully on SIGTERM or SIGINT through one cancellation token, which also ends the
//! retries of its start.

pub mod admin;
pub mod config;
pub mod telemetry;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global `tracing` subscriber: `RUST_LOG` filters (default `info`),
/// `PARLEY_LOG_FORMAT` picks `json` (one JSON object per line) or `pretty` (the default; also
/// what an unreadable value gives here, as logging starts before the configuration is checked;
/// [`config::CommonConfig::from_env`] then refuses that value).
pub fn init_tracing() {
    let format = config::optional("PARLEY_LOG_FORMAT")
        .and_then(|raw| raw.parse().ok())
        .unwrap_or_default();
    init_tracing_as(format);
}

/// Installs the global `tracing` subscriber writing `format`; `RUST_LOG` filters (default
/// `info`).
pub fn init_tracing_as(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(true);
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    // A second init (tests starting several services in one process) keeps the first subscriber.
    drop(result);
}

/// Like [`init_tracing`], but writing through the test harness's capture, for tests that start
/// services in-process.
pub fn init_test_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    drop(
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init(),
    );
}

/// A token cancelled on the first SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        trigger.cancel();
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Retries `attempt` with capped exponential backoff until it succeeds or `shutdown` fires;
/// `None` when it fired. An attempt in progress is abandoned when it fires too (a request to a
/// server that is down may take seconds to time out). Used at start for dependencies that may
/// come up after us (NATS, Postgres in compose): pass the token the process stops on, so that a
/// process waiting for them still stops on SIGTERM.
pub async fn retry_until<T, E, F, Fut>(what: &str, shutdown: &CancellationToken, mut attempt: F) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(200);
    loop {
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return None,
            outcome = attempt() => outcome,
        };
        match outcome {
            Ok(value) => return Some(value),
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "{what} failed");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_retry_stops_when_the_shutdown_fires_even_mid_attempt() {
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            trigger.cancel();
        });
        let never = retry_until("waiting forever", &shutdown, || async {
            std::future::pending::<Result<(), String>>().await
        });
        let outcome = tokio::time::timeout(Duration::from_secs(5), never).await;
        assert_eq!(outcome, Ok(None));
    }

    #[tokio::test]
    async fn a_retry_returns_the_first_success() {
        let shutdown = CancellationToken::new();
        let mut failures = 2;
        let value = retry_until("flaky", &shutdown, || {
            let fail = failures > 0;
            failures -= 1;
            async move { if fail { Err("not yet") } else { Ok(7) } }
        });
        assert_eq!(value.await, Some(7));
    }
}
