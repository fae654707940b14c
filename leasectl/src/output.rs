//! A command's answer on stdout: text as `render` made it, or a JSON
//! document (the same data serialized). Every command, and `metrics` and
//! `prune` run on their own, write through here.

use std::io::Write;

use serde::Serialize;

use crate::error::{Error, Result};

/// Writes `s` to stdout (a closed pipe ends the process quietly: SIGPIPE is
/// left at its default in `main`).
pub fn out(s: &str) -> Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(s.as_bytes()).map_err(Error::Output)?;
    o.flush().map_err(Error::Output)
}

/// Pretty JSON plus a newline.
pub fn json_out<T: Serialize>(v: &T) -> Result<()> {
    // Invariant: our documents are plain structs of strings and numbers.
    let s = serde_json::to_string_pretty(v).map_err(|e| Error::Output(e.into()))?;
    out(&(s + "\n"))
}
