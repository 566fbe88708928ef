//! End-to-end tests: real builds (root, loop devices, the host's Debian mirror) and boots.
//!
//! Under `CI=true` a missing capability fails; elsewhere these tests skip loudly. Builds never
//! run two at once (one lock), share one kiln cache (`KILN_TEST_CACHE`), and each distinct image
//! is built once: the bookworm root filesystem built first is reused by the failure tests as the
//! root of a tiny fixture OS element, so those cost seconds, not minutes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::support::{kiln_bin, Tree};

static BUILD_LOCK: Mutex<()> = Mutex::new(());
static ROOTFS: OnceLock<Result<PathBuf, String>> = OnceLock::new();

fn lock() -> MutexGuard<'static, ()> {
    BUILD_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn missing_capability() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("root".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("loop devices (/dev/loop-control)".into());
    }
    if which("debootstrap").is_none() && which("mmdebstrap").is_none() {
        return Some("debootstrap or mmdebstrap (scripts/install-host-deps)".into());
    }
    let sources = fs::read_dir("/etc/apt/sources.list.d").is_ok_and(|rd| {
        rd.flatten().any(|e| {
            fs::read_to_string(e.path()).is_ok_and(|t| t.contains("URIs:") || t.contains("deb "))
        })
    }) || fs::read_to_string("/etc/apt/sources.list")
        .is_ok_and(|t| t.contains("deb "));
    if !sources && std::env::var("DIB_DISTRIBUTION_MIRROR").is_err() {
        return Some("a Debian mirror in the host's apt sources or DIB_DISTRIBUTION_MIRROR".into());
    }
    None
}

