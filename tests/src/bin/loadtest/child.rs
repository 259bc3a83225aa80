//! The server under test: a `proxim serve` child process with default limits, its memory
//! sampled from `/proc`, its `/api/stats` read over plain HTTP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// How long `proxim serve` may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Environment variables `proxim serve` reads; removed so the child runs with its defaults.
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
    "RUST_LOG",
];

/// A running `proxim serve`, killed (by its PID) when dropped.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    child: Child,
    pub(crate) pid: u32,
    pub(crate) addr: SocketAddr,
    pub(crate) log: Arc<ServerLog>,
}

/// What the server wrote to stderr, counted (the lines themselves are dropped, but the last
/// few are kept for a failure report).
#[derive(Debug, Default)]
pub(crate) struct ServerLog {
    pub(crate) lines: AtomicU64,
    pub(crate) warnings: AtomicU64,
    pub(crate) errors: AtomicU64,
    tail: Mutex<Vec<String>>,
}

impl ServerLog {
    pub(crate) fn tail(&self) -> Vec<String> {
        self.tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record(&self, line: &str) {
        self.lines.fetch_add(1, Ordering::Relaxed);
        if line.contains(" WARN ") {
            self.warnings.fetch_add(1, Ordering::Relaxed);
        }
        if line.contains(" ERROR ") {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let mut tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        if tail.len() >= 20 {
            tail.remove(0);
        }
        tail.push(line.to_owned());
    }
}

impl ServerProcess {
    /// Start `proxim serve --bind 127.0.0.1:0 --no-stun` and wait for the address it prints.
    pub(crate) async fn start(binary: &Path) -> Result<ServerProcess> {
        let mut command = Command::new(binary);
        command
            .args(["serve", "--bind", "127.0.0.1:0", "--no-stun"])
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

    pub(crate) fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Stop the server: SIGINT to its PID (it shuts down gracefully on Ctrl-C), SIGKILL after
    /// `grace`.
    pub(crate) async fn stop(mut self, grace: Duration) -> Result<std::process::ExitStatus> {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &self.pid.to_string()])
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

/// `proxim serve` prints `proxim signaling server on 127.0.0.1:PORT (WebSocket …)`.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split("signaling server on ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The `proxim` binary: `explicit`, else next to this one, else built with cargo (same
/// profile, same target directory).
pub(crate) fn proxim_binary(explicit: Option<PathBuf>) -> Result<PathBuf> {
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

// ---------------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------------

/// One `/proc/<pid>/status` reading.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MemorySample {
    pub(crate) at: Duration,
    pub(crate) rss_kib: u64,
    pub(crate) hwm_kib: u64,
}

/// Samples the server's VmRSS and VmHWM every `period` on a thread of its own.
#[derive(Debug)]
pub(crate) struct MemorySampler {
    samples: Arc<Mutex<Vec<MemorySample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    started: Instant,
    pid: u32,
}

impl MemorySampler {
    pub(crate) fn start(pid: u32, period: Duration) -> MemorySampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let thread = std::thread::spawn({
            let samples = samples.clone();
            let stop = stop.clone();
            move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some((rss_kib, hwm_kib)) = read_status(pid) {
                        samples
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(MemorySample {
                                at: started.elapsed(),
                                rss_kib,
                                hwm_kib,
                            });
                    }
                    std::thread::sleep(period);
                }
            }
        });
        MemorySampler {
            samples,
            stop,
            thread: Some(thread),
            started,
            pid,
        }
    }

    /// A reading now, outside the sampling period.
    pub(crate) fn now(&self) -> Option<MemorySample> {
        let (rss_kib, hwm_kib) = read_status(self.pid)?;
        Some(MemorySample {
            at: self.started.elapsed(),
            rss_kib,
            hwm_kib,
        })
    }

    pub(crate) fn samples(&self) -> Vec<MemorySample> {
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn stop(mut self) -> Vec<MemorySample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.samples()
    }
}

/// VmRSS and VmHWM of `pid`, in KiB.
fn read_status(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    Some((field("VmRSS")?, field("VmHWM")?))
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// `GET path` on the server, the JSON body.
pub(crate) async fn get_json(addr: SocketAddr, path: &str) -> Result<serde_json::Value> {
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
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
