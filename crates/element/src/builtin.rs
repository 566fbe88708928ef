//! The built-in element library: the repository's top-level `elements/` directory, embedded
//! in the binary at compile time (by `build.rs`, as a reproducible tar) and unpacked on first
//! use into the cache. Like DIB's own elements it is appended last to `ELEMENTS_PATH`.
//!
//! The extraction directory is named after the archive's SHA-256, so a new kiln never sees
//! an old kiln's elements and an unchanged kiln reuses its directory. Extraction goes to a
//! temporary directory beside the final one and is renamed into place, so a crash or a
//! concurrent kiln never leaves (or sees) a half-written library.
//!
//! Its hooks run as root, so a reused extraction is first checked against the archive itself
//! (every file's content and permission bits, every link target, and nothing extra): a
//! directory that differs (a damaged disk, an edit, a planted hook) is moved aside, removed
//! and extracted again, with a warning. The archive is small (the check takes milliseconds)
//! and, unlike a digest written beside the directory, cannot be changed along with it.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{Error, IoContext};

/// The embedded tar of `elements/` (empty when that directory was empty at build time).
static ARCHIVE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/builtin-elements.tar"));

/// The SHA-256 of [`ARCHIVE`], computed by `build.rs`.
static DIGEST: &str = include_str!(concat!(env!("OUT_DIR"), "/builtin-elements.sha256"));

/// Makes temporary directory names unique within this process.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// How many hex digits of the digest name the extraction directory.
const PREFIX_LEN: usize = 16;

/// The hex SHA-256 of the embedded element archive.
pub fn digest() -> String {
    DIGEST.trim().to_string()
}

/// The embedded archive itself (a tar), e.g. for `kiln` to list or export.
pub fn archive() -> &'static [u8] {
    ARCHIVE
}

/// Unpacks the built-in elements once into `<cache_root>/builtin-elements/<digest prefix>/`
/// and returns that directory; later calls (and later runs) reuse it.
pub fn extract(cache_root: &Path) -> Result<PathBuf, Error> {
    extract_archive(ARCHIVE, &digest(), cache_root)
}

/// [`extract`] for any archive and digest.
pub(crate) fn extract_archive(
    archive: &[u8],
    digest: &str,
    cache_root: &Path,
) -> Result<PathBuf, Error> {
    let prefix: String = digest.chars().take(PREFIX_LEN).collect();
    let parent = cache_root.join("builtin-elements");
    let dest = parent.join(&prefix);
    if dest.is_dir() {
        match differs(archive, &dest)? {
            None => return Ok(dest),
            Some(why) => {
                tracing::warn!(
                    "{}: the built-in elements there differ from kiln's own ({why}); \
                     extracting them again",
                    dest.display()
                );
                let aside = parent.join(format!(
                    ".tmp-damaged-{prefix}-{}-{}",
                    std::process::id(),
                    COUNTER.fetch_add(1, Ordering::Relaxed)
                ));
                match fs::rename(&dest, &aside) {
                    Ok(()) => fs::remove_dir_all(&aside).at(&aside)?,
                    // Another kiln moved it first.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(&dest, e)),
                }
            }
        }
    }
    fs::create_dir_all(&parent).at(&parent)?;

    let tmp = parent.join(format!(
        ".tmp-{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).at(&tmp)?;
    }
    fs::create_dir(&tmp).at(&tmp)?;
    let unpacked = tar::Archive::new(archive).unpack(&tmp).at(&tmp);
    if let Err(err) = unpacked {
        let _ = fs::remove_dir_all(&tmp);
        return Err(err);
    }
    match fs::rename(&tmp, &dest) {
        Ok(()) => Ok(dest),
        Err(err) => {
            let _ = fs::remove_dir_all(&tmp);
            // Another process may have won the race; its copy is as good as ours.
            if dest.is_dir() {
                Ok(dest)
            } else {
                Err(Error::io(&dest, err))
            }
        }
    }
}

/// How the extraction in `dest` differs from `archive`, if it does: a file whose content or
/// permission bits differ, a link with another target, an entry of another type, a missing
/// entry or one the archive does not have.
fn differs(archive: &[u8], dest: &Path) -> Result<Option<String>, Error> {
    let bad = |e: std::io::Error| Error::io(dest, e);
    let mut expected = BTreeSet::new();
    let mut ar = tar::Archive::new(archive);
    for entry in ar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let rel: PathBuf = entry
            .path()
            .map_err(bad)?
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        if rel.as_os_str().is_empty() {
            continue;
        }
        for a in rel.ancestors().filter(|a| !a.as_os_str().is_empty()) {
            expected.insert(a.to_path_buf());
        }
        let path = dest.join(&rel);
        let Ok(meta) = fs::symlink_metadata(&path) else {
            return Ok(Some(format!("{} is missing", rel.display())));
        };
        let kind = entry.header().entry_type();
        let why = if kind.is_dir() {
            (!meta.is_dir()).then_some("is not a directory")
        } else if kind.is_symlink() {
            let want = entry
                .link_name()
                .map_err(bad)?
                .map(std::borrow::Cow::into_owned);
            (!meta.file_type().is_symlink() || fs::read_link(&path).ok() != want)
                .then_some("is not the link it should be")
        } else if kind.is_file() {
            let mode = entry.header().mode().map_err(bad)? & 0o777;
            let mut want = Vec::new();
            entry.read_to_end(&mut want).map_err(bad)?;
            if !meta.file_type().is_file() {
                Some("is not a regular file")
            } else if meta.permissions().mode() & 0o777 != mode {
                Some("has other permissions")
            } else if fs::read(&path).at(&path)? != want {
                Some("has other content")
            } else {
                None
            }
        } else {
            None
        };
        if let Some(why) = why {
            return Ok(Some(format!("{} {why}", rel.display())));
        }
    }
    Ok(extra_entry(dest, Path::new(""), &expected)?
        .map(|p| format!("{} is not one of kiln's", p.display())))
}

