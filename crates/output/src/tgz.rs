//! `tgz`: a gzip-compressed tar of the final tree.
//!
//! GNU tar's output (the `tar` producer's command, writing to its standard output) is read
//! straight into kiln's own parallel gzip ([`crate::gzip`]) on every core, so no intermediate
//! tar is written and no gzip or pigz needs to be installed. When the build wrote the `tar`
//! output already ([`Options::tar_file`]), that file is compressed instead: tar does not run a
//! second time, and the tgz holds exactly the tar's bytes (GNU tar's POSIX headers carry
//! access times, so two runs over one tree differ), which lets the output cache keep the tgz
//! alone and make the tar again from it. The stream has no name and time 0
//! as `gzip -n` writes it, and its bytes depend on the tree only, not on the number of cores.
//! The level is [`LEVEL`].

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::process::Stdio;

use crate::gzip::ParGzWriter;
use crate::{Error, Options, Producer, Result};

/// The gzip level of `tgz`: 9, as DIB's `gzip -9` (see `docs/benchmarks.md`, "Session 7",
/// for level 6 against 9 on a real tree).
pub const LEVEL: u32 = 9;

/// The `tgz` producer.
#[derive(Debug)]
pub struct Tgz;

impl Producer for Tgz {
    fn produce(&self, root: &Path, pending: &Path, opts: &Options) -> Result<()> {
        let io_err = |source| Error::Io {
            path: pending.to_path_buf(),
            source,
        };
        let output = fs::File::create(pending).map_err(io_err)?;
        let gz = ParGzWriter::new(output, LEVEL).map_err(io_err)?;
        if let Some(tar) = &opts.tar_file {
            use std::os::unix::fs::OpenOptionsExt as _;
            let tar_err = |source| Error::Io {
                path: tar.clone(),
                source,
            };
            // The tar is in the output directory by now: never follow a link put in its place.
            let mut from = fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(tar)
                .map_err(tar_err)?;
            if !from.metadata().map_err(tar_err)?.is_file() {
                return Err(tar_err(std::io::Error::other("not a regular file")));
            }
            let mut gz = gz;
            std::io::copy(&mut from, &mut gz).map_err(io_err)?;
            return gz.finish().and_then(|mut f| f.flush()).map_err(io_err);
        }
        let tar_cmd = crate::tar::command(root, Path::new("-"), opts.source_date_epoch);
        let mut tar = tar_cmd.spawn(Stdio::piped(), Stdio::piped())?;
        let Some(mut from) = tar.child_mut().stdout.take() else {
            return Err(io_err(std::io::Error::other("tar has no pipe")));
        };
        // The compression reads tar's output beside the reader of its stderr; if writing
        // fails, the pipe closes and tar gets SIGPIPE, so neither side waits forever.
        let pump = std::thread::spawn(move || {
            let mut gz = gz;
            std::io::copy(&mut from, &mut gz)?;
            drop(from);
            gz.finish()?.flush()
        });
        let tar_done = tar.wait_with_output()?;
        let written = pump
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the compressing thread failed")));
        if !tar_done.status.success() {
            return Err(tar_cmd
                .failed(tar_done.status, &tar_done.stderr_str())
                .into());
        }
        written.map_err(io_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::small_tree;
    use crate::{pending_path, produce, OutputType};

    /// The content of the tgz written for `dest`, as `gzip -d` reads it.
    fn gunzip(dest: &Path) -> Vec<u8> {
        kiln_host::Cmd::new("gzip")
            .args(["-d", "-c"])
            .arg(pending_path(dest))
            .run()
            .unwrap()
            .stdout
    }

    #[test]
    fn tgz_is_the_gzipped_tar() {
        let d = tempfile::tempdir().unwrap();
        let root = small_tree(d.path());
        let opts = Options {
            source_date_epoch: Some(0),
            ..Options::default()
        };
        let tar = d.path().join("t.tar");
        let tgz = d.path().join("t.tgz");
        produce(OutputType::parse("tar").unwrap(), &root, &tar, &opts).unwrap();
        produce(OutputType::parse("tgz").unwrap(), &root, &tgz, &opts).unwrap();
        assert_eq!(gunzip(&tgz), fs::read(pending_path(&tar)).unwrap());
    }

    #[test]
    fn beside_a_tar_the_tgz_compresses_that_tar_without_running_tar_again() {
        let d = tempfile::tempdir().unwrap();
        // Without SOURCE_DATE_EPOCH two tar runs may differ (access times in POSIX headers);
        // the tgz must hold the very bytes of the tar file it is given.
        let tar = d.path().join("t.tar");
        fs::write(&tar, b"not even a tar: the file is compressed as it is").unwrap();
        let opts = Options {
            tar_file: Some(tar.clone()),
            ..Options::default()
        };
        let tgz = d.path().join("t.tgz");
        // The tree is gone: tar does not run.
        produce(
            OutputType::parse("tgz").unwrap(),
            &d.path().join("missing"),
            &tgz,
            &opts,
        )
        .unwrap();
        assert_eq!(gunzip(&tgz), fs::read(&tar).unwrap());
    }

    #[test]
    fn a_failing_tar_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let tgz = d.path().join("t.tgz");
        let err = produce(
            OutputType::parse("tgz").unwrap(),
            &d.path().join("missing"),
            &tgz,
            &Options::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("tar"), "{err}");
    }

    #[test]
    fn the_gzip_header_has_no_name_and_no_time_and_the_bytes_do_not_depend_on_the_host() {
        let d = tempfile::tempdir().unwrap();
        let root = small_tree(d.path());
        let opts = Options {
            source_date_epoch: Some(1_700_000_000),
            ..Options::default()
        };
        let tgz = d.path().join("t.tgz");
        produce(OutputType::parse("tgz").unwrap(), &root, &tgz, &opts).unwrap();
        let bytes = fs::read(pending_path(&tgz)).unwrap();
        // RFC 1952: magic, method 8, FLG (0x08 = FNAME, 0x10 = FCOMMENT), MTIME (4 bytes LE).
        assert_eq!(bytes[..3], [0x1f, 0x8b, 8]);
        assert_eq!(bytes[3] & 0x18, 0, "a name or comment is stored");
        assert_eq!(bytes[4..8], [0, 0, 0, 0], "a time is stored");
        let other = d.path().join("u.tgz");
        crate::testutil::produce_elsewhere("tgz", &root, &other, Some(1_700_000_000));
        assert_eq!(fs::read(pending_path(&other)).unwrap(), bytes);
    }
}
