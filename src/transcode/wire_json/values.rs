//! What one value of a JSON body means on the wire, decided in one place
//! for both readers of a body: the scanner (`scan.rs`) and the serde
//! reading it leaves the rest to (`parse.rs`). Each function takes a value
//! as JSON gave it (a string's text unescaped, a number's text) and writes
//! it as field `number`, or says why not: [`NotWritten::Unsupported`] for
//! what prost-reflect is to read, [`NotWritten::Refused`] for a value it
//! would take altered (see the module doc of `parse.rs`).

use std::fmt;

use base64::{
    alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    DecodeError, Engine as _,
};

use super::{
    duration_in_range, EnumPlan, FieldPlan, Form, JsonPlans, Scalar, Shape, Unsupported, ValueKind,
    MAX_TIMESTAMP, MIN_TIMESTAMP,
};
use crate::transcode::{
    encode::{bytes, key, length_delimited, varint, FIXED32, FIXED64, LEN, VARINT},
    TranscodeOptions,
};

/// Why a value was not written.
#[derive(Debug)]
pub(super) enum NotWritten {
    /// Not covered: the general way reads it (and words any error).
    Unsupported,
    /// Refused, with the reason the client reads.
    Refused(String),
}

impl From<Unsupported> for NotWritten {
    fn from(_: Unsupported) -> Self {
        Self::Unsupported
    }
}

/// prost-reflect's base64 reading: padding optional, trailing bits allowed,
/// the URL-safe alphabet when the standard one meets `-` or `_`.
const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_allow_trailing_bits(true)
    .with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

// === fields of an object ===

/// The fields one JSON object has named so far. A field named twice, or a
/// second member of a oneof, is refused: prost-reflect keeps the last value
/// and the first would be lost.
#[derive(Default)]
pub(super) struct NamedFields {
    seen: u64,
    oneofs: u64,
}

/// Why a field's value may not set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Conflict {
    /// Its key came before: refused whatever the value.
    Twice,
    /// Another member of its oneof is set: refused unless the value is a
    /// `null` that leaves the field unset.
    Oneof,
}

impl Conflict {
    pub(super) fn reason(self) -> &'static str {
        match self {
            Self::Twice => "the field is given twice",
            Self::Oneof => "another field of its oneof is set",
        }
    }
}

impl NamedFields {
    /// Field `index` (`field`) as its key comes: `Ok(None)` when its value
    /// may be read, or what it conflicts with. Fields past the 64th, and
    /// internal fields the options do not clear (the field rules refuse
    /// them, naming them as they name fields), are for the general way.
    pub(super) fn admit(
        &mut self,
        index: usize,
        field: &FieldPlan,
        options: &TranscodeOptions,
    ) -> Result<Option<Conflict>, Unsupported> {
        let bit = u32::try_from(index)
            .ok()
            .and_then(|i| 1u64.checked_shl(i))
            .ok_or(Unsupported)?;
        if field.internal && !options.clear_internal_input {
            return Err(Unsupported);
        }
        let conflict = if self.seen & bit != 0 {
            Some(Conflict::Twice)
        } else if self.oneofs & oneof_bit(field) != 0 {
            Some(Conflict::Oneof)
        } else {
            None
        };
        self.seen |= bit;
        Ok(conflict)
    }

    /// The admitted field's value set it (it was not `null`).
    pub(super) fn set(&mut self, field: &FieldPlan) {
        self.oneofs |= oneof_bit(field);
    }
}

fn oneof_bit(field: &FieldPlan) -> u64 {
    field.oneof.map_or(0, |oneof| 1u64 << oneof)
}

impl FieldPlan {
    /// Internal (when cleared) and output-only values are read, then dropped.
    pub(super) fn dropped_from_body(&self) -> bool {
        self.internal || self.output_only
    }
}

// === values ===

