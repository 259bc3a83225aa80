//! The TCP side of the server: the listening socket (with its backlog), the accept loop, and
//! the limits that hold before a connection becomes a WebSocket — a bound on the time a
//! client may take to send its HTTP request, and a cap on open sockets below the process's
//! open-file limit, so the server refuses newcomers with a 503 instead of failing `accept`
//! (and with it `/healthz` and every other client) when descriptors run out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tower_service::Service;

/// Descriptors kept free under the open-file limit for everything that is not a client
/// socket: the listeners, the STUN socket, log files, the runtime's own.
const RESERVED_FDS: u64 = 64;

/// After `accept` fails (out of descriptors despite the cap, or a transient kernel error),
/// wait this long before the next try instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Open client sockets, capped. Every accepted connection holds a [`SocketSlot`] for as long
/// as its socket lives: through the HTTP exchange and, after an upgrade, the WebSocket.
#[derive(Debug)]
pub(crate) struct Sockets {
    open: AtomicUsize,
    max: usize,
    refused: AtomicU64,
}

impl Sockets {
    /// A cap of `max` open sockets; 0 picks one from the open-file limit.
    pub(crate) fn new(max: u32) -> Arc<Sockets> {
        let max = if max == 0 {
            default_max_sockets()
        } else {
            usize::try_from(max).unwrap_or(usize::MAX)
        };
        Arc::new(Sockets {
            open: AtomicUsize::new(0),
            max,
            refused: AtomicU64::new(0),
        })
    }

    /// The cap in effect.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Sockets open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections refused at the cap since the start.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// A slot for one more socket, or `None` at the cap (counted as refused).
    fn acquire(self: &Arc<Self>) -> Option<SocketSlot> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            });
        match taken {
            Ok(_) => Some(SocketSlot {
                sockets: self.clone(),
            }),
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

/// One open client socket; dropping it frees the slot. It is shared (`Arc`) by the HTTP
/// connection and, through the request, by the WebSocket task, so the slot lives as long as
/// the socket, whichever ends last.
#[derive(Debug)]
pub(crate) struct SocketSlot {
    sockets: Arc<Sockets>,
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.sockets.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The open-file soft limit minus a reserve; effectively unlimited when there is no limit.
fn default_max_sockets() -> usize {
    let limit = crate::rlimit::open_file_limit().unwrap_or(u64::MAX);
    usize::try_from(limit.saturating_sub(RESERVED_FDS).max(1)).unwrap_or(usize::MAX)
}

/// A TCP listener on `addr` with a listen backlog of `backlog` (tokio's `bind`, like the
/// standard library's, always asks for 128).
pub(crate) fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    // As tokio's `bind`: a restarted server can bind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    // Signaling is many small frames: without TCP_NODELAY, Nagle's algorithm and delayed
    // ACKs hold each reply back ~40 ms. Linux copies the option from the listening socket
    // to every accepted one, which saves a system call per connection (see `serve`).
    if let Err(e) = socket.set_tcp_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY on the listener");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    TcpListener::from_std(socket.into())
}

/// Accept connections and serve `app` on each (HTTP/1.1 with upgrades) until `stop` fires;
/// a client that has not sent its complete request head within `header_timeout` (counted
/// from when it is awaited, so an idle keep-alive connection too; a client trickling a byte a
/// second, or silent after connecting) is closed;
/// then stop accepting and let the open HTTP exchanges finish (the caller bounds the wait).
/// Each request carries the client's address (`ConnectInfo<SocketAddr>`) and its socket's
/// slot (`Arc<SocketSlot>`).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    sockets: Arc<Sockets>,
    header_timeout: Duration,
    mut stop: oneshot::Receiver<()>,
) {
    // Every HTTP connection task holds a receiver; `true` asks them to finish their exchange
    // and close, and the sender's `closed()` says when all of them have.
    let (draining, drain) = tokio::sync::watch::channel(false);
    // One builder for every connection: building one allocates its timer handle.
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    loop {
        let (tcp, remote) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Some(slot) = sockets.acquire() else {
            tokio::spawn(refuse_at_capacity(tcp, sockets.max()));
            continue;
        };
        let held = Arc::new(slot);
        // Linux: inherited from the listener (`listen`). Elsewhere, set on each socket.
        #[cfg(not(target_os = "linux"))]
        {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
        }
        let router = app.clone();
        let request_held = held.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            request.extensions_mut().insert(ConnectInfo(remote));
            request.extensions_mut().insert(request_held.clone());
            router.clone().call(request)
        });
        let connection = http
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let mut drain = drain.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = async { let _ = drain.wait_for(|draining| *draining).await; } => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%remote, error = %e, "HTTP connection ended with an error");
            }
            drop(held);
        });
    }
    drop(listener);
    drop(drain);
    let _ = draining.send(true);
    draining.closed().await;
}

/// Answer a connection over the cap with `503` and close it, without reading its request
/// (bounded: a client that does not read does not hold the task).
async fn refuse_at_capacity(mut tcp: TcpStream, max: usize) {
    tracing::warn!(
        max,
        "refusing a connection: the server is at its socket cap"
    );
    let body = "server at capacity, try again later\n";
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Retry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = tcp.write_all(response.as_bytes()).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `serve` relies on this on Linux instead of a `setsockopt` per connection.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0)), 16).expect("listen");
        let addr = listener.local_addr().expect("local address");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        assert!(accepted.nodelay().expect("read TCP_NODELAY"));
    }
}
