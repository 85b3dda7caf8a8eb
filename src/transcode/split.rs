//! Cuts a streamed request body into JSON values as its bytes arrive, so that
//! each message can go upstream before the rest of the body is read.
//!
//! A body is either one JSON array, whose elements are the values, or a
//! sequence of values separated by whitespace (NDJSON, or concatenated JSON):
//!
//! ```text
//! Body     = ws ( Array | { Value ws } ) ;
//! Array    = "[" ws [ Value ws { "," ws Value ws } ] "]" ws ;
//! ```
//!
//! The splitter only finds where a value ends (strings, escapes, nesting);
//! the message parser checks the value itself.

use bytes::{Buf as _, Bytes, BytesMut};

use crate::error::Error;

/// Incremental splitter: [`push`](Self::push) bytes, take values with
/// [`next_value`](Self::next_value), then [`finish`](Self::finish) at the end
/// of the body. Holds at most one value (up to `limit` bytes) plus one chunk.
#[derive(Debug)]
pub struct JsonSplitter {
    buf: BytesMut,
    /// Bytes of `buf` already scanned, all inside the current value.
    scanned: usize,
    /// Bytes dropped from the front of the body so far, for error offsets.
    consumed: usize,
    layout: Layout,
    value: Option<Scan>,
    limit: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Nothing but whitespace seen yet.
    Start,
    Sequence,
    /// Inside `[`: a value (or `]` when `first`) comes next.
    ArrayValue {
        first: bool,
    },
    /// Inside `[` after a value: `,` or `]` comes next.
    ArraySeparator,
    /// After the closing `]`.
    Closed,
}

/// The value being scanned; it always starts at `buf[0]`.
#[derive(Debug, Clone, Copy)]
enum Scan {
    /// An object or array: nesting depth, and string state.
    Nested {
        depth: usize,
        in_string: bool,
        escaped: bool,
    },
    /// A top-level string.
    String { escaped: bool },
    /// A number, `true`, `false` or `null`: ends at a delimiter.
    Bare,
}

// === impl JsonSplitter ===

