//! A real three-node JetStream cluster for tests: three nats-server processes on loopback ports,
//! each from its node's configuration in `nats/cluster/` (the files the compose `cluster`
//! profile mounts), so that a change to those files is what the tests run. Only what cannot be
//! shared between a container and a test is rewritten: the client, cluster and monitoring ports,
//! the routes (container names become loopback ports) and the store folder. Every other line,
//! `sync_interval: always` and the cluster's name included, is kept as written, and the rewrite
//! panics if a line it must rewrite is missing, so a reshaped file cannot be silently skipped.
//!
//! A test can find a stream's leader (`$JS.API.STREAM.INFO`) and the JetStream meta leader
//! (the monitoring endpoint's `/jsz`), and inflict the faults an operator meets: `kill -9` of a
//! node, its restart on the same folder, a freeze (SIGSTOP, then SIGCONT: a hung machine), and a
//! restart with the store folder wiped (a replaced disk). Each wait is for an event the cluster
//! reports (a leader, a formed cluster), never a fixed sleep.
//!
//! A partition needs more than loopback: [`NatsCluster::start_partitionable`] gives each node a
//! host of its own ([`crate::netns`]), on the shipped ports, and [`NatsCluster::isolate`] cuts
//! one off from the two others while every client keeps its connection.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::netns::Hosts;
use crate::process::{Process, ProcessBuilder, free_port};

/// Nodes in the cluster, as in `nats/cluster/`.
pub const NODES: usize = 3;

/// How long a wait for the cluster (formed, a leader) may take before the test fails: a Raft
/// election takes seconds, a stream catching up after a restart a few more.
pub const CLUSTER_PATIENCE: Duration = Duration::from_secs(60);

fn binary() -> String {
    std::env::var("PARLEY_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".to_owned())
}

/// The configuration of node `index` (0-based) as shipped: `nats/cluster/node-<index+1>.conf`.
pub fn shipped_config(index: usize) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../nats/cluster")
        .join(format!("node-{}.conf", index + 1))
}

/// How the nodes keep JetStream writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// As `nats/cluster/` ships: `sync_interval: always`, each write on disk before its ack.
    Shipped,
    /// nats-server's default, an fsync every two minutes: the shipped files without their
    /// `sync_interval` line.
    Default,
}

/// `config` without its `sync_interval` line; panics when it has none (the shipped files do).
pub fn without_sync_interval(config: &str) -> String {
    let kept: Vec<&str> = config
        .lines()
        .filter(|line| !line.trim_start().starts_with("sync_interval"))
        .collect();
    assert!(
        kept.len() < config.lines().count(),
        "the cluster configuration has no `sync_interval` line to drop"
    );
    kept.join("\n") + "\n"
}

/// Where one node listens: an address (loopback, or its own host's) and three ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub host: Ipv4Addr,
    pub client: u16,
    pub cluster: u16,
    pub http: u16,
}

impl Ports {
    fn client_addr(self) -> SocketAddr {
        SocketAddr::from((self.host, self.client))
    }

    fn cluster_addr(self) -> SocketAddrV4 {
        SocketAddrV4::new(self.host, self.cluster)
    }

    fn http_addr(self) -> SocketAddr {
        SocketAddr::from((self.host, self.http))
    }
}

