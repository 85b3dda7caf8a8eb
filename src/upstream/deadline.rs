//! A call's time limit: the upstream's timeout, shortened by the client's
//! `grpc-timeout`, and sent upstream as `grpc-timeout` in gRPC's spelling.

use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue};

use super::Upstream;
use crate::{error::Error, timers};

pub(super) const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// A call's time limit, counted from its start: the upstream's timeout, or
/// less when the client asked for less (its `grpc-timeout`), never more.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    timeout: Duration,
    started: Instant,
}

impl Deadline {
    /// Starts now.
    pub fn start(upstream: &Upstream, asked: Option<Duration>) -> Self {
        Self {
            timeout: asked.map_or(upstream.timeout, |asked| asked.min(upstream.timeout)),
            started: Instant::now(),
        }
    }

    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// When the call started: the clock read once for the deadline and
    /// for the call's latency.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// When the call times out, for a timer that need not read the clock
    /// again.
    pub(super) fn at(&self) -> tokio::time::Instant {
        timers::deadline_after(self.started, self.timeout)
    }

    pub(super) fn expired(&self) -> bool {
        self.started.elapsed() >= self.timeout
    }

    /// As `grpc-timeout`: the upstream's own value unless shortened.
    pub(super) fn header(&self, upstream: &Upstream) -> HeaderValue {
        if self.timeout == upstream.timeout {
            upstream.grpc_timeout.clone()
        } else {
            grpc_timeout(self.timeout)
        }
    }
}

/// `grpc-timeout` for `timeout`: at most eight digits, in the finest unit
/// that fits (gRPC over HTTP/2).
pub(super) fn grpc_timeout(timeout: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = timeout.as_nanos();
    let (value, unit) = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ]
    .into_iter()
    .map(|(per_unit, unit)| (nanos.div_ceil(per_unit), unit))
    .find(|(value, _)| *value <= MAX)
    .unwrap_or((MAX, 'H'));
    let mut text = itoa::Buffer::new().format(value).to_owned();
    text.push(unit);
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("99999999H"))
}

/// The client's `grpc-timeout`, if it sent one: it shortens the call's
/// [`Deadline`] (never lengthens it); a malformed one is refused.
pub fn asked_timeout(headers: &HeaderMap) -> Result<Option<Duration>, Error> {
    let Some(value) = headers.get(GRPC_TIMEOUT) else {
        return Ok(None);
    };
    match parse_grpc_timeout(value.as_bytes()) {
        Some(timeout) => Ok(Some(timeout)),
        None => Err(Error::invalid_field(
            GRPC_TIMEOUT.as_str(),
            format!(
                "`{}` is not a gRPC timeout: 1 to 8 digits and a unit (H, M, S, m, u or n)",
                String::from_utf8_lossy(value.as_bytes())
            ),
        )),
    }
}

/// 1 to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`), as gRPC over
/// HTTP/2 spells a timeout; `None` for anything else.
fn parse_grpc_timeout(text: &[u8]) -> Option<Duration> {
    let (&unit, digits) = text.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = digits
        .iter()
        .fold(0u64, |value, digit| value * 10 + u64::from(digit - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(value * 3600),
        b'M' => Duration::from_secs(value * 60),
        b'S' => Duration::from_secs(value),
        b'm' => Duration::from_millis(value),
        b'u' => Duration::from_micros(value),
        b'n' => Duration::from_nanos(value),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clients_grpc_timeout_is_read_as_grpc_spells_it() {
        for (text, timeout) in [
            ("1H", Duration::from_secs(3600)),
            ("2M", Duration::from_secs(120)),
            ("30S", Duration::from_secs(30)),
            ("250m", Duration::from_millis(250)),
            ("7u", Duration::from_micros(7)),
            ("99999999n", Duration::from_nanos(99_999_999)),
            ("0S", Duration::ZERO),
            ("99999999H", Duration::from_secs(99_999_999 * 3600)),
        ] {
            assert_eq!(parse_grpc_timeout(text.as_bytes()), Some(timeout), "{text}");
        }
        for text in [
            "",
            "S",
            "5",
            "5s",
            "5 S",
            "-5S",
            "+5S",
            "123456789S",
            "1.5S",
            "5SS",
        ] {
            assert_eq!(parse_grpc_timeout(text.as_bytes()), None, "{text}");
        }
    }

    #[test]
    fn grpc_timeout_takes_the_finest_unit_within_eight_digits() {
        for (timeout, text) in [
            (Duration::from_millis(50), "50000000n"),
            (Duration::from_secs(30), "30000000u"),
            (Duration::from_secs(3600), "3600000m"),
            (Duration::from_secs(400_000), "400000S"),
        ] {
            assert_eq!(grpc_timeout(timeout), text, "{timeout:?}");
        }
    }
}
