//! Packs the repository's top-level `elements/` directory into a tar archive in `OUT_DIR`, so
//! that the built-in element library travels inside the `kiln` binary (see `src/builtin.rs`).
//!
//! The archive is reproducible: entries are written in sorted path order, with mtime 0, uid/gid
//! 0 and no user or group names; file modes and symlinks are kept as they are on disk. Its
//! SHA-256 is written beside it, so that the library can name its extraction directory after
//! the content without hashing at run time. A missing or empty `elements/` gives an empty tar.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

fn main() {
    if let Err(err) = run() {
        // A build script reports failure by exiting non-zero with a message on stderr.
        eprintln!("kiln-element build script: {err}");
        std::process::exit(1);
    }
}

fn run() -> io::Result<()> {
    println!("cargo:rerun-if-changed=build.rs");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    let elements = manifest_dir.join("../../elements");

    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    if elements.is_dir() {
        println!("cargo:rerun-if-changed={}", elements.display());
        let mut entries = Vec::new();
        walk(&elements, Path::new(""), &mut entries)?;
        for (abs, rel) in entries {
            println!("cargo:rerun-if-changed={}", abs.display());
            append(&mut builder, &abs, &rel)?;
        }
    }
    let bytes = builder.into_inner()?;
    let digest = hex::encode(Sha256::digest(&bytes));
    replace(&out_dir.join("builtin-elements.tar"), &bytes)?;
    replace(&out_dir.join("builtin-elements.sha256"), digest.as_bytes())?;
    Ok(())
}

/// Writes `path` as a new file (a temp file renamed over it), never into the old file: a target
/// directory copied with hard links shares its inode with other copies, which an in-place write
/// would change too.
fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

/// Collects every entry under `dir` (depth first, sorted by file name, symlinks not followed).
fn walk(dir: &Path, rel: &Path, out: &mut Vec<(PathBuf, PathBuf)>) -> io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let abs = dir.join(&name);
        let rel = rel.join(&name);
        let meta = fs::symlink_metadata(&abs)?;
        out.push((abs.clone(), rel.clone()));
        if meta.is_dir() {
            walk(&abs, &rel, out)?;
        }
    }
    Ok(())
}

fn append(builder: &mut tar::Builder<Vec<u8>>, abs: &Path, rel: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;

    let meta = fs::symlink_metadata(abs)?;
    let mut header = tar::Header::new_gnu();
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mode(meta.permissions().mode() & 0o7777);
    let file_type = meta.file_type();
    if file_type.is_symlink() {
        let target = fs::read_link(abs)?;
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        builder.append_link(&mut header, rel, target)
    } else if file_type.is_dir() {
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        builder.append_data(&mut header, rel, io::empty())
    } else if file_type.is_file() {
        let data = fs::read(abs)?;
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(data.len() as u64);
        builder.append_data(&mut header, rel, data.as_slice())
    } else {
        // Sockets, fifos and device nodes have no place in an element library.
        println!(
            "cargo:warning=skipping special file {} in elements/",
            abs.display()
        );
        Ok(())
    }
}
