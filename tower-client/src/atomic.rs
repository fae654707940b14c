//! The workspace's one atomic file write (the registry here, leasectl's
//! `metrics --output`): a reader sees the old file or the new one, never a
//! part, and a crash leaves the old one in place.

use std::fs::{File, Permissions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Writes `bytes` to `path` atomically with permission bits `mode`: a
/// hidden temporary file in the same directory (`.NAME.tmp.` and random characters, so a
/// reader globbing `*.prom` or `*.json` never sees it; tempfile creates it
/// with `O_EXCL`, mode 0600), chmod to `mode` (the umask does not narrow
/// it), write, fsync, rename over `path` (tempfile's `persist`), fsync of
/// the directory so that the rename itself is durable. On an error the
/// temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name to write")
    })?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.tmp.", name.to_string_lossy()))
        .tempfile_in(dir)?;
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_the_file_whole_with_the_mode_asked_for() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("registry.json");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o644).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(names(d.path()), ["registry.json"]);
    }

    #[test]
    fn a_failed_rename_leaves_no_temporary_and_the_target_as_it_was() {
        let d = tempfile::tempdir().unwrap();
        // A directory where the file should go: the rename fails.
        let p = d.path().join("shellper.prom");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("inside"), b"kept").unwrap();
        assert!(write_atomic(&p, b"new", 0o644).is_err());
        assert_eq!(names(d.path()), ["shellper.prom"]);
        assert_eq!(std::fs::read(p.join("inside")).unwrap(), b"kept");
        // No file name at all is refused before anything is created.
        assert!(write_atomic(Path::new("/"), b"x", 0o600).is_err());
    }
}
