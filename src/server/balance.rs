//! How many workers serve the cleartext HTTP/1.1 connections: as few as
//! the load needs. A worker woken for one request at a time pays a context
//! switch and cold caches for each: paced at 2,000 GETs/s, two workers cost
//! ~1.2× the CPU per request of one (`loadbench --rate 2000 --workers 1|2`).
//! So such connections are accepted onto the first `active` workers only,
//! and `active` follows the load, measured as the share of time each
//! worker is awake (the runtime's park hooks, two clock reads a wake-up):
//!
//! * an active worker awake more than [`GROW_ABOVE`] of a [`WINDOW`] brings
//!   the next worker in, and each active worker hands it its share of its
//!   connections;
//! * when the active workers' load would fit on one fewer at
//!   [`SHRINK_BELOW`] each, for [`CALM_WINDOWS`] windows in a row, the last
//!   one leaves, and its connections go to the others;
//! * when one worker is active and every worker slept through a window
//!   (below [`IDLE_BELOW`]), the controller rests until a worker wakes: an
//!   idle gateway is not woken to look at nothing (a tick over 64 ms costs
//!   tokio's timer wheel two wake-ups).
//!
//! A connection moves between two requests (its response flushed, no byte
//! of the next head read), on the socket it has: the client sees nothing.
//! TLS and HTTP/2 connections stay on the worker they were accepted on,
//! round-robin over all workers (a TLS session or an HTTP/2 connection's
//! state cannot move).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use metrics::{Counter, Gauge};
use tokio::sync::Notify;

use super::placement::Placement;

/// How often the load is looked at.
const WINDOW: Duration = Duration::from_millis(100);
/// An active worker awake more than this share of a window is busy.
const GROW_ABOVE: f64 = 0.5;
/// The share of a window each of one fewer active worker would be awake
/// below which one leaves: far enough below [`GROW_ABOVE`] that the one
/// leaving does not bring the next back in.
const SHRINK_BELOW: f64 = 0.25;
/// Calm windows in a row before a worker leaves: a lull between bursts is
/// not a change of load.
const CALM_WINDOWS: u32 = 10;
/// Every worker awake less than this share of a window: the gateway is idle.
const IDLE_BELOW: f64 = 0.01;

/// The workers' load and how many of them are active.
pub(super) struct Balance {
    /// The time-stamp counter where the machine has one: the park hooks'
    /// two clock reads a wake-up cost ~20 instructions instead of ~100.
    clock: quanta::Clock,
    /// The clock's raw reading at the start.
    origin: u64,
    active: Padded<AtomicUsize>,
    /// The next active worker a connection leaving an inactive one goes to.
    turn: Padded<AtomicUsize>,
    workers: Box<[Padded<WorkerLoad>]>,
    /// The controller rests until a worker wakes ([`Balance::woke`]).
    resting: AtomicBool,
    resume: Notify,
    moved: Counter,
    active_gauge: Gauge,
    /// The workers' CPUs, which follow how many are active.
    placement: Option<Arc<Placement>>,
}

/// A worker's own cache line: its wake-ups write here.
#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(T);

#[derive(Default)]
struct WorkerLoad {
    /// Nanoseconds (since [`Balance::origin`]) awake, to its last park.
    busy: AtomicU64,
    /// When it last woke (nanoseconds since `origin`), 0 while parked.
    awake_since: AtomicU64,
    /// The connections it serves that could move.
    movable: AtomicUsize,
    /// Of those, how many are to move to the newest active worker.
    shed: AtomicUsize,
}

/// What the load calls for.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    Keep,
    Grow,
    Shrink,
}

// === impl Balance ===

impl Balance {
    /// `workers` workers, one of them active.
    pub(super) fn new(
        workers: usize,
        moved: Counter,
        active_gauge: Gauge,
        placement: Option<Arc<Placement>>,
    ) -> Arc<Self> {
        active_gauge.set(1.0);
        let clock = quanta::Clock::new();
        Arc::new(Self {
            origin: clock.raw(),
            clock,
            active: Padded(AtomicUsize::new(1)),
            turn: Padded(AtomicUsize::new(0)),
            workers: (0..workers.max(1)).map(|_| Padded::default()).collect(),
            resting: AtomicBool::new(false),
            resume: Notify::new(),
            moved,
            active_gauge,
            placement,
        })
    }

