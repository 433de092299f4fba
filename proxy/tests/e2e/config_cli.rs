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
