//! Host-side file operations on paths inside the image tree.
//!
//! Between phases kiln edits the image from the host: DIB's resolv.conf dance, the fstab, and the
//! final tidy-up of `/tmp`, `/var/log` and `/root/*.log`. Each path is resolved inside the tree
//! with [`kiln_sandbox::path::resolve_in_root`], as the image itself would see it, so a symlink in
//! the image (say `/tmp` → `/var/tmp`) is followed inside the image and never out to the host's
//! own directory of that name.
//!
//! With `SOURCE_DATE_EPOCH` set, [`reproducible_tidy`] goes further: it removes or fixes what
//! differs from one build of the same inputs to the next (caches that record times or are
//! written in hash order, backups of package databases, random seeds, generated identities,
//! the contents of `/run`) and clamps every time in the tree to the epoch, so the tree, and
//! everything made from it, is the same every time.

use std::fs;
use std::path::{Path, PathBuf};

use kiln_host::Cmd;
use kiln_sandbox::path::{empty_dir, resolve_in_root};

use crate::host::{Host, SystemHost};
use crate::{io, Error};

/// `rel` (read as a path inside the image) as a host path inside `root`.
pub fn path(root: &Path, rel: &str) -> Result<PathBuf, Error> {
    Ok(resolve_in_root(root, Path::new(rel))?)
}

/// DIB's resolv.conf dance, first half: keep the target's (as `resolv.conf.ORIG`, even when it
/// is a symlink: the link itself is renamed) and use the host's during the build.
pub fn resolv_conf_in(root: &Path) -> Result<(), Error> {
    let etc = kiln_sandbox::path::create_dir_all_in_root(root, Path::new("etc"))?;
    let target = etc.join("resolv.conf");
    let orig = etc.join("resolv.conf.ORIG");
    if fs::symlink_metadata(&target).is_ok() {
        fs::rename(&target, &orig).map_err(io(&target))?;
    }
    let host = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let text = if host.trim().is_empty() {
        "nameserver 127.0.0.1\n".to_string()
    } else {
        host
    };
    fs::write(&target, text).map_err(io(&target))?;
    Ok(())
}

/// After cleanup.d: restore resolv.conf, empty `/tmp`, truncate `/var/log`, drop `/root/*.log`.
///
/// Returns what could not be removed (the build goes on; the caller warns).
pub fn tidy(root: &Path) -> Result<Vec<String>, Error> {
    tidy_on(root, &mut SystemHost::new())
}

/// [`tidy`], with its command (`lsattr`) and its unmounts going to `host`.
pub fn tidy_on(root: &Path, host: &mut dyn Host) -> Result<Vec<String>, Error> {
    let mut problems = Vec::new();
    let etc = path(root, "etc")?;
    let target = etc.join("resolv.conf");
    let orig = etc.join("resolv.conf.ORIG");
    let is_link = fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink());
    let immutable = !is_link
        && host
            .output(&Cmd::new("lsattr").arg("-d").arg(&target))
            .is_ok_and(|o| {
                o.stdout_str()
                    .split_whitespace()
                    .next()
                    .is_some_and(|a| a.contains('i'))
            });
    if is_link || immutable {
        let _ = fs::remove_file(&orig);
    } else {
        let _ = fs::remove_file(&target);
        if fs::symlink_metadata(&orig).is_ok() {
            fs::rename(&orig, &target).map_err(io(&orig))?;
        }
    }
    let tmp = path(root, "tmp")?;
    if let Err(e) = host.umount_all_under(&tmp) {
        problems.push(e.to_string());
    }
    // Never empty a directory something is still mounted on (it would reach into that mount).
    if host.mounts_under(&tmp).is_empty() {
        for (p, e) in empty_dir(&tmp) {
            problems.push(format!("{}: {e}", p.display()));
        }
    } else {
        problems.push(format!("{}: still has mounts, not emptied", tmp.display()));
    }
    truncate_logs(&path(root, "var/log")?);
    let root_home = path(root, "root")?;
    if let Ok(rd) = fs::read_dir(&root_home) {
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                // remove_file removes a symlink itself, never its target.
                let _ = fs::remove_file(e.path());
            }
        }
    }
    Ok(problems)
}