/// `null` as the value of `field`: whether it set the field. `null` leaves
/// a field unset, but a `google.protobuf.Value` holds it and a `NullValue`
/// is its only value (as prost-reflect reads it). For a list of those it is
/// [`NullList`]: see `a_null_list_of_values_is_refused`.
pub(super) fn null(
    plans: &JsonPlans,
    field: &FieldPlan,
    out: &mut Vec<u8>,
) -> Result<bool, NullList> {
    let holds_null = match &field.value {
        ValueKind::Enum(plan) => plan.null_value,
        ValueKind::Message(plan) => plans.is_value(*plan),
        ValueKind::Scalar(_) => false,
    };
    match (holds_null, field.shape) {
        (false, _) | (true, Shape::Map(_)) => Ok(false),
        (true, Shape::List) => Err(NullList),
        (true, Shape::Single) => {
            match field.value {
                ValueKind::Enum(_) => {
                    key(field.number, VARINT, out);
                    varint(0, out);
                }
                // `Value { null_value: NULL_VALUE }`.
                _ => {
                    key(field.number, LEN, out);
                    bytes(&[0x08, 0x00], out);
                }
            }
            Ok(true)
        }
    }
}

/// `null` for a list of `Value`s or `NullValue`s: prost-reflect reads a list
/// of one null, Java's runtime an empty list, Go's refuses it. What the
/// client meant cannot be told, so it is refused.
#[derive(Debug, Clone, Copy)]
pub(super) struct NullList;

impl NullList {
    pub(super) const REASON: &'static str =
        "null is no list here: send [] for none, or [null] for one null value";
}

pub(super) fn boolean(number: u32, value: bool, out: &mut Vec<u8>) {
    key(number, VARINT, out);
    varint(u64::from(value), out);
}

/// A string's text (its UTF-8 bytes, checked by the caller).
pub(super) fn string(number: u32, text: &[u8], out: &mut Vec<u8>) {
    key(number, LEN, out);
    bytes(text, out);
}

/// A `bytes` value from base64 as prost-reflect reads it.
pub(super) fn base64(number: u32, text: &str, out: &mut Vec<u8>) -> Result<(), Unsupported> {
    let decoded = match STANDARD.decode(text) {
        Err(DecodeError::InvalidByte(_, b'-' | b'_')) => URL_SAFE.decode(text),
        decoded => decoded,
    }
    .map_err(|_| Unsupported)?;
    key(number, LEN, out);
    bytes(&decoded, out);
    Ok(())
}

/// An enum value by name (its bytes: a value's name is text); names of no
/// value are prost-reflect's to refuse.
pub(super) fn enum_name(
    plan: &EnumPlan,
    number: u32,
    name: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), Unsupported> {
    let value = plan
        .number(name)
        .filter(|_| !plan.null_value)
        .ok_or(Unsupported)?;
    enum_value(number, value, out);
    Ok(())
}

/// An enum value by number, known to the enum or not (open enums keep
/// unknown values).
pub(super) fn enum_number(
    plan: &EnumPlan,
    number: u32,
    value: i64,
    out: &mut Vec<u8>,
) -> Result<(), Unsupported> {
    let value = i32::try_from(value)
        .ok()
        .filter(|_| !plan.null_value)
        .ok_or(Unsupported)?;
    enum_value(number, value, out);
    Ok(())
}

fn enum_value(number: u32, value: i32, out: &mut Vec<u8>) {
    key(number, VARINT, out);
    varint(i64::from(value) as u64, out);
}

/// A `Timestamp` or `Duration` string, written as its message. Parsed and
/// range-checked by prost-types as prost-reflect does, for the timestamps
/// that prost-reflect's stricter RFC 3339 check lets by.
pub(super) fn time(
    form: &Form,
    number: u32,
    text: &str,
    out: &mut Vec<u8>,
) -> Result<(), Unsupported> {
    let (seconds, nanos) = match form {
        Form::Timestamp if utc_timestamp(text) => {
            let time: prost_types::Timestamp = text.parse().map_err(|_| Unsupported)?;
            if !(MIN_TIMESTAMP..=MAX_TIMESTAMP).contains(&time.seconds) {
                return Err(Unsupported);
            }
            (time.seconds, time.nanos)
        }
        Form::Duration => {
            let span: prost_types::Duration = text.parse().map_err(|_| Unsupported)?;
            if !duration_in_range(span.seconds, span.nanos) {
                return Err(Unsupported);
            }
            (span.seconds, span.nanos)
        }
        _ => return Err(Unsupported),
    };
    key(number, LEN, out);
    length_delimited(out, |out| {
        if seconds != 0 {
            key(1, VARINT, out);
            varint(seconds as u64, out);
        }
        if nanos != 0 {
            key(2, VARINT, out);
            varint(i64::from(nanos) as u64, out);
        }
    });
    Ok(())
}