    pub(super) fn placement(&self) -> Option<&Arc<Placement>> {
        self.placement.as_ref()
    }

    pub(super) fn workers(&self) -> usize {
        self.workers.len()
    }

    pub(super) fn active(&self) -> usize {
        self.active.0.load(Relaxed)
    }

    /// The runtime of `worker` woke up (and the controller, if it rests).
    pub(super) fn woke(&self, worker: usize) {
        if let Some(load) = self.workers.get(worker) {
            load.0.awake_since.store(self.now().max(1), Relaxed);
        }
        if self.resting.load(Relaxed) && self.resting.swap(false, Relaxed) {
            self.resume.notify_one();
        }
    }

    /// The runtime of `worker` is about to park.
    pub(super) fn parks(&self, worker: usize) {
        let Some(load) = self.workers.get(worker) else {
            return;
        };
        let since = load.0.awake_since.swap(0, Relaxed);
        if since != 0 {
            // Only the worker itself writes its `busy`.
            let busy = load.0.busy.load(Relaxed) + self.now().saturating_sub(since);
            load.0.busy.store(busy, Relaxed);
        }
    }

    /// A movable connection began (`true`) or stopped (`false`) being served
    /// on `worker`.
    pub(super) fn count_movable(&self, worker: usize, serving: bool) {
        if let Some(load) = self.workers.get(worker) {
            if serving {
                load.0.movable.fetch_add(1, Relaxed);
            } else {
                load.0.movable.fetch_sub(1, Relaxed);
            }
        }
    }

    /// Where a movable connection of `worker`, between two requests, is to
    /// go, if anywhere: from an inactive worker to the active ones in turn,
    /// from an active one shedding to the newest active one.
    pub(super) fn destination(&self, worker: usize) -> Option<usize> {
        let active = self.active();
        if worker >= active {
            return Some(self.turn.0.fetch_add(1, Relaxed) % active);
        }
        let shed = &self.workers.get(worker)?.0.shed;
        if shed.load(Relaxed) == 0 {
            return None;
        }
        shed.fetch_update(Relaxed, Relaxed, |left| left.checked_sub(1))
            .ok()
            .map(|_| active - 1)
    }

    /// The movable connections `worker` serves.
    #[cfg(test)]
    pub(super) fn movable(&self, worker: usize) -> usize {
        self.workers[worker].0.movable.load(Relaxed)
    }

    /// A connection moved to another worker.
    pub(super) fn moved(&self) {
        self.moved.increment(1);
    }

    /// Brings the next worker in: each active one sheds its share.
    pub(super) fn grow(&self) {
        let active = self.active();
        if active >= self.workers.len() {
            return;
        }
        for load in &self.workers[..active] {
            let movable = load.0.movable.load(Relaxed);
            load.0.shed.store(movable / (active + 1), Relaxed);
        }
        self.set_active(active + 1);
    }

    /// The last active worker leaves; its connections go to the others.
    pub(super) fn shrink(&self) {
        let active = self.active();
        if active <= 1 {
            return;
        }
        for load in self.workers.iter() {
            load.0.shed.store(0, Relaxed);
        }
        self.set_active(active - 1);
    }

    fn set_active(&self, active: usize) {
        self.active.0.store(active, Relaxed);
        self.active_gauge.set(active as f64);
        if let Some(placement) = &self.placement {
            placement.follow(active);
        }
        tracing::debug!(active, "workers serving HTTP/1.1 connections");
    }

