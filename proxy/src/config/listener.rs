//! Listener and route configuration: where the proxy accepts traffic and how an
//! HTTP request picks its destination.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::scalar::{default_true, is_default};
use super::{
    AuthorizationPolicyConfig, ConnectionRateLimitConfig, FaultConfig, HashOnConfig, Http2Config,
    KeepaliveConfig, MtlsMode, RateLimitConfig, RetryConfig, ValueMatchConfig, scalar,
};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    #[serde(with = "scalar::socket_addr")]
    pub address: SocketAddr,
    /// `http`, `tcp` or `auto`; absent: `http`, except on a capture
    /// listener and a `bind: false` listener, where it is `auto`
    /// ([`ListenerConfig::protocol`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<ListenerProtocol>,
    /// HTTP listeners: routes in order; the first that matches wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    /// TCP listeners: the cluster every connection goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// How long a client may take to send a request's headers (HTTP/1) or to
    /// open the connection with its first bytes (protocol detection).
    #[serde(default = "default_request_headers_timeout", with = "scalar::duration")]
    pub request_headers_timeout: Duration,
    /// The largest request head accepted, in KiB; larger gets 431.
    #[serde(default = "default_max_request_headers_kb")]
    pub max_request_headers_kb: u32,
    /// A connection with no request in flight (HTTP) or no bytes either way
    /// (TCP) for this long is closed (`0s`: never).
    #[serde(default = "default_idle_timeout", with = "scalar::duration")]
    pub idle_timeout: Duration,
    /// Connections are closed gracefully (GOAWAY / `Connection: close`) once this old.
    #[serde(
        default,
        with = "scalar::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_connection_age: Option<Duration>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub keepalive: KeepaliveConfig,
    #[serde(default, skip_serializing_if = "is_default")]
    pub http2: Http2Config,
    #[serde(default = "default_true")]
    pub tcp_nodelay: bool,
    /// HTTP listeners: a rate limit over all of the listener's requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    /// New connections accepted per second; more are closed at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_rate_limit: Option<ConnectionRateLimitConfig>,
    /// Connections open at once; more are closed at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// TLS termination with certificate files (an ingress; docs/security.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTlsConfig>,
    /// Who may call: allow and deny policies over peer identities, ports
    /// and (HTTP) paths, methods and headers (docs/security.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization: Vec<AuthorizationPolicyConfig>,
    /// HTTP: give a request without `x-request-id` a new one (a random
    /// UUID), passed upstream and written to the access log; a request
    /// that has one keeps it (Envoy's `generate_request_id`).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub generate_request_id: bool,
    /// HTTP: one adaptive concurrency limit over every request the listener
    /// forwards (Envoy's `adaptive_concurrency` filter; a cluster's
    /// `adaptive_concurrency` limits that cluster's). docs/resilience.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive_concurrency: Option<crate::config::AdaptiveConcurrencyConfig>,
    /// Mutual TLS with the proxy's mesh identity (`identity:`): `strict`
    /// takes only mTLS, `permissive` takes mTLS and plaintext, `disabled`
    /// (the default) plaintext only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsMode>,
    /// A capture listener (docs/sidecar.md): every connection it accepts
    /// was redirected to it by `remora-proxy init`, and goes on to the
    /// listener whose `address` is the connection's original destination.
    #[serde(default, skip_serializing_if = "is_default")]
    pub original_destination: bool,
    /// `false`: the listener opens no socket and is reached only through a
    /// capture listener, by its `address` (`0.0.0.0:PORT` matches any
    /// address on that port).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub bind: bool,
    /// A capture listener: what happens to a connection whose original
    /// destination no listener has.
    #[serde(default, skip_serializing_if = "is_default")]
    pub unmatched: Unmatched,
    /// Which way the listener's traffic goes: `outbound` (the default;
    /// the pod's calls out) or `inbound` (calls to the pod). A capture
    /// listener hands connections only to listeners of its own direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// A capture listener: how long protocol detection waits for the
    /// client's first bytes before the connection is treated as opaque TCP
    /// (default 100 ms).
    #[serde(
        default,
        with = "scalar::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub detect_timeout: Option<Duration>,
    /// A capture listener: original destination ports never detected, always
    /// opaque TCP: the protocols where the server speaks first. Absent:
    /// [`DEFAULT_OPAQUE_PORTS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opaque_ports: Option<Vec<u16>>,
}

