//! RELAY rows: DC-BULK and setup through a TURN relay, beside the direct rows of the same run.
//!
//! The offerer may only use relay candidates (force-relay); the answerer is a plain peer. The
//! relay is coturn: by default one this row starts on 127.0.0.1 (static credentials, loopback
//! peers allowed); with `PROXIM_BENCH_TURN_URLS` (comma-separated; each row takes the URL of its
//! transport) and `PROXIM_BENCH_TURN_USERNAME`, `PROXIM_BENCH_TURN_PASSWORD`,
//! `PROXIM_BENCH_TURN_CA` (for `turns:`) an existing relay, such as the NAT lab's
//! (`scripts/natlab.sh bench`).

use std::time::Duration;

use anyhow::Context as _;
use proxim_core::peer::{CandidateKind, Established, PeerConfig, PeerRole};
use proxim_protocol::IceServer;
use proxim_testkit::coturn::{Coturn, CoturnAuth};

use crate::Params;
use crate::measure::{Outcome, repeat_setup, runtime};
use crate::proxim_rows::{bulk_over, establish_with};

const TRIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// How the relay is reached.
#[derive(Debug, Clone, Copy)]
enum Transport {
    Udp,
    Tcp,
    Tls,
}

/// A relay to use: a coturn started here (kept alive by the guard) or an external one.
struct Relay {
    servers: Vec<IceServer>,
    ca_pem: Option<Vec<u8>>,
    _coturn: Option<Coturn>,
}

impl Transport {
    fn matches(self, url: &str) -> bool {
        let tcp = url.ends_with("?transport=tcp");
        match self {
            Transport::Udp => url.starts_with("turn:") && !tcp,
            Transport::Tcp => url.starts_with("turn:") && tcp,
            Transport::Tls => url.starts_with("turns:"),
        }
    }
}

impl Relay {
    fn get(transport: Transport) -> anyhow::Result<Relay> {
        if let Ok(urls) = std::env::var("PROXIM_BENCH_TURN_URLS") {
            let url = urls
                .split(',')
                .map(str::trim)
                .find(|url| transport.matches(url))
                .with_context(|| format!("no {transport:?} URL in PROXIM_BENCH_TURN_URLS={urls}"))?
                .to_owned();
            let ca_pem = match std::env::var("PROXIM_BENCH_TURN_CA") {
                Ok(path) => Some(std::fs::read(&path).with_context(|| format!("reading {path}"))?),
                Err(_) => None,
            };
            return Ok(Relay {
                servers: vec![IceServer {
                    urls: vec![url],
                    username: std::env::var("PROXIM_BENCH_TURN_USERNAME").ok(),
                    credential: std::env::var("PROXIM_BENCH_TURN_PASSWORD").ok(),
                }],
                ca_pem,
                _coturn: None,
            });
        }
        let coturn = Coturn::try_start(CoturnAuth::Static {
            username: "bench".into(),
            password: "bench-password".into(),
        })
        .map_err(anyhow::Error::msg)?;
        let url = match transport {
            Transport::Udp => coturn.udp_url(),
            Transport::Tcp => coturn.tcp_url(),
            Transport::Tls => coturn.tls_url(),
        };
        Ok(Relay {
            servers: vec![IceServer {
                urls: vec![url],
                username: Some("bench".into()),
                credential: Some("bench-password".into()),
            }],
            ca_pem: Some(coturn.ca_pem.clone()),
            _coturn: Some(coturn),
        })
    }

    fn configs(&self) -> (PeerConfig, PeerConfig) {
        let mut offerer = PeerConfig::new(PeerRole::Offerer, self.servers.clone());
        offerer.force_relay = true;
        offerer.turn_roots_pem = self.ca_pem.clone();
        (offerer, PeerConfig::new(PeerRole::Answerer, vec![]))
    }
}

async fn establish_relayed(relay: &Relay) -> anyhow::Result<(Established, Established)> {
    let (offerer, answerer) = relay.configs();
    let pair = establish_with(offerer, answerer).await?;
    let stats = pair.0.connection.stats().await.context("stats")?;
    anyhow::ensure!(
        stats.local.kind == CandidateKind::Relay,
        "expected a relayed path, got {:?}",
        stats.path()
    );
    Ok(pair)
}

fn bulk(params: &Params, transport: Transport) -> anyhow::Result<Outcome> {
    let params = *params;
    runtime()?.block_on(async move {
        let relay = Relay::get(transport)?;
        let deadline = tokio::time::Instant::now() + params.row_limit;
        let pair = tokio::time::timeout_at(deadline, establish_relayed(&relay))
            .await
            .context("establish timed out")??;
        bulk_over(params, deadline, pair).await
    })
}

/// Row: DC-BULK through coturn, relay reached over UDP.
pub(crate) fn run_bulk_udp(params: &Params) -> anyhow::Result<Outcome> {
    bulk(params, Transport::Udp)
}

/// Row: DC-BULK through coturn, relay reached over TCP.
pub(crate) fn run_bulk_tcp(params: &Params) -> anyhow::Result<Outcome> {
    bulk(params, Transport::Tcp)
}

/// Row: DC-BULK through coturn, relay reached over TLS.
pub(crate) fn run_bulk_tls(params: &Params) -> anyhow::Result<Outcome> {
    bulk(params, Transport::Tls)
}

/// Row: establish with the offerer relay-only (UDP), repeated: allocation included.
pub(crate) fn run_setup(params: &Params) -> anyhow::Result<Outcome> {
    let params = *params;
    runtime()?.block_on(async move {
        let relay = Relay::get(Transport::Udp)?;
        // Fewer trials than the direct row: each one makes (and releases) an allocation.
        let mut params = params;
        params.setup_trials = params.setup_trials.min(50);
        Ok(repeat_setup(
            &params,
            TRIAL_TIMEOUT,
            async || establish_relayed(&relay).await,
            async |(offerer, answerer): (Established, Established)| {
                tokio::join!(offerer.connection.close(), answerer.connection.close());
            },
        )
        .await)
    })
}
