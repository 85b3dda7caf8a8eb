//! Load benchmark: the example backend and the gateway as separate processes
//! on loopback, driven over keep-alive HTTP/1.1 (or HTTP/2, one or several
//! streams per connection) at a fixed concurrency, and
//! the same calls made directly over gRPC, so the gateway's added latency and
//! CPU show as ratios measured in one run.
//!
//! ```sh
//! cargo run --release --example loadbench                       # 20,000 requests per workload, 32 connections
//! cargo run --release --example loadbench -- --requests 50000 --concurrency 64
//! cargo run --release --example loadbench -- --gateway http://127.0.0.1:8080   # any gateway with the same routes
//! cargo run --release --example loadbench -- --services 1000 --only get        # with 1,000 more services loaded
//! cargo run --release --example loadbench -- --workers 1                        # a one-thread gateway
//! cargo run --release --example loadbench -- --rate 1000 --unpinned             # its workers where the scheduler puts them
//! cargo run --release --example loadbench -- --rounds 5                         # the median of 5 rounds
//! cargo run --release --example loadbench -- --rate 2000                        # paced: 2,000 requests/s in all
//! cargo run --release --example loadbench -- --only get --floor                 # and the floor of any such gateway
//! cargo run --release --example loadbench -- --http2                            # HTTP/2 clients (h2c) instead of HTTP/1.1
//! cargo run --release --example loadbench -- --http2 --concurrency 4 --streams 8   # 4 h2 connections, 8 streams each
//! cargo run --release --example loadbench -- --tls                              # clients over TLS (ALPN), keep-alive
//! cargo run --release --example loadbench -- --tls-upstream                     # the gateway calls the backend over TLS
//! cargo run --release --example loadbench -- --tls --handshakes 5000 --workers 1  # new TLS handshakes on one core
//! cargo run --release --example loadbench -- --only get --rate-limit redis      # quotas counted in a redis-server it starts
//! cargo run --release --example loadbench -- --only get --otlp                  # every request's spans exported over OTLP
//! cargo run --release --example loadbench -- --idle-connections 10000           # the memory of idle keep-alive connections
//! ```
//!
//! With `--tls` or `--tls-upstream` a CA and `localhost`
//! certificates (ECDSA P-256) are made at start with rcgen.
//!
//! CPU per request comes from `/proc/<pid>/stat` (user + system time) before
//! and after each workload; peak RSS from `/proc/<pid>/status` (`VmHWM`).
//! The output is a markdown table, then one `summary:` line (the date, the
//! clients, the load average, and each workload's CPU and p99 ratios) to
//! compare runs over time.

use std::{
    error::Error,
    future::Future,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum as _};
