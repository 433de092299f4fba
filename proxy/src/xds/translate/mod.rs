//! Envoy resources → the proxy's own config types, one resource at a time.
//!
//! Each translator reads the fields Remora honours, checks the fields it
//! cannot honour and rejects the resource when one of those is set, naming
//! the field (`filter_chains[0].filters[0].typed_config.http_filters[2]:
//! the filter envoy.filters.http.cors is not supported`). Fields that only
//! tune Envoy's internals (stat prefixes, buffer limits, socket options) are
//! ignored, as gRPC's xDS client does. docs/xds.md lists every field.
//!
//! A resource translates into a *part*: a cluster without its EDS
//! endpoints, a listener without its RDS routes. [`super::state`] joins the
//! parts into listeners and clusters once the pieces they name arrived.

mod cluster;
mod cluster_resilience;
mod listener;
mod rbac;
mod route;
mod route_match;
mod route_policy;
mod tls;

#[cfg(test)]
pub(super) mod tests;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use remora_xds_proto::{core, protobuf, type_url};

use crate::config::{ClusterConfig, EndpointConfig, ListenerConfig, RateLimitConfig, RouteConfig};

pub(crate) use cluster::{cluster, endpoints};
pub(crate) use listener::listener;
pub(crate) use route::route_configuration;

/// Where an HTTP listener's routes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Routes {
    /// A TCP listener.
    None,
    Inline(Vec<RouteConfig>),
    /// A RouteConfiguration by name, over ADS.
    Rds(String),
}

/// A translated Listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerPart {
    /// Without routes; they come from `routes`.
    pub config: ListenerConfig,
    pub routes: Routes,
    /// The HTTP connection manager's defaults for its routes.
    pub defaults: RouteDefaults,
    /// A `use_original_dst` listener's TCP proxy cluster: an ORIGINAL_DST
    /// cluster means `unmatched: passthrough`; none, or a cluster without
    /// endpoints (Istio's `BlackHoleCluster`), `unmatched: reject`.
    pub unmatched_cluster: Option<String>,
    /// The HTTP connection manager's OpenTelemetry tracer.
    pub tracing: Option<XdsTracing>,
}

/// `HttpConnectionManager.tracing` with the `envoy.tracers.opentelemetry`
/// provider.
#[derive(Debug, Clone, PartialEq)]
pub struct XdsTracing {
    pub collector: Collector,
    /// `random_sampling` as a share (Envoy's default: 100 %).
    pub sampling: f64,
    pub service_name: String,
}

/// Where an OpenTelemetry tracer sends its spans.
#[derive(Debug, Clone, PartialEq)]
pub enum Collector {
    /// `grpc_service.envoy_grpc.cluster_name`: a cluster's first endpoint.
    Cluster(String),
    /// `grpc_service.google_grpc.target_uri` (`HOST:PORT`).
    Grpc(String),
    /// `http_service.http_uri.uri`.
    Http(String),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteDefaults {
    /// `stream_idle_timeout` (Envoy: 5 minutes), for routes without `idle_timeout`.
    pub stream_idle_timeout: Option<Duration>,
    /// Whether the local rate limit filter is in the chain: routes'
    /// `typed_per_filter_config` limits apply only then.
    pub local_rate_limit: bool,
}

/// A translated Cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterPart {
    /// With its endpoints when they were inline (STATIC); empty for EDS.
    pub config: ClusterConfig,
    /// EDS: the ClusterLoadAssignment's name (`service_name`, else the cluster's).
    pub eds: Option<String>,
    /// An ORIGINAL_DST cluster: not a cluster of the proxy's, but the
    /// passthrough of the capture listeners that name it.
    pub original_dst: bool,
}

/// One translated resource of any type.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Cluster(Box<ClusterPart>),
    Endpoints(Vec<EndpointConfig>),
    Listener(Box<ListenerPart>),
    Routes(Vec<RouteConfig>),
}

/// Resources larger than this are rejected before they are decoded.
pub(crate) const MAX_RESOURCE_BYTES: usize = 8 << 20;

