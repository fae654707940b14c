//! `leasectl metrics`: the scope in the Prometheus text exposition format
//! (version 0.0.4), for node_exporter's textfile collector or any scraper
//! that reads that format.
//!
//! A fleet already watches its hosts with Prometheus; one file per host
//! (written by a cron job or a systemd timer) makes every Tower's sessions
//! visible there without a daemon of ours listening on a port.
//!
//! The format's rules kept here: one `# HELP` and one `# TYPE` line per
//! family, before its samples, every family's samples together; counters
//! end in `_total`; label values escape `\`, `"` and newline; HELP text
//! escapes `\` and newline. Values are integers or decimal seconds.
//! Everything is labelled with `scope`, so several scopes of one host can
//! share a collector directory.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use crate::error::{Error, Result};
use crate::model::{Phase, ShellperView};
use crate::scan::Scan;

/// Every phase `sessions` counts (all of them, zeros included: a series
/// that vanishes at zero breaks `rate()` and alerts on absence).
pub const PHASES: [Phase; 7] = [
    Phase::Unclaimed,
    Phase::Held,
    Phase::Lapsed,
    Phase::Terminating,
    Phase::Exited,
    Phase::Unreachable,
    Phase::Dead,
];

/// Longest label value written (a command line can be long; Prometheus
/// stores every distinct value as a series).
pub const MAX_LABEL_CHARS: usize = 200;

/// Kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

