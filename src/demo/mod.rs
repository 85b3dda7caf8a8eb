//! In-memory example gRPC backends: `acme.orders.v1`, `acme.orders.v2` and `acme.users.v1`.
//! `protogate demo` puts them behind the gateway with JWT auth on (see [`auth`]).
//!
//! `protogate demo` runs them in-process and the integration tests use them as real
//! upstreams, so they behave like a small AIP-style API: validation errors carry
//! `google.rpc.BadRequest`, state conflicts `google.rpc.PreconditionFailure`, lists page
//! with opaque tokens. Both order API versions read and write one store, so a change made
//! through one version is visible through the other.

mod auth;
mod orders_v1;
mod orders_v1_streaming;
mod orders_v2;
mod store;
mod tls;
mod users;

use std::{future::Future, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use prost::Message;
use tokio::net::TcpListener;
use tonic::{
    service::Routes,
    transport::{server::TcpIncoming, Error, Server},
    Code, Status,
};

use crate::pb::{
    acme::{
        orders::{
            v1::order_service_server::OrderServiceServer as OrdersV1Server,
            v2::order_service_server::OrderServiceServer as OrdersV2Server,
        },
        users::v1::user_service_server::UserServiceServer,
    },
    google::rpc::{
        bad_request::FieldViolation, precondition_failure, BadRequest, PreconditionFailure,
    },
};
use crate::{
    config::{AdminToken, CorsConfig, DeprecationConfig},
    registry::{CompileError, DescriptorSet, ProtoSources, RouteTable},
    Config,
};

/// All example services over one seeded in-memory store.
#[must_use]
pub fn example_routes() -> Routes {
    let store = Arc::new(store::Store::seeded());
    let orders_v2 = orders_v2::OrdersV2::new(Arc::clone(&store));
    v1_and_users(store).add_service(OrdersV2Server::new(orders_v2))
}

/// The example services split by API version over one store, as two
/// backends would run them: (orders v1 and users, orders v2).
#[must_use]
pub fn example_routes_by_version() -> (Routes, Routes) {
    let store = Arc::new(store::Store::seeded());
    let orders_v2 = orders_v2::OrdersV2::new(Arc::clone(&store));
    let v2 = Routes::new(OrdersV2Server::new(orders_v2)).add_service(health_service());
    (v1_and_users(store), v2)
}

fn v1_and_users(store: Arc<store::Store>) -> Routes {
    let orders_v1 = orders_v1::OrdersV1::new(Arc::clone(&store));
    Routes::new(OrdersV1Server::new(orders_v1))
        .add_service(UserServiceServer::new(users::Users::new(store)))
        .add_service(health_service())
}

/// grpc.health.v1, reporting the server as a whole (service "") as SERVING.
fn health_service(
) -> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health> {
    tonic_health::server::health_reporter().1
}

/// Serves the example services on `listener` until `shutdown` resolves.
///
/// # Errors
///
/// When the server fails (see [`Server::serve_with_incoming_shutdown`]).
pub async fn serve_examples(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    serve_routes(listener, example_routes(), shutdown).await
}

async fn serve_routes(
    listener: TcpListener,
    routes: Routes,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    Server::builder()
        .add_routes(routes)
        // Without TCP_NODELAY a small frame after another waits for a delayed ACK (~40 ms).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}

/// A synthetic API for scale measurements: package `bench.v1` with
/// `services` services of 10 annotated methods each (variables, a nested
/// name with a custom verb, three HTTP methods), compiled like an upload.
pub fn synthetic_set(services: usize) -> Result<DescriptorSet, CompileError> {
    use std::fmt::Write as _;
    let mut source = String::from(
        "syntax = \"proto3\";\npackage bench.v1;\nimport \"google/api/annotations.proto\";\n\
         message Req { string id = 1; string name = 2; int32 page_size = 3; }\n\
         message Res { string id = 1; }\n",
    );
    for s in 0..services {
        let _ = writeln!(source, "service S{s} {{");
        for m in 0..10 {
            let (verb, path) = match m % 3 {
                0 => ("get", format!("/v1/s{s}/m{m}/{{id}}")),
                1 => ("post", format!("/v1/{{name=projects/*/s{s}/m{m}/*}}:run")),
                _ => ("delete", format!("/v1/s{s}/m{m}/{{id}}/x")),
            };
            let _ = writeln!(
                source,
                "  rpc M{m}(Req) returns (Res) {{ option (google.api.http) = {{ {verb}: \"{path}\" }}; }}"
            );
        }
        source.push_str("}\n");
    }
    let mut sources = ProtoSources::new(usize::MAX);
    sources.insert("bench.proto", source.into_bytes())?;
    Ok(DescriptorSet {
        name: format!("bench-{services}"),
        bytes: sources.compile()?,
    })
}

/// The example services' descriptor sets, as committed in `descriptor-sets/`
/// (a test keeps them in step with `protos/`).
pub fn descriptor_sets() -> Vec<DescriptorSet> {
    const SETS: [(&str, &[u8]); 3] = [
        (
            "acme.orders.v1",
            include_bytes!("../../descriptor-sets/acme.orders.v1.binpb"),
        ),
        (
            "acme.orders.v2",
            include_bytes!("../../descriptor-sets/acme.orders.v2.binpb"),
        ),
        (
            "acme.users.v1",
            include_bytes!("../../descriptor-sets/acme.users.v1.binpb"),
        ),
    ];
    SETS.iter()
        .map(|(name, bytes)| DescriptorSet {
            name: (*name).to_owned(),
            bytes: Bytes::from_static(bytes),
        })
        .collect()
}

/// `protogate demo`: the example services on two ephemeral loopback ports
/// (orders v1 and users on one, orders v2 on the other, v1 deprecated) and
/// the gateway in front of them on `listen` (admin on `admin_listen`, its
/// API protected by `admin_token` if given), until `shutdown` resolves.
pub async fn run(
    listen: SocketAddr,
    admin_listen: SocketAddr,
    tls_listen: Option<SocketAddr>,
    admin_token: Option<AdminToken>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DemoError> {
    let (v1_routes, v2_routes) = example_routes_by_version();
    let v1_backend = TcpListener::bind("127.0.0.1:0").await?;
    let v2_backend = TcpListener::bind("127.0.0.1:0").await?;
    let backend_url = format!("http://{}", v1_backend.local_addr()?);
    let v2_url = format!("http://{}", v2_backend.local_addr()?);
    let (stop_backend, backend_stopped) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut stopped = backend_stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let backend_task = tokio::spawn(serve_routes(v1_backend, v1_routes, stopped()));
    let v2_task = tokio::spawn(serve_routes(v2_backend, v2_routes, stopped()));

    let (mut config, tokens) = demo_config(listen, &backend_url, &v2_url)?;
    config.admin.listen = admin_listen;
    config.admin.token = admin_token;
    let ca_file = match tls_listen {
        Some(tls_listen) => {
            let (tls, ca_file) = tls::generate(tls_listen)?;
            config.tls = Some(tls);
            Some(ca_file)
        }
        None => None,
    };
    let mut server = crate::server::Server::new(&config, descriptor_sets())?;
    let listener = bind(listen).await?;
    let addr = listener.local_addr()?;
    let admin = bind(admin_listen).await?;
    let admin_addr = admin.local_addr()?;
    println!("protogate demo: orders v1 and users on {backend_url}, orders v2 on {v2_url}, gateway on http://{addr}\n");
    if let (Some(tls_listen), Some(ca_file)) = (tls_listen, &ca_file) {
        let listener = bind(tls_listen).await?;
        let port = listener.local_addr()?.port();
        server = server.with_tls_listener(listener);
        println!("HTTPS (HTTP/2 and HTTP/1.1) on https://localhost:{port}, with a certificate generated now by a CA of its own;");
        println!("trust that CA for this run with: curl --cacert {} https://localhost:{port}/v1/orders\n", ca_file.display());
    }
    println!("{}", RouteTable(&server.registry().load()));
    println!(
        "API reference: http://{addr}{}   (OpenAPI 3.1: http://{addr}{})\n",
        config.openapi.docs_path, config.openapi.path
    );
    println!("GET /v1/orders is public, DELETE /v1/orders/{{id}} needs the admin role, the rest a token (valid 24h):\n");
    println!("export PROTOGATE_DEMO_TOKEN={}", tokens.user_token);
    println!("export PROTOGATE_DEMO_ADMIN_TOKEN={}\n", tokens.admin_token);
    println!(
        "try: curl -s -H \"Authorization: Bearer $PROTOGATE_DEMO_TOKEN\" http://{addr}/v1/orders/o-1"
    );
    println!("metrics: curl -s http://{admin_addr}/metrics   (also /healthz, /readyz)");
    println!("admin console: http://{admin_addr}/");
    println!("access log: one JSON line per request on stderr, with the diagnostics (RUST_LOG)\n");
    server
        .with_admin_listener(admin)
        .serve(listener, shutdown)
        .await?;
    let _ = stop_backend.send(true);
    if let Some(dir) = ca_file.as_deref().and_then(std::path::Path::parent) {
        let _ = std::fs::remove_dir_all(dir);
    }
    for task in [backend_task, v2_task] {
        task.await
            .map_err(|err| DemoError::Io(std::io::Error::other(err)))??;
    }
    Ok(())
}

/// A listener on `addr`, or an error that names it (as `serve` does).
async fn bind(addr: SocketAddr) -> Result<TcpListener, DemoError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DemoError::Listen { addr, source })
}

/// The demo's gateway config (upstreams, auth, policies, rate limits) and its tokens.
fn demo_config(
    listen: SocketAddr,
    backend_url: &str,
    v2_url: &str,
) -> Result<(Config, auth::DemoAuth), DemoError> {
    let mut demo = auth::generate().map_err(DemoError::Keys)?;
    let mut config = Config {
        listen,
        auth: Some(demo.auth.clone()),
        policies: std::mem::take(&mut demo.policies),
        rate_limit: Some(demo.rate_limit.clone()),
        // Browsers on any page may call it (tokens, not cookies, carry identity).
        cors: Some(CorsConfig {
            allowed_origins: vec!["*".to_owned()],
            ..CorsConfig::default()
        }),
        ..Config::default()
    };
    // Stdout is the banner, to read and copy the tokens from.
    config.access_log.stderr = true;
    for package in ["acme.orders.v1", "acme.users.v1"] {
        config.override_upstream(&format!("{package}={backend_url}"))?;
    }
    config.override_upstream(&format!("acme.orders.v2={v2_url}"))?;
    config.deprecations.push(DeprecationConfig {
        methods: "acme.orders.v1".to_owned(),
        since: Some("2026-01-01".to_owned()),
        sunset: Some("2027-06-30".to_owned()),
        // The successor's collection on this gateway.
        link: Some("/v2/orders".to_owned()),
    });
    config.validate()?;
    Ok((config, demo))
}

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Start(#[from] crate::server::StartError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("example services failed: {0}")]
    Backend(#[from] Error),
    #[error("cannot set up the demo's keys: {0}")]
    Keys(String),
}

/// `NOT_FOUND` for the `kind` resource `id`.
fn not_found(kind: &str, id: &str) -> Status {
    Status::not_found(format!("{kind} \"{id}\" not found"))
}

/// `INVALID_ARGUMENT` naming `field` when the required `value` is empty.
fn require(value: &str, field: &str) -> Result<(), Status> {
    if value.is_empty() {
        Err(invalid_argument([violation(field, "required")]))
    } else {
        Ok(())
    }
}

/// One entry of a `google.rpc.BadRequest`.
fn violation(field: impl Into<String>, description: impl Into<String>) -> FieldViolation {
    FieldViolation {
        field: field.into(),
        description: description.into(),
    }
}

/// `INVALID_ARGUMENT` with a `google.rpc.BadRequest` detail, so clients learn which fields to fix.
fn invalid_argument(violations: impl IntoIterator<Item = FieldViolation>) -> Status {
    let field_violations: Vec<FieldViolation> = violations.into_iter().collect();
    let message = field_violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    with_detail(
        Code::InvalidArgument,
        format!("invalid request: {message}"),
        "google.rpc.BadRequest",
        &BadRequest { field_violations },
    )
}

/// `FAILED_PRECONDITION` with a `google.rpc.PreconditionFailure` detail of type `STATE`:
/// the request is well formed but the resource is in the wrong state for it.
fn failed_precondition(subject: impl Into<String>, description: impl Into<String>) -> Status {
    let violation = precondition_failure::Violation {
        r#type: "STATE".to_owned(),
        subject: subject.into(),
        description: description.into(),
    };
    let message = format!("{}: {}", violation.subject, violation.description);
    with_detail(
        Code::FailedPrecondition,
        message,
        "google.rpc.PreconditionFailure",
        &PreconditionFailure {
            violations: vec![violation],
        },
    )
}

/// A status whose details are a `google.rpc.Status` holding `detail` (the gRPC richer
/// error model, which the gateway turns into JSON error details).
fn with_detail(code: Code, message: String, type_name: &str, detail: &impl Message) -> Status {
    let status = crate::pb::google::rpc::Status {
        code: code as i32,
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: format!("type.googleapis.com/{type_name}"),
            value: detail.encode_to_vec(),
        }],
    };
    Status::with_details(code, message, Bytes::from(status.encode_to_vec()))
}

