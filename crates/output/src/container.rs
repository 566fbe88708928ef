//! What the container outputs (`docker`, `oci`, `oci-archive`) share: the one layer made from
//! the finished tree, its image config, and the image's name and tag.
//!
//! kiln writes the layer itself with the `tar` crate, so no container daemon or `docker`
//! binary is needed. The walk is sorted by name and deterministic: names without a `./`
//! prefix and no `.` entry, directories ending in `/`, numeric owners (empty user and group
//! names), permission bits, ustar headers (GNU long-name records for names over 100 bytes),
//! mtimes clamped to `SOURCE_DATE_EPOCH` when it is set, no atime or ctime, symlinks, hard
//! links as link entries to the first path met, device nodes and fifos (outside `/dev`), and
//! extended attributes (file capabilities included) as PAX `SCHILY.xattr.*` records, written
//! only for files that have some. `/proc`, `/sys` and `/dev` are kept as empty directories,
//! kiln's `/tmp/in_target.d` is left out, sockets are skipped. A name starting with `.wh.` is
//! refused: layered images read it as a deletion (a whiteout).
//!
//! The layer is streamed: the uncompressed bytes are hashed as they are written (the config's
//! `diff_id`), and, for OCI, gzip-compressed on every core ([`crate::gzip`], no name, mtime 0,
//! level [`GZIP_LEVEL`]) and hashed again (the blob's digest). The same tree and epoch give the
//! same bytes and digests, whatever the number of cores.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::{Error, Options, Result};

/// The `PATH` of the image's config.
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The gzip level of the OCI layer and of Incus's unified tarball: 6, gzip's default, as the
/// container tools write their layers.
pub const GZIP_LEVEL: u32 = 6;

/// Directories kept in the layer without their contents.
const EMPTIED: &[&str] = &["proc", "sys", "dev"];
/// Paths left out of the layer altogether.
const LEFT_OUT: &[&str] = &["tmp/in_target.d"];

/// A writer that hashes and counts what passes through it.
pub(crate) struct HashWriter<W> {
    inner: W,
    sha: Sha256,
    len: u64,
}

impl<W: Write> HashWriter<W> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            sha: Sha256::new(),
            len: 0,
        }
    }

    /// The inner writer, the `sha256:…` digest and the byte count of what was written.
    pub(crate) fn finish(self) -> (W, Digest) {
        let digest = Digest {
            hex: hex::encode(self.sha.finalize()),
            size: self.len,
        };
        (self.inner, digest)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The SHA-256 and size of some bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// Lower-case hex of the SHA-256.
    pub hex: String,
    /// Byte count.
    pub size: u64,
}

impl Digest {
    /// Of bytes in memory.
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            hex: hex::encode(Sha256::digest(bytes)),
            size: bytes.len() as u64,
        }
    }

    /// `sha256:<hex>`.
    pub fn oci(&self) -> String {
        format!("sha256:{}", self.hex)
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the layer of the tree `root` to `out` (an uncompressed tar) and returns `out` with
/// the layer's digest and size (its `diff_id`). `what` names the file being written, for
/// errors.
pub fn write_layer<W: Write>(
    root: &Path,
    out: W,
    opts: &Options,
    what: &Path,
) -> Result<(W, Digest)> {
    let mut b = tar::Builder::new(HashWriter::new(out));
    write_tree(&mut b, root, opts, what, &TreeStyle::layer())?;
    let hw = b.into_inner().map_err(io_at(what))?;
    Ok(hw.finish())
}

/// How [`write_tree`] names the tree's entries and what it keeps: the container layer's way
/// ([`TreeStyle::layer`]), or with a prefix and substituted files (the LXC root filesystem,
/// Incus's unified tarball).
#[derive(Debug, Clone, Default)]
pub(crate) struct TreeStyle {
    /// Put before every name (`./`, `rootfs/`); when set, the root directory gets an entry
    /// of its own named by it. Empty: names as the container layers have them.
    pub prefix: &'static str,
    /// Directories kept without their contents.
    pub emptied: &'static [&'static str],
    /// Regular files (paths relative to the tree) written with these contents instead of
    /// theirs; the tree itself is not changed.
    pub replace: std::collections::BTreeMap<PathBuf, Vec<u8>>,
}

