//! The SDK's own background tokio runtime, used to run async work from
//! synchronous contexts (a proxy's `Deref`, an [`OwnedProxy`](crate::OwnedProxy)'s
//! `Drop`).
//!
//! The runtime is created lazily on first use: a multi-thread runtime with
//! two worker threads named `proxymesh-sdk`. Blocking on it is safe from a
//! plain thread, from a multi-thread tokio runtime (the wait is wrapped in
//! [`tokio::task::block_in_place`]) and from a current-thread runtime: the
//! future runs on the SDK runtime, never on the blocked caller's runtime, and
//! the [`DaemonConnector`](crate::DaemonConnector) uses a dedicated HTTP
//! client there so it never waits on a connection driven by the blocked
//! runtime.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Handle, Runtime, RuntimeFlavor};

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// Name of the SDK runtime's threads.
pub const THREAD_NAME: &str = "proxymesh-sdk";

/// The SDK runtime's handle, creating the runtime on first call.
///
/// # Panics
/// If the operating system refuses to start the runtime's threads.
pub fn handle() -> &'static Handle {
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name(THREAD_NAME)
                .enable_all()
                .build()
                .expect("proxymesh: cannot start the SDK's background tokio runtime")
        })
        .handle()
}

/// Whether the calling code runs on the SDK runtime (without creating it).
pub fn on_sdk_runtime() -> bool {
    match (RUNTIME.get(), Handle::try_current()) {
        (Some(rt), Ok(current)) => rt.handle().id() == current.id(),
        _ => false,
    }
}

/// Run `fut` to completion on the SDK runtime and wait for its output,
/// from any synchronous context (see the module docs).
///
/// # Panics
/// If `fut` panics (the panic is propagated).
pub fn block_on<F>(fut: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle().spawn(async move {
        let out = fut.await;
        let _ = tx.send(out);
    });
    let wait = move || rx.recv();
    let result = match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    };
    match result {
        Ok(out) => out,
        // The task was dropped before sending: it panicked (the panic message
        // has already been printed by the runtime's worker).
        Err(_) => panic!("proxymesh: a background task on the SDK runtime panicked"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_on_from_plain_thread() {
        assert_eq!(block_on(async { 1 + 1 }), 2);
        assert!(block_on(async { on_sdk_runtime() }));
        assert!(!on_sdk_runtime());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn block_on_from_current_thread_runtime() {
        assert_eq!(block_on(async { 3 }), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn block_on_from_multi_thread_runtime() {
        assert_eq!(block_on(async { 4 }), 4);
        // Nested: blocking from inside the SDK runtime itself.
        let v = handle()
            .spawn(async { block_on(async { 5 }) })
            .await
            .unwrap();
        assert_eq!(v, 5);
    }
}
