//! Parser for `google.api.http` path templates (e.g. `/v1/{name=shelves/*}:cancel`).
//!
//! Templates are parsed once at configuration time into a flat list of
//! segments so the router can compile them into a trie, while variables keep
//! the segment range they bind so captures can be rebuilt after a match.
//!
//! Grammar (from `google/api/http.proto`):
//!
//! ```text
//! Template  = "/" Segments [ Verb ] ;
//! Segments  = Segment { "/" Segment } ;
//! Segment   = "*" | "**" | LITERAL | Variable ;
//! Variable  = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb      = ":" LITERAL ;
//! ```
//!
//! Additional rules enforced here:
//! - `IDENT` is `[A-Za-z_][A-Za-z0-9_]*`.
//! - `LITERAL` is one or more characters other than `/ { } * :`; it is kept
//!   exactly as written (templates are not percent-decoded).
//! - `**` (bare or inside a variable) must be the last segment; only a verb
//!   may follow it.
//! - Variables cannot nest; `{x}` is shorthand for `{x=*}`.
//! - A field path may be bound by at most one variable.
//! - `:` is only allowed to introduce the verb after the last segment.
//! - At most [`MAX_DEPTH`] segments, and fields in a field path: routing
//!   and binding walk them one level at a time.

use std::fmt;

use crate::nesting::{self, MAX_DEPTH};

/// A parsed path template, flattened so that routing only has to deal with
/// segments while variables remember which segments they capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    /// All segments in order, with variable sub-templates inlined.
    pub segments: Vec<Segment>,
    /// The custom verb after the final `:`, if any (without the `:`).
    pub verb: Option<String>,
    /// Variables in order of appearance; each refers to a range of `segments`.
    pub variables: Vec<Variable>,
}

/// One path segment of a template; the unit the router matches on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A fixed segment, stored raw as written in the template.
    Literal(String),
    /// `*`: exactly one non-empty path segment.
    Wildcard,
    /// `**`: zero or more trailing path segments.
    DoubleWildcard,
}

/// A `{field.path=...}` binding: which request field receives which segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// The field path split on `.`, e.g. `["book", "id"]`.
    pub field_path: Vec<String>,
    /// Index of the first bound segment in [`PathTemplate::segments`].
    pub start: usize,
    /// Exclusive end index of the bound segments.
    pub end: usize,
    /// Whether the bound segments end with `**`, i.e. the variable captures
    /// everything up to the end of the path. Needed because `start..end`
    /// alone cannot tell `{x=*}` from `{x=**}`.
    pub has_double_wildcard: bool,
}

impl Variable {
    /// Whether the value may contain `/`, which changes how it is decoded
    /// (multi-segment values keep `%2F` escaped).
    #[must_use]
    pub fn is_multi_segment(&self) -> bool {
        self.end - self.start > 1 || self.has_double_wildcard
    }

    /// The dotted field path (`"book.id"`), as used in messages and
    /// request-field lookups.
    #[must_use]
    pub fn field_path_string(&self) -> String {
        self.field_path.join(".")
    }
}

/// Why and where a template failed to parse, so configuration errors can
/// point at the offending character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// 1-based character (not byte) column in the template.
    pub column: usize,
    /// Human-readable explanation.
    pub reason: String,
}

impl TemplateError {
    fn new(column: usize, reason: impl Into<String>) -> Self {
        Self {
            column,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "col {}: {}", self.column, self.reason)
    }
}

impl std::error::Error for TemplateError {}

impl PathTemplate {
    /// Parses a `google.api.http` path template, reporting the first error
    /// with its column.
    ///
    /// # Errors
    ///
    /// Returns a [`TemplateError`] when the template does not follow the
    /// grammar in the module documentation.
    pub fn parse(template: &str) -> Result<PathTemplate, TemplateError> {
        Parser::new(template).parse_template()
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Literal(literal) => f.write_str(literal),
            Self::Wildcard => f.write_str("*"),
            Self::DoubleWildcard => f.write_str("**"),
        }
    }
}

