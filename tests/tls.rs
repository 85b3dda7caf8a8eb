//! TLS at the edge and to upstreams over real sockets: certificates made by
//! rcgen for each test, reqwest (rustls) as the client, tonic backends, and
//! the gateway's HTTPS listener beside its cleartext one.

mod common;

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{
    tokens::{self, EcKey, ISSUER},
    upstream, Gateway, Testing,
};
use protogate::{
    config::{AuthConfig, CertificateConfig, ClientAuth, ClientIdentityField, TlsConfig},
    pb::protogate::testing::v1::test_service_server::TestServiceServer,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use reqwest::{tls::TlsInfo, Version};
use serde_json::{json, Value as Json};
use tokio::{io::AsyncReadExt as _, net::TcpListener};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

// === certificates ===

/// A CA made for one test, and the certificates it signs.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A signed certificate and its key, as PEM, and the certificate's DER.
#[derive(Clone)]
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate for the DNS `names` with the common name `cn`.
    fn sign(&self, names: &[&str], cn: &str, key: &KeyPair) -> Leaf {
        self.sign_with(names, cn, key, |_| {})
    }

    fn sign_with(
        &self,
        names: &[&str],
        cn: &str,
        key: &KeyPair,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        adjust(&mut params);
        let cert = params.signed_by(key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    fn certificate(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap()
    }

    fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, &self.pem).unwrap();
        path.to_owned()
    }
}

impl Leaf {
    /// Writes the certificate and key as `{name}.pem` and `{name}-key.pem` in `dir`.
    fn write(&self, dir: &Path, name: &str) -> CertificateConfig {
        let config = CertificateConfig {
            cert_file: dir.join(format!("{name}.pem")),
            key_file: dir.join(format!("{name}-key.pem")),
        };
        std::fs::write(&config.cert_file, &self.cert_pem).unwrap();
        std::fs::write(&config.key_file, &self.key_pem).unwrap();
        config
    }

    fn identity(&self) -> reqwest::Identity {
        reqwest::Identity::from_pem(format!("{}{}", self.cert_pem, self.key_pem).as_bytes())
            .unwrap()
    }
}

fn ecdsa() -> KeyPair {
    KeyPair::generate().unwrap()
}

fn ed25519() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap()
}

/// ring cannot generate RSA keys: the fixture key.
fn rsa() -> KeyPair {
    KeyPair::from_pem(include_str!("fixtures/rsa-private.pem")).unwrap()
}

// === gateway and clients ===

async fn tls_gateway(
    certificates: Vec<CertificateConfig>,
    adjust: impl FnOnce(&mut protogate::Config),
) -> Gateway {
    Gateway::start_with(|config| {
        config.tls = Some(TlsConfig::new(certificates));
        adjust(config);
    })
    .await
}

/// A client trusting only `cas`, reaching `host` at the gateway's HTTPS listener.
fn client(gateway: &Gateway, host: &str, cas: &[&Ca]) -> reqwest::ClientBuilder {
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .tls_info(true)
        .resolve(host, gateway.tls_addr.unwrap());
    for ca in cas {
        builder = builder.add_root_certificate(ca.certificate());
    }
    builder
}

fn https(gateway: &Gateway, host: &str, path: &str) -> String {
    format!("https://{host}:{}{path}", gateway.tls_addr.unwrap().port())
}

/// The leaf certificate the server presented for `response`.
fn served_certificate(response: &reqwest::Response) -> Vec<u8> {
    let info = response
        .extensions()
        .get::<TlsInfo>()
        .expect("a TLS response");
    info.peer_certificate().expect("a certificate").to_vec()
}

async fn json(response: reqwest::Response) -> Json {
    response.json().await.unwrap()
}

// === the listener ===

