//! Process-level start-up: session, identity, stdio and the log (the token
//! is read by the lease crate, `shellper_leased::invocation`).
//!
//! A shellper must outlive its spawner and keep nothing of it: it calls
//! `setsid()` (no controlling terminal, no job-control signals from the
//! spawner's terminal), reads the token, points stdin at /dev/null, writes
//! the info line and points stdout at /dev/null, and finally sends stderr to
//! its own log file, so no pipe of the spawner stays open.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

/// Log file size at which it is rotated to `<log>.1` (CONVENTIONS.md).
pub const LOG_ROTATE_BYTES: u64 = 1024 * 1024;
/// Overrides [`LOG_ROTATE_BYTES`] (at least 1024), for tests and operators
/// who want smaller logs.
pub const LOG_ROTATE_ENV: &str = "SHELLPER_LOG_ROTATE_BYTES";

/// Set once fd 2 points at the log ([`stderr_to`]): from then on every
/// rotation moves fd 2 to the new live file, so a panic message (written
/// straight to fd 2) lands in `<log>`, not in the rotated `<log>.1`.
static STDERR_FOLLOWS_LOG: AtomicBool = AtomicBool::new(false);

/// Looks up `/proc/<pid>` so its inode (and ctime) exists from now on:
/// codev's Tower uses that ctime as the shellper's start-time identity.
pub fn touch_proc_self() {
    shellper_proctree::touch_proc_self();
}

/// Starts a new session. EPERM means we already lead a process group
/// (a spawner that used `setsid`/`detached: true` for us), which is fine.
pub fn new_session() {
    if let Err(e) = rustix::process::setsid()
        && e != rustix::io::Errno::PERM
    {
        tracing::warn!(error = %e, "setsid failed");
    }
}

fn dev_null() -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| Error::io("open /dev/null", e))
}

/// Points stdin at /dev/null (the spawner's pipe is closed).
pub fn detach_stdin() -> Result<()> {
    let null = dev_null()?;
    rustix::stdio::dup2_stdin(&null).map_err(|e| Error::io("dup2 stdin", e.into()))
}

/// Writes the info line `{"pid":…,"startTime":…}` and a newline, then
/// points stdout at /dev/null so the spawner's read sees EOF.
pub fn write_info_line(pid: u32, start_time_ms: u64) -> Result<()> {
    let line = format!("{{\"pid\":{pid},\"startTime\":{start_time_ms}}}\n");
    {
        let mut out = io::stdout().lock();
        // A spawner that already went away is not our problem: carry on.
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }
    let null = dev_null()?;
    rustix::stdio::dup2_stdout(&null).map_err(|e| Error::io("dup2 stdout", e.into()))
}

/// Points stderr at the log file (panics land there too).
pub fn stderr_to(path: &Path) -> Result<()> {
    let f = open_log(path)?;
    rustix::stdio::dup2_stderr(&f).map_err(|e| Error::io("dup2 stderr", e.into()))?;
    STDERR_FOLLOWS_LOG.store(true, Ordering::SeqCst);
    Ok(())
}

fn open_log(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("open log {}", path.display()), e))
}

/// An append-only log file rotated to `<path>.1` when it reaches
/// [`LOG_ROTATE_BYTES`], so a chatty shellper never fills the disk: at most
/// two files of at most about 1 MiB each. The size is the file's own (fd 2
/// writes to the same file behind our back: panics, the spawner's early
/// messages), a rotated file is cut to the cap, and fd 2 follows the live
/// file once it points at the log.
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    file: File,
    size: u64,
    max: u64,
}

impl RotatingLog {
    pub fn open(path: &Path, max: u64) -> Result<Self> {
        let file = open_log(path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(RotatingLog {
            path: path.to_path_buf(),
            file,
            size,
            max,
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        if self.size > self.max {
            // Written to behind our back: keep `.log.1` within the cap.
            let _ = self.file.set_len(self.max);
        }
        std::fs::rename(&self.path, &old)?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        self.size = 0;
        if STDERR_FOLLOWS_LOG.load(Ordering::SeqCst) {
            let _ = rustix::stdio::dup2_stderr(&self.file);
        }
        Ok(())
    }
}

impl Write for RotatingLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // One fstat per log line: counts what fd 2 appended meanwhile.
        if let Ok(m) = self.file.metadata() {
            self.size = m.len();
        }
        if self.size + buf.len() as u64 > self.max && self.size > 0 {
            // If rotation fails keep appending: losing the bound is better
            // than losing the log.
            let _ = self.rotate();
        }
        let n = self.file.write(buf)?;
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Installs the tracing subscriber writing to the rotating log. The level
/// comes from `SHELLPER_LOG` (`error`…`trace`, `info` by default). A plain
/// level filter, not `EnvFilter`: its directive matching costs about a
/// MiB of resident memory in every idle shellper.
pub fn init_logging(path: &Path) -> Result<()> {
    let max = std::env::var(LOG_ROTATE_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(LOG_ROTATE_BYTES, |v| v.max(1024));
    let log = RotatingLog::open(path, max)?;
    let level = std::env::var("SHELLPER_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing_subscriber::filter::LevelFilter>().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(Mutex::new(log))
        .try_init()
        .map_err(|e| Error::io("install logger", io::Error::other(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotating_log_stays_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.log");
        let mut log = RotatingLog::open(&p, 100).expect("open");
        for _ in 0..50 {
            log.write_all(b"0123456789\n").expect("write");
        }
        let cur = std::fs::metadata(&p).expect("log").len();
        let old = std::fs::metadata(dir.path().join("x.log.1"))
            .expect("rotated")
            .len();
        assert!(cur <= 100 && old <= 100, "{cur} {old}");
    }

    #[test]
    fn bytes_written_around_the_log_count_and_the_rotated_file_is_capped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.log");
        let mut log = RotatingLog::open(&p, 100).expect("open");
        log.write_all(b"first\n").expect("write");
        // fd 2 (a panic, the spawner) appends to the same file directly.
        let mut other = open_log(&p).expect("open");
        other.write_all(&[b'p'; 500]).expect("write");
        log.write_all(b"after\n").expect("write");
        let cur = std::fs::metadata(&p).expect("log").len();
        let old = std::fs::metadata(dir.path().join("x.log.1"))
            .expect("rotated")
            .len();
        assert!(cur <= 100, "live log {cur} bytes");
        assert!(old <= 100, "rotated log {old} bytes");
    }
}
