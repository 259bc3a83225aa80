//! `GET /metrics`: one Prometheus registry, built at start, whose collector reads the hub's
//! [`Stats`] at scrape time (nothing is counted twice: the hub keeps its plain counters, this
//! only names them), plus the driver's own counters and the process's memory and open files.
//!
//! Every metric is named `proxim_…`; counters get Prometheus' `_total` suffix when encoded.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::events::SinkStatus;
use crate::hub::{ReportStats, Stats};
use crate::server::Shared;

/// The `Content-Type` of `/metrics`: the Prometheus text format, version 0.0.4.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The server's metrics registry.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    turn_config_served: Counter,
    turn_config_refused: Counter,
}

impl Metrics {
    /// The registry of the server behind `shared`.
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(HubCollector { shared }));
        let turn_config_served = Counter::default();
        let turn_config_refused = Counter::default();
        registry.register(
            "proxim_turn_config_requests",
            "`/api/turn/config` requests answered with ICE servers",
            turn_config_served.clone(),
        );
        registry.register(
            "proxim_turn_config_rate_limited",
            "`/api/turn/config` requests refused (429) by the per-IP limit",
            turn_config_refused.clone(),
        );
        Metrics {
            registry,
            turn_config_served,
            turn_config_refused,
        }
    }

    /// The scrape: every metric in the Prometheus text format.
    pub(crate) fn encode(&self) -> Result<String, fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// Count an `/api/turn/config` answer.
    pub(crate) fn turn_config_served(&self) {
        self.turn_config_served.inc();
    }

    /// Count an `/api/turn/config` request refused by the rate limit.
    pub(crate) fn turn_config_refused(&self) {
        self.turn_config_refused.inc();
    }
}

/// Reads the hub's [`Stats`] and the process's state at each scrape.
#[derive(Debug)]
struct HubCollector {
    shared: Arc<Shared>,
}

impl Collector for HubCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let stats = self.shared.stats();
        for (name, help, value) in counters(&stats) {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)?;
        }
        for (name, help, value) in gauges(&stats).into_iter().chain(process_gauges()) {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(metric)?;
        }
        let pairings = [
            ("accepted", stats.pairs_accepted),
            ("rejected", stats.pairs_rejected),
            ("timed_out", stats.pairs_timed_out),
            ("unknown_code", stats.unknown_codes),
            ("code_expired", stats.expired_codes),
            ("code_used", stats.used_codes),
            ("desktop_offline", stats.desktops_offline),
            ("too_many_attempts", stats.pair_attempts_refused),
        ];
        encode_family(
            &mut encoder,
            ("proxim_pairings", "Pair and connect requests by outcome"),
            "outcome",
            pairings.iter().map(|&(outcome, n)| (outcome, n)),
        )?;
        encode_family(
            &mut encoder,
            (
                "proxim_errors_sent",
                "`error` messages sent to clients, by code",
            ),
            "code",
            stats
                .errors_by_code
                .iter()
                .map(|(code, &n)| (code.as_str(), n)),
        )?;
        let latency = &stats.pair_latency;
        let mut metric = encoder.encode_descriptor(
            "proxim_pair_latency_seconds",
            "From a pair or connect request to the pair result of the desktop's answer or the \
             prompt's expiry",
            None,
            MetricType::Histogram,
        )?;
        metric.encode_histogram::<NoLabelSet>(
            latency.sum_seconds(),
            latency.count(),
            &latency.buckets(),
            None,
        )?;
        let reports = &stats.reports;
        encode_family(
            &mut encoder,
            (
                "proxim_connection_reports",
                "Clients' reports of their direct connections, by outcome",
            ),
            "outcome",
            [
                ("connected", reports.connected),
                ("failed", reports.failed),
                ("closed", reports.closed),
                ("dropped", reports.dropped),
            ]
            .into_iter(),
        )?;
        encode_family(
            &mut encoder,
            (
                "proxim_connections_by_path",
                "Direct connections reported up, by path (host, srflx, prflx, relay)",
            ),
            "path",
            ReportStats::PATHS
                .iter()
                .copied()
                .zip(reports.connected_by_path.iter().copied()),
        )?;
        self.encode_event_sinks(&mut encoder)?;
        self.encode_state(&mut encoder)
    }
}