/// Canonical form: `{x}` for a plain `*` variable, `{a.b=seg/seg}`
/// otherwise, so that `PathTemplate::parse(&t.to_string()) == Ok(t)`.
impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut i = 0;
        while i < self.segments.len() {
            f.write_str("/")?;
            let variable = self.variables.iter().find(|v| v.start == i && v.end > i);
            if let Some(variable) = variable {
                let bound = self
                    .segments
                    .get(variable.start..variable.end)
                    .unwrap_or(&[]);
                write!(f, "{{{}", variable.field_path_string())?;
                if bound != [Segment::Wildcard] {
                    f.write_str("=")?;
                    for (n, segment) in bound.iter().enumerate() {
                        if n > 0 {
                            f.write_str("/")?;
                        }
                        write!(f, "{segment}")?;
                    }
                }
                f.write_str("}")?;
                i = variable.end;
            } else {
                write!(f, "{}", self.segments[i])?;
                i += 1;
            }
        }
        if let Some(verb) = &self.verb {
            write!(f, ":{verb}")?;
        }
        Ok(())
    }
}

/// Characters that can never be part of a `LITERAL`.
fn is_reserved(c: char) -> bool {
    matches!(c, '/' | '{' | '}' | '*' | ':')
}

/// Recursive-descent parser over the template's characters (so columns are
/// character based).
struct Parser {
    chars: Vec<char>,
    pos: usize,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    /// Column of the `{` of the variable being parsed, if any.
    open_brace: Option<usize>,
    /// Column of a `**` already parsed; any later segment is an error.
    double_wildcard: Option<usize>,
}

