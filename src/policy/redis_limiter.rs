//! `rate_limit.policy: redis`: the buckets counted in the Redis that every
//! instance shares, so that three instances with a quota of 100 admit 100,
//! not 300.
//!
//! The decisions a worker takes while it runs its ready tasks go to Redis
//! together: the first one opens this thread's batch and spawns the task
//! that sends it, which yields once, so that it runs after the tasks
//! already woken and those the worker's next look at its sockets wakes,
//! and every decision they take joins. The batch is one `EVALSHA` of a GCRA script
//! over all its keys: one write, one read and one wake-up on the worker's own
//! multiplexed connection for the lot, and each decision still atomic and
//! exact, since the script takes them one after the other (the same key
//! twice counts twice). Answers come back through one shared slot per
//! batch, without a channel per decision. The script counts exactly as
//! governor does in process ([`LocalLimiter`]), with Redis' clock, so
//! `RateLimit-*` and `Retry-After` mean the same whichever policy is on; a
//! bucket's key expires when the bucket is full again. While Redis does not
//! answer, `rate_limit.on_redis_error` decides.

use std::{
    cell::RefCell,
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use redis::{Cmd, Script};
use tokio::{
    runtime::{Handle, RuntimeFlavor},
    sync::Notify,
};

use super::rate_limit::{BucketId, ClientKey, Decision, Limiter, LocalLimiter};
use crate::{
    config::{OnRedisError, QuotaConfig},
    observe::access_log::write_ip,
    redis_client::{Op, Redis},
};

/// GCRA over each key, in order, each holding its bucket's theoretical
/// arrival time (µs, Redis' clock). `ARGV[1]`: per key, its bucket's
/// emission interval `t` (µs per request) and tolerance
/// `tau = t * (burst - 1)`, each followed by a space: one argument for the
/// lot, since the client copies each argument twice and frames it.
/// Returns per key `1, remaining` or `0, µs until the next call is
/// allowed`, as governor's `test_and_update` and
/// `remaining_burst_capacity` do: as one string of decimal numbers, each
/// after a space, which the client reads in one piece (an array of integers
/// costs it a parse per element, more than the rest of the call).
const GCRA: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local verdicts = {}
local i = 0
for t, tau in string.gmatch(ARGV[1], '(%d+) (%d+) ') do
  i = i + 1
  local key = KEYS[i]
  t = tonumber(t)
  tau = tonumber(tau)
  local tat = tonumber(redis.call('GET', key)) or now
  if now < tat - tau then
    verdicts[2 * i - 1] = '0'
    verdicts[2 * i] = string.format('%d', tat - tau - now)
  else
    local new_tat = math.max(tat, now) + t
    redis.call('SET', key, string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
    verdicts[2 * i - 1] = '1'
    verdicts[2 * i] = string.format('%d', math.floor(math.min(now + tau + t - new_tat, tau + t) / t))
  end
end
return table.concat(verdicts, ' ')
";

/// Most decisions in one script call: a bigger batch waits for the next one,
/// so that no call keeps Redis (single-threaded) busy for long.
const MAX_BATCH: usize = 256;

thread_local! {
    /// The batches this thread is gathering, one per limiter, until their
    /// task takes them.
    static GATHERING: RefCell<Vec<Gathering>> = const { RefCell::new(Vec::new()) };
}

/// Shared GCRA buckets, with this instance's own as the fallback.
pub struct RedisLimiter {
    /// Tells this limiter's batches apart from another gateway's in one process.
    id: u64,
    redis: Arc<Redis>,
    buckets: Box<[SharedBucket]>,
    script: Script,
    on_error: OnRedisError,
    local: Arc<LocalLimiter>,
}

/// One quota's bucket in Redis.
struct SharedBucket {
    quota: QuotaConfig,
    /// `{prefix}rl:{bucket}:{requests}/{per in ms}:`: a changed quota starts
    /// afresh rather than reading another quota's state.
    key_prefix: Box<str>,
    /// `t tau `: µs per request, µs of burst beyond the first request, as
    /// the script reads them.
    params: Box<str>,
}

/// A batch being gathered on this thread: the decisions asked so far.
struct Gathering {
    limiter: u64,
    batch: Arc<Batch>,
    asked: Vec<(BucketId, ClientKey)>,
}

/// What the decisions of one batch wait for.
#[derive(Default)]
struct Batch {
    /// Per decision `allowed, remaining or µs to wait`, flat; `None` when
    /// Redis did not answer.
    verdicts: OnceLock<Option<Box<[u64]>>>,
    answered: Notify,
}

/// Wakes a batch's decisions when its task ends, answered or not (a task
/// dropped with its runtime leaves no decision waiting).
struct Answer(Arc<Batch>);

// === impl RedisLimiter ===

impl RedisLimiter {
    /// `local` counts while Redis is away (`on_redis_error: local`).
    pub fn new(
        redis: Arc<Redis>,
        quotas: &[QuotaConfig],
        on_error: OnRedisError,
        local: Arc<LocalLimiter>,
    ) -> Self {
        static IDS: AtomicU64 = AtomicU64::new(0);
        let buckets = quotas
            .iter()
            .enumerate()
            .map(|(index, quota)| {
                let t = (quota.per / quota.requests).as_micros().max(1);
                let t = u64::try_from(t).unwrap_or(u64::MAX);
                let tau = t.saturating_mul(u64::from(quota.requests - 1));
                SharedBucket {
                    quota: *quota,
                    key_prefix: format!(
                        "{}rl:{index}:{}/{}:",
                        redis.prefix(),
                        quota.requests,
                        quota.per.as_millis()
                    )
                    .into(),
                    params: format!("{t} {tau} ").into(),
                }
            })
            .collect();
        Self {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            redis,
            buckets,
            script: Script::new(GCRA),
            on_error,
            local,
        }
    }

    async fn decide(self: &Arc<Self>, bucket: BucketId, key: &ClientKey) -> Decision {
        let Some(shared) = self.buckets.get(bucket.0) else {
            return self.local.decide(bucket, key);
        };
        if !self.redis.is_up() {
            return self.fallback(shared, bucket, key);
        }
        // A current-thread runtime (a serving worker) runs the batch's task
        // on this thread, where the batch is gathered; elsewhere, alone,
        // boxed: the call's future is large, and every request's future
        // would carry (and copy) it.
        let verdict = match Handle::try_current().map(|handle| handle.runtime_flavor()) {
            Ok(RuntimeFlavor::CurrentThread) => self.join_batch(bucket, key).await,
            _ => {
                let asked = [(bucket, key.clone())];
                let verdicts = Box::pin(self.evaluate(&asked)).await;
                verdicts
                    .as_deref()
                    .and_then(|verdicts| verdict(verdicts, 0))
            }
        };
        match verdict {
            Some((1, remaining)) => shared.allowed(u32::try_from(remaining).unwrap_or(u32::MAX)),
            Some((_, wait)) => shared.refused(Duration::from_micros(wait)),
            None => self.fallback(shared, bucket, key),
        }
    }

    /// While Redis does not answer: `rate_limit.on_redis_error`.
    fn fallback(&self, shared: &SharedBucket, bucket: BucketId, key: &ClientKey) -> Decision {
        match self.on_error {
            OnRedisError::Local => self.local.decide(bucket, key),
            OnRedisError::Allow => shared.allowed(shared.quota.requests),
            // As soon as Redis may be back (the first probe).
            OnRedisError::Deny => shared.refused(Duration::from_secs(1)),
        }
    }

    /// Adds the decision to this thread's open batch (opening one, and
    /// spawning its task, if there is none) and waits for its verdict.
    async fn join_batch(self: &Arc<Self>, bucket: BucketId, key: &ClientKey) -> Option<(u64, u64)> {
        let (batch, index) = GATHERING.with_borrow_mut(|gathering| {
            let open = gathering
                .iter_mut()
                .rfind(|g| g.limiter == self.id && g.asked.len() < MAX_BATCH);
            let open = match open {
                Some(open) => open,
                None => {
                    let batch = Arc::new(Batch::default());
                    tokio::spawn(self.clone().send(Answer(batch.clone())));
                    gathering.push(Gathering {
                        limiter: self.id,
                        batch,
                        asked: Vec::with_capacity(16),
                    });
                    gathering.last_mut()?
                }
            };
            open.asked.push((bucket, key.clone()));
            Some((open.batch.clone(), open.asked.len() - 1))
        })?;
        let answered = batch.answered.notified();
        tokio::pin!(answered);
        answered.as_mut().enable();
        if batch.verdicts.get().is_none() {
            answered.await;
        }
        verdict(batch.verdicts.get()?.as_deref()?, index)
    }

    /// The task of one batch: takes what was gathered by the end of the
    /// worker's turn, asks Redis, and wakes the decisions (also when
    /// dropped unpolled, as its runtime shuts down).
    async fn send(self: Arc<Self>, answer: Answer) {
        // Runs again after the tasks already woken and those the worker's
        // next look at its sockets wakes, whose decisions join.
        tokio::task::yield_now().await;
        let asked = GATHERING.with_borrow_mut(|gathering| {
            let index = gathering
                .iter()
                .position(|g| Arc::ptr_eq(&g.batch, &answer.0))?;
            Some(gathering.swap_remove(index).asked)
        });
        let verdicts = match asked {
            Some(asked) => self.evaluate(&asked).await,
            None => None,
        };
        let _ = answer.0.verdicts.set(verdicts);
    }

    /// One script call over `asked`: per decision `allowed, remaining or µs
    /// to wait`; `None` when Redis did not answer (or answered nonsense).
    async fn evaluate(&self, asked: &[(BucketId, ClientKey)]) -> Option<Box<[u64]>> {
        let mut evalsha = Cmd::with_capacity(4 + asked.len(), 128 + 128 * asked.len());
        evalsha
            .arg("EVALSHA")
            .arg(self.script.get_hash())
            .arg(asked.len());
        let mut key = Vec::with_capacity(96);
        let mut params = Vec::with_capacity(32 * asked.len());
        for (bucket, client) in asked {
            let shared = self.buckets.get(bucket.0)?;
            key.clear();
            shared.write_key(client, &mut key);
            evalsha.arg(key.as_slice());
            params.extend_from_slice(shared.params.as_bytes());
        }
        evalsha.arg(params);
        let answer: Vec<u8> = self
            .redis
            .eval(Op::RateLimit, &self.script, &evalsha)
            .await
            .ok()?;
        // Sized once: collected from an iterator of unknown length, the
        // numbers were copied over and over as the list grew.
        let mut verdicts = Vec::with_capacity(2 * asked.len());
        for number in answer.split(|&byte| byte == b' ') {
            verdicts.push(std::str::from_utf8(number).ok()?.parse().ok()?);
        }
        (verdicts.len() == 2 * asked.len()).then(|| verdicts.into_boxed_slice())
    }
}

/// Decision `index`'s verdict in a batch's flat answer.
fn verdict(verdicts: &[u64], index: usize) -> Option<(u64, u64)> {
    Some((*verdicts.get(2 * index)?, *verdicts.get(2 * index + 1)?))
}

impl Limiter for Arc<RedisLimiter> {
    fn check(&self, bucket: BucketId, key: &ClientKey) -> impl Future<Output = Decision> + Send {
        self.decide(bucket, key)
    }
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("redis", &self.redis)
            .field("on_error", &self.on_error)
            .finish_non_exhaustive()
    }
}

// === impl Answer ===

impl Drop for Answer {
    fn drop(&mut self) {
        let _ = self.0.verdicts.set(None);
        self.0.answered.notify_waiters();
    }
}

// === impl SharedBucket ===

impl SharedBucket {
    /// Writes the client's key in this bucket to `key`.
    fn write_key(&self, client: &ClientKey, key: &mut Vec<u8>) {
        key.extend_from_slice(self.key_prefix.as_bytes());
        match client {
            ClientKey::User { issuer, subject } => {
                // The issuer is a configured one; the subject cannot reach into it.
                key.extend_from_slice(b"u:");
                key.extend_from_slice(issuer.as_bytes());
                key.push(b'\n');
                key.extend_from_slice(subject.as_bytes());
            }
            ClientKey::Ip(ip) => {
                key.extend_from_slice(b"ip:");
                write_ip(*ip, key);
            }
            ClientKey::Overflow => key.extend_from_slice(b"overflow"),
        }
    }

    /// The same numbers [`LocalLimiter::decide`] gives.
    fn allowed(&self, remaining: u32) -> Decision {
        let QuotaConfig { requests, per } = self.quota;
        Decision {
            allowed: true,
            limit: requests,
            remaining,
            reset: per / requests * (requests - remaining.min(requests)),
            retry_after: Duration::ZERO,
            window: per,
        }
    }

    fn refused(&self, retry_after: Duration) -> Decision {
        let QuotaConfig { requests, per } = self.quota;
        Decision {
            allowed: false,
            limit: requests,
            remaining: 0,
            reset: retry_after + per / requests * (requests - 1),
            retry_after,
            window: per,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::{config::RedisConfig, testing::RedisServer};

    /// Every instance must name a client's bucket alike, whatever version
    /// it runs, or they count apart.
    #[tokio::test]
    async fn a_bucket_key_names_the_quota_and_the_client() {
        let config = RedisConfig {
            url: "redis://127.0.0.1:1/0".into(),
            key_prefix: "p:".into(),
            timeout: Duration::from_secs(1),
            password_env: None,
        };
        let redis = Arc::new(Redis::new(&config, None).unwrap());
        let quota = QuotaConfig {
            requests: 100,
            per: Duration::from_secs(60),
        };
        let local = LocalLimiter::new(&[quota], 16).unwrap();
        let limiter = RedisLimiter::new(redis, &[quota, quota], OnRedisError::Local, local);
        let keys = [
            ClientKey::Ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10))),
            ClientKey::Ip("2001:db8::1".parse().unwrap()),
            ClientKey::User {
                issuer: "https://issuer".into(),
                subject: "alice".into(),
            },
            ClientKey::Overflow,
        ];
        let written: Vec<String> = keys
            .iter()
            .map(|client| {
                let mut key = Vec::new();
                limiter.buckets[1].write_key(client, &mut key);
                String::from_utf8(key).unwrap()
            })
            .collect();
        assert_eq!(
            written,
            [
                "p:rl:1:100/60000:ip:192.0.2.10",
                "p:rl:1:100/60000:ip:2001:db8::1",
                "p:rl:1:100/60000:u:https://issuer\nalice",
                "p:rl:1:100/60000:overflow",
            ]
        );
    }

    /// A serving worker's runtime.
    fn worker_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A limiter of 100 an hour counting in `server`, its script loaded and
    /// the server's statistics reset. It denies when Redis does not answer:
    /// a fallback shows as a refusal.
    async fn limiter(server: &RedisServer) -> Arc<RedisLimiter> {
        let config = RedisConfig {
            url: server.url(),
            key_prefix: "unit:".into(),
            timeout: Duration::from_secs(5),
            password_env: None,
        };
        let quota = QuotaConfig {
            requests: 100,
            per: Duration::from_secs(3600),
        };
        let redis = Arc::new(Redis::new(&config, None).unwrap());
        let local = LocalLimiter::new(&[quota], 16).unwrap();
        let limiter = Arc::new(RedisLimiter::new(
            redis,
            &[quota],
            OnRedisError::Deny,
            local,
        ));
        let other = ClientKey::Ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)));
        assert!(limiter.check(BucketId(0), &other).await.allowed);
        assert_eq!(server.command("CONFIG RESETSTAT"), "+OK\r\n");
        limiter
    }

    fn decide(limiter: &Arc<RedisLimiter>) -> tokio::task::JoinHandle<Decision> {
        let client = ClientKey::Ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        let limiter = limiter.clone();
        tokio::spawn(async move { limiter.check(BucketId(0), &client).await })
    }

    /// The `EVALSHA` calls since the statistics were reset.
    fn evalsha_calls(server: &RedisServer) -> u64 {
        let stats = server.command("INFO commandstats");
        stats
            .lines()
            .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|rest| rest.split(',').next())
            .and_then(|calls| calls.parse().ok())
            .unwrap_or_else(|| panic!("no EVALSHA counted: {stats}"))
    }

    #[test]
    fn the_decisions_of_one_tick_go_in_one_call_and_each_counts_in_turn() {
        let server = RedisServer::start();
        worker_runtime().block_on(async {
            let limiter = limiter(&server).await;
            let decisions: Vec<_> = (0..150).map(|_| decide(&limiter)).collect();
            let mut remaining = Vec::new();
            let mut refused = 0;
            for decision in decisions {
                let decision = decision.await.unwrap();
                if decision.allowed {
                    remaining.push(decision.remaining);
                } else {
                    assert!(decision.retry_after > Duration::ZERO, "{decision:?}");
                    refused += 1;
                }
            }
            // One bucket counting down in the order asked, then refusing.
            assert_eq!(remaining, (0..100).rev().collect::<Vec<u32>>());
            assert_eq!(refused, 50);
            assert_eq!(evalsha_calls(&server), 1);
        });
    }
}
