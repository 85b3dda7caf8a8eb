//! protogate: a REST-to-gRPC transcoding API gateway driven by protobuf
//! descriptor sets. See `docs/architecture.md` for the request flow and the
//! module layout.
//!
//! The public surface is small: [`Config`], [`Server`] (build, then serve),
//! [`check`] and the example services in [`demo`].

pub mod admin;
mod allocator;
mod boxed;
#[doc(hidden)]
pub mod codec_entry;
pub mod config;
pub mod demo;
pub mod deprecation;
pub mod discovery;
pub mod error;
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzz_logic;
mod gateway;
pub mod http_rule;
mod nesting;
pub mod observe;
pub mod openapi;
pub mod pb;
mod pem;
mod percent;
pub mod policy;
mod redis_client;
pub mod registry;
pub mod request_ids;
pub mod router;
pub mod server;
#[cfg(any(test, fuzzing))]
mod testing;
mod timers;
pub mod tls;
pub mod token;
pub mod transcode;
pub mod upstream;

pub use config::Config;
use registry::{BuildOptions, Catalog, CatalogBuilder, DescriptorSet, LoadError};
pub use server::{check_config, check_discovery, Server, StartError};

/// Validates descriptor sets without serving: the catalog they would build
/// (upstreams are not required), or every problem found.
pub fn check(sets: Vec<DescriptorSet>, expose_unannotated: bool) -> Result<Catalog, LoadError> {
    let upstreams = upstream::Upstreams::default();
    let options = BuildOptions {
        expose_unannotated,
        ..BuildOptions::default()
    };
    CatalogBuilder::new(options, &upstreams)
        .add_sets(sets)
        .build(0)
}
