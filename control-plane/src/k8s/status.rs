//! Status, as Gateway API users expect it, written by the leader only:
//!
//! - `HTTPRoute` / `GRPCRoute`: one `status.parents[]` entry per Service
//!   parent, with `controllerName: remora.dev/mesh` and the conditions
//!   `Accepted` and `ResolvedRefs`; other controllers' entries are kept.
//! - `TrafficPolicy` / `AuthorizationPolicy`: `status.conditions`
//!   `Accepted`, with the field path of what is wrong when it is not.
//!
//! A status that would not change is not written (a write is a watch
//! event, which would rebuild and come back here), and a condition keeps
//! its `lastTransitionTime` while its status stays.

use serde_json::{Value, json};

use super::{ObjectRef, Verdict};

/// The controller name in HTTPRoute and GRPCRoute parent statuses.
pub const CONTROLLER_NAME: &str = "remora.dev/mesh";

/// One condition, in `metav1.Condition`'s shape.
fn condition(
    kind: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    previous: &[Value],
) -> Value {
    let status = if ok { "True" } else { "False" };
    let before = previous.iter().find(|c| c["type"] == kind);
    let transition = match before {
        Some(c) if c["status"] == status => c["lastTransitionTime"].clone(),
        _ => Value::String(
            k8s_openapi::jiff::Timestamp::now()
                .round(k8s_openapi::jiff::Unit::Second)
                .map(|t| t.to_string())
                .unwrap_or_default(),
        ),
    };
    let mut condition = json!({
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    });
    if let Some(generation) = generation {
        condition["observedGeneration"] = generation.into();
    }
    condition
}

/// The kinds whose status Remora writes.
pub const HAS_STATUS: [&str; 4] = [
    "TrafficPolicy",
    "AuthorizationPolicy",
    "HTTPRoute",
    "GRPCRoute",
];

/// The status `object` should have for `verdict`, or `None` when it has it
/// already (or is not a kind Remora writes status on).
pub fn desired(object: &ObjectRef, verdict: &Verdict, current: &Value) -> Option<Value> {
    let generation = current["metadata"]["generation"].as_i64();
    let (accepted, reason, message) = match verdict {
        Verdict::Accepted => (true, "Accepted", "accepted by the Remora control plane"),
        Verdict::Rejected { reason, message } => (false, *reason, message.as_str()),
    };
    let status = &current["status"];
    let desired = match object.kind {
        "TrafficPolicy" | "AuthorizationPolicy" => {
            let previous = status["conditions"].as_array().cloned().unwrap_or_default();
            json!({"conditions": [condition("Accepted", accepted, reason, message, generation, &previous)]})
        }
        "HTTPRoute" | "GRPCRoute" => {
            let previous_parents = status["parents"].as_array().cloned().unwrap_or_default();
            let mut parents: Vec<Value> = previous_parents
                .iter()
                .filter(|p| p["controllerName"] != CONTROLLER_NAME)
                .cloned()
                .collect();
            let refs_resolved = !matches!(reason, "BackendNotFound" | "InvalidKind");
            for parent in current["spec"]["parentRefs"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let service = parent["kind"].as_str().unwrap_or("Service") == "Service"
                    && parent["group"].as_str().unwrap_or("").is_empty();
                if !service {
                    continue;
                }
                let previous = previous_parents
                    .iter()
                    .find(|p| p["controllerName"] == CONTROLLER_NAME && p["parentRef"] == *parent)
                    .and_then(|p| p["conditions"].as_array().cloned())
                    .unwrap_or_default();
                let accepted_reason = match (accepted, reason) {
                    (true, _) => "Accepted",
                    (false, "Invalid") => "UnsupportedValue",
                    (false, other) => other,
                };
                let resolved_reason = if refs_resolved {
                    "ResolvedRefs"
                } else {
                    reason
                };
                parents.push(json!({
                    "parentRef": parent,
                    "controllerName": CONTROLLER_NAME,
                    "conditions": [
                        condition("Accepted", accepted, accepted_reason, message, generation, &previous),
                        condition("ResolvedRefs", refs_resolved, resolved_reason,
                            if refs_resolved { "every backend resolved" } else { message },
                            generation, &previous),
                    ],
                }));
            }
            json!({"parents": parents})
        }
        _ => return None,
    };
    let unchanged = desired
        .as_object()
        .is_some_and(|fields| fields.iter().all(|(field, value)| status[field] == *value));
    (!unchanged).then_some(desired)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(status: Value) -> Value {
        json!({"metadata": {"generation": 3},
               "spec": {"parentRefs": [{"kind": "Service", "name": "reviews", "port": 9080},
                                       {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public"}]},
               "status": status})
    }

    fn object(kind: &'static str) -> ObjectRef {
        ObjectRef {
            kind,
            namespace: "shop".into(),
            name: "x".into(),
        }
    }

    #[test]
    fn a_route_gets_one_parent_status_per_service_parent_and_keeps_the_others() {
        let gateway = json!({"parentRef": {"name": "public"}, "controllerName": "example.com/gateway",
                             "conditions": []});
        let current = route(json!({"parents": [gateway.clone()]}));
        let status = desired(&object("HTTPRoute"), &Verdict::Accepted, &current).unwrap();
        let parents = status["parents"].as_array().unwrap();
        assert_eq!(parents.len(), 2);
        assert_eq!(parents[0], gateway);
        assert_eq!(parents[1]["controllerName"], CONTROLLER_NAME);
        assert_eq!(parents[1]["parentRef"]["name"], "reviews");
        let conditions = parents[1]["conditions"].as_array().unwrap();
        assert_eq!(conditions[0]["type"], "Accepted");
        assert_eq!(conditions[0]["status"], "True");
        assert_eq!(conditions[0]["observedGeneration"], 3);
        assert_eq!(conditions[1]["type"], "ResolvedRefs");
        assert_eq!(conditions[1]["status"], "True");

        // Written back, the same verdict changes nothing: no write.
        let current = route(status);
        assert_eq!(
            desired(&object("HTTPRoute"), &Verdict::Accepted, &current),
            None
        );

        let missing = Verdict::Rejected {
            reason: "BackendNotFound",
            message: "spec.rules[0].backendRefs[0].name: no Service shop/ratings".into(),
        };
        let status = desired(&object("HTTPRoute"), &missing, &current).unwrap();
        let conditions = &status["parents"][1]["conditions"];
        assert_eq!(conditions[0]["status"], "False");
        assert_eq!(conditions[1]["status"], "False");
        assert_eq!(conditions[1]["reason"], "BackendNotFound");
        assert_eq!(
            conditions[1]["message"],
            "spec.rules[0].backendRefs[0].name: no Service shop/ratings"
        );
    }

    #[test]
    fn a_policy_gets_accepted_with_the_field_path_when_invalid() {
        let invalid = Verdict::Rejected {
            reason: "Invalid",
            message: "spec.load_balancer.hash_on: only for ring_hash and maglev, not round_robin"
                .into(),
        };
        let current = json!({"metadata": {"generation": 1}, "spec": {}});
        let status = desired(&object("TrafficPolicy"), &invalid, &current).unwrap();
        let accepted = &status["conditions"][0];
        assert_eq!(accepted["type"], "Accepted");
        assert_eq!(accepted["status"], "False");
        assert_eq!(accepted["reason"], "Invalid");
        assert!(
            accepted["message"]
                .as_str()
                .unwrap()
                .starts_with("spec.load_balancer.hash_on")
        );
        assert!(desired(&object("Service"), &invalid, &current).is_none());
    }
}
