//! The server under test as a child process: `proxim serve` built and started on loopback
//! port 0, its stderr drained and counted, its JSON endpoints read over plain HTTP, and stopped
//! by its PID. Shared by `proxim-loadtest` and `proxim-sigcap`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// How long `proxim serve` may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How many of the server's last stderr lines are kept for a failure report.
const TAIL_LINES: usize = 20;

/// Environment variables `proxim serve` reads; removed so the child runs with its defaults
/// and the flags it is given.
const SERVER_ENV: &[&str] = &[
    "PROXIM_BIND",
    "STUN_URLS",
    "TURN_URLS",
    "TURN_USERNAME",
    "TURN_PASSWORD",
    "TURN_SECRET",
    "TURN_TTL",
    "TURN_REALM",
    "PROXIM_STUN_BIND",
    "PROXIM_NO_STUN",
    "PROXIM_PUBLIC_HOST",
    "PROXIM_RATE_LIMIT",
    "PROXIM_RATE_BURST",
    "PROXIM_RATE_STRIKES",
    "PROXIM_MAX_CONNECTIONS_PER_IP",
    "PROXIM_PAIR_ATTEMPTS",
    "PROXIM_PAIR_WINDOW",
    "PROXIM_TRUSTED_PROXIES",
    "PROXIM_STATE_URL",
    "PROXIM_EVENTS",
    "RUST_LOG",
];

/// A running `proxim serve`, killed (by its PID) when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    /// The child's process id.
    pub pid: u32,
    /// The address the server listens on.
    pub addr: SocketAddr,
    /// What the server wrote to stderr.
    pub log: Arc<ServerLog>,
}

/// What the server wrote to stderr, counted (the lines themselves are dropped, but the last
/// few are kept for a failure report).
#[derive(Debug, Default)]
pub struct ServerLog {
    /// Lines written.
    pub lines: AtomicU64,
    /// Bytes written (each line with its newline).
    pub bytes: AtomicU64,
    /// Lines at level WARN.
    pub warnings: AtomicU64,
    /// Lines at level ERROR.
    pub errors: AtomicU64,
    tail: Mutex<Vec<String>>,
}

impl ServerLog {
    /// The last lines written, oldest first.
    pub fn tail(&self) -> Vec<String> {
        self.tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Print the last lines to stderr, under a heading.
    pub fn eprint_tail(&self) {
        eprintln!("server log, last lines:");
        for line in self.tail() {
            eprintln!("  {line}");
        }
    }

    fn record(&self, line: &str) {
        self.lines.fetch_add(1, Ordering::Relaxed);
        self.bytes
            .fetch_add(line.len() as u64 + 1, Ordering::Relaxed);
        if line.contains(" WARN ") {
            self.warnings.fetch_add(1, Ordering::Relaxed);
        }
        if line.contains(" ERROR ") {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let mut tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        if tail.len() >= TAIL_LINES {
            tail.remove(0);
        }
        tail.push(line.to_owned());
    }
}

impl ServerProcess {
    /// Start `proxim serve --bind 127.0.0.1:0 --no-stun --admin-bind none` (the monitoring
    /// routes it reads are open on the public port; no fixed admin port to collide on), then
    /// `extra_args`, and wait for the address it prints.
    pub async fn start(binary: &Path, extra_args: &[&str]) -> Result<ServerProcess> {
        let mut command = Command::new(binary);
        command
            .args([
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--no-stun",
                "--admin-bind",
                "none",
            ])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for var in SERVER_ENV {
            command.env_remove(var);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id().context("the server exited at once")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let log = Arc::new(ServerLog::default());
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        // Drain stderr for the whole run: a full pipe would block the server's logging.
        tokio::spawn({
            let log = log.clone();
            async move {
                let mut lines = BufReader::new(stderr).lines();
                let mut addr_tx = Some(addr_tx);
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(addr) = listening_addr(&line)
                        && let Some(tx) = addr_tx.take()
                    {
                        let _ = tx.send(addr);
                    }
                    log.record(&line);
                }
            }
        });
        let addr = match tokio::time::timeout(START_TIMEOUT, addr_rx).await {
            Ok(Ok(addr)) => addr,
            _ => {
                let _ = child.start_kill();
                bail!(
                    "`proxim serve` did not report its address within {START_TIMEOUT:?}; its \
                     log:\n{}",
                    log.tail().join("\n")
                );
            }
        };
        Ok(ServerProcess {
            child,
            pid,
            addr,
            log,
        })
    }

    /// The server's WebSocket URL.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Whether the child is still running (it has not exited, or exited unreaped).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stop the server: SIGINT to its PID (it shuts down gracefully on Ctrl-C), SIGKILL after
    /// `grace`.
    pub async fn stop(self, grace: Duration) -> Result<std::process::ExitStatus> {
        self.stop_with("INT", grace).await
    }

    /// Stop the server with `signal` (`INT`, `TERM`…) to its PID, SIGKILL after `grace`; its
    /// exit status.
    pub async fn stop_with(
        mut self,
        signal: &str,
        grace: Duration,
    ) -> Result<std::process::ExitStatus> {
        let _ = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.pid.to_string()])
            .status();
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.child.start_kill()?;
                Ok(self.child.wait().await?)
            }
        }
    }
}

