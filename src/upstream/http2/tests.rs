//! The client against `h2`'s: the same unary calls through both, against
//! real tonic backends and an `h2` server that answers with generated
//! replies, must come out the same (reply, metadata, error kind), and the
//! upstream must receive the same request from both.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use h2::Reason;
use http::{uri::PathAndQuery, HeaderName, HeaderValue};
use proptest::prelude::*;
use tokio::{net::TcpListener, sync::Mutex};

use crate::{
    config::UpstreamConfig,
    error::Error,
    request_ids::unique,
    upstream::{
        call::{one_reply, unary, Reply},
        deadline::Deadline,
        metadata::Metadata,
        protocol::{frame, request_headers, Failures, Payload},
        Upstream,
    },
};

fn upstream(url: &str, limit: usize) -> Upstream {
    let config = UpstreamConfig {
        pattern: "test".into(),
        url: url.into(),
        timeout: Duration::from_secs(10),
        ca_file: None,
        client_cert_file: None,
        client_key_file: None,
        server_name: None,
    };
    Upstream::standalone(&config, limit).unwrap()
}

/// A unary call as it was made through `h2`'s client before this one.
async fn through_h2(
    upstream: &Upstream,
    path: PathAndQuery,
    message: &Payload,
    metadata: Metadata,
) -> Result<Reply, Error> {
    let deadline = Deadline::start(upstream, None);
    let headers = request_headers(metadata, Some(deadline.header(upstream)));
    let failures = Failures::new(upstream, Some(deadline));
    let call = async {
        let response = upstream
            .connection()
            .send(path, headers, frame(message)?)
            .await
            .map_err(|err| failures.transport(&err))?;
        one_reply(upstream, response, failures).await
    };
    match tokio::time::timeout(deadline.timeout(), call).await {
        Ok(reply) => reply,
        Err(_) => Err(failures.timed_out()),
    }
}

async fn through_own(
    upstream: &Upstream,
    path: PathAndQuery,
    message: &Payload,
    metadata: Metadata,
) -> Result<Reply, Error> {
    unary(
        upstream,
        path,
        message,
        metadata,
        Deadline::start(upstream, None),
    )
    .await
}

/// What a call came to, as far as the gateway can tell.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Reply {
        message: Bytes,
        metadata: Vec<(String, Vec<u8>)>,
    },
    Failed {
        kind: String,
        code: tonic::Code,
        /// The upstream's status message and details, or the invalid
        /// reply's reason: what does not depend on the client's wording.
        detail: String,
    },
}

fn outcome(result: Result<Reply, Error>) -> Outcome {
    match result {
        Ok(reply) => {
            let message = reply.message.clone();
            let mut metadata: Vec<_> = reply
                .metadata()
                .iter()
                // A tonic server's date differs from call to call.
                .filter(|(name, _)| *name != http::header::DATE)
                .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
                .collect();
            metadata.sort();
            Outcome::Reply { message, metadata }
        }
        Err(error) => {
            let debug = format!("{error:?}");
            let kind = debug
                .split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap_or_default()
                .to_owned();
            let detail = match &error {
                Error::Upstream(status) => {
                    format!("{} {:?}", status.message(), status.details())
                }
                Error::InvalidReply(why) => why.to_string(),
                Error::ResponseTooLarge { limit } => limit.to_string(),
                _ => String::new(),
            };
            Outcome::Failed {
                kind,
                code: error.code(),
                detail,
            }
        }
    }
}

// === against real tonic backends ===

