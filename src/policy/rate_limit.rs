//! Rate limiting (step 11): authenticated calls are counted per consumer (the
//! token's issuer and subject), anonymous ones and failed authentications per
//! client IP, each in the bucket the method's policy names. Over the limit →
//! 429 with `Retry-After`, `RateLimit-*` and a `google.rpc.RetryInfo`;
//! allowed responses carry the `RateLimit-*` headers too.
//!
//! The [`Limiter`] trait is the seam for a shared backend (Redis) serving
//! several gateway instances; [`LocalLimiter`] is governor's GCRA in process,
//! with a bounded key store: past `max_keys` clients, new ones share one
//! overflow key (limited together rather than unlimited), and a sweeper drops
//! clients whose buckets are full again.

use std::{
    future::Future,
    hash::Hash,
    net::IpAddr,
    num::NonZeroU32,
    sync::{Arc, Weak},
    time::Duration,
};

use axum::extract::Request;
use governor::{
    clock::{Clock, DefaultClock},
    middleware::{NoOpMiddleware, StateInformationMiddleware},
    nanos::Nanos,
    state::{
        keyed::{DashMapStateStore, ShrinkableKeyedStateStore},
        StateStore,
    },
    Quota, RateLimiter,
};
use http::{HeaderMap, HeaderValue};

use super::RoutePolicy;
use super::{client_ip::ClientIp, Identity, SetupError};
use crate::{config::QuotaConfig, error::Error};

/// How often full buckets are forgotten.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// A quota's bucket, numbered at start (see `PolicyRules`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BucketId(pub usize);

/// The buckets a method's calls are counted in; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimits {
    pub per_user: Option<BucketId>,
    pub per_ip: Option<BucketId>,
}

/// Who is counted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// A verified caller: the token's issuer and subject.
    User {
        issuer: Arc<str>,
        subject: Arc<str>,
    },
    Ip(IpAddr),
    /// Every client that arrived once the store was full.
    Overflow,
}

/// One limiter verdict, with what the `RateLimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests per window (the burst size).
    pub limit: u32,
    pub remaining: u32,
    /// Time until the bucket is full again.
    pub reset: Duration,
    /// Time until the next request is allowed (zero when allowed).
    pub retry_after: Duration,
    pub window: Duration,
}

/// A rate-limit backend: counts one call of `key` in `bucket`.
pub trait Limiter: Send + Sync + 'static {
    fn check(&self, bucket: BucketId, key: &ClientKey) -> impl Future<Output = Decision> + Send;
}

/// What step 11 needs: the limiter and how to find the client's IP.
#[derive(Debug)]
pub struct RateLimiting<L> {
    pub limiter: L,
    pub client_ip: ClientIp,
}

/// Step 11: counts the call against the matched method's bucket for its
/// consumer (the verified subject, else the client IP); over the limit is
/// 429. The decision's `RateLimit-*` headers go on the response.
pub fn rate_limit<'a, L: Limiter>(
    limits: &'a RateLimiting<L>,
    policy: &RoutePolicy,
    request: &Request,
) -> impl Future<Output = Result<Option<Decision>, Error>> + Send + 'a {
    // The key is read now: the future must not hold the request.
    let policy = policy.rate_limit;
    let counted = match request.extensions().get::<Arc<Identity>>() {
        Some(identity) => policy.per_user.map(|bucket| {
            let key = ClientKey::User {
                issuer: identity.issuer.clone(),
                subject: identity.subject.clone(),
            };
            (bucket, key)
        }),
        None => anonymous(limits, policy, request),
    };
    async move {
        let Some((bucket, key)) = counted else {
            return Ok(None);
        };
        let decision = limits.limiter.check(bucket, &key).await;
        if decision.allowed {
            Ok(Some(decision))
        } else {
            Err(decision.refusal())
        }
    }
}

/// A failed authentication (`refused`, a 401) counts as an anonymous call
/// of the client IP: once that quota is spent the answer is 429, so a flood
/// of bad tokens is throttled like anonymous traffic. Other errors pass.
pub fn count_failed_authentication<'a, L: Limiter>(
    limits: &'a RateLimiting<L>,
    policy: &RoutePolicy,
    request: &Request,
    refused: Error,
) -> impl Future<Output = Error> + Send + 'a {
    let policy = policy.rate_limit;
    let counted = matches!(refused, Error::Unauthenticated { .. })
        .then(|| anonymous(limits, policy, request))
        .flatten();
    async move {
        let Some((bucket, key)) = counted else {
            return refused;
        };
        let decision = limits.limiter.check(bucket, &key).await;
        if decision.allowed {
            refused
        } else {
            decision.refusal()
        }
    }
}

