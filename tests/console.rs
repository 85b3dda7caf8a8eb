//! The admin console (`GET /` on the admin listener): the page and its
//! policy over HTTP, its live figures endpoint, and the whole console in a
//! real headless Chromium: sign in, live traffic, a refused dry run, an
//! upload through the file input with its dry-run diff, apply, the routes
//! appearing, a delete with its confirmation and the routes gone.

mod common;

use std::path::Path;

use common::{
    browser::{failed, Browser},
    process::MANIFEST,
    Gateway,
};
use fantoccini::{elements::Element, Locator};
use protogate::config::{AdminToken, DeprecationConfig};
use serde_json::Value as Json;
use tonic::Code;

const TOKEN: &str = "console-admin-token";

/// A gateway over the example and testing sets whose admin API needs `TOKEN`.
async fn guarded_gateway() -> Gateway {
    Gateway::start_with(|config| config.admin.token = Some(AdminToken(TOKEN.into()))).await
}

fn admin(gw: &Gateway, path: &str) -> String {
    format!("http://{}{path}", gw.admin_addr)
}

/// The page is served to anyone who reaches the listener, with or without
/// a token (it holds no data); every API call it makes needs the token.
#[tokio::test]
async fn the_page_holds_no_data_and_runs_under_a_strict_policy() {
    let gw = guarded_gateway().await;
    let mut pages = Vec::new();
    for token in [None, Some("wrong"), Some(TOKEN)] {
        let mut request = gw.client.get(admin(&gw, "/"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{token:?}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["referrer-policy"], "no-referrer");
        let policy = headers["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        for directive in [
            "default-src 'none'",
            "script-src 'sha256-",
            "style-src 'sha256-",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "form-action 'none'",
        ] {
            assert!(policy.contains(directive), "{directive} not in {policy}");
        }
        assert!(
            !policy.contains("unsafe") && !policy.contains("http"),
            "{policy}"
        );
        pages.push(response.text().await.unwrap());
    }
    assert!(
        pages.iter().all(|page| *page == pages[0]),
        "the page depends on the token"
    );
    let html = &pages[0];
    assert!(!html.contains(TOKEN));
    // Nothing is loaded from elsewhere: no sources, links, imports or URLs in styles.
    for reference in [" src=", " href=", "@import", "url("] {
        assert!(!html.contains(reference), "{reference} in the page");
    }

    // Only ever read.
    let head = gw.client.head(admin(&gw, "/")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let (status, body) = gw
        .send(gw.client.post(admin(&gw, "/")).bearer_auth(TOKEN))
        .await;
    assert_eq!(status, 405, "{body}");
    common::assert_status(&body, Code::Unimplemented, "method POST is not allowed");

    for path in ["/admin/v1/traffic", "/admin/v1/routes"] {
        for token in [None, Some("wrong")] {
            let mut request = gw.client.get(admin(&gw, path));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let (status, body) = gw.send(request).await;
            assert_eq!(status, 401, "{path} {token:?}");
            common::assert_status(
                &body,
                Code::Unauthenticated,
                "missing or invalid admin token",
            );
        }
    }
}

#[tokio::test]
async fn without_a_token_the_page_is_answered_for_loopback_hosts_only() {
    let gw = Gateway::start_with(|config| config.admin.token = None).await;
    let port = gw.admin_addr.port();
    let page = |host: String| gw.client.get(admin(&gw, "/")).header("host", host);
    let (status, body) = gw.send(page(format!("evil.example:{port}"))).await;
    assert_eq!(status, 403, "{body}");
    common::assert_status(&body, Code::PermissionDenied, "only requests for localhost");
    let response = page(format!("localhost:{port}")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("protogate admin console"));
}

/// `GET /admin/v1/traffic`: per route, cumulative counts and the latency
/// histogram, the same figures `/metrics` has.
#[tokio::test]
async fn live_figures_are_each_routes_counts_and_latency_histogram() {
    let gw = guarded_gateway().await;
    for _ in 0..3 {
        assert_eq!(gw.get("/v1/orders/o-1").await.0, 200);
    }
    assert_eq!(gw.get("/v1/orders/o-404").await.0, 404);
    assert_eq!(
        gw.post("/v1/fail", serde_json::json!({ "code": 13 }))
            .await
            .0,
        500
    );
    let traffic = || {
        gw.send(
            gw.client
                .get(admin(&gw, "/admin/v1/traffic"))
                .bearer_auth(TOKEN),
        )
    };
    // Counted when each response body ends, a moment after the client has it.
    let mut figures = Json::Null;
    for _ in 0..500 {
        let (status, body) = traffic().await;
        assert_eq!(status, 200, "{body}");
        figures = body;
        let requests: f64 = figures["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["requests"].as_f64().unwrap())
            .sum();
        if requests == 5.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let route = |label: &str| -> Json {
        figures["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["route"] == label)
            .cloned()
            .unwrap_or_else(|| panic!("no {label} in {figures}"))
    };
    let order = route("GET /v1/orders/{id}");
    assert_eq!(order["requests"], 4.0);
    assert_eq!(order["clientErrors"], 1.0);
    assert_eq!(order["serverErrors"], 0.0);
    assert_eq!(order["latencyCount"], 4.0);
    assert!(order["latencySum"].as_f64().unwrap() > 0.0);
    let buckets = order["latencyBuckets"].as_array().unwrap();
    // The configured bounds, 1 ms to 10 s, ascending, cumulative.
    assert_eq!(buckets.first().unwrap()[0], 0.001);
    assert_eq!(buckets.last().unwrap()[0], 10.0);
    assert_eq!(buckets.last().unwrap()[1], 4.0);
    let counts: Vec<f64> = buckets.iter().map(|b| b[1].as_f64().unwrap()).collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    let fail = route("POST /v1/fail");
    assert_eq!(
        (fail["requests"].as_f64(), fail["serverErrors"].as_f64()),
        (Some(1.0), Some(1.0))
    );
}

// === in Chromium ===

/// The console as an operator uses it, in headless Chromium.
#[tokio::test]
async fn the_console_uploads_applies_and_deletes_a_set_in_chromium() {
    let browser = Browser::start().await;
    let gw = Gateway::start_with(|config| {
        config.admin.token = Some(AdminToken(TOKEN.into()));
        config.rate_limit =
            Some(serde_yaml_ng::from_str("per_ip: { requests: 100, per: 1m }").unwrap());
        config.deprecations.push(DeprecationConfig {
            methods: "acme.orders.v1.*".into(),
            since: None,
            sunset: Some("2027-06-30".into()),
            link: None,
        });
    })
    .await;
    let broken = tempfile::tempdir().unwrap();
    let broken_proto = broken.path().join("broken.proto");
    std::fs::write(
        &broken_proto,
        "syntax = \"proto3\";\nmessage Broken {\n  string x = ;\n}\n",
    )
    .unwrap();
    let result = operate(&browser, &gw, &broken_proto).await;
    browser.close().await;
    result.unwrap();

    // What the page did, seen through the API.
    let (status, sets) = gw
        .send(
            gw.client
                .get(admin(&gw, "/admin/v1/descriptor-sets"))
                .bearer_auth(TOKEN),
        )
        .await;
    assert_eq!(status, 200);
    assert!(!sets.to_string().contains("acme.shop.v1"), "{sets}");
    assert_eq!(sets["generation"], 3, "one apply and one delete");
}

/// The text of the element `css` once `until` accepts it (polled: the
/// page answers from API calls and a 3 s timer).
async fn text_when(
    browser: &fantoccini::Client,
    css: &str,
    until: impl Fn(&str) -> bool,
) -> Result<String, String> {
    let mut last = String::new();
    for _ in 0..300 {
        if let Ok(element) = browser.find(Locator::Css(css)).await {
            last = element.text().await.map_err(failed(css))?;
            if until(&last) {
                return Ok(last);
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(format!(
        "{css} never became what was expected; it reads `{last}`"
    ))
}

async fn fill(browser: &fantoccini::Client, css: &str, text: &str) -> Result<Element, String> {
    let input = browser.find(Locator::Css(css)).await.map_err(failed(css))?;
    input.clear().await.map_err(failed(css))?;
    input.send_keys(text).await.map_err(failed(css))?;
    Ok(input)
}

async fn click(browser: &fantoccini::Client, css: &str) -> Result<(), String> {
    browser
        .find(Locator::Css(css))
        .await
        .map_err(failed(css))?
        .click()
        .await
        .map_err(failed(css))
}

async fn operate(page: &Browser, gw: &Gateway, broken_proto: &Path) -> Result<(), String> {
    let browser = &page.client;
    browser
        .goto(&admin(gw, "/"))
        .await
        .map_err(failed("open the console"))?;

    // Without the token, and with a wrong one, the API refuses: the page says so.
    text_when(browser, "#auth-status", |t| t.contains("refused the token")).await?;
    fill(browser, "#token", "wrong").await?;
    click(browser, "#sign-in").await?;
    text_when(browser, "#auth-status", |t| t.contains("refused the token")).await?;
    fill(browser, "#token", TOKEN).await?;
    click(browser, "#sign-in").await?;
    text_when(browser, "#auth-status", |t| t.starts_with("Signed in")).await?;

    // Registry, routes and upstreams as the API lists them.
    let sets = text_when(browser, "#sets tbody", |t| t.contains("acme.orders.v1")).await?;
    if !sets.contains("sha256:") || !sets.contains("from the config") {
        return Err(format!("the registry lacks digests or sources: {sets}"));
    }
    text_when(browser, "#generation", |t| t == "1").await?;
    let get_order = "#route-table tr[data-route='GET /v1/orders/{id}']";
    let route = text_when(browser, get_order, |t| {
        t.contains("acme.orders.v1.OrderService.GetOrder")
    })
    .await?;
    for shown in [
        "100 per 1m per IP",
        "sunset: Wed, 30 Jun 2027 00:00:00 GMT",
        "acme →",
    ] {
        if !route.contains(shown) {
            return Err(format!("the route lacks `{shown}`: {route}"));
        }
    }
    text_when(browser, "#upstream-table tbody", |t| {
        t.contains("acme") && t.contains("config")
    })
    .await?;

    // Live traffic: three requests show on their route.
    for _ in 0..3 {
        if gw.get("/v1/orders/o-1").await.0 != 200 {
            return Err("the data plane does not serve".into());
        }
    }
    let count = "#traffic-routes tr[data-route='GET /v1/orders/{id}'] td:nth-child(2)";
    text_when(browser, count, |t| t == "3").await?;

    // A dry run of a .proto that does not compile: the problem, no Apply.
    let files = browser
        .find(Locator::Css("#upload-files"))
        .await
        .map_err(failed("the file input"))?;
    files
        .send_keys(&broken_proto.display().to_string())
        .await
        .map_err(failed("choose broken.proto"))?;
    fill(browser, "#upload-name", "broken").await?;
    click(browser, "#dry-run").await?;
    text_when(browser, "#problems", |t| t.contains("broken.proto:3:")).await?;
    let apply = browser
        .find(Locator::Css("#apply"))
        .await
        .map_err(failed("Apply"))?;
    if apply
        .attr("disabled")
        .await
        .map_err(failed("Apply"))?
        .is_none()
    {
        return Err("Apply is enabled after a refused dry run".into());
    }

    // The shop's descriptor set: its dry run adds its routes.
    files
        .clear()
        .await
        .map_err(failed("clear the file input"))?;
    let shop = Path::new(MANIFEST).join("examples/shop/shop.binpb");
    files
        .send_keys(&shop.display().to_string())
        .await
        .map_err(failed("choose shop.binpb"))?;
    fill(browser, "#upload-name", "acme.shop.v1").await?;
    fill(browser, "#upload-upstream", "http://127.0.0.1:50052").await?;
    click(browser, "#dry-run").await?;
    let summary = text_when(browser, "#diff-summary", |t| t.contains("added")).await?;
    if summary != "4 added, 0 changed, 0 removed, 0 problems" {
        return Err(format!("the dry run says `{summary}`"));
    }
    let diff = text_when(browser, "#diff-routes tbody", |t| {
        t.contains("/v1/shops/{id}")
    })
    .await?;
    if diff.matches("added").count() != 4 || !diff.contains("http://127.0.0.1:50052") {
        return Err(format!("the diff: {diff}"));
    }
    page.screenshot("console-dry-run.png").await?;

    // Apply: the set and its routes appear.
    click(browser, "#apply").await?;
    text_when(browser, "#change-status", |t| {
        t.starts_with("Applied acme.shop.v1: 4 routes")
    })
    .await?;
    text_when(browser, "#route-table tbody", |t| {
        t.contains("/v1/shops/{id}") && t.contains("acme.shop.v1.ShopService.GetShop")
    })
    .await?;
    text_when(browser, "#sets tbody", |t| t.contains("acme.shop.v1")).await?;
    text_when(browser, "#generation", |t| t == "2").await?;
    page.screenshot("console-applied.png").await?;

    // Delete asks first: cancelled, nothing happens; confirmed, the routes go.
    let delete = "#sets tr[data-set='acme.shop.v1'] button.delete";
    click(browser, delete).await?;
    let question = text_when(browser, "#confirm-text", |t| !t.is_empty()).await?;
    if !question.contains("Delete descriptor set acme.shop.v1? Its 4 routes") {
        return Err(format!("the confirmation asks `{question}`"));
    }
    page.screenshot("console-confirm-delete.png").await?;
    click(browser, "#confirm-cancel").await?;
    text_when(browser, "#generation", |t| t == "2").await?;
    click(browser, delete).await?;
    click(browser, "#confirm-yes").await?;
    text_when(browser, "#change-status", |t| {
        t.starts_with("Deleted acme.shop.v1")
    })
    .await?;
    text_when(browser, "#route-table tbody", |t| !t.contains("/v1/shops")).await?;
    text_when(browser, "#sets tbody", |t| !t.contains("acme.shop.v1")).await?;
    page.screenshot("console-deleted.png").await?;

    // Every request the page made went to the admin listener.
    let fetched = browser
        .execute(
            "return performance.getEntriesByType('resource').map((entry) => entry.name);",
            Vec::new(),
        )
        .await
        .map_err(failed("the page's requests"))?;
    let fetched: Vec<String> = serde_json::from_value(fetched).map_err(|err| err.to_string())?;
    let origin = admin(gw, "/");
    if fetched.is_empty() || fetched.iter().any(|url| !url.starts_with(&origin)) {
        return Err(format!("requests beyond {origin}: {fetched:?}"));
    }
    Ok(())
}
