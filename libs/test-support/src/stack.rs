//! One way for every test to start Parley: a private nats-server, a fresh database, and any of
//! the three services, each either in this process (its `Application` on port 0, stopped by a
//! cancellation token) or as its real binary (a [`Process`] on a port picked free, stopped on
//! drop). Tests about one service, tests about the whole stack and tests about the processes as
//! an operator runs them used to build this five times over; they now differ only in what they
//! ask the builder for.
//!
//! ```ignore
//! let stack = TestStack::builder().gateways(2).persistence(Run::InProcess).build().await;
//! let project = stack.project("Logo").await;
//! let socket = stack.socket(0, project.client()).await;
//! let mut worker = stack.start(Spec::persistence().binary()).await;
//! worker.kill().await;
//! ```
//!
//! Services the builder starts live in the stack ([`TestStack::gateway`] and friends); those a
//! test starts with [`TestStack::start`] are the test's to keep. Either kind is a [`Service`]:
//! its address, stop (graceful), kill (`kill -9` for a binary), restart on the same address,
//! and for a binary its JSON log.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use async_nats::jetstream;
use parley_gateway::LimitConfig;
use parley_service::config::CommonConfig;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::process::{self, Process, ProcessBuilder};
use crate::sio::Client;
use crate::{
    NatsServer, ProjectFixture, TEST_JWT_SECRET, TestDatabase, conversation_exists, token_for, workspace_binary,
};

/// How long a service may take to answer `/readyz` with 200.
/// The transcript signing seed every test gateway runs with (`PARLEY_TRANSCRIPT_KEY`): base64
/// of 32 bytes 0x01..=0x20, fixed so that a test can name the public key it expects.
pub const TEST_TRANSCRIPT_KEY: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";

pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long [`Service::stop`] waits for a graceful stop before it kills.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a binary gets to stop on SIGTERM when its [`Service`] is dropped.
const DROP_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings a developer's shell may hold that would change what a binary under test does; every
/// binary starts without them, and gets only what its [`Spec`] says.
const AMBIENT_SETTINGS: [&str; 14] = [
    "PARLEY_STREAM_REPLICAS",
    "PARLEY_DB_POOL_SIZE",
    "PARLEY_BATCH_SIZE",
    "PARLEY_SMTP_URL",
    "PARLEY_EMAIL_FROM",
    "PARLEY_EMAIL_DELAY_MS",
    "PARLEY_LISTEN",
    "PARLEY_ADMIN_LISTEN",
    "PARLEY_JWT_SECRET",
    "PARLEY_JWT_PUBLIC_KEYS",
    "PARLEY_JWKS_URL",
    "PARLEY_JWT_ISSUER",
    "PARLEY_JWT_AUDIENCE",
    "PARLEY_TRANSCRIPT_RETIRED_KEYS",
];

/// Which service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gateway,
    Persistence,
    Notification,
}

impl Kind {
    /// The service's binary.
    pub fn binary_name(self) -> &'static str {
        match self {
            Kind::Gateway => "parley-gateway",
            Kind::Persistence => "parley-persistence-worker",
            Kind::Notification => "parley-notification-worker",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Gateway => "gateway",
            Kind::Persistence => "persistence",
            Kind::Notification => "notification",
        }
    }
}

/// How a service runs: its `Application` on a task of this test, or its real binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Run {
    #[default]
    InProcess,
    Binary,
}

/// What to start: a service, how it runs, and the settings tests vary.
#[derive(Debug, Clone)]
pub struct Spec {
    kind: Kind,
    run: Run,
    name: Option<String>,
    limits: LimitConfig,
    batch_size: Option<usize>,
    email: Option<(String, Duration)>,
    auth: Option<parley_gateway::AuthConfig>,
    env: Vec<(String, String)>,
}

