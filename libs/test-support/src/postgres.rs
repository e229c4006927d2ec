//! A private Postgres cluster in a folder of its own, on a port of its own: `cargo xtask test`
//! and `bench` start a fresh one for the tests' databases, `cargo xtask dev` keeps one in
//! `.parley/dev/pg`. It is Debian's Postgres (`/usr/lib/postgresql/<major>/bin`, installed by
//! `scripts/lib.sh`), initialised with trust authentication for `postgres` on loopback only,
//! and stopped when the [`Postgres`] is dropped.
//!
//! Debian's `initdb` and `postgres` refuse to run as root: as root, every server program runs as
//! the `postgres` system user through `runuser`, in folders that user owns; when that user
//! cannot reach the folder asked for (a parent it may not traverse), the cluster lives in a
//! stable folder under the temporary directory instead, named after the folder asked for.
//!
//! Like [`crate::process`], it only needs `std`, so `xtask` compiles this file into itself.

use std::ffi::OsStr;
use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where `scripts/lib.sh` says the server binaries are.
pub const BIN_DIR_ENV: &str = "PARLEY_PG_BIN_DIR";

/// The binaries a cluster needs in its bin folder.
const SERVER_PROGRAMS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

fn log(line: &str) {
    eprintln!("[parley] {line}");
}

/// The folder of the server binaries: `$PARLEY_PG_BIN_DIR` when it holds them, else the newest
/// `/usr/lib/postgresql/<major>/bin` that does.
pub fn find_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV).map(PathBuf::from)
        && is_bin_dir(&dir)
    {
        return Some(dir);
    }
    let mut candidates: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| {
            (
                version_key(&entry.file_name().to_string_lossy()),
                entry.path().join("bin"),
            )
        })
        .filter(|(_, bin)| is_bin_dir(bin))
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, bin)| bin)
}

fn is_bin_dir(dir: &Path) -> bool {
    SERVER_PROGRAMS.iter().all(|program| is_executable(&dir.join(program)))
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.mode() & 0o111 != 0)
}

/// "15" → [15], "9.6" → [9, 6]: how `sort -V` orders the majors.
fn version_key(name: &str) -> Vec<u64> {
    name.split('.').map(|part| part.parse().unwrap_or(0)).collect()
}

/// Whether this process runs as root (`/proc/self` belongs to the effective user).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

fn current_uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(u32::MAX, |meta| meta.uid())
}

/// The uid of the `postgres` system user, which runs the server when we are root.
fn postgres_uid() -> io::Result<u32> {
    let out = Command::new("id")
        .args(["-u", "postgres"])
        .stderr(Stdio::null())
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .ok()
        .filter(|_| out.status.success())
        .ok_or_else(|| {
            io::Error::other(
                "running as root, but there is no 'postgres' system user to run Postgres as \
                 (it comes with Debian's postgresql package)",
            )
        })
}

/// A command running `program` as the user allowed to run Postgres' server programs: this one,
/// or `postgres` (from `/`) when we are root.
fn as_pg(program: impl AsRef<OsStr>) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program).current_dir("/");
        command
    } else {
        Command::new(program)
    }
}

fn run_quietly(mut command: Command) -> io::Result<bool> {
    Ok(command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success())
}

fn chown_to_postgres(path: &Path, recursive: bool) -> io::Result<()> {
    let mut command = Command::new("chown");
    if recursive {
        command.arg("-R");
    }
    if run_quietly({
        command.arg("postgres:").arg(path);
        command
    })? {
        Ok(())
    } else {
        Err(io::Error::other(format!("chown postgres: {} failed", path.display())))
    }
}

/// Whether anything under `dir` belongs to another user than `uid`.
fn owned_by_other(dir: &Path, uid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.filter_map(Result::ok).any(|entry| {
        let path = entry.path();
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.uid() != uid => true,
            Ok(meta) if meta.is_dir() => owned_by_other(&path, uid),
            _ => false,
        }
    })
}

