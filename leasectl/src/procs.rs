//! What /proc tells about shellpers that do not answer, and about shellper
//! processes that have no socket at all.
//!
//! Built on `shellper_proctree` (snapshots, stat parsing, tree membership,
//! and [`SocketOwners`]: which process listens on a socket path, so a wedged
//! shellper with no registry entry is still identified by the socket it
//! holds). What is leasectl's own:
//!
//! * recognising shellper processes: our binary by comm/exe, codev's Node
//!   `shellper-main.js` by its command line;
//! * the codev/friendly invocation in a shellper's argv (command and cwd of
//!   an unreachable shellper).
//!
//! Reading `cmdline` can block on a process in uninterruptible sleep (it
//! takes the target's mm lock), so it is never read for state `D`: an
//! inspector that hangs on the process table is the failure this tool
//! replaces.

use std::collections::HashSet;
use std::path::PathBuf;

use shellper_proctree::tree::{Session, TreeSpec, child_sessions, members, record_witnesses};
use shellper_proctree::{ProcInfo, SocketOwners, read_cmdline_if_safe};

/// The comm of our shellper binary.
pub const SHELLPER_COMM: &str = "shellper";
/// The script name of codev's Node shellper.
pub const LEGACY_SCRIPT: &str = "shellper-main.js";

/// Which kind of shellper a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    /// Our `shellper` binary.
    Shellper,
    /// codev's Node `shellper-main.js`.
    Node,
}

/// A shellper process found in the process table.
#[derive(Debug, Clone)]
pub struct FoundShellper {
    pub info: ProcInfo,
    pub flavor: Flavor,
    /// Paths of the unix sockets it listens on.
    pub listening: Vec<PathBuf>,
}

/// argv of `p` unless it is in uninterruptible sleep (see module docs), empty
/// when not read ([`read_cmdline_if_safe`]).
pub fn safe_cmdline(p: &ProcInfo) -> Vec<String> {
    read_cmdline_if_safe(p).unwrap_or_default()
}

/// Classifies a process as a shellper (or not). `exe_name` is the file name
/// of `/proc/PID/exe`, if readable.
pub fn classify(comm: &str, exe_name: Option<&str>, argv: &[String]) -> Option<Flavor> {
    let exe_is_shellper = exe_name.is_some_and(|e| e == SHELLPER_COMM || e == "shellper (deleted)");
    if comm == SHELLPER_COMM || exe_is_shellper {
        return Some(Flavor::Shellper);
    }
    // codev runs `node …/shellper-main.js CONFIG`; argv[0] may also be
    // rewritten (`exec -a`), so look at the first three words of the first
    // two arguments: an interpreter named node*, then the script.
    let words: Vec<&str> = argv
        .iter()
        .take(2)
        .flat_map(|a| a.split_ascii_whitespace())
        .take(3)
        .collect();
    let base = |w: &str| w.rsplit('/').next().unwrap_or(w).to_string();
    // The script may be run by node (codev), by a shell (test fakes), or
    // directly through its shebang. Anything else naming the file (an
    // editor, grep, less) is not a shellper: reaping it would kill a user's
    // work.
    let runner = |w: &str| {
        let b = base(w);
        b.starts_with("node") || matches!(b.as_str(), "sh" | "bash" | "dash" | "bun" | "deno")
    };
    let first = words.first().copied().unwrap_or("");
    let direct = base(first) == LEGACY_SCRIPT;
    let interpreted =
        (runner(first) || comm == "node") && words.iter().skip(1).any(|w| base(w) == LEGACY_SCRIPT);
    if direct || interpreted {
        return Some(Flavor::Node);
    }
    None
}

/// Every live shellper process (ours and codev's) in `snap`, other than
/// ourselves, with the sockets each listens on.
pub fn find_shellpers(snap: &[ProcInfo], owners: &SocketOwners) -> Vec<FoundShellper> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for p in snap
        .iter()
        .filter(|p| p.is_live() && p.pid != me && p.pid > 1)
    {
        // Kernel threads have no exe and no cmdline; skip the reads.
        let Some(exe_name) = shellper_proctree::exe_name(p.pid) else {
            continue;
        };
        let exe_name = Some(exe_name);
        let argv = safe_cmdline(p);
        if let Some(flavor) = classify(&p.comm, exe_name.as_deref(), &argv) {
            let mut info = p.clone();
            info.cmdline = argv;
            out.push(FoundShellper {
                info,
                flavor,
                listening: owners.paths_of(p.pid),
            });
        }
    }
    out
}