impl Spec {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            run: Run::InProcess,
            name: None,
            limits: LimitConfig::OFF,
            batch_size: None,
            email: None,
            auth: None,
            env: Vec::new(),
        }
    }

    /// A gateway, without limits unless [`Spec::limits`] says otherwise.
    pub fn gateway() -> Self {
        Self::new(Kind::Gateway)
    }

    /// A persistence worker, with the service's batch size unless [`Spec::batch_size`].
    pub fn persistence() -> Self {
        Self::new(Kind::Persistence)
    }

    /// A notification worker, without email unless [`Spec::email`].
    pub fn notification() -> Self {
        Self::new(Kind::Notification)
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    #[must_use]
    pub fn run(mut self, run: Run) -> Self {
        self.run = run;
        self
    }

    /// Runs the real binary (built beside the test executable: `cargo build --bins`).
    #[must_use]
    pub fn binary(self) -> Self {
        self.run(Run::Binary)
    }

    /// The name in messages and of a binary's log file (default: the kind and a number).
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// A gateway's limits (default [`LimitConfig::OFF`]).
    #[must_use]
    pub fn limits(mut self, limits: LimitConfig) -> Self {
        self.limits = limits;
        self
    }

    /// A persistence worker's `PARLEY_BATCH_SIZE`.
    #[must_use]
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = Some(batch_size);
        self
    }

    /// A notification worker emails through `smtp_url` once a recipient stayed away `delay`.
    #[must_use]
    pub fn email(mut self, smtp_url: impl Into<String>, delay: Duration) -> Self {
        self.email = Some((smtp_url.into(), delay));
        self
    }

    /// How an in-process gateway verifies tokens (default: HS256 with [`TEST_JWT_SECRET`]). A
    /// binary takes its `PARLEY_JWT_*` and `PARLEY_JWKS_URL` from [`Spec::env`] instead.
    #[must_use]
    pub fn auth(mut self, auth: parley_gateway::AuthConfig) -> Self {
        self.auth = Some(auth);
        self
    }

    /// One more environment variable for a binary, after the ones the stack sets (so it can
    /// replace them: `RUST_LOG`, `PARLEY_LOG_FORMAT`). In-process services ignore it.
    #[must_use]
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// Where services find NATS and Postgres, and where binaries write their logs.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub nats_url: String,
    pub database_url: Option<String>,
    pub log_dir: PathBuf,
}

impl Endpoints {
    /// `nats_url` and `database_url`, binaries' logs in a fresh temporary folder.
    pub fn new(nats_url: impl Into<String>, database_url: Option<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            database_url,
            log_dir: std::env::temp_dir().join(format!("parley-stack-{}", Uuid::new_v4().simple())),
        }
    }

    fn database_url(&self, kind: Kind) -> &str {
        self.database_url
            .as_deref()
            .unwrap_or_else(|| panic!("a {} needs a database: build the stack with one", kind.label()))
    }
}

/// How a service ended.
#[derive(Debug)]
pub enum Exit {
    /// A binary's exit status (after SIGKILL when it did not stop in time).
    Status(ExitStatus),
    /// What an in-process service's `run_until_stopped` returned.
    Returned(Result<(), String>),
    /// An in-process service that panicked or did not stop in time.
    Failed(String),
    /// It was not running.
    NotRunning,
}

impl Exit {
    /// A clean stop: exit 0, or `Ok(())`.
    pub fn success(&self) -> bool {
        match self {
            Exit::Status(status) => status.success(),
            Exit::Returned(result) => result.is_ok(),
            Exit::Failed(_) | Exit::NotRunning => false,
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Status(status) => f.write_str(&process::describe(*status)),
            Exit::Returned(Ok(())) => f.write_str("stopped"),
            Exit::Returned(Err(error)) => write!(f, "failed: {error}"),
            Exit::Failed(why) => f.write_str(why),
            Exit::NotRunning => f.write_str("not running"),
        }
    }
}

#[derive(Debug)]
enum Running {
    InProcess {
        shutdown: CancellationToken,
        task: JoinHandle<anyhow::Result<()>>,
    },
    Binary(Process),
    Stopped,
}

