//! The Helm chart `charts/remora`, with the real helm (v4) and
//! `kubernetes-validate` (no API server runs here): `helm lint --strict`,
//! `helm template` with the default values and several value sets, every
//! rendered object valid for every supported Kubernetes version (the CRDs
//! included), bad values rejected by `values.schema.json` with the value's
//! path, and the rendered pieces the control plane reads (the injector
//! config, the webhook paths) accepted by the control plane's own code.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/remora")
}

fn helm(args: &[&str], values: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, values).unwrap();
    Command::new(support::k8s_tools().join("helm"))
        .args(args)
        .arg(chart())
        .arg("--values")
        .arg(&file)
        .env("HELM_CACHE_HOME", dir.path().join("cache"))
        .env("HELM_CONFIG_HOME", dir.path().join("config"))
        .env("HELM_DATA_HOME", dir.path().join("data"))
        .output()
        .expect("running helm")
}

/// `helm template` with `values`: every object.
fn render(values: &str) -> Vec<Value> {
    let output = helm(
        &[
            "template",
            "mesh",
            "--namespace",
            "remora-system",
            "--include-crds",
        ],
        values,
    );
    assert!(
        output.status.success(),
        "helm template with\n{values}\nfailed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap()
        .into_iter()
        .filter(|o| !o.is_null())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

/// Validates every object but the Prometheus Operator's (not a core
/// API; checked by hand below).
fn validate(objects: &[Value]) {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        if object["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("monitoring.coreos.com/"))
        {
            continue;
        }
        let path = dir.path().join(format!("{i:02}.json"));
        std::fs::write(&path, serde_json::to_vec(object).unwrap()).unwrap();
        files.push(path);
    }
    support::kubernetes_validate(&files);
}

fn args(deployment: &Value) -> Vec<String> {
    serde_json::from_value(deployment["spec"]["template"]["spec"]["containers"][0]["args"].clone())
        .unwrap()
}

#[test]
fn the_chart_lints_and_renders_valid_objects_with_the_defaults() {
    let output = helm(&["lint", "--strict"], "");
    assert!(
        output.status.success(),
        "helm lint --strict:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let objects = render("");
    validate(&objects);

    // The CRDs are exactly what the control plane generates.
    let crds: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .collect();
    let generated: Vec<Value> = serde_saphyr::from_multiple(&remora_api::crd::crds_yaml()).unwrap();
    assert_eq!(crds.len(), generated.len());
    for crd in generated {
        assert!(crds.contains(&&crd), "{} differs", crd["metadata"]["name"]);
    }

    // The control plane: 2 replicas apart, non-root, read-only, leader
    // election in its namespace, a PDB.
    let deployment = find(&objects, "Deployment", "mesh-remora").expect("the Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(pod["affinity"]["podAntiAffinity"].is_object());
    assert!(find(&objects, "PodDisruptionBudget", "mesh-remora").is_some());
    let args = args(deployment);
    for arg in [
        "--kubernetes",
        "--ca-secret=remora-ca",
        "--trust-domain=cluster.local",
        "--webhook-address=0.0.0.0:15017",
        "--webhook-configuration=mesh-remora-sidecar-injector",
        "--webhook-dns-names=mesh-remora-webhook.remora-system.svc,mesh-remora-webhook.remora-system.svc.cluster.local",
    ] {
        assert!(args.iter().any(|a| a == arg), "{arg} in {args:?}");
    }

    // The injector's config is one the control plane accepts, and points
    // proxies at the control plane's Service.
    let config = find(&objects, "ConfigMap", "mesh-remora-injector").unwrap();
    let config = remora_control_plane::inject::InjectConfig::parse(
        config["data"]["inject.yaml"].as_str().unwrap(),
    )
    .unwrap_or_else(|e| panic!("the chart's inject.yaml is invalid:\n{e}"));
    assert_eq!(config.xds_address, "mesh-remora.remora-system.svc:15010");
    assert_eq!(config.image, "ghcr.io/remora-mesh/remora-proxy:0.1.0");
    assert_eq!(
        config.init_image.as_deref(),
        Some("ghcr.io/remora-mesh/remora-init:0.1.0")
    );
    let service = find(&objects, "Service", "mesh-remora").unwrap();
    let ports: Vec<i64> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_i64().unwrap())
        .collect();
    assert_eq!(ports, [15010, 15014]);

    // The webhook: the server's two paths, sideEffects None, short timeout,
    // the namespace label, never kube-system.
    let webhooks = find(
        &objects,
        "MutatingWebhookConfiguration",
        "mesh-remora-sidecar-injector",
    )
    .unwrap()["webhooks"]
        .as_array()
        .unwrap()
        .clone();
    let paths: Vec<&str> = webhooks
        .iter()
        .map(|w| w["clientConfig"]["service"]["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/inject", "/inject/opt-in"]);
    for webhook in &webhooks {
        assert_eq!(webhook["sideEffects"], "None");
        assert_eq!(
            webhook["clientConfig"]["service"]["name"],
            "mesh-remora-webhook"
        );
        assert!(webhook["timeoutSeconds"].as_i64().unwrap() <= 10);
        let selector = webhook["namespaceSelector"].to_string();
        assert!(selector.contains("kube-system"), "{selector}");
    }
    assert_eq!(webhooks[0]["failurePolicy"], "Fail");
    assert_eq!(webhooks[1]["failurePolicy"], "Ignore");

    // RBAC: reads, status, the one webhook configuration; no wildcards.
    let role = find(&objects, "ClusterRole", "mesh-remora").unwrap();
    let rules = role["rules"].to_string();
    assert!(!rules.contains('*'), "no wildcard: {rules}");
    assert!(rules.contains("httproutes/status") && rules.contains("tokenreviews"));
    let webhook_rule = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resources"][0] == "mutatingwebhookconfigurations")
        .unwrap();
    assert_eq!(
        webhook_rule["resourceNames"],
        serde_json::json!(["mesh-remora-sidecar-injector"])
    );
}

#[test]
fn value_sets_render_valid_objects() {
    // One replica, no CA, no PDB.
    let objects = render("controlPlane: {replicas: 1}\nca: {enabled: false}\n");
    validate(&objects);
    assert!(find(&objects, "PodDisruptionBudget", "mesh-remora").is_none());
    let deployment = find(&objects, "Deployment", "mesh-remora").unwrap();
    assert!(
        !args(deployment)
            .iter()
            .any(|a| a.starts_with("--ca-secret"))
    );
    let config = find(&objects, "ConfigMap", "mesh-remora-injector").unwrap();
    let config = remora_control_plane::inject::InjectConfig::parse(
        config["data"]["inject.yaml"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(
        config.ca_address, None,
        "no CA: the sidecars get no identity"
    );

    // cert-manager's certificate, monitoring, the dashboard, opt-in by
    // label, the sidecar's settings.
    let objects = render(
        "
image: {registry: registry.local:5000/mesh, tag: dev-1, pullPolicy: Always}
injector: {tlsSecret: remora-webhook-cert, caInjectFrom: remora-system/remora-webhook, failurePolicy: Ignore, optInByAnnotation: false}
metrics:
  serviceMonitor: {enabled: true, labels: {release: prometheus}}
  grafanaDashboard: {enabled: true}
proxy:
  excludeOutboundCIDRs: [169.254.169.254/32]
  excludeInboundPorts: [22]
  resources: {requests: {cpu: 100m, memory: 64Mi}, limits: {cpu: 1, memory: 512Mi}}
controlPlane:
  tolerations: [{key: dedicated, operator: Equal, value: mesh, effect: NoSchedule}]
  nodeSelector: {kubernetes.io/os: linux}
",
    );
    validate(&objects);
    let deployment = find(&objects, "Deployment", "mesh-remora").unwrap();
    let args = args(deployment);
    assert!(args.contains(&"--webhook-cert=/etc/remora/webhook-tls/tls.crt".to_string()));
    assert!(!args.iter().any(|a| a.starts_with("--webhook-secret")));
    let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap();
    assert_eq!(image, "registry.local:5000/mesh/remora-control-plane:dev-1");
    let hooks = find(
        &objects,
        "MutatingWebhookConfiguration",
        "mesh-remora-sidecar-injector",
    )
    .unwrap();
    assert_eq!(
        hooks["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "remora-system/remora-webhook"
    );
    assert!(
        hooks["webhooks"][1]["objectSelector"]
            .to_string()
            .contains("\"In\"")
    );
    let monitor = objects
        .iter()
        .find(|o| o["kind"] == "PodMonitor")
        .expect("a PodMonitor");
    assert_eq!(
        monitor["spec"]["podMetricsEndpoints"][0]["port"],
        "remora-admin"
    );
    let service_monitor = objects
        .iter()
        .find(|o| o["kind"] == "ServiceMonitor")
        .unwrap();
    assert_eq!(
        service_monitor["metadata"]["labels"]["release"],
        "prometheus"
    );
    // The dashboard ConfigMap carries the dashboard the proxy's test checks.
    let dashboard = find(&objects, "ConfigMap", "mesh-remora-dashboard").unwrap();
    let json: Value =
        serde_json::from_str(dashboard["data"]["remora.json"].as_str().unwrap()).unwrap();
    assert_eq!(json["uid"], "remora-golden");
    let config = find(&objects, "ConfigMap", "mesh-remora-injector").unwrap();
    let config = remora_control_plane::inject::InjectConfig::parse(
        config["data"]["inject.yaml"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(config.exclude_inbound_ports, [22]);
    assert_eq!(config.image_pull_policy, "Always");

    // No injector at all: no webhook, no ConfigMap, no webhook RBAC.
    let objects = render("injector: {enabled: false}\n");
    validate(&objects);
    assert!(
        !objects
            .iter()
            .any(|o| o["kind"] == "MutatingWebhookConfiguration")
    );
    assert!(
        !serde_json::to_string(&objects)
            .unwrap()
            .contains("mutatingwebhookconfigurations")
    );
}

#[test]
fn bad_values_are_rejected_with_their_path() {
    for (values, says) in [
        ("controlPlane: {replicas: two}\n", "/controlPlane/replicas"),
        ("controlPlane: {replicas: 0}\n", "/controlPlane/replicas"),
        (
            "injector: {failurePolicy: Maybe}\n",
            "/injector/failurePolicy",
        ),
        ("proxy: {drainTimeout: soon}\n", "/proxy/drainTimeout"),
        ("proxy: {adminPort: 70000}\n", "/proxy/adminPort"),
        (
            "proxy: {resources: {requests: {cpu: lots}}}\n",
            "/proxy/resources/requests/cpu",
        ),
        (
            "proxy: {excludeOutboundCIDRs: [10.0.0.0]}\n",
            "/proxy/excludeOutboundCIDRs",
        ),
        ("image: {pullPolicy: Sometimes}\n", "/image/pullPolicy"),
        ("ca: {trustDomain: Prod.Example}\n", "/ca/trustDomain"),
        (
            "injector: {timeoutSeconds: 60}\n",
            "/injector/timeoutSeconds",
        ),
        ("controlPlan: {replicas: 2}\n", "controlPlan"),
    ] {
        let output = helm(&["template", "mesh"], values);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{values} must be rejected");
        assert!(
            stderr.contains("values don't meet the specifications of the schema"),
            "{values}: {stderr}"
        );
        // helm names the value by its JSON pointer (`/controlPlane/replicas`).
        assert!(stderr.contains(says), "{values}: {says} in {stderr}");
    }
}
