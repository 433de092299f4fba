//! The capture rules `remora-proxy init` writes: the text fed to
//! `iptables-restore --noflush` (and `ip6tables-restore`) for one address
//! family. Pure functions of the options and of what the table holds now,
//! so they are tested without touching a network namespace.
//!
//! Everything lives in the `nat` table, in Remora's own chains, entered by
//! one jump from `PREROUTING` (inbound) and one from `OUTPUT` (outbound):
//!
//! - `REMORA_INBOUND`: excluded ports and the proxy's own ports return;
//!   everything else is redirected to the inbound capture port.
//! - `REMORA_OUTPUT`: the proxy's own traffic (its UID or GID), loopback,
//!   excluded ports and CIDRs return; the included CIDRs (default: all)
//!   are redirected to the outbound capture port.
//!
//! Only TCP is captured: UDP (and with it DNS) is never touched.

use std::fmt::Write as _;
use std::net::IpAddr;

/// What to capture and what to leave alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureOptions {
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    pub outbound_port: u16,
    pub inbound_port: u16,
    /// The proxy's own listening ports besides the two capture ports
    /// (admin); inbound connections to them are never redirected.
    pub proxy_ports: Vec<u16>,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_outbound_cidrs: Vec<Cidr>,
    /// Empty: every destination.
    pub include_outbound_cidrs: Vec<Cidr>,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            proxy_uid: 1337,
            proxy_gid: 1337,
            outbound_port: 15001,
            inbound_port: 15006,
            proxy_ports: vec![15000],
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
            include_outbound_cidrs: Vec::new(),
        }
    }
}

/// An address block, `10.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub address: IpAddr,
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an address block (10.0.0.0/8, fd00::/8)"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix must be 0 to {max}"))?,
        };
        Ok(Cidr { address, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// IPv4 (`iptables`) or IPv6 (`ip6tables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    fn holds(self, cidr: &Cidr) -> bool {
        cidr.address.is_ipv4() == (self == Family::V4)
    }
}

pub const CHAINS: [&str; 4] = [
    "REMORA_INBOUND",
    "REMORA_IN_REDIRECT",
    "REMORA_OUTPUT",
    "REMORA_REDIRECT",
];

/// The jumps from the built-in chains into Remora's, as `iptables-save`
/// prints them.
pub const JUMPS: [(&str, &str); 2] = [
    ("PREROUTING", "-A PREROUTING -p tcp -j REMORA_INBOUND"),
    ("OUTPUT", "-A OUTPUT -p tcp -j REMORA_OUTPUT"),
];