/// `shipped` (a node's configuration from `nats/cluster/`) with this node's `ports`, the routes
/// to `peers` (every node's cluster address, its own included, in node order: the shipped files
/// list all three too) and `store_dir`. Panics naming the line when one it must rewrite is absent.
pub fn derive_config(shipped: &str, ports: Ports, peers: &[SocketAddrV4], store_dir: &Path) -> String {
    let mut out = String::new();
    let mut seen = [false; 5];
    let mut in_cluster = false;
    let mut routes = 0;
    for line in shipped.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let key = trimmed.split(':').next().unwrap_or("").trim();
        let rewritten = if trimmed.starts_with('#') {
            None
        } else if trimmed.starts_with("cluster") && trimmed.ends_with('{') {
            in_cluster = true;
            None
        } else if key == "listen" && !in_cluster {
            seen[0] = true;
            Some(format!("listen: {}", ports.client_addr()))
        } else if key == "listen" && in_cluster {
            seen[1] = true;
            Some(format!("listen: {}", ports.cluster_addr()))
        } else if key == "http_port" {
            seen[2] = true;
            Some(format!("http: \"{}\"", ports.http_addr()))
        } else if key == "store_dir" {
            seen[3] = true;
            Some(format!("store_dir: {:?}", store_dir.display().to_string()))
        } else if let Some(rest) = trimmed.strip_prefix("nats-route://nats-") {
            // nats-route://nats-<n>:6222: node n's cluster address here.
            let n: usize = rest
                .split(':')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("a route the test cluster cannot map: {trimmed}"));
            let peer = peers
                .get(n.wrapping_sub(1))
                .unwrap_or_else(|| panic!("a route to a node the test cluster does not have: {trimmed}"));
            routes += 1;
            seen[4] = true;
            Some(format!("nats-route://{peer}"))
        } else {
            None
        };
        out.push_str(indent);
        out.push_str(rewritten.as_deref().unwrap_or(trimmed));
        out.push('\n');
    }
    let names = ["listen", "cluster.listen", "http_port", "store_dir", "routes"];
    for (name, seen) in names.iter().zip(seen) {
        assert!(
            seen,
            "the cluster configuration has no `{name}` line for the test cluster to rewrite"
        );
    }
    assert_eq!(routes, peers.len(), "the shipped routes list every node");
    out
}

#[derive(Debug)]
struct Node {
    name: String,
    ports: Ports,
    dir: PathBuf,
    process: Option<Process>,
    starts: usize,
    /// The network namespace it runs in, when it has a host of its own.
    namespace: Option<String>,
}

impl Node {
    fn config_path(&self) -> PathBuf {
        self.dir.join("nats.conf")
    }

    fn store_dir(&self) -> PathBuf {
        self.dir.join("jetstream")
    }

    fn spawn(&mut self) {
        if let Err(e) = self.try_spawn() {
            panic!("{} did not come up: {e}", self.name);
        }
    }

    /// Starts the node and waits until it listens for clients and routes (its log says so once
    /// both are bound; the monitoring port is bound before either).
    fn try_spawn(&mut self) -> std::io::Result<()> {
        self.starts += 1;
        // `ip netns exec` becomes the server (it execs), so the process id is the server's.
        let builder = match &self.namespace {
            None => ProcessBuilder::new(binary()),
            Some(namespace) => ProcessBuilder::new("ip")
                .arg("netns")
                .arg("exec")
                .arg(namespace)
                .arg(binary()),
        };
        let log = self.dir.join(format!("nats.{}.log", self.starts));
        let process = builder
            .name(self.name.clone())
            .arg("-c")
            .arg(self.config_path())
            .log_file(log.clone())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}; set PARLEY_TEST_NATS_SERVER"));
        let listening = || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Listening for route connections"));
        self.process
            .insert(process)
            .wait_until("to listen for clients and routes", Duration::from_secs(20), listening)
    }
}

/// Three nats-server processes forming one JetStream cluster; stopped and their folders removed
/// on drop (kept, and printed, when the test is failing).
#[derive(Debug)]
pub struct NatsCluster {
    dir: PathBuf,
    nodes: Vec<Node>,
    /// The nodes' hosts, when each has one ([`NatsCluster::start_partitionable`]); dropped
    /// after the nodes are stopped.
    hosts: Option<Hosts>,
}

impl NatsCluster {
    /// Starts the three nodes and waits until the cluster has formed: every node routed to the
    /// two others and a JetStream meta leader that every node agrees on.
    pub async fn start() -> NatsCluster {
        Self::start_with(Fsync::Shipped).await
    }

