//! `GET /admin/v1/traffic`: each route's request count, error counts and
//! latency histogram, read from the gateway's own metrics (the same figures
//! `/metrics` shows), as JSON the console can subtract one poll from the
//! next to get rates, error ratios and latency quantiles over the interval.
//! The counts are cumulative, so the endpoint keeps no state between polls.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::observe::metrics::{REQUESTS, REQUEST_DURATION};

/// One route's figures since the gateway started.
#[derive(Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RouteTraffic {
    /// `GET /v1/orders/{id}`, or `unmatched`.
    pub(super) route: String,
    pub(super) requests: f64,
    /// Answered 4xx.
    pub(super) client_errors: f64,
    /// Answered 5xx.
    pub(super) server_errors: f64,
    /// Seconds, all requests together.
    pub(super) latency_sum: f64,
    /// Requests timed: the histogram's count.
    pub(super) latency_count: f64,
    /// `[upper bound in seconds, requests at most that long]`, the finite
    /// buckets in ascending order (cumulative, as in Prometheus).
    pub(super) latency_buckets: Vec<(f64, f64)>,
}

/// Every route's figures in the exposition `text`, by route label.
pub(super) fn by_route(text: &str) -> Vec<RouteTraffic> {
    let mut routes: BTreeMap<String, RouteTraffic> = BTreeMap::new();
    let bucket = format!("{REQUEST_DURATION}_bucket");
    let sum = format!("{REQUEST_DURATION}_sum");
    let count = format!("{REQUEST_DURATION}_count");
    for line in text.lines() {
        let Some(sample) = Sample::parse(line) else {
            continue;
        };
        let is = |name: &str| sample.name == name;
        if !(is(REQUESTS) || is(&bucket) || is(&sum) || is(&count)) {
            continue;
        }
        let Some(route) = sample.label("route") else {
            continue;
        };
        let entry = routes
            .entry(route.to_owned())
            .or_insert_with(|| RouteTraffic {
                route: route.to_owned(),
                ..RouteTraffic::default()
            });
        if is(REQUESTS) {
            entry.requests += sample.value;
            match sample.label("status").and_then(|s| s.bytes().next()) {
                Some(b'4') => entry.client_errors += sample.value,
                Some(b'5') => entry.server_errors += sample.value,
                _ => {}
            }
        } else if is(&sum) {
            entry.latency_sum += sample.value;
        } else if is(&count) {
            entry.latency_count += sample.value;
        } else if let Some(le) = sample
            .label("le")
            .and_then(|le| le.parse::<f64>().ok())
            .filter(|le| le.is_finite())
        {
            // One histogram per (route, method): add up the methods' buckets.
            let buckets = &mut entry.latency_buckets;
            match buckets.iter_mut().find(|(bound, _)| *bound == le) {
                Some((_, n)) => *n += sample.value,
                None => buckets.push((le, sample.value)),
            }
        }
    }
    let mut routes: Vec<RouteTraffic> = routes.into_values().collect();
    for route in &mut routes {
        route.latency_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    routes
}

/// One sample line of the text exposition format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Sample {
    /// `name{label="value",...} value`; `None` for comments, blank lines and
    /// anything malformed (the exposition is ours, so that never happens).
    fn parse(line: &str) -> Option<Self> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let name_end = line.find(['{', ' '])?;
        let name = line[..name_end].to_owned();
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices();
            let mut key = String::new();
            loop {
                let (i, c) = chars.next()?;
                match c {
                    '}' => {
                        rest = &body[i + 1..];
                        break;
                    }
                    ',' => {}
                    '=' => {
                        if chars.next()?.1 != '"' {
                            return None;
                        }
                        let mut value = String::new();
                        loop {
                            match chars.next()?.1 {
                                '"' => break,
                                '\\' => match chars.next()?.1 {
                                    'n' => value.push('\n'),
                                    other => value.push(other),
                                },
                                other => value.push(other),
                            }
                        }
                        labels.push((std::mem::take(&mut key), value));
                    }
                    other => key.push(other),
                }
            }
        }
        // A timestamp may follow the value.
        let value = rest.split_whitespace().next()?.parse().ok()?;
        Some(Self {
            name,
            labels,
            value,
        })
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_add_up_their_statuses_methods_and_buckets() {
        let text = r#"# TYPE protogate_http_requests_total counter
protogate_http_requests_total{route="GET /v1/orders/{id}",method="GET",status="200",grpc_code="OK",upstream="acme"} 7
protogate_http_requests_total{route="GET /v1/orders/{id}",method="HEAD",status="404",grpc_code="NOT_FOUND",upstream="acme"} 2
protogate_http_requests_total{route="GET /v1/orders/{id}",method="GET",status="503",grpc_code="UNAVAILABLE",upstream="acme"} 1
protogate_http_requests_total{route="say \"hi\"\\",method="GET",status="200",grpc_code="OK",upstream="none"} 1
protogate_http_request_duration_seconds_bucket{route="GET /v1/orders/{id}",method="GET",le="0.005"} 6
protogate_http_request_duration_seconds_bucket{route="GET /v1/orders/{id}",method="GET",le="0.001"} 3
protogate_http_request_duration_seconds_bucket{route="GET /v1/orders/{id}",method="GET",le="+Inf"} 8
protogate_http_request_duration_seconds_bucket{route="GET /v1/orders/{id}",method="HEAD",le="0.001"} 2
protogate_http_request_duration_seconds_bucket{route="GET /v1/orders/{id}",method="HEAD",le="0.005"} 2
protogate_http_request_duration_seconds_sum{route="GET /v1/orders/{id}",method="GET"} 0.25
protogate_http_request_duration_seconds_sum{route="GET /v1/orders/{id}",method="HEAD"} 0.125
protogate_http_request_duration_seconds_count{route="GET /v1/orders/{id}",method="GET"} 8
protogate_http_request_duration_seconds_count{route="GET /v1/orders/{id}",method="HEAD"} 2
protogate_upstream_duration_seconds_count{upstream="acme",rpc="/acme.orders.v1.OrderService/GetOrder"} 8
protogate_routes 12
"#;
        let routes = by_route(text);
        assert_eq!(
            routes,
            [
                RouteTraffic {
                    route: "GET /v1/orders/{id}".into(),
                    requests: 10.0,
                    client_errors: 2.0,
                    server_errors: 1.0,
                    latency_sum: 0.375,
                    latency_count: 10.0,
                    latency_buckets: vec![(0.001, 5.0), (0.005, 8.0)],
                },
                RouteTraffic {
                    route: r#"say "hi"\"#.into(),
                    requests: 1.0,
                    ..RouteTraffic::default()
                },
            ]
        );
    }

    #[test]
    fn malformed_lines_are_skipped() {
        for line in [
            "",
            "# HELP x",
            "x",
            "x{route=\"a\"",
            "x{route=a} 1",
            "x{route=\"a\"} one",
        ] {
            assert!(Sample::parse(line).is_none(), "{line}");
        }
        let sample = Sample::parse("x{a=\"1\",b=\"2\"} 3 1700000000").unwrap();
        assert_eq!(sample.label("b"), Some("2"));
        assert_eq!(sample.value, 3.0);
    }
}
