//! One client connection of the public listener, from accept to close: the
//! deadlines hyper does not keep and the answers it cannot give.
//!
//! * A new connection has `limits.header_read_timeout` from the connect to
//!   send its first request's headers (a silent socket, a slowloris).
//! * Between HTTP/1.1 requests, the next request's first byte may take up to
//!   `limits.idle_timeout`, the rest of its headers `header_read_timeout`
//!   from that byte (Go's and Envoy's split; hyper's one header timer counts
//!   both from the end of the last response). A head still incomplete then
//!   is answered 408.
//! * An HTTP/1.1 connection quiet between requests for [`PARK_AFTER`] (or a
//!   quarter of `idle_timeout`, if shorter) is parked: hyper's connection,
//!   with its two 8 KiB buffers, is ended without closing the socket, and
//!   the bare socket waits for readiness (a few hundred bytes) until the
//!   client sends again, when a new hyper connection takes it up with any
//!   bytes the old one had read. Its idle deadline and its place under the
//!   connection cap are kept. A busy connection is looked at once per
//!   interval, never per request.
//! * Between two requests, a cleartext HTTP/1.1 connection moves to another
//!   worker when the [`Balance`] says so: ended as parking ends it, its
//!   socket duplicated onto that worker's queue with its deadlines, its
//!   place under the cap and any bytes of the next head hyper had read.
//! * An HTTP/2 connection on which no request starts for `idle_timeout` is
//!   sent GOAWAY; the streams in flight finish. Pings probe it meanwhile
//!   (`limits.http2_keepalive_interval`, `limits.http2_keepalive_timeout`).
//! * A TLS connection's handshake counts in its first request's
//!   `header_read_timeout`, from the connect.
//! * What hyper answers on its own to an HTTP/1.1 head it cannot take (400,
//!   414, 431), and the 408, carry a `google.rpc.Status` body and a request
//!   id like every other error: [`Io`] writes the gateway's answer instead.
//!   HTTP/2 header lists are taken up to [`HTTP2_HEADER_LIST_CAP`], so that
//!   the data plane answers the 16 KiB limit (step 9) with a body; past the
//!   cap h2 answers 431 on its own, without one.
//!
//! The bookkeeping is a few relaxed atomics per request; the one timer that
//! watches for idleness is re-armed lazily (when it fires), not per request.
//! HTTP/1.1 and HTTP/2 are told apart by the first bytes, as hyper-util's
//! `auto` builder does, so that an HTTP/1.1 connection is hyper's own
//! `http1::Connection`, which can be ended without closing its socket.

use std::{
    fmt,
    future::Future,
    io::{self, Write as _},
    net::SocketAddr,
    os::fd::AsFd as _,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed},
        Arc,
    },
    task::{ready, Context, Poll},
    time::{Duration, Instant},
};

use axum::{body::Body, extract::ConnectInfo, response::Response};
use bytes::{Buf as _, Bytes};
use http::{Request, StatusCode, Version};
use http_body::Body as _;
use hyper::{
    body::Incoming,
    rt::{Sleep, Timer},
    server::conn::{http1, http2},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::graceful::GracefulConnection,
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{mpsc, watch},
};
use tokio_rustls::server::TlsStream;
use tower::{Service, ServiceExt as _};

use super::{accept::Slot, balance::Balance};
use crate::{
    config::LimitsConfig,
    error,
    policy::{Identity, MAX_HEADER_LIST_BYTES},
    request_ids::X_REQUEST_ID,
    timers,
    tls::Termination,
};

/// The header list h2 takes from a client: four times the limit the
/// gateway answers itself ([`MAX_HEADER_LIST_BYTES`], with a
/// `google.rpc.Status` body), so that h2's own 431, without a body, is left
/// only for lists past this cap. h2 buffers a header list whole, hence a cap.
const HTTP2_HEADER_LIST_CAP: u32 = 4 * MAX_HEADER_LIST_BYTES as u32;

/// How long an HTTP/1.1 connection stays quiet between requests (to twice
/// this) before it is parked: long enough that a busy connection never is,
/// short enough that idle ones give their buffers back within seconds.
const PARK_AFTER: Duration = Duration::from_secs(2);

/// The first bytes of every HTTP/2 connection (RFC 9113, 3.4).
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A service a connection can be served with. `Unpin` (the service and its
/// future) because parking a connection takes hyper's `poll_without_shutdown`.
pub(super) trait ConnectionService:
    Service<
        Request<Body>,
        Response = Response,
        Error = std::convert::Infallible,
        Future: Send + Unpin + 'static,
    > + Clone
    + Send
    + Unpin
    + 'static
{
}

impl<S> ConnectionService for S where
    S: Service<
            Request<Body>,
            Response = Response,
            Error = std::convert::Infallible,
            Future: Send + Unpin + 'static,
        > + Clone
        + Send
        + Unpin
        + 'static
{
}

/// The connection deadlines, from `limits`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    header_read: Duration,
    idle: Duration,
    /// [`PARK_AFTER`], or a quarter of `idle` if shorter.
    park_after: Duration,
    http2_keepalive_interval: Duration,
    http2_keepalive_timeout: Duration,
}

