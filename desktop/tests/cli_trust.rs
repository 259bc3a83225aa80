#![allow(clippy::unwrap_used)]
//! The `proxim` binary end to end: a real `proxim serve`, a real `proxim desktop`, and the
//! phone side as `proxim pair` / `proxim connect` / `proxim devices`, each a child process
//! killed by PID at the end.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_proxim");
const WAIT: Duration = Duration::from_secs(30);

/// A child process, killed when dropped; its stdout lines arrive on `lines`.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running { child, lines }
    }

    /// The rest of the first line that starts with `prefix`.
    fn wait_for(&self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_owned();
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no line starting with {prefix:?} within {WAIT:?}");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Run a phone-side command that prints one JSON object.
fn phone_json(args: &[&str]) -> serde_json::Value {
    let output = Command::new(BIN).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn devices(dir: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["devices", "--data-dir", dir.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let output = Command::new(BIN).args(&args).output().unwrap();
    assert!(
        output.status.success(),
        "proxim devices {extra:?}: {output:?}"
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn pair_remember_reconnect_and_revoke_from_the_command_line() {
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let server_url = format!("ws://{bind}/ws");
    let _server = Running::start(&[
        "serve",
        "--bind",
        &bind,
        "--no-stun",
        "--admin-bind",
        "none",
    ]);
    let desk_dir = tempfile::tempdir().unwrap();
    let phone_dir = tempfile::tempdir().unwrap();
    let downloads = tempfile::tempdir().unwrap();
    // Wait (bounded) until the server listens.
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(&bind).is_err() {
        assert!(Instant::now() < deadline, "the server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let desktop = Running::start(&[
        "desktop",
        "--server",
        &server_url,
        "--name",
        "cli-desk",
        "--accept",
        "--echo",
        "--no-qr",
        "--local-ip",
        "127.0.0.1",
        "--data-dir",
        desk_dir.path().to_str().unwrap(),
        "--download-dir",
        downloads.path().to_str().unwrap(),
    ]);
    let id_line = desktop.wait_for("desktop id:");
    let desktop_id = id_line.split_whitespace().next().unwrap().to_owned();
    let code = desktop.wait_for("pairing code:");
    let link = desktop.wait_for("pairing link:");
    assert!(link.starts_with("proxim://pair?"), "{link}");
    let phone_args = |target: &str, command: &str| {
        vec![
            command.to_owned(),
            target.to_owned(),
            "--server".into(),
            server_url.clone(),
            "--name".into(),
            "cli-phone".into(),
            "--local-ip".into(),
            "127.0.0.1".into(),
            "--data-dir".into(),
            phone_dir.path().to_str().unwrap().into(),
            "--json".into(),
            "-m".into(),
            "hello".into(),
        ]
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        phone_json(&args)
    };

    // First pairing, with the code.
    let report = run(phone_args(&code, "pair"));
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["auth"], "code", "{report}");
    assert_eq!(report["desktop_id"], desktop_id.as_str(), "{report}");
    let comparison = report["comparison_code"].as_str().unwrap();
    assert_eq!(comparison.len(), 7, "{report}");

    // Both remember each other.
    let phone_devices = devices(phone_dir.path(), &[]);
    assert_eq!(
        phone_devices.as_array().unwrap().len(),
        1,
        "{phone_devices}"
    );
    assert_eq!(phone_devices[0]["role"], "desktop");
    assert_eq!(phone_devices[0]["name"], "cli-desk");
    let desk_devices = devices(desk_dir.path(), &[]);
    assert_eq!(desk_devices[0]["role"], "phone", "{desk_devices}");
    let phone_id = desk_devices[0]["device_id"].as_str().unwrap().to_owned();

    // Reconnect without a code, by a prefix of the desktop id.
    let prefix = &desktop_id[..desktop_id.len() - 4];
    let report = run(phone_args(prefix, "connect"));
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["auth"], "trusted", "{report}");

    // The desktop revokes the phone: the next reconnect is refused.
    let revoked = devices(desk_dir.path(), &["revoke", &phone_id]);
    assert_eq!(revoked[0]["device_id"], phone_id.as_str(), "{revoked}");
    assert!(devices(desk_dir.path(), &[]).as_array().unwrap().is_empty());
    let report = run(phone_args(&desktop_id, "connect"));
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["error"], "not_trusted", "{report}");

    // Revoking what is not there is an error, not a silent success.
    let output = Command::new(BIN)
        .args([
            "devices",
            "--data-dir",
            desk_dir.path().to_str().unwrap(),
            "revoke",
            "nope",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    drop(desktop);
}
