//! kiln-output: turning a finished build into the files the user asked for.
//!
//! [`FORMATS`] is the one table of output types: the name given to `-t` (and its aliases), the
//! file extension, whether the output is made from the final tree or from the raw disk image,
//! the host tools it runs, and its producer, or why kiln cannot make it yet. The `-t` help, the
//! error for an unknown or unsupported type, `kiln plan`'s outputs, the preflight's tool list
//! and the pipeline's dispatch all read it. Each format is written by one module (`tar.rs`,
//! `tgz.rs`, `squashfs.rs`, `raw.rs`, `qcow2.rs`, `qemu_img.rs`) implementing [`Producer`];
//! [`produce`] is the one entry point.
//!
//! Two families, as in DIB: tree outputs (`tar`, `tgz`, `squashfs`) made from the final tree,
//! and disk outputs (`raw`, `qcow2`, `vmdk`, `vhd`, …) made from the raw image. Every output
//! is written in a private directory next to it (`.NAME.<ext>.kiln-new/`, mode 0700, made
//! fresh by [`prepare_pending`]) and renamed into place by [`finish`], after an existing file
//! was moved aside with a timestamp (unless `OVERWRITE_OLD_IMAGE`), with its `.md5` /
//! `.sha256` files written the same way. Nothing is ever opened for writing at a path another
//! user can plant in the output directory: a symlink at `NAME.<ext>` or `NAME.<ext>.sha256` is
//! replaced by the rename, never followed, so its target is untouched.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};

use kiln_host::Cmd;

pub mod clusters;
pub mod container;
pub mod docker;
pub mod gzip;
pub mod identity;
pub mod incus;
pub mod lxc;
pub mod oci;
pub mod qcow2;
pub mod qemu_img;
pub mod raw;
pub mod squashfs;
pub mod tar;
pub mod tgz;
pub mod xz;

#[cfg(test)]
mod testutil;

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
    /// A file name in the tree that container layers read as a deletion.
    #[error("{0}: a file name starting with '.wh.' is an OCI whiteout (a deletion in layered images); rename or remove it before making a container image")]
    Whiteout(PathBuf),
    /// The image's identity (for the LXC and Incus outputs) cannot be made.
    #[error("{0}")]
    Identity(String),
    /// A bad `--docker-target`.
    #[error("--docker-target: {0}")]
    BadImageName(String),
    /// An output type kiln does not know.
    #[error("unknown output type '{0}': use one of {names}", names = listed_names().join(", "))]
    UnknownType(String),
    /// An output type DIB knows that kiln cannot make yet.
    #[error("output type '{name}' is not supported by kiln yet: {hint}")]
    Unsupported {
        /// The type as given.
        name: String,
        /// What to do instead.
        hint: &'static str,
    },
}

impl Error {
    /// Whether the user asked for something wrong (exit code 2) rather than a tool failing.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            Self::UnknownType(_) | Self::Unsupported { .. } | Self::BadImageName(_)
        )
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What an output is made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// The final root tree, after cleanup, with no chroot mounts.
    Tree,
    /// The raw disk image, unmounted and detached.
    Disk,
}

/// How one format is written. Each module under `src/` implements it for its format(s).
pub trait Producer: Sync + std::fmt::Debug {
    /// Writes the output made from `source` (the tree or the raw image, per the table's
    /// [`Format::source`]) to `pending` (`.NAME.<ext>.kiln-new/NAME.<ext>`, in a private
    /// directory; [`finish`] renames it into place).
    fn produce(&self, source: &Path, pending: &Path, opts: &Options) -> Result<()>;

    /// Whether, with `opts`, it runs the table's [`Format::tools`] (kiln's own qcow2 writer
    /// runs none).
    fn runs_tools(&self, _opts: &Options) -> bool {
        true
    }
}