/// What a worker's connections share: the HTTP/1.1 and HTTP/2 settings,
/// the deadlines, the signal to stop and where connections move.
pub(super) struct Connections {
    protocols: Arc<Protocols>,
    timeouts: Timeouts,
    stop: watch::Sender<bool>,
    moves: Option<Moves>,
}

/// What one connection takes of its worker's [`Connections`].
struct Serving {
    protocols: Arc<Protocols>,
    timeouts: Timeouts,
    stopping: watch::Receiver<bool>,
    moves: Option<Moves>,
}

/// Where a worker's cleartext HTTP/1.1 connections move when the
/// [`Balance`] says so: the other workers' queues of moved connections.
#[derive(Clone)]
pub(super) struct Moves {
    worker: usize,
    balance: Arc<Balance>,
    queues: Arc<[mpsc::UnboundedSender<Moved>]>,
}

/// A cleartext HTTP/1.1 connection on its way to another worker, between
/// two requests: its socket, its place under the cap, its deadlines and any
/// bytes of the next head already read.
pub(super) struct Moved {
    stream: std::net::TcpStream,
    remote: SocketAddr,
    slot: Slot,
    progress: Arc<Progress>,
    unread: Bytes,
}

/// hyper's HTTP/1.1 and HTTP/2 settings.
struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

/// How [`supervise`] left a connection.
#[derive(Debug, PartialEq, Eq)]
enum Supervised {
    /// It ended (closed, timed out or drained).
    Ended,
    /// It is an idle HTTP/1.1 connection, still open: park it.
    Idle,
    /// It is an HTTP/1.1 connection between two requests, to move to this
    /// worker.
    Move(usize),
}

/// How far a connection has got, shared by its [`Io`], its [`HeadClock`],
/// its service and the task that serves it.
#[derive(Debug)]
struct Progress {
    accepted: Instant,
    idle: Duration,
    phase: AtomicU8,
    /// Reads that brought bytes, and their count when the HTTP/1.1 head
    /// being awaited was asked for: a difference means the head has begun.
    reads: AtomicU32,
    reads_at_head: AtomicU32,
    /// Past this (nanoseconds after `accepted`), the connection is idle.
    idle_after: AtomicU64,
    /// The status the gateway answers with as the connection closes; 0 for
    /// none. Once set, whatever hyper writes is dropped.
    last_words: AtomicU16,
    /// Whether hyper flushed after its last write: its write buffer is
    /// empty, so the next write begins something new, and the connection
    /// may be parked.
    flushed: AtomicBool,
}

/// [`Progress::phase`]: nothing yet (the protocol is being read, or HTTP/2
/// before its first request) ...
const FRESH: u8 = 0;
/// ... HTTP/1.1 awaiting its first head, or a later one ...
const FIRST_HEAD: u8 = 1;
const NEXT_HEAD: u8 = 2;
/// ... an HTTP/1.1 request being served, or HTTP/2 after its first request.
const SERVING_HTTP1: u8 = 3;
const SERVING_HTTP2: u8 = 4;

/// What to do with a connection when its deadline passes.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Check again then.
    Wait(Instant),
    /// Close now (nothing in flight).
    Close,
    /// Let what is in flight finish, take nothing new.
    Drain,
    /// Idle HTTP/1.1: end hyper's connection, keep the socket.
    Park,
}

// === impl Timeouts ===

impl From<&LimitsConfig> for Timeouts {
    fn from(limits: &LimitsConfig) -> Self {
        Self {
            header_read: limits.header_read_timeout,
            idle: limits.idle_timeout,
            park_after: PARK_AFTER.min(limits.idle_timeout / 4),
            http2_keepalive_interval: limits.http2_keepalive_interval,
            http2_keepalive_timeout: limits.http2_keepalive_timeout,
        }
    }
}

// === impl Connections ===

impl Connections {
    /// A worker's connections; `moves` if they may move to other workers.
    pub(super) fn new(timeouts: Timeouts, moves: Option<Moves>) -> Self {
        let mut http1 = http1::Builder::new();
        // hyper's header timer is started whenever it waits for a head, so
        // its deadline is the idle one; each connection's `HeadClock`
        // moves it to the first byte plus `header_read` once a head begins.
        http1.header_read_timeout(timeouts.idle);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .max_header_list_size(HTTP2_HEADER_LIST_CAP)
            .timer(timers::ClockTimer)
            .keep_alive_interval(timeouts.http2_keepalive_interval)
            .keep_alive_timeout(timeouts.http2_keepalive_timeout);
        let (stop, _) = watch::channel(false);
        Self {
            protocols: Arc::new(Protocols { http1, http2 }),
            timeouts,
            stop,
            moves,
        }
    }

    fn serving(&self) -> Serving {
        Serving {
            protocols: self.protocols.clone(),
            timeouts: self.timeouts,
            stopping: self.stop.subscribe(),
            moves: self.moves.clone(),
        }
    }

