//! The typed nodes of a block-device plan.
//!
//! Each config entry (and each partition, pv, vg and lv) becomes one [`Node`] whose
//! [`NodeKind`] holds the settings it runs with, already defaulted and checked, so that
//! creating it needs no more decisions.

use std::path::PathBuf;

use serde::Serialize;

use crate::layout::TableLabel;
use crate::size::SizeSpec;

/// One node of the block-device graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    /// The unique node name (`image0`, `root`, `mkfs_root`, ...).
    pub name: String,
    /// The config line the node came from, when known.
    pub line: Option<u32>,
    /// The nodes this one sits on.
    pub base: Vec<String>,
    /// What the node is and how it is configured.
    #[serde(flatten)]
    pub kind: NodeKind,
}

/// The kind of a node, with its settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NodeKind {
    /// A sparse image file attached to a loop device.
    LocalLoop {
        /// Size in bytes, if known yet (the `size` key, else the params' image size).
        size: Option<u64>,
        /// `<directory>/<name>.raw`.
        image_path: PathBuf,
        /// Logical sector size of the loop device.
        block_size: u64,
    },
    /// A partition table on its base device.
    PartitionTable {
        /// MBR or GPT.
        label: TableLabel,
        /// Partition alignment in bytes.
        align: u64,
        /// The partition node names, in order.
        partitions: Vec<String>,
        /// MBR disk id (`0x........`) or GPT disk GUID.
        disk_id: String,
    },
    /// One partition of a table.
    Partition {
        /// The partitioning node.
        table: String,
        /// Partition number (MBR logical partitions count from 5).
        number: u32,
        /// The size as configured.
        size: SizeSpec,
        /// The boot flag (MBR only; GPT ignores it, as DIB does).
        boot: bool,
        /// MBR: a primary (not a logical) partition.
        primary: bool,
        /// MBR type (`0x83`) or sgdisk type code (`8300`, `EF00`, or a GUID).
        ptype: String,
        /// GPT partition GUID.
        guid: Option<String>,
        /// First sector, once the image size is known.
        start: Option<u64>,
        /// Length in sectors, once the image size is known.
        sectors: Option<u64>,
    },
    /// An LVM physical volume.
    LvmPv {
        /// Extra `pvcreate` options.
        options: Vec<String>,
    },
    /// An LVM volume group.
    LvmVg {
        /// The physical volume nodes.
        pvs: Vec<String>,
        /// Extra `vgcreate` options.
        options: Vec<String>,
    },
    /// An LVM logical volume.
    LvmLv {
        /// The volume group node.
        vg: String,
        /// Size in bytes (rounded up to 4 MiB when run).
        size: Option<u64>,
        /// Extents (`-l`), e.g. `28%VG` or `100%FREE`.
        extents: Option<String>,
        /// `thin` or `thin-pool`.
        lv_type: Option<String>,
        /// The thin pool of a thin volume.
        thin_pool: Option<String>,
        /// Extra `lvcreate` options.
        options: Vec<String>,
    },
    /// A filesystem (or swap) on its base device.
    Mkfs {
        /// Filesystem type (`ext4`, `xfs`, `vfat`, `swap`, ...).
        fstype: String,
        /// The label as written to the filesystem (uppercased for vfat).
        label: String,
        /// Extra mkfs options.
        opts: Vec<String>,
        /// Filesystem UUID (derived from the config unless given).
        uuid: String,
    },
    /// A mount of a filesystem under the mount base.
    Mount {
        /// The mount point inside the image (`/`, `/boot/efi`).
        mount_point: String,
        /// Where it is mounted on the host (`<mount_base>/<mount_point>`).
        target: PathBuf,
    },
    /// An fstab line for a mount.
    Fstab {
        /// Mount options (`defaults`).
        options: String,
        /// Dump frequency.
        dump_freq: u32,
        /// fsck pass number.
        fsck_passno: u32,
    },
}

impl Node {
    /// The plugin-level name of the node's kind, as used in messages.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            NodeKind::LocalLoop { .. } => "local_loop",
            NodeKind::PartitionTable { .. } => "partitioning",
            NodeKind::Partition { .. } => "partition",
            NodeKind::LvmPv { .. } => "lvm pv",
            NodeKind::LvmVg { .. } => "lvm vg",
            NodeKind::LvmLv { .. } => "lvm lv",
            NodeKind::Mkfs { .. } => "mkfs",
            NodeKind::Mount { .. } => "mount",
            NodeKind::Fstab { .. } => "fstab",
        }
    }

    /// Whether the node provides a block device (`image_block_devices` lists these).
    pub fn has_device(&self) -> bool {
        matches!(
            self.kind,
            NodeKind::LocalLoop { .. } | NodeKind::Partition { .. } | NodeKind::LvmLv { .. }
        )
    }
}

/// The longest label a filesystem type accepts, when kiln knows it.
pub(crate) fn label_max(fstype: &str) -> Option<usize> {
    match fstype {
        "ext2" | "ext3" | "ext4" | "swap" => Some(16),
        "xfs" => Some(12),
        "vfat" | "fat" | "msdos" => Some(11),
        "btrfs" => Some(255),
        _ => None,
    }
}

/// FAT filesystems: uppercased labels, `mkfs.vfat`, no fstrim, filled offline when unmountable.
pub(crate) fn is_fat(fstype: &str) -> bool {
    matches!(fstype, "vfat" | "fat" | "msdos")
}

/// The default label of a root filesystem (DIB: `img-rootfs` for xfs, else `cloudimg-rootfs`).
pub(crate) fn default_root_label(fstype: &str) -> &'static str {
    if fstype == "xfs" {
        "img-rootfs"
    } else {
        "cloudimg-rootfs"
    }
}
