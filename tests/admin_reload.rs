//! Run-time registration through the admin API: uploads served without a
//! restart, every refusal with its status and body (the old routes still
//! serving), idempotent re-uploads, deletes, persistence across restarts,
//! torn writes, and a steady stream of requests that never fails while sets
//! come and go.

mod common;

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use common::{upstream, Backend, Gateway};
use protogate::{
    config::{AdminToken, DeprecationConfig},
    registry::DescriptorSet,
    Config,
};
use serde_json::{json, Value as Json};
use tonic::Code;

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");
const TOKEN: &str = "s3cret-admin-token";

/// A gateway whose descriptor directory is a temp dir, with the example sets
/// fixed (from the config) and `managed` sets copied into the directory.
struct Setup {
    gw: Gateway,
    backend: Backend,
    dir: Arc<tempfile::TempDir>,
}

impl Setup {
    async fn start(managed: &[&str]) -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        for name in managed {
            std::fs::copy(
                Path::new(MANIFEST).join(format!("descriptor-sets/{name}.binpb")),
                dir.path().join(format!("{name}.binpb")),
            )
            .unwrap();
        }
        Self::start_in(dir, Backend::start().await, |_| {}).await
    }

    /// A gateway over an existing directory (a restart), with the config adjusted.
    async fn start_in(
        dir: Arc<tempfile::TempDir>,
        backend: Backend,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        let mut config = config(dir.path(), &backend);
        adjust(&mut config);
        let fixed: Vec<DescriptorSet> = common::example_sets()
            .into_iter()
            .filter(|set| !dir.path().join(format!("{}.binpb", set.name)).exists())
            .collect();
        let gw = Gateway::serve(&config, fixed).await;
        Self { gw, backend, dir }
    }

    fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.gw.admin_addr)
    }

    async fn admin_send(&self, request: reqwest::RequestBuilder) -> (u16, Json) {
        self.gw.send(request.bearer_auth(TOKEN)).await
    }

    async fn put_set(&self, name: &str, bytes: Bytes, upstream: Option<&str>) -> (u16, Json) {
        let mut url = self.admin(&format!("/admin/v1/descriptor-sets/{name}"));
        if let Some(upstream) = upstream {
            url = format!("{url}?upstream={upstream}");
        }
        self.admin_send(
            self.gw
                .client
                .put(url)
                .header("content-type", "application/x-protobuf")
                .body(bytes),
        )
        .await
    }

    async fn delete_set(&self, name: &str) -> (u16, Json) {
        self.admin_send(
            self.gw
                .client
                .delete(self.admin(&format!("/admin/v1/descriptor-sets/{name}"))),
        )
        .await
    }

    async fn admin_get(&self, path: &str) -> (u16, Json) {
        self.admin_send(self.gw.client.get(self.admin(path))).await
    }

    async fn generation(&self) -> u64 {
        let (_, body) = self.admin_get("/admin/v1/routes").await;
        body["generation"].as_u64().unwrap()
    }

    /// An example route that must keep serving whatever the admin API does.
    async fn assert_old_routes_serve(&self) {
        let (status, body) = self.gw.get("/v2/orders/o-1").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["id"], "o-1");
    }
}

fn config(dir: &Path, backend: &Backend) -> Config {
    let mut config = Config {
        upstreams: vec![upstream("acme", &backend.url())],
        ..Config::default()
    };
    config.descriptors.dir = Some(dir.to_owned());
    config.access_log.enabled = false;
    config.admin.token = Some(AdminToken(TOKEN.into()));
    config.admin.max_upload_bytes = 1 << 20;
    config
}

fn testing_bytes() -> Bytes {
    common::testing_set().bytes
}

/// Compiles one proto source with the vendored google protos on the path.
fn compile(name: &str, source: &str) -> Bytes {
    compile_files(&[(&format!("{name}.proto"), source)])
}

/// Compiles proto files (the first is the root) with the vendored protos on the path.
fn compile_files(files: &[(&str, &str)]) -> Bytes {
    let dir = tempfile::tempdir().unwrap();
    for (name, source) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, source).unwrap();
    }
    let mut compiler =
        protox::Compiler::new([dir.path().to_owned(), Path::new(MANIFEST).join("protos")]).unwrap();
    compiler.include_imports(true);
    compiler.open_file(files[0].0).unwrap();
    Bytes::from(compiler.encode_file_descriptor_set())
}

/// A set with one service `t.<name>.S` and the given methods.
fn service(name: &str, rpcs: &str) -> Bytes {
    compile(
        name,
        &format!(
            r#"syntax = "proto3";
package t.{name};
import "google/api/annotations.proto";
message Req {{ string id = 1; }}
message Res {{ string id = 1; }}
service S {{ {rpcs} }}"#
        ),
    )
}

/// The field violations' descriptions of a google.rpc.Status body.
fn violations(body: &Json) -> Vec<String> {
    common::violations(body)
        .into_iter()
        .map(|(_, d)| d)
        .collect()
}

// === registering ===

