//! Parsing `--tracked`: the pids some other registry (codev's Tower, a
//! script) believes it owns.
//!
//! Operators today diff `ps` output against Tower's `/api/terminals` by
//! hand; `orphans --tracked` does that diff. Two inputs are accepted:
//!
//! * plain text: one pid per line; blank lines and `#` comments ignored;
//! * JSON: an array, or an object with a `terminals` array. Items are pids
//!   (numbers) or objects carrying `pid` and/or `shellperPid` (numbers or
//!   numeric strings). Items without either are skipped: a terminal that has
//!   no process yet tracks nothing.
//!
//! A shellper counts as tracked when its own pid *or* its PTY child's pid is
//! in the set, because codev's API reports one or the other depending on the
//! version.

use std::collections::BTreeSet;
use std::io::Read;

use serde_json::Value;

use crate::error::{Error, Result};

/// Reads `--tracked FILE|-` (`-` is stdin) and parses it.
pub fn read_tracked(arg: &str) -> Result<BTreeSet<u32>> {
    let (name, text) = if arg == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Error::io("reading tracked pids from", "<stdin>", e))?;
        ("<stdin>".to_string(), s)
    } else {
        let s = std::fs::read_to_string(arg)
            .map_err(|e| Error::io("reading tracked pids from", arg, e))?;
        (arg.to_string(), s)
    };
    parse_tracked(&text).map_err(|detail| Error::Tracked {
        source_name: name,
        detail,
    })
}

/// Parses tracked pids from text; the error is a human-readable reason.
pub fn parse_tracked(text: &str) -> Result<BTreeSet<u32>, String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') || trimmed.starts_with('{') {
        let v: Value =
            serde_json::from_str(text).map_err(|e| format!("looks like JSON but is not: {e}"))?;
        return parse_json(&v);
    }
    let mut out = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let pid =
            parse_pid_str(line).ok_or_else(|| format!("line {}: `{line}` is not a pid", i + 1))?;
        out.insert(pid);
    }
    Ok(out)
}

fn parse_json(v: &Value) -> Result<BTreeSet<u32>, String> {
    let items = match v {
        Value::Array(a) => a,
        Value::Object(o) => match o.get("terminals") {
            Some(Value::Array(a)) => a,
            Some(_) => return Err("`terminals` is not an array".into()),
            None => return Err("a JSON object needs a `terminals` array".into()),
        },
        _ => return Err("expected a JSON array or an object with `terminals`".into()),
    };
    let mut out = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        match item {
            Value::Number(_) | Value::String(_) => {
                out.insert(json_pid(item).ok_or_else(|| format!("item {i}: {item} is not a pid"))?);
            }
            Value::Object(o) => {
                for key in ["pid", "shellperPid"] {
                    match o.get(key) {
                        None | Some(Value::Null) => {}
                        Some(x) => {
                            let pid = json_pid(x)
                                .ok_or_else(|| format!("item {i}: `{key}` = {x} is not a pid"))?;
                            out.insert(pid);
                        }
                    }
                }
            }
            other => {
                return Err(format!(
                    "item {i}: expected a pid or an object, got {other}"
                ));
            }
        }
    }
    Ok(out)
}

fn json_pid(v: &Value) -> Option<u32> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|p| *p > 0),
        Value::String(s) => parse_pid_str(s),
        _ => None,
    }
}

fn parse_pid_str(s: &str) -> Option<u32> {
    s.trim().parse::<u32>().ok().filter(|p| *p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u32]) -> BTreeSet<u32> {
        v.iter().copied().collect()
    }

    #[test]
    fn plain_lines() {
        assert_eq!(
            parse_tracked("12\n 34 \n\n# c\n56 # x\n"),
            Ok(set(&[12, 34, 56]))
        );
        assert_eq!(parse_tracked(""), Ok(set(&[])));
        let e = parse_tracked("12\nabc\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        assert!(parse_tracked("0\n").is_err());
        assert!(parse_tracked("-5\n").is_err());
    }

    #[test]
    fn codev_terminals_json() {
        let j = r#"{"terminals":[{"id":"a","pid":100,"shellperPid":101},
                   {"id":"b","shellperPid":"202"},{"id":"c","pid":null},{"id":"d"}]}"#;
        assert_eq!(parse_tracked(j), Ok(set(&[100, 101, 202])));
        assert_eq!(
            parse_tracked("[1, \"2\", {\"pid\": 3}]"),
            Ok(set(&[1, 2, 3]))
        );
        assert_eq!(parse_tracked("  []"), Ok(set(&[])));
    }

    #[test]
    fn bad_json_is_an_error() {
        assert!(parse_tracked("{\"terminals\": 3}").is_err());
        assert!(parse_tracked("{\"x\": []}").is_err());
        assert!(parse_tracked("[{\"pid\": \"x\"}]").is_err());
        assert!(parse_tracked("[true]").is_err());
        assert!(parse_tracked("[1,").is_err());
    }
}
