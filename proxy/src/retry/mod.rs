//! Retries: which failed tries are tried again, when, and how many.
//!
//! A try is retried when its failure matches one of the route's `on`
//! conditions, attempts remain, the request may be repeated (idempotent
//! methods; others only with `retry_non_idempotent`, or when the request was
//! never sent), its body was kept for replay, the retry budget and the
//! cluster's `max_retries` allow it, and the route's deadline leaves time.
//! The wait before each retry is full-jitter exponential backoff. Whether
//! *this* failure is retriable is data ([`Failure`]); the decision is here,
//! in one place.

mod budget;

use std::time::Duration;

use http::{Method, StatusCode};

use crate::config::{ConfigError, RetryConfig, RetryOn};
use crate::telemetry::label_values;

pub(crate) use budget::RetryBudget;

/// How a try failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No connection: the request was never sent.
    Connect,
    /// HTTP/2 REFUSED_STREAM: the upstream did not process the request.
    RefusedStream,
    /// No response: reset or closed after the request was (maybe) sent.
    Reset,
    /// The per-try timeout fired before response headers.
    PerTryTimeout,
    /// The client's request body failed (bad framing, or the client went
    /// away mid-body): the client's fault. Never retried, never counted
    /// against the endpoint.
    ClientBody,
    /// A response the route's conditions may retry on.
    Response {
        status: StatusCode,
        grpc: Option<u32>,
    },
}

impl Failure {
    /// Whether the upstream can have acted on the request.
    pub(crate) fn request_was_sent(self) -> bool {
        !matches!(self, Failure::Connect | Failure::RefusedStream)
    }
}

#[derive(Debug)]
pub(crate) struct RetryPolicy {
    pub attempts: u32,
    on: Vec<RetryOn>,
    retriable_status_codes: Box<[u16]>,
    pub per_try_timeout: Option<Duration>,
    base: Duration,
    max: Duration,
    pub budget_percent: f64,
    pub budget_min_per_second: u32,
    retry_non_idempotent: bool,
    pub buffer_limit: usize,
}

impl RetryPolicy {
    pub(crate) fn compile(
        config: &RetryConfig,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<RetryPolicy> {
        let before = errors.len();
        if config.attempts > 10 {
            errors.push(ConfigError::new(
                format!("{path}.attempts"),
                format!("{} is more than 10 retries", config.attempts),
            ));
        }
        if config.on.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.on"),
                "list at least one condition to retry on",
            ));
        }
        for (i, code) in config.retriable_status_codes.iter().enumerate() {
            if !(100..=599).contains(code) {
                errors.push(ConfigError::new(
                    format!("{path}.retriable_status_codes[{i}]"),
                    format!("{code} is not a status code"),
                ));
            }
        }
        if config.per_try_timeout.is_some_and(|t| t.is_zero()) {
            errors.push(ConfigError::new(
                format!("{path}.per_try_timeout"),
                "must be greater than 0 (leave it out for none)",
            ));
        }
        if config.backoff.base.is_zero() || config.backoff.base > config.backoff.max {
            errors.push(ConfigError::new(
                format!("{path}.backoff"),
                "base must be greater than 0 and at most max",
            ));
        }
        if !(config.budget.percent.is_finite() && (0.0..=100.0).contains(&config.budget.percent)) {
            errors.push(ConfigError::new(
                format!("{path}.budget.percent"),
                format!("{} is outside 0..=100", config.budget.percent),
            ));
        }
        (errors.len() == before).then(|| RetryPolicy {
            attempts: config.attempts,
            on: config.on.clone(),
            retriable_status_codes: config.retriable_status_codes.clone().into(),
            per_try_timeout: config.per_try_timeout,
            base: config.backoff.base,
            max: config.backoff.max,
            budget_percent: config.budget.percent,
            budget_min_per_second: config.budget.min_per_second,
            retry_non_idempotent: config.retry_non_idempotent,
            buffer_limit: config.buffer_limit_bytes as usize,
        })
    }

    /// The condition under which `failure` is retried (its metric reason),
    /// or `None` when it is not.
    ///
    /// A request that reached the upstream is retried only if its method is
    /// idempotent or `retry_non_idempotent` is set. The gRPC status
    /// conditions are the exception: every gRPC call is a POST, and listing
    /// a gRPC status (such as `unavailable`, which means the server did not
    /// process the call) is itself the statement that the call may be
    /// repeated, as in Envoy.
    pub(crate) fn matches(&self, failure: Failure, method: &Method) -> Option<RetryOn> {
        let may_repeat =
            !failure.request_was_sent() || self.retry_non_idempotent || is_idempotent(method);
        let grpc_status = matches!(failure, Failure::Response { grpc: Some(_), .. });
        self.on.iter().find_map(|&condition| {
            if !(may_repeat || grpc_status && is_grpc_condition(condition)) {
                return None;
            }
            condition_reason(condition, failure, &self.retriable_status_codes)
        })
    }

    /// Whether any condition is a gRPC status.
    pub(crate) fn has_grpc_conditions(&self) -> bool {
        self.on.iter().any(|&c| is_grpc_condition(c))
    }

    /// Full-jitter exponential backoff before retry number `retry` (1-based):
    /// uniform in [0, min(max, base × 2^(retry-1))).
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1 << (retry.saturating_sub(1)).min(20))
            .min(self.max);
        ceiling.mul_f64(crate::rand::unit())
    }
}

