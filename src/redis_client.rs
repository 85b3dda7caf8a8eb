//! The Redis that several gateway instances share: quotas
//! (`rate_limit.policy: redis`) and the registry (`registry.store: redis`).
//!
//! Client: the `redis` crate's `ConnectionManager`, a multiplexed
//! connection on tokio that pipelines concurrent commands and reconnects by
//! itself. Each thread opens its own on first use, on the runtime it runs, so
//! a worker's rate-limit decisions share one connection and are never handed
//! to another thread.
//!
//! Every command gets `redis.timeout` (registry commands, which carry whole
//! descriptor sets, at least 2 s). A command that fails for want of
//! Redis (refused, dropped, timed out) marks it down: one log line, and from
//! then on callers are answered at once, without waiting, until the probe
//! ([`Redis::keep_watch`]) finds it again with back-off (one more log line);
//! threads then open fresh connections. A refused password says where it
//! came from (`redis.password_env` or `redis.url`), never what it is.

use std::{
    cell::RefCell,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use metrics::{Counter, Gauge, Histogram};
use redis::{
    aio::{ConnectionManager, ConnectionManagerConfig, PubSub},
    AsyncConnectionConfig, Client, Cmd, FromRedisValue, IntoConnectionInfo, RedisError, Script,
    ScriptInvocation,
};
use tokio::sync::Notify;

use crate::{
    config::RedisConfig,
    timers::{self, Kind, Timer},
};

/// First wait before probing a Redis that went away; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Longest wait for a TCP (and TLS) connection to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Least wait for a registry command, which carries whole descriptor sets.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(2);

/// What a command was for: the `op` label of the Redis metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    RateLimit,
    RegistryRead,
    RegistryWrite,
    Subscribe,
    Ping,
}

/// Why a command failed, which decides what is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Redis answered with an error: this command is wrong, Redis is fine.
    Command,
    /// No answer: Redis is down until the probe finds it again.
    Away,
    /// Redis is there but lets nobody in with this password: down too.
    PasswordRefused,
}

/// Redis did not answer (or is known to be away): the caller falls back.
#[derive(Debug, Clone, thiserror::Error)]
#[error("Redis is unavailable: {0}")]
pub struct Unavailable(Box<str>);

/// The shared Redis; one per gateway, cheap to share by `Arc`.
pub struct Redis {
    /// Tells this client's connections apart in the threads' connection lists.
    id: u64,
    client: Client,
    manager_config: ConnectionManagerConfig,
    prefix: Box<str>,
    timeout: Duration,
    /// Where the password comes from, for the message when Redis refuses it.
    password_source: Box<str>,
    /// Set when the log has said that Redis refuses the password, until it is back.
    refusal_said: AtomicBool,
    up: AtomicBool,
    /// Bumped each time Redis comes back, so that threads drop connections
    /// opened before.
    epoch: AtomicU64,
    went_down: Notify,
    metrics: RedisMetrics,
}

/// The handles of `protogate_redis_up`, `protogate_redis_errors_total{op}`
/// and `protogate_redis_command_duration_seconds{op}`, indexed by [`Op`]:
/// given by the server, whose metrics they are.
#[derive(Debug)]
pub struct RedisMetrics {
    pub up: Gauge,
    pub errors: [Counter; Op::ALL.len()],
    pub duration: [Histogram; Op::ALL.len()],
}

thread_local! {
    /// This thread's connections: (client id, epoch, connection).
    static CONNECTIONS: RefCell<Vec<(u64, u64, ConnectionManager)>> = const { RefCell::new(Vec::new()) };
}

// === impl Op ===

impl Op {
    pub const ALL: [Op; 5] = [
        Op::RateLimit,
        Op::RegistryRead,
        Op::RegistryWrite,
        Op::Subscribe,
        Op::Ping,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Op::RateLimit => "rate_limit",
            Op::RegistryRead => "registry_read",
            Op::RegistryWrite => "registry_write",
            Op::Subscribe => "subscribe",
            Op::Ping => "ping",
        }
    }
}

// === impl Redis ===

