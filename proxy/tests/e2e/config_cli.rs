//! The command line: `--check`, environment overrides, start-up errors, and
//! the log level changed at run time through the admin server.

use std::process::Command;

use crate::support::process::{ProxyProcess, binary};

fn check(yaml: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, yaml).unwrap();
    let output = Command::new(binary())
        .arg("--config")
        .arg(&path)
        .arg("--check")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

const VALID: &str = "
listeners:
  - {name: web, address: 127.0.0.1:0, routes: [{name: all, backends: [{cluster: up}]}]}
clusters:
  - {name: up, endpoints: [127.0.0.1:1]}
";

#[test]
fn check_accepts_a_valid_config() {
    let (code, stdout, _) = check(VALID, &[]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("valid (1 listeners, 1 clusters)"),
        "{stdout}"
    );
}

#[test]
fn check_rejects_with_the_field_path() {
    let (code, _, stderr) = check(&VALID.replace("cluster: up}", "cluster: api-v3}"), &[]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(r#"listeners[0].routes[0].backends[0].cluster: no cluster named "api-v3""#),
        "{stderr}"
    );
    let (code, _, stderr) = check(&VALID.replace("name: web", "name: web, colour: blue"), &[]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("listeners[0].colour: unknown field `colour`"),
        "{stderr}"
    );
}

#[test]
fn check_applies_and_validates_environment_overrides() {
    let (code, _, stderr) = check(VALID, &[("REMORA_WORKERS", "many")]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("REMORA_WORKERS: invalid worker count \"many\""),
        "{stderr}"
    );
    let (code, _, stderr) = check(VALID, &[("REMORA_LOG_LEVEL", "info,[")]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("REMORA_LOG_LEVEL: invalid log level"),
        "{stderr}"
    );
    assert_eq!(
        check(
            VALID,
            &[
                ("REMORA_WORKERS", "2"),
                ("REMORA_ADMIN_ADDRESS", "127.0.0.1:9")
            ]
        )
        .0,
        0
    );
}

#[test]
fn a_missing_file_is_named() {
    let output = Command::new(binary())
        .args(["--config", "/nonexistent/remora.yaml", "--check"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot read config file /nonexistent/remora.yaml"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_in_use_fails_start_up_with_the_field_path() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let yaml = VALID.replace("127.0.0.1:0", &taken.local_addr().unwrap().to_string());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, format!("admin: {{address: 127.0.0.1:0}}\n{yaml}")).unwrap();
    let output = Command::new(binary())
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("listeners[0].address: cannot bind"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_sets_the_admin_address_and_the_log_level_changes_at_run_time() {
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // REMORA_ADMIN_ADDRESS wins over the file's admin address.
    let yaml =
        format!("admin: {{address: 127.0.0.1:0}}\nlog: {{level: debug, format: json}}\n{VALID}");
    let env = [
        ("REMORA_ADMIN_ADDRESS", free.to_string()),
        ("REMORA_LOG_LEVEL", "warn".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let process = ProxyProcess::start_with_env(&yaml, &env).await;
    assert_eq!(process.admin, free);
    assert_eq!(process.admin_get("/logging").await, (200, "warn\n".into()));
    let (status, body) = crate::support::process::admin_request(
        process.admin,
        "PUT",
        "/logging?level=info%2Cremora_proxy%3Ddebug",
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (200, "log level set to info,remora_proxy=debug\n")
    );
    assert_eq!(
        process.admin_get("/logging").await.1,
        "info,remora_proxy=debug\n"
    );
    let (status, body) =
        crate::support::process::admin_request(process.admin, "PUT", "/logging?level=%5B").await;
    assert_eq!(status, 400);
    assert!(body.starts_with("invalid log level \"[\""), "{body}");
}

#[test]
fn xds_flags_need_each_other() {
    let run = |args: &[&str]| {
        let output = Command::new(binary()).args(args).output().unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&["--xds", "127.0.0.1:18000", "--check"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("--xds needs --node-id"), "{stderr}");
    let (code, stderr) = run(&["--xds", "127.0.0.1:18000", "--node-id", "", "--check"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("xds.node_id: must not be empty"),
        "{stderr}"
    );
    let (code, stderr) = run(&["--node-id", "a"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--config"), "{stderr}");
    let (code, stdout) = {
        let output = Command::new(binary())
            .args(["--xds", "127.0.0.1:18000", "--node-id", "a", "--check"])
            .output()
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    assert_eq!(code, 0, "no file is needed with --xds");
    assert!(
        stdout.contains("valid (0 listeners, 0 clusters)"),
        "{stdout}"
    );
    // The injector's identity flags: --ca and --token-file go together.
    let (code, stderr) = run(&[
        "--xds",
        "127.0.0.1:18000",
        "--node-id",
        "a",
        "--ca",
        "127.0.0.1:18000",
        "--check",
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--token-file"), "{stderr}");
    let (code, stderr) = run(&[
        "--xds",
        "127.0.0.1:18000",
        "--node-id",
        "a",
        "--ca",
        "127.0.0.1:18000",
        "--token-file",
        "/var/run/secrets/remora/tokens/remora-ca",
        "--check",
    ]);
    assert_eq!(code, 0, "{stderr}");
}

#[tokio::test]
async fn without_its_xds_server_the_proxy_serves_its_file_but_is_not_ready() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let xds = closed.local_addr().unwrap();
    drop(closed);
    let proxy = ProxyProcess::start(&format!(
        "
admin: {{address: 127.0.0.1:0}}
xds: {{address: '{xds}', node_id: sidecar-1}}
listeners:
  - {{name: local, address: 127.0.0.1:0, routes: [{{name: ok, direct_response: {{status: 200, body: here}}}}]}}
"
    ))
    .await;
    let (status, body) = proxy.admin_get("/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("waiting for the first xDS config"), "{body}");
    let listener = proxy.listener("local").await;
    let reply = crate::support::client::get(
        &crate::support::client::http1(),
        &format!("http://{listener}/"),
    )
    .await;
    assert_eq!(reply.status, 200, "the file's listeners serve meanwhile");
    let mut view = serde_json::Value::Null;
    for _ in 0..100 {
        let (_, body) = proxy.admin_get("/xds").await;
        view = serde_json::from_str(&body).unwrap();
        if view["last_disconnect"].is_string() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(view["server"], xds.to_string(), "{view}");
    assert_eq!(view["node_id"], "sidecar-1", "{view}");
    assert_eq!(view["connected"], false, "{view}");
    assert!(
        view["last_disconnect"]
            .as_str()
            .is_some_and(|d| d.contains("cannot connect")),
        "{view}"
    );
}
