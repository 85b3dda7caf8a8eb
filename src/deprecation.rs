//! API deprecation signalled in responses: a package (file option), service
//! or method marked with the proto `deprecated` option, or selected by a
//! `deprecations` config rule, answers with
//! * `Deprecation: @<unix seconds>` (RFC 9745): the rule's `since`, or `@0`
//!   when only the proto marks it (deprecated, date not given);
//! * `Sunset: <HTTP-date>` (RFC 8594) from the rule's `sunset`;
//! * `Link: <url>; rel="successor-version"` from the rule's `link`.
//!
//! Resolved once per method at catalog build into ready header values.

use std::time::{SystemTime, UNIX_EPOCH};

use globset::{Glob, GlobMatcher};
use http::{HeaderMap, HeaderName, HeaderValue};
use prost_reflect::MethodDescriptor;
use serde::Deserialize;

const DEPRECATION: HeaderName = HeaderName::from_static("deprecation");
const SUNSET: HeaderName = HeaderName::from_static("sunset");

/// One `deprecations` entry of the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeprecationConfig {
    /// A glob over method, service or package names, e.g. `acme.orders.v1.*`.
    pub methods: String,
    /// When it was deprecated: `2026-01-31` or an RFC 3339 timestamp. Default: not given.
    #[serde(default)]
    pub since: Option<String>,
    /// When it stops being served, same formats. Default: not given.
    #[serde(default)]
    pub sunset: Option<String>,
    /// Where its successor is documented (`rel="successor-version"`). Default: none.
    #[serde(default)]
    pub link: Option<String>,
}

/// The compiled `deprecations` rules.
#[derive(Debug, Clone, Default)]
pub struct DeprecationRules {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    methods: GlobMatcher,
    headers: Deprecation,
}

/// The headers a deprecated method answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deprecation {
    deprecation: HeaderValue,
    sunset: Option<HeaderValue>,
    link: Option<HeaderValue>,
}

/// Checks one rule; the reason names the bad field.
pub fn validate(rule: &DeprecationConfig) -> Result<(), String> {
    Rule::new(rule).map(|_| ())
}

impl DeprecationRules {
    /// Valid rules only: the config was validated at start.
    pub fn new(configs: &[DeprecationConfig]) -> Self {
        Self {
            rules: configs.iter().filter_map(|c| Rule::new(c).ok()).collect(),
        }
    }

    /// The first rule selecting the method, else the proto's `deprecated`
    /// option on the method, its service or its file.
    pub fn resolve(&self, method: &MethodDescriptor) -> Option<Deprecation> {
        let service = method.parent_service();
        let names = [
            method.full_name(),
            service.full_name(),
            service.package_name(),
        ];
        if let Some(rule) = self
            .rules
            .iter()
            .find(|rule| names.iter().any(|name| rule.methods.is_match(name)))
        {
            return Some(rule.headers.clone());
        }
        let marked = |options: prost_reflect::DynamicMessage| {
            options
                .get_field_by_name("deprecated")
                .is_some_and(|value| value.as_bool() == Some(true))
        };
        let file = service.parent_file();
        let deprecated =
            marked(method.options()) || marked(service.options()) || marked(file.options());
        deprecated.then(|| Deprecation {
            deprecation: HeaderValue::from_static("@0"),
            sunset: None,
            link: None,
        })
    }
}

impl Rule {
    fn new(config: &DeprecationConfig) -> Result<Self, String> {
        let methods = Glob::new(&config.methods)
            .map_err(|err| format!("methods: {err}"))?
            .compile_matcher();
        let since = match &config.since {
            Some(text) => unix_seconds(parse_date(text).map_err(|e| format!("since: {e}"))?),
            None => 0,
        };
        let sunset = config
            .sunset
            .as_deref()
            .map(|text| {
                let time = parse_date(text).map_err(|e| format!("sunset: {e}"))?;
                HeaderValue::from_str(&httpdate::fmt_http_date(time)).map_err(|e| e.to_string())
            })
            .transpose()?;
        let link = config
            .link
            .as_deref()
            .map(|url| {
                // An absolute URL, or a path on this gateway (RFC 8288 allows references).
                let uri: http::Uri = url.parse().map_err(|e| format!("link: {e}"))?;
                let absolute = uri.scheme().is_some() || url.starts_with('/');
                if !absolute || url.contains(['<', '>', '"']) {
                    return Err(format!("link: `{url}` is not an absolute URL or path"));
                }
                HeaderValue::from_str(&format!("<{url}>; rel=\"successor-version\""))
                    .map_err(|e| format!("link: {e}"))
            })
            .transpose()?;
        Ok(Self {
            methods,
            headers: Deprecation {
                deprecation: HeaderValue::from_str(&format!("@{since}"))
                    .map_err(|e| format!("since: {e}"))?,
                sunset,
                link,
            },
        })
    }
}

impl Deprecation {
    /// Whether it answers with a `Link` to the successor.
    pub fn has_link(&self) -> bool {
        self.link.is_some()
    }

    /// The `Sunset` date (an HTTP-date), when a rule gives one.
    pub fn sunset(&self) -> Option<&str> {
        self.sunset.as_ref().and_then(|value| value.to_str().ok())
    }

    /// Adds the headers to a response (a `Link` is appended to any other).
    pub fn write(&self, headers: &mut HeaderMap) {
        headers.insert(DEPRECATION, self.deprecation.clone());
        if let Some(sunset) = &self.sunset {
            headers.insert(SUNSET, sunset.clone());
        }
        if let Some(link) = &self.link {
            headers.append(http::header::LINK, link.clone());
        }
    }
}

/// `2026-01-31` (midnight UTC) or an RFC 3339 timestamp.
fn parse_date(text: &str) -> Result<SystemTime, String> {
    let full = if text.len() == 10 {
        format!("{text}T00:00:00Z")
    } else {
        text.to_owned()
    };
    humantime::parse_rfc3339(&full)
        .map_err(|err| format!("`{text}` is not a date (2026-01-31) or RFC 3339 timestamp: {err}"))
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_headers_follow_rfc_9745_and_8594() {
        let rule = Rule::new(&DeprecationConfig {
            methods: "acme.orders.v1".into(),
            since: Some("2026-01-01".into()),
            sunset: Some("2027-06-30T12:00:00Z".into()),
            link: Some("https://example.com/v2".into()),
        })
        .unwrap();
        let mut headers = HeaderMap::new();
        rule.headers.write(&mut headers);
        assert_eq!(headers["deprecation"], "@1767225600");
        assert_eq!(headers["sunset"], "Wed, 30 Jun 2027 12:00:00 GMT");
        assert_eq!(
            headers["link"],
            r#"<https://example.com/v2>; rel="successor-version""#
        );
    }

    #[test]
    fn bad_rules_name_the_field() {
        let rule = |since: &str, link: &str| DeprecationConfig {
            methods: "a".into(),
            since: Some(since.into()),
            sunset: None,
            link: Some(link.into()),
        };
        assert!(validate(&rule("soon", "https://x"))
            .unwrap_err()
            .starts_with("since: "));
        assert!(validate(&rule("2026-01-01", "x y"))
            .unwrap_err()
            .starts_with("link: "));
        assert!(validate(&rule("2026-01-01", "relative/path"))
            .unwrap_err()
            .starts_with("link: "));
        assert!(validate(&rule("2026-01-01", "/v2/orders")).is_ok());
    }
}
