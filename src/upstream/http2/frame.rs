//! HTTP/2 frames (RFC 9113 §4 and §6): the 9-byte frame header, the frame
//! types and flags this client reads, and the frames it writes, appended
//! to the connection's outgoing buffer.

use h2::Reason;

/// What every connection starts with (RFC 9113 §3.4).
pub(super) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub(super) const HEADER_LEN: usize = 9;
/// The largest frame payload either side may send until the peer's
/// SETTINGS say more; this client never asks for more.
pub(super) const DEFAULT_MAX_FRAME: usize = 16_384;
/// The largest window (and `SETTINGS_MAX_FRAME_SIZE`, RFC 9113 §6.5.2).
pub(super) const MAX_WINDOW: i64 = (1 << 31) - 1;
pub(super) const MAX_FRAME_LIMIT: u32 = (1 << 24) - 1;
/// A window before any SETTINGS or WINDOW_UPDATE.
pub(super) const DEFAULT_WINDOW: i64 = 65_535;

pub(super) const DATA: u8 = 0x0;
pub(super) const HEADERS: u8 = 0x1;
pub(super) const PRIORITY: u8 = 0x2;
pub(super) const RST_STREAM: u8 = 0x3;
pub(super) const SETTINGS: u8 = 0x4;
pub(super) const PUSH_PROMISE: u8 = 0x5;
pub(super) const PING: u8 = 0x6;
pub(super) const GOAWAY: u8 = 0x7;
pub(super) const WINDOW_UPDATE: u8 = 0x8;
pub(super) const CONTINUATION: u8 = 0x9;

pub(super) const END_STREAM: u8 = 0x1;
pub(super) const ACK: u8 = 0x1;
pub(super) const END_HEADERS: u8 = 0x4;
pub(super) const PADDED: u8 = 0x8;
pub(super) const PRIORITY_FLAG: u8 = 0x20;

pub(super) const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub(super) const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub(super) const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub(super) const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub(super) const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

/// A frame's 9-byte header.
#[derive(Debug, Clone, Copy)]
pub(super) struct Head {
    pub(super) len: usize,
    pub(super) kind: u8,
    pub(super) flags: u8,
    pub(super) stream: u32,
}

impl Head {
    /// The header `bytes` start with, if all nine are there.
    pub(super) fn parse(bytes: &[u8]) -> Option<Self> {
        let &[l0, l1, l2, kind, flags, s0, s1, s2, s3] = bytes.get(..HEADER_LEN)? else {
            return None;
        };
        Some(Self {
            len: usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2),
            kind,
            flags,
            // The reserved bit is ignored on receipt (RFC 9113 §4.1).
            stream: u32::from_be_bytes([s0, s1, s2, s3]) & 0x7fff_ffff,
        })
    }

    pub(super) fn has(self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Appends a frame header; `len` is at most the peer's frame size.
pub(super) fn head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    out.extend_from_slice(&head_bytes(len, kind, flags, stream));
}

/// A frame header, for a frame whose length is known once it is written.
pub(super) fn head_bytes(len: usize, kind: u8, flags: u8, stream: u32) -> [u8; HEADER_LEN] {
    let [_, l0, l1, l2] = u32::try_from(len).unwrap_or(MAX_FRAME_LIMIT).to_be_bytes();
    let [s0, s1, s2, s3] = stream.to_be_bytes();
    [l0, l1, l2, kind, flags, s0, s1, s2, s3]
}

/// The payload after a frame's padding length and before its padding
/// (RFC 9113 §6.1), or `None` when the padding is longer than the frame.
pub(super) fn unpadded(head: Head, payload: &[u8]) -> Option<&[u8]> {
    if !head.has(PADDED) {
        return Some(payload);
    }
    let (&pad, rest) = payload.split_first()?;
    rest.len()
        .checked_sub(usize::from(pad))
        .map(|len| &rest[..len])
}

pub(super) fn settings(out: &mut Vec<u8>, entries: &[(u16, u32)]) {
    head(out, entries.len() * 6, SETTINGS, 0, 0);
    for (id, value) in entries {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
}

pub(super) fn settings_ack(out: &mut Vec<u8>) {
    head(out, 0, SETTINGS, ACK, 0);
}

pub(super) fn window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    head(out, 4, WINDOW_UPDATE, 0, stream);
    out.extend_from_slice(&increment.to_be_bytes());
}

pub(super) fn rst_stream(out: &mut Vec<u8>, stream: u32, reason: Reason) {
    head(out, 4, RST_STREAM, 0, stream);
    out.extend_from_slice(&u32::from(reason).to_be_bytes());
}

pub(super) fn ping_ack(out: &mut Vec<u8>, payload: &[u8]) {
    head(out, payload.len(), PING, ACK, 0);
    out.extend_from_slice(payload);
}

/// This client accepts no streams, so the last one it processed is 0.
pub(super) fn goaway(out: &mut Vec<u8>, reason: Reason) {
    head(out, 8, GOAWAY, 0, 0);
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&u32::from(reason).to_be_bytes());
}

pub(super) fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let word: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(word))
}
