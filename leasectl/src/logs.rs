//! `leasectl logs ID [-f] [-n N] [--all]`: a shellper's log, and following
//! it like `tail -F`.
//!
//! Where the log is (docs/CONVENTIONS.md): `<scope>/<id>.log`, the live file,
//! and `<id>.log.1`, the rotated part (older lines), which the shellper
//! removes when it exits. The shellper rotates by renaming the live file and
//! creating a new one, so a follower that kept reading its open descriptor
//! would stop at the rotation for ever: [`Follower`] notices that the path
//! now names another file (device and inode), drains what is left of the old
//! one, then reads the new one from its start. A file cut shorter under the
//! same inode is read again from its start (what `tail` does).
//!
//! Without `--all` only the live file is printed; with it, the rotated
//! files come first, oldest first (`.log.N` with the largest N first, so a
//! layout with more generations is read in order too).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::exit::EXIT_OK;

/// Most bytes read from the end of one log file when printing it: a
/// shellper's files are about 1 MiB (CONVENTIONS.md), this only bounds a
/// file written behind its back.
pub const READ_CAP: u64 = 16 * 1024 * 1024;

/// How often `--follow` looks for new bytes and for a rotation.
pub const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Options of `logs`.
#[derive(Debug, Clone)]
pub struct LogsOpts {
    pub id: String,
    pub follow: bool,
    pub lines: Option<usize>,
    pub all: bool,
}

/// Refuses ids that could name a file outside the scope (`../x`, `a/b`) or
/// a hidden one: ids come from the command line and become file names.
pub fn check_id(id: &str, scope: &Path) -> Result<()> {
    let bad = id.is_empty()
        || id.starts_with('.')
        || id.contains('/')
        || id.contains('\0')
        || id.len() > 200;
    if bad {
        return Err(Error::UnknownId {
            id: id.to_string(),
            scope: scope.to_path_buf(),
        });
    }
    Ok(())
}

/// The live log of `id` in `scope`: the registry's socket path with `.sock`
/// replaced by `.log` when the registry knows `id` (CONVENTIONS.md), else
/// `<scope>/<id>.log`.
pub fn log_path(scope: &Path, id: &str) -> PathBuf {
    let registered = tower_client::Scope::open_existing(scope)
        .ok()
        .and_then(|s| s.read_registry().ok())
        .and_then(|r| r.get(id).map(|e| e.socket.clone()));
    match registered {
        Some(sock) => log_of_socket(&sock),
        None => scope.join(format!("{id}.log")),
    }
}

/// `X.sock` → `X.log`; a socket path without `.sock` gets `.log` appended.
pub fn log_of_socket(sock: &Path) -> PathBuf {
    let s = sock.as_os_str().to_string_lossy();
    match s.strip_suffix(".sock") {
        Some(stem) => PathBuf::from(format!("{stem}.log")),
        None => PathBuf::from(format!("{s}.log")),
    }
}

/// Rotated files of `log` (`<log>.N`, N a decimal number), oldest first
/// (largest N first).
pub fn rotated_files(log: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (log.parent(), log.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(num) = n.strip_prefix(&prefix)
                && !num.is_empty()
                && num.bytes().all(|b| b.is_ascii_digit())
                && let Ok(k) = num.parse::<u64>()
            {
                found.push((k, e.path()));
            }
        }
    }
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found.into_iter().map(|(_, p)| p).collect()
}

/// The last `n` lines of `text` (a final line without a newline counts).
pub fn last_lines(text: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &text[text.len()..];
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &text[i + 1..];
            }
        }
    }
    text
}

/// Reads at most [`READ_CAP`] bytes from the end of `f`; returns them and
/// the offset reached (the file's length when read).
fn read_tail(f: &mut File, path: &Path) -> Result<(Vec<u8>, u64)> {
    let len = f
        .metadata()
        .map_err(|e| Error::io("reading log", path, e))?
        .len();
    let from = len.saturating_sub(READ_CAP);
    f.seek(SeekFrom::Start(from))
        .map_err(|e| Error::io("reading log", path, e))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)
        .map_err(|e| Error::io("reading log", path, e))?;
    let at = from + buf.len() as u64;
    Ok((buf, at))
}