    /// Follows the load, a window at a time, as long as the first worker runs.
    pub(super) async fn keep_balanced(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(WINDOW);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut at = self.now();
        let mut last: Vec<u64> = self.awake(at).collect();
        let mut shares = vec![0.0; last.len()];
        let mut calm = 0;
        loop {
            ticks.tick().await;
            let now = self.now();
            let window = now.saturating_sub(at).max(1) as f64;
            for ((share, last), awake) in shares.iter_mut().zip(&mut last).zip(self.awake(now)) {
                *share = (awake.saturating_sub(*last) as f64 / window).min(1.0);
                *last = awake;
            }
            at = now;
            match decide(self.active(), &shares, &mut calm) {
                Change::Keep => {}
                Change::Grow => self.grow(),
                Change::Shrink => self.shrink(),
            }
            if self.active() == 1 && shares.iter().all(|share| *share < IDLE_BELOW) {
                // A wake-up before this wait leaves its permit: none is missed.
                self.resting.store(true, Relaxed);
                self.resume.notified().await;
                ticks.reset();
                at = self.now();
                for (last, awake) in last.iter_mut().zip(self.awake(at)) {
                    *last = awake;
                }
            }
        }
    }

    /// Each worker's time awake by `now`, its current wake-up included.
    fn awake(&self, now: u64) -> impl Iterator<Item = u64> + '_ {
        self.workers.iter().map(move |load| {
            let since = load.0.awake_since.load(Relaxed);
            let current = if since == 0 {
                0
            } else {
                now.saturating_sub(since)
            };
            load.0.busy.load(Relaxed) + current
        })
    }

    /// Nanoseconds since the start.
    fn now(&self) -> u64 {
        self.clock.delta_as_nanos(self.origin, self.clock.raw())
    }
}