/// The `proxim` binary: `explicit`, else next to this one, else built with cargo (same
/// profile, same target directory).
pub fn proxim_binary(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path);
    }
    let me = std::env::current_exe().context("locating this executable")?;
    let dir = me.parent().context("this executable has no directory")?;
    let sibling = dir.join("proxim");
    let release = dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = std::process::Command::new(&cargo);
    build.args(["build", "--quiet", "-p", "proxim", "--bin", "proxim"]);
    if release {
        build.arg("--release");
    }
    // Always (re)build: cheap when up to date, and a stale server would measure old code.
    eprintln!(
        "building the server: {cargo} build -p proxim{}",
        if release { " --release" } else { "" }
    );
    let status = build.status().context("running cargo build -p proxim")?;
    if !status.success() {
        bail!("cargo build -p proxim failed ({status})");
    }
    if !sibling.exists() {
        bail!(
            "{} not found after building; pass --proxim PATH",
            sibling.display()
        );
    }
    Ok(sibling)
}

/// `GET path` on the server, the JSON body.
pub async fn get_json(addr: SocketAddr, path: &str) -> Result<serde_json::Value> {
    get_json_with_token(addr, path, None).await
}

/// [`get_json`] with `Authorization: Bearer <token>` (the protected monitoring routes).
pub async fn get_json_with_token(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<serde_json::Value> {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        tcp.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .context("GET timed out")??;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("HTTP response without a body")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    serde_json::from_str(body).with_context(|| format!("GET {path}: body is not JSON"))
}

/// The server's `connections_open` from `/api/stats`; `None` when it cannot be read.
pub async fn connections_open(addr: SocketAddr) -> Option<u64> {
    get_json(addr, "/api/stats")
        .await
        .ok()
        .and_then(|s| s["connections_open"].as_u64())
}

/// Wait until the server has no connection open (asking every `poll`), for `within` at most;
/// whether it got there.
pub async fn wait_for_no_connections(addr: SocketAddr, within: Duration, poll: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if connections_open(addr).await == Some(0) {
            return true;
        }
        tokio::time::sleep(poll).await;
    }
    false
}

/// `proxim serve` prints `proxim signaling server on 127.0.0.1:PORT (WebSocket …)`.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split("signaling server on ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_names_the_address() {
        let line = "proxim signaling server on 127.0.0.1:40123 (WebSocket ws://127.0.0.1:40123/ws)";
        assert_eq!(
            listening_addr(line),
            Some("127.0.0.1:40123".parse().unwrap())
        );
        assert_eq!(listening_addr("INFO something else"), None);
    }
}
