//! Client connections on the public listener: header-read and idle
//! timeouts, idle HTTP/1.1 connections parked and taken up again, HTTP/2
//! pings, idleness and response header compression, the connection cap,
//! the admin listener still answering while the public one is full, and
//! connections moving between workers as the load changes. Raw sockets,
//! mostly, since these are about what happens between requests.

mod common;

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use common::{read_response, read_until_closed, Gateway, RawResponse};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tonic::Code;

const GET: &[u8] = b"GET /v1/echo/hello HTTP/1.1\r\nHost: gateway\r\n\r\n";

/// A head that never ends: the start of a request, then nothing.
const HEAD_CUT_SHORT: &[u8] = b"GET /v1/echo/hello HTTP/1.1\r\nHost: gateway\r\nX-Slow: ";

async fn connect(gw: &Gateway) -> TcpStream {
    TcpStream::connect(gw.addr).await.unwrap()
}

/// One keep-alive GET on `stream`, answered 200.
async fn get_ok(stream: &mut TcpStream) {
    stream.write_all(GET).await.unwrap();
    let response = read_response(stream).await.expect("a response");
    assert_eq!(response.status, 200, "{response:?}");
}

/// A 408 with a google.rpc.Status body whose request id is the header's.
fn assert_request_timeout(response: &RawResponse) {
    assert_eq!(response.status, 408, "{response:?}");
    let body = response.json();
    common::assert_status(&body, Code::DeadlineExceeded, "request timeout");
    let id = response
        .header("x-request-id")
        .expect("a request id header");
    assert_eq!(body["details"][0]["requestId"], id, "{body}");
}

#[tokio::test]
async fn a_first_request_head_cut_short_is_answered_408_and_closed() {
    let gw = Gateway::start_with(|config| {
        config.limits.header_read_timeout = Duration::from_millis(200);
    })
    .await;
    let mut slow = connect(&gw).await;
    slow.write_all(HEAD_CUT_SHORT).await.unwrap();
    let response = read_response(&mut slow).await.expect("a 408");
    assert_request_timeout(&response);
    assert!(read_until_closed(&mut slow).await.is_empty());
    // The gateway still serves.
    get_ok(&mut connect(&gw).await).await;
}

#[tokio::test]
async fn a_later_request_head_cut_short_is_answered_408_and_closed() {
    let gw = Gateway::start_with(|config| {
        config.limits.header_read_timeout = Duration::from_millis(200);
    })
    .await;
    let mut slow = connect(&gw).await;
    get_ok(&mut slow).await;
    slow.write_all(HEAD_CUT_SHORT).await.unwrap();
    let response = read_response(&mut slow).await.expect("a 408");
    assert_request_timeout(&response);
    assert!(read_until_closed(&mut slow).await.is_empty());
}

