//! One task per held shellper, its *holder* (it holds the lease from the
//! Tower side; `shellper_leased::enforcer` enforces it inside the session),
//! and the handle that controls it.
//!
//! Modelled on watchexec's `Job`: the [`ShellperHandle`] is cheap to clone
//! and only sends commands down a control queue; the holder owns the lease
//! connection, the process watch and every piece of per-shellper state, so
//! there are no locks on the hot path and no two writers on a socket.
//! Renewal *timing* is not here: the Tower's single scheduler task sends
//! `Ctl::Renew` when a lease is due, and the holder reports each RENEWED
//! back to it.
//!
//! The lease connection carries no DATA or REPLAY (HELLO `replay:false,
//! data:false`); terminal I/O uses separate connections
//! ([`Terminal`](crate::Terminal)), so a renewal never waits behind terminal
//! bytes.
//!
//! One file per job: [`events`] (what is reported, and the bounded queue
//! that carries it), [`handle`] (the handle and its control queue),
//! [`watch`] (watching the process until it is gone), [`link`] (the lease
//! connection with its writer task) and [`run`] (the loop).

mod events;
mod handle;
mod link;
mod reconnect;
mod run;
mod tree;
mod watch;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use shellper_protocol::Token;
use shellper_protocol::clamp::GrantTimes;
use shellper_protocol::msg::{ExitMsg, Grant};
use tokio::sync::mpsc;

pub use events::{EVENT_QUEUE, Event, Events, ExitWhat, ProcExit, TerminateReport};
pub use handle::{LeaseState, ShellperHandle, ShellperInfo};

pub(crate) use events::{EventTx, child_exit_event};
pub(crate) use handle::{Ctl, CtlSink, CtlTx, HandleInner};
pub(crate) use tree::TreeRecorder;
pub(crate) use watch::ProcWatch;

use crate::conn::Conn;
use crate::ctx::Ctx;
use link::Link;
use run::Holder;

/// A lease just granted by a spawn or an adoption: everything a holder
/// needs. Spawn and adoption return it; only the Tower turns it into a
/// holder ([`start`]), so neither of them depends on the Tower.
pub(crate) struct Granted {
    pub info: ShellperInfo,
    pub token: Token,
    pub conn: Conn,
    pub grant: Grant,
    /// The child's EXIT, when the child had already ended at acquire.
    pub exit: Option<ExitMsg>,
    pub proc: ProcWatch,
}

fn info_child(h: &ShellperHandle) -> Option<i32> {
    h.info().child_pid.and_then(|p| i32::try_from(p).ok())
}

/// Registers a granted lease with the Tower's context and starts its
/// holder task.
pub(crate) fn start(ctx: &Arc<Ctx>, g: Granted) -> ShellperHandle {
    let Granted {
        info,
        token,
        conn,
        grant,
        exit,
        proc,
    } = g;
    // Every duration of the GRANT, clamped (SPEC §5).
    let times = GrantTimes::of(&grant);
    let (tx, rx) = mpsc::unbounded_channel::<Ctl>();
    let inner = Arc::new(HandleInner {
        info,
        ctl: tx,
        epoch: AtomicU64::new(grant.epoch),
        state: AtomicU8::new(handle::ST_HELD),
        connect_timeout: ctx.cfg.connect_timeout,
    });
    let handle = ShellperHandle {
        inner: inner.clone(),
    };
    let key = ctx.next_key.fetch_add(1, Ordering::Relaxed);
    let mut holder = Holder::new(
        ctx.clone(),
        inner,
        key,
        token,
        Link::new(conn.reader, conn.writer),
        grant.epoch,
        times.window,
        proc,
        rx,
    );
    // The PTY child leads its own session; read its identity now, while
    // it is provably the shellper's child (one stat read).
    if let Some(c) = info_child(&handle) {
        holder.session = shellper_proctree::session_of_child(handle.info().pid as i32, c);
    }
    // Record its tree at once (an adopted shellper's is complete by now),
    // then at renewals (`remember_tree`).
    holder.remember_tree(true);
    holder.schedule(times.renew_every, times.expires_in);
    ctx.insert_handle(handle.clone());
    ctx.events.send(Event::Held {
        id: handle.id().to_string(),
        epoch: grant.epoch,
        recovered: false,
    });
    if let Some(e) = exit {
        ctx.events
            .send(child_exit_event(handle.id().to_string(), &e));
    }
    tokio::spawn(holder.run());
    handle
}
