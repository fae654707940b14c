//! Blocking work (the kill ladder) run off the runtime thread without
//! depending on being able to start a thread.
//!
//! Why not `tokio::task::spawn_blocking`: when the blocking pool has no
//! thread and the system refuses a new one (EAGAIN: a full pid table, the
//! very pile-up this product exists to prevent), `spawn_blocking` panics.
//! In a shellper that panic would unwind its main task before the kill
//! ladder ran, and its tree would outlive it. Here a refused thread means
//! the work runs on the caller's thread instead: the runtime stalls for
//! the ladder's duration, and the tree still dies.

use std::sync::{Arc, Mutex, PoisonError};

/// The work panicked on its thread (its panic was printed there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the blocking work panicked on its thread")]
pub struct Panicked;

/// Runs `f` on a thread of its own and waits for its result without
/// blocking the runtime; if no thread can be started, runs it here.
pub async fn run<F, T>(name: &str, f: F) -> Result<T, Panicked>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    run_with(f, |body| {
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(body)
            .map(drop)
    })
    .await
}

/// [`run`] with the thread start given (tests refuse it).
async fn run_with<F, T>(
    f: F,
    start: impl FnOnce(Box<dyn FnOnce() + Send>) -> std::io::Result<()>,
) -> Result<T, Panicked>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    // The closure stays reachable from here until a thread takes it, so a
    // refused start leaves it to run inline.
    let slot = Arc::new(Mutex::new(Some(f)));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let theirs = slot.clone();
    let body = Box::new(move || {
        let f = theirs.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(f) = f {
            let _ = tx.send(f());
        }
    });
    match start(body) {
        Ok(()) => {
            if let Ok(v) = rx.await {
                return Ok(v);
            }
            // The thread ended without a result: `f` panicked there (it
            // was taken), or it never ran (left in the slot).
            let f = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            f.map(|f| f()).ok_or(Panicked)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no thread for blocking work; running it inline");
            let f = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            // Invariant: the refused start dropped its body unrun, so
            // nothing took `f` out of the slot.
            Ok(f.expect("a refused thread never ran the work")())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn runs_on_a_thread_of_its_own() {
        let here = std::thread::current().id();
        let there = run("test", std::thread::current).await.unwrap().id();
        assert_ne!(here, there);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn runs_inline_when_no_thread_can_start() {
        let here = std::thread::current().id();
        let refuse =
            |_body: Box<dyn FnOnce() + Send>| Err(std::io::Error::from_raw_os_error(libc::EAGAIN));
        let (ran_on, v) = run_with(|| (std::thread::current().id(), 42), refuse)
            .await
            .unwrap();
        assert_eq!(v, 42);
        assert_eq!(ran_on, here);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panic_on_the_thread_is_an_error_not_a_second_run() {
        let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let r = runs.clone();
        let out: Result<(), Panicked> = run("test", move || {
            r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            panic!("boom (expected by the test)");
        })
        .await;
        assert_eq!(out, Err(Panicked));
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
