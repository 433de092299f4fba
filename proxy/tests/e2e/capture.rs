//! `remora-proxy init` in a real network namespace with real iptables:
//! the rules go in atomically, a second run leaves one copy, `--clean`
//! leaves nothing, and a missing binary is named. Needs root and `ip`
//! and `iptables` (scripts/test installs them); without them the tests say
//! why and skip.

use std::path::Path;
use std::process::Command;

use crate::support::process::binary;

use crate::netns::{Netns, Topology, have};
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

/// `remora_captured_connections_total` of one capture listener, direction
/// and protocol.
fn captured(metrics: &str, listener: &str, direction: &str, protocol: &str) -> f64 {
    metric(
        metrics,
        &format!(
            "remora_captured_connections_total{{listener=\"{listener}\",direction=\"{direction}\",protocol=\"{protocol}\"}}"
        ),
    )
}

#[test]
fn captured_traffic_is_routed_by_its_original_destination() {
    let Some(mut topology) = Topology::create("o", Path::new(binary())) else {
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
    let captured = |protocol| captured(&metrics, "outbound", "outbound", protocol);
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
    let Some(mut topology) = Topology::create("d", Path::new(binary())) else {
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
    // IPv6 with no listener: passed through to its original destination.
    assert_eq!(topology.app(&["send", "fd77::2", "9090"]), "ping");
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
    let captured = |protocol| captured(&metrics, "outbound", "outbound", protocol);
    assert_eq!(captured("http1"), 2.0, "{metrics}");
    assert_eq!(captured("tls"), 1.0, "{metrics}");
    assert_eq!(captured("tcp"), 3.0, "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            "remora_protocol_detect_timeouts_total{listener=\"outbound\"}"
        ),
        1.0,
        "{metrics}"
    );
    let lines = topology.access_log(6);
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
    assert_eq!(find("[fd77::2]:9090")["cluster"], "passthrough");
}

/// Inbound: a remote client reaches the pod's application through the
/// inbound capture listener, on loopback or at the pod IP the application
/// binds; an inbound HTTP listener routes; the proxy's own ports are never
/// a destination; excluded ports and CIDRs bypass the proxy.
#[test]
fn inbound_capture_reaches_the_application_and_exclusions_bypass() {
    let Some(mut topology) = Topology::create("i", Path::new(binary())) else {
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
    let inbound = |protocol| captured(&metrics, "inbound", "inbound", protocol);
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
    // /config_dump shows the capture listeners as configured.
    let dump = topology
        .app(&["get", "http://127.0.0.1:15000/config_dump"])
        .replace(char::is_whitespace, "");
    for field in [
        r#""original_destination":true"#,
        r#""direction":"inbound""#,
        r#""bind":false"#,
    ] {
        assert!(dump.contains(field), "{field} in {dump}");
    }

    // The application binds only the pod IP: loopback is refused, so the
    // inbound passthrough dials the original address. (Port 8001 is not
    // excluded this time.)
    // This time the remote host's address is excluded instead: the
    // application reaches it directly.
    topology.stop_proxy();
    topology.init(&["--clean"]);
    topology.init(&["--ipv6", "off", "--exclude-outbound-cidrs", "10.77.0.2/32"]);
    topology.proxy(config);
    let reply = topology.remote(&["get", "http://10.77.0.1:8001/"]);
    assert!(reply.starts_with("200 - app"), "{reply}");
    assert_eq!(topology.app(&["send", "10.77.0.2", "9090"]), "ping");
    let reply = topology.app(&["get", "http://10.77.0.2:8080/"]);
    assert!(reply.starts_with("200 - remote"), "{reply}");
    let metrics = topology.metrics();
    assert_eq!(
        metric(
            &metrics,
            "remora_passthrough_connections_total{listener=\"inbound\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "remora_downstream_connections_total{listener=\"outbound\",worker=\"0\"}"
        ),
        0.0,
        "the excluded CIDR bypassed the proxy: {metrics}"
    );
}
