//! The OCI images `scripts/build-images` built (the test command builds
//! them and names their tag in `REMORA_TEST_IMAGES`), run as Kubernetes
//! would run them, without a container runtime: each image's file system
//! mounted (`buildah mount`) and its binary run under `chroot` in a network
//! namespace.
//!
//! - the control plane image serves a mesh, and the proxy image, as the
//!   sidecar's user and with the injector's arguments, gets its config from
//!   it over xDS and answers `/ready` (the xDS address by name, through
//!   the pod's `/etc/hosts`, as the static binary resolves it);
//! - the init image runs exactly the command and arguments of the
//!   injector's patch for a real pod, and installs in the namespace the
//!   capture rules `remora-proxy init` defines (the same rules as its
//!   `--dry-run` prints).

#[path = "../../proxy/tests/e2e/netns.rs"]
mod netns;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netns::Netns;
use serde_json::{Value, json};

fn buildah(args: &[&str]) -> Result<String, String> {
    let output = Command::new("buildah")
        .args(["--storage-driver", "vfs"])
        .args(args)
        .output()
        .map_err(|e| format!("buildah: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(format!(
            "buildah {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// A working container of an image, its root file system mounted; removed
/// when dropped.
struct Mounted {
    container: String,
    root: PathBuf,
}

impl Mounted {
    /// The image's root, with what a container runtime adds: `/dev`'s
    /// character devices and `/proc`.
    fn of(image: &str) -> Mounted {
        let container = buildah(&["from", "--pull-never", image]).unwrap();
        let root = PathBuf::from(buildah(&["mount", &container]).unwrap());
        std::fs::create_dir_all(root.join("dev")).unwrap();
        for (name, minor) in [
            ("null", "3"),
            ("zero", "5"),
            ("random", "8"),
            ("urandom", "9"),
        ] {
            let path = root.join("dev").join(name);
            let made = Command::new("mknod")
                .arg(&path)
                .args(["-m", "666", "c", "1", minor])
                .status();
            assert!(made.is_ok_and(|s| s.success()), "mknod {}", path.display());
        }
        std::fs::create_dir_all(root.join("proc")).unwrap();
        let proc = Command::new("mount")
            .args(["-t", "proc", "proc"])
            .arg(root.join("proc"))
            .status();
        assert!(
            proc.is_ok_and(|s| s.success()),
            "mount proc in {}",
            root.display()
        );
        Mounted { container, root }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.root.join("proc")).status();
        let _ = buildah(&["umount", &self.container]);
        let _ = buildah(&["rm", &self.container]);
    }
}

/// The images' tag, or why the test cannot run here.
fn images() -> Option<String> {
    let Some(tag) = std::env::var("REMORA_TEST_IMAGES")
        .ok()
        .filter(|t| !t.is_empty())
    else {
        eprintln!(
            "\n**** SKIPPED: no images to test: REMORA_TEST_IMAGES is unset (scripts/test builds them with scripts/build-images) ****\n"
        );
        return None;
    };
    Some(tag)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An HTTP GET from inside `ns` (Python's urllib): (status, body).
fn get(ns: &Netns, url: &str) -> Option<(u16, String)> {
    let script = format!(
        "import urllib.request, urllib.error\ntry:\n r = urllib.request.urlopen({url:?}, timeout=2); print(r.status); print(r.read().decode())\nexcept urllib.error.HTTPError as e:\n print(e.code); print(e.read().decode())"
    );
    let (ok, out, _) = ns.run(&["python3", "-c", &script]);
    if !ok {
        return None;
    }
    let (status, body) = out.split_once('\n')?;
    Some((status.trim().parse().ok()?, body.to_string()))
}

#[test]
fn the_images_run_the_sidecar_the_control_plane_and_the_capture_init() {
    let Some(tag) = images() else { return };
    let (proxy_image, init_image, cp_image) = (
        format!("remora-proxy:{tag}"),
        format!("remora-init:{tag}"),
        format!("remora-control-plane:{tag}"),
    );
    // Size goal: the sidecar image under 15 MB.
    let inspected: Value =
        serde_json::from_str(&buildah(&["inspect", "--type", "image", &proxy_image]).unwrap())
            .unwrap();
    let manifest: Value = serde_json::from_str(inspected["Manifest"].as_str().unwrap()).unwrap();
    let size: u64 = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum();
    assert!(size < 15_000_000, "{proxy_image} is {size} bytes");
    assert_eq!(
        inspected["OCIv1"]["config"]["User"], "1337:1337",
        "a non-root user"
    );

    let Some(pod) = Netns::create("image-pod") else {
        return;
    };
    let (proxy, cp, init) = (
        Mounted::of(&proxy_image),
        Mounted::of(&cp_image),
        Mounted::of(&init_image),
    );
    pod.run(&["ip", "link", "set", "lo", "up"]);

    // The control plane, from its image, as its user, serving a mesh.
    let mesh = "services:\n  - {name: web, namespace: shop, port: 8080, endpoints: ['127.0.0.1:8080']}\nproxies:\n  - node_id: web-0.shop\n    inbound: [{service: web.shop, listen: '127.0.0.1:18080', target: '127.0.0.1:8080'}]\n";
    std::fs::create_dir_all(cp.root.join("tmp")).unwrap();
    std::fs::write(cp.root.join("tmp/mesh.yaml"), mesh).unwrap();
    let control_plane = Killed(
        Command::new("ip")
            .args(["netns", "exec", &pod.0, "chroot", "--userspec=65532:65532"])
            .arg(&cp.root)
            .args([
                "/usr/local/bin/remora-control-plane",
                "serve",
                "--mesh",
                "/tmp/mesh.yaml",
                "--xds-address",
                "0.0.0.0:15010",
                "--admin-address",
                "127.0.0.1:15014",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The sidecar, from its image, as user 1337, with the injector's
    // arguments; the kubelet gives every pod an /etc/hosts.
    std::fs::write(
        proxy.root.join("etc/hosts"),
        "127.0.0.1 localhost remora-control-plane.remora-system.svc\n",
    )
    .unwrap();
    let sidecar = Killed(
        Command::new("ip")
            .args(["netns", "exec", &pod.0, "chroot", "--userspec=1337:1337"])
            .arg(&proxy.root)
            .args([
                "/usr/local/bin/remora-proxy",
                "--xds",
                "remora-control-plane.remora-system.svc:15010",
                "--node-id",
                "web-0.shop",
                "--delta",
            ])
            .env("REMORA_ADMIN_ADDRESS", "0.0.0.0:15000")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = None;
    while Instant::now() < deadline {
        last = get(&pod, "http://127.0.0.1:15000/ready");
        if last.as_ref().is_some_and(|(status, _)| *status == 200) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, _) = last.clone().unwrap_or_default();
    if status != 200 {
        drop(sidecar);
        drop(control_plane);
        panic!("the sidecar image never became ready: {last:?}");
    }
    let (_, xds) = get(&pod, "http://127.0.0.1:15000/xds").unwrap();
    let xds: Value = serde_json::from_str(&xds).unwrap();
    assert_eq!(xds["connected"], true, "{xds}");
    assert_eq!(xds["node_id"], "web-0.shop");
    let (_, cp_ready) = get(&pod, "http://127.0.0.1:15014/ready").unwrap();
    assert!(cp_ready.starts_with("ready"), "{cp_ready}");
    drop(sidecar);
    drop(control_plane);

    // The capture init: the command and arguments of the injector's patch
    // for a real pod, run from the init image as root.
    let config = remora_control_plane::inject::InjectConfig::parse(
        "image: remora-proxy:t\ninit_image: remora-init:t\nxds_address: cp:15010\n",
    )
    .unwrap();
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/admission/deployment-pod.json");
    let mut review: Value = serde_json::from_slice(&std::fs::read(fixture).unwrap()).unwrap();
    review["request"]["object"]["metadata"]["annotations"] = json!({"remora.dev/exclude-inbound-ports": "22", "remora.dev/exclude-outbound-cidrs": "169.254.169.254/32"});
    let (answer, _) = remora_control_plane::inject::review(
        &serde_json::to_vec(&review).unwrap(),
        &config,
        remora_control_plane::inject::Selection::Namespace,
    );
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    let patched = remora_control_plane::inject::patch::patched(
        &review["request"]["object"],
        &answer["response"],
    )
    .unwrap()
    .expect("injected");
    let init_container = &patched["spec"]["initContainers"][0];
    assert_eq!(init_container["name"], "remora-init");
    let command: Vec<String> = serde_json::from_value(init_container["command"].clone()).unwrap();
    let args: Vec<String> = serde_json::from_value(init_container["args"].clone()).unwrap();
    let mut line: Vec<String> = command.clone();
    line.extend(args.iter().cloned());
    let Some(capture) = Netns::create("image-init") else {
        return;
    };
    let mut run = vec!["chroot".to_string(), init.root.display().to_string()];
    run.extend(line.iter().cloned());
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let (ok, out, err) = capture.run(&run);
    assert!(ok, "{line:?} in the init image: {out}{err}");
    // The same rules `--dry-run` prints are in the namespace's nat table.
    let mut dry = vec!["chroot".to_string(), init.root.display().to_string()];
    dry.extend(line.iter().cloned());
    dry.insert(4, "--dry-run".into());
    let dry: Vec<&str> = dry.iter().map(String::as_str).collect();
    let (ok, planned, err) = capture.run(&dry);
    assert!(ok, "{err}");
    // One section per address family, each headed by its restore command.
    let mut nat = Vec::new();
    for section in planned.split("# ").filter(|s| !s.trim().is_empty()) {
        let restore = section.split_whitespace().next().unwrap();
        let save = restore.replace("-restore", "-save");
        let installed = capture.nat(&save);
        for rule in section.lines().filter(|l| l.starts_with("-A ")) {
            assert!(
                installed.iter().any(|r| r == rule),
                "{rule} missing from {save}:\n{}",
                installed.join("\n")
            );
        }
        nat.extend(installed);
    }
    assert!(
        nat.iter().any(|r| r.contains("--dport 22 -j RETURN")),
        "{}",
        nat.join("\n")
    );
    assert!(
        nat.iter().any(|r| r.contains("169.254.169.254/32")),
        "{}",
        nat.join("\n")
    );
    assert!(
        nat.iter().any(|r| r.contains("--uid-owner 1337")),
        "{}",
        nat.join("\n")
    );
}
