//! A route's response cache (docs/cache.md): what is stored, for how long,
//! how much memory it may take, and the stale modes.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::scalar::{self, default_true, is_default};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// The longest an entry is fresh; a response's own `max-age`,
    /// `s-maxage` or `Expires` may make it shorter, never longer. A response
    /// without any is fresh for `ttl`.
    #[schemars(with = "scalar::DurationText")]
    #[serde(default = "default_ttl", with = "scalar::duration")]
    pub ttl: Duration,
    /// Entries kept at most (least recently used evicted first).
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
    /// Bytes kept at most: bodies, headers, trailers and keys.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// A response larger than this is passed on, not stored. Absent: 1 MiB,
    /// or `max_bytes` when that is less.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entry_bytes: Option<u64>,
    /// Methods whose responses are stored: `GET` (a `HEAD` is answered
    /// from a `GET` entry) and, opt-in, `POST` for RPC-style reads, keyed
    /// by the request body's digest.
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// gRPC unary methods cached (`/package.Service/Method`), keyed by the
    /// request message's digest; every other gRPC call passes through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grpc_methods: Vec<String>,
    /// POST and gRPC: a request body larger than this bypasses the cache.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    #[serde(default, skip_serializing_if = "is_default")]
    pub key: CacheKeyConfig,
    /// RFC 9111: `Cache-Control`, `Expires`, `Vary`, `Authorization` decide
    /// what is stored and for how long. `false`: every response of a
    /// cacheable status is stored for `ttl` (requests with
    /// `Authorization` then bypass the cache).
    #[serde(default = "default_true")]
    pub honor_cache_control: bool,
    /// How long past its freshness an entry may still answer when the
    /// upstream fails (5xx, no endpoint, timeout); `0s`: never.
    #[schemars(with = "scalar::DurationText")]
    #[serde(default, with = "scalar::duration", skip_serializing_if = "is_zero")]
    pub stale_if_error: Duration,
    /// How long past its freshness an entry may still answer at once while
    /// one background request refreshes it; `0s`: never.
    #[schemars(with = "scalar::DurationText")]
    #[serde(default, with = "scalar::duration", skip_serializing_if = "is_zero")]
    pub stale_while_revalidate: Duration,
    /// Concurrent misses for one key wait this long for the first one's
    /// response, then go upstream themselves.
    #[schemars(with = "scalar::DurationText")]
    #[serde(default = "default_collapse_timeout", with = "scalar::duration")]
    pub collapse_timeout: Duration,
    /// The response header that says `hit`, `miss`, `stale` or `bypass`;
    /// empty: none.
    #[serde(default = "default_status_header")]
    pub status_header: String,
}

/// What, beyond the method class, authority and path, tells entries apart.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheKeyConfig {
    /// Request headers (or gRPC metadata) whose values are part of the key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// The query string is part of the key.
    #[serde(default = "default_true")]
    pub query: bool,
}

impl Default for CacheKeyConfig {
    fn default() -> Self {
        CacheKeyConfig {
            headers: Vec::new(),
            query: true,
        }
    }
}

fn is_zero(value: &Duration) -> bool {
    value.is_zero()
}

fn default_ttl() -> Duration {
    Duration::from_secs(300)
}

fn default_max_entries() -> u64 {
    1000
}

fn default_max_bytes() -> u64 {
    64 * 1024 * 1024
}

impl CacheConfig {
    /// Every problem with the fields, by path under `at` (the proxy and
    /// the control plane check the same way).
    pub fn check(&self, at: &str) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut problem = |field: &str, message: String| {
            errors.push(ConfigError::new(format!("{at}.{field}"), message));
        };
        if self.ttl.is_zero() {
            problem("ttl", "must be greater than 0".into());
        }
        if self.max_entries == 0 {
            problem("max_entries", "must be at least 1".into());
        }
        if self.max_bytes == 0 {
            problem("max_bytes", "must be at least 1".into());
        }
        let max_entry_bytes = self.max_entry_bytes();
        if max_entry_bytes == 0 || max_entry_bytes > self.max_bytes {
            problem(
                "max_entry_bytes",
                format!(
                    "{max_entry_bytes} must be between 1 and max_bytes ({})",
                    self.max_bytes
                ),
            );
        } else if max_entry_bytes > u64::from(u32::MAX) {
            problem("max_entry_bytes", "must be under 4 GiB".into());
        }
        if self.collapse_timeout.is_zero() {
            problem("collapse_timeout", "must be greater than 0".into());
        }
        for (i, method) in self.methods.iter().enumerate() {
            if method != "GET" && method != "POST" {
                problem(
                    &format!("methods[{i}]"),
                    format!("{method:?}: GET or POST (HEAD is answered from GET entries)"),
                );
            }
        }
        if self.methods.is_empty() && self.grpc_methods.is_empty() {
            problem(
                "methods",
                "nothing to cache: list GET, POST, or grpc_methods".into(),
            );
        }
        for (i, method) in self.grpc_methods.iter().enumerate() {
            let valid = method
                .strip_prefix('/')
                .and_then(|m| m.split_once('/'))
                .is_some_and(|(service, name)| {
                    !service.is_empty() && !name.is_empty() && !name.contains('/')
                });
            if !valid {
                problem(
                    &format!("grpc_methods[{i}]"),
                    format!("{method:?} is not a gRPC method path (/package.Service/Method)"),
                );
            }
        }
        for (i, name) in self.key.headers.iter().enumerate() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                problem(
                    &format!("key.headers[{i}]"),
                    format!("{name:?} is not a header name"),
                );
            }
        }
        if !self.status_header.is_empty()
            && http::HeaderName::from_bytes(self.status_header.as_bytes()).is_err()
        {
            problem(
                "status_header",
                format!("{:?} is not a header name", self.status_header),
            );
        }
        errors
    }

    /// `max_entry_bytes` with its default filled in.
    pub fn max_entry_bytes(&self) -> u64 {
        self.max_entry_bytes
            .unwrap_or_else(|| self.max_bytes.min(1024 * 1024))
    }
}

fn default_max_body_bytes() -> u64 {
    64 * 1024
}

fn default_methods() -> Vec<String> {
    vec!["GET".to_string()]
}

fn default_collapse_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_status_header() -> String {
    "x-remora-cache".to_string()
}
