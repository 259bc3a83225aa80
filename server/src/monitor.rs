//! The monitoring HTTP routes and who may read them: `/healthz`, `/api/stats`,
//! `/api/sessions` (paged), `/api/config`, `/api/events` (the event sinks' state), `/api/state`
//! (the state store's), `/metrics`
//! (Prometheus text) and the web clients' `/api/turn/config`, on the public listener and on
//! the admin listener.
//!
//! Access, in one place ([`require_admin_token`]):
//!
//! | route                                        | public listener            | admin listener |
//! |----------------------------------------------|----------------------------|----------------|
//! | `/healthz`, `/api/stats`                     | open                       | open           |
//! | `/metrics`, `/api/sessions`, `/api/config`,  | bearer token, else 401/404 | open           |
//! | `/api/events`, `/api/state`                  |                            |                |
//! | `/api/turn/config`                           | open, rate-limited per IP  | —              |
//!
//! On the public listener the protected routes answer 404 when no admin token is configured
//! (they do not exist there), and 401 with `WWW-Authenticate: Bearer` when one is and the
//! request does not carry it. The admin listener binds loopback by default
//! ([`crate::DEFAULT_ADMIN_BIND`]) and needs no token.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use proxim_protocol::{ConnectionId, PROTOCOL_VERSION, SessionId};
use rand::Rng;

use crate::events::Event;
use serde::Deserialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::config::REDACTED;
use crate::hub::SessionPage;
use crate::limits::TokenBucket;
use crate::listener;
use crate::proxy::client_ip;
use crate::server::Shared;

mod metrics;

pub(crate) use metrics::Metrics;

/// Sessions per `/api/sessions` page unless `?limit=` says otherwise.
pub(crate) const DEFAULT_SESSIONS_PAGE: usize = 100;

/// The largest `?limit=` of `/api/sessions`.
pub(crate) const MAX_SESSIONS_PAGE: usize = 1000;

/// `/api/turn/config` requests one client IP may make in a burst…
const TURN_CONFIG_BURST: u32 = 5;

/// …and per minute, sustained.
const TURN_CONFIG_PER_MINUTE: u32 = 10;

/// Client IPs the `/api/turn/config` limiter remembers before it forgets the idle ones.
const TURN_CONFIG_TRACKED_IPS: usize = 4096;

/// Everything the monitoring routes read: the server's shared state, the metrics registry and
/// the `/api/turn/config` limiter. Cheap to clone (one per listener).
#[derive(Debug, Clone)]
pub(crate) struct Monitor {
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    turn_config: Arc<Mutex<PerIpBudget>>,
}

impl Monitor {
    /// The monitoring state of the server behind `shared`, with its metrics registry.
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Monitor {
            metrics: Arc::new(Metrics::new(shared.clone())),
            shared,
            turn_config: Arc::new(Mutex::new(PerIpBudget::default())),
        }
    }

    /// The routes of the public listener: open ones, the protected ones behind the token,
    /// and `/api/turn/config`.
    pub(crate) fn public_routes(&self) -> Router {
        let guarded = protected_routes().route_layer(middleware::from_fn_with_state(
            self.clone(),
            require_admin_token,
        ));
        open_routes()
            .merge(guarded)
            .route("/api/turn/config", get(turn_config))
            .with_state(self.clone())
    }

    /// The routes of the admin listener: every monitoring route, no token.
    pub(crate) fn admin_routes(&self) -> Router {
        open_routes()
            .merge(protected_routes())
            .with_state(self.clone())
    }
}

