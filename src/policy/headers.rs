//! Header hygiene and injection.
//!
//! [`sanitize`] (outermost, every request, every route): drops a client's
//! `x-request-id`/`x-correlation-id` unless well-formed (the id step then
//! mints one), removes any copy of the identity headers (`x-user-id`, ...) so
//! identity cannot be spoofed, and notes when the request arrived.
//!
//! [`HeaderPolicy::upstream_metadata`] and [`HeaderPolicy::return_upstream_headers`]
//! (step 12, matched routes): computes the upstream
//! metadata once -- ids, request start, `traceparent`/`tracestate`, static
//! headers, allow-listed client headers, the verified identity's claims --
//! refusing it (431) over `limits.max_forwarded_metadata_bytes`, and on the
//! way back returns the allow-listed upstream response metadata as HTTP
//! headers. Hop-by-hop and `grpc-*` headers never cross.

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{extract::Request, response::Response};
use bytes::Bytes;
use globset::{Glob, GlobSet, GlobSetBuilder};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::Identity;
use crate::{
    config::{AuthConfig, HeadersConfig, DEFAULT_CLAIM_HEADERS},
    error::Error,
    request_ids::{
        trace_context::{TRACEPARENT, TRACESTATE},
        unique, X_CORRELATION_ID, X_REQUEST_ID,
    },
    upstream::Metadata,
};

/// Sent by the gateway itself; a client's copies are replaced, never forwarded.
const IDS: [HeaderName; 2] = [X_REQUEST_ID, X_CORRELATION_ID];

/// Connection-level headers (RFC 9110 §7.6.1) and the ones gRPC owns.
const NEVER_FORWARDED: [&str; 12] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-type",
];

/// Longest id kept from a client.
const MAX_ID_LEN: usize = 128;

/// What HTTP/2 adds to each header's name and value when it sizes a header
/// list (RFC 9113 §6.5.2).
const ENTRY_OVERHEAD: usize = 32;

/// The largest header list an HTTP/2 request may bring, as HTTP/2 sizes it
/// (pseudo-headers included): hyper's default `SETTINGS_MAX_HEADER_LIST_SIZE`,
/// which h2 enforced on its own until it was raised to the connection's hard
/// cap so that the gateway answers this limit with a body.
pub const MAX_HEADER_LIST_BYTES: usize = 16 * 1024;

/// The header decisions, compiled at start.
#[derive(Debug)]
pub struct HeaderPolicy {
    identity: Box<[HeaderName]>,
    request_start: Option<HeaderName>,
    static_headers: Box<[(HeaderName, HeaderValue)]>,
    forward: NameSet,
    response: NameSet,
    /// `limits.max_forwarded_metadata_bytes`.
    max_metadata_bytes: usize,
}

/// The upstream's response metadata, left in the response extensions by the
/// gateway for [`HeaderPolicy::return_upstream_headers`] to filter.
#[derive(Debug, Clone, Default)]
pub struct UpstreamHeaders(pub HeaderMap);

/// When the gateway received the request.
#[derive(Debug, Clone, Copy)]
struct RequestStart(SystemTime);

/// Header names, exact or by glob.
#[derive(Debug)]
struct NameSet {
    exact: Box<[HeaderName]>,
    globs: GlobSet,
}

/// First thing on every request (step 1): see the module docs.
pub fn sanitize(policy: &HeaderPolicy, request: &mut Request) {
    let headers = request.headers_mut();
    // One pass over the names first: most requests bring none of these,
    // and a lookup by name hashes it (callgrind: the five lookups cost
    // ~730 instructions per request).
    let brought = headers
        .keys()
        .any(|name| IDS.contains(name) || policy.identity.contains(name));
    if brought {
        drop_spoofed(policy, headers);
    }
    // Only when it is sent: the clock read, the box and the insert cost
    // ~250 instructions a request.
    if policy.request_start.is_some() {
        request
            .extensions_mut()
            .insert(RequestStart(SystemTime::now()));
    }
}

