//! The serving path's timers: all on one clock thread, and the deadline
//! timers of requests reused.
//!
//! **The clock thread.** A runtime with a timer in its wheel sleeps in
//! `epoll_wait` with a timeout, and the kernel arms a high-resolution timer
//! for each such sleep (and cancels it on an earlier wake-up): 0.7 to 3.5
//! µs more per sleep than one without a timeout on this project's 2-vCPU
//! VM (alternated runs of an epoll ping-pong over a socketpair, 10,000
//! round trips each), for each of the ~1.5 sleeps a GET costs a worker at
//! 1,000 requests/s. So the serving path makes its timers on the clock's
//! runtime ([`on_clock`] and the functions built on it): that runtime's
//! wheel fires them, waking the task that polled them on its own worker,
//! and a worker's wheel stays empty, so that it sleeps with no timeout.
//! The workers' balance controller, which ticks, runs on the clock thread
//! too ([`spawn_on_clock`]).
//!
//! **Kept timers.** A tokio timer costs its insertion into the wheel when
//! first polled and its removal when dropped (callgrind: ~490 instructions,
//! for each of the two a GET sets: the request's deadline and its upstream
//! call's). Moving the deadline of a timer still in the wheel to a later
//! one costs an atomic store: the wheel finds the new deadline when the
//! old one comes. So a worker keeps the timers its finished requests
//! dropped, one pool per kind, and its next requests take them: each
//! kind's deadlines are a fixed time ahead of the clock, so a reused
//! timer's deadline moves later, and no new deadline comes before the
//! clock's next wake-up (which would wake the clock thread to look).
//!
//! A kept timer stays in the wheel: if no request takes it before its old
//! deadline, it wakes the task that polled it last, once, for nothing.
//! Only a worker's thread keeps timers ([`keep_on_this_thread`]): no other
//! thread makes enough of them to gain.

use std::{
    cell::RefCell,
    future::Future,
    pin::Pin,
    sync::OnceLock,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    runtime::Handle,
    task::JoinHandle,
    time::{Instant, Sleep, Timeout},
};

/// The clock thread's runtime; `None` if it could not be started, and then
/// timers stay on the runtime that makes them.
static CLOCK: OnceLock<Option<Handle>> = OnceLock::new();

/// The clock thread's runtime, started on first use.
fn clock() -> Option<&'static Handle> {
    CLOCK.get_or_init(start_clock).as_ref()
}

/// Starts the clock thread: a runtime for its timer wheel and the tasks
/// that only tick, for the life of the process (a timer polled after its
/// runtime has gone would panic).
fn start_clock() -> Option<Handle> {
    let started = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .and_then(|runtime| {
            let handle = runtime.handle().clone();
            std::thread::Builder::new()
                .name("protogate-clock".into())
                .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
            Ok(handle)
        });
    started
        .inspect_err(|error| tracing::warn!(%error, "no clock thread: timers stay on the workers"))
        .ok()
}

/// Runs `make` with the clock's runtime as the current one: the timers it
/// makes are in the clock's wheel, wherever they are polled.
fn on_clock<T>(make: impl FnOnce() -> T) -> T {
    let _clock = clock().map(Handle::enter);
    make()
}

/// [`tokio::time::sleep_until`] on the clock.
pub(crate) fn sleep_until(deadline: Instant) -> Sleep {
    on_clock(|| tokio::time::sleep_until(deadline))
}

/// [`tokio::time::sleep`] on the clock.
pub(crate) fn sleep(duration: Duration) -> Sleep {
    on_clock(|| tokio::time::sleep(duration))
}

/// [`tokio::time::timeout_at`] on the clock.
pub(crate) fn timeout_at<F: Future>(deadline: Instant, future: F) -> Timeout<F> {
    on_clock(|| tokio::time::timeout_at(deadline, future))
}

/// Spawns `task` on the clock thread (on the current runtime if there is
/// none): a periodic task there wakes no worker.
pub(crate) fn spawn_on_clock<F>(task: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match clock() {
        Some(clock) => clock.spawn(task),
        None => tokio::spawn(task),
    }
}

/// hyper's timer (HTTP/2 keep-alive pings) with its sleeps on the clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClockTimer;

impl hyper::rt::Timer for ClockTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(ClockSleep(Box::pin(sleep(duration))))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(ClockSleep(Box::pin(sleep_until(deadline.into()))))
    }
}

