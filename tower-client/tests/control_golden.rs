//! SPEC.md §15's examples are the protocol: every request line there
//! parses and re-serializes to the same bytes, every response line
//! round-trips byte for byte, and the refusals that a request's own
//! content decides (version, limits) are the ones shown.
#![allow(clippy::unwrap_used)]

use tower_client::LeaseConfig;
use tower_client::control::wire::{self, ControlLimits, Request, Response};

fn examples() -> Vec<(String, String)> {
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../SPEC.md")).unwrap();
    let section = spec
        .split("\n## 15. Control socket")
        .nth(1)
        .expect("SPEC.md has §15");
    let lines: Vec<&str> = section.lines().collect();
    let mut pairs = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if let Some(req) = l.strip_prefix("→ ") {
            let resp = lines[i + 1]
                .strip_prefix("← ")
                .expect("each request line is followed by its response");
            pairs.push((req.to_string(), resp.to_string()));
        }
    }
    pairs
}

#[test]
fn spec_examples_are_exact() {
    let pairs = examples();
    assert!(pairs.len() >= 6, "examples found: {}", pairs.len());
    for (req, resp) in pairs {
        let r = Response::parse(resp.as_bytes()).unwrap_or_else(|e| panic!("{resp}: {e}"));
        assert_eq!(r.to_line().trim_end(), resp, "response does not round-trip");
        // What the request itself decides (the envelope, its values and
        // the limits of a default minitower), checked; what depends on the
        // running Tower (held ids, pids), left to tests/control.rs.
        let decided = match wire::parse_request(req.as_bytes()) {
            Ok(parsed) => {
                assert_eq!(
                    parsed.to_line().trim_end(),
                    req,
                    "request does not round-trip"
                );
                match &parsed {
                    Request::Spawn(s) => {
                        wire::spawn_spec(s, &LeaseConfig::default(), &ControlLimits::default())
                            .err()
                    }
                    _ => None,
                }
            }
            Err(e) => Some(e),
        };
        if let Some(e) = decided {
            assert_eq!(r.error.as_ref(), Some(&e), "{req}");
        } else {
            assert_eq!(
                r.op.as_deref(),
                Some(wire::parse_request(req.as_bytes()).unwrap().op())
            );
        }
    }
}
