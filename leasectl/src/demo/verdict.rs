//! The verdict: the acts' measurements against the demo's bounds.

use std::time::Duration;

use super::act1::Act1;
use super::act2::Act2;
use super::setup::Say;
use super::{EARLY_SLACK, KILL_GRACE, LATE_SLACK, TTL};
use crate::cli::{EXIT_FOUND, EXIT_OK};
use crate::render::{Palette, Style, short_duration};

pub(super) fn verdict(p: &Palette, a1: &Act1, a2: &Act2, window: Duration, total: Duration) -> i32 {
    let say = Say { p };
    say.head("verdict");
    let n1 = 3;
    let eof_max = a1.eof_ms.iter().max().copied().unwrap_or(0);
    // A crash is seen at once (EOF), not after the TTL a hang would take.
    let eof_ok = a1.eof_ms.len() == n1 && eof_max < TTL.as_millis() as u64;
    let early = a1
        .precision_ms
        .iter()
        .any(|x| *x < -(EARLY_SLACK.as_millis() as i64));
    let late_bound = (KILL_GRACE + LATE_SLACK).as_millis() as i64;
    let late = a1.precision_ms.iter().any(|x| *x > late_bound);
    let prec_ok = a1.precision_ms.len() == n1 && !early && !late;
    let (pmin, pmax) = (
        a1.precision_ms.iter().min().copied().unwrap_or(0),
        a1.precision_ms.iter().max().copied().unwrap_or(0),
    );
    let surv_ok = a1.survivors == 0 && a2.survivors == 0 && a1.all_gone;
    let adopt_ok = a2.adopted == 3 && a2.same_children == 3 && a2.killed_before_cleanup == 0;
    let mark = |ok: bool| {
        if ok {
            p.paint(Style::Green, "ok  ")
        } else {
            p.paint(Style::Red, "FAIL")
        }
    };
    let seen_max = a1.eof_seen_ms.iter().max().copied().unwrap_or(0);
    say.line(&format!(
        "{} EOF detection: every shellper lapsed {eof_max}..{seen_max} ms after the Tower's SIGKILL ({} shellpers; by their own clocks .. first seen by polling)",
        mark(eof_ok),
        a1.eof_ms.len()
    ));
    say.line(&format!(
        "{} kill precision: trees dead {pmin}..{pmax} ms after their deadline (lapse + {} window); none early; bound: kill grace {} + {} slack",
        mark(prec_ok),
        short_duration(window),
        short_duration(KILL_GRACE),
        short_duration(LATE_SLACK)
    ));
    say.line(&format!(
        "{} survivors: {} (act 1, {} processes watched) + {} (act 2)",
        mark(surv_ok),
        a1.survivors,
        a1.processes,
        a2.survivors
    ));
    say.line(&format!(
        "{} re-adoption: {}/3 adopted, {}/3 same child pids, {} killed, epochs {}",
        mark(adopt_ok),
        a2.adopted,
        a2.same_children,
        a2.killed_before_cleanup,
        a2.epochs
            .iter()
            .map(|(a, b)| format!("{a}→{b}"))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    say.line(&format!("total time: {}", short_duration(total)));
    let good = eof_ok && prec_ok && surv_ok && adopt_ok;
    println!(
        "\n{}",
        if good {
            p.paint(Style::Green, "DEMO OK: survivors: 0")
        } else {
            p.paint(Style::Red, "DEMO FAILED (see above)")
        }
    );
    if good { EXIT_OK } else { EXIT_FOUND }
}
