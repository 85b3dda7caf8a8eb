//! Request routing: maps an HTTP method and a percent-encoded URI path to a
//! registered route and the values captured by its template variables.
//!
//! Routes are collected in a mutable [`RouterBuilder`] and frozen into an
//! immutable [`Router`] (one segment trie per HTTP method) that can be shared
//! across request handlers without locking. Lookups do no I/O and allocate
//! only the returned captures.
//!
//! Matching rules:
//! - At each segment a literal child is tried first, then `*` (exactly one
//!   non-empty segment), then `**` (all remaining segments, possibly none);
//!   the first complete match in that order wins, backtracking as needed.
//! - Literals are compared with the percent-decoded path segment.
//! - Variables are percent-decoded exactly: a value with a malformed escape
//!   or that is not UTF-8 once decoded is [`Lookup::Undecodable`].
//! - If the last segment contains `:`, the text after the last `:` is treated
//!   as a verb only if some route registers that verb; if matching with the
//!   verb fails, the whole path is matched again without a verb.
//! - `HEAD` falls back to `GET`; when only other methods match, the result is
//!   [`Lookup::MethodNotAllowed`], unless the path ends in a `:suffix` no
//!   route registers where this method has routes with a verb: a misspelt
//!   verb is [`Lookup::NotFound`].

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
};

use http::Method;
use percent_encoding::percent_decode_str;

use crate::{
    http_rule::template::{PathTemplate, Segment},
    percent::{self, Undecodable},
};

/// Caller-chosen identifier of a route (e.g. an index into a method table).
pub type RouteId = u32;

type NodeId = usize;

/// Index of the trie root in [`Trie::nodes`].
const ROOT: NodeId = 0;

/// One trie node: the segment-matching alternatives at a given depth.
#[derive(Debug, Default)]
struct Node {
    /// Children for literal segments, keyed by the raw template literal.
    literals: HashMap<Box<str>, NodeId>,
    /// Child for `*`.
    wildcard: Option<NodeId>,
    /// Child for `**`; it only ever holds leaves since `**` is last.
    double_wildcard: Option<NodeId>,
    /// Routes ending here, per verb, as indices into the router's routes.
    leaves: Vec<(Option<Box<str>>, usize)>,
}

impl Node {
    fn leaf(&self, verb: Option<&str>) -> Option<usize> {
        self.leaves
            .iter()
            .find(|(v, _)| v.as_deref() == verb)
            .map(|&(_, route)| route)
    }

    /// Finds the literal child equal to the percent-decoded `segment`
    /// without allocating.
    fn literal_child(&self, segment: &str) -> Option<NodeId> {
        if self.literals.is_empty() {
            None
        } else if segment.contains('%') {
            self.literals
                .iter()
                .find(|(literal, _)| percent_decode_str(segment).eq(literal.bytes()))
                .map(|(_, &node)| node)
        } else {
            self.literals.get(segment).copied()
        }
    }
}

/// The segment trie of one HTTP method.
#[derive(Debug)]
struct Trie {
    method: Method,
    nodes: Vec<Node>,
}

impl Trie {
    fn new(method: Method) -> Self {
        Self {
            method,
            nodes: vec![Node::default()],
        }
    }

    fn push_node(&mut self) -> NodeId {
        self.nodes.push(Node::default());
        self.nodes.len() - 1
    }

    /// Returns the node reached by `segments`, creating missing nodes.
    fn descend_or_create(&mut self, segments: &[Segment]) -> NodeId {
        let mut node = ROOT;
        for segment in segments {
            let existing = match segment {
                Segment::Literal(literal) => {
                    self.nodes[node].literals.get(literal.as_str()).copied()
                }
                Segment::Wildcard => self.nodes[node].wildcard,
                Segment::DoubleWildcard => self.nodes[node].double_wildcard,
            };
            node = if let Some(child) = existing {
                child
            } else {
                let child = self.push_node();
                let parent = &mut self.nodes[node];
                match segment {
                    Segment::Literal(literal) => {
                        parent.literals.insert(literal.as_str().into(), child);
                    }
                    Segment::Wildcard => parent.wildcard = Some(child),
                    Segment::DoubleWildcard => parent.double_wildcard = Some(child),
                }
                child
            };
        }
        node
    }

