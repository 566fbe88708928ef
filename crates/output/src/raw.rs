//! `raw`: the disk image itself. It is moved into place (copied sparsely across filesystems),
//! so it is made after every other disk output. The image is private (0600) while the build
//! runs; the output gets the mode any new file gets (0666 less the umask), like the others.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
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
        fs::set_permissions(
            pending,
            fs::Permissions::from_mode(0o666 & !crate::output_umask()),
        )
        .map_err(|source| crate::Error::Io {
            path: pending.to_path_buf(),
            source,
        })
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
        fs::set_permissions(&disk, fs::Permissions::from_mode(0o600)).unwrap();
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
        // The private image becomes an ordinary output.
        let mode = fs::metadata(pending_path(&dest))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o666 & !crate::output_umask());
        assert_eq!(mode & 0o044, 0o044 & !crate::output_umask());
    }
}
