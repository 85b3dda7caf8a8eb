//! The transport of an upstream call. A serving worker's plain-text
//! (`http://`, h2c) upstream is one hyper HTTP/2 connection that the worker
//! owns and drives: calls go straight to it. tonic's `Channel` is built for
//! sharing one connection across threads -- a buffer task in front, origin,
//! user-agent, timeout and reconnect layers around -- which a connection that
//! never leaves its thread does not need (callgrind: ~10% of the gateway's
//! instructions per GET). TLS upstreams and calls from other threads (health
//! probes, embedders) still use a `Channel`.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwapOption;
use futures_util::future::BoxFuture;
use http::uri::{Authority, Scheme, Uri};
use http_body_util::Either;
use hyper::{body::Incoming, client::conn::http2::SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tonic::{body::Body, transport::Channel, ConnectError};
use tower::Service;

use crate::boxed;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where one upstream call goes.
#[derive(Clone, Debug)]
pub(crate) enum Connection {
    Direct(Arc<Direct>),
    Channel(Channel),
}

/// One worker's HTTP/2 connection to an h2c upstream, connected at the first
/// call and again after it closed.
pub(crate) struct Direct {
    scheme: Scheme,
    authority: Authority,
    connect_timeout: Duration,
    /// The open connection; read without locking on every call.
    open: ArcSwapOption<SendRequest<Body>>,
    /// Held while connecting, so that calls arriving meanwhile wait for that
    /// connection instead of each making one.
    connecting: tokio::sync::Mutex<()>,
}

// === impl Connection ===

impl Service<http::Request<Body>> for Connection {
    type Response = http::Response<Either<Incoming, Body>>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Self::Direct(_) => Poll::Ready(Ok(())),
            Self::Channel(channel) => channel.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match self {
            Self::Direct(direct) => {
                let direct = direct.clone();
                boxed::in_place(|| async move {
                    let response = direct.send(request).await?;
                    Ok(response.map(Either::Left))
                })
            }
            Self::Channel(channel) => {
                let call = channel.call(request);
                Box::pin(async move {
                    let response = call.await?;
                    Ok(response.map(Either::Right))
                })
            }
        }
    }
}

// === impl Direct ===

impl Direct {
    /// For `url` (`http://host:port`), connecting within `connect_timeout`.
    pub(crate) fn new(url: &Uri, connect_timeout: Duration) -> Option<Self> {
        Some(Self {
            scheme: url.scheme()?.clone(),
            authority: url.authority()?.clone(),
            connect_timeout,
            open: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
        })
    }

    async fn send(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, BoxError> {
        let mut sender = self.sender().await?;
        // tonic sends the path alone; HTTP/2 needs `:scheme` and `:authority`.
        let (mut head, body) = request.into_parts();
        let mut uri = head.uri.into_parts();
        uri.scheme = Some(self.scheme.clone());
        uri.authority = Some(self.authority.clone());
        head.uri = Uri::from_parts(uri)?;
        Ok(sender
            .send_request(http::Request::from_parts(head, body))
            .await?)
    }

    /// The open connection, or a new one.
    async fn sender(&self) -> Result<SendRequest<Body>, BoxError> {
        if let Some(open) = self.open_sender() {
            return Ok(open);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(open) = self.open_sender() {
            return Ok(open);
        }
        let sender = connect(self.authority.clone(), self.connect_timeout)
            .await
            // tonic maps a ConnectError to UNAVAILABLE, as for its channels.
            .map_err(|error| ConnectError(Box::new(error)))?;
        self.open.store(Some(Arc::new(sender.clone())));
        Ok(sender)
    }

    fn open_sender(&self) -> Option<SendRequest<Body>> {
        let open = self.open.load();
        open.as_deref()
            .filter(|sender| !sender.is_closed())
            .cloned()
    }
}

impl fmt::Debug for Direct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Direct")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

/// Connects to `authority` and starts driving the HTTP/2 connection on the
/// calling runtime.
async fn connect(authority: Authority, timeout: Duration) -> std::io::Result<SendRequest<Body>> {
    let port = authority.port_u16().unwrap_or(80);
    let tcp = tokio::time::timeout(
        timeout,
        tokio::net::TcpStream::connect((authority.host(), port)),
    )
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    tcp.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, %authority, "upstream connection ended with an error");
        }
    });
    Ok(sender)
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
        let direct = Direct::new(&uri, Duration::from_secs(1)).unwrap();
        let accept_one = || tokio::time::timeout(Duration::from_millis(200), listener.accept());

        // Eight calls arrive before the first connection is made: one connect.
        let senders = futures_util::future::join_all((0..8).map(|_| direct.sender())).await;
        assert!(senders.iter().all(Result::is_ok));
        drop(senders);
        let (upstream_end, _) = accept_one().await.expect("one connection").unwrap();
        assert!(accept_one().await.is_err(), "and only one");
        assert!(direct.open_sender().is_some());

        // The upstream closes it: the next call makes a new one.
        drop(upstream_end);
        for _ in 0..100 {
            if direct.open_sender().is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            direct.open_sender().is_none(),
            "the closed connection is noticed"
        );
        assert!(direct.sender().await.is_ok());
        assert!(accept_one().await.is_ok(), "a new connection is made");
    }
}
