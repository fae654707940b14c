//! Spawning a shellper (docs/CONVENTIONS.md, "Spawning a shellper").
//!
//! Pipeline: exec `shellper --config-stdin` (stdin and stdout pipes,
//! stderr appended to `<id>.log`, every other descriptor closed at exec) →
//! write the token line and the JSON config line and close stdin (argv
//! carries neither the environment, which `/proc/PID/cmdline` shows to
//! every user and which one argument caps at 128 KiB, nor the token) →
//! read the info
//! line (bounded) → check the pid → record the shellper in the registry →
//! connect → HELLO/WELCOME → ACQUIRE/GRANT → start its holder.
//!
//! A failure at any step kills whatever was started and verifies it is
//! gone before returning an error that names the step and carries the tail
//! of the shellper's log, where the shellper explains itself.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use shellper_proctree::{
    LinuxTable, ProcessTable, Session, Sig, TreeSpec, members, read_stat, snapshot,
};
use shellper_protocol::{LeaseConfig, Token};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::conn::{self, HelloOpts};
use crate::ctx::Ctx;
use crate::error::{Error, Result, SpawnFailure};
use crate::holder::{Granted, ProcWatch, ShellperInfo};
use crate::registry::RegistryEntry;

/// What to run in a new shellper.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    /// Program run in the PTY.
    pub command: String,
    pub args: Vec<String>,
    /// Working directory; `None`: the Tower's.
    pub cwd: Option<PathBuf>,
    /// Start from the Tower's own environment (as codev does: the config's
    /// `env` is the child's *whole* environment). Keep this on unless you
    /// mean to build the environment from scratch.
    pub inherit_env: bool,
    /// Variables set on top (or instead, without `inherit_env`).
    pub env: BTreeMap<String, String>,
    /// Extra variables for the shellper process itself, which otherwise
    /// inherits the Tower's environment (tests use it to tag the tree).
    pub shellper_env: BTreeMap<String, String>,
    pub cols: u16,
    pub rows: u16,
    /// Lease timings for this shellper; `None`: the Tower's.
    pub lease: Option<LeaseConfig>,
}

impl SpawnSpec {
    /// A spec running `command` in an 80×24 PTY with the Tower's
    /// environment and working directory.
    pub fn new(command: impl Into<String>) -> Self {
        SpawnSpec {
            command: command.into(),
            args: Vec::new(),
            cwd: None,
            inherit_env: true,
            env: BTreeMap::new(),
            shellper_env: BTreeMap::new(),
            cols: 80,
            rows: 24,
            lease: None,
        }
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets one environment variable of the child.
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.insert(k.into(), v.into());
        self
    }

    /// Sets one variable in both the child's and the shellper's own
    /// environment (what a leak-guard tag needs).
    pub fn tag_env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        let (k, v) = (k.into(), v.into());
        self.shellper_env.insert(k.clone(), v.clone());
        self.env.insert(k, v);
        self
    }

    /// Sets the working directory.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Overrides the lease timings.
    pub fn lease(mut self, lease: LeaseConfig) -> Self {
        self.lease = Some(lease);
        self
    }
}

/// Finds the shellper binary: `explicit` if given, else `shellper` next to
/// the current executable (or its parent, for test binaries in `deps/`),
/// else on `PATH`.
pub fn resolve_shellper(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(Error::ShellperNotFound(format!(
                "{} does not exist or is not a file",
                p.display()
            )))
        };
    }
    let mut tried = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        for d in [Some(dir), dir.parent()].into_iter().flatten() {
            let c = d.join("shellper");
            if c.is_file() {
                return Ok(c);
            }
            tried.push(c.display().to_string());
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let c = d.join("shellper");
            if c.is_file() {
                return Ok(c);
            }
        }
        tried.push("every directory of PATH".into());
    }
    Err(Error::ShellperNotFound(format!(
        "looked at {}; build it (cargo build -p shellper) or pass its path",
        tried.join(", ")
    )))
}

