//! `cargo xtask dev`: the whole stack on this machine with a demo conversation, until Ctrl-C.
//! Postgres (data kept in `.parley/dev/pg`) and nats-server (`.parley/dev/nats`), then the
//! persistence worker, the notification worker and the gateway (logs in `.parley/dev/logs/`), a
//! demo project published as the marketplace would, two tokens, copy-paste examples, and
//! `.parley/dev/env` for another shell. Ctrl-C stops the services, then NATS, then Postgres.
//!
//! It also builds `@parley/client` (clients/js, `npm ci` when its packages are missing) and starts
//! the web chat's server (clients/web/server.mjs: the page, plus a same-origin proxy to the
//! gateway, which has no CORS and serves no files), and prints one address that opens the chat
//! as Alice, the tokens in its fragment; the page links to Bob in another tab. A newcomer chats
//! with themselves within the first minute. Without Node or npm the stack still runs, without the
//! chat.
//!
//! Environment (all optional): `PARLEY_PG_PORT` (5432), `PARLEY_NATS_PORT` (4222),
//! `PARLEY_HTTP_PORT` (8080), `PARLEY_WEB_PORT` (8090, the chat) — a default that is taken becomes a free port, an explicit one must
//! be free; `PARLEY_JWT_SECRET` (default: a random one kept in `.parley/dev/jwt-secret`);
//! `PARLEY_TRANSCRIPT_KEY` (default: a random seed kept in `.parley/dev/transcript-key`);
//! `RUST_LOG` (info).

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::postgres::{Cluster, Postgres, stop_stale};
use crate::process::{
    Process, ProcessBuilder, free_port, http_status, pid_alive, pid_command_line, port_is_free, stop_pid, tail,
};
use crate::signals::Signals;
use crate::steps::{Outcome, run_foreground};
use crate::{Ctx, log, nats_server_bin, pg_bin_dir};

/// Fixed demo identities, so that a restart finds the same conversation.
const DEMO_PROJECT_ID: &str = "de300000-0000-4000-8000-000000000001";
const ALICE_ID: &str = "a11ce000-0000-4000-8000-000000000001";
const BOB_ID: &str = "b0b00000-0000-4000-8000-000000000002";
/// The persistence worker first: it applies the migrations.
const SERVICES: [&str; 3] = [
    "parley-persistence-worker",
    "parley-notification-worker",
    "parley-gateway",
];

/// What runs, stopped in order when dropped: services, NATS, Postgres.
struct Stack {
    services: Vec<Process>,
    nats: Option<Process>,
    postgres: Option<Postgres>,
    pidfiles: Vec<PathBuf>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !self.services.is_empty() {
            log("stopping services");
            // All at once, then each within its bound.
            for service in &mut self.services {
                service.terminate();
            }
            for mut service in self.services.drain(..) {
                service.stop();
            }
        }
        if let Some(mut nats) = self.nats.take() {
            log("stopping nats-server");
            nats.stop();
        }
        drop(self.postgres.take());
        for pidfile in &self.pidfiles {
            let _ = std::fs::remove_file(pidfile);
        }
    }
}

