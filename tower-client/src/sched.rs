//! The coalesced renewal scheduler: one timer for every lease of a Tower.
//!
//! A Tower holding hundreds of leases must not run hundreds of timers: each
//! sleeping task costs memory and a timer-wheel entry, and their wakeups do
//! not batch. Here one [`Scheduler`] keeps a binary heap of "next instant
//! this lease needs attention" and one task sleeps until the earliest of
//! them. Entries due within [`Scheduler::coalesce`] of each other are
//! handled in the same wakeup.
//!
//! Timing rules:
//! * the next renewal is due `interval × U(0.9, 1.1)` after the last
//!   **acknowledgment** (RENEWED), so a slow round trip never compresses the
//!   margin before expiry and the jitter spreads leases that were granted at
//!   the same time;
//! * while a renewal is unanswered, another is sent every interval (the
//!   shellper revives a silently lapsed lease on a renewal from the same
//!   connection);
//! * a lease due for renewal while its previous renewal is still
//!   unanswered (a whole interval of silence) is reported
//!   [`Health::Unresponsive`]; one whose last known expiry
//!   (acknowledgment instant + `expires_in`, an upper bound of the
//!   shellper's own expiry) has passed is reported [`Health::Lapsed`]; the
//!   next acknowledgment reports [`Health::Held`] again.
//!
//! The core is pure (it takes `now` and a [`RenewSink`]), so it is tested
//! under tokio's paused clock and benchmarked with a fake transport.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Identifies one lease inside a scheduler.
pub type Key = u64;

/// Health transitions reported to a lease's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Acknowledged again after being unresponsive or lapsed.
    Held,
    /// A renewal has gone unanswered for `waited`.
    Unresponsive { waited: Duration },
    /// By our clock, the lease has certainly expired at the shellper.
    Lapsed,
}

/// The transport the scheduler drives. `renew` must not block: the real
/// implementation queues a command to the lease's connection task.
pub trait RenewSink {
    /// Per-lease handle the sink needs to reach the lease's connection.
    type Target;
    /// Send RENEW with `seq`. `false` means the lease's connection is gone
    /// and the entry is dropped.
    fn renew(&mut self, target: &Self::Target, seq: u64) -> bool;
    /// Report a health transition.
    fn health(&mut self, target: &Self::Target, health: Health);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Held,
    Unresponsive,
    Lapsed,
}

#[derive(Debug)]
struct Entry<T> {
    target: T,
    interval: Duration,
    /// Jitter factor (0.9..1.1) of the next renewal, drawn when the
    /// previous one is sent so that the retry instant and the post-ack
    /// instant differ only by the round trip.
    jitter: f32,
    next_renew: Instant,
    /// Upper bound of the shellper's expiry instant.
    expiry: Instant,
    /// Send instant of the oldest unanswered renewal.
    unacked_since: Option<Instant>,
    /// Send instant of the renewal with `seq`.
    last_sent: Instant,
    /// When this lease's live heap item fires.
    queued: Instant,
    seq: u64,
    generation: u32,
    state: State,
}

/// Multiplicative hasher for the scheduler's integer keys (SipHash's DoS
/// resistance buys nothing for keys we allocate ourselves).
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type KeyMap<V> = HashMap<Key, V, std::hash::BuildHasherDefault<KeyHasher>>;

/// The pure scheduling core. See the module docs for the rules.
///
/// Each lease has exactly one live heap item. An acknowledgment never
/// touches the heap: the item queued when the renewal was sent fires at
/// `send + jitter × interval`, the post-ack due time is `ack + jitter ×
/// interval`, and the difference (the round trip) is within the coalescing
/// slack; a slow ack just re-queues the item once. One pop and one push per
/// renewal.
#[derive(Debug)]
pub struct Scheduler<T> {
    entries: KeyMap<Entry<T>>,
    heap: BinaryHeap<Reverse<(Instant, Key, u32)>>,
    batch: Vec<(Key, u32)>,
    rng: SmallRng,
    coalesce: Duration,
}

/// Default coalescing slack: renewals due within this of the earliest one
/// are sent in the same wakeup, so a Tower holding hundreds of leases wakes
/// a few times per second instead of once per renewal. Capped per lease at
/// a tenth of its interval (renewing 50 ms early out of 2 s costs nothing;
/// out of 100 ms it would).
pub const DEFAULT_COALESCE: Duration = Duration::from_millis(50);

