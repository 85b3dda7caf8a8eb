//! The four kinds of call, each a stream on the calling thread's
//! [`Connection`](super::connection::Connection) with its messages framed,
//! its reply read and its failures classified by [`super::protocol`].
//!
//! * Unary and client streaming have one reply, and a [`Deadline`] for the
//!   whole call, also sent as `grpc-timeout`.
//! * A reply stream (server streaming, bidi) has no overall deadline: the
//!   upstream's timeout bounds the wait for the reply headers, and the wait
//!   for the first message stops there too (so that the HTTP status is
//!   known before it is sent, yet a quiet stream such as a watch still
//!   starts); then the stream lasts as long as both ends keep it open.
//! * A request stream (client streaming, bidi) is sent by a task of its own,
//!   message by message as the upstream's flow-control window takes them, so
//!   that sending and reading never wait on each other.
//!
//! Dropping a [`ReplyStream`] (or a call future) resets the HTTP/2 stream,
//! which cancels the call at the upstream.

use std::{future::Future, sync::Arc};

use bytes::Bytes;
use futures_util::{future::poll_fn, Stream, StreamExt as _};
use h2::{client::ResponseFuture, Reason, SendStream};
use http::{uri::PathAndQuery, HeaderMap};
use tokio::task::JoinSet;

use super::{
    connection::UnaryCall,
    deadline::Deadline,
    http2::{BodyError, Exchange},
    metadata::Metadata,
    protocol::{
        frame, protocol_error, reply_head, request_headers, trailers_status, Failures, Payload,
        ReplyHead, ReplyReader,
    },
    Upstream,
};
use crate::{
    error::Error,
    timers::{self, Kind, Timer},
};

/// An element of a request stream.
#[derive(Debug)]
pub enum Outgoing {
    Message(Payload),
    /// Fail the call: its HTTP/2 stream is reset with an error, which an
    /// upstream cannot take for the clean end of a stream (tonic servers read
    /// a plain cancellation as one, and would act on a partial stream).
    Abort,
}

/// A reply stream whose first message has arrived, or that ended empty, or
/// that stayed quiet for the upstream's whole timeout.
#[derive(Debug)]
pub struct ReplyStream {
    /// `None` when the stream ended or stayed quiet before its first message.
    pub first: Option<Bytes>,
    /// `None` once the reply has ended.
    body: Option<ReplyReader>,
    upstream: Arc<Upstream>,
    /// A bidi call's request stream, sent for as long as the reply is read.
    _sending: Option<Sending>,
}

/// The task that sends a request stream; dropping it aborts the task.
type Sending = JoinSet<()>;

/// The one message of a unary or client-streaming reply, and the reply's
/// headers and trailers.
#[derive(Debug)]
pub struct Reply {
    pub message: Bytes,
    headers: Metadata,
    trailers: Metadata,
}

impl Reply {
    /// A unary or client-streaming reply: an OK status needs its message.
    fn of(message: Option<Bytes>, headers: Metadata, trailers: Metadata) -> Result<Self, Error> {
        let message =
            message.ok_or_else(|| protocol_error("an OK status without a reply message"))?;
        Ok(Self {
            message,
            headers,
            trailers,
        })
    }

    /// The headers and trailers as one map (a trailer replacing the
    /// headers' values of its name): made only when asked for, since most
    /// callers drop them.
    pub fn metadata(self) -> HeaderMap {
        let mut headers = self.headers.into_headers();
        headers.extend(self.trailers.into_headers());
        headers
    }
}

