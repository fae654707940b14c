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

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rustix::termios::{OptionalActions, Termios};
use shellper_protocol::msg::ExitMsg;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tower_client::{Output, Terminal, TerminalReader, TerminalWriter};

use crate::error::{Error, Result};

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

/// How often the stdin thread checks whether it should stop.
const STDIN_POLL: Duration = Duration::from_millis(50);

/// The default detach sequence (also in `--help`, the README and SPEC).
pub const DEFAULT_DETACH_KEYS: &str = "ctrl-],d";

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

/// A detach key sequence: `ctrl-X` keys (X one of `a`–`z`, `@ [ \ ] ^ _`)
/// or single printable characters, separated by commas, at most 4 keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachKeys {
    bytes: Vec<u8>,
    text: String,
}

impl DetachKeys {
    /// The bytes a terminal sends for the sequence.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl std::fmt::Display for DetachKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for DetachKeys {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut bytes = Vec::new();
        for key in s.split(',') {
            let lower = key.to_ascii_lowercase();
            let b = if let Some(c) = lower.strip_prefix("ctrl-") {
                match c.as_bytes() {
                    [x @ b'a'..=b'z'] => x - b'a' + 1,
                    [b'@'] => 0,
                    [b'['] => 0x1b,
                    [b'\\'] => 0x1c,
                    [b']'] => 0x1d,
                    [b'^'] => 0x1e,
                    [b'_'] => 0x1f,
                    _ => {
                        return Err(format!(
                            "`{key}`: ctrl- takes one of a-z @ [ \\ ] ^ _ (keys are like ctrl-],d)"
                        ));
                    }
                }
            } else {
                match key.as_bytes() {
                    [x] if x.is_ascii_graphic() => *x,
                    _ => {
                        return Err(format!(
                            "`{key}`: a key is ctrl-X or one printable character; keys are separated by commas (like ctrl-],d)"
                        ));
                    }
                }
            };
            bytes.push(b);
        }
        if bytes.len() > 4 {
            return Err("at most 4 detach keys".into());
        }
        Ok(DetachKeys {
            bytes,
            text: s.to_string(),
        })
    }
}

/// Finds the detach sequence in the terminal's input, across reads.
///
/// Bytes that may start the sequence are held back; when the next byte
/// does not continue it, they are passed on with that byte (so
/// `ctrl-]` followed by anything but `d` reaches the program, one key
/// late). Pure: unit-tested below.
#[derive(Debug, Clone)]
pub struct DetachMatcher {
    keys: Vec<u8>,
    matched: usize,
}

impl DetachMatcher {
    pub fn new(keys: &DetachKeys) -> DetachMatcher {
        DetachMatcher {
            keys: keys.bytes.clone(),
            matched: 0,
        }
    }

    /// Feeds `input`; appends what the program should get to `out`.
    /// Returns true when the sequence completed (the rest of `input` is
    /// dropped: it was typed after the detach).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        for &b in input {
            if self.keys.get(self.matched) == Some(&b) {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    self.matched = 0;
                    return true;
                }
                continue;
            }
            out.extend_from_slice(&self.keys[..self.matched]);
            self.matched = 0;
            if self.keys.first() == Some(&b) {
                self.matched = 1;
                if self.keys.len() == 1 {
                    self.matched = 0;
                    return true;
                }
            } else {
                out.push(b);
            }
        }
        false
    }
}

