//! Route rules in the shape of the Gateway API's HTTPRoute and GRPCRoute
//! (`gateway.networking.k8s.io/v1`), as GAMMA uses them: the parent is a
//! Service. Field names are the Gateway API's, in camelCase, so a rule
//! reads the same in a mesh file and in a Kubernetes manifest.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::scalar;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParentRef {
    /// The Service whose traffic the route takes over.
    pub name: String,
    /// Default: the route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Only `Service` (GAMMA) is supported.
    #[serde(default = "default_service_kind")]
    pub kind: String,
    /// The kind's API group: `""` (core) for a Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Must be the service's port when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Not for a Service parent, which is chosen by `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

fn default_service_kind() -> String {
    "Service".to_string()
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteRule {
    /// Any one matching selects the rule; none matches every request.
    #[serde(default)]
    pub matches: Vec<RouteMatch>,
    #[serde(default)]
    pub filters: Vec<RouteFilter>,
    /// Where matching requests go; none means the parent service itself.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
}

/// HTTPRoute: `path`, `headers`, `queryParams`, `method`. GRPCRoute:
/// `method: {service, method}` and `headers`. Every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<ValueMatch>,
    /// HTTPRoute: an HTTP method (`GET`); GRPCRoute: `{service, method}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<MethodMatch>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathMatch {
    #[serde(rename = "type", default = "default_path_type")]
    pub kind: PathMatchType,
    #[serde(default = "default_path")]
    pub value: String,
}

fn default_path_type() -> PathMatchType {
    PathMatchType::PathPrefix
}

fn default_path() -> String {
    "/".to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum PathMatchType {
    Exact,
    /// Element-wise: `/api` matches `/api` and `/api/x`, not `/apis`.
    PathPrefix,
    /// Matches the whole path (RE2 syntax, anchored).
    RegularExpression,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ValueMatch {
    #[serde(rename = "type", default = "default_value_type")]
    pub kind: ValueMatchType,
    pub name: String,
    pub value: String,
}

fn default_value_type() -> ValueMatchType {
    ValueMatchType::Exact
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum ValueMatchType {
    Exact,
    RegularExpression,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MethodMatch {
    Http(String),
    Grpc(GrpcMethod),
}

impl<'de> Deserialize<'de> for MethodMatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        scalar::string_or_map(
            d,
            "an HTTP method such as GET, or (GRPCRoute) {service, method}",
            |text| Ok(MethodMatch::Http(text.to_string())),
            MethodMatch::Grpc,
        )
    }
}

/// GRPCRoute method match: `service` alone takes all its methods.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcMethod {
    #[serde(rename = "type", default = "default_value_type")]
    pub kind: ValueMatchType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// `RequestHeaderModifier` and `ResponseHeaderModifier`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteFilter {
    #[serde(rename = "type")]
    pub kind: FilterType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum FilterType {
    RequestHeaderModifier,
    ResponseHeaderModifier,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderModifier {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HeaderValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValue {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendRef {
    /// A service of the mesh.
    pub name: String,
    /// Only `Service` is supported.
    #[serde(default = "default_service_kind")]
    pub kind: String,
    /// The kind's API group: `""` (core) for a Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Must be the service's port when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// `request`: the whole exchange; `backendRequest`: each try.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Timeouts {
    #[schemars(with = "Option<scalar::DurationText>")]
    #[serde(
        default,
        with = "scalar::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub request: Option<Duration>,
    #[schemars(with = "Option<scalar::DurationText>")]
    #[serde(
        default,
        with = "scalar::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_request: Option<Duration>,
}

/// The Gateway API's HTTPRoute retry (GEP-1731): `attempts` retries on
/// `codes` (and on connection failures and resets), `backoff` between them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Retry {
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// HTTP statuses (HTTPRoute); for GRPCRoute, retries follow gRPC
    /// `unavailable`, `cancelled`, `resource-exhausted` and connection failures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<u16>,
    #[schemars(with = "Option<scalar::DurationText>")]
    #[serde(
        default,
        with = "scalar::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub backoff: Option<Duration>,
}

fn default_attempts() -> u32 {
    2
}

pub fn default_weight() -> u32 {
    1
}