#[tokio::test]
async fn tonic_backends_answer_the_same_through_both_clients() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(crate::demo::serve_examples(listener, async {
        let _ = stopped.await;
    }));
    let string_field = |number: u8, value: &str| {
        let mut wire = vec![number << 3 | 2, u8::try_from(value.len()).unwrap()];
        wire.extend_from_slice(value.as_bytes());
        wire
    };
    let calls: Vec<(&str, Vec<u8>)> = vec![
        (
            "/acme.orders.v1.OrderService/GetOrder",
            string_field(1, "o-1"),
        ),
        (
            "/acme.orders.v1.OrderService/GetOrder",
            string_field(1, "o-404"),
        ),
        ("/acme.orders.v1.OrderService/GetOrder", vec![0xff]),
        ("/acme.orders.v1.OrderService/ListOrders", vec![0x08, 100]),
        (
            "/acme.orders.v1.OrderService/CancelOrder",
            string_field(1, "o-3"),
        ),
        ("/acme.orders.v1.OrderService/NoSuchMethod", Vec::new()),
        ("/grpc.health.v1.Health/Check", Vec::new()),
    ];
    // A limit that the list of orders exceeds.
    for limit in [1 << 20, 300] {
        let own = upstream(&url, limit);
        let reference = upstream(&url, limit);
        for (path, wire) in &calls {
            let path = PathAndQuery::from_static(path);
            let message = Payload::Wire(wire.clone());
            let metadata = || {
                let mut map = http::HeaderMap::new();
                map.insert("x-request-id", unique(HeaderValue::from_static("id-1")));
                map.insert("authorization", HeaderValue::from_static("Bearer t"));
                Metadata::from(map)
            };
            let expected =
                outcome(through_h2(&reference, path.clone(), &message, metadata()).await);
            let got = outcome(through_own(&own, path.clone(), &message, metadata()).await);
            assert_eq!(got, expected, "{path} (limit {limit})");
        }
    }
}

// === against an h2 server's generated replies ===

/// How the server answers one call.
#[derive(Debug, Clone)]
struct Plan {
    status: u16,
    headers: Vec<(String, String)>,
    /// The head carries this gRPC status and ends the stream.
    trailers_only: Option<u8>,
    /// The sizes of the reply's messages.
    messages: Vec<usize>,
    /// The sizes the reply's DATA frames are cut into, in turn.
    chunks: Vec<usize>,
    /// The trailers' status and other fields; `None` ends the stream with
    /// the last DATA frame.
    trailers: Option<(u8, Vec<(String, String)>)>,
    /// Reset the stream (with this code) after this many DATA frames (0:
    /// before the head).
    reset: Option<(usize, u32)>,
    /// Instead of answering, close the connection with a GOAWAY.
    goaway: bool,
}

/// The server's settings.
#[derive(Debug, Clone)]
struct Settings {
    window: u32,
    max_streams: Option<u32>,
    max_frame: u32,
    table: u32,
}

/// One call's request, as the server received it.
#[derive(Debug, PartialEq, Eq)]
struct Received {
    case: usize,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

fn message_bytes(index: usize, len: usize) -> Vec<u8> {
    (0..len).map(|at| (at * 31 + index) as u8).collect()
}

/// Serves `plans` (the call's `x-case` header picks one) until dropped,
/// recording every request.
async fn plan_server(
    settings: Settings,
    plans: Arc<[Plan]>,
    received: Arc<Mutex<Vec<Received>>>,
) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let mut builder = h2::server::Builder::new();
            builder
                .initial_window_size(settings.window)
                .max_frame_size(settings.max_frame)
                .header_table_size(settings.table);
            if let Some(max) = settings.max_streams {
                builder.max_concurrent_streams(max);
            }
            let (plans, received) = (plans.clone(), received.clone());
            tokio::spawn(async move {
                let Ok(mut connection) = builder.handshake::<_, Bytes>(tcp).await else {
                    return;
                };
                while let Some(Ok((request, respond))) = connection.accept().await {
                    let case = case_of(&request);
                    if plans[case].goaway {
                        // GOAWAY naming this stream, then the connection closes
                        // without an answer.
                        connection.abrupt_shutdown(Reason::NO_ERROR);
                        continue;
                    }
                    let (plans, received) = (plans.clone(), received.clone());
                    tokio::spawn(answer(request, respond, plans, received));
                }
            });
        }
    });
    (url, server)
}

fn case_of(request: &http::Request<h2::RecvStream>) -> usize {
    let case = request.headers()["x-case"].to_str().unwrap();
    case.parse().unwrap()
}