#[tokio::test]
async fn http2_and_http1_are_served_over_alpn_and_cleartext_beside() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let leaf = ca.sign(&["localhost"], "localhost", &ecdsa());
    let gateway = tls_gateway(vec![leaf.write(dir.path(), "localhost")], |_| {}).await;
    let url = https(&gateway, "localhost", "/v1/echo/over-tls");

    let h2 = client(&gateway, "localhost", &[&ca]).build().unwrap();
    let response = h2.get(&url).send().await.unwrap();
    assert_eq!(response.version(), Version::HTTP_2, "ALPN picks h2");
    assert_eq!(served_certificate(&response), leaf.der);
    assert_eq!(json(response).await["stringValue"], "over-tls");

    let h1 = client(&gateway, "localhost", &[&ca])
        .http1_only()
        .build()
        .unwrap();
    let response = h1.get(&url).send().await.unwrap();
    assert_eq!(response.version(), Version::HTTP_11);
    assert_eq!(json(response).await["stringValue"], "over-tls");

    let tls12 = client(&gateway, "localhost", &[&ca])
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .build()
        .unwrap();
    let response = tls12.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200, "TLS 1.2 is served");

    // The cleartext listener still speaks HTTP/1.1 and h2c.
    let response = gateway
        .client
        .get(gateway.url("/v1/echo/clear"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), Version::HTTP_11);
    assert_eq!(json(response).await["stringValue"], "clear");
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2c.get(gateway.url("/v1/echo/clear")).send().await.unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(json(response).await["stringValue"], "clear");
}

#[tokio::test]
async fn sni_chooses_among_rsa_ecdsa_and_ed25519_certificates_with_the_first_as_default() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let leaves = [
        ("rsa.test", ca.sign(&["rsa.test"], "rsa", &rsa())),
        ("ecdsa.test", ca.sign(&["ecdsa.test"], "ecdsa", &ecdsa())),
        (
            "ed25519.test",
            ca.sign(&["*.ed25519.test"], "ed25519", &ed25519()),
        ),
    ];
    let configs = leaves
        .iter()
        .map(|(name, leaf)| leaf.write(dir.path(), name))
        .collect();
    let gateway = tls_gateway(configs, |_| {}).await;

    for (host, leaf) in [
        ("rsa.test", &leaves[0].1),
        ("ecdsa.test", &leaves[1].1),
        ("api.ed25519.test", &leaves[2].1),
    ] {
        let client = client(&gateway, host, &[&ca]).build().unwrap();
        let response = client
            .get(https(&gateway, host, "/v1/echo/sni"))
            .send()
            .await
            .unwrap_or_else(|err| panic!("{host}: {err:?}"));
        assert_eq!(response.status(), 200, "{host}");
        assert_eq!(served_certificate(&response), leaf.der, "{host}");
    }

    // An unknown name, and no name at all (an IP address sends no SNI):
    // the first certificate, which the client then finds is not for it.
    for host in ["unknown.test", "127.0.0.1"] {
        let strict = client(&gateway, host, &[&ca]).build().unwrap();
        let url = https(&gateway, host, "/v1/echo/sni");
        assert!(strict.get(&url).send().await.is_err(), "{host}");
        let lenient = client(&gateway, host, &[&ca])
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        let response = lenient.get(&url).send().await.unwrap();
        assert_eq!(served_certificate(&response), leaves[0].1.der, "{host}");
    }
}

#[tokio::test]
async fn a_handshake_not_finished_within_the_header_read_timeout_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let leaf = ca.sign(&["localhost"], "localhost", &ecdsa());
    let gateway = tls_gateway(vec![leaf.write(dir.path(), "localhost")], |config| {
        config.limits.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    // Connected, and silent: no ClientHello.
    let mut silent = tokio::net::TcpStream::connect(gateway.tls_addr.unwrap())
        .await
        .unwrap();
    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(30), silent.read(&mut buffer))
        .await
        .expect("the gateway closes the connection");
    assert!(matches!(read, Ok(0) | Err(_)), "closed: {read:?}");
}

