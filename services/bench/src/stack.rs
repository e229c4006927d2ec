//! What a part starts: a private nats-server and database (from `parley-test-support`), and the
//! real release binaries as child processes, whose memory can be read from `/proc`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use parley_test_support::cluster::{self, NatsCluster};
use parley_test_support::smtp::free_port;
use parley_test_support::{NatsServer, TEST_JWT_SECRET, TestDatabase};

use crate::Context;

/// The bench gateways' transcript signing seed (`PARLEY_TRANSCRIPT_KEY`, base64 of 32 bytes):
/// the bench signs nothing it keeps, but a gateway refuses to start without one.
pub(crate) const TRANSCRIPT_KEY: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";

/// A child process, killed on drop.
pub struct Process {
    pub child: Child,
}

impl Process {
    pub fn spawn(binary: &Path, env: &[(&str, String)]) -> anyhow::Result<Process> {
        // `PARLEY_BENCH_RUST_LOG` shows the services' logs while investigating a figure.
        let log_filter = std::env::var("PARLEY_BENCH_RUST_LOG").ok();
        let mut command = Command::new(binary);
        command
            .env("RUST_LOG", log_filter.as_deref().unwrap_or("warn"))
            .stdout(if log_filter.is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", binary.display()))?;
        Ok(Process { child })
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }
}

/// Resident memory of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The NATS of one part: one server, or the three-node cluster (`--cluster`).
pub enum Nats {
    Single(NatsServer),
    Cluster(NatsCluster),
}

impl Nats {
    /// `NATS_URL`: the server's, or the three nodes' comma-separated.
    pub fn url(&self) -> String {
        match self {
            Nats::Single(server) => server.url(),
            Nats::Cluster(cluster) => cluster.url(),
        }
    }

    /// Each nats-server process, named for the CPU figures.
    pub fn processes(&self) -> Vec<(&'static str, u32)> {
        match self {
            Nats::Single(server) => vec![("nats-server", server.pid().unwrap_or(0))],
            Nats::Cluster(cluster) => ["nats-1", "nats-2", "nats-3"]
                .into_iter()
                .enumerate()
                .map(|(index, name)| (name, cluster.pid(index).unwrap_or(0)))
                .collect(),
        }
    }

    /// How many times every stream is replicated: what the services are told.
    pub fn replicas(&self) -> usize {
        match self {
            Nats::Single(_) => 1,
            Nats::Cluster(_) => cluster::NODES,
        }
    }
}

/// NATS and Postgres of one part.
pub struct Infra {
    pub nats: Nats,
    pub db: TestDatabase,
    pub js: async_nats::jetstream::Context,
}

impl Infra {
    pub async fn start(context: &Context) -> anyhow::Result<Infra> {
        let nats = if context.cluster {
            let fsync = match context.nats {
                crate::NatsDurability::Shipped(_) => cluster::Fsync::Shipped,
                crate::NatsDurability::Unsynced => cluster::Fsync::Default,
            };
            Nats::Cluster(NatsCluster::start_with(fsync).await)
        } else {
            Nats::Single(NatsServer::start_with(context.nats_config()))
        };
        let db = TestDatabase::create().await;
        let js = async_nats::jetstream::new(parley_nats::connect(&nats.url(), "parley-bench").await?);
        parley_nats::ensure_streams(&js, nats.replicas()).await?;
        Ok(Infra { nats, db, js })
    }

