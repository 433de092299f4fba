//! HTTP routing: the ordered routes of a listener, compiled once per
//! snapshot. The first route whose match holds decides: forward to one of its
//! weighted backends, or answer with a fixed response.

mod backends;
mod header_edit;
pub(crate) mod matcher;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;

use metrics::Counter;

use crate::balance::HashPolicy;
use crate::cache::ResponseCache;
use crate::cluster::Cluster;
use crate::config::{ConfigError, RouteConfig};
use crate::fault::Fault;
use crate::ratelimit::RateLimit;
use crate::retry::RetryPolicy;
use crate::telemetry::{self, RequestStats, Telemetry};

pub(crate) use backends::{Backend, WeightedBackends};
pub use header_edit::HeaderEdits;
pub use matcher::RequestView;
pub(crate) use matcher::RouteMatch;

#[derive(Debug)]
pub struct Route {
    pub(crate) name: Arc<str>,
    matcher: RouteMatch,
    pub(crate) action: RouteAction,
    pub(crate) timeout: Option<Duration>,
    /// Overrides the cluster's hash input for consistent-hash backends.
    pub(crate) hash: Option<HashPolicy>,
    pub(crate) request_headers: HeaderEdits,
    pub(crate) response_headers: HeaderEdits,
    pub(crate) retry: Option<RetryPolicy>,
    /// gRPC requests: the client's `grpc-timeout`, capped at this.
    pub(crate) max_grpc_timeout: Option<Duration>,
    pub(crate) stream_idle_timeout: Option<Duration>,
    pub(crate) rate_limit: Option<RateLimit>,
    /// `remora_rate_limited_total{listener,route}`.
    pub(crate) rate_limited: Counter,
    pub(crate) fault: Option<Fault>,
    /// The route's response cache (kept across reloads while its config
    /// stays the same).
    pub(crate) cache: Option<Arc<ResponseCache>>,
}

#[derive(Debug)]
pub(crate) enum RouteAction {
    Forward(WeightedBackends),
    Respond(DirectResponse),
}

#[derive(Debug)]
pub(crate) struct DirectResponse {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
    pub(crate) stats: RequestStats,
}

/// The caches of the snapshot being replaced, by listener and route name.
pub(crate) type PreviousCaches<'a> = HashMap<(&'a str, &'a str), &'a Arc<ResponseCache>>;

#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Box<[Route]>,
}

impl RouteTable {
    pub(crate) fn compile(
        configs: &[RouteConfig],
        listener: &str,
        path: &str,
        clusters: &HashMap<&str, Arc<Cluster>>,
        telemetry: &Telemetry,
        caches: &PreviousCaches<'_>,
        errors: &mut Vec<ConfigError>,
    ) -> RouteTable {
        let mut names = HashSet::new();
        let mut routes = Vec::with_capacity(configs.len());
        for (i, config) in configs.iter().enumerate() {
            let at = format!("{path}[{i}]");
            if config.name.is_empty() {
                errors.push(ConfigError::new(format!("{at}.name"), "must not be empty"));
            } else if !names.insert(config.name.as_str()) {
                errors.push(ConfigError::new(
                    format!("{at}.name"),
                    format!("duplicate route name {:?} in this listener", config.name),
                ));
            }
            if let Some(route) =
                Route::compile(config, listener, &at, clusters, telemetry, caches, errors)
            {
                routes.push(route);
            }
        }
        RouteTable {
            routes: routes.into(),
        }
    }

    /// The first route that matches, with its index.
    pub fn find(&self, request: &RequestView<'_>) -> Option<(usize, &Route)> {
        self.routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.matcher.matches(request))
    }

    pub(crate) fn routes(&self) -> &[Route] {
        &self.routes
    }
}