/// Decodes and translates one resource of `type_url`: its name and part, or
/// why it is rejected.
pub fn translate(type_url: &str, any: &protobuf::Any) -> Result<(String, Part), Rejection> {
    if any.value.len() > MAX_RESOURCE_BYTES {
        return Err(Rejection::new(
            "",
            format!(
                "the resource is {} bytes; this proxy accepts at most {} bytes per resource",
                any.value.len(),
                MAX_RESOURCE_BYTES
            ),
        ));
    }
    if any.type_url != type_url {
        return Err(Rejection::new(
            "",
            format!(
                "a {} in a response for {type_url}",
                if any.type_url.is_empty() {
                    "resource without a type"
                } else {
                    &any.type_url
                }
            ),
        ));
    }
    let decode_error = |e: remora_xds_proto::UnpackError| Rejection::new("", e.to_string());
    match type_url {
        type_url::CLUSTER => {
            let c = remora_xds_proto::unpack(any).map_err(decode_error)?;
            let part = cluster(&c).map_err(|e| e.within("Cluster", &c.name))?;
            Ok((c.name, Part::Cluster(Box::new(part))))
        }
        type_url::ENDPOINT => {
            let a = remora_xds_proto::unpack(any).map_err(decode_error)?;
            let part =
                endpoints(&a).map_err(|e| e.within("ClusterLoadAssignment", &a.cluster_name))?;
            Ok((a.cluster_name, Part::Endpoints(part)))
        }
        type_url::LISTENER => {
            let l = remora_xds_proto::unpack(any).map_err(decode_error)?;
            let part = listener(&l).map_err(|e| e.within("Listener", &l.name))?;
            Ok((l.name, Part::Listener(Box::new(part))))
        }
        type_url::ROUTE => {
            let r = remora_xds_proto::unpack(any).map_err(decode_error)?;
            let part =
                route_configuration(&r).map_err(|e| e.within("RouteConfiguration", &r.name))?;
            Ok((r.name, Part::Routes(part)))
        }
        other => Err(Rejection::new(
            "",
            format!("the type {other} is not supported"),
        )),
    }
}

/// Why a resource cannot be honoured: the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub(crate) path: String,
    pub(crate) message: String,
}

impl Rejection {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Rejection {
        Rejection {
            path: path.into(),
            message: message.into(),
        }
    }

    /// A field this proxy cannot honour was set.
    pub(crate) fn unsupported(path: impl Into<String>, what: &str) -> Rejection {
        Rejection::new(path, format!("{what} is not supported by remora-proxy"))
    }

    /// Prefixes the path with a parent field.
    pub(crate) fn at(mut self, parent: &str) -> Rejection {
        self.path = join(parent, &self.path);
        self
    }

