//! Who may use a cache directory, and when.
//!
//! kiln runs hooks from its cache as root (the built-in elements are unpacked there, layers are
//! extracted into the image), so a cache directory someone else can write is a way to run code
//! as the user building. [`secure_root`] makes the directory private (0700) when kiln creates
//! it and refuses one owned by another user or writable by group or others.
//!
//! Builds that share one cache take a *shared* lock ([`SharedLock`]) on `<cache>/lock` while
//! they look up, restore and store entries; trimming (`kiln cache gc`, the trim after a build)
//! takes the *exclusive* lock ([`ExclusiveLock`]), so it never removes a layer another build is
//! restoring, and knows that every temporary entry it finds was left by a build that died.
//! The locks are `flock(2)` locks: the kernel drops them when the process ends, even on SIGKILL.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::Error;

/// The name of the lock file in the cache directory.
pub const LOCK_FILE: &str = "lock";

/// Creates the cache directory `root` (mode 0700, parents too) if it is missing, and checks
/// that it is a directory owned by the effective user and not writable by group or others.
pub fn secure_root(root: &Path) -> Result<(), Error> {
    if !root.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|source| Error::Io {
                path: root.to_path_buf(),
                source,
            })?;
    }
    let m = fs::metadata(root).map_err(|source| Error::Io {
        path: root.to_path_buf(),
        source,
    })?;
    let euid = nix::unistd::geteuid().as_raw();
    let why = if !m.is_dir() {
        Some("not a directory".to_string())
    } else if m.uid() != euid {
        Some(format!(
            "owned by uid {}, not by the user running kiln (uid {euid})",
            m.uid()
        ))
    } else if m.mode() & 0o022 != 0 {
        Some(format!(
            "writable by {} (mode {:o})",
            match m.mode() & 0o022 {
                0o020 => "its group",
                0o002 => "others",
                _ => "its group and others",
            },
            m.mode() & 0o7777
        ))
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(Error::UnsafeCacheDir {
            path: root.to_path_buf(),
            why,
        }),
    }
}

fn open_lock(root: &Path) -> Result<(PathBuf, fs::File), Error> {
    let path = root.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
    Ok((path, file))
}

fn lock_error(path: PathBuf, e: nix::errno::Errno) -> Error {
    Error::Io {
        path,
        source: std::io::Error::from(e),
    }
}

/// A build's right to read and add entries: held from the cache lookup until its outputs are
/// stored. Many builds may hold it at once; trimming waits for all of them.
#[derive(Debug)]
pub struct SharedLock {
    _file: Flock<fs::File>,
}

impl SharedLock {
    /// Takes the shared lock on the cache `root`, waiting while a trim runs.
    pub fn acquire(root: &Path) -> Result<Self, Error> {
        let (path, file) = open_lock(root)?;
        let file = Flock::lock(file, FlockArg::LockShared).map_err(|(_, e)| lock_error(path, e))?;
        Ok(Self { _file: file })
    }
}

/// The right to remove entries: no build is looking up, restoring or storing meanwhile.
#[derive(Debug)]
pub struct ExclusiveLock {
    root: PathBuf,
    _file: Flock<fs::File>,
}

impl ExclusiveLock {
    /// Takes the exclusive lock on the cache `root`, waiting for every build using it.
    pub fn acquire(root: &Path) -> Result<Self, Error> {
        let (path, file) = open_lock(root)?;
        let file =
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| lock_error(path, e))?;
        Ok(Self {
            root: root.to_path_buf(),
            _file: file,
        })
    }

    /// The exclusive lock if no build holds the cache now, else `None` (never waits).
    pub fn try_acquire(root: &Path) -> Result<Option<Self>, Error> {
        let (path, file) = open_lock(root)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(file) => Ok(Some(Self {
                root: root.to_path_buf(),
                _file: file,
            })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(lock_error(path, e)),
        }
    }

    /// The cache directory this lock covers.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_new_cache_directory_is_private() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("a/b/kiln");
        secure_root(&root).unwrap();
        let m = fs::metadata(&root).unwrap();
        assert_eq!(m.mode() & 0o777, 0o700);
        // An existing private directory passes again.
        secure_root(&root).unwrap();
    }

    #[test]
    fn group_or_world_writable_directories_are_refused() {
        let d = tempfile::tempdir().unwrap();
        for (mode, says) in [
            (0o770, "writable by its group"),
            (0o703, "writable by others"),
            (0o777, "writable by its group and others"),
            (0o1777, "writable by its group and others"),
        ] {
            let root = d.path().join(format!("c{mode:o}"));
            fs::create_dir(&root).unwrap();
            fs::set_permissions(&root, fs::Permissions::from_mode(mode)).unwrap();
            let err = secure_root(&root).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(says), "{mode:o}: {text}");
            assert!(text.contains(&root.display().to_string()), "{text}");
            assert!(text.contains("chmod go-w"), "{text}");
            assert!(err.is_input_error());
        }
        // Readable by others is fine (0755 is what `mkdir` gives).
        let ok = d.path().join("ok");
        fs::create_dir(&ok).unwrap();
        fs::set_permissions(&ok, fs::Permissions::from_mode(0o755)).unwrap();
        secure_root(&ok).unwrap();
    }

    #[test]
    fn a_directory_of_another_user_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("theirs");
        fs::create_dir(&root).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let other = if me == 0 { 65534 } else { me };
        if me != 0 {
            // Without root a directory cannot be given away; use one owned by root instead.
            let err = secure_root(Path::new("/")).unwrap_err();
            assert!(err.to_string().contains("owned by uid 0"), "{err}");
            return;
        }
        nix::unistd::chown(&root, Some(nix::unistd::Uid::from_raw(other)), None).unwrap();
        let err = secure_root(&root).unwrap_err();
        assert!(
            err.to_string().contains("owned by uid 65534"),
            "{}",
            err.to_string()
        );
        assert!(err.to_string().contains("chown"), "{err}");
    }

    #[test]
    fn a_file_is_not_a_cache_directory() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        fs::write(&f, "x").unwrap();
        assert!(secure_root(&f)
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
    }

    #[test]
    fn a_trim_waits_for_builds_and_builds_share() {
        let d = tempfile::tempdir().unwrap();
        let a = SharedLock::acquire(d.path()).unwrap();
        let b = SharedLock::acquire(d.path()).unwrap();
        assert!(ExclusiveLock::try_acquire(d.path()).unwrap().is_none());
        drop(a);
        assert!(ExclusiveLock::try_acquire(d.path()).unwrap().is_none());
        drop(b);
        let x = ExclusiveLock::try_acquire(d.path()).unwrap().unwrap();
        assert_eq!(x.root(), d.path());
        // While it trims, a second trim does not start.
        assert!(ExclusiveLock::try_acquire(d.path()).unwrap().is_none());
        drop(x);
        assert!(ExclusiveLock::try_acquire(d.path()).unwrap().is_some());
    }
}
