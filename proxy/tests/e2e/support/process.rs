//! The real `remora-proxy` binary, started on a config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct ProxyProcess {
    pub child: Child,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_remora-proxy")
}

impl ProxyProcess {
    /// Writes `yaml` to a file and starts the proxy on it; waits until its
    /// admin server listens.
    pub async fn start(yaml: &str) -> ProxyProcess {
        Self::start_with_env(yaml, &[]).await
    }

    pub async fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> ProxyProcess {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("proxy.yaml");
        std::fs::write(&config, yaml).unwrap();
        let admin_file = dir.path().join("admin-address");
        let child = Command::new(binary())
            .arg("--config")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .env(
                "REMORA_LOG_LEVEL",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::from(
                std::fs::File::create(dir.path().join("stdout.log")).unwrap(),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("stderr.log")).unwrap(),
            ))
            .spawn()
            .unwrap();
        let mut process = ProxyProcess {
            child,
            admin: "0.0.0.0:0".parse().unwrap(),
            dir,
            config,
        };
        let deadline = std::time::Instant::now() + super::PATIENCE;
        loop {
            if let Ok(text) = std::fs::read_to_string(&admin_file)
                && let Ok(addr) = text.trim().parse()
            {
                process.admin = addr;
                break;
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!(
                    "remora-proxy exited early with {status}:\n{}",
                    process.output()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "remora-proxy did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        process
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Replaces the config file in one step, as editors and ConfigMaps do.
    pub fn write_config(&self, yaml: &str) {
        let next = self.dir.path().join("proxy.yaml.next");
        std::fs::write(&next, yaml).unwrap();
        std::fs::rename(&next, &self.config).unwrap();
    }

    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        admin_request(self.admin, "GET", path).await
    }

    /// The bound address of a listener, from `/listeners`.
    pub async fn listener(&self, name: &str) -> SocketAddr {
        let (_, body) = self.admin_get("/listeners").await;
        let listeners: serde_json::Value = serde_json::from_str(&body).unwrap();
        listeners
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("no listener {name} in {body}"))["address"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Sends a signal such as `libc::SIGTERM`.
    pub fn signal(&self, signal: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill failed");
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait(&mut self) -> i32 {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "remora-proxy did not exit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything the process wrote so far: stdout, then stderr.
    pub fn output(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("stdout.log"), read("stderr.log"))
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A one-shot HTTP/1.1 request to an admin server.
pub async fn admin_request(admin: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}
