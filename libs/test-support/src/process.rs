//! One child-process type for everything that starts a server and must not leave it behind: the
//! test helpers (nats-server, the services' binaries) and `cargo xtask` (the dev stack). A
//! [`Process`] sends its output to a log file, can wait until its TCP port or an HTTP endpoint
//! answers (failing early, with the log's tail, when the process exits first), and stops its
//! process when dropped: SIGTERM, a bounded wait, then SIGKILL.
//!
//! It only needs `std` and `tokio`, so `xtask` compiles this same file into itself (see
//! `xtask/src/main.rs`) without building the rest of this crate.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long [`Process::stop`] waits after SIGTERM before it kills, unless told otherwise.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the waits look again.
const POLL: Duration = Duration::from_millis(50);

/// What to start, and how: program, arguments, environment, log file. [`ProcessBuilder::spawn`]
/// starts it.
#[derive(Debug, Clone)]
pub struct ProcessBuilder {
    name: String,
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    env_clear: bool,
    current_dir: Option<PathBuf>,
    log: Option<PathBuf>,
    stop_timeout: Duration,
    own_process_group: bool,
}

impl ProcessBuilder {
    /// A builder for `program`, named after the program's file name in messages.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let program = program.as_ref().to_owned();
        let name = Path::new(&program)
            .file_name()
            .map_or_else(|| program.to_string_lossy(), OsStr::to_string_lossy)
            .into_owned();
        Self {
            name,
            program,
            args: Vec::new(),
            env: Vec::new(),
            env_clear: false,
            current_dir: None,
            log: None,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            own_process_group: false,
        }
    }

    /// The name messages use (default: the program's file name).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    #[must_use]
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|arg| arg.as_ref().to_owned()));
        self
    }

    /// Sets one environment variable; the rest is inherited unless [`ProcessBuilder::env_clear`].
    #[must_use]
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    #[must_use]
    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (key, value) in vars {
            self = self.env(key, value);
        }
        self
    }

    #[must_use]
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }

    /// Starts from an empty environment instead of this process's.
    #[must_use]
    pub fn env_clear(mut self) -> Self {
        self.env_clear = true;
        self
    }

    #[must_use]
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// Sends stdout and stderr to this file, created (or emptied) at each spawn. Without it the
    /// output is discarded.
    #[must_use]
    pub fn log_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = Some(path.into());
        self
    }

    /// How long [`Process::stop`] waits after SIGTERM before SIGKILL.
    #[must_use]
    pub fn stop_timeout(mut self, bound: Duration) -> Self {
        self.stop_timeout = bound;
        self
    }

    /// Runs the process in a process group of its own, so that a Ctrl-C at the terminal reaches
    /// only the parent, which then stops its children in the order it chooses.
    #[must_use]
    pub fn own_process_group(mut self) -> Self {
        self.own_process_group = true;
        self
    }

    /// Starts the process, stdin closed.
    pub fn spawn(&self) -> io::Result<Process> {
        let mut command = Command::new(&self.program);
        command.args(&self.args).stdin(Stdio::null());
        if self.env_clear {
            command.env_clear();
        }
        for (key, value) in &self.env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        if let Some(dir) = &self.current_dir {
            command.current_dir(dir);
        }
        match &self.log {
            Some(path) => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let file = File::create(path)
                    .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display())))?;
                command.stdout(file.try_clone()?).stderr(file);
            }
            None => {
                command.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        if self.own_process_group {
            command.process_group(0);
        }
        let child = command.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start {} ({}): {e}", self.name, self.program.to_string_lossy()),
            )
        })?;
        Ok(Process {
            name: self.name.clone(),
            log: self.log.clone(),
            stop_timeout: self.stop_timeout,
            child: Some(child),
            status: None,
        })
    }
}

/// A running child process, stopped when dropped (see [`Process::stop`]).
#[derive(Debug)]
pub struct Process {
    name: String,
    log: Option<PathBuf>,
    stop_timeout: Duration,
    child: Option<Child>,
    status: Option<ExitStatus>,
}

