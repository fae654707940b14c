//! What a Tower does with the durations a shellper sends it (SPEC.md §5):
//! every one is clamped before it reaches a timer. A shellper that is buggy
//! or not ours could otherwise make the Tower panic (an `Instant` past the
//! end of time), renew in a busy loop (`renew_every_ms: 0`), or never renew
//! at all (`renew_every_ms` longer than the TTL). The rules are pure so that
//! every Tower (the Rust one, the Node one in `clients/node`) applies the same
//! ones, each tested on its own.
//!
//! | field | clamp |
//! |---|---|
//! | GRANT `ttl_ms` | [`MIN_TTL`] ..= [`MAX_WIRE`] |
//! | GRANT `window_ms` | 0 ..= [`MAX_WIRE`] |
//! | GRANT `renew_every_ms` | max([`MIN_RENEW`], ttl / 10) ..= ttl / 2 (of the clamped ttl) |
//! | GRANT, RENEWED `expires_in_ms` | 0 ..= [`MAX_WIRE`] |
//! | RELEASED `kill_in_ms` | 0 ..= [`MAX_WIRE`] |
//! | TERMINATED `elapsed_ms` | reported only, never in a timer |

use std::time::Duration;

use crate::msg::{Grant, MAX_HOLD_MS};

/// The longest duration taken from the wire: 7 days (the longest any
/// setting of the protocol may be).
pub const MAX_WIRE: Duration = Duration::from_millis(MAX_HOLD_MS);

/// The shortest TTL a Tower believes (the protocol's own minimum, §8.3).
pub const MIN_TTL: Duration = Duration::from_millis(50);

/// The shortest renewal interval a Tower uses, whatever it is told.
pub const MIN_RENEW: Duration = Duration::from_millis(10);

/// A duration from the wire, at most [`MAX_WIRE`].
pub fn wire_ms(ms: u64) -> Duration {
    Duration::from_millis(ms).min(MAX_WIRE)
}

/// A GRANT's durations, clamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantTimes {
    pub ttl: Duration,
    pub window: Duration,
    /// How often to renew: never faster than ten times per TTL (nor than
    /// [`MIN_RENEW`]), never slower than twice per TTL.
    pub renew_every: Duration,
    pub expires_in: Duration,
}

impl GrantTimes {
    /// The clamped durations of `g`.
    pub fn of(g: &Grant) -> GrantTimes {
        let ttl = Duration::from_millis(g.ttl_ms).clamp(MIN_TTL, MAX_WIRE);
        let floor = MIN_RENEW.max(ttl / 10);
        GrantTimes {
            ttl,
            window: wire_ms(g.window_ms),
            renew_every: Duration::from_millis(g.renew_every_ms).clamp(floor, ttl / 2),
            expires_in: wire_ms(g.expires_in_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(ttl_ms: u64, window_ms: u64, renew_every_ms: u64, expires_in_ms: u64) -> Grant {
        Grant {
            epoch: 1,
            ttl_ms,
            window_ms,
            renew_every_ms,
            expires_in_ms,
        }
    }

    const DAY: u64 = 86_400_000;

    #[test]
    fn sane_grants_pass_unchanged() {
        let t = GrantTimes::of(&grant(6000, 600_000, 2000, 6000));
        assert_eq!(t.ttl, Duration::from_secs(6));
        assert_eq!(t.window, Duration::from_secs(600));
        assert_eq!(t.renew_every, Duration::from_secs(2));
        assert_eq!(t.expires_in, Duration::from_secs(6));
    }

    #[test]
    fn ttl_has_a_floor() {
        assert_eq!(GrantTimes::of(&grant(0, 0, 0, 0)).ttl, MIN_TTL);
        assert_eq!(GrantTimes::of(&grant(1, 0, 0, 0)).ttl, MIN_TTL);
    }

    #[test]
    fn ttl_has_a_ceiling() {
        assert_eq!(GrantTimes::of(&grant(u64::MAX, 0, 0, 0)).ttl, MAX_WIRE);
        assert_eq!(GrantTimes::of(&grant(8 * DAY, 0, 0, 0)).ttl, MAX_WIRE);
    }

    #[test]
    fn window_has_a_ceiling() {
        assert_eq!(
            GrantTimes::of(&grant(6000, u64::MAX, 2000, 0)).window,
            MAX_WIRE
        );
    }

    #[test]
    fn renew_interval_has_a_floor() {
        // Told to renew every 0 or 1 ms: ten times per TTL at most.
        assert_eq!(
            GrantTimes::of(&grant(6000, 0, 0, 0)).renew_every,
            Duration::from_millis(600)
        );
        assert_eq!(
            GrantTimes::of(&grant(6000, 0, 1, 0)).renew_every,
            Duration::from_millis(600)
        );
        // And never below MIN_RENEW, whatever the TTL.
        assert_eq!(GrantTimes::of(&grant(50, 0, 1, 0)).renew_every, MIN_RENEW);
    }

    #[test]
    fn renew_interval_has_a_ceiling() {
        // Told to renew less often than the TTL: twice per TTL.
        assert_eq!(
            GrantTimes::of(&grant(6000, 0, 60_000, 0)).renew_every,
            Duration::from_secs(3)
        );
        assert_eq!(
            GrantTimes::of(&grant(u64::MAX, 0, u64::MAX, 0)).renew_every,
            MAX_WIRE / 2
        );
    }

    #[test]
    fn expiry_has_a_ceiling() {
        assert_eq!(
            GrantTimes::of(&grant(6000, 0, 0, u64::MAX)).expires_in,
            MAX_WIRE
        );
        assert_eq!(wire_ms(u64::MAX), MAX_WIRE);
        assert_eq!(wire_ms(1234), Duration::from_millis(1234));
    }
}
