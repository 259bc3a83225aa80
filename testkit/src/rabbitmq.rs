//! A real RabbitMQ (`rabbitmq-server`, Debian package `rabbitmq-server`) on 127.0.0.1 for one
//! test, with its own Erlang port mapper.
//!
//! Each instance gets free ports (AMQP, Erlang distribution, `epmd`), its own node name,
//! database, logs and Erlang cookie in a temporary directory, and no plugins; it runs in its
//! own process group, so stopping it (SIGTERM to the group: RabbitMQ shuts down cleanly, then
//! SIGKILL if it has not after 30 s) ends every process it started. [`RabbitMq::restart`]
//! starts it again on the same port with the same database (durable queues and persistent
//! messages survive), for broker-restart tests. Missing `rabbitmq-server` is a test failure
//! with the install command, never a silent skip: `scripts/test.sh` installs it.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, which};

/// How long a start may take (a cold start on this class of machine: ~5 s).
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a clean stop may take before the group is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running (or stopped, between [`RabbitMq::stop`] and [`RabbitMq::restart`]) broker.
#[derive(Debug)]
pub struct RabbitMq {
    script: PathBuf,
    epmd: Child,
    server: Option<Child>,
    /// The AMQP port on 127.0.0.1.
    pub port: u16,
    dist_port: u16,
    epmd_port: u16,
    node: String,
    dir: tempfile::TempDir,
    starts: u32,
}

impl RabbitMq {
    /// Start a broker; returns once it accepts AMQP connections. Panics (a test failure) when
    /// RabbitMQ is missing or does not start.
    pub fn start() -> RabbitMq {
        Self::try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::start`], with the reason it could not start as an error.
    pub fn try_start() -> Result<RabbitMq, String> {
        let script = find_server_script().ok_or(
            "RabbitMQ is not installed: apt-get install rabbitmq-server \
             (scripts/test.sh installs it)",
        )?;
        let epmd_binary = which("epmd").ok_or("Erlang's `epmd` is missing (rabbitmq-server)")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").map_err(|e| e.to_string())?;
        let epmd_port = free_port();
        let epmd = Command::new(epmd_binary)
            .args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start epmd: {e}"))?;
        let mut broker = RabbitMq {
            script,
            epmd,
            server: None,
            port: free_port(),
            dist_port: free_port(),
            epmd_port,
            node: format!(
                "proxim_test_{}_{}@localhost",
                std::process::id(),
                free_port()
            ),
            dir,
            starts: 0,
        };
        broker.launch()?;
        Ok(broker)
    }

    /// The AMQP URL of the default virtual host, as the built-in `guest` user (allowed from
    /// loopback only).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The AMQP address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Stop the broker cleanly (SIGTERM to its process group; SIGKILL after 30 s).
    pub fn stop(&mut self) {
        self.signal_and_wait("TERM", STOP_TIMEOUT);
    }

    /// Kill the broker at once (SIGKILL to its process group), as a crash would.
    pub fn kill(&mut self) {
        self.signal_and_wait("KILL", STOP_TIMEOUT);
    }

    /// Start the broker again after [`Self::stop`] or [`Self::kill`]: same port, same
    /// database. Returns once it accepts AMQP connections; panics when it does not.
    pub fn restart(&mut self) {
        assert!(self.server.is_none(), "restart() of a running broker");
        if let Err(e) = self.launch() {
            panic!("{e}");
        }
    }

    /// The broker's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn launch(&mut self) -> Result<(), String> {
        self.starts += 1;
        let dir = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| e.to_string())?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&self.script)
            .env("HOME", dir)
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_LOGS", "-")
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", dir.join("plugins"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_PID_FILE", dir.join("rabbitmq.pid"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start rabbitmq-server: {e}"))?;
        self.server = Some(child);
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.server.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.server = None;
                return Err(format!(
                    "rabbitmq-server exited ({status}) before listening; its log:\n{}",
                    tail(&self.log(), 40)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = tail(&self.log(), 40);
        self.signal_and_wait("KILL", STOP_TIMEOUT);
        Err(format!(
            "rabbitmq-server did not listen on {} within {START_TIMEOUT:?}; its log:\n{log}",
            self.port
        ))
    }

    /// Signal the broker's process group and wait for its shell to exit and its port to
    /// close; escalate to SIGKILL after `limit`.
    fn signal_and_wait(&mut self, signal: &str, limit: Duration) {
        let Some(mut child) = self.server.take() else {
            return;
        };
        let group = format!("-{}", child.id());
        let send = |signal: &str| {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), "--", &group])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        send(signal);
        let deadline = Instant::now() + limit;
        loop {
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            let port_closed =
                TcpStream::connect_timeout(&self.addr(), Duration::from_millis(100)).is_err();
            // The group outlives the shell for a moment (the Erlang VM stops last).
            if exited && port_closed && !group_alive(child.id()) {
                return;
            }
            if Instant::now() >= deadline {
                send("KILL");
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        self.signal_and_wait("KILL", Duration::from_secs(10));
        let _ = self.epmd.kill();
        let _ = self.epmd.wait();
    }
}

/// Whether any process of the group `pgid` is still alive.
fn group_alive(pgid: u32) -> bool {
    Command::new("kill")
        .args(["-0", "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The server script itself (not `/usr/sbin/rabbitmq-server`, which switches to the
/// `rabbitmq` user when run as root): `/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/`.
fn find_server_script() -> Option<PathBuf> {
    let lib = Path::new("/usr/lib/rabbitmq/lib");
    let mut found: Vec<PathBuf> = std::fs::read_dir(lib)
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("rabbitmq_server-"))
        })
        .map(|path| path.join("sbin/rabbitmq-server"))
        .filter(|script| script.is_file())
        .collect();
    found.sort();
    found.pop()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
