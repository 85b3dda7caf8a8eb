//! Compiles `protos/` with protox (no system `protoc`):
//! * one `FileDescriptorSet` per example API (imports and comments included) into
//!   `OUT_DIR/<package>.binpb`, which a test compares with the committed copies in
//!   `descriptor-sets/`;
//! * `OUT_DIR/base.binpb`: google.api, google.rpc, the well-known types and protogate's
//!   own options, the types every catalog knows (error details, `Any` payloads, HTTP
//!   annotations, policies), whatever copies of them the loaded sets carry;
//! * prost messages and tonic clients/servers for all of them, reached through `OUT_DIR/pb.rs`;
//! * the shop example (`examples/shop/`): `OUT_DIR/acme.shop.v1.binpb`, which a test
//!   compares with the committed `examples/shop/shop.binpb`, and its server in
//!   `OUT_DIR/shop/`, for the example backend alone (the library does not contain it).

use std::{env, error::Error, fs, path::PathBuf};

/// The example APIs: (descriptor set name, root proto file).
const APIS: &[(&str, &str)] = &[
    ("acme.orders.v1", "acme/orders/v1/orders.proto"),
    ("acme.orders.v2", "acme/orders/v2/orders.proto"),
    ("acme.users.v1", "acme/users/v1/users.proto"),
    ("protogate.testing.v1", "protogate/testing/v1/testing.proto"),
];

/// Types the gateway itself relies on, whatever the loaded sets import.
const BASE: &[&str] = &[
    "google/api/annotations.proto",
    "google/api/field_behavior.proto",
    "google/api/httpbody.proto",
    "google/rpc/code.proto",
    "google/rpc/error_details.proto",
    "google/rpc/status.proto",
    "protogate/options.proto",
];

/// The well-known types: in the base too, so that sets compiled by other
/// compilers or versions never disagree with one another over them.
const WELL_KNOWN: &[&str] = &[
    "google/protobuf/any.proto",
    "google/protobuf/api.proto",
    "google/protobuf/descriptor.proto",
    "google/protobuf/duration.proto",
    "google/protobuf/empty.proto",
    "google/protobuf/field_mask.proto",
    "google/protobuf/source_context.proto",
    "google/protobuf/struct.proto",
    "google/protobuf/timestamp.proto",
    "google/protobuf/type.proto",
    "google/protobuf/wrappers.proto",
];

/// The shop example: its folder, as a team's own repository would hold it.
const SHOP: &str = "examples/shop";

fn compile(files: &[&str]) -> Result<protox::Compiler, Box<dyn Error>> {
    compile_in(&["protos"], files, false)
}

/// `source_info`: keep the comments (the example APIs' OpenAPI descriptions).
fn compile_in(
    includes: &[&str],
    files: &[&str],
    source_info: bool,
) -> Result<protox::Compiler, Box<dyn Error>> {
    let mut compiler = protox::Compiler::new(includes)?;
    compiler
        .include_imports(true)
        .include_source_info(source_info);
    compiler.open_files(files)?;
    Ok(compiler)
}

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=protos");
    println!("cargo:rerun-if-changed={SHOP}/shop.proto");
    let out = PathBuf::from(env::var("OUT_DIR")?);

    for (name, root) in APIS {
        // Encoded by protox itself: prost_types would drop the custom options
        // (google.api.http) that live in unknown fields.
        let set = compile_in(&["protos"], &[root], true)?.encode_file_descriptor_set();
        fs::write(out.join(format!("{name}.binpb")), set)?;
    }
    fs::write(
        out.join("base.binpb"),
        compile(&[BASE, WELL_KNOWN].concat())?.encode_file_descriptor_set(),
    )?;

    let all: Vec<&str> = BASE
        .iter()
        .copied()
        .chain(APIS.iter().map(|(_, root)| *root))
        .collect();
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .include_file("pb.rs")
        .compile_fds(compile(&all)?.file_descriptor_set())?;

    let shop = compile_in(&[SHOP, "protos"], &["shop.proto"], false)?;
    fs::write(
        out.join("acme.shop.v1.binpb"),
        shop.encode_file_descriptor_set(),
    )?;
    // The shop's own file only: its messages use no imported type but
    // google.protobuf.Empty (extern), and google.api is the library's.
    let mut files = shop.file_descriptor_set();
    files.file.retain(|file| file.name() == "shop.proto");
    let shop_out = out.join("shop");
    fs::create_dir_all(&shop_out)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .out_dir(shop_out)
        .include_file("mod.rs")
        .compile_fds(files)?;
    Ok(())
}