#[tokio::test]
async fn tls_connections_count_against_the_same_max_connections_as_cleartext_ones() {
    use tokio::io::AsyncWriteExt as _;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let leaf = ca.sign(&["localhost"], "localhost", &ecdsa());
    let gateway = tls_gateway(vec![leaf.write(dir.path(), "localhost")], |config| {
        config.limits.max_connections = Some(2);
    })
    .await;
    // Two cleartext connections, answered and kept open.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
        stream
            .write_all(b"GET /v1/echo/held HTTP/1.1\r\nhost: gw\r\n\r\n")
            .await
            .unwrap();
        let mut buffer = [0u8; 1024];
        let read = stream.read(&mut buffer).await.unwrap();
        assert!(buffer[..read].starts_with(b"HTTP/1.1 200"));
        held.push(stream);
    }
    let url = https(&gateway, "localhost", "/v1/echo/tls");
    let fresh = client(&gateway, "localhost", &[&ca])
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    assert!(
        fresh.get(&url).send().await.is_err(),
        "refused past the cap"
    );

    drop(held.pop());
    for _ in 0..100 {
        if let Ok(response) = fresh.get(&url).send().await {
            assert_eq!(response.status(), 200);
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the freed place was never taken by a TLS connection");
}

// === rotation ===

/// Load on the HTTPS listener until stopped: a new connection per request
/// (`fresh`), or one kept alive.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    /// Each client's failures.
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(clients: Vec<reqwest::Client>, url: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let tasks = clients
            .into_iter()
            .map(|client| {
                let (stop, done, failed, url) =
                    (stop.clone(), done.clone(), failed.clone(), url.to_owned());
                tokio::spawn(async move {
                    let mut failures = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        match client.get(&url).send().await {
                            Ok(response) if response.status() == 200 => {
                                done.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            Ok(response) => failures.push(response.status().to_string()),
                            Err(err) => failures.push(format!("{err:?}")),
                        }
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    failures
                })
            })
            .collect();
        Self {
            stop,
            done,
            failed,
            tasks,
        }
    }

    /// Waits until `more` requests beyond now have succeeded.
    async fn advance(&self, more: usize) {
        let target = self.done.load(Ordering::Relaxed) + more;
        while self.done.load(Ordering::Relaxed) < target {
            if self.failed.load(Ordering::Relaxed) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops, and returns every failure.
    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        for task in self.tasks {
            failures.extend(task.await.unwrap());
        }
        failures
    }
}

async fn reload(gateway: &Gateway) -> (u16, Json) {
    let url = format!("http://{}/admin/v1/tls/reload", gateway.admin_addr);
    gateway.send(gateway.client.post(url)).await
}

#[tokio::test]
async fn certificates_rotate_under_load_with_no_failed_request_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let old = old_ca.sign(&["localhost"], "localhost", &ecdsa());
    let new = new_ca.sign_with(&["localhost"], "localhost", &ed25519(), |params| {
        params.not_after = rcgen::date_time_ymd(2031, 1, 2);
    });
    let files = old.write(dir.path(), "localhost");
    let gateway = tls_gateway(vec![files.clone()], |_| {}).await;
    let url = https(&gateway, "localhost", "/v1/echo/rotating");
    let trusting = || client(&gateway, "localhost", &[&old_ca, &new_ca]);
    let fresh = || trusting().pool_max_idle_per_host(0).build().unwrap();

    // A kept-alive HTTP/2 connection made before the rotation.
    let kept = trusting().build().unwrap();
    let response = kept.get(&url).send().await.unwrap();
    assert_eq!(served_certificate(&response), old.der);

    let load = Load::start(
        vec![
            fresh(),
            fresh(),
            trusting().http1_only().build().unwrap(),
            kept.clone(),
        ],
        &url,
    );
    load.advance(20).await;
    new.write(dir.path(), "localhost");
    let (status, loaded) = reload(&gateway).await;
    assert_eq!(status, 200, "{loaded}");
    assert_eq!(
        loaded["certificates"][0]["certFile"],
        files.cert_file.display().to_string()
    );
    load.advance(20).await;
    let failures = load.finish().await;
    assert!(failures.is_empty(), "{failures:?}");

    // New handshakes get the new certificate; the open connection finishes on the old one.
    let response = fresh().get(&url).send().await.unwrap();
    assert_eq!(served_certificate(&response), new.der);
    let response = kept.get(&url).send().await.unwrap();
    assert_eq!(served_certificate(&response), old.der);

    // Its expiry is a metric.
    let metrics = gateway
        .text(format!("http://{}/metrics", gateway.admin_addr))
        .await;
    let series = format!(
        "protogate_tls_certificate_expiry_timestamp_seconds{{certificate=\"{}\"}} ",
        files.cert_file.display()
    );
    let value = metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"));
    let expected = rcgen::date_time_ymd(2031, 1, 2).unix_timestamp();
    assert_eq!(value.parse::<f64>().unwrap(), expected as f64);

    // Bad files are refused, naming what is wrong; the new certificate keeps serving.
    let other = new_ca.sign(&["localhost"], "localhost", &ecdsa());
    let expired = new_ca.sign_with(&["localhost"], "localhost", &ecdsa(), |params| {
        params.not_before = rcgen::date_time_ymd(2001, 1, 1);
        params.not_after = rcgen::date_time_ymd(2002, 1, 1);
    });
    let mismatched = Leaf {
        key_pem: other.key_pem.clone(),
        ..new.clone()
    };
    for (bad, problem) in [(&mismatched, "does not fit"), (&expired, "expired")] {
        bad.write(dir.path(), "localhost");
        let (status, body) = reload(&gateway).await;
        assert_eq!(status, 400, "{body}");
        common::assert_status(&body, tonic::Code::FailedPrecondition, problem);
        let response = fresh().get(&url).send().await.unwrap();
        assert_eq!(served_certificate(&response), new.der, "{problem}");
    }
    std::fs::remove_file(&files.key_file).unwrap();
    let (status, body) = reload(&gateway).await;
    assert_eq!(status, 400, "{body}");
    common::assert_status(&body, tonic::Code::FailedPrecondition, "cannot read");
    let response = fresh().get(&url).send().await.unwrap();
    assert_eq!(served_certificate(&response), new.der);
}

#[tokio::test]
async fn changed_certificate_files_are_picked_up_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let old = ca.sign(&["localhost"], "localhost", &ecdsa());
    let new = ca.sign(&["localhost"], "localhost", &ecdsa());
    let gateway = tls_gateway(vec![old.write(dir.path(), "localhost")], |_| {}).await;
    let url = https(&gateway, "localhost", "/v1/echo/watched");
    let fresh = client(&gateway, "localhost", &[&ca])
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let response = fresh.get(&url).send().await.unwrap();
    assert_eq!(served_certificate(&response), old.der);

    new.write(dir.path(), "localhost");
    // Wait for the watcher (bounded: a missed change fails the test).
    for _ in 0..300 {
        let response = fresh.get(&url).send().await.unwrap();
        if served_certificate(&response) == new.der {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the new certificate was never served");
}

#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads_the_certificates() {
    // Installed first, so a SIGHUP never takes the default action (exit).
    let _hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let old = ca.sign(&["localhost"], "localhost", &ecdsa());
    let new = ca.sign(&["localhost"], "localhost", &ecdsa());
    let files = old.write(dir.path(), "localhost");
    let gateway = tls_gateway(vec![files], |config| {
        config.tls.as_mut().unwrap().watch = false;
    })
    .await;
    let url = https(&gateway, "localhost", "/v1/echo/hangup");
    let fresh = client(&gateway, "localhost", &[&ca])
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    new.write(dir.path(), "localhost");
    let pid = std::process::id().to_string();
    for _ in 0..300 {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
        assert!(status.success());
        let response = fresh.get(&url).send().await.unwrap();
        if served_certificate(&response) == new.der {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the new certificate was never served");
}

// === client certificates ===

fn mutual(ca_file: PathBuf, auth: ClientAuth) -> impl FnOnce(&mut protogate::Config) {
    move |config| {
        let tls = config.tls.as_mut().unwrap();
        tls.client_ca_file = Some(ca_file);
        tls.client_auth = auth;
    }
}

#[tokio::test]
async fn required_client_certificates_are_verified_and_name_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca, stranger_ca) = (
        Ca::new("server CA"),
        Ca::new("client CA"),
        Ca::new("other CA"),
    );
    let server = server_ca.sign(&["localhost"], "localhost", &ecdsa());
    let ca_file = client_ca.write(&dir.path().join("clients.pem"));
    let gateway = tls_gateway(
        vec![server.write(dir.path(), "localhost")],
        mutual(ca_file, ClientAuth::Required),
    )
    .await;
    let url = https(&gateway, "localhost", "/v1/headers");

    let anonymous = client(&gateway, "localhost", &[&server_ca])
        .build()
        .unwrap();
    assert!(anonymous.get(&url).send().await.is_err(), "no certificate");
    let stranger = stranger_ca.sign(&[], "mallory", &ecdsa());
    let stranger = client(&gateway, "localhost", &[&server_ca])
        .identity(stranger.identity())
        .build()
        .unwrap();
    assert!(stranger.get(&url).send().await.is_err(), "an unknown CA");

    let alice = client_ca.sign(&[], "alice", &ecdsa());
    let alice = client(&gateway, "localhost", &[&server_ca])
        .identity(alice.identity())
        .build()
        .unwrap();
    let response = alice
        .get(&url)
        .header("x-user-id", "spoofed")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(json(response).await["metadata"]["x-user-id"], "alice");
}

#[tokio::test]
async fn optional_client_certificates_satisfy_policies_that_accept_them_and_key_rate_limits() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let server = server_ca.sign(&["localhost"], "localhost", &ecdsa());
    let ca_file = client_ca.write(&dir.path().join("clients.pem"));
    let key = EcKey::generate("k1");
    let auth: AuthConfig = serde_json::from_value(json!({
        "providers": [{
            "issuer": ISSUER, "audiences": [tokens::AUDIENCE], "algorithms": ["ES256"],
            "public_key_pem": key.public_pem(),
        }],
    }))
    .unwrap();
    let with_mtls = mutual(ca_file, ClientAuth::Optional);
    let gateway = tls_gateway(vec![server.write(dir.path(), "localhost")], |config| {
        with_mtls(config);
        config.tls.as_mut().unwrap().client_identity = ClientIdentityField::SanUri;
        config.auth = Some(auth);
        config.rate_limit = serde_json::from_value(json!({
            "per_user": { "requests": 2, "per": "1h" },
        }))
        .unwrap();
        config.policies = serde_json::from_value(json!([{
            "method": "protogate.testing.v1.TestService.EchoHeaders",
            "client_certificate": true,
        }]))
        .unwrap();
    })
    .await;
    let url = https(&gateway, "localhost", "/v1/headers");
    let spiffe = |name: &str| {
        let uri = format!("spiffe://mesh.test/{name}");
        let leaf = client_ca.sign_with(&[], name, &ecdsa(), |params| {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(uri.as_str().try_into().unwrap()));
        });
        client(&gateway, "localhost", &[&server_ca])
            .identity(leaf.identity())
            .build()
            .unwrap()
    };
    let call = |client: &reqwest::Client, token: Option<String>| {
        let mut request = client.get(&url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let request = request.send();
        async move {
            let response = request.await.unwrap();
            (response.status().as_u16(), json(response).await)
        }
    };

    // Optional: a client without a certificate connects, and needs a token here.
    let anonymous = client(&gateway, "localhost", &[&server_ca])
        .build()
        .unwrap();
    let (status, body) = call(&anonymous, None).await;
    assert_eq!(status, 401, "{body}");

    let alice = spiffe("alice");
    let (status, body) = call(&alice, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["metadata"]["x-user-id"], "spiffe://mesh.test/alice");

    // A token wins over the certificate.
    let token = key.sign(&tokens::claims("bob", &[]));
    let (status, body) = call(&alice, Some(token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["metadata"]["x-user-id"], "bob");

    // Alice's quota is hers: spent after two calls; Carol's is untouched.
    assert_eq!(call(&alice, None).await.0, 200);
    let (status, body) = call(&alice, None).await;
    assert_eq!(status, 429, "{body}");
    let (status, body) = call(&spiffe("carol"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["metadata"]["x-user-id"], "spiffe://mesh.test/carol");

    // A policy that does not accept certificates still wants a token.
    let echo = https(&gateway, "localhost", "/v1/echo/x");
    let response = spiffe("dave").get(&echo).send().await.unwrap();
    assert_eq!(response.status(), 401);
}

// === upstreams ===

/// A tonic backend on 127.0.0.1 serving TLS as `backend.test`, asking every
/// client for a certificate of `client_ca`.
/// A backend that requires client certificates of `client_ca` (serving the
/// test service's reflection too), and the `:authority` of every request it
/// received.
async fn mutual_tls_backend(
    server: &Leaf,
    client_ca: &Ca,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&server.cert_pem, &server.key_pem))
        .client_ca_root(Certificate::from_pem(&client_ca.pem));
    let (seen, authorities) = tokio::sync::mpsc::unbounded_channel();
    let record = tower::ServiceBuilder::new().map_request(
        move |request: http::Request<tonic::body::Body>| {
            let authority = request.uri().authority().map(ToString::to_string);
            let _ = seen.send(authority.unwrap_or_default());
            request
        },
    );
    let testing_set = include_bytes!(concat!(env!("OUT_DIR"), "/protogate.testing.v1.binpb"));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(testing_set)
        .build_v1()
        .unwrap();
    let routes = protogate::demo::example_routes()
        .add_service(TestServiceServer::new(Testing))
        .add_service(reflection);
    let server = Server::builder()
        .tls_config(tls)
        .unwrap()
        .layer(record)
        .add_routes(routes)
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    (addr, authorities)
}

