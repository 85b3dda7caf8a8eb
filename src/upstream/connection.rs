//! The transport of every upstream call: one HTTP/2 connection (the `h2`
//! crate) to an upstream, h2c (`http://`) or TLS (`https://`, ALPN `h2`),
//! connected at the first call and again after it closed. A call opens a
//! stream on it and reads the reply in the calling task. A serving worker
//! has one of its own, driven by its runtime; other threads (health
//! probes, embedders) share one. Through hyper's client each call would be
//! handed to the connection task over a channel and spawn two tasks of its
//! own (one to wait for send capacity, one for the reply); through tonic's
//! `Channel`, a buffer task and origin, user-agent, timeout and reconnect
//! layers come on top -- machinery for sharing a connection across
//! threads, which a connection that never leaves its thread does not need
//! (callgrind, instructions per GET: ~10k for tonic's channel layers, then
//! ~21k for hyper's per-call tasks and tonic's codec streams).

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
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use tokio::io::{AsyncRead, AsyncWrite};

use super::tls::UpstreamTls;

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
}

/// An HTTP/2 connection to an upstream, connected at the first call and
/// again after it closed.
pub(crate) struct Connection {
    target: Arc<Target>,
    /// The open connection; read without locking on every call.
    open: ArcSwapOption<Open>,
    /// Held while connecting, so that calls arriving meanwhile wait for that
    /// connection instead of each making one.
    connecting: tokio::sync::Mutex<()>,
}

/// A connection's handle for opening streams, and whether its task ended.
struct Open {
    sender: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
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
        let authority = tls.as_ref().and_then(|tls| tls.authority.clone());
        Some(Self {
            scheme,
            authority: authority.unwrap_or_else(|| address.clone()),
            address,
            tls,
            connect_timeout,
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
        }
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
        headers: http::HeaderMap,
    ) -> Result<(ResponseFuture, SendStream<Bytes>), BoxError> {
        let sender = self.sender().await?;
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

    /// The open connection, or a new one.
    async fn sender(&self) -> Result<SendRequest<Bytes>, BoxError> {
        if let Some(open) = self.open_sender() {
            return Ok(open);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(open) = self.open_sender() {
            return Ok(open);
        }
        // Boxed: the handshake's future is large, and every future that
        // awaits a call up to the connection's task would carry its size.
        let target = &self.target;
        let open = Box::pin(connect(
            target.address.clone(),
            target.tls.as_ref(),
            target.connect_timeout,
        ))
        .await?;
        let sender = open.sender.clone();
        self.open.store(Some(Arc::new(open)));
        Ok(sender)
    }

    fn open_sender(&self) -> Option<SendRequest<Bytes>> {
        let open = self.open.load();
        open.as_deref()
            .filter(|open| !open.closed.load(Ordering::Acquire))
            .map(|open| open.sender.clone())
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("authority", &self.target.authority)
            .finish_non_exhaustive()
    }
}

/// Connects to `address` (and starts TLS within the same `timeout`), then
/// starts driving the HTTP/2 connection on the calling runtime.
async fn connect(
    address: Authority,
    tls: Option<&UpstreamTls>,
    timeout: Duration,
) -> Result<Open, BoxError> {
    let timed_out = || std::io::Error::from(std::io::ErrorKind::TimedOut);
    let deadline = tokio::time::Instant::now() + timeout;
    let port = address
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let tcp = tokio::time::timeout_at(
        deadline,
        tokio::net::TcpStream::connect((address.host(), port)),
    )
    .await
    .map_err(|_| timed_out())??;
    tcp.set_nodelay(true)?;
    match tls {
        None => start(tcp, address).await,
        Some(tls) => {
            let handshake = tls.connector.connect(tls.server_name.clone(), tcp);
            let stream = tokio::time::timeout_at(deadline, handshake)
                .await
                .map_err(|_| timed_out())??;
            start(stream, address).await
        }
    }
}

/// The HTTP/2 handshake on `io`, and the connection's task. Flow-control
/// windows as hyper's client sets them, so that large replies do not wait
/// for window updates.
async fn start<T>(io: T, address: Authority) -> Result<Open, BoxError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
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
    Ok(Open { sender, closed })
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
    use super::*;

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
