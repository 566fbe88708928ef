//! Failures and interrupts: a failing hook in each kind of phase, SIGINT, SIGTERM and SIGKILL
//! during chroot and disk phases; every one must tear down completely. These build a tiny
//! fixture OS (root.d unpacks the shared root filesystem tar), so each costs seconds.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::harness::{
    assert_no_leftovers, assert_no_leftovers_within, build, build_command, capable, heavy, signal,
    work, Heavy, Timer,
};
use crate::rootfs::rootfs_tar;
use crate::support::Tree;

/// A one-partition MBR layout.
pub const MBR: &str = "- local_loop:\n    name: image0\n- partitioning:\n    base: image0\n    label: mbr\n    partitions:\n      - name: root\n        flags: [boot, primary]\n        size: 100%\n        mkfs:\n          type: ext4\n          mount:\n            mount_point: /\n            fstab:\n              options: defaults\n              fsck-passno: 1\n";

/// A tiny OS element whose root.d unpacks the shared root filesystem tarball, and an element
/// whose hooks fail in the phase named by KILN_TEST_FAIL_PHASE (leaving a background process
/// behind) or sleep in the one named by KILN_TEST_SLOW.
pub fn fixture_elements(rootfs: &Path) -> Tree {
    let t = Tree::new();
    t.el("test-rootfs")
        .provides(&["operating-system"])
        .env("10-test-rootfs", "export DISTRO_NAME=debian\nexport DIB_RELEASE=${DIB_RELEASE:-trixie}\nexport DIB_INIT_SYSTEM=systemd\n")
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
    let slow = |phase: &str| {
        format!(
            "if [ \"${{KILN_TEST_SLOW:-}}\" = {phase} ]; then\n\
             setsid sleep 900 </dev/null >/dev/null 2>&1 &\n\
             echo kiln-test-sleeping; sleep 600; fi"
        )
    };
    t.el("fail-at")
        .hook("root", "90-fail-root", &fail("root"))
        .hook("install", "50-fail-install", &fail("install"))
        .hook("finalise", "50-fail-finalise", &fail("finalise"))
        .hook("cleanup", "50-fail-cleanup", &fail("cleanup"))
        .hook("install", "60-slow", &slow("install"))
        .hook("finalise", "60-slow", &slow("finalise"));
    t
}

#[test]
fn failing_hooks_tear_down_and_report() {
    if !capable("failing_hooks_tear_down_and_report") {
        return;
    }
    let t = fixture_elements(&rootfs_tar());
    let h = heavy();
    // Timed from here: the wait for the heavy lock is not this test's time.
    let _t = Timer::start("failing_hooks_tear_down_and_report");
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
        assert!(
            !dir.join("f.tar").exists(),
            "{phase}: a failed build left an output"
        );
        assert_no_leftovers(&dir, &h);
    }
}

/// Starts `kiln build -n test-rootfs fail-at -t TYPE -o NAME` in `dir` with KILN_TEST_SLOW=`slow`
/// (and `env`), and waits until the slow hook says it is sleeping, at most `wait`.
fn start_sleeping_build(
    dir: &Path,
    t: &Tree,
    args: &[&str],
    slow: &str,
    env: &[(&str, &str)],
    wait: Duration,
) -> std::process::Child {
    let mut all = vec!["-n", "test-rootfs", "fail-at"];
    all.extend_from_slice(args);
    let mut c = build_command(dir, Some(t.path()), &all, env);
    c.env("KILN_TEST_SLOW", slow)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = c.spawn().unwrap();
    let name = args
        .windows(2)
        .find(|w| w[0] == "-o")
        .map_or("image", |w| w[1]);
    let log = dir.join(format!("{name}.d/build.log"));
    let start = Instant::now();
    while !fs::read_to_string(&log).is_ok_and(|l| l.contains("kiln-test-sleeping")) {
        assert!(start.elapsed() < wait, "the slow hook never started");
        std::thread::sleep(Duration::from_millis(200));
    }
    child
}

/// Signals a sleeping build and checks its exit code and that nothing is left.
fn interrupt(dir: &Path, h: &Heavy, mut child: std::process::Child, sig: Signal, code: i32) {
    signal(child.id(), sig);
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "kiln did not stop within 60 s of {sig}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(code), "exit status after {sig}");
    assert_no_leftovers(dir, h);
}

