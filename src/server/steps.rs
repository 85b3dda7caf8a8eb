//! The data plane: the steps every request goes through, outermost first,
//! run by one future per request (two with CORS on). Each step is plain code
//! of its module (`request_ids`, `observe`, `policy`, `gateway`) called in
//! order here; a stack of middleware layers would box a future and clone
//! the stack below it at every layer of every request (measured: a quarter
//! of the gateway's CPU on a GET).
//!
//! 1. ids: malformed ids and spoofed identity headers dropped; request and
//!    correlation ids and this hop's `traceparent`, kept or minted
//! 2. the request span, carrying the ids (the route is recorded at 9), and
//!    the spans exported to an OpenTelemetry collector, when it is sampled
//! 3. access log and 4. metrics: outside everything that can fail, so that
//!    every final response is logged and counted (404, 405, timeouts, 5xx)
//! 5. CORS (tower-http): preflights never reach the router or an upstream
//! 6. a `google.rpc.Status` body for responses that only know a status
//! 7. a panic is a 500, never a dropped connection
//! 8. the overall request deadline (per-upstream ones travel as `grpc-timeout`)
//! 9. an HTTP/2 header list over 16 KiB is a 431 (h2 takes up to its cap);
//!    then the published API (`openapi`: the document and the reference
//!    page), else the route, matched once against the current catalog (its
//!    deprecation headers go on the response)
//! 10. authentication and the method's policy
//! 11. rate limit: the consumer's issuer and subject, else the client IP
//!     (a failed authentication at 10 counts against the client IP too)
//! 12. the upstream metadata, decided once; allow-listed upstream headers back
//! 13. the gateway: the body read within its limit, transcode, call, answer

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
use http::{HeaderValue, StatusCode};
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
        otlp::Traces,
        RequestContext,
    },
    openapi::Published,
    policy::{self, Authenticator, HeaderPolicy, QuotaStore, RateLimiting},
    registry::{Registry, RouteMatch},
    request_ids::{self, RequestIds, X_REQUEST_ID},
    router::Lookup,
    timers::{self, Kind, Timer},
};

/// A run of steps as a tower service: one future per request, boxed in place.
pub(super) struct StepService<T>(Arc<T>);

/// What a [`StepService`] runs.
pub(super) trait RunSteps: Send + Sync + 'static {
    fn run(&self, request: Request) -> impl Future<Output = Response> + Send + '_;
}

/// Steps 1–5, then [`Answering`]: the data-plane service.
pub(super) type DataPlane = StepService<Observing>;

/// What the steps need, built once at start.
pub(super) struct StepParts {
    pub(super) headers: Arc<HeaderPolicy>,
    pub(super) access_log: Option<Arc<AccessLog>>,
    pub(super) metrics: Option<Metrics>,
    /// Spans to the OTLP collector; `None` when off.
    pub(super) traces: Option<Arc<Traces>>,
    pub(super) cors: Option<CorsLayer>,
    pub(super) request_timeout: Duration,
    pub(super) registry: Arc<Registry>,
    pub(super) auth: Option<Arc<Authenticator>>,
    pub(super) rate_limit: Option<Arc<RateLimiting<QuotaStore>>>,
    pub(super) gateway: Arc<Gateway>,
    /// The OpenAPI document and reference page; `None` when off.
    pub(super) published: Option<Arc<Published>>,
}

/// Steps 1–5: the ids, the spans, the log and metrics, CORS.
pub(super) struct Observing {
    headers: Arc<HeaderPolicy>,
    access_log: Option<Arc<AccessLog>>,
    metrics: Option<Metrics>,
    traces: Option<Arc<Traces>>,
    cors: Option<Cors<StepService<Answering>>>,
    answering: Arc<Answering>,
}

/// Steps 6–13, behind CORS: the answer.
pub(super) struct Answering {
    request_timeout: Duration,
    registry: Arc<Registry>,
    auth: Option<Arc<Authenticator>>,
    rate_limit: Option<Arc<RateLimiting<QuotaStore>>>,
    headers: Arc<HeaderPolicy>,
    gateway: Arc<Gateway>,
    published: Option<Arc<Published>>,
}

// === impl StepService ===

impl DataPlane {
    pub(super) fn new(steps: StepParts) -> Self {
        let answering = Arc::new(Answering {
            request_timeout: steps.request_timeout,
            registry: steps.registry,
            auth: steps.auth,
            rate_limit: steps.rate_limit,
            headers: steps.headers.clone(),
            gateway: steps.gateway,
            published: steps.published,
        });
        Self(Arc::new(Observing {
            headers: steps.headers,
            access_log: steps.access_log,
            metrics: steps.metrics,
            traces: steps.traces,
            cors: steps
                .cors
                .map(|cors| tower::Layer::layer(&cors, StepService(answering.clone()))),
            answering,
        }))
    }
}

impl<T> fmt::Debug for StepService<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepService").finish_non_exhaustive()
    }
}

impl<T> Clone for StepService<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T: RunSteps> Service<Request> for StepService<T> {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let steps = self.0.clone();
        boxed::in_place(|| async move { Ok(steps.run(request).await) })
    }
}

// === impl Observing ===

