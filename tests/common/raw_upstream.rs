//! A raw HTTP/2 upstream on loopback that answers every call as it is told,
//! however wrongly: what a real gRPC server never sends.

use std::{future::poll_fn, net::SocketAddr, time::Duration};

use bytes::Bytes;
use h2::{server::SendResponse, Reason};
use http::{HeaderMap, HeaderName, HeaderValue, Response};
use tokio::{net::TcpListener, sync::watch};

/// How the upstream answers a call.
#[derive(Clone, Debug)]
pub enum Answer {
    /// Reply headers, DATA frames, then trailers, or the end of the stream
    /// without any (`None`).
    Reply {
        http_status: u16,
        headers: Vec<(&'static str, String)>,
        chunks: Vec<Vec<u8>>,
        trailers: Option<Vec<(&'static str, String)>>,
    },
    /// A gRPC reply's headers and DATA frames, then RST_STREAM.
    ResetAfter(Vec<Vec<u8>>),
    /// A gRPC reply's headers and DATA frames, then the connection closes.
    HangUpAfter(Vec<Vec<u8>>),
    /// Nothing: the call waits out its deadline.
    Silent,
}

impl Answer {
    /// HTTP 200 as gRPC: `chunks` as DATA frames, then an OK status.
    pub fn ok(chunks: Vec<Vec<u8>>) -> Self {
        Self::Reply {
            http_status: 200,
            headers: vec![("content-type", "application/grpc".into())],
            chunks,
            trailers: Some(vec![("grpc-status", "0".into())]),
        }
    }

    /// A status in the reply headers alone (trailers-only).
    pub fn trailers_only(status: Vec<(&'static str, String)>) -> Self {
        let mut headers = vec![("content-type", "application/grpc".to_owned())];
        headers.extend(status);
        Self::Reply {
            http_status: 200,
            headers,
            chunks: Vec::new(),
            trailers: None,
        }
    }

    /// An HTTP status without a body or any gRPC header.
    pub fn http(http_status: u16) -> Self {
        Self::Reply {
            http_status,
            headers: Vec::new(),
            chunks: Vec::new(),
            trailers: None,
        }
    }
}

/// `message` as one gRPC frame: no compression, big-endian length.
pub fn frame_of(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0];
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// The upstream, serving until the test's runtime ends.
pub struct RawUpstream {
    pub addr: SocketAddr,
    answer: watch::Sender<Answer>,
}

impl RawUpstream {
    pub async fn start(answer: Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (answer, answers) = watch::channel(answer);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let answers = answers.clone();
                tokio::spawn(async move {
                    let Ok(mut connection) = h2::server::handshake(tcp).await else {
                        return;
                    };
                    while let Some(Ok((_, respond))) = connection.accept().await {
                        let answer = answers.borrow().clone();
                        if let Answer::HangUpAfter(chunks) = answer {
                            send_head_and(respond, chunks);
                            // Long enough for the frames to leave, then the
                            // connection (and its socket) is dropped.
                            let flushing = connection.accept();
                            let _ = tokio::time::timeout(Duration::from_millis(50), flushing).await;
                            return;
                        }
                        tokio::spawn(answer.send(respond));
                    }
                });
            }
        });
        Self { addr, answer }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every call from now on gets `answer`.
    pub fn answer(&self, answer: Answer) {
        self.answer.send_replace(answer);
    }
}

impl Answer {
    async fn send(self, mut respond: SendResponse<Bytes>) {
        match self {
            Self::Reply {
                http_status,
                headers,
                chunks,
                trailers,
            } => {
                let mut response = Response::builder().status(http_status);
                for (name, value) in headers {
                    response = response.header(name, value);
                }
                let ends_now = chunks.is_empty() && trailers.is_none();
                let Ok(mut stream) = respond.send_response(response.body(()).unwrap(), ends_now)
                else {
                    return;
                };
                let count = chunks.len();
                for (i, chunk) in chunks.into_iter().enumerate() {
                    let last = i + 1 == count && trailers.is_none();
                    let _ = stream.send_data(chunk.into(), last);
                }
                if let Some(trailers) = trailers {
                    let map: HeaderMap = trailers
                        .into_iter()
                        .map(|(name, value)| {
                            (
                                HeaderName::from_static(name),
                                HeaderValue::try_from(value).unwrap(),
                            )
                        })
                        .collect();
                    let _ = stream.send_trailers(map);
                }
            }
            Self::ResetAfter(chunks) => {
                if let Some(mut stream) = send_head_and(respond, chunks) {
                    // Long enough for the frames to leave before the reset.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    stream.send_reset(Reason::INTERNAL_ERROR);
                }
            }
            Self::HangUpAfter(_) => unreachable!("answered by the connection"),
            // Held until the caller gives up and resets the stream.
            Self::Silent => {
                let _ = poll_fn(|cx| respond.poll_reset(cx)).await;
            }
        }
    }
}

/// A gRPC reply's headers and `chunks`, the stream left open.
fn send_head_and(
    mut respond: SendResponse<Bytes>,
    chunks: Vec<Vec<u8>>,
) -> Option<h2::SendStream<Bytes>> {
    let head = Response::builder()
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let mut stream = respond.send_response(head, false).ok()?;
    for chunk in chunks {
        stream.send_data(chunk.into(), false).ok()?;
    }
    Some(stream)
}