/// The info line a shellper prints once its socket listens.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InfoLine {
    pid: u32,
    #[allow(dead_code)]
    start_time: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The last `lines` lines of a log file (at most 8 KiB are read).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return format!("(no log: {e})"),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(8192)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    if tail.trim().is_empty() {
        "(log is empty)".into()
    } else {
        tail
    }
}

fn new_id(ctx: &Ctx) -> String {
    loop {
        let id = format!("sh-{:08x}", rand::random::<u32>());
        let reg = ctx.registry.snapshot();
        if reg.get(&id).is_none()
            && !ctx.scope.socket_path(&id).exists()
            && !ctx.scope.log_path(&id).exists()
        {
            return id;
        }
    }
}

/// Marks every descriptor from 3 up close-on-exec in the child, between fork
/// and exec: a Tower may have inherited descriptors without CLOEXEC from its
/// own parent (a shell, a test harness, a jobserver pipe) and a shellper
/// must keep none of them (they would pin pipes their owners wait on).
/// Marking rather than closing keeps std's own exec-error pipe working.
fn close_inherited_fds(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec; it only
    // makes raw syscalls (close_range, fcntl), which are async-signal-safe,
    // and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
            let r = libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            );
            if r != 0 {
                // Kernels before 5.11: mark them one by one.
                for fd in 3..4096 {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            Ok(())
        });
    }
}

struct Started {
    id: String,
    socket: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Identity of the shellper once known.
    ident: Option<(u32, u64)>,
    registered: bool,
    /// The session's cgroup, once created.
    cgroup: Option<shellper_proctree::Cgroup>,
}