/// The terminal modes a program switched on through the output, so that
/// leaving the session can switch them off again.
///
/// Restoring the termios settings is not the whole of "the terminal as it
/// was": a full-screen program (vim, less, top) also switches the terminal
/// *emulator* into the alternate screen, hides the cursor, turns on mouse
/// reporting, bracketed paste or application keys, with escape sequences
/// in its output. Detached in the middle of that, the user's shell would
/// be left on a blank alternate screen with an invisible cursor and mouse
/// clicks typed as garbage. This follows DEC private mode sets and resets
/// (`ESC [ ? N… h|l`) and the keypad mode (`ESC =`, `ESC >`) in everything
/// written to the terminal, sequences split across writes included, and
/// [`ModeTracker::reset_sequence`] undoes what is still on. Pure.
#[derive(Debug, Clone, Default)]
pub struct ModeTracker {
    /// Tracked modes whose last change was a set (`h`).
    on: std::collections::BTreeSet<u16>,
    /// `ESC =` seen last (application keypad).
    keypad: bool,
    /// The start of a sequence cut off at the end of the last write.
    carry: Vec<u8>,
}

/// DEC private modes undone on the way out: application cursor keys (1),
/// cursor hidden (25, inverted), alternate screens (47, 1047, 1049), mouse
/// reporting (1000, 1002, 1003, 1005, 1006, 1015), focus events (1004),
/// bracketed paste (2004).
const TRACKED_MODES: &[u16] = &[
    1, 25, 47, 1000, 1002, 1003, 1004, 1005, 1006, 1015, 1047, 1049, 2004,
];

/// Longest escape sequence kept across writes; longer ones are not modes.
const MODE_CARRY_MAX: usize = 64;

impl ModeTracker {
    /// Follows the modes set or reset in `bytes` (the next output).
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(bytes);
        let mut i = 0;
        while i < buf.len() {
            if buf[i] != 0x1b {
                i += 1;
                continue;
            }
            match self.sequence(&buf[i..]) {
                Some(used) => i += used,
                None => {
                    // Incomplete at the end: keep it for the next write.
                    if buf.len() - i <= MODE_CARRY_MAX {
                        self.carry = buf[i..].to_vec();
                    }
                    return;
                }
            }
        }
    }

    /// Handles the sequence at the start of `s` (which starts with ESC);
    /// returns the bytes it used, or `None` if `s` ends before it does.
    fn sequence(&mut self, s: &[u8]) -> Option<usize> {
        match s.get(1)? {
            b'=' => {
                self.keypad = true;
                Some(2)
            }
            b'>' => {
                self.keypad = false;
                Some(2)
            }
            b'[' if s.get(2)? == &b'?' => {
                let mut j = 3;
                while j < s.len() && (s[j].is_ascii_digit() || s[j] == b';') {
                    j += 1;
                    if j > MODE_CARRY_MAX {
                        return Some(j);
                    }
                }
                let fin = *s.get(j)?;
                if fin == b'h' || fin == b'l' {
                    for p in s[3..j].split(|b| *b == b';') {
                        let n = std::str::from_utf8(p)
                            .ok()
                            .and_then(|t| t.parse::<u16>().ok());
                        if let Some(n) = n.filter(|n| TRACKED_MODES.contains(n)) {
                            // Mode 25 is "cursor visible": its reset is the
                            // state to undo.
                            let on = (fin == b'h') != (n == 25);
                            if on {
                                self.on.insert(n);
                            } else {
                                self.on.remove(&n);
                            }
                        }
                    }
                }
                Some(j + 1)
            }
            _ => Some(1),
        }
    }

    /// The bytes that switch off what is still on (empty when nothing is):
    /// the alternate screen first, so the rest applies to the normal one.
    pub fn reset_sequence(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for alt in [1049u16, 1047, 47] {
            if self.on.contains(&alt) {
                out.extend_from_slice(format!("\x1b[?{alt}l").as_bytes());
            }
        }
        for &m in &self.on {
            if [1049, 1047, 47].contains(&m) {
                continue;
            }
            let fin = if m == 25 { 'h' } else { 'l' };
            out.extend_from_slice(format!("\x1b[?{m}{fin}").as_bytes());
        }
        if self.keypad {
            out.extend_from_slice(b"\x1b>");
        }
        out
    }
}