/// One running service. `addr` is where it serves: the gateway's HTTP and Socket.IO, a worker's
/// admin endpoint (`/healthz`, `/readyz`, `/metrics`). A restart keeps it.
#[derive(Debug)]
pub struct Service {
    pub addr: SocketAddr,
    spec: Spec,
    endpoints: Endpoints,
    name: String,
    starts: usize,
    log: Option<PathBuf>,
    running: Running,
}

impl Service {
    /// Starts `spec` against `endpoints` and waits until it answers `/readyz` with 200.
    pub async fn start(spec: Spec, endpoints: &Endpoints) -> Service {
        let mut service = Self::launch(spec, endpoints).await;
        service.wait_ready().await;
        service
    }

    /// Starts `spec` against `endpoints` without waiting for it to be ready (a service started
    /// while NATS is down, say).
    pub async fn launch(spec: Spec, endpoints: &Endpoints) -> Service {
        let name = spec
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-{}", spec.kind.label(), &Uuid::new_v4().simple().to_string()[..8]));
        let mut service = Service {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            spec,
            endpoints: endpoints.clone(),
            name,
            starts: 0,
            log: None,
            running: Running::Stopped,
        };
        service.spawn(None).await;
        service
    }

    pub fn kind(&self) -> Kind {
        self.spec.kind
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http://{addr}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A binary's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        match &self.running {
            Running::Binary(process) => process.pid(),
            _ => None,
        }
    }

    /// An in-process service's cancellation token (cancelling it stops the service).
    pub fn shutdown_token(&self) -> Option<CancellationToken> {
        match &self.running {
            Running::InProcess { shutdown, .. } => Some(shutdown.clone()),
            _ => None,
        }
    }

    /// An in-process service's token and task, for tests about how it stops; the service is
    /// then theirs to stop. `None` for a binary.
    pub fn into_in_process(mut self) -> Option<(CancellationToken, JoinHandle<anyhow::Result<()>>)> {
        match std::mem::replace(&mut self.running, Running::Stopped) {
            Running::InProcess { shutdown, task } => Some((shutdown, task)),
            other => {
                self.running = other;
                None
            }
        }
    }

    /// The log file of the binary's latest run.
    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// The latest run's log as text (empty for an in-process service).
    pub fn log_text(&self) -> String {
        self.log
            .as_deref()
            .and_then(|path| std::fs::read_to_string(path).ok())
            .unwrap_or_default()
    }

    /// The latest run's log lines that are JSON objects (binaries log JSON).
    pub fn log_lines(&self) -> Vec<Value> {
        self.log_text()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Whether the service still runs.
    pub fn is_running(&mut self) -> bool {
        match &mut self.running {
            Running::InProcess { task, .. } => !task.is_finished(),
            Running::Binary(process) => process.is_running(),
            Running::Stopped => false,
        }
    }

    /// Waits until `GET /readyz` answers 200; panics (with a binary's log tail) when the service
    /// stops first or [`READY_TIMEOUT`] passes.
    pub async fn wait_ready(&mut self) {
        let addr = self.addr;
        match &mut self.running {
            Running::Binary(process) => {
                if let Err(e) = process.wait_for_http(addr, "/readyz", READY_TIMEOUT).await {
                    panic!("{e}");
                }
            }
            Running::InProcess { task, .. } => {
                let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
                // The listener is bound, so a request waits in its backlog until the service
                // serves; it answers 503 until NATS (and Postgres) do.
                while process::http_status(addr, "/readyz", None).await != Some(200) {
                    assert!(!task.is_finished(), "{} stopped before it was ready", self.name);
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{} was not ready within {READY_TIMEOUT:?}",
                        self.name
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            Running::Stopped => panic!("{} is not running", self.name),
        }
    }

    /// Stops gracefully (the token, or SIGTERM) within [`STOP_TIMEOUT`].
    pub async fn stop(&mut self) -> Exit {
        self.stop_within(STOP_TIMEOUT).await
    }

    /// Stops gracefully: cancels an in-process service's token and awaits its task, or sends a
    /// binary SIGTERM and waits for it to exit. Past `bound` it kills, and says so in the
    /// [`Exit`] (a binary then reports signal 9).
    pub async fn stop_within(&mut self, bound: Duration) -> Exit {
        match std::mem::replace(&mut self.running, Running::Stopped) {
            Running::InProcess { shutdown, mut task } => {
                shutdown.cancel();
                match tokio::time::timeout(bound, &mut task).await {
                    Ok(Ok(result)) => Exit::Returned(result.map_err(|e| format!("{e:#}"))),
                    Ok(Err(join)) => Exit::Failed(format!("{} panicked: {join}", self.name)),
                    Err(_) => {
                        task.abort();
                        Exit::Failed(format!("{} did not stop within {bound:?}", self.name))
                    }
                }
            }
            Running::Binary(mut process) => {
                process.terminate();
                let deadline = tokio::time::Instant::now() + bound;
                loop {
                    match process.try_wait() {
                        Ok(Some(status)) => return Exit::Status(status),
                        Ok(None) if tokio::time::Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        _ => break,
                    }
                }
                match process.kill() {
                    Some(status) => Exit::Status(status),
                    None => Exit::Failed(format!("{} could not be reaped", self.name)),
                }
            }
            Running::Stopped => Exit::NotRunning,
        }
    }

    /// Kills without warning: SIGKILL for a binary (`kill -9`), an aborted task for an
    /// in-process service (the nearest a task comes to a crash: connections it handed to tasks
    /// of their own may outlive it).
    pub async fn kill(&mut self) {
        match std::mem::replace(&mut self.running, Running::Stopped) {
            Running::InProcess { task, .. } => {
                task.abort();
                let _ = task.await;
            }
            Running::Binary(mut process) => {
                process.kill();
            }
            Running::Stopped => {}
        }
    }

    /// Stops the service if it runs, starts it again on the same address and waits until it is
    /// ready. A binary's new run logs to a new file.
    pub async fn restart(&mut self) {
        if !matches!(self.running, Running::Stopped) {
            self.stop().await;
        }
        self.spawn(Some(self.addr)).await;
        self.wait_ready().await;
    }

    async fn spawn(&mut self, listen: Option<SocketAddr>) {
        self.starts += 1;
        match self.spec.run {
            Run::InProcess => self.spawn_in_process(listen).await,
            Run::Binary => self.spawn_binary(listen),
        }
    }

    async fn spawn_in_process(&mut self, listen: Option<SocketAddr>) {
        let listen = listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let endpoints = &self.endpoints;
        let shutdown = CancellationToken::new();
        let (addr, task) = match self.spec.kind {
            Kind::Gateway => {
                let config = parley_gateway::Config {
                    nats_url: endpoints.nats_url.clone(),
                    database_url: endpoints.database_url(Kind::Gateway).to_owned(),
                    auth: self
                        .spec
                        .auth
                        .clone()
                        .unwrap_or_else(|| parley_gateway::AuthConfig::secret(TEST_JWT_SECRET)),
                    listen,
                    stream_replicas: 1,
                    db_pool_size: 8,
                    limits: self.spec.limits,
                    transcript_keys: parley_transcript::keys::TranscriptKeys::parse(TEST_TRANSCRIPT_KEY, None)
                        .expect("the test transcript key parses"),
                };
                let app = parley_gateway::Application::build(config)
                    .await
                    .expect("the gateway builds");
                (app.local_addr(), tokio::spawn(app.run_until_stopped(shutdown.clone())))
            }
            Kind::Persistence => {
                let common = CommonConfig::local(endpoints.nats_url.clone());
                let mut config =
                    parley_persistence_worker::Config::new(common, endpoints.database_url(Kind::Persistence));
                config.admin_listen = listen;
                if let Some(size) = self.spec.batch_size {
                    config = config.with_batch_size(size);
                }
                let app = parley_persistence_worker::Application::build(config)
                    .await
                    .expect("the persistence worker builds");
                (app.admin_addr(), tokio::spawn(app.run_until_stopped(shutdown.clone())))
            }
            Kind::Notification => {
                let common = CommonConfig::local(endpoints.nats_url.clone());
                let mut config = parley_notification_worker::Config::new(common);
                config.admin_listen = listen;
                if let Some((url, delay)) = &self.spec.email {
                    config = config.with_email(url.clone(), *delay);
                }
                let app = parley_notification_worker::Application::build(config)
                    .await
                    .expect("the notification worker builds");
                (app.admin_addr(), tokio::spawn(app.run_until_stopped(shutdown.clone())))
            }
        };
        self.addr = addr;
        self.running = Running::InProcess { shutdown, task };
    }

    fn spawn_binary(&mut self, listen: Option<SocketAddr>) {
        // A binary cannot tell us the port it got for 0, so it gets one that is free now.
        let addr =
            listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], process::free_port().expect("a free port"))));
        let log = if self.starts == 1 {
            self.endpoints.log_dir.join(format!("{}.log", self.name))
        } else {
            self.endpoints
                .log_dir
                .join(format!("{}.{}.log", self.name, self.starts))
        };
        let kind = self.spec.kind;
        let mut builder = ProcessBuilder::new(workspace_binary(kind.binary_name()))
            .name(self.name.clone())
            .log_file(&log)
            .stop_timeout(DROP_STOP_TIMEOUT);
        for key in AMBIENT_SETTINGS {
            builder = builder.env_remove(key);
        }
        builder = builder
            .env("NATS_URL", &self.endpoints.nats_url)
            .env("PARLEY_LOG_FORMAT", "json")
            .env("RUST_LOG", "info");
        builder = match kind {
            Kind::Gateway => {
                let limits = self.spec.limits;
                builder
                    .env("DATABASE_URL", self.endpoints.database_url(kind))
                    .env("PARLEY_JWT_SECRET", TEST_JWT_SECRET)
                    .env("PARLEY_TRANSCRIPT_KEY", TEST_TRANSCRIPT_KEY)
                    .env("PARLEY_LISTEN", addr.to_string())
                    .env("PARLEY_SEND_RATE", limits.send_rate.to_string())
                    .env("PARLEY_SEND_BURST", limits.send_burst.to_string())
                    .env("PARLEY_EVENT_RATE", limits.event_rate.to_string())
                    .env("PARLEY_MAX_SOCKETS_PER_USER", limits.max_sockets_per_user.to_string())
            }
            Kind::Persistence => {
                let builder = builder
                    .env("DATABASE_URL", self.endpoints.database_url(kind))
                    .env("PARLEY_ADMIN_LISTEN", addr.to_string());
                match self.spec.batch_size {
                    Some(size) => builder.env("PARLEY_BATCH_SIZE", size.to_string()),
                    None => builder,
                }
            }
            Kind::Notification => {
                let builder = builder.env("PARLEY_ADMIN_LISTEN", addr.to_string());
                match &self.spec.email {
                    Some((url, delay)) => builder
                        .env("PARLEY_SMTP_URL", url)
                        .env("PARLEY_EMAIL_DELAY_MS", delay.as_millis().to_string()),
                    None => builder,
                }
            }
        };
        let process = builder
            .envs(self.spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        self.addr = addr;
        self.log = Some(log);
        self.running = Running::Binary(process);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // A binary's `Process` stops it as it goes; a task is told to stop.
        if let Running::InProcess { shutdown, .. } = &self.running {
            shutdown.cancel();
        }
    }
}