pub async fn run(ctx: &Ctx, signals: &Signals) -> anyhow::Result<u8> {
    let dev = ctx.parley_dir().join("dev");
    let logs = dev.join("logs");
    let run_dir = dev.join("run");
    std::fs::create_dir_all(&logs)?;
    std::fs::create_dir_all(&run_dir)?;
    let pg_bin = pg_bin_dir()?;
    let nats_bin = nats_server_bin()?;

    // Stop whatever an earlier run left behind (e.g. after kill -9) before choosing ports.
    for service in SERVICES {
        kill_pidfile(&run_dir.join(format!("{service}.pid")), service);
    }
    kill_pidfile(&run_dir.join("web.pid"), "server.mjs");
    kill_pidfile(&dev.join("nats/nats.pid"), "nats-server");
    stop_stale(&pg_bin, &dev.join("pg"))?;

    let mut stack = Stack {
        services: Vec::new(),
        nats: None,
        postgres: None,
        pidfiles: Vec::new(),
    };

    // Each port is chosen right before its server starts, so two never collide.
    let pg_port = choose_port("PARLEY_PG_PORT", 5432, "Postgres")?;
    let postgres = stack
        .postgres
        .insert(Postgres::start(&pg_bin, &dev.join("pg"), pg_port, Cluster::Keep)?);
    postgres.create_database("parley")?;
    let database_url = postgres.url("parley");

    let nats_port = choose_port("PARLEY_NATS_PORT", 4222, "NATS")?;
    let nats_dir = dev.join("nats");
    std::fs::create_dir_all(nats_dir.join("jetstream"))?;
    log(format!(
        "starting nats-server on 127.0.0.1:{nats_port} (store {}, log {})",
        nats_dir.join("jetstream").display(),
        nats_dir.join("nats.log").display()
    ));
    let nats = stack.nats.insert(
        ProcessBuilder::new(&nats_bin)
            .name("nats-server")
            .arg("-c")
            .arg(ctx.root.join("nats/nats-server.conf"))
            .args(["-a", "127.0.0.1", "-p", &nats_port.to_string(), "-sd"])
            .arg(nats_dir.join("jetstream"))
            .log_file(nats_dir.join("nats.log"))
            .own_process_group()
            .spawn()?,
    );
    write_pidfile(&mut stack.pidfiles, &nats_dir.join("nats.pid"), nats)?;
    let nats = stack.nats.as_mut().context("nats-server")?;
    nats.wait_for_port_async(nats_port, Duration::from_secs(30)).await?;
    let nats_url = format!("nats://127.0.0.1:{nats_port}");

    if let Some(port) = explicit_port("PARLEY_HTTP_PORT")? {
        // Fail before the build, not after.
        anyhow::ensure!(
            port_is_free(port),
            "PARLEY_HTTP_PORT={port}, but that port is already in use"
        );
    }

    let secret = jwt_secret(&dev)?;
    let transcript_key = transcript_key(&dev)?;

    eprintln!("\n========== cargo build --bins ==========");
    let mut build = ctx.cargo();
    build.args(["build", "--bins"]);
    match run_foreground(build, signals).await? {
        Outcome::Exited(status) if status.success() => {}
        Outcome::Exited(_) => bail!("cargo build --bins failed"),
        Outcome::Interrupted(code) => return Ok(code),
    }
    let bin_dir = ctx.target_dir.join("debug");
    for binary in SERVICES.iter().chain(&["parley"]) {
        anyhow::ensure!(
            bin_dir.join(binary).is_file(),
            "cargo build did not produce {}",
            bin_dir.join(binary).display()
        );
    }

    let http_port = choose_port("PARLEY_HTTP_PORT", 8080, "gateway")?;
    let listen = format!("127.0.0.1:{http_port}");
    let base_url = format!("http://{listen}");
    let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    for service in SERVICES {
        let log_file = logs.join(format!("{service}.log"));
        log(format!("starting {service} (log {})", log_file.display()));
        let process = ProcessBuilder::new(bin_dir.join(service))
            .env("NATS_URL", &nats_url)
            .env("DATABASE_URL", &database_url)
            .env("PARLEY_LISTEN", &listen)
            .env("PARLEY_JWT_SECRET", &secret)
            .env("PARLEY_TRANSCRIPT_KEY", &transcript_key)
            .env("RUST_LOG", &rust_log)
            .log_file(&log_file)
            .own_process_group()
            .spawn()?;
        write_pidfile(&mut stack.pidfiles, &run_dir.join(format!("{service}.pid")), &process)?;
        stack.services.push(process);
    }

    let gateway: SocketAddr = listen.parse()?;
    log(format!("waiting for {base_url}/readyz"));
    let mut ready = false;
    for _ in 0..240 {
        if !services_run(&mut stack.services) {
            bail!("a service stopped during start-up");
        }
        if http_status(gateway, "/readyz", None).await == Some(200) {
            ready = true;
            break;
        }
        if let Some(code) = pause(signals, Duration::from_millis(500)).await {
            return Ok(code);
        }
    }
    if !ready {
        bail!(
            "the gateway did not report ready within 2 minutes (see {})",
            logs.join("parley-gateway.log").display()
        );
    }

    // The demo project, published as the marketplace would; it prints the conversation id.
    let parley = bin_dir.join("parley");
    let out = capture(
        tokio::process::Command::new(&parley)
            .args(["project", "start", "--nats-url", &nats_url])
            .args(["--project-id", DEMO_PROJECT_ID, "--title", "Demo project"])
            .args(["--client-id", ALICE_ID, "--client-name", "Alice (client)"])
            .args(["--client-email", "alice@example.com"])
            .args(["--provider-id", BOB_ID, "--provider-name", "Bob (provider)"])
            .args(["--provider-email", "bob@example.com"]),
    )
    .await
    .context("parley project start")?;
    let Some(conv_id) = last_uuid(&out) else {
        bail!("parley project start printed no conversation id (got: {out})");
    };

    let alice_token = mint(&parley, &secret, ALICE_ID).await?;
    let bob_token = mint(&parley, &secret, BOB_ID).await?;

    // The persistence worker applies the event asynchronously: wait until Alice sees it.
    let conversation = format!("/v1/conversations/{conv_id}");
    let mut seen = false;
    for _ in 0..60 {
        if http_status(gateway, &conversation, Some(&alice_token)).await == Some(200) {
            seen = true;
            break;
        }
        if let Some(code) = pause(signals, Duration::from_millis(500)).await {
            return Ok(code);
        }
    }
    if !seen {
        log(format!(
            "WARNING: conversation {conv_id} is not visible yet (see {})",
            logs.join("parley-persistence-worker.log").display()
        ));
    }

    let chat_url = match start_chat(ctx, signals, &mut stack, &run_dir, &logs, &base_url).await {
        Ok(Chat::Started(url)) => Some(format!("{url}#token={alice_token}&peer={bob_token}")),
        Ok(Chat::Interrupted(code)) => return Ok(code),
        Err(error) => {
            log(format!(
                "WARNING: the web chat did not start ({error:#}); the stack runs without it"
            ));
            None
        }
    };

    let demo = Demo {
        chat_url,
        base_url,
        nats_url,
        database_url,
        conv_id,
        alice_token,
        bob_token,
    };
    write_private(&dev.join("env"), &demo.env_file())?;
    std::fs::write(dev.join("demo-client.mjs"), demo.client_script())?;
    print!("{}", demo.banner());
    std::io::stdout().flush()?;

    // In the foreground until Ctrl-C, or until a service dies.
    loop {
        if let Some(code) = pause(signals, Duration::from_secs(2)).await {
            println!();
            return Ok(code);
        }
        if !services_run(&mut stack.services) {
            bail!("a service stopped; shutting the stack down");
        }
    }
}