    /// [`NatsCluster::start`], with JetStream writes fsynced as the shipped files say, or on
    /// nats-server's default (every two minutes): the benchmark's second pass.
    pub async fn start_with(fsync: Fsync) -> NatsCluster {
        // A free port can be taken by another test's process before a node binds it: the node
        // then exits saying so, and the cluster starts again on other ports.
        let mut attempts = 0;
        loop {
            let ports: Vec<Ports> = (0..NODES)
                .map(|_| Ports {
                    host: Ipv4Addr::LOCALHOST,
                    client: free_port().expect("a free port"),
                    cluster: free_port().expect("a free port"),
                    http: free_port().expect("a free port"),
                })
                .collect();
            attempts += 1;
            match Self::start_on(ports, fsync, None).await {
                Ok(cluster) => return cluster,
                Err(e) if attempts < 3 && e.to_string().contains("address already in use") => {
                    eprintln!("a port was taken before a node bound it; starting the cluster again: {e}");
                }
                Err(e) => panic!("the cluster did not come up: {e}"),
            }
        }
    }

    /// [`NatsCluster::start`] with each node on a host of its own (a network namespace, on the
    /// shipped ports), so that [`NatsCluster::isolate`] can cut one off from the others. Panics
    /// saying why when this machine cannot make the hosts (it needs root and iproute2).
    pub async fn start_partitionable() -> NatsCluster {
        let hosts = Hosts::create(NODES)
            .unwrap_or_else(|e| panic!("a partitionable cluster needs network namespaces (root, iproute2): {e}"));
        let ports = (0..NODES)
            .map(|index| Ports {
                host: hosts.address(index),
                client: 4222,
                cluster: 6222,
                http: 8222,
            })
            .collect();
        Self::start_on(ports, Fsync::Shipped, Some(hosts))
            .await
            .unwrap_or_else(|e| panic!("the cluster did not come up: {e}"))
    }

    async fn start_on(ports: Vec<Ports>, fsync: Fsync, hosts: Option<Hosts>) -> std::io::Result<NatsCluster> {
        let dir = std::env::temp_dir().join(format!("parley-cluster-{}", uuid::Uuid::new_v4().simple()));
        let peers: Vec<SocketAddrV4> = ports.iter().map(|p| p.cluster_addr()).collect();
        let mut nodes = Vec::new();
        for (index, ports) in ports.into_iter().enumerate() {
            let node_dir = dir.join(format!("node-{}", index + 1));
            std::fs::create_dir_all(&node_dir).expect("node folder");
            let shipped = std::fs::read_to_string(shipped_config(index)).expect("nats/cluster node configuration");
            let mut config = derive_config(&shipped, ports, &peers, &node_dir.join("jetstream"));
            if fsync == Fsync::Default {
                config = without_sync_interval(&config);
            }
            std::fs::write(node_dir.join("nats.conf"), config).expect("write node configuration");
            let name = server_name(&shipped).unwrap_or_else(|| format!("nats-{}", index + 1));
            nodes.push(Node {
                name,
                ports,
                dir: node_dir,
                process: None,
                starts: 0,
                namespace: hosts.as_ref().map(|h| h.namespace(index)),
            });
        }
        // Dropped on an error: its processes stop (the error carries the failing log's tail).
        let mut cluster = NatsCluster { dir, nodes, hosts };
        for node in &mut cluster.nodes {
            node.try_spawn()
                .map_err(|e| std::io::Error::other(format!("{}: {e}", node.name)))?;
        }
        cluster.wait_formed().await;
        cluster.wait_placeable().await;
        Ok(cluster)
    }

