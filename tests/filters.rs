//! Field filtering: internal fields never leave (proto marks and config),
//! clients ask for less (`?fields=`, `X-Fields`), clients cannot set what they
//! must not (internal, OUTPUT_ONLY, REQUIRED), and PATCH update masks.

mod common;

use common::{assert_status, violations, Gateway};
use protogate::{
    config::{InternalInput, ResponseFilterConfig},
    registry::{BuildOptions, CatalogBuilder},
    upstream::Upstreams,
};
use reqwest::Method;
use serde_json::{json, Value as Json};
use tonic::Code;

/// Every key anywhere in a JSON document.
fn keys(json: &Json, out: &mut Vec<String>) {
    match json {
        Json::Object(object) => {
            for (key, value) in object {
                out.push(key.clone());
                keys(value, out);
            }
        }
        Json::Array(items) => items.iter().for_each(|item| keys(item, out)),
        _ => {}
    }
}

fn assert_no_secret(json: &Json) {
    let mut found = Vec::new();
    keys(json, &mut found);
    let text = json.to_string();
    assert!(
        !found
            .iter()
            .any(|k| k.contains("ecret") || k == "internalValue")
            && !text.contains("secret"),
        "internal field leaked: {json}"
    );
}

#[tokio::test]
async fn internal_fields_are_absent_at_every_depth() {
    let gw = Gateway::start().await;
    let request = json!({
        "stringValue": "s",
        "nested": {"name": "a", "child": {"name": "b", "child": {"name": "c"}}},
        "repeatedNested": [{"name": "r0"}, {"name": "r1", "child": {"name": "r1c"}}],
        "nestedById": {"1": {"name": "m1"}, "2": {"name": "m2"}}
    });
    let (status, body) = gw.post("/v1/leak", request.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_no_secret(&body);
    assert_eq!(body, request, "everything public comes back unchanged");

    // Inside a oneof: the internal member is dropped, a nested member is filtered.
    let (_, body) = gw
        .post("/v1/leak", json!({"choiceNested": {"name": "o"}}))
        .await;
    assert_eq!(body, json!({"choiceNested": {"name": "o"}}));
    let (_, body) = gw.post("/v1/leak", json!({})).await;
    assert_eq!(
        body,
        json!({}),
        "choice_secret and internal_value were set by the server"
    );

    // Through response_body selecting a repeated field.
    let (status, body) = gw
        .post(
            "/v1/leak:nested",
            json!({"repeatedNested": [{"name": "x"}]}),
        )
        .await;
    assert_eq!((status, body), (200, json!([{"name": "x"}])));
}

#[tokio::test]
async fn internal_fields_stay_absent_when_defaults_are_printed() {
    let gw = Gateway::start_with(|config| config.json.emit_unpopulated = true).await;
    let (status, body) = gw
        .post(
            "/v1/leak",
            json!({"nested": {"name": "a"}, "repeatedNested": [{"name": "r"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_no_secret(&body);
    assert_eq!(body["nested"], json!({"name": "a", "value": 0, "tags": []}));
    assert_eq!(body["int32Value"], 0, "defaults are printed: {body}");
}

#[tokio::test]
async fn example_orders_never_show_their_internal_fields() {
    let gw = Gateway::start().await;
    for path in [
        "/v1/orders/o-1",
        "/v1/orders",
        "/v2/orders/o-1",
        "/v2/orders",
    ] {
        let (status, body) = gw.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let mut found = Vec::new();
        keys(&body, &mut found);
        assert!(
            !found
                .iter()
                .any(|k| k == "internalNote" || k == "costCents" || k == "cost"),
            "{path}: {body}"
        );
    }
}

#[tokio::test]
async fn configured_masks_add_to_the_proto_marks() {
    let gw = Gateway::start_with(|config| {
        config.filters.responses.push(ResponseFilterConfig {
            methods: "protogate.testing.v1.TestService.Leak".into(),
            omit: vec!["nested.name".into(), "repeated_nested.child".into()],
        });
        config.filters.responses.push(ResponseFilterConfig {
            methods: "acme.orders.*".into(),
            omit: vec!["items.unit_price_cents".into()],
        });
    })
    .await;
    let (_, body) = gw
        .post("/v1/leak", json!({"nested": {"name": "n", "value": 1}, "repeatedNested": [{"name": "r", "child": {"name": "c"}}]}))
        .await;
    assert_eq!(
        body,
        json!({"nested": {"value": 1}, "repeatedNested": [{"name": "r"}]})
    );
    let (_, order) = gw.get("/v1/orders/o-1").await;
    assert!(
        order["items"][0].get("unitPriceCents").is_none() && order["items"][0]["sku"].is_string(),
        "{order}"
    );
    // A method the glob does not match is untouched.
    let (_, echoed) = gw.post("/v1/echo", json!({"nested": {"name": "n"}})).await;
    assert_eq!(echoed, json!({"nested": {"name": "n"}}));
}

#[tokio::test]
async fn an_unknown_configured_path_is_a_load_error_naming_it() {
    let mut config = protogate::Config::default();
    config
        .upstreams
        .push(common::upstream("acme", "http://127.0.0.1:1"));
    config.filters.responses.push(ResponseFilterConfig {
        methods: "acme.orders.v1.OrderService.GetOrder".into(),
        omit: vec!["items.nope".into()],
    });
    let err = protogate::Server::new(&config, common::example_sets())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("filters.responses[0]: unknown field path `items.nope` in the replies of the methods `acme.orders.v1.OrderService.GetOrder` selects (e.g. acme.orders.v1.Order)"),
        "{err}"
    );
}

#[tokio::test]
async fn configured_fields_are_internal_wherever_their_message_appears() {
    let gw = Gateway::start_with(|config| {
        config.filters.fields = vec!["acme.orders.v1.LineItem.unit_price_cents".into()];
    })
    .await;
    // GetOrder (both bindings) and ListOrders: a reply rooted elsewhere.
    for path in [
        "/v1/orders/o-1",
        "/v1/customers/c-1/orders/o-1",
        "/v1/orders",
    ] {
        let (status, body) = gw.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let mut found = Vec::new();
        keys(&body, &mut found);
        assert!(found.iter().any(|k| k == "sku"), "{path}: {body}");
        assert!(
            !found.iter().any(|k| k == "unitPriceCents"),
            "{path}: {body}"
        );
    }
    // Absent from `fields` like any internal field.
    for fields in ["items.unitPriceCents", "orders.items.unit_price_cents"] {
        let path = if fields.starts_with("orders") {
            format!("/v1/orders?fields={fields}")
        } else {
            format!("/v1/orders/o-1?fields={fields}")
        };
        let (status, body) = gw.get(&path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(violations(&body)[0].0, "fields", "{body}");
    }
    // Refused on input, naming it.
    let (status, body) = gw
        .post(
            "/v1/orders",
            json!({"customerId": "c-9", "items": [{"sku": "pen", "quantity": 1, "unitPriceCents": "250"}]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        violations(&body),
        [(
            "order.items[0].unit_price_cents".into(),
            "unknown field".into()
        )]
    );
}

#[tokio::test]
async fn a_configured_field_that_does_not_exist_is_a_load_error_naming_it() {
    let mut config = protogate::Config::default();
    config
        .upstreams
        .push(common::upstream("acme", "http://127.0.0.1:1"));
    config.filters.fields = vec![
        "acme.orders.v1.LineItem.unit_price".into(),
        "acme.orders.v1.Lineitem.sku".into(),
        "sku".into(),
    ];
    let err = protogate::Server::new(&config, common::example_sets())
        .unwrap_err()
        .to_string();
    for problem in [
        "filters.fields[0]: `acme.orders.v1.LineItem.unit_price`: `acme.orders.v1.LineItem` has no field `unit_price`",
        "filters.fields[1]: `acme.orders.v1.Lineitem.sku`: unknown message type `acme.orders.v1.Lineitem`",
        "filters.fields[2]: `sku`: unknown message type ``",
    ] {
        assert!(err.contains(problem), "{err}");
    }
}

#[test]
fn a_response_rule_that_reaches_only_some_methods_warns_naming_them() {
    let mut config = protogate::Config::default();
    config.filters.responses.push(ResponseFilterConfig {
        methods: "acme.orders.v1.*".into(),
        omit: vec!["items.unit_price_cents".into(), "orders".into()],
    });
    config.filters.responses.push(ResponseFilterConfig {
        methods: "acme.orders.v1.OrderService.GetOrder".into(),
        omit: vec!["items.unit_price_cents".into()],
    });
    let options = BuildOptions {
        require_upstreams: false,
        ..BuildOptions::new(&config.descriptors, &config.filters, &config.deprecations)
    };
    let catalog = CatalogBuilder::new(options, &Upstreams::default())
        .add_sets(common::example_sets())
        .build(1)
        .unwrap();
    let warnings = catalog.warnings();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    let (prices, orders) = (&warnings[0], &warnings[1]);
    assert!(
        prices.starts_with(
            "filters.responses[0]: `items.unit_price_cents` is omitted from the replies of "
        ),
        "{prices}"
    );
    for applies in ["GetOrder", "CreateOrder", "UpdateOrder", "CancelOrder"] {
        let name = format!("acme.orders.v1.OrderService.{applies}");
        let (before, _) = prices.split_once("but not").unwrap();
        assert!(before.contains(&name), "{prices}");
    }
    let (_, missed) = prices.split_once("but not from those of ").unwrap();
    assert!(
        missed.contains("acme.orders.v1.OrderService.ListOrders"),
        "{prices}"
    );
    assert!(!missed.contains(".GetOrder"), "{prices}");
    assert!(prices.ends_with("list it in filters.fields"), "{prices}");
    assert!(orders.starts_with("filters.responses[0]: `orders` is omitted from the replies of acme.orders.v1.OrderService.ListOrders but not"), "{orders}");
}

#[tokio::test]
async fn fields_selects_nested_and_repeated_paths() {
    let gw = Gateway::start().await;
    let (status, body) = gw
        .get("/v1/echo?stringValue=a&int32Value=2&nested.name=n&nested.value=3&fields=stringValue,nested.name")
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"stringValue": "a", "nested": {"name": "n"}}))
    );

    let request = gw
        .client
        .post(gw.url("/v1/echo"))
        .header("x-fields", "repeatedNested.name,labels")
        .json(&json!({"stringValue": "x", "repeatedNested": [{"name": "a", "value": 1}, {"name": "b", "value": 2}], "labels": {"k": "v"}}));
    let (status, body) = gw.send(request).await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"repeatedNested": [{"name": "a"}, {"name": "b"}], "labels": {"k": "v"}})
        )
    );

    let (status, body) = gw.get("/v1/orders/o-1?fields=id,status,items.sku").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"][0].as_object().unwrap().len(), 1, "{body}");
    assert_eq!(body.as_object().unwrap().len(), 3, "{body}");

    let (status, body) = gw.get("/v1/orders?fields=orders.id&pageSize=2").await;
    assert_eq!(
        (status, body),
        (200, json!({"orders": [{"id": "o-1"}, {"id": "o-2"}]}))
    );
}

