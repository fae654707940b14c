//! What the PTY session adds to the lease crate's connection server
//! (`shellper_leased::server`, one implementation for every shellper): the
//! terminal. WELCOME, REPLAY, DATA and EXIT come from the [`Hub`]; DATA and
//! RESIZE from terminal and tower clients go to the child; SIGNAL and SPAWN
//! need the lease.

use std::sync::Arc;

use shellper_leased::server::{Attach, Conn, Session, WorkerView};
use shellper_leased::sock::error_frame;
use shellper_protocol::Frame;
use shellper_protocol::lease::ConnId;
use shellper_protocol::msg::{ALLOWED_SIGNALS, ClientType, ErrorCode};
use tokio::sync::Semaphore;

use crate::child::ChildHandle;
use crate::hub::Hub;
use crate::lease::LeaseHandle;

pub use shellper_leased::server::{Identity, Server, Timeouts};
pub use shellper_leased::sock::bind;

/// The PTY session.
#[derive(Debug)]
pub struct Pty {
    pub hub: Arc<Hub>,
    pub child: ChildHandle,
    /// SIGNAL and SPAWN need the lease.
    pub lease: LeaseHandle,
}

impl Session for Pty {
    /// Room for this client's input in the PTY queue, in bytes.
    type Conn = Arc<Semaphore>;

    fn open(&self) -> Arc<Semaphore> {
        crate::child::client_input_budget()
    }

    fn attach(&self, c: Attach<'_>) {
        self.hub
            .register(c.conn, c.hello, c.peer_pid, c.outbox.clone(), c.lease);
    }

    fn detach(&self, conn: ConnId) {
        self.hub.unregister(conn);
    }

    async fn terminal(&self, conn: &Conn<Arc<Semaphore>>, frame: Frame) {
        let can_write = conn.kind() != ClientType::Status;
        match frame {
            Frame::Data(b) if can_write => {
                self.child.input(b, conn.state(), conn.gone()).await;
            }
            Frame::Resize(r) if can_write => {
                self.child.resize(r.cols.max(1), r.rows.max(1));
            }
            Frame::Signal(s) => {
                if !ALLOWED_SIGNALS.contains(&s.signal) {
                    tracing::info!(conn = conn.id(), signal = s.signal, "signal not allowed");
                    conn.send(error_frame(
                        ErrorCode::Forbidden,
                        format!("signal {} is not allowed", s.signal),
                    ));
                } else if self.lease.is_holder(conn.id()).await {
                    tracing::debug!(conn = conn.id(), signal = s.signal, "SIGNAL to the child");
                    self.child.signal(s.signal);
                } else {
                    conn.send(error_frame(ErrorCode::Forbidden, "SIGNAL needs the lease"));
                }
            }
            Frame::Spawn(s) => {
                if self.lease.is_holder(conn.id()).await {
                    if let Err(e) = self.child.spawn(s).await {
                        tracing::warn!(error = %e, "SPAWN failed");
                        conn.send(error_frame(
                            ErrorCode::Protocol,
                            format!("spawn failed: {e}"),
                        ));
                    }
                } else {
                    conn.send(error_frame(ErrorCode::Forbidden, "SPAWN needs the lease"));
                }
            }
            // DATA/RESIZE from a status client: ignored (v1 semantics).
            _ => {}
        }
    }

    fn worker(&self) -> WorkerView {
        self.hub.child()
    }
}