/// A client's malformed or repeated ids, and its identity headers.
fn drop_spoofed(policy: &HeaderPolicy, headers: &mut HeaderMap) {
    for id in &IDS {
        // One well-formed copy is kept; two copies are as bad as a bad one.
        let mut copies = headers.get_all(id).iter();
        let malformed = match (copies.next(), copies.next()) {
            (None, _) => false,
            (Some(value), None) => !well_formed_id(value),
            (Some(_), Some(_)) => true,
        };
        if malformed {
            headers.remove(id);
        }
    }
    for name in policy.identity.iter() {
        headers.remove(name);
    }
}

/// Step 9, first: an HTTP/2 request whose header list is over
/// [`MAX_HEADER_LIST_BYTES`] is refused (431), counted as h2 counts it.
/// HTTP/1.1 heads are bounded by hyper, whose refusals the connection
/// answers with a body itself.
pub fn check_header_list(request: &Request) -> Result<(), Error> {
    if request.version() != http::Version::HTTP_2 {
        return Ok(());
    }
    let uri = request.uri();
    let pseudo = [
        (":method", request.method().as_str()),
        (":scheme", uri.scheme_str().unwrap_or_default()),
        (":authority", uri.authority().map_or("", |a| a.as_str())),
        (":path", uri.path_and_query().map_or("", |p| p.as_str())),
    ];
    let size = pseudo
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| name.len() + value.len() + ENTRY_OVERHEAD)
        .chain(
            request
                .headers()
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len() + ENTRY_OVERHEAD),
        )
        .sum();
    if size <= MAX_HEADER_LIST_BYTES {
        return Ok(());
    }
    Err(Error::HeadersTooLarge {
        size,
        limit: MAX_HEADER_LIST_BYTES,
    })
}

/// 1–128 characters of letters, digits and `-_.:/+=`: safe to log and echo.
fn well_formed_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_ID_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(b))
}

fn never_crosses(name: &HeaderName) -> bool {
    let name = name.as_str();
    name.starts_with("grpc-") || NEVER_FORWARDED.contains(&name)
}

// === impl HeaderPolicy ===

impl HeaderPolicy {
    /// Step 12, on the way out: the allow-listed upstream response metadata,
    /// as HTTP headers.
    pub fn return_upstream_headers(&self, response: &mut Response) {
        if let Some(UpstreamHeaders(upstream)) =
            response.extensions_mut().remove::<UpstreamHeaders>()
        {
            for (name, value) in &upstream {
                if self.response.contains(name) && !never_crosses(name) {
                    response.headers_mut().append(name, value.clone());
                }
            }
        }
    }

    /// Compiles names and globs (validated by `Config::validate`; invalid
    /// ones are skipped); metadata over `max_metadata_bytes` is refused.
    pub fn new(
        config: &HeadersConfig,
        auth: Option<&AuthConfig>,
        max_metadata_bytes: usize,
    ) -> Self {
        let mut identity: Vec<HeaderName> = DEFAULT_CLAIM_HEADERS
            .iter()
            .map(|(_, header)| HeaderName::from_static(header))
            .collect();
        if let Some(auth) = auth {
            identity.extend(
                auth.claim_headers
                    .values()
                    .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            );
        }
        identity.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        identity.dedup();
        let static_headers = config
            .static_headers
            .iter()
            .filter_map(|(name, value)| {
                Some((
                    HeaderName::from_bytes(name.as_bytes()).ok()?,
                    HeaderValue::from_str(value).ok()?,
                ))
            })
            .collect();
        Self {
            identity: identity.into_boxed_slice(),
            request_start: HeaderName::from_bytes(config.request_start.as_bytes()).ok(),
            static_headers,
            forward: NameSet::new(&config.forward),
            response: NameSet::new(&config.response),
            max_metadata_bytes,
        }
    }