#[test]
fn sigint_and_sigterm_during_install_tear_down() {
    if !capable("sigint_and_sigterm_during_install_tear_down") {
        return;
    }
    let t = fixture_elements(&rootfs_tar());
    let h = heavy();
    // Timed from here: the wait for the heavy lock is not this test's time.
    let _t = Timer::start("sigint_and_sigterm_during_install_tear_down");
    for (sig, code) in [(Signal::SIGINT, 130), (Signal::SIGTERM, 143)] {
        let dir = work(&format!("{sig}"));
        let child = start_sleeping_build(
            &dir,
            &t,
            &["-t", "tar", "-o", "s"],
            "install",
            &[],
            Duration::from_secs(120),
        );
        interrupt(&dir, &h, child, sig, code);
        assert!(!dir.join("s.tar").exists());
    }
}

/// A disk build whose finalise hook sleeps: a loop device is attached and the image's
/// filesystem is mounted when the signal comes.
fn start_sleeping_disk_build(dir: &Path, t: &Tree) -> std::process::Child {
    start_sleeping_build(
        dir,
        t,
        &["-t", "raw", "-o", "k"],
        "finalise",
        &[("DIB_BLOCK_DEVICE_CONFIG", MBR)],
        Duration::from_secs(180),
    )
}

#[test]
fn sigint_during_disk_finalise_detaches_everything() {
    if !capable("sigint_during_disk_finalise_detaches_everything") {
        return;
    }
    let t = fixture_elements(&rootfs_tar());
    let h = heavy();
    // Timed from here: the wait for the heavy lock is not this test's time.
    let _t = Timer::start("sigint_during_disk_finalise_detaches_everything");
    let dir = work("disk-sigint");
    let child = start_sleeping_disk_build(&dir, &t);
    assert!(
        !crate::harness::attached_loops().is_subset(h.loops_before()),
        "no loop device attached while finalise runs"
    );
    assert_private_while_running(child.id(), &dir);
    interrupt(&dir, &h, child, Signal::SIGINT, 130);
    assert!(!dir.join("k.raw").exists());
}

/// While a disk build runs, its build and image directories (tmpfs in its own mount namespace,
/// seen through `/proc/PID/root`) are 0700 and every file in the image directory (the raw image)
/// is 0600.
fn assert_private_while_running(pid: u32, dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp =
        Path::new(&format!("/proc/{pid}/root")).join(dir.join("tmp").strip_prefix("/").unwrap());
    let mut seen = Vec::new();
    for e in fs::read_dir(&tmp).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("kiln_pipeline.") || name.starts_with("kiln_image.")) {
            continue;
        }
        let mode = fs::metadata(e.path()).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700, "{name} is {mode:o} while the build runs");
        seen.push(name.clone());
        if name.starts_with("kiln_image.") {
            for f in fs::read_dir(e.path()).unwrap().flatten() {
                let m = fs::symlink_metadata(f.path()).unwrap();
                if m.is_file() {
                    let mode = m.permissions().mode() & 0o7777;
                    assert_eq!(mode, 0o600, "{} is {mode:o}", f.path().display());
                    seen.push(f.file_name().to_string_lossy().into_owned());
                }
            }
        }
    }
    assert!(
        seen.len() >= 3,
        "build dir, image dir and image not all seen: {seen:?}"
    );
}

#[test]
fn disk_finalise_failure_leaves_no_loop_device() {
    if !capable("disk_finalise_failure_leaves_no_loop_device") {
        return;
    }
    let t = fixture_elements(&rootfs_tar());
    let h = heavy();
    // Timed from here: the wait for the heavy lock is not this test's time.
    let _t = Timer::start("disk_finalise_failure_leaves_no_loop_device");
    let dir = work("disk-fail");
    let o = build(
        &dir,
        Some(t.path()),
        &["-n", "test-rootfs", "fail-at", "-t", "raw", "-o", "d"],
        &[
            ("KILN_TEST_FAIL_PHASE", "finalise"),
            ("DIB_BLOCK_DEVICE_CONFIG", MBR),
        ],
    );
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("finalise.d failed"), "{}", o.stderr);
    assert!(!dir.join("d.raw").exists());
    assert_no_leftovers(&dir, &h);
}

