#![allow(clippy::unwrap_used)]
//! `leasectl metrics` against a live scope, checked with a real parser of
//! the Prometheus text format (the Python client's
//! `text_string_to_metric_families`, installed into a venv under target/).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use common::*;
use serde_json::Value;
use shellper_testkit::LeakGuard;

/// The parser's version, pinned so a release of it cannot change the test.
const PROMETHEUS_CLIENT: &str = "prometheus_client==0.26.0";

/// Parses the exposition, strictly: the client's parser (raises on a
/// malformed line), plus what it tolerates: a family split in two, a
/// sample of an undeclared family.
const CHECKER: &str = r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families
text = sys.stdin.read()
out, seen = [], set()
for f in text_string_to_metric_families(text):
    if f.name in seen:
        sys.exit("family %s appears twice (split)" % f.name)
    seen.add(f.name)
    if f.type == "unknown":
        sys.exit("samples of %s without a TYPE line" % f.name)
    out.append({"name": f.name, "type": f.type, "help": f.documentation,
                "samples": [{"name": s.name, "labels": s.labels, "value": s.value}
                            for s in f.samples]})
print(json.dumps(out))
"#;

/// A Python with prometheus_client: `SHELLPER_PROM_PYTHON`, else a venv
/// made (once) under target/. Fails the test when neither can be had: the
/// check must not silently pass.
fn python() -> &'static PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        if let Some(p) = std::env::var_os("SHELLPER_PROM_PYTHON") {
            return PathBuf::from(p);
        }
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/prom-venv");
        let py = venv.join("bin/python");
        let ok = |py: &Path| {
            Command::new(py)
                .args(["-c", "import prometheus_client.parser"])
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ok(&py) {
            let s = Command::new("python3")
                .arg("-m")
                .arg("venv")
                .arg(&venv)
                .status()
                .expect("python3 -m venv");
            assert!(s.success(), "python3 -m venv {} failed", venv.display());
            let s = Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check"])
                .arg(PROMETHEUS_CLIENT)
                .status()
                .expect("pip");
            assert!(
                s.success(),
                "pip install {PROMETHEUS_CLIENT} failed (offline? set SHELLPER_PROM_PYTHON to a \
                 python that has it)"
            );
            assert!(ok(&py), "prometheus_client not importable after install");
        }
        py
    })
}

/// Parses `text`; `Err(stderr)` when the parser rejects it.
fn parse(text: &str) -> Result<Vec<Value>, String> {
    let mut c = Command::new(python())
        .args(["-c", CHECKER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap())
}

fn family<'a>(fams: &'a [Value], name: &str) -> &'a Value {
    fams.iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no family {name}"))
}