/// Calls `path` on `upstream` with `message` and waits for the encoded reply
/// (with the upstream's response headers and trailers), at most until the
/// `deadline` (which is also sent as `grpc-timeout`). The headers and the
/// frame are made before the future, so that it holds them once (and no
/// copy of `message`).
#[allow(
    clippy::manual_async_fn,
    reason = "the request's future stays small: docs/architecture.md"
)]
pub fn unary<'a>(
    upstream: &'a Upstream,
    path: PathAndQuery,
    message: &Payload,
    metadata: Metadata,
    deadline: Deadline,
) -> impl Future<Output = Result<Reply, Error>> + Send + 'a {
    let timeout = deadline.header(upstream);
    let frame = frame(message);
    async move {
        let failures = Failures::new(upstream, Some(deadline));
        let call = async {
            let exchange = upstream
                .connection()
                .unary(UnaryCall {
                    path: &path,
                    timeout: &timeout,
                    metadata: &metadata,
                    body: frame?,
                    limit: upstream.max_response_bytes,
                })
                .await
                .map_err(|err| failures.transport(&err))?;
            exchange_reply(exchange, failures)
        };
        let timer = Timer::until(deadline.at(), Kind::UpstreamCall);
        match timers::timeout(timer, call).await {
            Ok(reply) => reply,
            Err(_) => Err(failures.timed_out()),
        }
    }
}

/// Calls a client-streaming method and waits for its one reply, at most
/// until the `deadline` (also sent as `grpc-timeout`).
pub async fn client_streaming(
    upstream: &Upstream,
    path: PathAndQuery,
    messages: impl Stream<Item = Outgoing> + Send + 'static,
    metadata: Metadata,
    deadline: Deadline,
) -> Result<Bytes, Error> {
    let headers = request_headers(metadata, Some(deadline.header(upstream)));
    let failures = Failures::new(upstream, Some(deadline));
    let call = async {
        let (response, stream) = upstream
            .connection()
            .open(path, headers)
            .await
            .map_err(|err| failures.transport(&err))?;
        let _sending = send_in_background(stream, messages);
        one_reply(upstream, response, failures).await
    };
    match timers::timeout_at(deadline.at(), call).await {
        Ok(reply) => reply.map(|reply| reply.message),
        Err(_) => Err(failures.timed_out()),
    }
}

/// Calls a server-streaming method with one request message.
pub async fn server_streaming(
    upstream: &Arc<Upstream>,
    path: PathAndQuery,
    message: Payload,
    metadata: Metadata,
) -> Result<ReplyStream, Error> {
    let headers = request_headers(metadata, None);
    let frame = frame(&message)?;
    let failures = Failures::new(upstream, None);
    until_first_reply(upstream, async {
        let response = upstream
            .connection()
            .send(path, headers, frame)
            .await
            .map_err(|err| failures.transport(&err))?;
        Ok((response, None))
    })
    .await
}

/// Calls a bidirectional method; `messages` are sent as the stream yields them.
pub async fn bidi_streaming(
    upstream: &Arc<Upstream>,
    path: PathAndQuery,
    messages: impl Stream<Item = Outgoing> + Send + 'static,
    metadata: Metadata,
) -> Result<ReplyStream, Error> {
    let headers = request_headers(metadata, None);
    let failures = Failures::new(upstream, None);
    until_first_reply(upstream, async {
        let (response, stream) = upstream
            .connection()
            .open(path, headers)
            .await
            .map_err(|err| failures.transport(&err))?;
        Ok((response, Some(send_in_background(stream, messages))))
    })
    .await
}

// === impl ReplyStream ===

impl ReplyStream {
    /// The next message after [`ReplyStream::first`]; `None` at a clean end.
    /// Cancel-safe: a message half read when the wait ends stays buffered.
    pub async fn next(&mut self) -> Result<Option<Bytes>, Error> {
        let failures = Failures::new(&self.upstream, None);
        let Some(body) = &mut self.body else {
            return Ok(None);
        };
        if let Some(message) = body.message(failures).await? {
            return Ok(Some(message));
        }
        body.trailers(failures).await?;
        self.body = None;
        Ok(None)
    }
}

/// The one message of a unary reply that this crate's HTTP/2 client read
/// whole: judged in the order [`one_reply`] reads a reply as it comes.
fn exchange_reply(exchange: Exchange, failures: Failures<'_>) -> Result<Reply, Error> {
    let Exchange {
        head,
        body,
        trailers,
    } = exchange;
    if reply_head(head.status, &head.headers, failures)? == ReplyHead::EndedOk {
        return Err(protocol_error("an OK status without a reply message"));
    }
    let reply = body.map_err(|error| match error {
        BodyError::Message(error) => error,
        BodyError::Stream(error) => failures.transport(&error),
    })?;
    let trailers = trailers_status(trailers, failures)?;
    Reply::of(reply, head.headers, trailers)
}