#[test]
fn sigkill_during_disk_finalise_leaves_nothing_behind() {
    if !capable("sigkill_during_disk_finalise_leaves_nothing_behind") {
        return;
    }
    let t = fixture_elements(&rootfs_tar());
    let h = heavy();
    // Timed from here: the wait for the heavy lock is not this test's time.
    let _t = Timer::start("sigkill_during_disk_finalise_leaves_nothing_behind");
    let dir = work("sigkill");
    let mut child = start_sleeping_disk_build(&dir, &t);
    // While finalise runs, a loop device is attached, the image is mounted in the build's
    // namespace and a daemon runs in the chroot: the leak check must see all of that, or it
    // could not see a leak after the kill either.
    let seen = crate::harness::leftovers(&dir, &h).expect("the live build shows nothing");
    eprintln!("live build, as the leak check sees it: {seen}");
    signal(child.id(), Signal::SIGKILL);
    let _ = child.wait();
    // The watchdog cleans up after the killed build within seconds.
    assert_no_leftovers_within(&dir, &h, Duration::from_secs(30));
}

#[test]
fn fallback_layout_without_tmpfs_has_label_size_and_fstab() {
    if !capable("fallback_layout_without_tmpfs_has_label_size_and_fstab") {
        return;
    }
    let t = fixture_elements(&rootfs_tar());
    let h = heavy();
    // Timed from here: the wait for the heavy lock is not this test's time.
    let _t = Timer::start("fallback_layout_without_tmpfs_has_label_size_and_fstab");
    let dir = work("fallback");
    let o = build(
        &dir,
        Some(t.path()),
        &[
            "-n",
            "test-rootfs",
            "--no-tmpfs",
            "--root-label",
            "kiln-root",
            "--image-size",
            "1.5",
            "-t",
            "raw",
            "-o",
            "flat",
        ],
        &[],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let said = format!("{}\n{}", o.log, o.stderr);
    assert!(
        said.lines()
            .any(|l| l.contains("build dir") && l.trim_end().ends_with("(disk)")),
        "--no-tmpfs still used a tmpfs:\n{said}"
    );
    let raw = dir.join("flat.raw");
    // --image-size 1.5 (GB, as DIB counts: 1.5 * 1024^3 bytes).
    let size = fs::metadata(&raw).unwrap().len();
    assert_eq!(size, 1_610_612_736, "--image-size 1.5 gave {size} bytes");
    let pt = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(&raw)
        .output()
        .unwrap();
    let pt = String::from_utf8_lossy(&pt.stdout);
    assert!(!pt.contains("PTTYPE"), "unexpected partition table: {pt}");
    assert!(pt.contains("TYPE=ext4"), "{pt}");
    assert!(
        pt.contains("LABEL=kiln-root"),
        "--root-label not applied: {pt}"
    );
    let fstab = Command::new("debugfs")
        .args(["-R", "cat /etc/fstab"])
        .arg(&raw)
        .output()
        .unwrap();
    let fstab = String::from_utf8_lossy(&fstab.stdout);
    assert!(fstab.contains("LABEL=kiln-root / ext4"), "fstab: {fstab}");
    assert_no_leftovers(&dir, &h);
}

/// A tmpfs the test mounts (unmounted when dropped, even when the test fails).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, options: &str) -> Self {
        fs::create_dir_all(at).unwrap();
        crate::harness::sh(&format!(
            "mount -t tmpfs -o {options} kiln-test-tmpfs {}",
            at.display()
        ));
        Tmpfs(at.to_path_buf())
    }

    fn remount(&self, options: &str) {
        crate::harness::sh(&format!("mount -o remount,{options} {}", self.0.display()));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn enospc_in_the_build_directory_names_it_and_tears_down() {
    if !capable("enospc_in_the_build_directory_names_it_and_tears_down") {
        return;
    }
    let t = fixture_elements(&rootfs_tar());
    let h = heavy();
    // Timed from here: the wait for the heavy lock is not this test's time.
    let _t = Timer::start("enospc_in_the_build_directory_names_it_and_tears_down");
    let dir = work("enospc-build");
    let private = dir.join("cache").display().to_string();
    // TMPDIR on a tmpfs smaller than the fixture's root filesystem, and the build directory on
    // TMPDIR's filesystem (DIB_NO_TMPFS): unpacking the root filesystem fills it.
    let tmp = dir.join("tmp");
    let small = Tmpfs::mount(&tmp, "size=96m");
    let o = build(
        &dir,
        Some(t.path()),
        &["-n", "test-rootfs", "-t", "raw", "-o", "full"],
        &[
            ("DIB_NO_TMPFS", "1"),
            ("DIB_BLOCK_DEVICE_CONFIG", MBR),
            ("DIB_IMAGE_CACHE", &private),
        ],
    );
    assert_eq!(o.code, 1, "{}", o.stderr);
    for needle in [
        "No space left on device".to_string(),
        "no space left on the filesystem of the build directory".to_string(),
        format!("tmpfs mounted at {}", tmp.display()),
        "TMPDIR".to_string(),
    ] {
        assert!(
            o.stderr.contains(&needle),
            "missing {needle:?} in:\n{}",
            o.stderr
        );
    }
    assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
    assert!(!dir.join("full.raw").exists());
    // The build directory is gone from the full filesystem, which is whole again.
    let left: Vec<_> = fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
    drop(small);
    assert_no_leftovers(&dir, &h);
}

#[test]
fn enospc_in_the_cache_names_it_and_leaves_it_intact() {
    if !capable("enospc_in_the_cache_names_it_and_leaves_it_intact") {
        return;
    }
    let t = fixture_elements(&rootfs_tar());
    let spacey = |root: &str, last: &str| {
        t.el("spacey")
            .hook(
                "root",
                "20-spacey",
                &format!("echo {root} > \"$TARGET_ROOT/etc/spacey\""),
            )
            .hook(
                "finalise",
                "50-spacey",
                &format!("echo {last} > /etc/spacey-final"),
            );
    };
    let h = heavy();
    // Timed from here: the wait for the heavy lock is not this test's time.
    let _t = Timer::start("enospc_in_the_cache_names_it_and_leaves_it_intact");
    let dir = work("enospc-cache");
    let cache = dir.join("cache");
    // Room for one root layer (about 100 MB compressed) and not for a second one.
    let small = Tmpfs::mount(&cache, "size=160m,mode=0700");
    let cache_s = cache.display().to_string();
    let env = [
        ("DIB_BLOCK_DEVICE_CONFIG", MBR),
        ("DIB_IMAGE_CACHE", cache_s.as_str()),
    ];
    let args = |name: &'static str| ["-n", "test-rootfs", "spacey", "-t", "raw,tar", "-o", name];
    spacey("one", "a");
    let first = build(&dir, Some(t.path()), &args("a"), &env);
    assert_eq!(first.code, 0, "{}", first.stderr);
    // The layers fit; the outputs do not, which only costs their caching.
    assert!(first.log.contains("cache: root miss"), "{}", first.log);
    // A new root layer does not fit: the build stops, naming the cache's filesystem.
    spacey("two", "a");
    let full = build(&dir, Some(t.path()), &args("b"), &env);
    assert_eq!(full.code, 1, "{}", full.stderr);
    for needle in [
        format!(
            "{}: no space left for the cache",
            cache.join("phases").display()
        ),
        format!("tmpfs mounted at {}", cache.display()),
        "storing the root layer".to_string(),
        "the cache is intact".to_string(),
        "DIB_IMAGE_CACHE".to_string(),
    ] {
        assert!(
            full.stderr.contains(&needle),
            "missing {needle:?} in:\n{}",
            full.stderr
        );
    }
    assert!(!full.stderr.contains("panicked"), "{}", full.stderr);
    assert!(!dir.join("b.raw").exists() && !dir.join("b.tar").exists());
    assert_no_leftovers(&dir, &h);
    let unfinished: Vec<_> = ["phases", "outputs"]
        .iter()
        .filter_map(|d| fs::read_dir(cache.join(d)).ok())
        .flat_map(|rd| rd.flatten().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"))
        })
        .collect();
    assert!(
        unfinished.is_empty(),
        "unfinished entries left: {unfinished:?}"
    );
    // With space again, a build restores what was stored before the failure.
    small.remount("size=2g");
    spacey("one", "c");
    let again = build(&dir, Some(t.path()), &args("c"), &env);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.log.contains("cache: root hit"), "{}", again.log);
    assert!(!again.log.contains("is damaged"), "{}", again.log);
    let file = |name: &str| {
        crate::harness::sh(&format!(
            "tar -xOf {} ./etc/{name}",
            dir.join("c.tar").display()
        ))
    };
    assert_eq!(file("spacey"), "one\n");
    assert_eq!(file("spacey-final"), "c\n");
    assert!(fs::metadata(dir.join("c.raw")).unwrap().len() > 0);
    assert_no_leftovers(&dir, &h);
    drop(small);
}

