//! `squashfs`: a squashfs of the final tree (`NAME.squash`, as DIB names it), xz-compressed as
//! DIB makes it, without the contents of `/proc` and `/sys`.
//!
//! xz is the slowest step of a tree build's outputs (about 90 s for a 430 MB debian-minimal
//! tree on 2 cores, `docs/benchmarks.md`, "Session 7"); `KILN_SQUASHFS_COMP=zstd` (about 26 s,
//! 3 % larger) or `gzip` (about 19 s, 6 % larger) is the opt-in ([`Compressor`]) for users
//! whose readers take it (every kernel since 4.14 reads zstd squashfs). The default stays xz.
//!
//! mksquashfs writes files in sorted order and its output depends only on the tree and, for
//! the filesystem's creation time, on the clock. With `SOURCE_DATE_EPOCH` set it is passed to
//! mksquashfs in the environment (squashfs-tools 4.5 takes it as the creation time and clamps
//! every inode time to it; it refuses `-mkfs-time` beside it), so the same tree gives the same
//! bytes; without it, the variable is removed, and the time is the clock's.

use std::path::Path;

use kiln_host::Cmd;

use crate::{Options, Producer, Result};

/// The compressor of the `squashfs` output (`KILN_SQUASHFS_COMP`): mksquashfs's `-comp`, at
/// mksquashfs's default level of each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compressor {
    /// xz, as DIB makes it (the default).
    #[default]
    Xz,
    /// zstd (level 15, mksquashfs's default): several times faster, slightly larger.
    Zstd,
    /// gzip (level 9): faster still, larger.
    Gzip,
}

impl Compressor {
    /// Every compressor, by name.
    pub const ALL: [Compressor; 3] = [Compressor::Xz, Compressor::Zstd, Compressor::Gzip];

    /// Its name, as mksquashfs's `-comp` and `KILN_SQUASHFS_COMP` take it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Compressor::Xz => "xz",
            Compressor::Zstd => "zstd",
            Compressor::Gzip => "gzip",
        }
    }

    /// The compressor named `name`, if it is one of [`Compressor::ALL`].
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// The `squashfs` producer.
#[derive(Debug)]
pub struct Squashfs;

impl Producer for Squashfs {
    fn produce(&self, root: &Path, pending: &Path, opts: &Options) -> Result<()> {
        mksquashfs(
            root,
            pending,
            opts.source_date_epoch,
            opts.squashfs_comp,
            &[],
        )
    }
}

/// Runs mksquashfs on `root`, writing `dest` (compressed with `comp`, no recovery file,
/// `/proc` and `/sys` without contents), with `extra` options (Incus's root filesystem adds
/// `-b 1M -no-exports` as distrobuilder does).
pub(crate) fn mksquashfs(
    root: &Path,
    dest: &Path,
    source_date_epoch: Option<u64>,
    comp: Compressor,
    extra: &[&str],
) -> Result<()> {
    let cmd = Cmd::new("mksquashfs");
    let cmd = match source_date_epoch {
        Some(e) => cmd.env("SOURCE_DATE_EPOCH", e.to_string()),
        None => cmd.env_remove("SOURCE_DATE_EPOCH"),
    };
    cmd.arg(root)
        .arg(dest)
        .args(["-comp", comp.name(), "-noappend", "-no-recovery", "-quiet"])
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

    /// Whether mksquashfs and unsquashfs are installed; a visible skip of `test` otherwise.
    fn squashfs_tools(test: &str) -> bool {
        let ok =
            kiln_host::tools::installed("mksquashfs") && kiln_host::tools::installed("unsquashfs");
        if !ok {
            kiln_testkit::skip(
                test,
                "mksquashfs/unsquashfs (squashfs-tools) are not installed",
            );
        }
        ok
    }

    /// `unsquashfs -l` of `image`, its paths under `r/`.
    fn listing(image: &Path) -> String {
        Cmd::new("unsquashfs")
            .args(["-l", "-d", "r"])
            .arg(image)
            .run()
            .unwrap()
            .stdout_str()
    }

    #[test]
    fn squashfs_of_a_small_tree() {
        if !squashfs_tools("squashfs::squashfs_of_a_small_tree") {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let root = small_tree(d.path());
        let ty = OutputType::parse("squashfs").unwrap();
        let dest = output_path(&d.path().join("img"), ty);
        assert_eq!(dest.file_name().unwrap(), "img.squash");
        produce(ty, &root, &dest, &Options::default()).unwrap();
        let list = listing(&pending_path(&dest));
        assert!(list.contains("r/etc/hostname"), "{list}");
        assert!(list.contains("r/proc\n"), "{list}");
        assert!(!list.contains("r/proc/1"), "{list}");
    }

    #[test]
    fn the_opt_in_compressors_are_what_the_superblock_says_and_unsquashfs_reads() {
        if !squashfs_tools(
            "squashfs::the_opt_in_compressors_are_what_the_superblock_says_and_unsquashfs_reads",
        ) {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let root = small_tree(d.path());
        let ty = OutputType::parse("squashfs").unwrap();
        // The superblock's compression id (offset 20, little-endian): gzip 1, xz 4, zstd 6.
        for (comp, id) in [
            (Compressor::default(), 4u16),
            (Compressor::Zstd, 6),
            (Compressor::Gzip, 1),
        ] {
            let dest = d.path().join(format!("{}.squash", comp.name()));
            let opts = Options {
                squashfs_comp: comp,
                ..Options::default()
            };
            produce(ty, &root, &dest, &opts).unwrap();
            let bytes = std::fs::read(pending_path(&dest)).unwrap();
            assert_eq!(bytes[20..22], id.to_le_bytes(), "{}", comp.name());
            let list = listing(&pending_path(&dest));
            assert!(list.contains("r/etc/hostname"), "{list}");
        }
        assert_eq!(Compressor::parse("zstd"), Some(Compressor::Zstd));
        assert_eq!(Compressor::parse("lz4"), None);
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