    /// Waits until the cluster places a stream on all three nodes, by creating and deleting a
    /// probe: a meta group that is current can still call a peer offline for a moment ("no
    /// suitable peers for placement"), which processes retry through but a test of their start
    /// should not count against them.
    async fn wait_placeable(&self) {
        let js = async_nats::jetstream::new(self.client().await);
        let probe = async_nats::jetstream::stream::Config {
            name: "PARLEY_TEST_PLACEMENT_PROBE".into(),
            subjects: vec!["parley-test.placement-probe".into()],
            num_replicas: NODES,
            ..Default::default()
        };
        let deadline = tokio::time::Instant::now() + CLUSTER_PATIENCE;
        while js.create_stream(probe.clone()).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the cluster did not place a stream on {NODES} nodes within {CLUSTER_PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        js.delete_stream(&probe.name).await.expect("delete the placement probe");
    }

    /// `NATS_URL` for the services: the three client URLs, comma-separated.
    pub fn url(&self) -> String {
        (0..NODES).map(|i| self.node_url(i)).collect::<Vec<_>>().join(",")
    }

    /// The client URL of node `index`.
    pub fn node_url(&self, index: usize) -> String {
        format!("nats://{}", self.nodes[index].ports.client_addr())
    }

    /// The server name of node `index` (`nats-1`, … as in the shipped files).
    pub fn node_name(&self, index: usize) -> &str {
        &self.nodes[index].name
    }

    /// The node called `name`.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The derived configuration file of node `index`.
    pub fn config_path(&self, index: usize) -> PathBuf {
        self.nodes[index].config_path()
    }

    /// The process id of node `index`, while it runs.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.nodes[index].process.as_ref().and_then(Process::pid)
    }

    /// Whether node `index`'s process runs (a frozen one does).
    pub fn is_running(&mut self, index: usize) -> bool {
        self.nodes[index].process.as_mut().is_some_and(Process::is_running)
    }

    /// A client connected to the whole cluster (it moves to another node when its node goes).
    pub async fn client(&self) -> async_nats::Client {
        parley_nats::connect(&self.url(), "parley-test")
            .await
            .expect("connect to the cluster")
    }

    /// `/jsz` of node `index`'s monitoring endpoint, `None` when it does not answer.
    async fn jsz(&self, index: usize) -> Option<Value> {
        self.monitor(index, "/jsz").await
    }

