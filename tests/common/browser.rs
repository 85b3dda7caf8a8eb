//! A real headless browser: Debian's `chromium`, driven over WebDriver by
//! its `chromedriver` with fantoccini; screenshots go under the target dir.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::json;

use super::process::{free_port, wait_for, Child};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A headless chromium and its driver, both stopped when dropped.
pub struct Browser {
    pub client: fantoccini::Client,
    _driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and a fresh chromium profile;
    /// fails (never skips) when either program is missing.
    pub async fn start() -> Self {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: install it (`apt-get install {package}`)"
            );
        }
        let port = free_port();
        let driver = Child(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let driver_url = format!("http://127.0.0.1:{port}");
        wait_for(&format!("{driver_url}/status")).await;
        let profile = tempfile::tempdir().unwrap();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--window-size=1280,2400",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = fantoccini::ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&driver_url)
            .await
            .expect("chromedriver starts a headless chromium");
        Self {
            client,
            _driver: driver,
            _profile: profile,
        }
    }

    /// Ends the session (then the driver is stopped on drop).
    pub async fn close(self) {
        let _ = self.client.close().await;
    }

    /// Writes a screenshot of the page to `name` in Cargo's scratch folder
    /// for integration tests, under the target dir wherever that is
    /// (`CARGO_TARGET_DIR` may move it out of the checkout), and says where.
    pub async fn screenshot(&self, name: &str) -> Result<PathBuf, String> {
        let png = self
            .client
            .screenshot()
            .await
            .map_err(failed("screenshot"))?;
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&path, png).map_err(|err| format!("{}: {err}", path.display()))?;
        println!("screenshot: {}", path.display());
        Ok(path)
    }
}

/// Words a WebDriver failure with what was being done.
pub fn failed(what: &str) -> impl Fn(fantoccini::error::CmdError) -> String {
    let what = what.to_owned();
    move |err| format!("{what}: {err}")
}
