//! HPACK (RFC 7541) for the client's side: requests are encoded without
//! Huffman and without the dynamic table (a name of the static table by
//! its index, everything else a literal; sensitive values never indexed),
//! so the encoder keeps no state and the first block of a connection sets
//! the table's size to 0. Replies are decoded in full (dynamic table,
//! Huffman, size updates) by `loona-hpack`.

use std::borrow::Cow;

use http::{HeaderName, HeaderValue, StatusCode};

use crate::upstream::metadata::Metadata;

/// `0x20 | 0`: the dynamic table's size set to 0, before the first field
/// of a connection's first block (RFC 7541 §6.3).
pub(super) const TABLE_SIZE_ZERO: u8 = 0x20;
/// Literal without indexing, 4-bit name index (RFC 7541 §6.2.2).
const WITHOUT_INDEXING: u8 = 0x00;
/// Literal never indexed, 4-bit name index (RFC 7541 §6.2.3).
const NEVER_INDEXED: u8 = 0x10;
/// Indexed field, 7-bit index (RFC 7541 §6.1).
const INDEXED: u8 = 0x80;
/// The dynamic table size this client's decoder allows (the default: no
/// `SETTINGS_HEADER_TABLE_SIZE` is sent).
pub(super) const DECODER_TABLE_SIZE: usize = 4096;
/// RFC 7541 §4.1: each entry counts 32 bytes besides its name and value.
const ENTRY_OVERHEAD: usize = 32;
/// The most fields a reply block may hold: as many as an `http::HeaderMap`
/// holds names (three quarters of its largest table), so that the gateway
/// can make one of a reply's fields when it returns some to its client.
const MAX_FIELDS: usize = (1 << 15) / 4 * 3;

