//! A connection's shared state and the calls on it: a caller opens its
//! stream and writes its request frames into the outgoing buffer under the
//! state's lock (never held across an `.await`), the connection's task
//! writes them and, reading the reply's frames, fills the stream's slot
//! and wakes the caller once the reply is whole (or has failed).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, MutexGuard,
    },
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use h2::Reason;
use http::{HeaderName, HeaderValue, StatusCode};

use super::{
    frame::{self, DEFAULT_MAX_FRAME, DEFAULT_WINDOW, MAX_WINDOW},
    hpack::{self, Fields, RequestHead},
};
use crate::{
    error::Error,
    upstream::{
        metadata::Metadata,
        protocol::{has_status, Messages},
    },
};

/// Each stream's receive window, as hyper's client sets it, so that large
/// replies do not wait for window updates.
pub(super) const STREAM_WINDOW: i64 = 2 << 20;
/// The connection's receive window.
pub(super) const CONNECTION_WINDOW: i64 = 5 << 20;

/// A handle for unary calls on one HTTP/2 connection; dropping it ends the
/// connection once its calls are done.
pub(in crate::upstream) struct Client {
    shared: Arc<Shared>,
}

pub(super) struct Shared {
    /// Held for a frame's or a call's bookkeeping, never across an
    /// `.await`: a blocking lock, as `h2`'s own stream store is, since the
    /// task and the callers touch the state for a few hundred
    /// instructions at a time.
    #[expect(
        clippy::disallowed_types,
        reason = "held for bookkeeping only, never across an await"
    )]
    state: std::sync::Mutex<State>,
    /// False once no new stream may start: after a GOAWAY or an error, or
    /// once the connection's task ended.
    accepting: AtomicBool,
}

/// One unary call's request.
#[derive(Debug)]
pub(in crate::upstream) struct Request<'a> {
    pub(in crate::upstream) head: &'a RequestHead,
    pub(in crate::upstream) path: &'a str,
    pub(in crate::upstream) timeout: Option<(&'a HeaderName, &'a HeaderValue)>,
    pub(in crate::upstream) metadata: &'a Metadata,
    /// Metadata names that the head's fixed headers or `timeout` replace.
    pub(in crate::upstream) replaced: fn(&HeaderName) -> bool,
    /// The whole request body, sent with END_STREAM.
    pub(in crate::upstream) body: Bytes,
    /// The largest reply message accepted.
    pub(in crate::upstream) limit: usize,
}

/// A reply's `:status` and headers.
#[derive(Debug)]
pub(in crate::upstream) struct Head {
    pub(in crate::upstream) status: StatusCode,
    pub(in crate::upstream) headers: Metadata,
}

/// What a unary call's stream brought back once its head had come: its
/// first message (any later ones are read within the limit and dropped),
/// or why the body failed, and the trailers, if the reply had any.
#[derive(Debug)]
pub(in crate::upstream) struct Exchange {
    pub(in crate::upstream) head: Head,
    pub(in crate::upstream) body: Result<Option<Bytes>, BodyError>,
    pub(in crate::upstream) trailers: Option<Metadata>,
}

/// Why a reply's body failed.
#[derive(Debug)]
pub(in crate::upstream) enum BodyError {
    /// Its gRPC framing: a message over the limit, compressed, cut short.
    Message(Error),
    /// Its stream or connection.
    Stream(StreamError),
}

/// Why a stream failed.
#[derive(Debug, Clone)]
pub(in crate::upstream) enum StreamError {
    /// The upstream reset it (RST_STREAM).
    Reset(Reason),
    /// The upstream's GOAWAY said it never processed it: it may be retried.
    Refused,
    /// The upstream broke HTTP/2's rules on this stream; it was reset.
    Malformed(&'static str),
    /// The connection ended before the reply did.
    Closed(Arc<str>),
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reset(reason) => write!(f, "the upstream reset the stream: {reason}"),
            Self::Refused => f.write_str(
                "the upstream is going away and did not process the call; it may be retried",
            ),
            Self::Malformed(what) => write!(f, "the upstream sent {what}"),
            Self::Closed(why) => write!(f, "the connection closed: {why}"),
        }
    }
}

impl std::error::Error for StreamError {}

/// A connection error (RFC 9113 §5.4.1): the GOAWAY's code, and what was wrong.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConnectionError(pub(super) Reason, pub(super) &'static str);

