//! Streaming over real HTTP: reply framings (NDJSON, SSE, JSON array), errors
//! before and after the first message, request streams parsed incrementally,
//! bidi interleaving, cancellation, backpressure, HttpBody both ways, limits.
//!
//! `protogate.testing.v1.StreamTestService` is served here by [`StreamTests`],
//! whose [`Probe`] lets a test observe what the upstream sent and received.

mod common;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{
    assert_status,
    raw_upstream::{frame_of, Answer, RawUpstream},
    upstream, Backend, Gateway,
};
use prost::Message as _;
use protogate::{
    pb::{
        google::api::HttpBody,
        protogate::testing::v1::{
            stream_test_service_server::{StreamTestService, StreamTestServiceServer},
            DownloadRequest, EchoMessage, Item, ItemList, ItemsRequest, UploadRequest,
            UploadSummary,
        },
    },
    Config,
};
use serde_json::{json, Value as Json};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot, Notify},
};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Code, Request, Response, Status, Streaming};

/// What the stream test service saw and did.
#[derive(Debug, Default)]
struct Probe {
    /// Items handed to the reply stream by `Items`.
    sent: AtomicUsize,
    /// Items received by `Collect` and `Exchange`.
    received: AtomicUsize,
    /// A reply stream's client went away (`Items`), or a request stream
    /// failed instead of ending cleanly (`Collect`).
    cancelled: AtomicBool,
    /// Lets `Items` send its last item (`hold_last`).
    release: Notify,
}

/// Marks the probe cancelled when dropped before being cleared.
struct Unfinished(Option<Arc<Probe>>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(probe) = &self.0 {
            probe.cancelled.store(true, SeqCst);
        }
    }
}

#[derive(Debug)]
struct StreamTests {
    probe: Arc<Probe>,
}

