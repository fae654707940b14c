//! The seeded chaos run: one scope, one `minitower` at a time, a few
//! shellpers running escape-torture trees, and a schedule of faults drawn
//! from a seeded generator. After every step (and every 25 ms while a step
//! waits) the run checks, from `/proc` and from STATUS:
//!
//! * no session (shellper or any process of its tree) dies while a live,
//!   unfrozen Tower holds it, nor before the earliest instant its window
//!   allows once no Tower holds it (a *false kill*);
//! * every tree whose Tower is gone past its window is gone within the kill
//!   bound (window + kill grace + margin), and so is every process that no
//!   Tower ever learnt about (an *orphan* otherwise);
//! * a Tower frozen past TTL + window is told, when it resumes, that it lost
//!   its sessions, and does not get them back;
//! * no process outside the trees is ever signalled (bystanders, tagged like
//!   ours, must survive everything);
//! * no Tower event is lost (a child exit is reported, a terminate is
//!   confirmed, an adoption is printed).
//!
//! A failure names the seed, the step and the fault; the same seed replays
//! the same schedule (the timing of the machine differs, the decisions do
//! not). The harness makes itself a child subreaper and is the one reaper of
//! everything it starts, so no zombie is left behind by a long run.
//!
//! The /proc reading here is the run's own (plus `shellper-testkit`'s
//! reader, which parses /proc differently from `proctree`): nothing comes
//! from `proctree`, the code under test.
//!
//! One file per job: `schedule.rs` (configuration, faults, the seeded
//! generator), `trees.rs` (the torture tree and its members), `procs.rs`
//! (the independent /proc reader, signals, the one reaper, bystanders),
//! `tower.rs` (a minitower and its events), `world.rs` (sessions and the
//! invariants), `faults.rs` (what each fault does), `report.rs` (figures and
//! failures); this file runs a schedule.

mod faults;
mod procs;
mod report;
mod schedule;
mod tower;
mod trees;
mod world;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

pub use report::{ChaosFailure, ChaosReport};
pub use schedule::{ChaosConfig, Fault, Rng};
pub use trees::{TORTURE, TREE_SIZE, TREE_VAR, lasting_member};

use procs::{Reaper, bystander, send_signal};
use schedule::{FAULTS, pick_fault};
use world::{Check, World};

/// Runs a chaos schedule. Every process is tagged with `tag` (a
/// `LeakGuard`'s tag), so the caller's guard proves at the end that nothing
/// survived. Makes the calling process a child subreaper and starts its one
/// reaper thread: call it from a process that owns all of its children.
pub fn run(cfg: ChaosConfig, tag: &str, dir: &Path) -> Result<ChaosReport, ChaosFailure> {
    let t0 = Instant::now();
    let reaper = Reaper::start();
    let mut world = World {
        tag: tag.to_string(),
        scope: dir.join("scope"),
        logs: dir.to_path_buf(),
        tower: None,
        towers: 0,
        sessions: BTreeMap::new(),
        bystanders: Vec::new(),
        unknown_ok_until: Instant::now(),
        unknown_now: 0,
        lapse_floor: HashMap::new(),
        actions: File::create(dir.join("chaos.log")).ok(),
        reaper,
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds"),
        report: ChaosReport {
            seed: cfg.seed,
            ..ChaosReport::default()
        },
        step: 0,
        fault: None,
        cfg: cfg.clone(),
    };
    let mut rng = Rng::new(cfg.seed);
    if let Some(only) = &cfg.only {
        let unknown: Vec<&String> = only
            .iter()
            .filter(|n| !FAULTS.iter().any(|(f, _, _)| format!("{f:?}") == **n))
            .collect();
        assert!(
            unknown.is_empty(),
            "unknown fault names {unknown:?}; known: {:?}",
            FAULTS.iter().map(|(f, _, _)| *f).collect::<Vec<_>>()
        );
    }
    let result = (|| -> Check<()> {
        for own in [false, true] {
            let b = bystander(tag, own).map_err(|e| format!("bystander: {e}"))?;
            world.bystanders.push(b);
        }
        world.start_tower(cfg.sessions, None)?;
        world.check_status()?;
        for step in 0..cfg.cycles {
            world.step = step;
            let fault = pick_fault(&mut rng, cfg.pending_faults, cfg.only.as_deref());
            world.fault = Some(fault);
            *world.report.faults.entry(format!("{fault:?}")).or_default() += 1;
            let t = Instant::now();
            world.act(format_args!("fault {fault:?}"));
            world.run_fault(fault, &mut rng)?;
            world.poll()?;
            world.check_status()?;
            world.report.cycles = step + 1;
            if cfg.verbose {
                eprintln!(
                    "chaos step {step} {fault:?} ok in {:?}: {} live session(s)",
                    t.elapsed(),
                    world.live_sessions()
                );
            }
        }
        world.fault = None;
        // The end: terminate everything, and it must all be gone.
        if let Some(t) = &world.tower {
            send_signal(t.pid, libc::SIGTERM);
            let pid = t.pid;
            let deadline = Instant::now() + Duration::from_secs(20);
            while world.reaper.exit_of(pid).is_none() {
                if Instant::now() > deadline {
                    return world.fail("the last minitower did not exit on SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            world.tower = None;
        }
        let at = Instant::now();
        world.free_all(at, at + cfg.kill_grace + cfg.margin, None);
        world.watch_until_settled()
    })();
    for (pid, _) in &world.bystanders {
        send_signal(*pid, libc::SIGKILL);
    }
    if let Some(t) = &world.tower {
        send_signal(t.pid, libc::SIGKILL);
    }
    world.report.elapsed = t0.elapsed();
    match result {
        Ok(()) => Ok(world.report),
        Err(message) => Err(ChaosFailure {
            seed: cfg.seed,
            step: world.step,
            fault: world.fault,
            message,
            report: Box::new(world.report.clone()),
        }),
    }
}