/// `value` with an `prefix`-bit prefix after the `flags` bits (RFC 7541 §5.1).
#[inline]
fn integer(out: &mut Vec<u8>, flags: u8, prefix: u32, mut value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        // Below `max`, so it fits the prefix's bits.
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 0x80 {
        out.push(0x80 | (value & 0x7f) as u8);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A string literal, not Huffman-coded (RFC 7541 §5.2).
#[inline]
fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    integer(out, 0, 7, bytes.len());
    out.extend_from_slice(bytes);
}

/// One request field: by index when the static table has it whole, else a
/// literal (named by index when the static table has the name) that no
/// table keeps; never indexed when `sensitive`.
pub(super) fn field(out: &mut Vec<u8>, name: &str, value: &[u8], sensitive: bool) {
    let (whole, named) = static_index(name, value);
    if let (Some(index), false) = (whole, sensitive) {
        integer(out, INDEXED, 7, index);
        return;
    }
    let flags = if sensitive {
        NEVER_INDEXED
    } else {
        WITHOUT_INDEXING
    };
    match named {
        Some(index) => integer(out, flags, 4, index),
        None => {
            out.push(flags);
            string(out, name.as_bytes());
        }
    }
    string(out, value);
}

/// The static table's (RFC 7541 Appendix A) entry for `name: value` and
/// its first entry for `name`.
fn static_index(name: &str, value: &[u8]) -> (Option<usize>, Option<usize>) {
    let of = |entries: &[(&[u8], usize)], first: usize| {
        let whole = entries.iter().find(|(entry, _)| *entry == value);
        (whole.map(|(_, index)| *index), Some(first))
    };
    if !name.starts_with(':') {
        // Of the regular names only `accept-encoding` has a whole entry.
        let named = static_name(name);
        let whole = (named == Some(16) && value == b"gzip, deflate").then_some(16);
        return (whole, named);
    }
    match name {
        ":authority" => (None, Some(1)),
        ":method" => of(&[(b"GET", 2), (b"POST", 3)], 2),
        ":path" => of(&[(b"/", 4), (b"/index.html", 5)], 4),
        ":scheme" => of(&[(b"http", 6), (b"https", 7)], 6),
        ":status" => of(
            &[
                (b"200", 8),
                (b"204", 9),
                (b"206", 10),
                (b"304", 11),
                (b"400", 12),
                (b"404", 13),
                (b"500", 14),
            ],
            8,
        ),
        _ => (None, None),
    }
}

/// The static table's index of a regular header's name: the names grouped
/// by length and told apart by their first byte before their whole, since
/// most names a call sends are not there and differ in length from all but
/// a few.
fn static_name(name: &str) -> Option<usize> {
    let names: &[(&str, usize)] = match name.len() {
        3 => &[("age", 21), ("via", 60)],
        4 => &[
            ("date", 33),
            ("etag", 34),
            ("from", 37),
            ("host", 38),
            ("link", 45),
            ("vary", 59),
        ],
        5 => &[("allow", 22), ("range", 50)],
        6 => &[
            ("accept", 19),
            ("cookie", 32),
            ("expect", 35),
            ("server", 54),
        ],
        7 => &[("expires", 36), ("referer", 51), ("refresh", 52)],
        8 => &[("if-match", 39), ("if-range", 42), ("location", 46)],
        10 => &[("set-cookie", 55), ("user-agent", 58)],
        11 => &[("retry-after", 53)],
        12 => &[("content-type", 31), ("max-forwards", 47)],
        13 => &[
            ("accept-ranges", 18),
            ("authorization", 23),
            ("cache-control", 24),
            ("content-range", 30),
            ("if-none-match", 41),
            ("last-modified", 44),
        ],
        14 => &[("accept-charset", 15), ("content-length", 28)],
        15 => &[("accept-encoding", 16), ("accept-language", 17)],
        16 => &[
            ("content-encoding", 26),
            ("content-language", 27),
            ("content-location", 29),
            ("www-authenticate", 61),
        ],
        17 => &[("if-modified-since", 40), ("transfer-encoding", 57)],
        18 => &[("proxy-authenticate", 48)],
        19 => &[
            ("content-disposition", 25),
            ("if-unmodified-since", 43),
            ("proxy-authorization", 49),
        ],
        25 => &[("strict-transport-security", 56)],
        27 => &[("access-control-allow-origin", 20)],
        _ => &[],
    };
    names
        .iter()
        .find(|(entry, _)| entry.bytes().next() == name.bytes().next() && *entry == name)
        .map(|(_, index)| *index)
}

/// The parts of every request on a connection that do not change from call
/// to call, encoded once: the pseudo-headers before `:path`, and the fixed
/// headers after it.
#[derive(Debug)]
pub(in crate::upstream) struct RequestHead {
    pseudo: Box<[u8]>,
    fixed: Box<[u8]>,
}

impl RequestHead {
    /// `POST` to `scheme://authority`, with the `fixed` headers.
    pub(in crate::upstream) fn new<'a>(
        scheme: &str,
        authority: &str,
        fixed: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    ) -> Self {
        let mut pseudo = Vec::new();
        field(&mut pseudo, ":method", b"POST", false);
        field(&mut pseudo, ":scheme", scheme.as_bytes(), false);
        field(&mut pseudo, ":authority", authority.as_bytes(), false);
        let mut rest = Vec::new();
        for (name, value) in fixed {
            field(
                &mut rest,
                name.as_str(),
                value.as_bytes(),
                value.is_sensitive(),
            );
        }
        Self {
            pseudo: pseudo.into(),
            fixed: rest.into(),
        }
    }

    /// The block of a request for `path`: the fixed parts, `timeout` and
    /// `metadata` (which the fixed headers and `timeout` replace, as they
    /// would in a map).
    pub(super) fn encode(
        &self,
        out: &mut Vec<u8>,
        path: &str,
        timeout: Option<(&HeaderName, &HeaderValue)>,
        metadata: &Metadata,
        replaced: impl Fn(&HeaderName) -> bool,
    ) {
        out.extend_from_slice(&self.pseudo);
        field(out, ":path", path.as_bytes(), false);
        out.extend_from_slice(&self.fixed);
        if let Some((name, value)) = timeout {
            field(out, name.as_str(), value.as_bytes(), value.is_sensitive());
        }
        for (name, value) in metadata {
            if !replaced(name) {
                field(out, name.as_str(), value.as_bytes(), value.is_sensitive());
            }
        }
    }
}

/// A reply's header block, decoded.
#[derive(Debug, Default)]
pub(super) struct Fields {
    /// `:status`, if the block had one.
    pub(super) status: Option<StatusCode>,
    pub(super) headers: Metadata,
    /// Why the block is not a valid reply head or trailers (a stream error).
    pub(super) malformed: Option<&'static str>,
}