/// The exit status of the PTY child as a message and as leasectl's exit
/// code: code C → C (0–255; anything else → 1), killed by signal S → 128+S.
pub fn exit_outcome(e: &ExitMsg) -> (String, i32) {
    let sig = e
        .signal
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "0");
    if let Some(s) = sig {
        let num = s.parse::<i32>().ok().or_else(|| signal_number(s));
        return match num {
            Some(n) if (1..=64).contains(&n) => {
                let name = signal_name(n)
                    .map(|x| format!(" ({x})"))
                    .unwrap_or_default();
                (format!("killed by signal {n}{name}"), 128 + n)
            }
            _ => (format!("killed by signal {s}"), 1),
        };
    }
    match e.code {
        Some(c) if (0..=255).contains(&c) => (format!("exited with code {c}"), c),
        Some(c) => (format!("exited with code {c}"), 1),
        None => ("exited (no status reported)".into(), 1),
    }
}

const SIGNAL_NAMES: &[(i32, &str)] = &[
    (1, "SIGHUP"),
    (2, "SIGINT"),
    (3, "SIGQUIT"),
    (6, "SIGABRT"),
    (9, "SIGKILL"),
    (11, "SIGSEGV"),
    (13, "SIGPIPE"),
    (15, "SIGTERM"),
];

fn signal_name(n: i32) -> Option<&'static str> {
    SIGNAL_NAMES.iter().find(|(k, _)| *k == n).map(|(_, s)| *s)
}

fn signal_number(name: &str) -> Option<i32> {
    let up = name.to_ascii_uppercase();
    let full = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    SIGNAL_NAMES
        .iter()
        .find(|(_, s)| *s == full)
        .map(|(n, _)| *n)
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

/// The local terminal in raw mode; the saved settings come back on drop.
#[derive(Debug)]
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Saves stdin's terminal settings and switches it to raw mode (no
    /// echo, no line editing, no signals from keys, no output processing).
    pub fn enter() -> std::io::Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, OptionalActions::Now, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // `Now`, not `Drain`: a terminal that does not take output (a
        // stopped pane, a hung-up line) must not keep us from restoring.
        let _ = rustix::termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved);
    }
}

/// stdin's size as (cols, rows), if it is a terminal that knows it.
fn term_size() -> Option<(u16, u16)> {
    let w = rustix::termios::tcgetwinsize(std::io::stdin()).ok()?;
    (w.ws_col > 0 && w.ws_row > 0).then_some((w.ws_col, w.ws_row))
}

/// Why a session ended.
#[derive(Debug)]
enum End {
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

async fn write_all_stdout(chunks: &[Bytes]) {
    let mut out = tokio::io::stdout();
    for b in chunks {
        if out.write_all(b).await.is_err() {
            return;
        }
    }
    let _ = out.flush().await;
}

/// SIGINT, SIGTERM, SIGHUP, SIGQUIT (end the session) and SIGWINCH.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    winch: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            quit: signal(SignalKind::quit())?,
            winch: signal(SignalKind::window_change())?,
        })
    }
}