#[tokio::test]
async fn upstreams_are_called_over_mutual_tls_with_a_server_name_override() {
    let dir = tempfile::tempdir().unwrap();
    let (mesh_ca, gateway_ca) = (Ca::new("mesh CA"), Ca::new("gateway client CA"));
    let backend = mesh_ca.sign(&["backend.test"], "backend", &ecdsa());
    let (addr, mut authorities) = mutual_tls_backend(&backend, &gateway_ca).await;
    let mesh_ca_file = mesh_ca.write(&dir.path().join("mesh-ca.pem"));
    let client_files = gateway_ca
        .sign(&[], "protogate", &ed25519())
        .write(dir.path(), "client");
    let url = format!("https://{addr}");

    let tls_upstream = |with_client_certificate: bool| {
        let mut upstream = upstream("*", &url);
        upstream.ca_file = Some(mesh_ca_file.clone());
        upstream.server_name = Some("backend.test".into());
        if with_client_certificate {
            upstream.client_cert_file = Some(client_files.cert_file.clone());
            upstream.client_key_file = Some(client_files.key_file.clone());
        }
        upstream
    };
    let gateway = Gateway::start_with(|config| {
        config.upstreams = vec![tls_upstream(true)];
    })
    .await;
    // Unary (each worker's own connection) and streaming (tonic's channel).
    let (status, body) = gateway.get("/v1/echo/through-the-mesh").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stringValue"], "through-the-mesh");
    let response = gateway
        .client
        .post(gateway.url("/v1/orders:lookup"))
        .header("content-type", "application/x-ndjson")
        .body("{\"id\":\"o-1\"}\n{\"id\":\"o-2\"}\n")
        .send()
        .await
        .unwrap();
    let status = response.status();
    let orders = response.text().await.unwrap();
    assert_eq!(status, 200, "{orders}");
    let ids: Vec<Json> = orders
        .lines()
        .map(|line| serde_json::from_str::<Json>(line).unwrap()["result"]["id"].clone())
        .collect();
    assert_eq!(ids, [json!("o-1"), json!("o-2")], "{orders}");
    // Both calls named the backend by `server_name` (and the URL's port),
    // not by the address dialled.
    let expected = format!("backend.test:{}", addr.port());
    let authorities: Vec<String> = std::iter::from_fn(|| authorities.try_recv().ok()).collect();
    assert!(
        authorities.len() >= 2 && authorities.iter().all(|a| *a == expected),
        "{authorities:?}"
    );

    // Without a client certificate the backend refuses the handshake.
    let refused = Gateway::start_with(|config| {
        config.upstreams = vec![tls_upstream(false)];
    })
    .await;
    let (status, body) = refused.get("/v1/echo/refused").await;
    assert_eq!(status, 503, "{body}");
    common::assert_status(&body, tonic::Code::Unavailable, "");
}

