//! `leasectl attach ID`: an interactive terminal on a shellper.
//!
//! The connection is a `terminal` client (SPEC.md §7, CONVENTIONS.md
//! "Connections"): it gets REPLAY and then live DATA, sends input (DATA) and
//! the terminal's size (RESIZE), and never touches the lease: a terminal
//! client cannot acquire, renew or release, in leased mode as in legacy
//! mode (where only a `tower` client is the holder). The HELLO's additions
//! to v1 are optional fields that a codev v1 shellper ignores, so the same
//! client attaches to codev's own shellpers.
//!
//! Only connecting, HELLO/WELCOME and (from a shellper that promises one)
//! REPLAY have a deadline; after that the session is interactive and may
//! idle for ever.
//!
//! The local terminal is put in raw mode by [`RawMode`], a guard that puts
//! the saved settings back when it is dropped: on detach, on the child's
//! exit, on a lost connection, on an error (`?` returns through it), on a
//! panic (unwinding), and on SIGINT, SIGTERM, SIGHUP and SIGQUIT, which are
//! caught (their handlers are installed before raw mode is entered) and end
//! the session like a detach. Only SIGKILL (and SIGSTOP) cannot be caught;
//! `stty sane` repairs a terminal left raw by those. The terminal
//! *emulator's* modes that the program switched on through its output
//! (alternate screen, hidden cursor, mouse reporting, bracketed paste,
//! application keys) are followed by [`ModeTracker`] and switched off on
//! the way out too.
//!
//! Pieces, so that no stuck peer blocks the way out:
//! * a thread reads stdin (poll with a short timeout, so it stops when
//!   asked), looks for the detach sequence ([`DetachMatcher`]), and queues
//!   the rest (bounded in bytes: it stops reading past [`INPUT_QUEUE_CAP`]);
//! * a writer task sends that input and the latest size (RESIZE first);
//! * an output task copies REPLAY/DATA to stdout and reports EXIT or EOF;
//! * the main loop waits for whichever ends the session, and for SIGWINCH.

//!
//! One file per job: `keys.rs` (the detach keys and their matcher),
//! `modes.rs` (the emulator modes to switch off), `terminal.rs` (raw mode,
//! size, signals), `session.rs` (the tasks and the stdin thread),
//! `outcome.rs` (exit status to message and code); this file connects,
//! runs a session and reports how it ended.

mod keys;
mod modes;
mod outcome;
mod session;
mod terminal;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tower_client::{Output, Terminal};

use crate::error::{Error, Result};

pub use keys::{DEFAULT_DETACH_KEYS, DetachKeys, DetachMatcher};
pub use modes::ModeTracker;
pub use outcome::exit_outcome;
pub use terminal::RawMode;

use session::{End, session, write_all_stdout};
use terminal::Signals;

/// Shortest handshake deadline (connect, HELLO/WELCOME, REPLAY) whatever
/// `--timeout` says: the global default (500 ms) is made for STATUS sweeps,
/// an interactive attach can afford to wait a little longer for a busy
/// shellper.
pub const MIN_HANDSHAKE: Duration = Duration::from_secs(2);

/// Most input bytes read from the terminal and not yet sent. Past it the
/// stdin thread stops reading until the shellper takes some (it pushes back
/// when its child does not read): pasting into a stalled program costs
/// bounded memory.
pub const INPUT_QUEUE_CAP: usize = 1024 * 1024;

/// Exit code: the shellper closed the connection without an exit status
/// (terminated, killed, or it dropped this client).
pub const EXIT_CONNECTION_LOST: i32 = 1;

/// Options of `attach`.
#[derive(Debug, Clone)]
pub struct AttachOpts {
    pub id: String,
    pub read_only: bool,
    pub detach_keys: DetachKeys,
}

/// The socket of `id`: the registry's path when the registry lists it (a
/// Tower may place sockets elsewhere), else `<scope>/<id>.sock`.
pub fn socket_path(scope: &Path, id: &str) -> Result<PathBuf> {
    crate::logs::check_id(id, scope)?;
    let registered = tower_client::Scope::open_existing(scope)
        .ok()
        .and_then(|s| s.read_registry().ok())
        .and_then(|r| r.get(id).map(|e| e.socket.clone()));
    let sock = registered.unwrap_or_else(|| scope.join(format!("{id}.sock")));
    if !sock.exists() {
        return Err(Error::UnknownId {
            id: id.to_string(),
            scope: scope.to_path_buf(),
        });
    }
    Ok(sock)
}