async fn answer(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    plans: Arc<[Plan]>,
    received: Arc<Mutex<Vec<Received>>>,
) {
    let case = case_of(&request);
    let (head, mut body) = request.into_parts();
    let mut bytes = Vec::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    let mut headers: Vec<_> = head
        .headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
        .collect();
    headers.sort();
    headers.push((
        ":authority".into(),
        head.uri.authority().unwrap().as_str().into(),
    ));
    headers.push((":scheme".into(), head.uri.scheme_str().unwrap().into()));
    headers.push((":method".into(), head.method.as_str().into()));
    received.lock().await.push(Received {
        case,
        path: head.uri.path().to_owned(),
        headers,
        body: bytes,
    });
    let plan = &plans[case];
    if let Some((0, code)) = plan.reset {
        respond.send_reset(Reason::from(code));
        return;
    }
    let mut response = http::Response::builder().status(plan.status);
    for (name, value) in &plan.headers {
        response = response.header(name, value);
    }
    if let Some(code) = plan.trailers_only {
        response = response.header("grpc-status", code.to_string());
        response = response.header("grpc-message", "trailers%20only");
    }
    let Ok(mut send) =
        respond.send_response(response.body(()).unwrap(), plan.trailers_only.is_some())
    else {
        return;
    };
    if plan.trailers_only.is_none() {
        let mut data = Vec::new();
        for (index, &len) in plan.messages.iter().enumerate() {
            data.push(0);
            data.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
            data.extend_from_slice(&message_bytes(index, len));
        }
        let mut data = Bytes::from(data);
        let mut sizes = plan.chunks.iter().cycle();
        let mut sent = 0;
        loop {
            if plan.reset.is_some_and(|(after, _)| after == sent) {
                break;
            }
            let len = sizes
                .next()
                .copied()
                .unwrap_or(usize::MAX)
                .max(1)
                .min(data.len());
            let chunk = data.split_to(len);
            let last = data.is_empty() && plan.trailers.is_none() && plan.reset.is_none();
            if send.send_data(chunk, last).is_err() {
                return;
            }
            sent += 1;
            if data.is_empty() {
                break;
            }
        }
        if let Some((_, code)) = plan.reset {
            send.send_reset(Reason::from(code));
        } else if let Some((status, fields)) = &plan.trailers {
            let mut trailers = http::HeaderMap::new();
            for (name, value) in fields {
                trailers.append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            trailers.insert("grpc-status", HeaderValue::from(u16::from(*status)));
            if *status != 0 {
                trailers.insert("grpc-message", HeaderValue::from_static("it%20failed"));
            }
            let _ = send.send_trailers(trailers);
        }
    }
}

/// A header value of `len` characters from a seed: HPACK's Huffman code
/// shortens some and lengthens none of these.
fn value_of(len: usize, seed: u8) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~";
    (0..len)
        .map(|at| char::from(CHARS[(at * 7 + usize::from(seed)) % CHARS.len()]))
        .collect()
}

fn fields() -> impl Strategy<Value = Vec<(String, String)>> {
    let len = prop_oneof![8 => 0usize..40, 2 => 100usize..1500, 1 => 3000usize..4500, 1 => 17_000usize..20_000];
    prop::collection::vec(("x-[a-z]{1,6}", len, any::<u8>()), 0..5).prop_map(|fields| {
        fields
            .into_iter()
            .map(|(name, len, seed)| (name, value_of(len, seed)))
            .collect()
    })
}

