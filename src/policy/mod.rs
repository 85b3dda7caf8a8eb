//! Edge policies: what every service would otherwise re-implement, enforced
//! once before a request reaches a backend. Each is a step of the data plane
//! after the route step, and reads the matched method's [`RoutePolicy`]
//! instead of matching again:
//! * [`sanitize`] -- ids well-formed, spoofable identity headers removed, request start noted (every request);
//! * [`authenticate`] -- JWT → [`Identity`]; the method's [`RoutePolicy`] → 401/403;
//! * [`rate_limit`] -- per consumer or client IP → 429 with `Retry-After`/`RateLimit-*`;
//!   a failed authentication counts against the client IP ([`count_failed_authentication`]);
//! * [`HeaderPolicy`] -- the upstream metadata, and the upstream headers returned;
//! * [`cors::layer`] -- CORS, preflights answered without an upstream.
//!
//! A policy belongs to the gRPC method: it is resolved once per method when
//! the catalog is built (proto option `protogate.v1.policy`, then the config's
//! `policies` rules in order) and stored in its `MethodPlan`, so every binding
//! of a method gets the same policy and no path reaches a method around it.

mod auth;
mod client_ip;
pub mod cors;
mod headers;
mod jwks;
mod rate_limit;
mod redis_limiter;

use std::sync::Arc;

use globset::{Glob, GlobMatcher};
use prost_reflect::MethodDescriptor;
use tower_http::cors::CorsLayer;

pub use self::{
    auth::{authenticate, AuthError, Authenticator, Identity},
    client_ip::ClientIp,
    headers::{check_header_list, sanitize, HeaderPolicy, UpstreamHeaders, MAX_HEADER_LIST_BYTES},
    rate_limit::{
        count_failed_authentication, rate_limit, BucketId, ClientKey, Decision, Limiter,
        LocalLimiter, RateLimiting, RateLimits,
    },
    redis_limiter::RedisLimiter,
};
use ipnet::IpNet;

use crate::config::{
    AuthConfig, CorsConfig, HeadersConfig, PolicyRule, QuotaConfig, RateLimitConfig,
    RateLimitPolicy,
};
use crate::{pb::protogate::v1::Policy as PolicyOption, redis_client::Redis};

/// The policy of one gRPC method, resolved at catalog build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePolicy {
    /// Callers without a token pass (a token that is sent is still verified).
    pub allow_anonymous: bool,
    /// At least one of these roles is needed.
    pub roles: Box<[Box<str>]>,
    /// Every one of these scopes is needed.
    pub scopes: Box<[Box<str>]>,
    /// A verified client certificate authenticates the caller.
    pub client_certificate: bool,
    /// The buckets this method's calls are counted in.
    pub rate_limit: RateLimits,
}

/// The config's `policies` rules and quotas, compiled at start.
#[derive(Debug, Clone, Default)]
pub struct PolicyRules {
    rules: Box<[Rule]>,
    defaults: RateLimits,
    buckets: Vec<QuotaConfig>,
}

#[derive(Debug, Clone)]
struct Rule {
    pattern: Box<str>,
    matcher: GlobMatcher,
    allow_anonymous: Option<bool>,
    roles: Option<Box<[Box<str>]>>,
    scopes: Option<Box<[Box<str>]>>,
    client_certificate: Option<bool>,
    rate_limit: RateLimits,
}

/// Everything the policy steps need, built once at start from the config.
#[derive(Debug)]
pub struct Policies {
    pub rules: PolicyRules,
    /// `None` when `auth` is not configured.
    pub auth: Option<Arc<Authenticator>>,
    /// `None` when no quota is configured.
    pub rate_limit: Option<Arc<RateLimiting<QuotaStore>>>,
    pub headers: Arc<HeaderPolicy>,
    /// `None` when `cors` is not configured.
    pub cors: Option<CorsLayer>,
}

/// Where quotas are counted (`rate_limit.policy`).
#[derive(Debug, Clone)]
pub enum QuotaStore {
    Local(Arc<LocalLimiter>),
    Redis(Arc<RedisLimiter>),
}

impl Limiter for QuotaStore {
    fn check(
        &self,
        bucket: BucketId,
        key: &ClientKey,
    ) -> impl std::future::Future<Output = Decision> + Send {
        use futures_util::future::Either;
        match self {
            Self::Local(local) => Either::Left(local.check(bucket, key)),
            Self::Redis(shared) => Either::Right(shared.check(bucket, key)),
        }
    }
}

/// The settings the policies are built from: the config's `auth`,
/// `policies`, `rate_limit`, `trusted_proxies`, `headers` and `cors`, and
/// `limits.max_forwarded_metadata_bytes`.
#[derive(Debug, Clone, Copy)]
pub struct PolicySettings<'a> {
    pub auth: Option<&'a AuthConfig>,
    pub rules: &'a [PolicyRule],
    pub rate_limit: Option<&'a RateLimitConfig>,
    pub trusted_proxies: &'a [IpNet],
    pub headers: &'a HeadersConfig,
    pub max_forwarded_metadata_bytes: usize,
    pub cors: Option<&'a CorsConfig>,
}