/// Follows one log path across rotations and truncations.
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    file: Option<File>,
    /// Device and inode of `file`.
    ident: (u64, u64),
    /// Bytes of `file` already read.
    pos: u64,
}

impl Follower {
    /// A follower of `path` that has read `file` up to `pos` (or that waits
    /// for `path` to appear when `file` is `None`).
    pub fn new(path: PathBuf, file: Option<File>, pos: u64) -> Follower {
        let ident = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or((0, 0), |m| (m.dev(), m.ino()));
        Follower {
            path,
            file,
            ident,
            pos,
        }
    }

    /// Copies everything new to `out`: the rest of the open file, and when
    /// `path` now names another file (rotation), that file from its start.
    /// Returns the number of bytes copied.
    pub fn poll(&mut self, out: &mut impl Write) -> std::io::Result<u64> {
        let mut copied = self.drain(out)?;
        match std::fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) != self.ident => {
                // Rotated (or created): what the old file got before the
                // rename was drained above; the new file starts at 0.
                match File::open(&self.path) {
                    Ok(f) => {
                        self.ident = f
                            .metadata()
                            .map_or((m.dev(), m.ino()), |m| (m.dev(), m.ino()));
                        self.file = Some(f);
                        self.pos = 0;
                        copied += self.drain(out)?;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(m) if m.len() < self.pos => {
                // Cut shorter under the same name and inode: start again.
                self.pos = 0;
                if let Some(f) = self.file.as_mut() {
                    f.seek(SeekFrom::Start(0))?;
                }
                copied += self.drain(out)?;
            }
            // Unchanged, or removed (the follower keeps waiting for a new
            // file, as `tail -F` does).
            _ => {}
        }
        Ok(copied)
    }

    fn drain(&mut self, out: &mut impl Write) -> std::io::Result<u64> {
        let Some(f) = self.file.as_mut() else {
            return Ok(0);
        };
        let mut buf = [0u8; 64 * 1024];
        let mut total = 0;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
            total += n as u64;
            self.pos += n as u64;
        }
        if total > 0 {
            out.flush()?;
        }
        Ok(total)
    }
}

