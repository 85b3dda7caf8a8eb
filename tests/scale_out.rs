//! Several gateway instances sharing one real Redis (`redis-server`, one for
//! this whole test binary, on a free loopback port): quotas counted once
//! across instances, descriptor sets uploaded through one instance served by
//! all, conflicting uploads refused, and Redis going away and coming back
//! empty while traffic flows. Without `redis-server` installed these tests
//! fail, saying what to install.

mod common;

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener as StdListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};

use common::{example_sets, upstream, Backend, Gateway};
use protogate::pb::protogate::testing::v1::test_service_server::TestServiceServer;
use protogate::{
    config::{
        DiscoverConfig, OnRedisError, QuotaConfig, RateLimitConfig, RateLimitPolicy, RedisConfig,
        RegistryStore,
    },
    Config, Server,
};
use serde_json::{json, Value as Json};
use tokio::sync::RwLock;
use tonic::Code;

/// The one Redis of this binary.
static REDIS: OnceLock<RedisServer> = OnceLock::new();
/// Tests share Redis (each under its own key prefix); the one that stops it
/// has it to itself.
static REDIS_USE: RwLock<()> = RwLock::const_new(());

/// Longest wait for something that happens in milliseconds when all is well.
const HUNG: Duration = Duration::from_secs(30);

/// `redis-server` on 127.0.0.1:PORT, without persistence (a restart is an
/// empty Redis), killed by its watchdog when this process ends.
struct RedisServer {
    port: u16,
    /// Whether `port` is a TLS one (then there is no cleartext port).
    tls: bool,
    /// More `redis-server` options (certificates, a password).
    options: Vec<String>,
}