/// A policy setting that cannot be put to work (a key that cannot be read, a
/// quota out of range), naming the config key.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct SetupError {
    pub key: String,
    pub reason: String,
}

// === impl Policies ===

impl Policies {
    /// Reads keys, compiles names and globs, and starts the JWKS refreshers.
    /// `redis` counts the quotas when `rate_limit.policy` is `redis`.
    /// Must run inside a tokio runtime.
    pub fn new(config: PolicySettings<'_>, redis: Option<&Arc<Redis>>) -> Result<Self, SetupError> {
        let rules = PolicyRules::new(config.rules, config.rate_limit);
        let auth = config
            .auth
            .map(Authenticator::new)
            .transpose()?
            .map(Arc::new);
        let rate_limit = if rules.buckets.is_empty() {
            None
        } else {
            let limits = config.rate_limit.cloned().unwrap_or_default();
            let local = LocalLimiter::new(&rules.buckets, limits.max_keys)?;
            let limiter = match (limits.policy, redis) {
                (RateLimitPolicy::Redis, Some(redis)) => QuotaStore::Redis(Arc::new(
                    RedisLimiter::new(redis.clone(), &rules.buckets, limits.on_redis_error, local),
                )),
                (RateLimitPolicy::Redis, None) => {
                    return Err(SetupError {
                        key: "rate_limit.policy".into(),
                        reason: "`redis` needs `redis.url`".into(),
                    })
                }
                (RateLimitPolicy::Local, _) => QuotaStore::Local(local),
            };
            Some(Arc::new(RateLimiting {
                limiter,
                client_ip: ClientIp::new(config.trusted_proxies.to_vec()),
            }))
        };
        Ok(Self {
            rules,
            auth,
            rate_limit,
            headers: Arc::new(HeaderPolicy::new(
                config.headers,
                config.auth,
                config.max_forwarded_metadata_bytes,
            )),
            cors: config.cors.map(cors::layer),
        })
    }
}

// === impl PolicyRules ===

impl PolicyRules {
    /// Compiles the rules (validated by `Config::validate`) and numbers the
    /// buckets: the `rate_limit` defaults first.
    pub fn new(rules: &[PolicyRule], rate_limit: Option<&RateLimitConfig>) -> Self {
        let mut buckets = Vec::new();
        let mut bucket = |quota: Option<QuotaConfig>| {
            quota.map(|quota| {
                buckets.push(quota);
                BucketId(buckets.len() - 1)
            })
        };
        let defaults = rate_limit
            .map(|limits| RateLimits {
                per_user: bucket(limits.per_user),
                per_ip: bucket(limits.per_ip),
            })
            .unwrap_or_default();
        let boxed = |names: &Vec<String>| names.iter().map(|n| n.as_str().into()).collect();
        let rules = rules
            .iter()
            .filter_map(|rule| {
                let matcher = Glob::new(&rule.method).ok()?.compile_matcher();
                let quotas = rule.rate_limit.clone().unwrap_or_default();
                Some(Rule {
                    pattern: rule.method.as_str().into(),
                    matcher,
                    allow_anonymous: rule.allow_anonymous,
                    roles: rule.roles.as_ref().map(boxed),
                    scopes: rule.scopes.as_ref().map(boxed),
                    client_certificate: rule.client_certificate,
                    rate_limit: RateLimits {
                        per_user: bucket(quotas.per_user),
                        per_ip: bucket(quotas.per_ip),
                    },
                })
            })
            .collect();
        Self {
            rules,
            defaults,
            buckets,
        }
    }