/// Whether e2e tests can run; panics under CI when they cannot.
fn capable(test: &str) -> bool {
    match missing_capability() {
        None => true,
        Some(why) => {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "{test}: CI=true but this machine lacks {why}"
            );
            eprintln!("SKIPPED {test}: needs {why}");
            false
        }
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .ok()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

fn cache() -> PathBuf {
    std::env::var("KILN_TEST_CACHE").map_or_else(
        |_| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kiln-test-cache"),
        PathBuf::from,
    )
}

/// A test's working directory: removed when the test passes (images are large and the whole
/// suite must fit on a CI disk), kept for a look when it fails.
struct Work(PathBuf);

impl Work {
    /// Keeps the directory for the rest of the run.
    fn keep(self) -> PathBuf {
        let p = self.0.clone();
        std::mem::forget(self);
        p
    }
}

impl std::ops::Deref for Work {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Work {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

fn work(name: &str) -> Work {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("e2e")
        .join(name);
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    Work(d)
}

struct Outcome {
    code: i32,
    stderr: String,
    log: String,
}

/// Runs `kiln build ARGS` in `dir` with a private TMPDIR (checked for leftovers after).
fn build(dir: &Path, elements_path: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let tmp = dir.join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    let mut c = Command::new(kiln_bin());
    c.current_dir(dir)
        .arg("build")
        .args(args)
        .env("DIB_IMAGE_CACHE", cache())
        .env("DIB_RELEASE", "bookworm")
        .env("TMPDIR", &tmp)
        .env_remove("ELEMENTS_PATH")
        .env_remove("DIB_BLOCK_DEVICE_CONFIG")
        .env_remove("ARCH");
    if let Some(p) = elements_path {
        c.env("ELEMENTS_PATH", p);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run kiln build");
    let name = args
        .windows(2)
        .find(|w| w[0] == "-o")
        .map_or("image", |w| w[1]);
    let log = fs::read_to_string(dir.join(format!("{name}.d/build.log"))).unwrap_or_default();
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        log,
    }
}

/// Nothing of a build may remain: no temp dirs, no processes rooted inside, no loop devices, no
/// mounts.
fn assert_no_leftovers(dir: &Path) {
    if let Some(problem) = leftovers(dir) {
        panic!("{problem}");
    }
}

/// The first thing a build left behind, if any.
fn leftovers(dir: &Path) -> Option<String> {
    let tmp = dir.join("tmp");
    let left: Vec<_> = fs::read_dir(&tmp)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    if !left.is_empty() {
        return Some(format!("temp dirs left behind: {left:?}"));
    }
    let procs: Vec<i32> = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let root = fs::read_link(e.path().join("root")).ok()?;
            root.starts_with(&tmp).then_some(pid)
        })
        .collect();
    if !procs.is_empty() {
        return Some(format!("processes left in the build: {procs:?}"));
    }
    let loops = Command::new("losetup").arg("-a").output().unwrap();
    let loops = String::from_utf8_lossy(&loops.stdout);
    if loops.contains(&tmp.display().to_string()) {
        return Some(format!("loop devices left: {loops}"));
    }
    let mounts = Command::new("findmnt")
        .args(["-rn", "-o", "TARGET"])
        .output()
        .unwrap();
    let mounts = String::from_utf8_lossy(&mounts.stdout);
    if mounts.contains(&tmp.display().to_string()) {
        return Some(format!("mounts left: {mounts}"));
    }
    None
}

/// The bookworm root filesystem tarball, built once per run.
fn debian_rootfs() -> Result<PathBuf, String> {
    ROOTFS
        .get_or_init(|| {
            let _g = lock();
            let dir = work("rootfs").keep();
            let o = build(
                &dir,
                None,
                &["debian-minimal", "-t", "tar", "-o", "debian-rootfs"],
                &[],
            );
            if o.code != 0 {
                return Err(format!("rootfs build failed ({}):\n{}", o.code, o.stderr));
            }
            Ok(dir.join("debian-rootfs.tar"))
        })
        .clone()
}

#[test]
fn rootfs_tar_runs_apt_and_has_manifests() {
    if !capable("rootfs_tar_runs_apt_and_has_manifests") {
        return;
    }
    let tar = debian_rootfs().unwrap();
    let dir = tar.parent().unwrap().to_path_buf();
    let x = tempfile::tempdir().unwrap();
    let st = Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(x.path())
        .status()
        .unwrap();
    assert!(st.success());
    let out = Command::new("chroot")
        .arg(x.path())
        .args(["apt", "--version"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "apt --version failed in the tarball's chroot"
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("apt "));
    // NAME.d/: the installed packages, the environment, the arguments, the timings.
    let d = dir.join("debian-rootfs.d");
    let mut found_pkgs = false;
    for e in walk(&d) {
        let name = e.file_name().unwrap().to_string_lossy().into_owned();
        if name.contains("dpkg") {
            let t = fs::read_to_string(&e).unwrap();
            assert!(
                t.lines().any(|l| l.starts_with("apt ")),
                "{name} lacks apt:\n{t}"
            );
            found_pkgs = true;
        }
    }
    assert!(found_pkgs, "no installed-package list in {}", d.display());
    let timings: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(d.join("timings.json")).unwrap()).unwrap();
    assert!(timings["steps"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["step"] == "install"));
    // The tar must not contain the host's /dev or /proc contents.
    let list = Command::new("tar").arg("-tf").arg(&tar).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(!list
        .lines()
        .any(|l| l.starts_with("./proc/") && l.len() > 7));
    assert!(!list.contains("./tmp/in_target.d"));
    assert_no_leftovers(&dir);
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(rd) = fs::read_dir(d) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                v.extend(walk(&p));
            } else {
                v.push(p);
            }
        }
    }
    v
}

