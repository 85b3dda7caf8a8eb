//! Nesting a client or an upload controls: query paths, `fields` and
//! `X-Fields`, JSON bodies (whole, a body field with its update mask, a
//! request stream), upstream error details, and uploaded descriptor sets,
//! `.proto` sources and templates. Each is sent 100,000 levels deep: the
//! gateway refuses it with a 400 naming the limit of 100 levels (or, for
//! what an upstream sends, leaves it out) and keeps serving.

mod common;

use common::{assert_status, nested_wire, violations, Gateway};
use prost::Message as _;
use serde_json::{json, Value as Json};
use tonic::Code;

/// Far deeper than any stack takes one frame per level.
const LEVELS: usize = 100_000;

/// As deep as a query fits in a URI (64 KiB; the `d.` of each level is two
/// bytes): 100,000 levels of query are refused by the unit tests of the
/// request path (`transcode::request`).
const URI_LEVELS: usize = 32_000;

/// The one nesting limit, as the errors state it.
const LIMIT: &str = "the limit of 100 levels";

/// `d.d.….d.s`: a dotted path of `fields` fields into `Deep`.
fn dotted(fields: usize) -> String {
    let mut path = "d.".repeat(fields - 1);
    path.push('s');
    path
}

/// `{"d":{"d":…{"s":"bottom"}…}}`: `objects` JSON objects nested.
fn nested_json(objects: usize) -> String {
    let mut json = r#"{"d":"#.repeat(objects - 1);
    json.push_str(r#"{"s":"bottom"}"#);
    json.push_str(&"}".repeat(objects - 1));
    json
}

/// A 400 whose message names the limit.
fn assert_too_deep(status: u16, body: &Json) {
    assert_eq!(status, 400, "{body}");
    assert_status(body, Code::InvalidArgument, LIMIT);
}

/// The gateway still serves: a shallow request through the same route.
async fn assert_still_serving(gw: &Gateway) {
    assert_eq!(
        gw.get("/v1/deep?d.d.s=x").await,
        (200, json!({"d": {"d": {"s": "x"}}}))
    );
}

#[tokio::test]
async fn a_dotted_query_path_deeper_than_the_limit_is_refused() {
    let gw = Gateway::start().await;
    let (status, body) = gw.get(&format!("/v1/deep?{}=x", dotted(URI_LEVELS))).await;
    assert_too_deep(status, &body);
    let found = violations(&body);
    assert_eq!(found.len(), 1, "{body}");
    assert!(found[0].0.starts_with("d.d.d."), "{}", found[0].0);
    assert!(
        found[0].0.len() < 200,
        "the name is shortened: {}",
        found[0].0
    );
    assert_still_serving(&gw).await;
    // The limit itself: 100 fields are set, 101 are not.
    let (status, body) = gw.get(&format!("/v1/deep?{}=x", dotted(100))).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = gw.get(&format!("/v1/deep?{}=x", dotted(101))).await;
    assert_too_deep(status, &body);
}

#[tokio::test]
async fn a_fields_path_deeper_than_the_limit_is_refused() {
    let gw = Gateway::start().await;
    let (status, body) = gw
        .get(&format!("/v1/deep?fields={}", dotted(URI_LEVELS)))
        .await;
    assert_too_deep(status, &body);
    assert_eq!(violations(&body)[0].0, "fields");
    assert_still_serving(&gw).await;
    let (status, body) = gw
        .send(
            gw.client
                .get(gw.url("/v1/deep?d.s=x"))
                .header("x-fields", dotted(LEVELS)),
        )
        .await;
    assert_too_deep(status, &body);
    assert_still_serving(&gw).await;
}

#[tokio::test]
async fn a_json_body_deeper_than_the_limit_is_refused() {
    let gw = Gateway::start().await;
    let json_request = |method: reqwest::Method, path: &str, body: String| {
        gw.client
            .request(method, gw.url(path))
            .header("content-type", "application/json")
            .body(body)
    };
    // Whole body, and a body field whose update mask is filled from its keys.
    for (method, path) in [
        (reqwest::Method::POST, "/v1/deep"),
        (reqwest::Method::PATCH, "/v1/deep"),
    ] {
        let (status, body) = gw
            .send(json_request(method.clone(), path, nested_json(LEVELS)))
            .await;
        assert_too_deep(status, &body);
        // Arrays nest as deep, whatever the fields.
        let arrays = format!("{}{}", "[".repeat(LEVELS), "]".repeat(LEVELS));
        let (status, body) = gw
            .send(json_request(method, path, format!(r#"{{"s":{arrays}}}"#)))
            .await;
        assert_too_deep(status, &body);
    }
    assert_still_serving(&gw).await;
    // The limit itself: 100 objects are read, 101 are not.
    let (status, body) = gw
        .send(json_request(
            reqwest::Method::POST,
            "/v1/deep",
            nested_json(100),
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = gw
        .send(json_request(
            reqwest::Method::POST,
            "/v1/deep",
            nested_json(101),
        ))
        .await;
    assert_too_deep(status, &body);
}

#[tokio::test]
async fn a_request_stream_element_deeper_than_the_limit_is_refused() {
    let gw = Gateway::start().await;
    let element = format!(
        r#"{{"id":"o-1","x":{}{}}}"#,
        "[".repeat(LEVELS),
        "]".repeat(LEVELS)
    );
    let (status, body) = gw
        .send(
            gw.client
                .post(gw.url("/v1/orders:lookup"))
                .header("content-type", "application/x-ndjson")
                .body(element),
        )
        .await;
    assert_too_deep(status, &body);
    assert_still_serving(&gw).await;
}

#[tokio::test]
async fn an_upstream_error_detail_deeper_than_the_limit_is_left_out() {
    let gw = Gateway::start().await;
    let (status, body) = gw
        .post(
            "/v1/fail",
            json!({"code": 9, "message": "too deep to show", "detailDepth": LEVELS}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_status(&body, Code::FailedPrecondition, "too deep to show");
    // A type the gateway knows but cannot decode cannot be redacted: its
    // bytes (internal fields and all) never pass through.
    let details = body["details"].as_array().unwrap();
    assert_eq!(details.len(), 1, "only the request id: {body}");
    assert_still_serving(&gw).await;
}

// === uploads ===

/// PUTs a descriptor set (or `.proto` sources as multipart) on the admin
/// API, with an upstream for what it brings (never called).
async fn upload(gw: &Gateway, name: &str, content_type: &str, body: Vec<u8>) -> (u16, Json) {
    gw.send(
        gw.client
            .put(format!(
                "http://{}/admin/v1/descriptor-sets/{name}?upstream=http://127.0.0.1:9",
                gw.admin_addr
            ))
            .header("content-type", content_type)
            .body(body),
    )
    .await
}

/// One `.proto` file as a multipart upload.
async fn upload_proto(gw: &Gateway, name: &str, source: &str) -> (u16, Json) {
    let boundary = "protogate-nesting-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}.proto\"\r\n\
         Content-Type: text/plain\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(source.as_bytes());
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let content_type = format!("multipart/form-data; boundary={boundary}");
    upload(gw, name, &content_type, body).await
}

/// The problems a refused upload lists.
fn problems(body: &Json) -> String {
    violations(body)
        .into_iter()
        .map(|(_, description)| description)
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn a_descriptor_set_nested_deeper_than_the_limit_is_refused() {
    let gw = Gateway::start().await;
    // FileDescriptorSet { file: { name, message_type: M { name, nested_type: M { … } } } }
    let name_m = [0x0a, 0x01, b'M'];
    let messages = nested_wire(LEVELS, &name_m, 3, &name_m);
    let mut file = prost_types::FileDescriptorProto {
        name: Some("deep.proto".into()),
        ..Default::default()
    }
    .encode_to_vec();
    file.extend(nested_wire(1, &[], 4, &messages));
    let set = nested_wire(1, &[], 1, &file);
    let (status, body) = upload(&gw, "deep", "application/x-protobuf", set).await;
    assert_eq!(status, 400, "{body}");
    assert!(problems(&body).contains(LIMIT), "{body}");
    assert_still_serving(&gw).await;
}

#[tokio::test]
async fn proto_sources_nested_deeper_than_the_limit_are_refused() {
    let gw = Gateway::start().await;
    let messages = format!(
        "syntax = \"proto3\";\npackage deep;\n{}{}",
        "message M {\n".repeat(LEVELS),
        "}\n".repeat(LEVELS)
    );
    let (status, body) = upload_proto(&gw, "messages", &messages).await;
    assert_eq!(status, 400, "{body}");
    let found = problems(&body);
    assert!(found.contains(LIMIT), "{found}");
    assert!(found.contains("messages.proto:103:"), "{found}");
    // An option's message value nests the same way.
    let option = format!(
        "syntax = \"proto3\";\npackage deep;\nimport \"google/api/http.proto\";\n\
         message M {{ string s = 1; }}\noption (x) = {}{};\n",
        "{ a: ".repeat(LEVELS),
        "}".repeat(LEVELS)
    );
    let (status, body) = upload_proto(&gw, "option", &option).await;
    assert_eq!(status, 400, "{body}");
    assert!(problems(&body).contains(LIMIT), "{body}");
    assert_still_serving(&gw).await;
}

/// A service whose one route is `template` over a recursive request type.
fn deep_service(template: &str) -> String {
    format!(
        r#"syntax = "proto3";
package deep;
import "google/api/annotations.proto";
message D {{ D d = 1; string s = 2; }}
service S {{
  rpc Get(D) returns (D) {{ option (google.api.http) = {{ get: "{template}" }}; }}
}}"#
    )
}

#[tokio::test]
async fn templates_deeper_than_the_limit_are_refused() {
    let gw = Gateway::start().await;
    let variable = format!("/v1/{{{}}}", dotted(LEVELS));
    let segments = format!("/{}", ["x"; LEVELS].join("/"));
    for (template, what) in [(variable, "field path"), (segments, "segments")] {
        let (status, body) = upload_proto(&gw, "deep", &deep_service(&template)).await;
        assert_eq!(status, 400, "{body}");
        let found = problems(&body);
        assert!(found.contains(LIMIT), "{what}: {found}");
        assert!(found.contains("deep.S.Get"), "{what}: {found}");
        assert!(
            found.len() < 1000,
            "{what}: the template is not echoed whole"
        );
    }
    // The limit itself: a path of 100 fields, and 100 segments, are served.
    let variable = format!("/v1/{{{}}}", dotted(100));
    let segments = format!("/{}", ["x"; 100].join("/"));
    for (name, template) in [("variable", variable), ("segments", segments)] {
        let source = deep_service(&template).replace("package deep", &format!("package {name}"));
        let (status, body) = upload_proto(&gw, name, &source).await;
        assert_eq!(status, 201, "{body}");
    }
    assert_still_serving(&gw).await;
}

#[tokio::test]
async fn an_ignored_unknown_value_counts_toward_the_limit() {
    let gw = Gateway::start_with(|config| config.json.ignore_unknown_fields = true).await;
    let body_with_unknown = |arrays: usize| {
        let value = format!("{}{}", "[".repeat(arrays), "]".repeat(arrays));
        format!(r#"{{"unknown":{value},"s":"kept"}}"#)
    };
    let post = |body: String| {
        gw.client
            .post(gw.url("/v1/deep"))
            .header("content-type", "application/json")
            .body(body)
    };
    // The object and 99 arrays in it are 100 levels: the value is ignored.
    let (status, body) = gw.send(post(body_with_unknown(99))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"s": "kept"}));
    // One more is past the limit, ignored or not.
    let (status, body) = gw.send(post(body_with_unknown(100))).await;
    assert_too_deep(status, &body);
    assert_still_serving(&gw).await;
}