    /// Serves `stream` with `service` until the client leaves, a deadline
    /// passes or the worker stops (or until it moves to another worker);
    /// `slot` is held until then.
    pub(super) fn serve<S>(
        &self,
        stream: TcpStream,
        remote: SocketAddr,
        slot: Slot,
        service: S,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        S: ConnectionService,
    {
        let progress = Arc::new(Progress::new(self.timeouts.idle));
        served(
            self.serving(),
            stream,
            progress,
            (remote, None),
            slot,
            service,
        )
    }

    /// Serves a connection moved here from another worker, as
    /// [`Self::serve`] would have served it from its next request on.
    pub(super) fn resume<S>(
        &self,
        moved: Moved,
        service: S,
    ) -> Option<impl Future<Output = ()> + Send + 'static>
    where
        S: ConnectionService,
    {
        let Moved {
            stream,
            remote,
            slot,
            progress,
            unread,
        } = moved;
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, "could not register a moved connection");
                return None;
            }
        };
        let io = Io {
            stream,
            progress,
            answer: None,
            unread,
        };
        // It was busy a moment ago: not looked at for parking at once.
        let check = Instant::now() + self.timeouts.park_after;
        Some(served_http1(
            self.serving(),
            io,
            (remote, None),
            slot,
            service,
            check,
        ))
    }

    /// [`Self::serve`] after a TLS handshake, which must end within the
    /// first request's `header_read` deadline: that deadline counts from
    /// the connect, handshake included. A verified client certificate's
    /// identity goes into each request's extensions.
    pub(super) fn serve_tls<S>(
        &self,
        stream: TcpStream,
        remote: SocketAddr,
        slot: Slot,
        service: S,
        termination: Arc<Termination>,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        S: ConnectionService,
    {
        let progress = Arc::new(Progress::new(self.timeouts.idle));
        let handshake_by = progress.accepted + self.timeouts.header_read;
        let mut serving = self.serving();
        async move {
            let handshake = timers::timeout_at(handshake_by.into(), termination.accept(stream));
            let accepted = tokio::select! {
                accepted = handshake => accepted,
                _ = serving.stopping.wait_for(|stop| *stop) => return,
            };
            let (stream, identity) = match accepted {
                Ok(Ok(accepted)) => accepted,
                Ok(Err(error)) => {
                    tracing::debug!(%error, %remote, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, "TLS handshake timed out");
                    return;
                }
            };
            // Boxed: a TLS connection's future is large, and the
            // handshake's would otherwise be kept beside it.
            Box::pin(served(
                serving,
                stream,
                progress,
                (remote, identity),
                slot,
                service,
            ))
            .await;
        }
    }

    /// Asks every connection to finish what is in flight and close, and
    /// waits until they have.
    pub(super) async fn drain(self) {
        self.stop.send_replace(true);
        self.stop.closed().await;
    }
}

/// Serves `stream` with `service` until the client leaves, a deadline
/// passes, `serving.stopping` says so or it moves. `peer` is the client's
/// address and the identity its client certificate names.
async fn served<T, S>(
    mut serving: Serving,
    stream: T,
    progress: Arc<Progress>,
    peer: (SocketAddr, Option<Arc<Identity>>),
    slot: Slot,
    service: S,
) where
    T: Transport,
    S: ConnectionService,
{
    let mut io = Io {
        stream,
        progress: progress.clone(),
        answer: None,
        unread: Bytes::new(),
    };
    // The protocol is read within the first request's deadline.
    let first_head_by = progress.accepted + serving.timeouts.header_read;
    let sniffed = tokio::select! {
        sniffed = timers::timeout_at(first_head_by.into(), io.sniff_http2()) => sniffed,
        _ = serving.stopping.wait_for(|stop| *stop) => return,
    };
    match sniffed {
        Ok(Ok(false)) => {
            served_http1(serving, io, peer, slot, service, first_head_by).await;
        }
        Ok(Ok(true)) => {
            let service = TowerToHyperService::new(with_peer(service, &progress, peer));
            // On the heap on its own: moved into the task's future, it
            // would be kept there twice (as the argument, and pinned).
            let mut connection = Box::pin(
                serving
                    .protocols
                    .http2
                    .serve_connection(TokioIo::new(io), service),
            );
            supervise(
                connection.as_mut(),
                &progress,
                serving.timeouts,
                &mut serving.stopping,
                first_head_by,
                None,
            )
            .await;
        }
        Ok(Err(error)) => {
            tracing::trace!(%error, "connection ended before its protocol was known");
        }
        Err(_) => {}
    }
}

/// `service` as a connection from `peer` is served with: what axum's
/// `into_make_service_with_connect_info` would add to each request, and
/// the connection's [`Progress`] told of each.
fn with_peer<S: ConnectionService>(
    service: S,
    progress: &Arc<Progress>,
    peer: (SocketAddr, Option<Arc<Identity>>),
) -> tower::util::MapRequest<
    S,
    impl FnMut(Request<Incoming>) -> Request<Body> + Clone + Send + Unpin + 'static,