/// A tiny OS element whose root.d unpacks the shared bookworm tarball, and an element whose
/// hooks fail in the phase named by KILN_TEST_FAIL_PHASE (leaving a background process behind).
fn fixture_elements(rootfs: &Path) -> Tree {
    let t = Tree::new();
    t.el("test-rootfs")
        .provides(&["operating-system"])
        .env("10-test-rootfs", "export DISTRO_NAME=debian\nexport DIB_RELEASE=bookworm\nexport DIB_INIT_SYSTEM=systemd\n")
        .hook(
            "root",
            "10-unpack",
            &format!("tar -xf {} -C \"$TARGET_ROOT\" --numeric-owner", rootfs.display()),
        );
    // In chroot phases the failing hook also leaves a daemonised process behind, which the
    // teardown must find (its root is inside the build) and kill.
    let fail = |phase: &str| {
        let daemon = if matches!(phase, "install" | "finalise") {
            "  (setsid sleep 1000 </dev/null >/dev/null 2>&1 &)\n"
        } else {
            ""
        };
        format!(
            "if [ \"${{KILN_TEST_FAIL_PHASE:-}}\" = {phase} ]; then\n{daemon}  echo kiln-test-marker-{phase}\n  exit 3\nfi"
        )
    };
    t.el("fail-at")
        .hook("root", "90-fail-root", &fail("root"))
        .hook("install", "50-fail-install", &fail("install"))
        .hook("finalise", "50-fail-finalise", &fail("finalise"))
        .hook("cleanup", "50-fail-cleanup", &fail("cleanup"))
        .hook(
            "install",
            "60-slow",
            "if [ \"${KILN_TEST_SLOW:-}\" = 1 ]; then echo kiln-test-sleeping; sleep 600; fi",
        )
        .hook(
            "finalise",
            "60-slow",
            "if [ \"${KILN_TEST_SLOW:-}\" = finalise ]; then\n\
             setsid sleep 900 </dev/null >/dev/null 2>&1 &\n\
             echo kiln-test-sleeping; sleep 600; fi",
        );
    t
}

#[test]
fn failing_hooks_tear_down_and_report() {
    if !capable("failing_hooks_tear_down_and_report") {
        return;
    }
    let rootfs = debian_rootfs().unwrap();
    let t = fixture_elements(&rootfs);
    let _g = lock();
    for phase in ["root", "install", "finalise", "cleanup"] {
        let dir = work(&format!("fail-{phase}"));
        let o = build(
            &dir,
            Some(t.path()),
            &["-n", "test-rootfs", "fail-at", "-t", "tar", "-o", "f"],
            &[("KILN_TEST_FAIL_PHASE", phase)],
        );
        assert_eq!(o.code, 1, "{phase}: expected exit 1:\n{}", o.stderr);
        for needle in [
            format!("{phase}.d failed"),
            "fail-at".to_string(),
            format!("50-fail-{phase}").replace("50-fail-root", "90-fail-root"),
            "status 3".to_string(),
            format!("kiln-test-marker-{phase}"),
        ] {
            assert!(
                o.stderr.contains(&needle),
                "{phase}: missing {needle:?} in:\n{}",
                o.stderr
            );
        }
        assert!(!o.stderr.contains("panicked"));
        assert_no_leftovers(&dir);
    }
}

/// Starts `kiln build -n test-rootfs fail-at -t TYPE -o NAME` in `dir` with KILN_TEST_SLOW=`slow`
/// (and `env`), and waits until the slow hook says it is sleeping, at most `wait`.
fn start_sleeping_build(
    dir: &Path,
    t: &Tree,
    ty: &str,
    name: &str,
    slow: &str,
    env: &[(&str, &str)],
    wait: Duration,
) -> std::process::Child {
    let tmp = dir.join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    let mut c = Command::new(kiln_bin());
    c.current_dir(dir)
        .args([
            "build",
            "-n",
            "test-rootfs",
            "fail-at",
            "-t",
            ty,
            "-o",
            name,
        ])
        .env("ELEMENTS_PATH", t.path())
        .env("DIB_IMAGE_CACHE", cache())
        .env("TMPDIR", &tmp)
        .env("KILN_TEST_SLOW", slow)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let child = c.spawn().unwrap();
    let log = dir.join(format!("{name}.d/build.log"));
    let start = Instant::now();
    while !fs::read_to_string(&log).is_ok_and(|l| l.contains("kiln-test-sleeping")) {
        assert!(start.elapsed() < wait, "the slow hook never started");
        std::thread::sleep(Duration::from_millis(200));
    }
    child
}