impl<T> Scheduler<T> {
    /// An empty scheduler; `seed` feeds the jitter generator (fixed in
    /// tests, random in production).
    pub fn new(seed: u64) -> Self {
        Scheduler {
            entries: KeyMap::default(),
            heap: BinaryHeap::new(),
            batch: Vec::new(),
            rng: SmallRng::seed_from_u64(seed),
            coalesce: DEFAULT_COALESCE,
        }
    }

    /// Sets the coalescing slack.
    pub fn with_coalesce(mut self, coalesce: Duration) -> Self {
        self.coalesce = coalesce;
        self
    }

    /// The coalescing slack.
    pub fn coalesce(&self) -> Duration {
        self.coalesce
    }

    /// Number of leases scheduled.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no lease is scheduled.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Approximate bytes of scheduler state per lease (entry, its hash slot
    /// and its heap items), for the benchmark's memory figure.
    pub fn bytes_per_lease(&self) -> usize {
        let n = self.entries.len().max(1);
        let map = self.entries.capacity() * (std::mem::size_of::<(Key, Entry<T>)>() + 1);
        let heap = self.heap.capacity() * std::mem::size_of::<Reverse<(Instant, Key, u32)>>();
        (map + heap) / n
    }

    fn draw(&mut self) -> f32 {
        self.rng.random_range(0.9f32..1.1f32)
    }

    /// Starts scheduling a lease just granted at `now` with `expires_in`.
    /// `interval` is the renewal interval (the GRANT's `renew_every_ms`).
    pub fn insert(
        &mut self,
        key: Key,
        target: T,
        interval: Duration,
        expires_in: Duration,
        now: Instant,
    ) {
        let jitter = self.draw();
        let generation = self
            .entries
            .get(&key)
            .map_or(0, |e| e.generation.wrapping_add(1));
        let mut e = Entry {
            target,
            interval,
            jitter,
            next_renew: now + interval.mul_f32(jitter),
            expiry: now + expires_in,
            unacked_since: None,
            last_sent: now,
            queued: now,
            seq: 0,
            generation,
            state: State::Held,
        };
        e.queued = Self::wake_at(&e);
        self.heap.push(Reverse((e.queued, key, generation)));
        self.entries.insert(key, e);
        self.maybe_compact();
    }

    /// Stops scheduling a lease; returns its target.
    pub fn remove(&mut self, key: Key) -> Option<T> {
        // Its heap item becomes stale and is skipped when popped.
        let t = self.entries.remove(&key).map(|e| e.target);
        self.maybe_compact();
        t
    }

    /// RENEWED for `seq` arrived at `now`. Returns the round trip when `seq`
    /// is the latest renewal sent.
    pub fn ack<S: RenewSink<Target = T>>(
        &mut self,
        key: Key,
        seq: u64,
        expires_in: Duration,
        now: Instant,
        sink: &mut S,
    ) -> Option<Duration> {
        let e = self.entries.get_mut(&key)?;
        if seq == 0 || seq > e.seq {
            return None; // not a renewal we sent
        }
        let rtt = (seq == e.seq).then(|| now.saturating_duration_since(e.last_sent));
        e.unacked_since = if seq == e.seq {
            None
        } else {
            Some(e.last_sent)
        };
        e.expiry = now + expires_in;
        e.next_renew = now + e.interval.mul_f32(e.jitter);
        if e.state != State::Held {
            e.state = State::Held;
            sink.health(&e.target, Health::Held);
        }
        // The live item fires at or before the new due time (it was queued
        // for send + jitter × interval); only an earlier due time (a
        // shortened expiry) needs a new item.
        let at = Self::wake_at(e);
        if at < e.queued {
            e.generation = e.generation.wrapping_add(1);
            e.queued = at;
            let g = e.generation;
            self.heap.push(Reverse((at, key, g)));
            self.maybe_compact();
        }
        rtt
    }

    fn wake_at(e: &Entry<T>) -> Instant {
        if e.state != State::Lapsed {
            e.next_renew.min(e.expiry)
        } else {
            e.next_renew
        }
    }

