//! Block-device configs used by the tests, written for kiln after the meaning of DIB's
//! shipped layouts (reference §4.3), plus helpers.

use std::path::PathBuf;

use kiln_blockdev::{plan, Params, Plan};

pub const MIB: u64 = 1 << 20;

/// One MBR partition, primary and bootable, filling the disk, ext4 at `/`.
pub const MBR: &str = "\
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
          mount:
            mount_point: /
            fstab:
              options: defaults
              fsck-passno: 1
";

/// The same as MBR, written as a graph (every node at the top level, joined by `base`).
pub const MBR_GRAPH: &str = "\
- local_loop:
    name: image0
- partitioning:
    base: image0
    label: mbr
    partitions:
      - name: root
        flags: [boot, primary]
        size: 100%
- mkfs:
    name: mkfs_root
    base: root
- mount:
    name: mount_mkfs_root
    base: mkfs_root
    mount_point: /
- fstab:
    name: fstab_mount_mkfs_root
    base: mount_mkfs_root
    options: defaults
    fsck-passno: 1
";

/// GPT: an 8 MiB BIOS boot partition, then the root filesystem on the rest.
pub const GPT: &str = "\
- local_loop:
    name: image0
- partitioning:
    base: image0
    label: gpt
    partitions:
      - name: BSP
        type: 'EF02'
        size: 8MiB
      - name: root
        flags: [boot]
        type: '8300'
        size: 100%
        mkfs:
          mount:
            mount_point: /
            fstab:
              options: defaults
              fsck-passno: 1
";

/// EFI: a 550 MiB vfat ESP at /boot/efi, a BIOS boot partition, and root on the rest.
pub const EFI: &str = "\
- local_loop:
    name: image0
- partitioning:
    base: image0
    label: gpt
    partitions:
      - name: ESP
        type: 'EF00'
        size: 550MiB
        mkfs:
          type: vfat
          mount:
            mount_point: /boot/efi
            fstab:
              options: defaults
              fsck-passno: 2
      - name: BSP
        type: 'EF02'
        size: 8MiB
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

/// EFI with the root on LVM, in graph form for the lvm and filesystems.
pub const LVM: &str = "\
- local_loop:
    name: image0
    size: 4GiB
- partitioning:
    base: image0
    label: gpt
    partitions:
      - name: ESP
        type: 'EF00'
        size: 550MiB
        mkfs:
          type: vfat
          mount:
            mount_point: /boot/efi
            fstab: {options: defaults, fsck-passno: 2}
      - name: root
        type: '8E00'
        size: 100%
- lvm:
    name: lvm
    base: [root]
    pvs:
      - name: pv
        base: root
        options: ['--force']
    vgs:
      - name: vg
        base: [pv]
        options: ['--force']
    lvs:
      - name: lv_root
        base: vg
        extents: 28%VG
      - name: lv_var
        base: vg
        size: 1GiB
      - name: lv_pool
        base: vg
        type: thin-pool
        size: 1001MiB
      - name: lv_thin
        base: vg
        type: thin
        thin-pool: lv_pool
        size: 500MiB
- mkfs:
    name: fs_root
    base: lv_root
    type: xfs
    label: img-rootfs
    mount:
      mount_point: /
      fstab: {options: 'rw,relatime', fsck-passno: 1}
- mkfs:
    name: fs_var
    base: lv_var
    type: xfs
    mount:
      mount_point: /var
      fstab: {options: 'rw,relatime'}
";

/// Params with fixed paths; `size` in bytes.
pub fn params(size: Option<u64>) -> Params {
    Params {
        image_size: size,
        image_dir: PathBuf::from("/img"),
        mount_base: PathBuf::from("/mnt"),
        build_dir: PathBuf::from("/build"),
        ..Params::default()
    }
}

/// Plans a fixture that must be valid.
pub fn planned(text: &str, size: Option<u64>) -> Plan {
    plan(text, "test.yaml", &params(size)).unwrap_or_else(|e| panic!("{e}"))
}