/// Files removed from a reproducible tree: caches that differ from build to build and are
/// made again when needed (ldconfig's aux cache, apt's binary caches), and random seeds (every
/// instance must seed itself).
const REPRO_REMOVE: &[&str] = &[
    "var/cache/ldconfig/aux-cache",
    "var/cache/apt/pkgcache.bin",
    "var/cache/apt/srcpkgcache.bin",
    "var/lib/systemd/random-seed",
    "var/lib/urandom/random-seed",
];

/// Directories whose `*-old` files (dpkg's and debconf's backups of their databases, written
/// at each change) are removed from a reproducible tree.
const REPRO_OLD_BACKUPS: &[&str] = &["var/lib/dpkg", "var/cache/debconf"];

/// For a build with `SOURCE_DATE_EPOCH` (after [`tidy`]): removes or fixes the
/// non-deterministic leftovers and clamps every time to `epoch`. Every path is resolved inside
/// the tree; symlinks are never followed (a symlink at a leftover's name is removed itself,
/// never its target).
///
/// - removed: [`REPRO_REMOVE`], `*-old` in [`REPRO_OLD_BACKUPS`], man-db's `index.db` files
///   under `/var/cache/man` (rebuilt by man-db's timer), `/var/lib/dbus/machine-id` when it
///   is a file of its own (D-Bus reads `/etc/machine-id`), the contents of `/run` (a tmpfs at
///   boot);
/// - `/etc/machine-id`: emptied when it holds an id (systemd makes one at boot; an empty file
///   is what Debian's images ship); `uninitialized` and symlinks are kept;
/// - `/etc/iscsi/initiatorname.iscsi`: an `InitiatorName=` is replaced by `GenerateName=yes`
///   (open-iscsi makes a name at first start);
/// - every entry's mtime is clamped to `epoch` and its atime set to `epoch`.
///
/// Returns what could not be done (the build goes on; the caller warns).
pub fn reproducible_tidy(root: &Path, epoch: u64) -> Result<Vec<String>, Error> {
    let mut problems = Vec::new();
    let remove = |p: &Path, problems: &mut Vec<String>| match fs::remove_file(p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => problems.push(format!("{}: {e}", p.display())),
    };
    for rel in REPRO_REMOVE {
        remove(&path_nofollow(root, rel)?, &mut problems);
    }
    for dir in REPRO_OLD_BACKUPS {
        let dir = path(root, dir)?;
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        let mut olds: Vec<PathBuf> = rd
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with("-old"))
            .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
            .map(|e| e.path())
            .collect();
        olds.sort();
        for p in olds {
            remove(&p, &mut problems);
        }
    }
    let mut indexes = Vec::new();
    find_named(&path(root, "var/cache/man")?, "index.db", &mut indexes);
    for p in indexes {
        remove(&p, &mut problems);
    }
    let dbus_id = path_nofollow(root, "var/lib/dbus/machine-id")?;
    if fs::symlink_metadata(&dbus_id).is_ok_and(|m| m.is_file()) {
        remove(&dbus_id, &mut problems);
    }
    let run = path(root, "run")?;
    for (p, e) in empty_dir(&run) {
        problems.push(format!("{}: {e}", p.display()));
    }
    let machine_id = path_nofollow(root, "etc/machine-id")?;
    if let Ok(text) = read_regular(&machine_id) {
        if !text.trim().is_empty() && text.trim() != "uninitialized" {
            fs::write(&machine_id, "").map_err(io(&machine_id))?;
        }
    }
    let iscsi = path_nofollow(root, "etc/iscsi/initiatorname.iscsi")?;
    if let Ok(text) = read_regular(&iscsi) {
        if text
            .lines()
            .any(|l| l.trim_start().starts_with("InitiatorName="))
        {
            fs::write(&iscsi, "GenerateName=yes\n").map_err(io(&iscsi))?;
        }
    }
    clamp_times(root, epoch, &mut problems);
    Ok(problems)
}