/// Whether kiln can make a format.
#[derive(Debug)]
pub enum Support {
    /// Made by this producer.
    Yes(&'static dyn Producer),
    /// Refused with this hint: what to do instead.
    No(&'static str),
}

/// One row of the table of output types.
#[derive(Debug)]
pub struct Format {
    /// The name given to `-t`.
    pub name: &'static str,
    /// Other names `-t` accepts for it.
    pub aliases: &'static [&'static str],
    /// The file extension: the output is `NAME.<extension>`.
    pub extension: &'static str,
    /// What it is made from.
    pub source: Source,
    /// Whether making it consumes the source (raw moves the image), so it is made last.
    pub moves_source: bool,
    /// The host tools it runs (for the preflight).
    pub tools: &'static [&'static str],
    /// Whether it is the type made when `-t` is not given.
    pub default: bool,
    /// Whether the `-t` help and the unknown-type error list it.
    pub listed: bool,
    /// Whether it is a container image (run by a container engine or manager, which brings the
    /// kernel): when every output of a build is one, the pipeline adds the `container` element.
    pub container: bool,
    /// Its producer, or why kiln cannot make it.
    pub support: Support,
}

impl Format {
    /// Whether kiln can make it.
    pub fn is_supported(&self) -> bool {
        matches!(self.support, Support::Yes(_))
    }
}

const QEMU_IMG: &[&str] = &["qemu-img"];

/// Every output type kiln knows, in the order the `-t` help lists them. Adding a format is one
/// row here and one module implementing [`Producer`].
pub static FORMATS: &[Format] = &[
    Format {
        name: "qcow2",
        aliases: &[],
        extension: "qcow2",
        source: Source::Disk,
        moves_source: false,
        tools: QEMU_IMG,
        default: true,
        listed: true,
        container: false,
        support: Support::Yes(&qcow2::Qcow2),
    },
    Format {
        name: "raw",
        aliases: &[],
        extension: "raw",
        source: Source::Disk,
        moves_source: true,
        tools: &["cp"],
        default: false,
        listed: true,
        container: false,
        support: Support::Yes(&raw::Raw),
    },
    Format {
        name: "vmdk",
        aliases: &[],
        extension: "vmdk",
        source: Source::Disk,
        moves_source: false,
        tools: QEMU_IMG,
        default: false,
        listed: true,
        container: false,
        support: Support::Yes(&qemu_img::QemuImg { driver: "vmdk" }),
    },
    Format {
        name: "vhd",
        aliases: &[],
        extension: "vhd",
        source: Source::Disk,
        moves_source: false,
        tools: QEMU_IMG,
        default: false,
        listed: true,
        container: false,
        support: Support::Yes(&qemu_img::QemuImg { driver: "vpc" }),
    },
    Format {
        name: "vdi",
        aliases: &[],
        extension: "vdi",
        source: Source::Disk,
        moves_source: false,
        tools: QEMU_IMG,
        default: false,
        listed: true,
        container: false,
        support: Support::Yes(&qemu_img::QemuImg { driver: "vdi" }),
    },
    Format {
        name: "tar",
        aliases: &[],
        extension: "tar",
        source: Source::Tree,
        moves_source: false,
        tools: &["tar"],
        default: false,
        listed: true,
        container: false,
        support: Support::Yes(&tar::Tar),
    },
    Format {
        name: "tgz",
        aliases: &["tar.gz"],
        extension: "tgz",
        source: Source::Tree,
        moves_source: false,
        tools: &["tar"],
        default: false,
        listed: true,
        container: false,
        support: Support::Yes(&tgz::Tgz),
    },
    Format {
        name: "squashfs",
        aliases: &["squash"],
        extension: "squash",
        source: Source::Tree,
        moves_source: false,
        tools: &["mksquashfs"],
        default: false,
        listed: true,
        container: false,
        support: Support::Yes(&squashfs::Squashfs),
    },
    Format {
        name: "docker",
        aliases: &[],
        extension: "docker.tar",
        source: Source::Tree,
        moves_source: false,
        tools: &[],
        default: false,
        listed: true,
        container: true,
        support: Support::Yes(&docker::Docker),
    },
    Format {
        name: "oci",
        aliases: &[],
        extension: "oci",
        source: Source::Tree,
        moves_source: false,
        tools: &[],
        default: false,
        listed: true,
        container: true,
        support: Support::Yes(&oci::Oci),
    },
    Format {
        name: "oci-archive",
        aliases: &[],
        extension: "oci.tar",
        source: Source::Tree,
        moves_source: false,
        tools: &[],
        default: false,
        listed: true,
        container: true,
        support: Support::Yes(&oci::OciArchive),
    },
    Format {
        name: "lxc",
        aliases: &[],
        extension: "lxc",
        source: Source::Tree,
        moves_source: false,
        tools: &[],
        default: false,
        listed: true,
        container: true,
        support: Support::Yes(&lxc::Lxc),
    },
    Format {
        name: "incus",
        aliases: &[],
        extension: "incus",
        source: Source::Tree,
        moves_source: false,
        tools: &["mksquashfs"],
        default: false,
        listed: true,
        container: true,
        support: Support::Yes(&incus::Incus),
    },
    Format {
        name: "incus-unified",
        aliases: &[],
        extension: "incus.tar.gz",
        source: Source::Tree,
        moves_source: false,
        tools: &[],
        default: false,
        listed: true,
        container: true,
        support: Support::Yes(&incus::IncusUnified),
    },
    Format {
        name: "incus-vm",
        aliases: &[],
        extension: "incus-vm",
        source: Source::Disk,
        moves_source: false,
        tools: QEMU_IMG,
        default: false,
        listed: true,
        container: false,
        support: Support::Yes(&incus::IncusVm),
    },
    Format {
        name: "vpc",
        aliases: &[],
        extension: "vpc",
        source: Source::Disk,
        moves_source: false,
        tools: QEMU_IMG,
        default: false,
        listed: false,
        container: false,
        support: Support::Yes(&qemu_img::QemuImg { driver: "vpc" }),
    },
    Format {
        name: "qed",
        aliases: &[],
        extension: "qed",
        source: Source::Disk,
        moves_source: false,
        tools: QEMU_IMG,
        default: false,
        listed: false,
        container: false,
        support: Support::Yes(&qemu_img::QemuImg { driver: "qed" }),
    },
    Format {
        name: "vhdx",
        aliases: &[],
        extension: "vhdx",
        source: Source::Disk,
        moves_source: false,
        tools: QEMU_IMG,
        default: false,
        listed: false,
        container: false,
        support: Support::Yes(&qemu_img::QemuImg { driver: "vhdx" }),
    },
    Format {
        name: "aci",
        aliases: &[],
        extension: "aci",
        source: Source::Tree,
        moves_source: false,
        tools: &[],
        default: false,
        listed: false,
        container: false,
        support: Support::No("use tar (an ACI is a tar of the tree with a manifest)"),
    },
];