/// Command, args and cwd of the PTY command, read from a shellper's argv:
/// codev's invocation (JSON config as the last argument) or the friendly
/// one (`shellper … -- CMD ARGS…`).
pub fn invocation_from_argv(argv: &[String]) -> Option<(String, Vec<String>, Option<String>)> {
    if let Some(last) = argv.last()
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(last)
        && let Some(cmd) = v.get("command").and_then(|c| c.as_str())
    {
        let args = v
            .get("args")
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let cwd = v.get("cwd").and_then(|c| c.as_str()).map(str::to_string);
        return Some((cmd.to_string(), args, cwd));
    }
    let dash = argv.iter().position(|a| a == "--")?;
    let cmd = argv.get(dash + 1)?.clone();
    Some((cmd, argv[dash + 2..].to_vec(), None))
}

/// The PTY child of shellper `pid`: its direct child that leads its own
/// session.
pub fn pty_child(snap: &[ProcInfo], pid: i32) -> Option<i32> {
    child_sessions(snap, pid).first().map(|s| s.sid)
}

/// A shellper's tree in `snap`: the shellper itself first, then every
/// member by proctree's rules (descendants, and the sessions of its
/// children that lead one, plus `extra` sessions), with the spec that found
/// them (its witnesses are the members of verified sessions, so a later
/// check still recognises the session after its leader died).
///
/// The `child_pid` a STATUS reports is not a session here: it stays in
/// STATUS after the child exits (a husk), and the pid may lead a stranger's
/// session by now. While the child runs it is the shellper's child, so
/// [`child_sessions`] finds it with its start time.
pub fn tree_of(
    snap: &[ProcInfo],
    pid: i32,
    start_ticks: Option<u64>,
    extra: &[Session],
) -> (Vec<ProcInfo>, TreeSpec) {
    let root_ok = snap
        .iter()
        .any(|p| p.pid == pid && start_ticks.is_none_or(|t| t == p.start_ticks));
    let mut sessions = if root_ok {
        child_sessions(snap, pid)
    } else {
        Vec::new()
    };
    sessions.extend(extra.iter().copied().filter(|s| s.sid > 1));
    sessions.sort_unstable();
    sessions.dedup();
    let mut spec = TreeSpec {
        root: pid,
        root_start_ticks: start_ticks,
        sessions,
        ..TreeSpec::default()
    };
    let mut out: Vec<ProcInfo> = snap
        .iter()
        .filter(|p| p.pid == pid && p.is_live() && start_ticks.is_none_or(|t| t == p.start_ticks))
        .cloned()
        .collect();
    let mut rest = members(snap, &spec);
    record_witnesses(&mut spec, snap, &rest);
    rest.sort_by_key(|p| p.pid);
    out.extend(rest);
    (out, spec)
}

/// A PTY child a shellper's log names, with the log line's wall-clock time:
/// `PTY spawned: pid=N, …` at start-up (older shellpers: `shellper started
/// … child_pid=N`), `SPAWN: new PTY child pid=N` on a restart in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoggedChild {
    pub pid: i32,
    /// When the shellper logged it (ms since the Unix epoch): the child
    /// existed by then.
    pub logged_at_ms: u64,
}

/// The PTY children named in a shellper log's text (oldest first).
pub fn logged_children(log: &str) -> Vec<LoggedChild> {
    let field = |line: &str, key: &str| -> Option<i32> {
        line.split_ascii_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.trim_end_matches(',').parse().ok())
    };
    log.lines()
        .filter_map(|line| {
            let pid = if line.contains("PTY spawned:") {
                field(line, "pid=")?
            } else if line.contains("shellper started") {
                field(line, "child_pid=")?
            } else if line.contains("SPAWN: new PTY child") {
                field(line, "pid=")?
            } else {
                return None;
            };
            let ts = line.split_ascii_whitespace().next()?;
            let at = humantime::parse_rfc3339_weak(ts.trim_end_matches('Z')).ok()?;
            let logged_at_ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as u64;
            Some(LoggedChild { pid, logged_at_ms })
        })
        .collect()
}