/// The interactive part, until something ends it.
async fn session(
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn keys(s: &str) -> DetachKeys {
        s.parse().unwrap()
    }

    #[test]
    fn detach_keys_parse() {
        assert_eq!(keys("ctrl-],d").bytes(), &[0x1d, b'd']);
        assert_eq!(keys("Ctrl-P,Ctrl-Q").bytes(), &[0x10, 0x11]);
        assert_eq!(keys("ctrl-\\,ctrl-\\").bytes(), &[0x1c, 0x1c]);
        assert_eq!(keys("ctrl-@").bytes(), &[0]);
        assert_eq!(keys("ctrl-],d").to_string(), "ctrl-],d");
        for bad in ["", "ctrl-", "ctrl-1", "dd", "a,,b", "a,b,c,d,e", " "] {
            assert!(bad.parse::<DetachKeys>().is_err(), "{bad:?}");
        }
        assert_eq!(
            DEFAULT_DETACH_KEYS.parse::<DetachKeys>().unwrap().bytes(),
            &[0x1d, b'd']
        );
    }

    fn feed_all(m: &mut DetachMatcher, chunks: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        for c in chunks {
            if m.feed(c, &mut out) {
                return (out, true);
            }
        }
        (out, false)
    }

    #[test]
    fn detach_sequence_found_across_reads_and_the_rest_passes() {
        let k = keys("ctrl-],d");
        let mut m = DetachMatcher::new(&k);
        assert_eq!(
            feed_all(&mut m, &[b"ls\r", b"\x1d", b"dX"]),
            (b"ls\r".to_vec(), true)
        );
        let mut m = DetachMatcher::new(&k);
        // ctrl-] then something else: both reach the program.
        assert_eq!(
            feed_all(&mut m, &[b"\x1dx", b"d"]),
            (b"\x1dxd".to_vec(), false)
        );
        let mut m = DetachMatcher::new(&k);
        // ctrl-] ctrl-] d: the first goes through, the second starts the sequence.
        assert_eq!(feed_all(&mut m, &[b"\x1d\x1dd"]), (b"\x1d".to_vec(), true));
        let mut m = DetachMatcher::new(&keys("ctrl-\\"));
        assert_eq!(feed_all(&mut m, &[b"ab\x1c"]), (b"ab".to_vec(), true));
        // A plain 'd' alone is just a 'd'.
        let mut m = DetachMatcher::new(&k);
        assert_eq!(feed_all(&mut m, &[b"ddd"]), (b"ddd".to_vec(), false));
    }

    #[test]
    fn modes_left_on_are_switched_off_even_when_split_across_writes() {
        let mut m = ModeTracker::default();
        assert!(m.reset_sequence().is_empty());
        m.feed(b"x\x1b[?1049h\x1b[?25l\x1b[?100");
        m.feed(b"0;1006h\x1b=\x1b[?2004h text \x1b[1m");
        assert_eq!(
            String::from_utf8(m.reset_sequence()).unwrap(),
            "\x1b[?1049l\x1b[?25h\x1b[?1000l\x1b[?1006l\x1b[?2004l\x1b>"
        );
        // The program switched them back off itself: nothing to do.
        m.feed(b"\x1b[?2004l\x1b[?1000;1006l\x1b[?25h\x1b[?1049l\x1b>");
        assert!(m.reset_sequence().is_empty());
        // Untracked modes and other sequences are ignored; hostile
        // lengths are bounded.
        m.feed(b"\x1b[?7l\x1b[?12h\x1b]0;title\x07");
        m.feed(b"\x1b[?");
        m.feed(&vec![b'1'; 10_000]);
        m.feed(b"h\x1b[?2004h");
        assert_eq!(m.reset_sequence(), b"\x1b[?2004l");
        assert!(m.carry.len() <= MODE_CARRY_MAX);
    }

    #[test]
    fn exit_status_mapping() {
        let ex = |code: Option<i32>, sig: Option<&str>| {
            exit_outcome(&ExitMsg {
                code,
                signal: sig.map(str::to_string),
            })
        };
        assert_eq!(ex(Some(0), Some("0")).1, 0);
        assert_eq!(ex(Some(7), Some("0")), ("exited with code 7".into(), 7));
        assert_eq!(ex(Some(7), None).1, 7);
        assert_eq!(
            ex(Some(0), Some("9")),
            ("killed by signal 9 (SIGKILL)".into(), 137)
        );
        assert_eq!(ex(Some(0), Some("SIGTERM")).1, 143);
        assert_eq!(ex(Some(300), Some("0")).1, 1);
        assert_eq!(ex(Some(-1), None).1, 1);
        assert_eq!(ex(None, None).1, 1);
        assert_eq!(ex(None, Some("weird")).1, 1);
    }
}
