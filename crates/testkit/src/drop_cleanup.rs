//! Clean-up from `Drop`, which cannot await.

use std::future::Future;

/// Runs `cleanup` to its end on a thread of its own with a runtime of its
/// own, and waits for it.
///
/// `Drop` cannot await, and the test's runtime may be single-threaded and
/// busy running this very drop, so a fixture that must remove what it made
/// (a namespace, a proxy, a Node) even when its test failed does it here.
/// The future is made on that thread, so what it needs (a client) is built
/// in the runtime that drives it. Nothing is reported: clean-up is best
/// effort.
pub fn run_to_end<F, Fut>(cleanup: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let worker = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(cleanup());
    });
    let _ = worker.join();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn runs_the_cleanup_to_its_end_even_inside_a_busy_runtime() {
        let done = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&done);
        run_to_end(move || async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            flag.store(true, Ordering::SeqCst);
        });
        assert!(done.load(Ordering::SeqCst));
    }
}
