//! Disk images: raw, and qcow2, vmdk, vhd, vdi, qed, vhdx through `qemu-img convert` to a
//! sparse raw file in a private temporary directory.
//!
//! The partition table is read with `sfdisk -J` (MBR and GPT); an image without one is taken as
//! a single filesystem. Each partition's filesystem is probed with `blkid -p` at its offset and
//! read offline, never mounted, without root:
//!
//! - ext2/3/4: `debugfs -R 'rdump / DIR' 'IMAGE?offset=N'` extracts the tree (as root with
//!   owners); one more `debugfs` run lists every directory (`ls -p`) for owners, modes and the
//!   device nodes and pipes `rdump` skips. Extended attributes are not read.
//! - vfat: `mcopy -s -p -m -i IMAGE@@N ::/ DIR` (vfat has no owners or permission bits).
//! - anything else (swap, a BIOS boot partition, an unknown type): compared as bytes.
//!
//! What differs first is, in this order: the partition table's layout (start, size, type of
//! each partition); a partition's filesystem type; the first differing path of partition 1,
//! then 2, …; the bytes of a partition kiln cannot read as files; and only when every file is
//! the same, the first partition whose bytes differ ("filesystem structures differ"), or else
//! the table itself (disk id, GUIDs) or the bytes outside the partitions.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use kiln_host::Cmd;
use sha2::{Digest as _, Sha256};

use crate::dir::{self, Keeps, Listed, Listing};
use crate::tree::{self, Difference, Tree};
use crate::Error;

/// One partition (or the whole image when it has no table): bytes `offset..offset + size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// 1-based number, 0 for a whole image without a table.
    pub number: usize,
    /// Byte offset in the raw image.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
    /// Partition type (MBR hex code or GPT GUID), empty without a table.
    pub kind: String,
}

impl Part {
    /// How a message names it: `partition 2`, or `the filesystem` for a whole image.
    pub fn label(&self) -> String {
        if self.number == 0 {
            "the filesystem".into()
        } else {
            format!("partition {}", self.number)
        }
    }
}

/// The raw bytes of a disk image whose name says it is in qemu-img's format `expected`: the
/// image itself when raw, else a converted copy in `work`.
pub fn to_raw(image: &Path, expected: &str, work: &Path, name: &str) -> Result<PathBuf, Error> {
    let info = kiln_host::json::qemu_img_info(image).map_err(|e| damaged(image, "qemu-img", e))?;
    if info.format != expected {
        return Err(Error::Damaged {
            path: image.to_path_buf(),
            what: format!(
                "its name says {expected}, but qemu-img reads it as {}",
                info.format
            ),
        });
    }
    if info.format == "raw" {
        return Ok(image.to_path_buf());
    }
    let raw = work.join(format!("{name}.raw"));
    Cmd::new("qemu-img")
        .args(["convert", "-q", "-f", &info.format, "-O", "raw"])
        .arg(image)
        .arg(&raw)
        .run()
        .map_err(|e| damaged(image, "qemu-img", e))?;
    Ok(raw)
}

fn damaged(image: &Path, tool: &str, e: kiln_host::Error) -> Error {
    match e {
        kiln_host::Error::Failed { stderr, .. } => Error::Damaged {
            path: image.to_path_buf(),
            what: format!("{tool} cannot read it: {}", stderr.trim()),
        },
        kiln_host::Error::Json { source, .. } => Error::Damaged {
            path: image.to_path_buf(),
            what: format!("{tool} printed what kiln cannot read: {source}"),
        },
        other => Error::Host(other),
    }
}

/// The partition table of `raw` (`sfdisk -J`): its label and id, and the partitions; a
/// single whole-image [`Part`] when it has none.
pub fn partitions(
    raw: &Path,
) -> Result<(Option<kiln_host::json::PartitionTable>, Vec<Part>), Error> {
    let len = std::fs::metadata(raw).map_err(|e| Error::io(raw, e))?.len();
    let whole = vec![Part {
        number: 0,
        offset: 0,
        size: len,
        kind: String::new(),
    }];
    let out = Cmd::new("sfdisk").arg("-J").arg(raw).run_unchecked()?;
    if !out.status.success() || out.stdout.is_empty() {
        return Ok((None, whole));
    }
    let Ok(t) = serde_json::from_slice::<kiln_host::json::Sfdisk>(&out.stdout) else {
        return Ok((None, whole));
    };
    let t = t.partitiontable;
    let sector = t.sectorsize.unwrap_or(512);
    let parts = t
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| Part {
            number: i + 1,
            offset: p.start * sector,
            size: p.size * sector,
            kind: p.kind.clone(),
        })
        .collect();
    Ok((Some(t), parts))
}

