//! Paths inside an image root, resolved from the host without leaving the root.
//!
//! The host side of a build touches files inside the image (its `resolv.conf`, `fstab`, `/tmp`,
//! the chroot's mount points). A plain `root.join("tmp")` follows a symlink in the image as the
//! host sees it: an image whose `/tmp` links to `/var/tmp` would have the HOST's `/var/tmp`
//! emptied. [`resolve_in_root`] walks the path one component at a time and resolves every
//! symlink as the image itself would see it, with `root` as `/`: an absolute target starts again
//! at `root`, and `..` never climbs above `root` (as in a chroot, or `openat2`'s
//! `RESOLVE_IN_ROOT`). The result always lies inside `root`.
//!
//! This resolves, then the caller acts on the result, so it is meant for times when nothing runs
//! inside the image that could swap a directory for a symlink in between (kiln calls it between
//! phases).

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::{Error, Result};

/// How many symlinks one resolution follows before it calls the path a loop (Linux's limit).
pub const MAX_SYMLINKS: usize = 40;

/// Resolves `rel` (absolute or relative, read as a path inside the image) to a host path inside
/// `root`, following every symlink, the last component's included, within the root.
///
/// Components that do not exist are kept as they are (so the result can be created). A symlink
/// loop is an error.
pub fn resolve_in_root(root: &Path, rel: &Path) -> Result<PathBuf> {
    resolve(root, rel, true)
}

/// Like [`resolve_in_root`], but a symlink in the last component is not followed: the result
/// names the link itself (for renaming or removing it, as `lstat` would).
pub fn resolve_in_root_nofollow(root: &Path, rel: &Path) -> Result<PathBuf> {
    resolve(root, rel, false)
}

/// Creates the directory `rel` inside `root` (and its parents), resolving it with
/// [`resolve_in_root`] first; returns the host path created.
pub fn create_dir_all_in_root(root: &Path, rel: &Path) -> Result<PathBuf> {
    let p = resolve_in_root(root, rel)?;
    fs::create_dir_all(&p).map_err(|source| Error::Io {
        path: p.clone(),
        source,
    })?;
    Ok(p)
}

/// Removes everything inside the directory `dir` (a host path already resolved inside the image)
/// without following any symlink in it: links are removed, not their targets. A missing
/// directory is nothing to do. Returns the entries that could not be removed, with why.
pub fn empty_dir(dir: &Path) -> Vec<(PathBuf, io::Error)> {
    let mut problems = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return problems,
        Err(e) => {
            problems.push((dir.to_path_buf(), e));
            return problems;
        }
    };
    for entry in rd {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                problems.push((dir.to_path_buf(), e));
                continue;
            }
        };
        let p = entry.path();
        // file_type() does not follow symlinks.
        let r = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&p),
            Ok(_) => fs::remove_file(&p),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            problems.push((p, e));
        }
    }
    problems
}

fn resolve(root: &Path, rel: &Path, follow_last: bool) -> Result<PathBuf> {
    // Components still to walk, last first (so pop() gives the next one).
    let mut todo: Vec<OsString> = Vec::new();
    push_components(&mut todo, rel);
    let mut done: Vec<OsString> = Vec::new();
    let mut links = 0usize;
    let here = |done: &[OsString]| -> PathBuf {
        let mut p = root.to_path_buf();
        p.extend(done);
        p
    };
    while let Some(name) = todo.pop() {
        if name == ".." {
            done.pop();
            continue;
        }
        let candidate = here(&done).join(&name);
        let is_last = todo.is_empty();
        let meta = match fs::symlink_metadata(&candidate) {
            Ok(m) => Some(m),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                None
            }
            Err(source) => {
                return Err(Error::Io {
                    path: candidate,
                    source,
                })
            }
        };
        let is_link = meta.as_ref().is_some_and(|m| m.file_type().is_symlink());
        if !is_link || (is_last && !follow_last) {
            done.push(name);
            continue;
        }
        links += 1;
        if links > MAX_SYMLINKS {
            return Err(Error::SymlinkLoop {
                root: root.to_path_buf(),
                path: rel.to_path_buf(),
            });
        }
        let target = fs::read_link(&candidate).map_err(|source| Error::Io {
            path: candidate.clone(),
            source,
        })?;
        if target.is_absolute() {
            done.clear();
        }
        push_components(&mut todo, &target);
    }
    Ok(here(&done))
}

