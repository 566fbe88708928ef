//! Real images, made with the real runner: a test binary of its own (the root tier of
//! `scripts/test`). These need root and loop devices; without them they skip visibly
//! (`kiln_testkit::skip`), and under CI a skip fails.

#[path = "../it/fixtures.rs"]
#[allow(dead_code)]
mod fixtures;

use std::path::Path;
use std::process::Command;

use kiln_blockdev::{plan, Params, SystemRunner};

use crate::fixtures::MIB;

/// Why these tests cannot run here, if they cannot.
fn missing_capability() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not running as root".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no /dev/loop-control (loop devices unavailable)".into());
    }
    for tool in [
        "losetup",
        "partx",
        "sgdisk",
        "sfdisk",
        "mkfs.ext4",
        "mkfs.vfat",
        "mcopy",
        "mdir",
        "mtype",
        "mlabel",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

fn skip(test: &str) -> bool {
    if let Some(why) = missing_capability() {
        kiln_testkit::skip(test, &format!("{why}; this test creates real loop devices"));
        return true;
    }
    false
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let p = path.to_str().unwrap();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(p))
}

fn loop_of(image: &Path) -> String {
    sh(&format!("losetup -j {}", image.display()))
}

fn params_in(dir: &Path, size: u64) -> Params {
    Params {
        image_size: Some(size),
        image_dir: dir.join("image"),
        mount_base: dir.join("mnt"),
        build_dir: dir.to_path_buf(),
        ..Params::default()
    }
}

const MBR_EXT4: &str = "\
- local_loop:
    name: image0
- partitioning:
    base: image0
    label: mbr
    partitions:
      - name: root
        flags: [boot, primary]
        size: 100%
        mkfs:
          type: ext4
          mount:
            mount_point: /
            fstab:
              options: defaults
              fsck-passno: 1
";

#[test]
fn real_mbr_image_with_ext4() {
    if skip("real_mbr_image_with_ext4") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let params = params_in(dir.path(), 64 * MIB);
    let plan = plan(MBR_EXT4, "test", &params).unwrap();
    let mut runner = SystemRunner;
    let created = plan.create(&mut runner).unwrap();
    let image = created.image_path().to_path_buf();
    let device = created.image_block_device().to_owned();
    assert!(device.starts_with("/dev/loop"), "{device}");
    assert!(Path::new(&format!("{device}p1")).exists());
    assert!(mounted(&params.mount_base));
    std::fs::write(params.mount_base.join("hello.txt"), "hello from kiln\n").unwrap();
    created
        .write_fstab(&params.mount_base.join("etc/fstab"))
        .unwrap();

    created.umount(&mut runner).unwrap();
    assert!(!mounted(&params.mount_base), "the mount is gone");
    assert_eq!(loop_of(&image), "", "the loop device is detached");
    assert!(!sh("losetup -a").contains(image.to_str().unwrap()));
    assert!(
        !Path::new(&format!("{device}p1")).exists(),
        "partition nodes are removed"
    );

    // The file is in the ext4 filesystem of partition 1: look from a fresh loop device.
    let table = kiln_host::json::sfdisk(&image).unwrap();
    assert_eq!(table.partitiontable.partitions[0].start, 2048, "{table:?}");
    let probe = sh(&format!("losetup --show -f -o {} {}", MIB, image.display()));
    let probe = probe.trim();
    let cat = Command::new("debugfs")
        .args(["-R", "cat /hello.txt", probe])
        .output();
    let label = Command::new("e2label").arg(probe).output();
    sh(&format!("losetup -d {probe}"));
    if let Ok(cat) = cat {
        assert_eq!(String::from_utf8_lossy(&cat.stdout), "hello from kiln\n");
    }
    if let Ok(label) = label {
        assert_eq!(
            String::from_utf8_lossy(&label.stdout).trim(),
            "cloudimg-rootfs"
        );
    }
}

const GPT_ESP: &str = "\
- local_loop:
    name: image0
- partitioning:
    base: image0
    label: gpt
    partitions:
      - name: ESP
        type: 'EF00'
        size: 40MiB
        mkfs:
          type: vfat
          mount:
            mount_point: /boot/efi
            fstab:
              options: defaults
              fsck-passno: 2
      - name: root
        type: '8300'
        size: 100%
        mkfs:
          mount:
            mount_point: /
            fstab:
              options: defaults
              fsck-passno: 1
";

#[test]
fn real_gpt_image_with_vfat_esp() {
    if skip("real_gpt_image_with_vfat_esp") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let params = params_in(dir.path(), 128 * MIB);
    let plan = plan(GPT_ESP, "test", &params).unwrap();
    let mut runner = SystemRunner;
    let created = plan.create(&mut runner).unwrap();
    let image = created.image_path().to_path_buf();
    let esp_dir = params.mount_base.join("boot/efi");
    assert!(mounted(&params.mount_base));
    assert!(esp_dir.is_dir());
    let esp = created
        .mounts()
        .iter()
        .find(|m| m.mount_point == "/boot/efi")
        .unwrap()
        .clone();
    assert_eq!(esp.offline, !kiln_blockdev::host_can_mount("vfat"));
    std::fs::create_dir_all(esp_dir.join("EFI/kiln")).unwrap();
    std::fs::write(esp_dir.join("EFI/kiln/grub.cfg"), "set timeout=1\n").unwrap();
    std::fs::create_dir_all(esp_dir.join("EFI/empty")).unwrap();
    std::fs::write(params.mount_base.join("root.txt"), "root\n").unwrap();

    created.umount(&mut runner).unwrap();
    assert!(!mounted(&params.mount_base));
    assert!(!mounted(&esp_dir));
    assert_eq!(loop_of(&image), "");

    // The ESP starts at 1 MiB; mtools reads it straight from the image file.
    let fat = format!("{}@@{}", image.display(), MIB);
    let listing = sh(&format!("mdir -i {fat} ::/EFI/kiln"));
    assert!(listing.to_lowercase().contains("grub"), "{listing}");
    assert_eq!(
        sh(&format!("mtype -i {fat} ::/EFI/kiln/grub.cfg")),
        "set timeout=1\n"
    );
    sh(&format!("mdir -i {fat} ::/EFI/empty"));
    let volume = sh(&format!("mlabel -s -i {fat} ::"));
    assert!(volume.contains("MKFS_ESP"), "{volume}");

    // The ESP's files are not also in the root filesystem's /boot/efi.
    let start = kiln_host::json::sfdisk(&image)
        .unwrap()
        .partitiontable
        .partitions[1]
        .start;
    let probe = sh(&format!(
        "losetup --show -f -o {} {}",
        start * 512,
        image.display()
    ));
    let probe = probe.trim();
    let ls = Command::new("debugfs")
        .args(["-R", "ls -l /boot/efi", probe])
        .output();
    let cat = Command::new("debugfs")
        .args(["-R", "cat /root.txt", probe])
        .output();
    sh(&format!("losetup -d {probe}"));
    if let (Ok(ls), Ok(cat)) = (ls, cat) {
        let ls = String::from_utf8_lossy(&ls.stdout);
        assert!(
            !ls.contains("EFI"),
            "root fs /boot/efi should be empty: {ls}"
        );
        assert_eq!(String::from_utf8_lossy(&cat.stdout), "root\n");
    }
}
