//! The cost of the metrics and access-log layers on the hot path: four
//! gateways in one process over the same in-process backend (both layers
//! off, metrics only, access log only (JSON to a temporary file), both),
//! loaded in interleaved rounds over loopback; prints the median round's
//! throughput and latency percentiles of each, and its ratio to "off".
//!
//! ```sh
//! cargo run --release --example observe_cost -- [REQUESTS_PER_ROUND] [CONCURRENCY]
//! ```

use std::{error::Error, net::SocketAddr, sync::Arc, time::Instant};

use protogate::{config::UpstreamConfig, Config, Server};
use tokio::net::TcpListener;

const ROUNDS: usize = 5;

struct Round {
    per_second: f64,
    p50_us: u128,
    p99_us: u128,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let requests: usize = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let concurrency: usize = args.next().map_or(Ok(32), |a| a.parse())?;

    let backend = TcpListener::bind("127.0.0.1:0").await?;
    let backend_url = format!("http://{}", backend.local_addr()?);
    tokio::spawn(protogate::demo::serve_examples(
        backend,
        std::future::pending(),
    ));
    let log_file = std::env::temp_dir().join(format!("protogate-cost-{}.log", std::process::id()));
    let variants = [
        ("both off    ", false, false),
        ("metrics only", true, false),
        ("log only    ", false, true),
        ("both on     ", true, true),
    ];
    let mut gateways = Vec::new();
    for (_, metrics, log) in variants {
        let file = log_file.clone();
        gateways.push(
            gateway(&backend_url, move |config| {
                config.metrics.enabled = metrics;
                config.access_log.enabled = log;
                config.access_log.file = Some(file);
            })
            .await?,
        );
    }

    let client = reqwest::Client::new();
    // Warm up connections and caches on each.
    for addr in &gateways {
        run(&client, *addr, 2_000, concurrency).await;
    }
    let mut rounds: Vec<Vec<Round>> = gateways.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        for (addr, rounds) in gateways.iter().zip(&mut rounds) {
            rounds.push(run(&client, *addr, requests, concurrency).await);
        }
    }
    let _ = std::fs::remove_file(&log_file);

    println!("{requests} requests x {ROUNDS} rounds, concurrency {concurrency}, GET /v1/orders/o-1 (median round)");
    let mut baseline = None;
    for ((name, ..), mut rounds) in variants.into_iter().zip(rounds) {
        rounds.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
        let round = rounds.swap_remove(rounds.len() / 2);
        let base = *baseline.get_or_insert(round.per_second);
        println!(
            "{name}: {:>7.0} req/s ({:.3})  p50 {:>5} µs  p99 {:>5} µs",
            round.per_second,
            round.per_second / base,
            round.p50_us,
            round.p99_us
        );
    }
    Ok(())
}

async fn gateway(
    backend_url: &str,
    adjust: impl FnOnce(&mut Config),
) -> Result<SocketAddr, Box<dyn Error>> {
    let mut config = Config::default();
    config.upstreams.push(UpstreamConfig {
        pattern: "acme".into(),
        url: backend_url.into(),
        timeout: std::time::Duration::from_secs(5),
        ca_file: None,
        client_cert_file: None,
        client_key_file: None,
        server_name: None,
    });
    adjust(&mut config);
    let server = Server::new(&config, protogate::demo::descriptor_sets())?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(server.serve(listener, std::future::pending()));
    Ok(addr)
}

async fn run(
    client: &reqwest::Client,
    addr: SocketAddr,
    requests: usize,
    concurrency: usize,
) -> Round {
    let url: Arc<str> = format!("http://{addr}/v1/orders/o-1").into();
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let (client, url) = (client.clone(), url.clone());
            let share = requests / concurrency + usize::from(worker < requests % concurrency);
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(share);
                for _ in 0..share {
                    let sent = Instant::now();
                    let response = client.get(&*url).send().await.expect("gateway answers");
                    assert_eq!(response.status(), 200);
                    response.bytes().await.expect("body");
                    latencies.push(sent.elapsed().as_micros());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(requests);
    for worker in workers {
        latencies.extend(worker.await.expect("worker"));
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Round {
        per_second: requests as f64 / elapsed.as_secs_f64(),
        p50_us: latencies[latencies.len() / 2],
        p99_us: latencies[latencies.len() * 99 / 100],
    }
}