    /// The policy of `method`: its proto option, then every matching rule in
    /// order. `used[i]` is set when rule `i` matched.
    pub fn resolve(
        &self,
        method: &MethodDescriptor,
        used: &mut [bool],
    ) -> Result<RoutePolicy, String> {
        let mut policy = RoutePolicy {
            rate_limit: self.defaults,
            ..RoutePolicy::default()
        };
        if let Some(option) = policy_option(method)? {
            policy.allow_anonymous = option.allow_anonymous;
            policy.roles = option.roles.iter().map(|r| r.as_str().into()).collect();
            policy.scopes = option.scopes.iter().map(|s| s.as_str().into()).collect();
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.matcher.is_match(method.full_name()) {
                continue;
            }
            if let Some(flag) = used.get_mut(i) {
                *flag = true;
            }
            if let Some(allow) = rule.allow_anonymous {
                policy.allow_anonymous = allow;
            }
            if let Some(roles) = &rule.roles {
                policy.roles = roles.clone();
            }
            if let Some(scopes) = &rule.scopes {
                policy.scopes = scopes.clone();
            }
            if let Some(accept) = rule.client_certificate {
                policy.client_certificate = accept;
            }
            policy.rate_limit.per_user = rule.rate_limit.per_user.or(policy.rate_limit.per_user);
            policy.rate_limit.per_ip = rule.rate_limit.per_ip.or(policy.rate_limit.per_ip);
        }
        if policy.allow_anonymous && !(policy.roles.is_empty() && policy.scopes.is_empty()) {
            return Err(
                "policy allows anonymous callers but requires roles or scopes, which need a token"
                    .into(),
            );
        }
        Ok(policy)
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The quota a bucket counts against, for listings.
    pub fn quota(&self, bucket: BucketId) -> Option<&QuotaConfig> {
        self.buckets.get(bucket.0)
    }

    /// The method pattern of rule `i`, for messages.
    pub fn pattern(&self, i: usize) -> &str {
        self.rules.get(i).map_or("", |rule| &rule.pattern)
    }
}

/// The method's `protogate.v1.policy` option, if it has one.
fn policy_option(method: &MethodDescriptor) -> Result<Option<PolicyOption>, String> {
    let Some(extension) = method
        .parent_pool()
        .get_extension_by_name("protogate.v1.policy")
    else {
        return Ok(None);
    };
    let options = method.options();
    if !options.has_extension(&extension) {
        return Ok(None);
    }
    options
        .get_extension(&extension)
        .as_message()
        .ok_or_else(|| "protogate.v1.policy option is not a message".to_owned())?
        .transcode_to::<PolicyOption>()
        .map(Some)
        .map_err(|err| format!("protogate.v1.policy option does not decode: {err}"))
}

// === impl RoutePolicy ===

impl RoutePolicy {
    /// Whether it asks for more than a valid token.
    pub fn requires_roles_or_scopes(&self) -> bool {
        !(self.roles.is_empty() && self.scopes.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn method(name: &str) -> MethodDescriptor {
        crate::testing::pool()
            .get_service_by_name("protogate.testing.v1.TestService")
            .unwrap()
            .methods()
            .find(|m| m.name() == name)
            .unwrap()
    }

    fn rules(yaml: &str) -> PolicyRules {
        let config = crate::config::Config::from_yaml(yaml).unwrap();
        PolicyRules::new(&config.policies, config.rate_limit.as_ref())
    }

    #[test]
    fn proto_option_is_read() {
        let none = PolicyRules::default();
        let admin = none.resolve(&method("AdminHeaders"), &mut []).unwrap();
        assert_eq!(&*admin.roles, [Box::from("admin")]);
        assert!(!admin.allow_anonymous);
        let public = none.resolve(&method("PublicHeaders"), &mut []).unwrap();
        assert!(public.allow_anonymous);
        let plain = none.resolve(&method("EchoHeaders"), &mut []).unwrap();
        assert_eq!(plain, RoutePolicy::default());
    }

    #[test]
    fn rules_override_in_order_and_only_what_they_set() {
        let rules = rules(
            "policies:\n\
             - { method: 'protogate.testing.v1.TestService.*', scopes: [read] }\n\
             - { method: protogate.testing.v1.TestService.AdminHeaders, roles: [ops] }\n\
             - { method: 'other.*', allow_anonymous: true }\n",
        );
        let mut used = [false; 3];
        let admin = rules.resolve(&method("AdminHeaders"), &mut used).unwrap();
        assert_eq!(&*admin.roles, [Box::from("ops")]);
        assert_eq!(&*admin.scopes, [Box::from("read")]);
        assert_eq!(used, [true, true, false]);
    }

    #[test]
    fn anonymous_with_roles_is_refused() {
        let rules = rules("policies: [{ method: '*AdminHeaders', allow_anonymous: true }]");
        let err = rules
            .resolve(&method("AdminHeaders"), &mut [false])
            .unwrap_err();
        assert!(err.contains("requires roles"), "{err}");
    }

    #[test]
    fn quotas_get_buckets_and_rules_override_them() {
        let rules = rules(
            "rate_limit: { per_user: { requests: 5, per: 1m }, per_ip: { requests: 2, per: 1m } }\n\
             policies: [{ method: '*.Echo', rate_limit: { per_ip: { requests: 1, per: 1h } } }]\n",
        );
        let echo = rules.resolve(&method("Echo"), &mut [false]).unwrap();
        assert_eq!(
            echo.rate_limit,
            RateLimits {
                per_user: Some(BucketId(0)),
                per_ip: Some(BucketId(2)),
            }
        );
        let other = rules.resolve(&method("Fail"), &mut [false]).unwrap();
        assert_eq!(other.rate_limit.per_ip, Some(BucketId(1)));
    }
}