/// The `iptables-restore --noflush` input that installs the rules. `saved`
/// is the `nat` table as `iptables-save -t nat` prints it now: jumps that
/// are there already are not added again, and Remora's chains are declared
/// (which flushes them), so running `init` twice leaves one copy.
pub fn install(options: &CaptureOptions, family: Family, saved: &str) -> String {
    let mut out = String::from("*nat\n");
    for chain in CHAINS {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for (_, jump) in JUMPS {
        if !saved.lines().any(|line| line.trim() == jump) {
            let _ = writeln!(out, "{jump}");
        }
    }
    // Inbound: the proxy's own ports and the excluded ones are left alone.
    let mut keep_inbound = vec![options.outbound_port, options.inbound_port];
    keep_inbound.extend(&options.proxy_ports);
    keep_inbound.extend(&options.exclude_inbound_ports);
    keep_inbound.sort_unstable();
    keep_inbound.dedup();
    for port in keep_inbound {
        let _ = writeln!(
            out,
            "-A REMORA_INBOUND -p tcp -m tcp --dport {port} -j RETURN"
        );
    }
    out.push_str("-A REMORA_INBOUND -p tcp -j REMORA_IN_REDIRECT\n");
    let _ = writeln!(
        out,
        "-A REMORA_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        options.inbound_port
    );
    // Outbound: never the proxy's own connections (no loops), never
    // loopback (the application talking to itself).
    let _ = writeln!(
        out,
        "-A REMORA_OUTPUT -m owner --uid-owner {} -j RETURN",
        options.proxy_uid
    );
    let _ = writeln!(
        out,
        "-A REMORA_OUTPUT -m owner --gid-owner {} -j RETURN",
        options.proxy_gid
    );
    out.push_str("-A REMORA_OUTPUT -o lo -j RETURN\n");
    let _ = writeln!(out, "-A REMORA_OUTPUT -d {} -j RETURN", family.loopback());
    let mut ports = options.exclude_outbound_ports.clone();
    ports.sort_unstable();
    ports.dedup();
    for port in ports {
        let _ = writeln!(
            out,
            "-A REMORA_OUTPUT -p tcp -m tcp --dport {port} -j RETURN"
        );
    }
    for cidr in options
        .exclude_outbound_cidrs
        .iter()
        .filter(|c| family.holds(c))
    {
        let _ = writeln!(out, "-A REMORA_OUTPUT -d {cidr} -j RETURN");
    }
    if options.include_outbound_cidrs.is_empty() {
        out.push_str("-A REMORA_OUTPUT -j REMORA_REDIRECT\n");
    } else {
        for cidr in options
            .include_outbound_cidrs
            .iter()
            .filter(|c| family.holds(c))
        {
            let _ = writeln!(out, "-A REMORA_OUTPUT -d {cidr} -j REMORA_REDIRECT");
        }
    }
    let _ = writeln!(
        out,
        "-A REMORA_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        options.outbound_port
    );
    out.push_str("COMMIT\n");
    out
}

/// The `iptables-restore --noflush` input that removes every rule `init`
/// added, given the `nat` table as it is now; `None` when there is nothing
/// of Remora's to remove.
pub fn clean(saved: &str) -> Option<String> {
    let mut out = String::from("*nat\n");
    let mut any = false;
    for (_, jump) in JUMPS {
        for line in saved.lines().filter(|line| line.trim() == jump) {
            let _ = writeln!(out, "-D{}", &line.trim()[2..]);
            any = true;
        }
    }
    let present: Vec<&str> = CHAINS
        .iter()
        .copied()
        .filter(|chain| {
            saved
                .lines()
                .any(|line| line.starts_with(&format!(":{chain} ")))
        })
        .collect();
    for chain in &present {
        let _ = writeln!(out, "-F {chain}");
    }
    for chain in &present {
        let _ = writeln!(out, "-X {chain}");
    }
    any |= !present.is_empty();
    out.push_str("COMMIT\n");
    any.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> CaptureOptions {
        CaptureOptions {
            exclude_inbound_ports: vec![22],
            exclude_outbound_ports: vec![3306, 3306],
            exclude_outbound_cidrs: vec![
                "10.0.0.0/8".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ],
            ..CaptureOptions::default()
        }
    }

    #[test]
    fn install_writes_remoras_chains_and_the_two_jumps() {
        let rules = install(&options(), Family::V4, "");
        let expected = "\
*nat
:REMORA_INBOUND - [0:0]
:REMORA_IN_REDIRECT - [0:0]
:REMORA_OUTPUT - [0:0]
:REMORA_REDIRECT - [0:0]
-A PREROUTING -p tcp -j REMORA_INBOUND
-A OUTPUT -p tcp -j REMORA_OUTPUT
-A REMORA_INBOUND -p tcp -m tcp --dport 22 -j RETURN
-A REMORA_INBOUND -p tcp -m tcp --dport 15000 -j RETURN
-A REMORA_INBOUND -p tcp -m tcp --dport 15001 -j RETURN
-A REMORA_INBOUND -p tcp -m tcp --dport 15006 -j RETURN
-A REMORA_INBOUND -p tcp -j REMORA_IN_REDIRECT
-A REMORA_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A REMORA_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A REMORA_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A REMORA_OUTPUT -o lo -j RETURN
-A REMORA_OUTPUT -d 127.0.0.0/8 -j RETURN
-A REMORA_OUTPUT -p tcp -m tcp --dport 3306 -j RETURN
-A REMORA_OUTPUT -d 10.0.0.0/8 -j RETURN
-A REMORA_OUTPUT -j REMORA_REDIRECT
-A REMORA_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT
";
        assert_eq!(rules, expected);
    }

    #[test]
    fn each_family_gets_its_own_addresses() {
        let v6 = install(&options(), Family::V6, "");
        assert!(v6.contains("-A REMORA_OUTPUT -d ::1/128 -j RETURN"));
        assert!(v6.contains("-A REMORA_OUTPUT -d fd00::/8 -j RETURN"));
        assert!(!v6.contains("10.0.0.0/8"));
    }

    #[test]
    fn included_cidrs_narrow_what_is_redirected() {
        let options = CaptureOptions {
            include_outbound_cidrs: vec!["10.1.0.0/16".parse().unwrap()],
            ..CaptureOptions::default()
        };
        let rules = install(&options, Family::V4, "");
        assert!(rules.contains("-A REMORA_OUTPUT -d 10.1.0.0/16 -j REMORA_REDIRECT"));
        assert!(!rules.contains("-A REMORA_OUTPUT -j REMORA_REDIRECT"));
    }

    #[test]
    fn jumps_already_there_are_not_added_twice() {
        let saved = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -p tcp -j REMORA_INBOUND\n-A OUTPUT -p tcp -j REMORA_OUTPUT\nCOMMIT\n";
        let rules = install(&CaptureOptions::default(), Family::V4, saved);
        assert!(!rules.contains("-A PREROUTING"), "{rules}");
        assert!(!rules.contains("-A OUTPUT "), "{rules}");
    }

    #[test]
    fn clean_removes_the_jumps_and_chains_it_finds() {
        assert_eq!(clean("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"), None);
        let saved = "*nat\n:PREROUTING ACCEPT [0:0]\n:REMORA_INBOUND - [0:0]\n:REMORA_OUTPUT - [0:0]\n-A PREROUTING -p tcp -j REMORA_INBOUND\nCOMMIT\n";
        assert_eq!(
            clean(saved).unwrap(),
            "*nat\n-D PREROUTING -p tcp -j REMORA_INBOUND\n-F REMORA_INBOUND\n-F REMORA_OUTPUT\n-X REMORA_INBOUND\n-X REMORA_OUTPUT\nCOMMIT\n"
        );
    }

    #[test]
    fn cidrs_are_checked() {
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
        assert_eq!("10.1.2.3".parse::<Cidr>().unwrap().prefix, 32);
    }
}