/// What to start. [`TestStack::builder`] makes one.
#[derive(Debug, Clone)]
pub struct TestStackBuilder {
    database: bool,
    streams: bool,
    gateways: usize,
    gateway_run: Run,
    gateway_limits: LimitConfig,
    services: Vec<Spec>,
}

impl TestStackBuilder {
    /// No Postgres: for tests of NATS alone (the CLI, the notification worker).
    #[must_use]
    pub fn without_database(mut self) -> Self {
        self.database = false;
        self
    }

    /// Creates Parley's streams before any service starts (as a service would).
    #[must_use]
    pub fn streams(mut self) -> Self {
        self.streams = true;
        self
    }

    /// `count` gateways, started first, in the order of their index.
    #[must_use]
    pub fn gateways(mut self, count: usize) -> Self {
        self.gateways = count;
        self
    }

    /// How the [`TestStackBuilder::gateways`] run (default in-process).
    #[must_use]
    pub fn gateway_run(mut self, run: Run) -> Self {
        self.gateway_run = run;
        self
    }

    /// The [`TestStackBuilder::gateways`]' limits (default [`LimitConfig::OFF`]).
    #[must_use]
    pub fn gateway_limits(mut self, limits: LimitConfig) -> Self {
        self.gateway_limits = limits;
        self
    }

