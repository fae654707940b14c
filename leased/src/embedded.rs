//! The session of an embedded (PTY-less) leased process: what it adds to
//! the [connection server](crate::server) is a WELCOME without a terminal
//! and a worker for STATUS. Terminal frames (DATA, RESIZE, SIGNAL, SPAWN)
//! are refused with `Forbidden`: there is no PTY here.

use std::sync::{Arc, Mutex};

use shellper_protocol::Frame;
use shellper_protocol::lease::ConnId;
use shellper_protocol::msg::{ErrorCode, Welcome};

use crate::server::{Attach, Conn, Session, WorkerView};
use crate::sock::error_frame;
use crate::{Describe, Worker};

/// An embedded process's session.
#[derive(Debug)]
pub(crate) struct Embedded {
    pub worker: Arc<Mutex<Worker>>,
    pub describe: Describe,
    pub started_at_ms: u64,
}

impl Embedded {
    fn current(&self) -> Worker {
        // Writers only assign whole fields: a poisoned lock still holds a
        // consistent worker.
        self.worker
            .lock()
            .map(|w| w.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
}

impl Session for Embedded {
    type Conn = ();

    fn open(&self) {}

    fn attach(&self, client: Attach<'_>) {
        client.outbox.control(Frame::Welcome(Welcome {
            version: shellper_protocol::PROTOCOL_VERSION,
            pid: self.current().pid.map_or(-1, i64::from),
            cols: 80,
            rows: 24,
            start_time: self.started_at_ms,
            last_data_at: None,
            always_sends_replay: false,
            lease: client.lease,
        }));
    }

    fn detach(&self, _conn: ConnId) {}

    async fn terminal(&self, conn: &Conn<()>, _frame: Frame) {
        if conn.continues_frame() {
            // Already refused at its first piece.
            return;
        }
        conn.send(error_frame(
            ErrorCode::Forbidden,
            "no terminal here: this leased process has no PTY",
        ));
    }

    fn worker(&self) -> WorkerView {
        let w = self.current();
        WorkerView {
            pid: w.pid,
            state: w.state,
            command: self.describe.command.clone(),
            args: self.describe.args.clone(),
            cwd: self.describe.cwd.clone(),
        }
    }
}
