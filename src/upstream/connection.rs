//! The transport of every upstream call, and the choice of client for it.
//! Unary calls go on a connection of this crate's own HTTP/2 client
//! ([`super::http2`]), written for them alone; streaming calls go on a
//! connection of the `h2` crate. Both are h2c (`http://`) or TLS
//! (`https://`, ALPN `h2`), connected at the first call and again after
//! they closed. A call opens a stream on one and reads the reply in the
//! calling task. A serving worker has its own pair, driven by its runtime;
//! other threads (health probes, embedders) share one. Through hyper's
//! client each call would be handed to the connection task over a channel
//! and spawn two tasks of its own (one to wait for send capacity, one for
//! the reply); through tonic's `Channel`, a buffer task and origin,
//! user-agent, timeout and reconnect layers come on top -- machinery for
//! sharing a connection across threads, which a connection that never
//! leaves its thread does not need (callgrind, instructions per GET: ~10k
//! for tonic's channel layers, then ~21k for hyper's per-call tasks and
//! tonic's codec streams). `h2`'s own client, for a unary call, costs
//! ~25k more than the one written for it (its stream state machine,
//! priorities, an `http::Request` turned into Huffman-coded HPACK).

use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use h2::{
    client::{ResponseFuture, SendRequest},
    SendStream,
};
use http::{
    uri::{Authority, PathAndQuery, Scheme, Uri},
    HeaderValue,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::timers;

use super::{
    deadline::GRPC_TIMEOUT,
    http2::{self, Exchange, RequestHead},
    metadata::Metadata,
    protocol::{fixed_request_headers, is_fixed_request_header},
    tls::UpstreamTls,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where an upstream's connections go and how they start, from its URL.
pub(crate) struct Target {
    scheme: Scheme,
    /// Where to connect: the URL's host and port.
    address: Authority,
    /// What calls name as `:authority`.
    authority: Authority,
    /// For `https://`: the TLS handshake before HTTP/2's.
    tls: Option<UpstreamTls>,
    connect_timeout: Duration,
    /// What every unary call's request starts with, encoded once.
    unary_head: RequestHead,
}

/// An upstream's two HTTP/2 connections, each connected at its first call
/// and again after it closed: this crate's client for unary calls, `h2`'s
/// for streaming ones.
pub(crate) struct Connection {
    target: Arc<Target>,
    /// The open `h2` connection; read without locking on every call.
    open: ArcSwapOption<Open>,
    /// Held while connecting, so that calls arriving meanwhile wait for that
    /// connection instead of each making one.
    connecting: tokio::sync::Mutex<()>,
    /// The open connection for unary calls, and the same lock for it.
    unary: ArcSwapOption<http2::Client>,
    connecting_unary: tokio::sync::Mutex<()>,
}

/// One unary call, as [`Connection::unary`] sends it.
#[derive(Debug)]
pub(crate) struct UnaryCall<'a> {
    pub(crate) path: &'a PathAndQuery,
    /// `grpc-timeout`.
    pub(crate) timeout: &'a HeaderValue,
    pub(crate) metadata: &'a Metadata,
    /// The request message, framed.
    pub(crate) body: Bytes,
    /// The largest reply message accepted.
    pub(crate) limit: usize,
}

/// A connection's handle for opening streams, whether its task ended, and
/// whether a call has named the sensitive values' names yet.
///
/// Values marked sensitive (the ids and times of `request_ids::unique`,
/// new on every call) go as never-indexed literals, and HPACK then spells
/// out the name too, Huffman-coded, unless the connection's table holds an
/// entry of that name. So the first call on a connection sends them
/// indexed: their names enter the table once, and later calls send each as
/// a literal value with an indexed name (callgrind: ~0.7k instructions
/// fewer per call, for four names). Only once: every entry of a name is
/// one more that HPACK compares a value with, on every call.
struct Open {
    sender: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
    names_seeded: AtomicBool,
}

// === impl Target ===

impl Target {
    /// For `url` (`http://host:port`, or `https://` with `tls`), connecting
    /// within `connect_timeout`; calls name the `tls` authority, else the URL's.
    pub(crate) fn new(
        url: &Uri,
        tls: Option<UpstreamTls>,
        connect_timeout: Duration,
    ) -> Option<Self> {
        let address = url.authority()?.clone();
        let scheme = url.scheme()?.clone();
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS
            || (scheme == Scheme::HTTPS) != tls.is_some()
        {
            return None;
        }
        let authority = tls
            .as_ref()
            .and_then(|tls| tls.authority.clone())
            .unwrap_or_else(|| address.clone());
        let fixed = fixed_request_headers();
        let unary_head = RequestHead::new(
            scheme.as_str(),
            authority.as_str(),
            fixed.iter().map(|(name, value)| (name, value)),
        );
        Some(Self {
            scheme,
            authority,
            address,
            tls,
            connect_timeout,
            unary_head,
        })
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

// === impl Connection ===

impl Connection {
    /// Not connected until the first call.
    pub(crate) fn new(target: Arc<Target>) -> Self {
        Self {
            target,
            open: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            unary: ArcSwapOption::empty(),
            connecting_unary: tokio::sync::Mutex::new(()),
        }
    }

    /// Sends a unary call on this crate's client and waits for its reply;
    /// dropping the future resets the stream.
    pub(crate) async fn unary(&self, call: UnaryCall<'_>) -> Result<Exchange, BoxError> {
        let client = match self.unary.load_full().filter(|client| client.is_open()) {
            Some(client) => client,
            None => Box::pin(self.connect_unary()).await?,
        };
        let request = http2::Request {
            head: &self.target.unary_head,
            path: call.path.as_str(),
            timeout: Some((&GRPC_TIMEOUT, call.timeout)),
            metadata: call.metadata,
            replaced: is_fixed_request_header,
            body: call.body,
            limit: call.limit,
        };
        Ok(client.call(request).await?)
    }

    /// The open unary connection, or a new one.
    async fn connect_unary(&self) -> Result<Arc<http2::Client>, BoxError> {
        let _connecting = self.connecting_unary.lock().await;
        if let Some(client) = self.unary.load_full().filter(|client| client.is_open()) {
            return Ok(client);
        }
        let client = Arc::new(connect(&self.target, OwnClient).await?);
        self.unary.store(Some(client.clone()));
        Ok(client)
    }

    /// Opens a stream for `POST path` with `headers`, sends `body` as its
    /// only data and ends it; the reply is read through the returned future.
    /// Dropping that future (and the reply body) resets the stream.
    pub(crate) async fn send(
        &self,
        path: PathAndQuery,
        headers: http::HeaderMap,
        body: Bytes,
    ) -> Result<ResponseFuture, BoxError> {
        let (response, mut stream) = self.open(path, headers).await?;
        // Without reserved capacity h2 buffers the frame and sends it as the
        // stream's window allows: no wait here.
        stream.send_data(body, true)?;
        Ok(response)
    }

    /// Opens a stream for `POST path` with `headers`, whose request body the
    /// caller sends on the returned [`SendStream`].
    pub(crate) async fn open(
        &self,
        path: PathAndQuery,
        mut headers: http::HeaderMap,
    ) -> Result<(ResponseFuture, SendStream<Bytes>), BoxError> {
        let (sender, seed_names) = self.sender().await?;
        if seed_names {
            for value in headers.values_mut() {
                value.set_sensitive(false);
            }
        }
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(self.target.scheme.clone());
        uri.authority = Some(self.target.authority.clone());
        uri.path_and_query = Some(path);
        let mut request = http::Request::new(());
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = Uri::from_parts(uri)?;
        *request.headers_mut() = headers;
        let mut sender = sender.ready().await?;
        Ok(sender.send_request(request, false)?)
    }

    /// The open connection, or a new one, and whether this call is the one
    /// that brings the names of sensitive values into its table ([`Open`]).
    async fn sender(&self) -> Result<(SendRequest<Bytes>, bool), BoxError> {
        if let Some(open) = self.open_sender() {
            return Ok(open);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(open) = self.open_sender() {
            return Ok(open);
        }
        // Boxed: the handshake's future is large, and every future that
        // awaits a call up to the connection's task would carry its size.
        let open = Box::pin(connect(&self.target, H2Client)).await?;
        let sender = open.sender.clone();
        open.names_seeded.store(true, Ordering::Relaxed);
        self.open.store(Some(Arc::new(open)));
        Ok((sender, true))
    }

    fn open_sender(&self) -> Option<(SendRequest<Bytes>, bool)> {
        let open = self.open.load();
        open.as_deref()
            .filter(|open| !open.closed.load(Ordering::Acquire))
            .map(|open| {
                // Read before swapped: only the first call pays for the swap.
                let seed = !open.names_seeded.load(Ordering::Relaxed)
                    && !open.names_seeded.swap(true, Ordering::Relaxed);
                (open.sender.clone(), seed)
            })
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("authority", &self.target.authority)
            .finish_non_exhaustive()
    }
}

/// How a client starts HTTP/2 on a connected stream, TCP or TLS.
trait Handshake {
    type Client;

    async fn start<T>(self, io: T, address: &Authority) -> Result<Self::Client, BoxError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static;
}

/// `h2`'s client, for streaming calls.
struct H2Client;

/// This crate's client, for unary calls.
struct OwnClient;

/// Connects to the target's address (and starts TLS within the same
/// timeout), then starts `client`'s HTTP/2 on it, driven on the calling
/// runtime.
async fn connect<H: Handshake>(target: &Target, client: H) -> Result<H::Client, BoxError> {
    let address = &target.address;
    let tls = target.tls.as_ref();
    let timed_out = || std::io::Error::from(std::io::ErrorKind::TimedOut);
    let deadline = tokio::time::Instant::now() + target.connect_timeout;
    let port = address
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let tcp = timers::timeout_at(
        deadline,
        tokio::net::TcpStream::connect((address.host(), port)),
    )
    .await
    .map_err(|_| timed_out())??;
    tcp.set_nodelay(true)?;
    match tls {
        None => client.start(tcp, address).await,
        Some(tls) => {
            let handshake = tls.connector.connect(tls.server_name.clone(), tcp);
            let stream = timers::timeout_at(deadline, handshake)
                .await
                .map_err(|_| timed_out())??;
            client.start(stream, address).await
        }
    }
}

impl Handshake for OwnClient {
    type Client = http2::Client;

    async fn start<T>(self, io: T, _: &Authority) -> Result<http2::Client, BoxError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Ok(http2::start(io))
    }
}

impl Handshake for H2Client {
    type Client = Open;

    /// The HTTP/2 handshake on `io`, and the connection's task. Flow-control
    /// windows as hyper's client sets them, so that large replies do not
    /// wait for window updates.
    async fn start<T>(self, io: T, address: &Authority) -> Result<Open, BoxError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let address = address.clone();
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(2 << 20)
            .initial_connection_window_size(5 << 20)
            .max_send_buffer_size(1 << 20)
            .enable_push(false)
            .handshake(io)
            .await?;
        let closed = Arc::new(AtomicBool::new(false));
        let ended = MarkClosed(closed.clone());
        tokio::spawn(async move {
            let _ended = ended;
            if let Err(error) = connection.await {
                tracing::debug!(%error, %address, "upstream connection ended with an error");
            }
        });
        Ok(Open {
            sender,
            closed,
            names_seeded: AtomicBool::new(false),
        })
    }
}

/// Marks a connection closed when its task ends, or is dropped with the
/// runtime that ran it (a shared connection may have been made on a
/// runtime that is gone): the next call connects again.
struct MarkClosed(Arc<AtomicBool>);

impl Drop for MarkClosed {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        pin::Pin,
        task::{ready, Context, Poll},
    };

    use http::{HeaderMap, HeaderValue};
    use tokio::{
        io::ReadBuf,
        net::TcpStream,
        sync::mpsc::{unbounded_channel, UnboundedSender},
    };

    use super::*;
    use crate::request_ids::unique;

    #[tokio::test]
    async fn the_names_of_sensitive_values_are_sent_indexed_after_the_first_call() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let (bytes_tx, mut bytes_rx) = unbounded_channel();
        let (ids_tx, mut ids_rx) = unbounded_channel();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let recording = Recording {
                tcp,
                read: bytes_tx,
            };
            let mut server = h2::server::handshake(recording).await.unwrap();
            while let Some(Ok((request, mut respond))) = server.accept().await {
                let _ = ids_tx.send(request.headers()["x-request-id"].clone());
                let _ = respond.send_response(http::Response::new(()), true);
            }
        });
        let connection = Connection::new(Arc::new(
            Target::new(&uri, None, Duration::from_secs(1)).unwrap(),
        ));
        let sent: Vec<String> = (0..3).map(|call| format!("id-of-call-{call}")).collect();
        for id in &sent {
            let mut headers = HeaderMap::new();
            headers.insert("x-request-id", unique(HeaderValue::from_str(id).unwrap()));
            let start = unique(HeaderValue::from_static("t=1700000000000"));
            headers.insert("x-request-start", start);
            let path = PathAndQuery::from_static("/pkg.Service/Method");
            let reply = connection.send(path, headers, Bytes::new()).await.unwrap();
            assert_eq!(reply.await.unwrap().status(), 200);
        }

        // The values arrive as they were sent, seeded or not.
        for id in &sent {
            assert_eq!(ids_rx.recv().await.unwrap(), id.as_str());
        }
        let mut read = Vec::new();
        while let Ok(bytes) = bytes_rx.try_recv() {
            read.extend_from_slice(&bytes);
        }
        let blocks = header_blocks(&read);
        assert_eq!(blocks.len(), 3);
        // The first call brings the names into the table; the others refer
        // to them (and to every other name) by index.
        assert!(names_indexed(blocks[0]).contains(&false));
        for block in &blocks[1..] {
            assert!(names_indexed(block).iter().all(|&indexed| indexed));
        }
    }

    /// A server's side of a TCP connection that hands a copy of every byte
    /// it reads to `read`.
    struct Recording {
        tcp: TcpStream,
        read: UnboundedSender<Vec<u8>>,
    }

    impl AsyncRead for Recording {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let before = buf.filled().len();
            ready!(Pin::new(&mut self.tcp).poll_read(cx, buf))?;
            let _ = self.read.send(buf.filled()[before..].to_vec());
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Recording {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.tcp).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.tcp).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.tcp).poll_shutdown(cx)
        }
    }

    /// The header blocks of the HEADERS frames a client sent, in order
    /// (after the connection preface; no padding, priority or CONTINUATION,
    /// which the h2 client does not send for a few short headers).
    fn header_blocks(mut read: &[u8]) -> Vec<&[u8]> {
        read = &read[24..];
        let mut blocks = Vec::new();
        while read.len() >= 9 {
            let len = usize::from(read[0]) << 16 | usize::from(read[1]) << 8 | usize::from(read[2]);
            if read[3] == 0x1 {
                blocks.push(&read[9..9 + len]);
            }
            read = &read[9 + len..];
        }
        blocks
    }

    /// For each field of an HPACK block (RFC 7541 §6), whether its name was
    /// sent as an index rather than as a literal string.
    fn names_indexed(mut block: &[u8]) -> Vec<bool> {
        let mut names = Vec::new();
        while let Some(&first) = block.first() {
            match first {
                0x80.. => {
                    hpack_int(&mut block, 7);
                    names.push(true);
                }
                0x20..=0x3f => {
                    hpack_int(&mut block, 5);
                }
                _ => {
                    let prefix = if first >= 0x40 { 6 } else { 4 };
                    let name = hpack_int(&mut block, prefix);
                    if name == 0 {
                        hpack_string(&mut block);
                    }
                    hpack_string(&mut block);
                    names.push(name != 0);
                }
            }
        }
        names
    }

    fn hpack_int(block: &mut &[u8], prefix: u32) -> usize {
        let max = (1 << prefix) - 1;
        let mut value = usize::from(block[0]) & max;
        *block = &block[1..];
        if value == max {
            let mut shift = 0;
            loop {
                let byte = block[0];
                *block = &block[1..];
                value += usize::from(byte & 0x7f) << shift;
                shift += 7;
                if byte & 0x80 == 0 {
                    break;
                }
            }
        }
        value
    }

    fn hpack_string(block: &mut &[u8]) {
        let len = hpack_int(block, 7);
        *block = &block[len..];
    }

    #[tokio::test]
    async fn calls_share_one_connection_until_it_closes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let target = Target::new(&uri, None, Duration::from_secs(1)).unwrap();
        let connection = Connection::new(Arc::new(target));
        let accept_one = || tokio::time::timeout(Duration::from_millis(200), listener.accept());

        // Eight calls arrive before the first connection is made: one connect.
        let senders = futures_util::future::join_all((0..8).map(|_| connection.sender())).await;
        assert!(senders.iter().all(Result::is_ok));
        drop(senders);
        let (upstream_end, _) = accept_one().await.expect("one connection").unwrap();
        assert!(accept_one().await.is_err(), "and only one");
        assert!(connection.open_sender().is_some());

        // The upstream closes it: the next call makes a new one.
        drop(upstream_end);
        for _ in 0..100 {
            if connection.open_sender().is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            connection.open_sender().is_none(),
            "the closed connection is noticed"
        );
        assert!(connection.sender().await.is_ok());
        assert!(accept_one().await.is_ok(), "a new connection is made");
    }
}
