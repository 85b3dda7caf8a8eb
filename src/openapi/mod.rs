//! The published API: an OpenAPI 3.1 document of the live catalog and an
//! interactive reference page, on the public listener (`openapi` config):
//! * `GET /openapi.json`, `GET /openapi.yaml` -- the document, `?package=P`
//!   for one package; built once per catalog generation (at the first
//!   request for it), then served from memory with an `ETag`
//! * `GET /docs` -- Swagger UI, its assets embedded in the binary, under a
//!   strict `Content-Security-Policy`
//!
//! `protogate openapi` writes the same document offline ([`document`]).

mod comments;
mod document;
mod page;
mod schema;

use std::{collections::HashMap, sync::Arc};

use arc_swap::ArcSwapOption;
use axum::{body::Body, extract::Request, response::Response};
use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};
use sha2::{Digest as _, Sha256};

use self::page::Page;
pub use self::{
    comments::set_has_comments,
    document::{document, packages, DocumentOptions},
    schema::JsonNames,
};
use crate::{
    config::{JsonConfig, OpenApiConfig},
    error::Error,
    percent,
    policy::{self, Authenticator, RoutePolicy},
    registry::{Catalog, Registry},
    request_ids,
};

impl DocumentOptions {
    /// What the document says beyond the catalog: the `openapi` keys, the
    /// JSON names, and whether `auth` is on.
    pub fn new(openapi: &OpenApiConfig, json: &JsonConfig, auth: bool) -> Self {
        Self {
            title: openapi.title.clone(),
            version: openapi.version.clone(),
            servers: openapi.servers.clone(),
            names: JsonNames {
                proto_names: json.use_proto_field_names,
                enums_as_numbers: json.enums_as_numbers,
            },
            auth,
        }
    }
}

/// The routes of the published API and what they serve.
#[derive(Debug)]
pub struct Published {
    json_path: Box<str>,
    yaml_path: Box<str>,
    page: Page,
    /// Who may read the document (the page, a static shell, is public).
    guard: Option<(Arc<Authenticator>, RoutePolicy)>,
    options: DocumentOptions,
    /// The documents of the latest generation asked for.
    cache: ArcSwapOption<Documents>,
}

/// The documents of one catalog generation: the whole API and each package.
#[derive(Debug)]
struct Documents {
    generation: u64,
    by_package: HashMap<Option<String>, Rendered>,
}

/// One document, in both forms.
#[derive(Debug)]
struct Rendered {
    json: Representation,
    yaml: Representation,
}

#[derive(Debug)]
struct Representation {
    bytes: Bytes,
    etag: HeaderValue,
}

impl Published {
    /// `None` when `openapi.enabled` is off. `auth` checks the tokens
    /// `openapi.policy` asks for.
    pub fn new(
        openapi: &OpenApiConfig,
        options: DocumentOptions,
        auth: Option<&Arc<Authenticator>>,
    ) -> Option<Self> {
        let guard = openapi.policy.as_ref().zip(auth).map(|(policy, auth)| {
            let names = |names: &[String]| names.iter().map(|n| n.as_str().into()).collect();
            let policy = RoutePolicy {
                allow_anonymous: false,
                roles: names(&policy.roles),
                scopes: names(&policy.scopes),
                ..RoutePolicy::default()
            };
            (auth.clone(), policy)
        });
        openapi.enabled.then(|| Self {
            json_path: openapi.path.as_str().into(),
            yaml_path: openapi.yaml_path().into(),
            page: Page::new(openapi),
            guard,
            options,
            cache: ArcSwapOption::empty(),
        })
    }

    /// Whether `request` is for one of the published routes (else it goes
    /// on to the catalog's).
    pub fn serves(&self, request: &Request) -> bool {
        let path = request.uri().path();
        path == &*self.json_path || path == &*self.yaml_path || self.page.serves(path)
    }

    /// The answer to a request [`Published::serves`].
    pub async fn respond(&self, mut request: Request, registry: &Registry) -> Response {
        let path = request.uri().path();
        let yaml = if path == &*self.json_path {
            false
        } else if path == &*self.yaml_path {
            true
        } else {
            return self.page.respond(&request);
        };
        let request_id = request_ids::request_id(request.headers()).to_owned();
        if let Err(err) = Error::readable(request.method()) {
            return err.into_response(&request_id, None);
        }
        if let Some((auth, policy)) = &self.guard {
            if let Err(err) = policy::authenticate(auth, policy, &mut request).await {
                return err.into_response(&request_id, None);
            }
        }
        match self.document(request, registry, yaml).await {
            Ok(response) => response,
            Err(err) => err.into_response(&request_id, None),
        }
    }