> {
    let started = progress.clone();
    let (remote, identity) = peer;
    service.map_request(move |mut request: Request<Incoming>| {
        started.request_started(request.version());
        request.extensions_mut().insert(ConnectInfo(remote));
        if let Some(identity) = &identity {
            request.extensions_mut().insert(identity.clone());
        }
        // An empty body (most GETs) needs no box.
        request.map(|body| {
            if body.is_end_stream() {
                Body::empty()
            } else {
                Body::new(body)
            }
        })
    })
}

/// Serves HTTP/1.1 on `io` until the client leaves, a deadline passes,
/// `serving.stopping` says so, or it moves to another worker; parks it
/// while it is quiet. `check` is when its deadline is first looked at.
async fn served_http1<T, S>(
    mut serving: Serving,
    io: Io<T>,
    peer: (SocketAddr, Option<Arc<Identity>>),
    slot: Slot,
    service: S,
    mut check: Instant,
) where
    T: Transport,
    S: ConnectionService,
{
    let progress = io.progress.clone();
    let remote = peer.0;
    let moves = serving.moves.take().filter(|_| T::MOVABLE);
    let _counted = moves.as_ref().map(Moves::counted);
    let mut service = TowerToHyperService::new(with_peer(service, &progress, peer));
    let mut http1 = serving.protocols.http1.clone();
    http1.timer(HeadClock {
        progress: progress.clone(),
        header_read: serving.timeouts.header_read,
    });
    let mut io = TokioIo::new(io);
    loop {
        let mut connection = Box::pin(http1.serve_connection(io, service));
        let mut destination = match supervise(
            connection.as_mut(),
            &progress,
            serving.timeouts,
            &mut serving.stopping,
            check,
            moves.as_ref(),
        )
        .await
        {
            Supervised::Ended => return,
            Supervised::Idle => None,
            Supervised::Move(to) => Some(to),
        };
        // Idle or moving, flushed, nothing in flight: hyper closes at once,
        // and gives back the socket and any bytes it read but did not parse.
        connection.as_mut().graceful_shutdown();
        if let Err(error) = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)).await {
            tracing::trace!(%error, "connection ended with an error");
            return;
        }
        let parts = (*Pin::into_inner(connection)).into_parts();
        (io, service) = (parts.io, parts.service);
        if !parts.read_buf.is_empty() {
            // The start of a pipelined head: served again at once.
            io.inner_mut().unread = parts.read_buf;
        } else if destination.is_none() {
            if !parked(io.inner(), &mut serving.stopping).await {
                return;
            }
            // Woken on a worker that has left, it goes to an active one.
            destination = moves.as_ref().and_then(Moves::destination);
        }
        if let (Some(to), Some(moves)) = (destination, &moves) {
            moves.send(to, io.into_inner(), remote, slot);
            return;
        }
        check = Instant::now();
    }
}

/// Waits, holding only the socket, until the client sends something (or
/// closes): then `true`. `false` once the connection's idle deadline
/// passes or the worker stops.
async fn parked<T: Transport>(io: &Io<T>, stopping: &mut watch::Receiver<bool>) -> bool {
    let idle_after = io.progress.idle_deadline();
    tokio::select! {
        readable = io.stream.socket().readable() => readable.is_ok(),
        () = timers::sleep_until(idle_after.into()) => false,
        _ = stopping.wait_for(|stop| *stop) => false,
    }
}

/// Polls `connection` to its end, closing it when [`Progress::verdict`]
/// says so and draining it when the worker stops, or until the verdict is
/// to park it, or, between two requests, until `moves` says it is to move. Hand-polled rather than a `select!`: once armed, the
/// deadline is looked at only when its timer has fired (first at `check`),
/// not at every wake-up of the connection (a few hundred instructions per
/// request).
async fn supervise<C>(
    mut connection: Pin<&mut C>,
    progress: &Progress,
    timeouts: Timeouts,
    stopping: &mut watch::Receiver<bool>,
    check: Instant,
    moves: Option<&Moves>,
) -> Supervised
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let deadline = timers::sleep_until(check.into());
    let mut deadline = std::pin::pin!(deadline);
    let mut stop = std::pin::pin!(stopping.wait_for(|stop| *stop));
    let (mut armed, mut draining) = (false, false);
    let mut reads_seen = progress.reads.load(Relaxed);
    std::future::poll_fn(|cx| loop {
        if let Poll::Ready(ended) = connection.as_mut().poll(cx) {
            if let Err(error) = ended {
                tracing::trace!(%error, "connection ended with an error");
            }
            return Poll::Ready(Supervised::Ended);
        }
        if draining {
            return Poll::Pending;
        }
        if stop.as_mut().poll(cx).is_ready() {
            connection.as_mut().graceful_shutdown();
            draining = true;
            continue;
        }
        if let Some(to) = moves
            .filter(|_| progress.between_requests())
            .and_then(Moves::destination)
        {
            return Poll::Ready(Supervised::Move(to));
        }
        if armed && !deadline.is_elapsed() {
            return Poll::Pending;
        }
        armed = true;
        ready!(deadline.as_mut().poll(cx));
        armed = false;
        let reads = progress.reads.load(Relaxed);
        let quiet = std::mem::replace(&mut reads_seen, reads) == reads;
        match progress.verdict(Instant::now(), timeouts, quiet) {
            Verdict::Wait(until) => deadline.as_mut().reset(until.into()),
            Verdict::Close => return Poll::Ready(Supervised::Ended),
            Verdict::Drain => {
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
            Verdict::Park => return Poll::Ready(Supervised::Idle),
        }
    })
    .await
}

