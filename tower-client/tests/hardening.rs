//! Faults outside the chaos run that used to break "never killed while a
//! live Tower holds it": each test here failed before its fix.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use shellper_testkit::LeakGuard;
use tower_client::{Event, Registry};

const SLEEPER: &str = "sleep 1000";

/// A revocation whose registry write fails (scope read-only for a moment)
/// must not leave the revoked entry on disk: the write is retried until it
/// lands, so a restarted Tower never re-adopts it (SPEC §8.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_entry_leaves_the_registry_even_if_the_first_write_fails() {
    let guard = LeakGuard::new("revoke_commit_retry");
    let a_dir = scope_tmp();
    let b_dir = scope_tmp();
    let (a, mut a_ev) = open(a_dir.path(), lease(400, 3000, 300));
    let h = a.spawn(spec(&guard, SLEEPER)).await.unwrap();
    std::fs::copy(
        a_dir.path().join("registry.json"),
        b_dir.path().join("registry.json"),
    )
    .unwrap();
    // A's registry cannot be written while it learns of the revocation: a
    // directory in its place makes the atomic rename fail (a read-only
    // directory would not stop root).
    let reg = a_dir.path().join("registry.json");
    let saved = a_dir.path().join("registry.saved");
    std::fs::rename(&reg, &saved).unwrap();
    std::fs::create_dir(&reg).unwrap();
    let (b, _b_ev) = open(b_dir.path(), lease(400, 3000, 300));
    let rep = b.adopt_all().await;
    assert_eq!(rep.adopted.len(), 1, "{:?}", rep.failed);
    wait_event(&mut a_ev, Duration::from_secs(3), |e| {
        matches!(e, Event::Revoked { .. })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(reg.is_dir(), "the first write failed");
    // Back to the registry as it was on disk, still listing the entry.
    std::fs::remove_dir(&reg).unwrap();
    std::fs::rename(&saved, &reg).unwrap();
    assert!(Registry::load(&reg).unwrap().get(h.id()).is_some());
    let t = tokio::time::Instant::now();
    loop {
        let on_disk = Registry::load(&a_dir.path().join("registry.json")).unwrap();
        if on_disk.get(h.id()).is_none() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the revoked entry stayed in the registry on disk"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let res = b.terminate_all(Duration::from_secs(5)).await;
    assert!(res.iter().all(|(_, r)| r.is_ok()), "{res:?}");
    guard.with_settle(Duration::from_millis(500)).finish();
}
