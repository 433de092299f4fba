//! A request's deadline: the route's `timeout`, or for gRPC the client's
//! `grpc-timeout` capped by `max_grpc_timeout` (and by the route's timeout),
//! whichever ends first. The remaining time is passed upstream in
//! `grpc-timeout`, so the deadline propagates.

use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;

use crate::cluster::TimeoutKind;
use crate::config::scalar::format_duration;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    pub(crate) at: Instant,
    /// Which setting decided it.
    pub(crate) kind: TimeoutKind,
    pub(crate) length: Duration,
}

impl Deadline {
    pub(crate) fn of(
        route_timeout: Option<Duration>,
        grpc: Option<Duration>,
        max_grpc: Option<Duration>,
        now: Instant,
    ) -> Option<Deadline> {
        let grpc = grpc.map(|g| max_grpc.map_or(g, |max| g.min(max)));
        let (length, kind) = match (route_timeout, grpc) {
            (Some(route), Some(grpc)) if grpc < route => (grpc, TimeoutKind::Grpc),
            (Some(route), _) => (route, TimeoutKind::Route),
            (None, Some(grpc)) => (grpc, TimeoutKind::Grpc),
            (None, None) => return None,
        };
        Some(Deadline {
            at: now + length,
            kind,
            length,
        })
    }

    /// What the 504 (or DEADLINE_EXCEEDED) says fired.
    pub(crate) fn describe(&self, route: &str) -> String {
        let length = format_duration(self.length);
        match self.kind {
            TimeoutKind::Grpc => {
                format!("the request's grpc-timeout of {length} (route {route:?}) expired")
            }
            _ => format!("route {route:?} timeout of {length} expired"),
        }
    }
}

/// Parses `grpc-timeout` (`100m`, `5S`: up to 8 digits and a unit of
/// H, M, S, m, u, n).
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// `grpc-timeout` for the time left, in milliseconds (at least 1).
pub(crate) fn grpc_timeout_value(left: Duration) -> http::HeaderValue {
    let millis = left.as_millis().clamp(1, 99_999_999);
    http::HeaderValue::from_str(&format!("{millis}m"))
        .unwrap_or(http::HeaderValue::from_static("1m"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", value.parse().unwrap());
        h
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_reject_junk() {
        assert_eq!(
            grpc_timeout(&headers("1H")),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(grpc_timeout(&headers("2M")), Some(Duration::from_secs(120)));
        assert_eq!(grpc_timeout(&headers("3S")), Some(Duration::from_secs(3)));
        assert_eq!(
            grpc_timeout(&headers("250m")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(grpc_timeout(&headers("7u")), Some(Duration::from_micros(7)));
        assert_eq!(grpc_timeout(&headers("9n")), Some(Duration::from_nanos(9)));
        for junk in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(grpc_timeout(&headers(junk)), None, "{junk:?}");
        }
        assert_eq!(grpc_timeout_value(Duration::from_micros(10)), "1m");
        assert_eq!(grpc_timeout_value(Duration::from_millis(1500)), "1500m");
    }

    #[test]
    fn the_earliest_limit_decides() {
        let now = Instant::now();
        let s = Duration::from_secs;
        let d = Deadline::of(Some(s(5)), Some(s(2)), None, now).unwrap();
        assert_eq!((d.length, d.kind), (s(2), TimeoutKind::Grpc));
        let d = Deadline::of(Some(s(5)), Some(s(20)), Some(s(1)), now).unwrap();
        assert_eq!(
            (d.length, d.kind),
            (s(1), TimeoutKind::Grpc),
            "max_grpc_timeout caps the client's"
        );
        let d = Deadline::of(Some(s(5)), Some(s(20)), None, now).unwrap();
        assert_eq!((d.length, d.kind), (s(5), TimeoutKind::Route));
        assert!(Deadline::of(None, None, Some(s(1)), now).is_none());
    }
}
