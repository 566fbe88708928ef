//! Which Debian package provides each tool kiln runs, and the preflight check built on it.
//!
//! A build that discovers a missing tool half-way has wasted minutes and may leave a half-made
//! image behind; the pipeline instead lists every tool its plan will use ([`Need`]), and
//! [`missing`] / [`missing_message`] turn the ones not on `PATH` into one message with one
//! `apt-get install` line.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;

/// Every tool kiln (or one of its built-in elements' host-side hooks) runs, and its Debian
/// package. Tools with a pattern name (`qemu-*-static`, `mkfs.*`) are handled by
/// [`package_for`].
pub const PACKAGES: &[(&str, &str)] = &[
    // Base system bootstrap (the debootstrap element's root.d).
    ("mmdebstrap", "mmdebstrap"),
    ("debootstrap", "debootstrap"),
    // Hooks, chroot, file copies.
    ("bash", "bash"),
    ("chroot", "coreutils"),
    ("cp", "coreutils"),
    ("rm", "coreutils"),
    ("du", "coreutils"),
    ("date", "coreutils"),
    ("mkdir", "coreutils"),
    ("sync", "coreutils"),
    ("env", "coreutils"),
    ("find", "findutils"),
    ("lsattr", "e2fsprogs"),
    ("dpkg", "dpkg"),
    ("curl", "curl"),
    // Caches and tree outputs.
    ("tar", "tar"),
    ("zstd", "zstd"),
    ("gzip", "gzip"),
    ("pigz", "pigz"),
    // kiln verify: reading images offline, and the detailed report.
    ("unsquashfs", "squashfs-tools"),
    ("debugfs", "e2fsprogs"),
    ("timeout", "coreutils"),
    ("diffoscope", "diffoscope-minimal"),
    // Block devices.
    ("losetup", "mount"),
    ("mount", "mount"),
    ("umount", "mount"),
    ("partx", "util-linux"),
    ("sfdisk", "fdisk"),
    ("sgdisk", "gdisk"),
    ("blkid", "util-linux"),
    ("lsblk", "util-linux"),
    ("findmnt", "util-linux"),
    ("fstrim", "util-linux"),
    ("mkswap", "util-linux"),
    ("wipefs", "util-linux"),
    ("mkfs", "util-linux"),
    ("mkfs.ext2", "e2fsprogs"),
    ("mkfs.ext3", "e2fsprogs"),
    ("mkfs.ext4", "e2fsprogs"),
    ("mke2fs", "e2fsprogs"),
    ("blkdiscard", "util-linux"),
    ("e2fsck", "e2fsprogs"),
    ("resize2fs", "e2fsprogs"),
    ("tune2fs", "e2fsprogs"),
    ("mkfs.xfs", "xfsprogs"),
    ("mkfs.vfat", "dosfstools"),
    ("mkfs.fat", "dosfstools"),
    ("mkfs.btrfs", "btrfs-progs"),
    ("btrfs", "btrfs-progs"),
    ("mcopy", "mtools"),
    ("mmd", "mtools"),
    ("pvcreate", "lvm2"),
    ("vgcreate", "lvm2"),
    ("vgchange", "lvm2"),
    ("lvcreate", "lvm2"),
    ("lvchange", "lvm2"),
    ("dmsetup", "dmsetup"),
    // Image outputs.
    ("qemu-img", "qemu-utils"),
    ("mksquashfs", "squashfs-tools"),
    // Foreign architectures.
    ("update-binfmts", "binfmt-support"),
];

/// The Debian package that provides `tool`, if kiln knows it.
pub fn package_for(tool: &str) -> Option<&'static str> {
    if let Some((_, p)) = PACKAGES.iter().find(|(t, _)| *t == tool) {
        return Some(p);
    }
    if tool.starts_with("qemu-") && tool.ends_with("-static") {
        return Some("qemu-user-static");
    }
    if tool.starts_with("qemu-system-") {
        return Some("qemu-system");
    }
    None
}

/// One tool a build will run, and why (shown when it is missing).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Need {
    /// The tool, as looked up on `PATH`.
    pub tool: String,
    /// Other tools that would do instead (any one present satisfies the need).
    pub or: Vec<String>,
    /// The package to install (from [`package_for`], or the caller's).
    pub package: String,
    /// What needs it (`phase cache`, `qcow2 output`, `layout block-device-gpt`, …).
    pub why: String,
}

