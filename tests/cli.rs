//! The `protogate` command as a newcomer meets it: flags that take what a
//! user types, errors that name what to fix, `check` on sources and whole
//! configs, the admin commands, test tokens, the demo, and the README's
//! examples run as written.

mod common;
/// The shop example's backend, as `cargo run --example shop-backend` serves it.
#[path = "../examples/shop/service.rs"]
mod shop;

use std::{path::Path, process::Stdio};

use common::{
    process::{
        free_port, protogate, readme_block, serve_orders_v1, wait_for, Child, Lines, MANIFEST,
    },
    tokens, Backend, Gateway,
};
use protogate::config::{AuthConfig, PolicyRule, ProviderConfig};

/// [`run_blocking`] off the runtime.
async fn run(mut command: std::process::Command) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || run_blocking(&mut command))
        .await
        .unwrap()
}

/// Runs a command to its end: (success, stdout, stderr).
fn run_blocking(command: &mut std::process::Command) -> (bool, String, String) {
    let output = command.output().unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// A proto with one annotated method, as a service team would write it.
const WIDGETS: &str = r#"syntax = "proto3";
package widgets.v1;
import "google/api/annotations.proto";
message Widget { string id = 1; }
service WidgetService {
  rpc GetWidget(Widget) returns (Widget) { option (google.api.http) = { get: "/v1/widgets/{id}" }; }
}
"#;

// === errors that name what to fix ===

#[test]
fn a_missing_config_file_is_reported_once() {
    let (ok, _, stderr) = run_blocking(protogate().args(["serve", "--config", "nonexist.yaml"]));
    assert!(!ok);
    assert_eq!(
        stderr,
        "error: cannot read nonexist.yaml: No such file or directory (os error 2)\n"
    );
}

#[test]
fn the_demo_names_the_address_it_cannot_listen_on() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (ok, _, stderr) = run_blocking(protogate().args([
        "demo",
        "--listen",
        &addr,
        "--admin-listen",
        "127.0.0.1:0",
    ]));
    assert!(!ok);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}: Address already in use")),
        "{stderr}"
    );
}

#[test]
fn a_policy_rule_matching_no_method_is_a_configuration_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        "policies: [{ method: 'acme.nothing.*', allow_anonymous: true }]\n\
         upstreams: [{ pattern: acme, url: 'http://127.0.0.1:1' }]\n",
    )
    .unwrap();
    let (ok, _, stderr) = run_blocking(
        protogate()
            .args([
                "serve",
                "--descriptor-set",
                "descriptor-sets/acme.orders.v1.binpb",
            ])
            .arg("--config")
            .arg(&config),
    );
    assert!(!ok);
    assert!(
        stderr.contains(
            "1 problem(s) in the configuration:\n  - policies[0]: `acme.nothing.*` matches no served method"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("descriptor sets"), "{stderr}");
}

// === flags ===

#[tokio::test]
async fn listen_addresses_may_be_host_names() {
    let backend = Backend::start().await;
    let port = free_port();
    let _serve = Child(
        serve_orders_v1(&backend.url(), "localhost", port)
            .spawn()
            .unwrap(),
    );
    let response = wait_for(&format!("http://127.0.0.1:{port}/v1/orders/o-1")).await;
    assert_eq!(response.status(), 200);
}

/// `admin routes`: the address after the subcommand, as a host name; each
/// route says who may call it, and never claims a policy nothing enforces.
#[tokio::test]
async fn admin_commands_take_the_address_anywhere_and_say_who_may_call() {
    let routes = |gw: &Gateway| {
        let mut command = protogate();
        command.args([
            "admin",
            "routes",
            "--admin-addr",
            &format!("localhost:{}", gw.admin_addr.port()),
        ]);
        run(command)
    };
    let open = Gateway::start().await;
    let (ok, stdout, stderr) = routes(&open).await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.lines().any(|line| line.starts_with(
            "GET /v1/orders/{id}  -> acme.orders.v1.OrderService.GetOrder  @ http://"
        ) && line.ends_with("  [auth off: anyone]")),
        "{stdout}"
    );

    let key = tokens::EcKey::generate("k1");
    let guarded = Gateway::start_with(|config| {
        config.auth = Some(AuthConfig {
            providers: vec![provider(&format!("public_key_pem: {:?}", key.public_pem()))],
            ..AuthConfig::default()
        });
        config.policies = vec![
            rule("acme.orders.v1.OrderService.ListOrders", |r| {
                r.allow_anonymous = Some(true);
            }),
            rule("acme.orders.v1.OrderService.DeleteOrder", |r| {
                r.roles = Some(vec!["admin".into()]);
            }),
        ];
    })
    .await;
    let (ok, stdout, stderr) = routes(&guarded).await;
    assert!(ok, "{stderr}");
    for (route, access) in [
        ("GET /v1/orders  ", "[anonymous allowed]"),
        ("GET /v1/orders/{id}  ", "[token]"),
        ("DELETE /v1/orders/{id}  ", "[token; a role of admin]"),
    ] {
        assert!(
            stdout
                .lines()
                .any(|line| line.starts_with(route) && line.ends_with(access)),
            "{route} {access}: {stdout}"
        );
    }
}