/// The names the `-t` help and the unknown-type error list, in table order.
pub fn listed_names() -> Vec<&'static str> {
    FORMATS
        .iter()
        .filter(|f| f.listed)
        .map(|f| f.name)
        .collect()
}

/// The `-t` help's list: `qcow2 (default), raw, vmdk, …`.
pub fn types_help() -> String {
    FORMATS
        .iter()
        .filter(|f| f.listed)
        .map(|f| {
            if f.default {
                format!("{} (default)", f.name)
            } else {
                f.name.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One requested, supported output type: a row of [`FORMATS`]. Ordered by table position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OutputType(usize);

impl OutputType {
    /// Parses one `-t` value (a name or an alias). Unknown names and types kiln cannot make
    /// yet are errors saying what to use instead.
    pub fn parse(s: &str) -> Result<Self> {
        let Some(i) = FORMATS
            .iter()
            .position(|f| f.name == s || f.aliases.contains(&s))
        else {
            return Err(Error::UnknownType(s.to_string()));
        };
        match FORMATS[i].support {
            Support::Yes(_) => Ok(Self(i)),
            Support::No(hint) => Err(Error::Unsupported {
                name: s.to_string(),
                hint,
            }),
        }
    }

    /// The type made when `-t` is not given (qcow2, as in DIB).
    pub fn default_type() -> Self {
        Self(FORMATS.iter().position(|f| f.default).unwrap_or(0))
    }

    /// Its row of the table.
    pub fn format(self) -> &'static Format {
        &FORMATS[self.0]
    }

    /// Its name as `-t` takes it.
    pub fn name(self) -> &'static str {
        self.format().name
    }

    /// The file extension of this output.
    pub fn extension(self) -> &'static str {
        self.format().extension
    }

    /// What it is made from.
    pub fn source(self) -> Source {
        self.format().source
    }

    /// Whether it is a container image ([`Format::container`]).
    pub fn is_container(self) -> bool {
        self.format().container
    }

    /// Whether this output needs a disk image (and so the block-device stage).
    pub fn needs_disk(self) -> bool {
        self.source() == Source::Disk
    }

    /// The host tools writing it with `opts` runs (for the pipeline's preflight).
    pub fn tools(self, opts: &Options) -> Vec<&'static str> {
        match self.format().support {
            Support::Yes(p) if p.runs_tools(opts) => self.format().tools.to_vec(),
            _ => Vec::new(),
        }
    }
}