/// `rel` inside `root`, its last component not followed (the link itself, if it is one).
fn path_nofollow(root: &Path, rel: &str) -> Result<PathBuf, Error> {
    Ok(kiln_sandbox::path::resolve_in_root_nofollow(
        root,
        Path::new(rel),
    )?)
}

/// The content of `p` when it is a regular file (never through a symlink).
fn read_regular(p: &Path) -> std::io::Result<String> {
    if !fs::symlink_metadata(p)?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    fs::read_to_string(p)
}

/// Every regular file named `name` below `dir`, without following symlinks.
fn find_named(dir: &Path, name: &str, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            find_named(&e.path(), name, out);
        } else if t.is_file() && e.file_name() == name {
            out.push(e.path());
        }
    }
}

/// Sets the atime of `root` and everything below it to `epoch` and clamps every mtime to it,
/// never following a symlink (a link's own times are set). Problems are added to `problems`.
pub fn clamp_times(root: &Path, epoch: u64, problems: &mut Vec<String>) {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    use std::os::unix::fs::MetadataExt as _;
    let secs = i64::try_from(epoch).unwrap_or(i64::MAX);
    let at = TimeSpec::new(secs, 0);
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) => {
                problems.push(format!("{}: {e}", p.display()));
                continue;
            }
        };
        if m.is_dir() {
            match fs::read_dir(&p) {
                Ok(rd) => stack.extend(rd.flatten().map(|e| e.path())),
                Err(e) => problems.push(format!("{}: {e}", p.display())),
            }
        }
        let mtime = if m.mtime() > secs || (m.mtime() == secs && m.mtime_nsec() > 0) {
            at
        } else {
            TimeSpec::UTIME_OMIT
        };
        if let Err(e) = utimensat(None, &p, &at, &mtime, UtimensatFlags::NoFollowSymlink) {
            problems.push(format!("{}: set times: {e}", p.display()));
        }
    }
}

