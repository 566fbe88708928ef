//! `tar`: a tar of the final tree, made with GNU tar.
//!
//! The archive is sorted by name, keeps numeric owners and xattrs, leaves out the contents of
//! `/proc` and `/sys` and kiln's `/tmp/in_target.d`, and clamps mtimes to `SOURCE_DATE_EPOCH`
//! when it is set, so the same tree always gives the same bytes. `tgz` reuses the same command.

use std::path::Path;

use kiln_host::Cmd;

use crate::{Options, Producer, Result};

/// The `tar` producer.
#[derive(Debug)]
pub struct Tar;

/// The tar command archiving `root` to `file` (`-` for standard output).
pub(crate) fn command(root: &Path, file: &Path, source_date_epoch: Option<u64>) -> Cmd {
    let mut cmd = Cmd::new("tar")
        .arg("--numeric-owner")
        .arg("--xattrs")
        .arg("--xattrs-include=*")
        .arg("--sort=name")
        .arg("--exclude=./proc/*")
        .arg("--exclude=./sys/*")
        .arg("--exclude=./tmp/in_target.d");
    if let Some(e) = source_date_epoch {
        cmd = cmd
            .arg(format!("--mtime=@{e}"))
            .arg("--clamp-mtime")
            .arg("--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime");
    }
    cmd.arg("-C").arg(root).arg("-cf").arg(file).arg(".")
}

impl Producer for Tar {
    fn produce(&self, root: &Path, pending: &Path, opts: &Options) -> Result<()> {
        command(root, pending, opts.source_date_epoch).run()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::small_tree;
    use crate::{produce, OutputType};

    #[test]
    fn tar_of_a_small_tree() {
        let d = tempfile::tempdir().unwrap();
        let root = small_tree(d.path());
        let dest = d.path().join("t.tar");
        let opts = Options {
            source_date_epoch: Some(1_000_000),
            ..Options::default()
        };
        produce(OutputType::parse("tar").unwrap(), &root, &dest, &opts).unwrap();
        let pending = crate::pending_path(&dest);
        let list = Cmd::new("tar")
            .args(["--numeric-owner", "-tvf"])
            .arg(&pending)
            .run()
            .unwrap()
            .stdout_str();
        assert!(list.contains("./etc/hostname"), "{list}");
        assert!(
            list.contains("./proc/\n") || list.contains("./proc/"),
            "{list}"
        );
        assert!(!list.contains("proc/1/status"), "{list}");
        assert!(!list.contains("in_target.d/"), "{list}");
        // Every mtime is clamped to SOURCE_DATE_EPOCH (1970-01-12).
        assert!(list.lines().all(|l| l.contains("1970-01-12")), "{list}");
        // The same tree gives the same bytes.
        let again = d.path().join("u.tar");
        produce(OutputType::parse("tar").unwrap(), &root, &again, &opts).unwrap();
        assert_eq!(
            std::fs::read(&pending).unwrap(),
            std::fs::read(crate::pending_path(&again)).unwrap()
        );
    }

    #[test]
    fn the_same_tree_gives_the_same_tar_under_another_umask_and_tz() {
        let d = tempfile::tempdir().unwrap();
        let root = small_tree(d.path());
        let opts = Options {
            source_date_epoch: Some(1_700_000_000),
            ..Options::default()
        };
        let here = d.path().join("a.tar");
        let there = d.path().join("b.tar");
        produce(OutputType::parse("tar").unwrap(), &root, &here, &opts).unwrap();
        crate::testutil::produce_elsewhere("tar", &root, &there, Some(1_700_000_000));
        assert_eq!(
            std::fs::read(crate::pending_path(&here)).unwrap(),
            std::fs::read(crate::pending_path(&there)).unwrap()
        );
    }
}
