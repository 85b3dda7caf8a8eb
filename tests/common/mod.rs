//! Test harness: real tonic backends and a real gateway on loopback, talked to
//! over HTTP with reqwest.
#![allow(dead_code, unreachable_pub)]

pub mod browser;
pub mod process;
pub mod raw_upstream;
pub mod tokens;

use std::{net::SocketAddr, path::Path, time::Duration};

use bytes::Bytes;
use prost::Message as _;
use protogate::{
    config::UpstreamConfig,
    pb::{
        google::rpc::{bad_request::FieldViolation, BadRequest, ErrorInfo, Status as RpcStatus},
        protogate::testing::v1::{
            echo_message::Choice,
            test_service_server::{TestService, TestServiceServer},
            Deep, EchoMessage, FailRequest, Headers, Nested, SleepRequest, UpdateResourceRequest,
        },
    },
    registry::DescriptorSet,
    Config, Server,
};
use serde_json::Value as Json;
use tokio::{net::TcpListener, sync::oneshot};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status};

/// The protogate.testing.v1 descriptor set, compiled by build.rs.
pub fn testing_set() -> DescriptorSet {
    DescriptorSet {
        name: "protogate.testing.v1".into(),
        bytes: Bytes::from_static(include_bytes!(concat!(
            env!("OUT_DIR"),
            "/protogate.testing.v1.binpb"
        ))),
    }
}

/// The committed example sets in descriptor-sets/.
pub fn example_sets() -> Vec<DescriptorSet> {
    DescriptorSet::read_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("descriptor-sets")).unwrap()
}

/// The test service: echoes, fails on request, sleeps.
#[derive(Debug, Default)]
pub struct Testing;

#[tonic::async_trait]
impl TestService for Testing {
    async fn echo(&self, request: Request<EchoMessage>) -> Result<Response<EchoMessage>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    async fn leak(&self, request: Request<EchoMessage>) -> Result<Response<EchoMessage>, Status> {
        let mut message = request.into_inner();
        message.internal_value = "top secret".into();
        if message.choice.is_none() {
            message.choice = Some(Choice::ChoiceSecret("oneof secret".into()));
        }
        if let Some(Choice::ChoiceNested(nested)) = &mut message.choice {
            leak_into(nested);
        }
        if let Some(nested) = &mut message.nested {
            leak_into(nested);
        }
        message.repeated_nested.iter_mut().for_each(leak_into);
        message.nested_by_id.values_mut().for_each(leak_into);
        Ok(Response::new(message))
    }

    async fn fail(&self, request: Request<FailRequest>) -> Result<Response<()>, Status> {
        let request = request.into_inner();
        let code = Code::from_i32(request.code);
        if request.detail_depth > 0 {
            let levels = usize::try_from(request.detail_depth).unwrap_or_default();
            let status = RpcStatus {
                code: request.code,
                message: request.message.clone(),
                details: vec![prost_types::Any {
                    type_url: "type.googleapis.com/protogate.testing.v1.Deep".into(),
                    value: nested_wire(levels, b"", 1, &deep_bottom()),
                }],
            };
            return Err(Status::with_details(
                code,
                request.message,
                Bytes::from(status.encode_to_vec()),
            ));
        }
        if !request.with_details {
            return Err(Status::new(code, request.message));
        }
        let bad_request = BadRequest {
            field_violations: vec![FieldViolation {
                field: "code".into(),
                description: "as asked".into(),
            }],
        };
        let info = ErrorInfo {
            reason: "TEST_FAILURE".into(),
            domain: "protogate.test".into(),
            ..Default::default()
        };
        let status = RpcStatus {
            code: request.code,
            message: request.message.clone(),
            details: vec![
                prost_types::Any {
                    type_url: "type.googleapis.com/google.rpc.BadRequest".into(),
                    value: bad_request.encode_to_vec(),
                },
                prost_types::Any {
                    type_url: "type.googleapis.com/google.rpc.ErrorInfo".into(),
                    value: info.encode_to_vec(),
                },
                prost_types::Any {
                    type_url: "type.googleapis.com/protogate.testing.v1.Nested".into(),
                    value: Nested {
                        name: "detail".into(),
                        secret: "detail secret".into(),
                        ..Default::default()
                    }
                    .encode_to_vec(),
                },
                prost_types::Any {
                    type_url: "type.googleapis.com/unknown.Type".into(),
                    value: vec![1, 2, 3],
                },
            ],
        };
        Err(Status::with_details(
            code,
            request.message,
            Bytes::from(status.encode_to_vec()),
        ))
    }

