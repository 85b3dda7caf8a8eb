//! Streamed request bodies cut into JSON values as their bytes arrive, and
//! streamed replies framed as NDJSON, Server-Sent Events or one JSON array.

use http::{header, HeaderMap, HeaderValue};
use serde_json::{json, Value as Json};

use crate::transcode::{Framer, JsonSplitter, StreamFormat};

/// The body splits into the same values (or fails at the same byte) in
/// chunks of any size as in one piece, and into the values serde_json
/// reads from it, whenever serde_json reads it as an array or a sequence.
pub(super) fn split(chunk: u8, body: &[u8]) {
    let whole = split_in_chunks(body, body.len().max(1));
    let size = usize::from(chunk % 16) + 1;
    assert_eq!(split_in_chunks(body, size), whole, "in chunks of {size}");
    let Some(expected) = serde_values(body) else {
        return;
    };
    let values = whole.unwrap_or_else(|err| panic!("serde_json reads {expected:?}; split: {err}"));
    let parsed: Vec<Json> = values
        .iter()
        .map(|value| {
            serde_json::from_slice(value).unwrap_or_else(|err| {
                panic!(
                    "serde_json reads {expected:?}; split off {:?}: {err}",
                    String::from_utf8_lossy(value)
                )
            })
        })
        .collect();
    assert_eq!(parsed, expected);
}

fn split_in_chunks(body: &[u8], size: usize) -> Result<Vec<Vec<u8>>, String> {
    let mut splitter = JsonSplitter::new(body.len());
    let mut values = Vec::new();
    for chunk in body.chunks(size) {
        splitter.push(chunk);
        while let Some(value) = splitter.next_value().map_err(|err| err.to_string())? {
            values.push(value.to_vec());
        }
    }
    if let Some(value) = splitter.finish().map_err(|err| err.to_string())? {
        values.push(value.to_vec());
    }
    Ok(values)
}

/// The elements of a body that is one array, else the values of a body
/// that is a sequence of them; `None` when serde_json reads neither.
fn serde_values(body: &[u8]) -> Option<Vec<Json>> {
    if body.trim_ascii_start().starts_with(b"[") {
        serde_json::from_slice(body).ok()
    } else {
        serde_json::Deserializer::from_slice(body)
            .into_iter()
            .collect::<Result<_, _>>()
            .ok()
    }
}

/// The format `Accept` asks for frames the messages (and the error that
/// ends the stream, if any) so that a client of that format reads back
/// exactly those messages and that error.
pub(super) fn stream(accept: &[u8], messages: &[&[u8]], error: Option<&[u8]>) {
    let mut headers = HeaderMap::new();
    if let Ok(accept) = HeaderValue::from_bytes(accept) {
        headers.insert(header::ACCEPT, accept);
    }
    let format = StreamFormat::negotiate(&headers);
    // Compact JSON, as the reply printer writes it, and the value a client
    // reads from that text (serde_json's floats need not survive printing
    // and reading again).
    let compact = |json: &[u8]| {
        let value: Json = serde_json::from_slice(json).ok()?;
        let text = serde_json::to_vec(&value).expect("a JSON value prints");
        let value = serde_json::from_slice(&text).expect("printed JSON reads");
        Some((text, value))
    };
    let messages: Vec<(Vec<u8>, Json)> = messages.iter().filter_map(|m| compact(m)).collect();
    let error = error.and_then(compact);
    let mut framer = Framer::new(format);
    let mut body = Vec::new();
    for (message, _) in &messages {
        body.extend_from_slice(&framer.message(message));
    }
    match &error {
        Some((status, _)) => body.extend_from_slice(&framer.error(status)),
        None => body.extend_from_slice(&framer.end().unwrap_or_default()),
    }
    let mut expected: Vec<Json> = messages
        .into_iter()
        .map(|(_, value)| json!({ "result": value }))
        .collect();
    expected.extend(error.map(|(_, value)| json!({ "error": value })));
    let read = match format {
        StreamFormat::Ndjson => body
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_slice(line).expect("an NDJSON line is JSON"))
            .collect(),
        StreamFormat::JsonArray => {
            serde_json::from_slice(&body).expect("a JSON array reply is one JSON array")
        }
        StreamFormat::EventStream => read_events(&body),
    };
    assert_eq!(
        read,
        expected,
        "{format:?}: {}",
        String::from_utf8_lossy(&body)
    );
    // A client streaming those messages back reads the same from the splitter.
    if format != StreamFormat::EventStream {
        split(0, &body);
    }
}

/// Server-Sent Events as a browser's `EventSource` reads them: `data` per
/// event, as `{"result": data}`, or `{"error": data}` for `event: error`.
fn read_events(body: &[u8]) -> Vec<Json> {
    let text = std::str::from_utf8(body).expect("an event stream is UTF-8");
    let mut events = Vec::new();
    let (mut kind, mut data) = (None, None::<String>);
    for line in text.split('\n') {
        if line.is_empty() {
            if let Some(data) = data.take() {
                let value: Json = serde_json::from_str(&data).expect("event data is JSON");
                let envelope = if kind.take() == Some("error") {
                    "error"
                } else {
                    "result"
                };
                events.push(json!({ envelope: value }));
            }
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => kind = Some(value),
            "data" => {
                let data = data.get_or_insert_with(String::new);
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            _ => {}
        }
    }
    assert!(data.is_none(), "an event without its blank line");
    events
}
