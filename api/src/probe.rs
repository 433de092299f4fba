//! The application's HTTP probes, in Kubernetes' probe shape: what the
//! sidecar injector takes from a pod's containers and the proxy answers on
//! its admin port at `/app-health/CONTAINER/livez|readyz|startupz`.

use serde::{Deserialize, Serialize};

/// One application probe, as a Kubernetes container's `httpGet` probe.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AppProbeConfig {
    pub http_get: HttpGetProbeConfig,
    /// Kubernetes' default, 1 s.
    #[serde(default = "default_probe_timeout")]
    pub timeout_seconds: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpGetProbeConfig {
    #[serde(default = "default_probe_path")]
    pub path: String,
    pub port: u16,
    /// Default `127.0.0.1`: the application in the proxy's pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `HTTP` or `HTTPS` (the certificate is not verified, as the kubelet does not).
    #[serde(default = "default_probe_scheme")]
    pub scheme: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<ProbeHeader>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeHeader {
    pub name: String,
    pub value: String,
}

fn default_probe_timeout() -> u32 {
    1
}

fn default_probe_path() -> String {
    "/".to_string()
}

fn default_probe_scheme() -> String {
    "HTTP".to_string()
}