/// Options of the producers, from the request.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Compress qcow2 (DIB's default; `-u` turns it off).
    pub compress: bool,
    /// Extra `-o` options for qemu-img (`--qemu-img-options`).
    pub qemu_img_options: Option<String>,
    /// zlib level of kiln's own compressed-qcow2 writer; `None` leaves qcow2 to qemu-img.
    pub qcow2_level: Option<u32>,
    /// The `tar` output this build has written already: `tgz` compresses that file rather than
    /// running tar again, so the two hold the same bytes.
    pub tar_file: Option<PathBuf>,
    /// Earlier qcow2 images whose compressed clusters kiln's writer may reuse, and where it
    /// leaves the new image's index ([`clusters`]); `None`: compress every cluster, no index.
    pub qcow2_reuse: Option<clusters::Reuse>,
    /// `SOURCE_DATE_EPOCH`: reproducible output. tar mtimes are clamped to it, squashfs takes
    /// it as its creation time, qemu-img writes in order.
    pub source_date_epoch: Option<u64>,
    /// The build's architecture, Debian-named (the container outputs' config); `None`: the
    /// host's.
    pub arch: Option<String>,
    /// `--docker-target REPO:TAG`: the container outputs' image name.
    pub docker_target: Option<String>,
    /// The compressor of the `squashfs` output (`KILN_SQUASHFS_COMP`; xz by default).
    pub squashfs_comp: squashfs::Compressor,
    /// The image's identity, computed once per build from the final tree
    /// ([`identity::ImageInfo::new`]); the LXC and Incus outputs need it.
    pub image: Option<identity::ImageInfo>,
}

/// The host tools writing output `ty` runs (for the pipeline's preflight).
pub fn tools_for(ty: OutputType, opts: &Options) -> Vec<&'static str> {
    ty.tools(opts)
}

/// Writes output `ty` made from `source` (the final tree for tree outputs, the raw image for
/// disk outputs) as `dest`'s pending file ([`prepare_pending`]); [`finish`] then puts it in
/// place. The one entry point of every format. On failure the pending directory is removed.
pub fn produce(ty: OutputType, source: &Path, dest: &Path, opts: &Options) -> Result<()> {
    match ty.format().support {
        Support::Yes(p) => {
            let pending = prepare_pending(dest)?;
            let r = p.produce(source, &pending, opts);
            if r.is_err() {
                discard_pending(dest);
            }
            r
        }
        Support::No(hint) => Err(Error::Unsupported {
            name: ty.name().to_string(),
            hint,
        }),
    }
}

/// The private directory an output is written in before [`finish`] renames it into place:
/// `.NAME.<ext>.kiln-new` beside `dest`, so the rename never crosses a filesystem.
fn pending_dir(dest: &Path) -> PathBuf {
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    dest.with_file_name(format!(".{name}.kiln-new"))
}

/// Where an output is written before [`finish`] renames it into place (inside the private
/// directory [`prepare_pending`] makes).
pub fn pending_path(dest: &Path) -> PathBuf {
    pending_dir(dest).join(dest.file_name().unwrap_or_default())
}

/// Makes `dest`'s private pending directory afresh (mode 0700; whatever had its name, a stale
/// directory of a killed build or a planted symlink, is removed without being followed) and
/// returns the pending file's path, which nobody else can create or replace.
pub fn prepare_pending(dest: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt as _;
    let dir = pending_dir(dest);
    let io_err = |source| Error::Io {
        path: dir.clone(),
        source,
    };
    match fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(&dir).map_err(io_err)?,
        Ok(_) => fs::remove_file(&dir).map_err(io_err)?,
        Err(_) => {}
    }
    // Fails if anything took the name meanwhile; never reuses what it did not make.
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(io_err)?;
    Ok(pending_path(dest))
}

