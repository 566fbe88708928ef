//! The VM image of kiln's own elements: one hybrid disk (ESP and BIOS boot partition), built for
//! Debian's default release as a user who names none gets, booted under UEFI and under BIOS,
//! each boot checked with `kiln test --check` (cloud-init, datasource, failed units, root
//! filesystem grown to a larger disk, firmware, machine-id, serial console, SSH host keys).
//! It is built with `DIB_INITRAMFS_MODULES=vm`, so both firmwares boot the small initramfs
//! (the default release's rootfs and DIB's hybrid in `dib.rs` keep initramfs-tools' `most`).

use std::path::Path;
use std::process::Command;

use crate::cache::identities_in_layers;
use crate::harness::{
    assert_no_leftovers, build, capable, heavy, work, Timer, BIOS_BOOT_BUDGET, UEFI_BOOT_BUDGET,
};
use crate::rootfs::debian_rootfs;

/// Boots `image` with `kiln test --check --json` within `budget` seconds and returns the report.
/// Fails with the console's end when a check fails or the boot does not finish.
pub fn boot_check(image: &Path, uefi: bool, budget: u64) -> serde_json::Value {
    boot_check_arch(image, "x86_64", uefi, budget)
}

/// [`boot_check`] of a guest of architecture `arch` (`x86_64`, `aarch64`).
pub fn boot_check_arch(image: &Path, arch: &str, uefi: bool, budget: u64) -> serde_json::Value {
    let mut c = Command::new(crate::kiln_bin());
    c.arg("test")
        .arg(image)
        .args(["--check", "--json", "--arch", arch, "--timeout"])
        .arg(budget.to_string());
    if uefi {
        c.arg("--uefi");
    }
    let t0 = std::time::Instant::now();
    let out = c.output().unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    let se = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "boot {} ({}) took {:.0} s",
        image.display(),
        if uefi { "UEFI" } else { "BIOS" },
        t0.elapsed().as_secs_f64()
    );
    assert!(out.status.success(), "boot check failed:\n{so}\n{se}");
    let v: serde_json::Value = serde_json::from_str(&so)
        .unwrap_or_else(|e| panic!("kiln test --json printed no JSON ({e}):\n{so}"));
    eprintln!("{v:#}");
    v
}

