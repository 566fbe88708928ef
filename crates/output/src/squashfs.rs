//! `squashfs`: a squashfs of the final tree (`NAME.squash`, as DIB names it), xz-compressed as
//! DIB makes it, without the contents of `/proc` and `/sys`.
//!
//! mksquashfs writes files in sorted order and its output depends only on the tree and, for
//! the filesystem's creation time, on the clock. With `SOURCE_DATE_EPOCH` set it is passed to
//! mksquashfs in the environment (squashfs-tools 4.5 takes it as the creation time and clamps
//! every inode time to it; it refuses `-mkfs-time` beside it), so the same tree gives the same
//! bytes; without it, the variable is removed, and the time is the clock's.

use std::path::Path;

use kiln_host::Cmd;

use crate::{Options, Producer, Result};

/// The `squashfs` producer.
#[derive(Debug)]
pub struct Squashfs;

impl Producer for Squashfs {
    fn produce(&self, root: &Path, pending: &Path, opts: &Options) -> Result<()> {
        mksquashfs(root, pending, opts.source_date_epoch, &[])
    }
}

/// Runs mksquashfs on `root`, writing `dest` (xz, no recovery file, `/proc` and `/sys`
/// without contents), with `extra` options (Incus's root filesystem adds `-b 1M -no-exports`
/// as distrobuilder does).
pub(crate) fn mksquashfs(
    root: &Path,
    dest: &Path,
    source_date_epoch: Option<u64>,
    extra: &[&str],
) -> Result<()> {
    let cmd = Cmd::new("mksquashfs");
    let cmd = match source_date_epoch {
        Some(e) => cmd.env("SOURCE_DATE_EPOCH", e.to_string()),
        None => cmd.env_remove("SOURCE_DATE_EPOCH"),
    };
    cmd.arg(root)
        .arg(dest)
        .args(["-comp", "xz", "-noappend", "-no-recovery", "-quiet"])
        .args(extra.iter().copied())
        .args(["-wildcards", "-e", "proc/*", "-e", "sys/*"])
        .run()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::small_tree;
    use crate::{output_path, pending_path, produce, OutputType};

    #[test]
    fn squashfs_of_a_small_tree() {
        if !kiln_host::tools::installed("mksquashfs") || !kiln_host::tools::installed("unsquashfs")
        {
            kiln_testkit::skip(
                "squashfs::squashfs_of_a_small_tree",
                "mksquashfs/unsquashfs (squashfs-tools) are not installed",
            );
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let root = small_tree(d.path());
        let ty = OutputType::parse("squashfs").unwrap();
        let dest = output_path(&d.path().join("img"), ty);
        assert_eq!(dest.file_name().unwrap(), "img.squash");
        produce(ty, &root, &dest, &Options::default()).unwrap();
        let list = Cmd::new("unsquashfs")
            .args(["-l", "-d", "r"])
            .arg(pending_path(&dest))
            .run()
            .unwrap()
            .stdout_str();
        assert!(list.contains("r/etc/hostname"), "{list}");
        assert!(list.contains("r/proc\n"), "{list}");
        assert!(!list.contains("r/proc/1"), "{list}");
    }

    #[test]
    fn the_same_tree_gives_the_same_squashfs_under_another_umask_and_tz() {
        if !kiln_host::tools::installed("mksquashfs") || !kiln_host::tools::installed("unsquashfs")
        {
            kiln_testkit::skip(
                "squashfs::the_same_tree_gives_the_same_squashfs_under_another_umask_and_tz",
                "mksquashfs/unsquashfs (squashfs-tools) are not installed",
            );
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let root = small_tree(d.path());
        let epoch = 1_700_000_000;
        let opts = Options {
            source_date_epoch: Some(epoch),
            ..Options::default()
        };
        let ty = OutputType::parse("squashfs").unwrap();
        let here = d.path().join("a.squash");
        let there = d.path().join("b.squash");
        produce(ty, &root, &here, &opts).unwrap();
        crate::testutil::produce_elsewhere("squashfs", &root, &there, Some(epoch));
        let bytes = std::fs::read(pending_path(&here)).unwrap();
        assert_eq!(bytes, std::fs::read(pending_path(&there)).unwrap());
        // The creation time is the epoch (superblock offset 8, little-endian).
        assert_eq!(bytes[8..12], u32::try_from(epoch).unwrap().to_le_bytes());
    }
}
