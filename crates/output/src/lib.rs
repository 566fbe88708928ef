//! kiln-output: turning a finished build into the files the user asked for.
//!
//! Two families, as in DIB: filesystem-tree outputs (`tar`, `tgz`, `squashfs`) made from the
//! final tree, and disk outputs (`raw`, `qcow2`, `vmdk`, `vhd`, and any other qemu-img format)
//! converted from the raw image. Every output is written as `NAME.<ext>-new` and renamed into
//! place, after an existing file was moved aside with a timestamp (unless
//! `OVERWRITE_OLD_IMAGE`), and may get `.md5` / `.sha256` files.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use kiln_host::{Cmd, Stdin};

pub mod qcow2;

/// Errors while writing outputs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An external tool failed, or is not installed (the error names its package).
    #[error(transparent)]
    Host(#[from] kiln_host::Error),
    /// An I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// An output type kiln does not know.
    #[error(
        "unknown output type '{0}': use one of raw, qcow2, vmdk, vhd, vdi, tar, tgz, squashfs"
    )]
    UnknownType(String),
}

type Result<T> = std::result::Result<T, Error>;

/// One requested output type.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum OutputType {
    /// A tar of the final tree.
    Tar,
    /// A gzip-compressed tar.
    Tgz,
    /// A squashfs of the final tree (`NAME.squash`, as DIB names it).
    Squashfs,
    /// A disk format converted by qemu-img (`qcow2`, `vmdk`, `vdi`, `vhd` → `vpc`, …).
    Disk(String),
    /// The raw disk image itself.
    Raw,
}

impl OutputType {
    /// Parses one `-t` value. `vhd` is written by qemu-img's `vpc` driver.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "tar" => Self::Tar,
            "tgz" | "tar.gz" => Self::Tgz,
            "squashfs" | "squash" => Self::Squashfs,
            "raw" => Self::Raw,
            "qcow2" | "vmdk" | "vhd" | "vpc" | "vdi" | "qed" | "vhdx" => Self::Disk(s.to_string()),
            other => return Err(Error::UnknownType(other.to_string())),
        })
    }

    /// Whether this output needs a disk image (and so the block-device stage).
    pub fn needs_disk(&self) -> bool {
        matches!(self, Self::Disk(_) | Self::Raw)
    }

    /// The file extension of this output.
    pub fn extension(&self) -> &str {
        match self {
            Self::Tar => "tar",
            Self::Tgz => "tgz",
            Self::Squashfs => "squash",
            Self::Raw => "raw",
            Self::Disk(f) => f,
        }
    }
}

/// Options for disk conversion.
#[derive(Debug, Clone, Default)]
pub struct DiskOptions {
    /// Compress qcow2 (DIB's default; `-u` turns it off).
    pub compress: bool,
    /// Extra `-o` options for qemu-img (`--qemu-img-options`).
    pub qemu_img_options: Option<String>,
    /// zlib level of kiln's own compressed-qcow2 writer; `None` leaves qcow2 to qemu-img.
    pub qcow2_level: Option<u32>,
}

fn run(cmd: &Cmd) -> Result<()> {
    cmd.run()?;
    Ok(())
}

/// Where an output is written before [`finish`] renames it into place (`NAME.ext-new`).
pub fn pending_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push("-new");
    PathBuf::from(s)
}

/// Writes a tar of `root` to `dest` (numeric owners, xattrs, sorted, `/proc` and `/sys` contents
/// excluded, mtimes clamped to `SOURCE_DATE_EPOCH` when it is set).
pub fn write_tar(root: &Path, dest: &Path, source_date_epoch: Option<u64>) -> Result<()> {
    let tmp = pending_path(dest);
    let mut cmd = Cmd::new("tar")
        .arg("--numeric-owner")
        .arg("--xattrs")
        .arg("--xattrs-include=*")
        .arg("--sort=name")
        .arg("--exclude=./proc/*")
        .arg("--exclude=./sys/*")
        .arg("--exclude=./tmp/in_target.d");
    if let Some(e) = source_date_epoch {
        cmd = cmd
            .arg(format!("--mtime=@{e}"))
            .arg("--clamp-mtime")
            .arg("--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime");
    }
    run(&cmd.arg("-C").arg(root).arg("-cf").arg(&tmp).arg("."))?;
    Ok(())
}