/// The admin listener: serves [`Monitor::admin_routes`] until dropped.
#[derive(Debug)]
pub(crate) struct AdminListener {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl AdminListener {
    /// Bind `addr` (port 0 picks a free port) and serve `monitor`'s admin routes there, through
    /// the same accept loop as the public listener: the same backlog, header timeout and socket
    /// cap (its sockets count against the server's).
    pub(crate) async fn start(addr: SocketAddr, monitor: &Monitor) -> std::io::Result<Self> {
        let config = &monitor.shared.config;
        let listener = listener::listen(addr, config.listen_backlog)?;
        let addr = listener.local_addr()?;
        let app = monitor.admin_routes();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            listener::serve(
                listener,
                app,
                monitor.shared.sockets.clone(),
                config.header_timeout,
                stopped,
            )
            .instrument(tracing::info_span!("admin", %addr)),
        );
        tracing::info!(%addr, "admin listener (monitoring without a token) listening");
        Ok(AdminListener {
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop serving and wait for the open requests to finish.
    pub(crate) async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for AdminListener {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Routes and access
// ---------------------------------------------------------------------------------------------

/// The routes anyone may read.
fn open_routes() -> Router<Monitor> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/stats", get(api_stats))
}

/// The routes that show sessions, configuration and metrics.
fn protected_routes() -> Router<Monitor> {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/api/sessions", get(api_sessions))
        .route("/api/config", get(api_config))
        .route("/api/events", get(api_events))
        .route("/api/state", get(api_state))
}

/// Let a request through the public listener's protected routes only with
/// `Authorization: Bearer <admin token>`: 404 without a configured token, 401 without the
/// right one.
async fn require_admin_token(
    State(monitor): State<Monitor>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &monitor.shared.config.admin_token else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if given.is_some_and(|given| token.matches(given.trim())) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
        "this route needs the admin token: Authorization: Bearer <PROXIM_ADMIN_TOKEN>\n",
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

async fn healthz(State(monitor): State<Monitor>) -> Json<serde_json::Value> {
    let shared = &monitor.shared;
    let connections = shared.with_hub(|hub, _| hub.stats().connections_open);
    Json(serde_json::json!({
        "status": "ok",
        "uptime_s": shared.started.elapsed().as_secs(),
        "connections": connections,
    }))
}

async fn api_stats(State(monitor): State<Monitor>) -> Response {
    Json(monitor.shared.stats()).into_response()
}

/// The query of `/api/sessions`.
#[derive(Debug, Deserialize)]
struct PageQuery {
    /// Sessions per page: [`DEFAULT_SESSIONS_PAGE`] by default, at most
    /// [`MAX_SESSIONS_PAGE`].
    limit: Option<usize>,
    /// The previous page's `next`.
    after: Option<String>,
}

async fn api_sessions(
    State(monitor): State<Monitor>,
    Query(query): Query<PageQuery>,
) -> Result<Json<SessionPage>, (StatusCode, String)> {
    let after = match query.after {
        Some(cursor) => Some(SessionId::new(cursor).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("`after` must be the `next` of a previous page: {e}\n"),
            )
        })?),
        None => None,
    };
    let limit = query
        .limit
        .unwrap_or(DEFAULT_SESSIONS_PAGE)
        .clamp(1, MAX_SESSIONS_PAGE);
    let names = monitor.shared.config.expose_device_names;
    let page = monitor
        .shared
        .with_hub(|hub, now| hub.sessions_page(after.as_ref(), limit, names, now));
    Ok(Json(page))
}

async fn api_config(State(monitor): State<Monitor>) -> Json<serde_json::Value> {
    let shared = &monitor.shared;
    let c = &shared.config;
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Json(serde_json::json!({
        "protocol_version": PROTOCOL_VERSION,
        "ice": c.ice.redacted_json(),
        "stun_responder": shared.stun_addr.map(|bound| serde_json::json!({
            "bind": bound.to_string(),
            "public_host": c.public_host,
        })),
        "heartbeat_interval_ms": ms(c.heartbeat_interval),
        "heartbeat_timeout_ms": ms(c.heartbeat_timeout),
        "prompt_timeout_ms": ms(c.prompt_timeout),
        "limits": {
            "send_queue_capacity": c.send_queue_capacity,
            "listen_backlog": c.listen_backlog,
            "max_frame_bytes": c.max_frame_bytes,
            "code_length": c.code_length,
            "code_ttl_ms": ms(c.code_ttl),
            "code_reservation_s": c.code_reservation.as_secs(),
            "rate_limit": c.rate_limit,
            "rate_burst": c.rate_burst,
            "rate_strikes": c.rate_strikes,
            "max_connections_per_ip": c.max_connections_per_ip,
            "max_connections": c.max_connections,
            "pair_attempts": c.pair_attempts,
            "pair_window_s": c.pair_window.as_secs(),
            "trusted_proxies": c.trusted_proxies.to_string(),
        },
        "monitoring": {
            "admin_token": c.admin_token.as_ref().map(|_| REDACTED),
            "admin_bind": c.admin_bind.map(|a| a.to_string()),
            "expose_device_names": c.expose_device_names,
        },
        "events": {
            "sinks": c.events.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "queue": c.events_queue,
            "buffer": c.events_buffer,
        },
        "state": c.state.as_ref().map(ToString::to_string),
    }))
}

/// `/api/state`: the state store's writer — up or down, ops written and dropped, resyncs,
/// what was restored at start; `null` without a store.
async fn api_state(State(monitor): State<Monitor>) -> Json<serde_json::Value> {
    let status = monitor.shared.state.as_ref().map(|s| s.status());
    Json(serde_json::json!({ "state": status }))
}

/// `/api/events`: every event sink's state, counters and latest failure.
async fn api_events(State(monitor): State<Monitor>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "sinks": monitor.shared.events.status() }))
}