/// Everything the callers and the task share.
pub(super) struct State {
    /// Frames for the task to write.
    pub(super) out: Vec<u8>,
    task: Option<Waker>,
    task_woken: bool,
    /// Set when the connection failed: every stream, and every new call,
    /// fails with it.
    closed: Option<StreamError>,
    /// The last stream the peer's GOAWAY said it processed.
    going_away: Option<u32>,
    /// Set when the [`Client`] was dropped: no call can start any more.
    abandoned: bool,
    next_id: u32,
    streams: hashbrown::HashMap<u32, Stream>,
    /// Open streams (not closed at the protocol level).
    open: usize,
    /// Callers waiting for the peer's stream limit to make room.
    waiting: Vec<Waker>,
    /// Streams with request data that the send windows held back, in order.
    blocked: std::collections::VecDeque<u32>,
    /// The peer's settings.
    max_frame: usize,
    initial_window: i64,
    max_streams: usize,
    send_window: i64,
    recv_window: i64,
    /// Received DATA not yet given back with a WINDOW_UPDATE.
    unacked: i64,
    /// Whether a header block was sent yet (the first sets the table size).
    sent_block: bool,
}

struct Stream {
    send_window: i64,
    /// Request data the windows have not let out yet.
    unsent: Bytes,
    end_sent: bool,
    blocked: bool,
    recv_window: i64,
    unacked: i64,
    head: Option<Head>,
    messages: Messages,
    first: Option<Bytes>,
    remote_ended: bool,
    /// Closed at the protocol level: no frame will be sent on it.
    closed: bool,
    outcome: Option<Result<Exchange, StreamError>>,
    waker: Option<Waker>,
}

// === impl Client ===

impl Client {
    pub(super) fn new() -> (Self, Arc<Shared>) {
        let state = State {
            out: Vec::with_capacity(4096),
            task: None,
            task_woken: false,
            closed: None,
            going_away: None,
            abandoned: false,
            next_id: 1,
            streams: hashbrown::HashMap::new(),
            open: 0,
            waiting: Vec::new(),
            blocked: std::collections::VecDeque::new(),
            max_frame: DEFAULT_MAX_FRAME,
            initial_window: DEFAULT_WINDOW,
            max_streams: usize::MAX,
            send_window: DEFAULT_WINDOW,
            recv_window: CONNECTION_WINDOW,
            unacked: 0,
            sent_block: false,
        };
        #[expect(
            clippy::disallowed_types,
            reason = "held for bookkeeping only, never across an await"
        )]
        let state = std::sync::Mutex::new(state);
        let shared = Arc::new(Shared {
            state,
            accepting: AtomicBool::new(true),
        });
        (
            Self {
                shared: shared.clone(),
            },
            shared,
        )
    }

    /// Whether a new call may start on it (no GOAWAY, no error, its task runs).
    pub(in crate::upstream) fn is_open(&self) -> bool {
        self.shared.accepting.load(Ordering::Acquire)
    }

    /// Sends `request` on a new stream and waits for its reply; dropping
    /// the future resets the stream (RST_STREAM CANCEL).
    pub(in crate::upstream) async fn call(
        &self,
        request: Request<'_>,
    ) -> Result<Exchange, StreamError> {
        let mut request = Some(request);
        let opened = std::future::poll_fn(|cx| self.shared.lock().open(&mut request, cx)).await;
        let id = opened.inspect_err(|_| {
            // Going away, failed, or out of stream ids: the next call
            // connects again.
            self.shared.stop_accepting();
        })?;
        Call {
            shared: &self.shared,
            id,
        }
        .await
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.abandoned = true;
        state.wake_task();
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

/// A stream's reply, awaited; dropping it before the reply resets the stream.
struct Call<'a> {
    shared: &'a Shared,
    /// 0 once the reply was taken.
    id: u32,
}

impl Future for Call<'_> {
    type Output = Result<Exchange, StreamError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.shared.lock();
        let id = self.id;
        let Some(stream) = state.streams.get_mut(&id) else {
            return Poll::Ready(Err(StreamError::Closed("the call's stream is gone".into())));
        };
        if let Some(outcome) = stream.outcome.take() {
            state.streams.remove(&id);
            if state.finished() {
                state.wake_task();
            }
            drop(state);
            self.id = 0;
            return Poll::Ready(outcome);
        }
        if !stream
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            stream.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        if self.id != 0 {
            let mut state = self.shared.lock();
            state.abandon(self.id);
        }
    }
}

