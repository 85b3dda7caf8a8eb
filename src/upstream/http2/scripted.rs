//! Unary calls on a connection whose peer's every byte is given, run in
//! memory with no runtime: the `upstream_reply` fuzz target. Whatever an
//! upstream sends, each call must end once the connection does (with a
//! reply whose message is within the call's limit, or an error), and
//! nothing may panic.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{
    client::{Client, Exchange, Request, StreamError},
    driver::Driver,
    hpack::RequestHead,
    MAX_HEADER_LIST,
};
use crate::upstream::metadata::Metadata;

/// The largest reply message a call accepts: small, so that inputs reach it.
const LIMIT: usize = 64;

/// The peer: `bytes`, `chunk` at a time with a wait between two reads (so
/// that the calls are polled between the reads), then the end of the
/// connection; what the client writes is taken `chunk` bytes a write at
/// most, and dropped.
struct Peer<'a> {
    bytes: &'a [u8],
    chunk: usize,
    waited: bool,
}

impl AsyncRead for Peer<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.waited && !self.bytes.is_empty() {
            self.waited = true;
            return Poll::Pending;
        }
        self.waited = false;
        let n = self.bytes.len().min(self.chunk).min(buf.remaining());
        let (now, later) = self.bytes.split_at(n);
        buf.put_slice(now);
        self.bytes = later;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Peer<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len().min(self.chunk)))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// `[calls] [chunk] bytes`: one to four calls on one connection to a peer
/// that sends `bytes`, read (and the client's frames written) `chunk`
/// bytes at a time (0: as many as fit). Panics if a call does not end, or
/// brings back a message over its limit.
pub(crate) fn calls_against(data: &[u8]) {
    let Some((calls, chunk, bytes)) = layout(data) else {
        return;
    };
    for outcome in run_calls(bytes, chunk, calls) {
        if let Ok(Exchange {
            body: Ok(Some(message)),
            ..
        }) = outcome
        {
            assert!(
                message.len() <= LIMIT,
                "a message of {} bytes came back past the limit of {LIMIT}",
                message.len()
            );
        }
    }
}

/// The calls' count, the chunk size and the peer's bytes of an input.
fn layout(data: &[u8]) -> Option<(usize, usize, &[u8])> {
    let [calls, chunk, bytes @ ..] = data else {
        return None;
    };
    let chunk = match *chunk {
        0 => usize::MAX,
        n => usize::from(n),
    };
    Some((usize::from(calls % 4) + 1, chunk, bytes))
}