/// `YYYY-MM-DDThh:mm:ss[.f{1,9}]Z`: the form every client sends.
fn utc_timestamp(text: &str) -> bool {
    let bytes = text.as_bytes();
    let shape = b"dddd-dd-ddTdd:dd:dd";
    if bytes.len() < shape.len() + 1 || bytes.last() != Some(&b'Z') {
        return false;
    }
    let (head, rest) = bytes.split_at(shape.len());
    let head_ok = head.iter().zip(shape).all(|(b, s)| {
        if *s == b'd' {
            b.is_ascii_digit()
        } else {
            b == s
        }
    });
    let fraction = &rest[..rest.len() - 1];
    let fraction_ok = match fraction.split_first() {
        None => true,
        Some((b'.', digits)) => {
            (1..=9).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit)
        }
        Some(_) => false,
    };
    head_ok && fraction_ok
}

/// A map key, written as field 1 of its entry: a string as it is, a bool
/// as `true` or `false`, an integer in plain decimal (as prost-reflect's
/// `from_str` reads keys).
pub(super) fn map_key(key: Scalar, text: &str, out: &mut Vec<u8>) -> Result<(), Unsupported> {
    match key {
        Scalar::String => string(1, text.as_bytes(), out),
        Scalar::Bool => match text {
            "true" => boolean(1, true, out),
            "false" => boolean(1, false, out),
            _ => return Err(Unsupported),
        },
        _ => write_integer(key, 1, decimal(text).ok_or(Unsupported)?, out).ok_or(Unsupported)?,
    }
    Ok(())
}

// === floats ===

/// `value` (the nearest double to what the client wrote) as a float or
/// double field: a float takes the nearest `f32`, refused when that
/// overflows.
pub(super) fn float(
    scalar: Scalar,
    number: u32,
    value: f64,
    out: &mut Vec<u8>,
) -> Result<(), NotWritten> {
    match scalar {
        Scalar::Double => {
            key(number, FIXED64, out);
            out.extend_from_slice(&value.to_le_bytes());
        }
        _ => {
            #[allow(clippy::cast_possible_truncation)]
            let narrow = value as f32;
            if narrow.is_infinite() && value.is_finite() {
                return Err(NotWritten::Refused(format!(
                    "{value:e} is out of range for a 32-bit float"
                )));
            }
            key(number, FIXED32, out);
            out.extend_from_slice(&narrow.to_le_bytes());
        }
    }
    Ok(())
}

/// A float's string: the proto3 JSON names of the non-finite values, or a
/// number's text, refused when out of range; other spellings (`inf`,
/// `nan`) are prost-reflect's to read.
pub(super) fn float_text(text: &str) -> Result<f64, NotWritten> {
    Ok(match text {
        "NaN" => f64::NAN,
        "Infinity" => f64::INFINITY,
        "-Infinity" => f64::NEG_INFINITY,
        _ if !text.is_empty() && text.bytes().all(|b| b"0123456789+-.eE".contains(&b)) => {
            let value: f64 = text.parse().map_err(|_| NotWritten::Unsupported)?;
            if value.is_infinite() {
                return Err(NotWritten::Refused(format!(
                    "`{text}` is out of range for a number"
                )));
            }
            value
        }
        _ => return Err(NotWritten::Unsupported),
    })
}

// === integers ===

impl Scalar {
    pub(super) fn is_integer(self) -> bool {
        !matches!(
            self,
            Self::Double | Self::Float | Self::Bool | Self::String | Self::Bytes
        )
    }