/// A provider for the test tokens' issuer; `fields` adds its key source.
fn provider(fields: &str) -> ProviderConfig {
    serde_yaml_ng::from_str(&format!("{{ issuer: '{}', {fields} }}", tokens::ISSUER)).unwrap()
}

fn rule(method: &str, adjust: impl FnOnce(&mut PolicyRule)) -> PolicyRule {
    let mut rule = PolicyRule {
        method: method.into(),
        allow_anonymous: None,
        roles: None,
        scopes: None,
        client_certificate: None,
        rate_limit: None,
    };
    adjust(&mut rule);
    rule
}

#[tokio::test]
async fn admin_upload_takes_a_tar_gz_of_protos() {
    let gw = Gateway::start().await;
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (_, tar_gz) = widget_files(dir.path());
    let mut upload = protogate();
    upload
        .args(["admin", "upload"])
        .arg(&tar_gz)
        .args(["--name", "widgets", "--upstream", &backend.url()])
        .args(["--admin-addr", &gw.admin_addr.to_string()]);
    let (ok, stdout, stderr) = run(upload).await;
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("loaded `widgets`"), "{stdout}");
    let (status, _) = gw.get("/v1/widgets/w-1").await;
    // Routed to the backend, which does not serve widgets: its UNIMPLEMENTED.
    assert_eq!(status, 501);
}

// === check ===

/// `WIDGETS` as `widgets.proto` and as `widgets.tar.gz` in `dir`.
fn widget_files(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let proto = dir.join("widgets.proto");
    std::fs::write(&proto, WIDGETS).unwrap();
    let mut archive = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    archive
        .append_path_with_name(&proto, "widgets/v1/widgets.proto")
        .unwrap();
    let tar_gz = dir.join("widgets.tar.gz");
    std::fs::write(&tar_gz, archive.into_inner().unwrap().finish().unwrap()).unwrap();
    (proto, tar_gz)
}

#[test]
fn check_compiles_proto_files_and_archives_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let (proto, tar_gz) = widget_files(dir.path());
    for file in [&proto, &tar_gz] {
        let (ok, stdout, stderr) = run_blocking(protogate().arg("check").arg(file));
        assert!(ok, "{}: {stderr}", file.display());
        assert_eq!(
            stdout,
            "GET /v1/widgets/{id}  -> /widgets.v1.WidgetService/GetWidget\n",
            "{}",
            file.display()
        );
    }

    std::fs::write(&proto, WIDGETS.replace("string id", "strin id")).unwrap();
    let (ok, _, stderr) = run_blocking(protogate().arg("check").arg(&proto));
    assert!(!ok);
    assert!(
        stderr.contains("widgets.proto:4:18: name 'strin' is not defined"),
        "{stderr}"
    );
}

