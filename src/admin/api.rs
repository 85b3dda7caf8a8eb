//! The admin API (`/admin/v1/...`): register, replace, validate and delete
//! descriptor sets, manage upstreams, list routes. Every change goes through
//! [`Registry::apply`]; errors are `google.rpc.Status` bodies like the data
//! plane's. Protected by a bearer token (compared in constant time) when one
//! is configured.
//!
//! Statuses: 201 for a new set, 200 for a replaced or unchanged one; 409 when
//! it collides with another set (a route, a file or a name defined
//! differently, or nothing new); 400 for anything else malformed or invalid
//! (with every problem as a `google.rpc.BadRequest` violation); 404 for
//! unknown names; 413 over `admin.max_upload_bytes`.
//!
//! `GET /admin/v1/traffic` is each route's request and error counts and
//! latency histogram, cumulative, for the console's live figures
//! ([`traffic`](super::traffic)).
//!
//! `POST /admin/v1/discover:refresh` reads the schema of every server of
//! `discover` now and registers what changed, as the refresher would: 200
//! listing each server's set, digest and whether it changed; else the
//! first failure: the registry's refusal as for an upload (409, 400), or
//! 503 naming the server and why it could not be read (the last good set
//! keeps serving); 404 without `discover`. Names beginning `discovered-`
//! are the discovered sets' (listed with `origin: "discovered from URL"`):
//! an upload cannot take one.
//!
//! `POST /admin/v1/tls/reload` reads the TLS listener's certificate, key and
//! CA files again: 200 listing each certificate and its expiry, or 400
//! (`FAILED_PRECONDITION`) saying why the files were refused while the
//! current certificates keep serving; 404 without `tls`.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::SystemTime,
};

use axum::{
    body::Body,
    extract::{Path, RawQuery, Request, State},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post, put},
    Router,
};
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use super::{traffic, ApiSettings};
use crate::{
    config::{self, AdminToken, UpstreamConfig},
    discovery::{Discovery, DiscoveryError},
    error::Error,
    observe::metrics::Metrics,
    policy::{BucketId, PolicyRules},
    registry::{
        check_name, ApplyError, Catalog, Change, CompileError, LoadError, ProtoSources, Registry,
        UploadFormat, UpstreamSetting, UpstreamSource, DEFAULT_UPSTREAM_TIMEOUT, DISCOVERED_PREFIX,
    },
    request_ids,
    tls::Termination,
};

/// Largest JSON body of an upstream change.
const MAX_JSON_BYTES: usize = 64 << 10;

#[derive(Debug, Clone)]
struct Api {
    registry: Arc<Registry>,
    metrics: Metrics,
    settings: ApiSettings,
    tls: Option<Arc<Termination>>,
    discovery: Option<Arc<Discovery>>,
}

/// An [`Error`] as a handler result; [`with_request_id`] adds the request id.
#[derive(Debug)]
struct ApiError(Error);

type Reply = Result<Response, ApiError>;

