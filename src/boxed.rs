//! Boxing a future where it will live.

use std::{future::Future, mem::MaybeUninit, pin::Pin};

use futures_util::future::BoxFuture;

/// Boxes the future `make` returns, built in its heap slot: `Box::pin(f)`
/// builds `f` on the stack and copies all of it into the box, and a
/// request's future is several KiB of state machine (callgrind: the copy
/// was ~7% of the gateway's instructions per GET).
pub(crate) fn in_place<F: Future + Send + 'static>(
    make: impl FnOnce() -> F,
) -> BoxFuture<'static, F::Output> {
    pinned(make)
}

/// [`in_place`] for a future that borrows: the same box, not type-erased.
pub(crate) fn pinned<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    let slot: Box<MaybeUninit<F>> = Box::new_uninit();
    let future: Box<F> = Box::write(slot, make());
    Box::into_pin(future)
}