    /// `named` processes with every nats-server process among them, for a [`CpuMeter`].
    pub fn with_nats(&self, named: &[(&'static str, u32)]) -> Vec<(&'static str, u32)> {
        let mut all = named.to_vec();
        all.extend(self.nats.processes());
        all
    }

    pub fn gateway(&self, context: &Context) -> anyhow::Result<(Process, SocketAddr)> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let env = [
            ("NATS_URL", self.nats.url()),
            ("DATABASE_URL", self.db.url.clone()),
            ("PARLEY_JWT_SECRET", TEST_JWT_SECRET.to_owned()),
            ("PARLEY_TRANSCRIPT_KEY", TRANSCRIPT_KEY.to_owned()),
            ("PARLEY_LISTEN", addr.to_string()),
            // The bench measures what the processes can carry, not what one user is allowed:
            // every limit is off (the report says so).
            ("PARLEY_SEND_RATE", "0".to_owned()),
            ("PARLEY_EVENT_RATE", "0".to_owned()),
            ("PARLEY_MAX_SOCKETS_PER_USER", "0".to_owned()),
            ("PARLEY_STREAM_REPLICAS", self.nats.replicas().to_string()),
        ];
        Ok((Process::spawn(&context.bin_dir.join("parley-gateway"), &env)?, addr))
    }

    pub fn worker(&self, context: &Context, binary: &str, extra: &[(&str, String)]) -> anyhow::Result<Process> {
        let mut env = vec![
            ("NATS_URL", self.nats.url()),
            ("DATABASE_URL", self.db.url.clone()),
            ("PARLEY_ADMIN_LISTEN", "127.0.0.1:0".to_owned()),
            ("PARLEY_STREAM_REPLICAS", self.nats.replicas().to_string()),
        ];
        env.extend(extra.iter().cloned());
        Process::spawn(&context.bin_dir.join(binary), &env)
    }
}

/// Waits until `GET /readyz` on `addr` answers 200.
pub async fn ready(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && parley_test_support::http::request(addr, "GET", "/readyz", None, None)
                .await
                .status
                == 200
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{addr} never became ready")
}

/// CPU time a process has used so far (user and system, every thread, living or gone), in
/// seconds; `None` once it is gone. `/proc/<pid>/stat` counts in USER_HZ ticks, which Linux fixes
/// at 100 per second for user space whatever the kernel's own tick.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    cpu_seconds_in(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// utime + stime of one `/proc/<pid>/stat` line, in seconds.
fn cpu_seconds_in(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces; count from after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, the 12th and 13th after the name.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Where the CPU went while something ran: each named process's share of a core and its CPU
/// time per message. On a small machine every process of the stack and the bench share the
/// same cores, so this says what a figure is bound by.
pub struct CpuMeter {
    started: std::time::Instant,
    processes: Vec<(&'static str, u32, f64)>,
}

impl CpuMeter {
    pub fn start(processes: &[(&'static str, u32)]) -> CpuMeter {
        CpuMeter {
            started: std::time::Instant::now(),
            processes: processes
                .iter()
                .filter_map(|&(name, pid)| Some((name, pid, cpu_seconds(pid)?)))
                .collect(),
        }
    }

    /// `{ name: { cores, microsPerMessage } }` since `start`.
    pub fn finish(&self, messages: usize) -> serde_json::Value {
        let wall = self.started.elapsed().as_secs_f64();
        let mut used = serde_json::Map::new();
        for &(name, pid, before) in &self.processes {
            let Some(after) = cpu_seconds(pid) else { continue };
            let seconds = after - before;
            used.insert(
                name.into(),
                serde_json::json!({
                    "cores": seconds / wall,
                    "microsPerMessage": seconds * 1e6 / messages.max(1) as f64,
                }),
            );
        }
        serde_json::Value::Object(used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_add_user_and_system_ticks_whatever_the_command_name_holds() {
        // Fields 14 and 15 (utime 250, stime 37); the name holds a space and a parenthesis.
        let line = "4242 (tokio rt) x) S 1 4242 4242 0 -1 4194560 1811 99 7 3 250 37 5 6 20 0 9 0 1234 5 6";
        assert_eq!(cpu_seconds_in(line), Some(2.87));
        assert_eq!(cpu_seconds_in("4242 (cut short) S 1 2"), None);
        assert_eq!(cpu_seconds_in("no name at all"), None);
    }

    #[test]
    fn cpu_seconds_grow_with_the_work_a_process_does() {
        let pid = std::process::id();
        let before = cpu_seconds(pid).expect("this process has a /proc entry");
        // Spin until the count moves by 50 ms; the bound only stops a broken reading (one that
        // never moves) from hanging, however loaded the machine is.
        let bound = std::time::Instant::now() + Duration::from_secs(60);
        let mut x = 0u64;
        let mut now = before;
        while now - before < 0.05 && std::time::Instant::now() < bound {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            now = cpu_seconds(pid).expect("still running");
        }
        assert!(now - before >= 0.05, "CPU time stayed at {before} s while spinning");
        assert_eq!(cpu_seconds(u32::MAX), None);
    }
}
