//! JSON request bodies → wire bytes in one pass over the bytes, driven by
//! the plans: the way the bodies clients send are read. (callgrind,
//! loadbench's 150-byte body: 4.9k instructions; serde_json driving the
//! seeds and visitors of `parse.rs` took 8.3k.)
//!
//! The scanner only ever writes what the serde reading writes for the same
//! body, byte for byte: it decides nothing of its own. Whatever it does not
//! read exactly as that reading would, it leaves to it ([`Fallback`]), which
//! then reads the body from the start and writes it, leaves it to the
//! general way or refuses it naming the field. So it falls back on invalid
//! JSON, a lone surrogate, a control character in a string, a string that
//! is not UTF-8, a number out of range or not integral for an integer
//! field, an unknown key, a field given twice, an `Any`, `Struct`, `Value`,
//! `ListValue` or `FieldMask`, and nesting past [`MAX_DEPTH`]; what a value
//! means is decided by `values.rs`, shared with that reading.
//!
//! The grammar read (RFC 8259, as serde_json reads it):
//!
//! ```text
//! body    = ws object ws
//! object  = "{" ws [ member *( ws "," ws member ) ws ] "}"
//! member  = string ws ":" ws value
//! array   = "[" ws [ value *( ws "," ws value ) ws ] "]"
//! value   = object | array | string | number | "true" | "false" | "null"
//! string  = %x22 *( %x20-21 / %x23-5B / %x5D-FF / escape ) %x22
//! escape  = "\" ( %x22 / "\" / "/" / "b" / "f" / "n" / "r" / "t" / "u" 4HEXDIG )
//! number  = [ "-" ] ( "0" / %x31-39 *DIGIT ) [ "." 1*DIGIT ] [ ( "e" / "E" ) [ "+" / "-" ] 1*DIGIT ]
//! ws      = *( %x20 / %x09 / %x0A / %x0D )
//! ```
//!
//! It recurses once per object or array, as deep as [`MAX_DEPTH`] messages.

use super::{
    values::{self, NamedFields, NotWritten},
    EnumPlan, FieldPlan, Form, JsonPlans, MessagePlan, Scalar, Shape, Unsupported, ValueKind,
    MAX_DEPTH,
};
use crate::transcode::{
    encode::{key, length_delimited, LEN},
    TranscodeOptions,
};

/// The scanner leaves the body to the serde reading.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Fallback;

impl From<NotWritten> for Fallback {
    fn from(_: NotWritten) -> Self {
        Self
    }
}

impl From<Unsupported> for Fallback {
    fn from(_: Unsupported) -> Self {
        Self
    }
}

type Scanned<T = ()> = Result<T, Fallback>;

/// Appends the wire bytes of the JSON document `json` as a message of plan
/// `plan`, or, with `number`, as that field holding it. On a fallback `out`
/// holds part of a body: the caller truncates it.
pub(super) fn body(
    plans: &JsonPlans,
    (plan, number): (usize, Option<u32>),
    json: &[u8],
    options: &TranscodeOptions,
    out: &mut Vec<u8>,
) -> Scanned {
    let mut scanner = Scanner {
        plans,
        options,
        json,
        at: 0,
        scratch: Vec::new(),
    };
    match number {
        None => scanner.message(plan, 0, out)?,
        Some(number) => {
            key(number, LEN, out);
            delimited(out, |out| scanner.message(plan, 0, out))?;
        }
    }
    scanner.space();
    if scanner.at == json.len() {
        Ok(())
    } else {
        Err(Fallback)
    }
}

/// What `body` writes into its length-delimited field.
fn delimited(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>) -> Scanned) -> Scanned {
    let mut scanned = Ok(());
    length_delimited(out, |out| scanned = body(out));
    scanned
}

struct Scanner<'a> {
    plans: &'a JsonPlans,
    options: &'a TranscodeOptions,
    json: &'a [u8],
    /// The next byte to read.
    at: usize,
    /// Strings with escapes, unescaped (it allocates only for those).
    scratch: Vec<u8>,
}

impl<'a> Scanner<'a> {
    // === the fields' values ===

