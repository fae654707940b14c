//! Helpers for tower-client's tests with real shellpers.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use shellper_testkit::{LEAK_TAG_VAR, LeakGuard, cargo_bin};
use tower_client::{Event, Events, LeaseConfig, Scope, SpawnSpec, Tower, TowerConfig};

pub fn lease(ttl_ms: u64, window_ms: u64, grace_ms: u64) -> LeaseConfig {
    LeaseConfig::new(
        Duration::from_millis(ttl_ms),
        Duration::from_millis(window_ms),
        Duration::from_secs(10),
        Duration::from_millis(grace_ms),
    )
    .expect("valid lease")
}

pub fn config(lease: LeaseConfig) -> TowerConfig {
    TowerConfig {
        lease,
        holder_name: "tower-client-test".into(),
        shellper_bin: Some(cargo_bin("shellper")),
        connect_timeout: Duration::from_secs(2),
        spawn_timeout: Duration::from_secs(10),
        tidy: tower_client::TidyPolicy::default(),
        ..TowerConfig::default()
    }
}

pub fn open(dir: &Path, lease: LeaseConfig) -> (Tower, Events) {
    open_cfg(dir, config(lease)).expect("tower")
}

/// Opens a Tower, retrying briefly while the scope is locked: after
/// `abandon()` in this process, a concurrent test's fork (between fork and
/// exec the child shares every descriptor, the lock's included) can hold
/// the flock for a moment. A real Tower never re-opens its scope in-process.
pub fn open_cfg(dir: &Path, cfg: TowerConfig) -> tower_client::Result<(Tower, Events)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        match Tower::open(Scope::open(dir).expect("scope"), cfg.clone()) {
            Err(tower_client::Error::ScopeLocked { .. })
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// `sh -c script` in a shellper, tagged for the leak guard (both the
/// shellper process and the PTY child carry the tag).
pub fn spec(guard: &LeakGuard, script: &str) -> SpawnSpec {
    SpawnSpec::new("/bin/sh")
        .args(["-c", script])
        .tag_env(LEAK_TAG_VAR, guard.tag())
}

/// Waits for an event matching `pred`, returning it (others are dropped).
pub async fn wait_event(
    events: &mut Events,
    timeout: Duration,
    mut pred: impl FnMut(&Event) -> bool,
) -> Event {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ev)) if pred(&ev) => return ev,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("event stream ended"),
            Err(_) => panic!("no matching event within {timeout:?}"),
        }
    }
}

/// Every queued event, without waiting.
pub fn drain(events: &mut Events) -> Vec<Event> {
    let mut v = Vec::new();
    while let Some(e) = events.try_recv() {
        v.push(e);
    }
    v
}

pub fn alive(pid: u32) -> bool {
    shellper_proctree::read_stat(pid as i32).is_some_and(|p| p.is_live())
}

/// A temporary directory usable as a scope (private: 0700).
pub fn scope_tmp() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    t
}