/// A sleep of [`ClockTimer`].
struct ClockSleep(Pin<Box<Sleep>>);

impl Future for ClockSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for ClockSleep {}

/// The timers whose deadlines are one fixed time ahead.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    /// `limits.request_timeout`, around each request's steps.
    Request,
    /// An upstream's timeout, around each unary call.
    UpstreamCall,
    /// `redis.timeout`, around each command (the rare registry commands'
    /// longer ones too: a kept timer moved earlier is inserted again).
    Redis,
}

/// The most timers a pool keeps: the requests a worker has in flight at
/// once, past which they are dropped as usual.
const KEPT: usize = 64;

/// A thread's kept timers, by [`Kind`].
type Pools = [Vec<Pin<Box<Sleep>>>; 3];

thread_local! {
    /// This thread's pools; `None` off the workers.
    static POOLS: RefCell<Option<Pools>> = const { RefCell::new(None) };
}

/// Makes this thread (a serving worker) keep the timers its requests drop.
pub(crate) fn keep_on_this_thread() {
    POOLS.set(Some([Vec::new(), Vec::new(), Vec::new()]));
}

/// Drops this thread's kept timers, as its worker stops.
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
        let kept = POOLS
            .try_with(|pools| pools.try_borrow_mut().ok()?.as_mut()?[kind as usize].pop())
            .ok()
            .flatten();
        let sleep = match kept {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(sleep_until(deadline)),
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

    /// Sends its name each time it is woken.
    struct Named(&'static str, std::sync::mpsc::Sender<&'static str>);

    impl std::task::Wake for Named {
        fn wake(self: std::sync::Arc<Self>) {
            let _ = self.1.send(self.0);
        }
    }

    #[test]
    fn timers_fire_on_the_clock_whatever_runtime_makes_and_polls_them() {
        // Current but never driven: a timer in its own wheel never fires.
        let idle = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _current = idle.enter();
        let soon = || Instant::now() + Duration::from_millis(20);
        let mut futures: Vec<(
            &'static str,
            futures_util::future::LocalBoxFuture<'static, ()>,
        )> = vec![
            ("sleep_until", Box::pin(sleep_until(soon()))),
            ("sleep", Box::pin(sleep(Duration::from_millis(20)))),
            (
                "timeout_at",
                Box::pin(async move {
                    let timed = timeout_at(soon(), std::future::pending::<()>()).await;
                    assert!(timed.is_err());
                }),
            ),
            (
                "spawn_on_clock",
                Box::pin(async {
                    let ticking = spawn_on_clock(async {
                        let mut ticks = tokio::time::interval(Duration::from_millis(20));
                        ticks.tick().await;
                        ticks.tick().await;
                    });
                    ticking.await.unwrap();
                }),
            ),
            ("Timer", Box::pin(Timer::until(soon(), Kind::Request))),
            (
                "ClockTimer",
                Box::pin(hyper::rt::Timer::sleep(
                    &ClockTimer,
                    Duration::from_millis(20),
                )),
            ),
            (
                "the runtime's own",
                Box::pin(tokio::time::sleep(Duration::from_millis(20))),
            ),
        ];
        let (woken, wakes) = std::sync::mpsc::channel();
        let mut wakers = Vec::new();
        for (name, future) in &mut futures {
            let waker = std::task::Waker::from(std::sync::Arc::new(Named(name, woken.clone())));
            let polled = future.as_mut().poll(&mut Context::from_waker(&waker));
            assert!(polled.is_pending(), "{name}");
            wakers.push(waker);
        }
        let mut fired: Vec<&str> = (0..futures.len() - 1)
            .map(|_| wakes.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        fired.sort_unstable();
        let mut made_on_the_clock: Vec<&str> = futures.iter().map(|(name, _)| *name).collect();
        made_on_the_clock.retain(|name| *name != "the runtime's own");
        made_on_the_clock.sort_unstable();
        assert_eq!(fired, made_on_the_clock);
        for ((name, future), waker) in futures.iter_mut().zip(&wakers) {
            let polled = future.as_mut().poll(&mut Context::from_waker(waker));
            assert_eq!(polled.is_ready(), *name != "the runtime's own", "{name}");
        }
        assert!(wakes.try_recv().is_err());
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