impl Process {
    /// Shorthand for [`ProcessBuilder::new`].
    pub fn builder(program: impl AsRef<OsStr>) -> ProcessBuilder {
        ProcessBuilder::new(program)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id, until the process has been stopped or seen to exit.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// The last `lines` lines of the log file ("(no log)" when there is none).
    pub fn log_tail(&self, lines: usize) -> String {
        self.log
            .as_deref()
            .map_or_else(|| "(no log)".to_owned(), |path| tail(path, lines))
    }

    /// The exit status once the process has exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let Some(child) = self.child.as_mut() else {
            return Ok(self.status);
        };
        if let Some(status) = child.try_wait()? {
            self.status = Some(status);
            self.child = None;
        }
        Ok(self.status)
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Sends SIGTERM without waiting (to stop several processes at once, then [`Process::stop`]
    /// each).
    pub fn terminate(&mut self) {
        if self.is_running()
            && let Some(pid) = self.pid()
        {
            let _ = send_signal(pid, Signal::Term);
        }
    }

    /// Waits at most `bound` for the process to exit on its own.
    pub fn wait_timeout(&mut self, bound: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the process: SIGTERM, up to the stop timeout (10 s by default) to exit, then SIGKILL.
    /// Returns its exit status (`None` if it could not be reaped). Calling it again is harmless.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if self.child.is_none() {
            return self.status;
        }
        self.terminate();
        match self.wait_timeout(self.stop_timeout) {
            Ok(Some(status)) => Some(status),
            _ => self.kill(),
        }
    }

    /// Kills the process (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            self.status = child.wait().ok();
        }
        self.status
    }

    /// Waits (blocking the thread) until 127.0.0.1:`port` accepts a connection.
    pub fn wait_for_port(&mut self, port: u16, timeout: Duration) -> io::Result<()> {
        let what = format!("to accept connections on port {port}");
        self.wait_until(&what, timeout, || tcp_accepts(port))
    }

    /// Polls `ready` (blocking the thread) until it is true; fails with the log's tail when the
    /// process exits first or `timeout` passes.
    pub fn wait_until(&mut self, what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running(what)?;
            if ready() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.not_ready(what, timeout));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Process::wait_for_port`] for async code.
    pub async fn wait_for_port_async(&mut self, port: u16, timeout: Duration) -> io::Result<()> {
        let what = format!("to accept connections on port {port}");
        self.wait_until_async(&what, timeout, || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await
    }

    /// Waits until `GET http://{addr}{path}` answers 200.
    pub async fn wait_for_http(&mut self, addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<()> {
        let what = format!("to answer 200 on http://{addr}{path}");
        self.wait_until_async(&what, timeout, || async move {
            http_status(addr, path, None).await == Some(200)
        })
        .await
    }

    /// [`Process::wait_until`] for async code.
    pub async fn wait_until_async<F, Fut>(&mut self, what: &str, timeout: Duration, mut ready: F) -> io::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running(what)?;
            if ready().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.not_ready(what, timeout));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// An error naming the process and showing its log's tail when it has exited.
    pub fn check_running(&mut self, what: &str) -> io::Result<()> {
        match self.try_wait()? {
            None => Ok(()),
            Some(status) => Err(io::Error::other(format!(
                "{} exited ({}) while waiting for it {what}; last lines of {}:\n{}",
                self.name,
                describe(status),
                self.log_name(),
                self.log_tail(30)
            ))),
        }
    }

    fn not_ready(&self, what: &str, timeout: Duration) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "{} did not get ready within {timeout:?} (waiting for it {what}); last lines of {}:\n{}",
                self.name,
                self.log_name(),
                self.log_tail(30)
            ),
        )
    }

    fn log_name(&self) -> String {
        self.log
            .as_deref()
            .map_or_else(|| "its log".to_owned(), |path| path.display().to_string())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// "exit 3" or "signal 9", like a shell says it.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// The signals this module sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Int,
    Term,
    Kill,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Int => "INT",
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
        }
    }
}

/// Sends `signal` to `pid` (the workspace forbids `unsafe`, so through the shell's `kill`
/// builtin, which every system has, rather than `libc::kill`).
pub fn send_signal(pid: u32, signal: Signal) -> io::Result<()> {
    let status = Command::new("sh")
        .args(["-c", "kill -s \"$0\" \"$1\" 2>/dev/null"])
        .arg(signal.name())
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("kill -s {} {pid} failed", signal.name())))
    }
}

/// Whether `pid` names a live process (not a zombie), by `/proc`.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold anything.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The command line of `pid`, arguments joined by spaces (empty when it is gone).
pub fn pid_command_line(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|arg| !arg.is_empty())
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Stops a process that is not our child (one an earlier run left behind): SIGTERM, up to
/// `bound` to go, then SIGKILL.
pub fn stop_pid(pid: u32, bound: Duration) {
    if !pid_alive(pid) {
        return;
    }
    let _ = send_signal(pid, Signal::Term);
    let deadline = Instant::now() + bound;
    while pid_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
    if pid_alive(pid) {
        let _ = send_signal(pid, Signal::Kill);
    }
}