/// Decodes reply header blocks: one per connection, since the dynamic
/// table is the connection's.
pub(super) struct Decoder {
    hpack: loona_hpack::Decoder<'static>,
    /// The largest header list accepted, counted as RFC 7541 counts entries.
    max_list: usize,
    /// The last reply's `date`, shared by the replies that repeat it (all
    /// within its second) rather than copied for each.
    date: HeaderValue,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

impl Decoder {
    pub(super) fn new(max_list: usize) -> Self {
        let mut hpack = loona_hpack::Decoder::new();
        hpack.set_max_allowed_table_size(DECODER_TABLE_SIZE);
        Self {
            hpack,
            max_list,
            date: HeaderValue::from_static(""),
        }
    }

    /// The fields of one whole block. An error is the connection's (the
    /// table can no longer be trusted); a block that decodes but is no
    /// valid head is `malformed`, the stream's. Each block is decoded to
    /// its end whatever it holds, so that the table stays in step.
    pub(super) fn decode(
        &mut self,
        block: &[u8],
    ) -> Result<Fields, loona_hpack::decoder::DecoderError> {
        let mut fields = Fields::default();
        let mut size = 0usize;
        let mut regular = false;
        let max_list = self.max_list;
        let date = &mut self.date;
        self.hpack
            .decode_with_cb(block, |name: Cow<'_, [u8]>, value: Cow<'_, [u8]>| {
                if fields.malformed.is_some() {
                    return;
                }
                size = size.saturating_add(name.len() + value.len() + ENTRY_OVERHEAD);
                if size > max_list {
                    fields.malformed = Some("a header list over the size limit");
                    return;
                }
                if let Some(pseudo) = name.strip_prefix(b":") {
                    fields.malformed = if regular {
                        Some("a pseudo-header after a regular header")
                    } else if pseudo != b"status" {
                        Some("a pseudo-header other than :status in a reply")
                    } else if fields.status.is_some() {
                        Some("a repeated :status")
                    } else {
                        match StatusCode::from_bytes(&value) {
                            Ok(status) => {
                                fields.status = Some(status);
                                None
                            }
                            Err(_) => Some("an invalid :status"),
                        }
                    };
                    return;
                }
                regular = true;
                let (Ok(name), Ok(value)) = (
                    known_name(&name).map_or_else(|| HeaderName::from_lowercase(&name), Ok),
                    known_value(&value).map_or_else(|| value_of(&name, &value, date), Ok),
                ) else {
                    fields.malformed = Some("an invalid header name or value");
                    return;
                };
                if is_connection_specific(&name, &value) {
                    fields.malformed = Some("a connection-specific header");
                } else if fields.headers.len() == MAX_FIELDS {
                    fields.malformed = Some("a header list over the size limit");
                } else {
                    fields.headers.append(name, value);
                }
            })?;
        Ok(fields)
    }
}

/// The names every gRPC reply carries, without parsing or allocating them
/// (nor checking them at run time: each is a constant).
fn known_name(name: &[u8]) -> Option<HeaderName> {
    Some(match name {
        b"content-type" => http::header::CONTENT_TYPE,
        b"grpc-status" => const { HeaderName::from_static("grpc-status") },
        b"grpc-message" => const { HeaderName::from_static("grpc-message") },
        b"grpc-encoding" => const { HeaderName::from_static("grpc-encoding") },
        b"grpc-accept-encoding" => const { HeaderName::from_static("grpc-accept-encoding") },
        b"date" => http::header::DATE,
        _ => return None,
    })
}

/// The values every gRPC reply carries, without copying them.
fn known_value(value: &[u8]) -> Option<HeaderValue> {
    Some(match value {
        b"application/grpc" => HeaderValue::from_static("application/grpc"),
        b"0" => HeaderValue::from_static("0"),
        _ => return None,
    })
}

/// A value that is none of the [`known_value`]s: a `date` the last reply
/// had too is shared with it, any other value copied.
fn value_of(
    name: &[u8],
    value: &[u8],
    date: &mut HeaderValue,
) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    if name != b"date" {
        return HeaderValue::from_bytes(value);
    }
    if value != date.as_bytes() {
        *date = HeaderValue::from_bytes(value)?;
    }
    Ok(date.clone())
}

