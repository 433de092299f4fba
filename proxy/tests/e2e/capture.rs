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
    fn create(tag: &str) -> Option<Topology> {
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
        };
        // The remote services, and the application's own servers in the pod.
        let remote = topology.remote.0.clone();
        let pod = topology.pod.0.clone();
        for (ns, mode, host, port) in [
            (&remote, "http", "10.77.0.2", "8080"),
            (&remote, "http", "fd77::2", "8080"),
            (&remote, "echo", "10.77.0.2", "9090"),
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
    fn spawn(&mut self, ns: &str, args: &[&str]) {
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
    fn peer(&self, ns: &str, args: &[&str]) -> String {
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
    fn app(&self, args: &[&str]) -> String {
        self.peer(&self.pod.0, args)
    }

    /// Runs the peer script in the remote namespace (a client of the pod).
    fn remote(&self, args: &[&str]) -> String {
        self.peer(&self.remote.0, args)
    }

    /// Installs the capture rules in the pod.
    fn init(&self, extra: &[&str]) {
        let mut command = vec![binary(), "init"];
        command.extend_from_slice(extra);
        let (ok, _, err) = self.pod.run(&command);
        assert!(ok, "init {extra:?}: {err}");
    }

    /// The proxy's metrics.
    fn metrics(&self) -> String {
        let metrics = self.app(&["get", "http://127.0.0.1:15000/metrics"]);
        assert!(metrics.starts_with("200"), "{metrics}");
        metrics
    }

    /// The access log's lines (written by a thread of the proxy's own:
    /// waits until `want` lines are there).
    fn access_log(&self, want: usize) -> Vec<serde_json::Value> {
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
    fn proxy(&mut self, yaml: &str) {
        let config = self.dir.path().join("proxy.yaml");
        let log = self.dir.path().join("logs/access.log");
        let yaml = yaml.replace("ACCESS_LOG", log.to_str().unwrap());
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

const CAPTURE: &str = "
admin: {address: '127.0.0.1:15000'}
access_log: {path: 'ACCESS_LOG'}
workers: 1
listeners:
  - {name: outbound, address: '0.0.0.0:15001', original_destination: true, unmatched: UNMATCHED}
  - name: remote-http
    address: '10.77.0.2:8080'
    bind: false
    protocol: http
    routes: [{name: r, backends: [{cluster: remote-http}], response_headers: {set: [{name: x-remora, value: captured}]}}]
clusters:
  - {name: remote-http, endpoints: ['10.77.0.2:8080']}
";

/// The value of the metric line that starts with `series`.
fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn captured_traffic_is_routed_by_its_original_destination() {
    let Some(mut topology) = Topology::create("o") else {
        return;
    };
    topology.init(&["--ipv6", "off"]);
    topology.proxy(&CAPTURE.replace("UNMATCHED", "passthrough"));

    // The application calls the service by IP, with no proxy settings: the
    // request passes the proxy (the route's header proves it).
    let reply = topology.app(&["get", "http://10.77.0.2:8080/"]);
    assert!(reply.starts_with("200 captured remote"), "{reply}");
    // A port no listener stands for: passed through as opaque TCP.
    assert_eq!(topology.app(&["send", "10.77.0.2", "9090"]), "ping");
    // A server that speaks first (an SMTP-style banner) on a port that is
    // not opaque: the passthrough connects at once and the server's first
    // bytes end detection, so the banner arrives with no wait.
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
    let metrics = topology.metrics();
    let captured = |protocol: &str| {
        metric(
            &metrics,
            &format!(
                "remora_captured_connections_total{{listener=\"outbound\",direction=\"outbound\",protocol=\"{protocol}\"}}"
            ),
        )
    };
    assert_eq!(captured("http1"), 1.0, "{metrics}");
    assert_eq!(captured("tcp"), 3.0, "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            "remora_passthrough_connections_total{listener=\"outbound\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(
            &metrics,
            "remora_protocol_detect_timeouts_total{listener=\"outbound\"}"
        ),
        0.0,
        "the banner did not wait for detection"
    );
    // No loops: the proxy's own connections upstream were not captured.
    assert_eq!(
        metric(
            &metrics,
            "remora_downstream_connections_total{listener=\"outbound\",worker=\"0\"}"
        ),
        4.0
    );

    // One access-log line per request and per opaque connection, with the
    // direction and the original destination.
    let lines = topology.access_log(4);
    let http = lines
        .iter()
        .find(|l| l["listener"] == "remote-http")
        .unwrap();
    assert_eq!(http["direction"], "outbound");
    assert_eq!(http["original_dst"], "10.77.0.2:8080");
    assert_eq!(http["status"], 200);
    let echo = lines
        .iter()
        .find(|l| l["original_dst"] == "10.77.0.2:9090")
        .unwrap();
    assert_eq!(echo["listener"], "outbound");
    assert_eq!(echo["cluster"], "passthrough");
    assert_eq!(echo["protocol"], "tcp");
    assert_eq!(echo["detect"], "detected");
    assert_eq!(echo["bytes_received"], 4);
    assert_eq!(echo["bytes_sent"], 4);
    let banner = lines
        .iter()
        .find(|l| l["original_dst"] == "10.77.0.2:2525")
        .unwrap();
    assert_eq!(banner["detect"], "server_first");
    let refused = lines
        .iter()
        .find(|l| l["original_dst"] == "10.77.0.2:9999")
        .unwrap();
    assert_eq!(refused["failure"], "connect_failure");

    // unmatched: reject resets what no listener claims.
    topology.stop_proxy();
    topology.proxy(&CAPTURE.replace("UNMATCHED", "reject"));
    let rejected = topology.app(&["send", "10.77.0.2", "9090"]);
    assert!(rejected == "reset" || rejected == "closed", "{rejected}");
    let reply = topology.app(&["get", "http://10.77.0.2:8080/"]);
    assert!(reply.starts_with("200 captured remote"), "{reply}");
}

/// `protocol: auto` listeners (the default with `bind: false`): HTTP is
/// detected and routed, a silent client becomes opaque TCP after
/// `detect_timeout` (counted), an opaque port skips detection, TLS is
/// passed through with its SNI logged; and the same over IPv6.
#[test]
fn detection_never_stalls_and_ipv6_is_captured_too() {
    let Some(mut topology) = Topology::create("d") else {
        return;
    };
    topology.init(&["--ipv6", "on"]);
    topology.proxy(
        "
admin: {address: '127.0.0.1:15000'}
access_log: {path: 'ACCESS_LOG'}
workers: 1
listeners:
  - {name: outbound, address: '[::]:15001', original_destination: true, detect_timeout: 200ms}
  - name: any-8080
    address: '0.0.0.0:8080'
    bind: false
    routes: [{name: r, backends: [{cluster: remote-http}], response_headers: {set: [{name: x-remora, value: detected}]}}]
  - name: v6-8080
    address: '[fd77::2]:8080'
    bind: false
    routes: [{name: r, backends: [{cluster: remote-http-v6}], response_headers: {set: [{name: x-remora, value: v6}]}}]
  - {name: smtp-ish, address: '10.77.0.2:2525', bind: false, cluster: banner}
  - {name: mysql, address: '10.77.0.2:3306', bind: false}
  - {name: tls, address: '10.77.0.2:9090', bind: false}
clusters:
  - {name: remote-http, endpoints: ['10.77.0.2:8080']}
  - {name: remote-http-v6, endpoints: ['[fd77::2]:8080']}
  - {name: banner, endpoints: ['10.77.0.2:2525']}
",
    );
    let reply = topology.app(&["get", "http://10.77.0.2:8080/"]);
    assert!(reply.starts_with("200 detected remote"), "{reply}");
    let reply = topology.app(&["get", "http://[fd77::2]:8080/"]);
    assert!(reply.starts_with("200 v6 remote"), "{reply}");
    // The client waits for the server: detection gives up after 200 ms and
    // the connection goes to the listener's cluster as opaque TCP.
    assert_eq!(
        topology.app(&["hear", "10.77.0.2", "2525"]),
        "220 remote ready"
    );
    // 3306 is an opaque port: no detection, no wait, to the original
    // destination (the listener has no cluster).
    assert_eq!(
        topology.app(&["hear", "10.77.0.2", "3306"]),
        "220 remote ready"
    );
    // TLS: passed through as opaque (the echo server sends the ClientHello
    // back, so the handshake fails at the client), the SNI logged.
    assert_eq!(
        topology.app(&["tls", "10.77.0.2", "9090", "reviews.example"]),
        "tls-failed"
    );
    let metrics = topology.metrics();
    let captured = |protocol: &str| {
        metric(
            &metrics,
            &format!(
                "remora_captured_connections_total{{listener=\"outbound\",direction=\"outbound\",protocol=\"{protocol}\"}}"
            ),
        )
    };
    assert_eq!(captured("http1"), 2.0, "{metrics}");
    assert_eq!(captured("tls"), 1.0, "{metrics}");
    assert_eq!(captured("tcp"), 2.0, "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            "remora_protocol_detect_timeouts_total{listener=\"outbound\"}"
        ),
        1.0,
        "{metrics}"
    );
    let lines = topology.access_log(5);
    let find = |dst: &str| {
        lines
            .iter()
            .find(|l| l["original_dst"] == dst)
            .unwrap_or_else(|| panic!("no line for {dst}: {lines:?}"))
    };
    let banner = find("10.77.0.2:2525");
    assert_eq!(banner["detect"], "timeout");
    assert_eq!(banner["cluster"], "banner");
    assert!(banner["duration_ms"].as_f64().unwrap() >= 200.0, "{banner}");
    assert_eq!(find("10.77.0.2:3306")["detect"], "opaque_port");
    let tls = find("10.77.0.2:9090");
    assert_eq!(tls["protocol"], "tls");
    assert_eq!(tls["sni"], "reviews.example");
    assert_eq!(find("[fd77::2]:8080")["listener"], "v6-8080");
}

/// Inbound: a remote client reaches the pod's application through the
/// inbound capture listener, on loopback or at the pod IP the application
/// binds; an inbound HTTP listener routes; the proxy's own ports are never
/// a destination; excluded ports and CIDRs bypass the proxy.
#[test]
fn inbound_capture_reaches_the_application_and_exclusions_bypass() {
    let Some(mut topology) = Topology::create("i") else {
        return;
    };
    topology.init(&[
        "--ipv6",
        "off",
        "--exclude-inbound-ports",
        "8001",
        "--exclude-outbound-ports",
        "9090",
    ]);
    let config = "
admin: {address: '127.0.0.1:15000'}
access_log: {path: 'ACCESS_LOG'}
workers: 1
listeners:
  - {name: outbound, address: '0.0.0.0:15001', original_destination: true}
  - {name: inbound, address: '0.0.0.0:15006', original_destination: true, direction: inbound}
  - name: app-8002
    address: '0.0.0.0:8002'
    bind: false
    direction: inbound
    routes: [{name: r, backends: [{cluster: app}], response_headers: {set: [{name: x-remora, value: inbound}]}}]
  - {name: own, address: '0.0.0.0:18080', routes: [{name: r, direct_response: {status: 204}}]}
clusters:
  - {name: app, endpoints: ['127.0.0.1:8000']}
";
    topology.proxy(config);
    // Unclaimed inbound: to the application on loopback.
    let reply = topology.remote(&["get", "http://10.77.0.1:8000/"]);
    assert!(reply.starts_with("200 - app"), "{reply}");
    // An inbound listener for port 8002 routes (to the app on 8000).
    let reply = topology.remote(&["get", "http://10.77.0.1:8002/"]);
    assert!(reply.starts_with("200 inbound app"), "{reply}");
    // One of the proxy's own ports is never a destination: reset.
    let own = topology.remote(&["send", "10.77.0.1", "18080"]);
    assert!(own == "reset" || own == "closed", "{own}");
    // Excluded inbound port: straight to the app (bound on the pod IP only).
    let reply = topology.remote(&["get", "http://10.77.0.1:8001/"]);
    assert!(reply.starts_with("200 - app"), "{reply}");
    // Excluded outbound port: straight to the remote service.
    assert_eq!(topology.app(&["send", "10.77.0.2", "9090"]), "ping");
    let metrics = topology.metrics();
    let inbound = |protocol: &str| {
        metric(
            &metrics,
            &format!(
                "remora_captured_connections_total{{listener=\"inbound\",direction=\"inbound\",protocol=\"{protocol}\"}}"
            ),
        )
    };
    assert_eq!(inbound("http1"), 2.0, "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            "remora_passthrough_connections_total{listener=\"outbound\"}"
        ),
        0.0,
        "the excluded outbound port bypassed the proxy"
    );
    assert_eq!(
        metric(
            &metrics,
            "remora_downstream_connections_total{listener=\"inbound\",worker=\"0\"}"
        ),
        3.0,
        "the excluded inbound port bypassed the proxy: {metrics}"
    );
    let lines = topology.access_log(2);
    let routed = lines.iter().find(|l| l["listener"] == "app-8002").unwrap();
    assert_eq!(routed["direction"], "inbound");
    assert_eq!(routed["original_dst"], "10.77.0.1:8002");

    // The application binds only the pod IP: loopback is refused, so the
    // inbound passthrough dials the original address. (Port 8001 is not
    // excluded this time.)
    topology.stop_proxy();
    topology.init(&["--clean"]);
    topology.init(&["--ipv6", "off"]);
    topology.proxy(config);
    let reply = topology.remote(&["get", "http://10.77.0.1:8001/"]);
    assert!(reply.starts_with("200 - app"), "{reply}");
    let metrics = topology.metrics();
    assert_eq!(
        metric(
            &metrics,
            "remora_passthrough_connections_total{listener=\"inbound\"}"
        ),
        1.0,
        "{metrics}"
    );
}