/// Pushes `p`'s components onto `todo` so that they pop in order; `.` and `/` vanish, `..` stays.
fn push_components(todo: &mut Vec<OsString>, p: &Path) {
    for c in p.components().rev() {
        match c {
            Component::Normal(n) => todo.push(n.to_os_string()),
            Component::ParentDir => todo.push(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(d.path()).unwrap();
        let root = base.join("image");
        let outside = base.join("outside");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("var/tmp")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        (d, root, outside)
    }

    #[test]
    fn plain_paths_join() {
        let (_d, root, _) = tree();
        assert_eq!(
            resolve_in_root(&root, Path::new("/etc/fstab")).unwrap(),
            root.join("etc/fstab")
        );
        assert_eq!(
            resolve_in_root(&root, Path::new("etc/./x/../fstab")).unwrap(),
            root.join("etc/fstab")
        );
    }

    #[test]
    fn absolute_symlink_stays_in_the_root() {
        let (_d, root, outside) = tree();
        symlink(&outside, root.join("link")).unwrap();
        symlink("/var/tmp", root.join("tmp2")).unwrap();
        // The link's absolute target is read as a path inside the image.
        let expected_outside = root.join(outside.strip_prefix("/").unwrap());
        assert_eq!(
            resolve_in_root(&root, Path::new("link")).unwrap(),
            expected_outside
        );
        assert_eq!(
            resolve_in_root(&root, Path::new("/tmp2/x")).unwrap(),
            root.join("var/tmp/x")
        );
    }

    #[test]
    fn relative_dotdot_symlink_is_clamped_at_the_root() {
        let (_d, root, _) = tree();
        fs::create_dir_all(root.join("a/b")).unwrap();
        symlink("../../../../../..", root.join("a/b/up")).unwrap();
        symlink("../../../etc", root.join("a/b/etc")).unwrap();
        assert_eq!(resolve_in_root(&root, Path::new("a/b/up")).unwrap(), root);
        assert_eq!(
            resolve_in_root(&root, Path::new("a/b/up/etc/resolv.conf")).unwrap(),
            root.join("etc/resolv.conf")
        );
        assert_eq!(
            resolve_in_root(&root, Path::new("a/b/etc")).unwrap(),
            root.join("etc")
        );
        assert_eq!(resolve_in_root(&root, Path::new("../../..")).unwrap(), root);
    }

    #[test]
    fn a_loop_is_an_error() {
        let (_d, root, _) = tree();
        symlink("b", root.join("a")).unwrap();
        symlink("/a", root.join("b")).unwrap();
        let e = resolve_in_root(&root, Path::new("a/x")).unwrap_err();
        assert!(matches!(e, Error::SymlinkLoop { .. }), "{e}");
        symlink("self", root.join("self")).unwrap();
        assert!(resolve_in_root(&root, Path::new("self")).is_err());
        // Not following the last component, the link itself is named without looping.
        assert_eq!(
            resolve_in_root_nofollow(&root, Path::new("self")).unwrap(),
            root.join("self")
        );
    }

    #[test]
    fn dangling_links_resolve_inside_the_root() {
        let (_d, root, _) = tree();
        symlink(
            "/run/systemd/resolve/stub-resolv.conf",
            root.join("etc/resolv.conf"),
        )
        .unwrap();
        assert_eq!(
            resolve_in_root(&root, Path::new("etc/resolv.conf")).unwrap(),
            root.join("run/systemd/resolve/stub-resolv.conf")
        );
        assert_eq!(
            resolve_in_root_nofollow(&root, Path::new("etc/resolv.conf")).unwrap(),
            root.join("etc/resolv.conf")
        );
    }

    #[test]
    fn create_dir_follows_links_inside_only() {
        let (_d, root, outside) = tree();
        // Relative, reaching out of the tree from the host's point of view.
        symlink("../outside", root.join("tmp")).unwrap();
        let made = create_dir_all_in_root(&root, Path::new("tmp/in_target.d")).unwrap();
        assert_eq!(made, root.join("outside/in_target.d"));
        assert!(made.is_dir());
        assert!(!outside.join("in_target.d").exists());
    }

    #[test]
    fn emptying_removes_links_not_their_targets() {
        let (_d, root, outside) = tree();
        fs::write(outside.join("keep"), "host").unwrap();
        let t = root.join("var/tmp");
        fs::create_dir_all(t.join("sub")).unwrap();
        fs::write(t.join("sub/f"), "x").unwrap();
        fs::write(t.join("f"), "x").unwrap();
        symlink(&outside, t.join("to-outside")).unwrap();
        assert!(empty_dir(&t).is_empty());
        assert_eq!(fs::read_dir(&t).unwrap().count(), 0);
        assert_eq!(fs::read_to_string(outside.join("keep")).unwrap(), "host");
        assert!(empty_dir(&root.join("missing")).is_empty());
    }
}
