#![allow(clippy::unwrap_used)]
//! The operators' JSON contract, byte for byte: `list --json` and
//! `show --json` from fixed data, with field names, field order and the
//! `child` object's shape (`{"state":"running"}`, `{"state":"exited",
//! "code":…,"signal":…}`). leasectl's views are built from the protocol's
//! STATUS types; this test is what stops a change in the protocol crate
//! (a renamed field, a re-tagged enum) from silently changing what scripts
//! read. A deliberate change to the contract updates the snapshot
//! (`LEASECTL_UPDATE_SNAPSHOTS=1`) and adds fields only (model.rs).

mod common;

use leasectl::model::{ListDoc, Phase, PidSource, SCHEMA_VERSION, ShellperView, ShowDoc, TreeProc};
use leasectl::scan::TowerView;
use serde_json::json;
use shellper_protocol::msg::{ChildState, ClientInfo, ClientType, Containment};

fn running() -> ShellperView {
    let mut v = common::held_view();
    if let Some(c) = v.clients.as_mut() {
        c.push(ClientInfo {
            kind: ClientType::Status,
            pid: 901,
            holder: false,
        });
    }
    if let Some(c) = v.counters.as_mut() {
        c.stalls = 1;
        c.protocol_errors = 5;
    }
    // Issue 21, added deliberately: a session in a cgroup, with its
    // accounting (memory where the controller is delegated).
    v.containment = Some(Containment {
        cgroup: Some("/sys/fs/cgroup/user.slice/minitower.service/sh-0a1b2c3d".into()),
        controllers: vec!["memory".into(), "pids".into()],
        cpu_usec: Some(1_234_567),
        procs: Some(3),
        memory_current: Some(10 << 20),
        memory_peak: Some(12 << 20),
        pids_max: Some(256),
        memory_max: None,
    });
    v
}

fn exited() -> ShellperView {
    let mut v = running();
    v.id = "sh-11111111".into();
    v.phase = Phase::Lapsed;
    v.child = Some(ChildState::Exited {
        code: None,
        signal: Some(9),
    });
    v.holder = None;
    v.holder_alive = None;
    v.expires_in_ms = None;
    v.kill_in_ms = Some(598_500);
    v.clients = Some(vec![]);
    // The process tree: no cgroup, nothing accounted.
    v.containment = Some(Containment::default());
    v
}

fn exited_with_code() -> ShellperView {
    let mut v = exited();
    v.id = "sh-22222222".into();
    v.child = Some(ChildState::Exited {
        code: Some(3),
        signal: None,
    });
    v
}

fn unreachable() -> ShellperView {
    let mut v = ShellperView::bare("sh-33333333".into(), "/s/sh-33333333.sock".into());
    v.pid = Some(7);
    v.pid_source = Some(PidSource::Registry);
    v.start_ticks = Some(5);
    v.proc_state = Some("stopped".into());
    v.child_pid = Some(8);
    v.child = Some(ChildState::Running);
    v.error = Some("no STATUS answer within 1s".into());
    v
}

fn dead() -> ShellperView {
    let mut v = ShellperView::bare("sh-44444444".into(), "/s/sh-44444444.sock".into());
    v.phase = Phase::Dead;
    v
}

#[test]
fn list_json_contract() {
    let shellpers = vec![
        running(),
        exited(),
        exited_with_code(),
        unreachable(),
        dead(),
    ];
    let tower = TowerView {
        pid: Some(77),
        last_pid: None,
    };
    let doc = ListDoc {
        schema_version: SCHEMA_VERSION,
        scope: "/run/user/1000/shellper".into(),
        tower: &tower,
        shellpers: &shellpers,
    };
    let json = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    common::snapshot("list_contract.json", &json);
    // The child shapes, spelled out (the snapshot holds them too).
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let child = |i: usize| v["shellpers"][i]["child"].clone();
    assert_eq!(child(0), json!({"state": "running"}));
    assert_eq!(
        child(1),
        json!({"state": "exited", "code": null, "signal": 9})
    );
    assert_eq!(
        child(2),
        json!({"state": "exited", "code": 3, "signal": null})
    );
    assert_eq!(child(4), json!(null));
}

#[test]
fn show_json_contract() {
    let v = running();
    let tree = vec![TreeProc {
        pid: 4242,
        ppid: 77,
        pgid: 4242,
        sid: 4242,
        state: "S".into(),
        start_ticks: 100,
        comm: "shellper".into(),
        cmdline: vec!["shellper".into(), "--config-stdin".into()],
        role: "shellper",
    }];
    let doc = ShowDoc {
        schema_version: SCHEMA_VERSION,
        scope: "/run/user/1000/shellper".into(),
        shellper: &v,
        tree: &tree,
    };
    common::snapshot(
        "show_contract.json",
        &(serde_json::to_string_pretty(&doc).unwrap() + "\n"),
    );
}
