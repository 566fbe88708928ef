//! `raw`: the disk image itself. It is moved into place (copied sparsely across filesystems),
//! so it is made after every other disk output.

use std::fs;
use std::path::Path;

use kiln_host::Cmd;

use crate::{Options, Producer, Result};

/// The `raw` producer.
#[derive(Debug)]
pub struct Raw;

impl Producer for Raw {
    fn produce(&self, raw: &Path, pending: &Path, _opts: &Options) -> Result<()> {
        if fs::rename(raw, pending).is_err() {
            // Across filesystems (tmpfs to disk): copy sparsely.
            Cmd::new("cp")
                .arg("--sparse=always")
                .arg(raw)
                .arg(pending)
                .run()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::sparse_disk;
    use crate::{pending_path, produce, OutputType};

    #[test]
    fn raw_moves_the_image() {
        let d = tempfile::tempdir().unwrap();
        let disk = sparse_disk(d.path());
        let want = fs::read(&disk).unwrap();
        let dest = d.path().join("out/img.raw");
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        produce(
            OutputType::parse("raw").unwrap(),
            &disk,
            &dest,
            &Options::default(),
        )
        .unwrap();
        assert!(!disk.exists());
        assert_eq!(fs::read(pending_path(&dest)).unwrap(), want);
    }
}
