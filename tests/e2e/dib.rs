//! DIB's own element tree (diskimage-builder from PyPI, pinned) run by kiln through the
//! `disk-image-create` name: one hybrid image (DIB's `block-device-efi`: an ESP and a BIOS boot
//! partition) of the harness's named release written in every disk format and as a tar, with
//! checksums, each format compared with the raw image, and the qcow2 booted under UEFI and under
//! BIOS with every check. With `vm.rs` (Debian's default release) this boots both supported
//! releases under both firmwares.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::harness::{
    assert_no_leftovers, build_command, capable, heavy, run_build, sh, work, Timer,
    BIOS_BOOT_BUDGET, BUILD_BUDGET, UEFI_BOOT_BUDGET,
};
use crate::vm::{assert_first_boot, boot_check};

/// The diskimage-builder release whose element tree kiln is tested against.
const DIB_VERSION: &str = "3.43.0";

static DIB_TREE: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// DIB's element tree, from `pip install diskimage-builder==DIB_VERSION` into a venv of this run.
fn dib_elements() -> Result<PathBuf, String> {
    DIB_TREE
        .get_or_init(|| {
            let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("dib-venv-{DIB_VERSION}"));
            let py = venv.join("bin/python3");
            if !py.exists() {
                let st = Command::new("python3").args(["-m", "venv"]).arg(&venv).status();
                if !st.is_ok_and(|s| s.success()) {
                    return Err("python3 -m venv failed (install python3-venv)".into());
                }
            }
            let st = Command::new(venv.join("bin/pip"))
                .args(["install", "-q", &format!("diskimage-builder=={DIB_VERSION}")])
                .status();
            if !st.is_ok_and(|s| s.success()) {
                return Err(format!("pip install diskimage-builder=={DIB_VERSION} failed"));
            }
            let out = Command::new(&py)
                .args(["-c", "import os, diskimage_builder as d; print(os.path.join(os.path.dirname(d.__file__), 'elements'))"])
                .output()
                .map_err(|e| e.to_string())?;
            Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
        .clone()
}

#[test]
fn dib_tree_image_in_every_format_boots_via_disk_image_create() {
    if !capable("dib_tree_image_in_every_format_boots_via_disk_image_create") {
        return;
    }
    let tree = dib_elements().unwrap();
    let h = heavy();
    // Timed from here: the wait for the heavy lock is not this test's time.
    let _t = Timer::start("dib_tree_image_in_every_format_boots_via_disk_image_create");
    let dir = work("dib");
    let link = dir.join("disk-image-create");
    std::os::unix::fs::symlink(crate::kiln_bin(), &link).unwrap();
    let args = [
        "debian-minimal",
        "vm",
        "cloud-init",
        "growroot",
        "block-device-efi",
        "-t",
        "qcow2,raw,vmdk,vhd,vdi,tar",
        "--checksum",
        "-o",
        "xc",
    ];
    // The same command, environment and private TMPDIR as `kiln build`, under DIB's name.
    let mut c = build_command(&dir, Some(&tree), &args, &[]);
    let kiln_args: Vec<std::ffi::OsString> = c.get_args().skip(1).map(ToOwned::to_owned).collect();
    let mut dic = Command::new(&link);
    dic.current_dir(&dir).args(&kiln_args);
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => dic.env(k, v),
            None => dic.env_remove(k),
        };
    }
    c = dic;
    let o = run_build(c, &dir, &args, BUILD_BUDGET);
    assert_eq!(o.code, 0, "{}", o.stderr);
    // 99-squash-package-install exists only in DIB's package-installs element.
    assert!(
        o.log.contains("99-squash-package-install"),
        "DIB's elements did not run"
    );
    // Every output, with both checksums, each verifiable; every disk format holds the raw image.
    for ext in ["qcow2", "raw", "vmdk", "vhd", "vdi", "tar"] {
        let f = format!("xc.{ext}");
        assert!(dir.join(&f).is_file(), "{f} missing");
        for sum in ["md5", "sha256"] {
            sh(&format!(
                "cd '{}' && {sum}sum -c '{f}.{sum}'",
                dir.display()
            ));
        }
    }
    for (ext, fmt) in [
        ("qcow2", "qcow2"),
        ("vmdk", "vmdk"),
        ("vhd", "vpc"),
        ("vdi", "vdi"),
    ] {
        let out = Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", fmt])
            .arg(dir.join("xc.raw"))
            .arg(dir.join(format!("xc.{ext}")))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "xc.{ext} differs from xc.raw: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_no_leftovers(&dir, &h);
    // Keep only what the boot needs: the disk is large.
    for ext in ["raw", "vmdk", "vhd", "vdi", "tar"] {
        let _ = fs::remove_file(dir.join(format!("xc.{ext}")));
    }
    for (uefi, budget) in [(true, UEFI_BOOT_BUDGET), (false, BIOS_BOOT_BUDGET)] {
        let r = boot_check(&dir.join("xc.qcow2"), uefi, budget);
        assert_first_boot(&r, uefi);
    }
}