/// A request for one page of an ordered result (AIP-158).
#[derive(Debug, Clone, Copy)]
struct PageRequest {
    offset: usize,
    size: usize,
}

/// One page of an ordered result.
#[derive(Debug)]
struct Page<T> {
    items: Vec<T>,
    /// Empty on the last page.
    next_page_token: String,
    /// How many items match in total, over all pages.
    total_size: usize,
}

impl PageRequest {
    const DEFAULT_SIZE: usize = 10;
    const MAX_SIZE: usize = 100;

    /// Validates `page_size` (0 means the default, larger than the maximum is capped) and
    /// `page_token` (empty for the first page, else a token from a previous response).
    fn parse(page_size: i32, page_token: &str) -> Result<Self, Status> {
        let size = match usize::try_from(page_size) {
            Ok(0) => Self::DEFAULT_SIZE,
            Ok(size) => size.min(Self::MAX_SIZE),
            Err(_) => {
                return Err(invalid_argument([violation(
                    "page_size",
                    "must not be negative",
                )]))
            }
        };
        let offset = if page_token.is_empty() {
            0
        } else {
            page_token.parse().map_err(|_| {
                invalid_argument([violation(
                    "page_token",
                    "not a token returned by a previous list call",
                )])
            })?
        };
        Ok(Self { offset, size })
    }

