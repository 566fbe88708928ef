//! The file tree of one filesystem as kiln compares it, and the comparison itself.
//!
//! Every reader (tar, an extracted squashfs, ext4 or vfat partition) turns its filesystem into a
//! [`Tree`]: absolute paths inside the filesystem (`/etc/hostname`) mapped to an [`Entry`] with
//! what can differ: type, permission bits, owner, size, content, link target, device numbers,
//! extended attributes and modification time. A field a reader cannot know is `None` and is not
//! compared (vfat has no owners; an ext4 partition's xattrs are not read).
//!
//! [`first_difference`] walks the union of both trees in sorted path order (`Path`'s order,
//! component by component, so a directory comes right before what it holds) and stops at the
//! first path where the two differ. Content is hashed only there: a regular file read from an
//! extracted tree is hashed (SHA-256, streamed) only when everything else about it matches.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::Error;

/// The type of a filesystem entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A hard link to another path of the archive (tar only).
    HardLink,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A named pipe.
    Fifo,
    /// A socket.
    Socket,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::File => "regular file",
            Kind::Dir => "directory",
            Kind::Symlink => "symbolic link",
            Kind::HardLink => "hard link",
            Kind::CharDevice => "character device",
            Kind::BlockDevice => "block device",
            Kind::Fifo => "named pipe",
            Kind::Socket => "socket",
        })
    }
}

/// Where a regular file's content is: already hashed (read from an archive stream) or a file
/// on the host to hash when needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Not a regular file, or content not known.
    None,
    /// SHA-256 of the content.
    Digest([u8; 32]),
    /// The content is this extracted file.
    File(PathBuf),
}

/// One path of a filesystem, with everything kiln compares about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry's type.
    pub kind: Kind,
    /// Permission bits (`0o7777`), when the filesystem has them.
    pub mode: Option<u32>,
    /// Owner (uid, gid), when known.
    pub owner: Option<(u32, u32)>,
    /// Size in bytes (regular files and links; 0 for directories, whose size depends on the
    /// filesystem, not on what they hold).
    pub size: u64,
    /// The content of a regular file.
    pub content: Content,
    /// Target of a symbolic or hard link.
    pub link: Option<PathBuf>,
    /// Major and minor number of a device.
    pub device: Option<(u32, u32)>,
    /// Extended attributes, when read.
    pub xattrs: Option<BTreeMap<String, Vec<u8>>>,
    /// Modification time in seconds since the epoch, when known.
    pub mtime: Option<i64>,
    /// Where a directory was extracted, when it was.
    pub location: Option<PathBuf>,
}

impl Entry {
    /// An entry of `kind` with nothing else known yet.
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            mode: None,
            owner: None,
            size: 0,
            content: Content::None,
            link: None,
            device: None,
            xattrs: None,
            mtime: None,
            location: None,
        }
    }
}

/// A filesystem: paths inside it (absolute, `/` the root) to their entries, sorted.
pub type Tree = BTreeMap<PathBuf, Entry>;

/// Which of the two images compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The first image (the one being verified).
    First,
    /// The second image (`--against`, or the rebuild).
    Second,
}

/// What differs at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// The path exists only in one image.
    OnlyIn(Side),
    /// Different types.
    Type(Kind, Kind),
    /// Different permission bits.
    Mode(u32, u32),
    /// Different owners (uid, gid).
    Owner((u32, u32), (u32, u32)),
    /// Same type, different sizes.
    Size(u64, u64),
    /// Same size, different content (SHA-256 of each).
    Content(String, String),
    /// Different link targets.
    LinkTarget(PathBuf, PathBuf),
    /// Different device numbers.
    Device((u32, u32), (u32, u32)),
    /// An extended attribute that is missing on one side or has another value.
    Xattr(String),
    /// Different modification times (seconds since the epoch).
    Mtime(i64, i64),
}

/// The first path at which two trees differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The path inside the filesystem.
    pub path: PathBuf,
    /// What differs there.
    pub what: What,
}