type Replies<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl StreamTestService for StreamTests {
    type ItemsStream = Replies<Item>;

    async fn items(
        &self,
        request: Request<ItemsRequest>,
    ) -> Result<Response<Self::ItemsStream>, Status> {
        let request = request.into_inner();
        let probe = self.probe.clone();
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            let payload = "x".repeat(usize::try_from(request.payload_bytes).unwrap_or(0));
            for index in 0..request.count {
                if request.hold_last && index + 1 == request.count {
                    probe.release.notified().await;
                }
                let item = Item {
                    index,
                    payload: payload.clone(),
                    error: format!("item {index} is fine"),
                    ..Item::default()
                };
                if tx.send(Ok(item)).await.is_err() {
                    probe.cancelled.store(true, SeqCst);
                    return;
                }
                probe.sent.fetch_add(1, SeqCst);
            }
            if request.hold_open {
                tx.closed().await;
                probe.cancelled.store(true, SeqCst);
            } else if request.fail_code != 0 {
                let status = Status::new(Code::from(request.fail_code), request.fail_message);
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn collect(
        &self,
        request: Request<Streaming<Item>>,
    ) -> Result<Response<ItemList>, Status> {
        // A reset stream drops this future where it waits, or fails the read.
        let mut unfinished = Unfinished(Some(self.probe.clone()));
        let mut stream = request.into_inner();
        let mut items = Vec::new();
        while let Some(item) = stream.message().await? {
            self.probe.received.fetch_add(1, SeqCst);
            items.push(item);
        }
        unfinished.0 = None;
        Ok(Response::new(ItemList { items }))
    }

    type ExchangeStream = Replies<Item>;

    async fn exchange(
        &self,
        request: Request<Streaming<Item>>,
    ) -> Result<Response<Self::ExchangeStream>, Status> {
        let mut stream = request.into_inner();
        let probe = self.probe.clone();
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            while let Ok(Some(item)) = stream.message().await {
                probe.received.fetch_add(1, SeqCst);
                if tx.send(Ok(item)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn upload(
        &self,
        request: Request<UploadRequest>,
    ) -> Result<Response<UploadSummary>, Status> {
        let UploadRequest { name, file } = request.into_inner();
        let file = file.unwrap_or_default();
        Ok(Response::new(UploadSummary {
            name,
            content_type: file.content_type,
            size: i64::try_from(file.data.len()).unwrap_or(i64::MAX),
        }))
    }

    async fn download(
        &self,
        request: Request<DownloadRequest>,
    ) -> Result<Response<HttpBody>, Status> {
        let request = request.into_inner();
        let data = (0..request.chunks)
            .map(|i| format!("{} line {i}\n", request.name))
            .collect::<String>();
        Ok(Response::new(text_body(data)))
    }

    type DownloadChunksStream = Replies<HttpBody>;

    async fn download_chunks(
        &self,
        request: Request<DownloadRequest>,
    ) -> Result<Response<Self::DownloadChunksStream>, Status> {
        let request = request.into_inner();
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            for i in 0..request.chunks {
                let chunk = text_body(format!("{} line {i}\n", request.name));
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn text_body(data: String) -> HttpBody {
    HttpBody {
        content_type: "text/plain; charset=utf-8".into(),
        data: data.into_bytes(),
        extensions: Vec::new(),
    }
}

/// The gateway in front of the example backend and a [`StreamTests`] backend.
struct Setup {
    gw: Gateway,
    probe: Arc<Probe>,
    _backend: Backend,
    _stream_backend: oneshot::Sender<()>,
}

async fn start() -> Setup {
    start_with(|_| {}).await
}

async fn start_with(adjust: impl FnOnce(&mut Config)) -> Setup {
    let probe = Arc::new(Probe::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let service = StreamTestServiceServer::new(StreamTests {
        probe: probe.clone(),
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );
    let backend = Backend::start().await;
    let mut config = Config {
        upstreams: vec![
            upstream("acme", &backend.url()),
            upstream("protogate.testing", &backend.url()),
            upstream(
                "protogate.testing.v1.StreamTestService",
                &format!("http://{addr}"),
            ),
        ],
        ..Config::default()
    };
    adjust(&mut config);
    let mut sets = common::example_sets();
    sets.push(common::testing_set());
    Setup {
        gw: Gateway::serve(&config, sets).await,
        probe,
        _backend: backend,
        _stream_backend: stop,
    }
}

/// Polls `condition` until it holds; fails after a generous deadline.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sends a GET with `accept` and returns status, content type and body text.
async fn get(gw: &Gateway, path: &str, accept: Option<&str>) -> (u16, String, String) {
    let mut request = gw.client.get(gw.url(path));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = header(&response, "content-type");
    (status, content_type, response.text().await.unwrap())
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn ndjson(body: &str) -> Vec<Json> {
    body.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

fn item(index: i32) -> Json {
    let mut item = json!({"error": format!("item {index} is fine")});
    if index != 0 {
        item["index"] = json!(index);
    }
    item
}

/// A request body fed by the test, chunk by chunk.
fn body_channel() -> (mpsc::Sender<Bytes>, reqwest::Body) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let stream = tokio_stream::StreamExt::map(ReceiverStream::new(rx), Ok::<_, std::io::Error>);
    (tx, reqwest::Body::wrap_stream(stream))
}

/// Reads NDJSON lines from a streamed response, one chunk at a time.
struct LineReader {
    response: reqwest::Response,
    pending: Vec<u8>,
}

impl LineReader {
    fn new(response: reqwest::Response) -> Self {
        Self {
            response,
            pending: Vec::new(),
        }
    }

    /// The next complete line; `None` at the end of the body.
    async fn next_line(&mut self) -> Option<Json> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            let chunk = self.response.chunk().await.unwrap()?;
            self.pending.extend_from_slice(&chunk);
        }
    }
}

async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .expect("the stream made progress in time")
}

// === reply framings ===

#[tokio::test]
async fn ndjson_is_the_default_and_wraps_each_message_as_a_result() {
    let setup = start().await;
    let gw = &setup.gw;
    let (status, content_type, body) = get(gw, "/v1/items?count=3", None).await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/x-ndjson")
    );
    // Every message has a field named `error`, and still reads as a result.
    assert_eq!(
        ndjson(&body),
        [
            json!({"result": item(0)}),
            json!({"result": item(1)}),
            json!({"result": item(2)})
        ]
    );
}

#[tokio::test]
async fn ndjson_error_after_the_first_message_is_a_final_error_line() {
    let setup = start().await;
    let gw = &setup.gw;
    let (status, _, body) = get(
        gw,
        "/v1/items?count=2&failCode=10&failMessage=conflict+later",
        Some("application/x-ndjson"),
    )
    .await;
    assert_eq!(status, 200);
    let lines = ndjson(&body);
    assert_eq!(lines.len(), 3, "{body}");
    assert_eq!(lines[1], json!({"result": item(1)}));
    assert_eq!(lines[2].as_object().unwrap().len(), 1, "{body}");
    assert_status(&lines[2]["error"], Code::Aborted, "conflict later");
    // The gateway keeps serving.
    let (status, _, body) = get(gw, "/v1/items?count=1", None).await;
    assert_eq!((status, ndjson(&body).len()), (200, 1));
}

#[tokio::test]
async fn event_stream_sends_data_events_and_a_final_error_event() {
    let setup = start().await;
    let gw = &setup.gw;
    let (status, content_type, body) = get(
        gw,
        "/v1/items?count=2&failCode=14&failMessage=backend+going+away",
        Some("text/event-stream"),
    )
    .await;
    assert_eq!((status, content_type.as_str()), (200, "text/event-stream"));
    let events: Vec<&str> = body.split_terminator("\n\n").collect();
    assert_eq!(events.len(), 3, "{body}");
    for (i, event) in events[..2].iter().enumerate() {
        let data = event
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("not a data event: {event}"));
        assert_eq!(serde_json::from_str::<Json>(data).unwrap(), item(i as i32));
    }
    let error = events[2]
        .strip_prefix("event: error\ndata: ")
        .unwrap_or_else(|| panic!("not an error event: {}", events[2]));
    let error: Json = serde_json::from_str(error).unwrap();
    // UNAVAILABLE is a 5xx: its cause stays in the log.
    assert_status(&error, Code::Unavailable, "upstream unavailable");
}

#[tokio::test]
async fn json_array_is_streamed_and_closed_even_after_an_error() {
    let setup = start().await;
    let gw = &setup.gw;
    let (status, content_type, body) = get(gw, "/v1/items?count=2", Some("application/json")).await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    let array: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(array, json!([{"result": item(0)}, {"result": item(1)}]));

    let (status, _, body) = get(
        gw,
        "/v1/items?count=1&failCode=8&failMessage=quota",
        Some("application/json"),
    )
    .await;
    assert_eq!(status, 200);
    let array: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(array[0], json!({"result": item(0)}));
    assert_status(&array[1]["error"], Code::ResourceExhausted, "quota");
    assert_eq!(array.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn empty_streams_are_an_empty_body_or_an_empty_array() {
    let setup = start().await;
    let gw = &setup.gw;
    assert_eq!(
        get(gw, "/v1/items?count=0", None).await,
        (200, "application/x-ndjson".into(), String::new())
    );
    assert_eq!(
        get(gw, "/v1/items?count=0", Some("application/json")).await,
        (200, "application/json".into(), "[]".into())
    );
}

#[tokio::test]
async fn error_before_the_first_message_is_an_ordinary_error_response() {
    let setup = start().await;
    let gw = &setup.gw;
    for accept in [
        "application/x-ndjson",
        "text/event-stream",
        "application/json",
    ] {
        let (status, content_type, body) = get(
            gw,
            "/v1/items?count=0&failCode=5&failMessage=no+such+items",
            Some(accept),
        )
        .await;
        assert_eq!((status, content_type.as_str()), (404, "application/json"));
        assert_status(
            &serde_json::from_str(&body).unwrap(),
            Code::NotFound,
            "no such items",
        );
    }
    let (status, _, _) = get(gw, "/v1/items?count=1", None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn response_body_applies_to_each_message() {
    let setup = start().await;
    let gw = &setup.gw;
    let (status, _, body) = get(gw, "/v1/items:payloads?count=2&payloadBytes=3", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        ndjson(&body),
        [json!({"result": "xxx"}), json!({"result": "xxx"})]
    );
}

#[tokio::test]
async fn first_message_reaches_the_client_before_the_last_is_sent() {
    let setup = start().await;
    let (gw, probe) = (&setup.gw, &setup.probe);
    let response = gw
        .client
        .get(gw.url("/v1/items?count=3&holdLast=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut lines = LineReader::new(response);
    assert_eq!(
        within(lines.next_line()).await,
        Some(json!({"result": item(0)}))
    );
    // The upstream holds the last item until now.
    assert!(probe.sent.load(SeqCst) < 3);
    probe.release.notify_one();
    assert_eq!(
        within(lines.next_line()).await,
        Some(json!({"result": item(1)}))
    );
    assert_eq!(
        within(lines.next_line()).await,
        Some(json!({"result": item(2)}))
    );
    assert_eq!(within(lines.next_line()).await, None);
}

// === request streams ===

#[tokio::test]
async fn client_stream_messages_go_upstream_as_they_are_parsed() {
    let setup = start().await;
    let (gw, probe) = (&setup.gw, &setup.probe);
    let (tx, body) = body_channel();
    let request = gw
        .client
        .post(gw.url("/v1/tags/blue/items:collect"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send();
    let reply = tokio::spawn(request);
    tx.send(Bytes::from_static(b"{\"index\": 1}\n"))
        .await
        .unwrap();
    // The upstream has the first message while the body is still open.
    eventually("the first message is upstream", || {
        probe.received.load(SeqCst) == 1
    })
    .await;
    // Many more messages than fit in one read, cut at arbitrary places.
    let rest: String = (2..=2000)
        .map(|i| format!("{{\"index\":{i},\"payload\":\"p{i}\"}}\n"))
        .collect();
    for chunk in rest.as_bytes().chunks(777) {
        tx.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    drop(tx);
    let response = within(reply).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let body: Json = response.json().await.unwrap();
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2000);
    assert_eq!(items[0], json!({"index": 1, "tag": "blue"}));
    // The path binding applies to every message.
    assert_eq!(
        items[1999],
        json!({"index": 2000, "payload": "p2000", "tag": "blue"})
    );
}

#[tokio::test]
async fn client_stream_accepts_a_json_array_and_scalar_body_fields() {
    let setup = start().await;
    let gw = &setup.gw;
    let (status, body) = gw
        .send(
            gw.client
                .post(gw.url("/v1/items:collect"))
                .header("content-type", "application/json")
                .body(r#"[{"index": 1}, {"index": 2, "tag": "t"}]"#),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"items": [{"index": 1}, {"index": 2, "tag": "t"}]})
    );
    // body: "payload": each element is that field.
    let (status, body) = gw
        .send(
            gw.client
                .post(gw.url("/v1/tags/red/payloads:collect"))
                .body("\"a\"\n\"b\"\n"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"items": [{"payload": "a", "tag": "red"}, {"payload": "b", "tag": "red"}]})
    );
}

#[tokio::test]
async fn a_clients_grpc_timeout_bounds_a_client_stream() {
    // The upstream has 5 s, the whole request 3 s; the client asks for 200 ms.
    let setup = start_with(|config| config.limits.request_timeout = Duration::from_secs(3)).await;
    let gw = &setup.gw;
    let (tx, body) = body_channel();
    let request = reqwest::Client::new()
        .post(gw.url("/v1/items:collect"))
        .header("grpc-timeout", "200m")
        .body(body)
        .send();
    tx.send(Bytes::from_static(b"{\"index\": 1}\n"))
        .await
        .unwrap();
    let response = within(request).await.unwrap();
    assert_eq!(response.status(), 504);
    let body: Json = response.json().await.unwrap();
    assert_status(&body, Code::DeadlineExceeded, "deadline exceeded");
    drop(tx);
}

#[tokio::test]
async fn bad_value_mid_stream_is_400_and_cancels_the_upstream_call() {
    let setup = start().await;
    let (gw, probe) = (&setup.gw, &setup.probe);
    let (tx, body) = body_channel();
    // Its own client: the gateway answers before the body ends and may then
    // close the connection, which the shared pool must not hand out again.
    let request = reqwest::Client::new()
        .post(gw.url("/v1/items:collect"))
        .body(body)
        .send();
    let reply = tokio::spawn(request);
    tx.send(Bytes::from_static(b"{\"index\": 1}\n"))
        .await
        .unwrap();
    eventually("the first message is upstream", || {
        probe.received.load(SeqCst) == 1
    })
    .await;
    tx.send(Bytes::from_static(b"{\"index\": \"one\"}\n"))
        .await
        .unwrap();
    let response = within(reply).await.unwrap().unwrap();
    assert_eq!(response.status(), 400);
    let body: Json = response.json().await.unwrap();
    assert_status(&body, Code::InvalidArgument, "invalid `index`");
    // The upstream saw the call fail, never a clean end of a half-read body.
    eventually("the upstream call is cancelled", || {
        probe.cancelled.load(SeqCst)
    })
    .await;
    drop(tx);

    let (status, body) = gw
        .send(gw.client.post(gw.url("/v1/items:collect")).body("[] x"))
        .await;
    assert_eq!(status, 400);
    assert_status(
        &body,
        Code::InvalidArgument,
        "unexpected data after the closing `]` at byte 3",
    );
    let (status, body) = gw
        .send(gw.client.post(gw.url("/v1/items:collect")).body("{}\n{}"))
        .await;
    assert_eq!((status, body), (200, json!({"items": [{}, {}]})));
}

#[tokio::test]
async fn stream_with_a_wrong_content_type_is_400_invalid_argument() {
    let setup = start().await;
    let gw = &setup.gw;
    let (status, body) = gw
        .send(
            gw.client
                .post(gw.url("/v1/items:collect"))
                .header("content-type", "text/plain")
                .body("{}"),
        )
        .await;
    assert_eq!(status, 400);
    assert_status(
        &body,
        Code::InvalidArgument,
        "unsupported content type `text/plain`",
    );
}

#[tokio::test]
async fn bidi_replies_interleave_with_the_request_stream() {
    let setup = start().await;
    let gw = &setup.gw;
    let (tx, body) = body_channel();
    let response = gw
        .client
        .post(gw.url("/v1/items:exchange"))
        .body(body)
        .send();
    let response = tokio::spawn(response);
    tx.send(Bytes::from_static(b"{\"index\": 1}\n"))
        .await
        .unwrap();
    let response = within(response).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let mut lines = LineReader::new(response);
    // Each reply arrives before the next request message is even written.
    for index in 1..=3 {
        assert_eq!(
            within(lines.next_line()).await,
            Some(json!({"result": {"index": index}}))
        );
        tx.send(Bytes::from(format!("{{\"index\": {}}}\n", index + 1)))
            .await
            .unwrap();
    }
    drop(tx);
    assert_eq!(
        within(lines.next_line()).await,
        Some(json!({"result": {"index": 4}}))
    );
    assert_eq!(within(lines.next_line()).await, None);
}

#[tokio::test]
async fn a_request_message_larger_than_the_upstreams_window_is_sent_whole() {
    // 3 MiB through the upstream's 1 MiB stream window: sent as the window
    // opens, piece by piece.
    let setup = start().await;
    let gw = &setup.gw;
    let payload = "y".repeat(3 << 20);
    let body = format!("{{\"index\":1,\"payload\":\"{payload}\"}}\n{{\"index\":2}}\n");
    let response = gw
        .client
        .post(gw.url("/v1/items:collect"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send();
    let response = within(response).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Json = response.json().await.unwrap();
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(
        items[0]["payload"].as_str().map(str::len),
        Some(payload.len())
    );
    assert_eq!(items[1], json!({"index": 2}));
}

// === cancellation and backpressure ===

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_stream() {
    let setup = start().await;
    let (gw, probe) = (&setup.gw, &setup.probe);
    let response = gw
        .client
        .get(gw.url("/v1/items?count=1&holdOpen=true"))
        .send()
        .await
        .unwrap();
    let mut lines = LineReader::new(response);
    assert!(within(lines.next_line()).await.is_some());
    assert!(!probe.cancelled.load(SeqCst));
    drop(lines);
    eventually("the upstream sees the cancellation", || {
        probe.cancelled.load(SeqCst)
    })
    .await;
}

#[tokio::test]
async fn slow_reader_bounds_what_the_upstream_sends_ahead() {
    const COUNT: usize = 1600;
    const PAYLOAD: usize = 16 << 10;
    // HTTP/2 windows (2 MiB to the client, 2 MiB from the upstream) and one
    // message per stage hold ~4 MiB; 640 messages is 10 MiB, a quarter of the stream.
    const AHEAD: usize = 640;
    let setup = start().await;
    let (gw, probe) = (&setup.gw, &setup.probe);
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = client
        .get(gw.url(&format!("/v1/items?count={COUNT}&payloadBytes={PAYLOAD}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let mut lines = LineReader::new(response);
    assert!(within(lines.next_line()).await.is_some());
    // Stop reading until the upstream has stopped sending: it must stall
    // far short of the end of the stream.
    let mut last = usize::MAX;
    let mut still = 0;
    while still < 20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let sent = probe.sent.load(SeqCst);
        still = if sent == last { still + 1 } else { 0 };
        last = sent;
    }
    assert!(
        last <= 1 + AHEAD,
        "the upstream sent {last} messages ahead of one read"
    );
    // Read the rest; the upstream is never more than AHEAD messages ahead.
    let mut read = 1;
    while let Some(line) = within(lines.next_line()).await {
        read += 1;
        assert_eq!(
            line["result"]["payload"].as_str().map(str::len),
            Some(PAYLOAD)
        );
        let sent = probe.sent.load(SeqCst);
        assert!(sent <= read + AHEAD, "{sent} sent, {read} read");
    }
    assert_eq!(read, COUNT);
}

// === google.api.HttpBody ===

#[tokio::test]
async fn http_body_request_takes_the_raw_bytes_and_content_type() {
    let setup = start().await;
    let gw = &setup.gw;
    let bytes: Vec<u8> = (0..=255).cycle().take(3000).collect();
    let (status, body) = gw
        .send(
            gw.client
                .post(gw.url("/v1/files/report.bin"))
                .header("content-type", "application/pdf")
                .body(bytes),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"name": "report.bin", "contentType": "application/pdf", "size": "3000"})
    );
}

#[tokio::test]
async fn http_body_replies_are_written_raw_unary_and_streamed() {
    let setup = start().await;
    let gw = &setup.gw;
    let expected = "a line 0\na line 1\na line 2\n";
    assert_eq!(
        get(gw, "/v1/files/a?chunks=3", None).await,
        (200, "text/plain; charset=utf-8".into(), expected.into())
    );
    assert_eq!(
        get(gw, "/v1/files/a:chunks?chunks=3", Some("text/event-stream")).await,
        (200, "text/plain; charset=utf-8".into(), expected.into())
    );
}

// === limits ===

#[tokio::test]
async fn stream_message_over_the_request_limit_is_413() {
    let setup = start_with(|config| config.limits.max_request_body_bytes = 64).await;
    let gw = &setup.gw;
    let big = format!("{{\"payload\": \"{}\"}}\n", "y".repeat(100));
    let (status, body) = gw
        .send(
            gw.client
                .post(gw.url("/v1/items:collect"))
                .body(format!("{{}}\n{big}")),
        )
        .await;
    assert_eq!(status, 413);
    assert_status(
        &body,
        Code::ResourceExhausted,
        "request body exceeds the limit of 64 bytes",
    );
    // The limit is per message: a long stream of small ones passes.
    let many = "{\"index\": 7}\n".repeat(50);
    let (status, body) = gw
        .send(gw.client.post(gw.url("/v1/items:collect")).body(many))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["items"].as_array().unwrap().len(), 50);
}

#[tokio::test]
async fn reply_over_the_response_limit_is_502_with_a_clear_message() {
    let setup = start_with(|config| config.limits.max_response_message_bytes = 1024).await;
    let gw = &setup.gw;
    let (status, _, body) = get(gw, "/v1/items?count=2&payloadBytes=2000", None).await;
    assert_eq!(status, 502);
    assert_status(
        &serde_json::from_str(&body).unwrap(),
        Code::ResourceExhausted,
        "upstream reply message exceeds the limit of 1024 bytes",
    );
    let (status, body) = gw
        .post("/v1/echo", json!({"stringValue": "z".repeat(2000)}))
        .await;
    assert_eq!(status, 502);
    assert_status(
        &body,
        Code::ResourceExhausted,
        "upstream reply message exceeds the limit of 1024 bytes",
    );
    // Small replies still pass.
    let (status, _, body) = get(gw, "/v1/items?count=2&payloadBytes=10", None).await;
    assert_eq!((status, ndjson(&body).len()), (200, 2));
}

/// `messages` as one reply body cut into DATA frames of 3 bytes, 6 bytes
/// and the rest (which h2 cuts into frames of its largest size).
fn split_reply(messages: &[Vec<u8>]) -> Answer {
    let body: Vec<u8> = messages.iter().flat_map(|m| frame_of(m)).collect();
    Answer::ok(vec![
        body[..3].to_vec(),
        body[3..9].to_vec(),
        body[9..].to_vec(),
    ])
}

#[tokio::test]
async fn replies_split_across_data_frames_and_over_the_stream_window_arrive_whole() {
    // 3 MiB through a 2 MiB stream window: unless what was read is
    // released, the upstream stops sending and the call waits out its deadline.
    let big = "x".repeat(3 << 20);
    let raw = RawUpstream::start(Answer::Silent).await;
    let mut config = Config {
        upstreams: vec![upstream("protogate.testing", &raw.url())],
        ..Config::default()
    };
    config.access_log.enabled = false;
    let gw = Gateway::serve(&config, vec![common::testing_set()]).await;

    let echo = EchoMessage {
        string_value: big.clone(),
        ..EchoMessage::default()
    };
    raw.answer(split_reply(&[echo.encode_to_vec()]));
    for _ in 0..2 {
        let (status, body) = gw.post("/v1/echo", json!({})).await;
        assert_eq!(status, 200);
        assert_eq!(body["stringValue"].as_str().map(str::len), Some(big.len()));
    }

    let item = |index| Item {
        index,
        payload: big.clone(),
        ..Item::default()
    };
    raw.answer(split_reply(&[
        item(1).encode_to_vec(),
        item(2).encode_to_vec(),
    ]));
    let (status, _, body) = get(&gw, "/v1/items", None).await;
    assert_eq!(status, 200);
    let lines = ndjson(&body);
    assert_eq!(lines.len(), 2, "{body:.200}");
    for (line, index) in lines.iter().zip(1..) {
        assert_eq!(line["result"]["index"], index);
        assert_eq!(
            line["result"]["payload"].as_str().map(str::len),
            Some(big.len())
        );
    }
}

// === the example services ===

#[tokio::test]
async fn watch_orders_streams_existing_orders_then_live_changes() {
    let setup = start().await;
    let gw = &setup.gw;
    let response = gw
        .client
        .get(gw.url("/v1/orders:watch"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut events = LineReader::new(response);
    for id in ["o-1", "o-2", "o-3", "o-4"] {
        let event = within(events.next_line()).await.unwrap();
        assert_eq!(event["result"]["kind"], "EXISTING", "{event}");
        assert_eq!(event["result"]["order"]["id"], id);
    }
    let (status, _) = gw
        .send(gw.client.post(gw.url("/v1/orders:import")).body(
            "{\"customerId\": \"c-7\", \"items\": [{\"sku\": \"a\", \"quantity\": 1}]}\n\
             {\"customerId\": \"c-7\", \"items\": [{\"sku\": \"b\", \"quantity\": 2}]}\n",
        ))
        .await;
    assert_eq!(status, 200);
    for sku in ["a", "b"] {
        let event = within(events.next_line()).await.unwrap();
        assert_eq!(event["result"]["kind"], "CREATED", "{event}");
        assert_eq!(event["result"]["order"]["items"][0]["sku"], sku);
    }
}

#[tokio::test]
async fn example_csv_import_and_export_pass_raw_bodies() {
    let setup = start().await;
    let gw = &setup.gw;
    let (status, body) = gw
        .send(
            gw.client
                .post(gw.url("/v1/orders:importCsv"))
                .header("content-type", "text/csv")
                .body("customer_id,sku,quantity,unit_price_cents\nc-8,pen,2,150\n"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["orderIds"][0].as_str().unwrap().to_owned();
    let (status, content_type, csv) = get(gw, "/v1/orders:export?customerId=c-8", None).await;
    assert_eq!((status, content_type.as_str()), (200, "text/csv"));
    assert_eq!(
        csv,
        format!("id,customer_id,status,total_cents,currency\n{id},c-8,PENDING,300,EUR\n")
    );
}

#[tokio::test]
async fn example_lookup_ends_with_not_found_after_the_known_orders() {
    let setup = start().await;
    let gw = &setup.gw;
    let (status, _, body) = {
        let response = gw
            .client
            .post(gw.url("/v1/orders:lookup"))
            .body("{\"id\": \"o-1\"}\n{\"id\": \"o-404\"}\n")
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, (), response.text().await.unwrap())
    };
    assert_eq!(status, 200);
    let lines = ndjson(&body);
    assert_eq!(lines[0]["result"]["id"], "o-1");
    assert_status(
        &lines[1]["error"],
        Code::NotFound,
        "order \"o-404\" not found",
    );
}