#[tokio::test]
async fn check_and_serve_warn_of_an_upstream_pattern_matching_no_service() {
    let upstreams = [
        "--upstream",
        "acme.orders.v1=http://127.0.0.1:1",
        "--upstream",
        "acme.ordres=http://127.0.0.1:1",
    ];
    let warning = "upstream pattern `acme.ordres` matches no service";
    let mut check = protogate();
    check
        .args(["check", "descriptor-sets/acme.orders.v1.binpb"])
        .args(upstreams);
    let (ok, stdout, stderr) = run(check).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("GET /v1/orders/{id}"), "{stdout}");
    assert!(stderr.contains(warning), "{stderr}");

    let mut serve = Child(
        protogate()
            .args([
                "serve",
                "--descriptor-set",
                "descriptor-sets/acme.orders.v1.binpb",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args(upstreams)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = Lines::new(serve.0.stderr.take().unwrap());
    let line = tokio::task::spawn_blocking(move || {
        stderr.until("the warning or `serving`", |line| {
            line.contains(warning) || line.contains("serving")
        })
    })
    .await
    .unwrap();
    assert!(line.contains(warning), "{line}");
}

/// A config file means the same from any folder: its relative paths are
/// relative to it, whatever the working directory.
#[test]
fn a_config_files_relative_paths_are_relative_to_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sets")).unwrap();
    std::fs::copy(
        Path::new(MANIFEST).join("descriptor-sets/acme.users.v1.binpb"),
        dir.path().join("sets/users.binpb"),
    )
    .unwrap();
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        "descriptors: { files: [sets/users.binpb] }\n\
         upstreams: [{ pattern: acme, url: 'http://127.0.0.1:1' }]\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = run_blocking(protogate().args(["check", "--config"]).arg(&config));
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("GET /v1/{name=tenants/*/users/*}"),
        "{stdout}"
    );
}

/// `check --config` validates trace export as `serve` would, naming the key.
#[test]
fn check_config_names_a_bad_otlp_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    let sets = format!(
        "descriptors: {{ files: ['{MANIFEST}/descriptor-sets/acme.users.v1.binpb'] }}\n\
         upstreams: [{{ pattern: acme, url: 'http://127.0.0.1:1' }}]\n"
    );
    for (otlp, refused) in [
        (
            "{ endpoint: 'http://127.0.0.1:4317', sample_ratio: 2 }",
            Some("tracing.otlp.sample_ratio"),
        ),
        (
            "{ endpoint: 'http://127.0.0.1:4317', protocol: http/protobuf }",
            Some("tracing.otlp.protocol"),
        ),
        (
            "{ endpoint: '127.0.0.1:4317' }",
            Some("tracing.otlp.endpoint"),
        ),
        (
            "{ endpoint: 'http://127.0.0.1:4317', sample_ratio: 0.5, headers: { x-api-key: k } }",
            None,
        ),
    ] {
        std::fs::write(&config, format!("{sets}tracing: {{ otlp: {otlp} }}\n")).unwrap();
        let (ok, _, stderr) = run_blocking(protogate().args(["check", "--config"]).arg(&config));
        match refused {
            Some(key) => assert!(!ok && stderr.contains(key), "{otlp}: {stderr}"),
            None => assert!(ok, "{otlp}: {stderr}"),
        }
    }
}

// === test tokens and the example config ===

/// `protogate token` signs with the RSA fixture; a gateway that trusts its
/// public half accepts the token and reads its roles.
#[tokio::test]
async fn a_minted_token_is_accepted_by_a_gateway_with_the_matching_key() {
    let gw = Gateway::start_with(|config| {
        let key = format!(
            "audiences: ['{}'], public_key_file: '{MANIFEST}/tests/fixtures/rsa-public.pem'",
            tokens::AUDIENCE
        );
        config.auth = Some(AuthConfig {
            providers: vec![provider(&key)],
            ..AuthConfig::default()
        });
        config.policies = vec![rule("acme.orders.v1.OrderService.DeleteOrder", |r| {
            r.roles = Some(vec!["admin".into()]);
        })];
    })
    .await;
    let mint = |roles: &str| {
        let mut command = protogate();
        command.args([
            "token",
            "--key",
            "tests/fixtures/rsa-private.pem",
            "--iss",
            tokens::ISSUER,
            "--aud",
            tokens::AUDIENCE,
            "--sub",
            "alice",
            "--roles",
            roles,
            "--ttl",
            "10m",
        ]);
        async {
            let (ok, stdout, stderr) = run(command).await;
            assert!(ok, "{stderr}");
            stdout.trim_end().to_owned()
        }
    };
    let customer = mint("customer").await;
    let admin = mint("customer,admin").await;
    let call = |method: reqwest::Method, path: &str, token: &str| {
        gw.send(gw.client.request(method, gw.url(path)).bearer_auth(token))
    };
    assert_eq!(
        call(reqwest::Method::GET, "/v1/orders/o-1", &customer)
            .await
            .0,
        200
    );
    assert_eq!(
        call(reqwest::Method::DELETE, "/v1/orders/o-4", &customer)
            .await
            .0,
        403
    );
    assert_eq!(
        call(reqwest::Method::DELETE, "/v1/orders/o-4", &admin)
            .await
            .0,
        200
    );

    let mut wrong = protogate();
    wrong.args([
        "token",
        "--key",
        "tests/fixtures/rsa-private.pem",
        "--alg",
        "ES256",
        "--iss",
        "i",
        "--sub",
        "s",
    ]);
    let (ok, _, stderr) = run(wrong).await;
    assert!(!ok);
    assert!(stderr.contains("ES256 does not fit the key"), "{stderr}");
}