    /// Cuts this page out of all matching items.
    fn apply<T>(self, all: Vec<T>) -> Page<T> {
        let total_size = all.len();
        let end = self.offset.saturating_add(self.size);
        let items = all.into_iter().skip(self.offset).take(self.size).collect();
        let next_page_token = if end < total_size {
            end.to_string()
        } else {
            String::new()
        };
        Page {
            items,
            next_page_token,
            total_size,
        }
    }
}

/// Decoders for the error details the services attach, shared by the unit tests.
#[cfg(test)]
mod testing {
    use prost::Message;
    use tonic::{Code, Status};

    use crate::pb::google::rpc::{
        precondition_failure::Violation, BadRequest, PreconditionFailure,
    };

    /// The single detail of `status`, checking its type URL.
    fn detail<M: Message + Default>(status: &Status, type_name: &str) -> M {
        let rich = crate::pb::google::rpc::Status::decode(status.details())
            .expect("google.rpc.Status details");
        assert_eq!(rich.code, status.code() as i32);
        assert_eq!(rich.message, status.message());
        let [any] = rich.details.as_slice() else {
            panic!("expected one detail, got {:?}", rich.details)
        };
        assert_eq!(any.type_url, format!("type.googleapis.com/{type_name}"));
        M::decode(any.value.as_slice()).expect("detail payload")
    }