    /// Step 12, on the way in: the upstream metadata, decided once and
    /// handed to the gateway step; refused when over the limit, so that an
    /// upstream never refuses (and words) a header list the gateway made.
    /// The forwarded headers come first, in the request's order; each of
    /// the gateway's own (ids, trace context, static headers, request start,
    /// identity claims) then replaces any earlier value of its name.
    pub fn upstream_metadata(&self, request: &Request) -> Result<Metadata, Error> {
        let incoming = request.headers();
        let identity = request.extensions().get::<Arc<Identity>>();
        let forwarded = if self.forward.is_empty() {
            0
        } else {
            incoming.len()
        };
        // Room for all in one allocation: the ids and trace context (4), the
        // static headers, the request start and the claims.
        let own = 4
            + self.static_headers.len()
            + 1
            + identity.map_or(0, |identity| identity.metadata.len());
        let mut out = Metadata::with_capacity(forwarded + own);
        if forwarded != 0 {
            for (name, value) in incoming {
                if self.forward.contains(name)
                    && !never_crosses(name)
                    && !self.identity.contains(name)
                    && !IDS.contains(name)
                {
                    out.append(name.clone(), value.clone());
                }
            }
        }
        // The ids and W3C trace context are always passed through, the
        // first copy of each: found in one pass over the names rather than
        // a lookup (a hash) per name.
        let passed = [&IDS[0], &IDS[1], &TRACEPARENT, &TRACESTATE];
        let mut first = [None; 4];
        for (name, value) in incoming {
            if let Some(at) = passed.iter().position(|passed| *passed == name) {
                first[at].get_or_insert(value);
            }
        }
        for (name, value) in passed.into_iter().zip(first) {
            if let Some(value) = value {
                out.insert(name.clone(), unique(value.clone()));
            }
        }
        for (name, value) in self.static_headers.iter() {
            out.insert(name.clone(), value.clone());
        }
        if let (Some(name), Some(RequestStart(at))) = (
            &self.request_start,
            request.extensions().get::<RequestStart>(),
        ) {
            let millis = at.duration_since(UNIX_EPOCH).unwrap_or_default();
            // In 64 bits for 584 million years; then formatted into a buffer
            // of its exact size, which becomes the value's without a copy.
            let millis = u64::try_from(millis.as_millis()).unwrap_or(u64::MAX);
            let mut digits = itoa::Buffer::new();
            let digits = digits.format(millis).as_bytes();
            let mut text = Vec::with_capacity(2 + digits.len());
            text.extend_from_slice(b"t=");
            text.extend_from_slice(digits);
            if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(text)) {
                out.insert(name.clone(), unique(value));
            }
        }
        if let Some(identity) = identity {
            for (name, value) in identity.metadata.iter() {
                out.insert(name.clone(), value.clone());
            }
        }
        self.check_size(&out)?;
        Ok(out)
    }

    fn check_size(&self, metadata: &Metadata) -> Result<(), Error> {
        let entry = |(name, value): (&HeaderName, &HeaderValue)| {
            name.as_str().len() + value.len() + ENTRY_OVERHEAD
        };
        let size: usize = metadata.iter().map(entry).sum();
        if size <= self.max_metadata_bytes {
            return Ok(());
        }
        let largest = metadata.iter().max_by_key(|&header| entry(header));
        Err(Error::MetadataTooLarge {
            size,
            limit: self.max_metadata_bytes,
            largest: largest
                .map(|(name, _)| name.clone())
                .unwrap_or(X_REQUEST_ID),
        })
    }
}

// === impl NameSet ===

impl NameSet {
    fn new(patterns: &[String]) -> Self {
        let mut exact = Vec::new();
        let mut globs = GlobSetBuilder::new();
        for pattern in patterns {
            let pattern = pattern.to_ascii_lowercase();
            match HeaderName::from_bytes(pattern.as_bytes()) {
                Ok(name) if !pattern.contains(['*', '?', '[', '{']) => exact.push(name),
                _ => {
                    if let Ok(glob) = Glob::new(&pattern) {
                        globs.add(glob);
                    }
                }
            }
        }
        Self {
            exact: exact.into_boxed_slice(),
            globs: globs.build().unwrap_or_else(|_| GlobSet::empty()),
        }
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.globs.is_empty()
    }