use http_body_util::{BodyExt as _, Full};
use hyper::{
    client::conn::{http1, http2},
    Request,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::{
    trace_service_server::{TraceService, TraceServiceServer},
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;
use protogate::{
    demo,
    pb::acme::orders::v1::{
        order_service_client::OrderServiceClient, CreateOrderRequest, GetOrderRequest, LineItem,
        ListOrdersRequest, Order,
    },
    registry::DescriptorSet,
    Config, Server,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{
    rustls::{self, pki_types::pem::PemObject as _},
    TlsConnector,
};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

type BoxError = Box<dyn Error + Send + Sync>;

/// One driver task: its latencies and its error count.
type Worker = tokio::task::JoinHandle<Result<(Vec<Duration>, usize), BoxError>>;

#[derive(Debug, Parser)]
#[command(about = "Load benchmark of protogate against direct gRPC")]
struct Args {
    /// Requests per workload.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Measure this gateway (same routes as the demo) instead of starting one.
    #[arg(long)]
    gateway: Option<String>,
    /// Run only these workloads (all when absent), e.g. to profile one.
    #[arg(long, value_enum)]
    only: Vec<WorkloadName>,
    /// Also load a synthetic API of this many services (10 routes each) into
    /// the gateway, and report its catalog build time and resident memory.
    #[arg(long, default_value_t = 0)]
    services: usize,
    /// Run the started gateway with its access log on (its default; lines go
    /// to /dev/null), to see what the log costs.
    #[arg(long)]
    access_log: bool,
    /// Serving threads of the started gateway (its `workers`; 0 = one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// The started gateway's workers where the scheduler puts them
    /// (`pin_workers: false`), rather than each on a CPU of its own.
    #[arg(long)]
    unpinned: bool,
    /// Measure each workload this many times (gateway, then direct, each
    /// time) and report the round with the median CPU ratio: on a shared,
    /// noisy machine one round's ratio can be off by a tenth.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Pace the load at this many requests per second in all (each
    /// connection sends on its own fixed schedule) instead of sending as
    /// fast as replies come back. Below saturation a latency is the time
    /// the request took, not the time it queued behind the others on these
    /// two shared cores, so the gateway's added latency shows as itself.
    #[arg(long)]
    rate: Option<f64>,
    /// Also drive the GET workload through a floor proxy: the same HTTP/1.1
    /// server, HTTP/2 client and threads as the gateway, forwarding one
    /// pre-encoded GetOrder call and returning its reply bytes, with no
    /// routing, transcoding or policy. Its CPU is what these libraries and
    /// the kernel cost any gateway built on them.
    #[arg(long)]
    floor: bool,
    /// Clients speak HTTP/2 instead of HTTP/1.1: h2c with prior knowledge,
    /// or ALPN `h2` with `--tls`; one stream at a time per connection
    /// unless `--streams` says more.
    #[arg(long)]
    http2: bool,
    /// With `--http2`: concurrent streams per connection, as browsers and
    /// CDNs multiplex (`--http2 --concurrency 4 --streams 8`: 4 connections
    /// carrying 32 requests at once). The direct gRPC calls, the floor
    /// proxy and the echo keep the same number of requests in flight.
    #[arg(long, default_value_t = 1, requires = "http2", value_parser = clap::value_parser!(u32).range(1..))]
    streams: u32,
    /// Clients reach the started gateway over TLS (its HTTPS listener).
    #[arg(long)]
    tls: bool,
    /// The backend serves TLS and the gateway calls it at `https://`.
    #[arg(long)]
    tls_upstream: bool,
    /// Then this many new TLS handshakes (no request) against the HTTPS
    /// listener, over `--concurrency` tasks: the gateway's CPU per
    /// handshake, and what that makes per core and second.
    #[arg(long, default_value_t = 0, requires = "tls")]
    handshakes: usize,
    /// Count a quota on every request of the started gateway (one far
    /// above the load, so every request passes): `local` in process, or
    /// `redis` in a `redis-server` this benchmark starts on loopback.
    #[arg(long, value_enum)]
    rate_limit: Option<QuotaPolicy>,
    /// The started gateway exports every request's spans (`tracing.otlp`,
    /// sample ratio 1) to an OTLP collector in this process, which counts
    /// and drops them.
    #[arg(long)]
    otlp: bool,
    /// Instead of the workloads: open this many keep-alive HTTP/1.1
    /// connections to the started gateway, one GET each, leave them idle,
    /// then close them, and report the gateway's resident memory before,
    /// while they idle and after.
    #[arg(long)]
    idle_connections: Option<usize>,
    #[command(subcommand)]
    role: Option<Role>,
}

/// `rate_limit.policy` of the started gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum QuotaPolicy {
    Local,
    Redis,
}

/// The processes this binary re-executes itself as.
#[derive(Debug, Subcommand)]
enum Role {
    #[command(hide = true)]
    Backend {
        listen: SocketAddr,
        /// Serve TLS with these PEM files.
        #[arg(long, requires = "key")]
        cert: Option<std::path::PathBuf>,
        #[arg(long)]
        key: Option<std::path::PathBuf>,
    },
    /// Echoes what it reads: the machine's own cost of a round trip
    /// between two processes over loopback TCP.
    #[command(hide = true)]
    Echo { listen: SocketAddr },
    /// An OTLP collector that counts the spans it receives and keeps none,
    /// for a gateway started by hand (`--otlp` starts its own).
    #[command(hide = true)]
    Collector { listen: SocketAddr },
    #[command(hide = true)]
    Floor {
        listen: SocketAddr,
        upstream: SocketAddr,
        /// Serve HTTP/2 (h2c) instead of HTTP/1.1.
        #[arg(long)]
        http2: bool,
    },
    #[command(hide = true)]
    Gateway {
        listen: SocketAddr,
        upstream: String,
        /// An extra descriptor set to load (the synthetic API).
        #[arg(long)]
        descriptor_set: Option<std::path::PathBuf>,
        #[arg(long)]
        access_log: bool,
        #[arg(long, default_value_t = 0)]
        workers: usize,
        #[arg(long)]
        unpinned: bool,
        /// Also serve HTTPS here, with `--cert` and `--key`.
        #[arg(long, requires = "cert")]
        tls_listen: Option<SocketAddr>,
        /// The PEM files of the HTTPS listener (and the CA of an
        /// `https://` upstream, as `--ca`).
        #[arg(long)]
        cert: Option<std::path::PathBuf>,
        #[arg(long)]
        key: Option<std::path::PathBuf>,
        #[arg(long)]
        ca: Option<std::path::PathBuf>,
        #[arg(long, value_enum)]
        rate_limit: Option<QuotaPolicy>,
        /// With `--rate-limit redis`.
        #[arg(long)]
        redis: Option<String>,
        /// The OTLP collector to export spans to.
        #[arg(long)]
        otlp: Option<String>,
    },
}

/// The workloads by the names `--only` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum WorkloadName {
    Get,
    List10,
    List100,
    Post,
}

/// One HTTP workload and its direct gRPC twin.
#[derive(Debug, Clone, Copy)]
enum Workload {
    Get,
    Post,
    List(i32),
}

impl Workload {
    fn name(self) -> String {
        match self {
            Self::Get => "GET /v1/orders/{id}".into(),
            Self::Post => "POST /v1/orders (JSON body)".into(),
            Self::List(n) => format!("GET /v1/orders?pageSize={n}"),
        }
    }

    fn request(self) -> Request<Full<Bytes>> {
        let builder = Request::builder().header("host", "bench");
        let request = match self {
            Self::Get => builder.uri("/v1/orders/o-1").body(Full::default()),
            Self::Post => builder
                .method("POST")
                .uri("/v1/orders")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(
                    br#"{"customerId":"c-9","currency":"EUR","items":[{"sku":"sku-book","quantity":1,"unitPriceCents":"1999"},{"sku":"sku-pen","quantity":2,"unitPriceCents":"150"}]}"#,
                ))),
            Self::List(n) => builder.uri(format!("/v1/orders?pageSize={n}")).body(Full::default()),
        };
        request.unwrap_or_default()
    }
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    match args.role {
        Some(Role::Backend { listen, cert, key }) => runtime.block_on(async {
            let listener = TcpListener::bind(listen).await?;
            match cert.zip(key) {
                Some((cert, key)) => serve_tls_backend(listener, &cert, &key).await,
                None => {
                    demo::serve_examples(listener, std::future::pending()).await?;
                    Ok(())
                }
            }
        }),
        Some(Role::Echo { listen }) => runtime.block_on(serve_echo(listen)),
        Some(Role::Collector { listen }) => runtime.block_on(async {
            SpanSink::start(listen).await?;
            std::future::pending().await
        }),
        Some(Role::Floor {
            listen,
            upstream,
            http2,
        }) => serve_floor(listen, upstream, http2),
        Some(Role::Gateway {
            listen,
            upstream,
            descriptor_set,
            access_log,
            workers,
            unpinned,
            tls_listen,
            cert,
            key,
            ca,
            rate_limit,
            redis,
            otlp,
        }) => runtime.block_on(serve_gateway(
            GatewayArgs {
                listen,
                upstream,
                descriptor_set,
                access_log,
                workers,
                unpinned,
                rate_limit: rate_limit.map(|policy| (policy, redis)),
                otlp,
            },
            TlsFiles {
                listen: tls_listen,
                cert,
                key,
                ca,
            },
        )),
        None => runtime.block_on(bench(&args)),
    }
}

struct GatewayArgs {
    listen: SocketAddr,
    upstream: String,
    descriptor_set: Option<std::path::PathBuf>,
    access_log: bool,
    workers: usize,
    unpinned: bool,
    rate_limit: Option<(QuotaPolicy, Option<String>)>,
    otlp: Option<String>,
}

/// The started gateway's HTTPS listener and the CA of an `https://` upstream.
struct TlsFiles {
    listen: Option<SocketAddr>,
    cert: Option<std::path::PathBuf>,
    key: Option<std::path::PathBuf>,
    ca: Option<std::path::PathBuf>,
}

async fn serve_gateway(args: GatewayArgs, tls: TlsFiles) -> Result<(), BoxError> {
    let GatewayArgs {
        listen,
        upstream,
        descriptor_set,
        access_log,
        workers,
        unpinned,
        rate_limit,
        otlp,
    } = args;
    // As the `protogate` binary runs: with its diagnostic log (and so the
    // request span) on.
    protogate::observe::init_tracing();
    let mut config = Config {
        listen,
        workers,
        pin_workers: !unpinned,
        ..Config::default()
    };
    config.access_log.enabled = access_log;
    config.tracing.otlp = otlp.map(protogate::config::OtlpConfig::new);
    config.admin.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    if let Some((policy, redis)) = rate_limit {
        let mut yaml =
            "rate_limit: { per_ip: { requests: 1000000000, per: 1s }, policy: ".to_owned();
        yaml.push_str(match policy {
            QuotaPolicy::Local => "local }",
            QuotaPolicy::Redis => "redis }",
        });
        if let Some(url) = redis {
            yaml.push_str(&format!("\nredis: {{ url: '{url}' }}"));
        }
        let quotas = Config::from_yaml(&yaml)?;
        config.rate_limit = quotas.rate_limit;
        config.redis = quotas.redis;
    }
    for package in [
        "acme.orders.v1",
        "acme.orders.v2",
        "acme.users.v1",
        "bench.v1",
    ] {
        config.override_upstream(&format!("{package}={upstream}"))?;
    }
    for upstream in &mut config.upstreams {
        if upstream.url.starts_with("https://") {
            upstream.ca_file.clone_from(&tls.ca);
            upstream.server_name = Some("localhost".into());
        }
    }
    if let (Some(tls_listen), Some(cert_file), Some(key_file)) = (tls.listen, tls.cert, tls.key) {
        config.tls = Some(protogate::config::TlsConfig {
            listen: tls_listen,
            ..protogate::config::TlsConfig::new(vec![protogate::config::CertificateConfig {
                cert_file,
                key_file,
            }])
        });
    }
    let mut sets = demo::descriptor_sets();
    if let Some(path) = descriptor_set {
        sets.push(DescriptorSet {
            name: "synthetic".into(),
            bytes: std::fs::read(path)?.into(),
        });
    }
    let mut server = Server::new(&config, sets)?;
    let listener = TcpListener::bind(listen).await?;
    if let Some(addr) = server.tls_addr() {
        server = server.with_tls_listener(TcpListener::bind(addr).await?);
    }
    server.serve(listener, std::future::pending()).await?;
    Ok(())
}

