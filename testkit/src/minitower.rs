//! A `minitower` run by a test: started tagged by a [`LeakGuard`], its
//! JSON-lines events read by a thread of their own, waited for with
//! deadlines, its stderr kept for failure messages, SIGKILLed on drop.
//! Shared by the end-to-end tests so that each scenario file does not carry
//! its own copy.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{LeakGuard, cargo_bin};

/// What a scenario starts with: its leak guard (named `name`), a temporary
/// directory (removed when dropped: keep it for the whole test) and the
/// scope path inside it, `TMP/scope` (not created: minitower creates it).
pub fn scene(name: &str) -> (LeakGuard, tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let scope = tmp.path().join("scope");
    (LeakGuard::new(name), tmp, scope)
}

/// minitower's arguments from one line of flags (split at white space: no
/// flag or value of these tests has a space in it) and the command it runs
/// (kept whole, after `--`; none when empty). One line per run instead of
/// one line per argument: the scenarios differ in their timings and
/// counts, and those are what a reader should see.
pub fn args(flags: &str, command: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = flags.split_whitespace().map(str::to_string).collect();
    if !command.is_empty() {
        v.push("--".into());
        v.extend(command.iter().map(|c| c.to_string()));
    }
    v
}

/// A running minitower with its event lines.
#[derive(Debug)]
pub struct MiniTower {
    pub child: Child,
    rx: Option<mpsc::Receiver<Value>>,
    /// Every event read so far, in order.
    pub seen: Vec<Value>,
    stderr: Arc<Mutex<String>>,
    /// Signalled when stderr reached EOF (every writer closed it).
    stderr_eof: mpsc::Receiver<()>,
}

impl MiniTower {
    /// `minitower --scope SCOPE ARGS…`, tagged by `guard`, `RUST_LOG=warn`,
    /// stdin from /dev/null, stderr piped (add limits or other settings
    /// before [`spawn`](Self::spawn)).
    pub fn command(guard: &LeakGuard, scope: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(cargo_bin("minitower"));
        guard.apply(&mut cmd);
        cmd.arg("--scope")
            .arg(scope)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    /// Starts `cmd` (from [`command`](Self::command)); with `read_stdout`,
    /// its stdout is piped and read as events, else it is left as set.
    ///
    /// # Panics
    /// If the process cannot be started, or prints a line that is not JSON.
    pub fn spawn(mut cmd: Command, read_stdout: bool) -> MiniTower {
        if read_stdout {
            cmd.stdout(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("start minitower");
        let rx = read_stdout.then(|| {
            let (tx, rx) = mpsc::channel();
            let out = child.stdout.take().expect("piped stdout");
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    let v: Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("minitower printed non-JSON {line:?}: {e}"));
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            });
            rx
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("piped stderr");
        let e2 = stderr.clone();
        let (eof_tx, stderr_eof) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                e2.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            let _ = eof_tx.send(());
        });
        MiniTower {
            child,
            rx,
            seen: Vec::new(),
            stderr,
            stderr_eof,
        }
    }

    /// `minitower --scope SCOPE ARGS…` with its events read.
    pub fn start(guard: &LeakGuard, scope: &Path, args: &[&str]) -> MiniTower {
        MiniTower::spawn(MiniTower::command(guard, scope, args), true)
    }

    /// [`start`](Self::start) with the arguments as [`args`] builds them:
    /// `MiniTower::run(&g, &scope, "--ttl 500ms --spawn 3", &["sh", "-c", TREE])`.
    pub fn run(guard: &LeakGuard, scope: &Path, flags: &str, command: &[&str]) -> MiniTower {
        let a = args(flags, command);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        MiniTower::start(guard, scope, &a)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for an event matching `pred` (every event is kept in
    /// [`seen`](Self::seen); one seen earlier matches at once).
    ///
    /// # Panics
    /// If none comes within `timeout` (naming what was seen and stderr).
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let got = match &self.rx {
                Some(rx) => rx.recv_timeout(left).ok(),
                None => None,
            };
            match got {
                Some(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                None => panic!(
                    "no matching event within {timeout:?}; seen: {:#?}\nstderr: {}",
                    self.seen,
                    self.stderr()
                ),
            }
        }
    }

    /// Waits for the first event named `name`.
    pub fn event(&mut self, name: &str, timeout: Duration) -> Value {
        self.wait_for(timeout, |v| v["event"] == name)
    }

    /// Reads events for `d`.
    pub fn collect_for(&mut self, d: Duration) {
        let Some(rx) = &self.rx else { return };
        let deadline = Instant::now() + d;
        while let Ok(v) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            self.seen.push(v);
        }
    }

    /// The events named `name` seen so far.
    pub fn of(&self, name: &str) -> Vec<Value> {
        self.seen
            .iter()
            .filter(|v| v["event"] == name)
            .cloned()
            .collect()
    }

    pub fn count(&self, name: &str) -> usize {
        self.seen.iter().filter(|v| v["event"] == name).count()
    }

    /// `(id, shellper pid)` of every `spawned` and `adopted` event so far.
    pub fn shellpers(&self) -> Vec<(String, u32)> {
        self.seen
            .iter()
            .filter(|v| v["event"] == "spawned" || v["event"] == "adopted")
            .filter_map(|v| Some((v["id"].as_str()?.to_string(), v["pid"].as_u64()? as u32)))
            .collect()
    }

    /// Sends `sig` to the minitower.
    ///
    /// # Panics
    /// If kill(2) fails.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid, which we have not reaped.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// Waits for the exit, then reads what it printed last and waits for
    /// stderr's EOF, so [`seen`](Self::seen) and [`stderr`](Self::stderr)
    /// hold everything.
    ///
    /// # Panics
    /// If it does not exit within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                self.collect_for(Duration::from_millis(100));
                let _ = self.stderr_eof.recv_timeout(Duration::from_secs(2));
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "minitower did not exit within {timeout:?}; seen {:#?}; stderr: {}",
                self.seen,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the exit and checks its code; returns stderr, for more
    /// checks of what it said.
    ///
    /// # Panics
    /// If it does not exit within `timeout`, or exits otherwise than with
    /// `code` (naming the status and stderr).
    pub fn expect_exit(&mut self, timeout: Duration, code: i32) -> String {
        let st = self.wait_exit(timeout);
        let err = self.stderr();
        assert_eq!(
            st.code(),
            Some(code),
            "minitower exited {st}; stderr:\n{err}"
        );
        err
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for MiniTower {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_split_the_flags_and_keep_the_command_whole() {
        assert_eq!(
            args("--ttl 500ms  --spawn 3", &["sh", "-c", "sleep 1 & wait"]),
            [
                "--ttl",
                "500ms",
                "--spawn",
                "3",
                "--",
                "sh",
                "-c",
                "sleep 1 & wait"
            ]
        );
        assert_eq!(args("--on-exit terminate", &[]), ["--on-exit", "terminate"]);
        assert!(args("", &[]).is_empty());
    }
}
