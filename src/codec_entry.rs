//! Entry points to the hand-written JSON codecs, for the differential
//! property tests (`tests/codec_properties.rs`) and fuzz targets: the reply
//! printer and the request parser of [`JsonPlans`], without a route around
//! them. Not part of the API.

use crate::transcode::{Declined, JsonPlans, MaskTree, TranscodeOptions};

/// The printer's JSON for `reply`, the wire bytes of a message of plan
/// `root`, with the configured omissions `omit` and the client's `keep` in
/// force; `None` when the printer declines (the gateway then decodes the
/// reply and prints it with prost-reflect).
pub fn print_reply(
    plans: &JsonPlans,
    root: usize,
    reply: &[u8],
    (omit, keep): (Option<&MaskTree>, Option<&MaskTree>),
    options: &TranscodeOptions,
) -> Option<Vec<u8>> {
    let masks = crate::transcode::Masks { omit, keep };
    plans.print(root, reply, None, masks, options).ok()
}

/// The parser's wire bytes for `json`, a request body for a message of plan
/// `root`.
pub fn parse_request(
    plans: &JsonPlans,
    root: usize,
    json: &[u8],
    options: &TranscodeOptions,
) -> Result<Vec<u8>, Declined> {
    let mut out = Vec::with_capacity(json.len());
    plans.encode_json(root, None, json, options, &mut out)?;
    Ok(out)
}

/// The scanner's wire bytes for `json` (the way [`parse_request`] reads
/// the bodies it covers); `None` when it leaves the body to the serde
/// reading.
pub fn scan_request(
    plans: &JsonPlans,
    root: usize,
    json: &[u8],
    options: &TranscodeOptions,
) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(json.len());
    plans.scan_json(root, json, options, &mut out).ok()?;
    Some(out)
}

/// The serde reading's wire bytes for `json`, or why it declined (the way
/// [`parse_request`] reads what the scanner leaves).
pub fn read_request(
    plans: &JsonPlans,
    root: usize,
    json: &[u8],
    options: &TranscodeOptions,
) -> Result<Vec<u8>, Declined> {
    let mut out = Vec::with_capacity(json.len());
    plans.read_json(root, json, options, &mut out)?;
    Ok(out)
}