    /// An object as the fields of message `plan`, nested `depth` messages
    /// (and lists and maps) below the body's, as the serde reading counts.
    fn message(&mut self, plan: usize, depth: usize, out: &mut Vec<u8>) -> Scanned {
        let plans = self.plans;
        let plan = plans
            .messages
            .get(plan)
            .filter(|plan| matches!(plan.form, Form::Fields | Form::Empty))
            .filter(|_| depth < MAX_DEPTH)
            .ok_or(Fallback)?;
        if !self.open(b'{', b'}')? {
            return Ok(());
        }
        let mut named = NamedFields::default();
        let mut guess = 0;
        loop {
            let index = self.key(plan, guess)?;
            guess = index + 1;
            let field = plan.fields.get(index).ok_or(Fallback)?;
            if named.admit(index, field, self.options)?.is_some() {
                return Err(Fallback);
            }
            self.eat(b':')?;
            let at = out.len();
            if self.field(field, depth, out)? {
                named.set(field);
            }
            if field.dropped_from_body() {
                out.truncate(at);
            }
            if !self.more(b'}')? {
                return Ok(());
            }
        }
    }

    /// A key, as the index of the field it names. Its bytes are compared
    /// with the field names (which are text) without checking them first:
    /// bytes that are no text name no field, and fall back. The field at
    /// `guess` is tried first, in place: a guessable name needs no escape,
    /// so the key is that name when the document holds it in quotes there.
    fn key(&mut self, plan: &MessagePlan, guess: usize) -> Scanned<usize> {
        self.space();
        if let Some(field) = plan.fields.get(guess).filter(|field| field.guessable) {
            let name = field.json_name();
            let start = self.at + 1;
            let end = start + name.len();
            let json = self.json;
            if json.get(self.at) == Some(&b'"')
                && json.get(start..end) == Some(name)
                && json.get(end) == Some(&b'"')
            {
                self.at = end + 1;
                return Ok(guess);
            }
        }
        let name = self.string()?.0;
        plan.key_index(name, guess).ok_or(Fallback)
    }

    /// A field's value: `null`, one value, or an array or object of them.
    /// Returns whether it set the field.
    fn field(&mut self, field: &'a FieldPlan, depth: usize, out: &mut Vec<u8>) -> Scanned<bool> {
        self.space();
        if self.peek() == Some(b'n') {
            self.literal(b"null")?;
            // A refusal is the serde reading's to word.
            return values::null(self.plans, field, out).map_err(|_| Fallback);
        }
        match field.shape {
            Shape::Single => self.value(&field.value, field.number, depth, out)?,
            // An array's items are one level deeper, as serde_json counts.
            Shape::List => {
                if self.open(b'[', b']')? {
                    loop {
                        self.value(&field.value, field.number, depth + 1, out)?;
                        if !self.more(b']')? {
                            break;
                        }
                    }
                }
            }
            Shape::Map(key) => self.map(key, field, depth + 1, out)?,
        }
        Ok(true)
    }

    /// An object as the entries of a map field: each a message of the key
    /// (1) and the value (2). Of two entries with one key the last wins, on
    /// the wire as in prost-reflect.
    fn map(
        &mut self,
        key_kind: Scalar,
        field: &'a FieldPlan,
        depth: usize,
        out: &mut Vec<u8>,
    ) -> Scanned {
        if !self.open(b'{', b'}')? {
            return Ok(());
        }
        loop {
            self.space();
            key(field.number, LEN, out);
            delimited(out, |out| {
                values::map_key(key_kind, self.text()?, out)?;
                self.eat(b':')?;
                self.value(&field.value, 2, depth, out)
            })?;
            if !self.more(b'}')? {
                return Ok(());
            }
        }
    }

    /// One value (of a field, a list, a map or a wrapper) as field `number`.
    #[inline]
    fn value(
        &mut self,
        kind: &'a ValueKind,
        number: u32,
        depth: usize,
        out: &mut Vec<u8>,
    ) -> Scanned {
        self.space();
        match kind {
            ValueKind::Scalar(scalar) => self.scalar(*scalar, number, out),
            ValueKind::Enum(plan) => self.enumeration(plan, number, out),
            ValueKind::Message(plan) => self.nested(*plan, number, depth, out),
        }
    }