/// The value of the sample of `fam` whose labels include all of `labels`.
fn value(fams: &[Value], fam: &str, sample: &str, labels: &[(&str, &str)]) -> f64 {
    let f = family(fams, fam);
    f["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == sample && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .unwrap_or_else(|| panic!("no sample {sample}{labels:?} in {f}"))["value"]
        .as_f64()
        .unwrap()
}

/// The checker itself rejects what the format forbids (so a green test
/// means the output is well-formed, not that the checker accepts anything).
#[test]
fn the_checker_rejects_malformed_expositions() {
    let good = "# HELP a_total x\n# TYPE a_total counter\na_total{l=\"v\"} 1\n";
    assert!(parse(good).is_ok());
    for bad in [
        // An unescaped quote in a label value.
        "# HELP a x\n# TYPE a gauge\na{l=\"v\"w\"} 1\n",
        // A value that is not a number.
        "# HELP a x\n# TYPE a gauge\na{l=\"v\"} one\n",
        // A family split in two.
        "# HELP a x\n# TYPE a gauge\na 1\n# HELP b x\n# TYPE b gauge\nb 1\na{x=\"1\"} 2\n",
        // A sample without a TYPE.
        "a 1\n",
        // A raw newline inside a label value.
        "# HELP a x\n# TYPE a gauge\na{l=\"v\nw\"} 1\n",
    ] {
        assert!(parse(bad).is_err(), "accepted: {bad:?}");
    }
}

#[test]
fn metrics_of_a_live_scope_parse_and_match_list() {
    let guard = LeakGuard::new("leasectl_metrics");
    let (tmp, scope) = scope();
    let tower = start_tower(
        &guard,
        &scope,
        "--ttl 3s --window 30s --spawn 2",
        &["sleep", "600"],
    );
    // A legacy shellper whose command needs escaping: a quote, a
    // backslash and a newline in its path.
    let weird = tmp.path().join("we\"ird\\na\nme");
    std::os::unix::fs::symlink("/bin/sleep", &weird).unwrap();
    let weird_s = weird.to_str().unwrap();
    legacy_shellper(&guard, &scope.join("sh-0000beef.sock"), &[weird_s, "600"]);
    // A socket file with nothing behind it.
    drop(std::os::unix::net::UnixListener::bind(scope.join("sh-deadbeef.sock")).unwrap());

    let out = leasectl(&guard, &scope).arg("metrics").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let fams = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let s = scope.to_str().unwrap();

    for (phase, n) in [
        ("held", 2.0),
        ("unclaimed", 1.0),
        ("dead", 1.0),
        ("lapsed", 0.0),
    ] {
        assert_eq!(
            value(
                &fams,
                "shellper_sessions",
                "shellper_sessions",
                &[("scope", s), ("phase", phase)]
            ),
            n,
            "{phase}"
        );
    }
    assert_eq!(
        value(&fams, "shellper_tower_up", "shellper_tower_up", &[]),
        1.0
    );
    // The label round-trips exactly through escaping and parsing.
    let info = family(&fams, "shellper_info");
    assert!(
        info["samples"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["labels"]["id"] == "sh-0000beef" && x["labels"]["command"] == weird_s),
        "{info}"
    );
    // Counters: `_total`, typed counter, per shellper.
    let acq = family(&fams, "shellper_lease_acquires");
    assert_eq!(acq["type"], "counter");
    for sp in &tower.spawned {
        let id = sp.id.as_str();
        assert_eq!(
            value(
                &fams,
                "shellper_lease_acquires",
                "shellper_lease_acquires_total",
                &[("id", id)]
            ),
            1.0
        );
        assert_eq!(
            value(
                &fams,
                "shellper_holder_alive",
                "shellper_holder_alive",
                &[("id", id)]
            ),
            1.0
        );
        let exp = value(
            &fams,
            "shellper_lease_expires_in_seconds",
            "shellper_lease_expires_in_seconds",
            &[("id", id)],
        );
        assert!(exp > 0.0 && exp <= 3.0, "{exp}");
        value(
            &fams,
            "shellper_lease_renewals",
            "shellper_lease_renewals_total",
            &[("id", id)],
        );
    }
    for c in [
        "shellper_lease_rejected_tokens",
        "shellper_lease_stale_epochs",
        "shellper_lease_lapses",
        "shellper_lease_stalls",
        "shellper_protocol_errors",
    ] {
        assert_eq!(family(&fams, c)["type"], "counter", "{c}");
    }
    // The unclaimed legacy one has a claim deadline; nobody holds it.
    let claim = value(
        &fams,
        "shellper_claim_in_seconds",
        "shellper_claim_in_seconds",
        &[("id", "sh-0000beef")],
    );
    assert!(claim > 0.0 && claim <= 60.0, "{claim}");

    // --output writes the same families atomically, mode 0600 (the command
    // labels hold command lines), and leaves no temporary behind.
    let dir = tmp.path().join("textfile");
    std::fs::create_dir(&dir).unwrap();
    let prom = dir.join("shellper.prom");
    let out = leasectl(&guard, &scope)
        .args(["metrics", "--output"])
        .arg(&prom)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.is_empty());
    let written = std::fs::read_to_string(&prom).unwrap();
    let f2 = parse(&written).unwrap();
    assert_eq!(f2.len(), fams.len());
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [std::ffi::OsString::from("shellper.prom")]);
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&prom), 0o600, "private by default");
    // For a collector of another user, the operator says so.
    for (arg, want) in [("0640", 0o640), ("644", 0o644)] {
        let out = leasectl(&guard, &scope)
            .args(["metrics", "--mode", arg, "-o"])
            .arg(&prom)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert_eq!(mode(&prom), want, "--mode {arg}");
    }
    // A mode that lets others write, or not the owner read, is refused.
    for bad in ["0666", "0400", "8", "1777"] {
        let out = leasectl(&guard, &scope)
            .args(["metrics", "--mode", bad, "-o"])
            .arg(&prom)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--mode {bad}: {out:?}");
    }
    // --help says what the labels hold.
    let help = leasectl(&guard, &scope)
        .args(["metrics", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("What the labels hold"), "{help}");
    assert!(help.contains("--mode 0640"), "{help}");

    // An unwritable destination is an error (exit 2), not a silent success.
    let out = leasectl(&guard, &scope)
        .args(["metrics", "-o", "/nonexistent-dir/x.prom"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let mut tower = tower;
    tower.kill();
    guard.kill_all();
}

/// A scope that does not exist is still a valid exposition (every phase
/// at zero, `shellper_scope_exists 0`), so an alert can fire on it.
#[test]
fn metrics_of_a_missing_scope_parse() {
    let guard = LeakGuard::new("leasectl_metrics_missing");
    let (_tmp, scope) = scope();
    let out = leasectl(&guard, &scope).arg("metrics").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let fams = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        value(&fams, "shellper_scope_exists", "shellper_scope_exists", &[]),
        0.0
    );
    assert_eq!(
        value(
            &fams,
            "shellper_sessions",
            "shellper_sessions",
            &[("phase", "held")]
        ),
        0.0
    );
}