impl Difference {
    /// One line naming the path and what differs, the images called `first` and `second`.
    pub fn describe(&self, first: &str, second: &str) -> String {
        let p = self.path.display();
        match &self.what {
            What::OnlyIn(Side::First) => format!("{p}: only in {first}, missing from {second}"),
            What::OnlyIn(Side::Second) => format!("{p}: only in {second}, missing from {first}"),
            What::Type(a, b) => format!("{p}: type differs: {a} vs {b}"),
            What::Mode(a, b) => format!("{p}: mode differs: {a:04o} vs {b:04o}"),
            What::Owner(a, b) => format!("{p}: owner differs: {}:{} vs {}:{}", a.0, a.1, b.0, b.1),
            What::Size(a, b) => format!("{p}: size differs: {a} vs {b} bytes"),
            What::Content(a, b) => format!(
                "{p}: content differs (same size; sha256 {} vs {})",
                &a[..16],
                &b[..16]
            ),
            What::LinkTarget(a, b) => format!(
                "{p}: link target differs: {} vs {}",
                a.display(),
                b.display()
            ),
            What::Device(a, b) => {
                format!("{p}: device differs: {}:{} vs {}:{}", a.0, a.1, b.0, b.1)
            }
            What::Xattr(name) => format!("{p}: extended attribute {name} differs"),
            What::Mtime(a, b) => format!("{p}: mtime differs: {a} vs {b} (seconds since 1970)"),
        }
    }
}

/// Where `diff`'s path was extracted on each side, for diffoscope: the two files (content,
/// mode, size, …) or the two directories (their listing and metadata), when the path is one of
/// these on both sides and both trees were read from extracted files.
pub fn extracted_pair(a: &Tree, b: &Tree, diff: &Difference) -> Option<(PathBuf, PathBuf)> {
    let (ea, eb) = (a.get(&diff.path)?, b.get(&diff.path)?);
    let on_disk = |e: &Entry| match &e.content {
        Content::File(p) => Some(p.clone()),
        _ => None,
    };
    match (ea.kind, eb.kind) {
        (Kind::File, Kind::File) => Some((on_disk(ea)?, on_disk(eb)?)),
        (Kind::Dir, Kind::Dir) => Some((ea.location.clone()?, eb.location.clone()?)),
        _ => None,
    }
}

/// The SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<[u8; 32], Error> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(h.finalize().into())
}

fn digest(c: &Content) -> Result<Option<[u8; 32]>, Error> {
    Ok(match c {
        Content::None => None,
        Content::Digest(d) => Some(*d),
        Content::File(p) => Some(sha256_file(p)?),
    })
}

/// Compares two entries at the same path, in the order: type, mode, owner, size (not of links),
/// content, link target, device, xattrs, mtime. Fields one side does not know are skipped.
fn compare_entries(a: &Entry, b: &Entry) -> Result<Option<What>, Error> {
    if a.kind != b.kind {
        return Ok(Some(What::Type(a.kind, b.kind)));
    }
    if let (Some(x), Some(y)) = (a.mode, b.mode) {
        if x != y {
            return Ok(Some(What::Mode(x, y)));
        }
    }
    if let (Some(x), Some(y)) = (a.owner, b.owner) {
        if x != y {
            return Ok(Some(What::Owner(x, y)));
        }
    }
    // A link's size is its target's length: the target says more.
    let is_link = matches!(a.kind, Kind::Symlink | Kind::HardLink);
    if a.size != b.size && !is_link {
        return Ok(Some(What::Size(a.size, b.size)));
    }
    if a.kind == Kind::File {
        if let (Some(x), Some(y)) = (digest(&a.content)?, digest(&b.content)?) {
            if x != y {
                return Ok(Some(What::Content(hex::encode(x), hex::encode(y))));
            }
        }
    }
    if let (Some(x), Some(y)) = (&a.link, &b.link) {
        if x != y {
            return Ok(Some(What::LinkTarget(x.clone(), y.clone())));
        }
    }
    if let (Some(x), Some(y)) = (a.device, b.device) {
        if x != y {
            return Ok(Some(What::Device(x, y)));
        }
    }
    if let (Some(x), Some(y)) = (&a.xattrs, &b.xattrs) {
        let names = x.keys().chain(y.keys());
        if let Some(n) = names.filter(|n| x.get(*n) != y.get(*n)).min().cloned() {
            return Ok(Some(What::Xattr(n)));
        }
    }
    if let (Some(x), Some(y)) = (a.mtime, b.mtime) {
        if x != y {
            return Ok(Some(What::Mtime(x, y)));
        }
    }
    Ok(None)
}