    /// A persistence worker.
    #[must_use]
    pub fn persistence(self, run: Run) -> Self {
        self.service(Spec::persistence().run(run))
    }

    /// A notification worker, without email (for email, [`TestStackBuilder::service`] with
    /// [`Spec::email`]).
    #[must_use]
    pub fn notification(self, run: Run) -> Self {
        self.service(Spec::notification().run(run))
    }

    /// Any service, started after the gateways in the order given.
    #[must_use]
    pub fn service(mut self, spec: Spec) -> Self {
        self.services.push(spec);
        self
    }

    /// Starts NATS, creates the database, and starts every service, each ready before the next.
    pub async fn build(self) -> TestStack {
        parley_service::init_test_tracing();
        let nats = NatsServer::start();
        let db = if self.database {
            Some(TestDatabase::create().await)
        } else {
            None
        };
        let js = jetstream::new(async_nats::connect(nats.url()).await.expect("connect to NATS"));
        if self.streams {
            parley_nats::ensure_streams(&js, 1).await.expect("streams");
        }
        let endpoints = Endpoints::new(nats.url(), db.as_ref().map(|db| db.url.clone()));
        let mut stack = TestStack {
            services: Vec::new(),
            nats,
            js,
            db,
            endpoints,
        };
        let gateway = Spec::gateway().run(self.gateway_run).limits(self.gateway_limits);
        let specs = std::iter::repeat_n(gateway, self.gateways).chain(self.services);
        for spec in specs {
            let service = stack.start(spec).await;
            stack.services.push(service);
        }
        stack
    }
}

