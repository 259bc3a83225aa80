//! Support for the workspace's end-to-end tests (`tests/tests/*.rs`) and its load generators
//! (`proxim-loadtest`, `proxim-sigcap`), beyond `proxim-testkit`:
//!
//! - [`start_server`]: a real signaling server in process, on loopback port 0. It lives here,
//!   not in the testkit, so that the testkit never depends on `proxim-server` (whose own tests
//!   may use it).
//! - [`child`]: `proxim serve` as a child process; [`procfs`]: its memory, CPU time and
//!   open-file limit; [`loopback_ws`]: clients from chosen loopback source addresses;
//!   [`latency`]: percentiles; [`run_generator`]: their `main`.
#![warn(missing_docs)]

pub mod child;
pub mod latency;
pub mod loopback_ws;
pub mod procfs;

use proxim_server::{RunningServer, Server, ServerConfig};

/// Start a loopback server, its config adjusted by `configure`; tracing goes to the test's
/// output ([`proxim_testkit::init_tracing`]).
pub async fn start_server(configure: impl FnOnce(&mut ServerConfig)) -> RunningServer {
    proxim_testkit::init_tracing();
    let mut config = ServerConfig::loopback();
    configure(&mut config);
    Server::start(config).await.expect("server starts")
}

/// The `main` of a load generator called `name`: `run` on a multi-threaded runtime. Exit
/// status 0 when it returns `Ok(true)`, 1 for `Ok(false)`, 2 for an error (printed).
pub fn run_generator(
    name: &str,
    run: impl std::future::Future<Output = anyhow::Result<bool>>,
) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(run) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