/// The umask outputs are given their mode by, when the caller set one ([`set_output_umask`]).
static OUTPUT_UMASK: AtomicU32 = AtomicU32::new(u32::MAX);

/// Makes every output (and its checksum files) get the mode `0666 & !mask` when it is put in
/// place, whatever umask the process has then. A build sets its own umask to 022 so that the
/// image does not depend on the caller's, and hands the caller's umask here, so outputs still
/// get the mode the caller's umask gives new files.
pub fn set_output_umask(mask: u32) {
    OUTPUT_UMASK.store(mask & 0o777, Ordering::Relaxed);
}

/// The umask outputs get their mode from: the one set with [`set_output_umask`], else this
/// process's.
pub fn output_umask() -> u32 {
    match OUTPUT_UMASK.load(Ordering::Relaxed) {
        u32::MAX => process_umask(),
        m => m,
    }
}

/// This process's umask, from `/proc/self/status` (reading it with `umask(2)` would change it
/// for every thread meanwhile); 022 when the kernel does not say.
fn process_umask() -> u32 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// Removes `dest`'s pending directory and what is in it (after a failure).
pub fn discard_pending(dest: &Path) {
    let dir = pending_dir(dest);
    if fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
        let _ = fs::remove_dir_all(&dir);
    }
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
/// unless `overwrite`, writes the asked checksums beside the pending file (none for a
/// directory output: `oci`'s blobs are named by their digests), renames the
/// checksums and the pending file into place (a symlink at any of those names is replaced,
/// never followed) and removes the pending directory. On failure the pending directory is
/// removed and nothing is left half-written at `dest`.
pub fn finish(dest: &Path, overwrite: bool, sums: Checksums, stamp: &str) -> Result<()> {
    let r = finish_inner(dest, overwrite, sums, stamp);
    discard_pending(dest);
    r
}

fn finish_inner(dest: &Path, overwrite: bool, sums: Checksums, stamp: &str) -> Result<()> {
    let tmp = pending_path(dest);
    let dir = pending_dir(dest);
    let file = dest.file_name().unwrap_or_default();
    // A directory output (oci) gets no checksum files: its blobs are named by their SHA-256
    // and index.json names the manifest by its digest.
    let is_dir = fs::symlink_metadata(&tmp).is_ok_and(|m| m.is_dir());
    // The checksums first, in the private directory, of the file under its final name.
    let mut jobs = Vec::new();
    let mut sum_files = Vec::new();
    for (on, tool) in [(sums.md5, "md5sum"), (sums.sha256, "sha256sum")] {
        if !on || is_dir {
            continue;
        }
        let ext = tool.trim_end_matches("sum");
        let mut sum_name = file.to_owned();
        sum_name.push(format!(".{ext}"));
        let out_path = dir.join(&sum_name);
        let out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&out_path)
            .map_err(|source| Error::Io {
                path: out_path.clone(),
                source,
            })?;
        let cmd = Cmd::new(tool).arg(file).current_dir(&dir);
        let child = cmd.spawn(out.into(), Stdio::piped())?;
        jobs.push((cmd, child));
        sum_files.push((out_path, dest.with_file_name(sum_name)));
    }
    for (cmd, child) in jobs {
        let done = child.wait_with_output()?;
        if !done.status.success() {
            return Err(cmd.failed(done.status, &done.stderr_str()).into());
        }
    }
    if !overwrite && fs::symlink_metadata(dest).is_ok() {
        let name = file.to_string_lossy().into_owned();
        let (stem, ext) = name.rsplit_once('.').unwrap_or((name.as_str(), ""));
        let moved = dest.with_file_name(format!("{stem}-{stamp}.{ext}"));
        tracing::info!("keeping the old {} as {}", dest.display(), moved.display());
        fs::rename(dest, &moved).map_err(|source| Error::Io {
            path: dest.to_path_buf(),
            source,
        })?;
        for s in ["md5", "sha256"] {
            let old = PathBuf::from(format!("{}.{s}", dest.display()));
            if fs::symlink_metadata(&old).is_ok() {
                let _ = fs::rename(&old, format!("{}.{s}", moved.display()));
            }
        }
    }
    // Modes from the caller's umask, set while the files are still private (a directory
    // output keeps the search bits).
    let umask = output_umask();
    for p in std::iter::once(&tmp).chain(sum_files.iter().map(|(from, _)| from)) {
        let full = if p == &tmp && is_dir { 0o777 } else { 0o666 };
        fs::set_permissions(
            p,
            std::os::unix::fs::PermissionsExt::from_mode(full & !umask),
        )
        .map_err(|source| Error::Io {
            path: p.clone(),
            source,
        })?;
    }
    // A rename cannot replace a directory, or put one over a file or symlink: what is still
    // at `dest` is moved into the private directory, removed with it.
    if let Ok(m) = fs::symlink_metadata(dest) {
        if is_dir || m.is_dir() {
            let replaced = dir.join("replaced");
            fs::rename(dest, &replaced).map_err(|source| Error::Io {
                path: dest.to_path_buf(),
                source,
            })?;
        }
    }
    fs::rename(&tmp, dest).map_err(|source| Error::Io {
        path: tmp.clone(),
        source,
    })?;
    for (from, to) in sum_files {
        fs::rename(&from, &to).map_err(|source| Error::Io { path: to, source })?;
    }
    Ok(())
}

