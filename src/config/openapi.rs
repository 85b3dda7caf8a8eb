//! The `openapi` section: where the published API is served, what its
//! document says beyond the catalog, and who may read it.

use serde::Deserialize;

/// The `openapi` config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenApiConfig {
    /// Serve the document and the docs page. Default `true`.
    pub enabled: bool,
    /// Where the JSON document is served; it must end in `.json`, and the
    /// YAML one is served beside it (`.yaml`). Default `/openapi.json`.
    pub path: String,
    /// The reference page; its assets are served below it. Default `/docs`.
    pub docs_path: String,
    /// `info.title`. Default `protogate`.
    pub title: String,
    /// `info.version`. Default: the catalog generation.
    pub version: Option<String>,
    /// `servers`: URLs, or `{url, description}`. Default: none (clients
    /// call the origin that served the document).
    pub servers: Vec<ServerConfig>,
    /// Who may read the document: when set, a valid token (needs `auth`)
    /// with these roles and scopes. Default: none, the document is public.
    pub policy: Option<DocumentPolicy>,
}

/// `openapi.policy`: a token is required, and with it one of `roles` (if
/// any) and every one of `scopes`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DocumentPolicy {
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
}

impl Default for OpenApiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "/openapi.json".to_owned(),
            docs_path: "/docs".to_owned(),
            title: "protogate".to_owned(),
            version: None,
            servers: Vec::new(),
            policy: None,
        }
    }
}

impl OpenApiConfig {
    /// Where the YAML document is served: `/openapi.json` → `/openapi.yaml`.
    pub fn yaml_path(&self) -> String {
        format!(
            "{}.yaml",
            self.path.strip_suffix(".json").unwrap_or(&self.path)
        )
    }

    /// The key at fault and why: paths go into the page's HTML and script,
    /// so they are held to plain URL characters.
    pub fn validate(&self, auth: bool) -> Result<(), (&'static str, String)> {
        if self.policy.is_some() && !auth {
            return Err((
                "openapi.policy",
                "requires a token, but `auth` is not configured".to_owned(),
            ));
        }
        let plain = |path: &str| {
            path.starts_with('/')
                && path.len() > 1
                && !path.ends_with('/')
                && path
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b))
        };
        if !plain(&self.path) || !self.path.ends_with(".json") {
            return Err((
                "openapi.path",
                format!(
                    "`{}` is not an absolute path ending in `.json` (letters, digits, `/-_.~`)",
                    self.path
                ),
            ));
        }
        if !plain(&self.docs_path) {
            return Err((
                "openapi.docs_path",
                format!(
                    "`{}` is not an absolute path (letters, digits, `/-_.~`, no final `/`)",
                    self.docs_path
                ),
            ));
        }
        if self.docs_path == self.path || self.docs_path == self.yaml_path() {
            return Err(("openapi.docs_path", "is the document's own path".to_owned()));
        }
        for server in &self.servers {
            if server.url().parse::<http::Uri>().is_err() {
                return Err((
                    "openapi.servers",
                    format!("`{}` is not a URL", server.url()),
                ));
            }
        }
        Ok(())
    }
}

/// One entry of `openapi.servers`: a URL, or a URL with a description.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ServerConfig {
    Url(String),
    Described {
        url: String,
        #[serde(default)]
        description: Option<String>,
    },
}

impl ServerConfig {
    pub fn url(&self) -> &str {
        match self {
            Self::Url(url) | Self::Described { url, .. } => url,
        }
    }
}