/// The value of fact `name` in a `kiln test --check --json` report; fails if it is missing or
/// not ok.
pub fn fact(report: &serde_json::Value, name: &str) -> String {
    let facts = report["facts"]
        .as_array()
        .unwrap_or_else(|| panic!("no facts in {report:#}"));
    let f = facts
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no fact {name:?} in {report:#}"));
    assert_eq!(f["ok"], true, "fact {name} failed: {f:#}");
    match &f["value"] {
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// `build.log` lists every external command kiln ran, one line each with its exit status and
/// duration (`cmd: exit 0, 0.012 s: ARGV`); among them each of `tools`.
fn assert_commands_logged(log: &str, tools: &[&str]) {
    let cmds: Vec<(&str, &str)> = log
        .lines()
        .filter_map(|l| l.strip_prefix("cmd: "))
        .map(|rest| {
            let (head, argv) = rest
                .split_once(" s: ")
                .unwrap_or_else(|| panic!("a command line without a duration: {rest}"));
            let secs = head.rsplit(", ").next().unwrap_or_default();
            assert!(
                secs.parse::<f64>().is_ok(),
                "no duration in the command line: {rest}"
            );
            (head, argv)
        })
        .collect();
    for tool in tools {
        assert!(
            cmds.iter().any(|(head, argv)| {
                head.starts_with("exit 0,") && argv.split_whitespace().next() == Some(*tool)
            }),
            "build.log has no successful `{tool}` command line; it has {} command lines",
            cmds.len()
        );
    }
}

/// The Incus VM image beside the qcow2: `incus-simplestreams add` accepts it with kiln's
/// fingerprint (recorded in `NAME.d/image.json`), and its metadata says Secure Boot is off.
fn assert_incus_vm(dir: &Path) {
    if crate::harness::which("incus-simplestreams").is_none() {
        kiln_testkit::skip(
            "hybrid_vm_boots_uefi_and_bios_with_every_check (incus-vm)",
            "incus-simplestreams is not installed (scripts/install-host-deps installs it)",
        );
        return;
    }
    let vm = dir.join("hybrid.incus-vm");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("hybrid.d/image.json")).unwrap())
            .unwrap();
    assert_eq!(
        record["outputs"],
        serde_json::json!({"incus-vm": "hybrid.incus-vm"}),
        "{record:#}"
    );
    let meta = Command::new("tar")
        .arg("-xOJf")
        .arg(vm.join("incus.tar.xz"))
        .arg("metadata.yaml")
        .output()
        .unwrap();
    let meta = String::from_utf8_lossy(&meta.stdout);
    assert!(meta.contains("requirements.secureboot"), "{meta}");
    let ss = tempfile::tempdir_in(dir).unwrap();
    kiln_testkit::clients::run_ok(
        Command::new("incus-simplestreams")
            .arg("add")
            .arg(vm.join("incus.tar.xz"))
            .arg(vm.join("disk.qcow2"))
            .current_dir(ss.path()),
    );
    crate::rootfs::assert_simplestreams_item(
        ss.path(),
        "combined_disk-kvm-img_sha256",
        record["fingerprints"]["incus-vm"].as_str().unwrap(),
    );
}

/// The image's initramfs is `DIB_INITRAMFS_MODULES=vm`'s: the drivers VMs boot from are in it
/// (`kiln test` boots from virtio-blk; virtio_pci is built into Debian's amd64 kernel), and
/// what only `most` adds is not (USB storage, HID, every other SCSI and SATA driver: `most`
/// puts several hundred modules in, docs/benchmarks.md).
fn assert_small_initramfs(log: &str, img: &Path, dir: &Path) {
    assert!(
        log.contains("kiln: initramfs modules for virtual machines (MODULES=list"),
        "the dpkg element did not choose the VM module set"
    );
    let tmp = tempfile::tempdir_in(dir).unwrap();
    let modules = crate::initramfs::modules_in_image(img, tmp.path());
    eprintln!(
        "initramfs: {} modules: {}",
        modules.len(),
        modules.join(" ")
    );
    let has = |m: &str| {
        modules
            .iter()
            .any(|n| n.strip_prefix(m).is_some_and(|r| r.starts_with(".ko")))
    };
    for m in [
        "virtio_blk",
        "virtio_scsi",
        "nvme",
        "ahci",
        "sd_mod",
        "xen-blkfront",
        "ext4",
    ] {
        assert!(has(m), "{m} is not in the initramfs: {modules:?}");
    }
    for m in [
        "usb-storage",
        "hid-generic",
        "megaraid_sas",
        "mpt3sas",
        "btrfs",
    ] {
        assert!(!has(m), "{m} is in the VM initramfs: {modules:?}");
    }
    assert!(
        modules.len() < 100,
        "{} modules in the VM initramfs: {modules:?}",
        modules.len()
    );
}

/// Every fact of a first boot, as `kiln test --check` names them.
const FACTS: &[&str] = &[
    "report",
    "cloud-init",
    "datasource",
    "failed-units",
    "root-fs",
    "firmware",
    "machine-id",
    "serial-console",
    "ssh-host-keys",
];

/// Asserts that every fact of a first boot is present and ok, that the firmware is the one
/// asked for and that cloud-init read the NoCloud seed.
pub fn assert_first_boot(report: &serde_json::Value, uefi: bool) {
    for f in FACTS {
        fact(report, f);
    }
    assert_eq!(fact(report, "firmware"), if uefi { "uefi" } else { "bios" });
    let ds = fact(report, "datasource");
    assert!(ds.contains("NoCloud"), "datasource {ds}");
    assert_eq!(report["passed"], true, "{report:#}");
}

#[test]
fn hybrid_vm_boots_uefi_and_bios_with_every_check() {
    if !capable("hybrid_vm_boots_uefi_and_bios_with_every_check") {
        return;
    }
    // The root filesystem of the same release first, so this build must hit the bootstrap cache.
    let _ = debian_rootfs();
    let h = heavy();
    // Timed from here: the wait for the heavy lock is not this test's time.
    let _t = Timer::start("hybrid_vm_boots_uefi_and_bios_with_every_check");
    let dir = work("hybrid");
    let args = [
        "debian-minimal",
        "vm",
        "cloud-init",
        "block-device-efi",
        "growroot",
        "openssh-server",
        "-t",
        "qcow2,incus-vm",
        "-o",
        "hybrid",
    ];
    let env = [("DIB_RELEASE", ""), ("DIB_INITRAMFS_MODULES", "vm")];
    let o = build(&dir, None, &args, &env);
    assert_eq!(o.code, 0, "{}", o.stderr);
    // openssh-server's postinst made host keys and systemd a machine id, yet no cached layer of
    // this build holds a generated identity (the boots below check the image has host keys).
    assert_eq!(
        identities_in_layers(&dir, None, &args, &env),
        Vec::<String>::new(),
        "generated identities were stored in the build's layers"
    );
    assert!(
        o.log.contains("bootstrap cache hit"),
        "the build did not reuse the root filesystem's bootstrap"
    );
    assert_commands_logged(
        &o.log,
        &["losetup", "partx", "sgdisk", "mkfs", "mount", "umount"],
    );
    let img = dir.join("hybrid.qcow2");
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&img)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_incus_vm(&dir);
    assert_small_initramfs(&o.log, &img, &dir);
    assert_no_leftovers(&dir, &h);
    for (uefi, budget) in [(true, UEFI_BOOT_BUDGET), (false, BIOS_BOOT_BUDGET)] {
        let r = boot_check(&img, uefi, budget);
        assert_first_boot(&r, uefi);
    }
}