impl Redis {
    /// A client for `config`; connects on first use, so that a gateway starts
    /// (and `check` runs) without Redis. `metrics`: where to count, none for `check`.
    pub fn new(config: &RedisConfig, metrics: Option<RedisMetrics>) -> Result<Self, String> {
        static IDS: AtomicU64 = AtomicU64::new(0);
        let mut info = config
            .url
            .as_str()
            .into_connection_info()
            .map_err(|err| format!("redis.url: {err}"))?;
        let mut password_source: Box<str> = "redis.url".into();
        if let Some(name) = &config.password_env {
            let password = std::env::var(name).map_err(|_| {
                format!("redis.password_env: the environment variable `{name}` is not set")
            })?;
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
            password_source = format!("redis.password_env ({name})").into();
        }
        let client = Client::open(info).map_err(|err| format!("redis.url: {err}"))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            // Ours, per command (see `timed`), not the connection's.
            .set_response_timeout(None)
            .set_min_delay(MIN_BACKOFF)
            .set_max_delay(MAX_BACKOFF)
            .set_number_of_retries(2);
        let metrics = metrics.unwrap_or_else(RedisMetrics::noop);
        metrics.up.set(1.0);
        Ok(Self {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            client,
            manager_config,
            prefix: config.key_prefix.as_str().into(),
            timeout: config.timeout,
            password_source,
            refusal_said: AtomicBool::new(false),
            up: AtomicBool::new(true),
            epoch: AtomicU64::new(0),
            went_down: Notify::new(),
            metrics,
        })
    }

    /// Every key and channel starts with this (`redis.key_prefix`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// False from a failed command until a probe answers again.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Runs one command on this thread's connection.
    pub async fn query<T: FromRedisValue>(&self, op: Op, cmd: &Cmd) -> Result<T, Unavailable> {
        let mut connection = self.connection(op)?;
        self.timed(op, cmd.query_async(&mut connection)).await
    }

    /// Runs a script by its digest (`EVALSHA`), loading it first when this
    /// Redis does not know it yet (a restarted one).
    pub async fn invoke<T: FromRedisValue>(
        &self,
        op: Op,
        script: &ScriptInvocation<'_>,
    ) -> Result<T, Unavailable> {
        let mut connection = self.connection(op)?;
        self.timed(op, script.invoke_async(&mut connection)).await
    }

