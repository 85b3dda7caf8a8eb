//! The published API: `/openapi.json` and `/openapi.yaml` (valid OpenAPI
//! 3.1, per generation, `ETag`, `?package=`), `protogate openapi`, what the
//! document says about each route, the README tour checked against it, and
//! the `/docs` page in a real headless Chromium.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use common::{
    browser::{failed, Browser},
    process::{protogate, readme_block, wait_for, Child, Lines, MANIFEST},
    tokens, upstream, Backend, Gateway,
};
use protogate::{config::DocumentPolicy, registry::DescriptorSet, Config};
use serde_json::{json, Value as Json};

/// The official OpenAPI 3.1 schema (vendored: see tests/fixtures/openapi/README.md).
const OPENAPI_SCHEMA: &str = include_str!("fixtures/openapi/schema-3.1.json");

/// Every way `document` breaks the OpenAPI 3.1 schema, worded.
fn openapi_violations(document: &Json) -> Vec<String> {
    let schema: Json = serde_json::from_str(OPENAPI_SCHEMA).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the vendored schema compiles");
    validator
        .iter_errors(document)
        .map(|err| format!("{}: {err}", err.instance_path()))
        .collect()
}

/// Where `instance` breaks `schema`, a schema of `document` (its `$ref`s
/// point into the document's components).
fn schema_violations(document: &Json, schema: &Json, instance: &Json) -> Vec<String> {
    let mut root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": document["components"],
    });
    // The schema's own keywords at the root, beside the components.
    match schema {
        Json::Object(keywords) => {
            for (key, value) in keywords {
                root[key] = value.clone();
            }
        }
        Json::Bool(true) => {}
        other => panic!("not a schema object: {other}"),
    }
    let validator = jsonschema::validator_for(&root)
        .unwrap_or_else(|err| panic!("schema does not compile ({err}): {schema}"));
    validator
        .iter_errors(instance)
        .map(|err| format!("{}: {err}", err.instance_path()))
        .collect()
}

async fn document(gateway: &Gateway, query: &str) -> Json {
    let response = gateway
        .client
        .get(gateway.url(&format!("/openapi.json{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{query}");
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.unwrap()
}

/// The operation at `path` and `method` of `document`.
fn operation<'d>(document: &'d Json, path: &str, method: &str) -> &'d Json {
    let operation = &document["paths"][path][method];
    assert!(
        operation.is_object(),
        "no {method} {path} in {}",
        document["paths"]
    );
    operation
}

fn parameter<'o>(operation: &'o Json, name: &str) -> Option<&'o Json> {
    operation["parameters"]
        .as_array()?
        .iter()
        .find(|parameter| parameter["name"] == name)
}

fn component<'d>(document: &'d Json, name: &str) -> &'d Json {
    let schema = &document["components"]["schemas"][name];
    assert!(schema.is_object(), "no component {name}");
    schema
}

// === valid ===

#[tokio::test]
async fn the_documents_of_the_test_catalogs_are_valid_openapi_3_1() {
    let gateway = Gateway::start_with(hide_get_order_unit_price).await;
    let whole = document(&gateway, "").await;
    assert_eq!(whole["openapi"], "3.1.0");
    assert_eq!(openapi_violations(&whole), Vec::<String>::new());
    for package in [
        "acme.orders.v1",
        "acme.orders.v2",
        "acme.users.v1",
        "protogate.testing.v1",
    ] {
        let one = document(&gateway, &format!("?package={package}")).await;
        assert_eq!(openapi_violations(&one), Vec::<String>::new(), "{package}");
    }
    // The same document in YAML.
    let yaml = gateway
        .client
        .get(gateway.url("/openapi.yaml"))
        .send()
        .await
        .unwrap();
    assert_eq!(yaml.status(), 200);
    assert_eq!(yaml.headers()["content-type"], "application/yaml");
    let yaml: Json = serde_yaml_ng::from_str(&yaml.text().await.unwrap()).unwrap();
    assert_eq!(yaml, whole);
}

