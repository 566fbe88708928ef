//! Reading a tar or gzip-compressed tar image into a [`Tree`], as a stream: nothing is
//! extracted; each regular file's content is hashed as it is read.
//!
//! Paths are made absolute (`./etc/hostname` and `etc/hostname` both become `/etc/hostname`),
//! so two archives that name the same file differently still pair up. Extended attributes come
//! from the PAX `SCHILY.xattr.*` records GNU tar and kiln write.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::tree::{Content, Entry, Kind, Tree};
use crate::Error;

/// Opens `image` as a tar stream, through gzip when `gzip`.
fn open(image: &Path, gzip: bool) -> Result<tar::Archive<Box<dyn Read>>, Error> {
    let f = File::open(image).map_err(|e| Error::io(image, e))?;
    let r: Box<dyn Read> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(f)))
    } else {
        Box::new(BufReader::new(f))
    };
    Ok(tar::Archive::new(r))
}

/// The path of an archive member as an absolute path inside the image.
pub fn normalise(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        if let Component::Normal(n) = c {
            out.push(n);
        }
    }
    out
}

fn damaged(image: &Path, e: &io::Error) -> Error {
    Error::Damaged {
        path: image.to_path_buf(),
        what: e.to_string(),
    }
}

/// Reads every member of the tar (gzip-compressed when `gzip`) at `image`.
pub fn read(image: &Path, gzip: bool) -> Result<Tree, Error> {
    let mut ar = open(image, gzip)?;
    let mut tree = Tree::new();
    let entries = ar.entries().map_err(|e| damaged(image, &e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| damaged(image, &e))?;
        let path = normalise(&entry.path().map_err(|e| damaged(image, &e))?);
        let header = entry.header().clone();
        let kind = match header.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => Kind::Symlink,
            tar::EntryType::Link => Kind::HardLink,
            tar::EntryType::Char => Kind::CharDevice,
            tar::EntryType::Block => Kind::BlockDevice,
            tar::EntryType::Fifo => Kind::Fifo,
            // PAX and GNU long-name records are folded into the member they describe.
            _ => continue,
        };
        let mut e = Entry::new(kind);
        e.mode = header.mode().ok().map(|m| m & 0o7777);
        e.owner = match (header.uid(), header.gid()) {
            (Ok(u), Ok(g)) => Some((
                u32::try_from(u).unwrap_or(u32::MAX),
                u32::try_from(g).unwrap_or(u32::MAX),
            )),
            _ => None,
        };
        e.mtime = header
            .mtime()
            .ok()
            .map(|t| i64::try_from(t).unwrap_or(i64::MAX));
        let mut xattrs = BTreeMap::new();
        if let Ok(Some(exts)) = entry.pax_extensions() {
            for ext in exts.flatten() {
                if let Some(name) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
                    xattrs.insert(name.to_string(), ext.value_bytes().to_vec());
                }
            }
        }
        e.xattrs = Some(xattrs);
        match kind {
            Kind::File => {
                let mut h = Sha256::new();
                e.size = io::copy(&mut entry, &mut h).map_err(|err| damaged(image, &err))?;
                e.content = Content::Digest(h.finalize().into());
            }
            Kind::Symlink | Kind::HardLink => {
                let target = entry
                    .link_name()
                    .map_err(|err| damaged(image, &err))?
                    .map(std::borrow::Cow::into_owned)
                    .unwrap_or_default();
                let target = if kind == Kind::HardLink {
                    normalise(&target)
                } else {
                    target
                };
                e.size = target.as_os_str().len() as u64;
                e.link = Some(target);
            }
            Kind::CharDevice | Kind::BlockDevice => {
                e.device = match (header.device_major(), header.device_minor()) {
                    (Ok(Some(a)), Ok(Some(b))) => Some((a, b)),
                    _ => None,
                };
            }
            _ => {}
        }
        tree.insert(path, e);
    }
    Ok(tree)
}

/// Writes the content of the member at `path` (absolute, as [`read`] names it) of the tar at
/// `image` to `dest`; `false` when there is no such regular file.
pub fn extract_one(image: &Path, gzip: bool, path: &Path, dest: &Path) -> Result<bool, Error> {
    let mut ar = open(image, gzip)?;
    for entry in ar.entries().map_err(|e| damaged(image, &e))? {
        let mut entry = entry.map_err(|e| damaged(image, &e))?;
        let p = normalise(&entry.path().map_err(|e| damaged(image, &e))?);
        if p == path && entry.header().entry_type().is_file() {
            let mut out = File::create(dest).map_err(|e| Error::io(dest, e))?;
            io::copy(&mut entry, &mut out).map_err(|e| Error::io(dest, e))?;
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_become_absolute_paths() {
        assert_eq!(normalise(Path::new("./etc/x")), Path::new("/etc/x"));
        assert_eq!(normalise(Path::new("etc/x/")), Path::new("/etc/x"));
        assert_eq!(normalise(Path::new("./")), Path::new("/"));
        assert_eq!(normalise(Path::new("/a/../b")), Path::new("/a/b"));
    }

    #[test]
    fn a_tar_is_read_with_owners_modes_links_and_digests() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("t.tar");
        let mut builder = tar::Builder::new(File::create(&img).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(5);
        h.set_mode(0o640);
        h.set_uid(7);
        h.set_gid(8);
        h.set_mtime(1234);
        builder
            .append_data(&mut h, "./etc/f", &b"hello"[..])
            .unwrap();
        let mut l = tar::Header::new_gnu();
        l.set_entry_type(tar::EntryType::Symlink);
        l.set_size(0);
        l.set_mode(0o777);
        builder.append_link(&mut l, "./etc/l", "f").unwrap();
        builder.finish().unwrap();
        drop(builder);
        let t = read(&img, false).unwrap();
        let f = &t[Path::new("/etc/f")];
        assert_eq!(f.kind, Kind::File);
        assert_eq!(f.mode, Some(0o640));
        assert_eq!(f.owner, Some((7, 8)));
        assert_eq!(f.mtime, Some(1234));
        assert_eq!(f.size, 5);
        assert_eq!(f.content, Content::Digest(Sha256::digest(b"hello").into()));
        assert_eq!(t[Path::new("/etc/l")].link.as_deref(), Some(Path::new("f")));
        let out = dir.path().join("out");
        assert!(extract_one(&img, false, Path::new("/etc/f"), &out).unwrap());
        assert_eq!(std::fs::read(&out).unwrap(), b"hello");
        assert!(!extract_one(&img, false, Path::new("/etc/none"), &out).unwrap());
    }

    #[test]
    fn a_truncated_gzip_is_reported_as_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("t.tgz");
        std::fs::write(&img, [0x1f, 0x8b, 8, 0, 0, 0]).unwrap();
        let e = read(&img, true).unwrap_err();
        assert!(matches!(e, Error::Damaged { .. }), "{e:?}");
        assert!(e.is_input_error());
    }
}
