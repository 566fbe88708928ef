//! The built-in element library: the repository's top-level `elements/` directory, embedded
//! in the binary at compile time (by `build.rs`, as a reproducible tar) and unpacked on first
//! use into the cache. Like DIB's own elements it is appended last to `ELEMENTS_PATH`.
//!
//! The extraction directory is named after the archive's SHA-256, so a new kiln never sees
//! an old kiln's elements and an unchanged kiln reuses its directory. Extraction goes to a
//! temporary directory beside the final one and is renamed into place, so a crash or a
//! concurrent kiln never leaves (or sees) a half-written library.

use std::fs;
use std::path::{Path, PathBuf};
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
        return Ok(dest);
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

    #[test]
    fn extract_embedded() {
        let cache = tempfile::tempdir().unwrap();
        let dir = extract(cache.path()).unwrap();
        assert!(dir.is_dir());
        assert!(dir.ends_with(&digest()[..PREFIX_LEN]));
        Library::discover(&[dir]).unwrap();
    }
}
