//! `remora-proxy init` in a real network namespace with real iptables:
//! the rules go in atomically, a second run leaves one copy, `--clean`
//! leaves nothing, and a missing binary is named. Needs root and `ip`
//! and `iptables` (scripts/test installs them); without them the tests say
//! why and skip.

use std::process::Command;

use crate::support::process::binary;

/// A network namespace of its own, deleted when dropped.
struct Netns(String);

impl Netns {
    fn create(tag: &str) -> Option<Netns> {
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
    fn run(&self, command: &[&str]) -> (bool, String, String) {
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
    fn nat(&self, save: &str) -> Vec<String> {
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

fn have(command: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {command}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn init_installs_the_rules_once_and_clean_removes_them() {
    if !have("iptables-save") {
        eprintln!("skipped: iptables is not installed");
        return;
    }
    let Some(ns) = Netns::create("init") else {
        return;
    };
    let init = |extra: &[&str]| {
        let mut command = vec![
            binary(),
            "init",
            "--exclude-inbound-ports",
            "22",
            "--exclude-outbound-cidrs",
            "10.0.0.0/8,fd00::/8",
        ];
        command.extend_from_slice(extra);
        let (ok, out, err) = ns.run(&command);
        assert!(ok, "init {extra:?} failed: {err}");
        out
    };
    let dry = init(&["--dry-run"]);
    assert!(
        ns.nat("iptables-save")
            .iter()
            .all(|l| !l.contains("REMORA")),
        "a dry run changes nothing"
    );
    assert!(
        dry.contains("-A REMORA_REDIRECT -p tcp -j REDIRECT --to-ports 15001"),
        "{dry}"
    );

    init(&[]);
    let first = ns.nat("iptables-save");
    let first_v6 = ns.nat("ip6tables-save");
    for rule in [
        "-A PREROUTING -p tcp -j REMORA_INBOUND",
        "-A OUTPUT -p tcp -j REMORA_OUTPUT",
        "-A REMORA_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
        "-A REMORA_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A REMORA_OUTPUT -d 10.0.0.0/8 -j RETURN",
        "-A REMORA_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A REMORA_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    ] {
        assert!(
            first.iter().any(|l| l == rule),
            "missing {rule}:\n{}",
            first.join("\n")
        );
    }
    assert!(
        first_v6
            .iter()
            .any(|l| l == "-A REMORA_OUTPUT -d fd00::/8 -j RETURN"),
        "{}",
        first_v6.join("\n")
    );

    init(&[]);
    assert_eq!(
        ns.nat("iptables-save"),
        first,
        "a second init leaves one copy"
    );
    assert_eq!(ns.nat("ip6tables-save"), first_v6);

    init(&["--clean"]);
    for save in ["iptables-save", "ip6tables-save"] {
        let left = ns.nat(save);
        assert!(
            left.iter().all(|l| !l.contains("REMORA")),
            "{save}: {}",
            left.join("\n")
        );
    }
    let again = init(&["--clean"]);
    assert!(again.contains("no Remora rules to remove"), "{again}");
}

#[test]
fn a_missing_iptables_is_named() {
    let output = Command::new(binary())
        .args(["init", "--ipv6", "off"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("iptables-save not found: install iptables"),
        "{stderr}"
    );
}

/// Two namespaces joined by a veth pair: "pod" (10.77.0.1) holds the
/// application and the proxy, "remote" (10.77.0.2) the services.
struct Topology {
    pod: Netns,
    remote: Netns,
    dir: tempfile::TempDir,
    children: Vec<std::process::Child>,
}

impl Topology {
    fn create() -> Option<Topology> {
        if !have("iptables-save") || !have("setpriv") || !have("python3") {
            eprintln!("skipped: needs iptables, setpriv and python3");
            return None;
        }
        let pod = Netns::create("pod")?;
        let remote = Netns::create("remote")?;
        let veth = format!("rv{}", std::process::id() % 100_000);
        let peer = format!("{veth}r");
        let sh = |script: &str| {
            let status = Command::new("sh").args(["-ec", script]).status().unwrap();
            assert!(status.success(), "{script}");
        };
        sh(&format!(
            "ip link add {veth} netns {pod} type veth peer name {peer} netns {remote}
             ip -n {pod} addr add 10.77.0.1/24 dev {veth}
             ip -n {remote} addr add 10.77.0.2/24 dev {peer}
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
        let mut topology = Topology {
            pod,
            remote,
            dir,
            children: Vec::new(),
        };
        // An HTTP service and a TCP echo service on the remote side.
        let peer = topology.dir.path().join("peer.py");
        let peer = peer.to_str().unwrap();
        for (mode, port) in [("http", "8080"), ("echo", "9090"), ("banner", "2525")] {
            let child = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &topology.remote.0,
                    "python3",
                    peer,
                    mode,
                    "10.77.0.2",
                    port,
                ])
                .spawn()
                .unwrap();
            topology.children.push(child);
        }
        // Python takes a moment to start: wait until both services answer.
        for (args, want) in [
            (&["get", "http://10.77.0.2:8080/"][..], "200 - remote"),
            (&["send", "10.77.0.2", "9090"][..], "ping"),
            (&["hear", "10.77.0.2", "2525"][..], "220 remote ready"),
        ] {
            let mut last = String::new();
            for _ in 0..100 {
                last = topology.app(args);
                if last.starts_with(want) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            assert!(
                last.starts_with(want),
                "the remote service never answered: {last}"
            );
        }
        Some(topology)
    }

    /// Runs the peer script in the pod as the application (root, captured).
    fn app(&self, args: &[&str]) -> String {
        let peer = self.dir.path().join("peer.py");
        let mut command = vec!["python3", peer.to_str().unwrap()];
        command.extend_from_slice(args);
        let (_, out, err) = self.pod.run(&command);
        format!("{out}{err}").trim().to_string()
    }

    /// Starts remora-proxy in the pod as UID 1337 on `yaml`; waits for /ready.
    fn proxy(&mut self, yaml: &str) {
        let config = self.dir.path().join("proxy.yaml");
        std::fs::write(&config, yaml).unwrap();
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
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
            .arg(binary())
            .arg("--config")
            .arg(&config)
            .spawn()
            .unwrap();
        self.children.push(child);
        for _ in 0..200 {
            if self
                .app(&["get", "http://127.0.0.1:15000/ready"])
                .starts_with("200")
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the proxy in the pod never became ready");
    }

    fn stop_proxy(&mut self) {
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
/// any namespace without a build: `http HOST PORT` serves 200 `remote`,
/// `echo HOST PORT` echoes, `banner HOST PORT` speaks first; `get URL`
/// prints `STATUS x-remora-header BODY`, `send HOST PORT` prints what came
/// back (or `reset` / `refused`), `hear HOST PORT` what the server said.
const PEER: &str = r#"
import socket, sys, threading, urllib.request, http.server
mode = sys.argv[1]
if mode == "http":
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"remote"
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
    http.server.ThreadingHTTPServer((sys.argv[2], int(sys.argv[3])), H).serve_forever()
elif mode == "echo":
    s = socket.socket()
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

const CAPTURE: &str = "
admin: {address: '127.0.0.1:15000'}
workers: 1
listeners:
  - {name: outbound, address: '0.0.0.0:15001', original_destination: true, unmatched: UNMATCHED}
  - name: remote-http
    address: '10.77.0.2:8080'
    bind: false
    routes: [{name: r, backends: [{cluster: remote-http}], response_headers: {set: [{name: x-remora, value: captured}]}}]
clusters:
  - {name: remote-http, endpoints: ['10.77.0.2:8080']}
";

#[test]
fn captured_traffic_is_routed_by_its_original_destination() {
    let Some(mut topology) = Topology::create() else {
        return;
    };
    let (ok, _, err) = topology.pod.run(&[binary(), "init", "--ipv6", "off"]);
    assert!(ok, "init: {err}");
    topology.proxy(&CAPTURE.replace("UNMATCHED", "passthrough"));

    // The application calls the service by IP, with no proxy settings: the
    // request passes the proxy (the route's header proves it).
    let reply = topology.app(&["get", "http://10.77.0.2:8080/"]);
    assert!(reply.starts_with("200 captured remote"), "{reply}");
    // A port no listener stands for: passed through as opaque TCP.
    assert_eq!(topology.app(&["send", "10.77.0.2", "9090"]), "ping");
    // A server that speaks first (an SMTP-style banner): passed through
    // with no detection wait, so the banner arrives.
    assert_eq!(
        topology.app(&["hear", "10.77.0.2", "2525"]),
        "220 remote ready"
    );
    // A port nobody listens on: refused promptly, no hang.
    let nobody = topology.app(&["send", "10.77.0.2", "9999"]);
    assert!(
        nobody == "reset" || nobody == "refused" || nobody == "closed",
        "{nobody}"
    );
    let metrics = topology.app(&["get", "http://127.0.0.1:15000/metrics"]);
    assert!(metrics.starts_with("200"), "{metrics}");

    // unmatched: reject resets what no listener claims.
    topology.stop_proxy();
    topology.proxy(&CAPTURE.replace("UNMATCHED", "reject"));
    let rejected = topology.app(&["send", "10.77.0.2", "9090"]);
    assert!(rejected == "reset" || rejected == "closed", "{rejected}");
    let reply = topology.app(&["get", "http://10.77.0.2:8080/"]);
    assert!(reply.starts_with("200 captured remote"), "{reply}");
}