fn is_grpc_condition(condition: RetryOn) -> bool {
    matches!(
        condition,
        RetryOn::Cancelled
            | RetryOn::DeadlineExceeded
            | RetryOn::Internal
            | RetryOn::ResourceExhausted
            | RetryOn::Unavailable
    )
}

/// GET, HEAD, OPTIONS, TRACE, PUT and DELETE (RFC 9110 §9.2.2).
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn condition_reason(condition: RetryOn, failure: Failure, codes: &[u16]) -> Option<RetryOn> {
    let no_response = matches!(
        failure,
        Failure::Connect | Failure::RefusedStream | Failure::Reset | Failure::PerTryTimeout
    );
    let (status, grpc) = match failure {
        Failure::Response { status, grpc } => (Some(status.as_u16()), grpc),
        _ => (None, None),
    };
    let hit = match condition {
        RetryOn::FiveXx => no_response || status.is_some_and(|s| s >= 500),
        RetryOn::GatewayError => no_response || matches!(status, Some(502..=504)),
        RetryOn::Reset => matches!(failure, Failure::Reset | Failure::PerTryTimeout),
        RetryOn::ConnectFailure => failure == Failure::Connect,
        RetryOn::RefusedStream => failure == Failure::RefusedStream,
        RetryOn::Retriable4xx => status == Some(409),
        RetryOn::RetriableStatusCodes => status.is_some_and(|s| codes.contains(&s)),
        RetryOn::Cancelled => grpc == Some(1),
        RetryOn::DeadlineExceeded => grpc == Some(4),
        RetryOn::ResourceExhausted => grpc == Some(8),
        RetryOn::Internal => grpc == Some(13),
        RetryOn::Unavailable => grpc == Some(14),
    };
    hit.then_some(condition)
}

