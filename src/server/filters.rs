//! The data plane: the steps every request goes through, outermost first,
//! run by one future per request (two with CORS on). Each step is plain code
//! of its module (`policy`, `observe`, `gateway`) called in order here; a
//! stack of middleware layers would box a future and clone the stack below
//! it at every layer of every request (measured: a quarter of the gateway's
//! CPU on a GET).
//!
//! 1. ids: malformed ids and spoofed identity headers dropped; request and
//!    correlation ids and this hop's `traceparent`, kept or minted
//! 2. the request span, carrying the ids (the route is recorded at 10)
//! 3. access log and 4. metrics: outside everything that can fail, so that
//!    every final response is logged and counted (404, 405, timeouts, 5xx)
//! 7. CORS (tower-http): preflights never reach the router or an upstream
//! 5. a `google.rpc.Status` body for responses that only know a status
//! 6. a panic is a 500, never a dropped connection
//! 9. the overall request deadline (per-upstream ones travel as `grpc-timeout`)
//! 10. the published API (`openapi`: the document and the reference page),
//!     else the route, matched once against the current catalog
//! 11. authentication and the method's policy
//! 12. rate limit: the consumer's issuer and subject, else the client IP
//!     (a failed authentication at 11 counts against the client IP too)
//! 13. the upstream metadata, decided once; allow-listed upstream headers back
//! 14. the gateway: transcode, call, answer

use std::{
    convert::Infallible,
    fmt,
    future::Future,
    panic::AssertUnwindSafe,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{extract::Request, response::Response};
use futures_util::{future::BoxFuture, FutureExt as _};
use http::{header::Entry, HeaderValue, StatusCode};
use tower::{Service, ServiceExt as _};
use tower_http::cors::{Cors, CorsLayer};
use tracing::Instrument as _;

use crate::{
    boxed,
    error::{self, Error},
    gateway::{self, Gateway},
    observe::{
        self,
        access_log::{self, AccessLog},
        metrics::Metrics,
        trace_context, RequestContext,
    },
    openapi::Published,
    policy::{
        self, Authenticator, HeaderPolicy, LocalLimiter, RateLimiting, X_CORRELATION_ID,
        X_REQUEST_ID,
    },
    registry::{Registry, RouteMatch},
    router::Lookup,
};

/// A run of steps as a tower service: one future per request, boxed in place.
pub(super) struct Chain<T>(Arc<T>);

/// What a [`Chain`] runs.
pub(super) trait Serve: Send + Sync + 'static {
    fn serve(&self, request: Request) -> impl Future<Output = Response> + Send + '_;
}

/// Steps 1–4 and 7, then [`Inner`]: the data-plane service.
pub(super) type DataPlane = Chain<Edge>;

/// What the steps need, built once at start.
pub(super) struct Steps {
    pub(super) headers: Arc<HeaderPolicy>,
    pub(super) access_log: Option<Arc<AccessLog>>,
    pub(super) metrics: Option<Metrics>,
    pub(super) cors: Option<CorsLayer>,
    pub(super) request_timeout: Duration,
    pub(super) registry: Arc<Registry>,
    pub(super) auth: Option<Arc<Authenticator>>,
    pub(super) rate_limit: Option<Arc<RateLimiting<Arc<LocalLimiter>>>>,
    pub(super) gateway: Arc<Gateway>,
    /// The OpenAPI document and reference page; `None` when off.
    pub(super) published: Option<Arc<Published>>,
}

pub(super) struct Edge {
    headers: Arc<HeaderPolicy>,
    access_log: Option<Arc<AccessLog>>,
    metrics: Option<Metrics>,
    cors: Option<Cors<Chain<Inner>>>,
    inner: Arc<Inner>,
}

/// Steps 5–14, behind CORS.
pub(super) struct Inner {
    request_timeout: Duration,
    registry: Arc<Registry>,
    auth: Option<Arc<Authenticator>>,
    rate_limit: Option<Arc<RateLimiting<Arc<LocalLimiter>>>>,
    headers: Arc<HeaderPolicy>,
    gateway: Arc<Gateway>,
    published: Option<Arc<Published>>,
}

/// The ids decided at step 1, echoed on the response.
struct Ids {
    request_id: HeaderValue,
    correlation_id: HeaderValue,
    traceparent: HeaderValue,
}

// === impl Chain ===

impl DataPlane {
    pub(super) fn new(steps: Steps) -> Self {
        let inner = Arc::new(Inner {
            request_timeout: steps.request_timeout,
            registry: steps.registry,
            auth: steps.auth,
            rate_limit: steps.rate_limit,
            headers: steps.headers.clone(),
            gateway: steps.gateway,
            published: steps.published,
        });
        Self(Arc::new(Edge {
            headers: steps.headers,
            access_log: steps.access_log,
            metrics: steps.metrics,
            cors: steps
                .cors
                .map(|cors| tower::Layer::layer(&cors, Chain(inner.clone()))),
            inner,
        }))
    }
}