// === impl Shared ===

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state as consistent as
        // any frame boundary: keep going rather than poison every call.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::Release);
    }
}

// === impl State ===

impl State {
    /// Registers the task's waker, which calls wake when they queue frames
    /// or end.
    pub(super) fn register_task(&mut self, waker: &Waker) {
        if !self.task.as_ref().is_some_and(|w| w.will_wake(waker)) {
            self.task = Some(waker.clone());
        }
        self.task_woken = false;
    }

    fn wake_task(&mut self) {
        if !self.task_woken {
            self.task_woken = true;
            if let Some(task) = &self.task {
                task.wake_by_ref();
            }
        }
    }

    /// Whether the connection has nothing left to do: failed, or no call
    /// can start and none is open.
    pub(super) fn finished(&self) -> bool {
        self.closed.is_some()
            || (self.abandoned || self.going_away.is_some()) && self.streams.is_empty()
    }

    /// Opens a stream for the request, if the peer's limit allows, and
    /// queues its frames.
    fn open(
        &mut self,
        request: &mut Option<Request<'_>>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<u32, StreamError>> {
        if let Some(error) = &self.closed {
            return Poll::Ready(Err(error.clone()));
        }
        if self.going_away.is_some() || self.next_id > MAX_WINDOW as u32 {
            return Poll::Ready(Err(StreamError::Refused));
        }
        if self.open >= self.max_streams {
            self.waiting.push(cx.waker().clone());
            return Poll::Pending;
        }
        let Some(request) = request.take() else {
            return Poll::Ready(Err(StreamError::Closed("the call was opened twice".into())));
        };
        let id = self.next_id;
        self.next_id += 2;
        self.open += 1;
        self.write_headers(id, &request);
        self.streams.insert(
            id,
            Stream {
                send_window: self.initial_window,
                unsent: request.body,
                end_sent: false,
                blocked: false,
                recv_window: STREAM_WINDOW,
                unacked: 0,
                head: None,
                messages: Messages::new(request.limit),
                first: None,
                remote_ended: false,
                closed: false,
                outcome: None,
                waker: None,
            },
        );
        self.send_data(id);
        self.wake_task();
        Poll::Ready(Ok(id))
    }

    /// The request's HEADERS, and CONTINUATION frames when its block is
    /// larger than the peer's frame size.
    fn write_headers(&mut self, id: u32, request: &Request<'_>) {
        let start = self.out.len();
        self.out.extend_from_slice(&[0; frame::HEADER_LEN]);
        if !self.sent_block {
            self.sent_block = true;
            self.out.push(hpack::TABLE_SIZE_ZERO);
        }
        request.head.encode(
            &mut self.out,
            request.path,
            request.timeout,
            request.metadata,
            request.replaced,
        );
        let len = self.out.len() - start - frame::HEADER_LEN;
        if len <= self.max_frame {
            let head = frame::head_bytes(len, frame::HEADERS, frame::END_HEADERS, id);
            self.out[start..start + frame::HEADER_LEN].copy_from_slice(&head);
            return;
        }
        let block = self.out.split_off(start + frame::HEADER_LEN);
        self.out.truncate(start);
        let mut chunks = block.chunks(self.max_frame).peekable();
        let mut kind = frame::HEADERS;
        while let Some(chunk) = chunks.next() {
            let flags = if chunks.peek().is_none() {
                frame::END_HEADERS
            } else {
                0
            };
            frame::head(&mut self.out, chunk.len(), kind, flags, id);
            self.out.extend_from_slice(chunk);
            kind = frame::CONTINUATION;
        }
    }