/// The first entry under `base/rel` that is not in `expected` (paths relative to `base`).
fn extra_entry(
    base: &Path,
    rel: &Path,
    expected: &BTreeSet<PathBuf>,
) -> Result<Option<PathBuf>, Error> {
    let dir = base.join(rel);
    for e in fs::read_dir(&dir).at(&dir)? {
        let e = e.at(&dir)?;
        let r = rel.join(e.file_name());
        if !expected.contains(&r) {
            return Ok(Some(r));
        }
        if e.file_type().at(&dir)?.is_dir() {
            if let Some(found) = extra_entry(base, &r, expected)? {
                return Ok(Some(found));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Library;
    use sha2::Digest;
    use std::os::unix::fs::PermissionsExt;

    fn empty_tar() -> Vec<u8> {
        tar::Builder::new(Vec::new()).into_inner().unwrap()
    }

    #[test]
    fn digest_is_hex_sha256() {
        let d = digest();
        assert_eq!(d.len(), 64);
        assert!(d.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(hex::encode(sha2::Sha256::digest(archive())), d);
    }

    #[test]
    fn extract_empty_tar() {
        let cache = tempfile::tempdir().unwrap();
        let tar = empty_tar();
        let dir = extract_archive(&tar, "0123456789abcdef0123", cache.path()).unwrap();
        assert_eq!(dir, cache.path().join("builtin-elements/0123456789abcdef"));
        assert!(dir.is_dir());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        // Nothing else is left beside it.
        assert_eq!(
            fs::read_dir(cache.path().join("builtin-elements"))
                .unwrap()
                .count(),
            1
        );
        // An empty library is a valid ELEMENTS_PATH entry.
        let lib = Library::discover(std::slice::from_ref(&dir)).unwrap();
        assert_eq!(lib.names().count(), 0);
        // Second call reuses it.
        assert_eq!(
            extract_archive(&tar, "0123456789abcdef0123", cache.path()).unwrap(),
            dir
        );
    }

    #[test]
    fn extract_keeps_modes_and_symlinks() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o755);
        header.set_size(3);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, "el/install.d/10-x", &b"hi\n"[..])
            .unwrap();
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        builder
            .append_link(&mut link, "el/install.d/20-y", "10-x")
            .unwrap();
        let tar = builder.into_inner().unwrap();

        let cache = tempfile::tempdir().unwrap();
        let dir = extract_archive(&tar, "feedfacefeedfacefeedface", cache.path()).unwrap();
        let file = dir.join("el/install.d/10-x");
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(
            fs::read_link(dir.join("el/install.d/20-y")).unwrap(),
            PathBuf::from("10-x")
        );
    }

    /// A small library: a hook, a link to it, a data file.
    fn small_tar() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, mode, body) in [
            ("el/install.d/10-x", 0o755, &b"#!/bin/sh\necho hi\n"[..]),
            ("el/README.rst", 0o644, &b"el\n"[..]),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_mode(mode);
            header.set_size(body.len() as u64);
            header.set_entry_type(tar::EntryType::Regular);
            builder.append_data(&mut header, path, body).unwrap();
        }
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        builder
            .append_link(&mut link, "el/install.d/20-y", "10-x")
            .unwrap();
        builder.into_inner().unwrap()
    }

    #[test]
    fn a_damaged_extraction_is_extracted_again() {
        type Damage = fn(&Path);
        let damages: [(&str, Damage); 7] = [
            ("edited hook", |d| {
                fs::write(d.join("el/install.d/10-x"), "#!/bin/sh\nrm -rf /\n").unwrap();
            }),
            ("truncated file", |d| {
                fs::write(d.join("el/README.rst"), "").unwrap();
            }),
            ("planted hook", |d| {
                fs::write(d.join("el/install.d/05-evil"), "x").unwrap();
            }),
            ("planted element", |d| {
                fs::create_dir(d.join("evil")).unwrap();
            }),
            ("removed hook", |d| {
                fs::remove_file(d.join("el/install.d/10-x")).unwrap();
            }),
            ("changed mode", |d| {
                fs::set_permissions(
                    d.join("el/install.d/10-x"),
                    fs::Permissions::from_mode(0o777),
                )
                .unwrap();
            }),
            ("redirected link", |d| {
                fs::remove_file(d.join("el/install.d/20-y")).unwrap();
                std::os::unix::fs::symlink("/bin/sh", d.join("el/install.d/20-y")).unwrap();
            }),
        ];
        let tar = small_tar();
        for (what, damage) in damages {
            let cache = tempfile::tempdir().unwrap();
            let dir = extract_archive(&tar, "abcdefabcdefabcdef", cache.path()).unwrap();
            assert_eq!(
                differs(&tar, &dir).unwrap(),
                None,
                "{what}: fresh copy differs"
            );
            damage(&dir);
            assert!(
                differs(&tar, &dir).unwrap().is_some(),
                "{what}: not noticed"
            );
            let again = extract_archive(&tar, "abcdefabcdefabcdef", cache.path()).unwrap();
            assert_eq!(again, dir);
            assert_eq!(differs(&tar, &dir).unwrap(), None, "{what}: not repaired");
            assert_eq!(
                fs::read_to_string(dir.join("el/install.d/10-x")).unwrap(),
                "#!/bin/sh\necho hi\n"
            );
            // Nothing is left beside it.
            let names: Vec<_> = fs::read_dir(cache.path().join("builtin-elements"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names.len(), 1, "{what}: {names:?}");
        }
    }

    #[test]
    fn extract_embedded() {
        let cache = tempfile::tempdir().unwrap();
        let dir = extract(cache.path()).unwrap();
        assert!(dir.is_dir());
        assert!(dir.ends_with(&digest()[..PREFIX_LEN]));
        // A fresh extraction matches the archive, so it is reused as it is.
        assert_eq!(differs(archive(), &dir).unwrap(), None);
        let t = std::time::Instant::now();
        assert_eq!(extract(cache.path()).unwrap(), dir);
        eprintln!("checking the built-in elements took {:?}", t.elapsed());
        Library::discover(&[dir]).unwrap();
    }
}