/// The filesystem type `blkid -p` finds in `part` of `raw` (`ext4`, `vfat`, `swap`, …), if any.
pub fn fs_type(raw: &Path, part: &Part) -> Result<Option<String>, Error> {
    let out = Cmd::new("blkid")
        .args(["-p", "-o", "value", "-s", "TYPE"])
        .arg("-O")
        .arg(part.offset.to_string())
        .arg("-S")
        .arg(part.size.to_string())
        .arg(raw)
        .run_unchecked()?;
    let t = out.stdout_str().trim().to_string();
    Ok((out.status.success() && !t.is_empty()).then_some(t))
}

/// Whether kiln reads this filesystem type as files.
pub fn readable(fs: &str) -> bool {
    matches!(fs, "ext2" | "ext3" | "ext4" | "vfat")
}

/// The SHA-256 of bytes `part.offset..part.offset + part.size` of `raw`.
pub fn part_digest(raw: &Path, part: &Part) -> Result<[u8; 32], Error> {
    let mut f = File::open(raw).map_err(|e| Error::io(raw, e))?;
    f.seek(SeekFrom::Start(part.offset))
        .map_err(|e| Error::io(raw, e))?;
    let mut h = Sha256::new();
    io::copy(&mut f.take(part.size), &mut h).map_err(|e| Error::io(raw, e))?;
    Ok(h.finalize().into())
}

/// Reads the files of the `fs` filesystem in `part` of `raw` into a tree, extracting under
/// `work`.
pub fn read_fs(raw: &Path, part: &Part, fs: &str, work: &Path) -> Result<Tree, Error> {
    std::fs::create_dir_all(work).map_err(|e| Error::io(work, e))?;
    // A link with a plain name: debugfs takes `?offset=` after the name, and mtools `@@`.
    let link = work.join("image");
    let abs = std::path::absolute(raw).map_err(|e| Error::io(raw, e))?;
    std::os::unix::fs::symlink(&abs, &link).map_err(|e| Error::io(&link, e))?;
    let root = work.join("root");
    std::fs::create_dir(&root).map_err(|e| Error::io(&root, e))?;
    if fs == "vfat" {
        Cmd::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-s", "-p", "-m", "-n", "-i"])
            .arg(format!("{}@@{}", link.display(), part.offset))
            .arg("::/")
            .arg(format!("{}/", root.display()))
            .run()
            .map_err(|e| damaged(raw, "mcopy", e))?;
        return dir::read(
            &root,
            Keeps {
                owners: false,
                modes: false,
                xattrs: false,
                dir_mtimes: false,
            },
        );
    }
    let spec = format!("{}?offset={}", link.display(), part.offset);
    let debugfs = |args: &[&str]| -> Result<String, Error> {
        let out = Cmd::new("debugfs")
            .args(args)
            .arg(&spec)
            .run()
            .map_err(|e| damaged(raw, "debugfs", e))?;
        let err = out.stderr_str();
        if err.contains("while trying to open") || err.contains("Filesystem not open") {
            return Err(Error::Damaged {
                path: raw.to_path_buf(),
                what: format!(
                    "debugfs cannot open {}: {}",
                    part.label(),
                    err.lines()
                        .find(|l| l.contains("open"))
                        .unwrap_or("")
                        .trim()
                ),
            });
        }
        Ok(out.stdout_str())
    };
    debugfs(&["-R", &format!("rdump / {}", root.display())])?;
    let is_root = nix::unistd::geteuid().is_root();
    let mut tree = dir::read(
        &root,
        Keeps {
            owners: is_root,
            modes: true,
            xattrs: false,
            dir_mtimes: true,
        },
    )?;
    // rdump fills the directory kiln made: its own times are not the filesystem root's.
    if let Some(e) = tree.get_mut(Path::new("/")) {
        e.mtime = None;
    }
    let dirs: Vec<PathBuf> = tree
        .iter()
        .filter(|(_, e)| e.kind == tree::Kind::Dir)
        .map(|(p, _)| p.clone())
        .collect();
    let cmds = work.join("ls.cmds");
    let mut text = String::new();
    for d in &dirs {
        let _ = writeln!(text, "ls -p \"{}\"", d.display());
    }
    std::fs::write(&cmds, text).map_err(|e| Error::io(&cmds, e))?;
    let out = debugfs(&["-f", &cmds.to_string_lossy()])?;
    let listing = parse_ls(&out, &dirs);
    let missing = dir::apply_listing(&mut tree, &listing);
    if let Some(p) = missing.first() {
        return Err(Error::Damaged {
            path: raw.to_path_buf(),
            what: format!(
                "debugfs could not extract {} of {}",
                p.display(),
                part.label()
            ),
        });
    }
    Ok(tree)
}

