//! `registry.store: redis`: the managed descriptor sets and upstreams kept in
//! the Redis every instance shares, so that a set uploaded through one
//! instance is served by all.
//!
//! One Redis hash holds the whole registry: its `generation`, the
//! admin-managed `upstreams` (JSON), and per set its bytes (`set:NAME`),
//! their digest (`digest:NAME`, checked on read) and the upstream uploaded
//! with it (`upstream:NAME`). A write replaces the hash in one script that
//! first compares the generation (compare-and-set: of two instances writing
//! on the same generation, one wins and the other gets a conflict) and then
//! publishes the new generation.
//!
//! Each instance applies what Redis holds through [`Registry::apply`] (the
//! same validate → build → swap path as an upload) when told on the channel
//! or, should a message be missed, at the next periodic generation check.
//! Its descriptor directory is its copy: it serves from it while Redis is
//! away, and when Redis holds an older generation than the copy (restarted
//! empty) it writes the copy back; of several instances the highest
//! generation wins.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use futures_util::StreamExt as _;
use redis::Script;

use super::{ApplyError, Change, Registry, UpstreamSetting};
use crate::redis_client::{Op, Redis};

/// How often each instance compares its generation with Redis', in case it
/// missed a message.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Compare-and-set of the whole registry. `KEYS[1]`: the hash; `ARGV[1]`:
/// the generation expected (`0`: none), `ARGV[2]`: the new one, `ARGV[3]`:
/// the channel; then field and value pairs. Returns `{1, new}` or
/// `{0, the generation found}`.
const WRITE: &str = r"
local found = redis.call('HGET', KEYS[1], 'generation') or '0'
if found ~= ARGV[1] then
  return {0, tonumber(found)}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'generation', ARGV[2])
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('PUBLISH', ARGV[3], ARGV[2])
return {1, tonumber(ARGV[2])}
";

/// The registry as stored in Redis.
pub struct SharedRegistry {
    redis: Arc<Redis>,
    /// `{prefix}registry`
    key: String,
    /// `{prefix}registry:changed`
    channel: String,
    write: Script,
}

/// Everything the registry manages, at one generation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub generation: u64,
    pub sets: BTreeMap<String, SharedSet>,
    pub upstreams: BTreeMap<String, UpstreamSetting>,
}

/// A managed set: its bytes and the upstream uploaded with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedSet {
    pub bytes: Bytes,
    pub upstream: Option<String>,
}

/// Why a write was not stored.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the shared registry is at generation {0}")]
    Conflict(u64),
    #[error(transparent)]
    Unavailable(#[from] crate::redis_client::Unavailable),
}

// === impl SharedRegistry ===

impl SharedRegistry {
    pub fn new(redis: Arc<Redis>) -> Self {
        let key = format!("{}registry", redis.prefix());
        let channel = format!("{key}:changed");
        Self {
            redis,
            key,
            channel,
            write: Script::new(WRITE),
        }
    }

    /// Redis' generation; 0 when it holds no registry.
    async fn generation(&self) -> Result<u64, crate::redis_client::Unavailable> {
        let generation: Option<u64> = self
            .redis
            .query(
                Op::RegistryRead,
                redis::cmd("HGET").arg(&self.key).arg("generation"),
            )
            .await?;
        Ok(generation.unwrap_or(0))
    }

    /// What Redis holds, or why it cannot be used (inside: what it holds is not a registry).
    async fn read(&self) -> Result<Result<Snapshot, String>, crate::redis_client::Unavailable> {
        let fields: HashMap<String, Vec<u8>> = self
            .redis
            .query(Op::RegistryRead, redis::cmd("HGETALL").arg(&self.key))
            .await?;
        Ok(snapshot_from_fields(fields))
    }

    /// Stores `change` over `current`, the registry this instance serves:
    /// if Redis is still at `current`'s generation. A Redis that holds
    /// nothing (restarted empty, or new) first gets `current` back, as the
    /// periodic check would give it.
    pub async fn write_change(
        &self,
        current: &Snapshot,
        change: &Snapshot,
    ) -> Result<(), WriteError> {
        match self.write(current.generation, change).await {
            Err(WriteError::Conflict(0)) => {
                match self.write(0, current).await {
                    // Another instance re-seeded it with the same generation.
                    Ok(()) | Err(WriteError::Conflict(_)) => {}
                    Err(err) => return Err(err),
                }
                self.write(current.generation, change).await
            }
            written => written,
        }
    }

    /// Stores `snapshot` if Redis is still at generation `expected`.
    async fn write(&self, expected: u64, snapshot: &Snapshot) -> Result<(), WriteError> {
        let mut invocation = self.write.key(&self.key);
        invocation
            .arg(expected)
            .arg(snapshot.generation)
            .arg(&self.channel);
        let upstreams = serde_json::to_vec(&snapshot.upstreams).unwrap_or_default();
        invocation.arg("upstreams").arg(upstreams);
        for (name, set) in &snapshot.sets {
            invocation
                .arg(format!("set:{name}"))
                .arg(set.bytes.as_ref())
                .arg(format!("digest:{name}"))
                .arg(super::digest(&set.bytes));
            if let Some(upstream) = &set.upstream {
                invocation.arg(format!("upstream:{name}")).arg(upstream);
            }
        }
        let (stored, found): (u8, u64) = self.redis.invoke(Op::RegistryWrite, &invocation).await?;
        if stored == 1 {
            Ok(())
        } else {
            Err(WriteError::Conflict(found))
        }
    }
}

