//! Private servers and processes for fault injection.
//!
//! The chaos tests restart PostgreSQL and nats-server and kill writer
//! processes. Doing that to the machine's shared servers (5432, 4222) would
//! break every other test running at the same time, so each scenario starts
//! its own: a throw-away PostgreSQL cluster ([`PgServer`]) and a JetStream
//! server with its own file store ([`NatsServer`]), each on a free loopback
//! port and in its own temporary directory, and the `sql-writer` binary as a
//! child process ([`WriterProcess`]).
//!
//! Everything listens on 127.0.0.1 only, every wait is bounded, and `Drop`
//! stops what was started and removes its directory (also when a test panics).

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// PostgreSQL 15 binaries (Debian/Ubuntu layout); `PG_BIN_DIR` overrides.
pub fn pg_bin_dir() -> PathBuf {
    std::env::var_os("PG_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// nats-server binary; `NATS_SERVER_BIN` overrides.
pub fn nats_server_bin() -> PathBuf {
    std::env::var_os("NATS_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"))
}

/// A free TCP port on 127.0.0.1 (bound once and released; callers retry on a
/// rare collision).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    listener.local_addr().expect("local addr").port()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&loopback(port), Duration::from_millis(200)).is_ok()
}

/// Poll `ready` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait for `child` at most `timeout`; `None` if it is still running.
fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => return None,
        }
    }
}

/// Run a short command to completion within `timeout`, output to `log`.
/// Panics (with the log's tail) if it fails or overruns.
fn run_bounded(mut cmd: Command, what: &str, log: &Path, timeout: Duration) {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .expect("open log");
    let err = out.try_clone().expect("clone log handle");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
    match wait_child(&mut child, timeout) {
        Some(status) if status.success() => {}
        Some(status) => panic!("{what} failed ({status}):\n{}", tail(log, 40)),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish within {timeout:?}:\n{}",
                tail(log, 40)
            );
        }
    }
}

/// The last `n` lines of a log file (for failure messages).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Send `signal` (`TERM`, `KILL`, `STOP`, `CONT`) to process `pid` with kill(1).
fn signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------
// PostgreSQL

/// A private PostgreSQL cluster: `initdb` into a temporary directory owned by
/// the `postgres` OS user (initdb refuses root), trust auth, listening on
/// 127.0.0.1:<free port> with its unix socket inside the directory.
pub struct PgServer {
    dir: tempfile::TempDir,
    port: u16,
    running: bool,
    paused: bool,
}

impl PgServer {
    const START_TIMEOUT: Duration = Duration::from_secs(60);