/// The bucket and key of an anonymous call: the client IP, when the
/// method has a per-IP quota.
fn anonymous<L>(
    limits: &RateLimiting<L>,
    policy: RateLimits,
    request: &Request,
) -> Option<(BucketId, ClientKey)> {
    policy.per_ip.map(|bucket| {
        let ip = limits.client_ip.of(request.extensions(), request.headers());
        (bucket, ClientKey::Ip(ip))
    })
}

// === impl Decision ===

impl Decision {
    /// The 429 for a refused call: `Retry-After` (whole seconds, at least
    /// one) and the `RateLimit-*` headers ride in the error.
    fn refusal(&self) -> Error {
        let mut headers = HeaderMap::new();
        let retry_after = ceil_secs(self.retry_after).max(1);
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from(retry_after));
        self.write_headers(&mut headers);
        Error::RateLimited {
            limit: self.limit,
            window_secs: ceil_secs(self.window),
            retry_after: self.retry_after,
            headers: Box::new(headers),
        }
    }

    /// `RateLimit-Limit`, `-Remaining`, `-Reset` (seconds, rounded up) and
    /// `RateLimit-Policy` (IETF httpapi-ratelimit-headers).
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        let number = |n: u64| HeaderValue::from(n);
        headers.insert("ratelimit-limit", number(self.limit.into()));
        headers.insert("ratelimit-remaining", number(self.remaining.into()));
        headers.insert("ratelimit-reset", number(ceil_secs(self.reset)));
        if let Ok(policy) =
            HeaderValue::from_str(&format!("{};w={}", self.limit, ceil_secs(self.window)))
        {
            headers.insert("ratelimit-policy", policy);
        }
    }
}

fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

// === impl LocalLimiter ===

type Bucket<C> = RateLimiter<ClientKey, BoundedStore, C, StateInformationMiddleware>;

/// In-process GCRA buckets (governor), one keyed limiter per configured quota.
pub struct LocalLimiter<C: Clock = DefaultClock> {
    buckets: Box<[(Bucket<C>, QuotaConfig)]>,
    clock: C,
}

impl LocalLimiter {
    /// One bucket per quota; starts the sweeper that forgets full buckets.
    /// Must run inside a tokio runtime.
    pub fn new(quotas: &[QuotaConfig], max_keys: usize) -> Result<Arc<Self>, SetupError> {
        let limiter = Arc::new(Self::with_clock(quotas, max_keys, DefaultClock::default())?);
        tokio::spawn(sweep(Arc::downgrade(&limiter)));
        Ok(limiter)
    }
}

impl<C: Clock + Clone> LocalLimiter<C> {
    pub fn with_clock(
        quotas: &[QuotaConfig],
        max_keys: usize,
        clock: C,
    ) -> Result<Self, SetupError> {
        let buckets = quotas
            .iter()
            .map(|quota| {
                let governor_quota = governor_quota(*quota).ok_or_else(|| SetupError {
                    key: "rate_limit".into(),
                    reason: format!(
                        "{} requests per {:?} is finer than a nanosecond per request",
                        quota.requests, quota.per
                    ),
                })?;
                let store = BoundedStore {
                    map: DashMapStateStore::default(),
                    max_keys,
                };
                let bucket: Bucket<C> = RateLimiter::<_, _, _, NoOpMiddleware<C::Instant>>::new(
                    governor_quota,
                    store,
                    clock.clone(),
                )
                .with_middleware::<StateInformationMiddleware>();
                Ok((bucket, *quota))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { buckets, clock })
    }

    /// Counts one call; an unknown bucket allows everything.
    pub fn decide(&self, bucket: BucketId, key: &ClientKey) -> Decision {
        let Some((limiter, quota)) = self.buckets.get(bucket.0) else {
            return Decision {
                allowed: true,
                limit: u32::MAX,
                remaining: u32::MAX,
                reset: Duration::ZERO,
                retry_after: Duration::ZERO,
                window: Duration::ZERO,
            };
        };
        let period = quota.per / quota.requests;
        match limiter.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Decision {
                    allowed: true,
                    limit: quota.requests,
                    remaining,
                    reset: period * (quota.requests - remaining.min(quota.requests)),
                    retry_after: Duration::ZERO,
                    window: quota.per,
                }
            }
            Err(not_until) => {
                let retry_after = not_until.wait_time_from(self.clock.now());
                Decision {
                    allowed: false,
                    limit: quota.requests,
                    remaining: 0,
                    reset: retry_after + period * (quota.requests - 1),
                    retry_after,
                    window: quota.per,
                }
            }
        }
    }

    /// Forgets clients whose buckets are full again.
    fn sweep(&self) {
        for (limiter, _) in self.buckets.iter() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    #[cfg(test)]
    fn keys(&self, bucket: BucketId) -> usize {
        self.buckets[bucket.0].0.len()
    }
}