impl std::fmt::Debug for SharedRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRegistry")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The hash's fields → a snapshot; a set whose digest does not match its
/// bytes, or a field that is not ours, refuses the whole of it.
fn snapshot_from_fields(mut fields: HashMap<String, Vec<u8>>) -> Result<Snapshot, String> {
    let text = |bytes: Vec<u8>, field: &str| {
        String::from_utf8(bytes).map_err(|_| format!("field `{field}` is not UTF-8"))
    };
    let generation = fields
        .remove("generation")
        .map(|bytes| text(bytes, "generation"))
        .transpose()?
        .map(|g| {
            g.parse::<u64>()
                .map_err(|_| "field `generation` is not a number".to_owned())
        })
        .transpose()?
        .unwrap_or(0);
    let upstreams = match fields.remove("upstreams") {
        Some(json) => {
            serde_json::from_slice(&json).map_err(|err| format!("field `upstreams`: {err}"))?
        }
        None => BTreeMap::new(),
    };
    let mut sets = BTreeMap::new();
    let names: Vec<String> = fields
        .keys()
        .filter_map(|field| field.strip_prefix("set:"))
        .map(str::to_owned)
        .collect();
    for name in names {
        let bytes = fields.remove(&format!("set:{name}")).unwrap_or_default();
        let digest = fields
            .remove(&format!("digest:{name}"))
            .map(|d| text(d, "digest"))
            .transpose()?;
        if digest.as_deref() != Some(super::digest(&bytes).as_str()) {
            return Err(format!("set `{name}` does not match its digest"));
        }
        let upstream = fields
            .remove(&format!("upstream:{name}"))
            .map(|u| text(u, "upstream"))
            .transpose()?;
        sets.insert(
            name,
            SharedSet {
                bytes: bytes.into(),
                upstream,
            },
        );
    }
    if let Some(field) = fields.keys().next() {
        return Err(format!("unexpected field `{field}`"));
    }
    Ok(Snapshot {
        generation,
        sets,
        upstreams,
    })
}

/// Keeps `registry` at Redis' generation (and Redis at least at the
/// registry's), for as long as the gateway serves.
pub async fn keep_in_sync(registry: Arc<Registry>, shared: Arc<SharedRegistry>) {
    let mut subscription = None;
    // A generation this instance could not build: said once, not every poll.
    let mut refused = None;
    sync_once(&registry, &shared, &mut refused).await;
    loop {
        if subscription.is_none() {
            subscription = shared.redis.subscribe(&shared.channel).await.ok();
        }
        let mut ended = false;
        match &mut subscription {
            Some(pubsub) => {
                let mut messages = pubsub.on_message();
                tokio::select! {
                    message = messages.next() => ended = message.is_none(),
                    () = tokio::time::sleep(POLL_INTERVAL) => {}
                }
            }
            None => tokio::time::sleep(POLL_INTERVAL).await,
        }
        // A subscription does not outlive the connection Redis dropped.
        if !sync_once(&registry, &shared, &mut refused).await || ended {
            subscription = None;
        }
    }
}

/// One comparison of generations, and what it calls for; false when Redis
/// did not answer.
async fn sync_once(
    registry: &Registry,
    shared: &SharedRegistry,
    refused: &mut Option<u64>,
) -> bool {
    let Ok(remote) = shared.generation().await else {
        return false;
    };
    let local = registry.load().generation();
    if remote == local || Some(remote) == *refused {
        return true;
    }
    if remote < local {
        // Redis forgot (restarted empty) or holds an older copy: write this
        // one back. Another instance doing the same on the same generation
        // makes this a conflict; the higher generation ends up in Redis.
        let snapshot = registry.snapshot().await;
        if snapshot.generation <= remote {
            return true;
        }
        if shared.write(remote, &snapshot).await.is_ok() {
            tracing::info!(
                generation = snapshot.generation,
                "the shared registry held generation {remote}: re-seeded it from this instance's copy"
            );
        }
        return true;
    }
    let snapshot = match shared.read().await {
        Ok(Ok(snapshot)) => snapshot,
        Ok(Err(reason)) => {
            tracing::error!(
                generation = remote,
                "cannot read the shared registry: {reason}"
            );
            *refused = Some(remote);
            return true;
        }
        Err(_) => return false,
    };
    let generation = snapshot.generation;
    match registry.apply(Change::Sync(snapshot)).await {
        Ok(_) => tracing::info!(generation, "applied the shared registry's generation"),
        Err(ApplyError::Conflict(_)) => {}
        Err(err) => {
            tracing::error!(
                generation,
                "the shared registry's generation does not build here; serving the current catalog: {err}"
            );
            *refused = Some(generation);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_that_does_not_match_its_digest_is_refused() {
        let mut fields = HashMap::new();
        fields.insert("generation".to_owned(), b"3".to_vec());
        fields.insert("set:a".to_owned(), b"bytes".to_vec());
        fields.insert(
            "digest:a".to_owned(),
            super::super::digest(b"bytes").into_bytes(),
        );
        fields.insert("upstream:a".to_owned(), b"http://127.0.0.1:1".to_vec());
        let snapshot = snapshot_from_fields(fields.clone()).unwrap();
        assert_eq!(snapshot.generation, 3);
        assert_eq!(
            snapshot.sets["a"].upstream.as_deref(),
            Some("http://127.0.0.1:1")
        );
        fields.insert("set:a".to_owned(), b"other".to_vec());
        let err = snapshot_from_fields(fields).unwrap_err();
        assert!(err.contains("digest"), "{err}");
    }
}