    /// Names the resource: `Listener "outbound|15001": address: ...`.
    pub(crate) fn within(self, kind: &str, name: &str) -> Rejection {
        Rejection {
            path: format!("{kind} {name:?}{}", prefixed(&self.path)),
            message: self.message,
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

fn prefixed(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else if path.starts_with('[') {
        path.to_string()
    } else {
        format!(" {path}")
    }
}

fn join(parent: &str, child: &str) -> String {
    match (parent.is_empty(), child.is_empty()) {
        (true, _) => child.to_string(),
        (_, true) => parent.to_string(),
        _ if child.starts_with('[') => format!("{parent}{child}"),
        _ => format!("{parent}.{child}"),
    }
}

type Result<T, E = Rejection> = std::result::Result<T, E>;

/// A protobuf duration; negative or out-of-range is rejected.
fn duration(d: &protobuf::Duration, path: &str) -> Result<Duration> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(Rejection::new(
            path,
            format!("invalid duration {}s {}ns", d.seconds, d.nanos),
        ));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

fn opt_duration(d: &Option<protobuf::Duration>, path: &str) -> Result<Option<Duration>> {
    d.as_ref().map(|d| duration(d, path)).transpose()
}

/// A duration where zero means "none".
fn duration_or_none(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

fn u32v(v: &Option<protobuf::UInt32Value>) -> Option<u32> {
    v.as_ref().map(|v| v.value)
}

/// An IP socket address (names are resolved only by DNS clusters).
fn socket_address(address: &Option<core::Address>, path: &str) -> Result<SocketAddr> {
    let (ip, port) = ip_and_port(address, path)?;
    let ip: IpAddr = ip.parse().map_err(|_| {
        Rejection::new(
            format!("{path}.socket_address.address"),
            format!("{ip:?} is not an IP address"),
        )
    })?;
    Ok(SocketAddr::new(ip, port))
}

/// `socket_address` with a `port_value`, TCP.
fn ip_and_port<'a>(address: &'a Option<core::Address>, path: &str) -> Result<(&'a str, u16)> {
    use core::address::Address;
    use core::socket_address::{PortSpecifier, Protocol};
    let socket = match address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(Address::SocketAddress(s)) => s,
        Some(Address::Pipe(_)) => return Err(Rejection::unsupported(path, "a pipe address")),
        Some(Address::EnvoyInternalAddress(_)) => {
            return Err(Rejection::unsupported(path, "an internal address"));
        }
        None => return Err(Rejection::new(path, "required")),
    };
    let at = format!("{path}.socket_address");
    if socket.protocol != Protocol::Tcp as i32 {
        return Err(Rejection::unsupported(format!("{at}.protocol"), "UDP"));
    }
    if !socket.resolver_name.is_empty() {
        return Err(Rejection::unsupported(
            format!("{at}.resolver_name"),
            "a custom resolver",
        ));
    }
    let port = match &socket.port_specifier {
        Some(PortSpecifier::PortValue(port)) => u16::try_from(*port).map_err(|_| {
            Rejection::new(format!("{at}.port_value"), format!("{port} is not a port"))
        })?,
        Some(PortSpecifier::NamedPort(_)) => {
            return Err(Rejection::unsupported(
                format!("{at}.named_port"),
                "a named port",
            ));
        }
        None => return Err(Rejection::new(format!("{at}.port_value"), "required")),
    };
    Ok((socket.address.as_str(), port))
}

/// Resources named in a config source must come over the same ADS stream.
fn ads_source(source: &Option<core::ConfigSource>, path: &str) -> Result<()> {
    use core::config_source::ConfigSourceSpecifier;
    match source
        .as_ref()
        .and_then(|s| s.config_source_specifier.as_ref())
    {
        Some(ConfigSourceSpecifier::Ads(_)) | Some(ConfigSourceSpecifier::Self_(_)) => Ok(()),
        None => Err(Rejection::new(path, "required (ads: {})")),
        Some(_) => Err(Rejection::unsupported(
            path,
            "a config source other than ADS (ads or self)",
        )),
    }
}

/// A local rate limit filter config as a token bucket; `None` when the
/// filter is not both enabled and enforced for every request.
fn local_rate_limit(
    limit: &remora_xds_proto::filters::local_ratelimit::LocalRateLimit,
    path: &str,
) -> Result<Option<RateLimitConfig>> {
    let full = |p: &Option<core::RuntimeFractionalPercent>, field: &str| -> Result<bool> {
        let Some(fraction) = p.as_ref().and_then(|p| p.default_value.as_ref()) else {
            return Ok(false); // Envoy: unset means 0 %
        };
        let denominator = match fraction.denominator {
            0 => 100,
            1 => 10_000,
            2 => 1_000_000,
            _ => 100,
        };
        match fraction.numerator {
            0 => Ok(false),
            n if n >= denominator => Ok(true),
            _ => Err(Rejection::unsupported(
                format!("{path}.{field}"),
                "a percentage other than 0 or 100",
            )),
        }
    };
    if !limit.descriptors.is_empty() {
        return Err(Rejection::unsupported(
            format!("{path}.descriptors"),
            "descriptor-based local rate limiting",
        ));
    }
    if limit.local_rate_limit_per_downstream_connection {
        return Err(Rejection::unsupported(
            format!("{path}.local_rate_limit_per_downstream_connection"),
            "a bucket per connection",
        ));
    }
    if limit
        .status
        .as_ref()
        .is_some_and(|s| s.code != 0 && s.code != 429)
    {
        return Err(Rejection::unsupported(
            format!("{path}.status"),
            "a status other than 429",
        ));
    }
    let enabled = full(&limit.filter_enabled, "filter_enabled")?;
    let enforced = full(&limit.filter_enforced, "filter_enforced")?;
    let Some(bucket) = &limit.token_bucket else {
        return Ok(None);
    };
    if !(enabled && enforced) {
        return Ok(None);
    }
    let at = format!("{path}.token_bucket");
    let tokens = u32v(&bucket.tokens_per_fill).unwrap_or(1);
    let interval = match &bucket.fill_interval {
        Some(d) => duration(d, &format!("{at}.fill_interval"))?,
        None => return Err(Rejection::new(format!("{at}.fill_interval"), "required")),
    };
    if interval.is_zero() || tokens == 0 || bucket.max_tokens == 0 {
        return Err(Rejection::new(
            at,
            "max_tokens, tokens_per_fill and fill_interval must be above zero",
        ));
    }
    Ok(Some(RateLimitConfig {
        requests_per_second: f64::from(tokens) / interval.as_secs_f64(),
        burst: Some(bucket.max_tokens),
        key: "none".into(),
        global: None,
    }))
}

/// A config type with every field at its YAML default, parsed once per
/// type: `defaults!(RouteConfig, "{name: x}")`.
macro_rules! defaults {
    ($ty:ty, $yaml:expr) => {{
        static DEFAULT: std::sync::LazyLock<$ty> = std::sync::LazyLock::new(|| {
            crate::config::parse_yaml_as($yaml).expect("the defaults parse")
        });
        DEFAULT.clone()
    }};
}
pub(crate) use defaults;

/// Checks a regex the way the route matcher will compile it.
fn check_regex(pattern: &str, path: &str) -> Result<()> {
    crate::route::matcher::anchored_regex(pattern)
        .map(|_| ())
        .map_err(|message| Rejection::new(path, message))
}

/// The named filter config, or the reason it cannot be read.
fn unpack_typed<T: prost::Name + prost::Message + Default>(
    any: &protobuf::Any,
    path: &str,
) -> Result<T> {
    remora_xds_proto::unpack(any).map_err(|e| Rejection::new(path, e.to_string()))
}