impl TreeStyle {
    /// The container layer: no prefix, `/proc`, `/sys` and `/dev` without contents.
    pub(crate) fn layer() -> Self {
        Self {
            prefix: "",
            emptied: EMPTIED,
            replace: std::collections::BTreeMap::new(),
        }
    }
}

/// Appends the entries of the tree `root` to `b` in `style`, sorted by name, and returns the
/// device nodes it wrote (paths relative to the tree). `what` names the file being written,
/// for errors.
pub(crate) fn write_tree<W: Write>(
    b: &mut tar::Builder<W>,
    root: &Path,
    opts: &Options,
    what: &Path,
    style: &TreeStyle,
) -> Result<Vec<PathBuf>> {
    let mut walk = Walk {
        epoch: opts.source_date_epoch,
        links: HashMap::new(),
        what,
        style,
        devices: Vec::new(),
    };
    if !style.prefix.is_empty() {
        let meta = fs::symlink_metadata(root).map_err(io_at(root))?;
        walk.entry(b, root, Path::new(""), &meta)?;
    }
    walk.dir(b, root, Path::new(""))?;
    Ok(walk.devices)
}

struct Walk<'a> {
    epoch: Option<u64>,
    /// (device, inode) of files with more than one link → the first path written.
    links: HashMap<(u64, u64), PathBuf>,
    what: &'a Path,
    style: &'a TreeStyle,
    /// Device nodes written, relative to the tree.
    devices: Vec<PathBuf>,
}