// === impl Progress ===

impl Progress {
    fn new(idle: Duration) -> Self {
        Self {
            accepted: Instant::now(),
            idle,
            phase: AtomicU8::new(FRESH),
            reads: AtomicU32::new(0),
            reads_at_head: AtomicU32::new(0),
            idle_after: AtomicU64::new(0),
            last_words: AtomicU16::new(0),
            flushed: AtomicBool::new(true),
        }
    }

    /// hyper (HTTP/1.1) waits for a head; it is idle after `idle_after`.
    /// A head awaited again with no request since is the same wait, taken
    /// up by a new hyper connection after parking: its deadline stays.
    fn head_awaited(&self, idle_after: Instant) {
        let phase = match self.phase.load(Relaxed) {
            FRESH => FIRST_HEAD,
            FIRST_HEAD | NEXT_HEAD => return,
            _ => NEXT_HEAD,
        };
        self.phase.store(phase, Relaxed);
        self.reads_at_head.store(self.reads.load(Relaxed), Relaxed);
        self.idle_after.store(self.nanos(idle_after), Relaxed);
    }

    /// A request reached the service: its head is complete.
    fn request_started(&self, version: Version) {
        if version == Version::HTTP_2 {
            // Streams overlap: the connection is idle `idle` after the last one began.
            self.idle_after
                .store(self.nanos(Instant::now() + self.idle), Relaxed);
            self.phase.store(SERVING_HTTP2, Relaxed);
        } else {
            self.phase.store(SERVING_HTTP1, Relaxed);
        }
    }

    fn head_begun(&self) -> bool {
        self.reads.load(Relaxed) != self.reads_at_head.load(Relaxed)
    }

    /// HTTP/1.1 between two requests: the last response flushed, no byte
    /// of the next head read.
    fn between_requests(&self) -> bool {
        self.phase.load(Relaxed) == NEXT_HEAD && !self.head_begun() && self.flushed.load(Relaxed)
    }

    /// When the connection is idle (HTTP/1.1: if no head has begun).
    fn idle_deadline(&self) -> Instant {
        self.accepted + Duration::from_nanos(self.idle_after.load(Relaxed))
    }

    /// What to do at `now`, when the connection's deadline has passed;
    /// `quiet` if no read brought bytes since the last verdict.
    fn verdict(&self, now: Instant, timeouts: Timeouts, quiet: bool) -> Verdict {
        let Timeouts {
            header_read,
            park_after,
            ..
        } = timeouts;
        let idle_after = self.idle_deadline();
        match self.phase.load(Relaxed) {
            // The first request's headers took longer than `header_read`.
            FRESH => Verdict::Close,
            FIRST_HEAD => {
                self.say(StatusCode::REQUEST_TIMEOUT);
                Verdict::Close
            }
            // The head's own clock (`HeadSleep`) is running.
            NEXT_HEAD if self.head_begun() => Verdict::Wait(now + header_read),
            NEXT_HEAD if now >= idle_after => Verdict::Close,
            // Quiet for a whole interval, with the last response flushed.
            NEXT_HEAD if quiet && self.flushed.load(Relaxed) => Verdict::Park,
            NEXT_HEAD => Verdict::Wait(idle_after.min(now + park_after)),
            SERVING_HTTP2 if now < idle_after => Verdict::Wait(idle_after),
            SERVING_HTTP2 => Verdict::Drain,
            // An HTTP/1.1 request in flight is never idle; parked when
            // quiet, after it.
            _ => Verdict::Wait(now + park_after),
        }
    }

    /// Sets the gateway's answer to the client, unless one is set.
    fn say(&self, status: StatusCode) {
        let _ = self
            .last_words
            .compare_exchange(0, status.as_u16(), Relaxed, Relaxed);
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.accepted).as_nanos()).unwrap_or(u64::MAX)
    }
}

// === impl Moves ===

impl Moves {
    /// `worker`'s: it sends to `queues[n]` what is to move to worker `n`.
    pub(super) fn new(
        worker: usize,
        balance: Arc<Balance>,
        queues: Arc<[mpsc::UnboundedSender<Moved>]>,
    ) -> Self {
        Self {
            worker,
            balance,
            queues,
        }
    }

    fn destination(&self) -> Option<usize> {
        self.balance.destination(self.worker)
    }

