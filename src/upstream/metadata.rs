//! A call's metadata, either way: the request's (ids, trace context,
//! static headers, forwarded headers, identity claims) and a reply's
//! fields, as an ordered list rather than an `http::HeaderMap`. A call has
//! a handful of fields, made once and read once in order, so a map's
//! hashing, index table and drop cost more than they save (callgrind:
//! ~2k instructions per unary call for the request's map alone).

use http::{HeaderMap, HeaderName, HeaderValue};

/// Metadata fields in the order they go on the wire (or came off it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata(Vec<(HeaderName, HeaderValue)>);

impl Metadata {
    /// Room for `capacity` fields in one allocation.
    pub fn with_capacity(capacity: usize) -> Self {
        Self(Vec::with_capacity(capacity))
    }

    /// Adds `value` after every other field, as another value of `name`
    /// when it has one already.
    pub fn append(&mut self, name: HeaderName, value: HeaderValue) {
        self.0.push((name, value));
    }

    /// Sets `name` to `value` alone, as `HeaderMap::insert` does: the first
    /// value it had is replaced in place and any later ones removed, so the
    /// fields keep the order a map would give them.
    pub fn insert(&mut self, name: HeaderName, value: HeaderValue) {
        let Some(first) = self.0.iter().position(|(other, _)| *other == name) else {
            self.0.push((name, value));
            return;
        };
        self.0[first].1 = value;
        let later = first + 1;
        if self.0[later..].iter().any(|(other, _)| *other == name) {
            let mut at = 0;
            self.0.retain(|(other, _)| {
                at += 1;
                at <= later || *other != name
            });
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> <&Self as IntoIterator>::IntoIter {
        self.into_iter()
    }

    /// As a map, for the `h2` calls that take one: every value appended in
    /// order.
    pub fn into_headers(self) -> HeaderMap {
        // Sized for the list unless a map could not hold that many (its
        // appends make room as they go).
        let mut headers = HeaderMap::try_with_capacity(self.0.len()).unwrap_or_default();
        for (name, value) in self.0 {
            headers.append(name, value);
        }
        headers
    }
}

impl From<HeaderMap> for Metadata {
    /// A map's fields, in its order: each name's values together.
    fn from(headers: HeaderMap) -> Self {
        Self(
            headers
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
        )
    }
}

impl<'a> IntoIterator for &'a Metadata {
    type Item = (&'a HeaderName, &'a HeaderValue);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (HeaderName, HeaderValue)>,
        fn(&'a (HeaderName, HeaderValue)) -> (&'a HeaderName, &'a HeaderValue),
    >;

    fn into_iter(self) -> Self::IntoIter {
        let field: fn(&'a (HeaderName, HeaderValue)) -> (&'a HeaderName, &'a HeaderValue) =
            |(name, value)| (name, value);
        self.0.iter().map(field)
    }
}
