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
