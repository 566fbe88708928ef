//! Reading a squashfs image: `unsquashfs -lln` lists every path with its type, mode and
//! numeric owner (nothing extracted, no root needed), then `unsquashfs` extracts the tree into
//! a private temporary directory for content, link targets and times.
//!
//! As root the extraction keeps owners and extended attributes, and the xattrs are compared.
//! Without root it cannot make device nodes or set owners: the listing supplies both, and the
//! extraction runs with `-no-xattrs` (xattrs are then not compared; a difference there still
//! shows as "the files are the same, the squashfs differs").

use std::path::{Path, PathBuf};

use kiln_host::Cmd;

use crate::dir::{self, Keeps, Listed, Listing};
use crate::tree::{Kind, Tree};
use crate::Error;

/// The prefix `unsquashfs -lln` puts before every path (its default extraction directory).
const PREFIX: &str = "squashfs-root";

fn damaged(image: &Path, e: kiln_host::Error) -> Error {
    match e {
        kiln_host::Error::Failed { stderr, .. } => Error::Damaged {
            path: image.to_path_buf(),
            what: format!("unsquashfs cannot read it: {}", stderr.trim()),
        },
        other => Error::Host(other),
    }
}

/// Splits `line` into `n` whitespace-separated fields and the rest (after one run of blanks),
/// so that a path with spaces stays whole.
fn fields(line: &str, n: usize) -> Option<(Vec<&str>, &str)> {
    let mut rest = line;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        rest = rest.trim_start_matches(' ');
        let end = rest.find(' ')?;
        out.push(&rest[..end]);
        rest = &rest[end..];
    }
    Some((out, rest.trim_start_matches(' ')))
}

/// Parses one line of `unsquashfs -lln`:
/// `-rw-r--r-- 0/0   3 2026-12-05 23:44 squashfs-root/etc/f` (devices have `MAJ, MIN` for
/// the size, links end in ` -> TARGET`).
fn parse_line(line: &str) -> Option<(PathBuf, Listed)> {
    let perms = line.get(..10)?;
    let kind = match perms.as_bytes()[0] {
        b'-' => Kind::File,
        b'd' => Kind::Dir,
        b'l' => Kind::Symlink,
        b'c' => Kind::CharDevice,
        b'b' => Kind::BlockDevice,
        b'p' => Kind::Fifo,
        b's' => Kind::Socket,
        _ => return None,
    };
    let n = if matches!(kind, Kind::CharDevice | Kind::BlockDevice) {
        6
    } else {
        5
    };
    let (f, mut name) = fields(line, n)?;
    let (uid, gid) = f[1].split_once('/')?;
    if kind == Kind::Symlink {
        name = name.split_once(" -> ").map_or(name, |(n, _)| n);
    }
    let rel = name.strip_prefix(PREFIX)?;
    let path = Path::new("/").join(rel.trim_start_matches('/'));
    let mut mode = 0;
    for (i, c) in perms.bytes().skip(1).enumerate() {
        let bit = 1 << (8 - i);
        match c {
            b'r' | b'w' | b'x' => mode |= bit,
            b's' if i == 2 => mode |= bit | 0o4000,
            b's' if i == 5 => mode |= bit | 0o2000,
            b't' if i == 8 => mode |= bit | 0o1000,
            b'S' if i == 2 => mode |= 0o4000,
            b'S' if i == 5 => mode |= 0o2000,
            b'T' if i == 8 => mode |= 0o1000,
            _ => {}
        }
    }
    Some((
        path,
        Listed {
            kind,
            mode,
            owner: (uid.parse().ok()?, gid.parse().ok()?),
        },
    ))
}

/// Reads the squashfs `image`, extracting it under `work` (a private temporary directory).
pub fn read(image: &Path, work: &Path) -> Result<Tree, Error> {
    let out = Cmd::new("unsquashfs")
        .args(["-lln", "-n"])
        .arg(image)
        .run()
        .map_err(|e| damaged(image, e))?;
    let listing: Listing = out.stdout_str().lines().filter_map(parse_line).collect();
    if listing.is_empty() {
        return Err(Error::Damaged {
            path: image.to_path_buf(),
            what: "unsquashfs lists nothing in it".into(),
        });
    }
    let root = work.join("root");
    let is_root = nix::unistd::geteuid().is_root();
    let cmd = Cmd::new("unsquashfs")
        .args(["-q", "-n"])
        .args(if is_root {
            &[][..]
        } else {
            &["-no-xattrs"][..]
        })
        .arg("-d")
        .arg(&root)
        .arg(image);
    if is_root {
        cmd.run().map_err(|e| damaged(image, e))?;
    } else {
        // Without root, device nodes cannot be made and unsquashfs exits 2 for them; the
        // listing has them, and any other path it could not write is caught below.
        cmd.run_unchecked()?;
    }
    let mut tree = dir::read(
        &root,
        Keeps {
            owners: is_root,
            modes: true,
            xattrs: is_root,
            dir_mtimes: true,
        },
    )?;
    let missing = dir::apply_listing(&mut tree, &listing);
    if let Some(p) = missing.first() {
        return Err(Error::Damaged {
            path: image.to_path_buf(),
            what: format!("unsquashfs could not extract {}", p.display()),
        });
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_lines_parse() {
        let (p, l) =
            parse_line("-rwxr-x--x 1234/55            3 1970-01-12 13:46 squashfs-root/a b/f")
                .unwrap();
        assert_eq!(p, Path::new("/a b/f"));
        assert_eq!(l.mode, 0o751);
        assert_eq!(l.owner, (1234, 55));
        let (p, l) = parse_line(
            "lrwxrwxrwx 0/0                       4 2026-12-05 23:44 squashfs-root/a/l -> ../x",
        )
        .unwrap();
        assert_eq!((p.as_path(), l.kind), (Path::new("/a/l"), Kind::Symlink));
        let (p, l) =
            parse_line("crw-rw-rw- 0/0             1,  3 2026-12-05 23:44 squashfs-root/dev/null")
                .unwrap();
        assert_eq!(
            (p.as_path(), l.kind, l.mode),
            (Path::new("/dev/null"), Kind::CharDevice, 0o666)
        );
        let (p, _) = parse_line("drwxr-xr-x 0/0   24 2026-12-05 23:44 squashfs-root").unwrap();
        assert_eq!(p, Path::new("/"));
        let (_, l) = parse_line("-rwsr-sr-T 0/0   24 2026-12-05 23:44 squashfs-root/s").unwrap();
        assert_eq!(l.mode, 0o7754);
        assert_eq!(parse_line("Parallel unsquashfs: Using 2 processors"), None);
    }
}