impl HubCollector {
    /// The state store's writer, when there is one.
    fn encode_state(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let Some(state) = self.shared.state.as_ref().map(|s| s.status()) else {
            return Ok(());
        };
        let gauges = [
            (
                "proxim_state_up",
                "1 when the state store takes writes, else 0 (serving from memory)",
                u64::from(state.state == "up"),
            ),
            (
                "proxim_state_queued",
                "State changes waiting for the store",
                state.queued as u64,
            ),
        ];
        for (name, help, value) in gauges {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value as i64).encode(metric)?;
        }
        let counters = [
            (
                "proxim_state_ops_written",
                "State changes written to the store",
                state.ops_written,
            ),
            (
                "proxim_state_ops_dropped",
                "State changes not written (the store was down or behind; rewritten on recovery)",
                state.ops_dropped,
            ),
            (
                "proxim_state_resyncs",
                "Times the store was rewritten from memory",
                state.resyncs,
            ),
            (
                "proxim_state_failures",
                "Writes to the state store that failed",
                state.failures,
            ),
        ];
        for (name, help, value) in counters {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)?;
        }
        Ok(())
    }

    /// The event sinks' state: up (1/0), events delivered, dropped and queued, connects.
    fn encode_event_sinks(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let sinks = self.shared.events.status();
        if sinks.is_empty() {
            return Ok(());
        }
        type Read = fn(&SinkStatus) -> u64;
        let families: [(&str, &str, MetricType, Read); 5] = [
            (
                "proxim_event_sink_up",
                "1 when the event sink delivers (its broker is connected), else 0",
                MetricType::Gauge,
                |s| u64::from(s.state == "up"),
            ),
            (
                "proxim_events_delivered",
                "Events written (JSON lines) or confirmed by the broker (AMQP)",
                MetricType::Counter,
                |s| s.delivered,
            ),
            (
                "proxim_events_dropped",
                "Events lost: the sink's buffer was full, a write failed or the broker refused",
                MetricType::Counter,
                |s| s.dropped,
            ),
            (
                "proxim_event_sink_queued",
                "Events waiting in the sink's buffer",
                MetricType::Gauge,
                |s| s.queued,
            ),
            (
                "proxim_event_sink_connects",
                "Times the sink connected to its broker",
                MetricType::Counter,
                |s| s.connects,
            ),
        ];
        for (name, help, kind, read) in families {
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for sink in &sinks {
                let labels = [("sink", sink.sink.as_str())];
                let metric = family.encode_family(&labels)?;
                match kind {
                    MetricType::Counter => ConstCounter::new(read(sink)).encode(metric)?,
                    _ => ConstGauge::new(read(sink) as i64).encode(metric)?,
                }
            }
        }
        Ok(())
    }
}

