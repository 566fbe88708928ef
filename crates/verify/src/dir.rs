//! An extracted filesystem (a squashfs unpacked by `unsquashfs`, an ext4 partition dumped by
//! `debugfs`, a vfat one copied out by mtools) read into a [`Tree`] with `walkdir`, sorted by
//! name, never following a link.
//!
//! An extraction done without root cannot give files their owners, nor make device nodes;
//! [`Listing`] is what the filesystem's own tool says about each path (type, mode, owner),
//! read without extracting, and [`apply_listing`] lays it over the walked tree: owners and
//! modes from the listing, and entries only the listing has (devices, pipes) added.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use crate::tree::{Content, Entry, Kind, Tree};
use crate::Error;

/// What a filesystem's own listing says about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The entry's type.
    pub kind: Kind,
    /// Permission bits.
    pub mode: u32,
    /// Owner (uid, gid).
    pub owner: (u32, u32),
}

/// Paths inside the filesystem (absolute) to what its listing says.
pub type Listing = BTreeMap<PathBuf, Listed>;

/// The [`Kind`] of a `st_mode`'s type bits.
pub fn kind_of_mode(mode: u32) -> Option<Kind> {
    Some(match mode & 0o170_000 {
        0o100_000 => Kind::File,
        0o040_000 => Kind::Dir,
        0o120_000 => Kind::Symlink,
        0o020_000 => Kind::CharDevice,
        0o060_000 => Kind::BlockDevice,
        0o010_000 => Kind::Fifo,
        0o140_000 => Kind::Socket,
        _ => return None,
    })
}

/// Which fields a filesystem keeps, so that what the extraction makes up is not compared.
#[derive(Debug, Clone, Copy)]
pub struct Keeps {
    /// Owners are real (extracted as root).
    pub owners: bool,
    /// Permission bits are real (not vfat).
    pub modes: bool,
    /// Extended attributes were extracted.
    pub xattrs: bool,
    /// Directory modification times are real.
    pub dir_mtimes: bool,
}

/// Walks the extracted tree at `root`.
pub fn read(root: &Path, keeps: Keeps) -> Result<Tree, Error> {
    let mut tree = Tree::new();
    for item in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
    {
        let item = item.map_err(|e| {
            let p = e.path().unwrap_or(root).to_path_buf();
            Error::io(
                p,
                e.into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("walk")),
            )
        })?;
        let rel = item.path().strip_prefix(root).unwrap_or(item.path());
        let path = Path::new("/").join(rel);
        let md = item
            .path()
            .symlink_metadata()
            .map_err(|e| Error::io(item.path(), e))?;
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_char_device() {
            Kind::CharDevice
        } else if ft.is_block_device() {
            Kind::BlockDevice
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            Kind::Socket
        };
        let mut e = Entry::new(kind);
        if keeps.modes {
            e.mode = Some(md.mode() & 0o7777);
        }
        if keeps.owners {
            e.owner = Some((md.uid(), md.gid()));
        }
        if kind != Kind::Dir || keeps.dir_mtimes {
            e.mtime = Some(md.mtime());
        }
        match kind {
            Kind::File => {
                e.size = md.len();
                e.content = Content::File(item.path().to_path_buf());
            }
            Kind::Symlink => {
                let t =
                    std::fs::read_link(item.path()).map_err(|err| Error::io(item.path(), err))?;
                e.size = t.as_os_str().len() as u64;
                e.link = Some(t);
                // Link times are not restored by every extractor.
                e.mtime = None;
            }
            Kind::Dir => e.location = Some(item.path().to_path_buf()),
            Kind::CharDevice | Kind::BlockDevice => {
                let d = md.rdev();
                let major = ((d >> 8) & 0xfff) | ((d >> 32) & !0xfff);
                let minor = (d & 0xff) | ((d >> 12) & !0xff);
                e.device = Some((major as u32, minor as u32));
            }
            _ => {}
        }
        if keeps.xattrs {
            let mut x = BTreeMap::new();
            if let Ok(names) = xattr::list(item.path()) {
                for n in names {
                    let v = xattr::get(item.path(), &n)
                        .ok()
                        .flatten()
                        .unwrap_or_default();
                    x.insert(n.to_string_lossy().into_owned(), v);
                }
            }
            e.xattrs = Some(x);
        }
        tree.insert(path, e);
    }
    Ok(tree)
}

/// Lays `listing` over `tree`: each listed path gets the listing's owner and mode (and type
/// when the extraction made something else of it), and a listed path the extraction could not
/// make (a device node without root) is added with what the listing knows. Returns the listed
/// files, directories and links the extraction lacks: those it should have made, so content
/// would go uncompared.
pub fn apply_listing(tree: &mut Tree, listing: &Listing) -> Vec<PathBuf> {
    let mut missing = Vec::new();
    for (path, l) in listing {
        if !tree.contains_key(path) && matches!(l.kind, Kind::File | Kind::Dir | Kind::Symlink) {
            missing.push(path.clone());
        }
        let e = tree
            .entry(path.clone())
            .or_insert_with(|| Entry::new(l.kind));
        if e.kind != l.kind {
            *e = Entry::new(l.kind);
        }
        e.owner = Some(l.owner);
        e.mode = Some(l.mode);
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walked_tree_is_sorted_and_absolute() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("b/c")).unwrap();
        std::fs::write(d.path().join("b/c/f"), "x").unwrap();
        std::fs::write(d.path().join("a"), "yy").unwrap();
        std::os::unix::fs::symlink("b/c/f", d.path().join("l")).unwrap();
        let keeps = Keeps {
            owners: true,
            modes: true,
            xattrs: false,
            dir_mtimes: false,
        };
        let t = read(d.path(), keeps).unwrap();
        let paths: Vec<_> = t.keys().map(|p| p.display().to_string()).collect();
        assert_eq!(paths, ["/", "/a", "/b", "/b/c", "/b/c/f", "/l"]);
        assert_eq!(t[Path::new("/a")].size, 2);
        assert_eq!(t[Path::new("/l")].link.as_deref(), Some(Path::new("b/c/f")));
        assert_eq!(t[Path::new("/b")].mtime, None);
    }

    #[test]
    fn a_listing_supplies_owners_and_entries_the_extraction_lacks() {
        let mut t = Tree::new();
        t.insert("/f".into(), Entry::new(Kind::File));
        let listing: Listing = [
            (
                PathBuf::from("/f"),
                Listed {
                    kind: Kind::File,
                    mode: 0o600,
                    owner: (1, 2),
                },
            ),
            (
                PathBuf::from("/dev/null"),
                Listed {
                    kind: Kind::CharDevice,
                    mode: 0o666,
                    owner: (0, 0),
                },
            ),
        ]
        .into();
        assert!(apply_listing(&mut t, &listing).is_empty());
        assert_eq!(t[Path::new("/f")].owner, Some((1, 2)));
        assert_eq!(t[Path::new("/f")].mode, Some(0o600));
        assert_eq!(t[Path::new("/dev/null")].kind, Kind::CharDevice);
        assert_eq!(kind_of_mode(0o120_777), Some(Kind::Symlink));
        assert_eq!(kind_of_mode(0o7), None);
    }
}
