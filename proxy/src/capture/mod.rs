//! Traffic capture for a transparent sidecar: `remora-proxy init` installs
//! the iptables rules that redirect a pod's TCP to the proxy's capture
//! ports (what an init container runs), `--dry-run` prints them, and
//! `--clean` removes them. The rules themselves are in [`rules`].
//!
//! The rules go in through `iptables-restore --noflush` (and
//! `ip6tables-restore`), one atomic transaction per address family, with
//! the same flavour of iptables the host uses: nft or legacy, whichever
//! already holds rules (nft when neither does and both exist).

pub mod rules;

use std::io::Write;
use std::process::{Command, Stdio};

pub use rules::{CaptureOptions, Cidr, Family};

/// Which iptables to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavour {
    /// Whichever the host uses (see the module docs).
    Auto,
    Nft,
    Legacy,
}

/// Whether IPv6 gets the rules too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ipv6 {
    /// When the kernel has IPv6 and ip6tables is installed.
    Auto,
    On,
    Off,
}

/// What `init` should do.
#[derive(Debug, Clone)]
pub struct InitRequest {
    pub options: CaptureOptions,
    pub flavour: Flavour,
    pub ipv6: Ipv6,
    pub dry_run: bool,
    pub clean: bool,
}

/// Why `init` could not do its work; each names what is missing or what
/// refused.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(
        "{0} not found: install iptables (Debian: apt-get install iptables), or choose another --iptables"
    )]
    Missing(String),
    #[error(
        "{command} was refused: {stderr}. init needs the NET_ADMIN capability (run it as root, or as an init container with NET_ADMIN and NET_RAW)"
    )]
    Permission { command: String, stderr: String },
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("--ipv6 on, but {0}")]
    NoIpv6(String),
}

/// The commands of one family and flavour.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tools {
    save: String,
    restore: String,
}

/// Runs `init` and returns what to print: the rules (dry run) or a summary.
pub fn init(request: &InitRequest) -> Result<String, InitError> {
    let mut report = String::new();
    let mut families = vec![Family::V4];
    match request.ipv6 {
        Ipv6::Off => {}
        Ipv6::On => {
            if !std::path::Path::new("/proc/net/if_inet6").exists() {
                return Err(InitError::NoIpv6("the kernel has no IPv6".into()));
            }
            families.push(Family::V6);
        }
        Ipv6::Auto => {
            if std::path::Path::new("/proc/net/if_inet6").exists()
                && tools(Family::V6, request.flavour).is_ok()
            {
                families.push(Family::V6);
            }
        }
    }
    for family in families {
        let tools = tools(family, request.flavour)?;
        let saved = match run(&tools.save, &["-t", "nat"], None) {
            Ok(saved) => saved,
            // A dry run shows the full rules when the table cannot be read.
            Err(_) if request.dry_run => String::new(),
            Err(error) => return Err(error),
        };
        let input = if request.clean {
            rules::clean(&saved)
        } else {
            Some(rules::install(&request.options, family, &saved))
        };
        let Some(input) = input else {
            report.push_str(&format!("# {}: no Remora rules to remove\n", tools.restore));
            continue;
        };
        if request.dry_run {
            report.push_str(&format!("# {} --noflush\n{input}", tools.restore));
            continue;
        }
        run(&tools.restore, &["--noflush"], Some(&input))?;
        let what = if request.clean {
            "removed"
        } else {
            "installed"
        };
        report.push_str(&format!(
            "{what} the capture rules with {}\n",
            tools.restore
        ));
    }
    Ok(report)
}

/// The save/restore commands for `family`, in the flavour asked for or
/// the host's.
fn tools(family: Family, flavour: Flavour) -> Result<Tools, InitError> {
    let base = match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    };
    let of = |suffix: &str| Tools {
        save: format!("{base}{suffix}-save"),
        restore: format!("{base}{suffix}-restore"),
    };
    let usable = |tools: &Tools| on_path(&tools.save) && on_path(&tools.restore);
    let (nft, legacy, plain) = (of("-nft"), of("-legacy"), of(""));
    let chosen = match flavour {
        Flavour::Nft => nft,
        Flavour::Legacy => legacy,
        Flavour::Auto => match (usable(&nft), usable(&legacy)) {
            (true, true) => {
                let rules = |tools: &Tools| {
                    run(&tools.save, &[], None)
                        .map(|text| text.lines().filter(|l| l.starts_with("-A ")).count())
                        .unwrap_or(0)
                };
                if rules(&legacy) > rules(&nft) {
                    legacy
                } else {
                    nft
                }
            }
            (true, false) => nft,
            (false, true) => legacy,
            (false, false) => plain,
        },
    };
    for command in [&chosen.save, &chosen.restore] {
        if !on_path(command) {
            return Err(InitError::Missing(command.clone()));
        }
    }
    Ok(chosen)
}

fn on_path(command: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(command).is_file()))
}

/// Runs `command args`, feeding `input`; its standard output, or an error
/// that says why it failed.
fn run(command: &str, args: &[&str], input: Option<&str>) -> Result<String, InitError> {
    let shown = format!("{command} {}", args.join(" ")).trim().to_string();
    let mut child = Command::new(command)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| match error.kind() {
            // Not found, and not on PATH either (a missing /dev/null is
            // also ENOENT: that is not a missing binary).
            std::io::ErrorKind::NotFound if !on_path(command) => {
                InitError::Missing(command.to_string())
            }
            _ => InitError::Failed {
                command: shown.clone(),
                stderr: error.to_string(),
            },
        })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        let _ = stdin.write_all(input.as_bytes());
    }
    let output = child
        .wait_with_output()
        .map_err(|error| InitError::Failed {
            command: shown.clone(),
            stderr: error.to_string(),
        })?;
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if !output.status.success() {
        let refused = stderr.contains("Permission denied")
            || stderr.contains("must be root")
            || stderr.contains("Operation not permitted");
        return Err(if refused {
            InitError::Permission {
                command: shown,
                stderr,
            }
        } else {
            InitError::Failed {
                command: shown,
                stderr,
            }
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).to_string())
}
