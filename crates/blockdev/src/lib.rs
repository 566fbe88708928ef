//! kiln-blockdev: diskimage-builder's block-device layer, planned first and run second.
//!
//! The config is DIB's YAML (a list of `- plugin: {settings}` entries; plugins `local_loop`,
//! `partitioning` (mbr, gpt), `lvm`, `mkfs`, `mount`, `fstab`; tree and graph forms, mixed
//! freely, with DIB's auto-naming). [`plan`] turns it into a checked, ordered graph without
//! root and without touching the host; [`Plan`] answers DIB's `getval` questions (root label,
//! mount points, ...), shows the commands it would run and renders the fstab.
//! [`Plan::create`] then makes the devices through a [`Runner`] and returns a [`Created`],
//! whose [`Created::umount`] (or, as a safety net, its `Drop`) tears everything down in
//! reverse order.
//!
//! Where kiln deliberately differs from DIB:
//! - identifiers (MBR disk id, GPT GUIDs, filesystem UUIDs, vfat serials) are derived from
//!   the build seed ([`Params::seed`]; without one, from the config), never random, so the
//!   same inputs build the same image;
//! - partition devices come from `partx` (`/dev/loopNpK`), not device-mapper/kpartx;
//! - a filesystem the kernel cannot mount (vfat here) is filled offline with mtools;
//! - for reproducible builds, [`Created::umount_reproducibly`] makes ext2/3/4 and vfat
//!   filesystems again offline from their final trees, so every byte of them is fixed
//!   (`remake.rs`);
//! - node order is topological with ties broken by name, not a hash order.

mod config;
mod create;
mod error;
mod graph;
mod ids;
mod layout;
mod mbr;
mod node;
mod plan;
mod remake;
mod size;
mod yaml;

pub use config::PLUGIN_NAMES;
pub use create::{partition_device, Created, MountInfo};
pub use error::{At, Error, TeardownError};
/// The host seam, from kiln-host: blockdev drives every command through a [`Runner`].
pub use kiln_host::{
    host_can_mount, Error as RunError, Output, RecordingRunner, Runner, SystemRunner,
};
pub use layout::{Extent, TableLabel, TableLayout};
pub use node::{Node, NodeKind};
pub use plan::{plan, Params, Plan};
pub use remake::{can_remake, Remake};
pub use size::{image_size_kib, parse_size, parse_size_spec, SizeOpts, SizeSpec};

/// The config DIB uses when neither `DIB_BLOCK_DEVICE_CONFIG` nor any element provides one: a
/// bare root filesystem on the whole image, with no partition table.
pub fn fallback_config() -> &'static str {
    "\
- local_loop:
    name: image0
    mkfs:
      name: mkfs_root
      mount:
        mount_point: /
        fstab:
          options: defaults
          fsck-passno: 1
"
}