/// Parses the output of `debugfs -f` running `ls -p DIR` for each of `dirs` in order: each
/// command is echoed as `debugfs: ls -p …`, then one `/INO/MODE/UID/GID/NAME/SIZE/` line per
/// entry.
fn parse_ls(out: &str, dirs: &[PathBuf]) -> Listing {
    let mut listing = Listing::new();
    let mut current: Option<&PathBuf> = None;
    let mut n = 0;
    for line in out.lines() {
        if line.starts_with("debugfs: ") {
            current = dirs.get(n);
            n += 1;
            continue;
        }
        let Some(dir) = current else { continue };
        let f: Vec<&str> = line.split('/').collect();
        if f.len() < 7 || !f[0].is_empty() {
            continue;
        }
        let (Ok(mode), Ok(uid), Ok(gid)) = (
            u32::from_str_radix(f[2], 8),
            f[3].parse::<u32>(),
            f[4].parse::<u32>(),
        ) else {
            continue;
        };
        let Some(kind) = dir::kind_of_mode(mode) else {
            continue;
        };
        let path = match f[5] {
            "." if dir.as_os_str() == "/" => dir.clone(),
            "." | ".." => continue,
            name => dir.join(name),
        };
        listing.insert(
            path,
            Listed {
                kind,
                mode: mode & 0o7777,
                owner: (uid, gid),
            },
        );
    }
    listing
}

/// The first difference between the filesystems of two disk images, raw already.
pub enum Found {
    /// A path differs inside `part`'s filesystem.
    Path {
        /// The partition.
        part: Part,
        /// The filesystem type.
        fs: String,
        /// What differs.
        diff: Difference,
        /// The two extracted files or directories at the path, when both are either.
        files: Option<(PathBuf, PathBuf)>,
    },
    /// Not a path: the table, a filesystem's type, a partition's bytes.
    Structure(String),
}

