//! `squashfs`: a squashfs of the final tree (`NAME.squash`, as DIB names it), xz-compressed as
//! DIB makes it, without the contents of `/proc` and `/sys`.

use std::path::Path;

use kiln_host::Cmd;

use crate::{Options, Producer, Result};

/// The `squashfs` producer.
#[derive(Debug)]
pub struct Squashfs;

impl Producer for Squashfs {
    fn produce(&self, root: &Path, pending: &Path, _opts: &Options) -> Result<()> {
        Cmd::new("mksquashfs")
            .arg(root)
            .arg(pending)
            .args(["-comp", "xz", "-noappend", "-no-recovery", "-quiet"])
            .args(["-wildcards", "-e", "proc/*", "-e", "sys/*"])
            .run()?;
        Ok(())
    }
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
}