/// The path an output of `ty` gets for image name `name`.
pub fn output_path(name: &Path, ty: OutputType) -> PathBuf {
    PathBuf::from(format!("{}.{}", name.display(), ty.extension()))
}

/// Sorts requested types into the order they must be produced, without repeats: tree outputs
/// first, then disk outputs, the ones that consume the image (raw) last; table order within.
pub fn production_order(types: &[OutputType]) -> Vec<OutputType> {
    let mut v = types.to_vec();
    v.sort_by_key(|t| (t.source(), t.format().moves_source, *t));
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> OutputType {
        OutputType::parse(s).unwrap()
    }

    #[test]
    fn every_row_has_a_name_an_extension_and_a_producer_or_a_hint() {
        let mut names = std::collections::BTreeSet::new();
        let mut extensions = std::collections::BTreeSet::new();
        for f in FORMATS {
            assert!(!f.name.is_empty() && !f.extension.is_empty(), "{f:?}");
            assert!(
                !f.extension.starts_with('.') && !f.extension.ends_with('.'),
                "{f:?}"
            );
            for n in std::iter::once(&f.name).chain(f.aliases) {
                assert!(names.insert(*n), "{n} names two rows");
            }
            assert!(extensions.insert(f.extension), "{} twice", f.extension);
            match f.support {
                Support::Yes(p) => {
                    // Only the outputs kiln writes itself run no tool.
                    let own =
                        ["docker", "oci", "oci-archive", "lxc", "incus-unified"].contains(&f.name);
                    assert_eq!(f.tools.is_empty(), own, "{}: tools", f.name);
                    if own {
                        assert!(!p.runs_tools(&Options::default()), "{}", f.name);
                    }
                    // The preflight names the package of every missing tool.
                    for t in f.tools {
                        assert!(kiln_host::tools::package_for(t).is_some(), "{t}");
                    }
                    let ty = parse(f.name);
                    assert_eq!(ty.format().name, f.name);
                    for a in f.aliases {
                        assert_eq!(parse(a), ty);
                    }
                }
                Support::No(hint) => {
                    assert!(!hint.is_empty() && !f.listed && !f.default, "{f:?}");
                }
            }
        }
        assert_eq!(FORMATS.iter().filter(|f| f.default).count(), 1);
        assert_eq!(OutputType::default_type().name(), "qcow2");
        // Only raw consumes the image.
        let movers: Vec<_> = FORMATS
            .iter()
            .filter(|f| f.moves_source)
            .map(|f| f.name)
            .collect();
        assert_eq!(movers, ["raw"]);
        // The container images are tree outputs; the pipeline adds the container element when
        // every output is one.
        let containers: Vec<_> = FORMATS
            .iter()
            .filter(|f| f.container)
            .map(|f| f.name)
            .collect();
        assert_eq!(
            containers,
            [
                "docker",
                "oci",
                "oci-archive",
                "lxc",
                "incus",
                "incus-unified"
            ]
        );
        for f in FORMATS.iter().filter(|f| f.container) {
            assert_eq!(f.source, Source::Tree, "{}", f.name);
        }
        assert!(parse("oci").is_container() && !parse("tar").is_container());
    }

    #[test]
    fn names_extensions_and_sources() {
        for (name, ext, source) in [
            ("qcow2", "qcow2", Source::Disk),
            ("raw", "raw", Source::Disk),
            ("vmdk", "vmdk", Source::Disk),
            ("vhd", "vhd", Source::Disk),
            ("vpc", "vpc", Source::Disk),
            ("vdi", "vdi", Source::Disk),
            ("qed", "qed", Source::Disk),
            ("vhdx", "vhdx", Source::Disk),
            ("tar", "tar", Source::Tree),
            ("tgz", "tgz", Source::Tree),
            ("tar.gz", "tgz", Source::Tree),
            ("squashfs", "squash", Source::Tree),
            ("squash", "squash", Source::Tree),
            ("docker", "docker.tar", Source::Tree),
            ("oci", "oci", Source::Tree),
            ("oci-archive", "oci.tar", Source::Tree),
            ("lxc", "lxc", Source::Tree),
            ("incus", "incus", Source::Tree),
            ("incus-unified", "incus.tar.gz", Source::Tree),
            ("incus-vm", "incus-vm", Source::Disk),
        ] {
            let ty = parse(name);
            assert_eq!((ty.extension(), ty.source()), (ext, source), "{name}");
            assert_eq!(ty.needs_disk(), source == Source::Disk, "{name}");
        }
        assert_eq!(
            output_path(Path::new("out/img"), parse("squashfs")),
            Path::new("out/img.squash")
        );
        assert_eq!(
            output_path(Path::new("out/img"), parse("docker")),
            Path::new("out/img.docker.tar")
        );
    }

    #[test]
    fn unknown_and_unsupported_names() {
        for bad in ["floppy", "", "QCOW2", "qcow2 ", "iso"] {
            let e = OutputType::parse(bad).unwrap_err();
            assert!(e.is_input_error());
            assert_eq!(
                e.to_string(),
                format!(
                    "unknown output type '{bad}': use one of qcow2, raw, vmdk, vhd, vdi, tar, tgz, squashfs, docker, oci, oci-archive, lxc, incus, incus-unified, incus-vm"
                )
            );
        }
        assert!(matches!(
            OutputType::parse("aci"),
            Err(Error::Unsupported { name, .. }) if name == "aci"
        ));
    }

    #[test]
    fn help_lists_the_listed_rows() {
        assert_eq!(
            types_help(),
            "qcow2 (default), raw, vmdk, vhd, vdi, tar, tgz, squashfs, docker, oci, oci-archive, lxc, incus, incus-unified, incus-vm"
        );
    }

    #[test]
    fn tools_per_type() {
        let native = Options {
            compress: true,
            qcow2_level: Some(qcow2::DEFAULT_LEVEL),
            ..Options::default()
        };
        let qemu = Options {
            qcow2_level: None,
            ..native.clone()
        };
        for (name, with_native, with_qemu) in [
            ("qcow2", &[][..], &["qemu-img"][..]),
            ("raw", &["cp"], &["cp"]),
            ("vmdk", &["qemu-img"], &["qemu-img"]),
            ("vhd", &["qemu-img"], &["qemu-img"]),
            ("vdi", &["qemu-img"], &["qemu-img"]),
            ("tar", &["tar"], &["tar"]),
            ("tgz", &["tar"], &["tar"]),
            ("squashfs", &["mksquashfs"], &["mksquashfs"]),
            ("docker", &[], &[]),
            ("oci", &[], &[]),
            ("oci-archive", &[], &[]),
            ("lxc", &[], &[]),
            ("incus", &["mksquashfs"], &["mksquashfs"]),
            ("incus-unified", &[], &[]),
            ("incus-vm", &[], &["qemu-img"]),
        ] {
            assert_eq!(tools_for(parse(name), &native), with_native, "{name}");
            assert_eq!(tools_for(parse(name), &qemu), with_qemu, "{name}");
        }
        // Options kiln's writer does not implement hand qcow2 back to qemu-img.
        let zstd = Options {
            qemu_img_options: Some("compression_type=zstd".into()),
            ..native
        };
        assert_eq!(tools_for(parse("qcow2"), &zstd), ["qemu-img"]);
    }

    #[test]
    fn production_order_trees_first_raw_last() {
        let t: Vec<_> = [
            "raw", "qcow2", "oci", "squashfs", "vmdk", "tar", "tgz", "tar", "tar.gz", "docker",
        ]
        .iter()
        .map(|s| parse(s))
        .collect();
        let names: Vec<_> = production_order(&t)
            .into_iter()
            .map(OutputType::name)
            .collect();
        assert_eq!(
            names,
            ["tar", "tgz", "squashfs", "docker", "oci", "qcow2", "vmdk", "raw"]
        );
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
        fs::write(prepare_pending(&dest).unwrap(), b"new").unwrap();
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
        fs::write(prepare_pending(&dest).unwrap(), b"newer").unwrap();
        finish(&dest, true, Checksums::default(), "x").unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"newer");
        assert!(!d.path().join(".img.qcow2.kiln-new").exists());
    }

    /// Files outside the output directory that planted symlinks point at.
    fn victims(d: &Path) -> Vec<PathBuf> {
        let outside = d.join("outside");
        fs::create_dir_all(&outside).unwrap();
        ["image", "md5", "sha256", "pending"]
            .iter()
            .map(|n| {
                let v = outside.join(n);
                fs::write(&v, format!("victim {n}")).unwrap();
                v
            })
            .collect()
    }

    fn assert_untouched(victims: &[PathBuf]) {
        for v in victims {
            let n = v.file_name().unwrap().to_string_lossy();
            assert_eq!(
                fs::read_to_string(v).unwrap(),
                format!("victim {n}"),
                "{} was written through a planted symlink",
                v.display()
            );
        }
    }

    #[test]
    fn planted_symlinks_at_the_output_paths_are_never_followed() {
        use std::os::unix::fs::{symlink, PermissionsExt as _};
        for overwrite in [true, false] {
            let d = tempfile::tempdir().unwrap();
            let v = victims(d.path());
            let out = d.path().join("out");
            fs::create_dir_all(&out).unwrap();
            let disk = crate::testutil::sparse_disk(d.path());
            let want = fs::read(&disk).unwrap();
            let dest = out.join("img.raw");
            symlink(&v[0], &dest).unwrap();
            symlink(&v[1], out.join("img.raw.md5")).unwrap();
            symlink(&v[2], out.join("img.raw.sha256")).unwrap();
            // The old fixed pending name and the private directory's name, planted too.
            symlink(&v[3], out.join("img.raw-new")).unwrap();
            symlink(d.path().join("outside"), out.join(".img.raw.kiln-new")).unwrap();
            produce(
                OutputType::parse("raw").unwrap(),
                &disk,
                &dest,
                &Options::default(),
            )
            .unwrap();
            let private = fs::symlink_metadata(out.join(".img.raw.kiln-new")).unwrap();
            assert!(private.is_dir());
            assert_eq!(private.permissions().mode() & 0o777, 0o700);
            finish(
                &dest,
                overwrite,
                Checksums {
                    md5: true,
                    sha256: true,
                },
                "stamp",
            )
            .unwrap();
            assert_untouched(&v);
            let m = fs::symlink_metadata(&dest).unwrap();
            assert!(m.is_file(), "{overwrite}: the output is not a regular file");
            assert_eq!(fs::read(&dest).unwrap(), want);
            for s in ["md5", "sha256"] {
                let p = out.join(format!("img.raw.{s}"));
                assert!(fs::symlink_metadata(&p).unwrap().is_file());
                assert!(fs::read_to_string(&p).unwrap().ends_with("  img.raw\n"));
            }
            // The outside directory the private name pointed at kept only its own files.
            assert_eq!(fs::read_dir(d.path().join("outside")).unwrap().count(), 4);
            assert!(!out.join(".img.raw.kiln-new").exists());
            if !overwrite {
                // The planted link was moved aside as the "old image", not followed.
                let old = fs::symlink_metadata(out.join("img-stamp.raw")).unwrap();
                assert!(old.file_type().is_symlink());
            }
        }
    }

    #[test]
    fn a_failed_producer_leaves_no_pending_directory() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("img.tar");
        let missing = d.path().join("no-such-tree");
        assert!(produce(
            OutputType::parse("tar").unwrap(),
            &missing,
            &dest,
            &Options::default()
        )
        .is_err());
        assert!(!d.path().join(".img.tar.kiln-new").exists());
        assert!(!dest.exists());
    }
}