impl Route {
    fn compile(
        config: &RouteConfig,
        listener: &str,
        at: &str,
        clusters: &HashMap<&str, Arc<Cluster>>,
        telemetry: &Telemetry,
        caches: &PreviousCaches<'_>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Route> {
        let matcher = RouteMatch::compile(&config.matches, &format!("{at}.match"), errors);
        let request_headers = HeaderEdits::compile(
            &config.request_headers,
            &format!("{at}.request_headers"),
            errors,
        );
        let response_headers = HeaderEdits::compile(
            &config.response_headers,
            &format!("{at}.response_headers"),
            errors,
        );
        for (field, value) in [
            ("timeout", config.timeout),
            ("max_grpc_timeout", config.max_grpc_timeout),
            ("stream_idle_timeout", config.stream_idle_timeout),
        ] {
            if value == Some(Duration::ZERO) {
                errors.push(ConfigError::new(
                    format!("{at}.{field}"),
                    "must be greater than 0 (leave it out for no timeout)",
                ));
            }
        }
        let retry = config
            .retry
            .as_ref()
            .and_then(|r| RetryPolicy::compile(r, &format!("{at}.retry"), errors));
        let rate_limit = config.rate_limit.as_ref().and_then(|r| {
            RateLimit::compile(
                ("requests_per_second", r.requests_per_second),
                r.burst,
                &r.key,
                &format!("{at}.rate_limit"),
                errors,
            )
            .map(|limit| {
                limit.with_global(
                    r,
                    &format!("route/{listener}/{}", config.name),
                    &format!("{at}.rate_limit"),
                    telemetry,
                    errors,
                )
            })
        });
        let fault = config
            .fault
            .as_ref()
            .and_then(|f| Fault::compile(f, &format!("{at}.fault"), errors));
        let cache = config.cache.as_ref().and_then(|c| {
            ResponseCache::compile(
                c,
                listener,
                &config.name,
                &format!("{at}.cache"),
                caches.get(&(listener, config.name.as_str())).copied(),
                telemetry,
                errors,
            )
        });
        if cache.is_some() && config.direct_response.is_some() {
            errors.push(ConfigError::new(
                format!("{at}.cache"),
                "a direct_response route has nothing to cache",
            ));
        }
        let action = match (&config.direct_response, config.backends.is_empty()) {
            (Some(_), false) => {
                errors.push(ConfigError::new(
                    at,
                    "set either backends or direct_response, not both",
                ));
                return None;
            }
            (None, true) => {
                errors.push(ConfigError::new(
                    format!("{at}.backends"),
                    "a route needs at least one backend (or a direct_response)",
                ));
                return None;
            }
            (Some(direct), true) => {
                let status = match StatusCode::from_u16(direct.status) {
                    Ok(status) if (200..=599).contains(&direct.status) => status,
                    _ => {
                        errors.push(ConfigError::new(
                            format!("{at}.direct_response.status"),
                            format!("{} is not a status code between 200 and 599", direct.status),
                        ));
                        return None;
                    }
                };
                RouteAction::Respond(DirectResponse {
                    status,
                    body: Bytes::from(direct.body.clone().unwrap_or_default()),
                    stats: RequestStats::new(telemetry, listener, &config.name, ""),
                })
            }
            (None, false) => RouteAction::Forward(WeightedBackends::compile(
                config,
                listener,
                &format!("{at}.backends"),
                clusters,
                retry.as_ref(),
                telemetry,
                errors,
            )?),
        };
        let hash = config
            .hash_on
            .as_ref()
            .and_then(|h| HashPolicy::compile(h, &format!("{at}.hash_on"), errors));
        if let (Some(_), RouteAction::Forward(backends)) = (&hash, &action)
            && !backends
                .backends()
                .iter()
                .any(|b| b.cluster.is_hash_based())
        {
            errors.push(ConfigError::new(
                format!("{at}.hash_on"),
                "applies only to ring_hash or maglev clusters, and none of this route's backends is one",
            ));
        }
        Some(Route {
            name: Arc::from(config.name.as_str()),
            matcher,
            action,
            timeout: config.timeout,
            hash,
            request_headers,
            response_headers,
            retry,
            max_grpc_timeout: config.max_grpc_timeout,
            stream_idle_timeout: config.stream_idle_timeout,
            rate_limit,
            rate_limited: telemetry.counter(
                telemetry::RATE_LIMITED_TOTAL,
                &[("listener", listener), ("route", &config.name)],
            ),
            fault,
            cache,
        })
    }
}