impl Parser {
    fn new(template: &str) -> Self {
        Self {
            chars: template.chars().collect(),
            pos: 0,
            segments: Vec::new(),
            variables: Vec::new(),
            open_brace: None,
            double_wildcard: None,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn eat(&mut self, expected: char) -> bool {
        if self.peek() == Some(expected) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// 1-based column of the next character.
    fn column(&self) -> usize {
        self.pos + 1
    }

    fn error(&self, reason: impl Into<String>) -> TemplateError {
        TemplateError::new(self.column(), reason)
    }

    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> String {
        let start = self.pos;
        while self.peek().is_some_and(&keep) {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    /// Error for a character that cannot follow a complete segment.
    fn unexpected(&self) -> TemplateError {
        let in_variable = self.open_brace.is_some();
        match (self.peek(), self.open_brace) {
            (None, Some(open)) => TemplateError::new(open, "unclosed '{'"),
            (None, None) => self.error("unexpected end of template"),
            (Some('{'), Some(_)) => self.error("variables cannot be nested"),
            (Some('{'), None) => self.error("a variable must be a whole segment"),
            (Some('}'), None) => self.error("unmatched '}'"),
            (Some('*'), _) => self.error("'*' and '**' must be whole segments"),
            (Some(':'), Some(_)) => self.error("':' is not allowed inside a variable"),
            (Some(c), _) if in_variable => {
                self.error(format!("unexpected '{c}', expected '/' or '}}'"))
            }
            (Some(c), _) => self.error(format!("unexpected '{c}', expected '/' or ':'")),
        }
    }

    // Template = "/" Segments [ Verb ] ;
    fn parse_template(mut self) -> Result<PathTemplate, TemplateError> {
        if !self.eat('/') {
            return Err(self.error("a template must start with '/'"));
        }
        if self.peek().is_none() {
            return Err(self.error("a template must contain at least one segment"));
        }
        self.parse_segments()?;
        let verb = match self.peek() {
            None => None,
            Some(':') => Some(self.parse_verb()?),
            Some(_) => return Err(self.unexpected()),
        };
        Ok(PathTemplate {
            segments: self.segments,
            verb,
            variables: self.variables,
        })
    }

    // Segments = Segment { "/" Segment } ;
    fn parse_segments(&mut self) -> Result<(), TemplateError> {
        loop {
            self.parse_segment()?;
            if !self.eat('/') {
                return Ok(());
            }
        }
    }

    // Segment = "*" | "**" | LITERAL | Variable ;
    fn parse_segment(&mut self) -> Result<(), TemplateError> {
        if self.segments.len() == MAX_DEPTH {
            return Err(self.error(nesting::too_deep("the template")));
        }
        if let Some(column) = self.double_wildcard {
            return Err(TemplateError::new(
                column,
                "'**' must be the last segment (only a verb may follow it)",
            ));
        }
        let column = self.column();
        match self.peek() {
            Some('*') => {
                self.pos += 1;
                let segment = if self.eat('*') {
                    self.double_wildcard = Some(column);
                    Segment::DoubleWildcard
                } else {
                    Segment::Wildcard
                };
                if !matches!(self.peek(), None | Some('/' | '}' | ':')) {
                    return Err(TemplateError::new(
                        column,
                        format!("'{segment}' must be a whole segment"),
                    ));
                }
                self.segments.push(segment);
                Ok(())
            }
            Some('{') if self.open_brace.is_some() => Err(self.error("variables cannot be nested")),
            Some('{') => self.parse_variable(),
            Some('/') => Err(self.error("empty segment")),
            None if self.open_brace.is_none() => Err(self.error("trailing '/'")),
            None => Err(self.unexpected()),
            Some(c) if is_reserved(c) => {
                Err(self.error(format!("expected a segment, found '{c}'")))
            }
            Some(_) => {
                let literal = self.parse_literal();
                self.segments.push(Segment::Literal(literal));
                Ok(())
            }
        }
    }

    // LITERAL = 1*( any character except "/" "{" "}" "*" ":" ) ;
    fn parse_literal(&mut self) -> String {
        self.take_while(|c| !is_reserved(c))
    }

    // Variable = "{" FieldPath [ "=" Segments ] "}" ;
    fn parse_variable(&mut self) -> Result<(), TemplateError> {
        let open = self.column();
        self.pos += 1; // '{'
        let path_column = self.column();
        let field_path = self.parse_field_path()?;
        if self.variables.iter().any(|v| v.field_path == field_path) {
            return Err(TemplateError::new(
                path_column,
                format!(
                    "field path '{}' is bound more than once",
                    field_path.join(".")
                ),
            ));
        }
        self.open_brace = Some(open);
        let start = self.segments.len();
        match self.peek() {
            Some('=') => {
                self.pos += 1;
                self.parse_segments()?;
            }
            Some('}') => self.segments.push(Segment::Wildcard),
            None => return Err(self.unexpected()),
            Some(c) => {
                return Err(self.error(format!(
                    "unexpected '{c}' after field path, expected '=' or '}}'"
                )))
            }
        }
        if !self.eat('}') {
            return Err(self.unexpected());
        }
        self.open_brace = None;
        let end = self.segments.len();
        self.variables.push(Variable {
            field_path,
            start,
            end,
            has_double_wildcard: self.segments.last() == Some(&Segment::DoubleWildcard),
        });
        Ok(())
    }

    // FieldPath = IDENT { "." IDENT } ;
    fn parse_field_path(&mut self) -> Result<Vec<String>, TemplateError> {
        let mut path = vec![self.parse_ident()?];
        while self.eat('.') {
            if path.len() == MAX_DEPTH {
                return Err(self.error(nesting::too_deep("the field path")));
            }
            path.push(self.parse_ident()?);
        }
        Ok(path)
    }

    // IDENT = ( letter | "_" ) { letter | digit | "_" } ;
    fn parse_ident(&mut self) -> Result<String, TemplateError> {
        if !self
            .peek()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        {
            return Err(self.error("expected a field name ([A-Za-z_][A-Za-z0-9_]*)"));
        }
        Ok(self.take_while(|c| c.is_ascii_alphanumeric() || c == '_'))
    }

    // Verb = ":" LITERAL ;
    fn parse_verb(&mut self) -> Result<String, TemplateError> {
        self.pos += 1; // ':'
        let verb = self.parse_literal();
        match self.peek() {
            None if verb.is_empty() => Err(self.error("empty verb")),
            None => Ok(verb),
            Some('/') => Err(self.error(
                "'/' is not allowed in a verb (':' may only introduce a verb after the last segment)",
            )),
            Some(c) => Err(self.error(format!("'{c}' is not allowed in a verb"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> Segment {
        Segment::Literal(s.to_owned())
    }

    fn var(path: &[&str], start: usize, end: usize, dw: bool) -> Variable {
        Variable {
            field_path: path.iter().map(|s| (*s).to_owned()).collect(),
            start,
            end,
            has_double_wildcard: dw,
        }
    }

    fn parse_ok(template: &str) -> PathTemplate {
        match PathTemplate::parse(template) {
            Ok(t) => t,
            Err(e) => panic!("{template:?} should parse: {e}"),
        }
    }

    fn parse_err(template: &str) -> TemplateError {
        match PathTemplate::parse(template) {
            Ok(t) => panic!("{template:?} should fail, parsed as {t:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_literal_segments() {
        let t = parse_ok("/v1/books");
        assert_eq!(t.segments, vec![lit("v1"), lit("books")]);
        assert_eq!(t.verb, None);
        assert!(t.variables.is_empty());
    }

    #[test]
    fn parses_bare_wildcards() {
        let t = parse_ok("/v1/*/x/**");
        assert_eq!(
            t.segments,
            vec![
                lit("v1"),
                Segment::Wildcard,
                lit("x"),
                Segment::DoubleWildcard
            ]
        );
        assert!(t.variables.is_empty());
    }

    #[test]
    fn variable_without_sub_template_means_single_wildcard() {
        let t = parse_ok("/v1/{name}");
        assert_eq!(t.segments, vec![lit("v1"), Segment::Wildcard]);
        assert_eq!(t.variables, vec![var(&["name"], 1, 2, false)]);
        assert_eq!(t, parse_ok("/v1/{name=*}"));
    }

    #[test]
    fn variable_sub_template_is_flattened() {
        let t = parse_ok("/v1/{name=shelves/*/books/*}/x");
        assert_eq!(
            t.segments,
            vec![
                lit("v1"),
                lit("shelves"),
                Segment::Wildcard,
                lit("books"),
                Segment::Wildcard,
                lit("x"),
            ]
        );
        assert_eq!(t.variables, vec![var(&["name"], 1, 5, false)]);
    }

    #[test]
    fn dotted_field_paths_and_identifier_characters() {
        let t = parse_ok("/v1/{book.id}/{_a1.B_2}");
        assert_eq!(
            t.variables,
            vec![
                var(&["book", "id"], 1, 2, false),
                var(&["_a1", "B_2"], 2, 3, false)
            ]
        );
        assert_eq!(t.variables[0].field_path_string(), "book.id");
    }

    #[test]
    fn double_wildcard_variable_is_multi_segment() {
        let t = parse_ok("/v1/{path=**}");
        assert_eq!(t.variables, vec![var(&["path"], 1, 2, true)]);
        assert!(t.variables[0].is_multi_segment());
    }

    #[test]
    fn multi_segment_detection() {
        let t = parse_ok("/{a}/{b=x/*}/{c=y/**}");
        let multi: Vec<bool> = t.variables.iter().map(Variable::is_multi_segment).collect();
        assert_eq!(multi, vec![false, true, true]);
        assert!(!parse_ok("/{a=lit}").variables[0].is_multi_segment());
    }

    #[test]
    fn parses_verbs() {
        let t = parse_ok("/v1/{name=projects/*}:cancel");
        assert_eq!(t.verb.as_deref(), Some("cancel"));
        assert_eq!(parse_ok("/v1/*:do").verb.as_deref(), Some("do"));
        assert_eq!(parse_ok("/v1/**:do").verb.as_deref(), Some("do"));
        assert_eq!(
            parse_ok("/v1/{x=**}:batchGet").verb.as_deref(),
            Some("batchGet")
        );
        assert_eq!(parse_ok("/v1/a:b=c").verb.as_deref(), Some("b=c"));
    }

    #[test]
    fn literals_are_kept_raw() {
        let t = parse_ok("/v1/a%20b/c=d/ü");
        assert_eq!(
            t.segments,
            vec![lit("v1"), lit("a%20b"), lit("c=d"), lit("ü")]
        );
    }

    #[test]
    fn rejects_missing_leading_slash() {
        assert_eq!(parse_err("").column, 1);
        assert_eq!(parse_err("v1/books").column, 1);
    }

    #[test]
    fn rejects_template_without_segments() {
        let e = parse_err("/");
        assert_eq!(e.column, 2);
        assert!(e.reason.contains("at least one segment"), "{e}");
    }

    #[test]
    fn rejects_empty_and_trailing_segments() {
        let e = parse_err("/v1//books");
        assert_eq!((e.column, e.reason.as_str()), (5, "empty segment"));
        let e = parse_err("/v1/");
        assert_eq!((e.column, e.reason.as_str()), (5, "trailing '/'"));
        assert_eq!(parse_err("/v1/{x=a/}").column, 10);
        assert_eq!(parse_err("/v1/{x=}").column, 8);
        assert_eq!(parse_err("/v1/:verb").column, 5);
    }

    #[test]
    fn rejects_unclosed_and_unmatched_braces() {
        let e = parse_err("/v1/{name");
        assert_eq!((e.column, e.reason.as_str()), (5, "unclosed '{'"));
        assert_eq!(parse_err("/v1/{name=a/*").column, 5);
        let e = parse_err("/v1/a}");
        assert_eq!((e.column, e.reason.as_str()), (6, "unmatched '}'"));
    }

    #[test]
    fn rejects_bad_field_paths() {
        assert_eq!(parse_err("/v1/{}").column, 6);
        assert_eq!(parse_err("/v1/{1a}").column, 6);
        assert_eq!(parse_err("/v1/{a.}").column, 8);
        assert_eq!(parse_err("/v1/{a..b}").column, 8);
        assert_eq!(parse_err("/v1/{a b}").column, 7);
        assert_eq!(parse_err("/v1/{a-b}").column, 7);
    }

    #[test]
    fn rejects_nested_variables() {
        let e = parse_err("/v1/{a={b}}");
        assert_eq!(
            (e.column, e.reason.as_str()),
            (8, "variables cannot be nested")
        );
        assert_eq!(parse_err("/v1/{a=x{b}}").column, 9);
    }

    #[test]
    fn rejects_double_wildcard_not_last() {
        let e = parse_err("/v1/**/a");
        assert_eq!(e.column, 5);
        assert!(e.reason.contains("last segment"), "{e}");
        assert_eq!(parse_err("/v1/{x=**}/a").column, 8);
        assert_eq!(parse_err("/{x=**/a}").column, 5);
        assert_eq!(parse_err("/**/{a}").column, 2);
    }

    #[test]
    fn rejects_partial_wildcard_segments() {
        assert_eq!(parse_err("/v1/a*").column, 6);
        assert_eq!(parse_err("/v1/*a").column, 5);
        assert_eq!(parse_err("/v1/***").column, 5);
        assert_eq!(parse_err("/v1/{x=a*}").column, 9);
    }

    #[test]
    fn rejects_variables_that_are_not_whole_segments() {
        assert_eq!(parse_err("/v1/a{x}").column, 6);
        assert_eq!(parse_err("/v1/{x}a").column, 8);
    }

    #[test]
    fn rejects_bad_verbs() {
        let e = parse_err("/v1/a:");
        assert_eq!((e.column, e.reason.as_str()), (7, "empty verb"));
        assert_eq!(parse_err("/v1/a:b/c").column, 8);
        assert_eq!(parse_err("/v1/a:b:c").column, 8);
        assert_eq!(parse_err("/v1/a:b*").column, 8);
        assert_eq!(parse_err("/v1/{x=a:b}").column, 9);
    }

    #[test]
    fn rejects_duplicate_field_paths() {
        let e = parse_err("/v1/{a.b}/{a.b=x/*}");
        assert_eq!(e.column, 12);
        assert!(e.reason.contains("'a.b'"), "{e}");
        // Prefixes are distinct field paths.
        parse_ok("/v1/{a}/{a.b}");
    }

    #[test]
    fn error_columns_count_characters_not_bytes() {
        assert_eq!(parse_err("/ü//").column, 4);
    }

    #[test]
    fn error_display_includes_column() {
        assert_eq!(parse_err("/v1/").to_string(), "col 5: trailing '/'");
    }

    #[test]
    fn display_is_canonical_and_round_trips() {
        let cases = [
            ("/v1/books", "/v1/books"),
            ("/v1/{name}", "/v1/{name}"),
            ("/v1/{name=*}", "/v1/{name}"),
            (
                "/v1/{name=shelves/*/books/*}",
                "/v1/{name=shelves/*/books/*}",
            ),
            ("/v1/{book.id=lit}/x", "/v1/{book.id=lit}/x"),
            ("/v1/{path=**}:get", "/v1/{path=**}:get"),
            ("/*/**", "/*/**"),
            ("/v1/a%2F/{x}/{y=a/**}:v=1", "/v1/a%2F/{x}/{y=a/**}:v=1"),
        ];
        for (input, canonical) in cases {
            let t = parse_ok(input);
            assert_eq!(t.to_string(), canonical);
            assert_eq!(parse_ok(&t.to_string()), t, "round trip of {input}");
        }
    }
}