    fn scalar(&mut self, scalar: Scalar, number: u32, out: &mut Vec<u8>) -> Scanned {
        match (scalar, self.peek()) {
            (Scalar::String, Some(b'"')) => values::string(number, self.utf8()?, out),
            (Scalar::Bytes, Some(b'"')) => values::base64(number, self.text()?, out)?,
            (Scalar::Double | Scalar::Float, Some(b'"')) => {
                values::float(scalar, number, values::float_text(self.text()?)?, out)?;
            }
            (Scalar::Bool, Some(b't')) => {
                self.literal(b"true")?;
                values::boolean(number, true, out);
            }
            (Scalar::Bool, Some(b'f')) => {
                self.literal(b"false")?;
                values::boolean(number, false, out);
            }
            (Scalar::Bool, _) => return Err(Fallback),
            (Scalar::Double | Scalar::Float, Some(b'-' | b'0'..=b'9')) => {
                // The nearest double, as serde_json reads it (`float_roundtrip`);
                // beyond the range serde_json refuses the number.
                let text = std::str::from_utf8(self.number()?.0).map_err(|_| Fallback)?;
                let value: f64 = text.parse().map_err(|_| Fallback)?;
                if value.is_infinite() {
                    return Err(Fallback);
                }
                values::float(scalar, number, value, out)?;
            }
            // An integer: in plain digits as nearly all come (a number or a
            // string), else in any notation, from its text.
            (_, Some(b'"' | b'-' | b'0'..=b'9')) if scalar.is_integer() => {
                let text = match self.peek() {
                    Some(b'"') => self.utf8()?,
                    _ => self.number()?.0,
                };
                match values::plain_integer(text) {
                    Some(value) => values::integer(scalar, number, value.into(), out)?,
                    None => {
                        let text = std::str::from_utf8(text).map_err(|_| Fallback)?;
                        values::integer_text(scalar, number, text, out)?;
                    }
                }
            }
            _ => return Err(Fallback),
        }
        Ok(())
    }

    fn enumeration(&mut self, plan: &EnumPlan, number: u32, out: &mut Vec<u8>) -> Scanned {
        match self.peek() {
            Some(b'"') => values::enum_name(plan, number, self.string()?.0, out)?,
            Some(b'-' | b'0'..=b'9') => {
                // serde_json reads `-0` and numbers with a fraction or an
                // exponent as floats, which name no enum value.
                let (text, plain) = self.number()?;
                if !plain || text == b"-0" {
                    return Err(Fallback);
                }
                let value = std::str::from_utf8(text).map_err(|_| Fallback)?;
                let value = value.parse().map_err(|_| Fallback)?;
                values::enum_number(plan, number, value, out)?;
            }
            _ => return Err(Fallback),
        }
        Ok(())
    }

    /// A value of message plan `plan`, in its JSON form.
    fn nested(&mut self, plan: usize, number: u32, depth: usize, out: &mut Vec<u8>) -> Scanned {
        let plans = self.plans;
        match &plans.messages.get(plan).ok_or(Fallback)?.form {
            form @ (Form::Timestamp | Form::Duration) => {
                values::time(form, number, self.text()?, out)?;
                Ok(())
            }
            // The bare value, as field 1 of the wrapper.
            Form::Wrapper(scalar) => {
                key(number, LEN, out);
                delimited(out, |out| self.scalar(*scalar, 1, out))
            }
            Form::Fields | Form::Empty => {
                key(number, LEN, out);
                delimited(out, |out| self.message(plan, depth + 1, out))
            }
            Form::Dynamic(_) | Form::Unsupported => Err(Fallback),
        }
    }

    // === tokens ===

    fn peek(&self) -> Option<u8> {
        self.json.get(self.at).copied()
    }

    /// Skips whitespace: the four bytes JSON allows, no others.
    #[inline]
    fn space(&mut self) {
        let mut at = self.at;
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.json.get(at) {
            at += 1;
        }
        self.at = at;
    }

