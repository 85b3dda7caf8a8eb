//! An HTTP/2 client (RFC 9113) for unary gRPC calls, and only for them:
//! each call is one stream with one request HEADERS and the request body
//! (DATA, the last with END_STREAM), and one reply read whole (head, DATA,
//! trailers) before its caller wakes. What a general client keeps per
//! stream and per frame (priorities, push, a stream state machine for
//! bodies that go both ways, an `http::Request` turned into HPACK through
//! Huffman-coded literals) is left out; what a unary call needs is kept,
//! in full: SETTINGS and their ACKs both ways, flow control both ways,
//! CONTINUATION, padding, PING, GOAWAY, RST_STREAM (sent when a caller
//! drops its call), and a complete HPACK decoder.
//!
//! * `frame`: the frame header and the frames written;
//! * `hpack`: the request's fixed part encoded once per upstream, the rest
//!   as literals; the reply's blocks decoded;
//! * `client`: the state the calls and the task share, and the calls;
//! * `driver`: the connection's task, one per connection;
//! * `scripted`: calls against a peer whose bytes are given (fuzzing).

mod client;
mod driver;
mod frame;
mod hpack;
#[cfg(any(test, fuzzing))]
mod scripted;

use tokio::io::{AsyncRead, AsyncWrite};

#[cfg(any(test, fuzzing))]
pub(crate) use self::scripted::calls_against;
pub(super) use self::{
    client::{BodyError, Client, Exchange, Request},
    hpack::RequestHead,
};

/// The largest reply header list accepted (names, values and 32 bytes per
/// field, as RFC 7541 counts them): the `h2` crate's default.
const MAX_HEADER_LIST: usize = 16 << 20;

/// Starts HTTP/2 on `io` (the preface and settings go with the first
/// write) and drives it on a task of the calling runtime.
pub(super) fn start<T>(io: T) -> Client
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, shared) = Client::new();
    tokio::spawn(driver::Driver::new(io, shared, MAX_HEADER_LIST));
    client
}

#[cfg(test)]
mod tests;
