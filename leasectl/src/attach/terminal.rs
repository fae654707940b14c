//! The local terminal: raw mode behind a guard, its size, and the signals
//! that would end leasectl (caught before the terminal goes raw).

use rustix::termios::{OptionalActions, Termios};

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
pub(super) fn term_size() -> Option<(u16, u16)> {
    let w = rustix::termios::tcgetwinsize(std::io::stdin()).ok()?;
    (w.ws_col > 0 && w.ws_row > 0).then_some((w.ws_col, w.ws_row))
}

/// SIGINT, SIGTERM, SIGHUP, SIGQUIT (end the session) and SIGWINCH.
pub(super) struct Signals {
    pub(super) int: tokio::signal::unix::Signal,
    pub(super) term: tokio::signal::unix::Signal,
    pub(super) hup: tokio::signal::unix::Signal,
    pub(super) quit: tokio::signal::unix::Signal,
    pub(super) winch: tokio::signal::unix::Signal,
}

impl Signals {
    pub(super) fn install() -> std::io::Result<Signals> {
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