    async fn sleep(&self, request: Request<SleepRequest>) -> Result<Response<()>, Status> {
        let millis = u64::try_from(request.into_inner().millis).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(millis)).await;
        Ok(Response::new(()))
    }

    async fn echo_headers(&self, request: Request<()>) -> Result<Response<Headers>, Status> {
        let mut response = Response::new(received_headers(&request));
        // Response metadata for the gateway's response allow-list.
        response
            .metadata_mut()
            .insert("x-backend-version", "7".parse().unwrap());
        response
            .metadata_mut()
            .insert("x-internal-secret", "s3cr3t".parse().unwrap());
        Ok(response)
    }

    async fn public_headers(&self, request: Request<()>) -> Result<Response<Headers>, Status> {
        Ok(Response::new(received_headers(&request)))
    }

    async fn admin_headers(&self, request: Request<()>) -> Result<Response<Headers>, Status> {
        Ok(Response::new(received_headers(&request)))
    }

    async fn update_resource(
        &self,
        request: Request<UpdateResourceRequest>,
    ) -> Result<Response<UpdateResourceRequest>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    async fn echo_deep(&self, request: Request<Deep>) -> Result<Response<Deep>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    async fn hidden(&self, request: Request<EchoMessage>) -> Result<Response<EchoMessage>, Status> {
        Ok(Response::new(request.into_inner()))
    }
}

