//! Part 4, idle connections: the gateway's resident memory per authenticated idle socket, against
//! a minimal Node.js Socket.IO server (`bench/node/server.mjs`, the `socket.io` npm package)
//! holding the same sockets in the same run.
//!
//! For each server: start it, read its RSS after readiness and a short settle, connect the
//! sockets (one distinct user, so one token, per socket; websocket transport; at most
//! [`IN_FLIGHT`] handshakes at a time), wait until every one is connected, settle, check that
//! none dropped (and, for the gateway, that it counts them all), read the RSS again. Per socket
//! = (after − before) / sockets. In full mode the gateway and Node keep their first 10k sockets
//! and take 40k more for the 50k point. The clients' readers answer Engine.IO pings, so nothing
//! times out while idle; they run in the [`Fleet`]'s few tasks, not in a task per socket.
//!
//! One source address has about 28k ephemeral ports, so connections are spread over
//! `127.0.0.2`, `127.0.0.3`, … ([`PER_SOURCE`] each), the Node round on other addresses than the
//! gateway's so the ports the first round left in TIME_WAIT do not get in the way.
//!
//! Every socket is a file descriptor in the bench and in the server: a size the soft
//! `RLIMIT_NOFILE` cannot hold (`ulimit -n`) is skipped with a note, not measured.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use parley_test_support::sio::Client;
use parley_test_support::smtp::free_port;
use parley_test_support::{TEST_JWT_SECRET, token_for};
use serde_json::json;
use uuid::Uuid;

use crate::fleet::Fleet;
use crate::stack::{self, Infra, Process};
use crate::{Context, Figure};

/// Handshakes in flight at once, so the server is not flooded.
const IN_FLIGHT: usize = 200;
/// Sockets per source address (of ~28k ephemeral ports, leaving room for a rerun's TIME_WAIT).
const PER_SOURCE: usize = 10_000;
/// Wait after readiness before the first reading, and after the last connect before the second.
const SETTLE_BEFORE: Duration = Duration::from_secs(1);
const SETTLE_AFTER: Duration = Duration::from_secs(2);
/// One handshake's time limit (a debug gateway under 200 concurrent handshakes is slow).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts per socket before the part fails.
const ATTEMPTS: usize = 3;
/// File descriptors kept for everything but the sockets (NATS, Postgres, files, listeners).
const FD_MARGIN: u64 = 1_000;

const GOAL: &str = "≤ 10 KiB per socket and ≥ 3× the sockets per GiB of Node";
const GOAL_KIB: f64 = 10.0;
const GOAL_RATIO: f64 = 3.0;
const KIB_PER_GIB: f64 = 1024.0 * 1024.0;

const NODE_DIR: &str = "bench/node";

pub async fn run(context: &Context) -> anyhow::Result<Vec<Figure>> {
    let wanted: Vec<usize> = context.size(vec![10_000], vec![10_000, 50_000]);
    let node = NodeBaseline::locate()?;
    let limits = fd_limits();
    let (sizes, skipped): (Vec<usize>, Vec<usize>) = wanted
        .into_iter()
        .partition(|&n| limits.is_none_or(|(soft, _)| n as u64 + FD_MARGIN <= soft));
    let skipped: Vec<serde_json::Value> = skipped
        .into_iter()
        .map(|n| {
            let (soft, hard) = limits.unwrap_or_default();
            let reason = format!(
                "the open-files limit (soft {soft}, hard {hard}) cannot hold {n} sockets plus {FD_MARGIN} \
                 in the bench and in the server; raise it (`ulimit -n`, up to the hard limit, which only \
                 root or the container's nofile setting can raise)"
            );
            eprintln!("   idle: skipping {n} sockets: {reason}");
            json!({ "sockets": n, "reason": reason })
        })
        .collect();
    anyhow::ensure!(
        !sizes.is_empty(),
        "idle: no size fits the open-files limit ({limits:?}); raise `ulimit -n` (scripts/bench.sh does)"
    );
    // One distinct user per socket: a user room, a presence entry and a session each, as in
    // production where most users have one or two devices.
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let tokens: Vec<String> = (0..largest)
        .map(|_| token_for(Uuid::new_v4(), TEST_JWT_SECRET))
        .collect();

    let parley = {
        let infra = Infra::start(context).await?;
        let (gateway, addr) = infra.gateway(context)?;
        stack::ready(addr).await?;
        let server = Server {
            name: "parley-gateway",
            process: &gateway,
            addr,
            metrics: true,
        };
        hold(&server, &sizes, &tokens, 0).await?
        // The sockets are gone with the measurement; the gateway and its infra stop here.
    };
    let baseline = {
        let (process, addr) = node.start().await?;
        let server = Server {
            name: "node",
            process: &process,
            addr,
            metrics: false,
        };
        hold(&server, &sizes, &tokens, 1).await?
    };

    let figures = parley
        .iter()
        .zip(&baseline)
        .map(|(ours, theirs)| {
            let sockets = ours.sockets;
            let (value, base) = (ours.kib_per_socket(), theirs.kib_per_socket());
            let density = if value > 0.0 { base / value } else { 0.0 };
            let details = json!({
                "sockets": sockets,
                "users": sockets,
                "usersNote": "one distinct user (token) per socket",
                "transport": "websocket",
                "parley": ours.details(),
                "node": theirs.details(),
                "socketsPerGiBRatio": density,
                "settleBeforeSeconds": SETTLE_BEFORE.as_secs_f64(),
                "settleAfterSeconds": SETTLE_AFTER.as_secs_f64(),
                "handshakesInFlight": IN_FLIGHT,
                "socketsPerSourceAddress": PER_SOURCE,
                "checks": "every client still connected after the settle; the gateway's parley_gateway_connected_sockets equals the sockets held",
                "skipped": skipped,
                "note": "RSS excludes kernel socket buffers (the same for both servers)",
            });
            let mut figure = Figure::lower(
                &format!("Idle socket memory at {}k", sockets / 1000),
                value,
                "KiB/socket",
                &node.label,
                base,
                1.0 / GOAL_RATIO,
                GOAL,
                details,
            );
            figure.goal_met = value <= GOAL_KIB && density >= GOAL_RATIO;
            figure
        })
        .collect();
    Ok(figures)
}