    /// Counts a movable connection on this worker while the guard lives.
    fn counted(&self) -> Counted<'_> {
        self.balance.count_movable(self.worker, true);
        Counted(self)
    }

    /// Hands the connection on `io` to worker `to`, on a duplicate of its
    /// socket: dropping `io` ends this worker's hold on it.
    fn send<T: Transport>(&self, to: usize, mut io: Io<T>, remote: SocketAddr, slot: Slot) {
        let stream = match io.stream.socket().as_fd().try_clone_to_owned() {
            Ok(socket) => std::net::TcpStream::from(socket),
            Err(error) => {
                tracing::debug!(%error, "could not move a connection; closing it");
                return;
            }
        };
        let moved = Moved {
            stream,
            remote,
            slot,
            progress: io.progress.clone(),
            unread: std::mem::take(&mut io.unread),
        };
        drop(io);
        match self.queues.get(to).map(|queue| queue.send(moved)) {
            Some(Ok(())) => self.balance.moved(),
            _ => tracing::debug!(worker = to, "worker stopped; moved connection closed"),
        }
    }
}

/// A movable connection counted on its worker.
struct Counted<'a>(&'a Moves);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.balance.count_movable(self.0.worker, false);
    }
}

// === impl HeadClock ===

/// hyper's HTTP/1.1 header timer, one per connection: hyper starts it
/// whenever it waits for a request head and drops it once the head is read.
/// The deadline hyper asks for is the idle one (it started counting at the
/// end of the last response); the returned [`HeadSleep`] fires only once a
/// head has begun, `header_read` after it did.
#[derive(Debug)]
struct HeadClock {
    progress: Arc<Progress>,
    header_read: Duration,
}

impl Timer for HeadClock {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        self.progress.head_awaited(deadline);
        Box::pin(HeadSleep {
            progress: self.progress.clone(),
            header_read: self.header_read,
            deadline: None,
        })
    }
}

/// See [`HeadClock`]. hyper polls it only while the head is incomplete,
/// after each read: an idle connection arms no timer here (the connection's
/// own deadline covers idleness), a head that arrives whole never does.
struct HeadSleep {
    progress: Arc<Progress>,
    header_read: Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let deadline = match &mut this.deadline {
            Some(deadline) => deadline,
            None if !this.progress.head_begun() => return Poll::Pending,
            none => none.insert(Box::pin(timers::sleep(this.header_read))),
        };
        ready!(deadline.as_mut().poll(cx));
        this.progress.say(StatusCode::REQUEST_TIMEOUT);
        Poll::Ready(())
    }
}

impl Sleep for HeadSleep {}

// === impl Io ===

/// The connection's socket as hyper sees it: counts the reads that bring
/// bytes, drops hyper's own answer to a head it could not take, and writes
/// the gateway's [`Progress::last_words`] before the socket is shut down
/// (hyper's way out after its own answer) or dropped (after a timeout).
#[derive(Debug)]
struct Io<T: Transport> {
    stream: T,
    progress: Arc<Progress>,
    /// The last words being written, and how much of them is.
    answer: Option<(Vec<u8>, usize)>,
    /// Bytes read before hyper's connection (the protocol's first ones, or
    /// what a parked connection's hyper read but did not parse), given to
    /// it before the socket's.
    unread: Bytes,
}

impl<T: Transport> Io<T> {
    /// Whether `bytes`, about to be written, are to be dropped: once the
    /// gateway's last words are set, and when they are hyper's own answer
    /// to a head it could not parse, which the gateway gives instead. That
    /// answer is told apart as a 4xx status line that begins a write while a
    /// head is awaited: no response of a request can begin then, and the
    /// rest of an earlier one still being written does not begin a write.
    fn silenced(&mut self, bytes: &[u8]) -> bool {
        let progress = &self.progress;
        let begins = progress.flushed.load(Relaxed);
        progress.flushed.store(false, Relaxed);
        if progress.last_words.load(Relaxed) != 0 {
            return true;
        }
        if !begins || !matches!(progress.phase.load(Relaxed), FIRST_HEAD | NEXT_HEAD) {
            return false;
        }
        // "HTTP/1.1 431 Request Header Fields Too Large\r\n..."
        match bytes.get(9..12).map(StatusCode::from_bytes) {
            Some(Ok(status)) if status.is_client_error() && bytes.starts_with(b"HTTP/1.") => {
                progress.say(status);
                true
            }
            _ => false,
        }
    }

    /// Reads until the first bytes are, or cannot be, the HTTP/2 preface,
    /// and keeps them for hyper: whether they are.
    async fn sniff_http2(&mut self) -> io::Result<bool> {
        let mut first = [0; HTTP2_PREFACE.len()];
        let mut filled = 0;
        while filled < first.len() {
            let read = self.read(&mut first[filled..]).await?;
            if read == 0 || first[filled..filled + read] != HTTP2_PREFACE[filled..filled + read] {
                filled += read;
                break;
            }
            filled += read;
        }
        self.unread = Bytes::copy_from_slice(&first[..filled]);
        Ok(filled == HTTP2_PREFACE.len() && first == *HTTP2_PREFACE)
    }