// The `reason` label of `remora_upstream_retries_total`: the condition that
// matched, by its config name.
label_values!(RetryOn {
    FiveXx => "5xx",
    GatewayError => "gateway-error",
    Reset => "reset",
    ConnectFailure => "connect-failure",
    RefusedStream => "refused-stream",
    Retriable4xx => "retriable-4xx",
    RetriableStatusCodes => "retriable-status-codes",
    Cancelled => "cancelled",
    DeadlineExceeded => "deadline-exceeded",
    Internal => "internal",
    ResourceExhausted => "resource-exhausted",
    Unavailable => "unavailable",
});

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(p: &RetryPolicy, failure: Failure, method: &Method) -> Option<&'static str> {
        p.matches(failure, method)
            .map(crate::telemetry::LabelValue::label)
    }
    use crate::config::parse_yaml;

    fn policy(yaml: &str) -> RetryPolicy {
        let config = parse_yaml(&format!(
            "listeners: [{{name: l, address: 127.0.0.1:1, routes: [{{name: r, direct_response: {{status: 200}}, retry: {yaml}}}]}}]"
        ))
        .unwrap();
        let mut errors = Vec::new();
        let retry = config.listeners[0].routes[0].retry.as_ref().unwrap();
        RetryPolicy::compile(retry, "r.retry", &mut errors).unwrap()
    }

    fn response(status: u16, grpc: Option<u32>) -> Failure {
        Failure::Response {
            status: StatusCode::from_u16(status).unwrap(),
            grpc,
        }
    }

    #[test]
    fn conditions_select_failures() {
        let p = policy("{on: [gateway-error]}");
        assert_eq!(
            reason(&p, response(503, None), &Method::GET),
            Some("gateway-error")
        );
        assert_eq!(
            reason(&p, Failure::PerTryTimeout, &Method::GET),
            Some("gateway-error")
        );
        assert_eq!(reason(&p, response(500, None), &Method::GET), None);
        let p = policy("{on: [5xx]}");
        assert_eq!(reason(&p, response(500, None), &Method::GET), Some("5xx"));
        assert_eq!(reason(&p, response(404, None), &Method::GET), None);
        let p =
            policy("{on: [unavailable, retriable-status-codes], retriable_status_codes: [429]}");
        assert_eq!(
            reason(&p, response(200, Some(14)), &Method::POST),
            Some("unavailable"),
            "gRPC calls are POSTs"
        );
        assert_eq!(
            reason(&p, response(429, None), &Method::POST),
            None,
            "a POST that reached the upstream"
        );

        assert_eq!(
            reason(&p, response(200, Some(14)), &Method::GET),
            Some("unavailable")
        );
        assert_eq!(
            reason(&p, response(200, Some(3)), &Method::GET),
            None,
            "INVALID_ARGUMENT is not retried"
        );
        assert_eq!(
            reason(&p, response(429, None), &Method::GET),
            Some("retriable-status-codes")
        );
    }

    #[test]
    fn non_idempotent_requests_are_retried_only_when_never_sent_or_allowed() {
        let p = policy("{on: [5xx]}");
        assert_eq!(reason(&p, response(503, None), &Method::POST), None);
        assert_eq!(reason(&p, Failure::Reset, &Method::PATCH), None);
        assert_eq!(
            reason(&p, Failure::Connect, &Method::POST),
            Some("5xx"),
            "never sent: safe"
        );
        let p = policy("{on: [5xx], retry_non_idempotent: true}");
        assert_eq!(reason(&p, response(503, None), &Method::POST), Some("5xx"));
    }

    #[test]
    fn the_default_is_istios() {
        let p = policy("{}");
        assert_eq!(p.attempts, 2);
        assert_eq!(
            reason(&p, Failure::Connect, &Method::GET),
            Some("connect-failure")
        );
        assert_eq!(
            reason(&p, response(503, None), &Method::GET),
            Some("retriable-status-codes")
        );
        assert_eq!(reason(&p, response(502, None), &Method::GET), None);
        assert_eq!(p.buffer_limit, 65_536);
    }

    #[test]
    fn backoff_is_full_jitter_and_capped() {
        let p = policy("{backoff: {base: 10ms, max: 100ms}}");
        for retry in 1..=10 {
            let ceiling = Duration::from_millis((10u64 << (retry - 1)).min(100));
            for _ in 0..100 {
                assert!(p.backoff(retry) < ceiling);
            }
        }
    }
}