/// The example services over TLS (tonic's rustls server).
async fn serve_tls_backend(
    listener: TcpListener,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(), BoxError> {
    let identity = tonic::transport::Identity::from_pem(std::fs::read(cert)?, std::fs::read(key)?);
    tonic::transport::Server::builder()
        .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?
        .add_routes(demo::example_routes())
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        )
        .await?;
    Ok(())
}

/// A CA and the `localhost` certificate it signs, as PEM files in a
/// folder of their own, and a rustls client config that trusts the CA.
struct BenchPki {
    dir: std::path::PathBuf,
    ca: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    ca_pem: Vec<u8>,
}

impl BenchPki {
    fn generate() -> Result<Self, BoxError> {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate()?;
        let ca_pem = ca.self_signed(&ca_key)?.pem();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate()?;
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?
            .signed_by(&key, &issuer)?;
        let dir = std::env::temp_dir().join(format!("loadbench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let pki = Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("localhost.pem"),
            key: dir.join("localhost-key.pem"),
            ca_pem: ca_pem.into_bytes(),
            dir,
        };
        std::fs::write(&pki.ca, &pki.ca_pem)?;
        std::fs::write(&pki.cert, leaf.pem())?;
        std::fs::write(&pki.key, key.serialize_pem())?;
        Ok(pki)
    }

    /// A client trusting the CA, offering `alpn`; sessions are not resumed,
    /// so that every new connection makes a whole handshake.
    fn connector(&self, alpn: &[u8]) -> Result<TlsConnector, BoxError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&self.ca_pem) {
            roots.add(cert?)?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Ok(TlsConnector::from(std::sync::Arc::new(config)))
    }
}

impl Drop for BenchPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn serve_echo(listen: SocketAddr) -> Result<(), BoxError> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (mut stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let mut buffer = [0u8; ECHO_BYTES];
            while let Ok(n @ 1..) = stream.read(&mut buffer).await {
                if stream.write_all(&buffer[..n]).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// The floor proxy: thread-per-core like the gateway, each thread with its
/// own current-thread runtime and HTTP/2 connection to the backend; every
/// request (HTTP/1.1, or HTTP/2 with `http2`) becomes the same GetOrder
/// call, and the reply's message bytes are the response.
fn serve_floor(listen: SocketAddr, upstream: SocketAddr, http2: bool) -> Result<(), BoxError> {
    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    let message = GetOrderRequest {
        id: "o-1".into(),
        customer_id: String::new(),
    }
    .encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len())?.to_be_bytes());
    frame.extend_from_slice(&message);
    let frame = Bytes::from(frame);
    let uri: http::Uri =
        format!("http://{upstream}/acme.orders.v1.OrderService/GetOrder").parse()?;
    let threads: Vec<_> = (0..std::thread::available_parallelism()?.get())
        .map(|_| {
            let (listener, frame, uri) = (listener.try_clone(), frame.clone(), uri.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(floor_worker(listener?, upstream, (frame, uri), http2))
            })
        })
        .collect();
    for thread in threads {
        thread.join().map_err(|_| "a floor worker panicked")??;
    }
    Ok(())
}

async fn floor_worker(
    listener: std::net::TcpListener,
    upstream: SocketAddr,
    (frame, uri): (Bytes, http::Uri),
    http2: bool,
) -> Result<(), BoxError> {
    let listener = TcpListener::from_std(listener)?;
    let tcp = TcpStream::connect(upstream).await?;
    tcp.set_nodelay(true)?;
    // The gateway's windows (see `upstream::connection`).
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(2 << 20)
        .initial_connection_window_size(5 << 20)
        .max_send_buffer_size(1 << 20)
        .enable_push(false)
        .handshake::<_, Bytes>(tcp)
        .await?;
    tokio::spawn(connection);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let (sender, frame, uri) = (sender.clone(), frame.clone(), uri.clone());
        let service = hyper::service::service_fn(move |_: Request<hyper::body::Incoming>| {
            let (sender, frame, uri) = (sender.clone(), frame.clone(), uri.clone());
            async move {
                let reply = floor_call(sender, frame, uri).await;
                let response = match reply {
                    Ok(reply) => hyper::Response::new(Full::new(reply)),
                    Err(_) => {
                        let mut response = hyper::Response::new(Full::default());
                        *response.status_mut() = http::StatusCode::BAD_GATEWAY;
                        response
                    }
                };
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let io = TokioIo::new(stream);
        if http2 {
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service),
            );
        } else {
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
        }
    }
}

/// One unary call: the frame out, the reply's message back once the
/// trailers say OK.
async fn floor_call(
    sender: h2::client::SendRequest<Bytes>,
    frame: Bytes,
    uri: http::Uri,
) -> Result<Bytes, BoxError> {
    let mut request = Request::new(());
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    let mut sender = sender.ready().await?;
    let (response, mut stream) = sender.send_request(request, false)?;
    stream.send_data(frame, true)?;
    let mut body = response.await?.into_body();
    let mut reply = bytes::BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        body.flow_control().release_capacity(chunk.len())?;
        reply.extend_from_slice(&chunk);
    }
    let ok = body
        .trailers()
        .await?
        .and_then(|trailers| trailers.get("grpc-status").cloned())
        .is_some_and(|status| status == "0");
    if !ok || reply.len() < 5 {
        return Err("the call failed".into());
    }
    Ok(reply.freeze().split_off(5))
}

/// A child process killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Process {
    fn spawn(args: &[String]) -> Result<Self, BoxError> {
        let child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        Ok(Self(child))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

/// Ratios as the table prints them: `1.02×, 1.10×`.
fn times(ratios: impl IntoIterator<Item = f64>) -> String {
    let ratios: Vec<String> = ratios
        .into_iter()
        .map(|ratio| format!("{ratio:.2}×"))
        .collect();
    ratios.join(", ")
}

fn free_port() -> Result<SocketAddr, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The CPU time a process spent, in user space and in the kernel.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    user: Duration,
    kernel: Duration,
}

/// CPU time per request, in µs.
#[derive(Debug, Clone, Copy)]
struct CpuPerRequest {
    user: f64,
    kernel: f64,
}

impl Cpu {
    /// The time spent since `before`, per request.
    #[allow(clippy::cast_precision_loss)]
    fn per_request_since(self, before: Self, requests: usize) -> CpuPerRequest {
        let us = |after: Duration, before: Duration| {
            after.saturating_sub(before).as_secs_f64() * 1e6 / requests as f64
        };
        CpuPerRequest {
            user: us(self.user, before.user),
            kernel: us(self.kernel, before.kernel),
        }
    }
}

impl CpuPerRequest {
    fn total(self) -> f64 {
        self.user + self.kernel
    }
}

