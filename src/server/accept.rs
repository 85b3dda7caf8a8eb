//! The public listeners' acceptors: admit a connection while fewer than
//! `limits.max_connections` are open (cleartext and TLS together) and refuse
//! one past it at once (a reset, not a wait in the backlog); back off when
//! accepting fails for want of descriptors or memory. Either is logged once
//! per burst, not once per connection.

use std::{
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use tokio::net::{TcpListener, TcpStream};

/// A public listener and the count of the open connections of every public
/// listener.
#[derive(Debug)]
pub(super) struct Acceptor {
    listener: TcpListener,
    open: Arc<AtomicUsize>,
    max: usize,
    /// Failed accepts in a row, and connections refused in a row.
    failures: u32,
    refused: u64,
}

/// An admitted connection's place under the cap, given back when dropped.
#[derive(Debug)]
pub(super) struct Slot(Arc<AtomicUsize>);

/// A failed accept's pause, doubled for each failure in a row up to the last.
const PAUSES: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));

/// Of the open-file limit, the share kept from client connections for what
/// else the gateway opens: the admin listener and its connections, upstream
/// connections, descriptor and log files.
const RESERVED_SHARE: u64 = 4;
const MAX_RESERVED: u64 = 4096;

// === impl Acceptor ===

impl Acceptor {
    pub(super) fn new(listener: TcpListener, max_connections: usize) -> Self {
        Self {
            listener,
            open: Arc::new(AtomicUsize::new(0)),
            max: max_connections,
            failures: 0,
            refused: 0,
        }
    }

    /// An acceptor for `listener` under the same cap as `other`.
    pub(super) fn beside(listener: TcpListener, other: &Self) -> Self {
        Self {
            listener,
            open: other.open.clone(),
            max: other.max,
            failures: 0,
            refused: 0,
        }
    }

    /// The next connection that gets a slot; those that do not are refused.
    pub(super) async fn next(&mut self) -> (TcpStream, SocketAddr, Slot) {
        loop {
            let (stream, remote) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    self.pause(&error).await;
                    continue;
                }
            };
            if self.failures > 0 {
                tracing::warn!(failures = self.failures, "accept succeeds again");
                self.failures = 0;
            }
            match self.admit() {
                Some(slot) => {
                    if self.refused > 0 {
                        tracing::info!(refused = self.refused, "accepting connections again");
                        self.refused = 0;
                    }
                    return (stream, remote, slot);
                }
                None => {
                    if self.refused == 0 {
                        tracing::warn!(
                            max_connections = self.max,
                            "connection limit reached; refusing new connections"
                        );
                    }
                    self.refused += 1;
                    // A reset at once, not a close the client might wait on.
                    if let Err(error) = stream.set_zero_linger() {
                        tracing::debug!(%error, "could not set SO_LINGER on a refused connection");
                    }
                }
            }
        }
    }

    /// A slot, if one is free. Two acceptors may take slots at once: the
    /// check and the increment are one atomic step.
    fn admit(&self) -> Option<Slot> {
        self.open
            .fetch_update(Relaxed, Relaxed, |open| {
                (open < self.max).then_some(open + 1)
            })
            .ok()?;
        Some(Slot(self.open.clone()))
    }

    /// Per-connection errors (reset before accept) are the client's: accept
    /// the next. Others (out of descriptors or memory) are ours and would
    /// fail again at once: pause, longer each time in a row.
    async fn pause(&mut self, error: &io::Error) {
        use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
        if matches!(
            error.kind(),
            ConnectionAborted | ConnectionRefused | ConnectionReset
        ) {
            return;
        }
        if self.failures == 0 {
            tracing::error!(%error, "accept failed; backing off until it succeeds");
        }
        let pause = pause_after(self.failures);
        self.failures += 1;
        tokio::time::sleep(pause).await;
    }
}

/// The pause after `failures` failed accepts in a row.
fn pause_after(failures: u32) -> Duration {
    let (first, longest) = PAUSES;
    first.saturating_mul(1 << failures.min(16)).min(longest)
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Raises the soft open-file limit to the hard one, then returns the cap on
/// client connections: `configured`, or the limit less a quarter (at most
/// 4096 kept back), so that a flood of clients leaves descriptors for the
/// admin listener and the upstreams.
pub(super) fn max_connections(configured: Option<usize>) -> usize {
    let open_files = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    };
    let derived = derived_max_connections(open_files);
    match configured {
        Some(max) if max > derived => {
            tracing::warn!(
                max,
                open_files,
                "limits.max_connections leaves few descriptors of the open-file limit for the admin listener and the upstreams"
            );
            max
        }
        Some(max) => max,
        None => derived,
    }
}

fn derived_max_connections(open_files: u64) -> usize {
    let reserved = (open_files / RESERVED_SHARE).min(MAX_RESERVED);
    usize::try_from(open_files - reserved)
        .unwrap_or(usize::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_derived_cap_keeps_a_quarter_of_the_descriptors_at_most_4096() {
        assert_eq!(derived_max_connections(1024), 768);
        assert_eq!(derived_max_connections(20_000), 15_904);
        assert_eq!(derived_max_connections(1 << 20), (1 << 20) - 4096);
        assert_eq!(derived_max_connections(1), 1);
    }

    #[test]
    fn accept_failures_in_a_row_pause_longer_up_to_a_second() {
        let pauses: Vec<u128> = (0..10).map(|n| pause_after(n).as_millis()).collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(pause_after(u32::MAX), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_slot_is_given_back_when_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let acceptor = Acceptor::new(listener, 2);
        let first = acceptor.admit().unwrap();
        let _second = acceptor.admit().unwrap();
        assert!(acceptor.admit().is_none());
        drop(first);
        assert!(acceptor.admit().is_some());
    }
}