impl Walk<'_> {
    /// Writes the entries of directory `dir` (`rel` inside the tree), sorted by name.
    fn dir<W: Write>(&mut self, b: &mut tar::Builder<W>, dir: &Path, rel: &Path) -> Result<()> {
        let mut names = fs::read_dir(dir)
            .map_err(io_at(dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<Vec<_>>>()
            .map_err(io_at(dir))?;
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let rel = rel.join(&name);
            if LEFT_OUT.iter().any(|p| rel == Path::new(p)) {
                continue;
            }
            if name.as_encoded_bytes().starts_with(b".wh.") {
                return Err(Error::Whiteout(path));
            }
            let meta = fs::symlink_metadata(&path).map_err(io_at(&path))?;
            let ft = meta.file_type();
            if ft.is_socket() {
                continue;
            }
            self.entry(b, &path, &rel, &meta)?;
            if ft.is_dir() && !self.style.emptied.iter().any(|p| rel == Path::new(p)) {
                self.dir(b, &path, &rel)?;
            }
        }
        Ok(())
    }

    /// The name of `rel` in the archive with the style's prefix (the root is the prefix).
    fn prefixed(&self, rel: &Path) -> Vec<u8> {
        let mut n = self.style.prefix.as_bytes().to_vec();
        n.extend_from_slice(rel.as_os_str().as_encoded_bytes());
        n
    }

    /// Appends one entry named `rel` (with `link` as its link target): through the `tar`
    /// crate's own naming without a prefix (which drops a leading `./`), else with the names
    /// written as they are.
    fn put<W: Write>(
        &self,
        b: &mut tar::Builder<W>,
        h: &mut tar::Header,
        rel: &Path,
        dir: bool,
        link: Option<&Path>,
        data: impl io::Read,
    ) -> io::Result<()> {
        if self.style.prefix.is_empty() {
            return match (dir, link) {
                (true, _) => {
                    // Directories end in '/', as GNU tar writes them.
                    let mut name = rel.as_os_str().to_owned();
                    name.push("/");
                    b.append_data(h, name, data)
                }
                (false, Some(target)) => b.append_link(h, rel, target),
                (false, None) => b.append_data(h, rel, data),
            };
        }
        let mut name = self.prefixed(rel);
        if dir && !name.ends_with(b"/") {
            name.push(b'/');
        }
        let link = link.map(|t| {
            if h.entry_type() == tar::EntryType::Link {
                self.prefixed(t)
            } else {
                t.as_os_str().as_encoded_bytes().to_vec()
            }
        });
        append_named(b, h, &name, link.as_deref(), data)
    }

    /// Writes one entry (and its PAX xattr records first, if it has any).
    fn entry<W: Write>(
        &mut self,
        b: &mut tar::Builder<W>,
        path: &Path,
        rel: &Path,
        meta: &fs::Metadata,
    ) -> Result<()> {
        let ft = meta.file_type();
        let err = io_at(path);
        let mut h = tar::Header::new_ustar();
        h.set_mode(meta.mode() & 0o7777);
        h.set_uid(u64::from(meta.uid()));
        h.set_gid(u64::from(meta.gid()));
        let mtime = u64::try_from(meta.mtime()).unwrap_or(0);
        h.set_mtime(self.epoch.map_or(mtime, |e| mtime.min(e)));
        h.set_size(0);
        // A second name of a file already written is a link entry to the first.
        if !ft.is_dir() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key) {
                let first = first.clone();
                h.set_entry_type(tar::EntryType::Link);
                return self
                    .put(b, &mut h, rel, false, Some(&first), io::empty())
                    .map_err(err);
            }
            self.links.insert(key, rel.to_path_buf());
        }
        self.xattrs(b, path)?;
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            self.put(b, &mut h, rel, true, None, io::empty())
                .map_err(err)
        } else if ft.is_symlink() {
            let target = fs::read_link(path).map_err(io_at(path))?;
            h.set_entry_type(tar::EntryType::Symlink);
            self.put(b, &mut h, rel, false, Some(&target), io::empty())
                .map_err(err)
        } else if ft.is_file() {
            h.set_entry_type(tar::EntryType::Regular);
            if let Some(bytes) = self.style.replace.get(rel) {
                h.set_size(bytes.len() as u64);
                return self
                    .put(b, &mut h, rel, false, None, bytes.as_slice())
                    .map_err(io_at(path));
            }
            let f = fs::File::open(path).map_err(io_at(path))?;
            h.set_size(meta.len());
            let mut counted = CountingReader { inner: f, len: 0 };
            self.put(b, &mut h, rel, false, None, &mut counted)
                .map_err(io_at(path))?;
            if counted.len != meta.len() {
                return Err(Error::Io {
                    path: path.to_path_buf(),
                    source: io::Error::other("the file changed size while it was archived"),
                });
            }
            Ok(())
        } else {
            let kind = if ft.is_fifo() {
                tar::EntryType::Fifo
            } else if ft.is_char_device() {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            };
            h.set_entry_type(kind);
            if kind != tar::EntryType::Fifo {
                let rdev = meta.rdev();
                h.set_device_major(nix::sys::stat::major(rdev) as u32)
                    .map_err(io_at(path))?;
                h.set_device_minor(nix::sys::stat::minor(rdev) as u32)
                    .map_err(io_at(path))?;
                self.devices.push(rel.to_path_buf());
            }
            self.put(b, &mut h, rel, false, None, io::empty())
                .map_err(err)
        }
    }

    /// Writes a PAX header of `SCHILY.xattr.*` records for `path`'s extended attributes,
    /// sorted by name, if it has any (a filesystem without xattrs has none).
    fn xattrs<W: Write>(&self, b: &mut tar::Builder<W>, path: &Path) -> Result<()> {
        let names = match xattr::list(path) {
            Ok(names) => names,
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EOPNOTSUPP as i32) => {
                return Ok(());
            }
            Err(e) => return Err(io_at(path)(e)),
        };
        let mut names: Vec<_> = names.collect();
        names.sort();
        let mut records = Vec::new();
        for name in names {
            let Some(value) = xattr::get(path, &name).map_err(io_at(path))? else {
                continue;
            };
            let key = format!("SCHILY.xattr.{}", name.to_string_lossy());
            records.extend(pax_record(&key, &value));
        }
        if records.is_empty() {
            return Ok(());
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_mode(0o644);
        h.set_size(records.len() as u64);
        h.set_mtime(self.epoch.unwrap_or(0));
        b.append_data(&mut h, "PaxHeader", records.as_slice())
            .map_err(io_at(self.what))?;
        Ok(())
    }
}