// Plain functions returning `async move` blocks, not `async fn`s: see
// "Keep the request's future small" in docs/architecture.md.
impl RunSteps for Observing {
    fn run(&self, mut request: Request) -> impl Future<Output = Response> + Send + '_ {
        policy::sanitize(&self.headers, &mut request);
        let ids = RequestIds::decide(&mut request, self.traces.as_ref().map(|t| t.sampler()));
        let span = observe::request_span(&request, ids.hop().id());
        let traced = self
            .traces
            .as_ref()
            .and_then(|_| Traces::begin(&mut request, ids.hop()));
        async move {
            let mut response = self.observed(request, &ids).instrument(span).await;
            if let (Some(traces), Some(traced)) = (&self.traces, traced) {
                response = traces.finish(traced, response);
            }
            ids.echo(&mut response);
            response
        }
    }
}

impl Observing {
    /// Steps 3, 4 and 5.
    fn observed(
        &self,
        mut request: Request,
        ids: &RequestIds,
    ) -> impl Future<Output = Response> + Send + '_ {
        let logged = self
            .access_log
            .as_ref()
            .map(|_| access_log::begin(&mut request, ids));
        let counted = self.metrics.as_ref().map(|_| Metrics::begin(&mut request));
        let request_id = Some(ids.request_id().clone());
        async move {
            let mut response = match &self.cors {
                // Boxed: CORS, when off, must not size every request's future.
                Some(cors) => match Box::pin(cors.clone().oneshot(request)).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                },
                None => self.answering.answer(request, request_id).await,
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

// === impl Answering ===

impl RunSteps for Answering {
    /// Behind CORS, which takes a tower service: the id read again.
    fn run(&self, request: Request) -> impl Future<Output = Response> + Send + '_ {
        let request_id = request.headers().get(X_REQUEST_ID).cloned();
        self.answer(request, request_id)
    }
}

impl Answering {
    /// Steps 6, 7 and 8 around the rest. `request_id`: the request's
    /// `x-request-id`, as step 1 decided it.
    fn answer(
        &self,
        request: Request,
        request_id: Option<HeaderValue>,
    ) -> impl Future<Output = Response> + Send + '_ {
        // On the heap once: the timeout and the unwind guard then move a
        // pointer, not the whole request future.
        let routed = boxed::pinned(|| self.route(request, request_id.clone()));
        let deadline = timers::deadline_after(tokio::time::Instant::now(), self.request_timeout);
        let timer = Timer::until(deadline, Kind::Request);
        let guarded = AssertUnwindSafe(timers::timeout(timer, routed));
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

    /// Step 9: the size of an HTTP/2 request's header list, then the route,
    /// matched once against the current catalog; the request is pinned to it.
    /// `request_id`: its `x-request-id`, for the gateway's error responses.
    #[allow(
        clippy::manual_async_fn,
        reason = "the request's future stays small: docs/architecture.md"
    )]
    fn route(
        &self,
        request: Request,
        request_id: Option<HeaderValue>,
    ) -> impl Future<Output = Response> + Send + '_ {
        // All inside the future: the unwind guard around it covers it.
        async move {
            if let Err(err) = policy::check_header_list(&request) {
                return err.into_response(request_ids::request_id(request.headers()), None);
            }
            if let Some(published) = self.published.as_ref().filter(|p| p.serves(&request)) {
                // Boxed: a cold path, kept out of every request's future.
                return Box::pin(published.respond(request, &self.registry)).await;
            }
            let matched = match self.matched(&request) {
                Ok(matched) => matched,
                Err(err) => {
                    return err.into_response(request_ids::request_id(request.headers()), None)
                }
            };
            // The catalog and route again after the call: cheaper to hold
            // than the method's deprecation itself.
            let (catalog, route) = (matched.catalog.clone(), matched.route);
            let mut response = self.admit(matched, request, request_id).await;
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
            context.set_route(catalog.clone(), route);
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

    /// Steps 10–13.
    #[allow(
        clippy::manual_async_fn,
        reason = "the request's future stays small: docs/architecture.md"
    )]
    fn admit(
        &self,
        matched: RouteMatch,
        mut request: Request,
        request_id: Option<HeaderValue>,
    ) -> impl Future<Output = Response> + Send + '_ {
        async move {
            if let Some(auth) = &self.auth {
                if let Err(mut err) =
                    policy::authenticate(auth, &matched.method().policy, &mut request).await
                {
                    if let Some(limits) = &self.rate_limit {
                        err = policy::count_failed_authentication(
                            limits,
                            &matched.method().policy,
                            &request,
                            err,
                        )
                        .await;
                    }
                    return err.into_response(request_ids::request_id(request.headers()), None);
                }
            }
            let decision = match &self.rate_limit {
                Some(limits) => {
                    match policy::rate_limit(limits, &matched.method().policy, &request).await {
                        Ok(decision) => decision,
                        Err(err) => {
                            return err
                                .into_response(request_ids::request_id(request.headers()), None)
                        }
                    }
                }
                None => None,
            };
            let metadata = match self.headers.upstream_metadata(&request) {
                Ok(metadata) => metadata,
                Err(err) => {
                    return err.into_response(request_ids::request_id(request.headers()), None)
                }
            };
            let mut response =
                gateway::handle(&self.gateway, matched, metadata, request, request_id).await;
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

/// Step 6: gives a `google.rpc.Status` body to an error response that has
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