/// Runs `attach`; returns the exit code (see [`crate::cli::ATTACH_HELP`]).
pub async fn run(scope: &Path, timeout: Duration, o: AttachOpts) -> Result<i32> {
    let socket = socket_path(scope, &o.id)?;
    let interactive = rustix::termios::isatty(std::io::stdin());
    let err = |detail: String| Error::Attach {
        id: o.id.clone(),
        detail,
    };
    if !interactive && !o.read_only {
        return Err(err(
            "stdin is not a terminal; attach is interactive (--read-only only prints the output)"
                .into(),
        ));
    }
    let handshake = timeout.max(MIN_HANDSHAKE);
    let deadline = tokio::time::Instant::now() + handshake;
    let term = Terminal::connect(&socket, handshake)
        .await
        .map_err(|e| err(e.to_string()))?;
    let promises_replay = term.welcome().always_sends_replay;
    let (mut reader, writer) = term.into_split();
    let mut first = Vec::new();
    // A shellper that promises REPLAY (ours) sends it right after WELCOME;
    // a codev v1 one may not when its buffer is empty, so it is not waited
    // for there.
    let mut early_end = None;
    if promises_replay {
        match tokio::time::timeout_at(deadline, reader.next()).await {
            Err(_) => return Err(err(format!("no REPLAY within {handshake:?}"))),
            Ok(None) => return Err(err("the shellper closed the connection".into())),
            Ok(Some(Err(e))) => return Err(err(e.to_string())),
            Ok(Some(Ok(Output::Replay(b) | Output::Data(b)))) => first.push(b),
            Ok(Some(Ok(Output::Exit(e)))) => early_end = Some(e),
        }
    }
    // Every signal that would end leasectl is caught before the terminal
    // goes raw, so none can leave it raw.
    let mut sigs = Signals::install().map_err(|e| err(format!("signal handlers: {e}")))?;
    let mode = if o.read_only { "; read-only" } else { "" };
    eprintln!(
        "[leasectl: attached to {}; detach with {}{mode}]",
        o.id, o.detach_keys
    );
    let raw = if interactive {
        Some(RawMode::enter().map_err(|e| err(format!("raw mode: {e}")))?)
    } else {
        None
    };
    let modes = Arc::new(std::sync::Mutex::new(ModeTracker::default()));
    let end = match early_end {
        Some(e) => {
            write_all_stdout(&first).await;
            End::Exit(e)
        }
        None => {
            session(
                &o,
                interactive,
                reader,
                writer,
                first,
                &mut sigs,
                modes.clone(),
            )
            .await
        }
    };
    // Modes the program left on in the terminal emulator (alternate screen,
    // hidden cursor, mouse, bracketed paste) go off with the session.
    if rustix::termios::isatty(std::io::stdout()) {
        let reset = modes.lock().map(|m| m.reset_sequence()).unwrap_or_default();
        if !reset.is_empty() {
            let mut so = std::io::stdout().lock();
            let _ = so.write_all(&reset);
            let _ = so.flush();
        }
    }
    drop(raw);
    let (msg, code) = match &end {
        End::Detached => (format!("detached from {}", o.id), 0),
        End::Exit(e) => {
            let (m, c) = exit_outcome(e);
            (format!("{}: the command {m}", o.id), c)
        }
        End::Closed => (
            format!("{}: the shellper closed the connection", o.id),
            EXIT_CONNECTION_LOST,
        ),
        End::Lost(e) => (format!("{}: {e}", o.id), EXIT_CONNECTION_LOST),
        End::Signal(name, n) => (format!("{name}: detached from {}", o.id), 128 + n),
        End::TerminalGone => (format!("terminal closed: detached from {}", o.id), 129),
    };
    let mut e = std::io::stderr().lock();
    let _ = write!(e, "\n[leasectl: {msg}]\n");
    let _ = e.flush();
    Ok(code)
}
