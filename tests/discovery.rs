//! Services discovered through gRPC server reflection: real tonic backends
//! serving the example services with `tonic-reflection` (v1, or only
//! v1alpha), a schema that changes at run time, the refusals (a conflict
//! with an upload, an answer over the limit, a server without reflection),
//! a server down at start, load through the swap, `/readyz`, the metric,
//! `POST /admin/v1/discover:refresh` and `protogate check --discover`.

mod common;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use common::{
    process,
    raw_upstream::{frame_of, Answer, RawUpstream},
    Backend, Gateway,
};
use protogate::{config::DiscoverConfig, registry::ProtoSources, Config};
use serde_json::Value as Json;
use tokio::{net::TcpListener, sync::oneshot};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{body::Body, server::NamedService};

/// The orders v1 set as committed: the backend's own schema.
fn orders_v1() -> Bytes {
    let path = format!("{}/descriptor-sets/acme.orders.v1.binpb", process::MANIFEST);
    Bytes::from(std::fs::read(path).unwrap())
}

/// The orders service's next revision (ArchiveOrder added, ListOrders
/// removed), compiled from its `.proto` as the file the backend's own is.
fn orders_v1_next() -> Bytes {
    compile(&orders_v1_next_source())
}

/// The committed orders `.proto` with ListOrders' rule turned into
/// ArchiveOrder's, so the revision differs from it in those two methods only.
fn orders_v1_next_source() -> String {
    const LIST: &str = "  rpc ListOrders(ListOrdersRequest) returns (ListOrdersResponse) {\n    option (google.api.http) = {\n      get: \"/v1/orders\"\n";
    const ARCHIVE: &str = "  rpc ArchiveOrder(GetOrderRequest) returns (Order) {\n    option (google.api.http) = {\n      post: \"/v1/orders/{id}:archive\"\n";
    let source = include_str!("../protos/acme/orders/v1/orders.proto");
    assert_eq!(
        source.matches(LIST).count(),
        1,
        "ListOrders' rule as written"
    );
    source.replacen(LIST, ARCHIVE, 1)
}

/// `orders_v1_next` with a message of `fields` fields added: a schema as
/// large as wanted.
fn orders_v1_large(fields: usize) -> Bytes {
    let mut source = orders_v1_next_source();
    source.push_str("message Large {\n");
    for i in 1..=fields {
        source.push_str(&format!("  string field_number_{i} = {i};\n"));
    }
    source.push_str("}\n");
    compile(&source)
}

fn compile(source: &str) -> Bytes {
    let mut sources = ProtoSources::new(usize::MAX);
    sources
        .insert("acme/orders/v1/orders.proto", source.as_bytes().to_vec())
        .unwrap();
    sources.compile().unwrap()
}

#[derive(Debug, Clone, Copy)]
enum Reflection {
    V1,
    V1Alpha,
}

/// A reflection service whose schema can be replaced while it serves.
struct Switchable<S>(Arc<ArcSwap<S>>);

impl<S> Clone for Switchable<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S: NamedService> NamedService for Switchable<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for Switchable<S>
where
    S: tower::Service<http::Request<Body>> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // tonic's generated servers are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let mut current = S::clone(&self.0.load());
        current.call(request)
    }
}

/// Reflection of `schema` and of the health service the backend serves.
/// The service's type names the bytes' lifetime, and a switched one must
/// have the type of the first: the (few, small) schemas are leaked.
fn builder(schema: &Bytes) -> tonic_reflection::server::Builder<'static> {
    let schema: &'static [u8] = Box::leak(schema.to_vec().into_boxed_slice());
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(schema)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Replaces the schema a backend's reflection describes.
type Describe = Box<dyn Fn(&Bytes) + Send + Sync>;

/// The example services (health included) and server reflection of a
/// schema, the health service's among it, on loopback.
struct ReflectingBackend {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<()>,
    switch: Describe,
}