/// Creates `dir` (mode 755 parents) owned by whoever runs Postgres; succeeds when that user can
/// enter and write it.
fn make_usable(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
    if is_root() {
        chown_to_postgres(dir, false)?;
        // Files left by a run under another user would stop Postgres: re-own them.
        if owned_by_other(dir, postgres_uid()?) {
            chown_to_postgres(dir, true)?;
        }
        let mut check = as_pg("test");
        check.arg("-x").arg(dir).args(["-a", "-w"]).arg(dir);
        if !run_quietly(check)? {
            return Err(io::Error::other(format!(
                "the postgres user cannot write {}",
                dir.display()
            )));
        }
        Ok(())
    } else {
        let mut check = Command::new("test");
        check.arg("-x").arg(dir).args(["-a", "-w"]).arg(dir);
        if run_quietly(check)? {
            Ok(())
        } else {
            Err(io::Error::other(format!("cannot write {}", dir.display())))
        }
    }
}

/// The POSIX `cksum` of `bytes` (what `printf '%s' PATH | cksum` prints first), which names the
/// fallback folder.
fn cksum(bytes: &[u8]) -> u32 {
    fn feed(mut crc: u32, byte: u8) -> u32 {
        crc ^= u32::from(byte) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
        }
        crc
    }
    let mut crc = bytes.iter().fold(0, |crc, byte| feed(crc, *byte));
    let mut len = bytes.len();
    while len > 0 {
        // The length's bytes, least significant first, as many as it needs.
        crc = feed(crc, (len & 0xff) as u8);
        len >>= 8;
    }
    !crc
}

/// The folder a cluster asked for in `want` really lives in: `want` itself, or — when the
/// postgres user cannot reach it — `$TMPDIR/parley-pg-<uid>-<cksum of want>`.
pub fn cluster_folder(want: &Path) -> PathBuf {
    if make_usable(want).is_ok() {
        return want.to_owned();
    }
    let sum = cksum(want.as_os_str().as_encoded_bytes());
    std::env::temp_dir().join(format!("parley-pg-{}-{sum}", current_uid()))
}

/// Stops a Postgres an earlier run left running in the cluster asked for in `want` (one killed
/// with SIGKILL, say).
pub fn stop_stale(bin_dir: &Path, want: &Path) -> io::Result<()> {
    let data = cluster_folder(want).join("data");
    if data.join("postmaster.pid").is_file() {
        let mut status = as_pg(bin_dir.join("pg_ctl"));
        status.arg("status").arg("-D").arg(&data);
        if run_quietly(status)? {
            log(&format!("stopping a Postgres left running in {}", data.display()));
            let mut stop = as_pg(bin_dir.join("pg_ctl"));
            stop.arg("stop").arg("-D").arg(&data).args(["-m", "fast", "-w"]);
            run_quietly(stop)?;
        }
    }
    Ok(())
}

/// What [`Postgres::start`] does with an existing cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cluster {
    /// Keep its data (initialise it the first time).
    Keep,
    /// Wipe it and initialise a new one.
    Fresh,
}

/// A running cluster, stopped (`pg_ctl stop -m fast`) when dropped.
#[derive(Debug)]
pub struct Postgres {
    bin_dir: PathBuf,
    folder: PathBuf,
    port: u16,
    temp_socket_dir: Option<PathBuf>,
    running: bool,
}