    /// `byte`, after whitespace.
    fn eat(&mut self, byte: u8) -> Scanned {
        self.space();
        if self.peek() != Some(byte) {
            return Err(Fallback);
        }
        self.at += 1;
        Ok(())
    }

    /// An object's or array's opening `open`, after whitespace: whether an
    /// entry follows (`false`: it closed at once with `close`).
    fn open(&mut self, open: u8, close: u8) -> Scanned<bool> {
        self.eat(open)?;
        self.space();
        if self.peek() == Some(close) {
            self.at += 1;
            return Ok(false);
        }
        Ok(true)
    }

    /// After an entry of an object or array: whether another follows (a
    /// comma), or it closes with `close`.
    fn more(&mut self, close: u8) -> Scanned<bool> {
        self.space();
        let more = match self.peek() {
            Some(b',') => true,
            Some(byte) if byte == close => false,
            _ => return Err(Fallback),
        };
        self.at += 1;
        Ok(more)
    }

    /// `true`, `false` or `null`, whole.
    fn literal(&mut self, word: &[u8]) -> Scanned {
        let end = self.at + word.len();
        if self.json.get(self.at..end) != Some(word) {
            return Err(Fallback);
        }
        self.at = end;
        Ok(())
    }

    /// A string as text, checked to be UTF-8 as serde_json checks it.
    fn text(&mut self) -> Scanned<&str> {
        std::str::from_utf8(self.string()?.0).map_err(|_| Fallback)
    }

    /// [`Self::text`] as its bytes: checked only when not all ASCII.
    fn utf8(&mut self) -> Scanned<&[u8]> {
        let (text, ascii) = self.string()?;
        if !ascii {
            std::str::from_utf8(text).map_err(|_| Fallback)?;
        }
        Ok(text)
    }

    /// A string's bytes, unescaped, and whether they are all ASCII (and so
    /// text); not checked to be UTF-8. Eight bytes at a time while none of
    /// them needs a look.
    fn string(&mut self) -> Scanned<(&[u8], bool)> {
        let json = self.json;
        if json.get(self.at) != Some(&b'"') {
            return Err(Fallback);
        }
        let start = self.at + 1;
        let (mut end, mut ascii) = (start, true);
        loop {
            if let Some(chunk) = json.get(end..end + 8) {
                let chunk = <[u8; 8]>::try_from(chunk).map_err(|_| Fallback)?;
                let marked = marked(u64::from_le_bytes(chunk));
                if marked == 0 {
                    end += 8;
                    continue;
                }
                end += (marked.trailing_zeros() / 8) as usize;
            }
            match json.get(end) {
                Some(b'"') => break,
                Some(b'\\') => return Ok((self.unescaped(start, end)?, false)),
                Some(0x80..=0xff) => {
                    ascii = false;
                    end += 1;
                }
                Some(0x20..=0x7f) => end += 1,
                // A control character, or the end of the document.
                _ => return Err(Fallback),
            }
        }
        self.at = end + 1;
        Ok((&json[start..end], ascii))
    }

    /// A string from `start` whose first escape is at `end`, unescaped into
    /// the scratch buffer. (Not inlined: most strings have no escape, and
    /// [`Self::string`] stays small without it.)
    #[inline(never)]
    fn unescaped(&mut self, start: usize, mut end: usize) -> Scanned<&[u8]> {
        let json = self.json;
        self.scratch.clear();
        self.scratch.extend_from_slice(&json[start..end]);
        loop {
            match *json.get(end).ok_or(Fallback)? {
                b'"' => break,
                b'\\' => {
                    let escaped = match *json.get(end + 1).ok_or(Fallback)? {
                        b'"' => b'"',
                        b'\\' => b'\\',
                        b'/' => b'/',
                        b'b' => 0x08,
                        b'f' => 0x0c,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'u' => {
                            let (char, len) = self.unicode_escape(end + 2)?;
                            let mut utf8 = [0; 4];
                            self.scratch
                                .extend_from_slice(char.encode_utf8(&mut utf8).as_bytes());
                            end += 2 + len;
                            continue;
                        }
                        _ => return Err(Fallback),
                    };
                    self.scratch.push(escaped);
                    end += 2;
                }
                byte if byte < 0x20 => return Err(Fallback),
                byte => {
                    self.scratch.push(byte);
                    end += 1;
                }
            }
        }
        self.at = end + 1;
        Ok(&self.scratch)
    }