fn plan() -> impl Strategy<Value = Plan> {
    let status = prop_oneof![10 => Just(200u16), 1 => Just(503u16), 1 => Just(404u16)];
    let trailers_only =
        prop_oneof![6 => Just(None), 1 => Just(Some(0u8)), 1 => (1u8..17).prop_map(Some)];
    let messages = prop::collection::vec(
        prop_oneof![6 => 0usize..600, 2 => 600usize..70_000, 1 => Just(70_000usize)],
        0..3,
    );
    let chunks = prop::collection::vec(1usize..20_000, 1..4);
    let trailers = prop_oneof![
        8 => (prop_oneof![4 => Just(0u8), 1 => 1u8..17], fields()).prop_map(Some),
        1 => Just(None),
    ];
    let reset = prop_oneof![
        8 => Just(None),
        1 => (0usize..3, prop_oneof![Just(0x8u32), Just(0x2), Just(0x7), Just(0x1)]).prop_map(Some),
    ];
    (
        status,
        fields(),
        trailers_only,
        messages,
        chunks,
        trailers,
        reset,
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(status, headers, trailers_only, mut messages, chunks, trailers, reset, goaway)| {
                if reset.is_some() {
                    // How much of the body arrives before the reset is the
                    // server's timing: no message may fail the call first.
                    messages
                        .iter_mut()
                        .for_each(|len| *len = (*len).min(60_000));
                }
                Plan {
                    status,
                    headers,
                    trailers_only,
                    messages,
                    chunks,
                    trailers,
                    reset,
                    goaway,
                }
            },
        )
}

fn settings() -> impl Strategy<Value = Settings> {
    (
        prop_oneof![Just(65_535u32), 1u32..70_000, Just(1_048_576)],
        prop_oneof![3 => Just(None), 1 => (1u32..4).prop_map(Some)],
        prop_oneof![Just(16_384u32), 16_384u32..100_000],
        prop_oneof![Just(4096u32), 0u32..8192],
    )
        .prop_map(|(window, max_streams, max_frame, table)| Settings {
            window,
            max_streams,
            max_frame,
            table,
        })
}

/// One call's request: its metadata (some values sensitive) and body size.
fn request() -> impl Strategy<Value = CallRequest> {
    let metadata = prop::collection::vec(
        (
            "x-[a-z]{1,6}",
            prop_oneof![6 => 0usize..60, 1 => 17_000usize..18_000],
            any::<u8>(),
            any::<bool>(),
        )
            .prop_map(|(name, len, seed, sensitive)| (name, value_of(len, seed), sensitive)),
        0..4,
    );
    let body = prop_oneof![6 => 0usize..2000, 1 => 60_000usize..200_000];
    (metadata, body)
}

/// Runs every case through one client: all at once, or one after another
/// (when some close their connection).
/// A call's metadata (name, value, whether sensitive) and request body size.
type CallRequest = (Vec<(String, String, bool)>, usize);

