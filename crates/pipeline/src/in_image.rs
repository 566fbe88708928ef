//! Host-side file operations on paths inside the image tree.
//!
//! Between phases kiln edits the image from the host: DIB's resolv.conf dance, the fstab, and the
//! final tidy-up of `/tmp`, `/var/log` and `/root/*.log`. Each path is resolved inside the tree
//! with [`kiln_sandbox::path::resolve_in_root`], as the image itself would see it, so a symlink in
//! the image (say `/tmp` → `/var/tmp`) is followed inside the image and never out to the host's
//! own directory of that name.

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
}