/// A TCP port on 127.0.0.1 that is free right now.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether nothing listens on 127.0.0.1:`port` (binds like a server would, with SO_REUSEADDR,
/// which the standard library sets on Unix).
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Whether 127.0.0.1:`port` accepts a connection.
pub fn tcp_accepts(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(1)).is_ok()
}

/// The status of `GET http://{addr}{path}` (with `Authorization: Bearer` when given), `None`
/// when nothing answers within a few seconds.
pub async fn http_status(addr: SocketAddr, path: &str, bearer: Option<&str>) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(get_request(addr, path, bearer).as_bytes())
            .await
            .ok()?;
        let mut head = Vec::new();
        let mut buf = [0u8; 256];
        while !head.windows(2).any(|w| w == b"\r\n") {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        status_of(&head)
    };
    tokio::time::timeout(Duration::from_secs(3), exchange)
        .await
        .ok()
        .flatten()
}

/// [`http_status`] for code without a runtime.
pub fn http_status_blocking(addr: SocketAddr, path: &str, bearer: Option<&str>) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    stream.set_write_timeout(Some(Duration::from_secs(3))).ok()?;
    stream.write_all(get_request(addr, path, bearer).as_bytes()).ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    status_of(&head)
}

fn get_request(addr: SocketAddr, path: &str, bearer: Option<&str>) -> String {
    let auth = bearer.map_or_else(String::new, |token| format!("Authorization: Bearer {token}\r\n"));
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n")
}

/// The status code of an HTTP/1.x status line.
fn status_of(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|version| version.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

/// The last `lines` lines of the file at `path`.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(raw) => {
            let text = String::from_utf8_lossy(&raw);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_process_is_stopped_with_sigterm() {
        let dir = std::env::temp_dir().join(format!("parley-process-test-{}", std::process::id()));
        let log = dir.join("sleep.log");
        let mut process = ProcessBuilder::new("sh")
            .args(["-c", "echo started; exec sleep 30"])
            .log_file(&log)
            .spawn()
            .expect("spawn sh");
        let pid = process.pid().expect("a pid");
        assert!(pid_alive(pid));
        process
            .wait_until("to write its log", Duration::from_secs(5), || {
                tail(&log, 1).contains("started")
            })
            .expect("the log fills");
        drop(process);
        assert!(!pid_alive(pid), "the process is gone once dropped");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stop_reports_the_signal_and_a_second_stop_is_harmless() {
        let mut process = ProcessBuilder::new("sleep").arg("30").spawn().expect("spawn sleep");
        let status = process.stop().expect("reaped");
        assert_eq!(describe(status), "signal 15");
        assert_eq!(process.stop(), Some(status));
        assert_eq!(process.pid(), None);
    }

    #[test]
    fn a_stubborn_process_is_killed_after_the_bound() {
        let mut process = ProcessBuilder::new("sh")
            .args(["-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"])
            .stop_timeout(Duration::from_millis(300))
            .spawn()
            .expect("spawn sh");
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        let status = process.stop().expect("reaped");
        assert_eq!(describe(status), "signal 9");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn waiting_for_a_port_fails_early_with_the_log_when_the_process_exits() {
        let dir = std::env::temp_dir().join(format!("parley-process-exit-{}", std::process::id()));
        let port = free_port().expect("a port");
        let mut process = ProcessBuilder::new("sh")
            .args(["-c", "echo no such thing >&2; exit 3"])
            .name("failing")
            .log_file(dir.join("failing.log"))
            .spawn()
            .expect("spawn sh");
        let started = Instant::now();
        let error = process
            .wait_for_port(port, Duration::from_secs(30))
            .expect_err("it never listens");
        assert!(started.elapsed() < Duration::from_secs(10));
        let message = error.to_string();
        assert!(message.contains("failing exited (exit 3)"), "{message}");
        assert!(message.contains("no such thing"), "{message}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn http_readiness_reads_the_status_line() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            for status in ["503 Service Unavailable", "200 OK"] {
                let (mut stream, _) = listener.accept().await.expect("accept");
                let mut buf = [0u8; 512];
                let _ = stream.read(&mut buf).await;
                let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                stream.write_all(reply.as_bytes()).await.expect("write");
            }
        });
        assert_eq!(http_status(addr, "/readyz", None).await, Some(503));
        assert_eq!(http_status(addr, "/readyz", Some("t")).await, Some(200));
        server.await.expect("server");
        assert_eq!(http_status(addr, "/readyz", None).await, None);
    }

    #[test]
    fn ports_are_told_free_or_taken() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert!(!port_is_free(port));
        assert!(tcp_accepts(port));
        drop(listener);
        assert!(port_is_free(port));
    }
}
