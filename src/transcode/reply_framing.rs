//! Framing of a streamed reply, in the format the client asks for with `Accept`:
//!
//! * `application/x-ndjson` (the default): one JSON object per line,
//!   `{"result": <message>}`, and a final `{"error": <google.rpc.Status>}`
//!   when the stream fails (grpc-gateway's envelope, so a message with a field
//!   named `error` is never mistaken for a failure);
//! * `text/event-stream`: Server-Sent Events, `data: <message>` per message and
//!   a final `event: error` whose data is the `google.rpc.Status`;
//! * `application/json`: one JSON array of the same envelopes as NDJSON,
//!   written element by element and always closed, even after an error.

use bytes::{BufMut as _, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue};

/// The wire format of a streamed reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFormat {
    Ndjson,
    EventStream,
    JsonArray,
}

/// Writes one stream in one format: call [`Framer::message`] per message, then
/// [`Framer::error`] or [`Framer::end`] once.
#[derive(Debug)]
pub struct Framer {
    format: StreamFormat,
    written: usize,
}

// === impl StreamFormat ===

impl StreamFormat {
    /// The supported type the client prefers (highest `q`, then first listed);
    /// NDJSON when `Accept` is absent or names nothing supported.
    pub fn negotiate(headers: &HeaderMap) -> Self {
        let mut best: Option<(f32, Self)> = None;
        for value in headers.get_all(header::ACCEPT) {
            let Ok(text) = value.to_str() else { continue };
            for range in text.split(',') {
                let mut params = range.split(';');
                let media = params.next().unwrap_or_default().trim();
                let quality = params
                    .filter_map(|p| p.trim().strip_prefix("q="))
                    .find_map(|q| q.trim().parse::<f32>().ok())
                    .unwrap_or(1.0);
                let Some(format) = Self::for_media_type(media) else {
                    continue;
                };
                if quality > 0.0 && best.is_none_or(|(q, _)| quality > q) {
                    best = Some((quality, format));
                }
            }
        }
        best.map_or(Self::Ndjson, |(_, format)| format)
    }

    fn for_media_type(media: &str) -> Option<Self> {
        let media = media.to_ascii_lowercase();
        match media.as_str() {
            "application/x-ndjson" | "application/jsonl" | "application/json-seq" => {
                Some(Self::Ndjson)
            }
            "text/event-stream" => Some(Self::EventStream),
            "application/json" => Some(Self::JsonArray),
            _ => None,
        }
    }

    pub fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::Ndjson => "application/x-ndjson",
            Self::EventStream => "text/event-stream",
            Self::JsonArray => "application/json",
        })
    }
}

// === impl Framer ===

impl Framer {
    pub fn new(format: StreamFormat) -> Self {
        Self { format, written: 0 }
    }

    /// One reply message, already serialized as compact JSON.
    pub fn message(&mut self, json: &[u8]) -> Bytes {
        self.frame(json, false)
    }

    /// The final error: a `google.rpc.Status` serialized as compact JSON.
    pub fn error(&mut self, status: &[u8]) -> Bytes {
        let mut frame = BytesMut::from(&self.frame(status, true)[..]);
        if let Some(end) = self.end() {
            frame.put_slice(&end);
        }
        frame.freeze()
    }

    /// What closes a stream that ended well (`]` for an array).
    pub fn end(&self) -> Option<Bytes> {
        match (self.format, self.written) {
            (StreamFormat::JsonArray, 0) => Some(Bytes::from_static(b"[]")),
            (StreamFormat::JsonArray, _) => Some(Bytes::from_static(b"]")),
            _ => None,
        }
    }

    fn frame(&mut self, json: &[u8], is_error: bool) -> Bytes {
        let mut out = BytesMut::with_capacity(json.len() + 16);
        match self.format {
            StreamFormat::EventStream => {
                // Compact JSON has no raw newline, so one `data:` line holds it.
                if is_error {
                    out.put_slice(b"event: error\n");
                }
                out.put_slice(b"data: ");
                out.put_slice(json);
                out.put_slice(b"\n\n");
            }
            StreamFormat::Ndjson | StreamFormat::JsonArray => {
                if self.format == StreamFormat::JsonArray {
                    out.put_u8(if self.written == 0 { b'[' } else { b',' });
                }
                out.put_slice(if is_error {
                    b"{\"error\":"
                } else {
                    b"{\"result\":"
                });
                out.put_slice(json);
                out.put_u8(b'}');
                if self.format == StreamFormat::Ndjson {
                    out.put_u8(b'\n');
                }
            }
        }
        self.written += 1;
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> StreamFormat {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        StreamFormat::negotiate(&headers)
    }

    #[test]
    fn accept_picks_the_preferred_supported_type() {
        assert_eq!(
            StreamFormat::negotiate(&HeaderMap::new()),
            StreamFormat::Ndjson
        );
        assert_eq!(accept("*/*"), StreamFormat::Ndjson);
        assert_eq!(accept("text/event-stream"), StreamFormat::EventStream);
        assert_eq!(accept("application/json"), StreamFormat::JsonArray);
        assert_eq!(
            accept("application/json;q=0.5, text/event-stream"),
            StreamFormat::EventStream
        );
        assert_eq!(
            accept("text/html, application/x-ndjson;q=0.9, application/json;q=0.8"),
            StreamFormat::Ndjson
        );
        assert_eq!(accept("application/json;q=0"), StreamFormat::Ndjson);
    }

    fn frames(format: StreamFormat, messages: &[&str], error: Option<&str>) -> String {
        let mut framer = Framer::new(format);
        let mut out = Vec::new();
        for message in messages {
            out.extend_from_slice(&framer.message(message.as_bytes()));
        }
        match error {
            Some(status) => out.extend_from_slice(&framer.error(status.as_bytes())),
            None => out.extend_from_slice(&framer.end().unwrap_or_default()),
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn ndjson_wraps_messages_and_errors_in_distinct_envelopes() {
        assert_eq!(
            frames(
                StreamFormat::Ndjson,
                &[r#"{"error":"x"}"#],
                Some(r#"{"code":2}"#)
            ),
            "{\"result\":{\"error\":\"x\"}}\n{\"error\":{\"code\":2}}\n"
        );
        assert_eq!(frames(StreamFormat::Ndjson, &[], None), "");
    }

    #[test]
    fn event_stream_marks_errors_with_their_event_type() {
        assert_eq!(
            frames(
                StreamFormat::EventStream,
                &["{}", "1"],
                Some(r#"{"code":2}"#)
            ),
            "data: {}\n\ndata: 1\n\nevent: error\ndata: {\"code\":2}\n\n"
        );
    }

    #[test]
    fn arrays_are_closed_after_messages_errors_and_nothing() {
        assert_eq!(frames(StreamFormat::JsonArray, &[], None), "[]");
        assert_eq!(
            frames(StreamFormat::JsonArray, &["1", "2"], None),
            r#"[{"result":1},{"result":2}]"#
        );
        assert_eq!(
            frames(StreamFormat::JsonArray, &["1"], Some("{}")),
            r#"[{"result":1},{"error":{}}]"#
        );
        assert_eq!(
            frames(StreamFormat::JsonArray, &[], Some("{}")),
            r#"[{"error":{}}]"#
        );
    }
}