#[tokio::test]
async fn a_head_trickled_a_byte_at_a_time_is_cut_off() {
    let gw = Gateway::start_with(|config| {
        config.limits.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    let mut slow = connect(&gw).await;
    get_ok(&mut slow).await;
    let (mut reader, mut writer) = slow.into_split();
    // Each byte comes well within the timeout; the head as a whole never does.
    let trickle = tokio::spawn(async move {
        for byte in HEAD_CUT_SHORT.iter().chain(&[b'x'; 1000]) {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let response = read_response(&mut reader).await.expect("a 408");
    assert_request_timeout(&response);
    read_until_closed(&mut reader).await;
    trickle.abort();
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_header_read_timeout() {
    let gw = Gateway::start_with(|config| {
        config.limits.header_read_timeout = Duration::from_millis(200);
    })
    .await;
    let mut silent = connect(&gw).await;
    assert!(read_until_closed(&mut silent).await.is_empty());
}

/// Parked first (quiet for a quarter of the idle timeout), then closed.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let gw = Gateway::start_with(|config| {
        config.limits.header_read_timeout = Duration::from_millis(100);
        config.limits.idle_timeout = Duration::from_millis(400);
    })
    .await;
    let mut idle = connect(&gw).await;
    get_ok(&mut idle).await;
    get_ok(&mut idle).await;
    // Closed without a word: nothing was asked.
    assert!(read_until_closed(&mut idle).await.is_empty());
}

/// A connection quiet for a quarter of the idle timeout (at most 2 s) is
/// parked: hyper's connection and its buffers are dropped, the socket kept.
/// Each request after a pause longer than that is taken up by a new one.
#[tokio::test]
async fn a_parked_keep_alive_connection_serves_its_next_requests() {
    let gw = Gateway::start_with(|config| {
        config.limits.header_read_timeout = Duration::from_millis(100);
        config.limits.idle_timeout = Duration::from_secs(2);
    })
    .await;
    let mut idle = connect(&gw).await;
    for _ in 0..3 {
        get_ok(&mut idle).await;
        // Parked within two quarters of the idle timeout.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    // Pipelined after parking: both served, in order.
    idle.write_all(&[GET, GET].concat()).await.unwrap();
    for _ in 0..2 {
        let response = read_response(&mut idle).await.expect("a response");
        assert_eq!(response.status, 200, "{response:?}");
    }
}

/// Stopping the gateway closes a parked connection at once: it has nothing
/// in flight, and its idle timeout is far off.
#[tokio::test]
async fn shutdown_closes_a_parked_connection_at_once() {
    let gw = Gateway::start_with(|config| {
        config.limits.header_read_timeout = Duration::from_millis(100);
        config.limits.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let mut idle = connect(&gw).await;
    get_ok(&mut idle).await;
    // Parked within twice the 2 s interval.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    tokio::time::timeout(common::HANG_GUARD, gw.stop())
        .await
        .expect("the gateway stops before the idle timeout")
        .unwrap();
    assert!(read_until_closed(&mut idle).await.is_empty());
}

/// The start of a pipelined request that hyper read with the one before
/// it is handed to the connection that takes up the parked socket: it is
/// not lost, and as a head begun it has `header_read_timeout` to end, not
/// the idle timeout (before parking, it waited the idle timeout and was
/// closed without an answer).
#[tokio::test]
async fn a_pipelined_head_cut_short_outlives_parking_and_is_answered_408() {
    let gw = Gateway::start_with(|config| {
        config.limits.header_read_timeout = Duration::from_millis(300);
        config.limits.idle_timeout = Duration::from_secs(4);
    })
    .await;
    let mut slow = connect(&gw).await;
    slow.write_all(&[GET, HEAD_CUT_SHORT].concat())
        .await
        .unwrap();
    let first = read_response(&mut slow).await.expect("the first response");
    assert_eq!(first.status, 200, "{first:?}");
    let response = read_response(&mut slow).await.expect("a 408");
    assert_request_timeout(&response);
    assert!(read_until_closed(&mut slow).await.is_empty());
}

/// hyper's own header timer also runs while a keep-alive connection waits
/// for its next request; the gateway's starts at the request's first byte.
#[tokio::test]
async fn an_idle_keep_alive_connection_outlives_the_header_read_timeout() {
    let gw = Gateway::start_with(|config| {
        config.limits.header_read_timeout = Duration::from_millis(100);
    })
    .await;
    let mut idle = connect(&gw).await;
    get_ok(&mut idle).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    get_ok(&mut idle).await;
}

/// The connection preface and an empty SETTINGS frame: HTTP/2 with prior knowledge.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

const HEADERS: u8 = 1;
const PING: u8 = 6;
const GOAWAY: u8 = 7;

/// Reads HTTP/2 frames until one of `kind` (not an ACK) arrives and returns
/// its payload, or `None` when the connection closes first; answers
/// SETTINGS so the server stays content.
async fn await_frame(stream: &mut TcpStream, kind: u8) -> Option<Vec<u8>> {
    let read = async {
        loop {
            let mut header = [0u8; 9];
            stream.read_exact(&mut header).await.ok()?;
            let length =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let mut payload = vec![0u8; length];
            stream.read_exact(&mut payload).await.ok()?;
            let (frame, flags) = (header[3], header[4]);
            if frame == kind && (frame == HEADERS || flags & 1 == 0) {
                return Some(payload);
            }
            if frame == 4 && flags & 1 == 0 {
                let _ = stream.write_all(b"\0\0\0\x04\x01\0\0\0\0").await;
            }
        }
    };
    tokio::time::timeout(common::HANG_GUARD, read)
        .await
        .expect("a frame or the close")
}

/// A HEADERS frame of `GET /v1/echo/hi` on stream `id`, END_STREAM |
/// END_HEADERS. HPACK: :method GET, :scheme http, then :path and
/// :authority as literals with indexed names.
fn h2_get(id: u8) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x04, 11];
    block.extend_from_slice(b"/v1/echo/hi");
    block.extend_from_slice(&[0x01, 7]);
    block.extend_from_slice(b"gateway");
    let mut headers = vec![
        0,
        0,
        u8::try_from(block.len()).unwrap(),
        1,
        0x05,
        0,
        0,
        0,
        id,
    ];
    headers.extend_from_slice(&block);
    headers
}

/// How many fields of an HPACK header block are literals never to be
/// indexed (RFC 7541, 6.2.3): read by their representations' first bytes,
/// names and values skipped by their lengths, nothing decoded.
fn never_indexed_fields(mut block: &[u8]) -> usize {
    /// An integer with an N-bit prefix (5.1), and what follows it.
    fn integer(block: &[u8], prefix: u32) -> (usize, &[u8]) {
        let max = (1usize << prefix) - 1;
        let (mut value, mut rest) = (usize::from(block[0]) & max, &block[1..]);
        if value == max {
            let mut shift = 0;
            loop {
                let (byte, tail) = rest.split_first().expect("a whole integer");
                value += usize::from(byte & 0x7f) << shift;
                (shift, rest) = (shift + 7, tail);
                if byte & 0x80 == 0 {
                    break;
                }
            }
        }
        (value, rest)
    }
    fn skip_string(block: &[u8]) -> &[u8] {
        let (length, rest) = integer(block, 7);
        &rest[length..]
    }
    let mut count = 0;
    while let Some(&first) = block.first() {
        // Indexed, literal with incremental indexing, table size update,
        // literal never indexed, literal without indexing.
        let (prefix, literal) = match first {
            0x80.. => (7, false),
            0x40.. => (6, true),
            0x20.. => (5, false),
            0x10.. => (4, true),
            _ => (4, true),
        };
        count += usize::from(first & 0xf0 == 0x10);
        let (name, rest) = integer(block, prefix);
        block = rest;
        if literal {
            if name == 0 {
                block = skip_string(block);
            }
            block = skip_string(block);
        }
    }
    count
}

#[tokio::test]
async fn the_ids_on_http2_responses_are_literals_never_indexed() {
    let gw = Gateway::start().await;
    let mut h2 = connect(&gw).await;
    h2.write_all(H2_PREFACE).await.unwrap();
    // x-request-id, x-correlation-id and traceparent differ on every
    // response: in the connection's HPACK table they would only evict
    // what is reused, and cost a search and an insertion each.
    for id in [1, 3, 5] {
        h2.write_all(&h2_get(id)).await.unwrap();
        let block = await_frame(&mut h2, HEADERS).await.expect("a reply");
        assert_eq!(block[0], 0x88, ":status 200");
        assert_eq!(never_indexed_fields(&block), 3, "stream {id}: {block:?}");
    }
}

#[tokio::test]
async fn an_http2_connection_is_pinged_and_closed_when_it_does_not_answer() {
    let gw = Gateway::start_with(|config| {
        config.limits.http2_keepalive_interval = Duration::from_millis(100);
        config.limits.http2_keepalive_timeout = Duration::from_millis(100);
    })
    .await;
    let mut h2 = connect(&gw).await;
    h2.write_all(H2_PREFACE).await.unwrap();
    assert!(await_frame(&mut h2, PING).await.is_some(), "a ping");
    // Never answered: the connection goes.
    read_until_closed(&mut h2).await;
}

#[tokio::test]
async fn an_http2_connection_without_requests_for_the_idle_timeout_is_sent_goaway() {
    let gw = Gateway::start_with(|config| {
        config.limits.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let mut h2 = connect(&gw).await;
    h2.write_all(H2_PREFACE).await.unwrap();
    h2.write_all(&h2_get(1)).await.unwrap();
    // :status 200, HPACK's static index 8.
    assert_eq!(
        await_frame(&mut h2, HEADERS).await.expect("a reply")[0],
        0x88
    );
    let goaway = await_frame(&mut h2, GOAWAY).await.expect("a GOAWAY");
    assert_eq!(goaway[4..8], [0, 0, 0, 0], "NO_ERROR");
}

#[tokio::test]
async fn past_max_connections_new_ones_are_refused_and_the_admin_listener_answers() {
    let gw = Gateway::start_with(|config| config.limits.max_connections = Some(8)).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut stream = connect(&gw).await;
        get_ok(&mut stream).await;
        held.push(stream);
    }
    // Refused at once: closed or reset, never answered.
    for _ in 0..3 {
        let mut refused = connect(&gw).await;
        let _ = refused.write_all(GET).await;
        assert!(read_response(&mut refused).await.is_none());
    }
    assert_eq!(
        gw.text(format!("http://{}/healthz", gw.admin_addr)).await,
        "ok\n"
    );
    // The held ones still serve, and a freed place is taken again.
    get_ok(&mut held[0]).await;
    held.pop();
    let mut admitted = None;
    for _ in 0..100 {
        let mut stream = connect(&gw).await;
        stream.write_all(GET).await.unwrap();
        if let Some(response) = read_response(&mut stream).await {
            admitted = Some(response.status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(admitted, Some(200));
}

/// A metric's value as the admin listener's `/metrics` shows it.
async fn metric(gw: &Gateway, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", gw.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// The distinct upstream connections `clients` call over, once a request
/// of each has seen them all over `n`: a connection moves after a request,
/// once none of its next head is read (a next request sent at once can
/// still be served where it was).
async fn upstream_peers(gw: &Gateway, clients: &[reqwest::Client], n: usize) -> HashSet<String> {
    let mut peers = HashSet::new();
    for _ in 0..20 {
        peers.clear();
        for client in clients {
            peers.insert(gw.upstream_peer(client).await);
        }
        if peers.len() == n {
            break;
        }
    }
    peers
}

/// Polls `name` until `accept` takes its value, at most 60 s.
async fn until_metric(gw: &Gateway, name: &str, accept: impl Fn(f64) -> bool) -> f64 {
    for _ in 0..600 {
        let value = metric(gw, name).await;
        if accept(value) {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} stayed at {}", metric(gw, name).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_load_is_served_by_one_worker_and_heavy_load_brings_the_other_in() {
    let gw = Gateway::start_with(|config| config.workers = 2).await;
    assert_eq!(metric(&gw, "protogate_workers_active").await, 1.0);
    assert_eq!(metric(&gw, "protogate_connections_moved_total").await, 0.0);
    // One request at a time: every connection on the one active worker,
    // calling upstream over its one connection.
    let clients: Vec<reqwest::Client> = (0..8).map(|_| reqwest::Client::new()).collect();
    assert_eq!(upstream_peers(&gw, &clients, 1).await.len(), 1);

    // Requests back to back on all of them: the second worker comes in and
    // takes some of the connections, which call over its own connection.
    let loaded = Arc::new(AtomicBool::new(true));
    let load: Vec<_> = clients
        .iter()
        .map(|client| {
            let (client, url, loaded) = (client.clone(), gw.url("/v1/echo/load"), loaded.clone());
            tokio::spawn(async move {
                while loaded.load(Relaxed) {
                    let response = client.get(&url).send().await.unwrap();
                    assert_eq!(response.status(), 200);
                    response.bytes().await.unwrap();
                }
            })
        })
        .collect();
    until_metric(&gw, "protogate_workers_active", |active| active == 2.0).await;
    let moved = until_metric(&gw, "protogate_connections_moved_total", |moved| {
        moved > 0.0
    })
    .await;
    loaded.store(false, Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(upstream_peers(&gw, &clients, 2).await.len(), 2);

    // Light again: the second worker leaves, and its connections come back.
    until_metric(&gw, "protogate_workers_active", |active| active == 1.0).await;
    assert_eq!(upstream_peers(&gw, &clients, 1).await.len(), 1);
    assert!(metric(&gw, "protogate_connections_moved_total").await > moved);
}
