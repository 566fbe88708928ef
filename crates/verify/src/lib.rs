//! kiln-verify: compare two images of the same output format and say whether they are
//! identical, or name the first path inside the filesystem at which they differ.
//!
//! Why a crate of its own: comparing images reads them (archives, squashfs, partition tables,
//! ext4 and vfat offline) and shares nothing with making them; `kiln verify` rebuilds through
//! `kiln build`'s own code path in the CLI and then calls [`compare`], and other tools (a CI
//! job, a test) can call it on any two images without building.
//!
//! How: equal SHA-256 means identical. Otherwise each image is read into a [`tree::Tree`]
//! without extracting when it can (tar and tgz are read as a stream with the `tar` crate and
//! `flate2`), or extracted into a private temporary directory, removed on every path
//! ([`tempfile::TempDir`]): squashfs with `unsquashfs`, disk images through `qemu-img convert`
//! and each partition's ext2/3/4 (`debugfs`) or vfat (mtools) filesystem, never mounted, no
//! root needed. The two trees are walked in sorted path order and the first difference named
//! (missing on one side, type, mode, owner, size, content by streamed SHA-256, link target,
//! device, xattrs, mtime). Only when every file is the same does the verdict name a structure
//! (a partition, the archive's layout) instead of a path. [`Comparison::diffoscope`] then runs
//! diffoscope, when installed, on the first differing pair.

pub mod diffoscope;
pub mod dir;
pub mod disk;
mod error;
pub mod squashfs;
pub mod tarball;
pub mod tree;

use std::path::{Path, PathBuf};

pub use error::Error;
use tree::{Difference, What};

/// The format of an image, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `NAME.tar`.
    Tar,
    /// `NAME.tgz` or `NAME.tar.gz`.
    Tgz,
    /// `NAME.squash` or `NAME.squashfs`.
    Squashfs,
    /// A disk image, in qemu-img's name of its format (`raw`, `qcow2`, `vmdk`, `vpc`, …).
    Disk(&'static str),
}

impl Format {
    /// The format `image`'s extension says, as kiln names its outputs.
    pub fn of(image: &Path) -> Result<Self, Error> {
        let name = image
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let ext = name.rsplit_once('.').map_or("", |(_, e)| e);
        Ok(match ext {
            "tar" => Format::Tar,
            "tgz" => Format::Tgz,
            "gz" if name.ends_with(".tar.gz") => Format::Tgz,
            "squash" | "squashfs" => Format::Squashfs,
            "raw" | "img" => Format::Disk("raw"),
            "qcow2" => Format::Disk("qcow2"),
            "vmdk" => Format::Disk("vmdk"),
            "vhd" | "vpc" => Format::Disk("vpc"),
            "vdi" => Format::Disk("vdi"),
            "qed" => Format::Disk("qed"),
            "vhdx" => Format::Disk("vhdx"),
            _ => {
                return Err(Error::UnknownFormat {
                    path: image.to_path_buf(),
                })
            }
        })
    }

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Format::Tar => "tar",
            Format::Tgz => "tgz",
            Format::Squashfs => "squashfs",
            Format::Disk(f) => f,
        }
    }

    /// The host tools reading it needs (for a message listing what is missing).
    pub fn tools(self) -> &'static [&'static str] {
        match self {
            Format::Tar | Format::Tgz => &[],
            Format::Squashfs => &["unsquashfs"],
            Format::Disk(_) => &["qemu-img", "sfdisk", "blkid", "debugfs", "mcopy"],
        }
    }
}

/// The result of comparing two images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Equal SHA-256.
    Identical {
        /// The SHA-256 (hex) of both.
        sha256: String,
    },
    /// They differ; `finding` is the one line that says where.
    Different {
        /// The line: the first differing path and what differs, or the structure that differs
        /// when every file is the same.
        finding: String,
        /// The path difference, when there is one.
        diff: Option<Difference>,
    },
}

/// A finished comparison. Holds the temporary extractions until dropped, so that
/// [`Comparison::diffoscope`] can look at the differing pair.
#[derive(Debug)]
pub struct Comparison {
    /// What was found.
    pub verdict: Verdict,
    pair: Option<(PathBuf, PathBuf)>,
    _work: Option<tempfile::TempDir>,
}

impl Comparison {
    /// Runs diffoscope on the first differing pair (two extracted files, or the two images
    /// when what differs is not a file's content); `None` when the images are identical.
    pub fn diffoscope(&self) -> Option<diffoscope::Report> {
        self.pair.as_ref().map(|(a, b)| diffoscope::run(a, b))
    }