/// A private NATS (with a JetStream context on it), a fresh database unless built without one,
/// and the services the builder started. Dropping it stops the services, then NATS; binaries'
/// logs are deleted unless the test is failing (then their folder is printed).
#[derive(Debug)]
pub struct TestStack {
    services: Vec<Service>,
    pub nats: NatsServer,
    pub js: jetstream::Context,
    db: Option<TestDatabase>,
    endpoints: Endpoints,
}

impl TestStack {
    pub fn builder() -> TestStackBuilder {
        TestStackBuilder {
            database: true,
            streams: false,
            gateways: 0,
            gateway_run: Run::InProcess,
            gateway_limits: LimitConfig::OFF,
            services: Vec::new(),
        }
    }

    /// The database; panics for a stack built without one.
    pub fn db(&self) -> &TestDatabase {
        self.db.as_ref().expect("this stack was built without a database")
    }

    /// Where this stack's services find NATS and Postgres.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Where binaries write their logs.
    pub fn log_dir(&self) -> &Path {
        &self.endpoints.log_dir
    }

    /// Starts `spec` on this stack and waits until it is ready; the service is the caller's.
    pub async fn start(&self, spec: Spec) -> Service {
        Service::start(spec, &self.endpoints).await
    }

    /// Starts `spec` on this stack without waiting for it to be ready.
    pub async fn launch(&self, spec: Spec) -> Service {
        Service::launch(spec, &self.endpoints).await
    }

    /// Every service the builder started, in order.
    pub fn services(&mut self) -> &mut [Service] {
        &mut self.services
    }