/// Truncates every regular file below `dir`, without following symlinks.
fn truncate_logs(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            truncate_logs(&p);
        } else if m.is_file() {
            let _ = fs::OpenOptions::new().write(true).truncate(true).open(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake image whose `tmp`, `var/log` and `root` all point outside it, and an outside
    /// directory with files that must survive.
    fn fake_image(absolute: bool) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(d.path()).unwrap();
        let root = base.join("image");
        let outside = base.join("outside");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("var/tmp/sub")).unwrap();
        fs::write(root.join("var/tmp/junk"), "x").unwrap();
        fs::write(root.join("var/tmp/sub/junk"), "x").unwrap();
        fs::create_dir_all(outside.join("dir")).unwrap();
        fs::write(outside.join("host-file"), "host").unwrap();
        fs::write(outside.join("dir/host.log"), "host log").unwrap();
        fs::write(outside.join("x.log"), "host log").unwrap();
        if absolute {
            // Inside the image this means the image's /var/tmp.
            symlink("/var/tmp", root.join("tmp")).unwrap();
            symlink(&outside, root.join("root")).unwrap();
        } else {
            symlink("../outside", root.join("tmp")).unwrap();
            symlink("../../outside", root.join("root")).unwrap();
        }
        fs::create_dir_all(root.join("var")).unwrap();
        symlink(outside.join("dir"), root.join("var/log")).unwrap();
        (d, root, outside)
    }

    fn outside_intact(outside: &Path) {
        assert_eq!(
            fs::read_to_string(outside.join("host-file")).unwrap(),
            "host"
        );
        assert_eq!(
            fs::read_to_string(outside.join("dir/host.log")).unwrap(),
            "host log"
        );
        assert_eq!(
            fs::read_to_string(outside.join("x.log")).unwrap(),
            "host log"
        );
    }

    #[test]
    fn tidy_with_tmp_linked_inside_the_image_empties_the_image_dir_only() {
        let (_d, root, outside) = fake_image(true);
        let problems = tidy(&root).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        outside_intact(&outside);
        // The image's /tmp is its /var/tmp: emptied, the link kept.
        assert_eq!(fs::read_dir(root.join("var/tmp")).unwrap().count(), 0);
        assert!(fs::symlink_metadata(root.join("tmp")).unwrap().is_symlink());
    }

    #[test]
    fn tidy_with_tmp_linked_out_of_the_tree_leaves_the_outside_alone() {
        let (_d, root, outside) = fake_image(false);
        let problems = tidy(&root).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        outside_intact(&outside);
        assert!(fs::symlink_metadata(root.join("tmp")).unwrap().is_symlink());
        // The image's own, untouched /var/tmp is not what /tmp means here.
        assert!(root.join("var/tmp/junk").exists());
    }

    #[test]
    fn resolv_conf_dance_stays_in_the_image() {
        let d = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(d.path()).unwrap();
        let root = base.join("image");
        let outside = base.join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("resolv.conf"), "host's own").unwrap();
        // The image's /etc points out of the tree, relatively.
        symlink("../outside", root.join("etc")).unwrap();
        resolv_conf_in(&root).unwrap();
        let in_image = root.join("outside");
        assert!(in_image.join("resolv.conf").is_file());
        assert_eq!(
            fs::read_to_string(outside.join("resolv.conf")).unwrap(),
            "host's own"
        );
        assert!(!outside.join("resolv.conf.ORIG").exists());
        // A second round keeps the first as ORIG, then tidy puts it back.
        fs::write(in_image.join("resolv.conf"), "image's").unwrap();
        resolv_conf_in(&root).unwrap();
        assert_eq!(
            fs::read_to_string(in_image.join("resolv.conf.ORIG")).unwrap(),
            "image's"
        );
        tidy(&root).unwrap();
        assert_eq!(
            fs::read_to_string(in_image.join("resolv.conf")).unwrap(),
            "image's"
        );
        assert!(!in_image.join("resolv.conf.ORIG").exists());
        assert_eq!(
            fs::read_to_string(outside.join("resolv.conf")).unwrap(),
            "host's own"
        );
    }

    #[test]
    fn fstab_path_resolves_inside() {
        let d = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(d.path()).unwrap();
        symlink("/usr/etc", root.join("etc")).unwrap();
        assert_eq!(
            path(&root, "etc/fstab").unwrap(),
            root.join("usr/etc/fstab")
        );
    }

    fn mtime(p: &Path) -> i64 {
        use std::os::unix::fs::MetadataExt as _;
        fs::symlink_metadata(p).unwrap().mtime()
    }

    fn atime(p: &Path) -> i64 {
        use std::os::unix::fs::MetadataExt as _;
        fs::symlink_metadata(p).unwrap().atime()
    }

    #[test]
    fn reproducible_tidy_removes_leftovers_fixes_identities_and_clamps_times() {
        let d = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(d.path()).unwrap();
        let w = |rel: &str, text: &str| {
            let p = root.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        };
        w("var/cache/ldconfig/aux-cache", "x");
        w("var/cache/apt/pkgcache.bin", "x");
        w("var/cache/apt/srcpkgcache.bin", "x");
        w("var/lib/dpkg/status", "keep");
        w("var/lib/dpkg/status-old", "x");
        w("var/lib/dpkg/diversions-old", "x");
        w("var/cache/debconf/config.dat", "keep");
        w("var/cache/debconf/config.dat-old", "x");
        w("var/cache/man/index.db", "x");
        w("var/cache/man/de/index.db", "x");
        w("var/cache/man/cat1/ls.1.gz", "keep");
        w("var/lib/systemd/random-seed", "x");
        w(
            "var/lib/dbus/machine-id",
            "0123456789abcdef0123456789abcdef\n",
        );
        w("etc/machine-id", "0123456789abcdef0123456789abcdef\n");
        w(
            "etc/iscsi/initiatorname.iscsi",
            "InitiatorName=iqn.1993-08.org.debian:01:abc\n",
        );
        w("run/blkid/blkid.tab", "x");
        w("usr/bin/tool", "keep");
        // A file from the future and one from the past.
        let future = root.join("usr/bin/tool");
        let past = root.join("var/lib/dpkg/status");
        for (p, t) in [(&future, "@2000000000"), (&past, "@1000")] {
            Cmd::new("touch").args(["-d", t]).arg(p).run().unwrap();
        }
        let epoch = 1_700_000_000;
        let problems = reproducible_tidy(&root, epoch).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        for gone in [
            "var/cache/ldconfig/aux-cache",
            "var/cache/apt/pkgcache.bin",
            "var/cache/apt/srcpkgcache.bin",
            "var/lib/dpkg/status-old",
            "var/lib/dpkg/diversions-old",
            "var/cache/debconf/config.dat-old",
            "var/cache/man/index.db",
            "var/cache/man/de/index.db",
            "var/lib/systemd/random-seed",
            "var/lib/dbus/machine-id",
            "run/blkid",
        ] {
            assert!(!root.join(gone).exists(), "{gone} is still there");
        }
        for kept in [
            "var/lib/dpkg/status",
            "var/cache/debconf/config.dat",
            "var/cache/man/cat1/ls.1.gz",
            "run",
        ] {
            assert!(root.join(kept).exists(), "{kept} was removed");
        }
        assert_eq!(fs::read_to_string(root.join("etc/machine-id")).unwrap(), "");
        assert_eq!(
            fs::read_to_string(root.join("etc/iscsi/initiatorname.iscsi")).unwrap(),
            "GenerateName=yes\n"
        );
        let secs = i64::try_from(epoch).unwrap();
        assert_eq!(mtime(&future), secs);
        assert_eq!(mtime(&past), 1000);
        // Directories touched by the removals are clamped too, and every atime is the epoch.
        assert_eq!(mtime(&root.join("var/cache/apt")), secs);
        assert_eq!(atime(&past), secs);
        assert_eq!(atime(&root), secs);
    }

    #[test]
    fn reproducible_tidy_keeps_uninitialized_and_never_follows_links_out() {
        let (_d, root, outside) = fake_image(false);
        fs::write(root.join("etc/machine-id"), "uninitialized\n").unwrap();
        // Leftover names that are links out of the tree.
        fs::create_dir_all(root.join("var/cache/ldconfig")).unwrap();
        fs::create_dir_all(root.join("var/lib/dbus")).unwrap();
        symlink(
            outside.join("host-file"),
            root.join("var/cache/ldconfig/aux-cache"),
        )
        .unwrap();
        symlink(outside.join("x.log"), root.join("var/lib/dbus/machine-id")).unwrap();
        fs::create_dir_all(root.join("etc/iscsi")).unwrap();
        fs::write(outside.join("iscsi"), "InitiatorName=host\n").unwrap();
        symlink(
            outside.join("iscsi"),
            root.join("etc/iscsi/initiatorname.iscsi"),
        )
        .unwrap();
        symlink("../outside", root.join("run")).unwrap();
        let link = root.join("usr-link");
        symlink(outside.join("host-file"), &link).unwrap();
        Cmd::new("touch")
            .args(["-d", "@2000000000"])
            .arg(outside.join("host-file"))
            .run()
            .unwrap();
        reproducible_tidy(&root, 1_700_000_000).unwrap();
        outside_intact(&outside);
        assert_eq!(
            fs::read_to_string(outside.join("iscsi")).unwrap(),
            "InitiatorName=host\n"
        );
        // The host file's time is untouched; the link's own time is clamped.
        assert_eq!(mtime(&outside.join("host-file")), 2_000_000_000);
        assert!(mtime(&link) <= 1_700_000_000);
        assert_eq!(
            fs::read_to_string(root.join("etc/machine-id")).unwrap(),
            "uninitialized\n"
        );
        // A cache at a link is removed (the link itself); a D-Bus id that is a link is kept.
        assert!(fs::symlink_metadata(root.join("var/cache/ldconfig/aux-cache")).is_err());
        assert!(fs::symlink_metadata(root.join("var/lib/dbus/machine-id")).is_ok());
    }
}