#[tokio::test]
async fn uploaded_service_is_served_without_restart() {
    let setup = Setup::start(&[]).await;
    let (status, body) = setup.gw.post("/v1/echo", json!({"stringValue": "x"})).await;
    assert_eq!(status, 404, "{body}");
    let generation = setup.generation().await;

    let url = setup.backend.url();
    let (status, body) = setup
        .put_set("protogate.testing.v1", testing_bytes(), Some(&url))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"], "protogate.testing.v1");
    assert_eq!(body["changed"], true);
    assert_eq!(body["generation"], generation + 1);
    assert_eq!(body["upstream"], url);
    assert!(body["routeCount"].as_u64().unwrap() > 10, "{body}");

    let (status, body) = setup.gw.post("/v1/echo", json!({"stringValue": "x"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stringValue"], "x");
    setup.assert_old_routes_serve().await;

    // The same bytes again: 200, nothing changes.
    let (status, body) = setup
        .put_set("protogate.testing.v1", testing_bytes(), Some(&url))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], false);
    assert_eq!(body["generation"], generation + 1);

    // Listed, handed back byte for byte, its routes with their upstream.
    let (status, list) = setup.admin_get("/admin/v1/descriptor-sets").await;
    assert_eq!(status, 200);
    let listed = list["descriptorSets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "protogate.testing.v1")
        .cloned()
        .unwrap();
    assert!(listed["digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(listed["services"]
        .as_array()
        .unwrap()
        .contains(&json!("protogate.testing.v1.TestService")));
    assert!(listed["loadedAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(listed["managed"], true);
    let bytes = setup
        .gw
        .client
        .get(setup.admin("/admin/v1/descriptor-sets/protogate.testing.v1"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes, testing_bytes());
    let (_, routes) = setup.admin_get("/admin/v1/routes").await;
    let echo = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "POST /v1/echo")
        .cloned()
        .unwrap();
    assert_eq!(echo["rpc"], "protogate.testing.v1.TestService.Echo");
    assert_eq!(echo["upstream"]["url"], url);
    // No `auth` configured: every route is open, whatever its policy says.
    assert_eq!(
        echo["policy"],
        json!({"auth": "off", "allowAnonymous": true, "roles": [], "scopes": [], "clientCertificate": false, "rateLimited": false, "quota": {"perUser": null, "perIp": null}})
    );
    assert_eq!(echo["deprecation"], Json::Null);

    // Delete: the routes go, the others stay; a second delete is a 404.
    let (status, body) = setup.delete_set("protogate.testing.v1").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = setup.gw.post("/v1/echo", json!({})).await;
    assert_eq!(status, 404, "{body}");
    setup.assert_old_routes_serve().await;
    let (status, body) = setup.delete_set("protogate.testing.v1").await;
    assert_eq!(status, 404);
    common::assert_status(
        &body,
        Code::NotFound,
        "`protogate.testing.v1` is not loaded",
    );
    assert!(!setup.dir.path().join("protogate.testing.v1.binpb").exists());
}

#[tokio::test]
async fn upstreams_are_managed_through_the_admin_api() {
    let setup = Setup::start(&[]).await;
    let url = setup.backend.url();
    // Without an upstream the set is refused.
    let (status, body) = setup.put_set("testing", testing_bytes(), None).await;
    assert_eq!(status, 400, "{body}");
    common::assert_status(&body, Code::InvalidArgument, "has no upstream");

    let (status, body) = setup
        .admin_send(
            setup
                .gw
                .client
                .put(setup.admin("/admin/v1/upstreams/protogate.testing"))
                .body(json!({"url": url, "timeout": "5s"}).to_string()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = setup.put_set("testing", testing_bytes(), None).await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = setup.gw.post("/v1/echo", json!({})).await;
    assert_eq!(status, 200);
    let (_, list) = setup.admin_get("/admin/v1/upstreams").await;
    assert!(list["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["pattern"] == "protogate.testing" && u["timeout"] == "5s"));

    // Removing it would leave the service without an upstream: refused.
    let delete = || {
        setup.admin_send(
            setup
                .gw
                .client
                .delete(setup.admin("/admin/v1/upstreams/protogate.testing")),
        )
    };
    let (status, body) = delete().await;
    assert_eq!(status, 400, "{body}");
    common::assert_status(&body, Code::InvalidArgument, "has no upstream");
    let (status, _) = setup.gw.post("/v1/echo", json!({})).await;
    assert_eq!(status, 200);

    // Bad URLs are refused before anything is built.
    let (status, body) = setup
        .admin_send(
            setup
                .gw
                .client
                .put(setup.admin("/admin/v1/upstreams/x.y"))
                .body(r#"{"url": "ftp://nope"}"#),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    common::assert_status(&body, Code::InvalidArgument, "must be http://host:port");
    let (status, body) = setup
        .admin_send(
            setup
                .gw
                .client
                .put(setup.admin("/admin/v1/upstreams/x.y"))
                .body("{"),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    common::assert_status(&body, Code::InvalidArgument, "invalid JSON body");

    assert_eq!(setup.delete_set("testing").await.0, 200);
    assert_eq!(delete().await.0, 200);
    assert_eq!(delete().await.0, 404);
}

/// One rule for what serves a pattern: an upstream set at run time wins over
/// the one uploaded with a set, which wins over the configured one; deleting
/// it falls back. The listing names the source, and traffic goes where it says.
#[tokio::test]
async fn an_upstream_set_at_run_time_wins_until_deleted_and_the_listing_is_what_is_served() {
    let setup = Setup::start(&[]).await;
    let first = setup.backend.url();
    let second = Backend::start().await;
    let (status, body) = setup
        .put_set("testing", testing_bytes(), Some(&first))
        .await;
    assert_eq!(status, 201, "{body}");
    let served_by = || async {
        let (status, body) = setup.gw.get("/v1/headers").await;
        assert_eq!(status, 200, "{body}");
        format!("http://{}", body["metadata"][":local"].as_str().unwrap())
    };
    let setup = &setup;
    let listed = |pattern: &'static str| async move {
        let (_, list) = setup.admin_get("/admin/v1/upstreams").await;
        let found = list["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["pattern"] == pattern)
            .cloned();
        found.unwrap_or_else(|| panic!("{pattern} not in {list}"))
    };
    let upstream = |pattern: &str| setup.admin(&format!("/admin/v1/upstreams/{pattern}"));
    let by_set = json!({"pattern": "protogate.testing.v1", "url": first, "timeout": "30s", "source": "set", "set": "testing"});
    assert_eq!(served_by().await, first);
    assert_eq!(listed("protogate.testing.v1").await, by_set);

    let (status, body) = setup
        .admin_send(
            setup
                .gw
                .client
                .put(upstream("protogate.testing.v1"))
                .body(json!({"url": second.url()}).to_string()),
        )
        .await;
    assert_eq!((status, &body["changed"]), (200, &json!(true)), "{body}");
    assert_eq!(served_by().await, second.url());
    assert_eq!(
        listed("protogate.testing.v1").await,
        json!({"pattern": "protogate.testing.v1", "url": second.url(), "timeout": "30s", "source": "admin"})
    );

    let delete =
        |pattern: &'static str| setup.admin_send(setup.gw.client.delete(upstream(pattern)));
    assert_eq!(delete("protogate.testing.v1").await.0, 200);
    assert_eq!(served_by().await, first);
    assert_eq!(listed("protogate.testing.v1").await, by_set);
    let (status, body) = delete("protogate.testing.v1").await;
    assert_eq!(status, 404, "{body}");

    // The same between the admin API and the config.
    assert_eq!(listed("acme").await["source"], "config");
    let (status, _) = setup
        .admin_send(
            setup
                .gw
                .client
                .put(upstream("acme"))
                .body(json!({"url": second.url()}).to_string()),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(listed("acme").await["url"], second.url());
    assert_eq!(delete("acme").await.0, 200);
    assert_eq!(
        listed("acme").await,
        json!({"pattern": "acme", "url": first, "timeout": "5s", "source": "config"})
    );
}

// === refusals ===

#[tokio::test]
async fn refused_uploads_change_nothing_and_name_set_method_and_route() {
    let setup = Setup::start(&[]).await;
    let url = setup.backend.url();
    let generation = setup.generation().await;
    let get =
        r#"rpc Get(Req) returns (Res) { option (google.api.http) = { get: "/v1/orders/{id}" }; }"#;
    let cases: Vec<(&str, Bytes, u16, Code, &str)> = vec![
        // A route another set serves → 409.
        (
            "clash",
            service("clash", get),
            409,
            Code::AlreadyExists,
            "set `clash`: t.clash.S.Get: route `GET /v1/orders/{id}` conflicts with `GET /v1/orders/{id}` of acme.orders.v1.OrderService.GetOrder in set `acme.orders.v1`",
        ),
        // Two routes of the same set collide → 400.
        (
            "selfclash",
            service(
                "selfclash",
                r#"rpc A(Req) returns (Res) { option (google.api.http) = { get: "/v9/a/{id}" }; }
                   rpc B(Req) returns (Res) { option (google.api.http) = { get: "/v9/a/{id}" }; }"#,
            ),
            400,
            Code::InvalidArgument,
            "t.selfclash.S.B: route `GET /v9/a/{id}` conflicts with `GET /v9/a/{id}` of t.selfclash.S.A",
        ),
        (
            "garbage",
            Bytes::from_static(b"\xff\xff not a descriptor set"),
            400,
            Code::InvalidArgument,
            "set `garbage`: not a FileDescriptorSet",
        ),
        (
            "template",
            service(
                "template",
                r#"rpc A(Req) returns (Res) { option (google.api.http) = { get: "/v9/{id" }; }"#,
            ),
            400,
            Code::InvalidArgument,
            "set `template`: t.template.S.A:",
        ),
        (
            "field",
            service(
                "field",
                r#"rpc A(Req) returns (Res) { option (google.api.http) = { get: "/v9/x/{nope}" }; }"#,
            ),
            400,
            Code::InvalidArgument,
            "set `field`: t.field.S.A:",
        ),
        // Only the file that imports: its dependency is missing.
        ("imports", missing_import(), 400, Code::InvalidArgument, "set `imports`: invalid descriptors"),
        // Defines acme.orders.v1.Order again, in another file.
        (
            "twice",
            service_redefining_order(),
            409,
            Code::AlreadyExists,
            "set `twice`: `acme.orders.v1.Order` (file `twice.proto`) is already defined by set `acme.orders.v1` (file `acme/orders/v1/orders.proto`)",
        ),
        ("empty", Bytes::new(), 400, Code::InvalidArgument, "descriptor set `empty` is empty"),
    ];
    for (name, bytes, status, code, message) in cases {
        let (got, body) = setup.put_set(name, bytes, Some(&url)).await;
        assert_eq!(got, status, "{name}: {body}");
        common::assert_status(&body, code, message);
        assert!(
            violations(&body).iter().any(|v| v.contains(message)),
            "{name}: {body}"
        );
        assert_eq!(setup.generation().await, generation, "{name}");
        assert!(!setup.dir.path().join(format!("{name}.binpb")).exists());
        setup.assert_old_routes_serve().await;
    }

    // A service without an upstream.
    let (status, body) = setup.put_set("lonely", service("lonely", ""), None).await;
    assert_eq!(status, 400, "{body}");
    common::assert_status(
        &body,
        Code::InvalidArgument,
        "set `lonely`: service `t.lonely.S` has no upstream",
    );

    // Names that could leave the directory, and bad upstream URLs.
    for name in [".hidden", "a..b%2F..", "x%2F..%2F..%2Fetc", "a%20b"] {
        let (status, body) = setup.put_set(name, testing_bytes(), Some(&url)).await;
        assert_eq!(status, 400, "{name}: {body}");
        common::assert_status(&body, Code::InvalidArgument, "is not a valid name");
    }
    let (status, body) = setup
        .put_set("x", testing_bytes(), Some("file:///etc/passwd"))
        .await;
    assert_eq!(status, 400, "{body}");
    common::assert_status(&body, Code::InvalidArgument, "invalid `upstream`");

    // Over the size limit.
    let (status, body) = setup
        .put_set("big", Bytes::from(vec![0u8; (1 << 20) + 1]), Some(&url))
        .await;
    assert_eq!(status, 413, "{body}");
    common::assert_status(
        &body,
        Code::ResourceExhausted,
        "exceeds the limit of 1048576 bytes",
    );

    // Sets from the configuration are not the admin API's to change.
    let (status, body) = setup.delete_set("acme.orders.v1").await;
    assert_eq!(status, 400, "{body}");
    common::assert_status(
        &body,
        Code::FailedPrecondition,
        "comes from the configuration",
    );

    assert_eq!(setup.generation().await, generation);
    let files: Vec<_> = std::fs::read_dir(setup.dir.path()).unwrap().collect();
    assert!(files.is_empty(), "{files:?}");
    setup.assert_old_routes_serve().await;
}

/// A set holding only a file whose import is not in the set.
fn missing_import() -> Bytes {
    use prost::Message as _;
    let full = compile_files(&[
        (
            "imports.proto",
            r#"syntax = "proto3";
package t.imports;
import "dep.proto";
service S { rpc A(t.dep.Req) returns (t.dep.Req); }"#,
        ),
        (
            "dep.proto",
            "syntax = \"proto3\";\npackage t.dep;\nmessage Req {}",
        ),
    ]);
    let mut set = prost_types::FileDescriptorSet::decode(full).unwrap();
    set.file.retain(|f| f.name() == "imports.proto");
    Bytes::from(set.encode_to_vec())
}

/// A set that defines `acme.orders.v1.Order` with other fields.
fn service_redefining_order() -> Bytes {
    compile(
        "twice",
        r#"syntax = "proto3";
package acme.orders.v1;
import "google/api/annotations.proto";
message Order { int64 other = 1; }
service Twice { rpc A(Order) returns (Order) { option (google.api.http) = { get: "/v9/twice" }; } }"#,
    )
}

/// The testing set's own file, as another team might have it: same path,
/// other content (one service of its own).
fn other_testing_file() -> Bytes {
    compile_files(&[(
        "protogate/testing/v1/testing.proto",
        r#"syntax = "proto3";
package protogate.testing.v1;
import "google/api/annotations.proto";
message Other { string id = 1; }
service OtherService { rpc Get(Other) returns (Other) { option (google.api.http) = { get: "/v9/other/{id}" }; } }"#,
    )])
}

#[tokio::test]
async fn a_set_redefining_another_sets_file_or_name_or_adding_nothing_is_refused_whatever_its_name()
{
    let setup = Setup::start(&[]).await;
    let url = setup.backend.url();
    assert_eq!(
        setup
            .put_set("m-testing", testing_bytes(), Some(&url))
            .await
            .0,
        201
    );
    let generation = setup.generation().await;
    let (_, sets_before) = setup.admin_get("/admin/v1/descriptor-sets").await;
    let redefining_echo = compile(
        "evil",
        r#"syntax = "proto3";
package protogate.testing.v1;
message EchoMessage { int64 other = 1; }"#,
    );
    let file = "file `protogate/testing/v1/testing.proto` differs from the file of that name in set `m-testing`";
    let adds_nothing = "adds nothing: every file it holds is already served by set `m-testing`";
    // Names before and after `m-testing`: the order the sets load in must not matter.
    let cases = [
        ("a-other", other_testing_file(), file),
        ("z-other", other_testing_file(), file),
        ("a-evil", redefining_echo, "`protogate.testing.v1.EchoMessage` (file `evil.proto`) is already defined by set `m-testing` (file `protogate/testing/v1/testing.proto`)"),
        ("a-copy", testing_bytes(), adds_nothing),
        ("z-copy", testing_bytes(), adds_nothing),
    ];
    for (name, bytes, message) in cases {
        let (status, body) = setup.put_set(name, bytes, Some(&url)).await;
        assert_eq!(status, 409, "{name}: {body}");
        common::assert_status(
            &body,
            Code::AlreadyExists,
            &format!("set `{name}`: {message}"),
        );
        assert_eq!(setup.generation().await, generation, "{name}");
        assert!(!setup.dir.path().join(format!("{name}.binpb")).exists());
        let (status, body) = setup
            .gw
            .post("/v1/echo", json!({"stringValue": name}))
            .await;
        assert_eq!(
            (status, &body["stringValue"]),
            (200, &json!(name)),
            "{body}"
        );
        let (status, _) = setup.gw.get("/v9/other/x").await;
        assert_eq!(status, 404, "{name}: its routes are not served");
    }
    let (_, sets_after) = setup.admin_get("/admin/v1/descriptor-sets").await;
    assert_eq!(sets_before, sets_after);

    // A dry run says the same, naming the set that serves it.
    let (status, body) = setup
        .admin_send(
            setup
                .gw
                .client
                .post(setup.admin("/admin/v1/descriptor-sets:validate?name=copy"))
                .body(testing_bytes()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["valid"], false);
    assert_eq!(
        body["problems"][0]["conflictsWithSet"], "m-testing",
        "{body}"
    );

    // Identical files are shared: a set that imports the testing proto and
    // adds a service of its own loads beside it.
    let extra = compile_files(&[(
        "extra.proto",
        r#"syntax = "proto3";
package t.extra;
import "google/api/annotations.proto";
import "protogate/testing/v1/testing.proto";
service Extra { rpc Get(protogate.testing.v1.EchoMessage) returns (protogate.testing.v1.EchoMessage) { option (google.api.http) = { get: "/v9/extra" }; } }"#,
    )]);
    let (status, body) = setup.put_set("extra", extra, Some(&url)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["routeCount"], 1, "{body}");
    let (status, _) = setup.gw.post("/v1/echo", json!({})).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_conflicting_file_dropped_into_the_directory_is_left_out_and_the_served_set_stays() {
    let setup = Setup::start(&[]).await;
    let url = setup.backend.url();
    assert_eq!(
        setup
            .put_set("m-testing", testing_bytes(), Some(&url))
            .await
            .0,
        201
    );
    let generation = setup.generation().await;
    let unchanged_reloads = || async {
        let metrics = setup.gw.text(setup.admin("/metrics")).await;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("protogate_catalog_reloads_total{result=\"unchanged\"} "))
            .map_or(0, |n| n.parse::<u64>().unwrap())
    };
    let before = unchanged_reloads().await;
    std::fs::write(
        setup.dir.path().join(".a-other.partial"),
        other_testing_file(),
    )
    .unwrap();
    std::fs::rename(
        setup.dir.path().join(".a-other.partial"),
        setup.dir.path().join("a-other.binpb"),
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while unchanged_reloads().await == before {
        assert!(tokio::time::Instant::now() < deadline, "no reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(setup.generation().await, generation);
    assert_eq!(setup.gw.post("/v1/echo", json!({})).await.0, 200);
    assert_eq!(setup.gw.get("/v9/other/x").await.0, 404);
}

#[tokio::test]
async fn admin_api_requires_the_token_but_probes_do_not() {
    let setup = Setup::start(&[]).await;
    let client = &setup.gw.client;
    for request in [
        client.get(setup.admin("/admin/v1/routes")),
        client
            .get(setup.admin("/admin/v1/routes"))
            .bearer_auth("wrong"),
        client
            .put(setup.admin("/admin/v1/descriptor-sets/x"))
            .header("authorization", format!("Basic {TOKEN}")),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(
            response.headers()["www-authenticate"],
            r#"Bearer realm="protogate-admin""#
        );
        let body: Json = response.json().await.unwrap();
        common::assert_status(
            &body,
            Code::Unauthenticated,
            "missing or invalid admin token",
        );
    }
    for probe in ["/healthz", "/readyz", "/metrics"] {
        let status = client
            .get(setup.admin(probe))
            .send()
            .await
            .unwrap()
            .status();
        assert_ne!(status, 401, "{probe}");
    }
    let (status, body) = setup.admin_get("/admin/v1/nope").await;
    assert_eq!(status, 404);
    common::assert_status(
        &body,
        Code::NotFound,
        "no admin endpoint GET /admin/v1/nope",
    );
    let (status, _) = setup.admin_get("/admin/v1/routes").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_open_admin_api_is_refused_off_loopback() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), &backend);
    config.admin.token = None;
    config.admin.listen = "0.0.0.0:9901".parse().unwrap();
    let err = protogate::Server::new(&config, common::example_sets()).unwrap_err();
    assert!(err.to_string().contains("not a loopback address"), "{err}");

    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    config.admin.token_file = Some(token_file);
    assert!(protogate::Server::new(&config, common::example_sets()).is_ok());
}

#[tokio::test]
async fn without_a_token_only_loopback_hosts_are_answered() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let setup = Setup::start_in(dir, Backend::start().await, |config| {
        config.admin.token = None;
    })
    .await;
    let port = setup.gw.admin_addr.port();
    let with_host = |path: &str, host: &str| {
        setup
            .gw
            .client
            .get(setup.admin(path))
            .header("host", host.to_owned())
    };
    for path in ["/admin/v1/routes", "/admin/v1/descriptor-sets", "/metrics"] {
        for host in [
            "evil.example".to_owned(),
            format!("evil.example:{port}"),
            "localhost.evil.example".to_owned(),
        ] {
            let (status, body) = setup.gw.send(with_host(path, &host)).await;
            assert_eq!(status, 403, "{path} for {host}: {body}");
            common::assert_status(
                &body,
                Code::PermissionDenied,
                &format!("only requests for localhost, 127.0.0.1 or [::1] are answered, not for `{host}`"),
            );
        }
        for host in [
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
            "localhost".to_owned(),
        ] {
            let response = with_host(path, &host).send().await.unwrap();
            assert_eq!(response.status(), 200, "{path} for {host}");
        }
    }
    // A change through a rebound name is refused before it is applied.
    let (status, _) = setup
        .gw
        .send(
            setup
                .gw
                .client
                .delete(setup.admin("/admin/v1/descriptor-sets/acme.orders.v1"))
                .header("host", "evil.example"),
        )
        .await;
    assert_eq!(status, 403);
    setup.assert_old_routes_serve().await;

    // With a token, any host may ask (the token is the guard).
    let (status, body) = setup
        .admin_send(with_host("/admin/v1/routes", "gateway.internal"))
        .await;
    assert_eq!(status, 403, "this gateway has no token: {body}");
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let guarded = Setup::start_in(dir, Backend::start().await, |_| {}).await;
    let (status, body) = guarded
        .admin_send(
            guarded
                .gw
                .client
                .get(guarded.admin("/admin/v1/routes"))
                .header("host", "gateway.internal"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

// === dry run ===

#[tokio::test]
async fn validate_reports_routes_and_problems_and_applies_nothing() {
    let setup = Setup::start(&["acme.orders.v1"]).await;
    let url = setup.backend.url();
    let generation = setup.generation().await;
    let validate = |query: &str, bytes: Bytes| {
        setup.admin_send(
            setup
                .gw
                .client
                .post(setup.admin(&format!("/admin/v1/descriptor-sets:validate{query}")))
                .body(bytes),
        )
    };
    let (status, body) = validate(&format!("?name=testing&upstream={url}"), testing_bytes()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["valid"], true);
    let added: Vec<&str> = body["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["route"].as_str().unwrap())
        .collect();
    assert!(added.contains(&"POST /v1/echo"), "{added:?}");
    assert_eq!(body["changed"], json!([]));
    assert_eq!(body["removed"], json!([]));
    let (status, _) = setup.gw.post("/v1/echo", json!({})).await;
    assert_eq!(status, 404);

    // Replacing acme.orders.v1 with the same bytes on another upstream changes its routes.
    let v1 = Bytes::from(std::fs::read(setup.dir.path().join("acme.orders.v1.binpb")).unwrap());
    let (status, body) = validate("?name=acme.orders.v1&upstream=http://127.0.0.1:1", v1).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["changed"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["route"] == "GET /v1/orders/{id}"));

    let get = r#"rpc Get(Req) returns (Res) { option (google.api.http) = { get: "/v2/orders/{id}" }; }
                 rpc Bad(Req) returns (Res) { option (google.api.http) = { get: "/v9/{nope}" }; }"#;
    let (status, body) = validate(
        &format!("?name=clash&upstream={url}"),
        service("clash", get),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["valid"], false);
    let problems = body["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 2, "{body}");
    assert_eq!(problems[0]["conflictsWithSet"], "acme.orders.v2");
    assert_eq!(problems[0]["method"], "t.clash.S.Get");
    assert!(problems[1]["message"]
        .as_str()
        .unwrap()
        .contains("t.clash.S.Bad"));
    assert_eq!(setup.generation().await, generation);
}

// === persistence ===

#[tokio::test]
async fn a_restart_serves_what_was_uploaded_and_ignores_torn_writes() {
    let setup = Setup::start(&[]).await;
    let url = setup.backend.url();
    let extra = service(
        "extra",
        r#"rpc Get(Req) returns (Res) { option (google.api.http) = { get: "/v9/extra/{id}" }; }"#,
    );
    assert_eq!(
        setup
            .put_set("protogate.testing.v1", testing_bytes(), Some(&url))
            .await
            .0,
        201
    );
    assert_eq!(setup.put_set("extra", extra, Some(&url)).await.0, 201);
    assert_eq!(setup.delete_set("extra").await.0, 200);
    let (_, before) = setup.admin_get("/admin/v1/routes").await;
    let (_, sets_before) = setup.admin_get("/admin/v1/descriptor-sets").await;

    let Setup { gw, backend, dir } = setup;
    drop(gw);
    // A crash mid-write leaves a dot-file behind; a half-written name.binpb never exists.
    std::fs::write(dir.path().join(".broken.binpb.1-0.tmp"), b"\x0a\xff half").unwrap();
    std::fs::write(
        dir.path().join(".protogate.testing.v1.binpb.9-9.tmp"),
        b"junk",
    )
    .unwrap();

    let setup = Setup::start_in(dir, backend, |_| {}).await;
    let (status, body) = setup
        .gw
        .post("/v1/echo", json!({"stringValue": "again"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, after) = setup.admin_get("/admin/v1/routes").await;
    assert_eq!(before["routes"], after["routes"]);
    let (_, sets_after) = setup.admin_get("/admin/v1/descriptor-sets").await;
    let names_digests = |sets: &Json| -> Vec<(Json, Json, Json)> {
        sets["descriptorSets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].clone(),
                    s["digest"].clone(),
                    s["upstream"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(names_digests(&sets_before), names_digests(&sets_after));
    let (status, _) = setup.gw.get("/v9/extra/1").await;
    assert_eq!(status, 404);
}

// === reload triggers ===

/// Drops the testing set and its upstream into the directory as an operator
/// would: sidecar first, each file written aside and renamed into place.
fn drop_testing_set(dir: &Path, upstream: &str) {
    let place = |name: &str, bytes: &[u8]| {
        let temp = dir.join(format!(".{name}.partial"));
        std::fs::write(&temp, bytes).unwrap();
        std::fs::rename(&temp, dir.join(name)).unwrap();
    };
    place(
        "protogate.testing.v1.upstream.json",
        json!({ "upstream": upstream }).to_string().as_bytes(),
    );
    place("protogate.testing.v1.binpb", &testing_bytes());
}

/// Polls `path` until it answers `status` (the reload is asynchronous).
async fn until_status(gw: &Gateway, path: &str, status: u16, mut between: impl FnMut()) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        between();
        if gw.get(path).await.0 == status {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never answered {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_file_change_in_the_directory_reloads() {
    let setup = Setup::start(&[]).await;
    let generation = setup.generation().await;
    drop_testing_set(setup.dir.path(), &setup.backend.url());
    until_status(&setup.gw, "/v1/echo", 200, || {}).await;
    assert!(setup.generation().await > generation);
    let (_, list) = setup.admin_get("/admin/v1/descriptor-sets").await;
    assert!(list["descriptorSets"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "protogate.testing.v1" && s["upstream"] == setup.backend.url()));

    std::fs::remove_file(setup.dir.path().join("protogate.testing.v1.binpb")).unwrap();
    until_status(&setup.gw, "/v1/echo", 404, || {}).await;
    setup.assert_old_routes_serve().await;
}

#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads_the_directory() {
    // Installed first, so a SIGHUP never takes the default action (exit).
    let _hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).unwrap();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let setup = Setup::start_in(dir, Backend::start().await, |config| {
        config.descriptors.watch = false;
    })
    .await;
    drop_testing_set(setup.dir.path(), &setup.backend.url());
    let pid = std::process::id().to_string();
    until_status(&setup.gw, "/v1/echo", 200, || {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    })
    .await;
}

// === .proto uploads ===

/// Archive members: (path, contents).
type Files<'a> = &'a [(&'a str, &'a [u8])];

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        // Written raw: the builder itself refuses the `..` paths under test.
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        builder.append(&header, *bytes).unwrap();
    }
    builder.into_inner().unwrap()
}

fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write as _;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in files {
        writer.start_file(*name, options).unwrap();
        writer.write_all(bytes).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

fn multipart_of(files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "protogate-test-boundary";
    let mut body = Vec::new();
    for (name, bytes) in files {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
                 Content-Type: text/plain\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test]
async fn proto_sources_are_compiled_and_served_or_refused_with_positions() {
    let setup = Setup::start(&[]).await;
    let url = setup.backend.url();
    let testing_proto =
        std::fs::read(Path::new(MANIFEST).join("protos/protogate/testing/v1/testing.proto"))
            .unwrap();
    let files: &[(&str, &[u8])] = &[
        ("protogate/testing/v1/testing.proto", &testing_proto),
        ("README.md", b"ignored"),
    ];
    let (multipart_type, multipart) = multipart_of(files);
    let uploads = [
        ("application/x-tar".to_owned(), tar_of(files)),
        ("application/zip".to_owned(), zip_of(files)),
        (multipart_type, multipart),
    ];
    for (content_type, body) in uploads {
        let (status, body) = setup
            .admin_send(
                setup
                    .gw
                    .client
                    .put(setup.admin(&format!("/admin/v1/descriptor-sets/testing?upstream={url}")))
                    .header("content-type", &content_type)
                    .body(body),
            )
            .await;
        assert_eq!(status, 201, "{content_type}: {body}");
        let (status, echoed) = setup
            .gw
            .post("/v1/echo", json!({"stringValue": "compiled"}))
            .await;
        assert_eq!(status, 200, "{content_type}: {echoed}");
        assert_eq!(echoed["stringValue"], "compiled");
        assert_eq!(setup.delete_set("testing").await.0, 200);
    }

    let generation = setup.generation().await;
    let refusals: [(Files<'_>, &str); 5] = [
        (
            &[(
                "bad.proto",
                b"syntax = \"proto3\";\nmessage M {\n  strin x = 1;\n}\n",
            )],
            "set `bad`: bad.proto:3:3: name 'strin' is not defined",
        ),
        // protox-parse asserts on it: a debug build's compiler panicked (500).
        (
            &[(
                "bad.proto",
                b"syntax = \"proto3\";\nmessage M {\n  int32 x = 019;\n}\n",
            )],
            "set `bad`: bad.proto:3:13: invalid integer `019`",
        ),
        (
            &[(
                "bad.proto",
                b"syntax = \"proto3\";\nimport \"nowhere/x.proto\";\n",
            )],
            "set `bad`: bad.proto:2:1: import 'nowhere/x.proto' not found",
        ),
        (
            &[(
                "bad.proto",
                b"syntax = \"proto3\";\nmessage M { int32 x = 1 }\n",
            )],
            "set `bad`: bad.proto:2:25:",
        ),
        (
            &[("../escape.proto", b"")],
            "set `bad`: ../escape.proto: is not a relative path",
        ),
    ];
    for (files, message) in refusals {
        let (status, body) = setup
            .admin_send(
                setup
                    .gw
                    .client
                    .put(setup.admin(&format!("/admin/v1/descriptor-sets/bad?upstream={url}")))
                    .header("content-type", "application/x-tar")
                    .body(tar_of(files)),
            )
            .await;
        assert_eq!(status, 400, "{message}: {body}");
        common::assert_status(&body, Code::InvalidArgument, message);
        assert!(
            violations(&body).iter().any(|v| v.starts_with(message)),
            "{body}"
        );
    }
    let (status, body) = setup
        .admin_send(
            setup
                .gw
                .client
                .put(setup.admin("/admin/v1/descriptor-sets/bad"))
                .header("content-type", "text/plain")
                .body("x"),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    common::assert_status(
        &body,
        Code::InvalidArgument,
        "`text/plain` is not application/x-protobuf",
    );
    assert_eq!(setup.generation().await, generation);
    setup.assert_old_routes_serve().await;
}

// === CLI ===

/// Runs `protogate admin --admin-addr ADDR args...` off the runtime.
async fn cli(setup: &Setup, token: &str, args: &[&str]) -> (bool, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_protogate"));
    command
        .args(["admin", "--admin-addr", &setup.gw.admin_addr.to_string()])
        .args(args)
        .env("PROTOGATE_ADMIN_TOKEN", token);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[tokio::test]
async fn the_cli_uploads_lists_routes_and_deletes() {
    let setup = Setup::start(&[]).await;
    let url = setup.backend.url();
    let files = tempfile::tempdir().unwrap();
    let set = files.path().join("testing.binpb");
    std::fs::write(&set, testing_bytes()).unwrap();
    let set = set.to_str().unwrap();

    let (ok, stdout, stderr) = cli(
        &setup,
        TOKEN,
        &["upload", set, "--name", "testing", "--upstream", &url],
    )
    .await;
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("loaded `testing` (sha256:"), "{stdout}");
    let (status, _) = setup.gw.post("/v1/echo", json!({})).await;
    assert_eq!(status, 200);
    let (ok, stdout, _) = cli(
        &setup,
        TOKEN,
        &["upload", set, "--name", "testing", "--upstream", &url],
    )
    .await;
    assert!(ok && stdout.starts_with("unchanged `testing`"), "{stdout}");

    let (ok, stdout, _) = cli(&setup, TOKEN, &["list"]).await;
    assert!(ok);
    assert!(
        stdout.lines().any(|l| l.starts_with("testing  sha256:")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("acme.orders.v1 ") && l.ends_with("(config)")),
        "{stdout}"
    );
    let (ok, stdout, _) = cli(&setup, TOKEN, &["routes"]).await;
    assert!(ok);
    assert!(
        stdout.contains(&format!(
            "POST /v1/echo  -> protogate.testing.v1.TestService.Echo  @ {url}"
        )),
        "{stdout}"
    );

    // A .proto file is compiled; a refusal prints the gateway's message and exits non-zero.
    let proto = files.path().join("bad.proto");
    std::fs::write(&proto, "syntax = \"proto3\";\nmessage M { strin x = 1; }\n").unwrap();
    let (ok, _, stderr) = cli(
        &setup,
        TOKEN,
        &["upload", proto.to_str().unwrap(), "--name", "bad"],
    )
    .await;
    assert!(!ok);
    assert!(
        stderr.contains("400 refused: set `bad`: bad.proto:2:13: name 'strin' is not defined"),
        "{stderr}"
    );
    let (ok, _, stderr) = cli(&setup, "wrong", &["list"]).await;
    assert!(!ok);
    assert!(
        stderr.contains("401 missing or invalid admin token"),
        "{stderr}"
    );

    let (ok, stdout, _) = cli(&setup, TOKEN, &["delete", "testing"]).await;
    assert!(ok && stdout.starts_with("deleted `testing`"), "{stdout}");
    let (status, _) = setup.gw.post("/v1/echo", json!({})).await;
    assert_eq!(status, 404);
}

/// The route listing (the console's Routes table) names each route's
/// quotas and the deprecation headers it answers with.
#[tokio::test]
async fn the_route_listing_names_quotas_and_deprecation() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let setup = Setup::start_in(dir, Backend::start().await, |config| {
        config.rate_limit = Some(serde_yaml_ng::from_str("per_ip: { requests: 100, per: 1m }").unwrap());
        config.policies = serde_yaml_ng::from_str(
            "[{ method: acme.orders.v1.OrderService.GetOrder, rate_limit: { per_ip: { requests: 5, per: 1h } } }]",
        )
        .unwrap();
        config.deprecations.push(DeprecationConfig {
            methods: "acme.orders.v1.*".into(),
            since: Some("2026-01-01".into()),
            sunset: Some("2027-06-30T00:00:00Z".into()),
            link: Some("https://example.com/orders/v2".into()),
        });
    })
    .await;
    let (status, routes) = setup.admin_get("/admin/v1/routes").await;
    assert_eq!(status, 200, "{routes}");
    let route = |label: &str| {
        routes["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["route"] == label)
            .cloned()
            .unwrap_or_else(|| panic!("no {label}"))
    };
    let get = route("GET /v1/orders/{id}");
    assert_eq!(
        get["policy"]["quota"],
        json!({ "perUser": null, "perIp": { "requests": 5, "per": "1h" } })
    );
    assert_eq!(
        get["deprecation"],
        json!({
            "deprecation": "@1767225600",
            "sunset": "Wed, 30 Jun 2027 00:00:00 GMT",
            "link": "<https://example.com/orders/v2>; rel=\"successor-version\"",
        })
    );
    let v2 = route("GET /v2/orders/{id}");
    assert_eq!(
        v2["policy"]["quota"]["perIp"],
        json!({ "requests": 100, "per": "1m" })
    );
    assert_eq!(v2["deprecation"], Json::Null);
}

// === API versions ===

#[tokio::test]
async fn deprecated_packages_services_and_methods_answer_with_deprecation_headers() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let setup = Setup::start_in(dir, Backend::start().await, |config| {
        config.deprecations.push(DeprecationConfig {
            methods: "acme.orders.v1.*".into(),
            since: Some("2026-01-01".into()),
            sunset: Some("2027-06-30T00:00:00Z".into()),
            link: Some("https://example.com/orders/v2".into()),
        });
    })
    .await;
    let response = setup
        .gw
        .client
        .get(setup.gw.url("/v1/orders/o-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["deprecation"], "@1767225600");
    assert_eq!(
        response.headers()["sunset"],
        "Wed, 30 Jun 2027 00:00:00 GMT"
    );
    assert_eq!(
        response.headers()["link"],
        r#"<https://example.com/orders/v2>; rel="successor-version""#
    );
    let response = setup
        .gw
        .client
        .get(setup.gw.url("/v2/orders/o-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("deprecation").is_none());

    // The proto's own `deprecated` option, on the file, the service or one method.
    let url = setup.backend.url();
    let proto = |name: &str, file: &str, service: &str, method: &str| {
        compile(
            name,
            &format!(
                r#"syntax = "proto3";
package t.{name};
import "google/api/annotations.proto";
{file}
message Req {{ string id = 1; }}
service S {{
  {service}
  rpc Old(Req) returns (Req) {{ option (google.api.http) = {{ get: "/v9/{name}/old" }}; {method} }}
  rpc New(Req) returns (Req) {{ option (google.api.http) = {{ get: "/v9/{name}/new" }}; }}
}}"#
            ),
        )
    };
    let cases = [
        (
            "file",
            proto("file", "option deprecated = true;", "", ""),
            true,
        ),
        (
            "service",
            proto("service", "", "option deprecated = true;", ""),
            true,
        ),
        (
            "method",
            proto("method", "", "", "option deprecated = true;"),
            false,
        ),
    ];
    for (name, bytes, whole_service) in cases {
        assert_eq!(
            setup.put_set(name, bytes, Some(&url)).await.0,
            201,
            "{name}"
        );
        for (method, deprecated) in [("old", true), ("new", whole_service)] {
            let response = setup
                .gw
                .client
                .get(setup.gw.url(&format!("/v9/{name}/{method}")))
                .send()
                .await
                .unwrap();
            // The backend does not implement it; the headers come with any answer.
            assert_eq!(response.status(), 501, "{name} {method}");
            let header = response.headers().get("deprecation");
            assert_eq!(
                header.map(|h| h.to_str().unwrap()),
                deprecated.then_some("@0"),
                "{name} {method}"
            );
        }
    }
}

// === zero dropped requests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_requests_never_fail_while_sets_come_and_go() {
    let setup = Arc::new(Setup::start(&[]).await);
    let url = setup.backend.url();
    let done = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (setup, done, served) = (setup.clone(), done.clone(), served.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                // Bounded: stops once the uploads are done (or after 100k requests).
                for _ in 0..100_000 {
                    if done.load(SeqCst) {
                        break;
                    }
                    let (status, body) = setup.gw.get("/v2/orders/o-1").await;
                    if status == 200 {
                        served.fetch_add(1, SeqCst);
                    } else {
                        failures.push((status, body));
                    }
                }
                failures
            })
        })
        .collect();
    let mut generations = Vec::new();
    for round in 0..20 {
        let extra = service(
            "extra",
            &format!(
                r#"rpc Get(Req) returns (Res) {{ option (google.api.http) = {{ get: "/v9/extra{round}/{{id}}" }}; }}"#
            ),
        );
        let (status, body) = setup.put_set("extra", extra, Some(&url)).await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = setup
            .put_set("protogate.testing.v1", testing_bytes(), Some(&url))
            .await;
        assert_eq!(status, 201, "{body}");
        generations.push(body["generation"].as_u64().unwrap());
        assert_eq!(setup.delete_set("protogate.testing.v1").await.0, 200);
        assert_eq!(setup.delete_set("extra").await.0, 200);
    }
    // Let the clients see the final catalog too, then stop them.
    let seen = served.load(SeqCst);
    while served.load(SeqCst) < seen + 10 {
        tokio::task::yield_now().await;
    }
    done.store(true, SeqCst);
    for client in clients {
        let failures = client.await.unwrap();
        assert!(failures.is_empty(), "failed requests: {failures:?}");
    }
    assert!(generations.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test]
async fn requests_in_flight_finish_on_the_catalog_they_started_with() {
    let setup = Setup::start(&["acme.orders.v1"]).await;
    let response = setup
        .gw
        .client
        .get(setup.gw.url("/v1/orders:watch"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response;
    // The first existing order proves the stream is routed and running.
    let mut text = String::new();
    while !text.contains("o-1") {
        let chunk = tokio::time::timeout(Duration::from_secs(30), stream.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert_eq!(setup.delete_set("acme.orders.v1").await.0, 200);
    let (status, _) = setup.gw.get("/v1/orders/o-1").await;
    assert_eq!(status, 404);

    // The old stream still runs on the old catalog: it sees an order made through v2.
    let (status, body) = setup
        .gw
        .post(
            "/v2/orders",
            json!({"customerId": "c-inflight", "lineItems": [{"sku": "z", "quantity": 1, "unitPrice": {"currencyCode": "EUR", "units": "1"}}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    while !text.contains("c-inflight") {
        let chunk = tokio::time::timeout(Duration::from_secs(30), stream.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("CREATED"), "{text}");
}

#[tokio::test]
async fn reloads_are_counted_by_result() {
    let setup = Setup::start(&[]).await;
    let url = setup.backend.url();
    // Applied, then unchanged (the same bytes again), then refused.
    let uploads = [
        (
            "protogate.testing.v1",
            testing_bytes(),
            Some(url.as_str()),
            201,
        ),
        (
            "protogate.testing.v1",
            testing_bytes(),
            Some(url.as_str()),
            200,
        ),
        ("junk", Bytes::from_static(b"\xff\xff"), None, 400),
    ];
    for (name, bytes, upstream, status) in uploads {
        assert_eq!(
            setup.put_set(name, bytes, upstream).await.0,
            status,
            "{name}"
        );
    }
    let metrics = setup.gw.text(setup.admin("/metrics")).await;
    for result in ["applied", "unchanged", "refused"] {
        let line = format!("protogate_catalog_reloads_total{{result=\"{result}\"}} 1");
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in:\n{metrics}"
        );
    }
}
