//! Running commands in the foreground — output straight to the terminal — so that a signal
//! stops the command and then us, and the test suite's recorded steps: each under a header, each
//! run even when an earlier one failed, the failures listed at the end.

use std::process::ExitStatus;
use std::time::Duration;

use crate::process::{Signal, describe, send_signal};
use crate::signals::{Received, Signals};

/// How a foreground command ended.
#[derive(Debug)]
pub enum Outcome {
    Exited(ExitStatus),
    /// A signal came; the command was stopped. The exit code it asks for.
    Interrupted(u8),
}

/// Runs `command` (stdin, stdout and stderr inherited) until it exits or a signal comes; then
/// the command gets the same signal (a Ctrl-C at the terminal reached it already, a `kill` of
/// this process did not), 20 s to end, and SIGKILL.
pub async fn run_foreground(mut command: tokio::process::Command, signals: &Signals) -> anyhow::Result<Outcome> {
    if let Some(code) = signals.received() {
        return Ok(Outcome::Interrupted(code));
    }
    command.kill_on_drop(true);
    let program = command.as_std().get_program().to_string_lossy().into_owned();
    let mut child = command
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run {program}: {e}"))?;
    tokio::select! {
        status = child.wait() => Ok(Outcome::Exited(status?)),
        code = signals.wait() => {
            if let Some(pid) = child.id() {
                let signal = match signals.kind() {
                    Some(Received::Interrupt) => Signal::Int,
                    _ => Signal::Term,
                };
                let _ = send_signal(pid, signal);
            }
            if tokio::time::timeout(Duration::from_secs(20), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
            Ok(Outcome::Interrupted(code))
        }
    }
}

/// `\n========== NAME ==========`
pub fn section(name: &str) {
    println!("\n========== {name} ==========");
}

/// The recorded steps of a run.
#[derive(Debug, Default)]
pub struct Steps {
    failed: Vec<String>,
}

impl Steps {
    /// Runs `command` under a header, showing it as `shown`, and records whether it passed.
    /// Returns the exit code a signal asks for, if one came.
    pub async fn run(
        &mut self,
        name: &str,
        shown: &str,
        command: tokio::process::Command,
        signals: &Signals,
    ) -> anyhow::Result<Option<u8>> {
        section(name);
        println!("$ {shown}");
        match run_foreground(command, signals).await {
            Ok(Outcome::Exited(status)) if status.success() => {
                println!("---------- {name}: ok");
                Ok(None)
            }
            Ok(Outcome::Exited(status)) => {
                println!("---------- {name}: FAILED ({})", describe(status));
                self.failed.push(name.to_owned());
                Ok(None)
            }
            Ok(Outcome::Interrupted(code)) => {
                println!("---------- {name}: interrupted");
                self.failed.push(name.to_owned());
                Ok(Some(code))
            }
            Err(error) => {
                self.fail(name, &format!("{error:#}"));
                Ok(None)
            }
        }
    }

    /// Records `name` as failed without running anything, saying why.
    pub fn fail(&mut self, name: &str, why: &str) {
        println!("{why}");
        println!("---------- {name}: FAILED (exit 1)");
        self.failed.push(name.to_owned());
    }

    /// Prints the summary; the exit code of the run.
    pub fn summary(&self) -> u8 {
        section("Summary");
        if self.failed.is_empty() {
            println!("All steps passed.");
            0
        } else {
            for name in &self.failed {
                println!("FAILED: {name}");
            }
            1
        }
    }
}
