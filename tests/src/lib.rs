//! The one helper the end-to-end tests (`tests/tests/*.rs`) need beyond `proxim-testkit`: a
//! real signaling server in process, on loopback port 0. It lives here, not in the testkit,
//! so that the testkit never depends on `proxim-server` (whose own tests may use it).
#![warn(missing_docs)]

use proxim_server::{RunningServer, Server, ServerConfig};

/// Start a loopback server, its config adjusted by `configure`; tracing goes to the test's
/// output ([`proxim_testkit::init_tracing`]).
pub async fn start_server(configure: impl FnOnce(&mut ServerConfig)) -> RunningServer {
    proxim_testkit::init_tracing();
    let mut config = ServerConfig::loopback();
    configure(&mut config);
    Server::start(config).await.expect("server starts")
}
