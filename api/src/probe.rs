//! The application's probes, in Kubernetes' probe shape: what the sidecar
//! injector takes from a pod's containers (`httpGet`, `tcpSocket` and
//! `grpc` probes) and the proxy answers on its admin port at
//! `/app-health/CONTAINER/livez|readyz|startupz`.

use serde::{Deserialize, Serialize};

/// One application probe, as a Kubernetes container's probe: exactly one
/// of `httpGet`, `tcpSocket` and `grpc` ([`AppProbeConfig::handler`]).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AppProbeConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetProbeConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketProbeConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcProbeConfig>,
    /// Kubernetes' default, 1 s.
    #[serde(default = "default_probe_timeout")]
    pub timeout_seconds: u32,
}

/// What a probe does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ProbeHandler<'a> {
    HttpGet(&'a HttpGetProbeConfig),
    TcpSocket(&'a TcpSocketProbeConfig),
    Grpc(&'a GrpcProbeConfig),
}

impl AppProbeConfig {
    /// Its one handler; an error when it has none or several.
    pub fn handler(&self) -> Result<ProbeHandler<'_>, String> {
        match (&self.http_get, &self.tcp_socket, &self.grpc) {
            (Some(get), None, None) => Ok(ProbeHandler::HttpGet(get)),
            (None, Some(tcp), None) => Ok(ProbeHandler::TcpSocket(tcp)),
            (None, None, Some(grpc)) => Ok(ProbeHandler::Grpc(grpc)),
            (None, None, None) => Err("needs one of httpGet, tcpSocket and grpc".into()),
            _ => Err("takes only one of httpGet, tcpSocket and grpc".into()),
        }
    }
}

/// `tcpSocket`: the application's port accepts a connection.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpSocketProbeConfig {
    pub port: u16,
    /// Default `127.0.0.1`: the application in the proxy's pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// `grpc`: the application's `grpc.health.v1.Health/Check` answers
/// `SERVING` for `service` (plaintext HTTP/2, as the kubelet asks).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcProbeConfig {
    pub port: u16,
    /// The service name asked about; none: the server as a whole (`""`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
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