/// Gzips `tar` into `dest` (pigz when installed, so every core is used).
pub fn write_tgz(tar: &Path, dest: &Path) -> Result<()> {
    let tmp = pending_path(dest);
    let gz = if kiln_host::tools::installed("pigz") {
        "pigz"
    } else {
        "gzip"
    };
    let output = fs::File::create(&tmp).map_err(|source| Error::Io {
        path: tmp.clone(),
        source,
    })?;
    Cmd::new(gz)
        .args(["-9", "-n", "-c"])
        .stdin(Stdin::File(tar.to_path_buf()))
        .run_to(output.into())?;
    Ok(())
}

/// Writes a squashfs of `root` to `dest` (xz, as DIB does).
pub fn write_squashfs(root: &Path, dest: &Path) -> Result<()> {
    let tmp = pending_path(dest);
    run(&Cmd::new("mksquashfs")
        .arg(root)
        .arg(&tmp)
        .args(["-comp", "xz", "-noappend", "-no-recovery", "-quiet"])
        .args(["-wildcards", "-e", "proc/*", "-e", "sys/*"]))
}

/// The host tools writing output `ty` runs (for the pipeline's preflight).
pub fn tools_for(ty: &OutputType, opts: &DiskOptions) -> Vec<&'static str> {
    match ty {
        OutputType::Tar => vec!["tar"],
        OutputType::Tgz => vec!["tar", "gzip"],
        OutputType::Squashfs => vec!["mksquashfs"],
        OutputType::Raw => vec!["cp"],
        OutputType::Disk(f) if f == "qcow2" && native_qcow2(opts).is_some() => vec![],
        OutputType::Disk(_) => vec!["qemu-img"],
    }
}

/// kiln's own qcow2 writer's options, when it (rather than qemu-img) writes a compressed qcow2.
fn native_qcow2(opts: &DiskOptions) -> Option<qcow2::Options> {
    if !opts.compress {
        return None;
    }
    opts.qcow2_level.and_then(|level| {
        qcow2::Options::from_qemu_img_options(opts.qemu_img_options.as_deref(), level)
    })
}

/// Converts the raw image to a disk format: compressed qcow2 with kiln's own parallel writer
/// (unless options it does not implement are asked for), everything else with qemu-img.
pub fn write_disk(raw: &Path, format: &str, dest: &Path, opts: &DiskOptions) -> Result<()> {
    let tmp = pending_path(dest);
    if format == "qcow2" {
        if let Some(o) = native_qcow2(opts) {
            let stats = qcow2::write(raw, &tmp, &o)?;
            tracing::debug!(
                "qcow2: {} data clusters, {} stored uncompressed, {} bytes",
                stats.data_clusters,
                stats.raw_clusters,
                stats.file_bytes
            );
            return Ok(());
        }
    }
    let out_fmt = if format == "vhd" { "vpc" } else { format };
    let mut cmd = Cmd::new("qemu-img").arg("convert");
    if format == "qcow2" && opts.compress {
        cmd = cmd.arg("-c");
    }
    // Parallel coroutines with out-of-order writes let qcow2 compression use every core.
    cmd = cmd.args(["-m", "16", "-W", "-f", "raw", "-O", out_fmt]);
    if let Some(o) = opts.qemu_img_options.as_deref().filter(|o| !o.is_empty()) {
        cmd = cmd.arg("-o").arg(o);
    }
    run(&cmd.arg(raw).arg(&tmp))
}

/// Moves the raw image into place as the `raw` output (destructive, so done last).
pub fn write_raw(raw: &Path, dest: &Path) -> Result<()> {
    let tmp = pending_path(dest);
    if fs::rename(raw, &tmp).is_err() {
        // Across filesystems (tmpfs to disk): copy sparsely.
        run(&Cmd::new("cp").arg("--sparse=always").arg(raw).arg(&tmp))?;
    }
    Ok(())
}

/// Which checksums to write, from `DIB_CHECKSUM` / `--checksum` (`1`, `md5`, `sha256`, lists).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checksums {
    /// Write `.md5`.
    pub md5: bool,
    /// Write `.sha256`.
    pub sha256: bool,
}

impl Checksums {
    /// Parses DIB_CHECKSUM's value.
    pub fn parse(v: &str) -> Self {
        let mut c = Self::default();
        for part in v.split(',').map(str::trim) {
            match part {
                "1" | "yes" | "true" | "md5,sha256" => {
                    c.md5 = true;
                    c.sha256 = true;
                }
                "md5" => c.md5 = true,
                "sha256" => c.sha256 = true,
                _ => {}
            }
        }
        c
    }
}