/// What a window's `shares` (each worker's share of it awake) call for,
/// with `active` workers active; `calm` counts the windows in a row that
/// would have let one leave.
fn decide(active: usize, shares: &[f64], calm: &mut u32) -> Change {
    let serving = &shares[..active.min(shares.len())];
    if active < shares.len() && serving.iter().any(|share| *share > GROW_ABOVE) {
        *calm = 0;
        return Change::Grow;
    }
    let load: f64 = serving.iter().sum();
    if active > 1 && load < SHRINK_BELOW * (active - 1) as f64 {
        *calm += 1;
        if *calm >= CALM_WINDOWS {
            *calm = 0;
            return Change::Shrink;
        }
    } else {
        *calm = 0;
    }
    Change::Keep
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::server::placement;

    fn balance(workers: usize) -> Arc<Balance> {
        Balance::new(workers, Counter::noop(), Gauge::noop(), None)
    }

    /// The placement follows the active workers: a second one frees them
    /// all to run on any CPU, back to one pins them again.
    #[test]
    fn the_workers_are_pinned_while_one_is_active() {
        let allowed = placement::allowed_cpus().unwrap();
        // One CPU allowed still makes a placement, of that CPU twice.
        let cpus = match allowed[..] {
            [only] => vec![only, only],
            _ => allowed.clone(),
        };
        let placement = Arc::new(Placement::new(cpus, 0, 2).unwrap());
        let balance = Balance::new(2, Counter::noop(), Gauge::noop(), Some(placement));
        let (step, steps) = mpsc::channel::<()>();
        let (seen, sightings) = mpsc::channel();
        let worker = {
            let balance = balance.clone();
            std::thread::spawn(move || {
                balance.placement().unwrap().enter(0);
                let cpus = || placement::allowed_cpus().unwrap().len();
                seen.send(cpus()).unwrap();
                while steps.recv().is_ok() {
                    seen.send(cpus()).unwrap();
                }
            })
        };
        let next = |change: fn(&Balance)| {
            change(&balance);
            step.send(()).unwrap();
            sightings.recv().unwrap()
        };
        assert_eq!(sightings.recv().unwrap(), 1, "pinned at the start");
        assert_eq!(next(Balance::grow), allowed.len(), "free with two active");
        assert_eq!(next(Balance::shrink), 1, "pinned again with one");
        drop(step);
        worker.join().unwrap();
    }

    #[test]
    fn a_busy_active_worker_brings_the_next_in_up_to_all() {
        let mut calm = 0;
        assert_eq!(decide(1, &[0.6, 0.0], &mut calm), Change::Grow);
        assert_eq!(decide(1, &[0.4, 0.9], &mut calm), Change::Keep);
        assert_eq!(decide(2, &[0.9, 0.9], &mut calm), Change::Keep);
        assert_eq!(decide(2, &[0.3, 0.7, 0.0], &mut calm), Change::Grow);
    }

    #[test]
    fn a_worker_leaves_only_after_calm_windows_in_a_row() {
        let mut calm = 0;
        for _ in 1..CALM_WINDOWS {
            assert_eq!(decide(2, &[0.1, 0.1], &mut calm), Change::Keep);
        }
        // One window with load that needs both resets the count.
        assert_eq!(decide(2, &[0.2, 0.2], &mut calm), Change::Keep);
        for _ in 1..CALM_WINDOWS {
            assert_eq!(decide(2, &[0.1, 0.1], &mut calm), Change::Keep);
        }
        assert_eq!(decide(2, &[0.1, 0.1], &mut calm), Change::Shrink);
        // One active worker never leaves.
        for _ in 0..CALM_WINDOWS * 2 {
            assert_eq!(decide(1, &[0.0, 0.0], &mut calm), Change::Keep);
        }
    }

    #[test]
    fn growing_sheds_each_active_workers_share_to_the_new_one() {
        let balance = balance(3);
        for _ in 0..6 {
            balance.count_movable(0, true);
        }
        assert_eq!(balance.destination(0), None);
        balance.grow();
        assert_eq!(balance.active(), 2);
        // Half of worker 0's six, to worker 1, then no more.
        let moves: Vec<_> = (0..6).map(|_| balance.destination(0)).collect();
        assert_eq!(moves, [Some(1), Some(1), Some(1), None, None, None]);
        assert_eq!(balance.destination(1), None);
        balance.grow();
        balance.grow();
        assert_eq!(balance.active(), 3);
    }

    #[test]
    fn an_inactive_workers_connections_go_to_the_active_ones_in_turn() {
        let balance = balance(3);
        balance.grow();
        balance.grow();
        balance.count_movable(0, true);
        balance.shrink();
        assert_eq!(balance.active(), 2);
        // Shrinking cancels what growing asked to shed.
        assert_eq!(balance.destination(0), None);
        let moves: Vec<_> = (0..4).map(|_| balance.destination(2)).collect();
        assert_eq!(moves, [Some(0), Some(1), Some(0), Some(1)]);
        balance.shrink();
        balance.shrink();
        assert_eq!(balance.active(), 1);
        assert_eq!(balance.destination(1), Some(0));
    }

    /// Waits (up to 10 s) for `done`.
    async fn until(what: &str, done: impl Fn() -> bool) {
        for _ in 0..1000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("not {what} within 10 s");
    }

    #[tokio::test]
    async fn the_controller_rests_while_all_sleep_and_looks_again_when_a_worker_wakes() {
        let balance = balance(2);
        tokio::spawn(balance.clone().keep_balanced());
        until("resting", || balance.resting.load(Relaxed)).await;
        // Worker 0 wakes (and stays awake, busy): looked at again, it
        // brings worker 1 in.
        balance.woke(0);
        assert!(!balance.resting.load(Relaxed));
        until("two workers active", || balance.active() == 2).await;
        // Both sleep: once worker 1 has left, the controller rests again.
        balance.parks(0);
        until("one worker active", || balance.active() == 1).await;
        until("resting again", || balance.resting.load(Relaxed)).await;
    }

    #[test]
    fn time_awake_counts_to_each_park_and_the_current_wake_up() {
        let balance = balance(2);
        balance.woke(0);
        std::thread::sleep(Duration::from_millis(2));
        balance.parks(0);
        let after_park: Vec<u64> = balance.awake(balance.now()).collect();
        assert!(after_park[0] >= 2_000_000, "{after_park:?}");
        assert_eq!(after_park[1], 0);
        // Parked: no more time counts.
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(balance.awake(balance.now()).next(), Some(after_park[0]));
        balance.woke(1);
        std::thread::sleep(Duration::from_millis(1));
        let awake: Vec<u64> = balance.awake(balance.now()).collect();
        assert!(awake[1] >= 1_000_000, "{awake:?}");
    }
}