    /// Matches the target (with its verb first, then without) and returns
    /// the route index and the path body the captures refer to.
    fn find<'p>(&self, target: &Target<'p>) -> Option<(usize, &'p str)> {
        if let Some((body, verb)) = target.verb {
            if let Some(route) = self.walk(ROOT, Some(body), &|node| node.leaf(Some(verb))) {
                return Some((route, body));
            }
        }
        self.walk(ROOT, Some(target.body), &|node| node.leaf(None))
            .map(|route| (route, target.body))
    }

    /// Whether some route with a verb matches `body`, the path before a
    /// `:suffix` that no route registers: the client then misspelt a verb.
    fn has_verb_at(&self, body: &str) -> bool {
        let any_verb = |node: &Node| {
            node.leaves
                .iter()
                .find(|(verb, _)| verb.is_some())
                .map(|&(_, route)| route)
        };
        self.walk(ROOT, Some(body), &any_verb).is_some()
    }

    /// Depth-first match of the remaining segments `rest` (`None` once all
    /// segments are consumed) in precedence order literal, `*`, `**`, to a
    /// node where `leaf` finds a route. Each node is visited at most once
    /// per call, so this is linear in the trie size; it recurses once per
    /// segment of a template, of which there are at most `MAX_DEPTH`.
    fn walk(
        &self,
        node: NodeId,
        rest: Option<&str>,
        leaf: &impl Fn(&Node) -> Option<usize>,
    ) -> Option<usize> {
        let node = &self.nodes[node];
        let double_wildcard = || node.double_wildcard.and_then(|d| leaf(&self.nodes[d]));
        let Some(rest) = rest else {
            return leaf(node).or_else(double_wildcard);
        };
        let (segment, tail) = match position(rest, b'/') {
            Some(slash) => (&rest[..slash], Some(&rest[slash + 1..])),
            None => (rest, None),
        };
        node.literal_child(segment)
            .and_then(|child| self.walk(child, tail, leaf))
            .or_else(|| {
                node.wildcard
                    .filter(|_| !segment.is_empty())
                    .and_then(|child| self.walk(child, tail, leaf))
            })
            .or_else(double_wildcard)
    }
}

/// The first `byte` (ASCII) in `text`: a plain scan, which on path segments
/// this short costs less than `str`'s searcher.
fn position(text: &str, byte: u8) -> Option<usize> {
    text.bytes().position(|b| b == byte)
}

/// Where a variable's value lies within the matched segments.
#[derive(Debug, Clone, Copy)]
struct VarSpan {
    start: usize,
    end: usize,
    /// Ends with `**`: the value runs to the end of the path.
    to_end: bool,
    /// Keep `%2F` escaped when decoding.
    multi_segment: bool,
}

impl VarSpan {
    /// The raw (still encoded) segments `start..end` of `body` joined by
    /// `/`, which is simply a slice of `body`.
    fn raw<'p>(&self, body: &'p str) -> &'p str {
        let mut from = None;
        let (mut index, mut offset) = (0, 0);
        loop {
            let end = position(&body[offset..], b'/').map_or(body.len(), |slash| offset + slash);
            if index == self.start {
                from = Some(offset);
            }
            if !self.to_end && index + 1 == self.end {
                return from
                    .and_then(|from| body.get(from..end))
                    .unwrap_or_default();
            }
            if end == body.len() {
                break;
            }
            (index, offset) = (index + 1, end + 1);
        }
        // `from` is `None` only when `**` matched zero trailing segments.
        from.and_then(|from| body.get(from..)).unwrap_or_default()
    }
}

/// A registered route: its id and how to build its captures.
#[derive(Debug)]
struct Route {
    id: RouteId,
    vars: Box<[VarSpan]>,
}

impl Route {
    /// The values of the variables, percent-decoded; the first that does
    /// not decode exactly is refused with its variable index.
    fn captures(&self, body: &str) -> Result<Vec<Capture>, (usize, Undecodable)> {
        let mut captures = Vec::with_capacity(self.vars.len());
        for (var, span) in self.vars.iter().enumerate() {
            let raw = span.raw(body);
            let value = if span.multi_segment {
                percent::decode_keeping_slashes(raw)
            } else {
                percent::decode(raw).map(Cow::into_owned)
            };
            let value = value.map_err(|reason| (var, reason))?;
            captures.push(Capture { var, value });
        }
        Ok(captures)
    }
}

/// A request path prepared for matching.
struct Target<'p> {
    /// The path without its leading `/`.
    body: &'p str,
    /// `(body before the last ':', verb)` when the last segment ends in a
    /// registered verb.
    verb: Option<(&'p str, &'p str)>,
    /// The body before the last `:` of the last segment when what follows
    /// is no registered verb.
    before_unknown_verb: Option<&'p str>,
}

impl<'p> Target<'p> {
    fn new(body: &'p str, verbs: &HashSet<Box<str>>) -> Self {
        let last_segment = body.bytes().rposition(|b| b == b'/').map_or(0, |i| i + 1);
        let colon = body[last_segment..]
            .bytes()
            .rposition(|b| b == b':')
            .map(|i| last_segment + i);
        let (mut verb, mut before_unknown_verb) = (None, None);
        if let Some(colon) = colon {
            let (before, suffix) = (&body[..colon], &body[colon + 1..]);
            if verbs.contains(suffix) {
                verb = Some((before, suffix));
            } else {
                before_unknown_verb = Some(before);
            }
        }
        Self {
            body,
            verb,
            before_unknown_verb,
        }
    }
}

/// Mutable route collection; [`RouterBuilder::build`] freezes it into a
/// [`Router`].
#[derive(Debug, Default)]
pub struct RouterBuilder {
    tries: Vec<Trie>,
    routes: Vec<Route>,
    verbs: HashSet<Box<str>>,
}