impl ReflectingBackend {
    async fn start(schema: &Bytes, reflection: Reflection) -> Self {
        Self::start_on(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            schema,
            reflection,
        )
    }

    fn start_on(listener: TcpListener, schema: &Bytes, reflection: Reflection) -> Self {
        let addr = listener.local_addr().unwrap();
        let routes = protogate::demo::example_routes();
        let (routes, switch): (_, Describe) = match reflection {
            Reflection::V1 => {
                let build = |schema: &Bytes| builder(schema).build_v1().unwrap();
                let service = Switchable(Arc::new(ArcSwap::from_pointee(build(schema))));
                let switch = service.clone();
                let routes = routes.add_service(service);
                (
                    routes,
                    Box::new(move |schema| switch.0.store(Arc::new(build(schema)))),
                )
            }
            Reflection::V1Alpha => {
                let build = |schema: &Bytes| builder(schema).build_v1alpha().unwrap();
                let service = Switchable(Arc::new(ArcSwap::from_pointee(build(schema))));
                let switch = service.clone();
                let routes = routes.add_service(service);
                (
                    routes,
                    Box::new(move |schema| switch.0.store(Arc::new(build(schema)))),
                )
            }
        };
        let (tx, rx) = oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            shutdown: Some(tx),
            served,
            switch,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Reflection describes `schema` from now on.
    fn describe(&self, schema: &Bytes) {
        (self.switch)(schema);
    }

    /// Stops serving and frees the port.
    async fn stop(mut self) -> SocketAddr {
        let _ = self.shutdown.take().unwrap().send(());
        (&mut self.served).await.unwrap();
        self.addr
    }
}

/// A gateway that discovers `url` (adjusted by `source`) and serves nothing else.
async fn discovering(url: &str, adjust: impl FnOnce(&mut Config, &mut DiscoverConfig)) -> Gateway {
    let mut source = DiscoverConfig::new(url);
    source.refresh = Duration::ZERO;
    let mut config = Config::default();
    config.access_log.enabled = false;
    adjust(&mut config, &mut source);
    config.discover.push(source);
    Gateway::serve(&config, Vec::new()).await
}

fn admin(gw: &Gateway, path: &str) -> String {
    format!("http://{}{path}", gw.admin_addr)
}

async fn admin_get(gw: &Gateway, path: &str) -> (u16, Json) {
    gw.send(gw.client.get(admin(gw, path))).await
}

async fn refresh(gw: &Gateway) -> (u16, Json) {
    gw.send(gw.client.post(admin(gw, "/admin/v1/discover:refresh")))
        .await
}

/// Polls `check` until it holds (bounded: 600 tries, 50 ms apart).
async fn until<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never: {what}");
}

async fn status_of(gw: &Gateway, method: reqwest::Method, path: &str) -> u16 {
    let (status, _) = gw.send(gw.client.request(method, gw.url(path))).await;
    status
}

/// The value of `protogate_discovery_errors_total` for `url`.
async fn discovery_errors(gw: &Gateway, url: &str) -> u64 {
    let metrics = gw.text(admin(gw, "/metrics")).await;
    let series = format!("protogate_discovery_errors_total{{url=\"{url}\"}} ");
    let line = metrics
        .lines()
        .find(|line| line.starts_with(&series))
        .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"));
    line[series.len()..].trim().parse().unwrap()
}