impl Limiter for Arc<LocalLimiter> {
    fn check(&self, bucket: BucketId, key: &ClientKey) -> impl Future<Output = Decision> + Send {
        std::future::ready(self.decide(bucket, key))
    }
}

impl<C: Clock> std::fmt::Debug for LocalLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLimiter")
            .field(
                "quotas",
                &self.buckets.iter().map(|(_, q)| q).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// `requests` per `per`: bursts of `requests`, one more every `per / requests`.
fn governor_quota(quota: QuotaConfig) -> Option<Quota> {
    let burst = NonZeroU32::new(quota.requests)?;
    Some(Quota::with_period(quota.per / quota.requests)?.allow_burst(burst))
}

async fn sweep(limiter: Weak<LocalLimiter>) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        interval.tick().await;
        let Some(limiter) = limiter.upgrade() else {
            return;
        };
        limiter.sweep();
    }
}

/// governor's DashMap store with a cap on the number of keys.
#[derive(Debug)]
struct BoundedStore {
    map: DashMapStateStore<ClientKey>,
    max_keys: usize,
}

impl StateStore for BoundedStore {
    type Key = ClientKey;

    fn measure_and_replace<T, F, E>(&self, key: &ClientKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let key = if self.map.len() >= self.max_keys && !self.map.contains_key(key) {
            &ClientKey::Overflow
        } else {
            key
        };
        self.map.measure_and_replace(key, f)
    }
}

impl ShrinkableKeyedStateStore<ClientKey> for BoundedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        self.map.retain_recent(drop_below);
    }

    fn shrink_to_fit(&self) {
        ShrinkableKeyedStateStore::shrink_to_fit(&self.map);
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    const THREE_PER_MINUTE: QuotaConfig = QuotaConfig {
        requests: 3,
        per: Duration::from_secs(60),
    };

    fn ip(last: u8) -> ClientKey {
        ClientKey::Ip(IpAddr::from([192, 0, 2, last]))
    }

    #[test]
    fn the_fourth_call_in_a_minute_waits_twenty_seconds() {
        let clock = FakeRelativeClock::default();
        let limiter = LocalLimiter::with_clock(&[THREE_PER_MINUTE], 10, clock.clone()).unwrap();
        let bucket = BucketId(0);
        let remaining: Vec<u32> = (0..3)
            .map(|_| limiter.decide(bucket, &ip(1)).remaining)
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
        let refused = limiter.decide(bucket, &ip(1));
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_secs(20));
        assert_eq!(refused.reset, Duration::from_secs(60));
        assert!(
            limiter.decide(bucket, &ip(2)).allowed,
            "another client has its own bucket"
        );

        clock.advance(Duration::from_secs(20));
        let again = limiter.decide(bucket, &ip(1));
        assert!(again.allowed);
        assert_eq!((again.remaining, again.reset), (0, Duration::from_secs(60)));
    }

    #[test]
    fn clients_past_the_cap_share_one_bucket() {
        let clock = FakeRelativeClock::default();
        let limiter = LocalLimiter::with_clock(&[THREE_PER_MINUTE], 2, clock.clone()).unwrap();
        let bucket = BucketId(0);
        for last in 0..50 {
            let _ = limiter.decide(bucket, &ip(last));
        }
        assert_eq!(limiter.keys(bucket), 3, "two clients and the overflow key");
        assert!(
            !limiter.decide(bucket, &ip(200)).allowed,
            "the overflow bucket is spent"
        );
        assert!(
            limiter.decide(bucket, &ip(0)).allowed,
            "known clients keep their bucket"
        );

        clock.advance(Duration::from_secs(120));
        limiter.sweep();
        assert_eq!(limiter.keys(bucket), 0, "full buckets are forgotten");
    }

    #[test]
    fn headers_state_the_decision() {
        let mut headers = HeaderMap::new();
        Decision {
            allowed: true,
            limit: 3,
            remaining: 2,
            reset: Duration::from_millis(19_500),
            retry_after: Duration::ZERO,
            window: Duration::from_secs(60),
        }
        .write_headers(&mut headers);
        assert_eq!(headers["ratelimit-limit"], "3");
        assert_eq!(headers["ratelimit-remaining"], "2");
        assert_eq!(headers["ratelimit-reset"], "20");
        assert_eq!(headers["ratelimit-policy"], "3;w=60");
    }
}