impl Need {
    /// `tool`, for `why`, with the package from the table (`tool` itself when unknown).
    pub fn new(tool: &str, why: &str) -> Self {
        Self {
            tool: tool.to_string(),
            or: Vec::new(),
            package: package_for(tool).unwrap_or(tool).to_string(),
            why: why.to_string(),
        }
    }

    /// The same need, also satisfied by `other`.
    #[must_use]
    pub fn or(mut self, other: &str) -> Self {
        self.or.push(other.to_string());
        self
    }

    /// The same need, with a package other than the table's.
    #[must_use]
    pub fn package(mut self, package: &str) -> Self {
        self.package = package.to_string();
        self
    }
}

/// Whether `tool` is an executable file in one of the directories of `path` (a `PATH` value).
pub fn on_path(tool: &str, path: &OsString) -> bool {
    if tool.contains('/') {
        return is_executable(Path::new(tool));
    }
    std::env::split_paths(path).any(|dir| is_executable(&dir.join(tool)))
}

/// Whether `tool` is on this process's `PATH`.
pub fn installed(tool: &str) -> bool {
    on_path(tool, &std::env::var_os("PATH").unwrap_or_default())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The needs none of whose tools is on `path` (a `PATH` value), deduplicated by tool, in
/// order of first appearance.
pub fn missing(needs: &[Need], path: &OsString) -> Vec<Need> {
    let mut seen = BTreeSet::new();
    needs
        .iter()
        .filter(|n| {
            !std::iter::once(&n.tool)
                .chain(&n.or)
                .any(|t| on_path(t, path))
        })
        .filter(|n| seen.insert(n.tool.clone()))
        .cloned()
        .collect()
}

/// One message for every missing tool: a line per tool with its package and what needs it, and
/// the `apt-get install` line that installs them all.
pub fn missing_message(missing: &[Need]) -> String {
    let mut msg = String::from("this build needs host tools that are not installed:\n");
    for n in missing {
        let tools = std::iter::once(n.tool.as_str())
            .chain(n.or.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" or ");
        let _ = writeln!(msg, "  {tools}: package {} (for {})", n.package, n.why);
    }
    let packages: BTreeSet<&str> = missing.iter().map(|n| n.package.as_str()).collect();
    let _ = write!(
        msg,
        "install them with: apt-get install {}",
        packages.into_iter().collect::<Vec<_>>().join(" ")
    );
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn packages() {
        assert_eq!(package_for("sgdisk"), Some("gdisk"));
        assert_eq!(package_for("zstd"), Some("zstd"));
        assert_eq!(package_for("mkfs.xfs"), Some("xfsprogs"));
        assert_eq!(package_for("qemu-aarch64-static"), Some("qemu-user-static"));
        assert_eq!(package_for("no-such-tool"), None);
        assert_eq!(Need::new("no-such-tool", "x").package, "no-such-tool");
    }

    #[test]
    fn table_has_no_duplicates() {
        let tools: BTreeSet<&str> = PACKAGES.iter().map(|(t, _)| *t).collect();
        assert_eq!(tools.len(), PACKAGES.len());
    }

    #[test]
    fn missing_tools_are_found_on_path() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("zstd");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Not executable: does not count.
        std::fs::write(dir.path().join("tar"), "").unwrap();
        let path = OsString::from(dir.path());
        let needs = [
            Need::new("zstd", "phase cache"),
            Need::new("tar", "tar output"),
            Need::new("sgdisk", "layout gpt"),
            Need::new("sgdisk", "layout gpt again"),
            Need::new("mmdebstrap", "bootstrap").or("zstd"),
        ];
        let m = missing(&needs, &path);
        let tools: Vec<&str> = m.iter().map(|n| n.tool.as_str()).collect();
        assert_eq!(tools, ["tar", "sgdisk"]);
        assert_eq!(
            missing_message(&m),
            "this build needs host tools that are not installed:\n  \
             tar: package tar (for tar output)\n  \
             sgdisk: package gdisk (for layout gpt)\n\
             install them with: apt-get install gdisk tar"
        );
    }
}
