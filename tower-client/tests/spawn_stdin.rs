//! The spawn handshake keeps the session's environment out of argv: the
//! config travels on stdin with the token (SPEC §3, `--config-stdin`).

mod common;

use std::time::Duration;

use common::*;
use shellper_testkit::LeakGuard;

/// Scenario-independent: a secret in the session's environment is visible
/// in no `/proc/PID/cmdline` of ours, and an environment larger than one
/// argv string may be (128 KiB) still spawns and reaches the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_argv_and_a_140_kb_environment_spawns() {
    let guard = LeakGuard::new("spawn_stdin");
    let tmp = scope_tmp();
    let (tower, _ev) = open(tmp.path(), lease(500, 3000, 300));
    let secret = format!("sk-test-{}", guard.tag());
    // 140 KiB in 35 variables: each is below the kernel's per-string cap,
    // the whole is above what one argv string (the config JSON) may hold.
    let chunk = "x".repeat(4 * 1024);
    let mut s = spec(&guard, "sleep 1000").env("API_KEY", secret.clone());
    for i in 0..35 {
        s = s.env(format!("BIG_{i:02}"), chunk.clone());
    }
    let h = tower.spawn(s).await.expect("a 140 KB environment spawns");
    let child = h.info().child_pid.expect("child pid");
    // The child got both (its environ is readable by us only, 0400).
    let environ = std::fs::read(format!("/proc/{child}/environ")).expect("environ");
    let vars: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
    assert!(vars.contains(&format!("API_KEY={secret}").as_bytes()));
    for i in 0..35 {
        assert!(vars.contains(&format!("BIG_{i:02}={chunk}").as_bytes()));
    }
    // Nobody's argv shows it: not the shellper's, not the child's.
    let ours = guard.survivors();
    assert!(
        ours.iter().any(|s| s.pid as u32 == h.info().pid),
        "{ours:?}"
    );
    for s in &ours {
        let argv = s.cmdline.join(" ");
        assert!(
            !argv.contains(&secret),
            "secret in argv of {}: {argv:.200}",
            s.pid
        );
        assert!(
            !argv.contains("xxxxxxxx"),
            "environment in argv of {}",
            s.pid
        );
    }
    h.terminate(Duration::from_secs(5))
        .await
        .expect("terminate");
    guard.with_settle(Duration::from_millis(300)).finish();
}