/// The one message of a client-streaming reply, with the reply's headers
/// and trailers.
pub(super) async fn one_reply(
    upstream: &Upstream,
    response: ResponseFuture,
    failures: Failures<'_>,
) -> Result<Reply, Error> {
    let (head, body) = response
        .await
        .map_err(|err| failures.transport(&err))?
        .into_parts();
    if reply_head(head.status, &head.headers, failures)? == ReplyHead::EndedOk {
        return Err(protocol_error("an OK status without a reply message"));
    }
    let mut body = ReplyReader::new(body, upstream.max_response_bytes);
    let reply = body.message(failures).await?;
    // Anything after the one message is read (within the limit) and
    // dropped, as tonic does.
    while body.message(failures).await?.is_some() {}
    let trailers = body.trailers(failures).await?;
    Reply::of(reply, head.headers.into(), trailers.into())
}

/// Opens the reply stream and waits for its first message, both within the
/// upstream's timeout: no reply headers by then is a deadline error, no
/// message by then is a quiet stream.
async fn until_first_reply(
    upstream: &Arc<Upstream>,
    opening: impl Future<Output = Result<(ResponseFuture, Option<Sending>), Error>>,
) -> Result<ReplyStream, Error> {
    let deadline = tokio::time::Instant::now() + upstream.timeout;
    let failures = Failures::new(upstream, None);
    let opened = async {
        let (response, sending) = opening.await?;
        let (head, body) = response
            .await
            .map_err(|err| failures.transport(&err))?
            .into_parts();
        let body = match reply_head(head.status, &head.headers, failures)? {
            ReplyHead::Messages => Some(ReplyReader::new(body, upstream.max_response_bytes)),
            ReplyHead::EndedOk => None,
        };
        Ok::<_, Error>(ReplyStream {
            first: None,
            body,
            upstream: upstream.clone(),
            _sending: sending,
        })
    };
    let Ok(opened) = timers::timeout_at(deadline, opened).await else {
        return Err(failures.timed_out());
    };
    let mut replies = opened?;
    replies.first = match timers::timeout_at(deadline, replies.next()).await {
        Ok(first) => first?,
        Err(_) => None,
    };
    Ok(replies)
}

// === request streams ===

/// Sends `messages` on `stream` from a task of the calling runtime.
fn send_in_background(
    stream: SendStream<Bytes>,
    messages: impl Stream<Item = Outgoing> + Send + 'static,
) -> Sending {
    let mut sending = JoinSet::new();
    sending.spawn(send_messages(stream, messages));
    sending
}

/// Sends each message as it comes, then ends the stream; an
/// [`Outgoing::Abort`] resets it with an error instead. When the upstream
/// ends or resets the stream first, sending stops: the reply says why.
async fn send_messages(mut stream: SendStream<Bytes>, messages: impl Stream<Item = Outgoing>) {
    let mut messages = std::pin::pin!(messages);
    while let Some(item) = messages.next().await {
        let frame = match item {
            Outgoing::Message(message) => frame(&message).ok(),
            Outgoing::Abort => None,
        };
        let Some(frame) = frame else {
            stream.send_reset(Reason::INTERNAL_ERROR);
            return;
        };
        if send_data(&mut stream, frame).await.is_err() {
            return;
        }
    }
    let _ = stream.send_data(Bytes::new(), true);
}

/// Sends `data` as the upstream's flow-control window allows, so that h2
/// holds no more of it than the upstream can take.
async fn send_data(stream: &mut SendStream<Bytes>, mut data: Bytes) -> Result<(), h2::Error> {
    stream.reserve_capacity(data.len());
    while !data.is_empty() {
        let capacity = stream.capacity();
        if capacity == 0 {
            match poll_fn(|cx| stream.poll_capacity(cx)).await {
                Some(granted) => granted?,
                None => return Err(Reason::STREAM_CLOSED.into()),
            };
            continue;
        }
        stream.send_data(data.split_to(capacity.min(data.len())), false)?;
    }
    Ok(())
}
