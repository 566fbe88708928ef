//! A seam for code that must be testable without touching the host: one trait, a real
//! implementation ([`SystemRunner`], through [`crate::Cmd`]) and a fake
//! ([`crate::RecordingRunner`]). The block-device layer drives everything through it.
//!
//! Every external command goes through [`Runner::run`].
//! The few host operations that are not commands (writing the MBR to the device, creating the
//! sparse image file, checking for device nodes, reading `/proc/filesystems`, sleeping between
//! retries) are trait methods too, with real default bodies, so that a fake runner can record
//! them and the whole of create/teardown is testable without root.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{Cmd, Error};

/// What a command printed (as text, for the [`Runner`] seam).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs external commands and the few host operations block-device creation needs.
///
/// Only [`Runner::run`] must be written; the other methods act on the real host by default.
/// A fake that must not touch the host overrides them all (see [`crate::RecordingRunner`]).
pub trait Runner {
    /// Runs one command (`argv[0]` is the program) and returns its output, or an error when
    /// it cannot start or exits unsuccessfully.
    fn run(&mut self, argv: &[String]) -> Result<Output, Error>;

    /// Writes `data` at byte `offset` of `path` (a block device) and flushes it to the device.
    fn write_at(&mut self, path: &Path, offset: u64, data: &[u8]) -> Result<(), Error> {
        tracing::debug!(path = %path.display(), offset, len = data.len(), "write");
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut f = OpenOptions::new().write(true).open(path).map_err(io)?;
        f.seek(SeekFrom::Start(offset)).map_err(io)?;
        f.write_all(data).map_err(io)?;
        f.sync_all().map_err(io)
    }

    /// Creates (or truncates) `path` as a sparse file of `size` bytes, making its directory.
    fn create_sparse_file(&mut self, path: &Path, size: u64) -> Result<(), Error> {
        tracing::debug!(path = %path.display(), size, "create sparse image");
        let io = |p: &Path, source| Error::Io {
            path: p.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        // Private to the user while the build runs (the image holds the whole tree), and never
        // through a symlink someone planted at its name.
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| io(path, e))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io(path, e))?;
        f.set_len(size).map_err(|e| io(path, e))
    }

    /// Whether a path (a device node) exists.
    fn path_exists(&mut self, path: &Path) -> bool {
        path.exists()
    }

    /// The entries of a directory, sorted by name.
    fn list_dir(&mut self, dir: &Path) -> Result<Vec<PathBuf>, Error> {
        let io = |source| Error::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io)?;
        v.sort();
        Ok(v)
    }

    /// Whether the running kernel can mount this filesystem type: it is in
    /// `/proc/filesystems`, or a module for it is installed (and would be loaded on mount).
    fn kernel_can_mount(&mut self, fstype: &str) -> bool {
        host_can_mount(fstype)
    }

    /// Whether device-mapper is available (`/dev/mapper/control` exists).
    fn has_device_mapper(&mut self) -> bool {
        // /dev/mapper/control can exist (a static /dev) on a kernel without device-mapper; the
        // kernel's own list of misc devices tells.
        match std::fs::read_to_string("/proc/misc") {
            Ok(misc) => misc
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some("device-mapper")),
            Err(_) => Path::new("/dev/mapper/control").exists(),
        }
    }

    /// Waits between retries.
    fn sleep(&mut self, duration: Duration) {
        std::thread::sleep(duration);
    }

    /// A runner for the drop-time safety net of kiln-blockdev's `Created`: it must act on the same
    /// host. `None` (the default) means an unconsumed `Created` cannot clean up on drop.
    fn boxed_clone(&self) -> Option<Box<dyn Runner + Send>> {
        None
    }
}

/// Whether the host kernel can mount `fstype` (see [`Runner::kernel_can_mount`]).
pub fn host_can_mount(fstype: &str) -> bool {
    let wanted = if fstype == "fat" { "vfat" } else { fstype };
    if let Ok(text) = std::fs::read_to_string("/proc/filesystems") {
        if text
            .lines()
            .filter_map(|l| l.split_whitespace().last())
            .any(|t| t == wanted)
        {
            return true;
        }
    }
    // Not loaded yet: a module that mount(8) would load counts too.
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let dir = Path::new("/lib/modules").join(release.trim());
    let needle = format!("/{wanted}.ko");
    ["modules.dep", "modules.builtin"].iter().any(|f| {
        std::fs::read_to_string(dir.join(f)).is_ok_and(|t| {
            t.lines()
                .filter_map(|l| l.split(':').next())
                .any(|m| m.contains(&needle))
        })
    })
}

/// Runs commands on the host with `std::process::Command`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemRunner;

impl Runner for SystemRunner {
    fn run(&mut self, argv: &[String]) -> Result<Output, Error> {
        let out = Cmd::from_argv(argv).env("LC_ALL", "C").run()?;
        Ok(Output {
            stdout: out.stdout_str(),
            stderr: out.stderr_str(),
        })
    }

    fn boxed_clone(&self) -> Option<Box<dyn Runner + Send>> {
        Some(Box::new(SystemRunner))
    }
}

#[cfg(test)]
mod sparse_tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn the_sparse_image_is_private_and_never_made_through_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("image.raw");
        std::fs::write(&img, b"old").unwrap();
        std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o644)).unwrap();
        SystemRunner.create_sparse_file(&img, 1 << 20).unwrap();
        let m = std::fs::metadata(&img).unwrap();
        assert_eq!(m.mode() & 0o777, 0o600);
        assert_eq!(m.len(), 1 << 20);
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let link = d.path().join("planted.raw");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(SystemRunner.create_sparse_file(&link, 1 << 20).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }
}