/// Appends an entry whose name (and link target) are written byte for byte, as the `tar`
/// crate's path handling would drop a leading `./`: names and targets over 100 bytes get a
/// GNU long-name (long-link) record first, as GNU tar and the `tar` crate write them.
fn append_named<W: Write>(
    b: &mut tar::Builder<W>,
    h: &mut tar::Header,
    name: &[u8],
    link: Option<&[u8]>,
    data: impl io::Read,
) -> io::Result<()> {
    if name.len() > 100 {
        long_record(b, tar::EntryType::GNULongName, name)?;
    }
    if let Some(l) = link.filter(|l| l.len() > 100) {
        long_record(b, tar::EntryType::GNULongLink, l)?;
    }
    let old = h.as_old_mut();
    old.name = [0; 100];
    let n = name.len().min(100);
    old.name[..n].copy_from_slice(&name[..n]);
    if let Some(l) = link {
        old.linkname = [0; 100];
        let n = l.len().min(100);
        old.linkname[..n].copy_from_slice(&l[..n]);
    }
    h.set_cksum();
    b.append(h, data)
}

/// A GNU `././@LongLink` record holding `bytes` (NUL-terminated).
fn long_record<W: Write>(
    b: &mut tar::Builder<W>,
    kind: tar::EntryType,
    bytes: &[u8],
) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    let tag = b"././@LongLink";
    h.as_old_mut().name[..tag.len()].copy_from_slice(tag);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(bytes.len() as u64 + 1);
    h.set_entry_type(kind);
    h.set_cksum();
    b.append(&h, io::Read::chain(bytes, &[0u8][..]))
}

/// One PAX record: `LEN KEY=VALUE\n`, where LEN counts the whole record, its own digits too.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // space, '=', newline
    let mut len = rest + 1;
    while len.to_string().len() + rest != len {
        len = len.to_string().len() + rest;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

struct CountingReader<R> {
    inner: R,
    len: u64,
}

impl<R: io::Read> io::Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.len += n as u64;
        Ok(n)
    }
}

/// The Go names of a Debian architecture, as image configs spell them: `(architecture,
/// variant)`.
pub fn go_arch(debian: &str) -> (String, Option<&'static str>) {
    match debian {
        "amd64" => ("amd64".into(), None),
        "arm64" => ("arm64".into(), Some("v8")),
        "armhf" => ("arm".into(), Some("v7")),
        "armel" => ("arm".into(), Some("v5")),
        "i386" => ("386".into(), None),
        "ppc64el" => ("ppc64le".into(), None),
        "mips64el" => ("mips64le".into(), None),
        "mipsel" => ("mipsle".into(), None),
        other => (other.to_string(), None),
    }
}

/// The Debian name of the architecture kiln runs on (for options without one).
fn host_debian_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "i386",
        "arm" => "armhf",
        "powerpc64" => "ppc64el",
        other => other,
    }
}

/// An image's name: repository and tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The repository (`debian-minimal`, `registry.example:5000/team/img`).
    pub repo: String,
    /// The tag (`latest`).
    pub tag: String,
}