/// The total, then the kernel's part: on loopback the kernel's share is
/// mostly the sockets' work, which the protocols decide (one read and one
/// write per HTTP/1.1 request; HTTP/2 frames of many streams per write).
impl std::fmt::Display for CpuPerRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1} ({:.1} kernel)", self.total(), self.kernel)
    }
}

/// The user and system CPU time of a process.
fn cpu_time(pid: u32) -> Cpu {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after the name.
    Cpu {
        user: Duration::from_millis(ticks(11) * 10),
        kernel: Duration::from_millis(ticks(12) * 10),
    }
}

/// The synthetic API's cost: catalog build (measured here, on the same
/// sets; the swap itself is one pointer store) and the gateway's memory.
fn scale_report(services: usize, gateway: u32) -> Result<(), BoxError> {
    let mut sets = demo::descriptor_sets();
    sets.push(demo::synthetic_set(services)?);
    let mut builds = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let catalog = protogate::check(sets.clone(), false)?;
        builds.push(started.elapsed());
        drop(catalog);
    }
    builds.sort();
    println!(
        "{services} synthetic services ({} routes) loaded: catalog build median {:.0} ms; \
         gateway RSS after start {:.1} MiB\n",
        services * 10,
        builds[builds.len() / 2].as_secs_f64() * 1000.0,
        rss_mib(gateway, "VmRSS:")
    );
    Ok(())
}

fn peak_rss_mib(pid: u32) -> f64 {
    rss_mib(pid, "VmHWM:")
}

/// A memory line of `/proc/<pid>/status`, in MiB.
fn rss_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn wait_for(addr: SocketAddr) -> Result<(), BoxError> {
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(format!("{addr} never accepted a connection").into())
}

/// One round of one workload: through the gateway, then direct, with the
/// CPU each process spent per request.
struct Round {
    http: Run,
    grpc: Run,
    backend_http: CpuPerRequest,
    backend_grpc: CpuPerRequest,
    gateway_cpu: Option<CpuPerRequest>,
    floor: Option<Floor>,
}

/// The workload through the floor proxy.
struct Floor {
    run: Run,
    cpu: CpuPerRequest,
    backend: CpuPerRequest,
}

impl Floor {
    /// Its CPU over the backend's in the same round.
    fn ratio(&self) -> f64 {
        self.cpu.total() / self.backend.total()
    }
}

impl Round {
    /// Gateway CPU over the backend's, for the gateway the bench started.
    fn ratio(&self) -> Option<f64> {
        self.gateway_cpu
            .map(|g| g.total() / self.backend_http.total())
    }
}

/// What one run of one workload measured.
struct Run {
    seconds: f64,
    latencies: Vec<Duration>,
    errors: usize,
}

impl Run {
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let index =
            ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len()) - 1;
        self.latencies[index].as_secs_f64() * 1e6
    }

    /// Every request of `runs` as one run: one round's p99 moves with
    /// whether a stall of the machine fell in it, a p99 over ten rounds'
    /// requests much less.
    fn pooled<'a>(runs: impl Iterator<Item = &'a Run>) -> Run {
        let mut pooled = Run {
            seconds: 0.0,
            latencies: Vec::new(),
            errors: 0,
        };
        for run in runs {
            pooled.seconds += run.seconds;
            pooled.latencies.extend_from_slice(&run.latencies);
            pooled.errors += run.errors;
        }
        pooled.latencies.sort_unstable();
        pooled
    }

    #[allow(clippy::cast_precision_loss)]
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.seconds
    }
}

/// When each connection sends its requests: as soon as the last reply is
/// in, or on a fixed schedule that spreads `rate` requests per second over
/// the connections, each connection offset from the others.
#[derive(Debug, Clone, Copy)]
struct Pace {
    interval: Option<Duration>,
    offset: Duration,
}

impl Pace {
    fn new(rate: Option<f64>, concurrency: usize, worker: usize) -> Self {
        #[allow(clippy::cast_precision_loss)]
        let interval = rate
            .filter(|rate| *rate > 0.0)
            .map(|rate| Duration::from_secs_f64(concurrency as f64 / rate));
        #[allow(clippy::cast_possible_truncation)]
        let offset = interval.map_or(Duration::ZERO, |interval| {
            interval * worker as u32 / concurrency.max(1) as u32
        });
        Self { interval, offset }
    }

    /// The pace of stream `stream` of `streams` sharing one connection: they
    /// take the connection's sends in turn, so that its schedule stays
    /// the same.
    fn stream(self, stream: usize, streams: usize) -> Self {
        #[allow(clippy::cast_possible_truncation)]
        let (stream, streams) = (stream as u32, streams as u32);
        match self.interval {
            Some(interval) => Self {
                interval: Some(interval * streams),
                offset: self.offset + interval * stream,
            },
            None => self,
        }
    }

    /// Waits for the `n`th send of a connection that started at `start`.
    /// A latency is timed from the actual send, so the timer's millisecond
    /// granularity is not counted; at a rate well below capacity a send is
    /// never held back by the previous reply.
    async fn wait(self, start: tokio::time::Instant, n: u32) {
        if let Some(interval) = self.interval {
            tokio::time::sleep_until(start + self.offset + interval * n).await;
        }
    }
}

/// Where and how the HTTP clients connect.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    /// TLS to `localhost` with this client, when set.
    tls: Option<TlsConnector>,
    http2: bool,
    /// Concurrent streams per connection (1 for HTTP/1.1).
    streams: usize,
}

impl Target {
    fn cleartext(addr: SocketAddr) -> Self {
        Self {
            addr,
            tls: None,
            http2: false,
            streams: 1,
        }
    }
}

/// A client connection, HTTP/1.1 or HTTP/2.
enum Sender {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>, &'static str),
}

impl Sender {
    async fn open(target: &Target) -> Result<Self, BoxError> {
        let stream = TcpStream::connect(target.addr).await?;
        stream.set_nodelay(true)?;
        match &target.tls {
            Some(tls) => {
                let stream = tls
                    .connect(
                        rustls::pki_types::ServerName::try_from("localhost")?,
                        stream,
                    )
                    .await?;
                Self::handshake(stream, target.http2, "https").await
            }
            None => Self::handshake(stream, target.http2, "http").await,
        }
    }

    async fn handshake<T>(io: T, http2: bool, scheme: &'static str) -> Result<Self, BoxError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        if http2 {
            let (sender, connection) = http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(connection);
            Ok(Self::Http2(sender, scheme))
        } else {
            let (sender, connection) = http1::handshake(io).await?;
            tokio::spawn(connection);
            Ok(Self::Http1(sender))
        }
    }

    /// One sender per concurrent stream: an HTTP/2 connection's, cloned;
    /// an HTTP/1.1 connection carries one request at a time.
    fn streams(self, streams: usize) -> Vec<Self> {
        match self {
            Self::Http1(_) => vec![self],
            Self::Http2(sender, scheme) => (0..streams)
                .map(|_| Self::Http2(sender.clone(), scheme))
                .collect(),
        }
    }

    async fn send(
        &mut self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, BoxError> {
        Ok(match self {
            Self::Http1(sender) => sender.send_request(request).await?,
            Self::Http2(sender, scheme) => {
                // HTTP/2 names the scheme and authority in the request itself.
                let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
                *request.uri_mut() = format!("{scheme}://localhost{path}").parse()?;
                request.headers_mut().remove("host");
                sender.send_request(request).await?
            }
        })
    }
}