/// How starting the chat ended.
enum Chat {
    /// Its server listens at this address (`http://127.0.0.1:PORT/`).
    Started(String),
    Interrupted(u8),
}

/// Builds clients/js and starts clients/web/server.mjs in front of the gateway, as one of the
/// stack's services (stopped and watched with them).
async fn start_chat(
    ctx: &Ctx,
    signals: &Signals,
    stack: &mut Stack,
    run_dir: &Path,
    logs: &Path,
    base_url: &str,
) -> anyhow::Result<Chat> {
    let client = ctx.root.join("clients/js");
    let server = ctx.root.join("clients/web/server.mjs");
    anyhow::ensure!(server.is_file(), "{} is missing", server.display());
    for tool in ["node", "npm"] {
        let found = tokio::process::Command::new(tool)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await
            .is_ok_and(|status| status.success());
        anyhow::ensure!(found, "{tool} is not installed");
    }
    let npm = |args: &[&str]| {
        let mut command = tokio::process::Command::new("npm");
        command.args(args).current_dir(&client);
        command
    };
    let installed = ["socket.io-client", "typescript"]
        .iter()
        .all(|package| client.join("node_modules").join(package).join("package.json").is_file());
    let mut commands = Vec::new();
    if !installed {
        commands.push(("npm ci", npm(&["ci", "--no-audit", "--no-fund"])));
    }
    commands.push(("npm run build", npm(&["run", "--silent", "build"])));
    for (name, command) in commands {
        eprintln!("\n========== clients/js: {name} ==========");
        match run_foreground(command, signals).await? {
            Outcome::Exited(status) if status.success() => {}
            Outcome::Exited(_) => bail!("`{name}` in clients/js failed"),
            Outcome::Interrupted(code) => return Ok(Chat::Interrupted(code)),
        }
    }

    let port = choose_port("PARLEY_WEB_PORT", 8090, "web chat")?;
    let log_file = logs.join("web.log");
    log(format!(
        "starting the web chat on 127.0.0.1:{port} (log {})",
        log_file.display()
    ));
    let mut process = ProcessBuilder::new("node")
        .name("web chat")
        .arg(&server)
        .args([
            "--gateway",
            base_url,
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .log_file(&log_file)
        .own_process_group()
        .spawn()?;
    write_pidfile(&mut stack.pidfiles, &run_dir.join("web.pid"), &process)?;
    let ready = process.wait_for_port_async(port, Duration::from_secs(30)).await;
    stack.services.push(process);
    ready?;
    Ok(Chat::Started(format!("http://127.0.0.1:{port}/")))
}

/// What the examples are made of.
struct Demo {
    /// The chat as Alice (tokens in the fragment), when it started.
    chat_url: Option<String>,
    base_url: String,
    nats_url: String,
    database_url: String,
    conv_id: String,
    alice_token: String,
    bob_token: String,
}

impl Demo {
    /// `.parley/dev/env`, to `source` in another shell.
    fn env_file(&self) -> String {
        let Demo {
            chat_url,
            base_url,
            nats_url,
            database_url,
            conv_id,
            alice_token,
            bob_token,
        } = self;
        format!(
            "# Written by scripts/dev.sh — source it in another shell.\n\
             export PARLEY_URL='{base_url}'\n\
             export NATS_URL='{nats_url}'\n\
             export DATABASE_URL='{database_url}'\n\
             export CONV_ID='{conv_id}'\n\
             export ALICE_ID='{ALICE_ID}'\n\
             export BOB_ID='{BOB_ID}'\n\
             export ALICE_TOKEN='{alice_token}'\n\
             export BOB_TOKEN='{bob_token}'\n\
             export PARLEY_CHAT_URL='{}'\n",
            chat_url.as_deref().unwrap_or_default()
        )
    }

    /// The body of `demo-client.mjs` from its `import` on, which the banner shows too.
    fn client_code(&self) -> String {
        let Demo {
            base_url,
            conv_id,
            bob_token,
            ..
        } = self;
        format!(
            r#"import {{ io }} from "socket.io-client";

const socket = io("{base_url}", {{ auth: {{ token: "{bob_token}" }} }});
socket.on("connect_error", (err) => console.error("connect_error:", err.message));
socket.on("message:new", (m) => console.log("message:new", m.seq, m.senderId, m.body));
socket.on("conversation:typing", (t) => console.log("typing", t));
socket.on("connect", async () => {{
  const joined = await socket.emitWithAck("conversation:join", {{ conversationId: "{conv_id}" }});
  console.log("joined:", joined.ok, "replayed:", joined.replayed);
  const sent = await socket.emitWithAck("message:send", {{
    conversationId: "{conv_id}",
    body: "Hi Alice, Bob here (socket.io)",
  }});
  console.log("sent:", sent);
}});
"#
        )
    }

    fn client_script(&self) -> String {
        format!(
            "// Bob's live view of the demo conversation. Needs socket.io-client:\n\
             //   npm install socket.io-client   (in this folder, or run it from one that has it)\n{}",
            self.client_code()
        )
    }

    fn banner(&self) -> String {
        let Demo {
            chat_url,
            base_url,
            nats_url,
            database_url,
            conv_id,
            alice_token,
            bob_token,
        } = self;
        format!(
            r#"
==================== Parley is running ====================
Gateway      {base_url}   (logs: .parley/dev/logs/)
NATS         {nats_url}
Postgres     {database_url}

Conversation {conv_id}
Alice (client)   {ALICE_ID}
  token: {alice_token}
Bob (provider)   {BOB_ID}
  token: {bob_token}

All of the above as shell variables:  source .parley/dev/env

# Alice posts a message
curl -sS -X POST '{base_url}/v1/conversations/{conv_id}/messages' \
  -H 'Authorization: Bearer {alice_token}' \
  -H 'Content-Type: application/json' \
  -d '{{"body": "Hello Bob!", "clientMsgId": "demo-1"}}'

# Bob reads the history
curl -sS '{base_url}/v1/conversations/{conv_id}/messages?limit=50' \
  -H 'Authorization: Bearer {bob_token}'

# Bob's conversation list
curl -sS '{base_url}/v1/conversations' -H 'Authorization: Bearer {bob_token}'

# Socket.IO (Node), saved as .parley/dev/demo-client.mjs:
#   cd .parley/dev && npm install --no-save socket.io-client && node demo-client.mjs
{}
{}
Press Ctrl-C to stop everything.
"#,
            self.client_code(),
            match chat_url {
                Some(url) => format!(
                    "Chat         {url}\n             \
                     ^ open it in a browser: you are Alice; the page links to Bob in another tab\n"
                ),
                None => "Chat         not started (see the WARNING above)\n".to_owned(),
            }
        )
    }
}

/// Sleeps `duration`, or less when a signal comes: then the exit code it asks for.
async fn pause(signals: &Signals, duration: Duration) -> Option<u8> {
    tokio::select! {
        code = signals.wait() => Some(code),
        () = tokio::time::sleep(duration) => None,
    }
}

/// Whether every service still runs; for one that exited, says so with its log's tail.
fn services_run(services: &mut [Process]) -> bool {
    let mut all = true;
    for service in services {
        if !service.is_running() {
            all = false;
            let log_path = service.log_path().map(Path::to_owned).unwrap_or_default();
            log(format!(
                "{} exited; last lines of {}:",
                service.name(),
                log_path.display()
            ));
            eprintln!("{}", tail(&log_path, 30));
        }
    }
    all
}

/// `$VAR` as a port, if set.
fn explicit_port(var: &str) -> anyhow::Result<Option<u16>> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Ok(Some(
            value.parse().with_context(|| format!("{var}={value} is not a port"))?,
        )),
        _ => Ok(None),
    }
}