    /// Asserts `INVALID_ARGUMENT` and returns the fields its `BadRequest` names.
    pub(super) fn bad_fields(status: &Status) -> Vec<String> {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let bad: BadRequest = detail(status, "google.rpc.BadRequest");
        bad.field_violations.into_iter().map(|v| v.field).collect()
    }

    /// Asserts `FAILED_PRECONDITION` and returns its violations.
    pub(super) fn precondition_violations(status: &Status) -> Vec<Violation> {
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        let failure: PreconditionFailure = detail(status, "google.rpc.PreconditionFailure");
        failure.violations
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;
    use crate::pb::acme::{
        orders::{
            v1::{order_service_client::OrderServiceClient as V1Client, GetOrderRequest as V1Get},
            v2::{order_service_client::OrderServiceClient as V2Client, GetOrderRequest as V2Get},
        },
        users::v1::{user_service_client::UserServiceClient, GetUserRequest},
    };

    #[test]
    fn page_size_defaults_caps_and_rejects_negative() {
        assert_eq!(PageRequest::parse(0, "").unwrap().size, 10);
        assert_eq!(PageRequest::parse(7, "").unwrap().size, 7);
        assert_eq!(PageRequest::parse(1000, "").unwrap().size, 100);
        assert_eq!(
            testing::bad_fields(&PageRequest::parse(-1, "").unwrap_err()),
            ["page_size"]
        );
    }

    #[test]
    fn page_tokens_chain_and_bad_tokens_are_rejected() {
        let first = PageRequest::parse(2, "")
            .unwrap()
            .apply(vec![1, 2, 3, 4, 5]);
        assert_eq!((first.items, first.total_size), (vec![1, 2], 5));
        let second = PageRequest::parse(2, &first.next_page_token)
            .unwrap()
            .apply(vec![1, 2, 3, 4, 5]);
        assert_eq!(second.items, [3, 4]);
        let last = PageRequest::parse(2, &second.next_page_token)
            .unwrap()
            .apply(vec![1, 2, 3, 4, 5]);
        assert_eq!(last.items, [5]);
        assert!(last.next_page_token.is_empty());
        for token in ["abc", "-1"] {
            assert_eq!(
                testing::bad_fields(&PageRequest::parse(2, token).unwrap_err()),
                ["page_token"]
            );
        }
    }

    #[test]
    fn error_helpers_encode_rich_details() {
        let status = invalid_argument([violation("id", "required"), violation("name", "too long")]);
        assert_eq!(
            status.message(),
            "invalid request: id: required; name: too long"
        );
        assert_eq!(testing::bad_fields(&status), ["id", "name"]);

        let status = failed_precondition("orders/o-3", "already shipped");
        let violations = testing::precondition_violations(&status);
        assert_eq!(violations.len(), 1);
        assert_eq!(
            (
                violations[0].r#type.as_str(),
                violations[0].subject.as_str()
            ),
            ("STATE", "orders/o-3")
        );
    }

    /// The README's tour: one public route, a token for the rest, admin for deletes.
    #[tokio::test]
    async fn demo_gateway_enforces_the_tour_policies() {
        use tower::ServiceExt as _;

        let (v1_routes, v2_routes) = example_routes_by_version();
        let mut urls = Vec::new();
        let mut stops = Vec::new();
        for routes in [v1_routes, v2_routes] {
            let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
            urls.push(format!("http://{}", backend.local_addr().unwrap()));
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            tokio::spawn(serve_routes(backend, routes, async {
                stopped.await.ok();
            }));
        }
        let (config, tokens) =
            demo_config(SocketAddr::from(([127, 0, 0, 1], 0)), &urls[0], &urls[1]).unwrap();
        let server = crate::server::Server::new(&config, descriptor_sets()).unwrap();
        let router = server.router();
        let send = |method: &str, path: &str, token: Option<&str>| {
            let mut request = http::Request::builder().method(method).uri(path);
            if let Some(token) = token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            let request = request.body(axum::body::Body::empty()).unwrap();
            let router = router.clone();
            async move { router.oneshot(request).await.unwrap() }
        };
        let status = |method: &str, path: &str, token: Option<&str>| {
            let response = send(method, path, token);
            async move { response.await.status().as_u16() }
        };

        // v1 and v2 on their own upstreams; v1 deprecated in favour of v2.
        let catalog = server.registry().load();
        let upstream_of = |prefix: &str| {
            let route = catalog
                .routes()
                .iter()
                .find(|r| r.label.starts_with(prefix))
                .unwrap();
            catalog.method(route).upstream.as_ref().unwrap().url.clone()
        };
        assert_eq!(upstream_of("GET /v1/orders/"), urls[0]);
        assert_eq!(upstream_of("GET /v2/orders/"), urls[1]);
        let v1 = send("GET", "/v1/orders/o-1", Some(&tokens.user_token)).await;
        assert_eq!(v1.headers()["deprecation"], "@1767225600");
        assert_eq!(v1.headers()["sunset"], "Wed, 30 Jun 2027 00:00:00 GMT");
        assert!(v1.headers()["link"]
            .to_str()
            .unwrap()
            .ends_with(r#"</v2/orders>; rel="successor-version""#));
        let v2 = send("GET", "/v2/orders/o-1", Some(&tokens.user_token)).await;
        assert!(v2.headers().get("deprecation").is_none());

        assert_eq!(status("GET", "/v1/orders", None).await, 200);
        assert_eq!(status("GET", "/v1/orders/o-1", None).await, 401);
        assert_eq!(
            status("GET", "/v1/orders/o-1", Some(&tokens.user_token)).await,
            200
        );
        assert_eq!(
            status("GET", "/v2/orders/o-1", Some(&tokens.user_token)).await,
            200
        );
        assert_eq!(
            status("DELETE", "/v1/orders/o-4", Some(&tokens.user_token)).await,
            403
        );
        assert_eq!(
            status("DELETE", "/v1/orders/o-4", Some(&tokens.admin_token)).await,
            200
        );
        // One store behind both versions: o-4 is gone through v2 too.
        assert_eq!(
            status("GET", "/v2/orders/o-4", Some(&tokens.user_token)).await,
            404
        );
        for stop in stops {
            stop.send(()).unwrap();
        }
    }

    #[tokio::test]
    async fn serves_all_services_over_one_store_until_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve_examples(listener, async {
            stopped.await.ok();
        }));

        let mut v1 = V1Client::connect(url.clone()).await.unwrap();
        let v1 = v1
            .get_order(V1Get {
                id: "o-2".into(),
                customer_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut v2 = V2Client::connect(url.clone()).await.unwrap();
        let v2 = v2
            .get_order(V2Get { id: "o-2".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((v1.id.as_str(), v2.id.as_str()), ("o-2", "o-2"));
        assert_eq!(
            v2.total
                .map(|m| m.units * 100 + i64::from(m.nanos) / 10_000_000),
            Some(v1.total_cents)
        );

        let mut users = UserServiceClient::connect(url).await.unwrap();
        let missing = users
            .get_user(GetUserRequest {
                name: "tenants/acme/users/zed".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
