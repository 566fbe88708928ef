//! Which filesystem ran out of space.
//!
//! A tool that hits ENOSPC says "No space left on device" about some file; the user needs to
//! know which filesystem is full and what to do. [`Filesystem::of`] describes the filesystem
//! holding a path (its type, mount point, free and total space, from `statvfs(2)`; the mount
//! point is the topmost ancestor on the same device), and [`mentions_no_space`] recognises the
//! error in a message. The cache uses them for its own stores; the pipeline for the build and
//! output directories.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The filesystem holding a path, and how full it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filesystem {
    /// Its type (`tmpfs`, `ext4`, …; the magic number in hex when kiln does not know it).
    pub fstype: String,
    /// Where it is mounted (the topmost ancestor of the path on the same device).
    pub mount_point: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Bytes free for an unprivileged writer.
    pub avail: u64,
}

impl Filesystem {
    /// The filesystem holding `path` (which must exist), or `None` if it cannot be examined.
    pub fn of(path: &Path) -> Option<Self> {
        let path = std::fs::canonicalize(path).ok()?;
        let vfs = nix::sys::statvfs::statvfs(&path).ok()?;
        let fs = nix::sys::statfs::statfs(&path).ok()?;
        let dev = std::fs::metadata(&path).ok()?.dev();
        let mut mount_point = path.clone();
        while let Some(parent) = mount_point.parent() {
            if std::fs::metadata(parent).map_or(true, |m| m.dev() != dev) {
                break;
            }
            mount_point = parent.to_path_buf();
        }
        let frsize = vfs.fragment_size();
        Some(Self {
            fstype: fstype_name(fs.filesystem_type()),
            mount_point,
            size: vfs.blocks().saturating_mul(frsize),
            avail: vfs.blocks_available().saturating_mul(frsize),
        })
    }

    /// Whether it is full: less than 4 MiB free. Evidence enough on its own, even when the
    /// failing tool did not say ENOSPC.
    pub fn is_full(&self) -> bool {
        self.avail < 4 << 20
    }

    /// Whether it is nearly full: less than 2 % or 64 MiB free, whichever is more. Only with a
    /// message that says ENOSPC (the writer's own files may have gone since).
    pub fn is_nearly_full(&self) -> bool {
        self.avail < (self.size / 50).max(64 << 20)
    }
}

impl fmt::Display for Filesystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} mounted at {}, {} free of {}",
            self.fstype,
            self.mount_point.display(),
            crate::human(self.avail),
            crate::human(self.size)
        )
    }
}

fn fstype_name(t: nix::sys::statfs::FsType) -> String {
    use nix::sys::statfs as s;
    let known = [
        (s::TMPFS_MAGIC, "tmpfs"),
        (s::EXT4_SUPER_MAGIC, "ext4"),
        (s::XFS_SUPER_MAGIC, "xfs"),
        (s::BTRFS_SUPER_MAGIC, "btrfs"),
        (s::OVERLAYFS_SUPER_MAGIC, "overlay"),
        (s::NFS_SUPER_MAGIC, "nfs"),
    ];
    known
        .iter()
        .find(|(m, _)| *m == t)
        .map_or_else(|| format!("{:#x}", t.0), |(_, n)| (*n).to_string())
}

/// Whether a message reports ENOSPC (as a tool's stderr or an I/O error prints it).
pub fn mentions_no_space(text: &str) -> bool {
    text.contains("No space left on device") || text.contains("os error 28")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_the_filesystem_of_a_path() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("a/b");
        std::fs::create_dir_all(&sub).unwrap();
        let fs = Filesystem::of(&sub).unwrap();
        assert!(fs.size > 0 && fs.avail <= fs.size, "{fs:?}");
        // The mount point holds the path, and its parent is on another device (or it is /).
        let canon = std::fs::canonicalize(&sub).unwrap();
        assert!(canon.starts_with(&fs.mount_point), "{fs:?}");
        let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
        if let Some(parent) = fs.mount_point.parent() {
            assert_ne!(dev(parent), dev(&fs.mount_point));
        }
        assert_eq!(
            Filesystem::of(&fs.mount_point).unwrap().mount_point,
            fs.mount_point
        );
        let text = fs.to_string();
        assert!(
            text.contains(&fs.mount_point.display().to_string()),
            "{text}"
        );
        assert!(text.contains("free of"), "{text}");
        assert!(Filesystem::of(&d.path().join("missing")).is_none());
    }

    #[test]
    fn full_is_absolute_and_nearly_full_has_a_floor_and_a_ratio() {
        let fs = |size: u64, avail: u64| Filesystem {
            fstype: "tmpfs".into(),
            mount_point: PathBuf::from("/x"),
            size,
            avail,
        };
        assert!(fs(64 << 20, 0).is_full());
        assert!(fs(64 << 20, 3 << 20).is_full());
        assert!(!fs(64 << 20, 5 << 20).is_full());
        // A big disk 99 % used is not full: a failure there is not blamed on it unasked.
        assert!(!fs(100 << 30, 1 << 30).is_full());
        assert!(fs(100 << 30, 1 << 30).is_nearly_full());
        assert!(!fs(100 << 30, 3 << 30).is_nearly_full());
        assert!(fs(1 << 30, 60 << 20).is_nearly_full());
        assert!(!fs(1 << 30, 80 << 20).is_nearly_full());
    }

    #[test]
    fn recognises_enospc_messages() {
        assert!(mentions_no_space(
            "tar: etc/x: Cannot write: No space left on device"
        ));
        let io = std::io::Error::from_raw_os_error(28).to_string();
        assert!(mentions_no_space(&io), "{io}");
        assert!(!mentions_no_space("Permission denied (os error 13)"));
    }
}