type StepErr = (&'static str, String);

/// Spawns a shellper and acquires its lease; the Tower starts its holder.
pub(crate) async fn spawn(ctx: &Arc<Ctx>, spec: SpawnSpec) -> Result<Granted> {
    let id = new_id(ctx);
    let mut st = Started {
        socket: ctx.scope.socket_path(&id),
        log: ctx.scope.log_path(&id),
        id,
        child: None,
        ident: None,
        registered: false,
        cgroup: None,
    };
    match pipeline(ctx, &spec, &mut st).await {
        Ok(h) => Ok(h),
        Err((step, detail)) => {
            let cleanup = cleanup(ctx, &mut st).await;
            Err(Error::Spawn(Box::new(SpawnFailure {
                id: st.id.clone(),
                step,
                detail,
                cleanup,
                log_tail: log_tail(&st.log, 20),
                log: st.log.clone(),
            })))
        }
    }
}

async fn pipeline(
    ctx: &Arc<Ctx>,
    spec: &SpawnSpec,
    st: &mut Started,
) -> std::result::Result<Granted, StepErr> {
    let deadline = Instant::now() + ctx.cfg.spawn_timeout;
    let lease = spec.lease.unwrap_or(ctx.cfg.lease);
    let cwd = match &spec.cwd {
        Some(c) => c.clone(),
        None => std::env::current_dir().map_err(|e| ("prepare", format!("current dir: {e}")))?,
    };
    let mut env: BTreeMap<String, String> = if spec.inherit_env {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect()
    } else {
        BTreeMap::new()
    };
    env.extend(spec.env.clone());
    env.entry("TERM".into())
        .or_insert_with(|| "xterm-256color".into());
    // The session's cgroup, before anything runs: the shellper moves the
    // PTY child into it between fork and exec.
    if let Some(base) = &ctx.session_base {
        let cg = base
            .create_session(&st.id, &ctx.cfg.limits)
            .map_err(|e| ("cgroup", e.to_string()))?;
        st.cgroup = Some(cg);
    }
    let ms = |d: Duration| d.as_millis() as u64;
    let mut config = serde_json::json!({
        "command": spec.command,
        "args": spec.args,
        "cwd": cwd.to_string_lossy(),
        "env": env,
        "cols": spec.cols,
        "rows": spec.rows,
        "socketPath": st.socket.to_string_lossy(),
        "lease": {
            "ttlMs": ms(lease.ttl),
            "windowMs": ms(lease.window),
            "claimMs": ms(lease.claim),
            "killGraceMs": ms(lease.kill_grace),
        },
    });
    if let Some(cg) = &st.cgroup {
        config["cgroup"] = serde_json::Value::from(cg.dir().to_string_lossy());
    }
    let config = config.to_string();

    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&st.log)
        .map_err(|e| ("open log", format!("{}: {e}", st.log.display())))?;
    let mut cmd = Command::new(&ctx.shellper_bin);
    cmd.arg("--config-stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .envs(&spec.shellper_env)
        .kill_on_drop(false);
    close_inherited_fds(&mut cmd);
    let child = st.child.insert(
        cmd.spawn()
            .map_err(|e| ("exec", format!("{}: {e}", ctx.shellper_bin.display())))?,
    );
    let child_pid = child.id().ok_or(("exec", "exited at once".to_string()))?;

    // Token line, config line, then EOF (SPEC §3).
    let mut stdin = child
        .stdin
        .take()
        .ok_or(("write config", "no stdin pipe".into()))?;
    let token = Token::from_bytes(rand::random());
    // The token's hex (and so this buffer) is zeroed when dropped.
    let input = zeroize::Zeroizing::new(format!("{}\n{config}\n", token.to_hex().as_str()));
    match tokio::time::timeout_at(deadline, stdin.write_all(input.as_bytes())).await {
        Err(_) => return Err(("write config", "timed out".into())),
        Ok(Err(e)) => return Err(("write config", e.to_string())),
        Ok(Ok(())) => {}
    }
    drop(stdin);

    // Info line.
    let stdout = child
        .stdout
        .take()
        .ok_or(("read info line", "no stdout pipe".into()))?;
    let mut reader = BufReader::new(stdout);
    let mut info_line = String::new();
    let n = match tokio::time::timeout_at(deadline, reader.read_line(&mut info_line)).await {
        Err(_) => {
            return Err((
                "read info line",
                format!("no info line within {:?}", ctx.cfg.spawn_timeout),
            ));
        }
        Ok(Err(e)) => return Err(("read info line", e.to_string())),
        Ok(Ok(n)) => n,
    };
    if n == 0 {
        // Closed without a line: the shellper most likely exited; say how.
        let status = tokio::time::timeout(Duration::from_millis(500), child.wait()).await;
        let how = match status {
            Ok(Ok(s)) => match (s.code(), s.signal()) {
                (Some(c), _) => format!("the shellper exited with code {c} before reporting"),
                (None, Some(sig)) => format!("the shellper was killed by signal {sig}"),
                _ => "the shellper exited before reporting".into(),
            },
            _ => "stdout closed without an info line".into(),
        };
        return Err(("read info line", how));
    }
    drop(reader);
    let info: InfoLine = serde_json::from_str(info_line.trim())
        .map_err(|e| ("read info line", format!("{e}: {:?}", info_line.trim())))?;
    if info.pid != child_pid {
        return Err((
            "read info line",
            format!("reported pid {} but we started pid {child_pid}", info.pid),
        ));
    }
    let ticks = start_ticks(child_pid)
        .ok_or(("identity", format!("pid {child_pid} has no /proc entry")))?;
    st.ident = Some((child_pid, ticks));

    // Durable before acquiring: if this Tower dies right after GRANT, its
    // successor finds the token and adopts the shellper.
    let entry = RegistryEntry {
        id: st.id.clone(),
        token: token.clone(),
        pid: child_pid,
        start_ticks: ticks,
        socket: st.socket.clone(),
        command: spec.command.clone(),
        args: spec.args.clone(),
        cwd: cwd.to_string_lossy().into_owned(),
        created_at_ms: now_ms(),
        cgroup: st.cgroup.as_ref().map(|c| c.dir().to_path_buf()),
    };
    ctx.registry
        .commit(|r| r.upsert(entry))
        .await
        .map_err(|e| ("registry", e.to_string()))?;
    st.registered = true;

    let left = deadline.saturating_duration_since(Instant::now());
    let mut c = conn::connect(&st.socket, HelloOpts::LEASE, left, true)
        .await
        .map_err(|e| ("connect", e.to_string()))?;
    match &c.welcome.lease {
        Some(l) if l.leased && l.shellper_pid == child_pid => {}
        Some(l) => {
            return Err((
                "connect",
                format!(
                    "WELCOME says leased={} shellperPid={} (expected a leased shellper, pid {child_pid})",
                    l.leased, l.shellper_pid
                ),
            ));
        }
        None => return Err(("connect", "WELCOME without the lease extension".into())),
    }
    let left = deadline.saturating_duration_since(Instant::now());
    let (grant, exit) = conn::acquire(&mut c, &token, ctx.holder.clone(), left)
        .await
        .map_err(|e| ("acquire", e.to_string()))?;

    let info = ShellperInfo {
        id: st.id.clone(),
        pid: child_pid,
        start_ticks: ticks,
        child_pid: u32::try_from(c.welcome.pid).ok(),
        socket: st.socket.clone(),
        log: st.log.clone(),
        command: spec.command.clone(),
        args: spec.args.clone(),
        cwd: cwd.to_string_lossy().into_owned(),
        cgroup: st.cgroup.as_ref().map(|c| c.dir().to_path_buf()),
    };
    let child = st
        .child
        .take()
        .ok_or(("acquire", "internal: child handle missing".into()))?;
    Ok(Granted {
        info,
        token,
        conn: c,
        grant,
        exit,
        proc: ProcWatch::Child(child),
    })
}

/// Start time of `pid` in clock ticks since boot, if it exists.
fn start_ticks(pid: u32) -> Option<u64> {
    read_stat(pid as i32).map(|p| p.start_ticks)
}

/// The live tree of shellper `root` as `(pid, start_ticks)` pairs, by
/// proctree's membership rules: its descendants, plus every process in a
/// session led by one of them (the PTY child `setsid`s, and so may the
/// jobs it starts; their members stay in those sessions even when they
/// escaped to PID 1). Grows the set of sessions until it stops changing.
fn tree_of(root: u32, root_start_ticks: Option<u64>) -> Vec<(i32, u64)> {
    let snap = snapshot();
    let mut spec = TreeSpec {
        root: root as i32,
        root_start_ticks,
        ..TreeSpec::default()
    };
    loop {
        let tree = members(&snap, &spec);
        let mut led: Vec<Session> = tree.iter().filter_map(Session::led_by).collect();
        led.sort_unstable();
        if led == spec.sessions {
            return tree.iter().map(|p| (p.pid, p.start_ticks)).collect();
        }
        spec.sessions = led;
    }
}

/// [`tree_of`] on the blocking pool: it reads all of /proc, which must not
/// run on the Tower's runtime thread (with one runtime thread, every
/// renewal of every lease would wait for it).
async fn tree_of_blocking(root: u32, root_start_ticks: Option<u64>) -> Vec<(i32, u64)> {
    tokio::task::spawn_blocking(move || tree_of(root, root_start_ticks))
        .await
        .unwrap_or_default()
}

/// Kills whatever a failed spawn started and verifies it is gone. Returns
/// an empty string on success, else a sentence for the error message.
async fn cleanup(ctx: &Arc<Ctx>, st: &mut Started) -> String {
    let mut problems = Vec::new();
    if let Some(mut child) = st.child.take() {
        if let Some(pid) = child.id() {
            let ticks = st.ident.map(|i| i.1).or_else(|| start_ticks(pid));
            // Remember the tree before anything dies: once the shellper is
            // gone its orphans are reparented and no longer look like ours.
            let mut tree = tree_of_blocking(pid, ticks).await;
            // SIGTERM first: a real shellper runs its kill ladder on it.
            if let Some(t) = ticks {
                let _ = LinuxTable.signal(pid as i32, t, Sig::Term);
            }
            let grace =
                ctx.cfg.lease.kill_grace.min(Duration::from_secs(5)) + Duration::from_secs(1);
            let exited = tokio::time::timeout(grace, child.wait()).await.is_ok();
            if !exited {
                for d in tree_of_blocking(pid, ticks).await {
                    if !tree.contains(&d) {
                        tree.push(d);
                    }
                }
                let _ = child.start_kill();
                if tokio::time::timeout(Duration::from_secs(2), child.wait())
                    .await
                    .is_err()
                {
                    problems.push(format!("shellper pid {pid} did not die on SIGKILL"));
                }
            }
            // Anything of its tree still alive is killed through a pidfd
            // pinned to its start time, then waited for.
            let until = Instant::now() + Duration::from_secs(2);
            loop {
                let t2 = tree.clone();
                let alive: Vec<_> = tokio::task::spawn_blocking(move || {
                    t2.into_iter()
                        .filter(|(p, t)| LinuxTable.alive(*p, *t))
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap_or_default();
                if alive.is_empty() {
                    break;
                }
                if Instant::now() >= until {
                    problems.push(format!(
                        "survivors: {}",
                        alive
                            .iter()
                            .map(|(p, _)| p.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    break;
                }
                for (p, t) in &alive {
                    let _ = LinuxTable.signal(*p, *t, Sig::Kill);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        } else {
            // Already reaped by an earlier wait: nothing runs.
            let _ = child.wait().await;
        }
    }
    if let Some(cg) = st.cgroup.take() {
        // The cgroup holds exactly what the failed session started.
        let grace = ctx.cfg.lease.kill_grace.min(Duration::from_secs(1));
        match crate::contain::kill_session_cgroup(cg, grace).await {
            Ok(None) => {}
            Ok(Some(r)) if r.is_clean() && r.remove_error.is_none() => {}
            Ok(Some(r)) => problems.push(format!(
                "session cgroup: {} survivor(s){}",
                r.report.survivors.len(),
                r.remove_error.map(|e| format!(", {e}")).unwrap_or_default()
            )),
            Err(e) => problems.push(format!("session cgroup: {e}")),
        }
    }
    if st.registered {
        let id = st.id.clone();
        if let Err(e) = ctx
            .registry
            .commit(|r| {
                r.remove(&id);
            })
            .await
        {
            problems.push(format!("could not remove it from the registry: {e}"));
        }
    }
    let _ = std::fs::remove_file(&st.socket);
    if problems.is_empty() {
        String::new()
    } else {
        format!(" (cleanup incomplete: {})", problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_of_finds_children_and_kill_by_identity_ends_them() {
        let guard = shellper_testkit::LeakGuard::new("tree_of_unit");
        let me = std::process::id();
        let mut cmd = std::process::Command::new("sleep");
        guard.apply(cmd.arg("5"));
        let mut child = cmd.spawn().expect("spawn sleep");
        let cpid = child.id();
        let ct = start_ticks(cpid).expect("child stat");
        assert!(tree_of(me, start_ticks(me)).contains(&(cpid as i32, ct)));
        assert!(LinuxTable.alive(cpid as i32, ct));
        assert_eq!(
            LinuxTable.signal(cpid as i32, ct, Sig::Kill).expect("kill"),
            shellper_proctree::Delivery::Sent
        );
        child.wait().expect("reap");
        assert!(!LinuxTable.alive(cpid as i32, ct));
        assert!(
            !tree_of(me, start_ticks(me))
                .iter()
                .any(|(p, _)| *p == cpid as i32)
        );
        guard.finish();
    }
}