async fn run_all(
    upstream: &Upstream,
    requests: &[CallRequest],
    own: bool,
    sequential: bool,
) -> Vec<Outcome> {
    let call = |case: usize| {
        let (fields, body) = &requests[case];
        let mut map = http::HeaderMap::new();
        for (name, value, sensitive) in fields {
            let value = HeaderValue::from_str(value).unwrap();
            let value = if *sensitive { unique(value) } else { value };
            map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value);
        }
        map.insert("x-case", HeaderValue::from(case));
        let metadata = Metadata::from(map);
        let message = Payload::Wire(message_bytes(case, *body));
        async move {
            let path = PathAndQuery::from_static("/test.Service/Method");
            let result = if own {
                through_own(upstream, path, &message, metadata).await
            } else {
                through_h2(upstream, path, &message, metadata).await
            };
            outcome(result)
        }
    };
    if sequential {
        let mut outcomes = Vec::new();
        for case in 0..requests.len() {
            outcomes.push(call(case).await);
        }
        outcomes
    } else {
        futures_util::future::join_all((0..requests.len()).map(call)).await
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn generated_replies_come_out_the_same_through_both_clients(
        settings in settings(),
        cases in prop::collection::vec((plan(), request()), 1..6),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let plans: Arc<[Plan]> = cases.iter().map(|(plan, _)| plan.clone()).collect();
            let requests: Vec<_> = cases.iter().map(|(_, request)| request.clone()).collect();
            // A connection that closes under concurrent calls fails those
            // that were in flight at that moment, which timing decides:
            // such cases run one after another.
            let sequential = plans.iter().any(|plan| plan.goaway);
            let received = Arc::new(Mutex::new(Vec::new()));
            let (url, server) = plan_server(settings.clone(), plans.clone(), received.clone()).await;
            let mut outcomes = Vec::new();
            let mut requests_seen = Vec::new();
            for own in [false, true] {
                let upstream = upstream(&url, 65_536);
                outcomes.push(run_all(&upstream, &requests, own, sequential).await);
                let mut seen = std::mem::take(&mut *received.lock().await);
                seen.sort_by_key(|received| received.case);
                requests_seen.push(seen);
            }
            server.abort();
            prop_assert_eq!(&outcomes[1], &outcomes[0]);
            prop_assert_eq!(&requests_seen[1], &requests_seen[0]);
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn replies_larger_than_every_window_arrive_whole_on_concurrent_calls() {
    let plan = Plan {
        status: 200,
        headers: Vec::new(),
        trailers_only: None,
        messages: vec![3 << 20],
        chunks: vec![16_384],
        trailers: Some((0, Vec::new())),
        reset: None,
        goaway: false,
    };
    let plans: Arc<[Plan]> = vec![plan; 3].into();
    let settings = Settings {
        window: 65_535,
        max_streams: None,
        max_frame: 16_384,
        table: 4096,
    };
    let received = Arc::new(Mutex::new(Vec::new()));
    let (url, _server) = plan_server(settings, plans, received.clone()).await;
    let upstream = upstream(&url, 4 << 20);
    // Three calls of 3 MiB each: past the stream's window (2 MiB) and,
    // together, the connection's (5 MiB); their requests past the server's.
    let requests: Vec<_> = (0..3).map(|_| (Vec::new(), 300_000)).collect();
    let outcomes = run_all(&upstream, &requests, true, false).await;
    for (case, outcome) in outcomes.into_iter().enumerate() {
        let Outcome::Reply { message, .. } = outcome else {
            panic!("case {case}: {outcome:?}");
        };
        assert_eq!(message, message_bytes(0, 3 << 20), "case {case}");
    }
    let received = received.lock().await;
    assert_eq!(received.len(), 3);
    for request in received.iter() {
        assert_eq!(request.body[5..], message_bytes(request.case, 300_000));
    }
}

// === against a server that writes its frames by hand ===

/// What a hand-written server does when a request on a stream is whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    /// A reply in every shape the `h2` server never sends: padding, a
    /// PRIORITY flag and frame, CONTINUATION, unknown frames, a PING.
    Padded,
    /// GOAWAY naming the stream before this one as the last processed.
    GoAway,
    /// A WINDOW_UPDATE of 0 for the connection: a connection error.
    ProtocolError,
}

/// Serves one connection at a time, answering the `n`-th request with
/// `scripts[n]` (the last one for every request after); records the PING
/// ACKs it gets.
async fn hand_written_server(scripts: Vec<Script>) -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let pongs = Arc::new(Mutex::new(Vec::new()));
    let recorded = pongs.clone();
    tokio::spawn(async move {
        let mut answered = 0;
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut preface = [0; 24];
            if tcp.read_exact(&mut preface).await.is_err() {
                continue;
            }
            let mut out = Vec::new();
            super::frame::settings(&mut out, &[]);
            tcp.write_all(&out).await.unwrap();
            loop {
                let mut head = [0; 9];
                if tcp.read_exact(&mut head).await.is_err() {
                    break;
                }
                let head = super::frame::Head::parse(&head).unwrap();
                let mut payload = vec![0; head.len];
                tcp.read_exact(&mut payload).await.unwrap();
                let mut out = Vec::new();
                match head.kind {
                    super::frame::SETTINGS if !head.has(super::frame::ACK) => {
                        super::frame::settings_ack(&mut out);
                    }
                    super::frame::PING if head.has(super::frame::ACK) => {
                        recorded.lock().await.push(payload);
                    }
                    super::frame::DATA if head.has(super::frame::END_STREAM) => {
                        let script = scripts[answered.min(scripts.len() - 1)];
                        answered += 1;
                        hand_written_reply(&mut out, head.stream, script);
                    }
                    _ => {}
                }
                if tcp.write_all(&out).await.is_err() {
                    break;
                }
            }
        }
    });
    (url, pongs)
}