impl<T> fmt::Debug for Chain<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chain").finish_non_exhaustive()
    }
}

impl<T> Clone for Chain<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T: Serve> Service<Request> for Chain<T> {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let steps = self.0.clone();
        boxed::in_place(|| async move { Ok(steps.serve(request).await) })
    }
}

// === impl Edge ===

// The steps here, as the ones below, are plain functions that do what they
// can before returning an `async move` block: an `async fn` keeps its
// arguments (the 240-byte request) beside the locals they move into, and
// the request's future, which nests every step, is copied whole as it
// starts.
impl Serve for Edge {
    fn serve(&self, mut request: Request) -> impl Future<Output = Response> + Send + '_ {
        let ids = Ids::decide(&self.headers, &mut request);
        let span = observe::request_span(&request);
        async move {
            let mut response = self.observed(request, &ids).instrument(span).await;
            ids.echo(&mut response);
            response
        }
    }
}

impl Edge {
    /// Steps 3, 4 and 7.
    fn observed(
        &self,
        mut request: Request,
        ids: &Ids,
    ) -> impl Future<Output = Response> + Send + '_ {
        let logged = self
            .access_log
            .as_ref()
            .map(|_| access_log::begin(&mut request, &ids.request_id, &ids.correlation_id));
        let counted = self.metrics.as_ref().map(|_| Metrics::begin(&mut request));
        async move {
            let mut response = match &self.cors {
                // Boxed: CORS, when off, must not size every request's future.
                Some(cors) => match Box::pin(cors.clone().oneshot(request)).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                },
                None => self.inner.serve(request).await,
            };
            if let (Some(metrics), Some(counted)) = (&self.metrics, counted) {
                response = metrics.finish(counted, response);
            }
            if let (Some(log), Some(logged)) = (&self.access_log, logged) {
                response = logged.finish(log, response);
            }
            response
        }
    }
}

// === impl Ids ===

impl Ids {
    /// Step 1: malformed ids and spoofed identity headers go first; then
    /// `x-request-id` (minted when absent), `x-correlation-id` (the client's,
    /// else the request id) and this hop's `traceparent`, each set on the
    /// request for the upstream.
    fn decide(headers: &HeaderPolicy, request: &mut Request) -> Self {
        policy::sanitize(headers, request);
        // Entries: one lookup per id, whether it is kept or set.
        let request_id = match request.headers_mut().entry(X_REQUEST_ID) {
            Entry::Occupied(id) => id.get().clone(),
            Entry::Vacant(slot) => {
                let mut buffer = uuid::Uuid::encode_buffer();
                let minted = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer);
                let id = HeaderValue::from_str(minted).unwrap_or(HeaderValue::from_static(""));
                slot.insert(id).clone()
            }
        };
        let correlation_id = match request.headers_mut().entry(X_CORRELATION_ID) {
            Entry::Occupied(id) => id.get().clone(),
            Entry::Vacant(slot) => slot.insert(request_id.clone()).clone(),
        };
        let traceparent = trace_context::start(request);
        Self {
            request_id,
            correlation_id,
            traceparent,
        }
    }

    /// The ids on the response (an upstream's own `x-request-id` is kept).
    fn echo(self, response: &mut Response) {
        let out = response.headers_mut();
        out.entry(X_REQUEST_ID).or_insert(self.request_id);
        out.insert(X_CORRELATION_ID, self.correlation_id);
        out.insert(trace_context::TRACEPARENT.clone(), self.traceparent);
    }
}

// === impl Inner ===

impl Serve for Inner {
    /// Steps 5, 6 and 9 around the rest.
    fn serve(&self, request: Request) -> impl Future<Output = Response> + Send + '_ {
        let request_id = request.headers().get(X_REQUEST_ID).cloned();
        // On the heap once: the timeout and the unwind guard then move a
        // pointer, not the whole request future.
        let routed = Box::pin(self.route(request));
        let guarded = AssertUnwindSafe(tokio::time::timeout(self.request_timeout, routed));
        async move {
            let response = match guarded.catch_unwind().await {
                Ok(Ok(response)) => response,
                Ok(Err(_elapsed)) => bare(StatusCode::GATEWAY_TIMEOUT),
                Err(_panic) => {
                    let request_id = request_id.as_ref().and_then(|id| id.to_str().ok());
                    tracing::error!(request_id, "a request panicked; answered 500");
                    bare(StatusCode::INTERNAL_SERVER_ERROR)
                }
            };
            status_body(response, request_id.as_ref())
        }
    }
}