/// Fields that HTTP/2 forbids (RFC 9113 §8.2.2).
fn is_connection_specific(name: &HeaderName, value: &HeaderValue) -> bool {
    *name == http::header::CONNECTION
        || *name == http::header::TRANSFER_ENCODING
        || *name == http::header::UPGRADE
        || *name == const { HeaderName::from_static("keep-alive") }
        || *name == const { HeaderName::from_static("proxy-connection") }
        || *name == http::header::TE && value != "trailers"
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn known_fields_are_what_parsing_them_makes() {
        let names = [
            "content-type",
            "grpc-status",
            "grpc-message",
            "grpc-encoding",
            "grpc-accept-encoding",
            "date",
        ];
        for name in names {
            let known = known_name(name.as_bytes());
            assert_eq!(
                known,
                Some(HeaderName::from_lowercase(name.as_bytes()).unwrap())
            );
        }
        assert_eq!(known_name(b"grpc-statu"), None);
        for value in ["application/grpc", "0"] {
            let known = known_value(value.as_bytes());
            assert_eq!(
                known,
                Some(HeaderValue::from_bytes(value.as_bytes()).unwrap())
            );
        }
        assert_eq!(known_value(b"00"), None);
    }

    /// Every static entry by its index, as the decoder reads it.
    fn static_table() -> Vec<(String, Vec<u8>)> {
        let mut decoder = loona_hpack::Decoder::new();
        (1u8..=61)
            .map(|index| {
                let decoded = decoder.decode(&[INDEXED | index]).unwrap();
                let (name, value) = decoded.into_iter().next().unwrap();
                (String::from_utf8(name).unwrap(), value)
            })
            .collect()
    }

    #[test]
    fn the_static_table_s_names_and_whole_entries_are_found_by_their_index() {
        let table = static_table();
        for (at, (name, value)) in table.iter().enumerate() {
            let first = table.iter().position(|(other, _)| other == name).unwrap() + 1;
            let (whole, named) = static_index(name, value);
            assert_eq!(named, Some(first), "{name}");
            let expected = (!value.is_empty()).then_some(at + 1);
            assert_eq!(whole, expected, "{name}: {value:?}");
        }
        assert_eq!(static_index("x-request-id", b""), (None, None));
    }

    proptest! {
        #[test]
        fn fields_decode_as_they_were_encoded(
            fields in prop::collection::vec(
                (
                    prop_oneof![
                        Just(":path".to_owned()),
                        Just("content-type".to_owned()),
                        Just("accept-encoding".to_owned()),
                        "[a-z-]{1,30}",
                    ],
                    prop_oneof![Just(b"gzip, deflate".to_vec()), prop::collection::vec(32u8..127, 0..300)],
                    any::<bool>(),
                ),
                0..20,
            ),
        ) {
            // A block may not end with a size update.
            let mut block = if fields.is_empty() { Vec::new() } else { vec![TABLE_SIZE_ZERO] };
            for (name, value, sensitive) in &fields {
                field(&mut block, name, value, *sensitive);
            }
            let mut decoder = loona_hpack::Decoder::new();
            let decoded = decoder.decode(&block).unwrap();
            let expected: Vec<_> = fields
                .iter()
                .map(|(name, value, _)| (name.as_bytes().to_vec(), value.clone()))
                .collect();
            prop_assert_eq!(decoded, expected);
        }
    }

    #[test]
    fn reply_blocks_that_are_no_valid_head_are_malformed_and_still_decoded() {
        type Fields<'a> = &'a [(&'a str, &'a [u8])];
        let block = |fields: Fields<'_>| {
            let mut block = Vec::new();
            for (name, value) in fields {
                field(&mut block, name, value, false);
            }
            block
        };
        let mut decoder = Decoder::new(100);
        let cases: [(Fields<'_>, Option<&str>); 6] = [
            (&[(":status", b"200"), ("x-a", b"1")], None),
            (
                &[("x-a", b"1"), (":status", b"200")],
                Some("after a regular header"),
            ),
            (
                &[(":status", b"200"), (":path", b"/")],
                Some("other than :status"),
            ),
            (&[(":status", b"2000")], Some("an invalid :status")),
            (&[("connection", b"close")], Some("connection-specific")),
            (
                &[("x-a", &[b'v'; 40]), ("x-b", &[b'v'; 40])],
                Some("over the size limit"),
            ),
        ];
        for (fields, malformed) in cases {
            let decoded = decoder.decode(&block(fields)).unwrap();
            match (decoded.malformed, malformed) {
                (None, None) => {}
                (Some(why), Some(expected)) => assert!(why.contains(expected), "{why}"),
                (got, _) => panic!("{fields:?}: {got:?}"),
            }
        }
        // A block that does not decode is the connection's error.
        assert!(decoder.decode(&[INDEXED | 70]).is_err());
    }

    #[test]
    fn a_date_that_repeats_is_the_last_one_and_a_new_one_replaces_it() {
        let mut decoder = Decoder::new(1 << 20);
        let dates = |block: &[u8], decoder: &mut Decoder| -> Vec<Vec<u8>> {
            let fields = decoder.decode(block).unwrap();
            assert_eq!(fields.malformed, None);
            let dates = fields.headers.iter().filter(|(name, _)| **name == "date");
            dates.map(|(_, value)| value.as_bytes().to_vec()).collect()
        };
        let block = |values: &[&[u8]]| {
            let mut block = Vec::new();
            for value in values {
                field(&mut block, "date", value, false);
            }
            block
        };
        let (first, second) = (
            &b"Mon, 07 Dec 2026 03:00:00 GMT"[..],
            &b"Mon, 07 Dec 2026 03:00:01 GMT"[..],
        );
        for values in [
            &[first][..],
            &[first],
            &[second, second],
            &[first, second],
            &[b""],
        ] {
            assert_eq!(dates(&block(values), &mut decoder), values, "{values:?}");
        }
        // Not a valid value: refused as before, the last one kept.
        let invalid = decoder.decode(&block(&[b"a\x00b"])).unwrap();
        assert_eq!(invalid.malformed, Some("an invalid header name or value"));
        assert_eq!(dates(&block(&[second]), &mut decoder), [second]);
    }

    #[test]
    fn a_block_of_more_fields_than_a_header_map_holds_is_over_the_limit() {
        let mut block = Vec::new();
        for at in 0..MAX_FIELDS {
            field(&mut block, &format!("x-{at}"), b"1", false);
        }
        let mut decoder = Decoder::new(16 << 20);
        let fields = decoder.decode(&block).unwrap();
        assert_eq!((fields.malformed, fields.headers.len()), (None, MAX_FIELDS));
        // A map of them can be made, as when some are returned to a client.
        assert_eq!(fields.headers.into_headers().len(), MAX_FIELDS);
        field(&mut block, "x-a", b"1", false);
        let fields = decoder.decode(&block).unwrap();
        assert_eq!(fields.malformed, Some("a header list over the size limit"));
    }

    #[test]
    fn the_peer_s_table_and_its_size_updates_are_followed() {
        let mut decoder = Decoder::new(1 << 20);
        let names = |fields: Fields| -> Vec<String> {
            let mut names: Vec<_> = fields
                .headers
                .iter()
                .map(|(name, _)| name.to_string())
                .collect();
            names.extend(fields.status.map(|status| status.as_str().to_owned()));
            names
        };
        // A size update, then `x-a: 1` added to the table (6.2.1, new name).
        let mut first = vec![0x3f, 0x45]; // size 100
        first.extend_from_slice(&[0x40, 3, b'x', b'-', b'a', 1, b'1']);
        assert_eq!(names(decoder.decode(&first).unwrap()), ["x-a"]);
        // Index 62, the table's first entry, is that field.
        let second = decoder.decode(&[INDEXED | 62]).unwrap();
        let fields: Vec<_> = second.headers.iter().collect();
        assert_eq!(
            fields,
            [(
                &HeaderName::from_static("x-a"),
                &HeaderValue::from_static("1")
            )]
        );
        // A size of 0 evicts it: the same index no longer decodes.
        assert_eq!(names(decoder.decode(&[0x20, 0x88]).unwrap()), ["200"]);
        assert!(decoder.decode(&[INDEXED | 62]).is_err());
        // Over the size this client allows (4096): the connection's error.
        assert!(decoder.decode(&[0x3f, 0xe2, 0x1f, 0x88]).is_err());
    }

    #[test]
    fn sensitive_values_are_never_indexed_literals() {
        let mut block = Vec::new();
        field(&mut block, "x-request-id", b"abc", true);
        field(&mut block, "authorization", b"Bearer t", true);
        field(&mut block, "accept-encoding", b"gzip, deflate", true);
        // Literal never indexed (0001xxxx): a new name, then names 23 and 16.
        assert_eq!(block[0], NEVER_INDEXED);
        let second = 1 + 1 + 12 + 1 + 3;
        assert_eq!(block[second], NEVER_INDEXED | 15);
        assert_eq!(block[second + 1], 23 - 15);
        let third = second + 2 + 1 + 8;
        assert_eq!(block[third], NEVER_INDEXED | 15);
        assert_eq!(block[third + 1], 16 - 15);
    }
}
