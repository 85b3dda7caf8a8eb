//! Loading descriptor sets: the committed sets are fresh, every malformed
//! binding is refused naming the method, and the CLI's `check` and `serve`.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use bytes::Bytes;
use common::process::{free_port, protogate, serve_orders_v1, wait_for, Child, MANIFEST};
use protogate::registry::DescriptorSet;

/// Compiles one proto source (with the vendored google protos on the path).
fn compile(name: &str, source: &str) -> DescriptorSet {
    compile_at(name, &format!("{name}.proto"), source)
}

/// Compiles one proto source as the file `path`, into the set `name`.
fn compile_at(name: &str, path: &str, source: &str) -> DescriptorSet {
    let dir = std::env::temp_dir().join(format!("protogate-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(dir.join(path).parent().unwrap()).unwrap();
    std::fs::write(dir.join(path), source).unwrap();
    let mut compiler =
        protox::Compiler::new([dir.clone(), Path::new(MANIFEST).join("protos")]).unwrap();
    compiler.include_imports(true);
    compiler.open_file(path).unwrap();
    let bytes = compiler.encode_file_descriptor_set();
    std::fs::remove_dir_all(&dir).ok();
    DescriptorSet {
        name: name.into(),
        bytes: Bytes::from(bytes),
    }
}

/// A proto with one service `t.S` whose methods are `rpcs`.
fn service(name: &str, rpcs: &str) -> DescriptorSet {
    compile(
        name,
        &format!(
            r#"syntax = "proto3";
package t.{name};
import "google/api/annotations.proto";
message Inner {{ string id = 1; }}
message Req {{ string id = 1; repeated string tags = 2; Inner inner = 3; int32 n = 4; }}
message Res {{ string id = 1; }}
service S {{ {rpcs} }}"#
        ),
    )
}

fn problems(sets: Vec<DescriptorSet>) -> Vec<String> {
    match protogate::check(sets, false) {
        Ok(_) => Vec::new(),
        Err(err) => err.problems().iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn committed_descriptor_sets_match_the_protos() {
    for (name, committed) in [
        ("acme.orders.v1", "descriptor-sets/acme.orders.v1.binpb"),
        ("acme.orders.v2", "descriptor-sets/acme.orders.v2.binpb"),
        ("acme.users.v1", "descriptor-sets/acme.users.v1.binpb"),
        ("acme.shop.v1", "examples/shop/shop.binpb"),
    ] {
        let built =
            std::fs::read(Path::new(env!("OUT_DIR")).join(format!("{name}.binpb"))).unwrap();
        let committed_path = Path::new(MANIFEST).join(committed);
        if std::env::var_os("PROTOGATE_BLESS").is_some() {
            std::fs::write(&committed_path, &built).unwrap();
        }
        let committed_bytes = std::fs::read(&committed_path).unwrap();
        assert!(
            built == committed_bytes,
            "{committed} is stale against its proto: run `PROTOGATE_BLESS=1 cargo test --test catalog`"
        );
    }
}

#[test]
fn example_sets_build_a_catalog_with_every_binding() {
    let catalog = protogate::check(common::example_sets(), false).unwrap();
    let labels: Vec<&str> = catalog.routes().iter().map(|r| &*r.label).collect();
    for expected in [
        "GET /v1/orders/{id}",
        "GET /v1/customers/{customer_id}/orders/{id}",
        "PATCH /v1/orders/{order.id}",
        "POST /v1/orders/{id}:cancel",
        "GET /v2/orders/{id}",
        "GET /v1/{name=tenants/*/users/*}",
    ] {
        assert!(
            labels.contains(&expected),
            "{expected} missing from {labels:?}"
        );
    }
}

#[test]
fn each_malformed_binding_is_refused_naming_the_method() {
    let cases = [
        (
            r#"rpc M(Req) returns (Res) { option (google.api.http) = { get: "/v1/{id" }; }"#,
            "template `/v1/{id` col",
        ),
        (
            r#"rpc M(Req) returns (Res) { option (google.api.http) = { get: "v1/x" }; }"#,
            "template `v1/x` col 1",
        ),
        (
            r#"rpc M(Req) returns (Res) { option (google.api.http) = { get: "/v1/**/x" }; }"#,
            "template `/v1/**/x` col",
        ),
        (
            r#"rpc M(Req) returns (Res) { option (google.api.http) = { get: "/v1/{nope}" }; }"#,
            "variable `nope`: no field `nope` in t.c.Req",
        ),
        (
            r#"rpc M(Req) returns (Res) { option (google.api.http) = { get: "/v1/{tags}" }; }"#,
            "variable `tags` names a repeated field",
        ),
        (
            r#"rpc M(Req) returns (Res) { option (google.api.http) = { get: "/v1/{inner}" }; }"#,
            "variable `inner` names a message field",
        ),
        (
            r#"rpc M(Req) returns (Res) { option (google.api.http) = { get: "/v1/{id}/{id}" }; }"#,
            "template `/v1/{id}/{id}`",
        ),
        (
            r#"rpc M(Req) returns (Res) { option (google.api.http) = { post: "/v1/x" body: "nope" }; }"#,
            "body field `nope` not found in t.c.Req",
        ),
        (
            r#"rpc M(Req) returns (Res) { option (google.api.http) = { get: "/v1/x" response_body: "nope" }; }"#,
            "response_body field `nope` not found in t.c.Res",
        ),
        (
            r#"rpc M(Req) returns (Res) { option (google.api.http) = { get: "/v1/x" additional_bindings { get: "/v1/y" additional_bindings { get: "/v1/z" } } }; }"#,
            "additional_bindings[0] has nested additional_bindings",
        ),
        (
            r#"rpc M(Req) returns (Res) { option (google.api.http) = { custom: { kind: "BAD KIND" path: "/v1/x" } }; }"#,
            "custom kind `BAD KIND`",
        ),
    ];
    for (rpc, reason) in cases {
        let found = problems(vec![service("c", rpc)]);
        assert_eq!(found.len(), 1, "{rpc}: {found:?}");
        assert!(found[0].starts_with("set `c`: t.c.S.M: "), "{found:?}");
        assert!(
            found[0].contains(reason),
            "{rpc}\n  expected: {reason}\n  got: {}",
            found[0]
        );
    }
}

#[test]
fn two_methods_claiming_one_route_are_refused_naming_both() {
    let found = problems(vec![service(
        "d",
        r#"rpc A(Req) returns (Res) { option (google.api.http) = { get: "/v1/things/{id}" }; }
           rpc B(Req) returns (Res) { option (google.api.http) = { get: "/v1/things/{n}" }; }"#,
    )]);
    assert_eq!(found, ["set `d`: t.d.S.B: route `GET /v1/things/{n}` conflicts with `GET /v1/things/{id}` of t.d.S.A"]);
    // The same template under another HTTP method or verb is not a conflict.
    let found = problems(vec![service(
        "e",
        r#"rpc A(Req) returns (Res) { option (google.api.http) = { get: "/v1/things/{id}" }; }
           rpc B(Req) returns (Res) { option (google.api.http) = { post: "/v1/things/{id}" additional_bindings { get: "/v1/things/{id}:x" } }; }"#,
    )]);
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn conflicts_across_sets_and_every_problem_are_reported_at_once() {
    let first = service(
        "f",
        r#"rpc A(Req) returns (Res) { option (google.api.http) = { get: "/v1/shared" }; }"#,
    );
    let second = service(
        "g",
        r#"rpc B(Req) returns (Res) { option (google.api.http) = { get: "/v1/shared" }; }
           rpc C(Req) returns (Res) { option (google.api.http) = { get: "/v1/{bad" }; }"#,
    );
    let found = problems(vec![first, second]);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found.iter().any(|p| p
        .contains("t.g.S.B: route `GET /v1/shared` conflicts with `GET /v1/shared` of t.f.S.A")));
    assert!(found
        .iter()
        .any(|p| p.contains("t.g.S.C: template `/v1/{bad`")));
}

#[test]
fn garbage_bytes_are_not_a_descriptor_set() {
    let found = problems(vec![DescriptorSet {
        name: "junk".into(),
        bytes: Bytes::from_static(b"\xff\xff\xff"),
    }]);
    assert_eq!(found.len(), 1);
    assert!(
        found[0].starts_with("set `junk`: not a FileDescriptorSet"),
        "{found:?}"
    );
}

/// prost-reflect panicked on a syntax it does not know (found by the upload
/// fuzz target): the file is refused by name before it decodes the set.
#[test]
fn an_unknown_syntax_is_refused_naming_the_file() {
    let file = prost_types::FileDescriptorProto {
        name: Some("x.proto".into()),
        syntax: Some("editions".into()),
        ..Default::default()
    };
    let set = prost_types::FileDescriptorSet { file: vec![file] };
    let found = problems(vec![DescriptorSet {
        name: "new".into(),
        bytes: Bytes::from(prost::Message::encode_to_vec(&set)),
    }]);
    assert_eq!(found, ["set `new`: x.proto: unknown syntax `editions`"]);
}

/// prost-reflect took a map entry without its value field and panicked
/// when the catalog asked for it (found by the upload fuzz target): the set
/// is refused naming the entry.
#[test]
fn a_map_entry_without_its_value_field_is_refused_naming_it() {
    use prost_types::{
        field_descriptor_proto::{Label, Type},
        DescriptorProto, FieldDescriptorProto, FileDescriptorProto, MessageOptions,
    };
    let field = |name: &str, number, label: Label, kind: Type, type_name: Option<&str>| {
        FieldDescriptorProto {
            name: Some(name.into()),
            json_name: Some(name.into()),
            number: Some(number),
            label: Some(label as i32),
            r#type: Some(kind as i32),
            type_name: type_name.map(Into::into),
            ..Default::default()
        }
    };
    let entry = DescriptorProto {
        name: Some("LabelsEntry".into()),
        field: vec![field("key", 1, Label::Optional, Type::String, None)],
        options: Some(MessageOptions {
            map_entry: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    let message = DescriptorProto {
        name: Some("M".into()),
        field: vec![field(
            "labels",
            1,
            Label::Repeated,
            Type::Message,
            Some(".x.M.LabelsEntry"),
        )],
        nested_type: vec![entry],
        ..Default::default()
    };
    let file = FileDescriptorProto {
        name: Some("x.proto".into()),
        package: Some("x".into()),
        syntax: Some("proto3".into()),
        message_type: vec![message],
        ..Default::default()
    };
    let set = prost_types::FileDescriptorSet { file: vec![file] };
    let found = problems(vec![DescriptorSet {
        name: "new".into(),
        bytes: Bytes::from(prost::Message::encode_to_vec(&set)),
    }]);
    assert_eq!(
        found,
        ["set `new`: x.proto: map entry `LabelsEntry` lacks its key (1) or value (2) field"]
    );
}

#[tokio::test]
async fn a_service_without_upstream_is_refused_at_start() {
    let config = protogate::Config::default();
    let err = protogate::Server::new(&config, common::example_sets())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("service `acme.orders.v1.OrderService` has no upstream"),
        "{err}"
    );
}

// === the command line ===

#[test]
fn check_prints_the_routes() {
    let output = protogate()
        .args(["check", "descriptor-sets/acme.orders.v1.binpb"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("POST /v1/orders/{id}:cancel"), "{stdout}");
    assert!(
        stdout.contains("-> /acme.orders.v1.OrderService/CancelOrder"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 12, "{stdout}");
}

#[test]
fn check_refuses_a_bad_set_with_a_non_zero_exit() {
    let dir = std::env::temp_dir().join(format!("protogate-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.binpb");
    let set = service(
        "h",
        r#"rpc A(Req) returns (Res) { option (google.api.http) = { get: "/v1/{nope}" }; }"#,
    );
    std::fs::write(&path, &set.bytes).unwrap();
    let output = protogate().arg("check").arg(&path).output().unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("t.h.S.A: template `/v1/{nope}`: variable `nope`"),
        "{stderr}"
    );
}

#[test]
fn serve_refuses_an_unknown_config_key_naming_it_and_its_line() {
    let dir = std::env::temp_dir().join(format!("protogate-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("protogate.yaml");
    std::fs::write(&path, "listen: 127.0.0.1:0\nlimits:\n  max_body: 10\n").unwrap();
    let output = protogate()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("unknown field `max_body`") && stderr.contains("line 3"),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_runs_from_flags_alone() {
    let backend = common::Backend::start().await;
    let port = free_port();
    let _child = Child(
        serve_orders_v1(&backend.url(), "127.0.0.1", port)
            .spawn()
            .unwrap(),
    );
    let response = wait_for(&format!("http://127.0.0.1:{port}/v1/orders/o-1")).await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["id"], "o-1");
}

#[tokio::test]
async fn serve_from_a_config_file_with_flags_overriding_it() {
    let backend = common::Backend::start().await;
    let port = free_port();
    let dir: PathBuf = std::env::temp_dir().join(format!("protogate-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("protogate.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:1\ndescriptors:\n  dir: {MANIFEST}/descriptor-sets\nupstreams:\n  - pattern: acme\n    url: http://127.0.0.1:1\n    timeout: 2s\n"
        ),
    )
    .unwrap();
    let _child = Child(
        protogate()
            .args(["serve", "--config"])
            .arg(&path)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", "127.0.0.1:0"])
            .arg("--upstream")
            .arg(format!("acme={}", backend.url()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let response = wait_for(&format!(
        "http://127.0.0.1:{port}/v1/tenants/acme/users/alice"
    ))
    .await;
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn at_start_a_set_redefining_another_sets_file_is_refused_by_name_and_the_others_load() {
    let backend = common::Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The orders file of acme.orders.v1 (given with --descriptor-set), with other content.
    let evil = compile_at(
        "evil",
        "acme/orders/v1/orders.proto",
        "syntax = \"proto3\";\npackage acme.orders.v1;\nmessage Order { int64 other = 1; }",
    );
    std::fs::write(dir.path().join("evil.binpb"), &evil.bytes).unwrap();
    std::fs::copy(
        Path::new(MANIFEST).join("descriptor-sets/acme.users.v1.binpb"),
        dir.path().join("acme.users.v1.binpb"),
    )
    .unwrap();
    let refusal = "set `evil`: file `acme/orders/v1/orders.proto` differs from the file of that name in set `acme.orders.v1`";

    let port = free_port();
    let child = Child(
        protogate()
            .args([
                "serve",
                "--descriptor-set",
                "descriptor-sets/acme.orders.v1.binpb",
                "--descriptors",
            ])
            .arg(dir.path())
            .arg("--upstream")
            .arg(format!("acme={}", backend.url()))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    for path in ["/v1/orders/o-1", "/v1/tenants/acme/users/alice"] {
        let response = wait_for(&format!("http://127.0.0.1:{port}{path}")).await;
        assert_eq!(response.status(), 200, "{path}");
    }
    let log = child.stop();
    assert!(
        log.lines()
            .any(|l| l.contains("descriptor set refused") && l.contains(refusal)),
        "{log}"
    );

    let output = protogate()
        .args(["check", "descriptor-sets/acme.orders.v1.binpb"])
        .arg(dir.path().join("evil.binpb"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains(refusal), "{stderr}");
}