impl RouterBuilder {
    /// Registers `route` for `method` and `template`.
    ///
    /// Variable names do not matter for conflicts: `{id}` and `{name}` are
    /// both `*`. `template` is expected to come from [`PathTemplate::parse`]
    /// (in particular, `**` only as the last segment).
    ///
    /// # Errors
    ///
    /// Fails with the `RouteId` already registered at the same
    /// (method, segments, verb).
    pub fn insert(
        &mut self,
        method: Method,
        template: &PathTemplate,
        route: RouteId,
    ) -> Result<(), RouteId> {
        let index = self
            .tries
            .iter()
            .position(|t| t.method == method)
            .unwrap_or_else(|| {
                self.tries.push(Trie::new(method));
                self.tries.len() - 1
            });
        let trie = &mut self.tries[index];
        let node = trie.descend_or_create(&template.segments);
        let verb = template.verb.as_deref();
        if let Some(existing) = trie.nodes[node].leaf(verb) {
            return Err(self.routes[existing].id);
        }
        trie.nodes[node]
            .leaves
            .push((verb.map(Into::into), self.routes.len()));
        self.routes.push(Route {
            id: route,
            vars: template
                .variables
                .iter()
                .map(|v| VarSpan {
                    start: v.start,
                    end: v.end,
                    to_end: v.has_double_wildcard,
                    multi_segment: v.is_multi_segment(),
                })
                .collect(),
        });
        if let Some(verb) = verb {
            self.verbs.insert(verb.into());
        }
        Ok(())
    }

    /// Freezes the routes into an immutable, shareable [`Router`].
    #[must_use]
    pub fn build(self) -> Router {
        let mut tries = self.tries;
        tries.sort_by(|a, b| a.method.as_str().cmp(b.method.as_str()));
        Router {
            tries: tries.into_boxed_slice(),
            routes: self.routes.into_boxed_slice(),
            verbs: self.verbs,
        }
    }
}

/// Immutable routing table; cheap to share between threads.
#[derive(Debug)]
pub struct Router {
    /// Sorted by method string so `Allow` lists come out sorted.
    tries: Box<[Trie]>,
    routes: Box<[Route]>,
    /// Every verb registered by any method, to decide whether `a:b` ends in
    /// a verb.
    verbs: HashSet<Box<str>>,
}

/// A value captured for one template variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// Index into the template's `variables`.
    pub var: usize,
    /// The percent-decoded value (`%2F` kept for multi-segment variables).
    pub value: String,
}

/// Outcome of [`Router::lookup`], distinguishing 404 from 405.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A route matched; captures are ordered by variable index.
    Found {
        /// The id given to [`RouterBuilder::insert`].
        route: RouteId,
        /// One capture per template variable, ordered by `var`.
        captures: Vec<Capture>,
    },
    /// A route matched, but the value of its variable `var` does not decode
    /// exactly: refused naming the variable, never altered.
    Undecodable {
        route: RouteId,
        var: usize,
        reason: Undecodable,
    },
    /// The path matches routes of other methods only.
    MethodNotAllowed {
        /// Sorted, deduplicated; includes `HEAD` whenever `GET` is present.
        allow: Vec<Method>,
    },
    /// No route of any method matches the path.
    NotFound,
}

impl Router {
    /// Finds the route for `method` and `path`.
    ///
    /// `path` is the URI path only (no query), still percent-encoded.
    #[must_use]
    pub fn lookup(&self, method: &Method, path: &str) -> Lookup {
        let Some(body) = path.strip_prefix('/') else {
            return Lookup::NotFound;
        };
        let target = Target::new(body, &self.verbs);
        let found = self.find(method, &target).or_else(|| {
            (*method == Method::HEAD)
                .then(|| self.find(&Method::GET, &target))
                .flatten()
        });
        if let Some((route, body)) = found {
            let route = &self.routes[route];
            return match route.captures(body) {
                Ok(captures) => Lookup::Found {
                    route: route.id,
                    captures,
                },
                Err((var, reason)) => Lookup::Undecodable {
                    route: route.id,
                    var,
                    reason,
                },
            };
        }
        if let Some(before) = target.before_unknown_verb {
            // `POST /v1/orders/o-1:cancle`: the routes of other methods that
            // take `o-1:cancle` as an id are not what the client meant.
            let misspelt = self.tries.iter().any(|trie| {
                (trie.method == *method || (*method == Method::HEAD && trie.method == Method::GET))
                    && trie.has_verb_at(before)
            });
            if misspelt {
                return Lookup::NotFound;
            }
        }
        let mut allow: Vec<Method> = self
            .tries
            .iter()
            .filter(|trie| trie.find(&target).is_some())
            .map(|trie| trie.method.clone())
            .collect();
        if allow.is_empty() {
            return Lookup::NotFound;
        }
        if allow.contains(&Method::GET) {
            allow.push(Method::HEAD);
        }
        allow.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        allow.dedup();
        Lookup::MethodNotAllowed { allow }
    }

