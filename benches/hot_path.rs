//! Micro-benchmarks of the request path: route lookup against 10, 1,000 and
//! 10,000 routes; JSON → request message; request message → wire bytes
//! (ours and prost-reflect's); reply → JSON for one order and for
//! a list of 100 (with and without internal-field filtering); catalog build
//! for 10 and 1,000 services. `cargo bench --bench hot_path`.

use std::{hint::black_box, path::Path};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::Method;
use prost::Message as _;
use protogate::{
    http_rule::template::PathTemplate,
    pb::acme::orders::v1::{LineItem, ListOrdersResponse, Order},
    registry::{Catalog, DescriptorSet},
    router::{Lookup, RouterBuilder},
    transcode::encode_message,
    transcode::{
        request_message, request_wire, ReplyFilter, ReplyShape, RequestParts, TranscodeOptions,
    },
};

/// Realistic templates: collection, nested resource names, custom verbs.
fn template(i: usize) -> String {
    match i % 4 {
        0 => format!("/v1/svc{i}/items/{{id}}"),
        1 => format!("/v1/{{name=projects/*/svc{i}/*}}"),
        2 => format!("/v1/svc{i}/items/{{id}}:cancel"),
        _ => format!("/v1/svc{i}/items/{{item.id}}/parts/{{part}}"),
    }
}

fn path(i: usize) -> String {
    match i % 4 {
        0 => format!("/v1/svc{i}/items/abc-123"),
        1 => format!("/v1/projects/p1/svc{i}/xyz"),
        2 => format!("/v1/svc{i}/items/abc-123:cancel"),
        _ => format!("/v1/svc{i}/items/i-9/parts/p%2F1"),
    }
}

fn router_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("router_lookup");
    for size in [10, 1_000, 10_000] {
        let mut builder = RouterBuilder::default();
        for i in 0..size {
            let template = PathTemplate::parse(&template(i)).unwrap();
            builder
                .insert(Method::GET, &template, u32::try_from(i).unwrap())
                .unwrap();
        }
        let router = builder.build();
        let paths: Vec<String> = (0..16).map(|k| path(k * size / 16)).collect();
        group.bench_with_input(BenchmarkId::from_parameter(size), &paths, |b, paths| {
            b.iter(|| {
                for path in paths {
                    let found = router.lookup(&Method::GET, black_box(path));
                    debug_assert!(matches!(found, Lookup::Found { .. }));
                    black_box(found);
                }
            });
        });
    }
    group.finish();
}

fn example_catalog() -> Catalog {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("descriptor-sets");
    protogate::check(DescriptorSet::read_dir(&dir).unwrap(), false).unwrap()
}

fn order(i: usize) -> Order {
    Order {
        id: format!("o-{i}"),
        customer_id: "c-1".into(),
        status: 2,
        items: vec![
            LineItem {
                sku: "sku-book".into(),
                quantity: 1,
                unit_price_cents: 1999,
            },
            LineItem {
                sku: "sku-pen".into(),
                quantity: 2,
                unit_price_cents: 150,
            },
        ],
        total_cents: 2299,
        currency: "EUR".into(),
        create_time: Some(prost_types::Timestamp {
            seconds: 1_717_236_000,
            nanos: 0,
        }),
        update_time: Some(prost_types::Timestamp {
            seconds: 1_717_236_000,
            nanos: 0,
        }),
        labels: [("channel".to_owned(), "web".to_owned())].into(),
        internal_note: "paid by card".into(),
        cost_cents: 1500,
    }
}