/// An explicit `$VAR` must be free; else `default` if free, else any free port.
fn choose_port(var: &str, default: u16, label: &str) -> anyhow::Result<u16> {
    if let Some(port) = explicit_port(var)? {
        anyhow::ensure!(port_is_free(port), "{var}={port}, but that port is already in use");
        return Ok(port);
    }
    if port_is_free(default) {
        return Ok(default);
    }
    let port = free_port()?;
    log(format!("{label}: port {default} is taken, using {port}"));
    Ok(port)
}

/// Stops a process an earlier run left behind (recorded in `file`, its command line mentioning
/// `word`), then removes `file`.
fn kill_pidfile(file: &Path, word: &str) {
    let Ok(text) = std::fs::read_to_string(file) else {
        return;
    };
    if let Ok(pid) = text.trim().parse::<u32>()
        && pid_alive(pid)
        && pid_command_line(pid).contains(word)
    {
        log(format!("stopping {word} (pid {pid}) left running by an earlier run"));
        stop_pid(pid, Duration::from_secs(10));
    }
    let _ = std::fs::remove_file(file);
}

fn write_pidfile(pidfiles: &mut Vec<PathBuf>, file: &Path, process: &Process) -> anyhow::Result<()> {
    let pid = process.pid().context("the process has no pid")?;
    std::fs::write(file, format!("{pid}\n")).with_context(|| format!("cannot write {}", file.display()))?;
    pidfiles.push(file.to_owned());
    Ok(())
}