#[tokio::test]
async fn discovery_reads_an_https_server_with_its_tls_keys_and_calls_it_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let (mesh_ca, gateway_ca) = (Ca::new("mesh CA"), Ca::new("gateway client CA"));
    let backend = mesh_ca.sign(&["backend.test"], "backend", &ecdsa());
    let (addr, _authorities) = mutual_tls_backend(&backend, &gateway_ca).await;
    let client_files = gateway_ca
        .sign(&[], "protogate", &ed25519())
        .write(dir.path(), "client");
    let url = format!("https://{addr}");
    let source = |with_client_certificate: bool| {
        let mut source = protogate::config::DiscoverConfig::new(&url);
        source.services = vec!["protogate.testing.*".into()];
        source.refresh = Duration::ZERO;
        source.ca_file = Some(mesh_ca.write(&dir.path().join("mesh-ca.pem")));
        source.server_name = Some("backend.test".into());
        if with_client_certificate {
            source.client_cert_file = Some(client_files.cert_file.clone());
            source.client_key_file = Some(client_files.key_file.clone());
        }
        source
    };
    let serve = |source| {
        let mut config = protogate::Config::default();
        config.access_log.enabled = false;
        config.discover = vec![source];
        async move { Gateway::serve(&config, Vec::new()).await }
    };

    // Read over mutual TLS, then called with the same keys.
    let gateway = serve(source(true)).await;
    let (status, body) = gateway.get("/v1/echo/discovered").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stringValue"], "discovered");

    // Without the client certificate the handshake is refused: nothing served.
    let refused = serve(source(false)).await;
    let (status, _) = refused.get("/v1/echo/discovered").await;
    assert_eq!(status, 404);
    let ready = refused
        .text(format!("http://{}/readyz", refused.admin_addr))
        .await;
    let ready: Json = serde_json::from_str(&ready).unwrap();
    let error = ready["discovery"][&url]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains(&url), "{ready}");
}