/// The admin API routes, with their own request ids and token check.
pub(super) fn router(
    registry: Arc<Registry>,
    metrics: Metrics,
    settings: ApiSettings,
    tls: Option<Arc<Termination>>,
    discovery: Option<Arc<Discovery>>,
) -> Router {
    let token = settings.token.clone();
    let api = Api {
        registry,
        metrics,
        settings,
        tls,
        discovery,
    };
    Router::new()
        .route("/admin/v1/descriptor-sets", get(list_sets))
        .route("/admin/v1/descriptor-sets:validate", post(validate_set))
        .route(
            "/admin/v1/descriptor-sets/{name}",
            put(put_set).get(get_set).delete(delete_set),
        )
        .route("/admin/v1/routes", get(list_routes))
        .route("/admin/v1/upstreams", get(list_upstreams))
        .route(
            "/admin/v1/upstreams/{pattern}",
            put(put_upstream).delete(delete_upstream),
        )
        .route("/admin/v1/traffic", get(live_traffic))
        .route("/admin/v1/tls/reload", post(reload_tls))
        .route("/admin/v1/discover:refresh", post(refresh_discovery))
        .fallback(not_found)
        .with_state(api)
        .layer(middleware::from_fn_with_state(token, require_token))
        .layer(middleware::from_fn(with_request_id))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

// === middleware ===

/// Renders handler errors with the request id in their `RequestInfo` detail.
async fn with_request_id(request: Request, next: Next) -> Response {
    let request_id = request_ids::request_id(request.headers()).to_owned();
    let response = next.run(request).await;
    let Some(err) = response.extensions().get::<Arc<Error>>().cloned() else {
        return response;
    };
    let (mut parts, _) = response.into_parts();
    let body = err.status_json(&request_id, None).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// Compares SHA-256 digests in constant time, so neither the token nor its
/// length leaks through timing.
async fn require_token(
    State(token): State<Option<Arc<AdminToken>>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        let matches: bool = Sha256::digest(given.as_bytes())
            .ct_eq(&Sha256::digest(token.0.as_bytes()))
            .into();
        if !matches {
            return ApiError(Error::AdminUnauthenticated).into_response();
        }
    }
    next.run(request).await
}

async fn not_found(request: Request) -> ApiError {
    ApiError(Error::NotFound(
        format!(
            "no admin endpoint {} {}",
            request.method(),
            request.uri().path()
        )
        .into(),
    ))
}

// === live figures ===

async fn live_traffic(State(api): State<Api>) -> Response {
    let text = api.metrics.render(&api.registry.figures());
    json_response(
        StatusCode::OK,
        &json!({ "routes": traffic::by_route(&text) }),
    )
}

// === TLS ===

async fn reload_tls(State(api): State<Api>) -> Reply {
    let Some(tls) = &api.tls else {
        return Err(ApiError(Error::NotFound(
            "TLS is not configured (no `tls` key)".into(),
        )));
    };
    match tls.reload("admin API") {
        Ok(loaded) => Ok(json_response(StatusCode::OK, &json!(loaded))),
        Err(err) => Err(ApiError(Error::FailedPrecondition(
            format!("TLS reload refused, the current certificates keep serving: {err}").into(),
        ))),
    }
}

// === discovery ===

async fn refresh_discovery(State(api): State<Api>) -> Reply {
    let Some(discovery) = &api.discovery else {
        return Err(ApiError(Error::NotFound(
            "discovery is not configured (no `discover` key)".into(),
        )));
    };
    let mut sources = Vec::new();
    for result in discovery.refresh().await {
        let discovered = result.map_err(|err| match err {
            DiscoveryError::Refused { source, .. } => ApiError::from(source),
            read @ DiscoveryError::Read { .. } => ApiError(Error::Unavailable(
                format!("{read}; the last good set keeps serving").into(),
            )),
        })?;
        sources.push(json!({
            "url": discovered.url,
            "set": discovered.set,
            "digest": format!("sha256:{}", discovered.digest),
            "changed": discovered.changed,
        }));
    }
    let generation = api.registry.load().generation();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "generation": generation, "sources": sources }),
    ))
}

// === descriptor sets ===

async fn put_set(
    State(api): State<Api>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Reply {
    check_name(&name).map_err(|reason| invalid("name", reason))?;
    if name.starts_with(DISCOVERED_PREFIX) {
        return Err(invalid(
            "name",
            format!("names beginning `{DISCOVERED_PREFIX}` are those of sets read through server reflection (`discover`)"),
        ));
    }
    let upstream = upstream_param(query.as_deref())?;
    let bytes = read_upload(&name, request, api.settings.max_upload_bytes).await?;
    let existed = api.registry.load().sets().iter().any(|s| s.name == name);
    let applied = api
        .registry
        .apply(Change::PutSet {
            name: name.clone(),
            bytes,
            upstream,
        })
        .await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let catalog = &applied.catalog;
    let mut body = catalog
        .sets()
        .iter()
        .find(|s| s.name == name)
        .map_or(Value::Null, |set| set_json(catalog, set));
    body["changed"] = Value::from(applied.changed);
    body["generation"] = Value::from(catalog.generation());
    Ok(json_response(status, &body))
}

/// A dry run: the routes the set would add, change or remove, and every problem.
async fn validate_set(
    State(api): State<Api>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Reply {
    let name = query_param(query.as_deref(), "name").unwrap_or_else(|| "candidate".to_owned());
    check_name(&name).map_err(|reason| invalid("name", reason))?;
    let upstream = upstream_param(query.as_deref())?;
    let bytes = read_upload(&name, request, api.settings.max_upload_bytes).await?;
    let current = api.registry.load();
    let change = Change::PutSet {
        name,
        bytes,
        upstream,
    };
    let body = match api.registry.dry_run(change).await {
        Ok(applied) => {
            let (added, changed, removed) = route_diff(&current, &applied.catalog, &api.listing());
            json!({
                "valid": true,
                "added": added,
                "changed": changed,
                "removed": removed,
                "problems": [],
            })
        }
        Err(ApplyError::Load(err)) => {
            let problems: Vec<Value> = err
                .problems()
                .iter()
                .map(|p| {
                    json!({
                        "set": p.set,
                        "method": p.method,
                        "message": p.to_string(),
                        "conflictsWithSet": p.conflicts_with_set,
                    })
                })
                .collect();
            json!({ "valid": false, "added": [], "changed": [], "removed": [], "problems": problems })
        }
        Err(err) => return Err(err.into()),
    };
    Ok(json_response(StatusCode::OK, &body))
}

async fn list_sets(State(api): State<Api>) -> Response {
    let catalog = api.registry.load();
    let sets: Vec<Value> = catalog
        .sets()
        .iter()
        .map(|set| set_json(&catalog, set))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({ "generation": catalog.generation(), "descriptorSets": sets }),
    )
}

/// The set's bytes back, as uploaded.
async fn get_set(State(api): State<Api>, Path(name): Path<String>) -> Reply {
    let catalog = api.registry.load();
    let set = catalog
        .sets()
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| unknown_set(&name))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        )],
        set.bytes.clone(),
    )
        .into_response())
}

