use serde_json::{Value, json};

use super::*;

fn config() -> InjectConfig {
    InjectConfig::parse(
        "image: remora/proxy:1.0\ninit_image: remora/init:1.0\nxds_address: remora.remora-system.svc:15010\nca_address: remora.remora-system.svc:15010\n",
    )
    .unwrap()
}

fn pod(spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-", "namespace": "shop", "labels": {"app": "web"}}, "spec": spec})
}

fn app() -> Value {
    json!({"containers": [{"name": "web", "image": "nginx", "ports": [{"name": "http", "containerPort": 8080}]}]})
}

fn request(pod: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "object": pod,
        }
    }))
    .unwrap()
}

/// The response and, when patched, the pod after the patch.
fn run(pod: &Value, selection: Selection) -> (Value, Option<Value>) {
    let (answer, _) = review(&request(pod), &config(), selection);
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    let response = answer["response"].clone();
    let patched = patch::patched(pod, &response).unwrap();
    (response, patched)
}

#[test]
fn a_pod_gets_the_init_container_the_native_sidecar_and_the_token() {
    let (response, patched) = run(&pod(app()), Selection::Namespace);
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(response["allowed"], true);
    let pod = patched.expect("a patch");
    let init = pod["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(init.len(), 2);
    assert_eq!(init[0]["name"], INIT_CONTAINER);
    assert_eq!(init[0]["image"], "remora/init:1.0");
    assert_eq!(init[0]["command"], json!([BINARY]));
    assert_eq!(
        init[0]["args"],
        json!([
            "init",
            "--proxy-uid",
            "1337",
            "--proxy-gid",
            "1337",
            "--proxy-ports",
            "15000"
        ])
    );
    assert_eq!(
        init[0]["securityContext"]["capabilities"],
        json!({"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]})
    );
    let proxy = &init[1];
    assert_eq!(proxy["name"], PROXY_CONTAINER);
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["image"], "remora/proxy:1.0");
    assert_eq!(
        proxy["args"],
        json!([
            "--xds",
            "remora.remora-system.svc:15010",
            "--node-id",
            "$(POD_NAME).$(POD_NAMESPACE)",
            "--delta",
            "--ca",
            "remora.remora-system.svc:15010",
            "--token-file",
            "/var/run/secrets/remora/tokens/remora-ca"
        ])
    );
    assert_eq!(
        proxy["startupProbe"]["httpGet"],
        json!({"path": "/ready", "port": 15000, "scheme": "HTTP"})
    );
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    assert_eq!(proxy["securityContext"]["readOnlyRootFilesystem"], true);
    let env: Vec<&str> = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        env,
        [
            "POD_NAME",
            "POD_NAMESPACE",
            "POD_IP",
            "SERVICE_ACCOUNT",
            "REMORA_ADMIN_ADDRESS",
            "REMORA_LOG_LEVEL",
            "REMORA_DRAIN_TIMEOUT"
        ]
    );
    assert_eq!(
        pod["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "remora-ca"
    );
    assert_eq!(pod["metadata"]["annotations"][STATUS], "injected");
    assert_eq!(
        pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"],
        "web"
    );
    // The application is untouched.
    assert_eq!(pod["spec"]["containers"], app()["containers"]);

    // Injecting the injected pod changes nothing.
    let (response, patched) = run(&pod, Selection::Namespace);
    assert_eq!((response["allowed"].clone(), patched), (json!(true), None));
}

#[test]
fn http_tcp_and_grpc_probes_go_through_the_admin_port_and_others_stay() {
    let spec = json!({"containers": [
        {"name": "web", "image": "app", "ports": [{"name": "http", "containerPort": 8080}],
         "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http", "httpHeaders": [{"name": "x-probe", "value": "kubelet"}]}, "timeoutSeconds": 3, "periodSeconds": 7},
         "readinessProbe": {"tcpSocket": {"port": "http"}},
         "startupProbe": {"httpGet": {"path": "/started", "port": 8443, "scheme": "HTTPS"}}},
        {"name": "worker", "image": "app", "livenessProbe": {"exec": {"command": ["true"]}},
         "readinessProbe": {"httpGet": {"path": "/ready", "port": "undeclared"}}},
        {"name": "rpc", "image": "app",
         "livenessProbe": {"grpc": {"port": 9090}, "periodSeconds": 5},
         "readinessProbe": {"grpc": {"port": 9090, "service": "shop.Cart"}, "timeoutSeconds": 2}},
    ]});
    let (_, patched) = run(&pod(spec.clone()), Selection::Namespace);
    let pod = patched.unwrap();
    let web = &pod["spec"]["containers"][0];
    assert_eq!(
        web["livenessProbe"],
        json!({"httpGet": {"path": "/app-health/web/livez", "port": 15000, "scheme": "HTTP"}, "timeoutSeconds": 3, "periodSeconds": 7})
    );
    assert_eq!(
        web["readinessProbe"],
        json!({"httpGet": {"path": "/app-health/web/readyz", "port": 15000, "scheme": "HTTP"}}),
        "a TCP probe is the proxy's to run: the capture accepts any port"
    );
    assert_eq!(
        web["startupProbe"]["httpGet"]["path"],
        "/app-health/web/startupz"
    );
    assert_eq!(
        pod["spec"]["containers"][1], spec["containers"][1],
        "exec and an unresolvable port are left alone"
    );
    let rpc = &pod["spec"]["containers"][2];
    assert_eq!(
        rpc["readinessProbe"],
        json!({"httpGet": {"path": "/app-health/rpc/readyz", "port": 15000, "scheme": "HTTP"}, "timeoutSeconds": 2})
    );
    assert_eq!(
        rpc["livenessProbe"]["httpGet"]["path"],
        "/app-health/rpc/livez"
    );
    let env = &pod["spec"]["initContainers"][1]["env"];
    let probes = env
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "REMORA_APP_PROBES")
        .unwrap();
    let probes: BTreeMap<String, AppProbeConfig> =
        serde_json::from_str(probes["value"].as_str().unwrap()).unwrap();
    assert_eq!(probes.len(), 5);
    let live = probes["/app-health/web/livez"].http_get.as_ref().unwrap();
    assert_eq!(
        (
            live.port,
            live.path.as_str(),
            probes["/app-health/web/livez"].timeout_seconds
        ),
        (8080, "/healthz", 3)
    );
    assert_eq!(live.http_headers[0].value, "kubelet");
    assert_eq!(
        probes["/app-health/web/startupz"]
            .http_get
            .as_ref()
            .unwrap()
            .scheme,
        "HTTPS"
    );
    let tcp = probes["/app-health/web/readyz"]
        .tcp_socket
        .as_ref()
        .unwrap();
    assert_eq!((tcp.port, tcp.host.as_deref()), (8080, None));
    let grpc = probes["/app-health/rpc/readyz"].grpc.as_ref().unwrap();
    assert_eq!(
        (grpc.port, grpc.service.as_deref()),
        (9090, Some("shop.Cart"))
    );
    assert_eq!(
        probes["/app-health/rpc/livez"]
            .grpc
            .as_ref()
            .unwrap()
            .service,
        None
    );

    let mut opted_out = self::pod(spec.clone());
    opted_out["metadata"]["annotations"] = json!({"remora.dev/rewrite-app-probes": "false"});
    let (_, patched) = run(&opted_out, Selection::Namespace);
    assert_eq!(patched.unwrap()["spec"]["containers"], spec["containers"]);
}

