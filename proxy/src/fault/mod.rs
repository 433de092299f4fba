//! Fault injection, for chaos testing: a route can delay a share of its
//! requests, or abort a share of them with an HTTP status or a gRPC status,
//! before they reach the upstream.

use std::time::Duration;

use http::StatusCode;

use crate::config::{ConfigError, FaultConfig};

#[derive(Debug)]
pub(crate) struct Fault {
    delay: Option<(Duration, f64)>,
    abort: Option<(Abort, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Abort {
    Http(StatusCode),
    Grpc(u32),
}

impl Fault {
    pub(crate) fn compile(
        config: &FaultConfig,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Fault> {
        let before = errors.len();
        let mut share = |percent: f64, at: String| {
            if !(percent.is_finite() && (0.0..=100.0).contains(&percent)) {
                errors.push(ConfigError::new(
                    at,
                    format!("{percent} is outside 0..=100"),
                ));
            }
            percent / 100.0
        };
        let delay = config.delay.as_ref().map(|d| {
            (
                d.duration,
                share(d.percent, format!("{path}.delay.percent")),
            )
        });
        let abort = config.abort.as_ref().map(|a| {
            (
                a.status,
                a.grpc_status,
                share(a.percent, format!("{path}.abort.percent")),
            )
        });
        let abort = match abort {
            None => None,
            Some((Some(status), None, p)) => match StatusCode::from_u16(status) {
                Ok(code) if (200..=599).contains(&status) => Some((Abort::Http(code), p)),
                _ => {
                    errors.push(ConfigError::new(
                        format!("{path}.abort.status"),
                        format!("{status} is not a status code between 200 and 599"),
                    ));
                    None
                }
            },
            Some((None, Some(grpc), p)) if (1..=16).contains(&grpc) => Some((Abort::Grpc(grpc), p)),
            Some((None, Some(grpc), _)) => {
                errors.push(ConfigError::new(
                    format!("{path}.abort.grpc_status"),
                    format!("{grpc} is not a gRPC error code (1 to 16)"),
                ));
                None
            }
            Some(_) => {
                errors.push(ConfigError::new(
                    format!("{path}.abort"),
                    "set exactly one of status and grpc_status",
                ));
                None
            }
        };
        (errors.len() == before).then_some(Fault { delay, abort })
    }

    /// The delay to inject into this request, if its draw says so.
    pub(crate) fn delay(&self) -> Option<Duration> {
        self.delay
            .filter(|&(_, share)| crate::rand::unit() < share)
            .map(|(d, _)| d)
    }

    /// The abort to inject into this request, if its draw says so.
    pub(crate) fn abort(&self) -> Option<Abort> {
        self.abort
            .filter(|&(_, share)| crate::rand::unit() < share)
            .map(|(a, _)| a)
    }
}