/// A server holding the sockets.
struct Server<'a> {
    name: &'static str,
    process: &'a Process,
    addr: SocketAddr,
    /// Whether it reports `parley_gateway_connected_sockets` on `/metrics`.
    metrics: bool,
}

/// One reading: the server's RSS before any socket and with `sockets` idle ones.
struct Point {
    sockets: usize,
    rss_before_kib: u64,
    rss_after_kib: u64,
    connect_seconds: f64,
    connected_now: usize,
}

impl Point {
    fn kib_per_socket(&self) -> f64 {
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64 / self.sockets as f64
    }

    fn details(&self) -> serde_json::Value {
        let per_socket = self.kib_per_socket();
        json!({
            "rssBeforeKiB": self.rss_before_kib,
            "rssAfterKiB": self.rss_after_kib,
            "kibPerSocket": per_socket,
            "socketsPerGiB": if per_socket > 0.0 { (KIB_PER_GIB / per_socket).round() } else { 0.0 },
            "connectedInThisStep": self.connected_now,
            "connectSeconds": self.connect_seconds,
            "connectsPerSecond": self.connected_now as f64 / self.connect_seconds.max(1e-9),
        })
    }
}

/// Connects up to each of `sizes` (ascending) in turn and reads the RSS at each; `round` picks
/// the source addresses. The sockets are dropped on return.
async fn hold(server: &Server<'_>, sizes: &[usize], tokens: &[String], round: usize) -> anyhow::Result<Vec<Point>> {
    let pid = server.process.child.id();
    let url = format!("http://{}", server.addr);
    let fleet = Fleet::new();
    if server.metrics {
        // The gateway installs its metrics recorder on the first scrape; counts before are lost.
        connected_sockets(server.addr).await.ok();
    }
    tokio::time::sleep(SETTLE_BEFORE).await;
    let rss_before_kib = stack::rss_kib(pid);
    let mut clients: Vec<Client> = Vec::with_capacity(sizes.iter().copied().max().unwrap_or(0));
    let mut points = Vec::new();
    for &size in sizes {
        let from = clients.len();
        let started = Instant::now();
        let mut connects = futures::stream::iter(from..size)
            .map(|i| connect(&fleet, &url, &tokens[i], source(round, i)))
            .buffer_unordered(IN_FLIGHT);
        while let Some(client) = connects.next().await {
            clients.push(
                client
                    .with_context(|| format!("{}: connecting socket {} of {size}", server.name, clients.len() + 1))?,
            );
        }
        drop(connects);
        let connect_seconds = started.elapsed().as_secs_f64();
        let connected_now = size - from;
        eprintln!(
            "   idle: {} holds {size} sockets ({connected_now} in {connect_seconds:.1} s, {:.0}/s)",
            server.name,
            connected_now as f64 / connect_seconds.max(1e-9)
        );
        tokio::time::sleep(SETTLE_AFTER).await;
        let dropped = clients.iter().filter(|c| !c.is_connected()).count();
        anyhow::ensure!(
            dropped == 0,
            "{}: {dropped} of {size} idle sockets dropped during the settle",
            server.name
        );
        if server.metrics {
            let counted = connected_sockets(server.addr).await?;
            anyhow::ensure!(
                counted == size as u64,
                "{}: reports {counted} connected sockets, the bench holds {size}",
                server.name
            );
        }
        let rss_after_kib = stack::rss_kib(pid);
        anyhow::ensure!(rss_after_kib > 0, "{}: cannot read its RSS (did it exit?)", server.name);
        points.push(Point {
            sockets: size,
            rss_before_kib,
            rss_after_kib,
            connect_seconds,
            connected_now,
        });
    }
    Ok(points)
}