    fn range_name(self) -> &'static str {
        match self {
            Self::Int32 | Self::Sint32 | Self::Sfixed32 => "a 32-bit integer",
            Self::Uint32 | Self::Fixed32 => "an unsigned 32-bit integer",
            Self::Int64 | Self::Sint64 | Self::Sfixed64 => "a 64-bit integer",
            _ => "an unsigned 64-bit integer",
        }
    }
}

/// An integer field's value from `text`, a number's text or a string,
/// exactly: `1e2`, `100.0` and `"1e2"` are 100, as proto3 JSON allows; a
/// value that is not integral or out of range is refused. Other strings
/// are prost-reflect's to read (or refuse).
pub(super) fn integer_text(
    scalar: Scalar,
    number: u32,
    text: &str,
    out: &mut Vec<u8>,
) -> Result<(), NotWritten> {
    let value = match exact_integer(text) {
        Ok(value) => value,
        Err(IntegerText::Malformed) => return Err(NotWritten::Unsupported),
        Err(IntegerText::Fractional) => {
            return Err(NotWritten::Refused(format!("`{text}` is not an integer")));
        }
        Err(IntegerText::Large) => None,
    };
    value
        .and_then(|value| write_integer(scalar, number, value, out))
        .ok_or_else(|| out_of_range(scalar, text))
}

/// An integer field's value, read as a number already.
pub(super) fn integer(
    scalar: Scalar,
    number: u32,
    value: i128,
    out: &mut Vec<u8>,
) -> Result<(), NotWritten> {
    write_integer(scalar, number, value, out).ok_or_else(|| out_of_range(scalar, value))
}

fn out_of_range(scalar: Scalar, text: impl fmt::Display) -> NotWritten {
    NotWritten::Refused(format!(
        "`{text}` is out of range for {}",
        scalar.range_name()
    ))
}

/// Why a text is no integer.
#[derive(Debug, PartialEq, Eq)]
enum IntegerText {
    /// Not a number in JSON's syntax.
    Malformed,
    /// A number with a fractional part.
    Fractional,
    /// Integral, beyond 64 bits.
    Large,
}

/// The integer a JSON number's text stands for, exactly (no rounding
/// through a double): `-12`, `1.5e1`, `100.00`, `1e2`; `None` beyond 64 bits.
fn exact_integer(text: &str) -> Result<Option<i128>, IntegerText> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    // Plain digits, as nearly every integer comes, are read at once.
    if let Some(value) = plain_integer(text.as_bytes()) {
        return Ok(Some(i128::from(value)));
    }
    notation_integer(negative, rest)
}

/// An integer in plain digits (`-12`, no leading zero) of at most 18 digits,
/// which fit an `i64`: what [`exact_integer`] reads it as, in one pass.
pub(super) fn plain_integer(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', digits)) => (true, digits),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 18 || (digits.len() > 1 && digits[0] == b'0') {
        return None;
    }
    let mut value = 0i64;
    for digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        value = value * 10 + i64::from(digit - b'0');
    }
    Some(if negative { -value } else { value })
}

