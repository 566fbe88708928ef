//! Creation and teardown against the recording runner: commands, order, rollback, retries.

use kiln_blockdev::{image_size_kib, parse_size, Error, NodeKind, RecordingRunner, SizeOpts};

use crate::fixtures::{planned, EFI, GPT, LVM, MBR, MIB};

/// The recorded log with derived identifiers replaced, for readable comparisons.
fn log_of(r: &RecordingRunner) -> Vec<String> {
    let re =
        regex::Regex::new(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").unwrap();
    let serial = regex::Regex::new(r"-i [0-9A-F]{8}").unwrap();
    r.log()
        .into_iter()
        .map(|l| {
            serial
                .replace_all(&re.replace_all(&l, "UUID"), "-i SERIAL")
                .into_owned()
        })
        .collect()
}

#[test]
fn mbr_create_and_teardown() {
    let plan = planned(MBR, Some(64 * MIB));
    let mut r = RecordingRunner::new();
    let created = plan.create(&mut r).unwrap();
    assert_eq!(created.image_path().to_str(), Some("/img/image0.raw"));
    assert_eq!(created.image_block_device(), "/dev/loop0");
    assert_eq!(
        created.image_block_devices(),
        " [image0]=/dev/loop0 [root]=/dev/loop0p1 "
    );
    assert_eq!(created.device("root"), Some("/dev/loop0p1"));
    assert_eq!(created.mounts().len(), 1);
    assert!(!created.mounts()[0].offline);
    assert_eq!(
        log_of(&r),
        [
            "create /img/image0.raw (67108864 bytes)",
            "losetup --show -f --direct-io=off /img/image0.raw",
            "write /dev/loop0 @0 (512 bytes)",
            "partx -a /dev/loop0",
            "mkfs -t ext4 -L cloudimg-rootfs -U UUID -q /dev/loop0p1",
            "mkdir -p /mnt",
            "mount /dev/loop0p1 /mnt",
        ]
    );
    r.clear();
    created.umount(&mut r).unwrap();
    assert_eq!(
        log_of(&r),
        [
            "sync",
            "fstrim --verbose /mnt",
            "umount /mnt",
            "partx -d /dev/loop0",
            "losetup -d /dev/loop0",
        ]
    );
}

#[test]
fn efi_create_and_teardown_order() {
    let plan = planned(EFI, Some(2048 * MIB));
    let mut r = RecordingRunner::new();
    let created = plan.create(&mut r).unwrap();
    assert_eq!(
        created.image_block_devices(),
        " [image0]=/dev/loop0 [ESP]=/dev/loop0p1 [BSP]=/dev/loop0p2 [root]=/dev/loop0p3 "
    );
    let log = log_of(&r);
    assert_eq!(log[0], "create /img/image0.raw (2147483648 bytes)");
    assert_eq!(log[1], "losetup --show -f --direct-io=off /img/image0.raw");
    assert_eq!(
        log[2],
        "sgdisk -o -U UUID -n 1:2048:1128447 -t 1:EF00 -c 1:ESP -u 1:UUID \
         -n 2:1128448:1144831 -t 2:EF02 -c 2:BSP -u 2:UUID \
         -n 3:1144832:4194270 -t 3:8300 -c 3:root -u 3:UUID /dev/loop0"
    );
    assert_eq!(
        log[3..],
        [
            "partx -a /dev/loop0",
            "mkfs.vfat -n MKFS_ESP -i SERIAL /dev/loop0p1",
            "mkfs -t ext4 -L cloudimg-rootfs -U UUID -q /dev/loop0p3",
            "mkdir -p /mnt",
            "mount /dev/loop0p3 /mnt",
            "mkdir -p /mnt/boot/efi",
            "mount /dev/loop0p1 /mnt/boot/efi",
        ]
    );
    r.clear();
    created.umount(&mut r).unwrap();
    assert_eq!(
        log_of(&r),
        [
            "sync",
            "umount /mnt/boot/efi",
            "sync",
            "fstrim --verbose /mnt",
            "umount /mnt",
            "partx -d /dev/loop0",
            "losetup -d /dev/loop0",
        ]
    );
}

#[test]
fn vfat_is_filled_offline_when_the_kernel_cannot_mount_it() {
    let plan = planned(EFI, Some(2048 * MIB));
    let mut r = RecordingRunner::new().without_fs("vfat").dir_entries(
        "/mnt/boot/efi",
        &["/mnt/boot/efi/EFI", "/mnt/boot/efi/startup.nsh"],
    );
    let created = plan.create(&mut r).unwrap();
    let log = log_of(&r);
    assert!(log.contains(&"mkdir -p /mnt/boot/efi".to_owned()));
    assert!(
        !log.iter().any(|l| l.starts_with("mount /dev/loop0p1")),
        "{log:#?}"
    );
    assert!(
        log.contains(&"mount -t tmpfs -o mode=0755 /dev/loop0p1 /mnt/boot/efi".to_owned()),
        "{log:#?}"
    );
    let esp = created
        .mounts()
        .iter()
        .find(|m| m.mount_point == "/boot/efi")
        .unwrap();
    assert!(esp.offline);
    assert_eq!(esp.device, "/dev/loop0p1");
    r.clear();
    created.umount(&mut r).unwrap();
    assert_eq!(
        log_of(&r),
        [
            "mcopy -s -o -i /dev/loop0p1 /mnt/boot/efi/EFI /mnt/boot/efi/startup.nsh ::/",
            "sync",
            "find /mnt/boot/efi -mindepth 1 -delete",
            "sync",
            "umount /mnt/boot/efi",
            "sync",
            "fstrim --verbose /mnt",
            "umount /mnt",
            "partx -d /dev/loop0",
            "losetup -d /dev/loop0",
        ]
    );
}

#[test]
fn offline_vfat_needs_mtools() {
    let plan = planned(EFI, Some(2048 * MIB));
    let mut r = RecordingRunner::new()
        .without_fs("vfat")
        .fail("mcopy --version");
    let e = plan.create(&mut r).unwrap_err();
    assert!(matches!(e, Error::NoMtools { .. }), "{e:?}");
    assert!(e.to_string().ends_with("install mtools"), "{e}");
    assert!(log_of(&r).ends_with(&[
        "umount /mnt".to_owned(),
        "partx -d /dev/loop0".to_owned(),
        "losetup -d /dev/loop0".to_owned()
    ]));
}

#[test]
fn an_empty_offline_vfat_needs_no_copy() {
    let plan = planned(EFI, Some(2048 * MIB));
    let mut r = RecordingRunner::new().without_fs("vfat");
    let created = plan.create(&mut r).unwrap();
    r.clear();
    created.umount(&mut r).unwrap();
    assert!(!log_of(&r).iter().any(|l| l.starts_with("mcopy")));
}

#[test]
fn other_unmountable_filesystems_are_an_error() {
    let plan = planned(MBR, Some(64 * MIB));
    let mut r = RecordingRunner::new().without_fs("ext4");
    let e = plan.create(&mut r).unwrap_err();
    assert!(matches!(e, Error::CannotMount { .. }), "{e:?}");
    // ... and what was made is rolled back.
    assert!(log_of(&r).ends_with(&[
        "partx -d /dev/loop0".to_owned(),
        "losetup -d /dev/loop0".to_owned()
    ]));
}

#[test]
fn failure_midway_rolls_back_in_reverse() {
    let plan = planned(EFI, Some(2048 * MIB));
    let mut r = RecordingRunner::new().fail("mount /dev/loop0p1");
    let e = plan.create(&mut r).unwrap_err();
    assert!(matches!(e, Error::Run(_)), "{e:?}");
    assert!(
        e.to_string().contains("mount /dev/loop0p1 /mnt/boot/efi"),
        "{e}"
    );
    let log = log_of(&r);
    let failed = log
        .iter()
        .position(|l| l == "mount /dev/loop0p1 /mnt/boot/efi")
        .unwrap();
    assert_eq!(
        log[failed + 1..],
        [
            "sync",
            "fstrim --verbose /mnt",
            "umount /mnt",
            "partx -d /dev/loop0",
            "losetup -d /dev/loop0",
        ]
    );
}

#[test]
fn failure_before_any_mount_rolls_back_devices() {
    let plan = planned(EFI, Some(2048 * MIB));
    let mut r = RecordingRunner::new().fail("mkfs -t ext4");
    assert!(plan.create(&mut r).is_err());
    let log = log_of(&r);
    assert!(log.ends_with(&[
        "mkfs -t ext4 -L cloudimg-rootfs -U UUID -q /dev/loop0p3".to_owned(),
        "partx -d /dev/loop0".to_owned(),
        "losetup -d /dev/loop0".to_owned(),
    ]));
    // A failure of the loop device itself leaves nothing to undo.
    let mut r = RecordingRunner::new().fail("losetup --show");
    assert!(plan.create(&mut r).is_err());
    assert_eq!(log_of(&r).len(), 2);
}

#[test]
fn incomplete_rollback_is_reported() {
    let plan = planned(MBR, Some(64 * MIB));
    let mut r = RecordingRunner::new().fail("mkfs").fail("losetup -d");
    let e = plan.create(&mut r).unwrap_err();
    match &e {
        Error::RollbackFailed { cause, rollback } => {
            assert!(matches!(**cause, Error::Run(_)));
            assert_eq!(rollback.failures.len(), 1);
            assert!(
                rollback.failures[0].contains("detach loop device /dev/loop0"),
                "{rollback}"
            );
        }
        other => panic!("{other:?}"),
    }
    // losetup -d was tried three times, 1 s apart.
    let log = log_of(&r);
    assert_eq!(
        log.iter().filter(|l| *l == "losetup -d /dev/loop0").count(),
        3
    );
    assert_eq!(log.iter().filter(|l| *l == "sleep 1000ms").count(), 2);
}

#[test]
fn umount_retries_then_unmounts_lazily() {
    let plan = planned(EFI, Some(2048 * MIB));
    let mut r = RecordingRunner::new().fail_times("umount /mnt/boot/efi", 3);
    let created = plan.create(&mut r).unwrap();
    r.clear();
    created.umount(&mut r).unwrap();
    let log = log_of(&r);
    assert_eq!(
        log.iter().filter(|l| *l == "umount /mnt/boot/efi").count(),
        4
    );
    assert_eq!(log.iter().filter(|l| *l == "sleep 1000ms").count(), 3);
    assert!(!log.iter().any(|l| l.starts_with("umount -l")));

    // Always busy: 1 try + 9 retries, then `umount -l`.
    let mut r = RecordingRunner::new().fail("umount /mnt/boot/efi");
    let created = plan.create(&mut r).unwrap();
    r.clear();
    created.umount(&mut r).unwrap();
    let log = log_of(&r);
    assert_eq!(
        log.iter().filter(|l| *l == "umount /mnt/boot/efi").count(),
        10
    );
    assert_eq!(log.iter().filter(|l| *l == "sleep 1000ms").count(), 9);
    assert!(log.contains(&"umount -l /mnt/boot/efi".to_owned()));
}

#[test]
fn teardown_keeps_going_and_reports_everything() {
    let plan = planned(EFI, Some(2048 * MIB));
    let mut r = RecordingRunner::new().fail("umount").fail("partx -d");
    let created = plan.create(&mut r).unwrap();
    r.clear();
    let e = created.umount(&mut r).unwrap_err();
    assert_eq!(e.failures.len(), 3, "{e}");
    assert!(e.failures[0].starts_with("unmount /mnt/boot/efi"));
    assert!(e.failures[1].starts_with("unmount /mnt:"));
    assert!(e.failures[2].starts_with("remove the partition devices of /dev/loop0"));
    // The loop device is still detached.
    assert_eq!(
        log_of(&r).last().map(String::as_str),
        Some("losetup -d /dev/loop0")
    );
    assert!(e
        .to_string()
        .starts_with("teardown could not undo 3 step(s): "));
}

#[test]
fn drop_tears_down_as_a_safety_net() {
    let plan = planned(MBR, Some(64 * MIB));
    let mut r = RecordingRunner::new();
    {
        let _created = plan.create(&mut r).unwrap();
        r.clear();
    }
    assert_eq!(
        log_of(&r),
        [
            "sync",
            "fstrim --verbose /mnt",
            "umount /mnt",
            "partx -d /dev/loop0",
            "losetup -d /dev/loop0",
        ]
    );
    // After an explicit umount, drop does nothing more.
    let created = plan.create(&mut r).unwrap();
    created.umount(&mut r).unwrap();
    r.clear();
    assert!(r.log().is_empty());
}

#[test]
fn partx_update_when_nodes_do_not_appear() {
    let plan = planned(GPT, Some(64 * MIB));
    let mut r = RecordingRunner::new().missing_until("/dev/loop0p2", "partx -u");
    plan.create(&mut r).unwrap().umount(&mut r).unwrap();
    let log = log_of(&r);
    let a = log.iter().position(|l| l == "partx -a /dev/loop0").unwrap();
    assert_eq!(log[a + 1], "partx -u /dev/loop0");

    // A node that never appears is an error, after a short wait, and is rolled back.
    let mut r = RecordingRunner::new().missing_until("/dev/loop0p2", "");
    let e = plan.create(&mut r).unwrap_err();
    assert!(
        matches!(e, Error::PartitionDeviceMissing { ref device } if device == "/dev/loop0p2"),
        "{e:?}"
    );
    assert!(log_of(&r).ends_with(&[
        "partx -d /dev/loop0".to_owned(),
        "losetup -d /dev/loop0".to_owned()
    ]));
}

#[test]
fn lvm_needs_device_mapper() {
    let plan = planned(LVM, None);
    let mut r = RecordingRunner::new();
    let e = plan.create(&mut r).unwrap_err();
    assert!(matches!(e, Error::NoDeviceMapper));
    assert_eq!(
        e.to_string().split(';').next(),
        Some("LVM needs device-mapper, which this kernel lacks (no device-mapper in /proc/misc)")
    );
    assert!(r.log().is_empty(), "nothing is created");
}

#[test]
fn lvm_create_and_teardown_with_device_mapper() {
    let plan = planned(LVM, None);
    let mut r = RecordingRunner::new().with_device_mapper(true);
    let created = plan.create(&mut r).unwrap();
    assert_eq!(created.device("lv_root"), Some("/dev/mapper/vg-lv_root"));
    assert!(created
        .image_block_devices()
        .contains(" [lv_var]=/dev/mapper/vg-lv_var "));
    let log = log_of(&r);
    assert!(
        log.contains(&"pvcreate --force /dev/loop0p2".to_owned()),
        "{log:#?}"
    );
    assert!(log.contains(&"vgcreate --force vg /dev/loop0p2".to_owned()));
    assert!(log.contains(&"mount /dev/mapper/vg-lv_root /mnt".to_owned()));
    assert!(log.contains(&"mount /dev/mapper/vg-lv_var /mnt/var".to_owned()));
    let created_lvs: Vec<String> = log
        .iter()
        .filter_map(|l| l.strip_prefix("lvcreate --name "))
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect();
    assert_eq!(created_lvs.len(), 4);
    r.clear();
    created.umount(&mut r).unwrap();
    let log = log_of(&r);
    let tail: Vec<&str> = log
        .iter()
        .map(String::as_str)
        .filter(|l| !l.starts_with("sync") && !l.starts_with("fstrim"))
        .collect();
    let mut expected: Vec<String> = vec![
        "umount /mnt/var".into(),
        "umount /mnt/boot/efi".into(),
        "umount /mnt".into(),
    ];
    expected.extend(
        created_lvs
            .iter()
            .rev()
            .map(|lv| format!("lvchange -an vg/{lv}")),
    );
    expected.extend([
        "vgchange -an vg".into(),
        "partx -d /dev/loop0".into(),
        "losetup -d /dev/loop0".into(),
    ]);
    assert_eq!(tail, expected);
}

#[test]
fn fstab_is_written() {
    let plan = planned(EFI, Some(2048 * MIB));
    let mut r = RecordingRunner::new();
    let created = plan.create(&mut r).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fstab = dir.path().join("built/etc/fstab");
    created.write_fstab(&fstab).unwrap();
    assert_eq!(
        std::fs::read_to_string(&fstab).unwrap(),
        "LABEL=cloudimg-rootfs / ext4 defaults 0 1\nLABEL=MKFS_ESP /boot/efi vfat defaults 0 2\n"
    );
    let j = created.to_json();
    assert_eq!(j["image_block_device"], "/dev/loop0");
    assert_eq!(j["undo"].as_array().unwrap().len(), 4);
    created.umount(&mut r).unwrap();
}

#[test]
fn create_needs_a_size() {
    let plan = planned(MBR, None);
    let mut r = RecordingRunner::new();
    let e = plan.create(&mut r).unwrap_err();
    assert!(
        matches!(e, Error::ImageSizeUnknown { ref node, .. } if node == "image0"),
        "{e:?}"
    );
    assert!(r.log().is_empty());
}

#[test]
fn block_size_goes_to_losetup() {
    let text = MBR.replace(
        "    name: image0\n",
        "    name: image0\n    block_size: 4096\n",
    );
    let plan = planned(&text, Some(64 * MIB));
    assert!(plan.commands()[1].contains("--sector-size 4096"));
    match &plan.node("root").unwrap().kind {
        NodeKind::Partition { start, sectors, .. } => {
            assert_eq!(*start, Some(256));
            assert_eq!(*sectors, Some(64 * 256 - 256));
        }
        _ => unreachable!(),
    }
}

#[test]
fn size_helpers() {
    assert_eq!(parse_size("1.5 GiB").unwrap(), 3 << 29);
    let kib = image_size_kib(
        1_000_000,
        &SizeOpts {
            efi: true,
            ..SizeOpts::default()
        },
    );
    assert_eq!(kib % 64, 0);
    assert_eq!(
        kib,
        (1_000_000u64 * 10 / 6 + 64 * 1024 + 525 * 1024).div_ceil(64) * 64
    );
}

#[test]
fn reproducible_unmount_makes_ext4_and_vfat_again_from_their_trees() {
    let plan = planned(EFI, Some(2048 * MIB));
    let mut r = RecordingRunner::new().without_fs("vfat");
    let created = plan.create(&mut r).unwrap();
    let d = tempfile::tempdir().unwrap();
    let root_tree = d.path().join("0");
    let esp_tree = d.path().join("1");
    std::fs::create_dir_all(esp_tree.join("EFI/debian")).unwrap();
    std::fs::write(esp_tree.join("EFI/debian/grubx64.efi"), "x").unwrap();
    let remake = kiln_blockdev::Remake {
        epoch: 1_700_000_000,
        trees: vec![
            ("/mnt".into(), root_tree.clone()),
            ("/mnt/boot/efi".into(), esp_tree.clone()),
        ],
    };
    r.clear();
    created.umount_reproducibly(&mut r, &remake).unwrap();
    let log: Vec<String> = log_of(&r)
        .into_iter()
        .map(|l| l.replace(&d.path().display().to_string(), "T"))
        .collect();
    let hash_seed = regex::Regex::new("hash_seed=UUID,").unwrap();
    assert!(log.iter().any(|l| hash_seed.is_match(l)), "{log:#?}");
    assert_eq!(
        log,
        [
            // The offline ESP is not filled from its directory: it is made from its tree.
            "sync",
            "umount /mnt/boot/efi",
            "blkdiscard /dev/loop0p1",
            "env TZ=UTC SOURCE_DATE_EPOCH=1700000000 mkfs.vfat --invariant -n MKFS_ESP -i SERIAL /dev/loop0p1",
            "env TZ=UTC SOURCE_DATE_EPOCH=1700000000 mmd -i /dev/loop0p1 ::/EFI ::/EFI/debian",
            "env TZ=UTC SOURCE_DATE_EPOCH=1700000000 mcopy -m -o -i /dev/loop0p1 T/1/EFI/debian/grubx64.efi ::/EFI/debian",
            "sync",
            "fstrim --verbose /mnt",
            "umount /mnt",
            "blkdiscard /dev/loop0p3",
            "env TZ=UTC SOURCE_DATE_EPOCH=1700000000 mke2fs -F -q -t ext4 -E hash_seed=UUID,root_owner=0:0,lazy_itable_init=1,lazy_journal_init=0,nodiscard -L cloudimg-rootfs -U UUID -d T/0 /dev/loop0p3",
            "partx -d /dev/loop0",
            "losetup -d /dev/loop0",
        ]
    );
    // The same UUID as the first mkfs, and the hash seed derived from it, not equal to it.
    let first = r.log();
    let mke2fs = first.iter().find(|l| l.contains("mke2fs")).unwrap();
    let uuid = mke2fs
        .split(" -U ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    assert!(!mke2fs.contains(&format!("hash_seed={uuid}")), "{mke2fs}");
}

#[test]
fn reproducible_unmount_zeroes_where_discard_fails_and_reports_a_failed_mkfs() {
    let plan = planned(MBR, Some(64 * MIB));
    let mut r = RecordingRunner::new()
        .fail("blkdiscard /dev")
        .fail("env TZ=UTC SOURCE_DATE_EPOCH=5 mke2fs");
    let created = plan.create(&mut r).unwrap();
    let remake = kiln_blockdev::Remake {
        epoch: 5,
        trees: vec![("/mnt".into(), "/t/0".into())],
    };
    r.clear();
    let err = created.umount_reproducibly(&mut r, &remake).unwrap_err();
    assert_eq!(err.failures.len(), 1, "{err}");
    assert!(err.failures[0].contains("/dev/loop0p1"), "{err}");
    let log = log_of(&r);
    assert_eq!(log[3], "blkdiscard /dev/loop0p1");
    assert_eq!(log[4], "blkdiscard -z /dev/loop0p1");
    assert!(log[5].contains("mke2fs"), "{log:#?}");
    // The rest of the teardown still ran.
    assert_eq!(log[6..], ["partx -d /dev/loop0", "losetup -d /dev/loop0"]);
}

#[test]
fn reproducible_unmount_refuses_a_tree_for_an_unknown_mount_and_still_tears_down() {
    let plan = planned(MBR, Some(64 * MIB));
    let mut r = RecordingRunner::new();
    let created = plan.create(&mut r).unwrap();
    let remake = kiln_blockdev::Remake {
        epoch: 5,
        trees: vec![("/elsewhere".into(), "/t/0".into())],
    };
    r.clear();
    let err = created.umount_reproducibly(&mut r, &remake).unwrap_err();
    assert!(err.failures[0].contains("/elsewhere"), "{err}");
    let log = log_of(&r);
    assert!(!log.iter().any(|l| l.contains("mke2fs")), "{log:#?}");
    assert_eq!(
        log.last().map(String::as_str),
        Some("losetup -d /dev/loop0")
    );
}