async fn metrics_text(State(monitor): State<Monitor>) -> Response {
    match monitor.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// `/api/turn/config`: the ICE servers for a web client, in the `RTCConfiguration` shape,
/// with TURN REST credentials minted for this request. Rate-limited per client IP.
async fn turn_config(
    State(monitor): State<Monitor>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let shared = &monitor.shared;
    let client = client_ip(remote.ip(), &headers, &shared.config.trusted_proxies);
    let now = tokio::time::Instant::now().into_std();
    let allowed = monitor
        .turn_config
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .try_take(client, now);
    if !allowed {
        monitor.metrics.turn_config_refused();
        shared.events.emit(Event::LimitHit {
            limit: "turn_config_rate",
            conn: None,
            ip: Some(client),
            suppressed: 0,
        });
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, HeaderValue::from_static("6"))],
            "too many ICE configuration requests from this address\n",
        )
            .into_response();
    }
    monitor.metrics.turn_config_served();
    let http_host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let embedded_stun = shared.embedded_stun_url(http_host);
    // TURN REST usernames name the client they were minted for; a web client has no
    // connection, so each request gets a fresh random id.
    let Ok(id) = ConnectionId::new(format!("{:032x}", rand::rng().random::<u128>())) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let ice_servers =
        shared
            .config
            .ice
            .ice_servers_at(&id, SystemTime::now(), embedded_stun.as_ref());
    if let Some(ttl) = shared.config.ice.turn_rest_ttl() {
        shared.events.emit(Event::TurnCredentialsMinted {
            conn: None,
            ip: Some(client),
            via: "api",
            ttl_s: ttl.as_secs(),
        });
    }
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(serde_json::json!({ "iceServers": ice_servers })),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// The `/api/turn/config` limiter
// ---------------------------------------------------------------------------------------------

/// A request budget per client IP: [`TURN_CONFIG_BURST`] at once, [`TURN_CONFIG_PER_MINUTE`]
/// sustained.
#[derive(Debug, Default)]
struct PerIpBudget {
    buckets: HashMap<IpAddr, TokenBucket>,
}

impl PerIpBudget {
    /// Take one request from `ip`'s budget; `false` when it is spent.
    fn try_take(&mut self, ip: IpAddr, now: std::time::Instant) -> bool {
        if self.buckets.len() >= TURN_CONFIG_TRACKED_IPS {
            // A full bucket is the same as none: forget those.
            self.buckets.retain(|_, bucket| {
                bucket.refill(now);
                !bucket.is_full()
            });
        }
        let bucket = self.buckets.entry(ip).or_insert_with(|| {
            let per_second = f64::from(TURN_CONFIG_PER_MINUTE) / 60.0;
            TokenBucket::with_rate(per_second, TURN_CONFIG_BURST, now)
        });
        bucket.refill(now);
        bucket.try_take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_config_budget_allows_the_burst_then_ten_a_minute() {
        let mut budget = PerIpBudget::default();
        let (a, b) = (IpAddr::from([198, 18, 0, 1]), IpAddr::from([198, 18, 0, 2]));
        let start = std::time::Instant::now();
        for _ in 0..TURN_CONFIG_BURST {
            assert!(budget.try_take(a, start));
        }
        assert!(!budget.try_take(a, start));
        assert!(budget.try_take(b, start), "budgets are per IP");
        assert!(!budget.try_take(a, start + Duration::from_secs(5)));
        assert!(budget.try_take(a, start + Duration::from_secs(7)));
    }
}