    /// Sends as much of a stream's request data as the windows allow, in
    /// frames of at most the peer's size, the last with END_STREAM; what
    /// is held back waits in `blocked`.
    fn send_data(&mut self, id: u32) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        if stream.closed || stream.end_sent {
            return;
        }
        loop {
            let allowed = stream.send_window.min(self.send_window).max(0) as usize;
            let len = stream.unsent.len().min(allowed).min(self.max_frame);
            if len == 0 && !stream.unsent.is_empty() {
                if !stream.blocked {
                    stream.blocked = true;
                    self.blocked.push_back(id);
                }
                return;
            }
            let data = stream.unsent.split_to(len);
            let last = stream.unsent.is_empty();
            let flags = if last { frame::END_STREAM } else { 0 };
            frame::head(&mut self.out, len, frame::DATA, flags, id);
            self.out.extend_from_slice(&data);
            stream.send_window -= len as i64;
            self.send_window -= len as i64;
            if last {
                stream.end_sent = true;
                if stream.remote_ended {
                    close(stream, &mut self.open, &mut self.waiting);
                }
                return;
            }
        }
    }

    /// Sends what the windows held back, in the order it was held.
    fn send_blocked(&mut self) {
        for _ in 0..self.blocked.len() {
            let Some(id) = self.blocked.pop_front() else {
                break;
            };
            if let Some(stream) = self.streams.get_mut(&id) {
                stream.blocked = false;
                self.send_data(id);
            }
            if self.send_window <= 0 {
                break;
            }
        }
    }

    /// The caller is gone: a stream still open is reset (CANCEL).
    fn abandon(&mut self, id: u32) {
        if let Some(mut stream) = self.streams.remove(&id) {
            if !stream.closed {
                frame::rst_stream(&mut self.out, id, Reason::CANCEL);
                close(&mut stream, &mut self.open, &mut self.waiting);
                self.wake_task();
            } else if self.finished() {
                self.wake_task();
            }
        }
    }

    /// Whether `id` names a stream this client opened (and may have closed).
    fn opened(&self, id: u32) -> bool {
        id % 2 == 1 && id < self.next_id
    }

    /// Ends a stream's call with `outcome`: a stream still open is reset
    /// (CANCEL), as when a caller stops reading.
    fn complete(&mut self, id: u32, outcome: Result<Exchange, StreamError>, reason: Reason) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        if !stream.closed {
            if !(stream.remote_ended && stream.end_sent) {
                frame::rst_stream(&mut self.out, id, reason);
            }
            close(stream, &mut self.open, &mut self.waiting);
        }
        stream.outcome = Some(outcome);
        if let Some(waker) = stream.waker.take() {
            waker.wake();
        }
    }

    /// A stream's call fails with `error`: after its head, in its body.
    fn fail(&mut self, id: u32, error: StreamError, reason: Reason) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        if stream.outcome.is_some() {
            return;
        }
        let outcome = match stream.head.take() {
            Some(head) => Ok(Exchange {
                head,
                body: Err(BodyError::Stream(error)),
                trailers: None,
            }),
            None => Err(error),
        };
        self.complete(id, outcome, reason);
    }

    /// The connection failed: every call fails, and no new one starts.
    pub(super) fn fail_all(&mut self, error: StreamError) {
        if self.closed.is_some() {
            return;
        }
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            if let Some(stream) = self.streams.get_mut(&id) {
                // Nothing more is sent on a failed connection.
                stream.closed = true;
            }
            self.fail(id, error.clone(), Reason::CANCEL);
        }
        self.open = 0;
        self.closed = Some(error);
        for waker in self.waiting.drain(..) {
            waker.wake();
        }
    }

    /// A connection error of ours: GOAWAY, then every call fails.
    pub(super) fn connection_error(&mut self, error: ConnectionError) {
        let ConnectionError(reason, what) = error;
        frame::goaway(&mut self.out, reason);
        self.fail_all(StreamError::Closed(
            format!("the upstream sent {what} ({reason})").into(),
        ));
    }

    // --- frames received ---

    /// DATA on stream `id` (`flow` bytes counted by flow control, padding
    /// included).
    pub(super) fn data(
        &mut self,
        id: u32,
        end_stream: bool,
        payload: &[u8],
        flow: usize,
    ) -> Result<(), ConnectionError> {
        let flow = flow as i64;
        self.recv_window -= flow;
        if self.recv_window < 0 {
            return Err(ConnectionError(
                Reason::FLOW_CONTROL_ERROR,
                "more data than the connection's window",
            ));
        }
        self.unacked += flow;
        if self.unacked >= CONNECTION_WINDOW / 2 {
            frame::window_update(&mut self.out, 0, self.unacked as u32);
            self.recv_window += self.unacked;
            self.unacked = 0;
        }
        let Some(stream) = self.streams.get_mut(&id).filter(|s| !s.closed) else {
            return self.unknown_stream(id);
        };
        if stream.head.is_none() || stream.remote_ended {
            let what = "DATA before a reply's headers";
            self.fail(id, StreamError::Malformed(what), Reason::PROTOCOL_ERROR);
            return Ok(());
        }
        stream.recv_window -= flow;
        if stream.recv_window < 0 {
            let what = "more data than the stream's window";
            self.fail(id, StreamError::Malformed(what), Reason::FLOW_CONTROL_ERROR);
            return Ok(());
        }
        if !payload.is_empty() {
            stream.messages.push(Bytes::copy_from_slice(payload));
            if let Err(error) = next_messages(stream) {
                let head = stream.head.take();
                if let Some(head) = head {
                    let outcome = Ok(Exchange {
                        head,
                        body: Err(BodyError::Message(error)),
                        trailers: None,
                    });
                    self.complete(id, outcome, Reason::CANCEL);
                }
                return Ok(());
            }
        }
        if end_stream {
            stream.remote_ended = true;
            self.finish_body(id, None);
        } else {
            stream.unacked += flow;
            if stream.unacked >= STREAM_WINDOW / 2 {
                frame::window_update(&mut self.out, id, stream.unacked as u32);
                stream.recv_window += stream.unacked;
                stream.unacked = 0;
            }
        }
        Ok(())
    }

    /// The body ended (with `trailers`, or without): the call's outcome.
    fn finish_body(&mut self, id: u32, trailers: Option<Metadata>) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let Some(head) = stream.head.take() else {
            return;
        };
        let body = match stream.messages.finish() {
            Ok(()) => Ok(stream.first.take()),
            Err(error) => Err(BodyError::Message(error)),
        };
        let outcome = Ok(Exchange {
            head,
            body,
            trailers,
        });
        self.complete(id, outcome, Reason::CANCEL);
    }

    /// A whole header block on stream `id`.
    pub(super) fn headers(
        &mut self,
        id: u32,
        end_stream: bool,
        fields: Fields,
    ) -> Result<(), ConnectionError> {
        let Some(stream) = self.streams.get_mut(&id).filter(|s| !s.closed) else {
            return self.unknown_stream(id);
        };
        if let Some(what) = fields.malformed {
            self.fail(id, StreamError::Malformed(what), Reason::PROTOCOL_ERROR);
            return Ok(());
        }
        if stream.head.is_some() {
            // Trailers: they end the stream and carry no pseudo-header.
            if !end_stream || fields.status.is_some() {
                let what = "trailers that do not end the stream";
                self.fail(id, StreamError::Malformed(what), Reason::PROTOCOL_ERROR);
                return Ok(());
            }
            stream.remote_ended = true;
            self.finish_body(id, Some(fields.headers));
            return Ok(());
        }
        let Some(status) = fields.status else {
            let what = "a reply head without :status";
            self.fail(id, StreamError::Malformed(what), Reason::PROTOCOL_ERROR);
            return Ok(());
        };
        if status.is_informational() {
            if end_stream {
                let what = "an informational head that ends the stream";
                self.fail(id, StreamError::Malformed(what), Reason::PROTOCOL_ERROR);
            }
            return Ok(());
        }
        let head = Head {
            status,
            headers: fields.headers,
        };
        // A head that ends the stream, carries a status (trailers-only) or
        // is no HTTP 200 says all that the call will read.
        let complete = end_stream || status != StatusCode::OK || has_status(&head.headers);
        if end_stream {
            stream.remote_ended = true;
        }
        if complete {
            let outcome = Ok(Exchange {
                head,
                body: Ok(None),
                trailers: None,
            });
            self.complete(id, outcome, Reason::CANCEL);
        } else {
            stream.head = Some(head);
        }
        Ok(())
    }

    pub(super) fn reset(&mut self, id: u32, reason: Reason) -> Result<(), ConnectionError> {
        match self.streams.get_mut(&id) {
            Some(stream) if !stream.closed => {
                stream.remote_ended = true;
                // The peer closed it: nothing is sent back.
                close(stream, &mut self.open, &mut self.waiting);
                self.fail(id, StreamError::Reset(reason), Reason::NO_ERROR);
                Ok(())
            }
            _ => self.unknown_stream(id),
        }
    }

    pub(super) fn window_update(&mut self, id: u32, increment: u32) -> Result<(), ConnectionError> {
        let increment = i64::from(increment);
        if id == 0 {
            if increment == 0 {
                return Err(ConnectionError(
                    Reason::PROTOCOL_ERROR,
                    "a WINDOW_UPDATE of 0",
                ));
            }
            self.send_window += increment;
            if self.send_window > MAX_WINDOW {
                return Err(ConnectionError(
                    Reason::FLOW_CONTROL_ERROR,
                    "a connection window over 2^31-1",
                ));
            }
            self.send_blocked();
            return Ok(());
        }
        let Some(stream) = self.streams.get_mut(&id).filter(|s| !s.closed) else {
            return self.unknown_stream(id);
        };
        if increment == 0 {
            let what = "a WINDOW_UPDATE of 0";
            self.fail(id, StreamError::Malformed(what), Reason::PROTOCOL_ERROR);
            return Ok(());
        }
        stream.send_window += increment;
        if stream.send_window > MAX_WINDOW {
            let what = "a stream window over 2^31-1";
            self.fail(id, StreamError::Malformed(what), Reason::FLOW_CONTROL_ERROR);
            return Ok(());
        }
        if stream.blocked {
            self.send_blocked();
        }
        Ok(())
    }

    /// One setting of the peer's SETTINGS frame.
    pub(super) fn setting(&mut self, id: u16, value: u32) -> Result<(), ConnectionError> {
        match id {
            frame::SETTINGS_ENABLE_PUSH if value != 0 => {
                return Err(ConnectionError(
                    Reason::PROTOCOL_ERROR,
                    "a server's SETTINGS_ENABLE_PUSH other than 0",
                ));
            }
            frame::SETTINGS_MAX_CONCURRENT_STREAMS => {
                self.max_streams = value as usize;
                for waker in self.waiting.drain(..) {
                    waker.wake();
                }
            }
            frame::SETTINGS_INITIAL_WINDOW_SIZE => {
                let value = i64::from(value);
                if value > MAX_WINDOW {
                    return Err(ConnectionError(
                        Reason::FLOW_CONTROL_ERROR,
                        "an initial window over 2^31-1",
                    ));
                }
                let delta = value - self.initial_window;
                self.initial_window = value;
                for stream in self.streams.values_mut().filter(|s| !s.closed) {
                    stream.send_window += delta;
                    if stream.send_window > MAX_WINDOW {
                        return Err(ConnectionError(
                            Reason::FLOW_CONTROL_ERROR,
                            "a stream window over 2^31-1",
                        ));
                    }
                }
                self.send_blocked();
            }
            frame::SETTINGS_MAX_FRAME_SIZE => {
                if !(DEFAULT_MAX_FRAME as u32..=frame::MAX_FRAME_LIMIT).contains(&value) {
                    return Err(ConnectionError(
                        Reason::PROTOCOL_ERROR,
                        "a SETTINGS_MAX_FRAME_SIZE out of range",
                    ));
                }
                self.max_frame = value as usize;
            }
            // This client's table is always empty (its size set to 0), so
            // any size the peer's decoder allows fits it.
            frame::SETTINGS_HEADER_TABLE_SIZE => {}
            _ => {}
        }
        Ok(())
    }

    /// GOAWAY: calls on streams above `last` fail (the upstream never
    /// processed them); the others may finish; no new call starts.
    pub(super) fn goaway(&mut self, last: u32, shared: &Shared) {
        shared.stop_accepting();
        self.going_away = Some(last);
        let refused: Vec<u32> = self
            .streams
            .keys()
            .copied()
            .filter(|&id| id > last)
            .collect();
        for id in refused {
            if let Some(stream) = self.streams.get_mut(&id) {
                // The upstream forgot the stream: nothing is sent on it.
                stream.remote_ended = true;
                stream.end_sent = true;
            }
            self.fail(id, StreamError::Refused, Reason::NO_ERROR);
        }
        for waker in self.waiting.drain(..) {
            waker.wake();
        }
    }

    /// A frame for a stream that is not open: ignored when this client
    /// opened and closed it, a connection error when it never opened it.
    fn unknown_stream(&self, id: u32) -> Result<(), ConnectionError> {
        if self.opened(id) {
            Ok(())
        } else {
            Err(ConnectionError(
                Reason::PROTOCOL_ERROR,
                "a frame on a stream this client never opened",
            ))
        }
    }
}

/// The stream no longer counts against the peer's limit: a waiting call
/// may open one.
fn close(stream: &mut Stream, open: &mut usize, waiting: &mut Vec<Waker>) {
    stream.closed = true;
    *open = open.saturating_sub(1);
    for waker in waiting.drain(..) {
        waker.wake();
    }
}

/// Takes every whole message out of what the stream received: the first
/// is kept, the others dropped (as tonic does), each within the limit.
fn next_messages(stream: &mut Stream) -> Result<(), Error> {
    while let Some(message) = stream.messages.next()? {
        if stream.first.is_none() {
            stream.first = Some(message);
        }
    }
    Ok(())
}
