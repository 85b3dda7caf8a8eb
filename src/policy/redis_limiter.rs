//! `rate_limit.policy: redis`: the buckets counted in the Redis that every
//! instance shares, so that three instances with a quota of 100 admit 100,
//! not 300.
//!
//! Each decision is one `EVALSHA` of a GCRA script: one atomic round trip,
//! on the worker's own multiplexed connection, so concurrent decisions are
//! pipelined rather than queued. The script counts exactly as governor does
//! in process ([`LocalLimiter`]), with Redis' clock, so `RateLimit-*` and
//! `Retry-After` mean the same whichever policy is on; a bucket's key
//! expires when the bucket is full again. While Redis does not answer,
//! `rate_limit.on_redis_error` decides.

use std::{future::Future, sync::Arc, time::Duration};

use redis::Script;

use super::rate_limit::{BucketId, ClientKey, Decision, Limiter, LocalLimiter};
use crate::{
    config::{OnRedisError, QuotaConfig},
    redis_client::{Op, Redis},
};

/// GCRA over one key holding the bucket's theoretical arrival time (µs,
/// Redis' clock). `ARGV[1]`: the emission interval `t` (µs per request);
/// `ARGV[2]`: the tolerance `tau = t * (burst - 1)`. Returns `{1, remaining}`
/// or `{0, µs until the next call is allowed}`, as governor's
/// `test_and_update` and `remaining_burst_capacity` do.
const GCRA: &str = r"
local t = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if now < tat - tau then
  return {0, tat - tau - now}
end
local new_tat = math.max(tat, now) + t
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor(math.min(now + tau + t - new_tat, tau + t) / t)}
";

/// Shared GCRA buckets, with this instance's own as the fallback.
pub struct RedisLimiter {
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
    /// µs per request.
    t: u64,
    /// µs of burst beyond the first request.
    tau: u64,
}

// === impl RedisLimiter ===

impl RedisLimiter {
    /// `local` counts while Redis is away (`on_redis_error: local`).
    pub fn new(
        redis: Arc<Redis>,
        quotas: &[QuotaConfig],
        on_error: OnRedisError,
        local: Arc<LocalLimiter>,
    ) -> Self {
        let buckets = quotas
            .iter()
            .enumerate()
            .map(|(index, quota)| {
                let t = (quota.per / quota.requests).as_micros().max(1);
                let t = u64::try_from(t).unwrap_or(u64::MAX);
                SharedBucket {
                    quota: *quota,
                    key_prefix: format!(
                        "{}rl:{index}:{}/{}:",
                        redis.prefix(),
                        quota.requests,
                        quota.per.as_millis()
                    )
                    .into(),
                    t,
                    tau: t.saturating_mul(u64::from(quota.requests - 1)),
                }
            })
            .collect();
        Self {
            redis,
            buckets,
            script: Script::new(GCRA),
            on_error,
            local,
        }
    }

    async fn decide(&self, bucket: BucketId, key: &ClientKey) -> Decision {
        let Some(shared) = self.buckets.get(bucket.0) else {
            return self.local.decide(bucket, key);
        };
        let mut invocation = self.script.key(shared.key(key));
        invocation.arg(shared.t).arg(shared.tau);
        match self
            .redis
            .invoke::<(u8, u64)>(Op::RateLimit, &invocation)
            .await
        {
            Ok((1, remaining)) => shared.allowed(u32::try_from(remaining).unwrap_or(u32::MAX)),
            Ok((_, wait)) => shared.refused(Duration::from_micros(wait)),
            Err(_) => match self.on_error {
                OnRedisError::Local => self.local.decide(bucket, key),
                OnRedisError::Allow => shared.allowed(shared.quota.requests),
                // As soon as Redis may be back (the first probe).
                OnRedisError::Deny => shared.refused(Duration::from_secs(1)),
            },
        }
    }
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

// === impl SharedBucket ===

impl SharedBucket {
    /// The client's key in this bucket.
    fn key(&self, client: &ClientKey) -> String {
        let mut key = String::with_capacity(self.key_prefix.len() + 48);
        key.push_str(&self.key_prefix);
        match client {
            ClientKey::User { issuer, subject } => {
                // The issuer is a configured one; the subject cannot reach into it.
                key.push_str("u:");
                key.push_str(issuer);
                key.push('\n');
                key.push_str(subject);
            }
            ClientKey::Ip(ip) => {
                use std::fmt::Write as _;
                let _ = write!(key, "ip:{ip}");
            }
            ClientKey::Overflow => key.push_str("overflow"),
        }
        key
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