/// `requests` requests over `concurrency` keep-alive connections, each
/// carrying `target.streams` of them at once.
async fn drive_http(
    target: &Target,
    workload: Workload,
    requests: usize,
    concurrency: usize,
    rate: Option<f64>,
) -> Result<Run, BoxError> {
    spread(requests, concurrency, rate, move |count, pace| {
        let target = target.clone();
        async move {
            let senders = Sender::open(&target).await?.streams(target.streams);
            multiplex(count, pace, senders, move |sender, count, pace| {
                http_requests(sender, workload, count, pace)
            })
            .await
        }
    })
    .await
}

/// `count` requests of `workload` one after the other on `sender`.
async fn http_requests(
    mut sender: Sender,
    workload: Workload,
    count: usize,
    pace: Pace,
) -> Result<(Vec<Duration>, usize), BoxError> {
    let mut latencies = Vec::with_capacity(count);
    let mut errors = 0;
    let start = tokio::time::Instant::now();
    for n in (0..).take(count) {
        pace.wait(start, n).await;
        let begin = Instant::now();
        let response = sender.send(workload.request()).await?;
        let ok = response.status().is_success();
        response.into_body().collect().await?;
        latencies.push(begin.elapsed());
        errors += usize::from(!ok);
    }
    Ok((latencies, errors))
}

/// One connection's `count` requests over its streams, each stream with
/// its share and its turn of the connection's pace, all at once.
async fn multiplex<T, F, C>(
    count: usize,
    pace: Pace,
    streams: Vec<T>,
    stream: F,
) -> Result<(Vec<Duration>, usize), BoxError>
where
    F: Fn(T, usize, Pace) -> C,
    C: Future<Output = Result<(Vec<Duration>, usize), BoxError>>,
{
    let total = streams.len();
    let runs = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| stream(s, share(count, total, i), pace.stream(i, total)));
    let mut latencies = Vec::with_capacity(count);
    let mut errors = 0;
    for (mut run, run_errors) in futures_util::future::try_join_all(runs).await? {
        latencies.append(&mut run);
        errors += run_errors;
    }
    Ok((latencies, errors))
}

/// `count` new TLS connections, each closed once its handshake is done.
async fn drive_handshakes(
    target: &Target,
    count: usize,
    concurrency: usize,
) -> Result<Run, BoxError> {
    let tls = target.tls.clone().ok_or("--handshakes needs --tls")?;
    spread(count, concurrency, None, move |count, _| {
        let (tls, addr) = (tls.clone(), target.addr);
        async move {
            let mut latencies = Vec::with_capacity(count);
            for _ in 0..count {
                let begin = Instant::now();
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let name = rustls::pki_types::ServerName::try_from("localhost")?;
                let mut stream = tls.connect(name, tcp).await?;
                latencies.push(begin.elapsed());
                stream.shutdown().await?;
            }
            Ok((latencies, 0))
        }
    })
    .await
}

/// The size of an echo round trip's message.
const ECHO_BYTES: usize = 64;

/// `requests` echo round trips over `concurrency` connections.
async fn drive_echo(
    addr: SocketAddr,
    requests: usize,
    concurrency: usize,
    rate: Option<f64>,
) -> Result<Run, BoxError> {
    spread(requests, concurrency, rate, move |count, pace| async move {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut buffer = [b'x'; ECHO_BYTES];
        let mut latencies = Vec::with_capacity(count);
        let start = tokio::time::Instant::now();
        for n in (0..).take(count) {
            pace.wait(start, n).await;
            let begin = Instant::now();
            stream.write_all(&buffer).await?;
            stream.read_exact(&mut buffer).await?;
            latencies.push(begin.elapsed());
        }
        Ok((latencies, 0))
    })
    .await
}

/// The same calls made directly over gRPC, one channel per connection
/// the HTTP clients open, carrying as many calls at once as their streams.
async fn drive_grpc(
    backend: &Endpoint,
    workload: Workload,
    requests: usize,
    concurrency: usize,
    streams: usize,
    rate: Option<f64>,
) -> Result<Run, BoxError> {
    spread(requests, concurrency, rate, move |count, pace| {
        let backend = backend.clone();
        async move {
            let channel: Channel = backend.connect().await?;
            let clients = vec![OrderServiceClient::new(channel); streams];
            multiplex(count, pace, clients, move |client, count, pace| {
                grpc_calls(client, workload, count, pace)
            })
            .await
        }
    })
    .await
}

/// `count` calls of `workload` one after the other on `client`.
async fn grpc_calls(
    mut client: OrderServiceClient<Channel>,
    workload: Workload,
    count: usize,
    pace: Pace,
) -> Result<(Vec<Duration>, usize), BoxError> {
    let mut latencies = Vec::with_capacity(count);
    let start = tokio::time::Instant::now();
    for n in (0..).take(count) {
        pace.wait(start, n).await;
        let begin = Instant::now();
        match workload {
            Workload::Get => {
                client
                    .get_order(GetOrderRequest {
                        id: "o-1".into(),
                        customer_id: String::new(),
                    })
                    .await?;
            }
            Workload::Post => {
                let order = Order {
                    customer_id: "c-9".into(),
                    currency: "EUR".into(),
                    items: vec![
                        LineItem {
                            sku: "sku-book".into(),
                            quantity: 1,
                            unit_price_cents: 1999,
                        },
                        LineItem {
                            sku: "sku-pen".into(),
                            quantity: 2,
                            unit_price_cents: 150,
                        },
                    ],
                    ..Order::default()
                };
                client
                    .create_order(CreateOrderRequest {
                        order: Some(order),
                        order_id: String::new(),
                    })
                    .await?;
            }
            Workload::List(n) => {
                client
                    .list_orders(ListOrdersRequest {
                        page_size: n,
                        ..ListOrdersRequest::default()
                    })
                    .await?;
            }
        }
        latencies.push(begin.elapsed());
    }
    Ok((latencies, 0))
}

/// `requests` spread over `concurrency` connections, each a task that runs
/// `connection` with its share and its pace and returns its latencies and
/// errors.
async fn spread<F, C>(
    requests: usize,
    concurrency: usize,
    rate: Option<f64>,
    connection: F,
) -> Result<Run, BoxError>
where
    F: Fn(usize, Pace) -> C,
    C: Future<Output = Result<(Vec<Duration>, usize), BoxError>> + Send + 'static,
{
    let started = Instant::now();
    let tasks = (0..concurrency)
        .map(|worker| {
            let count = share(requests, concurrency, worker);
            tokio::spawn(connection(count, Pace::new(rate, concurrency, worker)))
        })
        .collect();
    collect(started, tasks).await
}

/// Part `part`'s share of `total` split over `parts`.
fn share(total: usize, parts: usize, part: usize) -> usize {
    total / parts + usize::from(part < total % parts)
}

async fn collect(started: Instant, tasks: Vec<Worker>) -> Result<Run, BoxError> {
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (mut worker, worker_errors) = task.await??;
        latencies.append(&mut worker);
        errors += worker_errors;
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    Ok(Run {
        seconds,
        latencies,
        errors,
    })
}

