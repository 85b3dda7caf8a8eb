//! The ids a request carries: `x-request-id`, `x-correlation-id` and this
//! hop's W3C `traceparent` ([`trace_context`]). Decided once, at the first
//! step, set on the request for the upstream and echoed on the response;
//! everything after reads them from the request's headers.

pub mod trace_context;

use axum::{extract::Request, response::Response};
use http::{header::Entry, HeaderMap, HeaderName, HeaderValue};

pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) const X_CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");

/// The ids decided at the first step, echoed on the response.
pub(crate) struct RequestIds {
    request_id: HeaderValue,
    correlation_id: HeaderValue,
    traceparent: HeaderValue,
    /// This hop's trace context, for the observers of step 2 to 4 (held
    /// here rather than in the request's extensions: a fourth extension
    /// grows their table, ~0.3k instructions per request).
    hop: trace_context::TraceParent,
}

impl RequestIds {
    /// `x-request-id` (minted when absent), `x-correlation-id` (the client's,
    /// else the request id) and this hop's `traceparent`, each set on the
    /// request for the upstream. Malformed ids must be gone already
    /// (`policy::sanitize`). `exporting`: see [`trace_context::start`].
    pub(crate) fn decide(request: &mut Request, exporting: Option<trace_context::Sampler>) -> Self {
        // Entries: one lookup per id, whether it is kept or set.
        let request_id = match request.headers_mut().entry(X_REQUEST_ID) {
            Entry::Occupied(id) => id.get().clone(),
            Entry::Vacant(slot) => {
                let mut minted = [0; uuid::fmt::Hyphenated::LENGTH];
                uuid::Uuid::new_v4().hyphenated().encode_lower(&mut minted);
                slot.insert(minted_value(minted)).clone()
            }
        };
        let correlation_id = match request.headers_mut().entry(X_CORRELATION_ID) {
            Entry::Occupied(id) => id.get().clone(),
            Entry::Vacant(slot) => slot.insert(request_id.clone()).clone(),
        };
        let (hop, traceparent) = trace_context::start(request, exporting);
        Self {
            request_id,
            correlation_id,
            traceparent,
            hop,
        }
    }

    pub(crate) fn request_id(&self) -> &HeaderValue {
        &self.request_id
    }

    pub(crate) fn correlation_id(&self) -> &HeaderValue {
        &self.correlation_id
    }

    pub(crate) fn hop(&self) -> trace_context::TraceParent {
        self.hop
    }

    /// The ids on the response (an upstream's own `x-request-id` is kept),
    /// [`unique`]: over HTTP/2 they would otherwise fill the client
    /// connection's HPACK table, one entry each per response.
    pub(crate) fn echo(self, response: &mut Response) {
        let out = response.headers_mut();
        out.entry(X_REQUEST_ID).or_insert(unique(self.request_id));
        out.insert(X_CORRELATION_ID, unique(self.correlation_id));
        out.insert(trace_context::TRACEPARENT.clone(), unique(self.traceparent));
    }
}

/// A value that differs on every request (ids, times): marked so that HPACK
/// sends it as a literal instead of adding it to the connection's dynamic
/// table, where it would only evict reusable entries (and cost a table
/// search and insertion per request). HTTP/1.1 ignores the mark. The
/// streaming calls' upstream connection (`h2`'s) lifts it on its first
/// call, so that the names enter its table and later calls refer to them
/// by index; the unary calls' client never indexes (`upstream::connection`).
pub(crate) fn unique(mut value: HeaderValue) -> HeaderValue {
    value.set_sensitive(true);
    value
}

/// A value minted here (an id, a `traceparent`), in one allocation that
/// its clones share: a value copied from a slice is an unshared buffer
/// that its first clone moves into a second allocation, and each of these
/// is cloned for the request, the upstream and the response.
pub(crate) fn minted_value<const N: usize>(text: [u8; N]) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text))
        .unwrap_or(HeaderValue::from_static(""))
}

/// The request id set at the first step, for error bodies and logs (empty
/// before that step, or when it is not text).
pub fn request_id(headers: &HeaderMap) -> &str {
    headers
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;

    use super::*;

    #[test]
    fn the_echoed_ids_are_marked_never_to_be_indexed() {
        let mut request = Request::new(Body::empty());
        let ids = RequestIds::decide(&mut request, None);
        let mut response = Response::new(Body::empty());
        ids.echo(&mut response);
        for name in [
            X_REQUEST_ID,
            X_CORRELATION_ID,
            trace_context::TRACEPARENT.clone(),
        ] {
            let value = &response.headers()[&name];
            assert!(!value.is_empty(), "{name}");
            assert!(value.is_sensitive(), "{name} is to be sent as a literal");
        }
    }
}