/// Writes `path` readable by this user only.
fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(content.as_bytes())?;
    Ok(())
}

/// The JWT secret: from the environment, else a random one generated once in `jwt-secret`.
fn jwt_secret(dev: &Path) -> anyhow::Result<String> {
    if let Ok(secret) = std::env::var("PARLEY_JWT_SECRET")
        && !secret.is_empty()
    {
        return Ok(secret);
    }
    let file = dev.join("jwt-secret");
    if let Ok(secret) = std::fs::read_to_string(&file) {
        let secret = secret.trim_end_matches('\n').to_owned();
        if !secret.is_empty() {
            return Ok(secret);
        }
    }
    let mut random = [0u8; 48];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut random)?;
    let secret = base64url(&random);
    write_private(&file, &format!("{secret}\n"))?;
    log(format!("generated a dev JWT secret in {}", file.display()));
    Ok(secret)
}

/// The transcript signing seed (`PARLEY_TRANSCRIPT_KEY`): from the environment, else a random
/// one generated once in `transcript-key` (base64, standard and padded, of 32 bytes).
fn transcript_key(dev: &Path) -> anyhow::Result<String> {
    if let Ok(key) = std::env::var("PARLEY_TRANSCRIPT_KEY")
        && !key.is_empty()
    {
        return Ok(key);
    }
    let file = dev.join("transcript-key");
    if let Ok(key) = std::fs::read_to_string(&file) {
        let key = key.trim_end_matches('\n').to_owned();
        if !key.is_empty() {
            return Ok(key);
        }
    }
    let mut seed = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut seed)?;
    // Standard padded base64 is base64url with two letters swapped and `=` to a multiple of 4.
    let mut key: String = base64url(&seed)
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    while !key.len().is_multiple_of(4) {
        key.push('=');
    }
    write_private(&file, &format!("{key}\n"))?;
    log(format!("generated a dev transcript signing key in {}", file.display()));
    Ok(key)
}