/// What each call came to, in the order they were made.
fn run_calls(bytes: &[u8], chunk: usize, calls: usize) -> Vec<Result<Exchange, StreamError>> {
    let chunk = chunk.max(1);
    let (client, shared) = Client::new();
    let mut driver = Driver::new(
        Peer {
            bytes,
            chunk,
            waited: false,
        },
        shared,
        MAX_HEADER_LIST,
    );
    let head = RequestHead::new("http", "upstream.test", []);
    let metadata = Metadata::default();
    let request = || Request {
        head: &head,
        path: "/fuzz.Upstream/Call",
        timeout: None,
        metadata: &metadata,
        replaced: |_| false,
        body: Bytes::from_static(&[0; 5]),
        limit: LIMIT,
    };
    let mut pending: Vec<_> = (0..calls)
        .map(|_| Some(Box::pin(client.call(request()))))
        .collect();
    let mut outcomes: Vec<_> = (0..calls).map(|_| None).collect();
    let mut cx = Context::from_waker(Waker::noop());
    let mut driving = true;
    // Each round reads a chunk or ends the connection: two rounds a chunk
    // (the peer waits between reads), and a few to end, are enough.
    let rounds = 2 * (bytes.len() / chunk + 1) + 8;
    for _ in 0..rounds {
        for (call, outcome) in pending.iter_mut().zip(&mut outcomes) {
            if let Some(future) = call {
                if let Poll::Ready(ended) = future.as_mut().poll(&mut cx) {
                    *outcome = Some(ended);
                    *call = None;
                }
            }
        }
        if pending.iter().all(Option::is_none) {
            return outcomes.into_iter().flatten().collect();
        }
        if driving && Pin::new(&mut driver).poll(&mut cx).is_ready() {
            driving = false;
        }
    }
    panic!(
        "{} of {calls} calls still wait after {rounds} rounds (the connection {})",
        pending.iter().filter(|call| call.is_some()).count(),
        if driving { "still runs" } else { "has ended" },
    );
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// A seed of the fuzz target's corpus: the calls' count and the chunk
    /// size it asks for, and the peer's bytes.
    fn seed(name: &str) -> (usize, usize, Vec<u8>) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus/upstream_reply")
            .join(name);
        let data = std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        let (calls, chunk, bytes) = layout(&data).expect("a seed with its two leading bytes");
        (calls, chunk, bytes.to_vec())
    }

    fn message(outcome: &Result<Exchange, StreamError>) -> Option<&[u8]> {
        match outcome {
            Ok(Exchange {
                body: Ok(Some(message)),
                ..
            }) => Some(message),
            _ => None,
        }
    }

    #[test]
    fn a_reply_comes_back_whole_however_the_peer_s_bytes_are_cut() {
        for name in [
            "one-reply",
            "one-reply-bytewise",
            "padded-continued-ping-unknown",
        ] {
            let (calls, chunk, bytes) = seed(name);
            let outcomes = run_calls(&bytes, chunk, calls);
            assert_eq!(outcomes.len(), 1, "{name}");
            assert_eq!(
                message(&outcomes[0]),
                Some(&b"hello"[..]),
                "{name}: {outcomes:?}"
            );
        }
    }

    #[test]
    fn interleaved_replies_go_to_their_calls() {
        let (calls, chunk, bytes) = seed("two-replies-interleaved");
        let outcomes = run_calls(&bytes, chunk, calls);
        let messages: Vec<_> = outcomes.iter().map(message).collect();
        assert_eq!(messages, [Some(&b"one"[..]), Some(&b"three"[..])]);
    }

    #[test]
    fn calls_beyond_what_the_peer_answers_end_with_the_connection() {
        // Three calls, one stream at a time: all three answered.
        let (calls, chunk, bytes) = seed("one-stream-at-a-time");
        let outcomes = run_calls(&bytes, chunk, calls);
        assert_eq!(outcomes.len(), 3);
        assert!(
            outcomes.iter().all(|o| message(o) == Some(b"hello")),
            "{outcomes:?}"
        );
        // Three calls, GOAWAY after the first reply: the others are refused.
        let (calls, chunk, bytes) = seed("goaway-after-first");
        let outcomes = run_calls(&bytes, chunk, calls);
        assert_eq!(message(&outcomes[0]), Some(&b"hello"[..]));
        assert!(
            outcomes[1..]
                .iter()
                .all(|o| matches!(o, Err(StreamError::Refused))),
            "{outcomes:?}"
        );
        // The first of two streams reset: its call fails, the other's is
        // answered.
        let (calls, chunk, bytes) = seed("reset");
        let outcomes = run_calls(&bytes, chunk, calls);
        assert!(
            matches!(outcomes[0], Err(StreamError::Reset(_))),
            "{outcomes:?}"
        );
        assert_eq!(message(&outcomes[1]), Some(&b"hello"[..]));
        // A connection error before any reply: the call fails.
        let (calls, chunk, bytes) = seed("window-update-zero");
        let outcomes = run_calls(&bytes, chunk, calls);
        assert!(
            matches!(&outcomes[..], [Err(StreamError::Closed(_))]),
            "{outcomes:?}"
        );
        // No bytes at all: the connection closes, the call fails.
        assert!(matches!(
            &run_calls(&[], 1, 1)[..],
            [Err(StreamError::Closed(_))]
        ));
    }

    #[test]
    fn a_message_over_the_limit_is_a_body_error() {
        let (calls, chunk, bytes) = seed("message-over-limit");
        let outcomes = run_calls(&bytes, chunk, calls);
        assert!(
            matches!(&outcomes[0], Ok(Exchange { body: Err(_), .. })),
            "{outcomes:?}"
        );
    }
}