/// examples/protogate.yaml as shipped: valid, and served next to the example
/// backend with a token from its example key. Only the addresses differ (free
/// ports, the test's backend) and uploads go to a temp dir.
#[tokio::test]
async fn the_example_config_runs_as_shipped_with_its_example_keys() {
    let (ok, stdout, stderr) = run({
        let mut command = protogate();
        command.args(["check", "--config", "examples/protogate.yaml"]);
        command
    })
    .await;
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("WARN"), "{stderr}");
    assert!(stdout.contains("GET /v2/orders/{id}"), "{stdout}");

    let backend = Backend::start().await;
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let _serve = Child(
        protogate()
            .args(["serve", "--config", "examples/protogate.yaml"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", "127.0.0.1:0"])
            .arg("--descriptors")
            .arg(data.path())
            .arg("--upstream")
            .arg(format!("acme.orders={}", backend.url()))
            .arg("--upstream")
            .arg(format!("acme.users.v1={}", backend.url()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let public = wait_for(&format!("http://127.0.0.1:{port}/v1/orders?pageSize=1")).await;
    assert_eq!(public.status(), 200);
    let mut mint = protogate();
    mint.args([
        "token",
        "--key",
        "examples/keys/es256.pem",
        "--kid",
        "example",
        "--iss",
        "protogate-example",
        "--aud",
        "orders-api",
        "--sub",
        "alice",
        "--roles",
        "admin",
    ]);
    let (ok, token, stderr) = run(mint).await;
    assert!(ok, "{stderr}");
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/v1/orders/o-1");
    let anonymous = client.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let signed = client
        .get(&url)
        .bearer_auth(token.trim_end())
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 200);
    let body: serde_json::Value = signed.json().await.unwrap();
    assert_eq!(body["id"], "o-1");
}

// === the README's examples, run as written ===

/// The shop backend on a port of its own, until dropped.
struct ShopBackend {
    addr: std::net::SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl ShopBackend {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(shop::Shops::seeded().into_server())
                .add_service(shop::Shops::reflection())
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        Self { addr, _stop: stop }
    }
}

/// Where the README's addresses point in a test.
#[derive(Clone, Copy)]
struct Addresses {
    /// `localhost:8080`
    public: u16,
    /// `localhost:9901`
    admin: u16,
    /// The shop backend's `127.0.0.1:50052`.
    shop: Option<std::net::SocketAddr>,
}

impl Addresses {
    fn free(shop: Option<&ShopBackend>) -> Self {
        Self {
            public: free_port(),
            admin: free_port(),
            shop: shop.map(|shop| shop.addr),
        }
    }
}

/// Runs README shell blocks with bash as written, but for the addresses:
/// `localhost:8080` and `localhost:9901` become `to`'s ports (`protogate
/// serve` is told them, `protogate admin` the second), and the shop
/// backend's `127.0.0.1:50052` becomes `to.shop`, which serves the block's
/// `cargo run --example shop-backend &`. After a `protogate serve … &`, the
/// script waits until the gateway answers. `protogate` is the binary under
/// test; curl, bash, tar and openssl are the machine's (the test fails if one
/// is missing). curl fails on an HTTP error status (a curlrc with
/// `fail-with-body`) and bash stops at the first failure. The blocks run in a
/// temp folder that sees the repository's `examples/`. Returns stdout.
async fn run_readme(blocks: &[String], to: &Addresses) -> String {
    let Addresses {
        public,
        admin,
        shop,
    } = *to;
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        Path::new(MANIFEST).join("examples"),
        dir.path().join("examples"),
    )
    .unwrap();
    std::fs::write(dir.path().join(".curlrc"), "fail-with-body\nshow-error\n").unwrap();
    let mut script =
        String::from("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true; wait' EXIT\n");
    for block in blocks {
        for line in block.lines() {
            if line.starts_with("cargo run --example shop-backend &") {
                assert!(shop.is_some(), "the block needs the shop backend");
                script.push_str("true  # the shop backend: served by the test\n");
                continue;
            }
            let shop = shop.map_or_else(|| "127.0.0.1:50052".to_owned(), |addr| addr.to_string());
            let line = line
                .replace("localhost:8080", &format!("127.0.0.1:{public}"))
                .replace("localhost:9901", &format!("127.0.0.1:{admin}"))
                .replace("127.0.0.1:50052", &shop)
                .replace(
                    "protogate serve ",
                    &format!("protogate serve --listen 127.0.0.1:{public} --admin-listen 127.0.0.1:{admin} "),
                )
                .replace(
                    "protogate admin ",
                    &format!("protogate admin --admin-addr 127.0.0.1:{admin} "),
                );
            script.push_str(&line);
            script.push('\n');
            if line.starts_with("protogate serve ") {
                script.push_str(&format!(
                    "for _ in $(seq 300); do curl -so /dev/null 127.0.0.1:{admin}/healthz 2>/dev/null && break; sleep 0.1; done\n"
                ));
            }
        }
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_protogate")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut bash = std::process::Command::new("bash");
    bash.arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("PATH", path)
        .env("CURL_HOME", dir.path())
        .stdin(Stdio::null());
    let output = tokio::task::spawn_blocking(move || bash.output())
        .await
        .unwrap()
        .expect("bash is needed to run the README's examples");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the README's commands failed:\n--- script\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    stdout
}

#[tokio::test]
async fn the_readme_discovers_the_shop_service_through_reflection() {
    let shop = ShopBackend::start().await;
    let block = readme_block("## Bring your own services", 0);
    let stdout = run_readme(&[block], &Addresses::free(Some(&shop))).await;
    for expected in [
        "GET /v1/shops/{id}     -> /acme.shop.v1.ShopService/GetShop  @ http://",
        r#"{"id":"s-1","name":"Corner Shop","city":"Lyon"}"#,
    ] {
        assert!(stdout.contains(expected), "{expected} not in:\n{stdout}");
    }
}

#[tokio::test]
async fn the_readme_brings_the_shop_service_end_to_end() {
    let shop = ShopBackend::start().await;
    let block = readme_block("## Bring your own services", 1);
    let stdout = run_readme(&[block], &Addresses::free(Some(&shop))).await;
    for expected in [
        "GET /v1/shops/{id}     -> /acme.shop.v1.ShopService/GetShop",
        r#"{"id":"s-1","name":"Corner Shop","city":"Lyon"}"#,
        r#"{"id":"s-3","name":"Night Market","city":"Lyon"}"#,
        r#"{"shops":[{"id":"s-1","name":"Corner Shop","city":"Lyon"},{"id":"s-3","#,
    ] {
        assert!(stdout.contains(expected), "{expected} not in:\n{stdout}");
    }
}

/// Every admin example: registering the shop with curl (a descriptor set,
/// a tar of its proto, a multipart form, a dry run sent with curl's default
/// form content type), upstreams at run time, then the same with the CLI.
#[tokio::test]
async fn the_readmes_admin_examples_run_as_written() {
    let shop = ShopBackend::start().await;
    let heading = "## Registering services at run time";
    let blocks = [readme_block(heading, 0), readme_block(heading, 1)];
    let stdout = run_readme(&blocks, &Addresses::free(Some(&shop))).await;
    for expected in [
        r#""name":"acme.shop.v1""#,
        r#""routeCount":4"#,
        r#"{"id":"s-1","name":"Corner Shop","city":"Lyon"}"#,
        r#""valid":true"#,
        r#""source":"admin""#,
        r#"{"deleted":"acme.shop.v1""#,
        "loaded `acme.shop.v1`",
        "GET /v1/shops/{id}  -> acme.shop.v1.ShopService.GetShop  @ http://",
        "deleted `acme.shop.v1`",
    ] {
        assert!(stdout.contains(expected), "{expected} not in:\n{stdout}");
    }
}

/// The demo: its banner alone on stdout (routes, then tokens to copy), the
/// access log on stderr, and the README's CORS preflight and admin listener
/// examples answered.
#[tokio::test]
async fn the_demo_prints_its_banner_on_stdout_and_logs_on_stderr() {
    let to = Addresses::free(None);
    let mut demo = Child(
        protogate()
            .args(["demo", "--listen", &format!("127.0.0.1:{}", to.public)])
            .args(["--admin-listen", &format!("127.0.0.1:{}", to.admin)])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdout = Lines::new(demo.0.stdout.take().unwrap());
    let mut stderr = Lines::new(demo.0.stderr.take().unwrap());
    let (stdout, token) = tokio::task::spawn_blocking(move || {
        let token = stdout.until("the user token", |line| {
            line.starts_with("export PROTOGATE_DEMO_TOKEN=")
        });
        stdout.until("the admin token", |line| {
            line.starts_with("export PROTOGATE_DEMO_ADMIN_TOKEN=")
        });
        (
            stdout,
            token["export PROTOGATE_DEMO_TOKEN=".len()..].to_owned(),
        )
    })
    .await
    .unwrap();

    let order = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/v1/orders/o-1", to.public))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(order.status(), 200);
    let preflight = run_readme(&[readme_block("### CORS (`cors`)", 0)], &to).await;
    let preflight = preflight.to_ascii_lowercase();
    assert!(preflight.starts_with("http/1.1 200"), "{preflight}");
    assert!(
        preflight.contains("access-control-allow-origin: *"),
        "{preflight}"
    );
    let observability = run_readme(&[readme_block("## Observability", 0)], &to).await;
    for expected in ["protogate_http_requests_total", "ok", r#""ready":true"#] {
        assert!(
            observability.contains(expected),
            "{expected}: {observability}"
        );
    }
    tokio::task::spawn_blocking(move || {
        stderr.until("the access log line of the GET", |line| {
            line.contains(r#""path":"/v1/orders/o-1""#)
        })
    })
    .await
    .unwrap();

    drop(demo);
    let banner = tokio::task::spawn_blocking(move || stdout.rest())
        .await
        .unwrap();
    assert!(banner[0].starts_with("protogate demo: "), "{banner:?}");
    assert!(
        banner
            .iter()
            .any(|line| line.starts_with("GET /v1/orders/{id} ")),
        "{banner:?}"
    );
    assert!(
        !banner.iter().any(|line| line.contains(r#""path":"#)),
        "an access log line on stdout: {banner:?}"
    );
}

// === TLS ===

/// A client that trusts only the CA certificate(s) in `pem`, reaching
/// `localhost` on 127.0.0.1.
fn trusting(pem: &[u8], port: u16) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pem).unwrap())
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .build()
        .unwrap()
}

/// `serve --tls-cert FILE --tls-key FILE`: HTTPS beside the cleartext listener.
#[tokio::test]
async fn serve_takes_a_certificate_and_key_on_the_command_line() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let (port, tls_port) = (free_port(), free_port());
    let _serve = Child(
        serve_orders_v1(&backend.url(), "127.0.0.1", port)
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .args(["--tls-listen", &format!("127.0.0.1:{tls_port}")])
            .spawn()
            .unwrap(),
    );
    let cleartext = wait_for(&format!("http://127.0.0.1:{port}/v1/orders/o-1")).await;
    assert_eq!(cleartext.status(), 200);
    let response = trusting(certified.cert.pem().as_bytes(), tls_port)
        .get(format!("https://localhost:{tls_port}/v1/orders/o-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
}

/// `demo --tls`: a certificate made at start, and the curl command that
/// trusts its CA, which works as printed.
#[tokio::test]
async fn the_demo_serves_https_and_says_how_to_trust_its_certificate() {
    let to = Addresses::free(None);
    let tls_port = free_port();
    let mut demo = Child(
        protogate()
            .args([
                "demo",
                "--tls",
                "--listen",
                &format!("127.0.0.1:{}", to.public),
            ])
            .args(["--admin-listen", &format!("127.0.0.1:{}", to.admin)])
            .args(["--tls-listen", &format!("127.0.0.1:{tls_port}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut stdout = Lines::new(demo.0.stdout.take().unwrap());
    // Kept to the end: the demo goes on printing its banner.
    let (_stdout, hint) = tokio::task::spawn_blocking(move || {
        let hint = stdout.until("the curl command", |line| line.contains("curl --cacert "));
        (stdout, hint)
    })
    .await
    .unwrap();
    let command = &hint[hint.find("curl --cacert ").unwrap()..];
    let mut words = command.split_whitespace().skip(2);
    let (ca_file, url) = (words.next().unwrap(), words.next().unwrap());
    assert_eq!(url, format!("https://localhost:{tls_port}/v1/orders"));
    let ca = std::fs::read(ca_file).unwrap();
    let response = trusting(&ca, tls_port).get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let orders: serde_json::Value = response.json().await.unwrap();
    assert!(orders["orders"].is_array(), "{orders}");
}
