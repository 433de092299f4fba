//! The Kubernetes custom resources: `TrafficPolicy` and
//! `AuthorizationPolicy` (group `remora.dev`, version `v1alpha1`), whose
//! specs are the very types the proxy's YAML and the mesh file read
//! ([`TrafficPolicySpec`](crate::TrafficPolicySpec),
//! [`AuthorizationPolicyConfig`](crate::AuthorizationPolicyConfig)). Their
//! CustomResourceDefinitions are generated here, schemas included.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::authorization::AuthorizationPolicy;
pub use crate::policy::TrafficPolicy;

/// The API group of Remora's resources.
pub const GROUP: &str = "remora.dev";
/// Their version.
pub const VERSION: &str = "v1alpha1";

/// A policy's status: the `Accepted` condition, with the field path of
/// what is wrong when it is not (written by the control plane's leader).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Every CustomResourceDefinition, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![TrafficPolicy::crd(), AuthorizationPolicy::crd()]
}

/// [`crds`] as multi-document YAML: what `remora-control-plane crds`
/// prints and the Helm chart ships.
pub fn crds_yaml() -> String {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd).expect("a CRD serializes to YAML"));
    }
    out
}