/// Found by `scripts/chaos`: a SIGKILL while an output was being written left its pending
/// output (now the private directory `.NAME.ext.kiln-new/`) in the output directory, outside the
/// build directories the watchdog removed.
#[test]
fn sigkill_while_writing_an_output_leaves_no_pending_file() {
    if !capable("sigkill_while_writing_an_output_leaves_no_pending_file") {
        return;
    }
    let t = fixture_elements(&rootfs_tar());
    let h = heavy();
    // Timed from here: the wait for the heavy lock is not this test's time.
    let _t = Timer::start("sigkill_while_writing_an_output_leaves_no_pending_file");
    let dir = work("sigkill-output");
    // A compressed qcow2 takes seconds to write: time enough to see its pending file.
    let mut c = build_command(
        &dir,
        Some(t.path()),
        &["-n", "test-rootfs", "-t", "qcow2", "-o", "p"],
        &[("DIB_BLOCK_DEVICE_CONFIG", MBR)],
    );
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    let pending = dir.join(".p.qcow2.kiln-new");
    let start = Instant::now();
    while !pending.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the build ended before its output was seen being written"
        );
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no output was written"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    signal(child.id(), Signal::SIGKILL);
    let _ = child.wait();
    assert_no_leftovers_within(&dir, &h, Duration::from_secs(30));
    let t0 = Instant::now();
    while pending.exists() && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!pending.exists(), "{} left behind", pending.display());
    assert!(!dir.join("p.qcow2").exists());
}