/// One round: the workload through the gateway, then direct, with the CPU
/// time the processes spent on each.
/// One inline command to the redis-server at `addr`; its raw reply.
fn redis_command(addr: SocketAddr, command: &str) -> Result<String, BoxError> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.write_all(format!("{command}\r\n").as_bytes())?;
    let mut reply = vec![0; 16 << 10];
    let read = stream.read(&mut reply)?;
    Ok(String::from_utf8_lossy(&reply[..read]).into_owned())
}

/// The `EVALSHA` calls an `INFO commandstats` reply counts.
fn evalsha_calls(stats: &str) -> usize {
    stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

async fn round(
    args: &Args,
    workload: Workload,
    gateway: &Target,
    gateway_pid: Option<u32>,
    backend: &Endpoint,
    backend_pid: u32,
    floor: Option<(&Target, u32)>,
) -> Result<Round, BoxError> {
    let (backend_before, gateway_before) = (cpu_time(backend_pid), gateway_pid.map(cpu_time));
    let http = drive_http(
        gateway,
        workload,
        args.requests,
        args.concurrency,
        args.rate,
    )
    .await?;
    let (backend_mid, gateway_after) = (cpu_time(backend_pid), gateway_pid.map(cpu_time));
    let grpc = drive_grpc(
        backend,
        workload,
        args.requests,
        args.concurrency,
        gateway.streams,
        args.rate,
    )
    .await?;
    let backend_after = cpu_time(backend_pid);
    let floor = match floor {
        Some((target, pid)) => {
            let before = (cpu_time(pid), cpu_time(backend_pid));
            let run =
                drive_http(target, workload, args.requests, args.concurrency, args.rate).await?;
            Some(Floor {
                run,
                cpu: cpu_time(pid).per_request_since(before.0, args.requests),
                backend: cpu_time(backend_pid).per_request_since(before.1, args.requests),
            })
        }
        None => None,
    };
    Ok(Round {
        floor,
        http,
        grpc,
        backend_http: backend_mid.per_request_since(backend_before, args.requests),
        backend_grpc: backend_after.per_request_since(backend_mid, args.requests),
        gateway_cpu: gateway_before
            .zip(gateway_after)
            .map(|(before, after)| after.per_request_since(before, args.requests)),
    })
}

async fn bench(args: &Args) -> Result<(), BoxError> {
    let pki = if args.tls || args.tls_upstream {
        Some(BenchPki::generate()?)
    } else {
        None
    };
    let redis = match args.rate_limit {
        Some(QuotaPolicy::Redis) => {
            let addr = free_port()?;
            let child = Command::new("redis-server")
                .args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .spawn()
                .map_err(|err| {
                    format!(
                        "cannot start redis-server (Debian: apt-get install redis-server): {err}"
                    )
                })?;
            let redis = Process(child);
            wait_for(addr).await?;
            Some((redis, addr))
        }
        _ => None,
    };
    let collector = if args.otlp {
        Some(SpanSink::start(SocketAddr::from(([127, 0, 0, 1], 0))).await?)
    } else {
        None
    };
    let backend_addr = free_port()?;
    let mut backend_args = vec!["backend".into(), backend_addr.to_string()];
    let mut backend = Endpoint::from_shared(format!("http://{backend_addr}"))?;
    if let Some(pki) = pki.as_ref().filter(|_| args.tls_upstream) {
        backend_args.push(format!("--cert={}", pki.cert.display()));
        backend_args.push(format!("--key={}", pki.key.display()));
        backend = Endpoint::from_shared(format!("https://{backend_addr}"))?.tls_config(
            ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca_pem))
                .domain_name("localhost"),
        )?;
    }
    let backend_process = Process::spawn(&backend_args)?;
    wait_for(backend_addr).await?;
    let backend_url = backend.uri().to_string();
    let backend_url = backend_url.trim_end_matches('/');

    let (gateway, gateway_addr) = match &args.gateway {
        Some(url) => {
            let addr = url
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .parse()?;
            (None, addr)
        }
        None => {
            let addr = free_port()?;
            let mut gateway_args = vec!["gateway".into(), addr.to_string(), backend_url.to_owned()];
            // Compiled here: a gateway loads descriptor sets, not sources.
            let synthetic =
                std::env::temp_dir().join(format!("loadbench-{}.binpb", std::process::id()));
            if args.services > 0 {
                std::fs::write(&synthetic, &demo::synthetic_set(args.services)?.bytes)?;
                gateway_args.push(format!("--descriptor-set={}", synthetic.display()));
            }
            if args.access_log {
                gateway_args.push("--access-log".into());
            }
            gateway_args.push(format!("--workers={}", args.workers));
            if args.unpinned {
                gateway_args.push("--unpinned".into());
            }
            let mut tls_addr = None;
            if let Some(pki) = &pki {
                let listen = free_port()?;
                tls_addr = Some(listen);
                gateway_args.push(format!("--tls-listen={listen}"));
                gateway_args.push(format!("--cert={}", pki.cert.display()));
                gateway_args.push(format!("--key={}", pki.key.display()));
                gateway_args.push(format!("--ca={}", pki.ca.display()));
            }
            if let Some(policy) = args.rate_limit {
                gateway_args.push("--rate-limit".into());
                gateway_args.push(format!("{policy:?}").to_lowercase());
            }
            if let Some(redis) = &redis {
                gateway_args.push(format!("--redis=redis://{}/0", redis.1));
            }
            if let Some(collector) = &collector {
                gateway_args.push(format!("--otlp=http://{}", collector.addr));
            }
            let process = Process::spawn(&gateway_args)?;
            wait_for(addr).await?;
            if let Some(tls_addr) = tls_addr {
                wait_for(tls_addr).await?;
            }
            if args.services > 0 {
                std::fs::remove_file(&synthetic).ok();
                scale_report(args.services, process.pid())?;
            }
            let addr = tls_addr.filter(|_| args.tls).unwrap_or(addr);
            (Some(process), addr)
        }
    };
    let alpn: &[u8] = if args.http2 { b"h2" } else { b"http/1.1" };
    let target = Target {
        addr: gateway_addr,
        tls: match &pki {
            Some(pki) if args.tls => Some(pki.connector(alpn)?),
            _ => None,
        },
        http2: args.http2,
        streams: usize::try_from(args.streams)?,
    };
    let gateway_pid = gateway.as_ref().map(Process::pid);

    let pace = args
        .rate
        .map_or_else(String::new, |rate| format!(", paced at {rate} requests/s"));
    let client = match (args.http2, target.tls.is_some()) {
        (false, false) => "HTTP/1.1",
        (false, true) => "HTTP/1.1 over TLS",
        (true, false) => "HTTP/2 (h2c)",
        (true, true) => "HTTP/2 over TLS",
    };
    let quotas = match (args.rate_limit, &redis) {
        (Some(QuotaPolicy::Local), _) => ", a quota counted in process".to_owned(),
        (Some(QuotaPolicy::Redis), Some((_, addr))) => {
            format!(", a quota counted in the redis-server at {addr}")
        }
        _ => String::new(),
    };
    let spans = if collector.is_some() {
        ", every request's spans exported over OTLP"
    } else {
        ""
    };
    if let (Some(count), Some(pid)) = (args.idle_connections, gateway_pid) {
        return idle_connections(gateway_addr, pid, count).await;
    }
    let connections = if args.http2 {
        let streams = match target.streams {
            1 => "1 stream".to_owned(),
            n => format!("{n} streams"),
        };
        format!("{} connections, {streams} each", args.concurrency)
    } else {
        format!("{} connections", args.concurrency)
    };
    // Requests in flight at once.
    let in_flight = args.concurrency * target.streams;
    println!(
        "{} requests per workload, {client}, {connections} (keep-alive){pace}{quotas}{spans}; gateway {} → backend {backend_url}\n",
        args.requests, gateway_addr
    );
    // What any proxy in a process of its own adds at the least: one more
    // round trip between two processes.
    let echo_addr = free_port()?;
    let _echo = Process::spawn(&["echo".into(), echo_addr.to_string()])?;
    wait_for(echo_addr).await?;
    drive_echo(echo_addr, in_flight * 20, in_flight, None).await?;
    let echo = drive_echo(echo_addr, args.requests, in_flight, args.rate).await?;
    println!(
        "A {ECHO_BYTES}-byte echo between two processes on this machine, over {in_flight} connections (as many as requests in flight), same pace: \
         p50 {:.0} µs, p99 {:.0} µs (the least one more hop adds)\n",
        echo.percentile(0.5),
        echo.percentile(0.99)
    );
    let floor = if args.floor {
        let addr = free_port()?;
        let mut floor_args = vec!["floor".into(), addr.to_string(), backend_addr.to_string()];
        if args.http2 {
            floor_args.push("--http2".into());
        }
        let process = Process::spawn(&floor_args)?;
        wait_for(addr).await?;
        // Its clients as the gateway's, in cleartext.
        let target = Target {
            http2: args.http2,
            streams: target.streams,
            ..Target::cleartext(addr)
        };
        Some((process, target))
    } else {
        None
    };
    println!("| workload | path | req/s | p50 µs | p99 µs | p99.9 µs | gateway CPU µs/req | backend CPU µs/req | gateway/backend CPU | errors |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    // 100 orders for the list workloads to page; POST runs last, since every
    // request adds an order and the example backend's list sorts them all.
    drive_http(&target, Workload::Post, 100, 4, None).await?;
    let workloads = [
        (WorkloadName::Get, Workload::Get),
        (WorkloadName::List10, Workload::List(10)),
        (WorkloadName::List100, Workload::List(100)),
        (WorkloadName::Post, Workload::Post),
    ];
    let mut summary = Vec::new();
    // Decisions per call to the started redis-server, per workload.
    let mut batches = Vec::new();
    // With several rounds: each workload's p99 ratio, all rounds' and each one's.
    let mut p99_spreads = Vec::new();
    for (short, workload) in workloads
        .into_iter()
        .filter(|(name, _)| args.only.is_empty() || args.only.contains(name))
    {
        // Warm-up: connections, caches, lazily connected channels.
        drive_http(&target, workload, in_flight * 20, args.concurrency, None).await?;
        drive_grpc(
            &backend,
            workload,
            in_flight * 20,
            args.concurrency,
            target.streams,
            None,
        )
        .await?;
        // The floor proxy forwards GetOrder, so it runs with that workload.
        let floor = floor
            .as_ref()
            .filter(|_| matches!(workload, Workload::Get))
            .map(|(process, target)| (target, process.pid()));
        if let Some((floor, _)) = floor {
            drive_http(floor, workload, in_flight * 20, args.concurrency, None).await?;
        }

        if let Some((_, addr)) = &redis {
            redis_command(*addr, "CONFIG RESETSTAT")?;
        }
        let mut rounds = Vec::new();
        for _ in 0..args.rounds {
            rounds.push(
                round(
                    args,
                    workload,
                    &target,
                    gateway_pid,
                    &backend,
                    backend_process.pid(),
                    floor,
                )
                .await?,
            );
        }
        // Every request through the gateway is one decision.
        if let Some((_, addr)) = &redis {
            let decisions = args.requests * usize::try_from(args.rounds)?;
            let calls = evalsha_calls(&redis_command(*addr, "INFO commandstats")?);
            batches.push(format!(
                "{}: {decisions} decisions in {calls} EVALSHA calls, {:.1} a call",
                workload.name(),
                decisions as f64 / calls.max(1) as f64
            ));
        }
        // The median by CPU ratio (by gateway p50 when the gateway is not ours).
        rounds.sort_by(|a, b| {
            let key = |r: &Round| r.ratio().unwrap_or_else(|| r.http.percentile(0.5));
            key(a).total_cmp(&key(b))
        });
        let ratios: Vec<f64> = rounds.iter().filter_map(Round::ratio).collect();
        let Round {
            http,
            grpc,
            backend_http,
            backend_grpc,
            gateway_cpu,
            ..
        } = &rounds[rounds.len() / 2];
        let ratio = match (rounds[rounds.len() / 2].ratio(), ratios.len()) {
            (None, _) => "–".to_owned(),
            (Some(ratio), 1) => format!("{ratio:.2}×"),
            (Some(ratio), _) => format!("{ratio:.2}× (of {})", times(ratios)),
        };
        let all_http = Run::pooled(rounds.iter().map(|r| &r.http));
        let all_grpc = Run::pooled(rounds.iter().map(|r| &r.grpc));
        let p99_ratio = all_http.percentile(0.99) / all_grpc.percentile(0.99);
        // The floor proxy's rounds, by CPU ratio, and all their requests.
        let mut floors: Vec<&Floor> = rounds.iter().filter_map(|r| r.floor.as_ref()).collect();
        floors.sort_by(|a, b| a.ratio().total_cmp(&b.ratio()));
        let all_floor = Run::pooled(floors.iter().map(|f| &f.run));
        let floor_p99_ratio = all_floor.percentile(0.99) / all_grpc.percentile(0.99);
        let median_floor = floors.get(floors.len() / 2);
        summary.push(format!(
            "{} cpu {} p99 {p99_ratio:.2}×{}{}",
            short
                .to_possible_value()
                .map_or_else(String::new, |v| v.get_name().to_owned()),
            rounds[rounds.len() / 2]
                .ratio()
                .map_or_else(|| "–".to_owned(), |ratio| format!("{ratio:.2}×")),
            if rounds.len() > 1 {
                format!(" over all {} rounds", rounds.len())
            } else {
                String::new()
            },
            median_floor.map_or_else(String::new, |floor| format!(
                " (floor proxy cpu {:.2}× p99 {floor_p99_ratio:.2}×)",
                floor.ratio()
            )),
        ));
        let gateway_cpu = gateway_cpu.map_or_else(|| "–".to_owned(), |g| g.to_string());
        let name = workload.name();
        println!(
            "| {name} | gateway | {:.0} | {:.0} | {:.0} | {:.0} | {gateway_cpu} | {backend_http} | {ratio} | {} |",
            http.rate(), http.percentile(0.5), http.percentile(0.99), http.percentile(0.999), http.errors
        );
        println!(
            "| {name} | direct gRPC | {:.0} | {:.0} | {:.0} | {:.0} | – | {backend_grpc} | – | {} |",
            grpc.rate(), grpc.percentile(0.5), grpc.percentile(0.99), grpc.percentile(0.999), grpc.errors
        );
        if rounds.len() > 1 {
            for (path, run) in [("gateway", &all_http), ("direct gRPC", &all_grpc)] {
                println!(
                    "| {name} | {path}, all {} rounds | {:.0} | {:.0} | {:.0} | {:.0} | – | – | – | {} |",
                    rounds.len(), run.rate(), run.percentile(0.5), run.percentile(0.99),
                    run.percentile(0.999), run.errors
                );
            }
            // By size: how far one round's p99 strays from all rounds'.
            let mut each: Vec<f64> = rounds
                .iter()
                .map(|r| r.http.percentile(0.99) / r.grpc.percentile(0.99))
                .collect();
            each.sort_by(f64::total_cmp);
            p99_spreads.push(format!(
                "{name}: p99 {p99_ratio:.2}× the direct call's over all {} rounds; each round's, by size: {}{}",
                rounds.len(),
                times(each),
                if floors.is_empty() {
                    String::new()
                } else {
                    format!("; the floor proxy's {floor_p99_ratio:.2}×")
                }
            ));
        }
        if let Some(floor) = median_floor {
            let Floor { run, cpu, backend } = floor;
            let protocol = if args.http2 {
                "HTTP/2 (h2c)"
            } else {
                "HTTP/1.1"
            };
            println!(
                "| {name} | floor proxy ({protocol} in, HTTP/2 out, nothing else) | {:.0} | {:.0} | {:.0} | {:.0} | {cpu} | {backend} | {:.2}×{} | {} |",
                run.rate(), run.percentile(0.5), run.percentile(0.99), run.percentile(0.999),
                floor.ratio(),
                if floors.len() > 1 { format!(" (of {})", times(floors.iter().map(|f| f.ratio()))) } else { String::new() },
                run.errors
            );
            if floors.len() > 1 {
                println!(
                    "| {name} | floor proxy, all {} rounds | {:.0} | {:.0} | {:.0} | {:.0} | – | – | – | {} |",
                    floors.len(), all_floor.rate(), all_floor.percentile(0.5),
                    all_floor.percentile(0.99), all_floor.percentile(0.999), all_floor.errors
                );
            }
        }
    }
    for spread in &p99_spreads {
        println!("\n{spread}");
    }
    for batch in &batches {
        println!("\nQuotas in Redis, {batch}");
    }
    println!(
        "\nsummary: {} {client}, {connections}, {}, workers {}{}, load average {}: {}",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        args.rate
            .map_or_else(|| "unpaced".to_owned(), |rate| format!("{rate}/s")),
        args.workers,
        if args.unpinned { " unpinned" } else { "" },
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .unwrap_or("?"),
        summary.join("; ")
    );
    if args.handshakes > 0 {
        drive_handshakes(&target, args.concurrency * 10, args.concurrency).await?;
        let before = gateway_pid.map(cpu_time);
        let run = drive_handshakes(&target, args.handshakes, args.concurrency).await?;
        let cpu = before
            .zip(gateway_pid.map(cpu_time))
            .map(|(before, after)| after.per_request_since(before, args.handshakes));
        println!(
            "\n{} new TLS handshakes (ECDSA P-256, no resumption) over {} connections at once: {:.0}/s, p50 {:.0} µs, p99 {:.0} µs",
            args.handshakes,
            args.concurrency,
            run.rate(),
            run.percentile(0.5),
            run.percentile(0.99)
        );
        if let Some(cpu) = cpu {
            println!(
                "gateway CPU per handshake: {cpu} µs, so {:.0} handshakes per second on one core",
                1e6 / cpu.total()
            );
        }
    }
    if let Some(pid) = gateway_pid {
        println!(
            "\ngateway RSS: {:.1} MiB now, {:.1} MiB peak; backend peak RSS: {:.1} MiB",
            rss_mib(pid, "VmRSS:"),
            peak_rss_mib(pid),
            peak_rss_mib(backend_process.pid())
        );
    }
    if let Some(collector) = &collector {
        println!(
            "spans received by the OTLP collector: {}",
            collector.spans.load(Ordering::Relaxed)
        );
    }
    Ok(())
}

