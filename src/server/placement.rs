//! Which CPUs the workers run on. While the load fits on one worker (the
//! [`Balance`](super::balance::Balance) keeps one active), each worker is
//! pinned to a CPU of its own: woken for one request at a time, a worker
//! that the scheduler moves to whichever CPU is free finds its caches cold
//! there (`loadbench --rate 1000`: ~75 µs of CPU per GET moving, ~55 µs
//! pinned). Once the load needs more workers, they may run on any of the
//! process's CPUs again: busy workers pinned one per CPU cannot make room
//! for the other processes of the machine (`loadbench` saturated, lists of
//! 10: ~4% fewer requests a second pinned).
//!
//! The CPUs are those the process may use, in turn, from one that depends
//! on the process (and on how many gateways it started before), so that
//! gateways sharing a machine do not all put their first worker (the one
//! always active) on one CPU.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering::Relaxed};

use rustix::thread::{CpuSet, Pid};

/// The workers' CPUs, and whether they are pinned now.
#[derive(Debug)]
pub(super) struct Placement {
    cpus: Vec<usize>,
    first: usize,
    /// Each worker's thread id once it started; 0 before.
    threads: Box<[AtomicI32]>,
    pinned: AtomicBool,
}

impl Placement {
    /// For `workers` workers; `None` where there is no choice to make (one
    /// CPU) or the CPUs the process may use cannot be read.
    pub(super) fn of_this_process(workers: usize) -> Option<Self> {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        Self::new(allowed_cpus()?, STARTED.fetch_add(1, Relaxed), workers)
    }

    /// On `cpus`, for the process's gateway number `started`.
    pub(super) fn new(cpus: Vec<usize>, started: usize, workers: usize) -> Option<Self> {
        if cpus.len() < 2 {
            return None;
        }
        let first = (std::process::id() as usize).wrapping_add(started) % cpus.len();
        Some(Self {
            cpus,
            first,
            threads: (0..workers).map(|_| AtomicI32::new(0)).collect(),
            pinned: AtomicBool::new(true),
        })
    }

    fn cpu(&self, worker: usize) -> usize {
        self.cpus[(self.first + worker) % self.cpus.len()]
    }

    /// Called on `worker`'s thread as it starts: placed as the others are.
    pub(super) fn enter(&self, worker: usize) {
        let thread = rustix::thread::gettid();
        if let Some(slot) = self.threads.get(worker) {
            slot.store(thread.as_raw_nonzero().get(), Relaxed);
        }
        self.place(worker, thread, self.pinned.load(Relaxed));
    }

    /// `active` workers serve now: pinned while one does, free otherwise.
    pub(super) fn follow(&self, active: usize) {
        let pinned = active <= 1;
        if self.pinned.swap(pinned, Relaxed) == pinned {
            return;
        }
        for (worker, thread) in self.threads.iter().enumerate() {
            if let Some(thread) = Pid::from_raw(thread.load(Relaxed)) {
                self.place(worker, thread, pinned);
            }
        }
    }

    /// Where the system refuses, a worker runs where the scheduler puts it.
    fn place(&self, worker: usize, thread: Pid, pinned: bool) {
        let mut set = CpuSet::new();
        if pinned {
            set.set(self.cpu(worker));
        } else {
            self.cpus.iter().for_each(|&cpu| set.set(cpu));
        }
        if let Err(error) = rustix::thread::sched_setaffinity(Some(thread), &set) {
            tracing::warn!(worker, pinned, %error, "could not place the worker on its CPUs");
        }
    }
}

/// The CPUs the calling thread may run on (the process's, on a thread
/// no placement has pinned).
pub(super) fn allowed_cpus() -> Option<Vec<usize>> {
    let allowed = rustix::thread::sched_getaffinity(None).ok()?;
    Some(
        (0..CpuSet::MAX_CPU)
            .filter(|&cpu| allowed.is_set(cpu))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, thread};

    use super::*;

    #[test]
    fn workers_take_the_allowed_cpus_in_turn_from_one_per_process() {
        let allowed = allowed_cpus().unwrap();
        let Some(placement) = Placement::of_this_process(2) else {
            assert!(allowed.len() < 2, "{allowed:?} is a choice to make");
            return;
        };
        assert_eq!(placement.cpus, allowed);
        let cpus: Vec<usize> = (0..2 * allowed.len()).map(|w| placement.cpu(w)).collect();
        let expected: Vec<usize> = (0..2 * allowed.len())
            .map(|w| allowed[(placement.first + w) % allowed.len()])
            .collect();
        assert_eq!(cpus, expected);
        // The process's next gateway starts on the next CPU.
        let (this, next) = (
            Placement::new(vec![4, 6], 0, 2).unwrap(),
            Placement::new(vec![4, 6], 1, 2).unwrap(),
        );
        assert_eq!([this.cpu(0), this.cpu(1)], [next.cpu(1), next.cpu(0)]);
        assert!(
            Placement::new(vec![3], 0, 2).is_none(),
            "one CPU is no choice"
        );
    }

    /// A worker's thread as the placement leaves it: its CPUs, after each
    /// step the test asks for.
    fn worker_cpus(placement: &Arc<Placement>, steps: &[usize]) -> Vec<CpuSet> {
        let (placement, steps) = (placement.clone(), steps.to_vec());
        thread::spawn(move || {
            placement.enter(1);
            let mut seen = vec![rustix::thread::sched_getaffinity(None).unwrap()];
            for active in steps {
                placement.follow(active);
                seen.push(rustix::thread::sched_getaffinity(None).unwrap());
            }
            seen
        })
        .join()
        .unwrap()
    }

    #[test]
    fn workers_are_pinned_while_one_serves_and_free_while_more_do() {
        let allowed = allowed_cpus().unwrap();
        // One CPU allowed still places the thread, on that CPU.
        let cpus = if allowed.len() < 2 {
            vec![allowed[0], allowed[0]]
        } else {
            allowed.clone()
        };
        let placement = Arc::new(Placement {
            first: cpus.len() - 1,
            cpus,
            threads: (0..2).map(|_| AtomicI32::new(0)).collect(),
            pinned: AtomicBool::new(true),
        });
        let own = placement.cpu(1);
        let seen = worker_cpus(&placement, &[2, 3, 1]);
        let counts: Vec<u32> = seen.iter().map(CpuSet::count).collect();
        let free = u32::try_from(allowed.len()).unwrap();
        assert_eq!(counts, [1, free, free, 1]);
        assert!(seen[0].is_set(own) && seen[3].is_set(own));
        assert!(allowed.iter().all(|&cpu| seen[1].is_set(cpu)));
    }
}