async fn delete_set(State(api): State<Api>, Path(name): Path<String>) -> Reply {
    let applied = api.registry.apply(Change::DeleteSet(name.clone())).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "deleted": name, "generation": applied.catalog.generation() }),
    ))
}

// === routes and upstreams ===

async fn list_routes(State(api): State<Api>) -> Response {
    let catalog = api.registry.load();
    let routes: Vec<Value> = catalog
        .routes()
        .iter()
        .map(|route| route_json(&catalog, route, &api.listing()))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({ "generation": catalog.generation(), "routes": routes }),
    )
}

/// What serves each pattern and why: `source` is `config`, `set` (uploaded
/// with the set named by `set`) or `admin`; for one pattern, `admin` wins
/// over `set`, which wins over `config`.
async fn list_upstreams(State(api): State<Api>) -> Response {
    let upstreams: Vec<Value> = api
        .registry
        .upstream_sources()
        .await
        .iter()
        .map(|(u, source)| {
            let (source, set) = match source {
                UpstreamSource::Config => ("config", None),
                UpstreamSource::Set(name) => ("set", Some(name.as_str())),
                UpstreamSource::Admin => ("admin", None),
            };
            let mut json = json!({ "pattern": &*u.name, "url": u.url, "timeout": humantime::format_duration(u.timeout).to_string(), "source": source });
            if let Some(set) = set {
                json["set"] = set.into();
            }
            json
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "upstreams": upstreams }))
}

/// Body: `{"url": "http://host:port", "timeout": "5s"}` (timeout optional).
async fn put_upstream(
    State(api): State<Api>,
    Path(pattern): Path<String>,
    request: Request,
) -> Reply {
    let bytes = read_body(request.into_body(), MAX_JSON_BYTES).await?;
    let setting: UpstreamSetting = serde_json::from_slice(&bytes)
        .map_err(|err| ApiError(Error::InvalidJson(err.to_string().into())))?;
    let upstream = UpstreamConfig {
        pattern: pattern.clone(),
        url: setting.url.clone(),
        timeout: setting.timeout.unwrap_or(DEFAULT_UPSTREAM_TIMEOUT),
        ca_file: None,
        client_cert_file: None,
        client_key_file: None,
        server_name: None,
    };
    config::validate_upstream(&upstream).map_err(|reason| invalid("upstream", reason))?;
    let applied = api
        .registry
        .apply(Change::PutUpstream {
            pattern: pattern.clone(),
            setting,
        })
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "pattern": pattern,
            "url": upstream.url,
            "changed": applied.changed,
            "generation": applied.catalog.generation(),
        }),
    ))
}

async fn delete_upstream(State(api): State<Api>, Path(pattern): Path<String>) -> Reply {
    let applied = api
        .registry
        .apply(Change::DeleteUpstream(pattern.clone()))
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "deleted": pattern, "generation": applied.catalog.generation() }),
    ))
}

