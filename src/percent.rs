//! Percent-decoding that refuses what it cannot decode exactly: an escape
//! that is not `%` and two hex digits, or decoded bytes that are not UTF-8,
//! is an error naming the text, never passed on as written nor replaced
//! with U+FFFD. Path variables and query parameters are decoded here.

use std::{borrow::Cow, fmt};

use percent_encoding::percent_decode_str;

/// Why a path or query text cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undecodable {
    /// A `%` not followed by two hex digits (`%zz`, a trailing `%4`).
    MalformedEscape,
    /// The decoded bytes are not UTF-8 (`%FF`).
    NotUtf8,
}

impl fmt::Display for Undecodable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MalformedEscape => {
                "malformed percent-encoding (`%` must be followed by two hex digits)"
            }
            Self::NotUtf8 => "not UTF-8 once percent-decoded",
        })
    }
}

impl std::error::Error for Undecodable {}

/// `raw` fully percent-decoded; borrowed when it holds no escape.
pub fn decode(raw: &str) -> Result<Cow<'_, str>, Undecodable> {
    if !has_escapes(raw)? {
        return Ok(Cow::Borrowed(raw));
    }
    percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| Undecodable::NotUtf8)
}

/// `raw` percent-decoded except for `%2F`/`%2f`, which stay as written so
/// that a multi-segment value still tells encoded slashes from separators.
pub fn decode_keeping_slashes(raw: &str) -> Result<String, Undecodable> {
    if !has_escapes(raw)? {
        return Ok(raw.to_owned());
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest
        .as_bytes()
        .windows(3)
        .position(|w| w[0] == b'%' && w[1] == b'2' && matches!(w[2], b'F' | b'f'))
    {
        out.extend(percent_decode_str(&rest[..i]));
        out.extend_from_slice(&rest.as_bytes()[i..i + 3]);
        rest = &rest[i + 3..];
    }
    out.extend(percent_decode_str(rest));
    String::from_utf8(out).map_err(|_| Undecodable::NotUtf8)
}

/// A query pair decoded, or the name to refuse it by (the key, decoded if
/// it can be, else as written) and why it does not decode.
pub type QueryPair<'q> = Result<(Cow<'q, str>, Cow<'q, str>), (Cow<'q, str>, Undecodable)>;

/// The `key=value` pairs of a query string, decoded as HTML forms encode
/// them (`+` is a space); empty pairs are skipped.
pub fn query_pairs(query: &str) -> impl Iterator<Item = QueryPair<'_>> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = form_decode(key).map_err(|reason| (Cow::Borrowed(key), reason))?;
            match form_decode(value) {
                Ok(value) => Ok((key, value)),
                Err(reason) => Err((key, reason)),
            }
        })
}

/// A form-encoded text: `+` is a space, then percent-decoded.
fn form_decode(raw: &str) -> Result<Cow<'_, str>, Undecodable> {
    if !raw.contains('+') {
        return decode(raw);
    }
    let spaced = raw.replace('+', " ");
    let decoded = match decode(&spaced)? {
        Cow::Owned(decoded) => Some(decoded),
        Cow::Borrowed(_) => None,
    };
    Ok(Cow::Owned(decoded.unwrap_or(spaced)))
}

/// Whether `raw` holds escapes; an error when a `%` does not start one of
/// two hex digits. (Text without any is already UTF-8: nothing to check.)
fn has_escapes(raw: &str) -> Result<bool, Undecodable> {
    let bytes = raw.as_bytes();
    let (mut at, mut found) = (0, false);
    while let Some(offset) = bytes[at..].iter().position(|b| *b == b'%') {
        let escape = at + offset;
        match bytes.get(escape + 1..escape + 3) {
            Some([high, low]) if high.is_ascii_hexdigit() && low.is_ascii_hexdigit() => {
                (at, found) = (escape + 3, true);
            }
            _ => return Err(Undecodable::MalformedEscape),
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_decode_and_plain_text_is_borrowed() {
        assert_eq!(decode("caf%C3%A9").unwrap(), "café");
        assert!(matches!(decode("plain").unwrap(), Cow::Borrowed("plain")));
        assert_eq!(decode("%25%2F").unwrap(), "%/");
    }

    #[test]
    fn what_cannot_be_decoded_exactly_is_refused() {
        for raw in ["%zz", "a%4", "%", "%%41", "%4g"] {
            assert_eq!(decode(raw), Err(Undecodable::MalformedEscape), "{raw}");
        }
        for raw in ["%FF", "%FF%FE", "a%C3"] {
            assert_eq!(decode(raw), Err(Undecodable::NotUtf8), "{raw}");
        }
    }

    #[test]
    fn multi_segment_values_keep_encoded_slashes() {
        assert_eq!(decode_keeping_slashes("a%2Fb%2fc").unwrap(), "a%2Fb%2fc");
        assert_eq!(decode_keeping_slashes("%252F%41").unwrap(), "%2FA");
        assert_eq!(
            decode_keeping_slashes("%2"),
            Err(Undecodable::MalformedEscape)
        );
        assert_eq!(decode_keeping_slashes("%2F%FF"), Err(Undecodable::NotUtf8));
    }

    #[test]
    fn query_pairs_decode_as_forms_and_name_what_they_refuse() {
        let pairs: Vec<_> = query_pairs("a=1&&b=x+y%2B&c&d=%C3%A9").collect();
        assert_eq!(
            pairs,
            [
                Ok(("a".into(), "1".into())),
                Ok(("b".into(), "x y+".into())),
                Ok(("c".into(), "".into())),
                Ok(("d".into(), "é".into())),
            ]
        );
        let refused: Vec<_> = query_pairs("s=%FF&%zz=1&k%20=a%4").collect();
        assert_eq!(
            refused,
            [
                Err(("s".into(), Undecodable::NotUtf8)),
                Err(("%zz".into(), Undecodable::MalformedEscape)),
                Err(("k ".into(), Undecodable::MalformedEscape)),
            ]
        );
    }
}