    /// Runs `evalsha`, an `EVALSHA` of `script` built by the caller (so that
    /// many keys cost no allocation each), loading the script first when
    /// this Redis does not know it yet (a restarted one).
    pub async fn eval<T: FromRedisValue>(
        &self,
        op: Op,
        script: &Script,
        evalsha: &Cmd,
    ) -> Result<T, Unavailable> {
        let mut connection = self.connection(op)?;
        self.timed(op, async {
            // The manager's own method, not `query_async`, which boxes it.
            let answer = |value: redis::Value| Ok(redis::from_redis_value(value.extract_error()?)?);
            match connection
                .send_packed_command(evalsha)
                .await
                .and_then(answer)
            {
                Err(err)
                    if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    script.load_async(&mut connection).await?;
                    connection
                        .send_packed_command(evalsha)
                        .await
                        .and_then(answer)
                }
                answered => answered,
            }
        })
        .await
    }

    /// A connection subscribed to `channel`, its own (pub/sub holds a
    /// connection for itself).
    pub async fn subscribe(&self, channel: &str) -> Result<PubSub, Unavailable> {
        if !self.is_up() {
            return Err(Unavailable("not connected".into()));
        }
        self.timed(Op::Subscribe, async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok(pubsub)
        })
        .await
    }

    /// Probes a Redis that went away, with back-off, until it answers;
    /// then waits for the next failure. Runs as long as the gateway serves;
    /// starts with one command, so that a Redis away from the start shows
    /// (in `/readyz`) before any request needs it.
    pub async fn keep_watch(self: Arc<Self>) {
        let _ = self.query::<()>(Op::Ping, &redis::cmd("PING")).await;
        let connection_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(self.timeout));
        let mut backoff = MIN_BACKOFF;
        loop {
            if self.is_up() {
                self.went_down.notified().await;
                backoff = MIN_BACKOFF;
                continue;
            }
            tokio::time::sleep(backoff).await;
            let started = Instant::now();
            let answered = async {
                let mut connection = self
                    .client
                    .get_multiplexed_async_connection_with_config(&connection_config)
                    .await?;
                redis::cmd("PING").query_async::<()>(&mut connection).await
            };
            let answered = tokio::time::timeout(CONNECT_TIMEOUT + self.timeout, answered).await;
            self.metrics.duration[Op::Ping as usize].record(started.elapsed().as_secs_f64());
            match answered {
                Ok(Ok(())) => {
                    self.epoch.fetch_add(1, Ordering::Release);
                    self.refusal_said.store(false, Ordering::Relaxed);
                    self.up.store(true, Ordering::Relaxed);
                    self.metrics.up.set(1.0);
                    tracing::info!("Redis is back: shared quotas and registry resume");
                }
                failed => {
                    self.metrics.errors[Op::Ping as usize].increment(1);
                    // Gone down for another reason first (a command timed
                    // out while connecting): the probe says it once.
                    if let Ok(Err(err)) = &failed {
                        if is_refused_password(err)
                            && !self.refusal_said.swap(true, Ordering::Relaxed)
                        {
                            tracing::error!("Redis is unreachable: {}", self.refusal(err));
                        }
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// This thread's connection, opened (lazily) on its runtime on first use
    /// and again after Redis came back.
    fn connection(&self, op: Op) -> Result<ConnectionManager, Unavailable> {
        if !self.is_up() {
            return Err(Unavailable("not connected".into()));
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        CONNECTIONS.with_borrow_mut(|connections| {
            if let Some((_, opened, connection)) =
                connections.iter_mut().find(|(id, ..)| *id == self.id)
            {
                if *opened == epoch {
                    return Ok(connection.clone());
                }
                *connection = self.open(op)?;
                *opened = epoch;
                return Ok(connection.clone());
            }
            let connection = self.open(op)?;
            connections.push((self.id, epoch, connection.clone()));
            Ok(connection)
        })
    }

    fn open(&self, op: Op) -> Result<ConnectionManager, Unavailable> {
        ConnectionManager::new_lazy_with_config(self.client.clone(), self.manager_config.clone())
            .map_err(|err| self.failed(op, &err.to_string(), Failure::Away))
    }

    /// Awaits `command` within `redis.timeout`, counting and timing it.
    async fn timed<T>(
        &self,
        op: Op,
        command: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, Unavailable> {
        let timeout = match op {
            Op::RateLimit | Op::Ping => self.timeout,
            Op::RegistryRead | Op::RegistryWrite | Op::Subscribe => {
                self.timeout.max(REGISTRY_TIMEOUT)
            }
        };
        let started = Instant::now();
        let timer = Timer::until(timers::deadline_after(started, timeout), Kind::Redis);
        let result = timers::timeout(timer, command).await;
        self.metrics.duration[op as usize].record(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(value)) => Ok(value),
            // A script or type error: Redis is there, the command is wrong.
            Ok(Err(err)) if is_refused_password(&err) => {
                Err(self.failed(op, &self.refusal(&err), Failure::PasswordRefused))
            }
            // A script or type error: Redis is there, the command is wrong.
            Ok(Err(err)) if matches!(err.kind(), redis::ErrorKind::Server(_)) => {
                Err(self.failed(op, &err.to_string(), Failure::Command))
            }
            Ok(Err(err)) => Err(self.failed(op, &err.to_string(), Failure::Away)),
            Err(_) => Err(self.failed(op, &format!("no answer within {timeout:?}"), Failure::Away)),
        }
    }

    /// A refused password in words: where it came from, never what it is.
    fn refusal(&self, err: &RedisError) -> String {
        if err.code() == Some("NOAUTH") {
            "it asks for a password: give it in redis.url or redis.password_env".to_owned()
        } else {
            format!("the password of {} is refused", self.password_source)
        }
    }

    /// Counts a failed command; when Redis is away, marks it down (and says so once).
    fn failed(&self, op: Op, reason: &str, failure: Failure) -> Unavailable {
        self.metrics.errors[op as usize].increment(1);
        if failure == Failure::Command {
            tracing::warn!(op = op.label(), "Redis refused a command: {reason}");
        } else if self.up.swap(false, Ordering::Relaxed) {
            if failure == Failure::PasswordRefused {
                self.refusal_said.store(true, Ordering::Relaxed);
            }
            self.metrics.up.set(0.0);
            tracing::warn!(
                op = op.label(),
                "Redis is unreachable ({reason}): quotas follow rate_limit.on_redis_error, \
                 admin changes are refused, routes come from the current catalog"
            );
            self.went_down.notify_one();
        }
        Unavailable(reason.into())
    }
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

/// Whether Redis refused to let this client in: a wrong password, or none
/// given where one is needed. Nothing works until the config changes.
fn is_refused_password(err: &RedisError) -> bool {
    err.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(err.code(), Some("NOAUTH" | "WRONGPASS"))
}

// === impl RedisMetrics ===

impl RedisMetrics {
    fn noop() -> Self {
        Self {
            up: Gauge::noop(),
            errors: Op::ALL.map(|_| Counter::noop()),
            duration: Op::ALL.map(|_| Histogram::noop()),
        }
    }
}