// === helpers ===

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response()
}

fn invalid(field: &str, reason: String) -> ApiError {
    ApiError(Error::invalid_field(field, reason))
}

fn unknown_set(name: &str) -> ApiError {
    ApiError(Error::NotFound(
        format!("descriptor set `{name}` is not loaded").into(),
    ))
}

fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// `?upstream=URL`, checked like a configured upstream URL.
fn upstream_param(query: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(url) = query_param(query, "upstream") else {
        return Ok(None);
    };
    let upstream = UpstreamConfig {
        pattern: "*".to_owned(),
        url: url.clone(),
        timeout: DEFAULT_UPSTREAM_TIMEOUT,
        ca_file: None,
        client_cert_file: None,
        client_key_file: None,
        server_name: None,
    };
    config::validate_upstream(&upstream).map_err(|reason| invalid("upstream", reason))?;
    Ok(Some(url))
}

/// The uploaded set as a serialized `FileDescriptorSet`: the body itself,
/// or `.proto` sources (tar, zip, gzip or multipart) compiled into one. A
/// content type that says nothing about the bytes (none, octet-stream, or
/// the form type curl sends with `--data-binary`) lets the bytes tell.
async fn read_upload(name: &str, request: Request, limit: usize) -> Result<Bytes, ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let body = read_body(request.into_body(), limit).await?;
    let format = match essence.as_str() {
        "" | "application/octet-stream" | "application/x-www-form-urlencoded" => {
            UploadFormat::sniff(&body)
        }
        "application/x-protobuf" => UploadFormat::DescriptorSet,
        "application/x-tar" | "application/tar" => UploadFormat::Tar,
        "application/zip" | "application/x-zip-compressed" => UploadFormat::Zip,
        "application/gzip" | "application/x-gzip" => UploadFormat::Gzip,
        "multipart/form-data" => {
            let sources = ProtoSources::from_multipart(&content_type, body, limit).await;
            return compile(name, move || sources?.compile()).await;
        }
        other => {
            return Err(invalid(
                "content-type",
                format!("`{other}` is not application/x-protobuf, application/x-tar, application/zip, application/gzip or multipart/form-data"),
            ))
        }
    };
    match format {
        UploadFormat::DescriptorSet => Ok(body),
        format => compile(name, move || format.descriptor_set(body, limit)).await,
    }
}

/// Runs the compiler off the runtime; its error refuses the set `name`.
async fn compile(
    name: &str,
    compile: impl FnOnce() -> Result<Bytes, CompileError> + Send + 'static,
) -> Result<Bytes, ApiError> {
    let compiled = tokio::task::spawn_blocking(compile)
        .await
        .map_err(|_| ApiError(Error::Internal("the compiler stopped".into())))?;
    compiled.map_err(|err| ApiError(LoadError::single(name, err.to_string()).into()))
}

/// The whole body, or 413 past `limit`.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|err| {
        let too_large = std::error::Error::source(&err)
            .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
        ApiError(if too_large {
            Error::PayloadTooLarge { limit }
        } else {
            Error::BodyRead(err.to_string().into())
        })
    })
}

fn set_json(catalog: &Catalog, set: &crate::registry::LoadedSet) -> Value {
    let services: HashSet<&str> = set.services.iter().map(String::as_str).collect();
    let routes = catalog
        .routes()
        .iter()
        .filter(|route| {
            let method = catalog.method(route);
            services.contains(method.descriptor.parent_service().full_name())
        })
        .count();
    json!({
        "name": set.name,
        "digest": format!("sha256:{}", set.digest),
        "size": set.size,
        "services": set.services,
        "routeCount": routes,
        "loadedAt": rfc3339(set.loaded_at),
        "upstream": set.upstream,
        "managed": set.managed,
        "origin": match set.discovered_from() {
            Some(url) => format!("discovered from {url}"),
            None if set.managed => "uploaded".to_owned(),
            None => "config".to_owned(),
        },
    })
}

/// What a route listing needs besides the catalog.
struct Listing<'a> {
    /// Whether tokens are checked at all; without, every route is open
    /// whatever its policy says.
    auth: bool,
    /// The quotas the policies' buckets count against.
    policies: &'a PolicyRules,
}

