//! The build's scratch space and its teardown.
//!
//! [`Workspace`] owns the build and image directories (tmpfs when memory allows), the block
//! devices once created, and knows how to undo all of it in reverse order: kill processes rooted
//! in the build, unmount the chroot mounts, tear down the block devices (which copies offline
//! filesystems in and detaches loop devices), unmount whatever is left, and remove the
//! directories. `teardown` runs explicitly on every path; `Drop` is the safety net.
//!
//! Every effect on the host goes through the [`Host`] the workspace owns (the real one, or a
//! recording fake in tests), so the teardown acts on the same host the build did.
//!
//! The base directory (`TMPDIR`) is canonicalised once, here: the kernel lists mount points in
//! `/proc/self/mountinfo` by their canonical path, so a `TMPDIR` reached through a symlink would
//! otherwise match none of the build's mounts and teardown would leave them (and the host's
//! `/dev` bound inside the tree) behind. Every path kept here derives from the canonical base.

use std::fs;
use std::path::{Path, PathBuf};

use crate::host::{Host, Mounted};
use crate::Error;

/// The directories and devices of one build.
pub struct Workspace {
    /// `TMP_BUILD_DIR`.
    pub build_dir: PathBuf,
    /// `TMP_IMAGE_DIR`.
    pub image_dir: PathBuf,
    /// Block devices, once created.
    pub blockdev: Option<kiln_blockdev::Created>,
    /// Whether a tmpfs was mounted on the two directories.
    pub tmpfs: bool,
    /// The host every effect of the build goes to.
    pub host: Box<dyn Host>,
    /// The chroot's mounts inside `mnt`, while they are mounted.
    chroot: Option<Box<dyn Mounted>>,
    done: bool,
}

impl Workspace {
    /// Creates both directories under `base` (canonicalised first, so every later comparison
    /// with mountinfo matches) and mounts a tmpfs on them when `use_tmpfs`, on `host`.
    pub fn create(base: &Path, use_tmpfs: bool, host: Box<dyn Host>) -> Result<Self, Error> {
        let canonical = fs::canonicalize(base).map_err(|source| Error::Io {
            path: base.to_path_buf(),
            source,
        })?;
        let base = canonical.as_path();
        let mk = |prefix: &str| -> Result<PathBuf, Error> {
            tempfile::Builder::new()
                .prefix(prefix)
                .tempdir_in(base)
                .map(tempfile::TempDir::keep)
                .map_err(|source| Error::Io {
                    path: base.to_path_buf(),
                    source,
                })
        };
        let build_dir = mk("kiln_pipeline.")?;
        let image_dir = match mk("kiln_image.") {
            Ok(d) => d,
            Err(e) => {
                let _ = fs::remove_dir(&build_dir);
                return Err(e);
            }
        };
        kiln_sandbox::watchdog::note_dir(&build_dir);
        kiln_sandbox::watchdog::note_dir(&image_dir);
        let mut ws = Self {
            build_dir,
            image_dir,
            blockdev: None,
            tmpfs: false,
            host,
            chroot: None,
            done: false,
        };
        if use_tmpfs {
            ws.host.mount_tmpfs(&ws.build_dir)?;
            ws.tmpfs = true;
            ws.host.mount_tmpfs(&ws.image_dir)?;
        }
        Ok(ws)
    }

    /// `TMP_MOUNT_PATH`.
    pub fn mnt(&self) -> PathBuf {
        self.build_dir.join("mnt")
    }

    /// Creates `mnt/tmp` (resolved inside the tree) and mounts what a chroot phase needs in
    /// `mnt` ([`Host::mount_chroot`]); does nothing when they are already mounted.
    pub fn mount_chroot(&mut self) -> Result<(), Error> {
        if self.chroot.is_some() {
            return Ok(());
        }
        let mnt = self.mnt();
        kiln_sandbox::path::create_dir_all_in_root(&mnt, Path::new("tmp"))?;
        self.chroot = Some(self.host.mount_chroot(&mnt)?);
        Ok(())
    }

    /// Unmounts the chroot mounts (and anything hooks mounted) under `mnt`, leaving the block
    /// device's own filesystems mounted.
    pub fn umount_chroot(&mut self) -> Result<(), Error> {
        let keep: Vec<PathBuf> = self
            .blockdev
            .as_ref()
            .map(kiln_blockdev::Created::mounted_paths)
            .unwrap_or_default();
        let mut failed = Vec::new();
        // Everything mounted below mnt, found in mountinfo (deepest and latest first): what hooks
        // mounted, stacked over or below the chroot's own mounts, and those themselves ...
        for m in self.host.mounts_under(&self.mnt()) {
            if keep.contains(&m) {
                continue;
            }
            if let Err(e) = self.host.umount(&m) {
                failed.push(e.to_string());
            }
        }
        // ... then the chroot's mounts as values: already gone unless mountinfo missed them.
        if let Some(c) = self.chroot.take() {
            if let Err(e) = c.unmount() {
                failed.push(e.to_string());
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(Error::Step {
                step: "unmount".into(),
                message: failed.join("; "),
            })
        }
    }

    /// Tears everything down in reverse order; returns what could not be undone.
    pub fn teardown(&mut self) -> Vec<String> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        let mut problems = Vec::new();
        let left = self.host.reap(&self.build_dir);
        if !left.is_empty() {
            problems.push(format!("processes still running in the build: {left:?}"));
        }
        if let Err(e) = self.umount_chroot() {
            problems.push(e.to_string());
        }
        if let Some(bd) = self.blockdev.take() {
            if let Err(e) = bd.umount(self.host.runner()) {
                problems.push(e.to_string());
            }
        }
        for dir in [&self.build_dir, &self.image_dir] {
            if let Err(e) = self.host.umount_all_under(dir) {
                problems.push(e.to_string());
            }
            if let Err(e) = remove_tree(self.host.as_mut(), dir) {
                problems.push(e.to_string());
            }
        }
        problems
    }
}

/// Removes a directory tree without crossing into other filesystems.
fn remove_tree(host: &mut dyn Host, dir: &Path) -> Result<(), Error> {
    if !dir.exists() {
        return Ok(());
    }
    // Refuse to descend into anything still mounted below (it would delete the host's files).
    if !host.mounts_under(dir).is_empty() {
        return Err(Error::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other("still has mounts below it"),
        });
    }
    host.remove_tree(dir)
}

impl Drop for Workspace {
    fn drop(&mut self) {
        for p in self.teardown() {
            tracing::warn!("teardown: {p}");
        }
    }
}
