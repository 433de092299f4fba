//! The sidecar injector over real HTTPS: `AdmissionReview` fixtures of
//! real workloads (`tests/fixtures/admission/`), the JSON patch applied and
//! the patched pod validated with `kubernetes-validate` for every supported
//! Kubernetes version; the serving certificate shared by two replicas
//! through a Secret and published in the webhook configuration's
//! `caBundle` (the fake API server); the injected containers' command lines
//! and environments accepted by the real remora-proxy.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use remora_control_plane::inject::server::{InjectCounts, Webhook, WebhookOptions};
use remora_control_plane::inject::tls::{CertSource, KubernetesCerts};
use remora_control_plane::inject::{InjectConfig, patch};
use remora_control_plane::k8s::fake::{self, FakeApiServer};
use serde_json::{Value, json};

const CONFIG: &str = "
image: ghcr.io/remora/proxy:0.1.0
init_image: ghcr.io/remora/init:0.1.0
xds_address: remora-control-plane.remora-system.svc:15010
ca_address: remora-control-plane.remora-system.svc:15010
exclude_outbound_cidrs: [169.254.169.254/32]
";

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/admission")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

async fn webhook(certs: CertSource) -> (Webhook, Arc<InjectCounts>) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let counts = Arc::new(InjectCounts::default());
    let options = WebhookOptions {
        address: "127.0.0.1:0".parse().unwrap(),
        config: Arc::new(InjectConfig::parse(CONFIG).unwrap()),
        certs,
    };
    (
        Webhook::start(options, counts.clone()).await.unwrap(),
        counts,
    )
}

/// POSTs `body` over HTTPS, trusting only `ca_pem`, as the API server
/// does with the `caBundle`.
async fn post(
    webhook: &Webhook,
    ca_pem: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>), String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(webhook.address)
        .await
        .map_err(|e| e.to_string())?;
    let tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = http::Request::post(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    Ok((
        status,
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    ))
}

/// The review's response; and the pod with the patch applied, when there
/// is one.
async fn review(webhook: &Webhook, path: &str, body: Vec<u8>) -> (Value, Option<Value>) {
    let ca = webhook.ca_pem.clone().unwrap();
    let sent: Option<Value> = serde_json::from_slice(&body).ok();
    let (status, answer) = post(webhook, &ca, path, body).await.unwrap();
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&answer).expect("an AdmissionReview, always");
    assert_eq!(
        (answer["apiVersion"].as_str(), answer["kind"].as_str()),
        (Some("admission.k8s.io/v1"), Some("AdmissionReview"))
    );
    let response = answer["response"].clone();
    let pod = sent
        .as_ref()
        .map_or(Value::Null, |review| review["request"]["object"].clone());
    let patched = patch::patched(&pod, &response).unwrap();
    (response, patched)
}