/// arm64 under TCG on this amd64 host: firmware, kernel and first boot take several times
/// amd64's.
const ARM64_BOOT_BUDGET: u64 = 1200;

#[test]
fn arm64_vm_builds_through_qemu_user_and_boots_under_aavmf() {
    if !capable("arm64_vm_builds_through_qemu_user_and_boots_under_aavmf") {
        return;
    }
    for tool in ["qemu-system-aarch64", "qemu-aarch64-static"] {
        assert!(
            crate::harness::which(tool).is_some(),
            "`{tool}` is missing (scripts/install-host-deps installs it)"
        );
    }
    let h = heavy();
    // Timed from here: the wait for the heavy lock is not this test's time.
    let _t = Timer::start("arm64_vm_builds_through_qemu_user_and_boots_under_aavmf");
    let dir = work("arm64");
    // The default release, as `kiln build -a arm64 debian-minimal vm` gives it (vm adds
    // block-device-efi on arm64), trimmed for CI's budget: no `base` element (-n) and the
    // VM initramfs module set; scripts/arm64-vm builds and boots the untrimmed image. The tar
    // of the same tree is checked for arm64 binaries.
    let args = [
        "-n",
        "-a",
        "arm64",
        "debian-minimal",
        "vm",
        "cloud-init",
        "growroot",
        "-t",
        "qcow2,tar",
        "-o",
        "arm",
    ];
    let o = build(
        &dir,
        None,
        &args,
        &[("DIB_RELEASE", ""), ("DIB_INITRAMFS_MODULES", "vm")],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.log.contains("block-device-efi"),
        "vm on arm64 did not add block-device-efi"
    );
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
    let listing = crate::harness::tar_listing(&dir.join("arm.tar"), false);
    for want in ["./boot/efi/EFI/BOOT/BOOTAA64.EFI", "./boot/grub/grub.cfg"] {
        assert!(
            listing.iter().any(|l| l.ends_with(want)),
            "{want} is not in the image's tree"
        );
    }
    assert!(
        listing
            .iter()
            .any(|l| l.contains("./boot/vmlinuz-") && l.contains("arm64")),
        "no arm64 kernel in /boot"
    );
    assert_no_leftovers(&dir, &h);
    let r = boot_check_arch(&dir.join("arm.qcow2"), "aarch64", true, ARM64_BOOT_BUDGET);
    assert_first_boot(&r, true);
    let console = fact(&r, "serial-console");
    assert!(console.contains("ttyAMA0"), "serial console {console}");
}
