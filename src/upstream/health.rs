//! Upstream health: each upstream is probed periodically with
//! `grpc.health.v1.Health/Check` (service `""`, the server as a whole), a
//! unary call like any other, on the upstream's shared connection. An
//! upstream that does not serve the health service counts as healthy when
//! it answers at all: reachable or not by connection.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use http::uri::PathAndQuery;
use prost::Message as _;
use tokio::task::JoinSet;
use tonic::Code;
use tonic_health::pb::{
    health_check_response::ServingStatus, HealthCheckRequest, HealthCheckResponse,
};

use super::{
    call::unary, deadline::Deadline, metadata::Metadata, protocol::Payload, Upstream, Upstreams,
};
use crate::{config::HealthConfig, error::Error, observe::metrics::Metrics};

/// The last probe result of every upstream.
#[derive(Debug)]
pub struct UpstreamHealth {
    started: Instant,
    grace_period: Duration,
    entries: Box<[Entry]>,
}

#[derive(Debug)]
struct Entry {
    upstream: Arc<Upstream>,
    probed: AtomicBool,
    healthy: AtomicBool,
    /// Milliseconds from `started` to the last healthy probe (0: none yet).
    last_healthy_ms: AtomicU64,
}

/// One upstream's state, for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthState {
    /// Not probed yet.
    Unknown,
    Healthy,
    Unhealthy,
}

// === impl UpstreamHealth ===

impl UpstreamHealth {
    pub fn new(upstreams: &Upstreams, config: &HealthConfig) -> Self {
        Self {
            started: Instant::now(),
            grace_period: config.grace_period,
            entries: upstreams
                .iter()
                .map(|upstream| Entry {
                    upstream: upstream.clone(),
                    probed: AtomicBool::new(false),
                    healthy: AtomicBool::new(false),
                    last_healthy_ms: AtomicU64::new(0),
                })
                .collect(),
        }
    }

    /// Each upstream's name and state, and whether it counts as ready:
    /// healthy, or within the grace period of start or of its last healthy probe.
    pub fn states(&self) -> impl Iterator<Item = (&str, HealthState, bool)> + '_ {
        let now = self.started.elapsed();
        self.entries.iter().map(move |entry| {
            let state = if !entry.probed.load(Ordering::Acquire) {
                HealthState::Unknown
            } else if entry.healthy.load(Ordering::Acquire) {
                HealthState::Healthy
            } else {
                HealthState::Unhealthy
            };
            let last_healthy = Duration::from_millis(entry.last_healthy_ms.load(Ordering::Acquire));
            let ready = state == HealthState::Healthy
                || now.saturating_sub(last_healthy) < self.grace_period;
            (&*entry.upstream.name, state, ready)
        })
    }

    /// Probes every upstream every `interval` until the returned set is dropped.
    pub fn spawn_probes(self: &Arc<Self>, config: &HealthConfig, metrics: &Metrics) -> JoinSet<()> {
        let mut probes = JoinSet::new();
        for index in 0..self.entries.len() {
            let health = self.clone();
            let metrics = metrics.clone();
            let (interval, timeout) = (config.interval, config.timeout);
            probes.spawn(async move {
                let mut ticks = tokio::time::interval(interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    let entry = &health.entries[index];
                    let healthy = probe(&entry.upstream, timeout).await;
                    health.record(entry, healthy);
                    metrics.set_upstream_healthy(&entry.upstream.name, healthy);
                }
            });
        }
        probes
    }

    fn record(&self, entry: &Entry, healthy: bool) {
        if healthy {
            let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            entry.last_healthy_ms.store(now, Ordering::Release);
        }
        entry.healthy.store(healthy, Ordering::Release);
        entry.probed.store(true, Ordering::Release);
    }
}

/// One health check, within `timeout` (and the upstream's own). `SERVING`,
/// or an answer from a server without the health service, is healthy;
/// anything else, or no answer in time, is not.
async fn probe(upstream: &Upstream, timeout: Duration) -> bool {
    const CHECK: PathAndQuery = PathAndQuery::from_static("/grpc.health.v1.Health/Check");
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let deadline = Deadline::start(upstream, Some(timeout));
    let message = Payload::Wire(request.encode_to_vec());
    match unary(upstream, CHECK, &message, Metadata::default(), deadline).await {
        Ok(reply) => HealthCheckResponse::decode(reply.message)
            .is_ok_and(|reply| reply.status() == ServingStatus::Serving),
        Err(Error::Upstream(status)) => {
            matches!(status.code(), Code::Unimplemented | Code::NotFound)
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(grace_period: Duration) -> UpstreamHealth {
        let config = crate::config::UpstreamConfig {
            pattern: "acme".into(),
            url: "http://127.0.0.1:1".into(),
            timeout: Duration::from_secs(1),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            server_name: None,
        };
        let upstreams = Upstreams::new(&[config], 1024, 1).unwrap();
        UpstreamHealth::new(
            &upstreams,
            &HealthConfig {
                grace_period,
                ..HealthConfig::default()
            },
        )
    }

    fn state(health: &UpstreamHealth) -> (HealthState, bool) {
        let (_, state, ready) = health.states().next().unwrap();
        (state, ready)
    }

    #[tokio::test]
    async fn unhealthy_upstreams_stay_ready_within_their_grace_period() {
        let patient = health(Duration::from_secs(3600));
        assert_eq!(state(&patient), (HealthState::Unknown, true));
        patient.record(&patient.entries[0], false);
        assert_eq!(state(&patient), (HealthState::Unhealthy, true));

        let strict = health(Duration::ZERO);
        assert_eq!(state(&strict), (HealthState::Unknown, false));
        strict.record(&strict.entries[0], true);
        assert_eq!(state(&strict), (HealthState::Healthy, true));
        strict.record(&strict.entries[0], false);
        assert_eq!(state(&strict), (HealthState::Unhealthy, false));
    }
}