/// Finishes an output: moves an existing `dest` (and its checksums) aside with a timestamp
/// unless `overwrite`, renames `dest-new` into place and writes the asked checksums.
pub fn finish(dest: &Path, overwrite: bool, sums: Checksums, stamp: &str) -> Result<()> {
    let tmp = pending_path(dest);
    if dest.exists() && !overwrite {
        let name = dest
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let (stem, ext) = name.rsplit_once('.').unwrap_or((name.as_str(), ""));
        let moved = dest.with_file_name(format!("{stem}-{stamp}.{ext}"));
        tracing::info!("keeping the old {} as {}", dest.display(), moved.display());
        fs::rename(dest, &moved).map_err(|source| Error::Io {
            path: dest.to_path_buf(),
            source,
        })?;
        for s in ["md5", "sha256"] {
            let old = PathBuf::from(format!("{}.{s}", dest.display()));
            if old.exists() {
                let _ = fs::rename(&old, format!("{}.{s}", moved.display()));
            }
        }
    }
    fs::rename(&tmp, dest).map_err(|source| Error::Io {
        path: tmp.clone(),
        source,
    })?;
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file = dest.file_name().unwrap_or_default();
    let mut jobs = Vec::new();
    for (on, tool) in [(sums.md5, "md5sum"), (sums.sha256, "sha256sum")] {
        if !on {
            continue;
        }
        let ext = tool.trim_end_matches("sum");
        let out_path = PathBuf::from(format!("{}.{ext}", dest.display()));
        let out = fs::File::create(&out_path).map_err(|source| Error::Io {
            path: out_path.clone(),
            source,
        })?;
        let cmd = Cmd::new(tool).arg(file).current_dir(dir);
        let child = cmd.spawn(out.into(), Stdio::piped())?;
        jobs.push((cmd, child));
    }
    for (cmd, child) in jobs {
        let done = child.wait_with_output()?;
        if !done.status.success() {
            return Err(cmd.failed(done.status, &done.stderr_str()).into());
        }
    }
    Ok(())
}

/// The path an output of `ty` gets for image name `name`.
pub fn output_path(name: &Path, ty: &OutputType) -> PathBuf {
    PathBuf::from(format!("{}.{}", name.display(), ty.extension()))
}

/// Sorts requested types into the order they must be produced: tree outputs first, then
/// converted disk formats, raw last (it moves the image away).
pub fn production_order(types: &[OutputType]) -> Vec<OutputType> {
    let mut v = types.to_vec();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse_and_order() {
        let t: Vec<_> = ["raw", "qcow2", "tar"]
            .iter()
            .map(|s| OutputType::parse(s).unwrap())
            .collect();
        let o = production_order(&t);
        assert_eq!(o.first(), Some(&OutputType::Tar));
        assert_eq!(o.last(), Some(&OutputType::Raw));
        assert!(OutputType::parse("floppy").is_err());
        assert_eq!(OutputType::parse("vhd").unwrap().extension(), "vhd");
    }

    #[test]
    fn checksum_values() {
        assert_eq!(
            Checksums::parse("1"),
            Checksums {
                md5: true,
                sha256: true
            }
        );
        assert_eq!(
            Checksums::parse("sha256"),
            Checksums {
                md5: false,
                sha256: true
            }
        );
        assert_eq!(Checksums::parse("0"), Checksums::default());
    }

    #[test]
    fn finish_moves_old_and_sums() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("img.qcow2");
        fs::write(&dest, b"old").unwrap();
        fs::write(pending_path(&dest), b"new").unwrap();
        finish(
            &dest,
            false,
            Checksums {
                md5: true,
                sha256: true,
            },
            "2026.01.01-00.00.00",
        )
        .unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"new");
        assert!(d.path().join("img-2026.01.01-00.00.00.qcow2").exists());
        let sha = fs::read_to_string(d.path().join("img.qcow2.sha256")).unwrap();
        assert!(sha.ends_with("  img.qcow2\n"), "{sha}");
        // Overwrite mode replaces in place.
        fs::write(pending_path(&dest), b"newer").unwrap();
        finish(&dest, true, Checksums::default(), "x").unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"newer");
    }

    #[test]
    fn tar_of_a_tree() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        fs::create_dir_all(root.join("proc/1")).unwrap();
        fs::write(root.join("hello"), b"hi").unwrap();
        fs::write(root.join("proc/1/x"), b"no").unwrap();
        let dest = d.path().join("t.tar");
        write_tar(&root, &dest, Some(0)).unwrap();
        finish(&dest, true, Checksums::default(), "x").unwrap();
        let list = Cmd::new("tar").arg("-tf").arg(&dest).run().unwrap();
        let list = list.stdout_str();
        assert!(list.contains("./hello"));
        assert!(!list.contains("proc/1/x"));
    }
}
