//! The client side of the admin API, for `protogate admin ...`: one call per
//! command, errors carrying the `google.rpc.Status` message and the
//! violations the gateway sent.

use std::{fmt, net::SocketAddr, path::Path};

use serde_json::Value;

/// A running gateway's admin listener.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot reach the admin listener: {0}")]
    Http(#[from] reqwest::Error),
    /// The gateway refused: its status, message and violations.
    #[error("{0}")]
    Refused(Refusal),
}

/// A non-2xx answer of the admin API.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
    pub violations: Vec<String>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.message)?;
        for violation in &self.violations {
            write!(f, "\n  - {violation}")?;
        }
        Ok(())
    }
}

impl AdminClient {
    pub fn new(addr: SocketAddr, token: Option<String>) -> Self {
        Self {
            base: format!("http://{addr}/admin/v1"),
            token,
            http: reqwest::Client::new(),
        }
    }

    /// Uploads a descriptor set (`.binpb`, `.pb`, `.desc`), a `.proto` file,
    /// or a `.tar`, `.zip` or `.tar.gz` of `.proto` files.
    pub async fn upload(
        &self,
        file: &Path,
        name: &str,
        upstream: Option<&str>,
    ) -> Result<Value, ClientError> {
        let bytes = std::fs::read(file).map_err(|source| ClientError::Read {
            path: file.display().to_string(),
            source,
        })?;
        let extension = file
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default();
        let (content_type, body) = match extension {
            "tar" => ("application/x-tar", bytes),
            "zip" => ("application/zip", bytes),
            "gz" | "tgz" => ("application/gzip", bytes),
            "proto" => {
                let file_name = file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                ("application/x-tar", single_file_tar(&file_name, &bytes)?)
            }
            _ => ("application/x-protobuf", bytes),
        };
        let mut request = self
            .http
            .put(format!("{}/descriptor-sets/{name}", self.base))
            .header(http::header::CONTENT_TYPE, content_type)
            .body(body);
        if let Some(upstream) = upstream {
            request = request.query(&[("upstream", upstream)]);
        }
        self.send(request).await
    }

    pub async fn list(&self) -> Result<Value, ClientError> {
        self.send(self.http.get(format!("{}/descriptor-sets", self.base)))
            .await
    }

    pub async fn routes(&self) -> Result<Value, ClientError> {
        self.send(self.http.get(format!("{}/routes", self.base)))
            .await
    }

    pub async fn delete(&self, name: &str) -> Result<Value, ClientError> {
        self.send(
            self.http
                .delete(format!("{}/descriptor-sets/{name}", self.base)),
        )
        .await
    }

    /// `POST /admin/v1/discover:refresh`: every discovered server read now.
    pub async fn refresh_discovery(&self) -> Result<Value, ClientError> {
        self.send(self.http.post(format!("{}/discover:refresh", self.base)))
            .await
    }

    async fn send(&self, mut request: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let violations = body["details"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|d| d["fieldViolations"].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v["description"].as_str().map(str::to_owned))
            .collect();
        Err(ClientError::Refused(Refusal {
            status,
            message: body["message"].as_str().unwrap_or("error").to_owned(),
            violations,
        }))
    }
}

/// A `.proto` file sent as a one-file tar, keeping its name.
fn single_file_tar(name: &str, bytes: &[u8]) -> Result<Vec<u8>, ClientError> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    let io_error = |source| ClientError::Read {
        path: name.to_owned(),
        source,
    };
    builder
        .append_data(&mut header, name, bytes)
        .map_err(io_error)?;
    builder.into_inner().map_err(io_error)
}