/// [`exact_integer`] of a number's text in any notation, its sign apart.
fn notation_integer(negative: bool, rest: &str) -> Result<Option<i128>, IntegerText> {
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (mantissa, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = whole.len() > 1 && whole.starts_with('0');
    if !digits(whole) || leading_zero || fraction.is_some_and(|f| !digits(f)) {
        return Err(IntegerText::Malformed);
    }
    let exponent: i64 = match exponent {
        None => 0,
        Some(e) => {
            let unsigned = e.strip_prefix(['+', '-']).unwrap_or(e);
            if !digits(unsigned) {
                return Err(IntegerText::Malformed);
            }
            // Far beyond any 64-bit value either way: clamp.
            let magnitude = unsigned.parse::<i64>().unwrap_or(i64::MAX).min(1_000);
            if e.starts_with('-') {
                -magnitude
            } else {
                magnitude
            }
        }
    };
    // The significant digits, and where the decimal point falls among them.
    let fraction = fraction.unwrap_or("");
    let digits = || whole.bytes().chain(fraction.bytes());
    let count = (whole.len() + fraction.len()) as i64;
    let point = whole.len() as i64 + exponent;
    let Some(first) = digits().position(|d| d != b'0') else {
        return Ok(Some(0));
    };
    let trailing_zeros = digits().rev().position(|d| d != b'0').unwrap_or(0) as i64;
    if count - trailing_zeros > point {
        return Err(IntegerText::Fractional);
    }
    // Integral: the digits up to the point, then zeros.
    let first = first as i64;
    if point - first > 20 {
        return Err(IntegerText::Large);
    }
    let mut significant = digits().skip(first as usize);
    let mut value: i128 = 0;
    for _ in first..point {
        let digit = significant.next().map_or(0, |d| d - b'0');
        value = value * 10 + i128::from(digit);
    }
    Ok(Some(if negative { -value } else { value }))
}

/// An integer written as a plain decimal string (`-12`), which every
/// integer parser reads alike; anything fancier goes the general way.
fn decimal(text: &str) -> Option<i128> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `value` as field `number` of integer kind `scalar`; `None` when it is
/// out of that kind's range.
fn write_integer(scalar: Scalar, number: u32, value: i128, out: &mut Vec<u8>) -> Option<()> {
    match scalar {
        Scalar::Int32 => {
            let value = i32::try_from(value).ok()?;
            key(number, VARINT, out);
            varint(i64::from(value) as u64, out);
        }
        Scalar::Sint32 => {
            let value = i32::try_from(value).ok()?;
            key(number, VARINT, out);
            varint(u64::from(((value << 1) ^ (value >> 31)) as u32), out);
        }
        Scalar::Sfixed32 => {
            let value = i32::try_from(value).ok()?;
            key(number, FIXED32, out);
            out.extend_from_slice(&value.to_le_bytes());
        }
        Scalar::Uint32 => {
            let value = u32::try_from(value).ok()?;
            key(number, VARINT, out);
            varint(u64::from(value), out);
        }
        Scalar::Fixed32 => {
            let value = u32::try_from(value).ok()?;
            key(number, FIXED32, out);
            out.extend_from_slice(&value.to_le_bytes());
        }
        Scalar::Int64 => {
            let value = i64::try_from(value).ok()?;
            key(number, VARINT, out);
            varint(value as u64, out);
        }
        Scalar::Sint64 => {
            let value = i64::try_from(value).ok()?;
            key(number, VARINT, out);
            varint(((value << 1) ^ (value >> 63)) as u64, out);
        }
        Scalar::Sfixed64 => {
            let value = i64::try_from(value).ok()?;
            key(number, FIXED64, out);
            out.extend_from_slice(&value.to_le_bytes());
        }
        Scalar::Uint64 => {
            let value = u64::try_from(value).ok()?;
            key(number, VARINT, out);
            varint(value, out);
        }
        Scalar::Fixed64 => {
            let value = u64::try_from(value).ok()?;
            key(number, FIXED64, out);
            out.extend_from_slice(&value.to_le_bytes());
        }
        Scalar::Double | Scalar::Float | Scalar::Bool | Scalar::String | Scalar::Bytes => {
            return None;
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_digits_are_read_as_the_notation_reader_reads_them() {
        let mut texts = vec![
            "0".to_owned(),
            "-0".to_owned(),
            "00".to_owned(),
            "-".to_owned(),
        ];
        for len in 1..=21 {
            for digits in ["9", "1", "0", "7"] {
                let text: String = (0..len)
                    .map(|i| if i == 0 { "1" } else { digits })
                    .collect();
                texts.push(format!("0{text}"));
                texts.push(format!("-{text}"));
                texts.push(text);
            }
        }
        for text in texts {
            let (negative, rest) = match text.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, text.as_str()),
            };
            assert_eq!(
                exact_integer(&text),
                notation_integer(negative, rest),
                "{text}"
            );
        }
        assert_eq!(
            exact_integer("-999999999999999999"),
            Ok(Some(-999_999_999_999_999_999))
        );
    }
}