    /// Writes the last words, if any, to the end.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.answer.is_none() {
            match StatusCode::from_u16(self.progress.last_words.load(Relaxed)) {
                Ok(status) => self.answer = Some((last_words(status), 0)),
                Err(_) => return Poll::Ready(Ok(())),
            }
        }
        let Some((answer, written)) = &mut self.answer else {
            return Poll::Ready(Ok(()));
        };
        while *written < answer.len() {
            match ready!(Pin::new(&mut self.stream).poll_write(cx, &answer[*written..]))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => *written += n,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: Transport> AsyncRead for Io<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let filled = buf.filled().len();
        if self.unread.is_empty() {
            ready!(Pin::new(&mut self.stream).poll_read(cx, buf))?;
        } else {
            let taken = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread[..taken]);
            self.unread.advance(taken);
        }
        if buf.filled().len() > filled {
            // Only this connection's task reads: no read-modify-write needed.
            let reads = &self.progress.reads;
            reads.store(reads.load(Relaxed).wrapping_add(1), Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: Transport> AsyncWrite for Io<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.silenced(buf) {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Some(first) = bufs.iter().find(|buf| !buf.is_empty()) else {
            return Poll::Ready(Ok(0));
        };
        if self.silenced(first) {
            return Poll::Ready(Ok(bufs.iter().map(|buf| buf.len()).sum()));
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.stream).poll_flush(cx))?;
        self.progress.flushed.store(true, Relaxed);
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_answer(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl<T: Transport> Drop for Io<T> {
    /// Last words not yet begun (a timeout drops the connection rather than
    /// shut it down), without waiting: nothing else is queued on the socket
    /// then, so a few hundred bytes fit; if they do not, it just closes.
    fn drop(&mut self) {
        if self.answer.is_some() {
            return;
        }
        let Ok(status) = StatusCode::from_u16(self.progress.last_words.load(Relaxed)) else {
            return;
        };
        let answer = last_words(status);
        if !self.stream.try_write_all(&answer) {
            tracing::debug!(%status, "could not answer before closing");
        }
    }
}

// === impl Transport ===

/// A connection's byte stream: TCP, or TLS over it.
pub(super) trait Transport:
    AsyncRead + AsyncWrite + Unpin + Send + fmt::Debug + 'static
{
    /// Whether a connection on it can move to another worker: its state is
    /// all in the socket (a TLS session's is not).
    const MOVABLE: bool;

    /// Writes all of `bytes` now if the socket takes them without waiting.
    fn try_write_all(&mut self, bytes: &[u8]) -> bool;

    /// The TCP socket under it, whose readiness a parked connection awaits.
    fn socket(&self) -> &TcpStream;
}

impl Transport for TcpStream {
    const MOVABLE: bool = true;

    fn try_write_all(&mut self, bytes: &[u8]) -> bool {
        matches!(self.try_write(bytes), Ok(written) if written == bytes.len())
    }

    fn socket(&self) -> &TcpStream {
        self
    }
}

impl Transport for TlsStream<TcpStream> {
    const MOVABLE: bool = false;

    /// A TLS connection is parked only once its reader had no plaintext
    /// left and its socket nothing more to read (hyper's read was pending),
    /// so the socket's readiness is the next record's.
    fn socket(&self) -> &TcpStream {
        self.get_ref().0
    }

    fn try_write_all(&mut self, bytes: &[u8]) -> bool {
        let (tcp, session) = self.get_mut();
        if session.writer().write_all(bytes).is_err() {
            return false;
        }
        while session.wants_write() {
            if !matches!(session.write_tls(&mut NonBlocking(tcp)), Ok(written) if written > 0) {
                return false;
            }
        }
        true
    }
}

/// A socket as a `std::io::Write` that never waits.
struct NonBlocking<'a>(&'a TcpStream);

impl io::Write for NonBlocking<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.try_write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A whole HTTP/1.1 response with a `google.rpc.Status` body and a minted
/// request id, for a client whose head never reached the data plane.
fn last_words(status: StatusCode) -> Vec<u8> {
    let mut buffer = uuid::Uuid::encode_buffer();
    let request_id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer);
    let body = error::bare_status_json(status, request_id).to_string();
    tracing::debug!(%status, request_id, "answered a request head the data plane never saw");
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{X_REQUEST_ID}: {request_id}\r\nconnection: close\r\n\r\n{body}",
        status.as_str(),
        status.canonical_reason().unwrap_or_default(),
        body.len(),
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER_READ: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(60);
    const TIMEOUTS: Timeouts = Timeouts {
        header_read: HEADER_READ,
        idle: IDLE,
        park_after: PARK_AFTER,
        http2_keepalive_interval: Duration::from_secs(20),
        http2_keepalive_timeout: Duration::from_secs(20),
    };

    fn last_words(progress: &Progress) -> u16 {
        progress.last_words.load(Relaxed)
    }

    /// A connection that served one HTTP/1.1 request and awaits the next
    /// head, idle after `idle_after`.
    fn between_requests(idle_after: Instant) -> Progress {
        let progress = Progress::new(IDLE);
        progress.head_awaited(Instant::now() + IDLE);
        progress.request_started(Version::HTTP_11);
        progress.head_awaited(idle_after);
        progress
    }

    #[test]
    fn no_request_by_the_first_deadline_is_closed_with_408_once_a_head_began() {
        let silent = Progress::new(IDLE);
        assert_eq!(
            silent.verdict(Instant::now(), TIMEOUTS, false),
            Verdict::Close
        );
        assert_eq!(last_words(&silent), 0);

        let slow = Progress::new(IDLE);
        slow.head_awaited(Instant::now() + IDLE);
        assert_eq!(slow.verdict(Instant::now(), TIMEOUTS, true), Verdict::Close);
        assert_eq!(last_words(&slow), 408);
    }

    #[test]
    fn a_keep_alive_connection_is_closed_only_after_its_idle_deadline() {
        let progress = Progress::new(IDLE);
        progress.head_awaited(Instant::now() + IDLE);
        progress.request_started(Version::HTTP_11);
        let now = Instant::now();
        // Serving: never idle, looked at again a park interval later.
        assert_eq!(
            progress.verdict(now, TIMEOUTS, true),
            Verdict::Wait(now + PARK_AFTER)
        );
        let idle_after = now + IDLE;
        progress.head_awaited(idle_after);
        assert_eq!(
            progress.verdict(now, TIMEOUTS, false),
            Verdict::Wait(now + PARK_AFTER)
        );
        assert_eq!(
            progress.verdict(idle_after - PARK_AFTER / 2, TIMEOUTS, false),
            Verdict::Wait(idle_after)
        );
        assert_eq!(progress.verdict(idle_after, TIMEOUTS, true), Verdict::Close);
        assert_eq!(last_words(&progress), 0);
    }

    #[test]
    fn a_quiet_flushed_connection_between_requests_is_parked_and_keeps_its_deadline() {
        let idle_after = Instant::now() + IDLE;
        let progress = between_requests(idle_after);
        let now = Instant::now();
        assert_eq!(progress.verdict(now, TIMEOUTS, true), Verdict::Park);
        // A new hyper connection awaits the same head: the deadline stays.
        progress.head_awaited(now + IDLE * 2);
        assert_eq!(progress.idle_deadline(), idle_after);
        assert!(!progress.head_begun());
    }

    #[test]
    fn a_connection_with_a_response_unflushed_or_a_head_begun_is_not_parked() {
        let now = Instant::now();
        let unflushed = between_requests(now + IDLE);
        unflushed.flushed.store(false, Relaxed);
        assert_eq!(
            unflushed.verdict(now, TIMEOUTS, true),
            Verdict::Wait(now + PARK_AFTER)
        );

        let begun = between_requests(now + IDLE);
        begun.reads.fetch_add(1, Relaxed);
        assert_eq!(
            begun.verdict(now, TIMEOUTS, true),
            Verdict::Wait(now + HEADER_READ)
        );
    }

    #[test]
    fn a_begun_head_is_left_to_its_own_clock() {
        let idle_after = Instant::now() + IDLE;
        let progress = between_requests(idle_after);
        progress.reads.fetch_add(1, Relaxed);
        assert_eq!(
            progress.verdict(idle_after, TIMEOUTS, false),
            Verdict::Wait(idle_after + HEADER_READ)
        );
    }

    #[test]
    fn http2_drains_when_no_request_started_for_the_idle_timeout() {
        let progress = Progress::new(IDLE);
        progress.request_started(Version::HTTP_2);
        let now = Instant::now();
        assert!(matches!(progress.verdict(now, TIMEOUTS, true), Verdict::Wait(at) if at > now));
        assert_eq!(
            progress.verdict(now + IDLE * 2, TIMEOUTS, true),
            Verdict::Drain
        );
    }

    #[tokio::test]
    async fn the_protocol_is_told_by_the_first_bytes_and_they_are_read_again() {
        for (first, http2) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], false),
            (&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"[..], true),
            (&b"PRI * HTTP/1.1\r\n"[..], false),
            (&b""[..], false),
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut client = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut client, first)
                .await
                .unwrap();
            drop(client);
            let (stream, _) = listener.accept().await.unwrap();
            let mut io = Io {
                stream,
                progress: Arc::new(Progress::new(IDLE)),
                answer: None,
                unread: Bytes::new(),
            };
            assert_eq!(io.sniff_http2().await.unwrap(), http2, "{first:?}");
            let mut again = Vec::new();
            io.read_to_end(&mut again).await.unwrap();
            assert_eq!(again, first);
        }
    }

    #[test]
    fn last_words_are_a_status_response_with_a_request_id() {
        let answer = String::from_utf8(super::last_words(StatusCode::URI_TOO_LONG)).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}\r\n", body.len())),
            "{head}"
        );
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["code"], 3);
        let id = &body["details"][0]["requestId"];
        assert!(
            head.contains(&format!("x-request-id: {}", id.as_str().unwrap())),
            "{head}"
        );
    }
}
