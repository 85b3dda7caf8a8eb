//! The reference page: Swagger UI (vendored in `assets/swagger-ui/`, see
//! its README for the version and licence) embedded in the binary, so that
//! it works offline, with no CDN. Its script is served as a file, never
//! inline, so the page runs under a `Content-Security-Policy` that allows
//! only this origin's scripts and styles.

use axum::{extract::Request, response::Response};
use bytes::Bytes;
use http::{header, HeaderValue};

use super::{cached, etag};
use crate::{
    config::{OpenApiConfig, ServerConfig},
    error::Error,
    request_ids,
};

const BUNDLE: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js");
const STYLES: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui.css");

/// The page and its assets, each with its path and validator.
#[derive(Debug)]
pub(super) struct Page {
    files: [Asset; 4],
    policy: HeaderValue,
}

#[derive(Debug)]
struct Asset {
    path: Box<str>,
    bytes: Bytes,
    etag: HeaderValue,
    content_type: &'static str,
}

impl Page {
    pub(super) fn new(config: &OpenApiConfig) -> Self {
        let docs = &config.docs_path;
        let html = format!(
            "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>{title}</title>\n<link rel=\"stylesheet\" href=\"{docs}/swagger-ui.css\">\n\
             </head>\n<body>\n<div id=\"swagger-ui\"></div>\n\
             <script src=\"{docs}/swagger-ui-bundle.js\"></script>\n\
             <script src=\"{docs}/init.js\"></script>\n</body>\n</html>\n",
            title = escape_html(&config.title),
        );
        // The paths are plain URL characters (validated), so JSON quoting is
        // all the script needs.
        let script = format!(
            "window.ui = SwaggerUIBundle({{\n  url: {url},\n  dom_id: \"#swagger-ui\",\n  \
             deepLinking: true,\n  validatorUrl: null,\n  persistAuthorization: false,\n}});\n",
            url = serde_json::Value::from(config.path.as_str()),
        );
        let asset = |name: &str, bytes: Bytes, content_type| Asset {
            path: format!("{docs}{name}").into(),
            etag: etag(&bytes),
            bytes,
            content_type,
        };
        Self {
            files: [
                asset("", html.into(), "text/html; charset=utf-8"),
                asset("/init.js", script.into(), "text/javascript; charset=utf-8"),
                asset(
                    "/swagger-ui-bundle.js",
                    Bytes::from_static(BUNDLE),
                    "text/javascript; charset=utf-8",
                ),
                asset(
                    "/swagger-ui.css",
                    Bytes::from_static(STYLES),
                    "text/css; charset=utf-8",
                ),
            ],
            policy: content_security_policy(&config.servers),
        }
    }

    pub(super) fn serves(&self, path: &str) -> bool {
        self.files.iter().any(|asset| &*asset.path == path)
    }

    /// The page or one of its assets; a 404 for another path.
    pub(super) fn respond(&self, request: &Request) -> Response {
        let request_id = request_ids::request_id(request.headers());
        let path = request.uri().path();
        let Some(asset) = self.files.iter().find(|asset| &*asset.path == path) else {
            let err = Error::RouteNotFound {
                method: request.method().clone(),
                path: path.into(),
            };
            return err.into_response(request_id, None);
        };
        if let Err(err) = Error::readable(request.method()) {
            return err.into_response(request_id, None);
        }
        let mut response = cached(request, &asset.bytes, &asset.etag, asset.content_type);
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_SECURITY_POLICY, self.policy.clone());
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        response
    }
}

/// This origin only, for scripts, styles and calls (and the configured
/// servers, for "Try it out" against them); images also as `data:` URLs,
/// which the stylesheet uses for its icons.
fn content_security_policy(servers: &[ServerConfig]) -> HeaderValue {
    let mut connect = String::from("'self'");
    for server in servers {
        if let Ok(uri) = server.url().parse::<http::Uri>() {
            if let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) {
                connect.push_str(&format!(" {scheme}://{authority}"));
            }
        }
    }
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         font-src 'self'; connect-src {connect}; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    );
    HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("default-src 'none'"))
}

fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}
