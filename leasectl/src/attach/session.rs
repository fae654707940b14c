//! The session plumbing, once the handshake is done: the stdin thread, the
//! writer task (RESIZE before input), the output task, and the loop that
//! waits for whichever ends the session.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use shellper_protocol::msg::ExitMsg;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tower_client::{Output, TerminalReader, TerminalWriter};

use super::keys::DetachMatcher;
use super::modes::ModeTracker;
use super::terminal::{Signals, term_size};
use super::{AttachOpts, INPUT_QUEUE_CAP};

/// How often the stdin thread checks whether it should stop.
const STDIN_POLL: Duration = Duration::from_millis(50);

/// Why a session ended.
#[derive(Debug)]
pub(super) enum End {
    Detached,
    Exit(ExitMsg),
    Closed,
    Lost(String),
    Signal(&'static str, i32),
    TerminalGone,
}

/// What the stdin thread reports.
#[derive(Debug)]
enum StdinEvent {
    Detach,
    Closed,
}

pub(super) async fn write_all_stdout(chunks: &[Bytes]) {
    let mut out = tokio::io::stdout();
    for b in chunks {
        if out.write_all(b).await.is_err() {
            return;
        }
    }
    let _ = out.flush().await;
}

/// The interactive part, until something ends it.
pub(super) async fn session(
    o: &AttachOpts,
    interactive: bool,
    reader: TerminalReader,
    writer: TerminalWriter,
    first: Vec<Bytes>,
    sigs: &mut Signals,
    modes: Arc<std::sync::Mutex<ModeTracker>>,
) -> End {
    let resizes = interactive && !o.read_only;
    let (size_tx, size_rx) = watch::channel(if resizes { term_size() } else { None });
    let (input_tx, input_rx) = mpsc::unbounded_channel::<Bytes>();
    let queued = Arc::new(AtomicUsize::new(0));
    let writer_task = tokio::spawn(write_loop(writer, input_rx, size_rx, queued.clone()));
    let mut output_task = tokio::spawn(output_loop(reader, first, modes));
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<StdinEvent>();
    let stop = Arc::new(AtomicBool::new(false));
    let stdin_thread = if interactive {
        let (keys, read_only, stop, queued) = (
            DetachMatcher::new(&o.detach_keys),
            o.read_only,
            stop.clone(),
            queued.clone(),
        );
        std::thread::Builder::new()
            .name("attach-stdin".into())
            .spawn(move || stdin_loop(keys, read_only, input_tx, ev_tx, stop, queued))
            .ok()
    } else {
        drop((input_tx, ev_tx));
        None
    };
    let mut stdin_open = stdin_thread.is_some();
    let end = loop {
        // Biased, the terminal's events first: a detach is queued before
        // anything it sets off, so it is the reason reported, whatever
        // else is ready by the time this task runs.
        tokio::select! {
            biased;
            ev = ev_rx.recv(), if stdin_open => match ev {
                Some(StdinEvent::Detach) => break End::Detached,
                Some(StdinEvent::Closed) => break End::TerminalGone,
                None => stdin_open = false,
            },
            _ = sigs.int.recv() => break End::Signal("SIGINT", 2),
            _ = sigs.term.recv() => break End::Signal("SIGTERM", 15),
            _ = sigs.hup.recv() => break End::Signal("SIGHUP", 1),
            _ = sigs.quit.recv() => break End::Signal("SIGQUIT", 3),
            _ = sigs.winch.recv() => {
                if resizes && let Some(s) = term_size() {
                    let _ = size_tx.send(Some(s));
                }
            }
            r = &mut output_task => break r.unwrap_or_else(|e| End::Lost(format!("output: {e}"))),
        }
    };
    stop.store(true, Ordering::SeqCst);
    output_task.abort();
    writer_task.abort();
    if let Some(t) = stdin_thread {
        // Stops within one STDIN_POLL; joined so that it cannot take a key
        // meant for the shell once the terminal is back.
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    end
}

/// Sends the latest size (first) and the queued input. It never ends on
/// its own when its inputs close (it is aborted): dropping the writer would
/// half-close the socket, the shellper would close the connection, and a
/// detach could be reported as a lost connection.
async fn write_loop(
    mut w: TerminalWriter,
    mut input: mpsc::UnboundedReceiver<Bytes>,
    mut size: watch::Receiver<Option<(u16, u16)>>,
    queued: Arc<AtomicUsize>,
) {
    let initial = *size.borrow_and_update();
    if let Some((c, r)) = initial
        && w.resize(c, r).await.is_err()
    {
        return;
    }
    let mut size_open = true;
    let mut input_open = true;
    loop {
        if !size_open && !input_open {
            std::future::pending::<()>().await;
        }
        tokio::select! {
            biased;
            r = size.changed(), if size_open => match r {
                Ok(()) => {
                    let s = *size.borrow_and_update();
                    if let Some((c, r)) = s
                        && w.resize(c, r).await.is_err()
                    {
                        return;
                    }
                }
                Err(_) => size_open = false,
            },
            b = input.recv(), if input_open => {
                let Some(b) = b else {
                    input_open = false;
                    continue;
                };
                let n = b.len();
                let r = w.write(b).await;
                queued.fetch_sub(n, Ordering::SeqCst);
                if r.is_err() {
                    return;
                }
            }
        }
    }
}

/// Copies REPLAY and DATA to stdout until EXIT, EOF or an error.
async fn output_loop(
    mut r: TerminalReader,
    first: Vec<Bytes>,
    modes: Arc<std::sync::Mutex<ModeTracker>>,
) -> End {
    let track = |b: &[u8]| {
        if let Ok(mut m) = modes.lock() {
            m.feed(b);
        }
    };
    let mut out = tokio::io::stdout();
    for b in &first {
        track(b);
        if out.write_all(b).await.is_err() {
            return End::Lost("writing to stdout failed".into());
        }
    }
    let _ = out.flush().await;
    loop {
        match r.next().await {
            None => return End::Closed,
            Some(Err(e)) => return End::Lost(e.to_string()),
            Some(Ok(Output::Replay(b) | Output::Data(b))) => {
                track(&b);
                if out.write_all(&b).await.is_err() || out.flush().await.is_err() {
                    return End::Lost("writing to stdout failed".into());
                }
            }
            Some(Ok(Output::Exit(e))) => return End::Exit(e),
        }
    }
}

/// Reads the terminal until detach, EOF or `stop`. Blocking, on its own
/// thread: poll with a timeout, then read what is there.
fn stdin_loop(
    mut keys: DetachMatcher,
    read_only: bool,
    input: mpsc::UnboundedSender<Bytes>,
    events: mpsc::UnboundedSender<StdinEvent>,
    stop: Arc<AtomicBool>,
    queued: Arc<AtomicUsize>,
) {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let stdin = std::io::stdin();
    let wait = Timespec {
        tv_sec: 0,
        tv_nsec: STDIN_POLL.as_nanos() as _,
    };
    let mut buf = [0u8; 4096];
    let mut fwd = Vec::with_capacity(buf.len());
    while !stop.load(Ordering::SeqCst) {
        if queued.load(Ordering::SeqCst) > INPUT_QUEUE_CAP {
            std::thread::sleep(STDIN_POLL);
            continue;
        }
        let mut fds = [PollFd::new(&stdin, PollFlags::IN)];
        match poll(&mut fds, Some(&wait)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => {
                let _ = events.send(StdinEvent::Closed);
                return;
            }
        }
        let n = match rustix::io::read(&stdin, &mut buf) {
            Ok(0) => {
                let _ = events.send(StdinEvent::Closed);
                return;
            }
            Ok(n) => n,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
            Err(_) => {
                let _ = events.send(StdinEvent::Closed);
                return;
            }
        };
        fwd.clear();
        let detach = keys.feed(&buf[..n], &mut fwd);
        // Read-only: nothing is sent, and Ctrl-C detaches too (it could
        // not reach the program anyway).
        if read_only {
            if detach || buf[..n].contains(&0x03) {
                let _ = events.send(StdinEvent::Detach);
                return;
            }
            continue;
        }
        if !fwd.is_empty() {
            queued.fetch_add(fwd.len(), Ordering::SeqCst);
            if input.send(Bytes::copy_from_slice(&fwd)).is_err() {
                return;
            }
        }
        if detach {
            let _ = events.send(StdinEvent::Detach);
            return;
        }
    }
}