    /// The character of the `\u` escape whose digits start at `at`, and the
    /// bytes it takes: a surrogate pair is one character; a lone surrogate
    /// falls back (serde_json refuses it).
    fn unicode_escape(&self, at: usize) -> Scanned<(char, usize)> {
        let first = self.hex(at)?;
        let (code, len) = match first {
            0xD800..=0xDBFF => {
                if self.json.get(at + 4..at + 6) != Some(b"\\u") {
                    return Err(Fallback);
                }
                let second = self.hex(at + 6)?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(Fallback);
                }
                (0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00), 10)
            }
            0xDC00..=0xDFFF => return Err(Fallback),
            _ => (first, 4),
        };
        Ok((char::from_u32(code).ok_or(Fallback)?, len))
    }

    /// Four hex digits at `at`.
    fn hex(&self, at: usize) -> Scanned<u32> {
        let digits = self.json.get(at..at + 4).ok_or(Fallback)?;
        digits.iter().try_fold(0, |value, digit| {
            let digit = char::from(*digit).to_digit(16).ok_or(Fallback)?;
            Ok(value << 4 | digit)
        })
    }

    /// A number's text, by JSON's grammar, and whether it is plain (no
    /// fraction, no exponent).
    fn number(&mut self) -> Scanned<(&'a [u8], bool)> {
        let json = self.json;
        let digits = |mut at: usize| {
            let start = at;
            while json.get(at).is_some_and(u8::is_ascii_digit) {
                at += 1;
            }
            if at == start {
                Err(Fallback)
            } else {
                Ok(at)
            }
        };
        let start = self.at;
        let mut at = start + usize::from(json.get(start) == Some(&b'-'));
        at = match json.get(at) {
            Some(b'0') => at + 1,
            _ => digits(at)?,
        };
        let mut plain = true;
        if json.get(at) == Some(&b'.') {
            plain = false;
            at = digits(at + 1)?;
        }
        if let Some(b'e' | b'E') = json.get(at) {
            plain = false;
            at += 1;
            if let Some(b'+' | b'-') = json.get(at) {
                at += 1;
            }
            at = digits(at)?;
        }
        self.at = at;
        Ok((&json[start..at], plain))
    }
}

/// The bytes of a string's chunk that need a look, by their high bit: a
/// quote, a backslash, a control character, a byte of a non-ASCII
/// character. (A byte after a marked one may be marked too: only the
/// first counts.) The printer asks the same of a string it prints.
pub(super) fn marked(chunk: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = ONES * 0x80;
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x;
    let quote = chunk ^ (ONES * u64::from(b'"'));
    let backslash = chunk ^ (ONES * u64::from(b'\\'));
    (below(quote, 1) | below(backslash, 1) | below(chunk, 0x20) | chunk) & HIGH
}

#[cfg(test)]
mod tests {
    use prost_reflect::{DeserializeOptions, DynamicMessage};

    use super::*;
    use crate::testing;

    use super::super::{echo as fixture, Echo as Fixture};

    impl Fixture {
        /// What the scanner writes for `json`, as its meaning; `None` when
        /// it falls back.
        fn scan(&self, json: impl AsRef<[u8]>) -> Option<serde_json::Value> {
            let mut wire = Vec::new();
            let options = TranscodeOptions::default();
            let scanned = self
                .plans
                .scan_json(self.root, json.as_ref(), &options, &mut wire);
            scanned.ok()?;
            Some(testing::meaning(&self.desc, &wire))
        }

        /// What prost-reflect parses from `json`.
        fn general(&self, json: &str) -> Option<serde_json::Value> {
            let mut deserializer = serde_json::Deserializer::from_str(json);
            let message = DynamicMessage::deserialize_with_options(
                self.desc.clone(),
                &mut deserializer,
                &DeserializeOptions::new(),
            )
            .ok()?;
            deserializer.end().ok()?;
            Some(serde_json::to_value(&message).unwrap())
        }