/// A listener's TLS: its certificate and key, read at start and on every
/// reload.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// The certificate chain, PEM: the server's certificate first.
    pub cert_file: std::path::PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: std::path::PathBuf,
    /// Clients must present a certificate that chains to one of these
    /// roots (PEM); absent: no client certificate is asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<std::path::PathBuf>,
    /// ALPN protocols offered, in order of preference. Absent: `h2` and
    /// `http/1.1` on HTTP listeners, none on TCP listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpn: Option<Vec<String>>,
}

/// Server-speaks-first protocols: FTP, SSH, SMTP, POP3, IMAP, submission,
/// MySQL, NATS.
pub const DEFAULT_OPAQUE_PORTS: [u16; 8] = [21, 22, 25, 110, 143, 587, 3306, 4222];

/// How long protocol detection waits for a client's first bytes.
pub const DEFAULT_DETECT_TIMEOUT: Duration = Duration::from_millis(100);

impl ListenerConfig {
    /// The protocol, with the default filled in: `auto` for listeners that
    /// see captured traffic (`original_destination`, `bind: false`), `http`
    /// for the rest.
    pub fn protocol(&self) -> ListenerProtocol {
        self.protocol
            .unwrap_or(if self.original_destination || !self.bind {
                ListenerProtocol::Auto
            } else {
                ListenerProtocol::Http
            })
    }

    pub fn direction(&self) -> Direction {
        self.direction.unwrap_or_default()
    }
}

/// Which way a listener's traffic goes (Envoy's `traffic_direction`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    #[default]
    Outbound,
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// What a capture listener does with a connection no listener claims.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    /// Opaque TCP to the original destination (the `passthrough` cluster in
    /// metrics).
    #[default]
    Passthrough,
    /// Reset at once.
    Reject,
}

fn is_true(value: &bool) -> bool {
    *value
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(3600)
}

fn default_request_headers_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_request_headers_kb() -> u32 {
    60
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    /// HTTP/1.1 and HTTP/2 prior knowledge (h2c), detected per connection.
    #[default]
    Http,
    /// Opaque bytes, both ways.
    Tcp,
    /// Detected per connection from the client's first bytes (captured
    /// traffic only): HTTP goes to `routes`, anything else (TLS, other
    /// bytes, or nothing within the capture listener's `detect_timeout`)
    /// is opaque TCP to `cluster`, or to the original destination.
    Auto,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    /// Absent matches every request.
    #[serde(rename = "match", default)]
    pub matches: MatchConfig,
    /// Deadline for the whole exchange: from the request until the end of the
    /// response body. Absent means none.
    #[serde(
        default,
        with = "scalar::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponseConfig>,
    /// The hash input for a consistent-hash cluster, instead of the cluster's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOnConfig>,
    #[serde(default, skip_serializing_if = "HeaderEditsConfig::is_empty")]
    pub request_headers: HeaderEditsConfig,
    #[serde(default, skip_serializing_if = "HeaderEditsConfig::is_empty")]
    pub response_headers: HeaderEditsConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryConfig>,
    /// gRPC: honour the client's `grpc-timeout`, but no longer than this.
    #[serde(
        default,
        with = "scalar::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_grpc_timeout: Option<Duration>,
    /// A stream with no body data either way for this long is reset.
    #[serde(
        default,
        with = "scalar::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub stream_idle_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultConfig>,
    /// A response cache for this route's requests (docs/cache.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<super::CacheConfig>,
}

/// Every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// `api.example.com`, `*.example.com` or `*`; compared without the port,
    /// ignoring case, against the `:authority` or `Host`.
    #[serde(default, alias = "authority", skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Must match the whole path (anchored), as Envoy's `safe_regex` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatchConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<ValueMatchConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendRef {
    pub cluster: String,
    /// Share of the route's traffic relative to the other backends.
    #[serde(default = "default_backend_weight")]
    pub weight: u32,
}

fn default_backend_weight() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponseConfig {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// Applied in order: remove, then set (replace), then add (append).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderEditsConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HeaderValueConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderValueConfig>,
}

impl HeaderEditsConfig {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueConfig {
    pub name: String,
    pub value: String,
}