/// Escapes a label value: `\` → `\\`, `"` → `\"`, newline → `\n`.
pub fn escape_label(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().take(MAX_LABEL_CHARS) {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes HELP text: `\` → `\\`, newline → `\n`.
pub fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Builds one exposition, family by family.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
    families: BTreeSet<String>,
    current: Option<(String, Kind)>,
}

impl Exposition {
    /// Starts family `name`. Each name may start only once (the format
    /// forbids a family split in two).
    ///
    /// # Panics
    /// When `name` was already started, or a counter's name does not end in
    /// `_total`: both are bugs in this module, caught by its tests.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        assert!(
            self.families.insert(name.to_string()),
            "metric family {name} written twice"
        );
        assert!(
            kind != Kind::Counter || name.ends_with("_total"),
            "counter {name} must end in _total"
        );
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.as_str());
        self.current = Some((name.to_string(), kind));
    }

    /// One sample of the current family.
    ///
    /// # Panics
    /// Without a current family (a bug in this module).
    pub fn sample(&mut self, labels: &[(&str, &str)], value: &str) {
        let Some((name, _)) = &self.current else {
            panic!("sample written outside a family");
        };
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape_label(v));
            }
            self.text.push('}');
        }
        self.text.push(' ');
        self.text.push_str(value);
        self.text.push('\n');
    }

    /// The text.
    pub fn finish(self) -> String {
        self.text
    }
}

/// A count as a sample value.
fn int(n: u64) -> String {
    n.to_string()
}

/// Milliseconds as decimal seconds (`1.250`).
fn secs(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

fn flag(b: bool) -> String {
    int(u64::from(b))
}

/// What the exposition says about a scope besides its shellpers.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// Orphans in the scope (`leasectl orphans --scope-only`), if counted.
    pub orphans: Option<usize>,
    /// Bytes of shellper logs in the scope (live and rotated).
    pub log_bytes: u64,
    /// Files `leasectl prune` would remove now.
    pub prunable: Option<usize>,
    /// How long the sweep took, in milliseconds.
    pub scrape_ms: u64,
}

/// Per-shellper gauges: (name, help, value getter).
type Getter = fn(&ShellperView) -> Option<String>;

const PER_SHELLPER_GAUGES: &[(&str, &str, Getter)] = &[
    (
        "shellper_reachable",
        "1 when the shellper answered STATUS within the timeout.",
        |v| Some(flag(v.reachable)),
    ),
    (
        "shellper_holder_alive",
        "1 when the lease holder's process is alive, 0 when it is gone (only shellpers with a holder).",
        |v| v.holder_alive.map(flag),
    ),
    (
        "shellper_lease_epoch",
        "Current lease epoch (incremented by every acquire).",
        |v| v.epoch.map(int),
    ),
    (
        "shellper_lease_expires_in_seconds",
        "Seconds until the held lease expires unless renewed.",
        |v| v.expires_in_ms.map(secs),
    ),
    (
        "shellper_kill_in_seconds",
        "Seconds until the shellper kills its tree (lapsed: end of the reattach window).",
        |v| v.kill_in_ms.map(secs),
    ),
    (
        "shellper_claim_in_seconds",
        "Seconds until the claim deadline of a never-claimed shellper.",
        |v| v.claim_in_ms.map(secs),
    ),
    (
        "shellper_lease_ttl_seconds",
        "Configured lease time-to-live.",
        |v| v.timings.as_ref().map(|t| secs(t.ttl_ms)),
    ),
    (
        "shellper_lease_window_seconds",
        "Configured reattach window.",
        |v| v.timings.as_ref().map(|t| secs(t.window_ms)),
    ),
    (
        "shellper_start_time_seconds",
        "Start of the shellper, seconds since the Unix epoch.",
        |v| v.started_at_ms.map(secs),
    ),
];

/// Per-session figures of a cgroup-contained session: (name, help, getter).
type SessionGetter = fn(&shellper_protocol::msg::Containment) -> Option<u64>;

const SESSION_GAUGES: &[(&str, &str, SessionGetter)] = &[
    (
        "shellper_session_processes",
        "Processes in the session's cgroup now.",
        |c| c.procs.map(u64::from),
    ),
    (
        "shellper_session_memory_bytes",
        "memory.current of the session's cgroup (where the memory controller is enabled).",
        |c| c.memory_current,
    ),
    (
        "shellper_session_memory_peak_bytes",
        "memory.peak of the session's cgroup (where the memory controller is enabled).",
        |c| c.memory_peak,
    ),
];

/// Per-shellper counters from STATUS: (name, help, value getter).
type CounterGetter = fn(&shellper_protocol::msg::Counters) -> u64;

const PER_SHELLPER_COUNTERS: &[(&str, &str, CounterGetter)] = &[
    (
        "shellper_lease_acquires_total",
        "Successful acquires (a Tower taking or re-taking the lease).",
        |c| c.acquires,
    ),
    ("shellper_lease_renewals_total", "Accepted renewals.", |c| {
        c.renewals
    }),
    (
        "shellper_lease_rejected_tokens_total",
        "Acquires refused for a wrong token.",
        |c| c.rejected_tokens,
    ),
    (
        "shellper_lease_stale_epochs_total",
        "Renewals or releases refused for a stale epoch (a fenced-off old holder).",
        |c| c.stale_epochs,
    ),
    (
        "shellper_lease_revocations_total",
        "Holders evicted by a newer acquire.",
        |c| c.revocations,
    ),
    (
        "shellper_lease_lapses_total",
        "Times the lease lapsed (holder gone or silent past the TTL).",
        |c| c.lapses,
    ),
    (
        "shellper_lease_stalls_total",
        "Own event-loop stalls detected (a fresh window granted instead of killing).",
        |c| c.stalls,
    ),
    (
        "shellper_protocol_errors_total",
        "Connections closed for malformed frames.",
        |c| c.protocol_errors,
    ),
];

/// Renders the exposition of one sweep.
pub fn render(scan: &Scan, extras: &Extras) -> String {
    let scope = scan.scope.display().to_string();
    let s = scope.as_str();
    let mut e = Exposition::default();

    e.family(
        "shellper_scope_exists",
        Kind::Gauge,
        "1 when the scope directory exists.",
    );
    e.sample(&[("scope", s)], &flag(scan.exists));
    e.family(
        "shellper_tower_up",
        Kind::Gauge,
        "1 when a Tower holds the scope's instance lock.",
    );
    e.sample(&[("scope", s)], &flag(scan.tower.pid.is_some()));
    e.family(
        "shellper_registry_readable",
        Kind::Gauge,
        "1 when the scope's registry could be read (0: corrupt or unreadable; tokens unknown).",
    );
    e.sample(&[("scope", s)], &flag(scan.registry_error.is_none()));
    e.family(
        "shellper_sessions",
        Kind::Gauge,
        "Shellpers of the scope by phase (unreachable: did not answer; dead: socket file, no process).",
    );
    for phase in PHASES {
        let n = scan.shellpers.iter().filter(|v| v.phase == phase).count();
        e.sample(&[("scope", s), ("phase", phase.as_str())], &int(n as u64));
    }
    if let Some(n) = extras.orphans {
        e.family(
            "shellper_orphans",
            Kind::Gauge,
            "Shellpers of the scope nobody looks after (leasectl orphans --scope-only).",
        );
        e.sample(&[("scope", s)], &int(n as u64));
    }
    e.family(
        "shellper_scope_log_bytes",
        Kind::Gauge,
        "Bytes of shellper logs in the scope, live and rotated.",
    );
    e.sample(&[("scope", s)], &int(extras.log_bytes));
    if let Some(n) = extras.prunable {
        e.family(
            "shellper_prunable_files",
            Kind::Gauge,
            "Registry entries, sockets and logs of gone shellpers that leasectl prune would remove.",
        );
        e.sample(&[("scope", s)], &int(n as u64));
    }
    e.family(
        "shellper_scrape_duration_seconds",
        Kind::Gauge,
        "How long leasectl took to sweep the scope.",
    );
    e.sample(&[("scope", s)], &secs(extras.scrape_ms));

    e.family(
        "shellper_info",
        Kind::Gauge,
        "One series per shellper (value 1) with its pid, command, leased mode and version.",
    );
    for v in &scan.shellpers {
        let pid = v.pid.map(|p| p.to_string()).unwrap_or_default();
        let leased = match v.leased {
            Some(true) => "true",
            Some(false) => "false",
            None => "",
        };
        e.sample(
            &[
                ("scope", s),
                ("id", &v.id),
                ("pid", &pid),
                ("command", v.command.as_deref().unwrap_or("")),
                ("leased", leased),
                ("version", v.version.as_deref().unwrap_or("")),
            ],
            "1",
        );
    }
    e.family(
        "shellper_phase",
        Kind::Gauge,
        "1 for the shellper's current phase.",
    );
    for v in &scan.shellpers {
        e.sample(
            &[("scope", s), ("id", &v.id), ("phase", v.phase.as_str())],
            "1",
        );
    }
    for (name, help, get) in PER_SHELLPER_GAUGES {
        e.family(name, Kind::Gauge, help);
        for v in &scan.shellpers {
            if let Some(x) = get(v) {
                e.sample(&[("scope", s), ("id", &v.id)], &x);
            }
        }
    }
    e.family(
        "shellper_clients",
        Kind::Gauge,
        "Connected clients by kind (tower, terminal, status).",
    );
    for v in &scan.shellpers {
        if let Some(clients) = &v.clients {
            use shellper_protocol::msg::ClientType;
            for (kind, name) in [
                (ClientType::Tower, "tower"),
                (ClientType::Terminal, "terminal"),
                (ClientType::Status, "status"),
            ] {
                let n = clients.iter().filter(|c| c.kind == kind).count();
                e.sample(
                    &[("scope", s), ("id", &v.id), ("kind", name)],
                    &int(n as u64),
                );
            }
        }
    }
    e.family(
        "shellper_session_cpu_seconds_total",
        Kind::Counter,
        "CPU time of everything that ran in the session's cgroup (cpu.stat usage_usec); cgroup-contained sessions only.",
    );
    for v in &scan.shellpers {
        if let Some(u) = v.containment.as_ref().and_then(|c| c.cpu_usec) {
            e.sample(
                &[("scope", s), ("id", &v.id)],
                &format!("{}.{:06}", u / 1_000_000, u % 1_000_000),
            );
        }
    }
    for (name, help, get) in SESSION_GAUGES {
        e.family(name, Kind::Gauge, help);
        for v in &scan.shellpers {
            if let Some(x) = v.containment.as_ref().and_then(get) {
                e.sample(&[("scope", s), ("id", &v.id)], &int(x));
            }
        }
    }
    for (name, help, get) in PER_SHELLPER_COUNTERS {
        e.family(name, Kind::Counter, help);
        for v in &scan.shellpers {
            if let Some(c) = &v.counters {
                e.sample(&[("scope", s), ("id", &v.id)], &int(get(c)));
            }
        }
    }
    e.finish()
}

/// `leasectl metrics [--output FILE [--mode OCTAL]]`: sweeps the scope and
/// prints (or writes atomically, with permissions `mode`) the exposition. Returns the exit code: 0 when the
/// metrics were produced (problems of the scope are in them:
/// `shellper_registry_readable 0`, phases `dead`/`unreachable`), errors
/// (an unusable scope, an unwritable FILE) are returned as such (exit 2).
pub async fn run(
    scope: &Path,
    timeout: std::time::Duration,
    output: Option<&Path>,
    mode: u32,
) -> Result<i32> {
    let started = std::time::Instant::now();
    let scan = crate::scan::scan_scope(scope, timeout, None).await?;
    let prunable = crate::prune::plan_scope(&scan, &tower_client::TidyPolicy::default())
        .await?
        .map(|p| p.actions.len());
    let dir = scope.to_path_buf();
    let (scan, orphans, log_bytes) = tokio::task::spawn_blocking(move || {
        let orphans = crate::orphans::find(&scan, None, true).orphans.len();
        let log_bytes = log_bytes(&dir);
        (scan, orphans, log_bytes)
    })
    .await
    .map_err(|e| Error::Output(std::io::Error::other(e)))?;
    let extras = Extras {
        orphans: scan.exists.then_some(orphans),
        log_bytes,
        prunable: if scan.exists { prunable } else { Some(0) },
        scrape_ms: started.elapsed().as_millis() as u64,
    };
    let text = render(&scan, &extras);
    match output {
        Some(path) => write_atomic(path, &text, mode)?,
        None => crate::output::out(&text)?,
    }
    Ok(crate::exit::EXIT_OK)
}

/// Writes `text` to `path` atomically ([`tower_client::write_atomic`]: a
/// hidden temporary file in the same directory, so a collector reading
/// `*.prom` never sees it, fsync, rename over `path`) with permissions
/// `mode`: 0600 unless the operator says otherwise (the `command` labels
/// hold command lines), 0640/0644 for a collector of another user.
pub fn write_atomic(path: &Path, text: &str, mode: u32) -> Result<()> {
    tower_client::write_atomic(path, text.as_bytes(), mode)
        .map_err(|e| Error::io("writing metrics to", path, e))
}

/// Bytes of the scope's shellper logs (`*.log` and `*.log.N`).
pub fn log_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.ends_with(".log") || n.contains(".log.")
        })
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
        assert_eq!(escape_label(&"é".repeat(500)).chars().count(), 200);
    }

    #[test]
    fn help_is_escaped() {
        assert_eq!(escape_help("a\\b\nc \"q\""), "a\\\\b\\nc \"q\"");
    }

    #[test]
    fn seconds_are_decimal() {
        assert_eq!(secs(0), "0.000");
        assert_eq!(secs(1250), "1.250");
        assert_eq!(secs(61_007), "61.007");
    }

    #[test]
    #[should_panic(expected = "written twice")]
    fn a_family_is_written_once() {
        let mut e = Exposition::default();
        e.family("x", Kind::Gauge, "h");
        e.family("x", Kind::Gauge, "h");
    }

    #[test]
    #[should_panic(expected = "_total")]
    fn counters_end_in_total() {
        Exposition::default().family("x", Kind::Counter, "h");
    }

    #[test]
    fn empty_scope_still_has_every_phase_at_zero() {
        let scan = Scan {
            scope: "/tmp/s".into(),
            exists: false,
            registry: None,
            registry_error: None,
            shellpers: Vec::new(),
            tower: Default::default(),
        };
        let t = render(&scan, &Extras::default());
        for p in PHASES {
            assert!(
                t.contains(&format!(
                    "shellper_sessions{{scope=\"/tmp/s\",phase=\"{}\"}} 0\n",
                    p.as_str()
                )),
                "{t}"
            );
        }
        assert!(t.contains("shellper_scope_exists{scope=\"/tmp/s\"} 0\n"));
    }

    #[test]
    fn atomic_write_leaves_no_temporary_and_has_the_mode_asked_for() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("shellper.prom");
        write_atomic(&p, "a 1\n", 0o600).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        write_atomic(&p, "a 2\n", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a 2\n");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }
}