fn hand_written_reply(out: &mut Vec<u8>, stream: u32, script: Script) {
    use super::{frame, hpack::field};

    match script {
        Script::GoAway => {
            frame::head(out, 8, frame::GOAWAY, 0, 0);
            out.extend_from_slice(&(stream - 2).to_be_bytes());
            out.extend_from_slice(&0u32.to_be_bytes());
            return;
        }
        Script::ProtocolError => {
            frame::window_update(out, 0, 0);
            return;
        }
        Script::Padded => {}
    }
    frame::head(out, 8, frame::PING, 0, 0);
    out.extend_from_slice(b"pingpong");
    frame::head(out, 3, 0xfa, 0, stream);
    out.extend_from_slice(b"???");
    frame::head(out, 5, frame::PRIORITY, 0, stream);
    out.extend_from_slice(&[0, 0, 0, 0, 16]);
    let mut block = Vec::new();
    field(&mut block, ":status", b"200", false);
    field(&mut block, "content-type", b"application/grpc", false);
    field(&mut block, "x-reply", b"padded", true);
    // HEADERS: padded, with a priority, its block continued.
    let (first, rest) = block.split_at(4);
    let flags = frame::PADDED | frame::PRIORITY_FLAG;
    frame::head(out, 1 + 5 + first.len() + 7, frame::HEADERS, flags, stream);
    out.push(7);
    out.extend_from_slice(&[0, 0, 0, 0, 16]);
    out.extend_from_slice(first);
    out.extend_from_slice(&[0; 7]);
    frame::head(
        out,
        rest.len(),
        frame::CONTINUATION,
        frame::END_HEADERS,
        stream,
    );
    out.extend_from_slice(rest);
    // The message "hello" in two padded DATA frames.
    for (part, pad) in [(&[0u8, 0, 0, 0, 5, b'h'][..], 3u8), (b"ello", 0)] {
        frame::head(
            out,
            1 + part.len() + usize::from(pad),
            frame::DATA,
            frame::PADDED,
            stream,
        );
        out.push(pad);
        out.extend_from_slice(part);
        out.extend(std::iter::repeat_n(0, usize::from(pad)));
    }
    let mut trailers = Vec::new();
    field(&mut trailers, "grpc-status", b"0", false);
    let flags = frame::END_HEADERS | frame::END_STREAM;
    frame::head(out, trailers.len(), frame::HEADERS, flags, stream);
    out.extend_from_slice(&trailers);
}

#[tokio::test]
async fn padding_priority_continuation_unknown_frames_and_pings_are_read_the_same() {
    let mut outcomes = Vec::new();
    for own in [false, true] {
        let (url, pongs) = hand_written_server(vec![Script::Padded]).await;
        let upstream = upstream(&url, 1024);
        let requests = vec![(Vec::new(), 10); 2];
        let outcome = run_all(&upstream, &requests, own, true).await;
        let Outcome::Reply { message, metadata } = &outcome[0] else {
            panic!("{outcome:?}");
        };
        assert_eq!(&message[..], b"hello");
        assert!(metadata.contains(&("x-reply".into(), b"padded".to_vec())));
        outcomes.push(outcome);
        for _ in 0..100 {
            if pongs.lock().await.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            *pongs.lock().await,
            [b"pingpong".to_vec(), b"pingpong".to_vec()]
        );
    }
    assert_eq!(outcomes[1], outcomes[0]);
}