        /// `json` is scanned, meaning what prost-reflect parses.
        fn assert_scanned(&self, json: &str) {
            let scanned = self.scan(json);
            assert!(scanned.is_some(), "fell back: {json}");
            assert_eq!(scanned, self.general(json), "{json}");
        }

        fn assert_falls_back(&self, json: impl AsRef<[u8]>) {
            let json = json.as_ref();
            assert_eq!(self.scan(json), None, "{}", String::from_utf8_lossy(json));
        }
    }

    /// Where the chunk reader stops is where a byte at a time stops.
    #[test]
    fn a_chunk_marks_its_first_byte_that_needs_a_look() {
        let needs_look = |b: u8| b == b'"' || b == b'\\' || !(0x20..0x80).contains(&b);
        let first = |chunk: [u8; 8]| match marked(u64::from_le_bytes(chunk)) {
            0 => 8,
            marks => (marks.trailing_zeros() / 8) as usize,
        };
        let mut chunks: Vec<[u8; 8]> = Vec::new();
        for byte in 0..=255u8 {
            for at in 0..8 {
                for fill in [b'a', b' ', b'~', 0x21, 0x5d, 0x23] {
                    let mut chunk = [fill; 8];
                    chunk[at] = byte;
                    chunks.push(chunk);
                    // And a byte that borrows after it.
                    if at < 7 {
                        chunk[at + 1] = 0;
                        chunks.push(chunk);
                    }
                }
            }
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunks.push(state.to_le_bytes());
        }
        for chunk in chunks {
            let expected = chunk.iter().position(|b| needs_look(*b)).unwrap_or(8);
            assert_eq!(first(chunk), expected, "{chunk:?}");
        }
    }

    #[test]
    fn only_the_four_json_whitespace_bytes_are_skipped() {
        let fixture = fixture();
        fixture.assert_scanned(
            " \t\r\n{ \"int32Value\" \n:\t1 , \"repeatedInt32\" : [ 1 , 2 ] } \r\n",
        );
        fixture.assert_scanned("{\"labels\" :{ \"a\" : \"b\" } ,\"nested\":{ }}");
        for json in [
            "\x0c{}",
            "{}\x0b",
            "{\u{a0}}",
            "\u{feff}{}",
            "{\"int32Value\":\x0c1}",
        ] {
            fixture.assert_falls_back(json);
        }
    }

