//! The control protocol's decoder on arbitrary input: it never panics,
//! and every request it accepts re-serializes to a line it reads back
//! equal (what a second implementation round-trips against).
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use tower_client::control::wire::{self, LeaseRequest, Request, SpawnRequest, TerminateRequest};

fn spawn_request() -> impl Strategy<Value = SpawnRequest> {
    (
        "[a-z/]{1,12}",
        proptest::collection::vec(".{0,8}", 0..4),
        proptest::option::of("/[a-z]{0,8}"),
        proptest::collection::btree_map("[A-Z_]{1,6}", ".{0,8}", 0..4),
        any::<bool>(),
        proptest::option::of(any::<u16>()),
        proptest::option::of(any::<u16>()),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(
            |(command, args, cwd, env, inherit_env, cols, rows, window)| SpawnRequest {
                command,
                args,
                cwd,
                env,
                inherit_env,
                cols,
                rows,
                lease: LeaseRequest {
                    window_ms: window,
                    ..LeaseRequest::default()
                },
            },
        )
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = wire::parse_request(&bytes);
        let _ = wire::Response::parse(&bytes);
    }

    #[test]
    fn json_ish_lines_never_panic(s in r#"\{("[a-z_]{1,8}":(1|"x"|\[\]|\{\}|null|true),?){0,6}\}"#) {
        if let Ok(Request::Spawn(r)) = wire::parse_request(s.as_bytes()) {
            let _ = wire::spawn_spec(&r, &Default::default(), &Default::default());
        }
    }

    #[test]
    fn accepted_requests_round_trip(r in spawn_request(), id in "sh-[0-9a-f]{8}", t in proptest::option::of(any::<u64>())) {
        for req in [Request::Spawn(r.clone()), Request::Terminate(TerminateRequest { id: id.clone(), timeout_ms: t })] {
            let line = req.to_line();
            prop_assert!(line.ends_with('\n'));
            prop_assert!(!line[..line.len() - 1].contains('\n'));
            prop_assert_eq!(wire::parse_request(line.trim_end().as_bytes()).unwrap(), req);
        }
        // Checking a spawn never panics, whatever its values.
        let _ = wire::spawn_spec(&r, &Default::default(), &Default::default());
    }
}