/// Unpadded base64url, as Python's `secrets.token_urlsafe` prints it.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, byte)| n | u32::from(*byte) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize]));
        }
    }
    out
}

/// Runs `command` (stderr shown) and returns its stdout; fails when it fails.
async fn capture(command: &mut tokio::process::Command) -> anyhow::Result<String> {
    let out = command
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "failed ({})",
        crate::process::describe(out.status)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A development token for `user`, valid a day, from `parley token mint`.
async fn mint(parley: &Path, secret: &str, user: &str) -> anyhow::Result<String> {
    let out = capture(
        tokio::process::Command::new(parley)
            .args(["token", "mint"])
            .arg(format!("--secret={secret}"))
            .args(["--user-id", user, "--ttl-hours", "24"]),
    )
    .await
    .context("parley token mint")?;
    match out.lines().map(str::trim).rfind(|line| !line.is_empty()) {
        Some(token) => Ok(token.to_owned()),
        None => bail!("parley token mint printed no token"),
    }
}

/// The last UUID in `text` (any case), lower-cased.
fn last_uuid(text: &str) -> Option<String> {
    const GROUPS: [usize; 5] = [8, 4, 4, 4, 12];
    let bytes = text.as_bytes();
    let len = 36;
    (0..=bytes.len().saturating_sub(len)).rev().find_map(|start| {
        let candidate = bytes.get(start..start + len)?;
        let mut at = 0;
        for (i, group) in GROUPS.iter().enumerate() {
            if i > 0 {
                if candidate[at] != b'-' {
                    return None;
                }
                at += 1;
            }
            if !candidate[at..at + group].iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            at += group;
        }
        std::str::from_utf8(candidate).ok().map(str::to_ascii_lowercase)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_uuid_is_found() {
        let out = "started de300000-0000-4000-8000-000000000001\nconversation 0190ABCD-0000-7000-8000-00000000000f\n";
        assert_eq!(last_uuid(out).as_deref(), Some("0190abcd-0000-7000-8000-00000000000f"));
        assert_eq!(last_uuid("no id here"), None);
        assert_eq!(last_uuid("0190abcd-0000-7000-8000-00000000000"), None);
    }

    #[test]
    fn base64url_matches_python() {
        // base64.urlsafe_b64encode(b"\xfb\xff\xfe-x").rstrip(b"=") == b"-__-LXg"
        assert_eq!(base64url(b"\xfb\xff\xfe-x"), "-__-LXg");
        assert_eq!(base64url(&[0u8; 48]).len(), 64);
    }

    #[test]
    fn the_banner_ends_with_the_client_code_the_chat_and_the_hint() {
        let demo = Demo {
            chat_url: Some("http://127.0.0.1:8090/#token=ta&peer=tb".into()),
            base_url: "http://127.0.0.1:8080".into(),
            nats_url: "nats://127.0.0.1:4222".into(),
            database_url: "postgres://postgres@127.0.0.1:5432/parley".into(),
            conv_id: "c0".into(),
            alice_token: "ta".into(),
            bob_token: "tb".into(),
        };
        let banner = demo.banner();
        assert!(banner.contains("  token: ta\nBob (provider)   b0b00000-0000-4000-8000-000000000002\n  token: tb\n"));
        assert!(banner.ends_with(
            "  console.log(\"sent:\", sent);\n});\n\n\
             Chat         http://127.0.0.1:8090/#token=ta&peer=tb\n             \
             ^ open it in a browser: you are Alice; the page links to Bob in another tab\n\n\
             Press Ctrl-C to stop everything.\n"
        ));
        assert!(demo.client_script().starts_with("// Bob's live view"));
        assert!(demo.env_file().contains("export BOB_TOKEN='tb'\n"));
        assert!(
            demo.env_file()
                .contains("export PARLEY_CHAT_URL='http://127.0.0.1:8090/#token=ta&peer=tb'\n")
        );
    }
}
