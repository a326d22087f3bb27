//! tansu 0.6.0 with its sqlite storage engine (`tansu-sqlite`, built by
//! `tools/install-deps.sh`): a broker whose data survives a restart, for tests that
//! kill a broker and start it again on the same storage (tests/faults.rs) or that need
//! users created before authentication is switched on (tests/tls_sasl.rs).
#![allow(dead_code, clippy::pedantic)]

use std::fs::{self, File};
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{free_port, tail, BROKER_START_TIMEOUT};

/// The tansu built with sqlite storage (`$TANSU_SQLITE_BIN`, else `tansu-sqlite` on PATH).
pub fn tansu_sqlite_bin() -> PathBuf {
    let hint = "run `bash tools/install-deps.sh` (builds tansu 0.6.0 with its sqlite storage as tansu-sqlite) \
                or set TANSU_SQLITE_BIN";
    if let Some(p) = std::env::var_os("TANSU_SQLITE_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "TANSU_SQLITE_BIN={} is not a file; {hint}", p.display());
        return p;
    }
    let found = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|d| d.join("tansu-sqlite")).find(|p| p.is_file()));
    found.unwrap_or_else(|| panic!("tansu-sqlite (tansu 0.6.0 with the libsql feature) not found; {hint}"))
}

/// A sqlite-backed tansu on a fixed loopback port with its database in a temp dir
/// that outlives the process: [`SqliteBroker::kill9`] then [`SqliteBroker::restart`]
/// brings it back on the same storage and port. Killed on drop.
pub struct SqliteBroker {
    pub port: u16,
    pub bootstrap: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
    log_path: PathBuf,
    pub restarts: u32,
}

impl SqliteBroker {
    pub fn start() -> SqliteBroker {
        let dir = tempfile::Builder::new().prefix("tansu-sqlite-").tempdir().expect("temp dir");
        let log_path = dir.path().join("tansu.log");
        let port = free_port();
        let mut b =
            SqliteBroker { port, bootstrap: format!("127.0.0.1:{port}"), dir, child: None, log_path, restarts: 0 };
        b.spawn_until_ready();
        b
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// SIGKILL, no chance to flush anything, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL on unix
            let _ = c.wait();
        }
    }

    /// Start again on the same database and port (after [`kill9`]).
    pub fn restart(&mut self) {
        self.kill9();
        self.restarts += 1;
        let mut log = fs::OpenOptions::new().append(true).open(&self.log_path).expect("reopen log");
        let _ = writeln!(log, "---- restart {} on port {} ----", self.restarts, self.port);
        self.spawn_until_ready();
    }

    fn spawn_until_ready(&mut self) {
        // The port may still be held for a moment after a kill: retry.
        let deadline = Instant::now() + BROKER_START_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("tansu-sqlite start failed, retrying: {e}");
                    thread::sleep(Duration::from_millis(300));
                }
                Err(e) => panic!("tansu-sqlite on port {}: {e}\nlog:\n{}", self.port, tail(&self.log(), 40)),
            }
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let bin = tansu_sqlite_bin();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log_path).map_err(|e| e.to_string())?;
        let err_log: File = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&bin)
            // tansu reads the URL's host and path as a path relative to its working directory
            .current_dir(self.dir.path())
            .arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .env("RUST_LOG", std::env::var("TANSU_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err_log))
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Err(format!("exited with {st}"));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && super::metadata_ok(&self.bootstrap, Duration::from_secs(3))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill9();
                return Err("did not answer metadata within 15 s".into());
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for SqliteBroker {
    fn drop(&mut self) {
        self.kill9();
        if thread::panicking() {
            eprintln!("tansu-sqlite {} log (last lines):\n{}", self.bootstrap, tail(&self.log(), 30));
        }
    }
}
