//! The PTY child's exit status as a message and as leasectl's exit code.
//! Pure.

use shellper_protocol::msg::ExitMsg;

/// The exit status of the PTY child as a message and as leasectl's exit
/// code: code C → C (0–255; anything else → 1), killed by signal S → 128+S.
pub fn exit_outcome(e: &ExitMsg) -> (String, i32) {
    let sig = e
        .signal
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "0");
    if let Some(s) = sig {
        let num = s.parse::<i32>().ok().or_else(|| signal_number(s));
        return match num {
            Some(n) if (1..=64).contains(&n) => {
                let name = signal_name(n)
                    .map(|x| format!(" ({x})"))
                    .unwrap_or_default();
                (format!("killed by signal {n}{name}"), 128 + n)
            }
            _ => (format!("killed by signal {s}"), 1),
        };
    }
    match e.code {
        Some(c) if (0..=255).contains(&c) => (format!("exited with code {c}"), c),
        Some(c) => (format!("exited with code {c}"), 1),
        None => ("exited (no status reported)".into(), 1),
    }
}

const SIGNAL_NAMES: &[(i32, &str)] = &[
    (1, "SIGHUP"),
    (2, "SIGINT"),
    (3, "SIGQUIT"),
    (6, "SIGABRT"),
    (9, "SIGKILL"),
    (11, "SIGSEGV"),
    (13, "SIGPIPE"),
    (15, "SIGTERM"),
];

fn signal_name(n: i32) -> Option<&'static str> {
    SIGNAL_NAMES.iter().find(|(k, _)| *k == n).map(|(_, s)| *s)
}

fn signal_number(name: &str) -> Option<i32> {
    let up = name.to_ascii_uppercase();
    let full = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    SIGNAL_NAMES
        .iter()
        .find(|(_, s)| *s == full)
        .map(|(n, _)| *n)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn exit_status_mapping() {
        let ex = |code: Option<i32>, sig: Option<&str>| {
            exit_outcome(&ExitMsg {
                code,
                signal: sig.map(str::to_string),
            })
        };
        assert_eq!(ex(Some(0), Some("0")).1, 0);
        assert_eq!(ex(Some(7), Some("0")), ("exited with code 7".into(), 7));
        assert_eq!(ex(Some(7), None).1, 7);
        assert_eq!(
            ex(Some(0), Some("9")),
            ("killed by signal 9 (SIGKILL)".into(), 137)
        );
        assert_eq!(ex(Some(0), Some("SIGTERM")).1, 143);
        assert_eq!(ex(Some(300), Some("0")).1, 1);
        assert_eq!(ex(Some(-1), None).1, 1);
        assert_eq!(ex(None, None).1, 1);
        assert_eq!(ex(None, Some("weird")).1, 1);
    }
}
