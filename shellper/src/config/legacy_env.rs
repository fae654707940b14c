//! The legacy environment: an unmodified codev Tower cannot pass a `lease`
//! object, but its shellpers inherit its environment, so
//! `SHELLPER_LEGACY_WINDOW` and `SHELLPER_LEGACY_CLAIM` give codev users a
//! window other than the default without touching codev.

use std::time::Duration;

use shellper_protocol::LeaseConfig;

use super::Config;
use crate::error::{Error, Result};

/// Environment variable that sets the reattach window of a legacy
/// shellper (codev's JSON invocation without a `lease` object).
pub const LEGACY_WINDOW_ENV: &str = "SHELLPER_LEGACY_WINDOW";
/// Environment variable that sets the claim deadline of a legacy shellper.
pub const LEGACY_CLAIM_ENV: &str = "SHELLPER_LEGACY_CLAIM";

/// Applies [`LEGACY_WINDOW_ENV`] and [`LEGACY_CLAIM_ENV`] (humantime:
/// `30m`, `2h`, `1day`; at most 7 days) to a legacy configuration. An
/// unmodified codev Tower cannot pass a `lease` object, but its shellpers
/// inherit its environment, so this is how an operator gives codev users a
/// window longer (or shorter) than the default without touching codev.
/// Leased configurations are left alone (their Tower says what it wants).
/// `get` looks a variable up (the process environment in the binary; a map
/// in tests). An unparsable value is a configuration error (exit 2): a
/// typo must not silently fall back to ten minutes.
pub fn apply_legacy_env(cfg: &mut Config, get: impl Fn(&str) -> Option<String>) -> Result<()> {
    if cfg.leased {
        return Ok(());
    }
    let read = |name: &str| -> Result<Option<Duration>> {
        match get(name).map(|v| v.trim().to_string()) {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => humantime::parse_duration(&v)
                .map(Some)
                .map_err(|e| Error::Usage(format!("{name}={v:?}: {e} (expected e.g. 30m, 2h)"))),
        }
    };
    let window = read(LEGACY_WINDOW_ENV)?;
    let claim = read(LEGACY_CLAIM_ENV)?;
    if window.is_none() && claim.is_none() {
        return Ok(());
    }
    let window = window.unwrap_or(cfg.lease.window);
    // A legacy holder never renews, so the TTL only has to satisfy the
    // rule window >= TTL.
    let ttl = cfg.lease.ttl.min(window);
    cfg.lease = LeaseConfig::new(
        ttl,
        window,
        claim.unwrap_or(cfg.lease.claim),
        cfg.lease.kill_grace,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shellper_protocol::lease::{DEFAULT_CLAIM, DEFAULT_WINDOW};

    fn legacy_json() -> Config {
        json(
            r#"{"command":"sh","args":[],"cwd":"/","env":{},"cols":80,"rows":24,"socketPath":"/tmp/x.sock"}"#,
        )
    }

    fn json(j: &str) -> Config {
        shellper_leased::invocation::parse::parse_config(j, false).expect("parse")
    }

    #[test]
    fn legacy_window_and_claim_come_from_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let mut c = legacy_json();
        apply_legacy_env(&mut c, env(&[])).expect("no vars");
        assert_eq!(
            (c.lease.window, c.lease.claim),
            (DEFAULT_WINDOW, DEFAULT_CLAIM)
        );

        let mut c = legacy_json();
        apply_legacy_env(
            &mut c,
            env(&[(LEGACY_WINDOW_ENV, "2h"), (LEGACY_CLAIM_ENV, "5m")]),
        )
        .expect("valid");
        assert_eq!(c.lease.window, Duration::from_secs(7200));
        assert_eq!(c.lease.claim, Duration::from_secs(300));

        // Shorter than the default TTL: the TTL follows (never used in legacy).
        let mut c = legacy_json();
        apply_legacy_env(&mut c, env(&[(LEGACY_WINDOW_ENV, "1s")])).expect("short");
        assert_eq!(c.lease.window, Duration::from_secs(1));
        assert!(c.lease.ttl <= c.lease.window);

        let mut c = legacy_json();
        let e =
            apply_legacy_env(&mut c, env(&[(LEGACY_WINDOW_ENV, "ten minutes")])).expect_err("typo");
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains(LEGACY_WINDOW_ENV), "{e}");
        let mut c = legacy_json();
        let e = apply_legacy_env(&mut c, env(&[(LEGACY_WINDOW_ENV, "30days")]))
            .expect_err("above 7 days");
        assert_eq!(e.exit_code(), 2);

        // Leased configurations ignore the variables.
        let mut c = json(
            r#"{"command":"sh","args":[],"cwd":"/","env":{},"cols":80,"rows":24,"socketPath":"/tmp/x.sock","lease":{}}"#,
        );
        apply_legacy_env(&mut c, env(&[(LEGACY_WINDOW_ENV, "2h")])).expect("ignored");
        assert_eq!(c.lease.window, DEFAULT_WINDOW);
    }
}
