//! Deadline timers that a serving worker reuses. A tokio timer costs its
//! insertion into the runtime's timer wheel when first polled and its
//! removal when dropped (callgrind: ~490 instructions, for each of the two
//! a GET sets: the request's deadline and its upstream call's). Moving the
//! deadline of a timer still in the wheel to a later one costs an atomic
//! store: the wheel finds the new deadline when the old one comes. So a
//! worker keeps the timers its finished requests dropped, one pool per
//! kind, and its next requests take them: each kind's deadlines are a fixed
//! time ahead of the clock, so a reused timer's deadline moves later.
//!
//! A kept timer stays in the wheel: if no request takes it before its old
//! deadline, it wakes the task that polled it last, once, for nothing.
//! Only a worker's thread keeps timers ([`keep_on_this_thread`]): its one
//! runtime lives as long as the thread, and a timer polled after its
//! runtime is gone would panic.

use std::{
    cell::RefCell,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::{Instant, Sleep};

/// The timers whose deadlines are one fixed time ahead.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    /// `limits.request_timeout`, around each request's steps.
    Request,
    /// An upstream's timeout, around each unary call.
    UpstreamCall,
}

/// The most timers a pool keeps: the requests a worker has in flight at
/// once, past which they are dropped as usual.
const KEPT: usize = 64;

/// A thread's kept timers, by [`Kind`].
type Pools = [Vec<Pin<Box<Sleep>>>; 2];

thread_local! {
    /// This thread's pools; `None` off the workers.
    static POOLS: RefCell<Option<Pools>> = const { RefCell::new(None) };
}

/// Makes this thread (a serving worker, with one runtime for its life)
/// keep the timers its requests drop.
pub(crate) fn keep_on_this_thread() {
    POOLS.set(Some([Vec::new(), Vec::new()]));
}

/// Drops the kept timers, before the worker's runtime goes.
pub(crate) fn drop_kept() {
    POOLS.set(None);
}

/// The longest a timer waits: tokio's own limit, 30 years (a configured
/// timeout may be anything, and a deadline past the clock's range would
/// not be one).
const LONGEST: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `timeout` after `start`, at most [`LONGEST`].
pub(crate) fn deadline_after(start: impl Into<Instant>, timeout: Duration) -> Instant {
    start.into() + timeout.min(LONGEST)
}

/// A timer until a deadline, back into its pool when dropped.
#[derive(Debug)]
pub(crate) struct Timer {
    sleep: Option<Pin<Box<Sleep>>>,
    kind: Kind,
}

impl Timer {
    /// A timer that fires at `deadline`: a kept one if there is one.
    pub(crate) fn until(deadline: Instant, kind: Kind) -> Self {
        let kept = POOLS.with_borrow_mut(|pools| pools.as_mut()?[kind as usize].pop());
        let sleep = match kept {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        Self {
            sleep: Some(sleep),
            kind,
        }
    }
}

impl Future for Timer {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        let Some(sleep) = self.sleep.take() else {
            return;
        };
        // A thread-local already gone (the thread ending) drops it as usual.
        let _ = POOLS.try_with(|pools| {
            if let Ok(mut pools) = pools.try_borrow_mut() {
                if let Some(pool) = pools.as_mut().map(|pools| &mut pools[self.kind as usize]) {
                    if pool.len() < KEPT {
                        pool.push(sleep);
                    }
                }
            }
        });
    }
}

/// The deadline passed first.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Elapsed;

/// `future`'s output, or [`Elapsed`] if `timer` fires first (the future is
/// polled first, as tokio's `timeout` does).
pub(crate) async fn timeout<F: Future>(timer: Timer, future: F) -> Result<F::Output, Elapsed> {
    let mut future = std::pin::pin!(future);
    let mut timer = timer;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        Pin::new(&mut timer).poll(cx).map(|()| Err(Elapsed))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_timeout_has_a_deadline() {
        let start = Instant::now();
        assert_eq!(
            deadline_after(start, Duration::from_millis(250)) - start,
            Duration::from_millis(250)
        );
        assert_eq!(deadline_after(start, Duration::MAX) - start, LONGEST);
    }

    fn kept(kind: Kind) -> Vec<*const Sleep> {
        POOLS.with_borrow(|pools| {
            pools.as_ref().map_or_else(Vec::new, |pools| {
                pools[kind as usize]
                    .iter()
                    .map(|sleep| &**sleep as *const Sleep)
                    .collect()
            })
        })
    }

    fn identity(timer: &Timer) -> Option<*const Sleep> {
        timer.sleep.as_deref().map(|sleep| sleep as *const Sleep)
    }

    #[tokio::test]
    async fn a_worker_reuses_its_timers_with_their_new_deadlines() {
        keep_on_this_thread();
        let later = |millis| Instant::now() + Duration::from_millis(millis);
        let timer = Timer::until(later(60_000), Kind::Request);
        let first = identity(&timer);
        assert_eq!(
            timeout(timer, async { 1 }).await,
            Ok(1),
            "a ready future wins"
        );
        assert_eq!(kept(Kind::Request), first.into_iter().collect::<Vec<_>>());
        assert!(kept(Kind::UpstreamCall).is_empty());

        // Taken again, it fires at its new deadline, not at the old one.
        let timer = Timer::until(later(40), Kind::Request);
        assert_eq!(identity(&timer), first);
        assert!(kept(Kind::Request).is_empty());
        let started = Instant::now();
        let outcome = timeout(timer, std::future::pending::<()>()).await;
        assert_eq!(outcome, Err(Elapsed));
        assert!(started.elapsed() >= Duration::from_millis(40));

        // A kept timer still in the wheel, its deadline moved later, does
        // not fire at the old one: a future ready between the two wins.
        let timer = Timer::until(later(40), Kind::Request);
        let second = identity(&timer);
        assert_eq!(timeout(timer, tokio::task::yield_now()).await, Ok(()));
        let timer = Timer::until(later(160), Kind::Request);
        assert_eq!(identity(&timer), second);
        let between = tokio::time::sleep_until(later(80));
        assert_eq!(timeout(timer, between).await, Ok(()));
        drop_kept();
    }

    #[tokio::test]
    async fn off_the_workers_timers_are_not_kept() {
        let timer = Timer::until(
            Instant::now() + Duration::from_millis(10),
            Kind::UpstreamCall,
        );
        assert_eq!(
            timeout(timer, std::future::pending::<()>()).await,
            Err(Elapsed)
        );
        assert!(kept(Kind::UpstreamCall).is_empty());
        assert!(POOLS.with_borrow(Option::is_none));
    }

    #[tokio::test]
    async fn a_pool_keeps_at_most_its_share() {
        keep_on_this_thread();
        let deadline = Instant::now() + Duration::from_secs(1);
        let timers: Vec<Timer> = (0..KEPT + 3)
            .map(|_| Timer::until(deadline, Kind::UpstreamCall))
            .collect();
        drop(timers);
        assert_eq!(kept(Kind::UpstreamCall).len(), KEPT);
        drop_kept();
    }
}