/// Found by `scripts/chaos`: a SIGKILL right after `losetup` attached the image (while partx,
/// mkfs and mount were still to come) left the loop device attached, because the watchdog
/// learnt of it only once block-device creation had finished. A `partx` that waits on its first
/// call holds the build in exactly that window.
#[test]
fn sigkill_right_after_losetup_leaves_no_loop_device() {
    if !capable("sigkill_right_after_losetup_leaves_no_loop_device") {
        return;
    }
    let t = fixture_elements(&rootfs_tar());
    let h = heavy();
    // Timed from here: the wait for the heavy lock is not this test's time.
    let _t = Timer::start("sigkill_right_after_losetup_leaves_no_loop_device");
    let dir = work("sigkill-losetup");
    let real = crate::harness::which("partx").expect("partx");
    let bin = dir.join("slow-bin");
    fs::create_dir_all(&bin).unwrap();
    let marker = dir.join("partx-waiting");
    let wrapper = bin.join("partx");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$1\" = -a ] && [ ! -e '{m}' ]; then : > '{m}'; sleep 120; fi\nexec '{real}' \"$@\"\n",
            m = marker.display(),
            real = real.display()
        ),
    )
    .unwrap();
    fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = build_command(
        &dir,
        Some(t.path()),
        &["-n", "test-rootfs", "-t", "raw", "-o", "l"],
        &[("DIB_BLOCK_DEVICE_CONFIG", MBR), ("PATH", &path)],
    );
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    let start = Instant::now();
    while !marker.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the build ended before it attached its image"
        );
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the build never reached partx"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The image is attached now: the leak check must see the loop device, or it could not see
    // one left behind either.
    let attached = crate::harness::attached_loops();
    assert!(
        attached.difference(h.loops_before()).next().is_some(),
        "no new loop device while partx waits: {attached:?}"
    );
    signal(child.id(), Signal::SIGKILL);
    let _ = child.wait();
    assert_no_leftovers_within(&dir, &h, Duration::from_secs(30));
}