/// The innermost `Deep` of [`nested_wire`] chains: a value and an internal field.
pub fn deep_bottom() -> Vec<u8> {
    Deep {
        s: "bottom".into(),
        x: "internal".into(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Wire bytes nested `levels` deep: each level is `prefix` followed by field
/// `number` (length-delimited) holding the next level, the last holding
/// `innermost`. Written front to back, its lengths computed inside out, so
/// that no encoder recurses (or copies) once per level.
pub fn nested_wire(levels: usize, prefix: &[u8], number: u32, innermost: &[u8]) -> Vec<u8> {
    fn varint(mut value: u64, out: &mut Vec<u8>) {
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }
    let key = u64::from(number << 3 | 2);
    let len_of = |value: u64| {
        let mut out = Vec::new();
        varint(value, &mut out);
        out.len()
    };
    // lengths[i]: the length of level i's content (what its key holds).
    let mut lengths = vec![innermost.len(); levels + 1];
    for level in (0..levels).rev() {
        let inner = lengths[level + 1] as u64;
        lengths[level] = prefix.len() + len_of(key) + len_of(inner) + lengths[level + 1];
    }
    let mut out = Vec::with_capacity(lengths[0]);
    for inner in &lengths[1..] {
        out.extend_from_slice(prefix);
        varint(key, &mut out);
        varint(*inner as u64, &mut out);
    }
    out.extend_from_slice(innermost);
    out
}

/// Sets `secret` on a nested message and all its descendants.
fn leak_into(nested: &mut Nested) {
    nested.secret = format!("secret of {}", nested.name);
    if let Some(child) = &mut nested.child {
        leak_into(child);
    }
}

/// The request metadata a backend received, as a `Headers` reply.
/// The metadata received (a name's values joined with `, `, in order), plus
/// `:peer`: the address of the gateway's end of the connection, and
/// `:local`: the backend's own (which backend served); no metadata name can
/// start with `:`.
fn received_headers<T>(request: &Request<T>) -> Headers {
    let mut metadata = std::collections::HashMap::<String, String>::new();
    for (name, value) in request.metadata().clone().into_headers().iter() {
        let value = String::from_utf8_lossy(value.as_bytes());
        metadata
            .entry(name.to_string())
            .and_modify(|values| {
                values.push_str(", ");
                values.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    if let Some(peer) = request.remote_addr() {
        metadata.insert(":peer".into(), peer.to_string());
    }
    if let Some(local) = request.local_addr() {
        metadata.insert(":local".into(), local.to_string());
    }
    Headers { metadata }
}

/// A tonic server on 127.0.0.1:0 serving the example services and the test service.
pub struct Backend {
    pub addr: SocketAddr,
    _shutdown: oneshot::Sender<()>,
}

impl Backend {
    pub async fn start() -> Self {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    /// Serves on `listener` until dropped.
    pub fn start_on(listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let routes = protogate::demo::example_routes().add_service(TestServiceServer::new(Testing));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = rx.await;
                }),
        );
        Self {
            addr,
            _shutdown: tx,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

pub fn upstream(pattern: &str, url: &str) -> UpstreamConfig {
    UpstreamConfig {
        pattern: pattern.into(),
        url: url.into(),
        timeout: Duration::from_secs(5),
        ca_file: None,
        client_cert_file: None,
        client_key_file: None,
        server_name: None,
    }
}

/// The gateway on 127.0.0.1:0 in front of a backend.
pub struct Gateway {
    pub addr: SocketAddr,
    /// The admin listener, also on 127.0.0.1:0.
    pub admin_addr: SocketAddr,
    /// The HTTPS listener on 127.0.0.1:0, when `tls` is configured.
    pub tls_addr: Option<SocketAddr>,
    pub client: reqwest::Client,
    shutdown: oneshot::Sender<()>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    _backend: Option<Backend>,
}

impl Gateway {
    /// A gateway over the example and testing sets, all served by one backend.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Like [`Gateway::start`], with the config adjusted first.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let backend = Backend::start().await;
        let mut config = Config {
            upstreams: vec![
                upstream("acme", &backend.url()),
                upstream("protogate.testing", &backend.url()),
            ],
            ..Config::default()
        };
        // Tests that read the access log point it at a file.
        config.access_log.enabled = false;
        adjust(&mut config);
        let mut sets = example_sets();
        sets.push(testing_set());
        let mut gateway = Self::serve(&config, sets).await;
        gateway._backend = Some(backend);
        gateway
    }

    /// A gateway over exactly `sets` with `config`.
    pub async fn serve(config: &Config, sets: Vec<DescriptorSet>) -> Self {
        let server =
            Server::new(config, sets).unwrap_or_else(|err| panic!("gateway does not start: {err}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let mut server = server.with_admin_listener(admin);
        let mut tls_addr = None;
        if server.tls_addr().is_some() {
            let tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tls_addr = Some(tls.local_addr().unwrap());
            server = server.with_tls_listener(tls);
        }
        let (tx, rx) = oneshot::channel::<()>();
        let served = tokio::spawn(server.serve(listener, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            admin_addr,
            tls_addr,
            client: reqwest::Client::new(),
            shutdown: tx,
            served,
            _backend: None,
        }
    }

    /// Signals shutdown and waits until the gateway has drained and stopped.
    pub async fn stop(self) -> std::io::Result<()> {
        let _ = self.shutdown.send(());
        self.served.await.expect("serve does not panic")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GETs any `url` (the admin listener's too) and returns its body as text.
    pub async fn text(&self, url: String) -> String {
        let response = self.client.get(url).send().await.unwrap();
        response.text().await.unwrap()
    }

    /// The upstream connection (its client address, as the backend saw it)
    /// that `client`'s next request goes over: `/v1/headers` answers with
    /// the metadata the backend received.
    pub async fn upstream_peer(&self, client: &reqwest::Client) -> String {
        let response = client.get(self.url("/v1/headers")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let body: Json = response.json().await.unwrap();
        body["metadata"][":peer"]
            .as_str()
            .unwrap_or_else(|| panic!("no :peer in {body}"))
            .to_owned()
    }

    /// GETs `/v1/headers` with `tracestate: vendor=abc` and `traceparent` if
    /// given: the `traceparent` returned, and the response (the metadata
    /// the backend received is its `metadata`).
    pub async fn traced_headers_call(&self, traceparent: Option<&str>) -> (String, Json) {
        let mut request = self
            .client
            .get(self.url("/v1/headers"))
            .header("tracestate", "vendor=abc");
        if let Some(value) = traceparent {
            request = request.header("traceparent", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let returned = response.headers()["traceparent"]
            .to_str()
            .unwrap()
            .to_owned();
        (returned, response.json().await.unwrap())
    }

    pub async fn get(&self, path: &str) -> (u16, Json) {
        self.send(self.client.get(self.url(path))).await
    }

    pub async fn send_json(&self, method: reqwest::Method, path: &str, body: Json) -> (u16, Json) {
        self.send(self.client.request(method, self.url(path)).json(&body))
            .await
    }

    pub async fn post(&self, path: &str, body: Json) -> (u16, Json) {
        self.send_json(reqwest::Method::POST, path, body).await
    }

    /// Sends and returns the status and the JSON body (`null` when empty).
    pub async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Json) {
        let response = request.send().await.expect("request reaches the gateway");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        let json = if bytes.is_empty() {
            Json::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|err| {
                panic!(
                    "body is not JSON ({err}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        (status, json)
    }
}

/// Asserts a google.rpc.Status body: code, a message containing `message`,
/// and a RequestInfo detail with a non-empty request id as the last detail.
pub fn assert_status(body: &Json, code: Code, message: &str) {
    assert_eq!(body["code"], code as i32, "code in {body}");
    let text = body["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message in {body}"));
    assert!(text.contains(message), "message `{text}` lacks `{message}`");
    let details = body["details"]
        .as_array()
        .unwrap_or_else(|| panic!("no details in {body}"));
    let info = details.last().unwrap();
    assert_eq!(
        info["@type"], "type.googleapis.com/google.rpc.RequestInfo",
        "{body}"
    );
    assert!(
        !info["requestId"].as_str().unwrap_or_default().is_empty(),
        "{body}"
    );
}

/// The field violations of the BadRequest detail, as (field, description).
pub fn violations(body: &Json) -> Vec<(String, String)> {
    body["details"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
        .flat_map(|d| d["fieldViolations"].as_array().cloned().unwrap_or_default())
        .map(|v| {
            (
                v["field"].as_str().unwrap_or_default().to_owned(),
                v["description"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// A response read off a raw socket: for requests an HTTP client will not
/// send (a 100 KB URI, a broken request line, a head cut short) and for
/// what clients hide (when a connection closes).
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Json {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "{} body is not JSON ({err}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Writes `request` on a new connection to `addr` and reads one response.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> RawResponse {
    use tokio::io::AsyncWriteExt as _;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_response(&mut stream)
        .await
        .expect("a response before the connection closed")
}

/// Reads one HTTP/1.1 response (sized by `content-length`, else up to the
/// close); `None` when the connection closes (or is reset) before a byte.
/// Fails the test after `HANG_GUARD` rather than wait forever.
pub async fn read_response(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Option<RawResponse> {
    tokio::time::timeout(HANG_GUARD, read_response_unguarded(stream))
        .await
        .expect("a response or the close")
}

async fn read_response_unguarded(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Option<RawResponse> {
    use tokio::io::AsyncReadExt as _;
    let mut buffer = Vec::new();
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) if buffer.is_empty() => return None,
            Ok(0) | Err(_) => panic!(
                "connection closed inside a response head: {}",
                String::from_utf8_lossy(&buffer)
            ),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8(buffer[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.trim().to_owned(), value.trim().to_owned())
        })
        .collect();
    let mut body = buffer[head_end + 4..].to_vec();
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse::<usize>().unwrap());
    match length {
        Some(length) => {
            while body.len() < length {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed inside a response body");
                body.extend_from_slice(&chunk[..n]);
            }
        }
        None => {
            let _ = stream.read_to_end(&mut body).await;
        }
    }
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

/// Reads until the peer closes `stream` (end of stream or reset) and
/// returns what came before; gives up after `HANG_GUARD`, failing the test,
/// rather than hang when the gateway never closes.
pub async fn read_until_closed(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    use tokio::io::AsyncReadExt as _;
    let read = async {
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return received,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(HANG_GUARD, read)
        .await
        .expect("the gateway closes the connection")
}

/// How long a test waits for something the gateway is configured to do far
/// sooner, before it fails instead of hanging.
pub const HANG_GUARD: Duration = Duration::from_secs(30);
