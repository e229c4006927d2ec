//! A private nats-server per test: its own port and JetStream folder, stopped on drop (a
//! [`Process`]: SIGTERM, then SIGKILL if it lingers). Tests that restart NATS under running
//! services call [`NatsServer::restart`], which keeps port and data.

use std::path::PathBuf;
use std::time::Duration;

use crate::process::{Process, ProcessBuilder, free_port};

#[derive(Debug)]
pub struct NatsServer {
    pub port: u16,
    dir: PathBuf,
    config: Option<PathBuf>,
    process: Option<Process>,
}

fn binary() -> String {
    std::env::var("PARLEY_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".to_owned())
}

/// The product's server configuration (`nats/nats-server.conf`: JetStream fsyncs every write
/// before acknowledging it), when `PARLEY_TEST_NATS_CONFIG` names it, as `scripts/test.sh` does.
/// Without it the server runs on its defaults.
fn config_from_env() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os("PARLEY_TEST_NATS_CONFIG")?);
    assert!(
        path.is_file(),
        "PARLEY_TEST_NATS_CONFIG names {}, which is not a file",
        path.display()
    );
    Some(path)
}

impl NatsServer {
    /// Starts a fresh JetStream-enabled server, with the configuration `PARLEY_TEST_NATS_CONFIG`
    /// names if any, and waits until it accepts connections.
    pub fn start() -> NatsServer {
        Self::start_with(config_from_env())
    }

    /// [`NatsServer::start`] with this configuration file, or on the server's defaults.
    pub fn start_with(config: Option<PathBuf>) -> NatsServer {
        let dir = std::env::temp_dir().join(format!("parley-nats-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("nats dir");
        let mut server = NatsServer {
            port: free_port().expect("a free port"),
            dir,
            config,
            process: None,
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Process::pid)
    }

    fn spawn(&mut self) {
        let mut builder = ProcessBuilder::new(binary()).name("nats-server");
        if let Some(config) = &self.config {
            builder = builder.arg("-c").arg(config);
        }
        let process = builder
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.dir.join("jetstream"))
            .log_file(self.dir.join("nats.log"))
            .spawn()
            .unwrap_or_else(|e| panic!("{e}; set PARLEY_TEST_NATS_SERVER"));
        let process = self.process.insert(process);
        if let Err(e) = process.wait_for_port(self.port, Duration::from_secs(20)) {
            panic!("nats-server did not come up: {e}");
        }
    }

    /// Kills the server (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Kills the server and starts it again on the same port with the same data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // Stopped before its folder goes.
        drop(self.process.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command_line(server: &NatsServer) -> Vec<String> {
        let pid = server.pid().expect("the server runs");
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .expect("the server's command line")
            .split(|b| *b == 0)
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect()
    }

    #[test]
    fn a_server_runs_with_the_configuration_it_was_given_and_keeps_it_across_a_restart() {
        let config = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../nats/nats-server.conf"));
        let mut server = NatsServer::start_with(Some(config.clone()));
        let given = ["-c".to_owned(), config.display().to_string()];
        assert!(command_line(&server).windows(2).any(|pair| pair == given));
        server.restart();
        assert!(command_line(&server).windows(2).any(|pair| pair == given));

        let defaults = NatsServer::start_with(None);
        assert!(!command_line(&defaults).contains(&"-c".to_owned()));
    }
}