#[test]
fn sigint_during_install_tears_down_and_exits_130() {
    if !capable("sigint_during_install_tears_down_and_exits_130") {
        return;
    }
    let rootfs = debian_rootfs().unwrap();
    let t = fixture_elements(&rootfs);
    let _g = lock();
    let dir = work("sigint");
    let mut child = start_sleeping_build(&dir, &t, "tar", "s", "1", &[], Duration::from_secs(120));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "kiln did not stop after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(130));
    assert_no_leftovers(&dir);
}

#[test]
fn arm64_rootfs_is_aarch64() {
    if !capable("arm64_rootfs_is_aarch64") {
        return;
    }
    let _g = lock();
    let dir = work("arm64");
    // No kernel: generating an initramfs under qemu-user takes many minutes and proves nothing
    // more about foreign-architecture chroots than the package installs already do.
    let o = build(
        &dir,
        None,
        &["-a", "arm64", "debian-minimal", "-t", "tar", "-o", "arm"],
        &[("DIB_DEBIAN_INSTALL_KERNEL", "0")],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(dir.join("arm.tar"))
        .arg("./usr/bin/true")
        .output()
        .unwrap();
    let elf = out.stdout;
    assert!(elf.len() > 20 && &elf[..4] == b"\x7fELF", "not an ELF");
    // e_machine at offset 18, little endian: 0xB7 is AArch64.
    assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 0xB7);
    assert_no_leftovers(&dir);
}

fn boot(image: &Path, uefi: bool) {
    let mut c = Command::new(kiln_bin());
    // Generous: TCG boots take 1-2 minutes alone, several times that on a loaded machine.
    c.arg("test").arg(image).args(["--timeout", "900"]);
    if uefi {
        c.arg("--uefi");
    }
    let out = c.output().unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    let se = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "boot failed:\n{so}\n{se}");
    eprintln!("{}", so.trim());
}

#[test]
fn debian_vm_cloud_init_qcow2_boots_bios() {
    if !capable("debian_vm_cloud_init_qcow2_boots_bios") {
        return;
    }
    // Make sure the bootstrap cache is warm first, so this build must report a hit.
    let _ = debian_rootfs();
    let g = lock();
    let dir = work("vm");
    let o = build(
        &dir,
        None,
        &["debian-minimal", "vm", "cloud-init", "-o", "debian"],
        &[],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.log.contains("bootstrap cache hit"),
        "second build did not hit the bootstrap cache"
    );
    let img = dir.join("debian.qcow2");
    let info = Command::new("qemu-img")
        .arg("info")
        .arg(&img)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&info.stdout).contains("file format: qcow2"));
    assert_no_leftovers(&dir);
    drop(g);
    let _g = lock();
    boot(&img, false);
}