    fn find<'p>(&self, method: &Method, target: &Target<'p>) -> Option<(usize, &'p str)> {
        self.tries
            .iter()
            .find(|trie| trie.method == *method)
            .and_then(|trie| trie.find(target))
    }

    /// Number of registered routes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether no routes are registered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(t: &str) -> PathTemplate {
        match PathTemplate::parse(t) {
            Ok(t) => t,
            Err(e) => panic!("bad test template {t:?}: {e}"),
        }
    }

    fn router(routes: &[(Method, &str, RouteId)]) -> Router {
        let mut builder = RouterBuilder::default();
        for (method, t, id) in routes {
            assert_eq!(
                builder.insert(method.clone(), &template(t), *id),
                Ok(()),
                "{t}"
            );
        }
        builder.build()
    }

    fn found(route: RouteId, values: &[&str]) -> Lookup {
        Lookup::Found {
            route,
            captures: values
                .iter()
                .enumerate()
                .map(|(var, value)| Capture {
                    var,
                    value: (*value).to_owned(),
                })
                .collect(),
        }
    }

    #[test]
    fn matches_literal_route_without_captures() {
        let r = router(&[(Method::GET, "/v1/books", 1)]);
        assert_eq!(r.lookup(&Method::GET, "/v1/books"), found(1, &[]));
        assert_eq!(r.lookup(&Method::GET, "/v1/book"), Lookup::NotFound);
        assert_eq!(r.lookup(&Method::GET, "/v1/books/x"), Lookup::NotFound);
        assert_eq!(r.lookup(&Method::GET, "/v1"), Lookup::NotFound);
    }

    #[test]
    fn path_without_leading_slash_is_not_found() {
        let r = router(&[(Method::GET, "/**", 1)]);
        assert_eq!(r.lookup(&Method::GET, ""), Lookup::NotFound);
        assert_eq!(r.lookup(&Method::GET, "v1"), Lookup::NotFound);
        assert_eq!(r.lookup(&Method::GET, "/"), found(1, &[]));
    }

    #[test]
    fn captures_single_segment_variables_in_var_order() {
        let r = router(&[(Method::GET, "/v1/{shelf}/books/{book.id}", 7)]);
        assert_eq!(
            r.lookup(&Method::GET, "/v1/s1/books/b2"),
            found(7, &["s1", "b2"])
        );
    }

    #[test]
    fn literal_beats_wildcard() {
        let r = router(&[
            (Method::GET, "/v1/orders/{id}", 1),
            (Method::GET, "/v1/orders/search", 2),
        ]);
        assert_eq!(r.lookup(&Method::GET, "/v1/orders/search"), found(2, &[]));
        assert_eq!(r.lookup(&Method::GET, "/v1/orders/42"), found(1, &["42"]));
    }

    #[test]
    fn wildcard_beats_double_wildcard() {
        let r = router(&[
            (Method::GET, "/v1/{rest=**}", 1),
            (Method::GET, "/v1/{id}", 2),
        ]);
        assert_eq!(r.lookup(&Method::GET, "/v1/a"), found(2, &["a"]));
        assert_eq!(r.lookup(&Method::GET, "/v1/a/b"), found(1, &["a/b"]));
    }

    #[test]
    fn backtracks_from_literal_to_wildcard() {
        let r = router(&[(Method::GET, "/v1/a/c", 1), (Method::GET, "/v1/{x}/b", 2)]);
        assert_eq!(r.lookup(&Method::GET, "/v1/a/b"), found(2, &["a"]));
        assert_eq!(r.lookup(&Method::GET, "/v1/a/c"), found(1, &[]));
    }

    #[test]
    fn backtracks_to_double_wildcard() {
        let r = router(&[(Method::GET, "/v1/*/c", 1), (Method::GET, "/v1/{p=**}", 2)]);
        assert_eq!(r.lookup(&Method::GET, "/v1/a/b"), found(2, &["a/b"]));
        assert_eq!(r.lookup(&Method::GET, "/v1/a/c"), found(1, &[]));
    }

    #[test]
    fn double_wildcard_matches_zero_segments() {
        let r = router(&[
            (Method::GET, "/v1/{p=**}", 1),
            (Method::GET, "/x/{q=a/**}", 2),
        ]);
        assert_eq!(r.lookup(&Method::GET, "/v1"), found(1, &[""]));
        assert_eq!(r.lookup(&Method::GET, "/x/a"), found(2, &["a"]));
        assert_eq!(r.lookup(&Method::GET, "/x/a/b/c"), found(2, &["a/b/c"]));
    }

    #[test]
    fn double_wildcard_matches_empty_segments() {
        let r = router(&[(Method::GET, "/v1/{p=**}", 1)]);
        assert_eq!(r.lookup(&Method::GET, "/v1/"), found(1, &[""]));
        assert_eq!(r.lookup(&Method::GET, "/v1/a//b/"), found(1, &["a//b/"]));
    }

    #[test]
    fn exact_route_beats_double_wildcard_matching_nothing() {
        let r = router(&[(Method::GET, "/v1/**", 1), (Method::GET, "/v1", 2)]);
        assert_eq!(r.lookup(&Method::GET, "/v1"), found(2, &[]));
    }

    #[test]
    fn wildcard_does_not_match_empty_segment() {
        let r = router(&[(Method::GET, "/v1/{id}", 1), (Method::GET, "/v2/{id}/x", 2)]);
        assert_eq!(r.lookup(&Method::GET, "/v1/"), Lookup::NotFound);
        assert_eq!(r.lookup(&Method::GET, "/v2//x"), Lookup::NotFound);
        assert_eq!(r.lookup(&Method::GET, "/v1/a/"), Lookup::NotFound);
    }

    #[test]
    fn literals_compare_against_decoded_segments() {
        let r = router(&[
            (Method::GET, "/v1/orders", 1),
            (Method::GET, "/v1/a%20b", 2),
        ]);
        assert_eq!(r.lookup(&Method::GET, "/v1/%6Frders"), found(1, &[]));
        assert_eq!(r.lookup(&Method::GET, "/v1/%6frders"), found(1, &[]));
        // Template literals are raw, so `a%20b` matches a decoded "a%20b".
        assert_eq!(r.lookup(&Method::GET, "/v1/a%2520b"), found(2, &[]));
        assert_eq!(r.lookup(&Method::GET, "/v1/a%20b"), Lookup::NotFound);
    }

    #[test]
    fn registered_verb_is_split_off() {
        let r = router(&[
            (Method::POST, "/v1/{name}:cancel", 1),
            (Method::GET, "/v1/{name}", 2),
        ]);
        assert_eq!(
            r.lookup(&Method::POST, "/v1/op1:cancel"),
            found(1, &["op1"])
        );
        assert_eq!(r.lookup(&Method::GET, "/v1/op1"), found(2, &["op1"]));
    }

    #[test]
    fn verb_with_multi_segment_variable() {
        let r = router(&[(Method::POST, "/v1/{name=**}:undelete", 1)]);
        assert_eq!(
            r.lookup(&Method::POST, "/v1/a/b:undelete"),
            found(1, &["a/b"])
        );
        assert_eq!(r.lookup(&Method::POST, "/v1:undelete"), found(1, &[""]));
    }

    #[test]
    fn unregistered_verb_stays_in_segment() {
        let r = router(&[(Method::GET, "/v1/{id}", 1)]);
        assert_eq!(r.lookup(&Method::GET, "/v1/a:b"), found(1, &["a:b"]));
    }

    #[test]
    fn falls_back_to_no_verb_when_verb_match_fails() {
        // `cancel` is registered (by POST), but GET has no verb route.
        let r = router(&[
            (Method::POST, "/v1/x/{id}:cancel", 1),
            (Method::GET, "/v1/{id}", 2),
        ]);
        assert_eq!(
            r.lookup(&Method::GET, "/v1/a:cancel"),
            found(2, &["a:cancel"])
        );
    }

    #[test]
    fn verb_is_taken_after_last_colon() {
        let r = router(&[(Method::POST, "/v1/{id}:cancel", 1)]);
        assert_eq!(
            r.lookup(&Method::POST, "/v1/a:b:cancel"),
            found(1, &["a:b"])
        );
    }

    #[test]
    fn verb_is_case_sensitive() {
        let r = router(&[(Method::POST, "/v1/{id}:cancel", 1)]);
        assert_eq!(r.lookup(&Method::POST, "/v1/a:Cancel"), Lookup::NotFound);
    }

    #[test]
    fn verb_only_in_last_segment() {
        let r = router(&[
            (Method::POST, "/v1/{id}:cancel", 1),
            (Method::POST, "/v1/{x}/{y}", 2),
        ]);
        assert_eq!(
            r.lookup(&Method::POST, "/v1/a:cancel/b"),
            found(2, &["a:cancel", "b"])
        );
    }

    #[test]
    fn route_with_verb_requires_the_verb() {
        let r = router(&[(Method::POST, "/v1/{id}:cancel", 1)]);
        assert_eq!(r.lookup(&Method::POST, "/v1/a"), Lookup::NotFound);
    }

    #[test]
    fn single_segment_capture_decodes_everything() {
        let r = router(&[(Method::GET, "/v1/{id}", 1)]);
        assert_eq!(
            r.lookup(&Method::GET, "/v1/a%2Fb%20c%3Ad"),
            found(1, &["a/b c:d"])
        );
    }

    #[test]
    fn multi_segment_capture_keeps_encoded_slashes() {
        let r = router(&[
            (Method::GET, "/v1/{name=shelves/*/books/*}", 1),
            (Method::GET, "/files/{path=**}", 2),
        ]);
        assert_eq!(
            r.lookup(&Method::GET, "/v1/shelves/a%2Fb/books/c%2fd%20e"),
            found(1, &["shelves/a%2Fb/books/c%2fd e"])
        );
        assert_eq!(
            r.lookup(&Method::GET, "/files/a/b%2Fc/%252F"),
            found(2, &["a/b%2Fc/%2F"])
        );
    }

    #[test]
    fn values_that_do_not_decode_exactly_are_refused_naming_the_variable() {
        let r = router(&[
            (Method::GET, "/v1/{id}", 1),
            (Method::GET, "/v2/{a}/{p=**}", 2),
        ]);
        let undecodable = |route, var, reason| Lookup::Undecodable { route, var, reason };
        assert_eq!(
            r.lookup(&Method::GET, "/v1/a%FF"),
            undecodable(1, 0, Undecodable::NotUtf8)
        );
        assert_eq!(
            r.lookup(&Method::GET, "/v1/%zz"),
            undecodable(1, 0, Undecodable::MalformedEscape)
        );
        assert_eq!(
            r.lookup(&Method::GET, "/v2/a/%FF/x"),
            undecodable(2, 1, Undecodable::NotUtf8)
        );
        assert_eq!(
            r.lookup(&Method::GET, "/v2/a/b%4"),
            undecodable(2, 1, Undecodable::MalformedEscape)
        );
    }

    #[test]
    fn head_falls_back_to_get() {
        let r = router(&[(Method::GET, "/v1/{id}", 1)]);
        assert_eq!(r.lookup(&Method::HEAD, "/v1/a"), found(1, &["a"]));
    }

    #[test]
    fn head_route_takes_priority_over_get() {
        let r = router(&[(Method::GET, "/v1/{id}", 1), (Method::HEAD, "/v1/{id}", 2)]);
        assert_eq!(r.lookup(&Method::HEAD, "/v1/a"), found(2, &["a"]));
        assert_eq!(r.lookup(&Method::GET, "/v1/a"), found(1, &["a"]));
    }

    #[test]
    fn method_not_allowed_lists_sorted_methods_and_head() {
        let r = router(&[
            (Method::POST, "/v1/{id}", 1),
            (Method::GET, "/v1/{id}", 2),
            (Method::DELETE, "/v1/x", 3),
            (Method::PATCH, "/v2/{id}", 4),
        ]);
        assert_eq!(
            r.lookup(&Method::PUT, "/v1/x"),
            Lookup::MethodNotAllowed {
                allow: vec![Method::DELETE, Method::GET, Method::HEAD, Method::POST]
            }
        );
    }

    #[test]
    fn method_not_allowed_without_get_omits_head_and_options() {
        let r = router(&[(Method::POST, "/v1/{id}", 1)]);
        assert_eq!(
            r.lookup(&Method::GET, "/v1/x"),
            Lookup::MethodNotAllowed {
                allow: vec![Method::POST]
            }
        );
        assert_eq!(
            r.lookup(&Method::HEAD, "/v1/x"),
            Lookup::MethodNotAllowed {
                allow: vec![Method::POST]
            }
        );
    }

    #[test]
    fn method_not_allowed_does_not_duplicate_registered_head() {
        let r = router(&[(Method::GET, "/v1", 1), (Method::HEAD, "/v1", 2)]);
        assert_eq!(
            r.lookup(&Method::POST, "/v1"),
            Lookup::MethodNotAllowed {
                allow: vec![Method::GET, Method::HEAD]
            }
        );
    }

    #[test]
    fn method_not_allowed_honours_verbs() {
        let r = router(&[(Method::POST, "/v1/{id}:cancel", 1)]);
        assert_eq!(
            r.lookup(&Method::GET, "/v1/a:cancel"),
            Lookup::MethodNotAllowed {
                allow: vec![Method::POST]
            }
        );
    }

    #[test]
    fn a_misspelt_verb_is_not_found_where_the_method_has_verbs() {
        let r = router(&[
            (Method::POST, "/v1/orders/{id}:cancel", 1),
            (Method::GET, "/v1/orders/{id}", 2),
            (Method::DELETE, "/v1/orders/{id}", 3),
            (Method::POST, "/v1/{name=files/**}:undelete", 4),
            (Method::GET, "/v1/{name=files/**}", 5),
        ]);
        assert_eq!(
            r.lookup(&Method::POST, "/v1/orders/o-1:cancle"),
            Lookup::NotFound
        );
        assert_eq!(
            r.lookup(&Method::POST, "/v1/files/a/b:undelet"),
            Lookup::NotFound
        );
        // Without a verb: the path is another method's resource.
        assert_eq!(
            r.lookup(&Method::POST, "/v1/orders/o-1"),
            Lookup::MethodNotAllowed {
                allow: vec![Method::DELETE, Method::GET, Method::HEAD]
            }
        );
        // A method with no verb there: `o-1:x` is an id other methods take.
        assert_eq!(
            r.lookup(&Method::PUT, "/v1/orders/o-1:x"),
            Lookup::MethodNotAllowed {
                allow: vec![Method::DELETE, Method::GET, Method::HEAD]
            }
        );
    }

    #[test]
    fn not_found_when_no_method_matches() {
        let r = router(&[(Method::GET, "/v1/{id}", 1), (Method::POST, "/v2", 2)]);
        assert_eq!(r.lookup(&Method::POST, "/v3"), Lookup::NotFound);
    }

    #[test]
    fn extension_methods_are_routed() {
        let list = Method::from_bytes(b"LIST").expect("valid method");
        let r = router(&[(list.clone(), "/v1", 1)]);
        assert_eq!(r.lookup(&list, "/v1"), found(1, &[]));
        assert_eq!(
            r.lookup(&Method::GET, "/v1"),
            Lookup::MethodNotAllowed { allow: vec![list] }
        );
    }

    #[test]
    fn duplicate_insert_returns_existing_route() {
        let mut b = RouterBuilder::default();
        assert_eq!(b.insert(Method::GET, &template("/v1/{id}"), 1), Ok(()));
        assert_eq!(b.insert(Method::GET, &template("/v1/{id}"), 2), Err(1));
        // Variable names are irrelevant: both are `/v1/*`.
        assert_eq!(b.insert(Method::GET, &template("/v1/{name}"), 3), Err(1));
        assert_eq!(b.insert(Method::GET, &template("/v1/*"), 4), Err(1));
    }

    #[test]
    fn different_method_or_verb_or_segments_do_not_conflict() {
        let mut b = RouterBuilder::default();
        assert_eq!(b.insert(Method::GET, &template("/v1/{id}"), 1), Ok(()));
        assert_eq!(b.insert(Method::POST, &template("/v1/{id}"), 2), Ok(()));
        assert_eq!(b.insert(Method::GET, &template("/v1/{id}:x"), 3), Ok(()));
        assert_eq!(b.insert(Method::GET, &template("/v1/{id=**}"), 4), Ok(()));
        assert_eq!(b.insert(Method::GET, &template("/v1/id"), 5), Ok(()));
        assert_eq!(b.insert(Method::GET, &template("/v1/{id=a/*}"), 6), Ok(()));
        assert_eq!(b.insert(Method::GET, &template("/v1/{id}:y"), 7), Ok(()));
        assert_eq!(b.insert(Method::GET, &template("/v1/{id}:x"), 8), Err(3));
        let r = b.build();
        assert_eq!(r.len(), 7);
    }

    #[test]
    fn len_counts_routes() {
        let empty = RouterBuilder::default().build();
        assert!(empty.is_empty());
        assert_eq!(empty.len(), 0);
        assert_eq!(empty.lookup(&Method::GET, "/"), Lookup::NotFound);
        let r = router(&[(Method::GET, "/a", 1), (Method::POST, "/a", 2)]);
        assert!(!r.is_empty());
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn router_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Router>();
    }

    // ---- Randomised comparison against a naive linear matcher ----

    /// Deterministic linear congruential generator.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let high = usize::try_from(self.0 >> 33).unwrap_or_default();
            high % n
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    fn decode(segment: &str) -> Vec<u8> {
        percent_decode_str(segment).collect()
    }

    /// Precedence key of a matching template: per segment, literal (0) <
    /// `*` (1) < `**` (2); a shorter key that is a prefix wins.
    fn naive_match(t: &PathTemplate, segments: &[&str]) -> Option<Vec<u8>> {
        let (fixed, has_dw) = match t.segments.split_last() {
            Some((Segment::DoubleWildcard, fixed)) => (fixed, true),
            _ => (&t.segments[..], false),
        };
        let count_ok = if has_dw {
            segments.len() >= fixed.len()
        } else {
            segments.len() == fixed.len()
        };
        if !count_ok {
            return None;
        }
        let mut key = Vec::new();
        for (template_segment, segment) in fixed.iter().zip(segments) {
            match template_segment {
                Segment::Literal(l) if decode(segment) == l.as_bytes() => key.push(0),
                Segment::Wildcard if !segment.is_empty() => key.push(1),
                _ => return None,
            }
        }
        if has_dw {
            key.push(2);
        }
        Some(key)
    }

    /// The captures, or the first variable whose value is not UTF-8 once
    /// decoded (the random paths hold no malformed escape).
    fn naive_captures(t: &PathTemplate, segments: &[&str]) -> Result<Vec<Capture>, usize> {
        t.variables
            .iter()
            .enumerate()
            .map(|(var, v)| {
                let end = if v.has_double_wildcard {
                    segments.len()
                } else {
                    v.end
                };
                let raw = segments.get(v.start..end).unwrap_or(&[]).join("/");
                let decoded = if v.is_multi_segment() {
                    // `%2F` kept: the decoded text with its escapes put back.
                    let mut out = Vec::new();
                    for (i, part) in raw.split("%2F").enumerate() {
                        if i > 0 {
                            out.extend_from_slice(b"%2F");
                        }
                        out.extend(decode(part));
                    }
                    out
                } else {
                    decode(&raw)
                };
                String::from_utf8(decoded)
                    .map(|value| Capture { var, value })
                    .map_err(|_| var)
            })
            .collect()
    }

    type NaiveRoute = (Method, PathTemplate, RouteId);

    fn naive_find(routes: &[NaiveRoute], method: &Method, path: &str) -> Option<Lookup> {
        let body = path.strip_prefix('/')?;
        let verbs: HashSet<&str> = routes.iter().filter_map(|r| r.1.verb.as_deref()).collect();
        let mut attempts = Vec::new();
        let last = body.rsplit('/').next().unwrap_or_default();
        if let Some(colon) = last.rfind(':') {
            let verb = &last[colon + 1..];
            if verbs.contains(verb) {
                let cut = body.len() - last.len() + colon;
                attempts.push((&body[..cut], Some(verb)));
            }
        }
        attempts.push((body, None));
        for (body, verb) in attempts {
            let segments: Vec<&str> = body.split('/').collect();
            let best = routes
                .iter()
                .filter(|(m, t, _)| m == method && t.verb.as_deref() == verb)
                .filter_map(|r| naive_match(&r.1, &segments).map(|key| (key, r)))
                .min_by(|a, b| a.0.cmp(&b.0));
            if let Some((_, (_, t, id))) = best {
                return Some(match naive_captures(t, &segments) {
                    Ok(captures) => Lookup::Found {
                        route: *id,
                        captures,
                    },
                    Err(var) => Lookup::Undecodable {
                        route: *id,
                        var,
                        reason: Undecodable::NotUtf8,
                    },
                });
            }
        }
        None
    }

    fn naive_lookup(routes: &[NaiveRoute], method: &Method, path: &str) -> Lookup {
        let found = naive_find(routes, method, path).or_else(|| {
            (*method == Method::HEAD)
                .then(|| naive_find(routes, &Method::GET, path))
                .flatten()
        });
        if let Some(found) = found {
            return found;
        }
        if naive_misspelt_verb(routes, method, path) {
            return Lookup::NotFound;
        }
        let mut allow: Vec<Method> = routes
            .iter()
            .map(|r| r.0.clone())
            .filter(|m| naive_find(routes, m, path).is_some())
            .collect();
        if allow.contains(&Method::GET) {
            allow.push(Method::HEAD);
        }
        allow.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        allow.dedup();
        if allow.is_empty() {
            Lookup::NotFound
        } else {
            Lookup::MethodNotAllowed { allow }
        }
    }

    /// The path ends in a `:suffix` no route registers, and a route of the
    /// method (or of GET for HEAD) with a verb matches what comes before it.
    fn naive_misspelt_verb(routes: &[NaiveRoute], method: &Method, path: &str) -> bool {
        let Some(body) = path.strip_prefix('/') else {
            return false;
        };
        let last = body.rsplit('/').next().unwrap_or_default();
        let Some(colon) = last.rfind(':') else {
            return false;
        };
        let suffix = &last[colon + 1..];
        if routes.iter().any(|r| r.1.verb.as_deref() == Some(suffix)) {
            return false;
        }
        let before = &body[..body.len() - last.len() + colon];
        let segments: Vec<&str> = before.split('/').collect();
        routes.iter().any(|(m, t, _)| {
            (m == method || (*method == Method::HEAD && *m == Method::GET))
                && t.verb.is_some()
                && naive_match(t, &segments).is_some()
        })
    }

    fn random_template(rng: &mut Lcg) -> String {
        let mut t = String::new();
        let len = 1 + rng.below(3);
        for i in 0..len {
            let last = i + 1 == len;
            let choices: &[&str] = if last {
                &["a", "b", "*", "**", "{v}", "{v=**}", "{v=a/*}", "{v=a/**}"]
            } else {
                &["a", "b", "*", "{v}", "{v=a/*}"]
            };
            let segment = rng.pick(choices).replace('v', &format!("v{i}"));
            t.push('/');
            t.push_str(&segment);
        }
        t.push_str(rng.pick(&["", "", ":x", ":y"]));
        t
    }

    fn random_path(rng: &mut Lcg) -> String {
        let mut p = String::new();
        for _ in 0..rng.below(4) {
            p.push('/');
            p.push_str(rng.pick(&["a", "a", "b", "b", "%61", "c", "", "a%2Fb", "b:x", "%FF"]));
        }
        if p.is_empty() {
            p.push('/');
        }
        p.push_str(rng.pick(&["", "", "", ":x", ":y", ":z", "/:x"]));
        p
    }

    #[test]
    fn randomized_lookup_agrees_with_naive_matcher() {
        let mut rng = Lcg(0x5eed);
        let methods = [Method::GET, Method::POST, Method::HEAD];
        let lookup_methods = [Method::GET, Method::POST, Method::HEAD, Method::DELETE];
        for round in 0..200 {
            let mut builder = RouterBuilder::default();
            let mut routes: Vec<NaiveRoute> = Vec::new();
            for id in 0..(4 + rng.below(20)) {
                let id = RouteId::try_from(id).unwrap_or_default();
                let method = methods[rng.below(methods.len())].clone();
                let t = template(&random_template(&mut rng));
                let existing = routes
                    .iter()
                    .find(|(m, e, _)| *m == method && e.segments == t.segments && e.verb == t.verb)
                    .map(|r| r.2);
                let inserted = builder.insert(method.clone(), &t, id);
                if let Some(existing) = existing {
                    assert_eq!(inserted, Err(existing), "round {round}: {t}");
                } else {
                    assert_eq!(inserted, Ok(()), "round {round}: {t}");
                    routes.push((method, t, id));
                }
            }
            let trie_router = builder.build();
            assert_eq!(trie_router.len(), routes.len());
            for _ in 0..40 {
                let path = random_path(&mut rng);
                let method = &lookup_methods[rng.below(lookup_methods.len())];
                assert_eq!(
                    trie_router.lookup(method, &path),
                    naive_lookup(&routes, method, &path),
                    "round {round}: {method} {path}, routes: {routes:?}"
                );
            }
        }
    }
}
