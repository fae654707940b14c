//! One sample frame of every type, shared by the golden-vector test, the
//! vector printer (`cargo run -p shellper-protocol --example vectors`) and
//! SPEC.md. Changing a sample changes the published vectors: do it on purpose.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::frame::Frame;
use crate::msg::*;
use crate::token::Token;

/// `(name, frame)` for one sample of every frame type, in type order.
pub fn sample_frames() -> Vec<(&'static str, Frame)> {
    let token = Token::from_bytes(core::array::from_fn(|i| i as u8));
    let mut env = BTreeMap::new();
    env.insert("TERM".to_string(), "xterm-256color".to_string());
    vec![
        ("DATA", Frame::Data(Bytes::from_static(b"ls\r"))),
        (
            "RESIZE",
            Frame::Resize(Resize {
                cols: 120,
                rows: 40,
            }),
        ),
        ("SIGNAL", Frame::Signal(SignalMsg { signal: 2 })),
        (
            "EXIT",
            Frame::Exit(ExitMsg {
                code: Some(0),
                signal: Some("15".into()),
            }),
        ),
        ("REPLAY", Frame::Replay(Bytes::from_static(b"$ "))),
        ("PING", Frame::Ping),
        ("PONG", Frame::Pong),
        (
            "HELLO",
            Frame::Hello(Hello {
                version: 1,
                client_type: ClientType::Tower,
                lease: Some(1),
                replay: Some(false),
                data: Some(false),
            }),
        ),
        (
            "WELCOME",
            Frame::Welcome(Welcome {
                version: 1,
                pid: 4242,
                cols: 80,
                rows: 24,
                start_time: 1_700_000_000_000,
                last_data_at: None,
                always_sends_replay: true,
                lease: Some(WelcomeLease {
                    version: 1,
                    leased: true,
                    shellper_pid: 4241,
                }),
            }),
        ),
        (
            "SPAWN",
            Frame::Spawn(Spawn {
                command: "/bin/bash".into(),
                args: vec!["-l".into()],
                cwd: "/tmp".into(),
                env,
            }),
        ),
        (
            "ACQUIRE",
            Frame::Acquire(Acquire {
                token,
                holder: HolderInfo {
                    name: "minitower".into(),
                    pid: 300,
                },
            }),
        ),
        (
            "GRANT",
            Frame::Grant(Grant {
                epoch: 1,
                ttl_ms: 6000,
                window_ms: 600_000,
                renew_every_ms: 2000,
                expires_in_ms: 6000,
            }),
        ),
        ("RENEW", Frame::Renew(Renew { epoch: 1, seq: 7 })),
        (
            "RENEWED",
            Frame::Renewed(Renewed {
                epoch: 1,
                seq: 7,
                expires_in_ms: 6000,
            }),
        ),
        (
            "RELEASE",
            Frame::Release(Release {
                epoch: 1,
                mode: ReleaseMode::Detach { hold_ms: 3_600_000 },
            }),
        ),
        (
            "RELEASED",
            Frame::Released(Released {
                epoch: 1,
                kill_in_ms: 3_600_000,
            }),
        ),
        (
            "TERMINATED",
            Frame::Terminated(Terminated {
                reason: TerminateReason::WindowExpired,
                signalled: 5,
                survivors: 0,
                elapsed_ms: 12,
                sweeps: 3,
            }),
        ),
        ("STATUS_REQUEST", Frame::StatusRequest(StatusRequest {})),
        ("STATUS", Frame::Status(Box::new(sample_status()))),
        (
            "REVOKED",
            Frame::Revoked(Revoked {
                old_epoch: 1,
                new_epoch: 2,
            }),
        ),
        (
            "ERROR",
            Frame::Error(ErrorMsg {
                code: ErrorCode::StaleEpoch,
                message: "stale".into(),
            }),
        ),
    ]
}

/// A small but complete STATUS payload.
pub fn sample_status() -> Status {
    Status {
        version: "0.1.0".into(),
        shellper_pid: 4241,
        shellper_start_ticks: 1000,
        started_at_ms: 1_700_000_000_000,
        child_pid: Some(4242),
        child: ChildState::Running,
        command: "bash".into(),
        args: vec![],
        cwd: "/".into(),
        phase: WirePhase::Held,
        leased: true,
        epoch: 1,
        holder: Some(HolderInfo {
            name: "t".into(),
            pid: 300,
        }),
        holder_peer_pid: Some(300),
        expires_in_ms: Some(5000),
        kill_in_ms: None,
        claim_in_ms: None,
        ttl_ms: 6000,
        window_ms: 600_000,
        claim_ms: 60_000,
        kill_grace_ms: 3000,
        clients: vec![ClientInfo {
            kind: ClientType::Tower,
            pid: 300,
            holder: true,
        }],
        counters: Counters {
            acquires: 1,
            renewals: 2,
            ..Counters::default()
        },
        containment: None,
    }
}

/// STATUS as a v2 shellper sends it to a v2 client: a session in a
/// cgroup, with its accounting.
pub fn sample_status_v2() -> Status {
    Status {
        containment: Some(crate::msg::Containment {
            cgroup: Some("/sys/fs/cgroup/user.slice/minitower.service/sh-0a1b2c3d".into()),
            controllers: vec!["memory".into(), "pids".into()],
            cpu_usec: Some(1_234_567),
            procs: Some(3),
            memory_current: Some(10 << 20),
            memory_peak: Some(12 << 20),
            pids_max: Some(256),
            memory_max: None,
        }),
        ..sample_status()
    }
}

/// Lowercase hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