#[tokio::test]
async fn fields_naming_internal_or_unknown_paths_are_the_same_400() {
    let gw = Gateway::start_with(|config| {
        config.filters.responses.push(ResponseFilterConfig {
            methods: "protogate.testing.v1.*".into(),
            omit: vec!["nested.value".into()],
        });
    })
    .await;
    for path in [
        "internalValue",
        "nested.secret",
        "nope",
        "nested.value",
        "stringValue.x",
    ] {
        let (status, body) = gw.get(&format!("/v1/echo?fields={path}")).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_status(
            &body,
            Code::InvalidArgument,
            &format!("unknown field path `{path}`"),
        );
        assert_eq!(violations(&body)[0].0, "fields");
    }
    assert_eq!(
        gw.get("/v1/echo?stringValue=ok&fields=stringValue").await,
        (200, json!({"stringValue": "ok"}))
    );
}

#[tokio::test]
async fn clients_cannot_set_internal_fields() {
    let gw = Gateway::start().await;
    let cases = [
        (json!({"internalValue": "x"}), "internal_value"),
        (
            json!({"nested": {"child": {"secret": "x"}}}),
            "nested.child.secret",
        ),
        (
            json!({"repeatedNested": [{}, {"secret": "x"}]}),
            "repeated_nested[1].secret",
        ),
        (
            json!({"nestedById": {"7": {"secret": "x"}}}),
            "nested_by_id[7].secret",
        ),
        (json!({"choiceSecret": "x"}), "choice_secret"),
    ];
    for (request, field) in cases {
        let (status, body) = gw.post("/v1/echo", request.clone()).await;
        assert_eq!(status, 400, "{request}: {body}");
        assert_eq!(
            violations(&body),
            [(field.to_owned(), "unknown field".to_owned())],
            "{request}"
        );
    }
    let (status, body) = gw.get("/v1/echo?internalValue=x").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(violations(&body)[0].0, "internal_value");

    let lax =
        Gateway::start_with(|config| config.filters.internal_input = InternalInput::Clear).await;
    let (status, body) = lax
        .post(
            "/v1/echo",
            json!({"stringValue": "s", "nested": {"name": "n", "secret": "x"}}),
        )
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"stringValue": "s", "nested": {"name": "n"}}))
    );
}

