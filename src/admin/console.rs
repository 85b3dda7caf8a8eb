//! The admin console, `GET /` on the admin listener: one HTML page, its
//! style and script inline (`assets/console/`), so that it needs nothing
//! from anywhere else. The page holds no data: it reads and changes
//! everything through the admin API, sending the token the operator types
//! in (kept in the tab's `sessionStorage`) as `Authorization: Bearer`. A
//! browser cannot attach a bearer token to a navigation, and a cookie or
//! Basic credentials would ride along on other sites' requests too, so
//! the page itself is served without the token and is useless without it.
//!
//! The `Content-Security-Policy` allows exactly the inline style and script
//! (by their SHA-256) and calls to this origin: nothing else loads or runs.

use std::sync::LazyLock;

use axum::response::{IntoResponse, Response};
use base64::{engine::general_purpose::STANDARD, Engine as _};
use http::{header, HeaderMap, HeaderValue, Method};
use sha2::{Digest as _, Sha256};

use crate::{error::Error, request_ids};

const HTML: &str = include_str!("../../assets/console/console.html");
const STYLE: &str = include_str!("../../assets/console/console.css");
const SCRIPT: &str = include_str!("../../assets/console/console.js");

/// The page and its policy, assembled once.
struct Page {
    html: String,
    policy: HeaderValue,
}

static PAGE: LazyLock<Page> = LazyLock::new(|| {
    let html = HTML
        .replace("{{style}}", STYLE)
        .replace("{{script}}", SCRIPT);
    let hash = |text: &str| STANDARD.encode(Sha256::digest(text.as_bytes()));
    let policy = format!(
        "default-src 'none'; script-src 'sha256-{script}'; style-src 'sha256-{style}'; \
         connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        script = hash(SCRIPT),
        style = hash(STYLE),
    );
    Page {
        html,
        // Base64 and ASCII only: always a valid header value.
        policy: HeaderValue::from_str(&policy)
            .unwrap_or(HeaderValue::from_static("default-src 'none'")),
    }
});

/// `GET /`: the console page (405 for other methods).
pub(super) async fn page(method: Method, headers: HeaderMap) -> Response {
    if let Err(err) = Error::readable(&method) {
        return err.into_response(request_ids::request_id(&headers), None);
    }
    let page = &*PAGE;
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CONTENT_SECURITY_POLICY, page.policy.clone()),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        page.html.clone(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_inlines_exactly_what_the_policy_allows() {
        let page = &*PAGE;
        assert!(!page.html.contains("{{"), "a placeholder is left");
        assert_eq!(page.html.matches("<script>").count(), 1);
        assert_eq!(page.html.matches("<style>").count(), 1);
        assert!(!page.html.contains("<script src") && !page.html.contains("<link"));
        let policy = page.policy.to_str().unwrap();
        let hash = STANDARD.encode(Sha256::digest(SCRIPT.as_bytes()));
        assert!(
            policy.contains(&format!("script-src 'sha256-{hash}';")),
            "{policy}"
        );
        assert!(!policy.contains("unsafe"), "{policy}");
    }
}