/// Compares two raw disk images, extracting under `work`.
pub fn compare(a: &Path, b: &Path, work: &Path) -> Result<Found, Error> {
    let (ta, pa) = partitions(a)?;
    let (tb, pb) = partitions(b)?;
    let layout = |p: &[Part]| {
        p.iter()
            .map(|x| (x.offset, x.size, x.kind.clone()))
            .collect::<Vec<_>>()
    };
    if layout(&pa) != layout(&pb) || ta.as_ref().map(|t| &t.label) != tb.as_ref().map(|t| &t.label)
    {
        return Ok(Found::Structure(table_difference(
            ta.as_ref(),
            &pa,
            tb.as_ref(),
            &pb,
        )));
    }
    let mut unread = Vec::new();
    for (x, y) in pa.iter().zip(&pb) {
        let (fa, fb) = (fs_type(a, x)?, fs_type(b, y)?);
        if fa != fb {
            return Ok(Found::Structure(format!(
                "{}: filesystem type differs: {} vs {}",
                x.label(),
                fa.as_deref().unwrap_or("none"),
                fb.as_deref().unwrap_or("none")
            )));
        }
        match fa {
            Some(fs) if readable(&fs) => {
                let wa = work.join(format!("a{}", x.number));
                let wb = work.join(format!("b{}", x.number));
                let ra = read_fs(a, x, &fs, &wa)?;
                let rb = read_fs(b, y, &fs, &wb)?;
                if let Some(diff) = tree::first_difference(&ra, &rb)? {
                    let files = tree::extracted_pair(&ra, &rb, &diff);
                    return Ok(Found::Path {
                        part: x.clone(),
                        fs,
                        diff,
                        files,
                    });
                }
                // The files are the same; the bytes may still differ (checked last).
                let _ = (std::fs::remove_dir_all(&wa), std::fs::remove_dir_all(&wb));
            }
            other => unread.push((x.clone(), other)),
        }
    }
    for (x, fs) in &unread {
        if part_digest(a, x)? != part_digest(b, x)? {
            return Ok(Found::Structure(format!(
                "{} ({}): its bytes differ (kiln reads no files from it)",
                x.label(),
                fs.as_deref().unwrap_or("no filesystem kiln recognises")
            )));
        }
    }
    for x in &pa {
        if part_digest(a, x)? != part_digest(b, x)? {
            let fs = fs_type(a, x)?.unwrap_or_default();
            return Ok(Found::Structure(format!(
                "the files are identical; the filesystem structures of {} ({fs}, bytes {}..{}) \
                 differ (UUID, times or layout)",
                x.label(),
                x.offset,
                x.offset + x.size
            )));
        }
    }
    let ids = (ta.and_then(|t| t.id), tb.and_then(|t| t.id));
    Ok(Found::Structure(match ids {
        (Some(x), Some(y)) if x != y => {
            format!("every partition is identical; the disk id differs: {x} vs {y}")
        }
        _ => "every partition is identical; the partition table (GUIDs) or bytes outside the \
              partitions differ"
            .into(),
    }))
}

fn table_difference(
    ta: Option<&kiln_host::json::PartitionTable>,
    pa: &[Part],
    tb: Option<&kiln_host::json::PartitionTable>,
    pb: &[Part],
) -> String {
    let label = |t: Option<&kiln_host::json::PartitionTable>| {
        t.map_or_else(
            || "no partition table".to_string(),
            |t| format!("{} table", t.label),
        )
    };
    if ta.map(|t| &t.label) != tb.map(|t| &t.label) {
        return format!("partition table differs: {} vs {}", label(ta), label(tb));
    }
    if pa.len() != pb.len() {
        return format!(
            "partition table differs: {} vs {} partitions",
            pa.len(),
            pb.len()
        );
    }
    for (x, y) in pa.iter().zip(pb) {
        if (x.offset, x.size) != (y.offset, y.size) {
            return format!(
                "partition table differs: {} spans bytes {}..{} vs {}..{}",
                x.label(),
                x.offset,
                x.offset + x.size,
                y.offset,
                y.offset + y.size
            );
        }
        if x.kind != y.kind {
            return format!(
                "partition table differs: {} has type {} vs {}",
                x.label(),
                x.kind,
                y.kind
            );
        }
    }
    "partition table differs".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debugfs_listings_parse() {
        let out = "debugfs: ls -p \"/\"\n/2/040755/0/0/.//\n/2/040755/0/0/..//\n\
                   /12/040700/0/0/lost+found//\n\ndebugfs: ls -p \"/a\"\n/13/040755/0/0/.//\n\
                   /16/010644/0/0/fifo/0/\n/15/100751/1234/55/f/3/\n";
        let dirs = [PathBuf::from("/"), PathBuf::from("/a")];
        let l = parse_ls(out, &dirs);
        let keys: Vec<_> = l.keys().map(|p| p.display().to_string()).collect();
        assert_eq!(keys, ["/", "/a/f", "/a/fifo", "/lost+found"]);
        assert_eq!(l[Path::new("/a/f")].owner, (1234, 55));
        assert_eq!(l[Path::new("/a/f")].mode, 0o751);
        assert_eq!(l[Path::new("/a/fifo")].kind, tree::Kind::Fifo);
    }

    #[test]
    fn partitions_are_labelled() {
        let p = Part {
            number: 2,
            offset: 0,
            size: 1,
            kind: "83".into(),
        };
        assert_eq!(p.label(), "partition 2");
        assert_eq!(Part { number: 0, ..p }.label(), "the filesystem");
    }
}