#[test]
fn annotations_set_exclusions_resources_and_drain() {
    let mut pod = pod(app());
    pod["metadata"]["annotations"] = json!({
        "remora.dev/exclude-inbound-ports": "22, 9090",
        "remora.dev/exclude-outbound-ports": "5432",
        "remora.dev/exclude-outbound-cidrs": "169.254.169.254/32,fd00::/8",
        "remora.dev/proxy-cpu": "200m",
        "remora.dev/proxy-memory-limit": "1Gi",
        "remora.dev/log-level": "debug",
        "remora.dev/proxy-image": "registry.local/remora:dev",
        "remora.dev/drain-timeout": "20s",
    });
    pod["spec"]["terminationGracePeriodSeconds"] = 10.into();
    let (_, patched) = run(&pod, Selection::Namespace);
    let pod = patched.unwrap();
    let init = &pod["spec"]["initContainers"][0];
    assert_eq!(
        init["args"],
        json!([
            "init",
            "--proxy-uid",
            "1337",
            "--proxy-gid",
            "1337",
            "--proxy-ports",
            "15000",
            "--exclude-inbound-ports",
            "22,9090",
            "--exclude-outbound-ports",
            "5432",
            "--exclude-outbound-cidrs",
            "169.254.169.254/32,fd00::/8"
        ])
    );
    let proxy = &pod["spec"]["initContainers"][1];
    assert_eq!(proxy["image"], "registry.local/remora:dev");
    assert_eq!(
        init["image"], "remora/init:1.0",
        "the init image is the config's"
    );
    assert_eq!(
        proxy["resources"],
        json!({"requests": {"cpu": "200m", "memory": "32Mi"}, "limits": {"memory": "1Gi"}})
    );
    let env = |name: &str| {
        proxy["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap()["value"]
            .clone()
    };
    assert_eq!(env("REMORA_LOG_LEVEL"), "debug");
    // 20s asked, but the grace period is 10 s: 9 s.
    assert_eq!(env("REMORA_DRAIN_TIMEOUT"), "9000ms");
}

#[test]
fn who_is_not_injected() {
    let skipped = |pod: &Value, selection| {
        let (response, patched) = run(pod, selection);
        assert_eq!(response["allowed"], true, "{response}");
        assert!(patched.is_none(), "{pod}");
    };
    let mut host = pod(app());
    host["spec"]["hostNetwork"] = true.into();
    skipped(&host, Selection::Namespace);
    let mut opted_out = pod(app());
    opted_out["metadata"]["annotations"] = json!({INJECT: "false"});
    skipped(&opted_out, Selection::Namespace);
    let mut ours = pod(app());
    ours["metadata"]["labels"] = json!({"app.kubernetes.io/name": "remora-control-plane"});
    skipped(&ours, Selection::Namespace);
    // Another namespace without the annotation: not injected; with it: injected.
    skipped(&pod(app()), Selection::OptIn);
    let mut opted_in = pod(app());
    opted_in["metadata"]["annotations"] = json!({INJECT: "true"});
    assert!(run(&opted_in, Selection::OptIn).1.is_some());
    // kube-system never, whatever it says.
    let mut system = request(&opted_in);
    let mut review: Value = serde_json::from_slice(&system).unwrap();
    review["request"]["namespace"] = "kube-system".into();
    system = serde_json::to_vec(&review).unwrap();
    let (_, outcome) = super::review(&system, &config(), Selection::Namespace);
    assert!(
        matches!(outcome, Outcome::Skipped(ref why) if why.contains("kube-system")),
        "{outcome:?}"
    );
    // Updates are not injected.
    review["request"]["namespace"] = "shop".into();
    review["request"]["operation"] = "UPDATE".into();
    let (_, outcome) = super::review(
        &serde_json::to_vec(&review).unwrap(),
        &config(),
        Selection::Namespace,
    );
    assert!(matches!(outcome, Outcome::Skipped(_)), "{outcome:?}");
}

#[test]
fn bad_input_gets_a_well_formed_refusal() {
    let refused = |body: &[u8], says: &str| {
        let (answer, outcome) = review(body, &config(), Selection::Namespace);
        let answer: Value = serde_json::from_slice(&answer).expect("always JSON");
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(answer["response"]["allowed"], false);
        let message = answer["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
        assert!(matches!(outcome, Outcome::Denied(_)));
    };
    refused(b"\x00\xff garbage", "not JSON");
    refused(b"[1, 2]", "expected an AdmissionReview");
    refused(
        br#"{"apiVersion": "v1", "kind": "Pod"}"#,
        "kind: expected AdmissionReview",
    );
    refused(
        br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#,
        "request: missing",
    );
    let mut review: Value = serde_json::from_slice(&request(&pod(app()))).unwrap();
    review["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    refused(
        &serde_json::to_vec(&review).unwrap(),
        "expected a core/v1 Pod",
    );
    let mut bad = pod(app());
    bad["spec"]["containers"] = json!({"name": "x"});
    refused(&request(&bad), "spec.containers: expected a list");
    let mut bad = pod(app());
    bad["metadata"]["annotations"] = json!({"remora.dev/exclude-inbound-ports": "22,ssh"});
    refused(
        &request(&bad),
        "metadata.annotations[remora.dev/exclude-inbound-ports]: \"ssh\" is not a port",
    );
    let mut bad = pod(app());
    bad["metadata"]["annotations"] = json!({"remora.dev/proxy-memory": "lots"});
    refused(&request(&bad), "remora.dev/proxy-memory");
    let mut bad = pod(app());
    bad["metadata"]["annotations"] = json!({INJECT: "maybe"});
    refused(&request(&bad), "\"true\" or \"false\"");
    let mut bad = pod(app());
    bad["metadata"]["labels"] = json!({INJECT: "maybe"});
    refused(
        &request(&bad),
        "metadata.labels[remora.dev/inject]: \"maybe\"",
    );
    // The uid is echoed even when refused.
    let (answer, _) = super::review(&request(&bad), &config(), Selection::Namespace);
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(
        answer["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
}

#[test]
fn unknown_fields_of_the_pod_are_kept() {
    let mut spec = app();
    spec["futureField"] = json!({"x": 1});
    spec["containers"][0]["futureContainerField"] = "y".into();
    let (_, patched) = run(&pod(spec), Selection::Namespace);
    let pod = patched.unwrap();
    assert_eq!(pod["spec"]["futureField"], json!({"x": 1}));
    assert_eq!(pod["spec"]["containers"][0]["futureContainerField"], "y");
}

#[test]
fn the_config_names_its_bad_fields() {
    let error = InjectConfig::parse("image: x\nxds_address: nohost\nimage_pull_policy: Sometimes\nresources: {requests: {cpu: lots}}\nexclude_outbound_cidrs: [10.0.0.0/33]\nproxy_uid: 0\n")
        .unwrap_err()
        .to_string();
    for says in [
        "xds_address: \"nohost\": expected HOST:PORT",
        "image_pull_policy: \"Sometimes\"",
        "resources.requests.cpu:",
        "exclude_outbound_cidrs[0]:",
        "proxy_uid: 0 is root",
    ] {
        assert!(error.contains(says), "{says} in {error}");
    }
    let error = InjectConfig::parse("image: x\nxds_address: a:1\nimagePullPolicy: Always\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("imagePullPolicy"), "{error}");
    assert!(is_quantity("100m") && is_quantity("1.5Gi") && is_quantity("2") && is_quantity("1e3"));
    assert!(!is_quantity("") && !is_quantity("m") && !is_quantity("1..2") && !is_quantity("10 Mi"));
}
