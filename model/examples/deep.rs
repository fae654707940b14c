//! A longer model check than CI's: `cargo run -p shellper-model --release
//! --example deep -- [KEY=VALUE…]`, the keys being `Setup`'s timings
//! (`ttl`, `window`, `claim`, `grace`, `renew`, `latency`, `horizon`,
//! `towers`) and budgets (`starts`, `faults`, `requests`, `child_exits`,
//! `sigterms`, `freezes`); the rest is `Setup::base()`. Prints the state counts and the time taken; exits 1 if a
//! property has a counterexample.

use shellper_model::{LeaseModel, Setup};
use stateright::{Checker, Model};

fn main() {
    let mut setup = Setup::base();
    for a in std::env::args().skip(1) {
        let Some((k, v)) = a.split_once('=') else {
            eprintln!("arguments are KEY=VALUE: {a:?}");
            std::process::exit(2);
        };
        let Ok(v) = v.parse::<u64>() else {
            eprintln!("{k}: not a number: {v:?}");
            std::process::exit(2);
        };
        let b = &mut setup.budget;
        match k {
            "ttl" => setup.ttl = v,
            "window" => setup.window = v,
            "claim" => setup.claim = v,
            "grace" => setup.grace = v,
            "renew" => setup.renew = v,
            "latency" => setup.latency = v,
            "horizon" => setup.horizon = v,
            "towers" => setup.towers = v as usize,
            "starts" => b.starts = v as u8,
            "faults" => b.faults = v as u8,
            "requests" => b.requests = v as u8,
            "child_exits" => b.child_exits = v as u8,
            "sigterms" => b.sigterms = v as u8,
            "freezes" => b.freezes = v as u8,
            _ => {
                eprintln!("unknown key {k:?}");
                std::process::exit(2);
            }
        }
    }
    println!("setup: {setup:?}");
    let started = std::time::Instant::now();
    let c = LeaseModel::new(setup)
        .checker()
        .threads(1)
        .spawn_bfs()
        .report(&mut stateright::report::WriteReporter::new(
            &mut std::io::stdout(),
        ))
        .join();
    println!(
        "states {} unique {} max depth {} in {:.1?}; done: {}",
        c.state_count(),
        c.unique_state_count(),
        c.max_depth(),
        started.elapsed(),
        c.is_done()
    );
    let mut failed = false;
    for p in shellper_model::PROPERTIES {
        if let Some(path) = c.discovery(p) {
            failed = true;
            let last = path.last_state().clone();
            println!("COUNTEREXAMPLE for {p:?}: {:?}", last.violations);
            for a in path.into_actions() {
                println!("  {a:?}");
            }
            println!(
                "  => now {} earliest {} latest {} ladder {:?} towers {:?}",
                last.now, last.earliest, last.latest, last.ladder, last.towers
            );
        }
    }
    if failed {
        std::process::exit(1);
    }
}