#[tokio::test]
async fn output_only_fields_sent_by_clients_are_cleared() {
    let gw = Gateway::start().await;
    let (status, body) = gw
        .send_json(
            Method::PATCH,
            "/v1/resources/r1?updateMask=title",
            json!({"title": "t", "etag": "client-etag", "owner": {"id": "u", "auditRef": "forged"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["resource"],
        json!({"name": "resources/r1", "title": "t", "owner": {"id": "u"}})
    );
}

#[tokio::test]
async fn missing_required_fields_are_refused_naming_them() {
    let gw = Gateway::start().await;
    let (status, body) = gw
        .send_json(
            Method::PATCH,
            "/v1/resources/r1",
            json!({"labels": {"a": "b"}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        violations(&body),
        [(
            "resource.title".to_owned(),
            "required field is missing".to_owned()
        )]
    );
    let (status, body) = gw
        .send_json(
            Method::PATCH,
            "/v1/resources/r1",
            json!({"title": "t", "owner": {"displayName": "d"}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(violations(&body)[0].0, "resource.owner.id");
    assert_eq!(
        gw.send_json(Method::PATCH, "/v1/resources/r1", json!({"title": "t"}))
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn update_mask_is_filled_from_the_body_keys() {
    let gw = Gateway::start().await;
    let (status, body) = gw
        .send_json(
            Method::PATCH,
            "/v1/resources/r1",
            json!({
                "title": "t", "etag": "e", "nested": {"name": "n", "child": {"value": 1}}, "labels": {"a": "b"},
                "attributes": {"x": {"y": 1}}, "tags": ["t"], "expireTime": "2024-01-01T00:00:00Z", "owner": {"id": "u"}
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut paths: Vec<&str> = body["updateMask"].as_str().unwrap().split(',').collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "attributes",
            "expireTime",
            "labels",
            "nested.child.value",
            "nested.name",
            "owner.id",
            "tags",
            "title"
        ],
        "etag is output-only; maps, Struct and Timestamp stop at the field"
    );

    // An explicit mask is left alone.
    let (_, body) = gw
        .send_json(
            Method::PATCH,
            "/v1/resources/r1?updateMask=labels",
            json!({"title": "t", "labels": {}}),
        )
        .await;
    assert_eq!(body["updateMask"], "labels");

    // Internal keys (cleared by config) never enter the mask.
    let lax =
        Gateway::start_with(|config| config.filters.internal_input = InternalInput::Clear).await;
    let (_, body) = lax
        .send_json(
            Method::PATCH,
            "/v1/resources/r1",
            json!({"title": "t", "secret": "s"}),
        )
        .await;
    assert_eq!(body["updateMask"], "title");

    // The demo order service: a PATCH without a mask updates just what it sends.
    let (status, order) = gw
        .send_json(Method::PATCH, "/v1/orders/o-2", json!({"currency": "USD"}))
        .await;
    assert_eq!(
        (status, order["currency"].clone(), order["status"].clone()),
        (200, json!("USD"), json!("PAID")),
        "{order}"
    );
}

#[tokio::test]
async fn streamed_messages_are_filtered_one_by_one() {
    let gw = Gateway::start().await;
    let request = gw
        .client
        .post(gw.url("/v1/orders:lookup?fields=id,status,internalNote"))
        .header("content-type", "application/x-ndjson")
        .body("{\"id\":\"o-1\"}\n{\"id\":\"o-2\"}\n");
    let (status, body) = gw.send(request).await;
    assert_eq!(
        status, 400,
        "an internal path is unknown on streams too: {body}"
    );
    assert_status(
        &body,
        Code::InvalidArgument,
        "unknown field path `internalNote`",
    );

    let response = gw
        .client
        .post(gw.url("/v1/orders:lookup"))
        .header("content-type", "application/x-ndjson")
        .header("x-fields", "id,costCents")
        .body("{\"id\":\"o-1\"}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    let response = gw
        .client
        .post(gw.url("/v1/orders:lookup?fields=id,status"))
        .header("content-type", "application/x-ndjson")
        .body("{\"id\":\"o-1\"}\n{\"id\":\"o-2\"}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let lines: Vec<Json> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(
        lines,
        [
            json!({"result": {"id": "o-1", "status": "PENDING"}}),
            json!({"result": {"id": "o-2", "status": "PAID"}})
        ]
    );

    let response = gw
        .client
        .post(gw.url("/v1/orders:lookup"))
        .header("content-type", "application/x-ndjson")
        .body("{\"id\":\"o-3\"}\n")
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    assert!(
        text.contains("\"o-3\"") && !text.contains("internalNote") && !text.contains("costCents"),
        "{text}"
    );
}