/// A route, its method, upstream, policy (with its quotas) and deprecation.
fn route_json(catalog: &Catalog, route: &crate::registry::Route, listing: &Listing<'_>) -> Value {
    let method = catalog.method(route);
    let policy = &method.policy;
    let auth = listing.auth;
    let quota = |bucket: Option<BucketId>| {
        let quota = listing.policies.quota(bucket?)?;
        Some(json!({
            "requests": quota.requests,
            "per": humantime::format_duration(quota.per).to_string(),
        }))
    };
    // The headers the route answers with, as a client sees them.
    let deprecation = method.deprecation.as_ref().map(|deprecation| {
        let mut headers = http::HeaderMap::new();
        deprecation.write(&mut headers);
        headers
            .iter()
            .map(|(name, value)| {
                let value = value.to_str().unwrap_or_default();
                (name.as_str().to_owned(), Value::from(value))
            })
            .collect::<serde_json::Map<_, _>>()
    });
    json!({
        "route": &*route.label,
        "httpMethod": route.http_method.as_str(),
        "path": route.template.to_string(),
        "rpc": method.descriptor.full_name(),
        "kind": format!("{:?}", method.kind),
        "upstream": method.upstream.as_ref().map(|u| json!({ "pattern": &*u.name, "url": u.url })),
        "policy": {
            "auth": if auth { "jwt" } else { "off" },
            "allowAnonymous": policy.allow_anonymous || !auth,
            "roles": policy.roles.iter().map(|r| &**r).collect::<Vec<_>>(),
            "scopes": policy.scopes.iter().map(|s| &**s).collect::<Vec<_>>(),
            "clientCertificate": policy.client_certificate,
            "rateLimited": policy.rate_limit.per_user.is_some() || policy.rate_limit.per_ip.is_some(),
            "quota": {
                "perUser": quota(policy.rate_limit.per_user),
                "perIp": quota(policy.rate_limit.per_ip),
            },
        },
        "deprecation": deprecation,
    })
}

/// Routes in `after` that are new, changed (other method or upstream), or gone.
fn route_diff(
    before: &Catalog,
    after: &Catalog,
    listing: &Listing<'_>,
) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    // Route label → (method, upstream URL): what a client of the route sees change.
    let index = |catalog: &Catalog| -> HashMap<Box<str>, (String, Option<String>)> {
        catalog
            .routes()
            .iter()
            .map(|route| {
                let method = catalog.method(route);
                let upstream = method.upstream.as_ref().map(|u| u.url.clone());
                let name = method.descriptor.full_name().to_owned();
                (route.label.clone(), (name, upstream))
            })
            .collect()
    };
    let (old, new) = (index(before), index(after));
    let mut added = Vec::new();
    let mut changed = Vec::new();
    for route in after.routes() {
        match old.get(&route.label) {
            None => added.push(route_json(after, route, listing)),
            Some(was) if Some(was) != new.get(&route.label) => {
                changed.push(route_json(after, route, listing));
            }
            Some(_) => {}
        }
    }
    let removed = before
        .routes()
        .iter()
        .filter(|route| !new.contains_key(&route.label))
        .map(|route| route_json(before, route, listing))
        .collect();
    (added, changed, removed)
}

pub(super) fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

// === impl Api ===

impl Api {
    fn listing(&self) -> Listing<'_> {
        Listing {
            auth: self.settings.auth,
            policies: self.registry.policies(),
        }
    }
}

// === impl ApiError ===

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.0.into_response("", None)
    }
}

impl From<ApplyError> for ApiError {
    fn from(err: ApplyError) -> Self {
        Self(match err {
            ApplyError::Load(err) => err.into(),
            ApplyError::InvalidName(reason) => Error::invalid_field("name", reason),
            ApplyError::EmptySet(_) => Error::invalid_field("body", err.to_string()),
            ApplyError::UnknownSet(_) | ApplyError::UnknownUpstream(_) => {
                Error::NotFound(err.to_string().into())
            }
            ApplyError::FixedSet(_) => Error::FailedPrecondition(err.to_string().into()),
            ApplyError::Conflict(_) => Error::Aborted(err.to_string().into()),
            ApplyError::SharedUnavailable => Error::Unavailable(err.to_string().into()),
            ApplyError::Store(_) | ApplyError::Interrupted => {
                tracing::error!(error = %err, "admin change failed");
                Error::Internal(err.to_string().into())
            }
        })
    }
}