/// The counters read from [`Stats`]: `(name, help, value)`.
fn counters(s: &Stats) -> [(&'static str, &'static str, u64); 22] {
    [
        (
            "proxim_connections",
            "WebSocket connections accepted",
            s.connections_total,
        ),
        (
            "proxim_pair_requests",
            "Pair requests (by code) received",
            s.pair_requests,
        ),
        (
            "proxim_connect_requests",
            "Connect requests (by device id) received",
            s.connect_requests,
        ),
        (
            "proxim_codes_retired",
            "Codes retired: expired or renewed",
            s.codes_retired,
        ),
        (
            "proxim_signals_relayed",
            "Signals relayed between session members",
            s.signals_relayed,
        ),
        (
            "proxim_members_away",
            "Session members whose connection was lost, kept for a resume",
            s.members_away,
        ),
        (
            "proxim_sessions_resumed",
            "Sessions a member took back with resume on a new connection",
            s.sessions_resumed,
        ),
        (
            "proxim_resumes_refused",
            "Resumes refused: the session is over or the token is not the member's",
            s.resumes_refused,
        ),
        (
            "proxim_ice_refreshes",
            "refresh_ice_servers answered (fresh TURN credentials)",
            s.ice_refreshes,
        ),
        (
            "proxim_peers_restarted",
            "peer_restarted hints: an away member's device connected afresh",
            s.peers_restarted,
        ),
        (
            "proxim_errors",
            "`error` messages sent, all codes",
            s.errors_sent,
        ),
        (
            "proxim_frames_malformed",
            "Frames that did not decode",
            s.frames_malformed,
        ),
        (
            "proxim_stale_dropped",
            "Connections dropped for silence",
            s.stale_dropped,
        ),
        (
            "proxim_queue_drops",
            "Connections dropped because their send queue was full (slow readers)",
            s.slow_readers_dropped,
        ),
        (
            "proxim_rate_limited_frames",
            "Frames refused by the per-connection budget",
            s.frames_rate_limited,
        ),
        (
            "proxim_rate_limit_disconnects",
            "Connections cut off for flooding past their budget",
            s.rate_limit_disconnects,
        ),
        (
            "proxim_connections_refused_per_ip",
            "Upgrades refused (429) by the per-IP connection cap",
            s.connections_refused_per_ip,
        ),
        (
            "proxim_pair_attempts_refused",
            "Pair requests refused by the per-desktop attempt window",
            s.pair_attempts_refused,
        ),
        (
            "proxim_stun_requests",
            "STUN Binding requests answered",
            s.stun_requests,
        ),
        (
            "proxim_stun_malformed",
            "Datagrams the STUN responder dropped as malformed",
            s.stun_malformed,
        ),
        (
            "proxim_connections_refused_full",
            "Connections answered 503 at the socket cap",
            s.connections_refused_full,
        ),
        (
            "proxim_desktops_offline",
            "Connect requests for a desktop that is not connected",
            s.desktops_offline,
        ),
    ]
}

/// The gauges read from [`Stats`]: `(name, help, value)`.
fn gauges(s: &Stats) -> Vec<(&'static str, &'static str, i64)> {
    let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    vec![
        (
            "proxim_connections_open",
            "WebSocket connections open",
            gauge(s.connections_open),
        ),
        ("proxim_desktops", "Desktops registered", gauge(s.desktops)),
        (
            "proxim_sessions_pending",
            "Sessions waiting for the desktop's answer",
            gauge(s.sessions_pending),
        ),
        (
            "proxim_sessions_active",
            "Accepted sessions",
            gauge(s.sessions_active),
        ),
        (
            "proxim_client_ips",
            "Distinct client IPs with connections open",
            gauge(s.client_ips),
        ),
        (
            "proxim_sockets_open",
            "Client sockets open (WebSockets and HTTP requests in progress)",
            gauge(s.sockets_open),
        ),
        (
            "proxim_sockets_max",
            "The cap on open client sockets",
            gauge(s.sockets_max),
        ),
    ]
}

/// One counter family: `name{label="…"}` for each `(label value, count)` of `rows`.
fn encode_family<'a>(
    encoder: &mut DescriptorEncoder,
    (name, help): (&'static str, &'static str),
    label: &'static str,
    rows: impl Iterator<Item = (&'a str, u64)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, count) in rows {
        let labels = [(label, value)];
        ConstCounter::new(count).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The process's resident memory and open file descriptors (Linux; nothing elsewhere).
fn process_gauges() -> Vec<(&'static str, &'static str, i64)> {
    let mut gauges = Vec::new();
    #[cfg(target_os = "linux")]
    {
        if let Some(rss) = resident_memory_bytes() {
            gauges.push((
                "proxim_process_resident_memory_bytes",
                "Resident memory of the server process (VmRSS)",
                rss,
            ));
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            let open = i64::try_from(entries.count()).unwrap_or(i64::MAX);
            gauges.push((
                "proxim_process_open_fds",
                "Open file descriptors of the server process",
                open,
            ));
        }
    }
    gauges
}

/// `VmRSS` from `/proc/self/status`, in bytes.
#[cfg(target_os = "linux")]
fn resident_memory_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: i64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
    kib.checked_mul(1024)
}
