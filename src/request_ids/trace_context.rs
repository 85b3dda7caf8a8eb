//! W3C Trace Context (`traceparent`, `tracestate`).
//!
//! The gateway is one hop of the trace: it keeps the caller's trace id (or
//! mints one when `traceparent` is absent or invalid), gives itself a new
//! parent id, forwards both headers to the upstream as gRPC metadata (the
//! header policy's step 12) and returns its `traceparent` to the client, so that a client without
//! tracing still learns the trace id to quote.
//!
//! When spans are exported (`tracing.otlp`), the new parent id is the
//! gateway's server span, and a sampled request also gets a client span
//! for its upstream call ([`HopSpans`]): the upstream is then sent the
//! client span's id, so that its spans hang under the call that made them.
//! A new trace is then sampled by ratio ([`Sampler`]); a continued one
//! keeps its caller's sampled flag.

use std::fmt;

use axum::extract::Request;
use http::{header::Entry, HeaderName, HeaderValue};

pub(crate) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The `sampled` bit of the trace flags.
const SAMPLED: u8 = 0x01;

/// A parsed `traceparent`: `00-<trace id>-<parent id>-<flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub parent_id: u64,
    pub flags: u8,
}

// === impl TraceParent ===

impl TraceParent {
    /// Its trace id, for logs and spans.
    pub fn id(self) -> TraceId {
        TraceId(Some(self.trace_id))
    }

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

    /// A new trace: sampled, or as `sampler` decides.
    fn root(sampler: Option<Sampler>) -> Self {
        let (high, low) = uuid::Uuid::new_v4().as_u64_pair();
        let trace_id = u128::from(high) << 64 | u128::from(low);
        Self {
            trace_id,
            parent_id: new_span_id(),
            flags: match sampler {
                Some(sampler) if !sampler.samples(trace_id) => 0,
                _ => SAMPLED,
            },
        }
    }

    /// Whether the trace is being recorded (the `sampled` flag).
    pub fn sampled(self) -> bool {
        self.flags & SAMPLED != 0
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
        super::minted_value(text)
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

/// The spans of this hop besides the server span (whose id is this hop's
/// [`TraceParent::parent_id`]), in the extensions of a sampled request
/// when spans are exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HopSpans {
    /// The caller's span: the server span's parent, `None` for a new trace.
    pub caller: Option<u64>,
    /// The span of the upstream call, the parent the upstream is sent.
    pub client: u64,
}

/// Ratio sampling of new traces, decided by the trace id alone, as
/// OpenTelemetry's `TraceIdRatioBased` does: the top 63 of its low 64 bits
/// below the ratio's share of 2^63.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampler {
    threshold: u64,
}

impl Sampler {
    /// `ratio` is between 0 (none) and 1 (every trace).
    pub fn ratio(ratio: f64) -> Self {
        // Saturating: a ratio of 1 gives 2^63, above every 63-bit value.
        Self {
            threshold: (ratio.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64,
        }
    }

    pub fn samples(self, trace_id: u128) -> bool {
        ((trace_id as u64) >> 1) < self.threshold
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

/// Part of step 1: replaces the request's `traceparent` with the one the
/// upstream is to see, drops a `tracestate` that came without a valid
/// `traceparent`, stores (when `exporting` spans of a sampled trace) its
/// [`HopSpans`] in the extensions, and returns this hop's [`TraceParent`]
/// and the value to send back to the client. `exporting`: how new traces
/// are sampled, `None` when spans are not exported.
pub fn start(request: &mut Request, exporting: Option<Sampler>) -> (TraceParent, HeaderValue) {
    // One entry for reading the caller's and setting ours: one hash.
    let mut slot = request.headers_mut().entry(&TRACEPARENT);
    let incoming = match &slot {
        Entry::Occupied(caller) => caller.get().to_str().ok().and_then(TraceParent::parse),
        Entry::Vacant(_) => None,
    };
    let hop = incoming.map_or_else(|| TraceParent::root(exporting), TraceParent::child);
    let value = hop.header_value();
    let client = (exporting.is_some() && hop.sampled()).then(|| hop.child());
    let upstream = client.map_or_else(|| value.clone(), TraceParent::header_value);
    match slot {
        Entry::Occupied(ref mut caller) => {
            caller.insert(upstream);
        }
        Entry::Vacant(none) => {
            none.insert(upstream);
        }
    }
    if incoming.is_none() {
        request.headers_mut().remove(&TRACESTATE);
    }
    if let Some(client) = client {
        request.extensions_mut().insert(HopSpans {
            caller: incoming.map(|parent| parent.parent_id),
            client: client.parent_id,
        });
    }
    (hop, value)
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
        let root = TraceParent::root(None);
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

    #[test]
    fn ratio_sampling_follows_the_trace_ids_low_half() {
        let low = |bits: u64| 0xffff_0000_0000_0000_0000_0000_0000_0000 | u128::from(bits);
        let (none, half, all) = (
            Sampler::ratio(0.0),
            Sampler::ratio(0.5),
            Sampler::ratio(1.0),
        );
        for id in [low(0), low(1 << 63), low(u64::MAX), u128::MAX] {
            assert!(!none.samples(id) && all.samples(id), "{id:x}");
        }
        assert!(half.samples(low((1 << 63) - 1)));
        assert!(!half.samples(low(1 << 63)));
        let sampled = (0..10_000u64)
            .filter(|i| {
                Sampler::ratio(0.25).samples(u128::from(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
            })
            .count();
        assert!((2_000..3_000).contains(&sampled), "{sampled}");
    }

    #[test]
    fn new_traces_are_sampled_as_the_sampler_says() {
        assert!(TraceParent::root(None).sampled());
        assert!(TraceParent::root(Some(Sampler::ratio(1.0))).sampled());
        assert!(!TraceParent::root(Some(Sampler::ratio(0.0))).sampled());
    }
}