impl Postgres {
    /// Initialises (once, or afresh) and starts a cluster in `<folder>/data` listening on
    /// 127.0.0.1:`port`, logging to `<folder>/postgres.log`, and waits until it answers. Trust
    /// authentication for user `postgres` on loopback only; fsync and synchronous_commit on.
    pub fn start(bin_dir: &Path, want: &Path, port: u16, cluster: Cluster) -> io::Result<Postgres> {
        if !is_bin_dir(bin_dir) {
            return Err(io::Error::other(format!(
                "{} lacks initdb, pg_ctl or postgres",
                bin_dir.display()
            )));
        }
        let base = cluster_folder(want);
        if base != want {
            log(&format!(
                "NOTE: the postgres user cannot reach {} (a parent folder is not traversable);",
                want.display()
            ));
            log(&format!(
                "      keeping this Postgres cluster in {} instead",
                base.display()
            ));
            // A predictable name in a shared folder: refuse one somebody else made.
            let owner = if is_root() { postgres_uid()? } else { current_uid() };
            if let Ok(meta) = std::fs::symlink_metadata(&base)
                && (meta.file_type().is_symlink() || meta.uid() != owner)
            {
                return Err(io::Error::other(format!(
                    "{} exists but is not a folder owned by {}; remove it",
                    base.display(),
                    if is_root() { "postgres" } else { "this user" }
                )));
            }
        }
        if cluster == Cluster::Fresh {
            stop_stale(bin_dir, want)?;
            remove_dir_if_present(&base)?;
        }
        make_usable(&base).map_err(|e| {
            io::Error::other(format!(
                "cannot create a folder for Postgres at {}: {e}",
                base.display()
            ))
        })?;
        let data = base.join("data");
        let log_file = base.join("postgres.log");

        if !data.join("PG_VERSION").is_file() {
            remove_dir_if_present(&data)?;
            log(&format!("initdb {}", data.display()));
            let init_log = base.join("initdb.log");
            let out = std::fs::File::create(&init_log)?;
            let mut initdb = as_pg(bin_dir.join("initdb"));
            initdb
                .arg("-D")
                .arg(&data)
                .args(["-A", "trust", "-U", "postgres", "--encoding", "UTF8", "--no-locale"])
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out);
            if !initdb.status()?.success() {
                eprintln!("{}", crate::process::tail(&init_log, 200));
                return Err(io::Error::other("initdb failed (log above)"));
            }
            // Settings that change per start (port, socket folder) go in parley.conf.
            OpenOptions::new()
                .append(true)
                .open(data.join("postgresql.conf"))?
                .write_all(b"\ninclude_if_exists = 'parley.conf'\n")?;
        }
        stop_stale(bin_dir, want)?;

        // The Unix socket inside the cluster's folder, unless the path is too long for a socket
        // (108 bytes on Linux): then in a short temporary folder.
        let mut socket_dir = base.join("run");
        let mut temp_socket_dir = None;
        if socket_dir.as_os_str().len() + 20 > 100 {
            socket_dir = temp_dir("parley-pgsock")?;
            temp_socket_dir = Some(socket_dir.clone());
        }
        DirBuilder::new().recursive(true).create(&socket_dir)?;
        if is_root() {
            chown_to_postgres(&socket_dir, false)?;
        }
        let quoted_socket_dir = socket_dir.display().to_string().replace('\'', "''");
        let conf = data.join("parley.conf");
        std::fs::write(
            &conf,
            format!(
                "# Written by parley-test-support (postgres.rs) at each start.\n\
                 listen_addresses = '127.0.0.1'\n\
                 port = {port}\n\
                 unix_socket_directories = '{quoted_socket_dir}'\n\
                 max_connections = 400\n\
                 fsync = on\n\
                 synchronous_commit = on\n"
            ),
        )?;
        if is_root() {
            chown_to_postgres(&conf, false)?;
        }