impl ImageRef {
    /// Parses `--docker-target REPO[:TAG]` (tag `latest` when none).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (repo, tag) = match s.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, t),
            _ => (s, "latest"),
        };
        let repo_ok = !repo.is_empty()
            && repo.split('/').all(|c| !c.is_empty())
            && repo
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-/:".contains(&c));
        if !repo_ok {
            return Err(format!(
                "'{s}' is not a REPO:TAG image name: the repository must be lower-case letters, digits, '.', '_', '-' and '/'"
            ));
        }
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c));
        if !tag_ok {
            return Err(format!(
                "'{s}' has a bad tag '{tag}': use up to 128 letters, digits, '.', '_' and '-', not starting with '.' or '-'"
            ));
        }
        Ok(Self {
            repo: repo.into(),
            tag: tag.into(),
        })
    }

    /// The name an output at `dest` gets: `--docker-target` if given, else the image name
    /// (the file name without its extension, lower-cased, other characters as `-`; `image`
    /// if nothing is left) and `latest`.
    pub fn for_output(dest: &Path, opts: &Options) -> Result<Self> {
        if let Some(t) = &opts.docker_target {
            return Self::parse(t).map_err(Error::BadImageName);
        }
        let file = dest.file_name().unwrap_or_default().to_string_lossy();
        let stem = [".docker.tar", ".oci.tar", ".oci"]
            .iter()
            .find_map(|ext| file.strip_suffix(ext))
            .unwrap_or(&file);
        let repo: String = stem
            .chars()
            .map(|c| {
                let c = c.to_ascii_lowercase();
                if c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let repo = repo.trim_matches(|c| "._-".contains(c)).to_string();
        Ok(Self {
            repo: if repo.is_empty() {
                "image".into()
            } else {
                repo
            },
            tag: "latest".into(),
        })
    }

    /// `REPO:TAG`.
    pub fn full(&self) -> String {
        format!("{}:{}", self.repo, self.tag)
    }
}

/// The image config (OCI `application/vnd.oci.image.config.v1+json`, the same JSON docker
/// archives carry).
#[derive(Debug, Serialize)]
pub struct ImageConfig {
    created: String,
    architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'static str>,
    os: &'static str,
    config: RunConfig,
    rootfs: RootFs,
    history: Vec<History>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    env: Vec<String>,
    cmd: Vec<String>,
}

#[derive(Debug, Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

#[derive(Debug, Serialize)]
struct History {
    created: String,
    created_by: String,
}

/// The image's creation time, RFC 3339: `SOURCE_DATE_EPOCH` when set, else now.
pub fn created(opts: &Options) -> String {
    let t = opts
        .source_date_epoch
        .map_or_else(std::time::SystemTime::now, |s| {
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(s)
        });
    humantime::format_rfc3339_seconds(t).to_string()
}

impl ImageConfig {
    /// The config of a one-layer image of tree `root` whose layer has `diff_id`.
    pub fn new(root: &Path, diff_id: &Digest, opts: &Options) -> Self {
        let debian = opts.arch.as_deref().unwrap_or_else(|| host_debian_arch());
        let (architecture, variant) = go_arch(debian);
        let shell = if ["bin/bash", "usr/bin/bash"]
            .iter()
            .any(|p| fs::symlink_metadata(root.join(p)).is_ok())
        {
            "/bin/bash"
        } else {
            "/bin/sh"
        };
        let created = created(opts);
        Self {
            created: created.clone(),
            architecture,
            variant,
            os: "linux",
            config: RunConfig {
                env: vec![PATH_ENV.into()],
                cmd: vec![shell.into()],
            },
            rootfs: RootFs {
                kind: "layers",
                diff_ids: vec![diff_id.oci()],
            },
            history: vec![History {
                created,
                created_by: format!("kiln {}", env!("CARGO_PKG_VERSION")),
            }],
        }
    }

    /// The architecture, Go-named.
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// The ARM variant, if any.
    pub fn variant(&self) -> Option<&'static str> {
        self.variant
    }

    /// The JSON bytes (the config blob).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Writes `bytes` to a new file `path` (mode 0644).
pub(crate) fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).map_err(io_at(path))
}

/// A tar of files written by kiln (the docker archive, the OCI archive): entries with fixed
/// owners (0), modes and mtime (`SOURCE_DATE_EPOCH`, else 0).
pub(crate) struct Archive<W: Write> {
    b: tar::Builder<W>,
    mtime: u64,
    what: PathBuf,
}

impl<W: Write> Archive<W> {
    /// Starts an archive written to `out`; `what` names the file for errors.
    pub(crate) fn new(out: W, opts: &Options, what: &Path) -> Self {
        Self {
            b: tar::Builder::new(out),
            mtime: opts.source_date_epoch.unwrap_or(0),
            what: what.to_path_buf(),
        }
    }

    fn header(&self, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(self.mtime);
        h.set_size(size);
        h
    }

    /// A directory entry.
    pub(crate) fn dir(&mut self, name: &str) -> Result<()> {
        let mut h = self.header(tar::EntryType::Directory, 0o755, 0);
        self.b
            .append_data(&mut h, name, io::empty())
            .map_err(io_at(&self.what))
    }

    /// A file entry from bytes.
    pub(crate) fn bytes(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let mut h = self.header(tar::EntryType::Regular, 0o644, data.len() as u64);
        self.b
            .append_data(&mut h, name, data)
            .map_err(io_at(&self.what))
    }

    /// A file entry copied from the file `src`.
    pub(crate) fn file(&mut self, name: &str, src: &Path) -> Result<()> {
        let f = fs::File::open(src).map_err(io_at(src))?;
        let len = f.metadata().map_err(io_at(src))?.len();
        let mut h = self.header(tar::EntryType::Regular, 0o644, len);
        self.b.append_data(&mut h, name, f).map_err(io_at(src))
    }

