//! Path templates and router lookups.

use http::Method;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::fixture;
use crate::{
    http_rule::template::{PathTemplate, Segment},
    router::{Capture, Lookup},
};

/// What a path segment may hold unescaped (RFC 3986 `unreserved`).
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The methods a lookup is tried with: the fixture's routes use all but
/// `HEAD` and `OPTIONS`, and `SEARCH` is a custom one.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "SEARCH",
];

/// A template that parses prints in a form that parses to the same template.
pub(super) fn template(text: &str) {
    let Ok(template) = PathTemplate::parse(text) else {
        return;
    };
    for variable in &template.variables {
        assert!(
            variable.start < variable.end && variable.end <= template.segments.len(),
            "{text}: {variable:?} is outside the segments"
        );
    }
    let printed = template.to_string();
    assert_eq!(
        PathTemplate::parse(&printed).as_ref(),
        Ok(&template),
        "{text} printed as {printed}"
    );
}

/// A lookup never fails in a way a request could tell from another
/// method's: `HEAD` answers as `GET` (the fixture has no `HEAD` route), a
/// 405's `Allow` never lists the method asked for, and a route found with
/// its captures is found again, with the same captures, at the path built
/// back from them.
pub(super) fn lookup(method: u8, path: &str) {
    let catalog = fixture::catalog();
    let method = Method::from_bytes(METHODS[usize::from(method) % METHODS.len()].as_bytes())
        .expect("a valid method name");
    let found = catalog.lookup(&method, path);
    if method == Method::GET {
        assert_eq!(catalog.lookup(&Method::HEAD, path), found, "HEAD {path}");
    }
    match found {
        Lookup::Found { route, captures } => {
            let template = &catalog.route(route).template;
            let Some(rebuilt) = path_of(template, &captures) else {
                return;
            };
            assert_eq!(
                catalog.lookup(&method, &rebuilt),
                Lookup::Found { route, captures },
                "{method} {path} (rebuilt as {rebuilt}) of {template}"
            );
        }
        Lookup::MethodNotAllowed { allow } => {
            assert!(!allow.contains(&method), "{method} {path}: allow {allow:?}");
        }
        Lookup::NotFound | Lookup::Undecodable { .. } => {}
    }
}

/// The path `template` matches with `captures`, escaped as a client would
/// escape it; `None` for a bare `*` or `**`, whose segments are not captured.
fn path_of(template: &PathTemplate, captures: &[Capture]) -> Option<String> {
    let mut path = String::new();
    let mut segment = 0;
    while segment < template.segments.len() {
        let variable = template.variables.iter().position(|v| v.start == segment);
        if let Some(index) = variable {
            let variable = &template.variables[index];
            let value = &captures.iter().find(|c| c.var == index)?.value;
            // `**` that matched no segment: not even the `/` before it.
            if !(variable.has_double_wildcard && value.is_empty()) {
                path.push('/');
                escape_value(value, variable.is_multi_segment(), &mut path);
            }
            segment = variable.end;
        } else {
            let Segment::Literal(literal) = &template.segments[segment] else {
                return None;
            };
            path.push('/');
            path.extend(utf8_percent_encode(literal, UNRESERVED));
            segment += 1;
        }
    }
    if path.is_empty() {
        path.push('/');
    }
    if let Some(verb) = &template.verb {
        path.push(':');
        path.push_str(verb);
    }
    Some(path)
}

/// Escapes a captured value; a multi-segment one keeps its `/` separators
/// and its `%2F` escapes, which the router left as they were.
fn escape_value(value: &str, multi_segment: bool, out: &mut String) {
    if !multi_segment {
        out.extend(utf8_percent_encode(value, UNRESERVED));
        return;
    }
    let mut rest = value;
    while let Some(first) = rest.chars().next() {
        let kept = if rest
            .get(..3)
            .is_some_and(|head| head.eq_ignore_ascii_case("%2F"))
        {
            3
        } else if first == '/' {
            1
        } else {
            0
        };
        let (head, tail) = rest.split_at(kept.max(first.len_utf8()));
        if kept > 0 {
            out.push_str(head);
        } else {
            out.extend(utf8_percent_encode(head, UNRESERVED));
        }
        rest = tail;
    }
}
