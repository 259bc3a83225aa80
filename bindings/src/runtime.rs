//! The bindings' own multi-thread tokio runtime, shared by every `ProximCore` in the process.
//!
//! uniffi's async support polls the futures it gets from Kotlin on its own terms; the work
//! itself always runs here: [`run`] spawns it on this runtime and hands uniffi a future that
//! only waits for the result. Dropping that future (the Kotlin coroutine was cancelled) aborts
//! the task, which drops core's future and so cancels whatever it was doing.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::task::JoinHandle;

use crate::ProximException;

/// The process-wide runtime, or why it could not be started.
static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The runtime's handle, starting the runtime on first use.
pub(crate) fn handle() -> Result<&'static Handle, ProximException> {
    let runtime = RUNTIME.get_or_init(|| {
        let workers = std::thread::available_parallelism()
            .map(|n| n.get().clamp(2, 4))
            .unwrap_or(2);
        Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("proxim-rt")
            .enable_all()
            .on_thread_start(crate::platform::on_thread_start)
            .build()
            .map_err(|e| format!("starting the tokio runtime: {e}"))
    });
    match runtime {
        Ok(runtime) => Ok(runtime.handle()),
        Err(reason) => Err(ProximException::Internal {
            reason: reason.clone(),
        }),
    }
}

/// Run `work` on the runtime and wait for it. Dropping the returned future aborts the work.
pub(crate) async fn run<T, F>(work: F) -> Result<T, ProximException>
where
    F: Future<Output = Result<T, ProximException>> + Send + 'static,
    T: Send + 'static,
{
    let task = AbortOnDrop(handle()?.spawn(work));
    match task.await {
        Ok(result) => result,
        Err(error) if error.is_cancelled() => Err(ProximException::Cancelled),
        Err(error) => Err(ProximException::Internal {
            reason: format!("task panicked: {error}"),
        }),
    }
}

/// Spawn `work` on the runtime without waiting for it (best effort when the runtime is gone).
pub(crate) fn spawn_detached<F>(work: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    match handle() {
        Ok(handle) => drop(handle.spawn(work)),
        Err(error) => tracing::warn!(%error, "cannot run background work"),
    }
}

/// A task handle that aborts the task when dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn dropping_the_waiter_aborts_the_work() {
        struct SetOnDrop(Arc<AtomicBool>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = SetOnDrop(dropped.clone());
        let waiter = run(async move {
            let _flag = flag;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        });
        // Poll once on a throwaway runtime so the task is spawned, then drop the waiter.
        let local = Builder::new_current_thread().enable_all().build().unwrap();
        local.block_on(async {
            let _ = tokio::time::timeout(Duration::from_millis(50), waiter).await;
        });
        for _ in 0..200 {
            if dropped.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the work was not aborted");
    }

    #[test]
    fn results_and_errors_come_back() {
        let local = Builder::new_current_thread().enable_all().build().unwrap();
        assert_eq!(local.block_on(run(async { Ok(7) })), Ok(7));
        assert_eq!(
            local.block_on(run(async { Err::<(), _>(ProximException::Rejected) })),
            Err(ProximException::Rejected)
        );
    }
}