impl JsonSplitter {
    /// A splitter refusing values longer than `limit` bytes (413).
    pub fn new(limit: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            scanned: 0,
            consumed: 0,
            layout: Layout::Start,
            value: None,
            limit,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete value, or `None` until more bytes are pushed.
    pub fn next_value(&mut self) -> Result<Option<Bytes>, Error> {
        loop {
            let Some(scan) = self.value else {
                if !self.start_value()? {
                    return Ok(None);
                }
                continue;
            };
            let Some(&byte) = self.buf.get(self.scanned) else {
                return Ok(None);
            };
            let (scan, end) = step(scan, byte, self.scanned);
            self.value = Some(scan);
            if let Some(end) = end {
                return Ok(Some(self.take(end)));
            }
            self.scanned += 1;
            if self.scanned > self.limit {
                return Err(Error::PayloadTooLarge { limit: self.limit });
            }
        }
    }

    /// Ends the body: the last bare value, or an error when the body is cut
    /// short. Call after [`next_value`](Self::next_value) returned `None`.
    pub fn finish(&mut self) -> Result<Option<Bytes>, Error> {
        match (self.value, self.layout) {
            (Some(Scan::Bare), _) => {
                let value = self.take(self.buf.len());
                self.finish().map(|_| Some(value))
            }
            (Some(_), _) => Err(self.invalid("the body ends inside a value")),
            (None, Layout::ArrayValue { .. } | Layout::ArraySeparator) => {
                Err(self.invalid("the body ends before the array is closed"))
            }
            (None, _) => Ok(None),
        }
    }

    /// Skips whitespace and separators; starts a value when one begins.
    /// Returns whether one did.
    fn start_value(&mut self) -> Result<bool, Error> {
        while let Some(&byte) = self.buf.first() {
            if byte.is_ascii_whitespace() {
                self.advance();
                continue;
            }
            match (self.layout, byte) {
                (Layout::Start, b'[') => {
                    self.layout = Layout::ArrayValue { first: true };
                    self.advance();
                }
                (Layout::ArrayValue { first: true }, b']') | (Layout::ArraySeparator, b']') => {
                    self.layout = Layout::Closed;
                    self.advance();
                }
                (Layout::ArraySeparator, b',') => {
                    self.layout = Layout::ArrayValue { first: false };
                    self.advance();
                }
                (Layout::ArraySeparator, _) => {
                    return Err(self.invalid(&format!(
                        "expected `,` or `]`, found `{}`",
                        char::from(byte)
                    )))
                }
                (Layout::Closed, _) => {
                    return Err(self.invalid("unexpected data after the closing `]`"))
                }
                (_, b',' | b']' | b'}' | b':') => {
                    return Err(self.invalid(&format!("unexpected `{}`", char::from(byte))))
                }
                (layout, _) => {
                    self.layout = match layout {
                        Layout::Start | Layout::Sequence => Layout::Sequence,
                        _ => Layout::ArraySeparator,
                    };
                    self.value = Some(match byte {
                        b'{' | b'[' => Scan::Nested {
                            depth: 0,
                            in_string: false,
                            escaped: false,
                        },
                        b'"' => Scan::String { escaped: false },
                        _ => Scan::Bare,
                    });
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    fn advance(&mut self) {
        self.buf.advance(1);
        self.consumed += 1;
    }

    /// Takes `buf[..end]` as the finished value.
    fn take(&mut self, end: usize) -> Bytes {
        self.value = None;
        self.scanned = 0;
        self.consumed += end;
        self.buf.split_to(end).freeze()
    }

    fn invalid(&self, reason: &str) -> Error {
        Error::InvalidJson(format!("{reason} at byte {}", self.consumed + self.scanned).into())
    }
}

/// Scans `byte` at offset `at` of the current value; returns the new state and,
/// when the value ends, its length.
fn step(scan: Scan, byte: u8, at: usize) -> (Scan, Option<usize>) {
    match scan {
        Scan::Bare => {
            // A string may follow at once (`1"a"`), as for serde_json.
            let ends =
                byte.is_ascii_whitespace() || matches!(byte, b',' | b']' | b'[' | b'{' | b'"');
            (scan, ends.then_some(at))
        }
        Scan::String { escaped } => match byte {
            _ if escaped => (Scan::String { escaped: false }, None),
            b'\\' => (Scan::String { escaped: true }, None),
            b'"' if at > 0 => (scan, Some(at + 1)),
            _ => (scan, None),
        },
        Scan::Nested {
            depth,
            in_string: true,
            escaped,
        } => {
            let (in_string, escaped) = match byte {
                _ if escaped => (true, false),
                b'\\' => (true, true),
                b'"' => (false, false),
                _ => (true, false),
            };
            (
                Scan::Nested {
                    depth,
                    in_string,
                    escaped,
                },
                None,
            )
        }
        Scan::Nested { depth, .. } => {
            let depth = match byte {
                b'{' | b'[' => depth + 1,
                b'}' | b']' => depth.saturating_sub(1),
                _ => depth,
            };
            let in_string = byte == b'"';
            let ends = depth == 0 && matches!(byte, b'}' | b']');
            (
                Scan::Nested {
                    depth,
                    in_string,
                    escaped: false,
                },
                ends.then_some(at + 1),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits `body` fed in chunks of `size` bytes.
    fn split(body: &str, size: usize, limit: usize) -> Result<Vec<String>, Error> {
        let mut splitter = JsonSplitter::new(limit);
        let mut values = Vec::new();
        for chunk in body.as_bytes().chunks(size.max(1)) {
            splitter.push(chunk);
            while let Some(value) = splitter.next_value()? {
                values.push(String::from_utf8(value.to_vec()).unwrap());
            }
        }
        if let Some(value) = splitter.finish()? {
            values.push(String::from_utf8(value.to_vec()).unwrap());
        }
        Ok(values)
    }

    /// Every chunking of `body` gives the same values (Envoy's input partitions).
    fn split_every_way(body: &str) -> Result<Vec<String>, String> {
        let whole = split(body, body.len(), 1 << 20).map_err(|e| e.to_string());
        for size in 1..body.len() {
            let chunked = split(body, size, 1 << 20).map_err(|e| e.to_string());
            assert_eq!(chunked, whole, "chunks of {size}");
        }
        whole
    }

    #[test]
    fn ndjson_lines_are_values() {
        let body = "{\"a\":1}\n{\"b\":\"}{\\\"\"}\n\n  {\"c\":[1,{\"d\":[]}]}\n";
        assert_eq!(
            split_every_way(body).unwrap(),
            [r#"{"a":1}"#, r#"{"b":"}{\""}"#, r#"{"c":[1,{"d":[]}]}"#]
        );
    }

    #[test]
    fn array_elements_are_values() {
        let body = r#" [ {"a":"]"} , {"b":2},"s\\",3 ,[4], true ] "#;
        assert_eq!(
            split_every_way(body).unwrap(),
            [r#"{"a":"]"}"#, r#"{"b":2}"#, r#""s\\""#, "3", "[4]", "true"]
        );
        assert_eq!(split_every_way("[]").unwrap(), Vec::<String>::new());
        assert_eq!(split_every_way("").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn bare_values_end_at_delimiters_and_at_the_end() {
        assert_eq!(
            split_every_way("1 2\n\"x\" 3").unwrap(),
            ["1", "2", "\"x\"", "3"]
        );
        // Found by the split fuzz target: a string right after a bare value.
        assert_eq!(
            split_every_way("1\"x\"true\"y\"").unwrap(),
            ["1", "\"x\"", "true", "\"y\""]
        );
    }

    #[test]
    fn malformed_layouts_are_refused_with_an_offset() {
        for (body, reason) in [
            ("[{}", "the body ends before the array is closed at byte 3"),
            ("[{} {}]", "expected `,` or `]`, found `{` at byte 4"),
            ("[{},]", "unexpected `]` at byte 4"),
            ("[] {}", "unexpected data after the closing `]` at byte 3"),
            ("{\"a\":", "the body ends inside a value"),
            ("}", "unexpected `}` at byte 0"),
        ] {
            let err = split_every_way(body).unwrap_err();
            assert!(err.contains(reason), "{body}: {err}");
        }
    }

    #[test]
    fn a_value_over_the_limit_is_refused() {
        let err = split("{\"a\":\"0123456789\"}", 4, 10).unwrap_err();
        assert!(matches!(err, Error::PayloadTooLarge { limit: 10 }), "{err}");
        assert_eq!(split("{\"a\":1}", 3, 7).unwrap(), ["{\"a\":1}"]);
    }
}