#[tokio::test]
async fn the_demos_document_is_valid_openapi_3_1() {
    let demo = Demo::start().await;
    let document: Json = reqwest::get(demo.url("/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(openapi_violations(&document), Vec::<String>::new());
    // Security, deprecation and quotas are those of the demo's config.
    assert!(document["components"]["securitySchemes"]["bearerAuth"].is_object());
}

/// A document that breaks the schema is caught: the check is not vacuous.
#[test]
fn the_validity_check_catches_a_broken_document() {
    let broken = json!({ "openapi": "3.0.0", "info": { "title": "x" }, "paths": { "v1": {} } });
    let violations = openapi_violations(&broken);
    assert!(violations.len() >= 2, "{violations:?}");
}

// === what it says ===

#[tokio::test]
async fn operations_say_what_the_gateway_does_with_each_route() {
    let gateway = Gateway::start_with(hide_get_order_unit_price).await;
    let document = document(&gateway, "").await;

    // Unique, stable ids: the package joins the service name where two
    // versions share it; extra bindings get a suffix; a tag per service.
    let get = operation(&document, "/v1/orders/{id}", "get");
    assert_eq!(get["operationId"], "acme_orders_v1_OrderService_GetOrder");
    assert_eq!(get["tags"], json!(["acme.orders.v1.OrderService"]));
    let extra = operation(&document, "/v1/customers/{customer_id}/orders/{id}", "get");
    assert_eq!(
        extra["operationId"],
        "acme_orders_v1_OrderService_GetOrder_1"
    );
    let user = operation(&document, "/v1/{name}", "get");
    assert_eq!(user["operationId"], "UserService_GetUser");
    // A multi-segment capture is described by its template.
    let name = parameter(user, "name").unwrap()["description"]
        .as_str()
        .unwrap();
    assert!(name.contains("`tenants/*/users/*`"), "{name}");

    // Path parameters; the reply less the configured response mask.
    let id = parameter(get, "id").unwrap();
    assert_eq!(id["in"], "path");
    assert_eq!(id["required"], true);
    let reply = &get["responses"]["200"]["content"]["application/json"]["schema"];
    let item = &reply["properties"]["items"]["items"];
    assert!(item["properties"]["sku"].is_object(), "{reply}");
    assert!(
        item["properties"].get("unitPriceCents").is_none(),
        "{reply}"
    );
    // Elsewhere the line item keeps its price, as a 64-bit string.
    let line_item = component(&document, "acme.orders.v1.LineItem");
    assert_eq!(
        line_item["properties"]["unitPriceCents"]["type"], "string",
        "{line_item}"
    );
    // Internal fields never appear.
    let order = component(&document, "acme.orders.v1.Order");
    assert!(order["properties"]["customerId"].is_object(), "{order}");
    for internal in ["internalNote", "costCents", "internal_note"] {
        assert!(order["properties"].get(internal).is_none(), "{order}");
    }
    // Every error is a google.rpc.Status.
    assert_eq!(
        get["responses"]["default"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/google.rpc.Status"
    );

    // Query parameters: every field not bound elsewhere, by JSON name,
    // enums by name; `fields` and `X-Fields` for partial replies.
    let list = operation(&document, "/v1/orders", "get");
    let status = parameter(list, "status").unwrap();
    assert_eq!(status["in"], "query");
    let status_enum = status["schema"]["$ref"].as_str().unwrap();
    let status_enum = status_enum.rsplit('/').next().unwrap();
    assert!(component(&document, status_enum)["enum"]
        .as_array()
        .unwrap()
        .contains(&json!("PAID")));
    assert!(parameter(list, "pageSize").is_some());
    assert!(parameter(list, "fields").is_some());
    assert_eq!(parameter(list, "X-Fields").unwrap()["in"], "header");
    assert!(list.get("requestBody").is_none());

    // body: "order": the field's type; no query parameter for it.
    let create = operation(&document, "/v1/orders", "post");
    assert_eq!(
        create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/acme.orders.v1.Order"
    );
    assert!(parameter(create, "order").is_none());

    // body: "*" with a path variable: the message less that field; no
    // query parameters but `fields`.
    let cancel = operation(&document, "/v1/orders/{id}:cancel", "post");
    let body = &cancel["requestBody"]["content"]["application/json"]["schema"];
    assert!(body["properties"]["reason"].is_object(), "{body}");
    assert!(body["properties"].get("id").is_none(), "{body}");
    assert_eq!(
        cancel["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["in"] == "query" && p["name"] != "fields")
            .count(),
        0
    );

    // Server streaming: NDJSON, SSE and a JSON array, in the envelope.
    let watch = operation(&document, "/v1/orders:watch", "get");
    let content = &watch["responses"]["200"]["content"];
    let envelope = &content["application/x-ndjson"]["schema"];
    assert_eq!(envelope["maxProperties"], 1);
    assert!(envelope["properties"]["result"].is_object());
    assert_eq!(
        envelope["properties"]["error"]["$ref"],
        "#/components/schemas/google.rpc.Status"
    );
    assert!(content["text/event-stream"].is_object());
    assert_eq!(content["application/json"]["schema"]["type"], "array");

    // Client streaming: NDJSON or one array of the bound field's type.
    let import = operation(&document, "/v1/orders:import", "post");
    let content = &import["requestBody"]["content"];
    assert_eq!(
        content["application/x-ndjson"]["schema"]["$ref"],
        "#/components/schemas/acme.orders.v1.Order"
    );
    assert_eq!(content["application/json"]["schema"]["type"], "array");

    // google.api.HttpBody: any content type, both ways.
    let upload = operation(&document, "/v1/orders:importCsv", "post");
    assert!(upload["requestBody"]["content"]["*/*"].is_object());
    let export = operation(&document, "/v1/orders:export", "get");
    assert!(export["responses"]["200"]["content"]["*/*"].is_object());
}

#[tokio::test]
async fn schemas_follow_the_json_mapping_of_the_well_known_types_maps_and_oneofs() {
    let gateway = Gateway::start().await;
    let document = document(&gateway, "?package=protogate.testing.v1").await;
    let echo = component(&document, "protogate.testing.v1.EchoMessage");
    let properties = &echo["properties"];
    let field = |name: &str| {
        let schema = &properties[name];
        assert!(schema.is_object(), "no {name} in {echo}");
        schema
    };
    assert_eq!(field("int64Value")["type"], "string");
    assert_eq!(field("bytesValue")["contentEncoding"], "base64");
    assert_eq!(field("timestamp")["format"], "date-time");
    assert_eq!(field("labels")["type"], "object");
    assert!(field("labels")["additionalProperties"].is_object());
    // Internal fields are absent, oneof members mutually exclusive.
    assert!(properties.get("internalValue").is_none(), "{echo}");
    let exclusive = echo["not"]["anyOf"].as_array().expect("a oneof");
    assert!(!exclusive.is_empty());
    // REQUIRED is required, OUTPUT_ONLY read-only.
    let resource = component(&document, "protogate.testing.v1.Resource");
    assert_eq!(resource["required"], json!(["title"]), "{resource}");
    assert_eq!(
        resource["properties"]["etag"]["readOnly"], true,
        "{resource}"
    );
    assert!(resource["properties"].get("secret").is_none(), "{resource}");
}

/// Deprecated fields, recursive types (a `$ref` to itself, and query
/// parameters that stop where the type repeats), comments as descriptions.
#[test]
fn recursive_types_and_deprecated_fields_of_an_uploaded_proto() {
    let dir = tempfile::tempdir().unwrap();
    let proto = dir.path().join("tree.proto");
    std::fs::write(
        &proto,
        r#"syntax = "proto3";
package acme.tree.v1;
import "google/api/annotations.proto";

// Trees of nodes.
service TreeService {
  // Returns one node.
  //
  // With its children.
  rpc GetNode(GetNodeRequest) returns (Node) {
    option (google.api.http) = { get: "/v1/nodes/{id}" };
  }
}

message GetNodeRequest {
  string id = 1;
  // Only nodes like this one.
  Node like = 2;
  string old = 3 [deprecated = true];
}

message Node {
  string id = 1;
  repeated Node children = 2;
  Node parent = 3;
  string legacy = 4 [deprecated = true];
}
"#,
    )
    .unwrap();
    let output = protogate().arg("openapi").arg(&proto).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let document: Json = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(openapi_violations(&document), Vec::<String>::new());
    let get = operation(&document, "/v1/nodes/{id}", "get");
    assert_eq!(get["summary"], "Returns one node.");
    assert_eq!(
        get["description"],
        "Returns one node.\n\nWith its children."
    );
    assert_eq!(document["tags"][0]["description"], "Trees of nodes.");
    let node = component(&document, "acme.tree.v1.Node");
    assert_eq!(
        node["properties"]["children"]["items"]["$ref"],
        "#/components/schemas/acme.tree.v1.Node"
    );
    assert_eq!(node["properties"]["legacy"]["deprecated"], true);
    let names: Vec<&str> = get["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["in"] == "query")
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["old", "like.id", "like.legacy", "fields"]);
    assert_eq!(parameter(get, "old").unwrap()["deprecated"], true);
}

#[tokio::test]
async fn field_names_and_enums_follow_the_json_config() {
    let gateway = Gateway::start_with(|config| {
        config.json.use_proto_field_names = true;
        config.json.enums_as_numbers = true;
    })
    .await;
    let document = document(&gateway, "?package=acme.orders.v1").await;
    let order = component(&document, "acme.orders.v1.Order");
    assert!(order["properties"]["customer_id"].is_object(), "{order}");
    assert!(order["properties"].get("customerId").is_none(), "{order}");
    let list = operation(&document, "/v1/orders", "get");
    assert!(parameter(list, "page_size").is_some());
    let status = order["properties"]["status"]["$ref"].as_str().unwrap();
    let status = component(&document, status.rsplit('/').next().unwrap());
    assert_eq!(status["type"], "integer", "{status}");
}

#[tokio::test]
async fn security_quotas_and_deprecation_come_from_the_policies() {
    let demo = Demo::start().await;
    let document: Json = reqwest::get(demo.url("/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Public: the token is optional; still a 401 for a bad one.
    let list = operation(&document, "/v1/orders", "get");
    assert_eq!(list["security"], json!([{}, { "bearerAuth": [] }]));
    assert!(list["responses"]["401"].is_object());
    assert!(list["responses"].get("403").is_none());
    // Quotas: 429 with Retry-After, RateLimit-* on every answer.
    let limited = &list["responses"]["429"];
    assert!(limited["headers"]["Retry-After"].is_object(), "{limited}");
    assert!(list["responses"]["200"]["headers"]["RateLimit-Remaining"].is_object());
    // Admins only: the role is stated, 403 possible.
    let delete = operation(&document, "/v1/orders/{id}", "delete");
    assert_eq!(delete["security"], json!([{ "bearerAuth": ["admin"] }]));
    assert!(delete["responses"]["403"].is_object());
    // A token, any role.
    let get = operation(&document, "/v1/orders/{id}", "get");
    assert_eq!(get["security"], json!([{ "bearerAuth": [] }]));
    // v1 is deprecated with a sunset; v2 is not.
    assert_eq!(get["deprecated"], true);
    assert_eq!(get["x-sunset"], "Wed, 30 Jun 2027 00:00:00 GMT");
    let headers = &get["responses"]["200"]["headers"];
    assert!(headers["Sunset"].is_object(), "{headers}");
    assert!(headers["Link"].is_object(), "{headers}");
    let v2 = operation(&document, "/v2/orders/{id}", "get");
    assert!(v2.get("deprecated").is_none());
}

// === served per generation ===

#[tokio::test]
async fn the_document_is_cached_per_generation_with_an_etag() {
    let gateway = Gateway::start().await;
    let first = gateway
        .client
        .get(gateway.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    let etag = first.headers()["etag"].clone();
    let before: Json = first.json().await.unwrap();
    assert!(before["paths"].get("/v1/shops").is_none());

    let again = gateway
        .client
        .get(gateway.url("/openapi.json"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"], etag);
    assert!(again.bytes().await.unwrap().is_empty());
    let head = gateway
        .client
        .head(gateway.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["etag"], etag);

    // A new generation: a new document, a new validator.
    let shop = std::fs::read(Path::new(MANIFEST).join("examples/shop/shop.binpb")).unwrap();
    let backend = Backend::start().await;
    let uploaded = gateway
        .client
        .put(format!(
            "http://{}/admin/v1/descriptor-sets/acme.shop.v1?upstream={}",
            gateway.admin_addr,
            backend.url()
        ))
        .body(shop)
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), 201, "{}", uploaded.text().await.unwrap());
    let after = gateway
        .client
        .get(gateway.url("/openapi.json"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200);
    assert_ne!(after.headers()["etag"], etag);
    let after: Json = after.json().await.unwrap();
    assert!(after["paths"]["/v1/shops"]["get"].is_object());
    assert_ne!(after["info"]["version"], before["info"]["version"]);
}

#[tokio::test]
async fn a_package_filters_the_document_and_a_bad_one_is_refused_by_name() {
    let gateway = Gateway::start().await;
    let v2 = document(&gateway, "?package=acme.orders.v2").await;
    let paths: Vec<&String> = v2["paths"].as_object().unwrap().keys().collect();
    assert!(!paths.is_empty());
    assert!(
        paths.iter().all(|path| path.starts_with("/v2/")),
        "{paths:?}"
    );
    assert!(component(&v2, "acme.orders.v2.Order").is_object());

    for (query, field) in [
        ("?package=acme.nothing", "package"),
        ("?packge=acme.orders.v2", "packge"),
        ("?package=acme.orders.v1&package=acme.orders.v2", "package"),
        ("?package=%FF", "package"),
    ] {
        let (status, body) = gateway.get(&format!("/openapi.json{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(common::violations(&body)[0].0, field, "{query}: {body}");
    }
    let (status, body) = gateway
        .send(gateway.client.post(gateway.url("/openapi.json")))
        .await;
    assert_eq!(status, 405, "{body}");
}

#[tokio::test]
async fn the_config_moves_or_turns_off_the_published_routes() {
    let gateway = Gateway::start_with(|config| {
        config.openapi.path = "/api/spec.json".into();
        config.openapi.docs_path = "/api/reference".into();
        config.openapi.title = "Acme <APIs>".into();
        config.openapi.version = Some("2026.1".into());
        config.openapi.servers = serde_yaml_ng::from_str(
            "[https://api.example.com, {url: 'https://eu.example.com', description: Europe}]",
        )
        .unwrap();
    })
    .await;
    let (status, _) = gateway.get("/openapi.json").await;
    assert_eq!(status, 404);
    let spec: Json = gateway
        .client
        .get(gateway.url("/api/spec.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        spec["info"],
        json!({ "title": "Acme <APIs>", "version": "2026.1" })
    );
    assert_eq!(spec["servers"][1]["description"], "Europe");
    let yaml = gateway
        .client
        .get(gateway.url("/api/spec.yaml"))
        .send()
        .await
        .unwrap();
    assert_eq!(yaml.status(), 200);
    let page = gateway
        .client
        .get(gateway.url("/api/reference"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        policy.contains("connect-src 'self' https://api.example.com https://eu.example.com"),
        "{policy}"
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("<title>Acme &lt;APIs&gt;</title>"), "{html}");
    assert!(html.contains("/api/reference/init.js"), "{html}");

    let off = Gateway::start_with(|config| config.openapi.enabled = false).await;
    for path in ["/openapi.json", "/openapi.yaml", "/docs"] {
        let (status, _) = off.get(path).await;
        assert_eq!(status, 404, "{path}");
    }
}

/// `openapi.policy`: the document needs a token with the role; the page, a
/// static shell, stays public.
#[tokio::test]
async fn a_policy_can_require_a_token_for_the_document() {
    let key = tokens::EcKey::generate("docs");
    let pem = key.public_pem();
    let gateway = Gateway::start_with(|config| {
        config.auth = Some(
            serde_yaml_ng::from_str(&format!(
                "providers: [{{issuer: '{}', public_key_pem: {pem:?}}}]",
                tokens::ISSUER
            ))
            .unwrap(),
        );
        config.openapi.policy = Some(DocumentPolicy {
            roles: vec!["docs".into()],
            scopes: Vec::new(),
        });
    })
    .await;
    let get = |token: Option<String>| {
        let mut request = gateway.client.get(gateway.url("/openapi.json"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        gateway.send(request)
    };
    let (status, body) = get(None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = get(Some(key.sign(&tokens::claims("ann", &["customer"])))).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = get(Some(key.sign(&tokens::claims("ann", &["docs"])))).await;
    assert_eq!(status, 200);
    assert_eq!(body["openapi"], "3.1.0");
    let page = gateway
        .client
        .get(gateway.url("/docs"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);

    // Without `auth`, there is nothing to check the token with.
    let mut config = Config::default();
    config.openapi.policy = Some(DocumentPolicy::default());
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("openapi.policy"), "{err}");
}

#[test]
fn bad_openapi_paths_are_refused_naming_the_key() {
    for (yaml, key) in [
        ("openapi: {path: openapi.json}", "openapi.path"),
        ("openapi: {path: /openapi.yml}", "openapi.path"),
        ("openapi: {docs_path: /docs/}", "openapi.docs_path"),
        ("openapi: {docs_path: '/do\"cs'}", "openapi.docs_path"),
        ("openapi: {docs_path: /openapi.json}", "openapi.docs_path"),
        ("openapi: {servers: ['not a url']}", "openapi.servers"),
    ] {
        let config: Config = serde_yaml_ng::from_str(yaml).unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains(key), "{yaml}: {err}");
    }
    let err = serde_yaml_ng::from_str::<Config>("openapi: {enable: true}").unwrap_err();
    assert!(err.to_string().contains("enable"), "{err}");
}

// === the page ===

#[tokio::test]
async fn the_page_and_its_assets_are_embedded_under_a_strict_policy() {
    let gateway = Gateway::start().await;
    for (path, content_type) in [
        ("/docs", "text/html; charset=utf-8"),
        ("/docs/init.js", "text/javascript; charset=utf-8"),
        (
            "/docs/swagger-ui-bundle.js",
            "text/javascript; charset=utf-8",
        ),
        ("/docs/swagger-ui.css", "text/css; charset=utf-8"),
    ] {
        let response = gateway.client.get(gateway.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        assert_eq!(headers["content-type"], content_type, "{path}");
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(
            policy.starts_with("default-src 'none'; script-src 'self'; style-src 'self';"),
            "{policy}"
        );
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert!(!response.bytes().await.unwrap().is_empty(), "{path}");
    }
    let html = gateway.text(gateway.url("/docs")).await;
    assert!(!html.contains("<script>"), "an inline script: {html}");
    assert!(!html.contains("http"), "a resource from elsewhere: {html}");
}

// === offline ===

#[tokio::test]
async fn protogate_openapi_writes_the_document_the_gateway_serves() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("protogate.yaml");
    std::fs::write(
        &config,
        "openapi: {title: Acme, version: '1.0'}\njson: {use_proto_field_names: true}\nupstreams: [{pattern: acme, url: 'http://127.0.0.1:1'}]\n",
    )
    .unwrap();
    let sets: Vec<PathBuf> = ["acme.orders.v1", "acme.orders.v2", "acme.users.v1"]
        .iter()
        .map(|name| Path::new(MANIFEST).join(format!("descriptor-sets/{name}.binpb")))
        .collect();
    let output = protogate()
        .arg("openapi")
        .arg("--config")
        .arg(&config)
        .args(["--package", "acme.orders.v1"])
        .args(&sets)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let offline: Json = serde_json::from_slice(&output.stdout).unwrap();

    let backend = Backend::start().await;
    let mut served_config = Config::from_file(&config).unwrap();
    served_config.upstreams = vec![upstream("acme", &backend.url())];
    served_config.access_log.enabled = false;
    let sets = sets
        .iter()
        .map(|path| DescriptorSet::from_file(path).unwrap())
        .collect();
    let gateway = Gateway::serve(&served_config, sets).await;
    let served = document(&gateway, "?package=acme.orders.v1").await;
    assert_eq!(offline, served);
    assert_eq!(offline["info"]["title"], "Acme");
    assert!(offline["paths"].get("/v2/orders").is_none());

    let unknown = protogate()
        .args(["openapi", "--package", "acme.nothing"])
        .args(&[Path::new(MANIFEST).join("examples/shop/shop.binpb")])
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("no served package `acme.nothing` (served: acme.shop.v1)"),
        "{stderr}"
    );
}

#[test]
fn check_warns_of_a_set_without_comments() {
    let dir = tempfile::tempdir().unwrap();
    let commented = dir.path().join("shop.proto");
    let source =
        std::fs::read_to_string(Path::new(MANIFEST).join("examples/shop/shop.proto")).unwrap();
    std::fs::write(&commented, &source).unwrap();
    // The descriptor set build.rs makes carries no source info.
    let bare = protogate()
        .args(["check", "examples/shop/shop.binpb"])
        .output()
        .unwrap();
    assert!(bare.status.success());
    let stderr = String::from_utf8_lossy(&bare.stderr);
    assert!(
        stderr.contains("warning: set `shop` carries no comments"),
        "{stderr}"
    );
    // Compiled from the commented .proto: comments kept, no warning.
    let compiled = protogate().arg("check").arg(&commented).output().unwrap();
    assert!(compiled.status.success());
    let stderr = String::from_utf8_lossy(&compiled.stderr);
    assert!(!stderr.contains("carries no comments"), "{stderr}");
    let document = protogate().arg("openapi").arg(&commented).output().unwrap();
    let document: Json = serde_json::from_slice(&document.stdout).unwrap();
    let get = operation(&document, "/v1/shops", "get");
    assert!(
        get["summary"].as_str().is_some_and(|s| !s.is_empty()),
        "{get}"
    );
}

// === the demo, as a user runs it ===

/// `protogate demo` on free ports, until dropped.
struct Demo {
    _child: Child,
    /// Read to the end: the demo must not write into a closed pipe.
    _stdout: Lines,
    base: String,
    docs: String,
    token: String,
    admin_token: String,
}

impl Demo {
    async fn start() -> Self {
        // Port 0: the banner says where it listens.
        let mut child = Child(
            protogate()
                .args([
                    "demo",
                    "--listen",
                    "127.0.0.1:0",
                    "--admin-listen",
                    "127.0.0.1:0",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let mut stdout = Lines::new(child.0.stdout.take().unwrap());
        let (docs, token, admin_token, stdout) = tokio::task::spawn_blocking(move || {
            let docs = stdout.until("the docs URL", |line| line.starts_with("API reference: "));
            let token = stdout.until("the user token", |line| {
                line.starts_with("export PROTOGATE_DEMO_TOKEN=")
            });
            let admin = stdout.until("the admin token", |line| {
                line.starts_with("export PROTOGATE_DEMO_ADMIN_TOKEN=")
            });
            (docs, token, admin, stdout)
        })
        .await
        .unwrap();
        let docs = docs["API reference: ".len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        let base = docs
            .strip_suffix("/docs")
            .unwrap_or_else(|| panic!("not the docs URL: {docs}"))
            .to_owned();
        wait_for(&format!("{base}/openapi.json")).await;
        Self {
            _child: child,
            _stdout: stdout,
            base,
            docs,
            token: token["export PROTOGATE_DEMO_TOKEN=".len()..].to_owned(),
            admin_token: admin_token["export PROTOGATE_DEMO_ADMIN_TOKEN=".len()..].to_owned(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

// === /docs in a real browser ===

#[tokio::test]
async fn the_docs_page_lists_the_operations_and_tries_one_in_chromium() {
    let browser = Browser::start().await;
    let demo = Demo::start().await;
    let result = drive(&browser, &demo).await;
    browser.close().await;
    result.unwrap();
}

/// The page lists the demo's operations; a try-it-out of `GET /v1/orders`
/// shows a 200; the screenshot is written under `target/`.
async fn drive(page: &Browser, demo: &Demo) -> Result<(), String> {
    use fantoccini::Locator;
    let browser = &page.client;
    browser
        .goto(&demo.docs)
        .await
        .map_err(failed("open /docs"))?;
    browser
        .wait()
        .for_element(Locator::Css(".opblock-summary-path"))
        .await
        .map_err(failed("the operations"))?;
    let mut paths = Vec::new();
    // Deprecated operations (v1) have a class of their own.
    for summary in browser
        .find_all(Locator::Css(
            ".opblock-summary-path, .opblock-summary-path__deprecated",
        ))
        .await
        .map_err(failed("the paths"))?
    {
        paths.push(summary.text().await.map_err(failed("a path"))?);
    }
    for expected in [
        "/v1/orders",
        "/v1/orders/{id}",
        "/v2/orders/{id}",
        "/v1/orders:watch",
    ] {
        if !paths
            .iter()
            .any(|path| path.replace('\u{200b}', "") == expected)
        {
            return Err(format!("{expected} not listed: {paths:?}"));
        }
    }
    browser
        .find(Locator::Css(".btn.authorize"))
        .await
        .map_err(failed("the bearer token's Authorize button"))?;

    // Try GET /v1/orders out: expand it, "Try it out", "Execute".
    // (Deprecated, it has the class `opblock-deprecated` for its method's.)
    let operation = "//div[contains(concat(' ', @class, ' '), ' opblock ')]\
        [.//*[@class='opblock-summary-method' and text()='GET']][.//*[@data-path='/v1/orders']]";
    let within = |css: &str| {
        let class = css.trim_start_matches('.');
        format!("{operation}//*[contains(concat(' ', @class, ' '), ' {class} ')]")
    };
    browser
        .find(Locator::XPath(&within(".opblock-summary-control")))
        .await
        .map_err(failed("the ListOrders summary"))?
        .click()
        .await
        .map_err(failed("expand ListOrders"))?;
    for (button, what) in [(".try-out__btn", "Try it out"), (".execute", "Execute")] {
        browser
            .wait()
            .for_element(Locator::XPath(&within(button)))
            .await
            .map_err(failed(what))?
            .click()
            .await
            .map_err(failed(what))?;
    }
    let status = browser
        .wait()
        .for_element(Locator::XPath(&format!(
            "{}//tbody//td[contains(@class, 'response-col_status')]",
            within(".live-responses-table")
        )))
        .await
        .map_err(failed("the response"))?
        .text()
        .await
        .map_err(failed("the status"))?;
    let body = browser
        .find(Locator::XPath(&within(".live-responses-table")))
        .await
        .map_err(failed("the response body"))?
        .text()
        .await
        .map_err(failed("the body text"))?;
    page.screenshot("openapi-docs.png").await?;
    if status.trim() != "200" {
        return Err(format!("the try-it-out shows `{status}`: {body}"));
    }
    if !body.contains("\"orders\"") {
        return Err(format!("no orders in the page's reply: {body}"));
    }
    Ok(())
}

// === true: the README tour against the document ===

/// One request through the recording proxy and the gateway's answer.
#[derive(Debug)]
struct Exchange {
    method: String,
    path: String,
    query: String,
    partial: bool,
    request_type: String,
    request: bytes::Bytes,
    status: u16,
    reply_type: String,
    reply: bytes::Bytes,
}

/// Every request and reply of the README's tour validates against its
/// operation's schemas: the tour runs as written (bash, curl) through a
/// proxy that records each body the gateway receives and each reply it sends.
#[tokio::test]
async fn every_request_and_reply_of_the_readme_tour_fits_its_operation() {
    let demo = Demo::start().await;
    let document: Json = reqwest::get(demo.url("/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (proxy, exchanges) = recording_proxy(demo.base.clone()).await;

    let heading = "## A tour of the demo";
    let mut script = format!(
        "export PROTOGATE_DEMO_TOKEN={}\nexport PROTOGATE_DEMO_ADMIN_TOKEN={}\n",
        demo.token, demo.admin_token
    );
    for block in [readme_block(heading, 0), readme_block(heading, 1)] {
        for line in block.lines() {
            if line.starts_with("export PROTOGATE_DEMO") {
                continue;
            }
            script.push_str(&line.replace("localhost:8080", &proxy));
            script.push('\n');
        }
    }
    let commands = script
        .lines()
        .filter(|line| line.trim_start().starts_with("curl "))
        .count();
    let dir = tempfile::tempdir().unwrap();
    // Streams that never end (the watch) are cut by the proxy, not by curl.
    std::fs::write(dir.path().join(".curlrc"), "max-time = 20\n").unwrap();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg("-c")
            .arg(&script)
            .current_dir(dir.path())
            .env("CURL_HOME", dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("bash and curl run the README's tour")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the tour failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let exchanges = std::mem::take(&mut *exchanges.lock().await);
    let mut problems = Vec::new();
    let mut checked_bodies = 0;
    for exchange in &exchanges {
        let found = check_exchange(&document, exchange);
        checked_bodies += found.1;
        problems.extend(found.0.into_iter().map(|problem| {
            format!(
                "{} {}?{} → {}: {problem}",
                exchange.method, exchange.path, exchange.query, exchange.status
            )
        }));
    }
    assert_eq!(problems, Vec::<String>::new());
    // The whole tour went through: unary, errors, streams both ways, raw bodies.
    assert_eq!(exchanges.len(), commands, "{exchanges:#?}");
    assert!(
        checked_bodies >= exchanges.len(),
        "only {checked_bodies} bodies checked"
    );
    for (method, path, status) in [
        ("POST", "/v1/orders", 200),
        ("PATCH", "/v1/orders/o-1", 200),
        ("DELETE", "/v1/orders/o-4", 403),
        ("GET", "/v1/orders:watch", 200),
        ("POST", "/v1/orders:lookup", 200),
        ("POST", "/v1/orders:import", 200),
        ("POST", "/v1/orders:importCsv", 200),
        ("PUT", "/v1/orders", 405),
        ("GET", "/v1/tenants/acme/users/alice", 200),
    ] {
        assert!(
            exchanges
                .iter()
                .any(|e| e.method == method && e.path == path && e.status == status),
            "{method} {path} → {status} not in the tour: {exchanges:#?}"
        );
    }
}

/// A proxy on 127.0.0.1:0 in front of `target`, recording every exchange.
/// A reply that is still streaming after a while (a watch) is cut there.
async fn recording_proxy(
    target: String,
) -> (String, std::sync::Arc<tokio::sync::Mutex<Vec<Exchange>>>) {
    use http_body_util::BodyExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let exchanges = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let recorded = exchanges.clone();
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (client, target, recorded) = (client.clone(), target.clone(), recorded.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let (client, target, recorded) =
                            (client.clone(), target.clone(), recorded.clone());
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            let mut forward = client.request(
                                parts.method.clone(),
                                format!("{target}{}", parts.uri.path_and_query().unwrap()),
                            );
                            for (name, value) in &parts.headers {
                                if name != "host" {
                                    forward = forward.header(name, value);
                                }
                            }
                            let response = forward.body(body.clone()).send().await.unwrap();
                            let status = response.status();
                            let headers = response.headers().clone();
                            let mut reply = Vec::new();
                            let mut stream = response.bytes_stream();
                            let cut = tokio::time::sleep(std::time::Duration::from_secs(2));
                            tokio::pin!(cut);
                            loop {
                                tokio::select! {
                                    chunk = futures_util::StreamExt::next(&mut stream) => match chunk {
                                        Some(Ok(chunk)) => reply.extend_from_slice(&chunk),
                                        _ => break,
                                    },
                                    () = &mut cut => break,
                                }
                            }
                            let header = |name: &str, headers: &http::HeaderMap| {
                                headers
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_owned()
                            };
                            let query = parts.uri.query().unwrap_or("").to_owned();
                            recorded.lock().await.push(Exchange {
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_owned(),
                                partial: query.split('&').any(|p| p.starts_with("fields="))
                                    || parts.headers.contains_key("x-fields"),
                                query,
                                request_type: header("content-type", &parts.headers),
                                request: body,
                                status: status.as_u16(),
                                reply_type: header("content-type", &headers),
                                reply: reply.clone().into(),
                            });
                            let mut answer = hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(reply),
                            ));
                            *answer.status_mut() = status;
                            for (name, value) in &headers {
                                if name != "content-length" && name != "transfer-encoding" {
                                    answer.headers_mut().append(name, value.clone());
                                }
                            }
                            Ok::<_, std::convert::Infallible>(answer)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr.to_string(), exchanges)
}

/// What in `exchange` does not fit `document`, and how many bodies were checked.
fn check_exchange(document: &Json, exchange: &Exchange) -> (Vec<String>, usize) {
    let mut problems = Vec::new();
    let mut checked = 0;
    let status_schema = json!({ "$ref": "#/components/schemas/google.rpc.Status" });
    let Some((template, operation)) = find_operation(document, &exchange.method, &exchange.path)
    else {
        // No operation (405, unknown path): the reply is still a google.rpc.Status.
        if exchange.status < 400 {
            problems.push("no operation in the document".to_owned());
        } else {
            problems.extend(check_body(
                document,
                &status_schema,
                &exchange.reply_type,
                &exchange.reply,
                false,
                &mut checked,
            ));
        }
        return (problems, checked);
    };
    // Every query parameter of an accepted request is one the document names.
    if exchange.status < 400 {
        for pair in exchange.query.split('&').filter(|p| !p.is_empty()) {
            let name = pair.split('=').next().unwrap_or("");
            if parameter(operation, name).is_none() {
                problems.push(format!("query parameter `{name}` is not in {template}"));
            }
        }
    }
    // The request body, as the gateway received it.
    if !exchange.request.is_empty() {
        let content = &operation["requestBody"]["content"];
        let media = exchange.request_type.split(';').next().unwrap_or("").trim();
        match (content.get(media), content.get("*/*")) {
            (Some(entry), _) => {
                let ndjson = media == "application/x-ndjson";
                problems.extend(check_body(
                    document,
                    &entry["schema"],
                    media,
                    &exchange.request,
                    ndjson,
                    &mut checked,
                ));
            }
            (None, Some(_)) => checked += 1,
            (None, None) => problems.push(format!(
                "request content type `{media}` is not in {content}"
            )),
        }
    }
    // The reply, by its status.
    let status = exchange.status.to_string();
    let response = operation["responses"]
        .get(&status)
        .unwrap_or(&operation["responses"]["default"]);
    let media = exchange.reply_type.split(';').next().unwrap_or("").trim();
    let content = &response["content"];
    let entry = content.get(media).or_else(|| content.get("*/*"));
    match entry {
        None if exchange.reply.is_empty() => {}
        None => problems.push(format!("reply content type `{media}` is not in {response}")),
        Some(_) if content.get(media).is_none() => checked += 1,
        Some(entry) => {
            let mut schema = entry["schema"].clone();
            if exchange.partial {
                // A partial reply (`fields`): the paths asked for only.
                strip_required(&mut schema);
            }
            match media {
                "text/event-stream" => {
                    // Each event's data is the message; an `error` event a Status.
                    let ndjson = &content["application/x-ndjson"]["schema"]["properties"];
                    let text = String::from_utf8_lossy(&exchange.reply);
                    let mut event = "";
                    for line in text.lines() {
                        if let Some(name) = line.strip_prefix("event: ") {
                            event = name;
                        } else if let Some(data) = line.strip_prefix("data: ") {
                            let schema = if event == "error" {
                                &ndjson["error"]
                            } else {
                                &ndjson["result"]
                            };
                            problems.extend(check_body(
                                document,
                                schema,
                                "application/json",
                                data.as_bytes(),
                                false,
                                &mut checked,
                            ));
                            event = "";
                        }
                    }
                }
                _ => {
                    let ndjson = media == "application/x-ndjson";
                    problems.extend(check_body(
                        document,
                        &schema,
                        media,
                        &exchange.reply,
                        ndjson,
                        &mut checked,
                    ));
                }
            }
        }
    }
    (problems, checked)
}

/// Where `body` (one JSON value, or NDJSON values) breaks `schema`.
fn check_body(
    document: &Json,
    schema: &Json,
    media: &str,
    body: &[u8],
    ndjson: bool,
    checked: &mut usize,
) -> Vec<String> {
    if !ndjson && !media.ends_with("json") {
        return vec![format!("`{media}` body checked as JSON")];
    }
    let values: Vec<Json> = serde_json::Deserializer::from_slice(body)
        .into_iter::<Json>()
        .map(|value| {
            value
                .unwrap_or_else(|err| panic!("not JSON ({err}): {}", String::from_utf8_lossy(body)))
        })
        .collect();
    if !ndjson && values.len() != 1 {
        return vec![format!(
            "{} JSON values where one was expected",
            values.len()
        )];
    }
    let mut problems = Vec::new();
    for value in &values {
        *checked += 1;
        for violation in schema_violations(document, schema, value) {
            problems.push(format!("{violation} in {value}"));
        }
    }
    problems
}

fn strip_required(schema: &mut Json) {
    match schema {
        Json::Object(map) => {
            map.remove("required");
            map.values_mut().for_each(strip_required);
        }
        Json::Array(items) => items.iter_mut().for_each(strip_required),
        _ => {}
    }
}

/// The operation serving `method` `path`: the template that matches with the
/// most literal text, as the gateway's router prefers literals.
fn find_operation<'d>(document: &'d Json, method: &str, path: &str) -> Option<(String, &'d Json)> {
    let method = method.to_ascii_lowercase();
    document["paths"]
        .as_object()?
        .iter()
        .filter_map(|(template, item)| {
            let operation = item.get(&method)?;
            let multi = |name: &str| {
                parameter(operation, name)
                    .and_then(|p| p["description"].as_str())
                    .is_some_and(|d| d.contains("`/` included"))
            };
            matches_template(template, path, &multi).then(|| (template.clone(), operation))
        })
        .max_by_key(|(template, _)| literal_length(template))
}

fn literal_length(template: &str) -> usize {
    let mut length = 0;
    let mut inside = false;
    for c in template.chars() {
        match c {
            '{' => inside = true,
            '}' => inside = false,
            _ if !inside => length += 1,
            _ => {}
        }
    }
    length
}

/// Whether `path` fits `template`: `{x}` takes one segment, or several when
/// `multi(x)`.
fn matches_template(template: &str, path: &str, multi: &dyn Fn(&str) -> bool) -> bool {
    match template.find('{') {
        None => template == path,
        Some(open) => {
            let Some(rest) = path.strip_prefix(&template[..open]) else {
                return false;
            };
            let close = template[open..].find('}').unwrap() + open;
            let name = &template[open + 1..close];
            let after = &template[close + 1..];
            (1..=rest.len()).any(|end| {
                let value = &rest[..end];
                (multi(name) || !value.contains('/'))
                    && !value.contains(':')
                    && matches_template(after, &rest[end..], multi)
            })
        }
    }
}

/// A configured response mask, which the document must apply.
fn hide_get_order_unit_price(config: &mut Config) {
    config.filters.responses = serde_yaml_ng::from_str(
        "[{methods: acme.orders.v1.OrderService.GetOrder, omit: [items.unit_price_cents]}]",
    )
    .unwrap();
}