#[tokio::test]
async fn discovered_services_are_served_from_the_server_they_were_read_from() {
    let backend = ReflectingBackend::start(&orders_v1(), Reflection::V1).await;
    let url = backend.url();
    // Unannotated methods are exposed: grpc.health's would be, were it taken.
    let gw = discovering(&url, |config, _| {
        config.descriptors.expose_unannotated = true
    })
    .await;
    until("the orders routes are served", || async {
        status_of(&gw, reqwest::Method::GET, "/v1/orders/o-1").await == 200
    })
    .await;
    let (_, order) = gw.get("/v1/orders/o-1").await;
    assert_eq!(order["id"], "o-1");

    let (status, sets) = admin_get(&gw, "/admin/v1/descriptor-sets").await;
    assert_eq!(status, 200);
    let set = &sets["descriptorSets"][0];
    let name = protogate::discovery::set_name(&url);
    assert_eq!(set["name"], name.as_str());
    assert_eq!(set["origin"], format!("discovered from {url}"));
    assert_eq!(set["upstream"], url.as_str());
    assert!(set["digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(set["loadedAt"].as_str().is_some());
    assert_eq!(
        set["services"],
        serde_json::json!(["acme.orders.v1.OrderService"])
    );

    let (_, routes) = admin_get(&gw, "/admin/v1/routes").await;
    let routes = routes["routes"].as_array().unwrap();
    assert!(!routes.is_empty());
    for route in routes {
        assert!(
            route["rpc"]
                .as_str()
                .unwrap()
                .starts_with("acme.orders.v1."),
            "{route}"
        );
        assert_eq!(route["upstream"]["url"], url.as_str());
    }

    // Read again unchanged: nothing built, no new generation.
    let (_, before) = admin_get(&gw, "/admin/v1/descriptor-sets").await;
    let (status, refreshed) = refresh(&gw).await;
    assert_eq!(status, 200, "{refreshed}");
    assert_eq!(refreshed["sources"][0]["changed"], false);
    assert_eq!(refreshed["generation"], before["generation"]);

    let (status, ready) = admin_get(&gw, "/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["discovery"][&url]["serving"], true);
    assert_eq!(ready["discovery"][&url]["error"], Json::Null);
    assert_eq!(discovery_errors(&gw, &url).await, 0);

    // An upload cannot pass for a discovered set.
    let put = gw
        .client
        .put(admin(&gw, &format!("/admin/v1/descriptor-sets/{name}")))
        .body(orders_v1());
    let (status, body) = gw.send(put).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("discovered-"),
        "{body}"
    );
}

#[tokio::test]
async fn a_server_with_only_v1alpha_reflection_is_read_through_v1alpha() {
    let backend = ReflectingBackend::start(&orders_v1(), Reflection::V1Alpha).await;
    let gw = discovering(&backend.url(), |_, _| {}).await;
    let (status, body) = refresh(&gw).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        status_of(&gw, reqwest::Method::GET, "/v1/orders/o-1").await,
        200
    );
}

#[tokio::test]
async fn routes_follow_a_schema_changed_by_a_restart_within_one_refresh() {
    let backend = ReflectingBackend::start(&orders_v1(), Reflection::V1).await;
    let gw = discovering(&backend.url(), |_, source| {
        source.refresh = Duration::from_millis(200);
    })
    .await;
    until("ListOrders is served", || async {
        status_of(&gw, reqwest::Method::GET, "/v1/orders").await == 200
    })
    .await;
    assert_eq!(
        status_of(&gw, reqwest::Method::POST, "/v1/orders/o-1:archive").await,
        404
    );

    // The same port, the next revision: ArchiveOrder added, ListOrders gone.
    let addr = backend.stop().await;
    let listener = TcpListener::bind(addr).await.unwrap();
    let _next = ReflectingBackend::start_on(listener, &orders_v1_next(), Reflection::V1);
    until("ArchiveOrder is routed", || async {
        // Routed to the backend, which has not implemented it yet.
        status_of(&gw, reqwest::Method::POST, "/v1/orders/o-1:archive").await == 501
    })
    .await;
    // GET /v1/orders is gone; POST /v1/orders (CreateOrder) stays.
    assert_eq!(
        status_of(&gw, reqwest::Method::GET, "/v1/orders").await,
        405
    );
    assert_eq!(
        status_of(&gw, reqwest::Method::GET, "/v1/orders/o-1").await,
        200
    );
}

#[tokio::test]
async fn a_server_down_at_start_leaves_its_routes_unserved_and_is_retried() {
    let port = process::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let gw = discovering(&url, |_, _| {}).await;
    until("the failure is reported", || async {
        let (_, ready) = admin_get(&gw, "/readyz").await;
        ready["discovery"][&url]["error"].is_string()
    })
    .await;
    let (status, ready) = admin_get(&gw, "/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["discovery"][&url]["serving"], false);
    assert!(
        ready["discovery"][&url]["error"]
            .as_str()
            .unwrap()
            .contains(&url),
        "{ready}"
    );
    assert!(discovery_errors(&gw, &url).await >= 1);
    assert_eq!(
        status_of(&gw, reqwest::Method::GET, "/v1/orders/o-1").await,
        404
    );

    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let _backend = ReflectingBackend::start_on(listener, &orders_v1(), Reflection::V1);
    // No refresh asked for: the retries find it.
    until("the orders routes are served", || async {
        status_of(&gw, reqwest::Method::GET, "/v1/orders/o-1").await == 200
    })
    .await;
    let (status, ready) = admin_get(&gw, "/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["discovery"][&url]["error"], Json::Null);
}

#[tokio::test]
async fn a_schema_that_conflicts_with_an_uploaded_set_is_refused_and_changes_nothing() {
    // Down at start, so that the upload comes first.
    let port = process::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let gw = discovering(&url, |_, _| {}).await;
    let put = gw
        .client
        .put(admin(
            &gw,
            &format!("/admin/v1/descriptor-sets/orders?upstream={url}"),
        ))
        .body(orders_v1());
    let (status, uploaded) = gw.send(put).await;
    assert_eq!(status, 201, "{uploaded}");

    // The same file, defined otherwise.
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let _backend = ReflectingBackend::start_on(listener, &orders_v1_next(), Reflection::V1);
    let (status, body) = refresh(&gw).await;
    assert_eq!(status, 409, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("acme/orders/v1/orders.proto"), "{message}");

    let (_, sets) = admin_get(&gw, "/admin/v1/descriptor-sets").await;
    assert_eq!(sets["generation"], uploaded["generation"]);
    assert_eq!(sets["descriptorSets"].as_array().unwrap().len(), 1);
    assert_eq!(
        status_of(&gw, reqwest::Method::GET, "/v1/orders").await,
        200
    );
    let (_, ready) = admin_get(&gw, "/readyz").await;
    assert!(
        ready["discovery"][&url]["error"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{ready}"
    );
    assert!(discovery_errors(&gw, &url).await >= 1);
}

#[tokio::test]
async fn a_reflection_answer_over_the_limit_is_refused_and_the_last_good_set_kept() {
    let backend = ReflectingBackend::start(&orders_v1(), Reflection::V1).await;
    let url = backend.url();
    let limit = 128 << 10;
    let large = orders_v1_large(6000);
    assert!(
        large.len() > limit,
        "the large schema is {} bytes",
        large.len()
    );
    let gw = discovering(&url, |config, _| config.admin.max_upload_bytes = limit).await;
    let (status, body) = refresh(&gw).await;
    assert_eq!(status, 200, "{body}");
    let errors = discovery_errors(&gw, &url).await;

    backend.describe(&large);
    let (status, body) = refresh(&gw).await;
    assert_eq!(status, 503, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(&url), "{message}");
    assert!(
        message.contains(&format!("limit of {limit} bytes")),
        "{message}"
    );
    assert!(
        message.contains("the last good set keeps serving"),
        "{message}"
    );
    assert_eq!(discovery_errors(&gw, &url).await, errors + 1);
    // The last good set: ListOrders is still served, ArchiveOrder is not.
    assert_eq!(
        status_of(&gw, reqwest::Method::GET, "/v1/orders").await,
        200
    );
    assert_eq!(
        status_of(&gw, reqwest::Method::POST, "/v1/orders/o-1:archive").await,
        404
    );
    let (status, ready) = admin_get(&gw, "/readyz").await;
    // Still serving its last good set: ready, with the failure reported.
    assert_eq!(status, 200, "{ready}");
    assert!(
        ready["discovery"][&url]["error"]
            .as_str()
            .unwrap()
            .contains("limit"),
        "{ready}"
    );
}

#[tokio::test]
async fn a_server_without_reflection_is_named_in_a_clear_error() {
    let backend = Backend::start().await;
    let url = backend.url();
    let gw = discovering(&url, |_, _| {}).await;
    let (status, body) = refresh(&gw).await;
    assert_eq!(status, 503, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(&url), "{message}");
    assert!(
        message.contains("does not serve gRPC server reflection"),
        "{message}"
    );
    let (status, ready) = admin_get(&gw, "/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert!(ready["discovery"][&url]["error"]
        .as_str()
        .unwrap()
        .contains("reflection"));
    assert!(discovery_errors(&gw, &url).await >= 1);
}

#[tokio::test]
async fn requests_through_discovered_schema_swaps_never_fail() {
    let backend = ReflectingBackend::start(&orders_v1(), Reflection::V1).await;
    let gw = Arc::new(discovering(&backend.url(), |_, _| {}).await);
    let (status, body) = refresh(&gw).await;
    assert_eq!(status, 200, "{body}");

    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (gw, stop, done, failed) = (gw.clone(), stop.clone(), done.clone(), failed.clone());
            tokio::spawn(async move {
                // Bounded: stops when told, or after 20 000 requests.
                for _ in 0..20_000 {
                    if stop.load(SeqCst) {
                        break;
                    }
                    let (status, body) = gw.get("/v1/orders/o-1").await;
                    if status != 200 || body["id"] != "o-1" {
                        failed.fetch_add(1, SeqCst);
                    }
                    done.fetch_add(1, SeqCst);
                }
            })
        })
        .collect();
    for schema in [orders_v1_next(), orders_v1(), orders_v1_next(), orders_v1()] {
        backend.describe(&schema);
        let (status, body) = refresh(&gw).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["sources"][0]["changed"], true);
        let served = done.load(SeqCst);
        until("requests ran on the new generation", || async {
            done.load(SeqCst) > served + 20
        })
        .await;
    }
    stop.store(true, SeqCst);
    for client in clients {
        client.await.unwrap();
    }
    assert!(done.load(SeqCst) > 80);
    assert_eq!(failed.load(SeqCst), 0, "of {}", done.load(SeqCst));
}

#[tokio::test]
async fn check_discover_prints_the_routes_or_why_not() {
    let backend = ReflectingBackend::start(&orders_v1(), Reflection::V1).await;
    let url = backend.url();
    let plain = Backend::start().await;
    let plain_url = plain.url();
    let (served, refused) = tokio::task::spawn_blocking(move || {
        let run = |url: &str| {
            process::protogate()
                .args(["check", "--discover", url])
                .output()
                .unwrap()
        };
        (run(&url), run(&plain_url))
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&served.stdout);
    assert!(
        served.status.success(),
        "{}",
        String::from_utf8_lossy(&served.stderr)
    );
    assert!(stdout.contains("GET /v1/orders/{id}"), "{stdout}");
    assert!(
        stdout.contains("/acme.orders.v1.OrderService/GetOrder"),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("@ {}", backend.url())), "{stdout}");

    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains(&plain.url()), "{stderr}");
    assert!(
        stderr.contains("does not serve gRPC server reflection"),
        "{stderr}"
    );
}

