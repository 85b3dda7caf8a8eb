//! The admin upload path: a descriptor set, or `.proto` sources (one file,
//! tar, zip or multipart) compiled into one, then built into a catalog.

use bytes::Bytes;

use super::{fixture, ready};
use crate::{
    config::Config,
    http_rule::template::PathTemplate,
    registry::{CatalogBuilder, DescriptorSet, ProtoSources},
    upstream::Upstreams,
};

/// Unpacked sources beyond this are refused (the admin API's default is
/// larger; the fuzzer learns nothing more from bigger files).
const LIMIT: usize = 64 << 10;

/// The boundary of the fuzzer's multipart bodies.
pub(super) const MULTIPART: &str = "multipart/form-data; boundary=fuzz";

/// How an upload arrives, as the admin API tells it by content type.
#[derive(Debug, Clone, Copy)]
pub(super) enum Upload {
    DescriptorSet,
    Proto,
    Tar,
    Zip,
    Multipart,
}

/// An upload is refused with a reason or built into a catalog whose routes'
/// templates print as they parse; it never panics or hangs.
pub(super) fn upload(kind: Upload, payload: &[u8]) {
    let compiled = match kind {
        Upload::DescriptorSet => Ok(Bytes::copy_from_slice(payload)),
        Upload::Proto => {
            let mut sources = ProtoSources::new(LIMIT);
            sources
                .insert("fuzz.proto", payload.to_vec())
                .and_then(|()| sources.compile())
        }
        Upload::Tar => ProtoSources::from_tar(payload, LIMIT).and_then(|s| s.compile()),
        Upload::Zip => ProtoSources::from_zip(payload, LIMIT).and_then(|s| s.compile()),
        Upload::Multipart => ready(ProtoSources::from_multipart(
            MULTIPART,
            Bytes::copy_from_slice(payload),
            LIMIT,
        ))
        .and_then(|s| s.compile()),
    };
    let Ok(bytes) = compiled else {
        return;
    };
    let set = DescriptorSet {
        name: "fuzz".into(),
        bytes,
    };
    let options = fixture::build_options(&Config::default());
    let Ok(catalog) = CatalogBuilder::new(options, &Upstreams::default())
        .add_sets([set])
        .build(1)
    else {
        return;
    };
    for route in catalog.routes() {
        let printed = route.template.to_string();
        assert_eq!(
            PathTemplate::parse(&printed).as_ref(),
            Ok(&route.template),
            "{}",
            route.label
        );
    }
}