    /// The pair diffoscope would be given.
    pub fn pair(&self) -> Option<(&Path, &Path)> {
        self.pair.as_ref().map(|(a, b)| (a.as_path(), b.as_path()))
    }
}

/// Compares `a` with `b`, two images of the same format (told by their names).
pub fn compare(a: &Path, b: &Path) -> Result<Comparison, Error> {
    compare_as(a, b, &a.display().to_string(), &b.display().to_string())
}

/// [`compare`], naming the images `first` and `second` in the verdict (`the rebuild` for a
/// file in a temporary directory, say).
pub fn compare_as(a: &Path, b: &Path, first: &str, second: &str) -> Result<Comparison, Error> {
    let (fa, fb) = (Format::of(a)?, Format::of(b)?);
    if fa != fb {
        return Err(Error::FormatMismatch {
            a: a.to_path_buf(),
            b: b.to_path_buf(),
            first: fa.name().into(),
            second: fb.name().into(),
        });
    }
    let (ha, hb) = (tree::sha256_file(a)?, tree::sha256_file(b)?);
    if ha == hb {
        return Ok(Comparison {
            verdict: Verdict::Identical {
                sha256: hex::encode(ha),
            },
            pair: None,
            _work: None,
        });
    }
    let work = tempfile::Builder::new()
        .prefix("kiln-verify.")
        .tempdir()
        .map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let (la, lb) = (first, second);
    let images = (a.to_path_buf(), b.to_path_buf());
    let (finding, diff, pair) = match fa {
        Format::Tar | Format::Tgz => {
            let gz = fa == Format::Tgz;
            let (ta, tb) = (tarball::read(a, gz)?, tarball::read(b, gz)?);
            match tree::first_difference(&ta, &tb)? {
                Some(d) => {
                    let mut pair = images;
                    if matches!(d.what, What::Content(..)) {
                        let (xa, xb) = (work.path().join("first"), work.path().join("second"));
                        if tarball::extract_one(a, gz, &d.path, &xa)?
                            && tarball::extract_one(b, gz, &d.path, &xb)?
                        {
                            pair = (xa, xb);
                        }
                    }
                    (d.describe(la, lb), Some(d), pair)
                }
                None => (
                    "the files are identical; the archives differ in member order, header \
                     fields kiln does not compare (user and group names, formats) or padding"
                        .to_string(),
                    None,
                    images,
                ),
            }
        }
        Format::Squashfs => {
            let (wa, wb) = (work.path().join("a"), work.path().join("b"));
            for w in [&wa, &wb] {
                std::fs::create_dir(w).map_err(|e| Error::io(w, e))?;
            }
            let ta = squashfs::read(a, &wa)?;
            let tb = squashfs::read(b, &wb)?;
            match tree::first_difference(&ta, &tb)? {
                Some(d) => {
                    let pair = tree::extracted_pair(&ta, &tb, &d).unwrap_or(images);
                    (d.describe(la, lb), Some(d), pair)
                }
                None => (
                    "the files are identical; the squashfs structures differ (compression, \
                     block layout, ids or the times kiln does not compare)"
                        .to_string(),
                    None,
                    images,
                ),
            }
        }
        Format::Disk(expected) => {
            let ra = disk::to_raw(a, expected, work.path(), "first")?;
            let rb = disk::to_raw(b, expected, work.path(), "second")?;
            match disk::compare(&ra, &rb, work.path())? {
                disk::Found::Path {
                    part,
                    fs,
                    diff,
                    files,
                } => {
                    let line = format!("{} ({fs}): {}", part.label(), diff.describe(la, lb));
                    (line, Some(diff), files.unwrap_or((ra, rb)))
                }
                disk::Found::Structure(s) => (s, None, (ra, rb)),
            }
        }
    };
    Ok(Comparison {
        verdict: Verdict::Different { finding, diff },
        pair: Some(pair),
        _work: Some(work),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_come_from_names() {
        let f = |n: &str| Format::of(Path::new(n)).map(Format::name).ok();
        assert_eq!(f("a/img.tar"), Some("tar"));
        assert_eq!(f("img.tar.gz"), Some("tgz"));
        assert_eq!(f("img.TGZ"), Some("tgz"));
        assert_eq!(f("img.squash"), Some("squashfs"));
        assert_eq!(f("img.vhd"), Some("vpc"));
        assert_eq!(f("img.qcow2"), Some("qcow2"));
        assert_eq!(f("img.gz"), None);
        assert_eq!(f("img"), None);
    }

    #[test]
    fn images_of_two_formats_are_refused() {
        let e = compare(Path::new("x.tar"), Path::new("x.qcow2")).unwrap_err();
        assert!(matches!(e, Error::FormatMismatch { .. }));
        assert!(e.is_input_error());
    }
}