fn containers<'a>(pod: &'a Value, field: &str) -> Vec<&'a str> {
    pod["spec"][field]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn real_workloads_are_injected_and_stay_valid_pods() {
    let (webhook, counts) = webhook(CertSource::Generated {
        dns_names: vec!["localhost".into()],
        kubernetes: None,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut patched_files: Vec<PathBuf> = Vec::new();
    let mut keep = |name: &str, pod: &Value| {
        let path = dir.path().join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(pod).unwrap()).unwrap();
        patched_files.push(path);
    };

    // A Deployment's pod (as the ReplicaSet controller creates it).
    let (response, pod) = review(&webhook, "/inject", fixture("deployment-pod.json")).await;
    assert_eq!(response["uid"], "a1b2c3d4-0001-4000-8000-000000000001");
    assert_eq!(response["allowed"], true);
    let pod = pod.expect("injected");
    assert_eq!(
        containers(&pod, "initContainers"),
        ["remora-init", "remora-proxy"]
    );
    assert_eq!(containers(&pod, "containers"), ["reviews"]);
    let web = &pod["spec"]["containers"][0];
    assert_eq!(
        web["readinessProbe"]["httpGet"],
        json!({"path": "/app-health/reviews/readyz", "port": 15000, "scheme": "HTTP"})
    );
    assert_eq!(
        web["readinessProbe"]["initialDelaySeconds"], 5,
        "the probe's timing is kept"
    );
    assert_eq!(
        web["livenessProbe"]["httpGet"]["path"],
        "/app-health/reviews/livez"
    );
    let init = &pod["spec"]["initContainers"][0];
    assert!(
        init["args"]
            .as_array()
            .unwrap()
            .contains(&json!("169.254.169.254/32")),
        "{init}"
    );
    // The original volumes are kept; the token volume is added.
    let volumes: Vec<&str> = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(volumes, ["tmp", "kube-api-access-x7k2p", "remora-token"]);
    keep("deployment-pod.json", &pod);

    // The same pod again (a retried admission): unchanged.
    let mut again: Value = serde_json::from_slice(&fixture("deployment-pod.json")).unwrap();
    again["request"]["object"] = pod.clone();
    let (response, repatched) =
        review(&webhook, "/inject", serde_json::to_vec(&again).unwrap()).await;
    assert_eq!(
        (response["allowed"].clone(), repatched),
        (json!(true), None)
    );

    // A Job's pod: its own init container runs after the sidecar started,
    // and the Job completes when `report` exits (the sidecar is native).
    let (_, pod) = review(&webhook, "/inject", fixture("job-pod.json")).await;
    let pod = pod.expect("injected");
    assert_eq!(
        containers(&pod, "initContainers"),
        ["remora-init", "remora-proxy", "migrate"]
    );
    assert_eq!(pod["spec"]["initContainers"][1]["restartPolicy"], "Always");
    assert_eq!(
        pod["spec"]["initContainers"][1]["resources"]["requests"]["cpu"],
        "20m"
    );
    let env = &pod["spec"]["initContainers"][1]["env"];
    let drain = env
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "REMORA_DRAIN_TIMEOUT")
        .unwrap();
    assert_eq!(
        drain["value"], "5000ms",
        "5 s fits in the pod's 10 s grace period"
    );
    keep("job-pod.json", &pod);

    // HTTP, TCP and gRPC probes rewritten (a named HTTPS port with headers
    // too); exec probes left alone.
    let (_, pod) = review(&webhook, "/inject", fixture("probes-pod.json")).await;
    let pod = pod.expect("injected");
    let web = &pod["spec"]["containers"][0];
    assert_eq!(
        web["startupProbe"]["httpGet"]["path"],
        "/app-health/web/startupz"
    );
    assert_eq!(web["startupProbe"]["failureThreshold"], 30);
    assert_eq!(
        web["livenessProbe"],
        json!({"httpGet": {"path": "/app-health/web/livez", "port": 15000, "scheme": "HTTP"}, "periodSeconds": 20})
    );
    let grpc = &pod["spec"]["containers"][1];
    assert_eq!(
        grpc["readinessProbe"],
        json!({"httpGet": {"path": "/app-health/grpc/readyz", "port": 15000, "scheme": "HTTP"}})
    );
    let sent: Value = serde_json::from_slice(&fixture("probes-pod.json")).unwrap();
    assert_eq!(
        grpc["livenessProbe"],
        sent["request"]["object"]["spec"]["containers"][1]["livenessProbe"]
    );
    let probes = pod["spec"]["initContainers"][1]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "REMORA_APP_PROBES")
        .unwrap();
    let probes: Value = serde_json::from_str(probes["value"].as_str().unwrap()).unwrap();
    assert_eq!(
        probes["/app-health/web/startupz"],
        json!({"httpGet": {"path": "/started", "port": 8443, "scheme": "HTTPS", "httpHeaders": [{"name": "X-Probe", "value": "startup"}]}, "timeoutSeconds": 1})
    );
    assert_eq!(
        probes["/app-health/web/livez"],
        json!({"tcpSocket": {"port": 8080}, "timeoutSeconds": 1})
    );
    assert_eq!(
        probes["/app-health/grpc/readyz"],
        json!({"grpc": {"port": 50051}, "timeoutSeconds": 1})
    );
    keep("probes-pod.json", &pod);

    // Not injected, allowed unchanged.
    for (name, path) in [
        ("host-network.json", "/inject"),
        ("opted-out.json", "/inject"),
        ("kube-system.json", "/inject"),
        ("deployment-pod.json", "/inject/opt-in"),
    ] {
        let (response, pod) = review(&webhook, path, fixture(name)).await;
        assert_eq!(response["allowed"], true, "{name}: {response}");
        assert!(pod.is_none(), "{name} via {path} must not be patched");
    }

    // Refused, with a message, never a crash.
    for (name, says) in [
        ("not-a-pod.json", "expected a core/v1 Pod"),
        ("garbage.bin", "not JSON"),
    ] {
        let (response, _) = review(&webhook, "/inject", fixture(name)).await;
        assert_eq!(response["allowed"], false, "{name}");
        let message = response["status"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{name}: {message}");
    }
    let (status, _) = post(
        &webhook,
        webhook.ca_pem.as_ref().unwrap(),
        "/nowhere",
        b"{}".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(status, 404);
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(
        (
            counts.injected.load(Relaxed),
            counts.skipped.load(Relaxed),
            counts.denied.load(Relaxed)
        ),
        (3, 5, 2)
    );

    // What the API server would store is a valid Pod for every version.
    support::kubernetes_validate(&patched_files);
}

#[tokio::test]
async fn replicas_share_one_certificate_and_publish_its_ca_bundle() {
    let api = FakeApiServer::start(&[fake::SECRETS, fake::MUTATING_WEBHOOKS]).await;
    let hook = |name: &str| {
        json!({
            "name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "clientConfig": {"service": {"name": "remora-webhook", "namespace": "remora-system", "path": "/inject"}},
        })
    };
    api.apply(
        fake::MUTATING_WEBHOOKS,
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "remora-sidecar-injector"},
            "webhooks": [hook("namespace.inject.remora.dev"), hook("object.inject.remora.dev")],
        }),
    );
    let certs = || CertSource::Generated {
        dns_names: vec![
            "localhost".into(),
            "remora-webhook.remora-system.svc".into(),
        ],
        kubernetes: Some(KubernetesCerts {
            client: api.client(),
            namespace: "remora-system".into(),
            secret: "remora-webhook-tls".into(),
            webhook_configuration: "remora-sidecar-injector".into(),
        }),
    };
    let (first, _) = webhook(certs()).await;
    let (second, _) = webhook(certs()).await;
    assert_eq!(
        first.ca_pem, second.ca_pem,
        "the second replica takes the first one's certificate"
    );
    let secret = api
        .get(fake::SECRETS, "remora-system", "remora-webhook-tls")
        .expect("the shared Secret");
    assert_eq!(secret["type"], "kubernetes.io/tls");

    // The caBundle is written (by either replica) and works for both.
    // Every webhook's caBundle, as stored.
    let bundles = || -> Vec<Value> {
        api.get(
            fake::MUTATING_WEBHOOKS,
            "default",
            "remora-sidecar-injector",
        )
        .unwrap()["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["clientConfig"]["caBundle"].clone())
            .collect()
    };
    let mut bundle = None;
    support::eventually("the caBundle is written", 10, || {
        let bundles = bundles();
        bundle = bundles[0].as_str().map(str::to_string);
        let ok = bundles.iter().all(|b| b.is_string() && *b == bundles[0]);
        async move { ok }
    })
    .await;
    let ca = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(bundle.unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(Some(&ca), first.ca_pem.as_ref());

    // A `helm upgrade` re-applies the configuration without the bundle:
    // it is written back at once (the watch), not at the next 30 s check.
    let mut reset = api
        .get(
            fake::MUTATING_WEBHOOKS,
            "default",
            "remora-sidecar-injector",
        )
        .unwrap();
    for webhook in reset["webhooks"].as_array_mut().unwrap() {
        webhook["clientConfig"]
            .as_object_mut()
            .unwrap()
            .remove("caBundle");
    }
    api.apply(fake::MUTATING_WEBHOOKS, reset);
    let written_back = std::time::Instant::now();
    support::eventually("the caBundle is written back", 10, || {
        let ok = bundles().iter().all(Value::is_string);
        async move { ok }
    })
    .await;
    eprintln!("caBundle written back in {:?}", written_back.elapsed());
    for replica in [&first, &second] {
        let (status, _) = post(replica, &ca, "/inject", fixture("deployment-pod.json"))
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    // A client that trusts another CA is refused the handshake.
    let other =
        remora_control_plane::inject::tls::ServingCert::generate(&["localhost".into()]).unwrap();
    let refused = post(
        &first,
        &other.ca_pem,
        "/inject",
        fixture("deployment-pod.json"),
    )
    .await;
    assert!(refused.is_err_and(|e| e.starts_with("TLS")));
}

/// `remora-control-plane inject`: a pod as the webhook would admit it.
#[test]
fn the_inject_command_prints_the_injected_pod() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("inject.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let review: Value = serde_json::from_slice(&fixture("probes-pod.json")).unwrap();
    let pod = dir.path().join("pod.json");
    std::fs::write(
        &pod,
        serde_json::to_vec(&review["request"]["object"]).unwrap(),
    )
    .unwrap();
    let inject = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_remora-control-plane"))
            .args(["inject", "--inject-config"])
            .arg(&config)
            .arg("-f")
            .arg(&pod)
            .output()
            .unwrap()
    };
    let output = inject();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let injected: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        containers(&injected, "initContainers"),
        ["remora-init", "remora-proxy"]
    );
    assert_eq!(
        injected["metadata"]["annotations"]["remora.dev/status"],
        "injected"
    );

    // A bad annotation is refused with its name; exit 1.
    let mut bad = review["request"]["object"].clone();
    bad["metadata"]["annotations"] = json!({"remora.dev/exclude-outbound-ports": "http"});
    std::fs::write(&pod, serde_json::to_vec(&bad).unwrap()).unwrap();
    let output = inject();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "metadata.annotations[remora.dev/exclude-outbound-ports]: \"http\" is not a port"
        ),
        "{stderr}"
    );
}