        log(&format!(
            "starting Postgres on 127.0.0.1:{port} (data {}, log {})",
            data.display(),
            log_file.display()
        ));
        // Counted as running from here: an interrupted `pg_ctl start` may still have started it.
        let server = Postgres {
            bin_dir: bin_dir.to_owned(),
            folder: base,
            port,
            temp_socket_dir,
            running: true,
        };
        let mut start = as_pg(bin_dir.join("pg_ctl"));
        start
            .arg("start")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log_file)
            .args(["-w", "-t", "60"]);
        // pg_ctl puts the server in a session of its own: a Ctrl-C at the terminal does not
        // reach it, and it is stopped by `stop` (or drop) in order, after what uses it.
        if !run_quietly(start)? {
            eprintln!("{}", crate::process::tail(&log_file, 30));
            return Err(io::Error::other("Postgres did not start (log above)"));
        }
        server.wait_ready(Duration::from_secs(60)).inspect_err(|_| {
            eprintln!("{}", crate::process::tail(&log_file, 30));
        })?;
        Ok(server)
    }

    fn wait_ready(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut isready = Command::new(self.bin_dir.join("pg_isready"));
            isready.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-q"]);
            if run_quietly(isready).unwrap_or(false) || self.psql_select_1() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "Postgres on port {} did not answer within {timeout:?}",
                    self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn psql_select_1(&self) -> bool {
        let mut psql = self.psql();
        psql.args(["-d", "postgres", "-tAc", "select 1"]);
        run_quietly(psql).unwrap_or(false)
    }

    /// `psql` connected as `postgres` over TCP (the bin folder's, else the one on `PATH`).
    pub fn psql(&self) -> Command {
        let own = self.bin_dir.join("psql");
        let mut command = Command::new(if is_executable(&own) {
            own
        } else {
            PathBuf::from("psql")
        });
        command.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres"]);
        command
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The folder the cluster really lives in (see [`cluster_folder`]).
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.folder.join("postgres.log")
    }

    /// The superuser's URL of database `database`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates database `name` unless it exists.
    pub fn create_database(&self, name: &str) -> io::Result<()> {
        let mut psql = self.psql();
        psql.args(["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q"])
            .arg("-v")
            .arg(format!("name={name}"))
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        let mut child = psql.spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(
                b"SELECT format('CREATE DATABASE %I', :'name')\n\
                  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'name') \\gexec\n",
            )?;
        }
        if child.wait()?.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("psql could not create database {name}")))
        }
    }

    /// Stops the server (`pg_ctl stop -m fast`, waiting). Calling it again is harmless.
    pub fn stop(&mut self) {
        if self.running {
            self.running = false;
            let data = self.folder.join("data");
            log(&format!("stopping Postgres ({})", data.display()));
            let mut stop = as_pg(self.bin_dir.join("pg_ctl"));
            stop.arg("stop").arg("-D").arg(&data).args(["-m", "fast", "-w"]);
            let _ = run_quietly(stop);
        }
        if let Some(dir) = self.temp_socket_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn remove_dir_if_present(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A new folder under the temporary directory (like `mktemp -d`).
fn temp_dir(prefix: &str) -> io::Result<PathBuf> {
    let base = std::env::temp_dir();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for attempt in 0..100u32 {
        let dir = base.join(format!("{prefix}.{}-{seed:x}-{attempt}", std::process::id()));
        match DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("cannot create a temporary folder"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cksum_is_the_posix_one() {
        // `printf '%s' 123456789 | cksum` prints 930766865; an empty input 4294967295.
        assert_eq!(cksum(b"123456789"), 930_766_865);
        assert_eq!(cksum(b""), 4_294_967_295);
    }

    #[test]
    fn majors_sort_like_sort_v() {
        let mut names = vec!["9.6", "15", "13", "16"];
        names.sort_by_key(|name| version_key(name));
        assert_eq!(names, ["9.6", "13", "15", "16"]);
    }

    /// Starts, answers, creates a database, stops: needs Debian's postgresql (as `scripts/test.sh`
    /// installs it); skipped without it.
    #[test]
    fn a_cluster_starts_answers_and_stops() {
        let Some(bin_dir) = find_bin_dir() else {
            eprintln!("no Postgres server binaries: skipped");
            return;
        };
        let want = std::env::temp_dir().join(format!("parley-pg-test-{}", std::process::id()));
        let port = crate::process::free_port().expect("a port");
        let mut server = Postgres::start(&bin_dir, &want, port, Cluster::Fresh).expect("postgres starts");
        assert!(crate::process::tcp_accepts(port));
        server.create_database("parley_pg_test").expect("create database");
        server
            .create_database("parley_pg_test")
            .expect("a second create is a no-op");
        let folder = server.folder().to_owned();
        server.stop();
        assert!(!crate::process::tcp_accepts(port), "stopped");
        let _ = std::fs::remove_dir_all(folder);
        let _ = std::fs::remove_dir_all(want);
    }
}