    /// When the holder must call [`fire`](Self::fire) next (`None` when
    /// empty). May be a little early (stale heap items); never late.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Handles every lease due at `now` (renewals: within the coalescing
    /// slack). Returns the number of renewals sent.
    pub fn fire<S: RenewSink<Target = T>>(&mut self, now: Instant, sink: &mut S) -> usize {
        let horizon = now + self.coalesce;
        self.batch.clear();
        while let Some(Reverse((t, key, generation))) = self.heap.peek().copied() {
            if t > horizon {
                break;
            }
            self.heap.pop();
            self.batch.push((key, generation));
        }
        let mut sent = 0;
        let batch = std::mem::take(&mut self.batch);
        for &(key, generation) in &batch {
            let next_jitter = self.draw();
            let Some(e) = self.entries.get_mut(&key) else {
                continue;
            };
            if e.generation != generation {
                continue; // superseded by a later schedule of the same lease
            }
            if e.state != State::Lapsed && now >= e.expiry {
                e.state = State::Lapsed;
                sink.health(&e.target, Health::Lapsed);
            }
            if now + self.coalesce.min(e.interval / 10) >= e.next_renew {
                // Due again with the previous renewal still unanswered: a
                // whole interval without RENEWED.
                if e.state == State::Held
                    && let Some(s) = e.unacked_since
                {
                    e.state = State::Unresponsive;
                    sink.health(
                        &e.target,
                        Health::Unresponsive {
                            waited: now.saturating_duration_since(s),
                        },
                    );
                }
                e.seq += 1;
                if !sink.renew(&e.target, e.seq) {
                    self.entries.remove(&key);
                    continue;
                }
                sent += 1;
                e.last_sent = now;
                e.unacked_since.get_or_insert(now);
                // Retry instant if unanswered; an ack moves it by the round
                // trip only.
                e.jitter = next_jitter;
                e.next_renew = now + e.interval.mul_f32(next_jitter);
            }
            e.queued = Self::wake_at(e);
            let item = Reverse((e.queued, key, e.generation));
            self.heap.push(item);
        }
        self.batch = batch;
        sent
    }

    /// Drops stale heap items once they outnumber live ones, so memory stays
    /// proportional to the number of leases.
    fn maybe_compact(&mut self) {
        if self.heap.len() > 2 * self.entries.len() + 64 {
            let live: Vec<_> = self
                .entries
                .iter()
                .map(|(k, e)| Reverse((e.queued, *k, e.generation)))
                .collect();
            self.heap = BinaryHeap::from(live);
        }
    }
}

/// Messages to the scheduler task.
#[derive(Debug)]
pub(crate) enum SchedMsg<T> {
    Insert {
        key: Key,
        target: T,
        interval: Duration,
        expires_in: Duration,
        at: Instant,
    },
    Ack {
        key: Key,
        seq: u64,
        expires_in: Duration,
        at: Instant,
    },
    Remove {
        key: Key,
    },
}

/// Round-trip samples of acknowledged renewals (a ring of the latest).
#[derive(Debug, Default)]
pub struct RttSamples {
    samples: Vec<Duration>,
    next: usize,
    total: u64,
}

const RTT_RING: usize = 8192;

impl RttSamples {
    fn push(&mut self, d: Duration) {
        self.total += 1;
        if self.samples.len() < RTT_RING {
            self.samples.push(d);
        } else {
            self.samples[self.next] = d;
            self.next = (self.next + 1) % RTT_RING;
        }
    }

    /// The retained samples (latest up to 8192), unordered.
    pub fn samples(&self) -> &[Duration] {
        &self.samples
    }