/// A container's environment as the kubelet would set it for pod `web-0`
/// in `shop` (service account `web`, IP 10.1.0.10).
fn container_env(container: &Value) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|var| {
            let name = var["name"].as_str().unwrap().to_string();
            let value = match (&var["value"], &var["valueFrom"]["fieldRef"]["fieldPath"]) {
                (Value::String(value), _) => value.clone(),
                (_, Value::String(field)) => match field.as_str() {
                    "metadata.name" => "web-0".into(),
                    "metadata.namespace" => "shop".into(),
                    "status.podIP" => "10.1.0.10".into(),
                    "spec.serviceAccountName" => "web".into(),
                    other => panic!("{name}: no test value for fieldRef {other}"),
                },
                _ => panic!("{name}: neither a value nor a fieldRef: {var}"),
            };
            (name, value)
        })
        .collect()
}

/// `$(NAME)` in an argument, replaced by the environment's value, as the
/// kubelet does.
fn expand(arg: &str, env: &[(String, String)]) -> String {
    env.iter().fold(arg.to_string(), |arg, (name, value)| {
        arg.replace(&format!("$({name})"), value)
    })
}

/// The containers the injector adds are ones remora-proxy accepts: the
/// sidecar's arguments and environment (`--check`) and the capture init
/// container's (`init --dry-run`), for real workloads and for every
/// annotation that changes them. A flag or variable renamed on one side
/// only would fail here, not in a cluster.
#[test]
fn the_injected_command_lines_are_ones_the_proxy_accepts() {
    let config = InjectConfig::parse(CONFIG).unwrap();
    let mut pods = Vec::new();
    for name in ["deployment-pod.json", "probes-pod.json", "job-pod.json"] {
        let review: Value = serde_json::from_slice(&fixture(name)).unwrap();
        pods.push((name.to_string(), review["request"]["object"].clone()));
    }
    let mut annotated = pods[0].1.clone();
    annotated["metadata"]["annotations"] = json!({
        "remora.dev/exclude-inbound-ports": "9090,9091",
        "remora.dev/exclude-outbound-ports": "5432",
        "remora.dev/exclude-outbound-cidrs": "10.0.0.0/8,fd00::/8",
        "remora.dev/log-level": "debug",
        "remora.dev/drain-timeout": "20s",
    });
    pods.push(("annotated".into(), annotated));
    let run = |what: &str, container: &Value, extra: &str| {
        let env = container_env(container);
        let args: Vec<String> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| expand(a.as_str().unwrap(), &env))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let output = std::process::Command::new(support::remora_proxy())
            .args(&args)
            .arg(extra)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{what}: remora-proxy {args:?} {extra} refused:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    };
    for (name, pod) in pods {
        let (injected, outcome) = remora_control_plane::inject::inject_pod(&pod, &config);
        assert!(
            matches!(outcome, remora_control_plane::inject::Outcome::Injected(_)),
            "{name}: {outcome:?}"
        );
        let init = &injected["spec"]["initContainers"];
        let find = |wanted: &str| {
            init.as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == wanted)
                .unwrap_or_else(|| panic!("{name}: no {wanted} in {init}"))
        };
        run(
            &format!("{name} remora-init"),
            find("remora-init"),
            "--dry-run",
        );
        run(
            &format!("{name} remora-proxy"),
            find("remora-proxy"),
            "--check",
        );
    }
}