#[test]
fn debian_efi_boots_uefi() {
    if !capable("debian_efi_boots_uefi") {
        return;
    }
    let _ = debian_rootfs();
    let g = lock();
    let dir = work("efi");
    let o = build(
        &dir,
        None,
        &["debian-minimal", "vm", "block-device-efi", "-o", "efi"],
        &[],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_no_leftovers(&dir);
    drop(g);
    let _g = lock();
    boot(&dir.join("efi.qcow2"), true);
}

#[test]
fn fallback_layout_has_no_partition_table_and_labelled_fstab() {
    if !capable("fallback_layout_has_no_partition_table_and_labelled_fstab") {
        return;
    }
    let rootfs = debian_rootfs().unwrap();
    let t = fixture_elements(&rootfs);
    let _g = lock();
    let dir = work("fallback");
    let o = build(
        &dir,
        Some(t.path()),
        &["-n", "test-rootfs", "-t", "raw", "-o", "flat"],
        &[],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let raw = dir.join("flat.raw");
    let pt = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(&raw)
        .output()
        .unwrap();
    let pt = String::from_utf8_lossy(&pt.stdout);
    assert!(!pt.contains("PTTYPE"), "unexpected partition table: {pt}");
    assert!(pt.contains("TYPE=ext4"), "{pt}");
    assert!(pt.contains("LABEL=cloudimg-rootfs"), "{pt}");
    let fstab = Command::new("debugfs")
        .args(["-R", "cat /etc/fstab"])
        .arg(&raw)
        .output()
        .unwrap();
    let fstab = String::from_utf8_lossy(&fstab.stdout);
    assert!(
        fstab.contains("LABEL=cloudimg-rootfs / ext4"),
        "fstab: {fstab}"
    );
    assert_no_leftovers(&dir);
}

#[test]
fn disk_finalise_failure_leaves_no_loop_device() {
    if !capable("disk_finalise_failure_leaves_no_loop_device") {
        return;
    }
    let rootfs = debian_rootfs().unwrap();
    let t = fixture_elements(&rootfs);
    let _g = lock();
    let dir = work("disk-fail");
    let mbr = "- local_loop:\n    name: image0\n- partitioning:\n    base: image0\n    label: mbr\n    partitions:\n      - name: root\n        flags: [boot, primary]\n        size: 100%\n        mkfs:\n          type: ext4\n          mount:\n            mount_point: /\n            fstab:\n              options: defaults\n              fsck-passno: 1\n";
    let o = build(
        &dir,
        Some(t.path()),
        &["-n", "test-rootfs", "fail-at", "-t", "raw", "-o", "d"],
        &[
            ("KILN_TEST_FAIL_PHASE", "finalise"),
            ("DIB_BLOCK_DEVICE_CONFIG", mbr),
        ],
    );
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("finalise.d failed"), "{}", o.stderr);
    assert!(!dir.join("d.raw").exists());
    assert_no_leftovers(&dir);
}

#[test]
fn sigkill_during_disk_finalise_leaves_nothing_behind() {
    if !capable("sigkill_during_disk_finalise_leaves_nothing_behind") {
        return;
    }
    let rootfs = debian_rootfs().unwrap();
    let t = fixture_elements(&rootfs);
    let _g = lock();
    let dir = work("sigkill");
    let tmp = dir.join("tmp");
    let mbr = "- local_loop:\n    name: image0\n- partitioning:\n    base: image0\n    label: mbr\n    partitions:\n      - name: root\n        flags: [boot, primary]\n        size: 100%\n        mkfs:\n          type: ext4\n          mount:\n            mount_point: /\n";
    let mut child = start_sleeping_build(
        &dir,
        &t,
        "raw",
        "k",
        "finalise",
        &[("DIB_BLOCK_DEVICE_CONFIG", mbr)],
        Duration::from_secs(180),
    );
    // A loop device is attached and a daemon runs in the chroot when kiln is killed outright.
    let loops = Command::new("losetup").arg("-a").output().unwrap();
    let loops = String::from_utf8_lossy(&loops.stdout).into_owned();
    let device = loops
        .lines()
        .find(|l| l.contains(&tmp.display().to_string()))
        .and_then(|l| l.split(':').next())
        .expect("no loop device while finalise runs")
        .to_string();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = child.wait();
    // The watchdog cleans up after the killed build within seconds.
    let t0 = Instant::now();
    // Once the namespace is gone the kernel shows the backing file without the build's path,
    // so look for the device itself too.
    let attached = |dev: &str| {
        let out = Command::new("losetup").arg(dev).output().unwrap();
        out.status.success()
    };
    while (leftovers(&dir).is_some() || attached(&device)) && t0.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_no_leftovers(&dir);
    assert!(!attached(&device), "{device} is still attached");
}

/// Runs `kiln plan --explain-cache --json` and returns (step, status, reasons) per step.
fn explain(
    elements_path: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Vec<(String, String, Vec<String>)>, String) {
    let mut c = Command::new(kiln_bin());
    c.arg("plan")
        .args(args)
        .args(["--explain-cache", "--json"])
        .env("DIB_IMAGE_CACHE", cache())
        .env("ELEMENTS_PATH", elements_path)
        .env_remove("DIB_BLOCK_DEVICE_CONFIG")
        .env_remove("ARCH");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
                s["reasons"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    (steps, v["outputs"]["status"].as_str().unwrap().to_string())
}

fn first_miss(steps: &[(String, String, Vec<String>)]) -> Option<(String, Vec<String>)> {
    steps
        .iter()
        .find(|s| s.1 == "miss")
        .map(|s| (s.0.clone(), s.2.clone()))
}

#[test]
fn phase_cache_hits_and_misses_exactly_where_inputs_changed() {
    if !capable("phase_cache_hits_and_misses_exactly_where_inputs_changed") {
        return;
    }
    let rootfs = debian_rootfs().unwrap();
    let t = fixture_elements(&rootfs);
    let el = t
        .el("cachey")
        .hook("install", "50-cachey", "echo one > /etc/cachey")
        .hook("post-install", "50-cachey-post", "echo post >> /etc/cachey")
        .hook("finalise", "50-cachey-final", "echo final >> /etc/cachey");
    let args = ["-n", "test-rootfs", "cachey", "-t", "tar", "-o", "c"];
    let env = [("KILN_TEST_VAR", "1")];
    let _g = lock();
    let dir = work("cache");
    let o = build(&dir, Some(t.path()), &args, &env);
    assert_eq!(o.code, 0, "{}", o.stderr);
    // Nothing changed: every step hits, and so do the outputs.
    let (steps, outs) = explain(t.path(), &args[..3], &env);
    assert!(steps.iter().all(|s| s.1 == "hit"), "{steps:?}");
    let (_, outs_tar) = explain(t.path(), &args, &env);
    assert_eq!(outs_tar, "hit");
    let _ = outs;
    let t0 = Instant::now();
    let o = build(&dir, Some(t.path()), &args, &env);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.log.contains("output hit"), "{}", o.log);
    eprintln!(
        "rebuild with nothing changed: {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    // Hook content: misses from install on.
    let hook = el.path.join("install.d/50-cachey");
    let orig = fs::read_to_string(&hook).unwrap();
    fs::write(&hook, orig.replace("one", "two")).unwrap();
    let (steps, _) = explain(t.path(), &args, &env);
    let (step, why) = first_miss(&steps).unwrap();
    assert_eq!(step, "install", "{steps:?}");
    assert!(
        why.iter()
            .any(|r| r.contains("install.d/50-cachey changed")),
        "{why:?}"
    );
    assert!(steps
        .iter()
        .skip_while(|s| s.0 != "install")
        .all(|s| s.1 == "miss"));
    fs::write(&hook, &orig).unwrap();
    // Hook mode: misses from post-install.
    let post = el.path.join("post-install.d/50-cachey-post");
    fs::set_permissions(&post, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let (steps, _) = explain(t.path(), &args, &env);
    let (step, why) = first_miss(&steps).unwrap();
    assert_eq!(step, "post-install", "{steps:?}");
    assert!(why.iter().any(|r| r.contains("mode changed")), "{why:?}");
    fs::set_permissions(&post, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // A finalise hook is not an input of any cached phase: only the outputs miss.
    let fin = el.path.join("finalise.d/50-cachey-final");
    let forig = fs::read_to_string(&fin).unwrap();
    fs::write(&fin, forig.replace("final", "finale")).unwrap();
    let (steps, outs) = explain(t.path(), &args, &env);
    assert!(steps.iter().all(|s| s.1 == "hit"), "{steps:?}");
    assert_eq!(outs, "miss");
    fs::write(&fin, &forig).unwrap();
    // An environment variable: every phase can see it, so the first miss is root.
    let (steps, _) = explain(t.path(), &args, &[("KILN_TEST_VAR", "2")]);
    let (step, why) = first_miss(&steps).unwrap();
    assert_eq!(step, "root");
    assert!(why.iter().any(|r| r.contains("KILN_TEST_VAR")), "{why:?}");
    // An element added: IMAGE_ELEMENT changes, visible to every phase.
    t.el("newcomer").hook("post-root", "50-newcomer", "true");
    let (steps, _) = explain(
        t.path(),
        &["-n", "test-rootfs", "cachey", "newcomer", "-t", "tar"],
        &env,
    );
    let (step, why) = first_miss(&steps).unwrap();
    assert_eq!(step, "root");
    assert!(
        why.iter().any(|r| r.contains("elements changed")),
        "{why:?}"
    );
    assert_no_leftovers(&dir);
}

/// Type, mode, owner, size, content, link target, device, xattrs and link count of every entry.
fn tree_manifest(root: &Path) -> Vec<String> {
    let out = Command::new("find")
        .arg(".")
        .args(["-printf", "%p|%y|%m|%U|%G|%s|%n|%l|%D\\n"])
        .current_dir(root)
        .output()
        .unwrap();
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            // %D (device of the fs) is the same for all; drop it, keep the rest.
            l.rsplit_once('|')
                .map_or(l.to_string(), |(a, _)| a.to_string())
        })
        .collect();
    let sums = Command::new("bash")
        .arg("-c")
        .arg("find . -type f -print0 | sort -z | xargs -0 sha256sum")
        .current_dir(root)
        .output()
        .unwrap();
    lines.extend(
        String::from_utf8_lossy(&sums.stdout)
            .lines()
            .map(String::from),
    );
    let xattrs = Command::new("getfattr")
        .args(["-R", "-d", "-h", "-m", "-", "--absolute-names", "."])
        .current_dir(root)
        .output()
        .unwrap();
    lines.extend(
        String::from_utf8_lossy(&xattrs.stdout)
            .lines()
            .map(String::from),
    );
    let devs = Command::new("bash")
        .arg("-c")
        .arg("find . \\( -type b -o -type c \\) -exec stat -c '%n %t:%T' {} +")
        .current_dir(root)
        .output()
        .unwrap();
    lines.extend(
        String::from_utf8_lossy(&devs.stdout)
            .lines()
            .map(String::from),
    );
    lines.sort();
    lines
}

#[test]
fn restored_snapshot_equals_a_fresh_build() {
    if !capable("restored_snapshot_equals_a_fresh_build") {
        return;
    }
    let rootfs = debian_rootfs().unwrap();
    let t = fixture_elements(&rootfs);
    let shape = t
        .el("treeshape")
        .hook(
            "install",
            "50-treeshape",
            "mkdir -p /srv/shape/sticky && chmod 1777 /srv/shape/sticky\n\
             echo data > /srv/shape/owned && chown 1234:5678 /srv/shape/owned && chmod 4750 /srv/shape/owned\n\
             ln /srv/shape/owned /srv/shape/hardlink\n\
             ln -s owned /srv/shape/symlink\n\
             mknod /srv/shape/null c 1 3 && mknod /srv/shape/loopish b 7 200\n\
             mkfifo /srv/shape/fifo\n\
             python3 -c 'import os; os.setxattr(\"/srv/shape/owned\", \"trusted.kiln\", b\"v1\")'\n\
             rm -f /etc/issue.net",
        )
        .hook("post-install", "50-treeshape-post", "echo more >> /srv/shape/owned\nrm /srv/shape/fifo")
        .hook("post-root", "50-treeshape-root", "echo run-one");
    let args = ["-n", "test-rootfs", "treeshape", "-t", "tar", "-o", "shape"];
    let _g = lock();
    let dir = work("shape");
    let fresh = build(
        &dir,
        Some(t.path()),
        &[
            "--no-cache",
            "-n",
            "test-rootfs",
            "treeshape",
            "-t",
            "tar",
            "-o",
            "fresh",
        ],
        &[],
    );
    assert_eq!(fresh.code, 0, "{}", fresh.stderr);
    // Change only post-root: the chain up to post-install is restored from the cache.
    let hook = shape.path.join("post-root.d/50-treeshape-root");
    fs::write(&hook, "#!/bin/bash\necho run-two\n").unwrap();
    let cached = build(&dir, Some(t.path()), &args, &[]);
    assert_eq!(cached.code, 0, "{}", cached.stderr);
    assert!(
        cached.log.contains("cache: post-install hit"),
        "{}",
        cached.log
    );
    assert!(
        cached.log.contains("cache: post-root miss"),
        "{}",
        cached.log
    );
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for (tar, d) in [("fresh.tar", a.path()), ("shape.tar", b.path())] {
        let st = Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
            .arg(dir.join(tar))
            .arg("-C")
            .arg(d)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let ma = tree_manifest(a.path());
    let mb = tree_manifest(b.path());
    let only_a: Vec<_> = ma.iter().filter(|l| !mb.contains(l)).collect();
    let only_b: Vec<_> = mb.iter().filter(|l| !ma.contains(l)).collect();
    assert!(
        only_a.is_empty() && only_b.is_empty(),
        "fresh only: {only_a:#?}\ncached only: {only_b:#?}"
    );
    assert!(
        ma.iter().any(|l| l.contains("trusted.kiln")),
        "xattr not captured"
    );
    assert_no_leftovers(&dir);
}

static DIB_TREE: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// DIB's own element tree, from `pip install diskimage-builder` into a venv made for this run.
fn dib_elements() -> Result<PathBuf, String> {
    DIB_TREE
        .get_or_init(|| {
            let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dib-venv");
            let py = venv.join("bin/python3");
            if !py.exists() {
                let st = Command::new("python3").args(["-m", "venv"]).arg(&venv).status();
                if !st.is_ok_and(|s| s.success()) {
                    return Err("python3 -m venv failed (install python3-venv)".into());
                }
            }
            let st = Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "diskimage-builder"])
                .status();
            if !st.is_ok_and(|s| s.success()) {
                return Err("pip install diskimage-builder failed".into());
            }
            let out = Command::new(&py)
                .args(["-c", "import os, diskimage_builder as d; print(os.path.join(os.path.dirname(d.__file__), 'elements'))"])
                .output()
                .map_err(|e| e.to_string())?;
            Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
        .clone()
}

/// A build with DIB's element tree first on ELEMENTS_PATH; checks DIB's own hooks did the work.
fn dib_build(dir: &Path, args: &[&str]) -> Outcome {
    let tree = dib_elements().unwrap();
    let o = build(dir, Some(&tree), args, &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    // 99-squash-package-install exists only in DIB's package-installs element.
    assert!(
        o.log.contains("99-squash-package-install"),
        "DIB's elements did not run"
    );
    assert_no_leftovers(dir);
    o
}

#[test]
fn dib_tree_vm_with_tar_qcow2_raw_boots() {
    if !capable("dib_tree_vm_with_tar_qcow2_raw_boots") {
        return;
    }
    let _ = dib_elements().unwrap();
    let g = lock();
    let dir = work("dib-vm");
    dib_build(
        &dir,
        &["debian-minimal", "vm", "-t", "tar,qcow2,raw", "-o", "x"],
    );
    for f in ["x.tar", "x.qcow2", "x.raw"] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    drop(g);
    let _g = lock();
    boot(&dir.join("x.qcow2"), false);
}

#[test]
fn dib_tree_vm_cloud_init_boots_via_disk_image_create() {
    if !capable("dib_tree_vm_cloud_init_boots_via_disk_image_create") {
        return;
    }
    let tree = dib_elements().unwrap();
    let g = lock();
    let dir = work("dib-ci");
    let link = dir.join("disk-image-create");
    std::os::unix::fs::symlink(kiln_bin(), &link).unwrap();
    let tmp = dir.join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    let out = Command::new(&link)
        .current_dir(&dir)
        .args(["debian-minimal", "vm", "cloud-init", "-o", "xc"])
        .env("ELEMENTS_PATH", &tree)
        .env("DIB_IMAGE_CACHE", cache())
        .env("DIB_RELEASE", "bookworm")
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = fs::read_to_string(dir.join("xc.d/build.log")).unwrap();
    assert!(log.contains("99-squash-package-install"));
    assert_no_leftovers(&dir);
    drop(g);
    let _g = lock();
    boot(&dir.join("xc.qcow2"), false);
}

#[test]
fn dib_tree_efi_boots_uefi() {
    if !capable("dib_tree_efi_boots_uefi") {
        return;
    }
    let _ = dib_elements().unwrap();
    let g = lock();
    let dir = work("dib-efi");
    dib_build(
        &dir,
        &["debian-minimal", "vm", "block-device-efi", "-o", "xe"],
    );
    drop(g);
    let _g = lock();
    boot(&dir.join("xe.qcow2"), true);
}