/// The first path, in sorted order, at which `a` and `b` differ; `None` when every path and
/// everything compared about it is the same.
pub fn first_difference(a: &Tree, b: &Tree) -> Result<Option<Difference>, Error> {
    let mut ia = a.iter().peekable();
    let mut ib = b.iter().peekable();
    loop {
        let found = match (ia.peek(), ib.peek()) {
            (None, None) => return Ok(None),
            (Some((p, _)), None) => Some(((*p).clone(), What::OnlyIn(Side::First))),
            (None, Some((p, _))) => Some(((*p).clone(), What::OnlyIn(Side::Second))),
            (Some((pa, ea)), Some((pb, eb))) => match pa.cmp(pb) {
                std::cmp::Ordering::Less => Some(((*pa).clone(), What::OnlyIn(Side::First))),
                std::cmp::Ordering::Greater => Some(((*pb).clone(), What::OnlyIn(Side::Second))),
                std::cmp::Ordering::Equal => {
                    let w = compare_entries(ea, eb)?.map(|w| ((*pa).clone(), w));
                    ia.next();
                    ib.next();
                    w
                }
            },
        };
        if let Some((path, what)) = found {
            return Ok(Some(Difference { path, what }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(content: &[u8]) -> Entry {
        Entry {
            mode: Some(0o644),
            owner: Some((0, 0)),
            size: content.len() as u64,
            content: Content::Digest(Sha256::digest(content).into()),
            mtime: Some(100),
            ..Entry::new(Kind::File)
        }
    }

    fn dir() -> Entry {
        Entry {
            mode: Some(0o755),
            owner: Some((0, 0)),
            ..Entry::new(Kind::Dir)
        }
    }

    fn tree(entries: &[(&str, Entry)]) -> Tree {
        entries
            .iter()
            .map(|(p, e)| (PathBuf::from(p), e.clone()))
            .collect()
    }

    fn base() -> Tree {
        tree(&[
            ("/", dir()),
            ("/etc", dir()),
            ("/etc/a", file(b"one")),
            ("/etc/b", file(b"two")),
            ("/usr", dir()),
            ("/usr/z", file(b"zzz")),
        ])
    }

    fn diff(a: &Tree, b: &Tree) -> Option<String> {
        first_difference(a, b)
            .unwrap()
            .map(|d| d.describe("A", "B"))
    }

    #[test]
    fn equal_trees_have_no_difference() {
        assert_eq!(diff(&base(), &base()), None);
    }

    #[test]
    fn the_first_difference_in_path_order_is_reported() {
        let mut b = base();
        b.insert("/usr/z".into(), file(b"zzy"));
        b.insert("/etc/b".into(), file(b"twO"));
        let d = diff(&base(), &b).unwrap();
        assert!(
            d.starts_with("/etc/b: content differs (same size; sha256 "),
            "{d}"
        );
    }

    #[test]
    fn a_missing_directory_is_named_before_its_content() {
        let mut b = base();
        b.remove(Path::new("/usr"));
        b.remove(Path::new("/usr/z"));
        assert_eq!(
            diff(&base(), &b).unwrap(),
            "/usr: only in A, missing from B"
        );
        assert_eq!(
            diff(&b, &base()).unwrap(),
            "/usr: only in B, missing from A"
        );
    }

    #[test]
    fn each_field_is_named() {
        let cases: Vec<(Entry, &str)> = vec![
            (
                Entry {
                    mode: Some(0o600),
                    ..file(b"one")
                },
                "/etc/a: mode differs: 0644 vs 0600",
            ),
            (
                Entry {
                    owner: Some((1000, 0)),
                    ..file(b"one")
                },
                "/etc/a: owner differs: 0:0 vs 1000:0",
            ),
            (file(b"ones"), "/etc/a: size differs: 3 vs 4 bytes"),
            (
                Entry {
                    mtime: Some(101),
                    ..file(b"one")
                },
                "/etc/a: mtime differs: 100 vs 101 (seconds since 1970)",
            ),
            (dir(), "/etc/a: type differs: regular file vs directory"),
            (
                Entry {
                    xattrs: Some([("user.x".to_string(), b"1".to_vec())].into()),
                    ..file(b"one")
                },
                "/etc/a: extended attribute user.x differs",
            ),
        ];
        for (changed, want) in cases {
            let mut a = base();
            a.get_mut(Path::new("/etc/a")).unwrap().xattrs = Some(BTreeMap::new());
            let mut b = base();
            let mut changed = changed;
            if changed.xattrs.is_none() {
                changed.xattrs = Some(BTreeMap::new());
            }
            b.insert("/etc/a".into(), changed);
            assert_eq!(diff(&a, &b).unwrap(), want);
        }
    }

    #[test]
    fn link_targets_and_unknown_fields() {
        let link = |t: &str| Entry {
            size: t.len() as u64,
            link: Some(t.into()),
            ..Entry::new(Kind::Symlink)
        };
        let a = tree(&[("/l", link("../aa"))]);
        let b = tree(&[("/l", link("../bb"))]);
        assert_eq!(
            diff(&a, &b).unwrap(),
            "/l: link target differs: ../aa vs ../bb"
        );
        // A field one side does not know (vfat has no owner) is not compared.
        let mut c = base();
        c.get_mut(Path::new("/etc/a")).unwrap().owner = None;
        let mut d = base();
        d.get_mut(Path::new("/etc/a")).unwrap().owner = Some((5, 5));
        assert_eq!(diff(&c, &d), None);
    }

    #[test]
    fn diffoscope_gets_extracted_files_or_directories_only() {
        let d = |at: &str| Entry {
            location: Some(at.into()),
            ..dir()
        };
        let a = tree(&[("/etc", d("/x/a/etc")), ("/f", file(b"1"))]);
        let b = tree(&[("/etc", d("/x/b/etc")), ("/f", file(b"2"))]);
        let at = |p: &str| Difference {
            path: p.into(),
            what: What::Mtime(1, 2),
        };
        assert_eq!(
            extracted_pair(&a, &b, &at("/etc")),
            Some(("/x/a/etc".into(), "/x/b/etc".into()))
        );
        // Content read from an archive stream is not on disk; a path on one side only has no pair.
        assert_eq!(extracted_pair(&a, &b, &at("/f")), None);
        assert_eq!(extracted_pair(&a, &tree(&[]), &at("/etc")), None);
    }

    #[test]
    fn extracted_files_are_hashed_when_compared() {
        let dir = tempfile::tempdir().unwrap();
        let (fx, fy) = (dir.path().join("x"), dir.path().join("y"));
        std::fs::write(&fx, b"same size 1").unwrap();
        std::fs::write(&fy, b"same size 2").unwrap();
        let e = |p: &Path| Entry {
            size: 11,
            content: Content::File(p.to_path_buf()),
            ..Entry::new(Kind::File)
        };
        let a = tree(&[("/f", e(&fx))]);
        let b = tree(&[("/f", e(&fy))]);
        let want_a = hex::encode(Sha256::digest(b"same size 1"));
        match first_difference(&a, &b).unwrap().unwrap().what {
            What::Content(ha, _) => assert_eq!(ha, want_a),
            other => panic!("{other:?}"),
        }
        assert_eq!(diff(&a, &a), None);
    }
}