impl Inner {
    /// Step 10: matches once against the current catalog and pins the
    /// request to it.
    #[allow(
        clippy::manual_async_fn,
        reason = "an `async fn` keeps its arguments twice"
    )]
    fn route(&self, request: Request) -> impl Future<Output = Response> + Send + '_ {
        // All inside the future: the unwind guard around it covers it.
        async move {
            if let Some(published) = self.published.as_ref().filter(|p| p.serves(&request)) {
                // Boxed: a cold path, kept out of every request's future.
                return Box::pin(published.respond(request, &self.registry)).await;
            }
            let matched = match self.matched(&request) {
                Ok(matched) => matched,
                Err(err) => return err.into_response(error::request_id(request.headers()), None),
            };
            // The catalog and route again after the call: cheaper to hold
            // than the method's deprecation itself.
            let (catalog, route) = (matched.catalog.clone(), matched.route);
            let mut response = self.admit(matched, request).await;
            if let Some(deprecation) = &catalog.method(catalog.route(route)).deprecation {
                deprecation.write(response.headers_mut());
            }
            response
        }
    }

    /// The route of `request`, or the 404 or 405 that says there is none (or
    /// the 400 for a path variable that does not decode).
    fn matched(&self, request: &Request) -> Result<RouteMatch, Error> {
        let catalog = self.registry.load();
        let (route, captures) = match catalog.lookup(request.method(), request.uri().path()) {
            Lookup::Found { route, captures } => (route, Ok(captures)),
            Lookup::Undecodable { route, var, reason } => (route, Err((var, reason))),
            Lookup::MethodNotAllowed { allow } => {
                let allow = allow
                    .iter()
                    .map(http::Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Error::MethodNotAllowed {
                    method: request.method().clone(),
                    allow: HeaderValue::from_str(&allow).unwrap_or(HeaderValue::from_static("")),
                });
            }
            Lookup::NotFound => {
                return Err(Error::RouteNotFound {
                    method: request.method().clone(),
                    path: request.uri().path().into(),
                });
            }
        };
        if let Some(context) = RequestContext::of(request) {
            context.set_route(&catalog, route);
        }
        let captures = captures.map_err(|(var, reason)| {
            let variable = catalog.route(route).template.variables.get(var);
            let name = variable.map(|v| v.field_path_string()).unwrap_or_default();
            Error::invalid_field(name, reason.to_string())
        })?;
        Ok(RouteMatch {
            catalog,
            route,
            captures,
        })
    }

    /// Steps 11–14.
    #[allow(
        clippy::manual_async_fn,
        reason = "an `async fn` keeps its arguments twice"
    )]
    fn admit(
        &self,
        matched: RouteMatch,
        mut request: Request,
    ) -> impl Future<Output = Response> + Send + '_ {
        async move {
            if let Some(auth) = &self.auth {
                if let Err(mut err) =
                    policy::authenticate(auth, &matched.method().policy, &mut request).await
                {
                    if let Some(limits) = &self.rate_limit {
                        err = policy::count_failed_authentication(limits, &matched, &request, err)
                            .await;
                    }
                    return err.into_response(error::request_id(request.headers()), None);
                }
            }
            let decision = match &self.rate_limit {
                Some(limits) => match policy::rate_limit(limits, &matched, &request).await {
                    Ok(decision) => decision,
                    Err(err) => {
                        return err.into_response(error::request_id(request.headers()), None)
                    }
                },
                None => None,
            };
            let metadata = match self.headers.upstream_metadata(&request) {
                Ok(metadata) => metadata,
                Err(err) => return err.into_response(error::request_id(request.headers()), None),
            };
            let mut response = gateway::handle(&self.gateway, matched, metadata, request).await;
            self.headers.return_upstream_headers(&mut response);
            if let Some(decision) = decision {
                decision.write_headers(response.headers_mut());
            }
            response
        }
    }
}

/// A response that only knows its status; [`status_body`] gives it a body.
fn bare(status: StatusCode) -> Response {
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = status;
    response
}

/// Step 5: gives a `google.rpc.Status` body to an error response that has
/// none of ours (a timeout, a panic, a status from a tower layer).
fn status_body(response: Response, request_id: Option<&HeaderValue>) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.extensions().get::<Arc<Error>>().is_some()
    {
        return response;
    }
    let request_id = request_id
        .and_then(|id| id.to_str().ok())
        .unwrap_or_default();
    let (parts, _) = response.into_parts();
    let mut rebuilt = error::bare_status_response(status, request_id);
    for (name, value) in &parts.headers {
        if name != http::header::CONTENT_TYPE && name != http::header::CONTENT_LENGTH {
            rebuilt.headers_mut().insert(name, value.clone());
        }
    }
    rebuilt
}
