//! W3C Trace Context (`traceparent`, `tracestate`).
//!
//! The gateway is one hop of the trace: it keeps the caller's trace id (or
//! mints one when `traceparent` is absent or invalid), gives itself a new
//! parent id, forwards both headers to the upstream as gRPC metadata (the
//! header policy's step 12) and returns its `traceparent` to the client, so that a client without
//! tracing still learns the trace id to quote.

use std::fmt;

use axum::{body::Body, extract::Request};
use http::{HeaderName, HeaderValue};

pub(crate) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A parsed `traceparent`: `00-<trace id>-<parent id>-<flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub parent_id: u64,
    pub flags: u8,
}

// === impl TraceParent ===

impl TraceParent {
    /// Parses a `traceparent` value. Version `00` must be exactly 55
    /// characters; a later version may append fields after a `-`. All-zero
    /// ids, version `ff` and upper-case hex are invalid.
    pub fn parse(value: &str) -> Option<Self> {
        let bytes = value.as_bytes();
        if bytes.len() < 55 || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let version = hex(&value[..2])? as u8;
        if version == 0xff || (version == 0 && bytes.len() != 55) {
            return None;
        }
        if bytes.len() > 55 && bytes[55] != b'-' {
            return None;
        }
        let trace_id = hex(&value[3..35])?;
        let parent_id = hex(&value[36..52])? as u64;
        let flags = hex(&value[53..55])? as u8;
        (trace_id != 0 && parent_id != 0).then_some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// A new trace, sampled.
    fn root() -> Self {
        let (high, low) = uuid::Uuid::new_v4().as_u64_pair();
        Self {
            trace_id: u128::from(high) << 64 | u128::from(low),
            parent_id: new_span_id(),
            flags: 0x01,
        }
    }

    /// This hop: same trace and flags, a new parent id.
    fn child(self) -> Self {
        Self {
            parent_id: new_span_id(),
            ..self
        }
    }

    /// `00-{trace id}-{parent id}-{flags}` in lower-case hex, without `fmt`
    /// (this runs on every request).
    fn header_value(self) -> HeaderValue {
        let mut text = [b'-'; 55];
        text[..2].copy_from_slice(b"00");
        let fields: [(&[u8], std::ops::Range<usize>); 3] = [
            (&self.trace_id.to_be_bytes(), 3..35),
            (&self.parent_id.to_be_bytes(), 36..52),
            (&[self.flags], 53..55),
        ];
        for (bytes, at) in fields {
            // The ranges are exactly twice the bytes' lengths.
            let _ = hex::encode_to_slice(bytes, &mut text[at]);
        }
        HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static(""))
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

fn new_span_id() -> u64 {
    // Never zero: zero is the invalid id.
    uuid::Uuid::new_v4().as_u64_pair().0.max(1)
}

/// Lower-case hex only, as the spec requires.
fn hex(text: &str) -> Option<u128> {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        .then(|| u128::from_str_radix(text, 16).ok())
        .flatten()
}

/// Part of step 1: replaces the request's `traceparent` with this hop's,
/// drops a `tracestate` that came without a valid `traceparent`, stores the
/// [`TraceParent`] in the extensions, and returns the value to send back to
/// the client.
pub fn start(request: &mut Request) -> HeaderValue {
    let incoming = request
        .headers()
        .get(&TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    let hop = match incoming {
        Some(parent) => parent.child(),
        None => {
            request.headers_mut().remove(&TRACESTATE);
            TraceParent::root()
        }
    };
    let value = hop.header_value();
    request
        .headers_mut()
        .insert(TRACEPARENT.clone(), value.clone());
    request.extensions_mut().insert(hop);
    value
}

/// The request's trace id as 32 hex digits (empty before [`start`]).
pub fn trace_id(request: &http::Request<Body>) -> TraceId {
    TraceId(
        request
            .extensions()
            .get::<TraceParent>()
            .map(|t| t.trace_id),
    )
}

/// Displays a trace id as 32 hex digits, or nothing.
#[derive(Debug, Clone, Copy)]
pub struct TraceId(Option<u128>);

impl TraceId {
    /// The 32 hex digits, without `fmt`'s integer machinery: this is on
    /// every access log line.
    pub fn hex(self) -> Option<[u8; 32]> {
        let id = self.0?;
        let mut text = [0; 32];
        // 16 bytes always fit 32 digits.
        let _ = hex::encode_to_slice(id.to_be_bytes(), &mut text);
        Some(text)
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.hex() {
            Some(text) => f.write_str(std::str::from_utf8(&text).unwrap_or_default()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_show_as_32_hex_digits_or_nothing() {
        for id in [
            0,
            0xabc,
            u128::MAX,
            0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c,
        ] {
            assert_eq!(TraceId(Some(id)).to_string(), format!("{id:032x}"));
        }
        assert_eq!(TraceId(None).to_string(), "");
    }

    #[test]
    fn valid_traceparent_round_trips() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(text).unwrap();
        assert_eq!(parsed.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(parsed.parent_id, 0x00f067aa0ba902b7);
        assert_eq!(parsed.to_string(), text);
        assert_eq!(parsed.header_value(), text);
        let root = TraceParent::root();
        assert_eq!(root.header_value(), root.to_string().as_str());
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for text in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473+-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(text), None, "{text}");
        }
    }

    #[test]
    fn later_versions_may_append_fields() {
        let text = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        assert!(TraceParent::parse(text).is_some());
    }

    #[test]
    fn a_hop_keeps_the_trace_and_changes_the_parent() {
        let parent =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let hop = parent.child();
        assert_eq!((hop.trace_id, hop.flags), (parent.trace_id, parent.flags));
        assert_ne!(hop.parent_id, parent.parent_id);
    }
}