/// Sessions a dead shellper left running: each PTY child its log names that
/// still leads its session in `snap`, and that is provably that child: it
/// started after the shellper (`shellper_start_ticks`, from the registry)
/// and no later than the log line that named it (`start_ms` gives a start
/// time in ms since the epoch; second-granular, hence one second of slack).
/// A pid reused since started after the line, so it is never taken.
pub fn sessions_left(
    snap: &[ProcInfo],
    shellper_start_ticks: u64,
    logged: &[LoggedChild],
    start_ms: &dyn Fn(u64) -> Option<u64>,
) -> Vec<Session> {
    let mut out: Vec<Session> = logged
        .iter()
        .filter_map(|c| {
            let p = snap.iter().find(|p| p.pid == c.pid && p.is_live())?;
            let s = Session::led_by(p)?;
            let started = start_ms(p.start_ticks)?;
            (p.start_ticks >= shellper_start_ticks && started <= c.logged_at_ms + 1000).then_some(s)
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Pids in `tracked` form a set; a shellper is tracked if its own pid or
/// its child's pid is in it.
pub fn is_tracked(tracked: &HashSet<u32>, pid: Option<u32>, child: Option<u32>) -> bool {
    pid.is_some_and(|p| tracked.contains(&p)) || child.is_some_and(|c| tracked.contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_shellpers() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(classify("shellper", None, &[]), Some(Flavor::Shellper));
        assert_eq!(
            classify("tokio-rt", Some("shellper"), &[]),
            Some(Flavor::Shellper)
        );
        assert_eq!(
            classify(
                "node",
                Some("node"),
                &s(&["/usr/bin/node", "/opt/codev/dist/shellper-main.js", "{}"])
            ),
            Some(Flavor::Node)
        );
        assert_eq!(
            classify("sleep", Some("sleep"), &s(&["node shellper-main.js", "60"])),
            Some(Flavor::Node)
        );
        assert_eq!(
            classify("grep", Some("grep"), &s(&["grep", "shellper-main.js"])),
            None
        );
        assert_eq!(
            classify(
                "sh",
                Some("dash"),
                &s(&["sh", "-c", "exec -a node\\ shellper-main.js sleep 60"])
            ),
            None
        );
        assert_eq!(
            classify("sh", Some("dash"), &s(&["sh", "/tmp/x/shellper-main.js"])),
            Some(Flavor::Node)
        );
        assert_eq!(
            classify("vim", Some("vim"), &s(&["vim", "shellper-main.js"])),
            None
        );
        assert_eq!(classify("bash", Some("bash"), &s(&["bash"])), None);
    }

    #[test]
    fn reads_logged_children_and_keeps_only_provable_sessions() {
        let log = "2026-11-26T22:42:03.238697Z  INFO shellper::app: shellper started pid=31801 child_pid=31803 command=true\n\
                   2026-11-26T22:42:03.254548Z  INFO shellper::child: PTY child exited pid=31803 status=Exited(0)\n\
                   garbage line\n\
                   2026-11-26T22:42:04.000000Z  INFO shellper::app: PTY spawned: pid=31850, cols=80, rows=24\n\
                   2026-11-26T22:43:00.000000Z  INFO shellper::child: SPAWN: new PTY child pid=31900 command=sh\n";
        let got = logged_children(log);
        assert_eq!(
            got.iter().map(|c| c.pid).collect::<Vec<_>>(),
            vec![31803, 31850, 31900]
        );
        assert_eq!(got[0].logged_at_ms, 1_795_732_923_238);
        let leader = |pid, start| ProcInfo {
            pid,
            ppid: 1,
            pgid: pid,
            sid: pid,
            state: 'S',
            start_ticks: start,
            comm: "sh".into(),
            cmdline: Vec::new(),
        };
        // Ticks are ms here: start_ms is the identity map.
        let ms = |t: u64| Some(t);
        let shellper_start = 1_795_732_923_000;
        let snap = vec![
            leader(31803, 1_795_732_923_100), // the child: between start and line
            leader(31900, 1_795_732_990_000), // started after its line: a reused pid
        ];
        assert_eq!(
            sessions_left(&snap, shellper_start, &got, &ms),
            vec![Session {
                sid: 31803,
                leader_start_ticks: 1_795_732_923_100
            }]
        );
        // Started before the shellper: not its child.
        let early = vec![leader(31803, shellper_start - 1)];
        assert!(sessions_left(&early, shellper_start, &got, &ms).is_empty());
    }

    #[test]
    fn reads_invocations() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let codev = s(&[
            "shellper",
            "/ignored.js",
            r#"{"command":"bash","args":["-l"],"cwd":"/tmp","env":{},"cols":80,"rows":24,"socketPath":"/x"}"#,
        ]);
        assert_eq!(
            invocation_from_argv(&codev),
            Some(("bash".into(), vec!["-l".into()], Some("/tmp".into())))
        );
        let friendly = s(&["shellper", "--socket", "/x", "--", "sleep", "60"]);
        assert_eq!(
            invocation_from_argv(&friendly),
            Some(("sleep".into(), vec!["60".into()], None))
        );
        assert_eq!(invocation_from_argv(&s(&["shellper"])), None);
    }
}