    /// What each node holds itself, for reading a failure: per node, its view of the meta
    /// leader, and of every stream it keeps a replica of, when it was created, the sequences it
    /// has and the consumers it hosts (with the stream sequence each has delivered, and what it
    /// has pending).
    pub async fn local_views(&self) -> String {
        let mut out = String::new();
        for index in 0..NODES {
            let name = self.node_name(index);
            let Some(jsz) = self
                .monitor(index, "/jsz?accounts=true&streams=true&consumers=true")
                .await
            else {
                out.push_str(&format!("{name}: no answer\n"));
                continue;
            };
            out.push_str(&format!("{name}: meta leader {}\n", jsz["meta_cluster"]["leader"]));
            let streams = jsz["account_details"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|account| account["stream_detail"].as_array().into_iter().flatten());
            for stream in streams {
                out.push_str(&format!(
                    "  {} created {} leader {} seqs {}..{} messages {}\n",
                    stream["name"],
                    stream["created"],
                    stream["cluster"]["leader"],
                    stream["state"]["first_seq"],
                    stream["state"]["last_seq"],
                    stream["state"]["messages"]
                ));
                for consumer in stream["consumer_detail"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "    consumer {} leader {} delivered stream seq {} pending {} ack pending {} waiting {}\n",
                        consumer["name"],
                        consumer["cluster"]["leader"],
                        consumer["delivered"]["stream_seq"],
                        consumer["num_pending"],
                        consumer["num_ack_pending"],
                        consumer["num_waiting"]
                    ));
                }
            }
        }
        out
    }

    /// The names of node `index`'s clients, `None` when it does not answer.
    pub async fn client_names(&self, index: usize) -> Option<Vec<String>> {
        let connz = self.monitor(index, "/connz?limit=4096").await?;
        Some(
            connz["connections"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| c["name"].as_str().unwrap_or("(unnamed)").to_owned())
                .collect(),
        )
    }

    /// Who is connected where, for reading a fault's figures: per node, its clients' names.
    pub async fn connections(&self) -> String {
        let mut out = Vec::new();
        for index in 0..NODES {
            let names = self
                .client_names(index)
                .await
                .map_or_else(|| "(no answer)".to_owned(), |names| names.join(", "));
            out.push(format!("{}: {names}", self.node_name(index)));
        }
        out.join("; ")
    }

    /// A GET of node `index`'s monitoring endpoint at `path`, `None` when it does not answer.
    async fn monitor(&self, index: usize, path: &str) -> Option<Value> {
        let addr = self.nodes[index].ports.http_addr();
        let fetch = async {
            let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
            // HTTP/1.0: a large answer comes whole, not chunked.
            let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
            tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
                .await
                .ok()?;
            let mut raw = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut raw).await.ok()?;
            let raw = String::from_utf8_lossy(&raw).into_owned();
            let (_, body) = raw.split_once("\r\n\r\n")?;
            serde_json::from_str::<Value>(body).ok()
        };
        // A frozen node accepts the connection (the kernel does) but never answers.
        tokio::time::timeout(Duration::from_secs(2), fetch).await.ok().flatten()
    }

    /// The JetStream meta leader as node `index` sees it.
    async fn meta_leader_seen_by(&self, index: usize) -> Option<usize> {
        let jsz = self.jsz(index).await?;
        self.node_index(jsz["meta_cluster"]["leader"].as_str()?)
    }

    /// The JetStream meta leader, as the running nodes that answer agree on it.
    pub async fn meta_leader(&mut self) -> Option<usize> {
        let mut agreed = None;
        for index in 0..NODES {
            if !self.is_running(index) {
                continue;
            }
            let seen = self.meta_leader_seen_by(index).await?;
            if agreed.is_some_and(|a| a != seen) {
                return None;
            }
            agreed = Some(seen);
        }
        agreed
    }

    /// Waits until the running nodes agree on a meta leader other than `not`, and returns it.
    pub async fn wait_for_meta_leader(&mut self, not: Option<usize>) -> usize {
        let deadline = tokio::time::Instant::now() + CLUSTER_PATIENCE;
        loop {
            if let Some(leader) = self.meta_leader().await
                && Some(leader) != not
            {
                return leader;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no JetStream meta leader within {CLUSTER_PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the cluster has formed: every node reports a meta group of three with the
    /// same leader, and every node is routed to the two others.
    pub async fn wait_formed(&self) {
        let deadline = tokio::time::Instant::now() + CLUSTER_PATIENCE;
        loop {
            let mut leaders = Vec::new();
            for index in 0..NODES {
                let Some(jsz) = self.jsz(index).await else { break };
                let meta = &jsz["meta_cluster"];
                let size = meta["cluster_size"].as_u64().unwrap_or(0);
                let current = meta["replicas"]
                    .as_array()
                    .is_some_and(|r| r.len() == NODES - 1 && r.iter().all(|p| p["current"] == true));
                match meta["leader"].as_str() {
                    Some(leader) if size == NODES as u64 && (current || meta["leader"] != jsz["server_name"]) => {
                        leaders.push(leader.to_owned());
                    }
                    _ => break,
                }
            }
            if leaders.len() == NODES && leaders.iter().all(|l| *l == leaders[0]) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the cluster did not form within {CLUSTER_PATIENCE:?}; logs in {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The leader of `stream` as the cluster reports it (`$JS.API.STREAM.INFO`), `None` while it
    /// has none or does not answer.
    pub async fn stream_leader(&self, client: &async_nats::Client, stream: &str) -> Option<usize> {
        let request = client.request(format!("$JS.API.STREAM.INFO.{stream}"), "".into());
        let reply = tokio::time::timeout(Duration::from_secs(3), request).await.ok()?.ok()?;
        let info: Value = serde_json::from_slice(&reply.payload).ok()?;
        self.node_index(info["cluster"]["leader"].as_str()?)
    }

    /// Waits until `stream` has a leader other than `not`, and returns it.
    pub async fn wait_for_stream_leader(&self, client: &async_nats::Client, stream: &str, not: Option<usize>) -> usize {
        let deadline = tokio::time::Instant::now() + CLUSTER_PATIENCE;
        loop {
            if let Some(leader) = self.stream_leader(client, stream).await
                && Some(leader) != not
            {
                return leader;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{stream} had no leader within {CLUSTER_PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every replica of `stream` is current (caught up with its leader).
    pub async fn wait_for_stream_current(&self, client: &async_nats::Client, stream: &str) {
        let deadline = tokio::time::Instant::now() + CLUSTER_PATIENCE;
        loop {
            let request = client.request(format!("$JS.API.STREAM.INFO.{stream}"), "".into());
            if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(3), request).await
                && let Ok(info) = serde_json::from_slice::<Value>(&reply.payload)
                && info["cluster"]["leader"].is_string()
                && info["cluster"]["replicas"]
                    .as_array()
                    .is_some_and(|r| r.len() == NODES - 1 && r.iter().all(|p| p["current"] == true))
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{stream}'s replicas did not catch up within {CLUSTER_PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `kill -9` of node `index`; it stays down until [`NatsCluster::restart`].
    pub fn kill(&mut self, index: usize) {
        if let Some(mut process) = self.nodes[index].process.take() {
            process.kill();
        }
    }

    /// Starts node `index` again on its ports and its store folder (killing it first if it
    /// runs), and waits until it accepts clients.
    pub fn restart(&mut self, index: usize) {
        self.kill(index);
        self.nodes[index].spawn();
    }

    /// Stops node `index` as an operator's rolling restart does (SIGTERM, waiting for it to exit)
    /// and starts it again on its ports and its store folder.
    pub fn graceful_restart(&mut self, index: usize) {
        if let Some(mut process) = self.nodes[index].process.take() {
            process.stop();
        }
        self.nodes[index].spawn();
    }

    /// The names of every stream in the cluster (`$JS.API.STREAM.NAMES`), `None` while it does
    /// not answer.
    pub async fn stream_names(&self, client: &async_nats::Client) -> Option<Vec<String>> {
        let request = client.request("$JS.API.STREAM.NAMES", "{}".into());
        let reply = tokio::time::timeout(Duration::from_secs(3), request).await.ok()?.ok()?;
        let names: Value = serde_json::from_slice(&reply.payload).ok()?;
        names["streams"]
            .as_array()
            .map(|names| names.iter().filter_map(Value::as_str).map(str::to_owned).collect())
    }

    /// Waits until the cluster is whole again after a fault: formed, and every stream (buckets
    /// included) led, with each of its replicas current.
    pub async fn wait_healed(&self, client: &async_nats::Client) {
        self.wait_formed().await;
        let deadline = tokio::time::Instant::now() + CLUSTER_PATIENCE;
        let names = loop {
            if let Some(names) = self.stream_names(client).await {
                break names;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the cluster did not list its streams within {CLUSTER_PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        for name in names {
            self.wait_for_stream_current(client, &name).await;
        }
    }

    /// Kills node `index`, removes its JetStream store (a replaced disk) and starts it again.
    pub fn wipe_and_restart(&mut self, index: usize) {
        self.kill(index);
        let store = self.nodes[index].store_dir();
        match std::fs::remove_dir_all(&store) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot wipe {}: {e}", store.display()),
        }
        self.nodes[index].spawn();
    }

    /// Freezes node `index` for `duration` (SIGSTOP, then SIGCONT): a hung machine whose
    /// connections stay open. The freeze is the fault itself, hence the fixed duration.
    pub async fn freeze(&self, index: usize, duration: Duration) {
        let pid = self.nodes[index]
            .process
            .as_ref()
            .and_then(Process::pid)
            .expect("a running node to freeze");
        signal(pid, "STOP");
        tokio::time::sleep(duration).await;
        signal(pid, "CONT");
    }

    /// Cuts node `index` off from the two others, both ways, until [`NatsCluster::rejoin`]: a
    /// partition, with every client keeping its connection to the node it has. Needs a cluster
    /// from [`NatsCluster::start_partitionable`].
    pub fn isolate(&self, index: usize) {
        self.hosts()
            .isolate(index)
            .unwrap_or_else(|e| panic!("cannot isolate a node: {e}"));
    }

    /// Ends the partition [`NatsCluster::isolate`] began.
    pub fn rejoin(&self, index: usize) {
        self.hosts()
            .rejoin(index)
            .unwrap_or_else(|e| panic!("cannot join a node again: {e}"));
    }

    fn hosts(&self) -> &Hosts {
        self.hosts
            .as_ref()
            .expect("a partition needs NatsCluster::start_partitionable")
    }

    /// A client of node `index` alone: what that node's side of a partition sees.
    pub async fn node_client(&self, index: usize) -> async_nats::Client {
        parley_nats::connect(&self.node_url(index), "parley-test")
            .await
            .expect("connect to a node")
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args(["-s", name, &pid.to_string()])
        .stdin(Stdio::null())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -s {name} {pid} failed");
}

/// The `server_name` a shipped configuration gives its node.
fn server_name(config: &str) -> Option<String> {
    config.lines().find_map(|line| {
        let value = line.trim().strip_prefix("server_name:")?;
        Some(value.trim().trim_matches('"').to_owned())
    })
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(process) = node.process.as_ref().and_then(Process::pid) {
                // A frozen node would ignore SIGTERM until thawed.
                let _ = Command::new("kill")
                    .args(["-s", "CONT", &process.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
            drop(node.process.take());
        }
        if std::thread::panicking() {
            eprintln!("the cluster's logs are kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_shipped_node_configuration_is_derived_with_only_ports_routes_and_store_changed() {
        let ports = Ports {
            host: Ipv4Addr::LOCALHOST,
            client: 14222,
            cluster: 16222,
            http: 18222,
        };
        let peers = [16222, 16223, 16224].map(|port| SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
        for index in 0..NODES {
            let shipped = std::fs::read_to_string(shipped_config(index)).unwrap();
            let derived = derive_config(&shipped, ports, &peers, Path::new("/tmp/store"));
            assert!(derived.contains("listen: 127.0.0.1:14222"), "{derived}");
            assert!(derived.contains("listen: 127.0.0.1:16222"), "{derived}");
            assert!(derived.contains("http: \"127.0.0.1:18222\""), "{derived}");
            assert!(derived.contains("store_dir: \"/tmp/store\""), "{derived}");
            for peer in peers {
                assert!(derived.contains(&format!("nats-route://{peer}")), "{derived}");
            }
            assert!(derived.contains("sync_interval: always"), "{derived}");
            assert!(derived.contains("name: parley"), "{derived}");
            assert_eq!(server_name(&derived), Some(format!("nats-{}", index + 1)));
            // Everything else is the shipped text, line for line.
            let kept = |text: &str| -> Vec<String> {
                text.lines()
                    .map(str::trim)
                    .filter(|l| {
                        !(l.starts_with("listen")
                            || l.starts_with("http")
                            || l.starts_with("store_dir")
                            || l.starts_with("nats-route"))
                    })
                    .map(str::to_owned)
                    .collect()
            };
            assert_eq!(kept(&shipped), kept(&derived));
            let unsynced = without_sync_interval(&derived);
            assert!(!unsynced.contains("sync_interval"), "{unsynced}");
            assert_eq!(unsynced.lines().count(), derived.lines().count() - 1);
        }
    }
}
