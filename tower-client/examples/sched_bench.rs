//! Scheduler micro-benchmark with a fake transport (no sockets, no
//! shellpers): renewals per CPU-second and bytes of scheduler state per
//! lease, for the coalesced scheduler and, as a same-run baseline, the naive
//! design (one tokio task + timer per lease).
//!
//! ```text
//! cargo run --release -p tower-client --example sched_bench -- [LEASES] [VIRTUAL_SECS]
//! ```
//!
//! Both run on tokio's paused clock, so the figures are pure CPU cost of
//! scheduling (2 s renew interval, 6 s TTL, every renewal acknowledged at
//! once), not wall-clock waiting.
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tower_client::sched::{Health, RenewSink, Scheduler};

/// Counts live heap bytes, to measure state per lease.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only adds counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// CPU time of this thread.
fn cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Fake transport: remembers what to acknowledge.
struct Fake {
    pending: Vec<(u64, u64)>,
    health: usize,
}

impl RenewSink for Fake {
    type Target = u64;
    fn renew(&mut self, t: &u64, seq: u64) -> bool {
        self.pending.push((*t, seq));
        true
    }
    fn health(&mut self, _: &u64, _: Health) {
        self.health += 1;
    }
}

const IV: Duration = Duration::from_secs(2);
const TTL: Duration = Duration::from_secs(6);

fn coalesced(n: u64, secs: u64) -> (u64, Duration, f64) {
    let t0 = Instant::now();
    let before = live();
    let mut s: Scheduler<u64> = Scheduler::new(1);
    let mut f = Fake {
        pending: Vec::with_capacity(n as usize),
        health: 0,
    };
    for k in 0..n {
        s.insert(k, k, IV, TTL, t0);
    }
    let bytes = (live() - before) as f64 / n as f64;
    let end = t0 + Duration::from_secs(secs);
    let c0 = cpu();
    let mut renewals = 0u64;
    while let Some(now) = s.next_deadline() {
        if now > end {
            break;
        }
        renewals += s.fire(now, &mut f) as u64;
        // Acknowledged at once (a zero round trip): the scheduler's cost only.
        let acks = std::mem::take(&mut f.pending);
        for &(k, seq) in &acks {
            s.ack(k, seq, TTL, now, &mut f);
        }
        f.pending = acks;
        f.pending.clear();
    }
    let spent = cpu() - c0;
    assert_eq!(f.health, 0);
    (renewals, spent, bytes)
}

fn naive(n: u64, secs: u64) -> (u64, Duration, f64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, u64)>();
        let before = live();
        let end = Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for k in 0..n {
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                let mut seq = 0;
                let mut next = Instant::now() + IV;
                while next <= end {
                    tokio::time::sleep_until(next).await;
                    seq += 1;
                    let _ = tx.send((k, seq));
                    next = Instant::now() + IV;
                }
            }));
        }
        drop(tx);
        tokio::task::yield_now().await;
        let bytes = (live() - before) as f64 / n as f64;
        let c0 = cpu();
        let mut renewals = 0u64;
        while rx.recv().await.is_some() {
            renewals += 1;
        }
        let spent = cpu() - c0;
        (renewals, spent, bytes)
    })
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().map_or(100_000, |a| a.parse().unwrap());
    let secs: u64 = args.next().map_or(60, |a| a.parse().unwrap());
    println!("scheduler micro-benchmark: {n} leases, {secs} s of virtual time, interval 2 s");
    let (r, c, b) = coalesced(n, secs);
    let rate_c = r as f64 / c.as_secs_f64();
    println!(
        "coalesced heap : {r:>9} renewals in {:>8.1} ms CPU = {:>10.0} renewals/s/core, {b:>6.0} B/lease",
        c.as_secs_f64() * 1e3,
        rate_c
    );
    let (r, c, bn) = naive(n, secs);
    let rate_n = r as f64 / c.as_secs_f64();
    println!(
        "naive task/lease: {r:>8} renewals in {:>8.1} ms CPU = {:>10.0} renewals/s/core, {bn:>6.0} B/lease",
        c.as_secs_f64() * 1e3,
        rate_n
    );
    println!(
        "ratio coalesced/naive: throughput x{:.2}, memory x{:.2}",
        rate_c / rate_n,
        b / bn
    );
}