#[tokio::test]
async fn a_call_above_a_goaway_s_last_stream_fails_and_the_next_connects_again() {
    let mut outcomes = Vec::new();
    for own in [false, true] {
        // The first call is answered, the second refused by GOAWAY; the
        // third goes on a new connection, whose first call is answered.
        let (url, _) =
            hand_written_server(vec![Script::Padded, Script::GoAway, Script::Padded]).await;
        let upstream = upstream(&url, 1024);
        let requests = vec![(Vec::new(), 10); 3];
        outcomes.push(run_all(&upstream, &requests, own, true).await);
    }
    let [ok, refused, again] = &outcomes[1][..] else {
        panic!("{:?}", outcomes[1]);
    };
    assert!(matches!(ok, Outcome::Reply { .. }), "{ok:?}");
    assert!(
        matches!(refused, Outcome::Failed { kind, .. } if kind == "UpstreamUnavailable"),
        "{refused:?}"
    );
    assert!(matches!(again, Outcome::Reply { .. }), "{again:?}");
    assert_eq!(outcomes[1], outcomes[0]);
}

#[tokio::test]
async fn a_protocol_error_fails_the_calls_on_its_connection_and_the_next_connects_again() {
    let mut outcomes = Vec::new();
    for own in [false, true] {
        let scripts = vec![Script::ProtocolError, Script::Padded];
        let (url, _) = hand_written_server(scripts).await;
        let upstream = upstream(&url, 1024);
        let requests = vec![(Vec::new(), 10); 2];
        outcomes.push(run_all(&upstream, &requests, own, true).await);
    }
    let [failed, again] = &outcomes[1][..] else {
        panic!("{:?}", outcomes[1]);
    };
    assert!(
        matches!(failed, Outcome::Failed { kind, .. } if kind == "UpstreamUnavailable"),
        "{failed:?}"
    );
    assert!(matches!(again, Outcome::Reply { .. }), "{again:?}");
    assert_eq!(outcomes[1], outcomes[0]);
}

#[tokio::test]
async fn a_call_dropped_at_its_deadline_resets_its_stream() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (reset_tx, mut reset_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut connection = h2::server::handshake(tcp).await.unwrap();
        while let Some(Ok((_, mut respond))) = connection.accept().await {
            let reset_tx = reset_tx.clone();
            // Never answers; reports how the client ended the stream.
            tokio::spawn(async move {
                let reason = std::future::poll_fn(|cx| respond.poll_reset(cx)).await;
                let _ = reset_tx.send(reason.ok());
            });
        }
    });
    let upstream = upstream(&url, 1024);
    let deadline = Deadline::start(&upstream, Some(Duration::from_millis(100)));
    let path = PathAndQuery::from_static("/test.Service/Method");
    let message = Payload::Wire(Vec::new());
    let result = unary(&upstream, path, &message, Metadata::default(), deadline).await;
    assert!(
        matches!(result, Err(Error::DeadlineExceeded { .. })),
        "{result:?}"
    );
    assert_eq!(reset_rx.recv().await.unwrap(), Some(Reason::CANCEL));
}

#[tokio::test]
async fn a_peer_that_reads_nothing_cannot_make_the_client_buffer_its_answers_without_bound() {
    use futures_util::FutureExt as _;
    use tokio::io::AsyncWriteExt as _;

    let (io, mut peer) = tokio::io::duplex(64 << 10);
    let _client = super::start(io);
    let mut ping = Vec::new();
    super::frame::head(&mut ping, 8, super::frame::PING, 0, 0);
    ping.extend_from_slice(b"pingpong");
    // 10 MiB of PINGs, whose answers the peer never reads: written for as
    // long as the client, given its turns, reads them.
    let flood = ping.repeat(10 << 20 >> 4);
    let mut written = 0;
    'flood: while written < flood.len() {
        for _ in 0..20 {
            if let Some(n) = peer.write(&flood[written..]).now_or_never() {
                written += n.unwrap();
                continue 'flood;
            }
            tokio::task::yield_now().await;
        }
        break;
    }
    // The client stopped reading once 1 MiB of answers waited.
    assert!(
        written < 2 << 20,
        "the client read {written} bytes of PINGs"
    );
}