/// Runs `logs`; returns the exit code.
pub async fn run(scope: &Path, o: LogsOpts) -> Result<i32> {
    check_id(&o.id, scope)?;
    let log = log_path(scope, &o.id);
    let rotated = if o.all {
        rotated_files(&log)
    } else {
        Vec::new()
    };
    let mut live = match File::open(&log) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io("opening log", &log, e)),
    };
    if live.is_none() && rotated.is_empty() && !o.follow {
        let known = scope.join(format!("{}.sock", o.id)).exists()
            || tower_client::Scope::open_existing(scope)
                .ok()
                .and_then(|s| s.read_registry().ok())
                .is_some_and(|r| r.get(&o.id).is_some());
        if !known {
            return Err(Error::UnknownId {
                id: o.id.clone(),
                scope: scope.to_path_buf(),
            });
        }
        return Err(Error::io(
            "opening log",
            &log,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    let mut text = Vec::new();
    for p in &rotated {
        // A rotated file may vanish meanwhile (the shellper exited): skip.
        if let Ok(mut f) = File::open(p) {
            text.extend_from_slice(&read_tail(&mut f, p)?.0);
        }
    }
    let mut pos = 0;
    if let Some(f) = live.as_mut() {
        let (bytes, at) = read_tail(f, &log)?;
        text.extend_from_slice(&bytes);
        pos = at;
    }
    let shown = match o.lines {
        Some(n) => last_lines(&text, n),
        None => &text[..],
    };
    {
        let mut out = std::io::stdout().lock();
        out.write_all(shown).map_err(Error::Output)?;
        out.flush().map_err(Error::Output)?;
    }
    if !o.follow {
        return Ok(EXIT_OK);
    }
    follow(Follower::new(log, live, pos)).await
}

/// Follows until SIGINT, SIGTERM or SIGHUP (exit 0, like `watch`).
async fn follow(mut f: Follower) -> Result<i32> {
    use tokio::signal::unix::{SignalKind, signal};
    let sig = |k| signal(k).map_err(|e| Error::Output(std::io::Error::other(e)));
    let (mut int, mut term, mut hup) = (
        sig(SignalKind::interrupt())?,
        sig(SignalKind::terminate())?,
        sig(SignalKind::hangup())?,
    );
    loop {
        {
            let mut out = std::io::stdout().lock();
            f.poll(&mut out).map_err(Error::Output)?;
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            _ = int.recv() => return Ok(EXIT_OK),
            _ = term.recv() => return Ok(EXIT_OK),
            _ = hup.recv() => return Ok(EXIT_OK),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn last_lines_counts_like_tail() {
        assert_eq!(last_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(last_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(last_lines(b"a\nb\nc\n", 5), b"a\nb\nc\n");
        assert_eq!(last_lines(b"a\nb\nc\n", 0), b"");
        assert_eq!(last_lines(b"", 3), b"");
        assert_eq!(last_lines(b"\n\n", 1), b"\n");
    }

    #[test]
    fn ids_that_leave_the_scope_are_refused() {
        let s = Path::new("/s");
        for bad in ["", "../x", "a/b", ".hidden", ".."] {
            assert!(check_id(bad, s).is_err(), "{bad:?}");
        }
        assert!(check_id("sh-0123abcd", s).is_ok());
    }

    #[test]
    fn rotated_files_oldest_first() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("sh-1.log");
        for n in [
            "sh-1.log.1",
            "sh-1.log.10",
            "sh-1.log.2",
            "sh-1.log.x",
            "sh-1.logs.1",
        ] {
            std::fs::write(d.path().join(n), "").unwrap();
        }
        let names: Vec<String> = rotated_files(&log)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["sh-1.log.10", "sh-1.log.2", "sh-1.log.1"]);
    }

    /// Rotation as the shellper does it (rename, new file), then a
    /// truncation: nothing written is lost or repeated.
    #[test]
    fn follower_survives_rotation_and_truncation() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("x.log");
        std::fs::write(&log, "one\n").unwrap();
        let mut f = File::open(&log).unwrap();
        let mut first = String::new();
        f.read_to_string(&mut first).unwrap();
        let mut fl = Follower::new(log.clone(), Some(f), 4);
        let mut out = Vec::new();
        let append = |p: &Path, s: &str| {
            let mut w = std::fs::OpenOptions::new().append(true).open(p).unwrap();
            w.write_all(s.as_bytes()).unwrap();
        };
        append(&log, "two\n");
        fl.poll(&mut out).unwrap();
        append(&log, "three\n");
        std::fs::rename(&log, d.path().join("x.log.1")).unwrap();
        std::fs::write(&log, "four\n").unwrap();
        fl.poll(&mut out).unwrap();
        append(&log, "five\n");
        fl.poll(&mut out).unwrap();
        std::fs::write(&log, "six\n").unwrap(); // truncated in place
        fl.poll(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "two\nthree\nfour\nfive\nsix\n"
        );
    }

    #[test]
    fn follower_waits_for_a_missing_file() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("x.log");
        let mut fl = Follower::new(log.clone(), None, 0);
        let mut out = Vec::new();
        assert_eq!(fl.poll(&mut out).unwrap(), 0);
        std::fs::write(&log, "hello\n").unwrap();
        fl.poll(&mut out).unwrap();
        assert_eq!(out, b"hello\n");
    }
}
