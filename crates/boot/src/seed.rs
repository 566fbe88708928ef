//! The NoCloud seed: `meta-data` and `user-data` on a small vfat disk labelled `cidata`.
//!
//! cloud-init's NoCloud datasource finds such a disk by its label at once, so a test boot never
//! waits for a metadata service. The disk is made with mkfs.vfat and mtools, without mounting,
//! so no root is needed. What goes on it is a plain value ([`Seed`]) that tests can inspect.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{exec, facts, Arch, Error};

/// The files of a NoCloud seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Seed {
    /// The `meta-data` file (YAML).
    pub meta_data: String,
    /// The `user-data` file: cloud-config, a script, MIME multipart, possibly gzipped.
    pub user_data: Vec<u8>,
}

/// The meta-data of every kiln test seed.
const META_DATA: &str = "instance-id: kiln-test\nlocal-hostname: kiln-test\n";

/// The size of the seed disk, in KiB: far more than the files need, small enough to be free.
const SEED_KIB: u32 = 2048;

impl Seed {
    /// A seed that asks nothing of cloud-init: the guest boots to its login prompt.
    pub fn plain() -> Self {
        Seed {
            meta_data: META_DATA.to_string(),
            user_data: b"#cloud-config\n{}\n".to_vec(),
        }
    }

    /// The seed of the boot check: user-data that writes the fact script and starts it after
    /// cloud-init has finished (see [`facts`]).
    pub fn boot_check(arch: Arch) -> Self {
        Seed {
            meta_data: META_DATA.to_string(),
            user_data: facts::user_data(arch).into_bytes(),
        }
    }

    /// A seed carrying the user's own user-data file.
    ///
    /// cloud-init silently ignores user-data without a header it knows, so a file that does not
    /// start with `#` (`#cloud-config`, `#!`, `#include`, …), `Content-Type:` (MIME) or the gzip
    /// magic is refused here, with the reason.
    pub fn with_user_data_file(path: &Path) -> Result<Self, Error> {
        let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |reason: &str| Error::BadUserData {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        if data.iter().all(u8::is_ascii_whitespace) {
            return Err(bad("the user-data file is empty"));
        }
        let gzip = data.starts_with(&[0x1f, 0x8b]);
        if !gzip && !data.starts_with(b"#") && !data.starts_with(b"Content-Type:") {
            return Err(bad(
                "line 1: cloud-init ignores user-data without a header; start the file with \
                 #cloud-config, #! (a script) or another cloud-init header",
            ));
        }
        Ok(Seed {
            meta_data: META_DATA.to_string(),
            user_data: data,
        })
    }

    /// Writes the seed disk `seed.img` (and its two files) into `dir`; returns the disk's path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, Error> {
        let img = dir.join("seed.img");
        let md = dir.join("meta-data");
        let ud = dir.join("user-data");
        std::fs::write(&md, &self.meta_data).map_err(|e| Error::io(&md, e))?;
        std::fs::write(&ud, &self.user_data).map_err(|e| Error::io(&ud, e))?;
        let kib = SEED_KIB.to_string();
        exec::run(
            "mkfs.vfat",
            "dosfstools",
            &[
                "-C".as_ref(),
                "-n".as_ref(),
                "CIDATA".as_ref(),
                img.as_os_str(),
                kib.as_ref(),
            ],
        )?;
        exec::run(
            "mcopy",
            "mtools",
            &[
                "-i".as_ref(),
                img.as_os_str(),
                md.as_os_str(),
                ud.as_os_str(),
                "::".as_ref(),
            ],
        )?;
        Ok(img)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_file_needs_a_header() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ud");
        std::fs::write(&p, "packages: [htop]\n").unwrap();
        let e = Seed::with_user_data_file(&p).unwrap_err();
        assert!(e.is_input_error());
        let msg = e.to_string();
        assert!(
            msg.contains("line 1") && msg.contains("#cloud-config"),
            "{msg}"
        );
        assert!(msg.starts_with(&p.display().to_string()), "{msg}");

        std::fs::write(&p, "  \n").unwrap();
        assert!(Seed::with_user_data_file(&p)
            .unwrap_err()
            .to_string()
            .contains("empty"));

        std::fs::write(&p, "#cloud-config\nruncmd: [[echo, hi]]\n").unwrap();
        let s = Seed::with_user_data_file(&p).unwrap();
        assert_eq!(s.user_data, b"#cloud-config\nruncmd: [[echo, hi]]\n");
        assert!(s.meta_data.contains("instance-id: "));

        let missing = d.path().join("nope");
        let e = Seed::with_user_data_file(&missing).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    fn have(tool: &str) -> bool {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// The disk really is a vfat filesystem labelled CIDATA holding exactly the two files.
    #[test]
    fn seed_disk_holds_the_files() {
        if !(have("mkfs.vfat") && have("mcopy")) {
            eprintln!("SKIP seed_disk_holds_the_files: mkfs.vfat or mcopy missing");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let seed = Seed::boot_check(Arch::X86_64);
        let img = seed.write(d.path()).unwrap();
        let label = std::process::Command::new("mlabel")
            .args(["-s", "-i"])
            .arg(&img)
            .arg("::")
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&label.stdout).contains("CIDATA"),
            "{label:?}"
        );
        for (name, want) in [
            ("meta-data", seed.meta_data.as_bytes()),
            ("user-data", seed.user_data.as_slice()),
        ] {
            let out = std::process::Command::new("mtype")
                .arg("-i")
                .arg(&img)
                .arg(format!("::{name}"))
                .output()
                .unwrap();
            assert!(out.status.success(), "{name}: {out:?}");
            assert_eq!(out.stdout, want, "{name}");
        }
    }
}