    /// The document in the form asked for, of the package asked for.
    async fn document(
        &self,
        request: Request,
        registry: &Registry,
        yaml: bool,
    ) -> Result<Response, Error> {
        let package = package_parameter(request.uri().query().unwrap_or(""))?;
        let catalog = registry.load();
        let documents = self.documents(catalog.clone()).await?;
        let Some(rendered) = documents.by_package.get(&package) else {
            let served = packages(&catalog).join(", ");
            return Err(Error::invalid_field(
                "package",
                format!(
                    "no served package `{}` (served: {served})",
                    package.unwrap_or_default()
                ),
            ));
        };
        let (representation, content_type) = if yaml {
            (&rendered.yaml, "application/yaml")
        } else {
            (&rendered.json, "application/json")
        };
        Ok(cached(
            &request,
            &representation.bytes,
            &representation.etag,
            content_type,
        ))
    }

    /// The documents of `catalog`'s generation, built now (off the
    /// runtime, as catalogs are) if they are not yet.
    async fn documents(&self, catalog: Arc<Catalog>) -> Result<Arc<Documents>, Error> {
        if let Some(documents) = self.cache.load_full() {
            if documents.generation == catalog.generation() {
                return Ok(documents);
            }
        }
        let options = self.options.clone();
        let documents = tokio::task::spawn_blocking(move || Documents::new(&catalog, &options))
            .await
            .map_err(|err| {
                Error::Internal(format!("building the OpenAPI document: {err}").into())
            })?;
        let documents = Arc::new(documents);
        self.cache.store(Some(documents.clone()));
        Ok(documents)
    }
}

impl Documents {
    fn new(catalog: &Catalog, options: &DocumentOptions) -> Self {
        let scopes = packages(catalog).into_iter().map(Some).chain([None]);
        let by_package = scopes
            .map(|package| {
                let document = document(catalog, options, package.as_deref());
                (package, Rendered::new(&document))
            })
            .collect();
        Self {
            generation: catalog.generation(),
            by_package,
        }
    }
}

impl Rendered {
    fn new(document: &serde_json::Value) -> Self {
        // Serializing a `Value` cannot fail: its keys are strings.
        let json = serde_json::to_vec_pretty(document).unwrap_or_default();
        let yaml = serde_yaml_ng::to_string(document).unwrap_or_default();
        Self {
            json: Representation::new(json.into()),
            yaml: Representation::new(yaml.into()),
        }
    }
}

impl Representation {
    fn new(bytes: Bytes) -> Self {
        Self {
            etag: etag(&bytes),
            bytes,
        }
    }
}

/// A strong validator: the content's SHA-256, shortened.
fn etag(bytes: &[u8]) -> HeaderValue {
    let digest = Sha256::digest(bytes);
    HeaderValue::from_str(&format!("\"{}\"", hex::encode(&digest[..16])))
        .unwrap_or(HeaderValue::from_static("\"\""))
}

/// `?package=P`, the only parameter; refused when it repeats or does not decode.
fn package_parameter(query: &str) -> Result<Option<String>, Error> {
    let mut package = None;
    for pair in percent::query_pairs(query) {
        let (key, value) = pair
            .map_err(|(key, reason)| Error::invalid_field(key.into_owned(), reason.to_string()))?;
        if key != "package" {
            return Err(Error::invalid_field(
                key.into_owned(),
                "unknown query parameter (the only one is `package`)",
            ));
        }
        if package.replace(value.into_owned()).is_some() {
            return Err(Error::invalid_field("package", "given twice"));
        }
    }
    Ok(package)
}

/// `bytes` with its `ETag`, or a 304 when the client has them; no body for HEAD.
fn cached(
    request: &Request,
    bytes: &Bytes,
    etag: &HeaderValue,
    content_type: &'static str,
) -> Response {
    let fresh = request
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag
        });
    let (status, body) = if fresh {
        (StatusCode::NOT_MODIFIED, Body::empty())
    } else if request.method() == Method::HEAD {
        (StatusCode::OK, Body::empty())
    } else {
        (StatusCode::OK, Body::from(bytes.clone()))
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag.clone());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if !fresh {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    }
    response
}