/// One authenticated socket, retried a few times (a slow handshake under load is not a finding).
async fn connect(fleet: &Fleet, url: &str, token: &str, local: IpAddr) -> anyhow::Result<Client> {
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let connector = Client::connector(url, json!({ "token": token }))
            .local(local)
            .timeout(CONNECT_TIMEOUT);
        match fleet.connect(connector).await {
            Ok(client) => return Ok(client),
            Err(error) => last = Some(error),
        }
    }
    Err(anyhow::anyhow!(
        "from {local}: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// The source address of socket `i` in `round`: 127.0.0.2 onwards, [`PER_SOURCE`] each, ten
/// addresses apart between rounds.
fn source(round: usize, i: usize) -> IpAddr {
    let host = 2 + round * 10 + i / PER_SOURCE;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, u8::try_from(host).unwrap_or(u8::MAX)))
}

/// `parley_gateway_connected_sockets` from the gateway's `/metrics`.
async fn connected_sockets(addr: SocketAddr) -> anyhow::Result<u64> {
    let response = parley_test_support::http::request(addr, "GET", "/metrics", None, None).await;
    response
        .raw
        .lines()
        .find_map(|line| line.strip_prefix("parley_gateway_connected_sockets "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
        .context("the gateway's /metrics has no parley_gateway_connected_sockets")
}

/// The soft and hard limits on open files of this process (children inherit them), from /proc.
fn fd_limits() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    let mut values = line.split_whitespace().skip(3).map(|v| v.parse().unwrap_or(u64::MAX));
    Some((values.next()?, values.next()?))
}

/// `node bench/node/server.mjs`, with its dependencies installed.
struct NodeBaseline {
    node: PathBuf,
    script: PathBuf,
    /// e.g. "Node.js v20.20.2, socket.io 4.8.4".
    label: String,
}

impl NodeBaseline {
    /// Finds `node` on PATH and the server with its `node_modules` (relative to the working
    /// directory, the repository root).
    fn locate() -> anyhow::Result<NodeBaseline> {
        let dir = Path::new(NODE_DIR);
        let script = dir.join("server.mjs");
        anyhow::ensure!(
            script.is_file(),
            "idle: {} not found; run the bench from the repository root",
            script.display()
        );
        let package = dir.join("node_modules/socket.io/package.json");
        let installed = std::fs::read_to_string(&package).map_err(|_| {
            anyhow::anyhow!(
                "idle: {NODE_DIR}/node_modules is missing; run scripts/bench.sh, which installs it (or `npm ci` in {NODE_DIR})"
            )
        })?;
        let socket_io = serde_json::from_str::<serde_json::Value>(&installed)
            .ok()
            .and_then(|p| p["version"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "?".into());
        let node = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join("node"))
            .find(|candidate| candidate.is_file())
            .context("idle: `node` not found on PATH; the baseline needs Node.js ≥ 20")?;
        let version = Command::new(&node)
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let label = format!("Node.js {version}, socket.io {socket_io}");
        Ok(NodeBaseline { node, script, label })
    }

    /// Starts the server on a free loopback port and waits until it accepts connections.
    async fn start(&self) -> anyhow::Result<(Process, SocketAddr)> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let child = Command::new(&self.node)
            .arg(&self.script)
            .arg(addr.port().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {} {}", self.node.display(), self.script.display()))?;
        let mut process = Process { child };
        for _ in 0..200 {
            if let Some(status) = process.child.try_wait()? {
                anyhow::bail!("the Node baseline server exited at start: {status}");
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok((process, addr));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("the Node baseline server never listened on {addr}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_spread_and_rounds_do_not_share() {
        assert_eq!(source(0, 0), IpAddr::from([127, 0, 0, 2]));
        assert_eq!(source(0, PER_SOURCE - 1), IpAddr::from([127, 0, 0, 2]));
        assert_eq!(source(0, 49_999), IpAddr::from([127, 0, 0, 6]));
        assert_eq!(source(1, 0), IpAddr::from([127, 0, 0, 12]));
        assert_eq!(source(1, 49_999), IpAddr::from([127, 0, 0, 16]));
    }

    #[test]
    fn reads_the_fd_limits() {
        assert!(fd_limits().is_some_and(|(soft, hard)| soft > 0 && soft <= hard));
    }
}