impl RedisServer {
    fn get() -> &'static Self {
        REDIS.get_or_init(|| Self::start_with(false, Vec::new()))
    }

    /// One more `redis-server`, with `options`, for this test alone.
    fn start_with(tls: bool, options: Vec<String>) -> Self {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        assert!(
            installed,
            "redis-server is not installed: these tests need a real Redis \
             (Debian: apt-get install redis-server; scripts/test checks it first)"
        );
        let server = Self {
            port: common::process::free_port(),
            tls,
            options,
        };
        server.start();
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts it (again, empty) and waits until it answers. A shell beside
    /// it stops it once this test process is gone.
    fn start(&self) {
        let script = r#"parent="$1"; shift
redis-server --bind 127.0.0.1 --save "" --appendonly no "$@" &
r=$!
while kill -0 "$parent" 2>/dev/null && kill -0 "$r" 2>/dev/null; do sleep 0.2; done
kill "$r" 2>/dev/null"#;
        let port = self.port.to_string();
        let ports = if self.tls {
            ["--port", "0", "--tls-port", &port]
        } else {
            ["--port", &port, "--tls-port", "0"]
        };
        let mut watchdog = Command::new("sh")
            .args(["-c", script, "watchdog"])
            .arg(std::process::id().to_string())
            .args(ports)
            .args(&self.options)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh starts redis-server");
        // Reaped when it ends (after its redis-server).
        std::thread::spawn(move || watchdog.wait());
        let started = Instant::now();
        let answers = || {
            if self.tls {
                // Listening is enough: the gateway under test speaks TLS to it.
                return TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            }
            // With a password, PING answers that one is needed.
            self.command("PING")
                .is_some_and(|reply| reply == "+PONG\r\n" || reply.starts_with("-NOAUTH"))
        };
        while !answers() {
            assert!(started.elapsed() < HUNG, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it without saving and waits until its port refuses.
    fn kill(&self) {
        let _ = self.command("SHUTDOWN NOSAVE");
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(started.elapsed() < HUNG, "redis-server did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One inline command; its raw reply, or `None` when Redis is not there.
    fn command(&self, command: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
        let mut reply = vec![0; 4096];
        let read = stream.read(&mut reply).ok()?;
        Some(String::from_utf8_lossy(&reply[..read]).into_owned())
    }
}

/// Starts Redis again if a test stopped it and failed before restarting
/// it: the tests after it need it.
struct RestartOnDrop(&'static RedisServer);

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        if self.0.command("PING").is_none() {
            self.0.start();
        }
    }
}

/// One gateway instance: its backend, its directory (its copy of the
/// registry) and the key prefix it shares with its peers.
struct Instance {
    gw: Gateway,
    backend: Backend,
    _dir: tempfile::TempDir,
}

/// A config sharing quotas (100 per hour per client IP) and the registry
/// under `prefix`, with the example sets from the config.
fn config(prefix: &str, backend: &Backend, dir: &std::path::Path) -> Config {
    let mut config = Config {
        upstreams: vec![upstream("acme", &backend.url())],
        redis: Some(RedisConfig {
            url: RedisServer::get().url(),
            key_prefix: prefix.to_owned(),
            // Generous: a loaded test machine must not look like a Redis fault.
            timeout: Duration::from_secs(2),
            password_env: None,
        }),
        rate_limit: Some(RateLimitConfig {
            per_ip: Some(QuotaConfig {
                requests: 100,
                per: Duration::from_secs(3600),
            }),
            policy: RateLimitPolicy::Redis,
            ..RateLimitConfig::default()
        }),
        ..Config::default()
    };
    config.registry.store = RegistryStore::Redis;
    config.descriptors.dir = Some(dir.to_owned());
    config.access_log.enabled = false;
    config
}

impl Instance {
    async fn start(prefix: &str) -> Self {
        Self::start_with(prefix, |_| {}).await
    }

    async fn start_with(prefix: &str, adjust: impl FnOnce(&mut Config)) -> Self {
        let backend = Backend::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(prefix, &backend, dir.path());
        adjust(&mut config);
        let gw = Gateway::serve(&config, example_sets()).await;
        Self {
            gw,
            backend,
            _dir: dir,
        }
    }

    fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.gw.admin_addr)
    }

    /// Uploads the testing set under `name`, served by this instance's backend.
    async fn put_testing_set(&self, name: &str) -> (u16, Json) {
        let url = format!(
            "{}?upstream={}",
            self.admin(&format!("/admin/v1/descriptor-sets/{name}")),
            self.backend.url()
        );
        let request = self
            .gw
            .client
            .put(url)
            .header("content-type", "application/x-protobuf")
            .body(common::testing_set().bytes);
        self.gw.send(request).await
    }

    async fn admin_get(&self, path: &str) -> Json {
        let (status, body) = self.gw.send(self.gw.client.get(self.admin(path))).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// The generation and the managed sets' names and digests, as listed.
    async fn listed_sets(&self) -> (u64, Vec<(String, String)>) {
        let body = self.admin_get("/admin/v1/descriptor-sets").await;
        let sets = body["descriptorSets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|set| set["managed"] == true)
            .map(|set| {
                let name = set["name"].as_str().unwrap().to_owned();
                (name, set["digest"].as_str().unwrap().to_owned())
            })
            .collect();
        (body["generation"].as_u64().unwrap(), sets)
    }

    /// Whether `/v1/echo` (the testing set's route) is served.
    async fn serves_echo(&self) -> bool {
        self.gw.get("/v1/echo?stringValue=x").await.0 == 200
    }

    async fn until_echo_served(&self) {
        let started = Instant::now();
        while !self.serves_echo().await {
            assert!(started.elapsed() < HUNG, "the uploaded set never arrived");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn until_redis(&self, state: &str) {
        until_redis(&self.gw.client, &self.admin("/readyz"), state).await;
    }
}

/// Polls `readyz` until it reports Redis in `state` (`up` or `down`).
async fn until_redis(client: &reqwest::Client, readyz: &str, state: &str) {
    let started = Instant::now();
    loop {
        let response = client.get(readyz).send().await.unwrap();
        let body: Json = response.json().await.unwrap();
        if body["redis"] == state {
            return;
        }
        assert!(
            started.elapsed() < HUNG,
            "Redis never reported {state}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `protogate serve` as a user runs it: the config `yaml`, the orders v2 set
/// served by `backend`, the environment `env`; its log read line by line.
struct Served {
    child: common::process::Child,
    log: common::process::Lines,
    listen: String,
    admin: String,
    client: reqwest::Client,
}

impl Served {
    async fn start(yaml: &str, backend: &Backend, env: &[(&str, &str)], dir: &Path) -> Self {
        let config = dir.join("gateway.yaml");
        std::fs::write(&config, yaml).unwrap();
        let listen = format!("127.0.0.1:{}", common::process::free_port());
        let admin = format!("127.0.0.1:{}", common::process::free_port());
        let mut child = common::process::protogate()
            .args(["serve", "--config"])
            .arg(&config)
            .args(["--listen", &listen, "--admin-listen", &admin])
            .args(["--descriptor-set", "descriptor-sets/acme.orders.v2.binpb"])
            .arg("--upstream")
            .arg(format!("acme={}", backend.url()))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = common::process::Lines::new(child.stderr.take().unwrap());
        let served = Self {
            child: common::process::Child(child),
            log,
            listen,
            admin,
            client: reqwest::Client::new(),
        };
        common::process::wait_for(&served.admin("/readyz")).await;
        served
    }

    fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    async fn until_redis(&self, state: &str) {
        until_redis(&self.client, &self.admin("/readyz"), state).await;
    }

    async fn get(&self, path: &str) -> u16 {
        let url = format!("http://{}{path}", self.listen);
        self.client.get(url).send().await.unwrap().status().as_u16()
    }

    /// Stops it; every line it logged.
    fn stop(self) -> Vec<String> {
        drop(self.child);
        self.log.rest()
    }
}

/// A key prefix of its own for each test, so that tests sharing the Redis
/// share nothing else.
fn prefix(test: &str) -> String {
    format!("test:{}:{test}:", std::process::id())
}

#[tokio::test]
async fn three_instances_admit_exactly_the_quota_together() {
    let _shared = REDIS_USE.read().await;
    let prefix = prefix("quota");
    let instances = [
        Instance::start(&prefix).await,
        Instance::start(&prefix).await,
        Instance::start(&prefix).await,
    ];
    let mut remaining_seen = Vec::new();
    let mut refused = 0;
    for i in 0..300 {
        let instance = &instances[i % 3];
        let response = instance
            .gw
            .client
            .get(instance.gw.url("/v2/orders/o-1"))
            .send()
            .await
            .unwrap();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .unwrap_or_else(|| panic!("no {name} header"))
        };
        assert_eq!(header("ratelimit-limit"), "100");
        assert_eq!(header("ratelimit-policy"), "100;w=3600");
        match response.status().as_u16() {
            200 => remaining_seen.push(header("ratelimit-remaining").parse::<u32>().unwrap()),
            429 => {
                refused += 1;
                assert_eq!(header("ratelimit-remaining"), "0");
                // One request per 36 s refills the bucket (less the time since).
                let retry_after: u64 = header("retry-after").parse().unwrap();
                assert!((1..=36).contains(&retry_after), "{retry_after}");
                let body: Json = response.json().await.unwrap();
                common::assert_status(&body, Code::ResourceExhausted, "rate limit exceeded");
            }
            status => panic!("unexpected status {status}"),
        }
    }
    // 100 admitted across the three instances, counting down in one bucket.
    let expected: Vec<u32> = (0..100).rev().collect();
    assert_eq!(remaining_seen, expected);
    assert_eq!(refused, 200);
}

#[tokio::test]
async fn a_set_uploaded_through_one_instance_is_served_by_all() {
    let _shared = REDIS_USE.read().await;
    let prefix = prefix("propagation");
    let [a, b, c] = [
        Instance::start(&prefix).await,
        Instance::start(&prefix).await,
        Instance::start(&prefix).await,
    ];
    for instance in [&a, &b, &c] {
        assert!(!instance.serves_echo().await);
    }
    let (status, body) = a.put_testing_set("protogate.testing.v1").await;
    assert_eq!(status, 201, "{body}");
    let generation = body["generation"].as_u64().unwrap();

    let uploaded = Instant::now();
    b.until_echo_served().await;
    c.until_echo_served().await;
    eprintln!(
        "served by the two other instances {:?} after the upload was answered",
        uploaded.elapsed()
    );
    let listed = a.listed_sets().await;
    assert_eq!(listed.0, generation);
    assert_eq!(listed.1.len(), 1, "{listed:?}");
    assert_eq!(b.listed_sets().await, listed);
    assert_eq!(c.listed_sets().await, listed);

    // A delete travels the same way.
    let (status, body) =
        c.gw.send(
            c.gw.client
                .delete(c.admin("/admin/v1/descriptor-sets/protogate.testing.v1")),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let started = Instant::now();
    while a.serves_echo().await || b.serves_echo().await {
        assert!(started.elapsed() < HUNG, "the delete never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(a.listed_sets().await, c.listed_sets().await);
}

/// The test service, with gRPC server reflection of its set, on loopback
/// until the sender is dropped.
async fn reflecting_testing_backend() -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let set: &'static [u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/protogate.testing.v1.binpb"));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(set)
        .build_v1()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TestServiceServer::new(common::Testing))
            .add_service(reflection)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    (url, stop)
}

#[tokio::test]
async fn a_set_discovered_by_one_instance_is_served_by_all() {
    let _shared = REDIS_USE.read().await;
    let prefix = prefix("discovery");
    let (url, _stop) = reflecting_testing_backend().await;
    let a = Instance::start_with(&prefix, |config| {
        config.discover.push(DiscoverConfig {
            services: vec!["protogate.testing.*".into()],
            refresh: Duration::ZERO,
            ..DiscoverConfig::new(&url)
        });
    })
    .await;
    let b = Instance::start(&prefix).await;
    a.until_echo_served().await;
    b.until_echo_served().await;
    let listed = a.listed_sets().await;
    let names: Vec<&str> = listed.1.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, [protogate::discovery::set_name(&url)]);
    assert_eq!(b.listed_sets().await, listed);
}

#[tokio::test]
async fn of_two_conflicting_concurrent_uploads_one_wins_and_the_other_gets_409() {
    let _shared = REDIS_USE.read().await;
    let prefix = prefix("conflict");
    let [a, b, c] = [
        Instance::start(&prefix).await,
        Instance::start(&prefix).await,
        Instance::start(&prefix).await,
    ];
    // The same services under two names: whichever comes second conflicts,
    // through the generation (both at once) or through validation (after).
    let (first, second) = tokio::join!(a.put_testing_set("alpha"), b.put_testing_set("beta"));
    let mut statuses = [first.0, second.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409], "{first:?} {second:?}");
    let (loser, winner) = if first.0 == 409 {
        (first.1, "beta")
    } else {
        (second.1, "alpha")
    };
    // ABORTED when the generation moved under it, ALREADY_EXISTS when it
    // arrived after the winner: a 409 either way.
    let code = loser["code"].as_i64().unwrap();
    assert!(
        [Code::Aborted as i64, Code::AlreadyExists as i64].contains(&code),
        "{loser}"
    );

    // Every instance ends with the winner's set, at the same generation.
    let started = Instant::now();
    loop {
        let listed = [
            a.listed_sets().await,
            b.listed_sets().await,
            c.listed_sets().await,
        ];
        let converged = listed.iter().all(|l| l == &listed[0]);
        if converged && listed[0].1.iter().map(|(n, _)| n.as_str()).eq([winner]) {
            break;
        }
        assert!(
            started.elapsed() < HUNG,
            "instances never agreed: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_write_on_a_generation_another_instance_moved_past_is_refused_with_409() {
    let _shared = REDIS_USE.read().await;
    let prefix = prefix("stale");
    let a = Instance::start(&prefix).await;
    // An instance that does not follow Redis (not serving: no sync task),
    // so it stays at the generation it started with.
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let stale = Server::new(&config(&prefix, &backend, dir.path()), example_sets()).unwrap();
    let (status, body) = a.put_testing_set("protogate.testing.v1").await;
    assert_eq!(status, 201, "{body}");

    let other = common::testing_set().bytes;
    let response = tower::ServiceExt::oneshot(
        stale.admin_router(),
        http::Request::put(format!(
            "/admin/v1/descriptor-sets/other?upstream={}",
            backend.url()
        ))
        .header("host", "localhost")
        .header("content-type", "application/x-protobuf")
        .body(axum::body::Body::from(other))
        .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 409);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body: Json = serde_json::from_slice(&bytes).unwrap();
    common::assert_status(&body, Code::Aborted, "changed through another instance");
    // Nothing of it was stored: the others serve only what `a` uploaded.
    let (_, sets) = a.listed_sets().await;
    assert_eq!(sets.len(), 1, "{sets:?}");
}

#[tokio::test]
async fn an_instance_starts_and_serves_from_its_copy_while_redis_is_away() {
    let _shared = REDIS_USE.read().await;
    let prefix = prefix("copy");
    let a = Instance::start(&prefix).await;
    let (status, body) = a.put_testing_set("protogate.testing.v1").await;
    assert_eq!(status, 201, "{body}");
    let generation = body["generation"].as_u64().unwrap();
    let listed = a.listed_sets().await;
    let Instance {
        gw,
        backend,
        _dir: copy,
    } = a;
    gw.stop().await.unwrap();

    // The same copy, and a Redis that is not there (nothing listens on port 1).
    let again = Instance::start_with(&prefix, |config| {
        config.descriptors.dir = Some(copy.path().to_owned());
        if let Some(redis) = &mut config.redis {
            redis.url = "redis://127.0.0.1:1/0".into();
        }
    })
    .await;
    again.until_redis("down").await;
    assert_eq!(again.listed_sets().await, listed);
    assert_eq!(listed.0, generation);
    assert!(again.serves_echo().await);
    drop(backend);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_empty_loses_nothing_and_is_reseeded() {
    let _alone = REDIS_USE.write().await;
    let redis = RedisServer::get();
    let _restart = RestartOnDrop(redis);
    let prefix = prefix("restart");
    let a = Arc::new(Instance::start(&prefix).await);
    let b = Arc::new(
        Instance::start_with(&prefix, |config| {
            if let Some(limits) = &mut config.rate_limit {
                limits.per_ip = Some(QuotaConfig {
                    requests: 1_000_000,
                    per: Duration::from_secs(1),
                });
            }
        })
        .await,
    );
    let (status, body) = a.put_testing_set("protogate.testing.v1").await;
    assert_eq!(status, 201, "{body}");
    let generation = body["generation"].as_u64().unwrap();
    b.until_echo_served().await;

    // Traffic on `b` (its quota far away) all along.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let traffic = tokio::spawn({
        let (b, stop, served) = (b.clone(), stop.clone(), served.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                for path in ["/v1/echo?stringValue=x", "/v2/orders/o-1"] {
                    let (status, body) = b.gw.get(path).await;
                    assert_eq!(status, 200, "{path} while Redis comes and goes: {body}");
                    served.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });

    redis.kill();
    a.until_redis("down").await;
    b.until_redis("down").await;
    // Admin writes are refused, saying why; nothing changes.
    let (status, body) =
        a.gw.send(
            a.gw.client
                .put(a.admin("/admin/v1/upstreams/acme.orders.v1"))
                .body(format!(r#"{{"url": "{}"}}"#, a.backend.url())),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    common::assert_status(
        &body,
        Code::Unavailable,
        "the shared registry (Redis) is unavailable",
    );
    assert_eq!(a.listed_sets().await.0, generation);
    let before_restart = served.load(Ordering::Relaxed);

    redis.start();
    a.until_redis("up").await;
    b.until_redis("up").await;
    // Re-seeded from the instances' copies, at their generation.
    let started = Instant::now();
    let key = format!("{prefix}registry");
    while redis.command(&format!("HGET {key} generation")).as_deref()
        != Some(&*format!(
            "${}\r\n{generation}\r\n",
            generation.to_string().len()
        ))
    {
        assert!(started.elapsed() < HUNG, "Redis was never re-seeded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A newcomer with an empty copy gets the set from Redis.
    let c = Instance::start(&prefix).await;
    c.until_echo_served().await;
    assert_eq!(c.listed_sets().await, a.listed_sets().await);

    stop.store(true, Ordering::Relaxed);
    traffic.await.expect("every request was served");
    assert!(served.load(Ordering::Relaxed) > before_restart);
    // The catalogs were never wiped, and writes work again.
    assert!(a.serves_echo().await && b.serves_echo().await);
    let (status, body) = a.put_testing_set("protogate.testing.v1").await;
    assert_eq!(status, 200, "{body}");
    let metrics = a.gw.text(a.admin("/metrics")).await;
    assert!(metrics.contains("protogate_redis_up 1"), "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("protogate_redis_errors_total{") && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(
        metrics.contains("protogate_redis_command_duration_seconds_bucket{op=\"rate_limit\""),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_at_different_generations_reseed_an_emptied_redis_with_the_highest() {
    let _alone = REDIS_USE.write().await;
    let redis = RedisServer::get();
    let _restart = RestartOnDrop(redis);
    let prefix = prefix("generations");
    let a = Instance::start(&prefix).await;
    let b = Instance::start(&prefix).await;
    let (status, body) = a.put_testing_set("protogate.testing.v1").await;
    assert_eq!(status, 201, "{body}");
    let first = body["generation"].as_u64().unwrap();
    b.until_echo_served().await;
    assert_eq!(b.listed_sets().await.0, first);

    // `b` stops with its copy at the first generation; `a` moves on.
    let Instance {
        gw,
        backend: _b_backend,
        _dir: b_copy,
    } = b;
    gw.stop().await.unwrap();
    let (status, body) =
        a.gw.send(
            a.gw.client
                .put(a.admin("/admin/v1/upstreams/acme.orders.v1"))
                .body(format!(r#"{{"url": "{}"}}"#, a.backend.url())),
        )
        .await;
    assert_eq!((status, &body["changed"]), (200, &json!(true)), "{body}");
    let (second, sets) = a.listed_sets().await;
    assert_eq!(body["generation"], second);
    assert!(second > first, "{second} after {first}");

    // Redis goes away and `b` comes back from its older copy meanwhile.
    redis.kill();
    a.until_redis("down").await;
    let b = Instance::start_with(&prefix, |config| {
        config.descriptors.dir = Some(b_copy.path().to_owned());
    })
    .await;
    b.until_redis("down").await;
    assert_eq!(b.listed_sets().await, (first, sets.clone()));

    // Redis returns empty: both write their copy back, the highest
    // generation wins, and `b` takes it.
    redis.start();
    let started = Instant::now();
    let key = format!("{prefix}registry");
    let stored = format!("${}\r\n{second}\r\n", second.to_string().len());
    loop {
        let in_redis = redis.command(&format!("HGET {key} generation"));
        if in_redis.as_deref() == Some(&*stored) && b.listed_sets().await.0 == second {
            break;
        }
        assert!(
            started.elapsed() < HUNG,
            "never converged on generation {second}: Redis holds {in_redis:?}, b lists {:?}",
            b.listed_sets().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing lost: both list the same sets at the highest generation, the
    // upstream set through `a` reached `b`, and a newcomer gets it all.
    assert_eq!(a.listed_sets().await, (second, sets.clone()));
    assert_eq!(b.listed_sets().await, (second, sets.clone()));
    let upstreams = b.admin_get("/admin/v1/upstreams").await;
    let managed = upstreams["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["pattern"] == "acme.orders.v1" && u["source"] == "admin");
    assert_eq!(
        managed.map(|u| u["url"].clone()),
        Some(json!(a.backend.url())),
        "{upstreams}"
    );
    assert!(a.serves_echo().await && b.serves_echo().await);
    let c = Instance::start(&prefix).await;
    c.until_echo_served().await;
    assert_eq!(c.listed_sets().await, (second, sets));
}

/// A CA made for one test and a certificate it signs for 127.0.0.1, written
/// to `dir` as `ca.pem`, `redis.pem` and `redis-key.pem`.
fn redis_certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "scale-out test CA");
    let ca_key = KeyPair::generate().unwrap();
    std::fs::write(
        dir.join("ca.pem"),
        params.self_signed(&ca_key).unwrap().pem(),
    )
    .unwrap();
    let issuer = Issuer::new(params, ca_key);
    let key = KeyPair::generate().unwrap();
    let certificate = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("redis.pem"), certificate.pem()).unwrap();
    std::fs::write(dir.join("redis-key.pem"), key.serialize_pem()).unwrap();
}

#[tokio::test]
async fn rediss_with_a_password_from_the_environment_carries_quotas_and_the_registry() {
    const PASSWORD_ENV: &str = "PROTOGATE_TEST_REDIS_PASSWORD";
    const PASSWORD: &str = "correct-horse-battery-staple";
    const WRONG: &str = "wrong-horse-battery-staple";
    let dir = tempfile::tempdir().unwrap();
    redis_certificates(dir.path());
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let redis = RedisServer::start_with(
        true,
        vec![
            "--tls-cert-file".into(),
            file("redis.pem"),
            "--tls-key-file".into(),
            file("redis-key.pem"),
            "--tls-ca-cert-file".into(),
            file("ca.pem"),
            "--tls-auth-clients".into(),
            "no".into(),
            "--requirepass".into(),
            PASSWORD.into(),
        ],
    );
    let backend = Backend::start().await;
    let config = |name: &str| {
        let copy = dir.path().join(name);
        std::fs::create_dir(&copy).unwrap();
        format!(
            "redis: {{ url: 'rediss://127.0.0.1:{}/0', key_prefix: 'tls:', timeout: 2s, password_env: {PASSWORD_ENV} }}\n\
             rate_limit: {{ policy: redis, on_redis_error: allow, per_ip: {{ requests: 2, per: 1h }} }}\n\
             registry: {{ store: redis }}\n\
             descriptors: {{ dir: '{}' }}\n\
             access_log: {{ enabled: false }}\n",
            redis.port,
            copy.display()
        )
    };
    // The CA is trusted as a system one would be.
    let ca = file("ca.pem");
    let trusted = [("SSL_CERT_FILE", ca.as_str()), (PASSWORD_ENV, PASSWORD)];
    let gateway = Served::start(&config("good"), &backend, &trusted, dir.path()).await;

    // Counted in Redis: with `on_redis_error: allow`, only Redis says 429.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(gateway.get("/v2/orders/o-1").await);
    }
    assert_eq!(statuses, [200, 200, 429]);
    let response = gateway
        .client
        .put(format!(
            "{}?upstream={}",
            gateway.admin("/admin/v1/descriptor-sets/protogate.testing.v1"),
            backend.url()
        ))
        .header("content-type", "application/x-protobuf")
        .body(common::testing_set().bytes)
        .send()
        .await
        .unwrap();
    // Stored in Redis first (201), then served here: routed, and refused
    // only because this client's quota is spent.
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    assert_eq!(gateway.get("/v1/echo?stringValue=x").await, 429);
    assert_eq!(gateway.get("/v1/no-such-route").await, 404);
    gateway.until_redis("up").await;
    let log = gateway.stop();
    assert!(
        !log.iter().any(|line| line.contains("Redis is unreachable")),
        "{log:#?}"
    );

    // Redis' certificate is checked: without its CA, Redis is down.
    let untrusted = [(PASSWORD_ENV, PASSWORD)];
    let gateway = Served::start(&config("untrusted"), &backend, &untrusted, dir.path()).await;
    gateway.until_redis("down").await;
    gateway.stop();

    // A wrong password: Redis is down for this gateway, the log names where
    // the password came from and never shows it.
    let wrong = [("SSL_CERT_FILE", ca.as_str()), (PASSWORD_ENV, WRONG)];
    let gateway = Served::start(&config("wrong"), &backend, &wrong, dir.path()).await;
    gateway.until_redis("down").await;
    let status = gateway.get("/v2/orders/o-1").await;
    let log = gateway.stop();
    assert_eq!(status, 200, "{log:#?}");
    let named = log
        .iter()
        .filter(|line| line.contains(&format!("redis.password_env ({PASSWORD_ENV})")))
        .count();
    assert_eq!(named, 1, "{log:#?}");
    assert!(
        !log.iter()
            .any(|line| line.contains(WRONG) || line.contains(PASSWORD)),
        "{log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_says_once_that_redis_went_and_once_that_it_came_back() {
    let _alone = REDIS_USE.write().await;
    let redis = RedisServer::get();
    let _restart = RestartOnDrop(redis);
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "redis: {{ url: '{}', key_prefix: '{}', timeout: 2s }}\n\
         rate_limit: {{ policy: redis, per_ip: {{ requests: 1000000, per: 1s }} }}\n\
         registry: {{ store: redis }}\n\
         descriptors: {{ dir: '{}' }}\n\
         access_log: {{ enabled: false }}\n",
        redis.url(),
        prefix("log"),
        dir.path().display()
    );
    let gateway = Served::start(&yaml, &backend, &[], dir.path()).await;

    // Four clients at a time, all along.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let url = format!("http://{}/v2/orders/o-1", gateway.listen);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (client, url) = (gateway.client.clone(), url.clone());
            let (stop, served) = (stop.clone(), served.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let status = client.get(&url).send().await.unwrap().status();
                    assert_eq!(status, 200, "while Redis comes and goes");
                    served.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let until_served = |more: u64| {
        let served = served.clone();
        async move {
            let target = served.load(Ordering::Relaxed) + more;
            let started = Instant::now();
            while served.load(Ordering::Relaxed) < target {
                assert!(started.elapsed() < HUNG, "traffic stopped");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    until_served(100).await;
    redis.kill();
    gateway.until_redis("down").await;
    until_served(200).await;
    redis.start();
    gateway.until_redis("up").await;
    until_served(200).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("every request was served");
    }

    let log = gateway.stop();
    let count = |what: &str| log.iter().filter(|line| line.contains(what)).count();
    assert_eq!(count("Redis is unreachable"), 1, "{log:#?}");
    assert_eq!(count("Redis is back"), 1, "{log:#?}");
}

#[tokio::test]
async fn check_config_names_the_redis_keys() {
    let dir = tempfile::tempdir().unwrap();
    for (yaml, key) in [
        ("rate_limit: { policy: redis, per_ip: { requests: 1, per: 1s } }", "rate_limit.policy"),
        ("registry: { store: redis }\ndescriptors: { dir: sets }", "registry.store"),
        ("redis: { url: 'redis://127.0.0.1:6379' }\nregistry: { store: redis }", "registry.store"),
        ("redis: { url: 'http://127.0.0.1:6379' }", "redis.url"),
        ("redis: { url: 'redis://127.0.0.1:6379', timeout: 0s }", "redis.timeout"),
        (
            "redis: { url: 'redis://127.0.0.1:6379', password_env: PROTOGATE_TEST_NO_SUCH_VARIABLE }",
            "redis.password_env",
        ),
        ("rate_limit: { on_redis_error: maybe }", "rate_limit.on_redis_error"),
    ] {
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, yaml).unwrap();
        let output = common::process::protogate()
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{yaml}");
        assert!(stderr.contains(key), "{yaml}: {stderr}");
    }
    // A good one checks without contacting Redis (nothing listens there).
    let path = dir.path().join("gateway.yaml");
    std::fs::write(
        &path,
        "redis: { url: 'redis://127.0.0.1:1/0', key_prefix: 'pg:', timeout: 20ms }\n\
         rate_limit: { policy: redis, on_redis_error: deny, per_ip: { requests: 5, per: 1m } }\n\
         registry: { store: redis }\ndescriptors: { dir: sets }\n",
    )
    .unwrap();
    let output = common::process::protogate()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn serve_takes_the_redis_url_from_the_command_line() {
    let _shared = REDIS_USE.read().await;
    let redis = RedisServer::get();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "rate_limit: {{ policy: redis, per_ip: {{ requests: 2, per: 1h }} }}\n\
             redis: {{ url: 'redis://127.0.0.1:1/0', key_prefix: '{}' }}\n",
            prefix("cli")
        ),
    )
    .unwrap();
    let listen = StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let admin = StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = common::process::protogate()
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--redis", &redis.url()])
        .args([
            "--listen",
            &listen.to_string(),
            "--admin-listen",
            &admin.to_string(),
        ])
        .args(["--descriptor-set", "descriptor-sets/acme.orders.v2.binpb"])
        .args(["--upstream", "acme=http://127.0.0.1:1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let child = common::process::Child(child);
    let client = reqwest::Client::new();
    let started = Instant::now();
    let ready = loop {
        if let Ok(response) = client.get(format!("http://{admin}/readyz")).send().await {
            break response.json::<Json>().await.unwrap();
        }
        assert!(started.elapsed() < HUNG, "the gateway did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(ready.get("redis").is_some(), "{ready}");
    // The quota is counted in the Redis given on the command line: its key is there.
    let _ = client
        .get(format!("http://{listen}/v2/orders/o-1"))
        .send()
        .await;
    let keys = redis
        .command(&format!("KEYS {}rl:*", prefix("cli")))
        .unwrap();
    assert!(keys.starts_with("*1\r\n"), "{keys}");
    drop(child);
}

#[tokio::test]
async fn without_redis_quotas_follow_on_redis_error_and_readyz_says_so() {
    // Nothing listens on port 1: Redis is away from the start.
    for (on_error, statuses) in [
        (OnRedisError::Local, [200, 429, 429]),
        (OnRedisError::Allow, [200, 200, 200]),
        (OnRedisError::Deny, [429, 429, 429]),
    ] {
        let gw = Gateway::start_with(|config| {
            config.redis = Some(RedisConfig {
                url: "redis://127.0.0.1:1/0".into(),
                key_prefix: "away:".into(),
                timeout: Duration::from_millis(50),
                password_env: None,
            });
            config.rate_limit = Some(RateLimitConfig {
                per_ip: Some(QuotaConfig {
                    requests: 1,
                    per: Duration::from_secs(3600),
                }),
                policy: RateLimitPolicy::Redis,
                on_redis_error: on_error,
                ..RateLimitConfig::default()
            });
        })
        .await;
        let mut seen = Vec::new();
        for _ in 0..3 {
            let response = gw
                .client
                .get(gw.url("/v2/orders/o-1"))
                .send()
                .await
                .unwrap();
            seen.push(response.status().as_u16());
            if response.status() == 429 {
                assert!(response.headers().contains_key("retry-after"));
                assert_eq!(response.headers()["ratelimit-limit"], "1");
            }
        }
        assert_eq!(seen, statuses, "{on_error:?}");
        let admin = |path: &str| format!("http://{}{path}", gw.admin_addr);
        let (status, ready) = gw.send(gw.client.get(admin("/readyz"))).await;
        assert_eq!((status, &ready["redis"]), (200, &json!("down")), "{ready}");
        let metrics = gw.text(admin("/metrics")).await;
        assert!(metrics.contains("protogate_redis_up 0"), "{metrics}");
        // The probe's first command or the first decision finds Redis away;
        // no decision tries it after that.
        let errors = |op: &str| redis_errors(&metrics, op);
        assert!(errors("rate_limit") <= 1, "{metrics}");
        assert!(errors("rate_limit") + errors("ping") >= 1, "{metrics}");
    }
}

/// `protogate_redis_errors_total{op}` in a `/metrics` page.
fn redis_errors(metrics: &str, op: &str) -> u64 {
    let series = format!("protogate_redis_errors_total{{op=\"{op}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |count| count.parse().unwrap())
}

/// Lets Redis answer again when dropped, also when the test failed.
struct Unpause(&'static RedisServer);

impl Drop for Unpause {
    fn drop(&mut self) {
        let _ = self.0.command("CLIENT UNPAUSE");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_redis_holds_past_the_timeout_follows_on_redis_error_and_redis_counts_as_away() {
    let _alone = REDIS_USE.write().await;
    let redis = RedisServer::get();
    let gw = Gateway::start_with(|config| {
        config.redis = Some(RedisConfig {
            url: redis.url(),
            key_prefix: prefix("held"),
            timeout: Duration::from_millis(100),
            password_env: None,
        });
        config.rate_limit = Some(RateLimitConfig {
            per_ip: Some(QuotaConfig {
                requests: 1000,
                per: Duration::from_secs(3600),
            }),
            policy: RateLimitPolicy::Redis,
            on_redis_error: OnRedisError::Deny,
            ..RateLimitConfig::default()
        });
    })
    .await;
    let get = || gw.client.get(gw.url("/v2/orders/o-1")).send();
    assert_eq!(get().await.unwrap().status(), 200, "counted in Redis");

    // From now on Redis holds every script (they may write): the decision
    // waits for Redis until the timeout, then is denied (the fallback).
    assert_eq!(
        redis.command("CLIENT PAUSE 60000 WRITE").as_deref(),
        Some("+OK\r\n")
    );
    let unpause = Unpause(redis);
    let held = get().await.unwrap();
    assert_eq!(held.status(), 429);
    assert_eq!(held.headers()["ratelimit-limit"], "1000");
    assert!(held.headers().contains_key("retry-after"));
    let metrics = gw.text(format!("http://{}/metrics", gw.admin_addr)).await;
    assert_eq!(redis_errors(&metrics, "rate_limit"), 1, "{metrics}");

    // Answering again: once the probe finds it, Redis counts again.
    drop(unpause);
    let started = Instant::now();
    while get().await.unwrap().status() != 200 {
        assert!(started.elapsed() < HUNG, "Redis never counted again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// === examples/deploy ===

fn deploy_file(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/examples/deploy/{name}",
        common::process::MANIFEST
    ))
    .unwrap_or_else(|err| panic!("examples/deploy/{name}: {err}"))
}

#[test]
fn the_deploy_examples_parse_and_their_config_checks() {
    use serde::Deserialize as _;
    use serde_yaml_ng::Value;

    let documents: Vec<Value> =
        serde_yaml_ng::Deserializer::from_str(&deploy_file("kubernetes.yaml"))
            .map(|document| Value::deserialize(document).unwrap())
            .collect();
    let find = |kind: &str, name: &str| {
        documents
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let gateway = find("Deployment", "protogate");
    assert_eq!(gateway["spec"]["replicas"], 3);
    let pod = &gateway["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    let admin_port = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["containerPort"] == 9901)
        .expect("the admin listener's port")["name"]
        .clone();
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(container[probe]["httpGet"]["path"], path);
        assert_eq!(container[probe]["httpGet"]["port"], admin_port);
    }
    let labels = &gateway["spec"]["template"]["metadata"]["labels"];
    let budget = find("PodDisruptionBudget", "protogate");
    assert_eq!(&budget["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(find("Service", "redis")["spec"]["ports"][0]["port"], 6379);
    let config = find("ConfigMap", "protogate")["data"]["protogate.yaml"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        config,
        deploy_file("protogate.yaml"),
        "the ConfigMap holds protogate.yaml"
    );

    let mut compose: Value = serde_yaml_ng::from_str(&deploy_file("docker-compose.yaml")).unwrap();
    compose.apply_merge().unwrap();
    let services = compose["services"].as_mapping().unwrap();
    assert!(services.contains_key("redis"));
    let instances: Vec<&Value> = services
        .iter()
        .filter(|(name, _)| name.as_str().is_some_and(|n| n.starts_with("protogate-")))
        .map(|(_, service)| service)
        .collect();
    assert_eq!(instances.len(), 3);
    for instance in instances {
        assert_eq!(
            instance["build"]["dockerfile"],
            "examples/deploy/Dockerfile"
        );
        assert_eq!(
            instance["volumes"][0],
            "./protogate.yaml:/etc/protogate/protogate.yaml:ro"
        );
    }

    let dockerfile = deploy_file("Dockerfile");
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    assert!(stages[0].ends_with(" AS build"), "{stages:?}");
    assert!(dockerfile.contains("cargo build --release --locked"));
    assert!(dockerfile.contains("COPY --from=build "));
    let user = dockerfile
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .unwrap();
    assert!(!user.contains("root") && !user.contains(" 0"), "{user}");

    // The ConfigMap's config, as `serve` would start it (the admin token
    // from its secret), without contacting Redis.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("protogate.yaml");
    std::fs::write(&path, &config).unwrap();
    let output = common::process::protogate()
        .args(["check", "--config"])
        .arg(&path)
        .env("PROTOGATE_ADMIN_TOKEN", "from-the-secret")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