    /// The tar builder, to append a tree after kiln's own files ([`write_tree`]).
    pub(crate) fn builder(&mut self) -> &mut tar::Builder<W> {
        &mut self.b
    }

    /// Ends the archive and returns the writer.
    pub(crate) fn finish(self) -> Result<W> {
        self.b.into_inner().map_err(io_at(&self.what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{read_layer, small_tree, CAPABILITY};
    use tar::EntryType as T;

    const EPOCH: u64 = 1_000_000;

    fn opts() -> Options {
        Options {
            source_date_epoch: Some(EPOCH),
            arch: Some("amd64".into()),
            ..Options::default()
        }
    }

    #[test]
    fn the_layer_reads_back_strictly_entry_by_entry() {
        let d = tempfile::tempdir().unwrap();
        let root = small_tree(d.path());
        let (bytes, digest) = write_layer(&root, Vec::new(), &opts(), &root).unwrap();
        assert_eq!(digest, Digest::of(&bytes));
        let entries = read_layer(&bytes);
        let got: Vec<_> = entries
            .iter()
            .map(|e| (e.path.as_str(), e.kind, e.mode, e.link.as_deref(), e.size))
            .collect();
        assert_eq!(
            got,
            [
                ("dev/", T::Directory, 0o755, None, 0),
                ("etc/", T::Directory, 0o755, None, 0),
                ("etc/hostname", T::Regular, 0o644, None, 5),
                ("proc/", T::Directory, 0o755, None, 0),
                ("sys/", T::Directory, 0o755, None, 0),
                ("tmp/", T::Directory, 0o755, None, 0),
                ("usr/", T::Directory, 0o755, None, 0),
                ("usr/bin/", T::Directory, 0o755, None, 0),
                ("usr/bin/alias", T::Symlink, 0o777, Some("tool"), 0),
                ("usr/bin/tool", T::Regular, 0o4755, None, 100_000),
                ("usr/bin/tool2", T::Link, 0o4755, Some("usr/bin/tool"), 0),
                ("var/", T::Directory, 0o755, None, 0),
                ("var/empty/", T::Directory, 0o755, None, 0),
                ("var/fifo", T::Fifo, 0o600, None, 0),
            ]
        );
        let meta = fs::metadata(root.join("etc/hostname")).unwrap();
        for e in &entries {
            assert_eq!(
                (e.uid, e.gid),
                (u64::from(meta.uid()), u64::from(meta.gid()))
            );
            // Every file here is newer than the epoch: all clamped.
            assert_eq!(e.mtime, EPOCH, "{}", e.path);
        }
        // PAX records only where there are xattrs, and only xattr records.
        let tool = root.join("usr/bin/tool");
        let want: Vec<(String, Vec<u8>)> = [
            (
                "security.capability",
                xattr::get(&tool, "security.capability").unwrap(),
            ),
            ("user.kiln", xattr::get(&tool, "user.kiln").unwrap()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (format!("SCHILY.xattr.{k}"), v)))
        .collect();
        if nix::unistd::geteuid().is_root() {
            // As root the capability can be set (CI runs as root): it must travel.
            assert!(want.contains(&(
                "SCHILY.xattr.security.capability".into(),
                CAPABILITY.to_vec()
            )));
        }
        for e in &entries {
            let expected = if e.path == "usr/bin/tool" {
                &want[..]
            } else {
                &[]
            };
            assert_eq!(e.pax, expected, "{}", e.path);
        }
    }

    #[test]
    fn the_mtimes_are_kept_without_an_epoch_and_clamped_with_one() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("r");
        fs::create_dir_all(&root).unwrap();
        let old = root.join("old");
        fs::write(&old, b"x").unwrap();
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(500);
        fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(t)
            .unwrap();
        let mut o = opts();
        let (bytes, _) = write_layer(&root, Vec::new(), &o, &root).unwrap();
        assert_eq!(
            read_layer(&bytes)[0].mtime,
            500,
            "older than the epoch: kept"
        );
        o.source_date_epoch = Some(100);
        let (bytes, _) = write_layer(&root, Vec::new(), &o, &root).unwrap();
        assert_eq!(read_layer(&bytes)[0].mtime, 100);
        o.source_date_epoch = None;
        let (bytes, _) = write_layer(&root, Vec::new(), &o, &root).unwrap();
        assert_eq!(read_layer(&bytes)[0].mtime, 500);
    }

    #[test]
    fn a_whiteout_name_is_refused_with_its_path() {
        let d = tempfile::tempdir().unwrap();
        let root = small_tree(d.path());
        fs::write(root.join("etc/.wh.passwd"), b"").unwrap();
        let e = write_layer(&root, Vec::new(), &opts(), &root).unwrap_err();
        assert!(
            matches!(&e, Error::Whiteout(p) if p == &root.join("etc/.wh.passwd")),
            "{e}"
        );
        assert!(e.to_string().contains("whiteout"), "{e}");
    }

    #[test]
    fn sockets_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        let root = small_tree(d.path());
        let _sock = std::os::unix::net::UnixListener::bind(root.join("var/sock")).unwrap();
        let (bytes, _) = write_layer(&root, Vec::new(), &opts(), &root).unwrap();
        assert!(read_layer(&bytes).iter().all(|e| e.path != "var/sock"));
    }

    #[test]
    fn go_architecture_names() {
        for (deb, arch, variant) in [
            ("amd64", "amd64", None),
            ("arm64", "arm64", Some("v8")),
            ("armhf", "arm", Some("v7")),
            ("armel", "arm", Some("v5")),
            ("i386", "386", None),
            ("ppc64el", "ppc64le", None),
            ("s390x", "s390x", None),
            ("riscv64", "riscv64", None),
        ] {
            assert_eq!(go_arch(deb), (arch.to_string(), variant), "{deb}");
        }
    }

    #[test]
    fn image_names() {
        let r = ImageRef::parse("example.org:5000/team/img:v1.2").unwrap();
        assert_eq!(
            (r.repo.as_str(), r.tag.as_str()),
            ("example.org:5000/team/img", "v1.2")
        );
        let r = ImageRef::parse("example.org:5000/img").unwrap();
        assert_eq!(
            (r.repo.as_str(), r.tag.as_str()),
            ("example.org:5000/img", "latest")
        );
        for bad in ["", "Img:1", "img:", "img:-x", "a//b:1", "img:a/b c"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
        let o = Options::default();
        for (file, want) in [
            ("out/Debian Min.docker.tar", "debian-min:latest"),
            ("out/deb-12.5.oci", "deb-12.5:latest"),
            ("out/x.oci.tar", "x:latest"),
            ("out/___.oci", "image:latest"),
        ] {
            assert_eq!(
                ImageRef::for_output(Path::new(file), &o).unwrap().full(),
                want
            );
        }
        let o = Options {
            docker_target: Some("Bad:tag".into()),
            ..Options::default()
        };
        let e = ImageRef::for_output(Path::new("x.oci"), &o).unwrap_err();
        assert!(e.is_input_error(), "{e}");
    }

    #[test]
    fn the_config_names_the_architecture_the_shell_and_the_epoch() {
        let d = tempfile::tempdir().unwrap();
        let root = small_tree(d.path());
        let diff = Digest::of(b"layer");
        let o = Options {
            arch: Some("arm64".into()),
            ..opts()
        };
        let v: serde_json::Value =
            serde_json::from_slice(&ImageConfig::new(&root, &diff, &o).to_bytes()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "created": "1970-01-12T13:46:40Z",
                "architecture": "arm64",
                "variant": "v8",
                "os": "linux",
                "config": {"Env": [PATH_ENV], "Cmd": ["/bin/sh"]},
                "rootfs": {"type": "layers", "diff_ids": [diff.oci()]},
                "history": [{
                    "created": "1970-01-12T13:46:40Z",
                    "created_by": format!("kiln {}", env!("CARGO_PKG_VERSION")),
                }],
            })
        );
        fs::write(root.join("usr/bin/bash"), b"").unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&ImageConfig::new(&root, &diff, &opts()).to_bytes()).unwrap();
        assert_eq!(v["config"]["Cmd"], serde_json::json!(["/bin/bash"]));
        assert_eq!(v["architecture"], "amd64");
        assert!(v.get("variant").is_none());
    }
}
