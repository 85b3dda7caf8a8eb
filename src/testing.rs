//! What unit tests and the fuzz targets share: the test protos'
//! descriptors, and how to compare two encodings of a message by what they
//! mean.

use prost_reflect::{DynamicMessage, MessageDescriptor};

/// The descriptor set of `protos/protogate/testing`, with its imports.
pub(crate) const SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/protogate.testing.v1.binpb"));

/// Every type of `protos/protogate/testing`, with its imports.
#[cfg(test)]
pub(crate) fn pool() -> prost_reflect::DescriptorPool {
    prost_reflect::DescriptorPool::decode(SET).expect("the test protos' descriptor set decodes")
}

/// A message type of [`pool`] by its full name.
#[cfg(test)]
pub(crate) fn message(name: &str) -> MessageDescriptor {
    pool()
        .get_message_by_name(name)
        .unwrap_or_else(|| panic!("no message {name} in the test protos"))
}

/// The message `wire` means, as proto3 JSON: decoded, so that unpacked
/// lists, explicit defaults and map order do not count. (A failed assertion
/// on two `DynamicMessage`s would print their descriptor pools, recursively.)
pub(crate) fn meaning(message: &MessageDescriptor, wire: &[u8]) -> serde_json::Value {
    let decoded = DynamicMessage::decode(message.clone(), wire).expect("valid wire bytes");
    serde_json::to_value(&decoded).expect("a decoded message prints as JSON")
}

/// A `protogate.testing.v1.Deep` with `levels` messages nested below the
/// root (each in field 1), the innermost holding `s: "bottom"`. Written front
/// to back with its lengths computed inside out: no encoder recurses once
/// per level.
pub(crate) fn deep_wire(levels: usize) -> Vec<u8> {
    let innermost: &[u8] = b"\x12\x06bottom";
    let varint_len = |value: usize| {
        let mut buf = Vec::new();
        prost::encoding::encode_varint(value as u64, &mut buf);
        buf.len()
    };
    let mut lengths = vec![innermost.len(); levels + 1];
    for level in (0..levels).rev() {
        lengths[level] = 1 + varint_len(lengths[level + 1]) + lengths[level + 1];
    }
    let mut out = Vec::with_capacity(lengths[0]);
    for inner in &lengths[1..] {
        out.push(0x0a);
        prost::encoding::encode_varint(*inner as u64, &mut out);
    }
    out.extend_from_slice(innermost);
    out
}
