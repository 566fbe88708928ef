//! `kiln test` stopped from outside leaves nothing behind: a SIGTERM or SIGINT kills qemu,
//! removes the boot's temporary directory and exits 143 or 130; a SIGKILL takes qemu down with
//! kiln (the kernel's parent-death signal), and the next `kiln test` removes the directory the
//! killed one left. qemu is a stand-in script on PATH that records its PID and sleeps, so no
//! guest runs; the overlay and seed are made by the real qemu-img and mtools.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::kiln_bin;

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Option<Self> {
        let missing: Vec<&str> = ["qemu-img", "mkfs.vfat", "mcopy"]
            .into_iter()
            .filter(|t| !which(t))
            .collect();
        if !missing.is_empty() {
            kiln_testkit::skip(
                "boot_interrupt",
                &format!("needs {} (scripts/install-host-deps)", missing.join(", ")),
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        fs::create_dir_all(&bin).unwrap();
        let fake = bin.join("qemu-system-x86_64");
        // exec keeps the PID and the parent-death signal kiln asked for.
        fs::write(
            &fake,
            "#!/bin/sh\necho $$ > \"$KILN_FAKE_QEMU_PID.tmp\"\nmv \"$KILN_FAKE_QEMU_PID.tmp\" \"$KILN_FAKE_QEMU_PID\"\nexec sleep 600\n",
        )
        .unwrap();
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let img = dir.path().join("disk.qcow2");
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&img)
            .arg("64M")
            .status()
            .unwrap();
        assert!(st.success());
        Some(Self { dir })
    }

    fn tmp(&self) -> PathBuf {
        self.dir.path().join("tmp")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("qemu.pid")
    }

    /// Starts `kiln test` and waits until the stand-in qemu runs; returns kiln and qemu's PID.
    fn start(&self) -> (Child, i32) {
        let _ = fs::remove_file(self.pid_file());
        let path = format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = Command::new(kiln_bin())
            .args(["test", "--accel", "tcg", "--timeout", "120"])
            .arg(self.dir.path().join("disk.qcow2"))
            .env("PATH", path)
            .env("TMPDIR", self.tmp())
            .env("KILN_FAKE_QEMU_PID", self.pid_file())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = wait_for(Duration::from_secs(30), || {
            fs::read_to_string(self.pid_file())
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
        })
        .expect("the stand-in qemu never started");
        (child, pid)
    }

    fn boot_dirs(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.tmp())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("kiln-boot."))
            .collect();
        v.sort();
        v
    }
}

fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a process exists and is not a zombie.
fn running(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|st| st != "Z")
        })
        .unwrap_or(false)
}

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

fn stopped(pid: i32) -> bool {
    wait_for(Duration::from_secs(10), || (!running(pid)).then_some(())).is_some()
}

fn check_signal(sig: &str, code: i32) {
    let Some(s) = Setup::new() else { return };
    let (child, qemu) = s.start();
    assert!(running(qemu));
    assert_eq!(s.boot_dirs().len(), 1, "{:?}", s.boot_dirs());
    signal(child.id(), sig);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(err.contains("interrupted by signal"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(stopped(qemu), "qemu {qemu} outlived kiln test");
    assert!(s.boot_dirs().is_empty(), "left: {:?}", s.boot_dirs());
}

#[test]
fn sigterm_stops_qemu_and_removes_the_boot_files() {
    check_signal("TERM", 143);
}

#[test]
fn sigint_stops_qemu_and_removes_the_boot_files() {
    check_signal("INT", 130);
}

#[test]
fn a_killed_kiln_test_takes_qemu_along_and_the_next_one_removes_its_files() {
    let Some(s) = Setup::new() else { return };
    let (mut child, qemu) = s.start();
    let left = s.boot_dirs();
    assert_eq!(left.len(), 1, "{left:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(stopped(qemu), "qemu {qemu} outlived a killed kiln test");
    // SIGKILL gives kiln no chance to clean up: its directory stays until the next boot.
    assert_eq!(s.boot_dirs(), left);
    // A directory without an owner file (another kiln just making it) is left alone.
    let racing = s.tmp().join("kiln-boot.racing");
    fs::create_dir(&racing).unwrap();
    let (child, qemu) = s.start();
    let now = s.boot_dirs();
    assert!(
        !now.contains(&left[0]),
        "the killed boot's files stayed: {now:?}"
    );
    assert!(racing.is_dir());
    assert_eq!(now.len(), 2, "{now:?}");
    signal(child.id(), "TERM");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143));
    assert!(stopped(qemu));
    assert_eq!(s.boot_dirs(), vec!["kiln-boot.racing".to_string()]);
}