/// An OTLP trace collector on loopback that counts the spans it receives
/// and keeps none.
#[derive(Clone)]
struct SpanSink {
    addr: SocketAddr,
    spans: Arc<AtomicU64>,
}

impl SpanSink {
    async fn start(listen: SocketAddr) -> Result<Self, BoxError> {
        let listener = TcpListener::bind(listen).await?;
        let sink = Self {
            addr: listener.local_addr()?,
            spans: Arc::default(),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(sink.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Ok(sink)
    }
}

#[tonic::async_trait]
impl TraceService for SpanSink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len() as u64)
            .sum();
        self.spans.fetch_add(spans, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// How long the gateway's memory is left to settle before it is read: its
/// idle connections' deadlines and the allocator's give-back pass run
/// every few seconds.
const SETTLE: Duration = Duration::from_secs(20);

/// The gateway's resident memory with no client, with `count` idle
/// keep-alive connections that made one GET each, and once they closed.
async fn idle_connections(addr: SocketAddr, pid: u32, count: usize) -> Result<(), BoxError> {
    // The client holds a descriptor per connection too.
    rlimit::increase_nofile_limit(u64::MAX)?;
    drive_http(&Target::cleartext(addr), Workload::Get, 100, 4, None).await?;
    tokio::time::sleep(SETTLE).await;
    let baseline = rss_mib(pid, "VmRSS:");
    let mut connections = Vec::with_capacity(count);
    // In batches, so that the listen backlog never overflows.
    for batch in (0..count).collect::<Vec<_>>().chunks(500) {
        let opened = batch.iter().map(|_| async {
            let mut stream = TcpStream::connect(addr).await?;
            one_get(&mut stream).await?;
            Ok::<_, BoxError>(stream)
        });
        for stream in futures_util::future::join_all(opened).await {
            connections.push(stream?);
        }
    }
    tokio::time::sleep(SETTLE).await;
    let idle = rss_mib(pid, "VmRSS:");
    // Every connection still serves after idling.
    for stream in connections.iter_mut().step_by(100) {
        one_get(stream).await?;
    }
    drop(connections);
    tokio::time::sleep(SETTLE).await;
    let after = rss_mib(pid, "VmRSS:");
    #[allow(clippy::cast_precision_loss)]
    let per_connection = (idle - baseline) * 1024.0 / count as f64;
    println!(
        "gateway RSS: {baseline:.1} MiB with no client; {idle:.1} MiB with {count} idle keep-alive \
         connections ({per_connection:.1} KiB each); {after:.1} MiB after they closed \
         ({:+.0}% of the first); each figure {} s after the change",
        (after / baseline - 1.0) * 100.0,
        SETTLE.as_secs()
    );
    Ok(())
}

/// One `GET /v1/orders/o-1` on a keep-alive HTTP/1.1 connection, its
/// response read to the end of its `content-length` body.
async fn one_get(stream: &mut TcpStream) -> Result<(), BoxError> {
    stream
        .write_all(b"GET /v1/orders/o-1 HTTP/1.1\r\nhost: bench\r\n\r\n")
        .await?;
    let mut response = Vec::with_capacity(1024);
    loop {
        if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&response[..end])?;
            if !head.starts_with("HTTP/1.1 200") {
                return Err(format!("unexpected response: {head}").into());
            }
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .ok_or("no content-length")?;
            if response.len() >= end + 4 + length {
                return Ok(());
            }
        }
        if stream.read_buf(&mut response).await? == 0 {
            return Err("the gateway closed the connection".into());
        }
    }
}
