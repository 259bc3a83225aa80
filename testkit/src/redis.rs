//! A real Redis (`redis-server`, Debian package `redis-server`) on 127.0.0.1 for one test.
//!
//! Each instance gets a free port and its own data directory in a temporary directory, runs in
//! its own process group, and is killed by PID when dropped. [`Redis::kill`] ends it as a crash
//! would; [`Redis::restart`] starts it again on the same port with the same directory: with
//! [`Persistence::AppendOnly`] (fsync on every write) the data survives, with
//! [`Persistence::None`] it is gone, as after a failover to an empty replica. Missing
//! `redis-server` is a test failure with the install command, never a silent skip:
//! `scripts/test.sh` installs it.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, which};

/// How long a start may take (~50 ms here; an append-only file replays on start).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What a restarted Redis still has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Nothing: no snapshots, no append-only file.
    None,
    /// Everything acknowledged: an append-only file, fsync'd on every write.
    AppendOnly,
}

/// A running (or killed, between [`Redis::kill`] and [`Redis::restart`]) Redis server.
#[derive(Debug)]
pub struct Redis {
    binary: PathBuf,
    server: Option<Child>,
    /// The port on 127.0.0.1.
    pub port: u16,
    persistence: Persistence,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Start a Redis server; returns once it answers. Panics (a test failure) when Redis is
    /// missing or does not start.
    pub fn start(persistence: Persistence) -> Redis {
        Self::try_start(persistence).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::start`], with the reason it could not start as an error.
    pub fn try_start(persistence: Persistence) -> Result<Redis, String> {
        let binary = which("redis-server").ok_or(
            "Redis is not installed: apt-get install redis-server (scripts/test.sh installs it)",
        )?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut redis = Redis {
            binary,
            server: None,
            port: free_port(),
            persistence,
            dir,
        };
        redis.launch()?;
        Ok(redis)
    }

    /// The URL clients connect to (database 0, no password).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Kill the server at once (SIGKILL), as a crash would, and wait until its port is closed.
    pub fn kill(&mut self) {
        let Some(mut child) = self.server.take() else {
            return;
        };
        let _ = child.kill();
        let _ = child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&self.addr(), Duration::from_millis(100)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start the server again after [`Self::kill`]: same port, same directory. Panics when it
    /// does not start.
    pub fn restart(&mut self) {
        assert!(self.server.is_none(), "restart() of a running Redis");
        if let Err(e) = self.launch() {
            panic!("{e}");
        }
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    fn launch(&mut self) -> Result<(), String> {
        let dir = self.dir.path();
        let mut args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--save",
            "",
            "--logfile",
            "redis.log",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(["--dir".to_owned(), dir.display().to_string()]);
        match self.persistence {
            Persistence::None => args.extend(["--appendonly", "no"].map(str::to_owned)),
            Persistence::AppendOnly => {
                args.extend(["--appendonly", "yes", "--appendfsync", "always"].map(str::to_owned))
            }
        }
        let child = Command::new(&self.binary)
            .args(&args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        self.server = Some(child);
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            if answers_ping(self.addr()) {
                return Ok(());
            }
            if let Some(child) = self.server.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.server = None;
                return Err(format!(
                    "redis-server exited ({status}) before listening; its log:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err(format!(
            "redis-server did not answer on {} within {START_TIMEOUT:?}; its log:\n{}",
            self.port,
            self.log()
        ))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a Redis server at `addr` answers `PING` (and has loaded its data: a loading server
/// answers `-LOADING`).
fn answers_ping(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 16];
    matches!(stream.read(&mut reply), Ok(n) if reply[..n].starts_with(b"+PONG"))
}