    fn nth(&self, kind: Kind, index: usize) -> &Service {
        self.services
            .iter()
            .filter(|s| s.kind() == kind)
            .nth(index)
            .unwrap_or_else(|| panic!("no {} #{index} in this stack", kind.label()))
    }

    fn nth_mut(&mut self, kind: Kind, index: usize) -> &mut Service {
        self.services
            .iter_mut()
            .filter(|s| s.kind() == kind)
            .nth(index)
            .unwrap_or_else(|| panic!("no {} #{index} in this stack", kind.label()))
    }

    pub fn gateway(&self, index: usize) -> &Service {
        self.nth(Kind::Gateway, index)
    }

    pub fn gateway_mut(&mut self, index: usize) -> &mut Service {
        self.nth_mut(Kind::Gateway, index)
    }

    pub fn persistence(&self, index: usize) -> &Service {
        self.nth(Kind::Persistence, index)
    }

    pub fn persistence_mut(&mut self, index: usize) -> &mut Service {
        self.nth_mut(Kind::Persistence, index)
    }

    pub fn notification(&self, index: usize) -> &Service {
        self.nth(Kind::Notification, index)
    }

    pub fn notification_mut(&mut self, index: usize) -> &mut Service {
        self.nth_mut(Kind::Notification, index)
    }

    /// Starts a project and waits until its conversation exists (a persistence worker must run).
    pub async fn project(&self, title: &str) -> ProjectFixture {
        let project = ProjectFixture::new(title);
        project.publish_started(&self.js).await;
        conversation_exists(self.db(), &project).await;
        project
    }

    /// A connected socket for `user` on gateway `index`.
    pub async fn socket(&self, index: usize, user: Uuid) -> Client {
        connect(self.gateway(index), user).await
    }

    /// Waits until the message `id` is in Postgres.
    pub async fn persisted(&self, conversation: Uuid, id: Uuid) {
        let store = self.db().store();
        crate::eventually("the message to be persisted", Duration::from_secs(30), || async {
            store.message(conversation, id).await.ok().flatten().map(|_| ())
        })
        .await;
    }
}

impl Drop for TestStack {
    fn drop(&mut self) {
        // The services go first, while NATS is still there for them to stop cleanly.
        self.services.clear();
        if std::thread::panicking() {
            if self.endpoints.log_dir.exists() {
                eprintln!("binaries' logs kept in {}", self.endpoints.log_dir.display());
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.endpoints.log_dir);
        }
    }
}

/// A connected socket for `user` on `gateway`.
pub async fn connect(gateway: &Service, user: Uuid) -> Client {
    Client::connect(&gateway.url(), json!({ "token": token_for(user, TEST_JWT_SECRET) }))
        .await
        .expect("socket connects")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn services_stop_with_their_exit_and_come_back_on_their_address_after_a_stop_or_a_kill() {
        let mut stack = TestStack::builder()
            .gateways(1)
            .persistence(Run::InProcess)
            .build()
            .await;
        let worker = stack.persistence(0).addr;
        assert_ne!(worker.port(), 0, "bound on a port the system picked");
        let exit = stack.persistence_mut(0).stop().await;
        assert!(exit.success(), "{exit}");
        assert!(!stack.persistence_mut(0).is_running());
        assert!(matches!(stack.persistence_mut(0).stop().await, Exit::NotRunning));
        stack.persistence_mut(0).restart().await;
        assert_eq!(stack.persistence(0).addr, worker);

        let gateway = stack.gateway(0).addr;
        stack.gateway_mut(0).kill().await;
        assert!(!stack.gateway_mut(0).is_running());
        stack.gateway_mut(0).restart().await;
        assert_eq!(stack.gateway(0).addr, gateway);
        // The restarted pair works end to end.
        let project = stack.project("Restarted").await;
        let socket = stack.socket(0, project.client()).await;
        let ack = socket
            .emit_with_ack(
                "conversation:history",
                json!({ "conversationId": project.conversation_id() }),
                Duration::from_secs(15),
            )
            .await
            .expect("an ack");
        assert_eq!(ack["messages"], json!([]), "{ack}");
    }
}
