//! `tgz`: a gzip-compressed tar of the final tree.
//!
//! tar's output is piped straight into gzip (pigz when installed, so every core is used), so
//! no intermediate tar is written. `gzip -n` stores no name or time: the same tree gives the
//! same bytes, and they are those of gzipping the `tar` output.

use std::fs;
use std::path::Path;
use std::process::Stdio;

use kiln_host::{Cmd, Stdin};

use crate::{Error, Options, Producer, Result};

/// The `tgz` producer.
#[derive(Debug)]
pub struct Tgz;

/// The gzip program used: pigz when installed, else gzip.
fn gzip() -> &'static str {
    if kiln_host::tools::installed("pigz") {
        "pigz"
    } else {
        "gzip"
    }
}

impl Producer for Tgz {
    fn produce(&self, root: &Path, pending: &Path, opts: &Options) -> Result<()> {
        let io_err = |source| Error::Io {
            path: pending.to_path_buf(),
            source,
        };
        let output = fs::File::create(pending).map_err(io_err)?;
        let tar_cmd = crate::tar::command(root, Path::new("-"), opts.source_date_epoch);
        let gz_cmd = Cmd::new(gzip()).args(["-9", "-n", "-c"]).stdin(Stdin::Pipe);
        let mut gz = gz_cmd.spawn(output.into(), Stdio::piped())?;
        let mut tar = match tar_cmd.spawn(Stdio::piped(), Stdio::piped()) {
            Ok(tar) => tar,
            Err(e) => {
                // gzip sees the end of its input and exits; reap it.
                drop(gz.child_mut().stdin.take());
                let _ = gz.wait();
                return Err(e.into());
            }
        };
        let (Some(mut from), Some(mut to)) =
            (tar.child_mut().stdout.take(), gz.child_mut().stdin.take())
        else {
            return Err(io_err(std::io::Error::other("tar or gzip has no pipe")));
        };
        // The copy runs beside tar's stderr reader; if gzip dies, the copy fails and tar gets
        // SIGPIPE, so neither side waits forever.
        let pump = std::thread::spawn(move || std::io::copy(&mut from, &mut to).map(drop));
        let tar_done = tar.wait_with_output()?;
        let copied = pump
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the copying thread failed")));
        let gz_done = gz.wait_with_output()?;
        if !tar_done.status.success() {
            return Err(tar_cmd
                .failed(tar_done.status, &tar_done.stderr_str())
                .into());
        }
        if !gz_done.status.success() {
            return Err(gz_cmd.failed(gz_done.status, &gz_done.stderr_str()).into());
        }
        copied.map_err(io_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::small_tree;
    use crate::{pending_path, produce, OutputType};

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
        let unzipped = Cmd::new("gzip")
            .args(["-d", "-c"])
            .arg(pending_path(&tgz))
            .run()
            .unwrap()
            .stdout;
        assert_eq!(unzipped, fs::read(pending_path(&tar)).unwrap());
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
