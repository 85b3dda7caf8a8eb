//! Verification keys: a JWKS document or a single PEM/HMAC key, and the cache
//! of a JWKS URL that a background task keeps fresh.
//!
//! The cache is lock-free: the keys sit behind an `ArcSwap`; a request that
//! meets an unknown `kid` wakes the fetcher (`Notify`) and waits for its next
//! attempt (`watch`). The fetcher refreshes on an interval, refetches on
//! demand at most once per `min_refetch`, and keeps the last good keys when a
//! fetch fails.

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
    time::Duration,
};

use arc_swap::ArcSwap;
use jsonwebtoken::{jwk::Jwk, DecodingKey};
use serde_json::Value as Json;
use tokio::{
    sync::{watch, Notify},
    time::Instant,
};

/// How long a fetch may take, and how long a request waits for one.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Verification keys by `kid`; a key without `kid` is used for tokens without one.
#[derive(Default)]
pub(super) struct KeySet {
    by_kid: HashMap<String, Arc<DecodingKey>>,
    unnamed: Vec<Arc<DecodingKey>>,
}

/// Where a provider's keys come from at request time.
pub(super) enum Keys {
    Static(KeySet),
    Remote(Arc<JwksCache>),
}

/// The cached keys of one JWKS URL.
pub(super) struct JwksCache {
    keys: ArcSwap<KeySet>,
    wanted: Arc<Notify>,
    attempts: watch::Sender<u64>,
}

// === impl KeySet ===

impl KeySet {
    pub(super) fn single(key: DecodingKey) -> Self {
        Self {
            by_kid: HashMap::new(),
            unnamed: vec![Arc::new(key)],
        }
    }

    /// Parses a JWKS document. Keys that cannot verify signatures (unknown
    /// types, `use: enc`) are skipped, so one odd key does not hide the rest.
    pub(super) fn from_jwks(bytes: &[u8]) -> Result<Self, String> {
        let document: Json =
            serde_json::from_slice(bytes).map_err(|err| format!("not JSON: {err}"))?;
        let keys = document
            .get("keys")
            .and_then(Json::as_array)
            .ok_or("no `keys` array")?;
        let mut set = Self::default();
        for value in keys {
            if value.get("use").and_then(Json::as_str) == Some("enc") {
                continue;
            }
            let Ok(jwk) = serde_json::from_value::<Jwk>(value.clone()) else {
                tracing::debug!("skipping a JWKS key of an unsupported type");
                continue;
            };
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                tracing::debug!(kid = ?jwk.common.key_id, "skipping an unusable JWKS key");
                continue;
            };
            match jwk.common.key_id {
                Some(kid) => {
                    set.by_kid.insert(kid, Arc::new(key));
                }
                None => set.unnamed.push(Arc::new(key)),
            }
        }
        if set.by_kid.is_empty() && set.unnamed.is_empty() {
            return Err("no usable signing key".into());
        }
        Ok(set)
    }

    /// The key for `kid`; a token without `kid` needs a set with exactly one key.
    fn find(&self, kid: Option<&str>) -> Option<Arc<DecodingKey>> {
        match kid {
            Some(kid) => match (self.by_kid.get(kid), self.unnamed.as_slice()) {
                (Some(key), _) => Some(key.clone()),
                // A set of one key without kid serves every token.
                (None, [only]) if self.by_kid.is_empty() => Some(only.clone()),
                (None, _) => None,
            },
            None => match (self.by_kid.len(), self.unnamed.as_slice()) {
                (0, [only]) => Some(only.clone()),
                (1, []) => self.by_kid.values().next().cloned(),
                _ => None,
            },
        }
    }
}

// === impl Keys ===

impl Keys {
    /// The key for `kid`, refetching a remote set once when it is unknown.
    pub(super) async fn find(&self, kid: Option<&str>) -> Option<Arc<DecodingKey>> {
        match self {
            Self::Static(set) => set.find(kid),
            Self::Remote(cache) => cache.find(kid).await,
        }
    }
}

// === impl JwksCache ===