fn transcode(c: &mut Criterion) {
    let catalog = example_catalog();
    let options = TranscodeOptions::default();
    let route = |label: &str| {
        catalog
            .routes()
            .iter()
            .find(|r| &*r.label == label)
            .unwrap()
    };

    let create = route("POST /v1/orders");
    let create_method = catalog.method(create);
    let body = br#"{"customerId":"c-1","currency":"EUR","items":[{"sku":"sku-book","quantity":1,"unitPriceCents":"1999"},{"sku":"sku-pen","quantity":2,"unitPriceCents":"150"}]}"#;
    c.bench_function("json_to_request/create_order", |b| {
        b.iter(|| {
            let parts = RequestParts {
                captures: &[],
                query: Some("orderId=o-9"),
                body: black_box(body),
            };
            request_message(
                catalog.json_plans(),
                &create_method.descriptor.input(),
                &create.binding,
                (catalog.field_rules(), &create_method.rules),
                parts,
                &options,
            )
            .unwrap()
        });
    });

    // The same body straight to wire bytes by the catalog's plans, as a
    // unary call without a query string goes.
    c.bench_function("json_to_wire/create_order", |b| {
        b.iter(|| {
            let parts = RequestParts {
                captures: &[],
                query: None,
                body: black_box(body),
            };
            request_wire(
                catalog.json_plans(),
                create_method.request_plan,
                &create.binding,
                &create_method.rules,
                parts,
                &options,
            )
            .unwrap()
        });
    });
    c.bench_function("json_to_wire/create_order_general", |b| {
        b.iter(|| {
            let parts = RequestParts {
                captures: &[],
                query: None,
                body: black_box(body),
            };
            let message = request_message(
                catalog.json_plans(),
                &create_method.descriptor.input(),
                &create.binding,
                (catalog.field_rules(), &create_method.rules),
                parts,
                &options,
            )
            .unwrap();
            let mut out = Vec::with_capacity(128);
            encode_message(&message, &mut out);
            out
        });
    });

    // A GET's query string straight to wire bytes (decoded, resolved, written).
    let list = route("GET /v1/orders");
    let list_method = catalog.method(list);
    c.bench_function("query_to_wire/list_orders", |b| {
        b.iter(|| {
            let parts = RequestParts {
                captures: &[],
                query: Some(black_box("status=PAID&pageSize=20&customerId=c%2D1")),
                body: b"",
            };
            request_wire(
                catalog.json_plans(),
                list_method.request_plan,
                &list.binding,
                &list_method.rules,
                parts,
                &options,
            )
            .unwrap()
        });
    });

    // The request message to wire bytes: one pass, or prost-reflect's encoder.
    let message = request_message(
        catalog.json_plans(),
        &create_method.descriptor.input(),
        &create.binding,
        (catalog.field_rules(), &create_method.rules),
        RequestParts {
            captures: &[],
            query: None,
            body,
        },
        &options,
    )
    .unwrap();
    c.bench_function("request_to_wire/create_order", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(128);
            encode_message(black_box(&message), &mut out);
            out
        });
    });
    c.bench_function("request_to_wire/create_order_prost_reflect", |b| {
        b.iter(|| black_box(&message).encode_to_vec());
    });

    // Replies as they arrive (encoded), printed by the catalog's plans or, as
    // before them, decoded into a DynamicMessage and serialized by prost-reflect.
    let get = route("GET /v1/orders/{id}");
    let list = route("GET /v1/orders");
    let one = order(1).encode_to_vec();
    let hundred = ListOrdersResponse {
        orders: (0..100).map(order).collect(),
        next_page_token: String::new(),
        total_size: 100,
    }
    .encode_to_vec();
    for (name, route, reply) in [("order", get, &one), ("list_100", list, &hundred)] {
        let method = catalog.method(route);
        for (path, reply_plan) in [("plans", method.reply_plan), ("prost_reflect", None)] {
            let shape = ReplyShape {
                rules: catalog.field_rules(),
                method: &method.rules,
                omit: None,
                plan: &route.binding,
                method_descriptor: &method.descriptor,
                plans: catalog.json_plans(),
                reply_plan,
            };
            c.bench_function(&format!("reply_to_json/{name}/{path}"), |b| {
                b.iter(|| {
                    ReplyFilter::default()
                        .print(black_box(reply), shape, &options)
                        .unwrap()
                });
            });
        }
    }
}

fn catalog_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("catalog_build");
    group.sample_size(10);
    for services in [10, 1_000] {
        let set = protogate::demo::synthetic_set(services).unwrap();
        group.bench_with_input(BenchmarkId::from_parameter(services), &set, |b, set| {
            b.iter(|| protogate::check(vec![set.clone()], false).unwrap());
        });
    }
    group.finish();
}

criterion_group!(benches, router_lookup, transcode, catalog_build);
criterion_main!(benches);