    /// Renewals acknowledged since the Tower started.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// Runs the scheduler until every sender of `rx` is gone.
pub(crate) async fn run<S: RenewSink>(
    mut rx: mpsc::UnboundedReceiver<SchedMsg<S::Target>>,
    mut sink: S,
    rtt: std::sync::Arc<std::sync::Mutex<RttSamples>>,
) {
    let mut core: Scheduler<S::Target> = Scheduler::new(rand::random());
    let far = || Instant::now() + Duration::from_secs(86_400);
    let sleep = tokio::time::sleep_until(far());
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;
    let mut rtts: Vec<Duration> = Vec::new();
    loop {
        let want = core.next_deadline();
        if want != armed {
            sleep.as_mut().reset(want.unwrap_or_else(far));
            armed = want;
        }
        tokio::select! {
            biased;
            msg = rx.recv() => {
                let Some(mut msg) = msg else { break };
                // Apply everything queued before looking at the clock again.
                let mut budget = 1024;
                loop {
                    match msg {
                        SchedMsg::Insert { key, target, interval, expires_in, at } => {
                            core.insert(key, target, interval, expires_in, at)
                        }
                        SchedMsg::Ack { key, seq, expires_in, at } => {
                            if let Some(d) = core.ack(key, seq, expires_in, at, &mut sink) {
                                rtts.push(d);
                            }
                        }
                        SchedMsg::Remove { key } => {
                            core.remove(key);
                        }
                    }
                    budget -= 1;
                    if budget == 0 { break; }
                    match rx.try_recv() {
                        Ok(m) => msg = m,
                        Err(_) => break,
                    }
                }
                if !rtts.is_empty() {
                    let mut r = rtt.lock().unwrap_or_else(|p| p.into_inner());
                    for d in rtts.drain(..) {
                        r.push(d);
                    }
                }
            }
            _ = &mut sleep, if armed.is_some() => {
                armed = None; // force a re-arm
                core.fire(Instant::now(), &mut sink);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fake transport: records renewals and health reports per lease.
    #[derive(Default)]
    struct Fake {
        renews: Vec<(u32, u64, Instant)>,
        health: Vec<(u32, Health)>,
        dead: Vec<u32>,
    }

    impl RenewSink for Fake {
        type Target = u32;
        fn renew(&mut self, t: &u32, seq: u64) -> bool {
            if self.dead.contains(t) {
                return false;
            }
            self.renews.push((*t, seq, Instant::now()));
            true
        }
        fn health(&mut self, t: &u32, h: Health) {
            self.health.push((*t, h));
        }
    }

    const IV: Duration = Duration::from_millis(2000);
    const TTL: Duration = Duration::from_millis(6000);

    /// Drives the core like the task does, acking every renewal after `rtt`
    /// unless the lease is in `silent`.
    async fn drive(
        s: &mut Scheduler<u32>,
        f: &mut Fake,
        until: Instant,
        rtt: Duration,
        silent: &[u32],
    ) {
        let mut pending: Vec<(Instant, u32, u64)> = Vec::new();
        loop {
            let next_ack = pending.iter().map(|p| p.0).min();
            let next = [s.next_deadline(), next_ack].into_iter().flatten().min();
            let Some(next) = next else { break };
            if next > until {
                tokio::time::sleep_until(until).await;
                break;
            }
            tokio::time::sleep_until(next).await;
            let now = Instant::now();
            let due: Vec<_> = pending.iter().filter(|p| p.0 <= now).copied().collect();
            pending.retain(|p| p.0 > now);
            for (_, k, seq) in due {
                s.ack(k as Key, seq, TTL, now, f);
            }
            let before = f.renews.len();
            s.fire(now, f);
            for &(k, seq, at) in &f.renews[before..] {
                if !silent.contains(&k) {
                    pending.push((at + rtt, k, seq));
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn renews_from_last_ack_with_jitter_and_no_health_noise() {
        let mut s = Scheduler::new(7);
        let mut f = Fake::default();
        let t0 = Instant::now();
        for k in 0..100u32 {
            s.insert(k as Key, k, IV, TTL, t0);
        }
        let rtt = Duration::from_millis(30);
        drive(&mut s, &mut f, t0 + Duration::from_secs(60), rtt, &[]).await;
        assert!(
            f.health.is_empty(),
            "{:?}",
            &f.health[..3.min(f.health.len())]
        );
        // Per lease: gaps between renewals = interval × [0.9, 1.1] + rtt.
        for k in 0..100u32 {
            let times: Vec<Instant> = f.renews.iter().filter(|r| r.0 == k).map(|r| r.2).collect();
            assert!(times.len() >= 26 && times.len() <= 34, "{}", times.len());
            for w in times.windows(2) {
                let gap = w[1] - w[0];
                let lo = IV.mul_f64(0.9) + rtt - DEFAULT_COALESCE;
                let hi = IV.mul_f64(1.1) + rtt + Duration::from_millis(1);
                assert!(gap >= lo && gap <= hi, "gap {gap:?}");
            }
        }
        // Jitter spread the leases: they no longer all renew in one instant.
        let mut lasts: Vec<Instant> = (0..100u32)
            .filter_map(|k| f.renews.iter().rev().find(|r| r.0 == k).map(|r| r.2))
            .collect();
        lasts.sort();
        lasts.dedup();
        assert!(lasts.len() > 20, "only {} distinct instants", lasts.len());
    }

    #[tokio::test(start_paused = true)]
    async fn silent_lease_goes_unresponsive_then_lapsed_then_held() {
        let mut s = Scheduler::new(1);
        let mut f = Fake::default();
        let t0 = Instant::now();
        s.insert(1, 1, IV, TTL, t0);
        s.insert(2, 2, IV, TTL, t0);
        drive(
            &mut s,
            &mut f,
            t0 + Duration::from_secs(10),
            Duration::ZERO,
            &[1],
        )
        .await;
        let h1: Vec<_> = f.health.iter().filter(|h| h.0 == 1).map(|h| h.1).collect();
        assert!(matches!(h1[0], Health::Unresponsive { .. }), "{h1:?}");
        assert_eq!(h1[1], Health::Lapsed);
        assert_eq!(h1.len(), 2);
        assert!(f.health.iter().all(|h| h.0 == 1));
        // Lapsed is reported no earlier than the expiry bound.
        // Renewals continue while silent (at the interval), so a late answer
        // can revive the lease.
        let n1 = f.renews.iter().filter(|r| r.0 == 1).count();
        assert!(n1 >= 4, "{n1}");
        let last_seq = f.renews.iter().rev().find(|r| r.0 == 1).map(|r| r.1);
        let now = Instant::now();
        s.ack(1, last_seq.expect("sent"), TTL, now, &mut f);
        assert_eq!(f.health.last(), Some(&(1, Health::Held)));
    }

    #[tokio::test(start_paused = true)]
    async fn one_timer_coalesces_and_stale_items_stay_bounded() {
        let mut s = Scheduler::new(3).with_coalesce(Duration::from_millis(50));
        let mut f = Fake::default();
        let t0 = Instant::now();
        for k in 0..1000u32 {
            s.insert(k as Key, k, IV, TTL, t0);
        }
        let mut wakeups = 0;
        let until = t0 + Duration::from_secs(20);
        let mut pending = Vec::new();
        while let Some(d) = s.next_deadline() {
            if d > until {
                break;
            }
            tokio::time::sleep_until(d).await;
            wakeups += 1;
            let now = Instant::now();
            for (k, seq) in pending.drain(..) {
                s.ack(k, seq, TTL, now, &mut f);
            }
            let before = f.renews.len();
            s.fire(now, &mut f);
            pending.extend(f.renews[before..].iter().map(|r| (r.0 as Key, r.1)));
        }
        let renewals = f.renews.len();
        assert!(renewals >= 9000, "{renewals}");
        // Coalescing: far fewer wakeups than renewals.
        assert!(wakeups * 5 < renewals, "{wakeups} wakeups for {renewals}");
        assert!(s.heap.len() <= 2 * s.len() + 64 + 1000);
        assert!(s.bytes_per_lease() < 1024, "{}", s.bytes_per_lease());
    }

    #[tokio::test(start_paused = true)]
    async fn removed_and_dead_leases_stop() {
        let mut s = Scheduler::new(5);
        let mut f = Fake::default();
        let t0 = Instant::now();
        s.insert(1, 1, IV, TTL, t0);
        s.insert(2, 2, IV, TTL, t0);
        s.insert(3, 3, IV, TTL, t0);
        assert_eq!(s.remove(1), Some(1));
        f.dead.push(2);
        drive(
            &mut s,
            &mut f,
            t0 + Duration::from_secs(10),
            Duration::ZERO,
            &[],
        )
        .await;
        assert!(f.renews.iter().all(|r| r.0 == 3));
        assert_eq!(s.len(), 1);
        // An ack for a seq never sent is ignored.
        let now = Instant::now();
        assert_eq!(s.ack(3, 10_000, TTL, now, &mut f), None);
    }

    #[tokio::test(start_paused = true)]
    async fn task_renews_through_channel_sink() {
        struct ChanSink(mpsc::UnboundedSender<(u32, u64)>);
        impl RenewSink for ChanSink {
            type Target = u32;
            fn renew(&mut self, t: &u32, seq: u64) -> bool {
                self.0.send((*t, seq)).is_ok()
            }
            fn health(&mut self, _: &u32, _: Health) {}
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let (rtx, mut rrx) = mpsc::unbounded_channel();
        let rtt = std::sync::Arc::new(std::sync::Mutex::new(RttSamples::default()));
        let task = tokio::spawn(run(rx, ChanSink(rtx), rtt.clone()));
        let t0 = Instant::now();
        tx.send(SchedMsg::Insert {
            key: 9,
            target: 9,
            interval: IV,
            expires_in: TTL,
            at: t0,
        })
        .expect("send");
        for i in 1..=5u64 {
            let (k, seq) = rrx.recv().await.expect("renew");
            assert_eq!((k, seq), (9, i));
            tokio::time::sleep(Duration::from_millis(1)).await;
            tx.send(SchedMsg::Ack {
                key: 9,
                seq,
                expires_in: TTL,
                at: Instant::now(),
            })
            .expect("send");
        }
        let elapsed = Instant::now() - t0;
        assert!(
            elapsed >= IV.mul_f64(0.9) * 5 && elapsed <= IV.mul_f64(1.1) * 5 + IV,
            "{elapsed:?}"
        );
        drop(tx);
        task.await.expect("task ends when senders are gone");
        assert_eq!(rtt.lock().expect("lock").total(), 5);
    }
}
