//! A real coturn (`turnserver`, Debian package `coturn`) on 127.0.0.1 for one test.
//!
//! Each instance picks free ports, writes its files (log, user database, TLS certificate made
//! with `openssl`) into its own temporary directory, allows loopback peers (the test's peers
//! are on 127.0.0.1) and is killed, by its PID, when dropped. Missing `turnserver` is a test
//! failure with the install command, never a silent skip: `scripts/test.sh` installs it.

use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use crate::{free_port, which};

/// How coturn authenticates clients.
#[derive(Debug, Clone)]
pub enum CoturnAuth {
    /// One static long-term user (`--lt-cred-mech --user`).
    Static {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// TURN REST credentials (`--use-auth-secret --static-auth-secret`).
    Secret(String),
}

/// A running coturn.
#[derive(Debug)]
pub struct Coturn {
    child: Child,
    /// UDP and TCP listening port (`turn:` and `turn:…?transport=tcp`).
    pub port: u16,
    /// TLS listening port (`turns:`).
    pub tls_port: u16,
    /// The CA certificate (PEM) that signed the TLS certificate, for the client's trust store.
    pub ca_pem: Vec<u8>,
    dir: tempfile::TempDir,
}

impl Coturn {
    /// Start coturn with `auth`; returns once it accepts TCP connections. Panics (a test
    /// failure) when coturn is missing or does not start.
    pub fn start(auth: CoturnAuth) -> Coturn {
        Self::try_start(auth).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::start`] with extra `turnserver` options (`--user-quota 1`…).
    pub fn start_with(auth: CoturnAuth, extra: &[&str]) -> Coturn {
        Self::try_start_with(auth, extra).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::start`], with the reason it could not start as an error.
    pub fn try_start(auth: CoturnAuth) -> Result<Coturn, String> {
        Self::try_start_with(auth, &[])
    }

    fn try_start_with(auth: CoturnAuth, extra: &[&str]) -> Result<Coturn, String> {
        let binary = which("turnserver").ok_or(
            "coturn's `turnserver` is not installed: apt-get install coturn \
             (scripts/test.sh installs it)",
        )?;
        let dir = tempfile::tempdir().unwrap();
        let ca_pem = make_certificates(dir.path());
        let port = free_port();
        let tls_port = free_port();
        // Each instance its own relay port range, so instances in one test binary never
        // compete for relay ports.
        static NEXT_RANGE: AtomicU16 = AtomicU16::new(0);
        let range = NEXT_RANGE.fetch_add(1, Ordering::Relaxed) % 150;
        let relay_min = 30_000 + range * 100;
        let mut cmd = Command::new(binary);
        cmd.args([
            "-n",
            "--no-cli",
            "--no-stdout-log",
            "--simple-log",
            "--fingerprint",
        ])
        .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
        .args(["--listening-port", &port.to_string()])
        .args(["--tls-listening-port", &tls_port.to_string()])
        .args(["--min-port", &relay_min.to_string()])
        .args(["--max-port", &(relay_min + 99).to_string()])
        .args([
            "--realm",
            "proxim.test",
            "--allow-loopback-peers",
            "--no-dtls",
        ])
        .args([
            "--no-multicast-peers",
            "--no-rfc5780",
            "--no-software-attribute",
        ])
        .arg("--cert")
        .arg(dir.path().join("server.pem"))
        .arg("--pkey")
        .arg(dir.path().join("server.key"))
        .arg("--log-file")
        .arg(dir.path().join("turn.log"))
        .arg("--userdb")
        .arg(dir.path().join("turndb"))
        .arg("--pidfile")
        .arg(dir.path().join("turn.pid"));
        cmd.args(extra);
        match &auth {
            CoturnAuth::Static { username, password } => {
                cmd.args([
                    "--lt-cred-mech",
                    "--user",
                    &format!("{username}:{password}"),
                ]);
            }
            CoturnAuth::Secret(secret) => {
                cmd.args(["--use-auth-secret", "--static-auth-secret", secret]);
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("turnserver does not start: {e}"))?;
        let coturn = Coturn {
            child,
            port,
            tls_port,
            ca_pem,
            dir,
        };
        coturn.wait_ready()?;
        Ok(coturn)
    }

    /// `turn:127.0.0.1:PORT` (UDP).
    pub fn udp_url(&self) -> String {
        format!("turn:127.0.0.1:{}", self.port)
    }

    /// `turn:127.0.0.1:PORT?transport=tcp`.
    pub fn tcp_url(&self) -> String {
        format!("turn:127.0.0.1:{}?transport=tcp", self.port)
    }

    /// `turns:127.0.0.1:TLS_PORT`.
    pub fn tls_url(&self) -> String {
        format!("turns:127.0.0.1:{}", self.tls_port)
    }

    /// coturn's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("turn.log")).unwrap_or_default()
    }

    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let addrs = [
            SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)),
            SocketAddr::from((Ipv4Addr::LOCALHOST, self.tls_port)),
        ];
        while Instant::now() < deadline {
            // TCP and TLS accept, and UDP answers a STUN binding: coturn opens its UDP
            // listeners in their own threads, after the TCP ones (a loaded machine showed a
            // test's first UDP allocation refused with "port unreachable").
            if addrs
                .iter()
                .all(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok())
                && udp_answers(addrs[0])
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "coturn did not start listening within 10 s; log:\n{}",
            self.log()
        ))
    }
}

/// Whether a STUN binding request to `addr` over UDP gets a response within 200 ms.
fn udp_answers(addr: SocketAddr) -> bool {
    let Ok(socket) = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) else {
        return false;
    };
    if socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .is_err()
    {
        return false;
    }
    // Binding request: type 0x0001, no attributes, the magic cookie, a transaction id.
    let mut request = [0u8; 20];
    request[..2].copy_from_slice(&0x0001u16.to_be_bytes());
    request[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    let id: [u8; 12] = rand::random();
    request[8..].copy_from_slice(&id);
    if socket.send_to(&request, addr).is_err() {
        return false;
    }
    let mut buf = [0u8; 1500];
    matches!(socket.recv_from(&mut buf), Ok((n, _)) if n >= 20 && buf[8..20] == id)
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it; returns the CA's PEM.
fn make_certificates(dir: &Path) -> Vec<u8> {
    // `command` is split on spaces; `subject` (which has spaces) is passed whole.
    let run = |command: &str, subject: Option<&str>| {
        let mut args: Vec<&str> = command.split(' ').collect();
        if let Some(subject) = subject {
            args.extend(["-subj", subject]);
        }
        let out = Command::new("openssl")
            .args(&args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .expect("openssl runs (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    // A fresh unencrypted P-256 key for each certificate.
    const NEW_KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    run(
        &format!("req -x509 {NEW_KEY} -keyout ca.key -out ca.pem -days 2"),
        Some("/CN=Proxim test CA"),
    );
    run(
        &format!("req {NEW_KEY} -keyout server.key -out server.csr"),
        Some("/CN=127.0.0.1"),
    );
    run(
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext.cnf",
        None,
    );
    std::fs::read(dir.join("ca.pem")).unwrap()
}