    #[test]
    fn escapes_are_decoded_and_surrogate_pairs_joined() {
        let fixture = fixture();
        fixture
            .assert_scanned(r#"{"stringValue":"\u00e9\u00C9\ud83d\ude00\n\"\\\/\b\f\r\t\u0000"}"#);
        fixture.assert_scanned(
            r#"{"repeatedString":["a\"b","\\","x\u20acy"],"labels":{"k\u00e9":"v\n"}}"#,
        );
        // Escaped keys name fields and enum values as the text they stand for.
        fixture.assert_scanned(r#"{"str\u0069ngValue":"x","color":"GR\u0045EN"}"#);
    }

    /// The guessed field's name is compared in place; anything else about
    /// the key (a longer or shorter name, an escape, the proto name, the end
    /// of the document) goes through the lookup.
    #[test]
    fn a_guessed_key_is_compared_in_place() {
        let fixture = fixture();
        for json in [
            r#"{"stringValue":"a","int32Value":1,"int64Value":"2"}"#,
            r#"{"stringValue":"a","int32Val\u0075e":1}"#,
            r#"{"stringValue":"a","int32_value":1}"#,
            r#"{"stringValue":"a","uint32Value":1,"int32Value":2}"#,
            r#"{"nested":{"name":"n","value":2,"tags":["t"],"child":{"name":"c"}}}"#,
        ] {
            fixture.assert_scanned(json);
        }
        for json in [
            r#"{"stringValue":"a","int32ValueX":1}"#,
            r#"{"stringValue":"a","int32Valu":1}"#,
            r#"{"stringValue":"a","int32Value"#,
            r#"{"stringValue":"a","int32Value\":1}"#,
        ] {
            fixture.assert_falls_back(json);
        }
    }

    #[test]
    fn lone_surrogates_and_malformed_escapes_fall_back() {
        let fixture = fixture();
        for value in [
            r#""\ud800""#,
            r#""\udc00x""#,
            r#""\ud800\u0041""#,
            r#""\ud800\n""#,
            r#""\ud83d\ud83d""#,
            r#""\x""#,
            r#""\u12""#,
            r#""\u12g4""#,
            r#""\"#,
        ] {
            fixture.assert_falls_back(format!(r#"{{"stringValue":{value}}}"#));
        }
        fixture.assert_falls_back(r#"{"\ud800":1}"#);
    }

    #[test]
    fn control_characters_and_bytes_that_are_no_text_fall_back() {
        let fixture = fixture();
        fixture.assert_falls_back(b"{\"stringValue\":\"a\x01b\"}");
        fixture.assert_falls_back(b"{\"stringValue\":\"a\nb\"}");
        fixture.assert_falls_back(b"{\"stringValue\":\"\xff\"}");
        fixture.assert_falls_back(b"{\"stringValue\":\"\xc3\"}");
        fixture.assert_falls_back(b"{\"labels\":{\"\xe9\":\"v\"}}");
        fixture.assert_falls_back(b"{\"int32\xffValue\":1}");
        // DEL and every character from U+0080 on are text.
        fixture.assert_scanned("{\"stringValue\":\"\u{7f}\u{80}\u{10ffff}é\"}");
    }

    #[test]
    fn numbers_follow_the_json_grammar() {
        let fixture = fixture();
        for number in [
            "01", "-", "1.", ".5", "+1", "1e", "1e+", "-01", "1.e5", "0x10", "Infinity", "NaN",
            "1_0", "--1", "1.5.5",
        ] {
            fixture.assert_falls_back(format!(r#"{{"int64Value":{number}}}"#));
            fixture.assert_falls_back(format!(r#"{{"doubleValue":{number}}}"#));
        }
        fixture.assert_scanned(r#"{"doubleValue":1E+2,"floatValue":-0.5e-3,"int32Value":1e2}"#);
        fixture.assert_scanned(r#"{"int64Value":-0,"uint64Value":0,"doubleValue":-0}"#);
        fixture.assert_scanned(
            r#"{"int64Value":"9223372036854775807","sint64Value":-9223372036854775808}"#,
        );
    }

    #[test]
    fn integers_out_of_range_or_not_integral_fall_back() {
        let fixture = fixture();
        for json in [
            r#"{"int32Value":2147483648}"#,
            r#"{"uint32Value":-1}"#,
            r#"{"uint64Value":18446744073709551616}"#,
            r#"{"int64Value":"9223372036854775808"}"#,
            r#"{"int32Value":1.5}"#,
            r#"{"int32Value":"1e-1"}"#,
            r#"{"int32Value":" 1"}"#,
            r#"{"int32Value":true}"#,
        ] {
            fixture.assert_falls_back(json);
        }
    }

    #[test]
    fn negative_zero_and_fractions_name_no_enum_value() {
        let fixture = fixture();
        for number in ["-0", "1.0", "1e0", "2147483648", "9223372036854775808"] {
            fixture.assert_falls_back(format!(r#"{{"color":{number}}}"#));
        }
        fixture.assert_falls_back(r#"{"color":"PURPLE"}"#);
        fixture.assert_scanned(r#"{"color":0,"repeatedColor":[7,-2147483648,"RED"]}"#);
    }

    #[test]
    fn floats_beyond_their_range_fall_back() {
        let fixture = fixture();
        fixture.assert_falls_back(r#"{"doubleValue":1e400}"#);
        fixture.assert_falls_back(r#"{"doubleValue":"1e400"}"#);
        fixture.assert_falls_back(r#"{"floatValue":1e39}"#);
        fixture.assert_falls_back(r#"{"doubleValue":"inf"}"#);
        fixture.assert_scanned(r#"{"doubleValue":1e-400,"floatValue":1e-50}"#);
        fixture.assert_scanned(r#"{"doubleValue":"-Infinity","floatValue":"NaN"}"#);
    }

    #[test]
    fn keys_given_twice_unknown_or_in_conflict_fall_back() {
        let fixture = fixture();
        for json in [
            r#"{"int32Value":1,"int32Value":2}"#,
            r#"{"int32Value":1,"int32_value":2}"#,
            r#"{"choiceString":"a","choiceInt":1}"#,
            r#"{"noSuchField":1}"#,
            r#"{"[acme.ext]":1}"#,
            r#"{"internalValue":"x"}"#,
            r#"{"empty":{"a":1}}"#,
        ] {
            fixture.assert_falls_back(json);
        }
        // A `null` member of a oneof leaves it open, as prost-reflect reads it.
        fixture.assert_scanned(r#"{"choiceString":null,"choiceInt":1}"#);
        fixture.assert_scanned(r#"{"labels":{"a":"1","a":"2"}}"#);
    }

    #[test]
    fn null_sets_only_what_holds_it() {
        let fixture = fixture();
        fixture.assert_scanned(
            r#"{"stringValue":null,"nested":null,"repeatedString":null,"labels":null,"int32Wrapper":null,"value":null}"#,
        );
        for json in [
            r#"{"repeatedString":["a",null]}"#,
            r#"{"labels":{"a":null}}"#,
            r#"{"int32Wrapper":{"value":null}}"#,
            r#"{"stringValue":nul}"#,
            r#"{"boolValue":tru}"#,
            r#"{"boolValue":falsey}"#,
        ] {
            fixture.assert_falls_back(json);
        }
    }

    #[test]
    fn the_forms_of_other_readers_fall_back() {
        let fixture = fixture();
        for json in [
            r#"{"any":{}}"#,
            r#"{"structValue":{}}"#,
            r#"{"value":1}"#,
            r#"{"listValue":[]}"#,
            r#"{"fieldMask":"a"}"#,
            r#"{"timestamp":"2024-01-01T00:00:00+01:00"}"#,
        ] {
            fixture.assert_falls_back(json);
        }
        fixture.assert_scanned(
            r#"{"timestamp":"2024-02-29T23:59:59.5Z","duration":"-1.5s","int64Wrapper":"7","bytesWrapper":"aGk","empty":{}}"#,
        );
    }

    #[test]
    fn nesting_is_bounded_by_the_shared_limit() {
        let fixture = fixture();
        // `levels` messages below the body's, each in the one above.
        let nested = |levels: usize| {
            let mut json = "{\"nested\":".to_owned() + &"{\"child\":".repeat(levels - 1);
            json.push_str("{}");
            json.push_str(&"}".repeat(levels));
            json
        };
        // The body's message is at depth 0: 99 messages below it are read.
        fixture.assert_scanned(&nested(MAX_DEPTH - 1));
        fixture.assert_falls_back(nested(MAX_DEPTH));
        // Far deeper input stops at the limit, without recursing further.
        fixture.assert_falls_back(nested(100_000));
        let lists = format!(
            "{{\"repeatedNested\":{}{}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        fixture.assert_falls_back(lists + "}");
    }

    #[test]
    fn truncated_documents_and_trailing_content_fall_back() {
        let fixture = fixture();
        let json = r#"{"stringValue":"s","repeatedInt32":[1,-2],"nested":{"name":"n"},"labels":{"a":"b"},"boolValue":true}"#;
        fixture.assert_scanned(json);
        for end in 0..json.len() {
            fixture.assert_falls_back(&json[..end]);
        }
        for trailing in [" x", "{}", ",", "}", "\u{0}", "]"] {
            fixture.assert_falls_back(format!("{json}{trailing}"));
        }
        for json in [
            r#"{"int32Value":1,}"#,
            r#"{"repeatedInt32":[1,]}"#,
            r#"{,}"#,
            "[]",
            "null",
        ] {
            fixture.assert_falls_back(json);
        }
    }
}