#[tokio::test]
async fn admin_discover_refresh_reads_every_server_now() {
    let backend = ReflectingBackend::start(&orders_v1(), Reflection::V1).await;
    let url = backend.url();
    let gw = discovering(&url, |_, _| {}).await;
    until("ListOrders is served", || async {
        status_of(&gw, reqwest::Method::GET, "/v1/orders").await == 200
    })
    .await;
    backend.describe(&orders_v1_next());
    let admin_addr = gw.admin_addr.to_string();
    let refreshed = tokio::task::spawn_blocking(move || {
        process::protogate()
            .args(["admin", "--admin-addr", &admin_addr, "discover", "refresh"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&refreshed.stdout);
    assert!(
        refreshed.status.success(),
        "{}",
        String::from_utf8_lossy(&refreshed.stderr)
    );
    let set = protogate::discovery::set_name(&url);
    let line = stdout.lines().next().unwrap_or_default();
    assert!(
        line.starts_with(&format!("{url}  {set}  sha256:")),
        "{stdout}"
    );
    assert!(line.ends_with("  changed"), "{stdout}");
    assert_eq!(
        status_of(&gw, reqwest::Method::POST, "/v1/orders/o-1:archive").await,
        501
    );
}

/// A TCP server on loopback that either holds every connection without a
/// word (`garbage: None`) or writes `garbage` and closes it.
async fn not_grpc(garbage: Option<&'static [u8]>) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncWriteExt as _;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = tokio::spawn(async move {
        let mut held = Vec::new();
        // Bounded: the test makes a handful of connections.
        for _ in 0..64 {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            match garbage {
                Some(bytes) => {
                    let _ = socket.write_all(bytes).await;
                }
                None => held.push(socket),
            }
        }
    });
    (url, served)
}

#[tokio::test]
async fn a_server_that_times_out_or_answers_garbage_is_reported_and_nothing_served() {
    let (silent, silent_task) = not_grpc(None).await;
    let (garbage, garbage_task) =
        not_grpc(Some(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")).await;
    for (url, expected) in [
        (&silent, "did not describe its services within 300ms"),
        (&garbage, "discovery from"),
    ] {
        let gw = discovering(url, |_, source| source.timeout = Duration::from_millis(300)).await;
        let (status, body) = refresh(&gw).await;
        assert_eq!(status, 503, "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(url.as_str()) && message.contains(expected),
            "{message}"
        );
        let (status, ready) = admin_get(&gw, "/readyz").await;
        assert_eq!(status, 503, "{ready}");
        assert_eq!(ready["discovery"][url.as_str()]["serving"], false);
        assert!(discovery_errors(&gw, url).await >= 1);
        let (_, sets) = admin_get(&gw, "/admin/v1/descriptor-sets").await;
        assert_eq!(sets["descriptorSets"], serde_json::json!([]));
    }
    silent_task.abort();
    garbage_task.abort();
}

/// A reflection server that misbehaves is read as every upstream call is
/// (the same framing, reply limit, statuses and failures), and each way
/// is named: the reply limit is `admin.max_upload_bytes` itself, refused
/// by the answer's length prefix.
#[tokio::test]
async fn a_misbehaving_reflection_server_is_read_through_the_upstream_call_layer() {
    let raw = RawUpstream::start(Answer::Silent).await;
    let url = raw.url();
    let gw = discovering(&url, |config, source| {
        config.admin.max_upload_bytes = 1024;
        source.timeout = Duration::from_millis(300);
    })
    .await;
    let unimplemented = Answer::trailers_only(vec![("grpc-status", "12".into())]);
    let partial = frame_of(b"partial")[..8].to_vec();
    let table = [
        (
            "not protobuf",
            Answer::ok(vec![frame_of(&[0xff; 8])]),
            "it answered what is not a schema: an answer does not decode",
        ),
        (
            "an OK status without an answer",
            Answer::trailers_only(vec![("grpc-status", "0".into())]),
            "it answered what is not a schema: an OK status without a reply message",
        ),
        (
            "an answer over the limit, under tonic's slack",
            Answer::ok(vec![frame_of(&[b'x'; 1500])]),
            "one of its answers is over the limit of 1024 bytes (admin.max_upload_bytes)",
        ),
        (
            "UNIMPLEMENTED on both versions",
            unimplemented,
            "it does not serve gRPC server reflection",
        ),
        (
            "a stream reset mid-answer",
            Answer::ResetAfter(vec![partial]),
            "cannot reach it",
        ),
        (
            "no answer",
            Answer::Silent,
            "it did not describe its services within 300ms",
        ),
    ];
    for (case, answer, expected) in table {
        raw.answer(answer);
        let (status, body) = refresh(&gw).await;
        assert_eq!(status, 503, "{case}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(&url) && message.contains(expected),
            "{case}: {message}"
        );
    }
    let (_, sets) = admin_get(&gw, "/admin/v1/descriptor-sets").await;
    assert_eq!(sets["descriptorSets"], serde_json::json!([]));
}

#[tokio::test]
async fn services_outside_the_globs_are_never_served() {
    // Reflection of the orders and the users services: one set, concatenated.
    let users = std::fs::read(format!(
        "{}/descriptor-sets/acme.users.v1.binpb",
        process::MANIFEST
    ))
    .unwrap();
    let both = Bytes::from([orders_v1().to_vec(), users].concat());
    let backend = ReflectingBackend::start(&both, Reflection::V1).await;
    let gw = discovering(&backend.url(), |_, source| {
        source.services = vec!["acme.users.*".into()];
    })
    .await;
    let (status, body) = refresh(&gw).await;
    assert_eq!(status, 200, "{body}");
    let (_, sets) = admin_get(&gw, "/admin/v1/descriptor-sets").await;
    assert_eq!(
        sets["descriptorSets"][0]["services"],
        serde_json::json!(["acme.users.v1.UserService"])
    );
    assert_eq!(
        status_of(&gw, reqwest::Method::GET, "/v1/tenants/acme/users").await,
        200
    );
    assert_eq!(
        status_of(&gw, reqwest::Method::GET, "/v1/orders/o-1").await,
        404
    );

    // A glob that selects nothing says what the server has.
    let none = discovering(&backend.url(), |_, source| {
        source.services = vec!["acme.billing.*".into()];
    })
    .await;
    let (status, body) = refresh(&none).await;
    assert_eq!(status, 503, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("none of its services is selected"),
        "{message}"
    );
    assert!(message.contains("acme.orders.v1.OrderService"), "{message}");
}

#[tokio::test]
async fn each_change_of_state_is_logged_once_however_often_it_is_seen() {
    let port = process::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let (public, admin_port) = (process::free_port(), process::free_port());
    let child = process::protogate()
        .args(["serve", "--discover", &url])
        .args(["--listen", &format!("127.0.0.1:{public}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let child = process::Child(child);
    let metrics = format!("http://127.0.0.1:{admin_port}/metrics");
    process::wait_for(&metrics).await;
    let series = format!("protogate_discovery_errors_total{{url=\"{url}\"}} ");
    until("three failed readings (at start, then retried)", || async {
        let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
        let errors = text
            .lines()
            .find_map(|line| line.strip_prefix(series.as_str()));
        errors.is_some_and(|count| count.trim().parse::<u64>().unwrap_or(0) >= 3)
    })
    .await;
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let _backend = ReflectingBackend::start_on(listener, &orders_v1(), Reflection::V1);
    let order = format!("http://127.0.0.1:{public}/v1/orders/o-1");
    until("the retries find the server", || async {
        reqwest::get(&order).await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    let stderr = tokio::task::spawn_blocking(move || child.stop())
        .await
        .unwrap();
    for (line, times) in [
        ("discovery failed; the last good set keeps serving", 1),
        ("discovery works again", 1),
        ("discovered schema registered", 1),
    ] {
        assert_eq!(stderr.matches(line).count(), times, "{line}:\n{stderr}");
    }
}
