//! The allocator, and when and where it gives memory back.
//!
//! mimalloc's per-thread heaps avoid glibc's arena locks, which showed in
//! profiles as futex waits under load. Set here so that the binary, the
//! benchmarks and the tests all run the allocator that ships. It is built
//! without transparent huge pages (`no_thp`): with them, each connection's
//! few touched 4 KiB pages grew the resident set in 2 MiB steps (10,000
//! idle connections: 346 MiB with, 205 MiB without).
//!
//! mimalloc gives freed pages back to the OS (`madvise(MADV_DONTNEED)`)
//! once they have been free for its purge delay, 1 s by default, from
//! whichever thread next takes one of its slow paths: under load, a
//! serving worker, about once a second (seven to nine calls each time,
//! traced at 5,000 GETs/s). A purge is system calls, TLB flushes on the
//! CPUs the process runs on and page faults to refill the range, all on
//! the thread the requests wait for. So the gateway sets the delay far
//! beyond any lull ([`WORKERS_NEVER_PURGE`]) and a thread of the blocking
//! pool purges every [`PURGE_INTERVAL`] instead: paced at 5,000 GETs/s,
//! requests over 5 ms fell from 271 to 155 in eight alternated runs of
//! 30,000, and the p99's median ratio to the direct call's from 1.63× to
//! 1.39×. An idle worker, which never calls into mimalloc, no longer holds
//! memory either.

use std::time::Duration;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often [`purge_in_background`] gives freed memory back.
const PURGE_INTERVAL: Duration = Duration::from_secs(5);

/// The purge delay (ms) while the gateway serves: an hour, so that no
/// serving thread's slow path finds a range due and purges it.
const WORKERS_NEVER_PURGE: std::ffi::c_long = 3_600_000;

/// Keeps mimalloc's purges off the serving threads from now on, and
/// returns the upkeep that does them instead, every [`PURGE_INTERVAL`].
pub(crate) fn purge_in_background() -> impl std::future::Future<Output = ()> {
    mimalloc_options::set_purge_delay(WORKERS_NEVER_PURGE);
    async {
        let mut ticks = tokio::time::interval(PURGE_INTERVAL);
        loop {
            ticks.tick().await;
            // A purge waits for the other CPUs' TLB flushes: not on a
            // thread that serves the admin API or the health probes.
            if let Err(error) = tokio::task::spawn_blocking(mimalloc_options::purge_now).await {
                tracing::debug!(%error, "the purge of freed memory did not run");
            }
        }
    }
}

/// The mimalloc calls that steer its purges. They take no pointers and
/// may be made from any thread at any time.
#[expect(
    unsafe_code,
    reason = "mimalloc's C API has no safe binding for its options and collection"
)]
mod mimalloc_options {
    use std::ffi::c_long;

    use libmimalloc_sys::{mi_collect, mi_option_set, mi_option_t};

    /// `mi_option_purge_delay` in mimalloc v3's `mi_option_t`, which the
    /// crate's bindings do not name (tests check it is the option that
    /// `MIMALLOC_PURGE_DELAY` sets).
    const PURGE_DELAY: mi_option_t = 15;

    pub(super) fn set_purge_delay(millis: c_long) {
        // SAFETY: sets a process-wide option; mimalloc reads it atomically.
        unsafe { mi_option_set(PURGE_DELAY, millis) }
    }

    #[cfg(test)]
    pub(super) fn purge_delay() -> c_long {
        // SAFETY: reads a process-wide option.
        unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }
    }

    /// Purges every range freed so far, whatever its delay.
    pub(super) fn purge_now() {
        // SAFETY: collects this thread's heap and purges the arenas;
        // mimalloc serialises purges itself.
        unsafe { mi_collect(true) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set in the process the test starts for itself: there no other test
    /// allocates or purges while it measures.
    const CHILD: &str = "PROTOGATE_ALLOCATOR_TEST_CHILD";
    const SET_BY_ENV: std::ffi::c_long = 4321;

    fn resident_anonymous_bytes() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status
            .lines()
            .find(|line| line.starts_with("RssAnon:"))
            .unwrap();
        let kib: u64 = line
            .trim_start_matches("RssAnon:")
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap();
        kib * 1024
    }

    /// 64 MiB in 16 KiB blocks, each touched, freed by the thread that
    /// allocated them, which then exits (one of mimalloc's slow paths).
    fn resident_after_a_thread_frees_64_mib() -> u64 {
        std::thread::spawn(|| {
            let blocks: Vec<Box<[u8]>> = (0..4096).map(|_| vec![7u8; 16 * 1024].into()).collect();
            drop(std::hint::black_box(blocks));
        })
        .join()
        .unwrap();
        resident_anonymous_bytes()
    }

    #[test]
    fn freed_memory_goes_back_on_the_background_purge_not_on_the_thread_that_freed_it() {
        if std::env::var_os(CHILD).is_none() {
            let output = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "allocator::tests::freed_memory_goes_back_on_the_background_purge_not_on_the_thread_that_freed_it",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD, "1")
                .env("MIMALLOC_PURGE_DELAY", SET_BY_ENV.to_string())
                .output()
                .unwrap();
            let printed = String::from_utf8_lossy(&output.stdout);
            let errors = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "{printed}{errors}");
            assert!(printed.contains("1 passed"), "{printed}");
            return;
        }
        // The option this module sets is the one mimalloc reads as its
        // purge delay.
        assert_eq!(mimalloc_options::purge_delay(), SET_BY_ENV);

        const MIB: u64 = 1 << 20;
        let before = resident_anonymous_bytes();
        // Without a delay, the thread that frees purges: what a serving
        // worker did once a second.
        mimalloc_options::set_purge_delay(0);
        let purged_by_the_thread = resident_after_a_thread_frees_64_mib();
        assert!(
            purged_by_the_thread <= before + 16 * MIB,
            "{before} then {purged_by_the_thread} bytes"
        );

        let upkeep = purge_in_background();
        assert_eq!(mimalloc_options::purge_delay(), WORKERS_NEVER_PURGE);
        let freed = resident_after_a_thread_frees_64_mib();
        assert!(
            freed >= before + 48 * MIB,
            "the freeing thread gave the memory back: {before} then {freed} bytes"
        );
        // The upkeep's first tick is at once; it then waits PURGE_INTERVAL.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let still_running = runtime
            .block_on(async { tokio::time::timeout(Duration::from_millis(500), upkeep).await });
        assert!(still_running.is_err(), "the upkeep returned");
        let purged = resident_anonymous_bytes();
        assert!(
            purged <= before + 16 * MIB,
            "the purge kept the memory: {before}, {freed}, then {purged} bytes"
        );
    }
}
