//! minitower's event output: JSON lines through a bounded queue that a
//! thread of its own drains, so that a stdout nobody reads costs lines,
//! never renewals.

use std::io::Write;
use std::time::Duration;

use serde_json::json;

/// Lines waiting for stdout before new ones are dropped.
pub(super) const OUTPUT_QUEUE: usize = 1024;

/// The event output: a bounded queue drained by a thread of its own.
///
/// Writing to stdout can block for ever (a pipe nobody reads, `| less`, a
/// stuck log shipper). The lease loop runs on one thread and must never wait
/// for it: lines are queued without blocking, and when the queue is full
/// they are dropped and counted; the writer reports the count in an
/// `{"event":"dropped","count":N}` line as soon as stdout moves again.
pub(super) struct Output {
    pub(super) tx: Option<std::sync::mpsc::SyncSender<String>>,
    pub(super) dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub(super) done: std::sync::mpsc::Receiver<()>,
}

impl Output {
    pub(super) fn start() -> Output {
        use std::sync::atomic::Ordering;
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(OUTPUT_QUEUE);
        let (done_tx, done) = std::sync::mpsc::channel();
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let d = dropped.clone();
        let spawned = std::thread::Builder::new()
            .name("minitower-output".into())
            .spawn(move || {
                let stdout = std::io::stdout();
                for line in rx {
                    let mut o = stdout.lock();
                    let n = d.swap(0, Ordering::Relaxed);
                    if n > 0 {
                        let _ = writeln!(o, "{}", json!({"event":"dropped","count":n}));
                    }
                    // A closed stdout must not stop a Tower from holding
                    // its leases: write errors are ignored.
                    let _ = writeln!(o, "{line}");
                    let _ = o.flush();
                }
                let _ = done_tx.send(());
            });
        if let Err(e) = spawned {
            eprintln!("minitower: cannot start the output thread ({e}); events are not printed");
        }
        Output {
            tx: Some(tx),
            dropped,
            done,
        }
    }

    /// Queues one line; never blocks.
    pub(super) fn line(&self, s: String) {
        use std::sync::mpsc::TrySendError;
        if let Some(tx) = &self.tx
            && let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(s)
        {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Lets the writer print what is queued, waiting at most `timeout` (a
    /// stuck stdout must not keep a stopping Tower alive).
    pub(super) fn finish(mut self, timeout: Duration) {
        self.tx = None;
        let _ = self.done.recv_timeout(timeout);
    }
}

pub(super) static OUTPUT: std::sync::OnceLock<std::sync::Mutex<Option<Output>>> =
    std::sync::OnceLock::new();

pub(super) fn with_output(f: impl FnOnce(&Output)) {
    if let Some(m) = OUTPUT.get()
        && let Some(o) = m.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
    {
        f(o);
    }
}

pub(super) fn out(v: serde_json::Value) {
    with_output(|o| o.line(v.to_string()));
}

pub(super) fn out_line(s: &str) {
    with_output(|o| o.line(s.to_string()));
}

/// Prints an adoption report. Held events of adoption are summarized by the
/// `adopted` lines.
pub(super) fn print_adoption(report: &tower_client::AdoptReport, retry: bool) {
    for h in &report.adopted {
        let i = h.info();
        out(
            json!({"event":"adopted","id":i.id,"pid":i.pid,"child_pid":i.child_pid,"epoch":h.epoch(),"retry":retry}),
        );
    }
    for g in &report.gone {
        out(json!({"event":"pruned","id":g.id,"pid":g.pid,"reason":"process gone"}));
    }
    for f in &report.failed {
        eprintln!(
            "minitower: cannot adopt {} (left running and kept in the registry; retrying): {}",
            f.entry.id, f.error
        );
        out(
            json!({"event":"adopt_failed","id":f.entry.id,"pid":f.entry.pid,"error":f.error.to_string(),"retry":retry}),
        );
    }
}

/// Prints what a tidy removed (nothing when it removed nothing).
pub(super) fn print_tidy(done: &tower_client::TidyDone) {
    if done.done.is_empty() && done.failed.is_empty() {
        return;
    }
    let removed: Vec<_> = done
        .done
        .iter()
        .map(|a| json!({"what":a.what,"id":a.id,"path":a.path,"bytes":a.bytes,"reason":a.reason}))
        .collect();
    let failed: Vec<_> = done
        .failed
        .iter()
        .map(|(a, e)| json!({"what":a.what,"id":a.id,"path":a.path,"error":e}))
        .collect();
    out(json!({"event":"tidied","removed":removed,"failed":failed}));
}