    /// Create and start a fresh cluster.
    pub fn start() -> PgServer {
        let dir = tempfile::Builder::new()
            .prefix("rm-chaos-pg-")
            .tempdir()
            .expect("temp dir");
        let server = PgServer {
            dir,
            port: free_port(),
            running: false,
            paused: false,
        };
        chown_to_postgres(server.dir.path());
        let mut initdb = server.as_postgres(&pg_bin_dir().join("initdb"));
        initdb.arg("-D").arg(server.data_dir()).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
            "--locale=C",
        ]);
        run_bounded(
            initdb,
            "initdb",
            &server.log_path("initdb.log"),
            Duration::from_secs(120),
        );
        let mut server = server;
        server.start_again();
        server
    }

    /// `postgres://postgres@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The server log's tail, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log_path("postgres.log"), n)
    }

    fn as_postgres(&self, program: &Path) -> Command {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd.current_dir(self.dir.path());
        cmd
    }

    fn pg_ctl(&self, args: &[&str], what: &str, timeout: Duration) {
        let mut cmd = self.as_postgres(&pg_bin_dir().join("pg_ctl"));
        cmd.arg("-D").arg(self.data_dir()).args(args);
        run_bounded(cmd, what, &self.log_path("pg_ctl.log"), timeout);
    }

    /// Start the (stopped) cluster on its port; waits until it accepts connections.
    pub fn start_again(&mut self) {
        assert!(!self.running, "PgServer is already running");
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c synchronous_commit=on -c max_connections=200 -c shared_buffers=32MB",
            self.port,
            self.dir.path().display()
        );
        let log = self.log_path("postgres.log");
        let mut cmd = self.as_postgres(&pg_bin_dir().join("pg_ctl"));
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "50", "-o", &options, "start"]);
        run_bounded(
            cmd,
            "pg_ctl start",
            &self.log_path("pg_ctl.log"),
            Self::START_TIMEOUT,
        );
        self.running = true;
        assert!(
            wait_until(Duration::from_secs(20), || port_open(self.port)),
            "PostgreSQL did not open 127.0.0.1:{}:\n{}",
            self.port,
            self.log_tail(30)
        );
    }

    /// Stop the cluster (fast shutdown: open sessions are disconnected, like
    /// an operator restart or a managed-service failover).
    pub fn stop(&mut self) {
        self.stop_mode("fast");
    }

    /// Stop the cluster as a crash would (immediate: no checkpoint, WAL replay on start).
    pub fn crash(&mut self) {
        self.stop_mode("immediate");
    }

    fn stop_mode(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        self.pg_ctl(
            &["-w", "-t", "30", "-m", mode, "stop"],
            "pg_ctl stop",
            Duration::from_secs(40),
        );
        self.running = false;
    }

    /// Stop (fast) and start again on the same port and data directory.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Crash (immediate stop) and start again: the server recovers from WAL.
    pub fn crash_restart(&mut self) {
        self.crash();
        self.start_again();
    }

    /// The postmaster and its children (backends, background workers), by pid.
    fn pids(&self) -> Vec<u32> {
        let pid_file =
            std::fs::read_to_string(self.data_dir().join("postmaster.pid")).unwrap_or_default();
        let Some(postmaster) = pid_file
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<u32>().ok())
        else {
            return Vec::new();
        };
        let mut pids = vec![postmaster];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
                // `pid (comm) state ppid ...`; comm may contain spaces, so split after the last `)`.
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<u32>().ok());
                if ppid == Some(postmaster) {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// Freeze the whole cluster (SIGSTOP to the postmaster and its children):
    /// connections stay open but nothing answers, like a hung server or a
    /// network partition. [`PgServer::resume`] undoes it; so does drop.
    pub fn pause(&mut self) {
        assert!(self.running, "PgServer is not running");
        let pids = self.pids();
        assert!(!pids.is_empty(), "no postmaster pid");
        for pid in pids.iter().rev() {
            signal(*pid, "STOP");
        }
        self.paused = true;
    }

    /// Unfreeze a [`PgServer::pause`]d cluster.
    pub fn resume(&mut self) {
        for pid in self.pids() {
            signal(pid, "CONT");
        }
        self.paused = false;
    }

    /// Create a database (through the server's `postgres` database).
    pub async fn create_database(&self, name: &str) {
        let (client, conn) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to private PostgreSQL on port {}: {e}", self.port));
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        drop(client);
        let _ = task.await;
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.paused {
            self.resume();
        }
        if self.running {
            let mut cmd = self.as_postgres(&pg_bin_dir().join("pg_ctl"));
            cmd.arg("-D")
                .arg(self.data_dir())
                .args(["-w", "-t", "20", "-m", "immediate", "stop"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Ok(mut child) = cmd.spawn() {
                if wait_child(&mut child, Duration::from_secs(25)).is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
            self.running = false;
        }
        // TempDir removes the directory (root may remove postgres-owned files).
    }
}

fn chown_to_postgres(path: &Path) {
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .status()
        .expect("run chown");
    assert!(
        status.success(),
        "chown {} to postgres failed",
        path.display()
    );
}

// ---------------------------------------------------------------------------
// NATS

/// A private nats-server with JetStream file storage in a temporary
/// directory, on 127.0.0.1:<free port>. Restarting keeps the store directory,
/// so streams, consumers and their acknowledgement state persist.
pub struct NatsServer {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    starts: u32,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let dir = tempfile::Builder::new()
            .prefix("rm-chaos-nats-")
            .tempdir()
            .expect("temp dir");
        let mut server = NatsServer {
            dir,
            port: free_port(),
            child: None,
            starts: 0,
        };
        server.start_again();
        server
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log_path(), n)
    }

    /// Start the server (again) with the same port and store directory.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "NatsServer is already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("nats log");
        let log2 = log.try_clone().expect("clone log");
        let store = self.dir.path().join("jetstream");
        let child = Command::new(nats_server_bin())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", nats_server_bin().display()));
        self.child = Some(child);
        self.starts += 1;
        let starts = self.starts;
        let log_path = self.log_path();
        let port = self.port;
        let ready = wait_until(Duration::from_secs(30), || {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            text.matches("Server is ready").count() >= starts as usize && port_open(port)
        });
        if !ready {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            panic!(
                "nats-server on port {port} not ready within 30 s (exit: {exited:?}):\n{}",
                self.log_tail(30)
            );
        }
    }

    /// SIGKILL the server (no flush, no goodbye), and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = wait_child(&mut child, Duration::from_secs(10));
        }
    }

    /// Graceful stop (SIGTERM, then SIGKILL after 15 s).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM");
            if wait_child(&mut child, Duration::from_secs(15)).is_none() {
                let _ = child.kill();
                let _ = wait_child(&mut child, Duration::from_secs(10));
            }
        }
    }

    /// Stop (SIGTERM) and start again on the same port and store directory.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// SIGKILL and start again on the same port and store directory.
    pub fn kill9_restart(&mut self) {
        self.kill9();
        self.start_again();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ---------------------------------------------------------------------------
// sql-writer process

/// The `sql-writer` binary next to the test binary (`target/<profile>/`), or
/// `SQL_WRITER_BIN`.
pub fn sql_writer_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SQL_WRITER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    for dir in exe.ancestors().skip(1) {
        for candidate in [dir.join("sql-writer"), dir.join("debug").join("sql-writer")] {
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "the sql-writer binary was not found next to {} — run `cargo build --bins` first (or set SQL_WRITER_BIN)",
        exe.display()
    );
}

/// A `sql-writer` child process. Its stdout and stderr go to a log file.
pub struct WriterProcess {
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
    status: Option<ExitStatus>,
}

impl WriterProcess {
    /// Spawn `sql-writer` with `args` and `env` (added to the inherited environment;
    /// `RUST_LOG` defaults to `info`).
    pub fn spawn(args: &[&str], env: &[(&str, String)]) -> WriterProcess {
        let dir = tempfile::Builder::new()
            .prefix("rm-chaos-writer-")
            .tempdir()
            .expect("temp dir");
        let log = dir.path().join("sql-writer.log");
        let out = File::create(&log).expect("writer log");
        let err = out.try_clone().expect("clone log");
        let mut cmd = Command::new(sql_writer_bin());
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        // A developer's own writer settings must not leak into the test process.
        for var in ["SQL_WRITER_CONFIG", "METRICS_ADDR", "WRITER_MIGRATE"] {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", sql_writer_bin().display()));
        WriterProcess {
            child: Some(child),
            log,
            _dir: dir,
            status: None,
        }
    }

    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL: no shutdown path at all, messages in flight stay unsettled.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            self.status = wait_child(&mut child, Duration::from_secs(10));
        }
    }

    /// SIGTERM: ask for a graceful shutdown (does not wait).
    pub fn sigterm(&self) {
        if let Some(child) = &self.child {
            signal(child.id(), "TERM");
        }
    }

    /// Wait at most `timeout` for the process to exit; `None` if still running.
    pub fn wait_with_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.status {
            return Some(status);
        }
        let child = self.child.as_mut()?;
        let status = wait_child(child, timeout)?;
        self.status = Some(status);
        self.child = None;
        Some(status)
    }

    /// Exited already? (non-blocking)
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.wait_with_timeout(Duration::ZERO)
    }

    /// The log's last `n` lines.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WriterProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