    fn contains(&self, name: &HeaderName) -> bool {
        self.exact.contains(name) || (!self.globs.is_empty() && self.globs.is_match(name.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn policy(yaml: &str) -> HeaderPolicy {
        let config: HeadersConfig = serde_yaml_ng::from_str(yaml).unwrap();
        HeaderPolicy::new(&config, None, 8 << 10)
    }

    fn request(headers: &[(&str, &str)]) -> Request {
        let mut builder = http::Request::builder();
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn ids_must_be_short_and_plain() {
        for good in [
            "r-1",
            "0af7651916cd43dd8448eb211c80319c",
            "a:b/c+d=",
            &"x".repeat(128),
        ] {
            assert!(
                well_formed_id(&HeaderValue::from_str(good).unwrap()),
                "{good}"
            );
        }
        for bad in ["", "has space", "quote\"", "<script>", &"x".repeat(129)] {
            assert!(
                !well_formed_id(&HeaderValue::from_str(bad).unwrap()),
                "{bad}"
            );
        }
    }

    #[test]
    fn only_allow_listed_headers_are_forwarded() {
        let policy = policy("forward: [Accept-Language, 'x-tenant-*', 'grpc-*', te, 'x-user-*']\n");
        let metadata = policy
            .upstream_metadata(&request(&[
                ("accept-language", "fr"),
                ("x-tenant-region", "eu"),
                ("x-other", "no"),
                ("grpc-timeout", "1S"),
                ("te", "trailers"),
                ("x-user-id", "spoofed"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
            ]))
            .unwrap()
            .into_headers();
        let mut names: Vec<&str> = metadata.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["accept-language", "traceparent", "x-tenant-region"]);
    }

    #[test]
    fn static_headers_and_request_start_are_added() {
        let policy = policy("static: { x-gateway: protogate }\nrequest_start: x-started\n");
        let mut request = request(&[]);
        request.extensions_mut().insert(RequestStart(
            UNIX_EPOCH + std::time::Duration::from_millis(1_234),
        ));
        let metadata = policy.upstream_metadata(&request).unwrap().into_headers();
        assert_eq!(metadata["x-gateway"], "protogate");
        assert_eq!(metadata["x-started"], "t=1234");
    }

    /// Values unique to a request stay out of HPACK's dynamic table; values
    /// that repeat on every request stay indexable.
    #[test]
    fn per_request_values_are_sent_never_indexed() {
        let policy = policy("static: { x-gateway: protogate }\nrequest_start: x-started\n");
        let mut request = request(&[
            ("x-request-id", "r-1"),
            ("x-correlation-id", "c-1"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tracestate", "k=v"),
        ]);
        request.extensions_mut().insert(RequestStart(UNIX_EPOCH));
        let metadata = policy.upstream_metadata(&request).unwrap().into_headers();
        for name in [
            "x-request-id",
            "x-correlation-id",
            "traceparent",
            "tracestate",
            "x-started",
        ] {
            assert!(metadata[name].is_sensitive(), "{name}");
        }
        assert!(!metadata["x-gateway"].is_sensitive());
    }

    /// The upstream metadata as it was built before it became a list: in a
    /// `HeaderMap`, the gateway's own headers each `insert`ed.
    fn metadata_as_a_map(policy: &HeaderPolicy, request: &Request) -> Result<HeaderMap, Error> {
        let incoming = request.headers();
        let mut out = HeaderMap::with_capacity(8);
        if !policy.forward.is_empty() {
            for (name, value) in incoming {
                if policy.forward.contains(name)
                    && !never_crosses(name)
                    && !policy.identity.contains(name)
                    && !IDS.contains(name)
                {
                    out.append(name, value.clone());
                }
            }
        }
        for name in [&IDS[0], &IDS[1], &TRACEPARENT, &TRACESTATE] {
            if let Some(value) = incoming.get(name) {
                out.insert(name.clone(), unique(value.clone()));
            }
        }
        for (name, value) in policy.static_headers.iter() {
            out.insert(name, value.clone());
        }
        if let (Some(name), Some(RequestStart(at))) = (
            &policy.request_start,
            request.extensions().get::<RequestStart>(),
        ) {
            let millis = at.duration_since(UNIX_EPOCH).unwrap().as_millis();
            out.insert(
                name,
                unique(HeaderValue::try_from(format!("t={millis}")).unwrap()),
            );
        }
        if let Some(identity) = request.extensions().get::<Arc<Identity>>() {
            for (name, value) in identity.metadata.iter() {
                out.insert(name, value.clone());
            }
        }
        let entry = |(name, value): (&HeaderName, &HeaderValue)| {
            name.as_str().len() + value.len() + ENTRY_OVERHEAD
        };
        let size: usize = out.iter().map(entry).sum();
        if size > policy.max_metadata_bytes {
            let largest = out.iter().max_by_key(|&header| entry(header));
            return Err(Error::MetadataTooLarge {
                size,
                limit: policy.max_metadata_bytes,
                largest: largest.map_or(X_REQUEST_ID, |(name, _)| name.clone()),
            });
        }
        Ok(out)
    }

    /// Names that forwarding, the ids, trace context, static headers,
    /// request start and identity claims all draw from, so that they meet.
    const NAMES: [&str; 12] = [
        "x-request-id",
        "x-correlation-id",
        "traceparent",
        "tracestate",
        "x-tenant-a",
        "x-tenant-b",
        "accept-language",
        "x-started",
        "x-user-id",
        "x-gateway",
        "te",
        "grpc-x",
    ];

    fn name() -> impl Strategy<Value = HeaderName> {
        prop::sample::select(&NAMES[..]).prop_map(HeaderName::from_static)
    }

    fn value() -> impl Strategy<Value = HeaderValue> {
        "[a-c0-9]{1,3}|bad value".prop_map(|value| HeaderValue::from_str(&value).unwrap())
    }

    proptest! {
        /// The list holds what the map held, each name's values in the same
        /// order (and the names in the map's order too), with the same
        /// sensitivity; over the limit, the same refusal.
        #[test]
        fn upstream_metadata_is_what_the_map_made(
            incoming in prop::collection::vec((name(), value()), 0..12),
            forward in prop::collection::vec(
                prop::sample::select(&["x-tenant-*", "accept-language", "x-started", "x-user-*",
                    "x-request-id", "traceparent", "te", "grpc-*", "x-gateway"][..]),
                0..5,
            ),
            static_headers in prop::collection::btree_map(
                prop::sample::select(&NAMES[..]).prop_map(str::to_owned),
                "[a-c0-9]{1,3}",
                0..3,
            ),
            request_start in prop::option::of(prop::sample::select(&["x-started", "x-tenant-a"][..])),
            claims in prop::option::of(prop::collection::vec((name(), value()), 0..3)),
            limit in prop_oneof![Just(8usize << 10), 40usize..400],
        ) {
            let config = HeadersConfig {
                request_start: request_start.unwrap_or_default().to_owned(),
                static_headers,
                forward: forward.iter().map(|pattern| (*pattern).to_owned()).collect(),
                response: Vec::new(),
            };
            let policy = HeaderPolicy::new(&config, None, limit);
            let mut builder = http::Request::builder();
            for (name, value) in &incoming {
                builder = builder.header(name, value);
            }
            let mut request = builder.body(axum::body::Body::empty()).unwrap();
            request
                .extensions_mut()
                .insert(RequestStart(UNIX_EPOCH + std::time::Duration::from_millis(1_234)));
            if let Some(claims) = claims {
                request.extensions_mut().insert(Arc::new(Identity {
                    issuer: "i".into(),
                    subject: "s".into(),
                    roles: Box::default(),
                    scopes: Box::default(),
                    metadata: claims.into_boxed_slice(),
                }));
            }
            let fields = |headers: &mut dyn Iterator<Item = (&HeaderName, &HeaderValue)>| {
                headers
                    .map(|(name, value)| (name.clone(), value.clone(), value.is_sensitive()))
                    .collect::<Vec<_>>()
            };
            match (policy.upstream_metadata(&request), metadata_as_a_map(&policy, &request)) {
                (Ok(list), Ok(map)) => {
                    prop_assert_eq!(fields(&mut list.iter()), fields(&mut map.iter()));
                }
                (list, map) => {
                    prop_assert_eq!(format!("{list:?}"), format!("{map:?}"));
                }
            }
        }
    }
}
