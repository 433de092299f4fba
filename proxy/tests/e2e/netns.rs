//! Network namespaces for the capture tests, shared by remora-proxy's
//! end-to-end tests and the control plane's sidecar interop test (which
//! includes this file by path): a "pod" namespace (10.77.0.1, fd77::1) and a
//! "remote" one (10.77.0.2, fd77::2) joined by a veth pair, Python peers in
//! both, and a proxy run in the pod as UID 1337 through `setpriv`. Needs
//! root, iproute2, iptables, setpriv and python3; without them a test says
//! why and skips.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A network namespace of its own, deleted when dropped.
pub struct Netns(pub String);

impl Netns {
    pub fn create(tag: &str) -> Option<Netns> {
        let name = format!("remora-{tag}-{}", std::process::id());
        let created = Command::new("ip").args(["netns", "add", &name]).status();
        match created {
            Ok(status) if status.success() => Some(Netns(name)),
            other => {
                eprintln!(
                    "skipped: cannot create a network namespace ({other:?}); needs root and iproute2"
                );
                None
            }
        }
    }

    /// Runs `command` inside; (success, stdout, stderr).
    pub fn run(&self, command: &[&str]) -> (bool, String, String) {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(command)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    }

    /// The nat table's rules and chains, without comments and counters.
    pub fn nat(&self, save: &str) -> Vec<String> {
        let (ok, out, err) = self.run(&[save, "-t", "nat"]);
        assert!(ok, "{save}: {err}");
        out.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(" [").next().unwrap().to_string())
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

pub fn have(command: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {command}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Two namespaces joined by a veth pair: "pod" (10.77.0.1) holds the
/// application and the proxy, "remote" (10.77.0.2) the services.
pub struct Topology {
    pub pod: Netns,
    pub remote: Netns,
    pub dir: tempfile::TempDir,
    children: Vec<std::process::Child>,
    /// The `remora-proxy` binary (`init`, and the proxy).
    binary: PathBuf,
}

impl Topology {
    pub fn create(tag: &str, binary: &Path) -> Option<Topology> {
        if !have("iptables-save") || !have("setpriv") || !have("python3") {
            eprintln!("skipped: needs iptables, setpriv and python3");
            return None;
        }
        let pod = Netns::create(&format!("pod{tag}"))?;
        let remote = Netns::create(&format!("remote{tag}"))?;
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let veth = format!("rv{}x{n}", std::process::id() % 100_000);
        let peer = format!("{veth}r");
        let sh = |script: &str| {
            let status = Command::new("sh").args(["-ec", script]).status().unwrap();
            assert!(status.success(), "{script}");
        };
        sh(&format!(
            "ip link add {veth} netns {pod} type veth peer name {peer} netns {remote}
             ip -n {pod} addr add 10.77.0.1/24 dev {veth}
             ip -n {remote} addr add 10.77.0.2/24 dev {peer}
             ip -n {pod} addr add fd77::1/64 dev {veth} nodad
             ip -n {remote} addr add fd77::2/64 dev {peer} nodad
             ip -n {pod} link set {veth} up
             ip -n {remote} link set {peer} up
             ip -n {pod} link set lo up
             ip -n {remote} link set lo up",
            pod = pod.0,
            remote = remote.0
        ));
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(dir.path().join("peer.py"), PEER).unwrap();
        // Where the proxy (UID 1337) writes its access log.
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        std::fs::set_permissions(&logs, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let mut topology = Topology {
            pod,
            remote,
            dir,
            children: Vec::new(),
            binary: binary.to_path_buf(),
        };
        // The remote services, and the application's own servers in the pod.
        let remote = topology.remote.0.clone();
        let pod = topology.pod.0.clone();
        for (ns, mode, host, port) in [
            (&remote, "http", "10.77.0.2", "8080"),
            (&remote, "http", "fd77::2", "8080"),
            (&remote, "echo", "10.77.0.2", "9090"),
            (&remote, "echo", "fd77::2", "9090"),
            (&remote, "banner", "10.77.0.2", "2525"),
            (&remote, "banner", "10.77.0.2", "3306"),
            (&pod, "app", "0.0.0.0", "8000"),
            (&pod, "app", "10.77.0.1", "8001"),
        ] {
            topology.spawn(ns, &[mode, host, port]);
        }
        // Python takes a moment to start: wait until every service answers.
        let ready = [
            (
                &remote,
                &["get", "http://10.77.0.2:8080/"][..],
                "200 - remote",
            ),
            (
                &remote,
                &["get", "http://[fd77::2]:8080/"][..],
                "200 - remote",
            ),
            (&remote, &["send", "10.77.0.2", "9090"][..], "ping"),
            (&remote, &["send", "fd77::2", "9090"][..], "ping"),
            (
                &remote,
                &["hear", "10.77.0.2", "2525"][..],
                "220 remote ready",
            ),
            (
                &remote,
                &["hear", "10.77.0.2", "3306"][..],
                "220 remote ready",
            ),
            (&pod, &["get", "http://127.0.0.1:8000/"][..], "200 - app"),
            (&pod, &["get", "http://10.77.0.1:8001/"][..], "200 - app"),
        ];
        for (ns, args, want) in ready {
            let mut last = String::new();
            for _ in 0..100 {
                last = topology.peer(ns, args);
                if last.starts_with(want) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            assert!(last.starts_with(want), "{args:?} never answered: {last}");
        }
        Some(topology)
    }

    /// Starts the peer script in namespace `ns`, in the background.
    pub fn spawn(&mut self, ns: &str, args: &[&str]) {
        let peer = self.dir.path().join("peer.py");
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "python3"])
            .arg(&peer)
            .args(args)
            .spawn()
            .unwrap();
        self.children.insert(0, child);
    }

    /// Runs the peer script in namespace `ns` and returns what it printed.
    pub fn peer(&self, ns: &str, args: &[&str]) -> String {
        let peer = self.dir.path().join("peer.py");
        let output = Command::new("ip")
            .args(["netns", "exec", ns, "python3"])
            .arg(&peer)
            .args(args)
            .output()
            .unwrap();
        let (out, err) = (
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        format!("{out}{err}").trim().to_string()
    }

    /// Runs the peer script in the pod as the application (root, captured).
    pub fn app(&self, args: &[&str]) -> String {
        self.peer(&self.pod.0, args)
    }

    /// Runs the peer script in the remote namespace (a client of the pod).
    pub fn remote(&self, args: &[&str]) -> String {
        self.peer(&self.remote.0, args)
    }

    /// Installs the capture rules in the pod.
    pub fn init(&self, extra: &[&str]) {
        let binary = self.binary.to_str().unwrap();
        let mut command = vec![binary, "init"];
        command.extend_from_slice(extra);
        let (ok, _, err) = self.pod.run(&command);
        assert!(ok, "init {extra:?}: {err}");
    }

    /// The proxy's metrics.
    pub fn metrics(&self) -> String {
        let metrics = self.app(&["get", "http://127.0.0.1:15000/metrics"]);
        assert!(metrics.starts_with("200"), "{metrics}");
        metrics
    }

    /// The access log's lines (written by a thread of the proxy's own:
    /// waits until `want` lines are there).
    pub fn access_log(&self, want: usize) -> Vec<serde_json::Value> {
        let path = self.dir.path().join("logs/access.log");
        let mut lines = Vec::new();
        for _ in 0..100 {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            lines = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            if lines.len() >= want {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        lines
    }

    /// Starts remora-proxy in the pod as UID 1337 on `yaml`; waits for /ready.
    pub fn proxy(&mut self, yaml: &str) {
        let config = self.dir.path().join("proxy.yaml");
        let log = self.dir.path().join("logs/access.log");
        let yaml = yaml.replace("ACCESS_LOG", log.to_str().unwrap());
        std::fs::write(&config, yaml).unwrap();
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let binary = self.binary.clone();
        self.as_proxy(&binary, &["--config".as_ref(), config.as_os_str()]);
    }

    /// Starts `program` in the pod as the proxy's UID and GID (1337), whose
    /// connections the capture rules let through; waits until the admin
    /// port (127.0.0.1:15000) answers `/ready` with 200.
    pub fn as_proxy(&mut self, program: &Path, args: &[&std::ffi::OsStr]) {
        // UID 1337 may not reach the binary where it was built (a target
        // directory under /root): run a link or copy in the test's own
        // directory.
        let name = program.file_name().unwrap();
        let local = self.dir.path().join(name);
        if !local.exists() && std::fs::hard_link(program, &local).is_err() {
            std::fs::copy(program, &local).unwrap();
        }
        let program = local.as_path();
        let log_path = self.dir.path().join(format!(
            "logs/{}.{}.log",
            name.to_string_lossy(),
            self.children.len()
        ));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.pod.0,
                "setpriv",
                "--reuid",
                "1337",
                "--regid",
                "1337",
                "--clear-groups",
            ])
            .arg(program)
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push(child);
        for _ in 0..300 {
            if self
                .app(&["get", "http://127.0.0.1:15000/ready"])
                .starts_with("200")
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!(
            "{} in the pod never became ready:\n{}",
            program.display(),
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }

    pub fn stop_proxy(&mut self) {
        if let Some(mut child) = self.children.pop() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Servers and clients for the namespaces, in Python so that they run in
/// any namespace without a build: `http HOST PORT` serves 200 `remote`
/// (`app`: 200 `app`), `tls HOST PORT NAME` starts a TLS handshake for NAME,
/// `echo HOST PORT` echoes, `banner HOST PORT` speaks first; `get URL`
/// prints `STATUS x-remora-header BODY`, `send HOST PORT` prints what came
/// back (or `reset` / `refused`), `hear HOST PORT` what the server said.
const PEER: &str = r#"
import socket, sys, threading, urllib.request, http.server
mode = sys.argv[1]
if mode in ("http", "app"):
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"remote" if mode == "http" else b"app"
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
    class S(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in sys.argv[2] else socket.AF_INET
    S((sys.argv[2], int(sys.argv[3])), H).serve_forever()
elif mode == "echo":
    s = socket.socket(socket.AF_INET6 if ":" in sys.argv[2] else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[2], int(sys.argv[3])))
    s.listen(16)
    def serve(c):
        while True:
            d = c.recv(4096)
            if not d:
                break
            c.sendall(d)
        c.close()
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
elif mode == "banner":
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[2], int(sys.argv[3])))
    s.listen(16)
    while True:
        c, _ = s.accept()
        c.sendall(b"220 remote ready\r\n")
        c.close()
elif mode == "hear":
    try:
        c = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=5)
        print(c.recv(100).decode().strip() or "closed")
    except Exception as e:
        print("error", e)
elif mode == "tls":
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        c = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=5)
        ctx.wrap_socket(c, server_hostname=sys.argv[4])
        print("handshake")
    except ssl.SSLError:
        print("tls-failed")
    except Exception as e:
        print("error", e)
elif mode == "get":
    try:
        r = urllib.request.urlopen(sys.argv[2], timeout=5)
        print(r.status, r.headers.get("x-remora", "-"), r.read().decode())
    except urllib.error.HTTPError as e:
        print(e.code, e.headers.get("x-remora", "-"))
    except Exception as e:
        print("error", e)
elif mode == "send":
    try:
        c = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=5)
        c.sendall(b"ping")
        print(c.recv(100).decode() or "closed")
    except ConnectionResetError:
        print("reset")
    except ConnectionRefusedError:
        print("refused")
    except Exception as e:
        print("error", e)
"#;