impl JwksCache {
    /// Starts the fetcher of `url`: a first fetch now, then every `refresh`
    /// and on demand, at most once per `min_refetch`. The task ends when the
    /// cache is dropped.
    pub(super) fn start(
        client: reqwest::Client,
        url: String,
        refresh: Duration,
        min_refetch: Duration,
    ) -> Arc<Self> {
        let wanted = Arc::new(Notify::new());
        let cache = Arc::new(Self {
            keys: ArcSwap::from_pointee(KeySet::default()),
            wanted: wanted.clone(),
            attempts: watch::channel(0).0,
        });
        let fetcher = Fetcher {
            cache: Arc::downgrade(&cache),
            wanted,
            client,
            url,
            refresh,
            min_refetch,
        };
        tokio::spawn(fetcher.run());
        cache
    }

    async fn find(&self, kid: Option<&str>) -> Option<Arc<DecodingKey>> {
        if let Some(key) = self.keys.load().find(kid) {
            return Some(key);
        }
        let mut attempts = self.attempts.subscribe();
        self.wanted.notify_one();
        // Whatever the outcome (new keys, a failed or a skipped fetch), look again.
        let _ = tokio::time::timeout(FETCH_TIMEOUT, attempts.changed()).await;
        self.keys.load().find(kid)
    }
}

/// The background task of one [`JwksCache`].
struct Fetcher {
    cache: Weak<JwksCache>,
    wanted: Arc<Notify>,
    client: reqwest::Client,
    url: String,
    refresh: Duration,
    min_refetch: Duration,
}

impl Fetcher {
    async fn run(self) {
        let mut last_fetch: Option<Instant> = None;
        let mut next_refresh = Instant::now();
        loop {
            let on_demand = tokio::select! {
                () = tokio::time::sleep_until(next_refresh) => false,
                () = self.wanted.notified() => true,
            };
            let Some(cache) = self.cache.upgrade() else {
                return;
            };
            let too_soon = on_demand && last_fetch.is_some_and(|t| t.elapsed() < self.min_refetch);
            if !too_soon {
                match self.fetch().await {
                    Ok(keys) => cache.keys.store(Arc::new(keys)),
                    // The last good keys stay in use.
                    Err(reason) => tracing::warn!(url = %self.url, %reason, "JWKS fetch failed"),
                }
                last_fetch = Some(Instant::now());
                next_refresh = Instant::now() + self.refresh;
            }
            cache.attempts.send_modify(|n| *n += 1);
        }
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let response = self
            .client
            .get(&self.url)
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|err| err.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let body = response.bytes().await.map_err(|err| err.to_string())?;
        KeySet::from_jwks(&body)
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Static(set) => write!(f, "Static({} keys)", set.by_kid.len() + set.unnamed.len()),
            Self::Remote(_) => f.write_str("Remote"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EC_KEY: &str = r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

    #[test]
    fn jwks_keys_are_found_by_kid_and_odd_keys_skipped() {
        let document = format!(
            r#"{{"keys":[{},{},{{"kty":"weird"}},{}]}}"#,
            EC_KEY.replace('{', r#"{"kid":"a","#),
            EC_KEY.replace('{', r#"{"kid":"b","#),
            EC_KEY.replace('{', r#"{"kid":"c","use":"enc","#),
        );
        let set = KeySet::from_jwks(document.as_bytes()).unwrap();
        assert!(set.find(Some("a")).is_some());
        assert!(set.find(Some("b")).is_some());
        assert!(set.find(Some("c")).is_none(), "encryption keys are skipped");
        assert!(
            set.find(None).is_none(),
            "no kid with two keys is ambiguous"
        );
    }

    #[test]
    fn a_single_key_serves_tokens_without_kid() {
        let set = KeySet::from_jwks(format!(r#"{{"keys":[{EC_KEY}]}}"#).as_bytes()).unwrap();
        assert!(set.find(None).is_some());
        assert!(set.find(Some("any")).is_some());
    }

    #[test]
    fn a_document_without_keys_is_refused() {
        assert_eq!(
            KeySet::from_jwks(br#"{"keys":[]}"#).err().unwrap(),
            "no usable signing key"
        );
        assert!(KeySet::from_jwks(b"<html>").is_err());
    }
}
