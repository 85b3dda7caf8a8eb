//! The one nesting limit. No recursion may go as deep as a client or an
//! upload says: what nests (JSON, dotted query paths, field masks, templates,
//! `.proto` sources, descriptor sets, replies) is refused past
//! [`MAX_DEPTH`] levels, naming the limit, before anything walks it.
//!
//! 100 is protobuf's own: prost (and the C++ runtime) refuse to decode a
//! message nested deeper, so nothing deeper could reach an upstream anyway.

/// Levels of nesting accepted anywhere: JSON objects and arrays, fields of a
/// dotted path, template segments, nested declarations and messages.
pub(crate) const MAX_DEPTH: usize = 100;

/// The reason given for input nested deeper than [`MAX_DEPTH`].
pub(crate) fn too_deep(what: &str) -> String {
    format!("{what} nests deeper than the limit of {MAX_DEPTH} levels")
}

/// `text` shortened to be named in an error: deep input is long input, and
/// an error should not send it back whole.
pub(crate) fn shortened(text: &str) -> std::borrow::Cow<'_, str> {
    const SHOWN: usize = 64;
    match text.char_indices().nth(SHOWN) {
        None => text.into(),
        Some((end, _)) => format!("{}…", &text[..end]).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_the_one_protobuf_decoders_keep() {
        let deep = crate::testing::message("protogate.testing.v1.Deep");
        let decode = |levels| {
            prost_reflect::DynamicMessage::decode(
                deep.clone(),
                &crate::testing::deep_wire(levels)[..],
            )
        };
        assert!(decode(MAX_DEPTH).is_ok());
        assert!(decode(MAX_DEPTH + 1).is_err());
    }

    #[test]
    fn long_text_is_shortened_on_a_char_boundary() {
        assert_eq!(shortened("d.s"), "d.s");
        let long = "é".repeat(100);
        let short = shortened(&long);
        assert_eq!(short.chars().count(), 65);
        assert!(short.ends_with('…'));
    }
}
