//! kiln-cache: the content-addressed phase cache and the output cache.
//!
//! This crate stores and restores layers, computes keys from [`Inputs`], indexes and diffs trees,
//! and lists and trims the cache. It never touches the network: what a key needs from outside
//! (the digests of the suites' `InRelease` files, of the variables and of host files) is
//! computed by the pipeline and passed in as a value.
//!
//! After each phase that changes the root filesystem (root, extra-data, pre-install, install,
//! the `-p` packages, post-install, post-root) the change it made is kept as a *layer* under a
//! key that hashes everything the phase depends on: the parent layer's key, the phase name, the
//! hook tree it can see (every file of the merged tree except other phases' hook directories:
//! names, modes, contents, link targets), the digests of the variables hooks can read (never their
//! values), the digests of the host files hooks read, the architecture, the digest of every apt
//! suite's `InRelease` file (unless offline) and kiln's identity (version and binary digest). A
//! build whose leading phases are unchanged restores the chain of layers and starts after it.
//!
//! A layer is a tar of the entries that changed (by ctime, size, mode, owner, inode) plus the
//! list of paths that disappeared, taken from a non-recursive bind mount of the tree, so mounts
//! made by hooks or the engine are never captured and the directories under them are. Measured
//! here: a cold debian-minimal build writes about 1.1 GB of layers in about 4 s, and restoring
//! the whole chain into tmpfs takes about 3 s (overlayfs would make the restore free, but the
//! tree is copied into the image anyway, and overlay's copy-up and rename rules would be visible
//! to hooks; tar layers are invisible to them).
//!
//! Generated identities (SSH host keys, seeds, the machine id, the iSCSI initiator name) never
//! enter a layer: [`identity`] holds their table, and a layer's meta records which of them the
//! tree held, so a build that restores it can make new ones.
//!
//! Outputs are cached too: an identical request copies its cached outputs.
//!
//! The cache defends itself (see [`guard`]): its directory must be private to the user
//! building; each layer records the SHA-256 of its files when stored and is checked before it
//! is restored (a corrupted or truncated layer is discarded and its phase rebuilt); builds hold
//! a shared lock and trimming an exclusive one; and trimming skips and reports what it does not
//! recognise.

pub mod guard;
pub mod space;

pub use guard::{secure_root, ExclusiveLock, SharedLock};

pub mod identity;

use kiln_host::Cmd;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What can go wrong storing, restoring or copying cache entries.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A layer's list of deleted paths holds a path that is not a plain relative path
    /// inside the tree (absolute, `..`, `.` or empty components).
    #[error("{}: entry {entry:?} is not a relative path inside the image ({reason}); the layer is damaged or was not written by kiln: remove the cache directory that holds it and build again", path.display())]
    BadLayerPath {
        /// The list of deleted paths.
        path: PathBuf,
        /// The entry as stored.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A tool (tar, cp) failed.
    #[error("{step} failed: {message}")]
    Step {
        /// What was being done (`snapshot layer`, `restore layer`, `copy`, …).
        step: String,
        /// What went wrong.
        message: String,
    },
    /// The cache directory is not safe to run hooks from.
    #[error(
        "{path}: the cache directory is {why}, so anyone who can write it could run code in \
         your builds; kiln refuses to use it. Make it yours and private \
         (`chown \"$(id -u)\" {path} && chmod go-w {path}`) or point DIB_IMAGE_CACHE \
         (or --image-cache) at a directory of your own"
    )]
    UnsafeCacheDir {
        /// The cache directory.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The cache's filesystem is full: the entry being stored was removed, the rest is intact.
    #[error(
        "{path}: no space left for the cache ({fs}) while {what}; the unfinished entry was \
         removed and the cache is intact. Free space there, lower KILN_CACHE_MAX_SIZE \
         (`kiln cache gc --max-size SIZE`), or point DIB_IMAGE_CACHE at a larger filesystem"
    )]
    NoSpace {
        /// The cache directory.
        path: PathBuf,
        /// The filesystem, as [`space::Filesystem`] describes it.
        fs: String,
        /// What was being stored.
        what: String,
    },
    /// A stored layer does not match the digests recorded when it was stored.
    #[error("{path}: {why}")]
    Corrupt {
        /// The layer's directory (or file).
        path: PathBuf,
        /// What does not match.
        why: String,
    },
}

/// `err`, or [`Error::NoSpace`] about the cache directory `dir` if it reports ENOSPC or the
/// filesystem is full. Call it while the unfinished entry still takes its space: tools do not
/// always say ENOSPC (tar piping into zstd says only "Wrote only 4096 of 10240 bytes"), but the
/// filesystem is full then, and the numbers show it.
fn with_space(err: Error, dir: &Path, what: &str) -> Error {
    let fs = space::Filesystem::of(dir);
    let full = fs.as_ref().is_some_and(space::Filesystem::is_full);
    if !full && !space::mentions_no_space(&err.to_string()) {
        return err;
    }
    Error::NoSpace {
        path: dir.to_path_buf(),
        fs: fs.map_or_else(|| "its filesystem".into(), |f| f.to_string()),
        what: what.to_string(),
    }
}

impl Error {
    /// Whether the error is the user's to fix (exit status 2) rather than a failed build.
    pub fn is_input_error(&self) -> bool {
        matches!(self, Self::UnsafeCacheDir { .. })
    }
}

/// Maps an I/O error on `path` to [`Error::Io`]; for `map_err(io(path))`.
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Everything a phase depends on; its key is the hash of this value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Inputs {
    /// The step (`root`, `install`, `packages`, …).
    pub phase: String,
    /// The parent layer's key.
    pub parent: Option<String>,
    /// Architecture.
    pub arch: String,
    /// The state of every apt suite in the image's sources: `SUITE URI` → sha256 of the suite's
    /// `InRelease` (or `Release`), `unavailable` when neither could be read. Empty when offline.
    #[serde(default)]
    pub mirror: BTreeMap<String, String>,
    /// kiln's identity: version and a digest of its binary.
    pub version: String,
    /// The variables hooks can read: name → digest of the value (never the value itself).
    pub env: BTreeMap<String, String>,
    /// Host files hooks read (named by a variable or declared in an element's `cache-inputs`):
    /// label → digest of the content (`missing` when absent).
    #[serde(default)]
    pub host_files: BTreeMap<String, String>,
    /// Files of the hook tree this phase can see: relative path → "mode:sha256" / "link:target".
    pub files: BTreeMap<String, String>,
    /// Extra inputs (the `-p` package list).
    pub extra: Vec<String>,
}

impl Inputs {
    /// The key: sha256 of the canonical JSON of the inputs.
    pub fn key(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(&json))
    }
}

/// Digest of every entry of the hook tree, keyed by relative path.
pub fn hook_tree_files(hooks: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk_hooks(hooks, hooks, &mut out);
    out
}

fn walk_hooks(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(fs::DirEntry::file_name);
    for e in entries {
        let p = e.path();
        let rel = p.strip_prefix(base).unwrap_or(&p).display().to_string();
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if m.file_type().is_symlink() {
            let t = fs::read_link(&p).unwrap_or_default();
            out.insert(rel, format!("link:{}", t.display()));
        } else if m.is_dir() {
            out.insert(rel, format!("dir:{:o}", m.permissions().mode() & 0o7777));
            walk_hooks(base, &p, out);
        } else {
            let data = fs::read(&p).unwrap_or_default();
            out.insert(
                rel,
                format!(
                    "{:o}:{}",
                    m.permissions().mode() & 0o7777,
                    hex::encode(Sha256::digest(&data))
                ),
            );
        }
    }
}

/// The files of the tree a phase can see: everything but other phases' hook directories.
pub fn visible_to(
    files: &BTreeMap<String, String>,
    phase_dir: Option<&str>,
) -> BTreeMap<String, String> {
    files
        .iter()
        .filter(|(k, _)| {
            let top = k.split('/').next().unwrap_or("");
            let is_phase_dir = kiln_element::Phase::ALL.iter().any(|p| p.dir_name() == top);
            !is_phase_dir || Some(top) == phase_dir
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Metadata of one tree entry, enough to tell that it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryMeta {
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    ino: u64,
    nlink: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    rdev: u64,
}

impl EntryMeta {
    /// KiB this entry occupies, roughly as `du` counts it (regular files only).
    pub fn kib(&self) -> u64 {
        if self.mode & 0o170_000 == 0o100_000 {
            self.size.div_ceil(4096) * 4
        } else {
            0
        }
    }
}

/// A change to record: the entries of `root` listed in `changed`, and the `deleted` paths.
pub struct Delta<'a> {
    /// The tree (a non-recursive view of it).
    pub root: &'a Path,
    /// Entries to archive.
    pub changed: &'a [PathBuf],
    /// Paths to delete before extracting.
    pub deleted: &'a [PathBuf],
}

/// An index of a tree: relative path → metadata.
pub type Index = BTreeMap<PathBuf, EntryMeta>;

/// Indexes `root` (not crossing into other filesystems).
pub fn index(root: &Path) -> Index {
    let mut out = Index::new();
    let dev = fs::symlink_metadata(root).map_or(0, |m| m.dev());
    index_dir(root, root, dev, &mut out);
    out
}

fn index_dir(root: &Path, dir: &Path, dev: u64, out: &mut Index) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if m.dev() != dev {
            continue;
        }
        let rel = p.strip_prefix(root).unwrap_or(&p).to_path_buf();
        out.insert(
            rel,
            EntryMeta {
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                size: m.size(),
                ino: m.ino(),
                nlink: m.nlink(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
                rdev: m.rdev(),
            },
        );
        if m.is_dir() {
            index_dir(root, &p, dev, out);
        }
    }
}

/// What changed between two indexes: entries to archive, and paths to delete first.
pub fn diff(prev: &Index, cur: &Index) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut changed = Vec::new();
    let mut deleted = Vec::new();
    for (p, m) in cur {
        match prev.get(p) {
            Some(old) if old == m => {}
            Some(old) if (old.mode & 0o170_000) != (m.mode & 0o170_000) => {
                deleted.push(p.clone());
                changed.push(p.clone());
            }
            _ => changed.push(p.clone()),
        }
    }
    for p in prev.keys() {
        if !cur.contains_key(p) {
            deleted.push(p.clone());
        }
    }
    (changed, deleted)
}

/// Stored description of a layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerMeta {
    /// The layer's key.
    pub key: String,
    /// Its inputs.
    pub inputs: Inputs,
    /// `du -k` of the whole tree after this phase.
    pub tree_kib: u64,
    /// Size of the stored layer in bytes.
    pub bytes: u64,
    /// When it was made (seconds since the epoch).
    pub created: u64,
    /// The generated identities ([`identity::IDENTITIES`] names) the tree held when the layer
    /// was made; none of them is in any layer.
    #[serde(default)]
    pub identities: Vec<String>,
    /// SHA-256 of each file of the layer (`layer.tar.zst`, `layer.deleted`, `hooks.…`), taken
    /// when it was stored and checked before it is restored.
    #[serde(default)]
    pub digests: BTreeMap<String, String>,
}

/// The files of a stored layer that its digests cover.
const LAYER_FILES: [&str; 4] = [
    "layer.tar.zst",
    "layer.deleted",
    "hooks.tar.zst",
    "hooks.deleted",
];

/// SHA-256 of a file, read in blocks.
pub fn file_digest(path: &Path) -> Result<String, Error> {
    let mut f = fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io(path))?;
    Ok(hex::encode(h.finalize()))
}

/// The cache directory of phase layers and outputs.
pub struct PhaseCache {
    /// `<cache root>/phases`.
    pub dir: PathBuf,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn run_tool(cmd: &Cmd, what: &str) -> Result<(), Error> {
    cmd.run().map(|_| ()).map_err(|e| Error::Step {
        step: what.to_string(),
        message: e.to_string(),
    })
}

impl PhaseCache {
    /// The phase cache under kiln's cache root.
    pub fn new(cache_root: &Path) -> Self {
        Self {
            dir: cache_root.join("phases"),
        }
    }

    fn layer_dir(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// The stored layer for `key`, if complete.
    pub fn get(&self, key: &str) -> Option<LayerMeta> {
        let text = fs::read_to_string(self.layer_dir(key).join("meta.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Every stored layer.
    pub fn all(&self) -> Vec<LayerMeta> {
        let mut v: Vec<LayerMeta> = fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let t = fs::read_to_string(e.path().join("meta.json")).ok()?;
                        serde_json::from_str(&t).ok()
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a, b| a.created.cmp(&b.created).then(a.key.cmp(&b.key)));
        v
    }

    /// Marks a layer as used now (for LRU garbage collection).
    pub fn touch(&self, key: &str) {
        let p = self.layer_dir(key).join("used");
        let _ = fs::write(p, now().to_string());
    }

    /// Records a layer: the change to the tree and the change to the hook tree that a step
    /// made, under the key of its inputs. Generated identities in the tree are left out and
    /// recorded by name in the meta ([`identity`]).
    pub fn store(
        &self,
        inputs: &Inputs,
        tree: &Delta<'_>,
        hooks: &Delta<'_>,
        tree_kib: u64,
    ) -> Result<String, Error> {
        let key = inputs.key();
        let final_dir = self.layer_dir(&key);
        match self.verify(&key) {
            Ok(Some(_)) => return Ok(key),
            Ok(None) => {}
            // A damaged copy under this key would keep the new one out: replace it.
            Err(_) => self.discard(&key)?,
        }
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempdir_in(&self.dir)
            .map_err(io(&self.dir))?;
        let (kept, _identities) = identity::strip(tree.root, tree.changed);
        let stripped = Delta {
            root: tree.root,
            changed: &kept,
            deleted: tree.deleted,
        };
        let written = (|| {
            write_delta(tmp.path(), "layer", &stripped)?;
            write_delta(tmp.path(), "hooks", hooks)?;
            let bytes = du_bytes(tmp.path());
            let mut digests = BTreeMap::new();
            for f in LAYER_FILES {
                digests.insert(f.to_string(), file_digest(&tmp.path().join(f))?);
            }
            let meta = LayerMeta {
                key: key.clone(),
                inputs: inputs.clone(),
                tree_kib,
                bytes,
                created: now(),
                identities: identity::present(tree.root),
                digests,
            };
            fs::write(
                tmp.path().join("meta.json"),
                serde_json::to_vec_pretty(&meta).unwrap_or_default(),
            )
            .map_err(io(tmp.path()))
        })();
        // On failure the temporary directory is removed when `tmp` drops, after this check.
        written.map_err(|e| {
            with_space(e, &self.dir, &format!("storing the {} layer", inputs.phase))
        })?;
        let tmp_path = tmp.keep();
        if fs::rename(&tmp_path, &final_dir).is_err() {
            // The same layer was stored meanwhile.
            let _ = fs::remove_dir_all(&tmp_path);
        }
        Ok(key)
    }

    /// Checks the stored layer `key` against the digests recorded when it was stored: `Ok(None)`
    /// when no layer is stored under the key, [`Error::Corrupt`] when one is but a file is
    /// missing, truncated or changed (or its description is unreadable).
    pub fn verify(&self, key: &str) -> Result<Option<LayerMeta>, Error> {
        let dir = self.layer_dir(key);
        if !dir.exists() {
            return Ok(None);
        }
        let corrupt = |path: PathBuf, why: &str| Error::Corrupt {
            path,
            why: why.to_string(),
        };
        let meta_path = dir.join("meta.json");
        let text = fs::read_to_string(&meta_path)
            .map_err(|e| corrupt(meta_path.clone(), &format!("unreadable ({e})")))?;
        let meta: LayerMeta = serde_json::from_str(&text)
            .map_err(|e| corrupt(meta_path.clone(), &format!("not a layer description ({e})")))?;
        if meta.key != key {
            return Err(corrupt(meta_path, "describes another layer"));
        }
        for f in LAYER_FILES {
            let path = dir.join(f);
            let Some(want) = meta.digests.get(f) else {
                return Err(corrupt(path, "no digest recorded for it"));
            };
            let got = match file_digest(&path) {
                Ok(d) => d,
                Err(Error::Io { source, .. }) => {
                    return Err(corrupt(path, &format!("unreadable ({source})")))
                }
                Err(e) => return Err(e),
            };
            if &got != want {
                return Err(corrupt(
                    path,
                    "does not match the digest recorded when it was stored (corrupted or truncated)",
                ));
            }
        }
        Ok(Some(meta))
    }

    /// Removes the layer `key` (a corrupted one, so that it can be stored again): renamed aside
    /// first, so no build ever sees half of it.
    pub fn discard(&self, key: &str) -> Result<(), Error> {
        discard_entry(&self.dir, key)
    }

    /// Restores the chain `keys` (oldest first): each layer's tree change into the empty
    /// directory `root`, and its hook-tree change onto the freshly laid out `hooks`.
    pub fn restore(&self, keys: &[String], root: &Path, hooks: &Path) -> Result<(), Error> {
        for key in keys {
            let dir = self.layer_dir(key);
            apply_delta(&dir, "layer", root)?;
            apply_delta(&dir, "hooks", hooks)?;
            self.touch(key);
        }
        Ok(())
    }

    /// Total bytes stored (layers and outputs).
    pub fn size(cache_root: &Path) -> u64 {
        du_bytes(&cache_root.join("phases")) + du_bytes(&cache_root.join("outputs"))
    }
}

/// How layers are compressed: zstd's fastest level on every core. A cold debian-minimal chain
/// shrinks from about 1.1 GB to about 0.4 GB, and restoring it costs well under a second more.
const ZSTD_WRITE: &str = "zstd -1 -T0 -q";

fn write_delta(dir: &Path, name: &str, delta: &Delta<'_>) -> Result<(), Error> {
    let list = dir.join(format!("{name}.list"));
    let mut f = fs::File::create(&list).map_err(io(&list))?;
    for p in delta.changed {
        f.write_all(p.as_os_str().as_encoded_bytes())
            .map_err(io(&list))?;
        f.write_all(b"\0").map_err(io(&list))?;
    }
    drop(f);
    run_tool(
        &Cmd::new("tar")
            .arg("--create")
            .arg("--file")
            .arg(dir.join(format!("{name}.tar.zst")))
            .arg(format!("--use-compress-program={ZSTD_WRITE}"))
            .args([
                "--null",
                "--no-recursion",
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=*",
            ])
            .arg("-C")
            .arg(delta.root)
            .arg("--files-from")
            .arg(&list),
        "snapshot layer",
    )?;
    let _ = fs::remove_file(&list);
    let del = dir.join(format!("{name}.deleted"));
    let mut f = fs::File::create(&del).map_err(io(&del))?;
    for p in delta.deleted {
        f.write_all(p.as_os_str().as_encoded_bytes())
            .map_err(io(&del))?;
        f.write_all(b"\0").map_err(io(&del))?;
    }
    Ok(())
}

/// Why a path of a layer's list cannot name an entry inside the tree, or `None`: only plain
/// relative paths (normal components, no `..` or `.`) are applied.
fn layer_path_problem(p: &Path) -> Option<&'static str> {
    use std::path::Component;
    if p.as_os_str().is_empty() {
        return Some("empty");
    }
    for c in p.components() {
        match c {
            Component::Normal(_) => {}
            Component::RootDir | Component::Prefix(_) => return Some("absolute"),
            Component::ParentDir => return Some("contains .."),
            Component::CurDir => return Some("contains ."),
        }
    }
    None
}

fn apply_delta(dir: &Path, name: &str, root: &Path) -> Result<(), Error> {
    let del_file = dir.join(format!("{name}.deleted"));
    let del = fs::read(&del_file).unwrap_or_default();
    let mut paths: Vec<&[u8]> = del.split(|b| *b == 0).filter(|p| !p.is_empty()).collect();
    // Every path is checked before any is applied: a damaged list changes nothing.
    for p in &paths {
        let rel = Path::new(std::ffi::OsStr::from_bytes_compat(p));
        if let Some(reason) = layer_path_problem(rel) {
            return Err(Error::BadLayerPath {
                path: del_file,
                entry: rel.to_string_lossy().into_owned(),
                reason,
            });
        }
    }
    paths.reverse();
    for p in paths {
        // Resolved inside the tree (the last component not followed), so a symlinked parent
        // directory in the image never leads the removal out to the host.
        let rel = Path::new(std::ffi::OsStr::from_bytes_compat(p));
        let path =
            kiln_sandbox::path::resolve_in_root_nofollow(root, rel).map_err(|e| Error::Step {
                step: "restore layer".into(),
                message: e.to_string(),
            })?;
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {
                let _ = fs::remove_dir_all(&path);
            }
            Ok(_) => {
                let _ = fs::remove_file(&path);
            }
            Err(_) => {}
        }
    }
    // Layers are zstd-compressed tars; a plain tar (an older cache) still restores.
    let zst = dir.join(format!("{name}.tar.zst"));
    let mut tar = Cmd::new("tar").arg("--extract");
    if zst.exists() {
        tar = tar
            .arg("--file")
            .arg(&zst)
            .arg("--use-compress-program=zstd -d");
    } else {
        tar = tar.arg("--file").arg(dir.join(format!("{name}.tar")));
    }
    run_tool(
        &tar.args([
            "--numeric-owner",
            "--same-permissions",
            "--same-owner",
            "--xattrs",
            "--xattrs-include=*",
        ])
        .arg("-C")
        .arg(root),
        "restore layer",
    )
}

/// Bytes used by a tree.
pub fn du_bytes(p: &Path) -> u64 {
    let Ok(m) = fs::symlink_metadata(p) else {
        return 0;
    };
    if m.is_dir() {
        fs::read_dir(p).map_or(0, |rd| rd.flatten().map(|e| du_bytes(&e.path())).sum())
    } else {
        m.blocks() * 512
    }
}

/// Byte slices as OS strings (paths in lists are raw bytes).
trait FromBytesCompat {
    fn from_bytes_compat(b: &[u8]) -> &std::ffi::OsStr;
}

impl FromBytesCompat for std::ffi::OsStr {
    fn from_bytes_compat(b: &[u8]) -> &std::ffi::OsStr {
        std::os::unix::ffi::OsStrExt::from_bytes(b)
    }
}

/// Removes the entry `key` of the cache directory `dir` (a layer or a request's outputs):
/// renamed aside to a `.tmp-` name first, so no build ever sees half of it; an entry already
/// gone is no error.
fn discard_entry(dir: &Path, key: &str) -> Result<(), Error> {
    let entry = dir.join(key);
    let aside = dir.join(format!(".tmp-discard-{key}-{}", std::process::id()));
    match fs::rename(&entry, &aside) {
        Ok(()) => fs::remove_dir_all(&aside).map_err(io(&aside)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io {
            path: entry,
            source: e,
        }),
    }
}

/// The file of an output-cache entry that records the SHA-256 of every file in it.
const OUTPUT_DIGESTS: &str = "digests.json";

/// The digest of every file under `files/` and `name.d/` of an output-cache entry, by path
/// relative to the entry; a symbolic link by its target (`link:TARGET`).
fn entry_digests(entry: &Path) -> Result<BTreeMap<String, String>, Error> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> Result<(), Error> {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(Error::Io {
                    path: dir.into(),
                    source: e,
                })
            }
        };
        for e in rd {
            let path = e.map_err(io(dir))?.path();
            let meta = fs::symlink_metadata(&path).map_err(io(&path))?;
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            if meta.is_dir() {
                walk(root, &path, out)?;
            } else if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).map_err(io(&path))?;
                out.insert(rel, format!("link:{}", target.to_string_lossy()));
            } else {
                out.insert(rel, file_digest(&path)?);
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    for sub in ["files", "name.d"] {
        walk(entry, &entry.join(sub), &mut out)?;
    }
    Ok(out)
}

/// The file of an output-cache entry that lists the outputs it makes again rather than holds.
const DERIVED: &str = "derived.json";

/// An output an entry makes again from another one it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Derived {
    /// The gzip file (under `files/`) whose content it is.
    gunzip: String,
    /// Its SHA-256, as stored.
    sha256: String,
}

/// The outputs entry `dir` makes again (none without `derived.json`).
fn derived_of(dir: &Path) -> Result<BTreeMap<String, Derived>, Error> {
    let path = dir.join(DERIVED);
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| Error::Corrupt {
            path,
            why: format!("not a list of derived outputs ({e})"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(Error::Io { path, source: e }),
    }
}

/// Writes the decompressed content of the gzip file `gz` (every member) to `dest`; returns its
/// SHA-256.
fn gunzip_to(gz: &Path, dest: &Path) -> Result<String, Error> {
    use std::io::Read as _;
    let f = fs::File::open(gz).map_err(io(gz))?;
    let mut r = flate2::read::MultiGzDecoder::new(std::io::BufReader::with_capacity(1 << 20, f));
    let file = fs::File::create(dest).map_err(io(dest))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).map_err(|e| Error::Corrupt {
            path: gz.to_path_buf(),
            why: format!("cannot be decompressed ({e})"),
        })?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io(dest))?;
    }
    out.flush().map_err(io(dest))?;
    Ok(hex::encode(h.finalize()))
}

/// The cached outputs of whole requests.
pub struct OutputCache {
    /// `<cache root>/outputs`.
    pub dir: PathBuf,
}

impl OutputCache {
    /// The output cache under kiln's cache root.
    pub fn new(cache_root: &Path) -> Self {
        Self {
            dir: cache_root.join("outputs"),
        }
    }

    /// The directory of a complete entry for `key`, unchecked (see [`OutputCache::verify`]).
    pub fn get(&self, key: &str) -> Option<PathBuf> {
        let d = self.dir.join(key);
        d.join("complete").exists().then_some(d)
    }

    /// The directory of the complete entry for `key` after checking every file in it against
    /// the digests recorded when it was stored: `Ok(None)` when there is no complete entry,
    /// [`Error::Corrupt`] when a file is missing, changed, truncated or extra, or the entry has
    /// no digests (one stored by an older kiln). A damaged output is never handed back.
    pub fn verify(&self, key: &str) -> Result<Option<PathBuf>, Error> {
        let Some(dir) = self.get(key) else {
            return Ok(None);
        };
        let corrupt = |path: PathBuf, why: String| Error::Corrupt { path, why };
        let list = dir.join(OUTPUT_DIGESTS);
        let text = fs::read_to_string(&list)
            .map_err(|e| corrupt(list.clone(), format!("no digests of the outputs ({e})")))?;
        let want: BTreeMap<String, String> = serde_json::from_str(&text)
            .map_err(|e| corrupt(list.clone(), format!("not a list of digests ({e})")))?;
        let got = entry_digests(&dir)?;
        if let Some((name, _)) = want.iter().find(|(n, d)| got.get(*n) != Some(*d)) {
            let why = if got.contains_key(name) {
                "does not match the digest recorded when it was stored (corrupted or truncated)"
            } else {
                "is missing"
            };
            return Err(corrupt(dir.join(name), why.into()));
        }
        if let Some(name) = got.keys().find(|n| !want.contains_key(*n)) {
            return Err(corrupt(
                dir.join(name),
                "was not there when the entry was stored".into(),
            ));
        }
        for (name, d) in derived_of(&dir)? {
            if !want.contains_key(&format!("files/{}", d.gunzip)) {
                return Err(corrupt(
                    dir.join(DERIVED),
                    format!(
                        "{name} is made from {}, which the entry does not hold",
                        d.gunzip
                    ),
                ));
            }
        }
        Ok(Some(dir))
    }

    /// Puts the entry's output `name` at `dest`: a copy of the stored file, or, for an output
    /// stored as the content of its gzip file ([`OutputCache::store_deriving`]), that content,
    /// checked against the digest recorded when it was stored ([`Error::Corrupt`] if it
    /// differs; `dest` is then removed).
    pub fn copy_out(&self, entry: &Path, name: &str, dest: &Path) -> Result<(), Error> {
        let stored = entry.join("files").join(name);
        if stored.exists() {
            return copy_file(&stored, dest);
        }
        let derived = derived_of(entry)?;
        let Some(d) = derived.get(name) else {
            return Err(Error::Corrupt {
                path: stored,
                why: "is missing".into(),
            });
        };
        let got = gunzip_to(&entry.join("files").join(&d.gunzip), dest)?;
        if got != d.sha256 {
            let _ = fs::remove_file(dest);
            return Err(Error::Corrupt {
                path: entry.join("files").join(&d.gunzip),
                why: format!("does not decompress to the {name} stored from it"),
            });
        }
        Ok(())
    }

    /// Removes the entry `key` (a damaged one): renamed aside first, so no build copies half of it.
    pub fn discard(&self, key: &str) -> Result<(), Error> {
        discard_entry(&self.dir, key)
    }

    /// Stores `files` (outputs) and the `NAME.d` directory under `key`.
    pub fn store(&self, key: &str, files: &[PathBuf], name_d: &Path) -> Result<(), Error> {
        self.store_deriving(key, files, name_d, &[]).map(|_| ())
    }

    /// [`OutputCache::store`] (`Ok(false)`: another build's entry for `key` was put in place
    /// first and stays), except that each output of `gunzipped` (an uncompressed file,
    /// the gzip file it is the content of, both among `files`) is not stored: the entry
    /// records its digest and how to make it again (`derived.json`), and
    /// [`OutputCache::copy_out`] makes it from the gzip file and checks it against that digest,
    /// so a pair that was not what the caller said costs a rebuild, never a wrong output. A tar
    /// asked for beside its tgz then costs no space in the cache.
    pub fn store_deriving(
        &self,
        key: &str,
        files: &[PathBuf],
        name_d: &Path,
        gunzipped: &[(PathBuf, PathBuf)],
    ) -> Result<bool, Error> {
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempdir_in(&self.dir)
            .map_err(io(&self.dir))?;
        let written = (|| {
            let mut derived = BTreeMap::new();
            for (plain, gz) in gunzipped {
                if !files.contains(gz) {
                    continue;
                }
                let name = |p: &Path| {
                    p.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned()
                };
                derived.insert(
                    name(plain),
                    Derived {
                        gunzip: name(gz),
                        sha256: file_digest(plain)?,
                    },
                );
            }
            for f in files {
                let name = f.file_name().unwrap_or_default();
                if derived.contains_key(&*name.to_string_lossy()) {
                    continue;
                }
                copy_file(f, &tmp.path().join("files").join(name))?;
            }
            if !derived.is_empty() {
                let text = serde_json::to_string_pretty(&derived).unwrap_or_default();
                fs::write(tmp.path().join(DERIVED), text).map_err(io(tmp.path()))?;
            }
            if name_d.is_dir() {
                run_tool(
                    &Cmd::new("cp")
                        .arg("-a")
                        .arg(name_d)
                        .arg(tmp.path().join("name.d")),
                    "store NAME.d",
                )?;
                let _ = fs::remove_file(tmp.path().join("name.d/build.log"));
            }
            let digests = entry_digests(tmp.path())?;
            let text = serde_json::to_string_pretty(&digests).unwrap_or_default();
            fs::write(tmp.path().join(OUTPUT_DIGESTS), text).map_err(io(tmp.path()))?;
            fs::write(tmp.path().join("complete"), now().to_string()).map_err(io(tmp.path()))
        })();
        written.map_err(|e| with_space(e, &self.dir, "storing the outputs"))?;
        let p = tmp.keep();
        let dest = self.dir.join(key);
        let _ = fs::remove_dir_all(&dest);
        if fs::rename(&p, &dest).is_err() {
            // Another build put its entry there in between: that one stays.
            let _ = fs::remove_dir_all(&p);
            return Ok(false);
        }
        Ok(true)
    }
}

/// The directory of an output-cache entry that holds the cluster indexes of its qcow2 outputs
/// (`reuse/NAME.json`, see `kiln_output::clusters`). Outside `files/` and `name.d/`, so
/// not part of the entry's digests: an index is only a hint, every reused cluster is checked
/// against the new content, and a damaged index costs time, never correctness.
const REUSE_DIR: &str = "reuse";

impl OutputCache {
    /// The complete entries' outputs whose names end in `.EXT` and that have a reuse index,
    /// as (output, index): those named `prefer` first (an earlier build of the same image),
    /// then the others, each the most recently used first; at most `limit` of them.
    pub fn reusable(&self, ext: &str, prefer: &str, limit: usize) -> Vec<(PathBuf, PathBuf)> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let suffix = format!(".{ext}");
        let mut found: Vec<(u64, PathBuf, PathBuf)> = Vec::new();
        for e in rd.flatten() {
            let entry = e.path();
            if e.file_name().as_encoded_bytes().starts_with(b".tmp-")
                || !entry.join("complete").is_file()
            {
                continue;
            }
            let Ok(indexes) = fs::read_dir(entry.join(REUSE_DIR)) else {
                continue;
            };
            for i in indexes.flatten() {
                let name = i.file_name().to_string_lossy().into_owned();
                let Some(output) = name.strip_suffix(".json") else {
                    continue;
                };
                let file = entry.join("files").join(output);
                if output.ends_with(&suffix) && file.is_file() {
                    found.push((used_time(&entry), file, i.path()));
                }
            }
        }
        let other = |f: &Path| f.file_name().is_none_or(|n| n != prefer);
        found.sort_by(|a, b| {
            other(&a.1)
                .cmp(&other(&b.1))
                .then(b.0.cmp(&a.0))
                .then(a.1.cmp(&b.1))
        });
        found
            .into_iter()
            .take(limit)
            .map(|(_, f, i)| (f, i))
            .collect()
    }

    /// Keeps `index`, the reuse index of output `name`, in the complete entry `key` (see
    /// [`OutputCache::reusable`]).
    pub fn attach_index(&self, key: &str, name: &str, index: &Path) -> Result<(), Error> {
        let dir = self.dir.join(key);
        if !dir.join("complete").is_file() {
            return Ok(());
        }
        let reuse = dir.join(REUSE_DIR);
        fs::create_dir_all(&reuse).map_err(io(&reuse))?;
        copy_file(index, &reuse.join(format!("{name}.json")))
    }
}

/// One entry of the cache: a phase layer or a request's outputs.
#[derive(Debug, Clone)]
pub struct CacheEntry {
    /// Its directory.
    pub path: PathBuf,
    /// `layer` or `outputs`.
    pub kind: &'static str,
    /// The phase of a layer, the file names of outputs.
    pub label: String,
    /// Bytes on disk.
    pub bytes: u64,
    /// Last use, seconds since the epoch.
    pub used: u64,
}

fn used_time(p: &Path) -> u64 {
    for f in ["used", "complete"] {
        if let Ok(Ok(v)) = fs::read_to_string(p.join(f)).map(|t| t.trim().parse::<u64>()) {
            return v;
        }
    }
    fs::metadata(p.join("meta.json"))
        .or_else(|_| fs::metadata(p))
        .ok()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// What a look through the cache found.
#[derive(Debug, Default)]
pub struct Scan {
    /// The entries kiln made, least recently used first.
    pub entries: Vec<CacheEntry>,
    /// Paths under `phases/` and `outputs/` that are not entries kiln made (a stray file, a
    /// directory without its description): never removed, only reported.
    pub unrecognised: Vec<PathBuf>,
    /// Temporary entries (`.tmp-*`): a store in progress, or one a killed build left.
    pub temporary: Vec<PathBuf>,
}

/// Looks through the cache under `root`: its entries, what it does not recognise, and the
/// temporary entries of stores.
pub fn scan(root: &Path) -> Scan {
    let mut out = Scan::default();
    for (kind, sub) in [("layer", "phases"), ("outputs", "outputs")] {
        let Ok(rd) = fs::read_dir(root.join(sub)) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name();
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if name.as_encoded_bytes().starts_with(b".tmp-") && is_dir {
                out.temporary.push(p);
                continue;
            }
            let label = if !is_dir {
                None
            } else if kind == "layer" {
                fs::read_to_string(p.join("meta.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str::<LayerMeta>(&t).ok())
                    .map(|m| m.inputs.phase)
            } else if p.join("complete").is_file() {
                let mut names: Vec<String> = fs::read_dir(p.join("files"))
                    .map(|rd| {
                        rd.flatten()
                            .map(|f| f.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                names.extend(derived_of(&p).unwrap_or_default().into_keys());
                names.sort();
                Some(names.join(","))
            } else {
                None
            };
            let Some(label) = label else {
                out.unrecognised.push(p);
                continue;
            };
            out.entries.push(CacheEntry {
                bytes: du_bytes(&p),
                used: used_time(&p),
                path: p,
                kind,
                label,
            });
        }
    }
    out.entries
        .sort_by(|a, b| a.used.cmp(&b.used).then(a.path.cmp(&b.path)));
    out.unrecognised.sort();
    out.temporary.sort();
    out
}

/// Every entry of the cache under `root`, least recently used first.
pub fn entries(root: &Path) -> Vec<CacheEntry> {
    scan(root).entries
}

/// What a trim did.
#[derive(Debug, Default)]
pub struct GcReport {
    /// Entries removed.
    pub removed: usize,
    /// Bytes of entries left.
    pub left: u64,
    /// Temporary entries removed (left by builds that were killed while storing).
    pub temporary: usize,
    /// Paths not recognised as entries, left alone.
    pub skipped: Vec<PathBuf>,
    /// Entries that could not be removed, with why (the trim goes on without them).
    pub failed: Vec<String>,
}

/// Deletes the least recently used entries until the cache is at most `max` bytes, and the
/// temporary entries of builds that died (holding the exclusive lock, no store is in
/// progress). A layer whose parent is gone is never restored (a chain is used only from its
/// first layer on), so removing any entry is safe. What it does not recognise it skips and
/// reports; what it cannot remove it reports and goes on.
pub fn gc(lock: &ExclusiveLock, max: u64) -> GcReport {
    let found = scan(lock.root());
    let mut report = GcReport {
        skipped: found.unrecognised,
        ..GcReport::default()
    };
    for t in &found.temporary {
        match fs::remove_dir_all(t) {
            Ok(()) => report.temporary += 1,
            Err(e) => report.failed.push(format!("{}: {e}", t.display())),
        }
    }
    let mut total: u64 = found.entries.iter().map(|e| e.bytes).sum();
    for e in &found.entries {
        if total <= max {
            break;
        }
        match fs::remove_dir_all(&e.path) {
            Ok(()) => {
                total = total.saturating_sub(e.bytes);
                report.removed += 1;
            }
            Err(err) => report.failed.push(format!("{}: {err}", e.path.display())),
        }
    }
    report.left = total;
    report
}

/// A size for people: `1.5 GiB`.
pub fn human(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", units[i])
}

/// Copies a file, or a directory with what is in it (the `oci` output), reflinking where the
/// filesystem can.
pub fn copy_file(from: &Path, to: &Path) -> Result<(), Error> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).map_err(io(parent))?;
    }
    run_tool(
        &Cmd::new("cp")
            .args(["--reflink=auto", "--sparse=always", "-p", "-R"])
            .arg(from)
            .arg(to),
        "copy",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    type Change = Box<dyn Fn(&mut Inputs)>;

    #[test]
    fn inputs_key_changes_with_any_input() {
        let base = Inputs {
            phase: "install".into(),
            parent: Some("p".into()),
            arch: "amd64".into(),
            mirror: BTreeMap::new(),
            version: "1".into(),
            env: BTreeMap::new(),
            host_files: BTreeMap::new(),
            files: BTreeMap::new(),
            extra: Vec::new(),
        };
        // Each input on its own changes the key.
        let variants: Vec<(&str, Change)> = vec![
            ("phase", Box::new(|i| i.phase = "post-install".into())),
            ("parent", Box::new(|i| i.parent = Some("q".into()))),
            ("no parent", Box::new(|i| i.parent = None)),
            ("arch", Box::new(|i| i.arch = "arm64".into())),
            (
                "mirror",
                Box::new(|i| {
                    i.mirror.insert("bookworm-security u".into(), "d".into());
                }),
            ),
            (
                "host file",
                Box::new(|i| {
                    i.host_files.insert("DIB_APT_SOURCES".into(), "d".into());
                }),
            ),
            ("kiln", Box::new(|i| i.version = "2".into())),
            (
                "env",
                Box::new(|i| {
                    i.env.insert("DIB_X".into(), "1".into());
                }),
            ),
            (
                "file",
                Box::new(|i| {
                    i.files.insert("install.d/10-x".into(), "755:ab".into());
                }),
            ),
            ("extra", Box::new(|i| i.extra.push("less".into()))),
        ];
        let mut seen = std::collections::BTreeSet::from([base.key()]);
        for (what, change) in &variants {
            let mut other = base.clone();
            change(&mut other);
            assert!(
                seen.insert(other.key()),
                "changing {what} left the key as another"
            );
        }
        // A file's mode or content, and an env value, count, not just their names.
        let mut a = base.clone();
        a.files.insert("install.d/10-x".into(), "755:ab".into());
        let mut b = a.clone();
        b.files.insert("install.d/10-x".into(), "644:ab".into());
        assert_ne!(a.key(), b.key());
        let mut c = base.clone();
        c.env.insert("DIB_X".into(), "1".into());
        let mut d = base.clone();
        d.env.insert("DIB_X".into(), "2".into());
        assert_ne!(c.key(), d.key());
        // Nothing else does: the same inputs give the same key.
        assert_eq!(base.key(), base.clone().key());
    }

    #[test]
    fn visible_files_hide_other_phases() {
        let mut f = BTreeMap::new();
        f.insert("install.d/10-a".to_string(), "x".to_string());
        f.insert("finalise.d/10-b".to_string(), "x".to_string());
        f.insert("environment.d/10-c".to_string(), "x".to_string());
        let v = visible_to(&f, Some("install.d"));
        assert!(v.contains_key("install.d/10-a"));
        assert!(v.contains_key("environment.d/10-c"));
        assert!(!v.contains_key("finalise.d/10-b"));
    }

    #[test]
    fn diff_finds_changes_deletions_and_type_changes() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::write(r.join("keep"), "1").unwrap();
        fs::write(r.join("gone"), "1").unwrap();
        fs::write(r.join("edit"), "1").unwrap();
        fs::write(r.join("morph"), "1").unwrap();
        let before = index(r);
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::remove_file(r.join("gone")).unwrap();
        fs::write(r.join("edit"), "22").unwrap();
        fs::remove_file(r.join("morph")).unwrap();
        fs::create_dir(r.join("morph")).unwrap();
        fs::write(r.join("new"), "n").unwrap();
        let after = index(r);
        let (changed, deleted) = diff(&before, &after);
        let c: Vec<_> = changed.iter().map(|p| p.display().to_string()).collect();
        let del: Vec<_> = deleted.iter().map(|p| p.display().to_string()).collect();
        assert!(c.contains(&"edit".to_string()));
        assert!(c.contains(&"new".to_string()));
        assert!(c.contains(&"morph".to_string()));
        assert!(!c.contains(&"keep".to_string()));
        assert!(del.contains(&"gone".to_string()));
        assert!(del.contains(&"morph".to_string()));
    }

    #[test]
    fn restoring_deletions_never_follows_a_link_out_of_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(d.path()).unwrap();
        let (layer, root, outside) = (base.join("layer"), base.join("root"), base.join("out"));
        for p in [&layer, &root, &outside] {
            fs::create_dir_all(p).unwrap();
        }
        fs::write(outside.join("precious"), "host").unwrap();
        fs::write(root.join("gone"), "x").unwrap();
        std::os::unix::fs::symlink("../out", root.join("link")).unwrap();
        fs::write(layer.join("layer.deleted"), b"link/precious\0gone\0").unwrap();
        let empty = Cmd::new("tar")
            .arg("-cf")
            .arg(layer.join("layer.tar"))
            .args(["-T", "/dev/null"])
            .run();
        assert!(empty.is_ok(), "{empty:?}");
        apply_delta(&layer, "layer", &root).unwrap();
        assert_eq!(
            fs::read_to_string(outside.join("precious")).unwrap(),
            "host"
        );
        assert!(!root.join("gone").exists());
    }

    #[test]
    fn layer_paths_that_leave_the_tree_are_refused_before_any_is_applied() {
        for bad in [&b"/etc/passwd"[..], b"a/../../x", b"../x", b"./a"] {
            let d = tempfile::tempdir().unwrap();
            let base = fs::canonicalize(d.path()).unwrap();
            let (layer, root) = (base.join("layer"), base.join("root"));
            fs::create_dir_all(&layer).unwrap();
            fs::create_dir_all(&root).unwrap();
            fs::write(root.join("first"), "x").unwrap();
            let mut list = b"first\0".to_vec();
            list.extend_from_slice(bad);
            list.push(0);
            fs::write(layer.join("layer.deleted"), &list).unwrap();
            let err = apply_delta(&layer, "layer", &root).unwrap_err();
            assert!(
                matches!(&err, Error::BadLayerPath { path, .. } if *path == layer.join("layer.deleted")),
                "{err}"
            );
            assert!(
                err.to_string().contains("remove the cache directory"),
                "{err}"
            );
            // Nothing was applied, not even the good entry listed first.
            assert!(root.join("first").exists());
        }
    }

    #[test]
    fn store_and_restore_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let cache = PhaseCache::new(&d.path().join("cache"));
        let tree = d.path().join("tree");
        let hooks = d.path().join("hooks");
        fs::create_dir_all(tree.join("etc")).unwrap();
        fs::create_dir_all(&hooks).unwrap();
        fs::write(hooks.join("h"), "hook").unwrap();
        fs::write(tree.join("etc/a"), "A").unwrap();
        fs::hard_link(tree.join("etc/a"), tree.join("etc/a-link")).unwrap();
        std::os::unix::fs::symlink("a", tree.join("etc/sym")).unwrap();
        fs::set_permissions(tree.join("etc/a"), fs::Permissions::from_mode(0o4750)).unwrap();
        let idx = index(&tree);
        let (changed, deleted) = diff(&Index::new(), &idx);
        let inputs = inputs_of("root");
        let hidx = index(&hooks);
        let (hc, hd) = diff(&Index::new(), &hidx);
        let k1 = cache
            .store(
                &inputs,
                &Delta {
                    root: &tree,
                    changed: &changed,
                    deleted: &deleted,
                },
                &Delta {
                    root: &hooks,
                    changed: &hc,
                    deleted: &hd,
                },
                1,
            )
            .unwrap();
        // Second layer: delete one file, add another.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::remove_file(tree.join("etc/sym")).unwrap();
        fs::write(tree.join("etc/b"), "B").unwrap();
        let idx2 = index(&tree);
        let (c2, d2) = diff(&idx, &idx2);
        let mut in2 = inputs.clone();
        in2.phase = "install".into();
        in2.parent = Some(k1.clone());
        let k2 = cache
            .store(
                &in2,
                &Delta {
                    root: &tree,
                    changed: &c2,
                    deleted: &d2,
                },
                &Delta {
                    root: &hooks,
                    changed: &[],
                    deleted: &[],
                },
                1,
            )
            .unwrap();
        let out = d.path().join("out");
        let out_hooks = d.path().join("out-hooks");
        fs::create_dir_all(&out).unwrap();
        fs::create_dir_all(&out_hooks).unwrap();
        cache.restore(&[k1, k2], &out, &out_hooks).unwrap();
        assert_eq!(fs::read_to_string(out.join("etc/b")).unwrap(), "B");
        assert!(fs::symlink_metadata(out.join("etc/sym")).is_err());
        let m = fs::metadata(out.join("etc/a")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o4750);
        assert_eq!(m.nlink(), 2);
        assert_eq!(fs::read_to_string(out_hooks.join("h")).unwrap(), "hook");
    }

    /// The inputs of a layer of `phase` with nothing else set (arch amd64, version "t").
    fn inputs_of(phase: &str) -> Inputs {
        Inputs {
            phase: phase.into(),
            parent: None,
            arch: "amd64".into(),
            mirror: BTreeMap::new(),
            version: "t".into(),
            env: BTreeMap::new(),
            host_files: BTreeMap::new(),
            files: BTreeMap::new(),
            extra: Vec::new(),
        }
    }

    /// Stores a one-file layer of phase `root` in a cache under `d`; returns the cache and key.
    fn stored_layer(d: &Path) -> (PhaseCache, String) {
        let cache = PhaseCache::new(&d.join("cache"));
        let tree = d.join("tree");
        fs::create_dir_all(tree.join("etc")).unwrap();
        fs::write(tree.join("etc/a"), vec![7u8; 100_000]).unwrap();
        let (changed, deleted) = diff(&Index::new(), &index(&tree));
        let inputs = inputs_of("root");
        let key = cache
            .store(
                &inputs,
                &Delta {
                    root: &tree,
                    changed: &changed,
                    deleted: &deleted,
                },
                &Delta {
                    root: &tree,
                    changed: &[],
                    deleted: &[PathBuf::from("gone")],
                },
                1,
            )
            .unwrap();
        (cache, key)
    }

    #[test]
    fn a_damaged_layer_fails_verification_and_is_stored_again() {
        type Damage = fn(&Path);
        let damages: [(&str, Damage, &str); 6] = [
            (
                "truncated tar",
                |d| {
                    let f = d.join("layer.tar.zst");
                    let len = fs::metadata(&f).unwrap().len();
                    fs::OpenOptions::new()
                        .write(true)
                        .open(&f)
                        .unwrap()
                        .set_len(len / 2)
                        .unwrap();
                },
                "layer.tar.zst: does not match",
            ),
            (
                "flipped byte",
                |d| {
                    let f = d.join("hooks.deleted");
                    let mut b = fs::read(&f).unwrap();
                    b[0] ^= 1;
                    fs::write(&f, b).unwrap();
                },
                "hooks.deleted: does not match",
            ),
            (
                "missing file",
                |d| fs::remove_file(d.join("layer.deleted")).unwrap(),
                "layer.deleted: unreadable",
            ),
            (
                "no digests",
                |d| {
                    let f = d.join("meta.json");
                    let mut m: LayerMeta =
                        serde_json::from_str(&fs::read_to_string(&f).unwrap()).unwrap();
                    m.digests.clear();
                    fs::write(&f, serde_json::to_vec(&m).unwrap()).unwrap();
                },
                "no digest recorded",
            ),
            (
                "garbled description",
                |d| fs::write(d.join("meta.json"), "{").unwrap(),
                "not a layer description",
            ),
            (
                "no description",
                |d| fs::remove_file(d.join("meta.json")).unwrap(),
                "meta.json: unreadable",
            ),
        ];
        for (what, damage, says) in damages {
            let d = tempfile::tempdir().unwrap();
            let (cache, key) = stored_layer(d.path());
            let meta = cache.verify(&key).unwrap().expect("stored");
            assert_eq!(meta.digests.len(), LAYER_FILES.len());
            damage(&cache.layer_dir(&key));
            let err = cache.verify(&key).unwrap_err();
            assert!(
                matches!(err, Error::Corrupt { .. }) && err.to_string().contains(says),
                "{what}: {err}"
            );
            // Storing the same layer again replaces the damaged copy.
            let (_, again) = stored_layer(d.path());
            assert_eq!(again, key);
            assert!(cache.verify(&key).unwrap().is_some(), "{what}");
        }
        // A key never stored is no layer, not a damaged one.
        let d = tempfile::tempdir().unwrap();
        let (cache, _) = stored_layer(d.path());
        assert!(cache.verify("0000").unwrap().is_none());
    }

    #[test]
    fn enospc_while_storing_names_the_cache_filesystem() {
        let d = tempfile::tempdir().unwrap();
        let full = Error::Step {
            step: "snapshot layer".into(),
            message: "tar: etc/a: Cannot write: No space left on device".into(),
        };
        let e = with_space(full, d.path(), "storing the root layer");
        let text = e.to_string();
        let fs = space::Filesystem::of(d.path()).unwrap();
        assert!(matches!(e, Error::NoSpace { .. }), "{text}");
        for needle in [
            format!("{}: no space left for the cache", d.path().display()),
            format!("mounted at {}", fs.mount_point.display()),
            "storing the root layer".to_string(),
            "DIB_IMAGE_CACHE".to_string(),
        ] {
            assert!(text.contains(&needle), "missing {needle:?} in {text}");
        }
        // Any other failure is left as it is.
        let other = Error::Step {
            step: "snapshot layer".into(),
            message: "tar: exit 2".into(),
        };
        assert!(matches!(
            with_space(other, d.path(), "x"),
            Error::Step { .. }
        ));
    }

    #[test]
    fn discard_removes_a_layer() {
        let d = tempfile::tempdir().unwrap();
        let (cache, key) = stored_layer(d.path());
        cache.discard(&key).unwrap();
        assert!(cache.verify(&key).unwrap().is_none());
        assert_eq!(fs::read_dir(&cache.dir).unwrap().count(), 0);
        // Discarding what is not there is no error.
        cache.discard(&key).unwrap();
    }

    #[test]
    fn gc_skips_and_reports_what_it_does_not_recognise() {
        let d = tempfile::tempdir().unwrap();
        let (cache, key) = stored_layer(d.path());
        let root = cache.dir.parent().unwrap().to_path_buf();
        let outputs = root.join("outputs");
        fs::create_dir_all(outputs.join("half-written/files")).unwrap();
        fs::write(outputs.join("stray.txt"), "x").unwrap();
        fs::write(cache.dir.join("notes"), "x").unwrap();
        fs::create_dir_all(cache.dir.join(".tmp-abc/sub")).unwrap();
        fs::create_dir_all(outputs.join(".tmp-def")).unwrap();
        // The .deb store of locked builds is the cache's too: never reported, never trimmed.
        let deb = root.join("debs/sha256").join("ab".repeat(32));
        fs::create_dir_all(deb.parent().unwrap()).unwrap();
        fs::write(&deb, "deb").unwrap();
        let found = scan(&root);
        assert_eq!(found.entries.len(), 1);
        assert_eq!(found.temporary.len(), 2);
        let lock = ExclusiveLock::acquire(&root).unwrap();
        // Trim everything: the layer and the temporaries go, the rest stays and is reported.
        let r = gc(&lock, 0);
        assert_eq!((r.removed, r.temporary, r.left), (1, 2, 0));
        assert!(r.failed.is_empty(), "{:?}", r.failed);
        assert_eq!(
            r.skipped,
            vec![
                outputs.join("half-written"),
                outputs.join("stray.txt"),
                cache.dir.join("notes"),
            ]
        );
        assert!(deb.is_file());
        assert!(cache.verify(&key).unwrap().is_none());
        assert!(outputs.join("stray.txt").exists() && outputs.join("half-written").exists());
        assert!(!cache.dir.join(".tmp-abc").exists() && !outputs.join(".tmp-def").exists());
    }

    #[test]
    fn stored_layers_never_hold_generated_identities() {
        let d = tempfile::tempdir().unwrap();
        let cache = PhaseCache::new(&d.path().join("cache"));
        let tree = d.path().join("tree");
        let hooks = d.path().join("hooks");
        fs::create_dir_all(tree.join("etc/ssh")).unwrap();
        fs::create_dir_all(tree.join("var/lib/systemd")).unwrap();
        fs::create_dir_all(&hooks).unwrap();
        fs::write(tree.join("etc/ssh/ssh_host_ed25519_key"), "private").unwrap();
        fs::write(tree.join("etc/ssh/sshd_config"), "Port 22").unwrap();
        fs::write(
            tree.join("etc/machine-id"),
            "0123456789abcdef0123456789abcdef\n",
        )
        .unwrap();
        fs::write(tree.join("var/lib/systemd/random-seed"), "seed").unwrap();
        let (changed, deleted) = diff(&Index::new(), &index(&tree));
        let inputs = inputs_of("install");
        let key = cache
            .store(
                &inputs,
                &Delta {
                    root: &tree,
                    changed: &changed,
                    deleted: &deleted,
                },
                &Delta {
                    root: &hooks,
                    changed: &[],
                    deleted: &[],
                },
                1,
            )
            .unwrap();
        // The running build's tree keeps them.
        assert!(tree.join("etc/ssh/ssh_host_ed25519_key").exists());
        let meta = cache.get(&key).unwrap();
        assert_eq!(
            meta.identities,
            vec!["ssh-host-keys", "machine-id", "systemd-random-seed"]
        );
        let out = d.path().join("out");
        let out_hooks = d.path().join("out-hooks");
        fs::create_dir_all(&out).unwrap();
        fs::create_dir_all(&out_hooks).unwrap();
        cache.restore(&[key], &out, &out_hooks).unwrap();
        assert_eq!(
            fs::read_to_string(out.join("etc/ssh/sshd_config")).unwrap(),
            "Port 22"
        );
        for gone in [
            "etc/ssh/ssh_host_ed25519_key",
            "etc/machine-id",
            "var/lib/systemd/random-seed",
        ] {
            assert!(!out.join(gone).exists(), "{gone} was stored in the layer");
        }
    }

    #[test]
    fn gc_removes_least_recently_used_first() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        for (sub, name, used) in [
            ("phases", "old", 100u64),
            ("phases", "new", 300),
            ("outputs", "mid", 200),
        ] {
            let e = root.join(sub).join(name);
            fs::create_dir_all(&e).unwrap();
            fs::write(e.join("blob"), vec![1u8; 64 * 1024]).unwrap();
            let stamp = if sub == "phases" { "used" } else { "complete" };
            fs::write(e.join(stamp), used.to_string()).unwrap();
            if sub == "phases" {
                let meta = serde_json::json!({
                    "key": name, "tree_kib": 0, "bytes": 0, "created": 0,
                    "inputs": { "phase": "root", "parent": null, "arch": "amd64",
                        "release_digest": null, "version": "t", "env": {}, "files": {},
                        "extra": [] },
                });
                fs::write(e.join("meta.json"), meta.to_string()).unwrap();
            }
        }
        let es = entries(root);
        let order: Vec<_> = es
            .iter()
            .map(|e| e.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(order, ["old", "mid", "new"]);
        let one = es[0].bytes;
        let lock = ExclusiveLock::acquire(root).unwrap();
        let r = gc(&lock, one * 2);
        assert_eq!(r.removed, 1);
        assert!(r.left <= one * 2);
        assert!(r.skipped.is_empty() && r.failed.is_empty());
        assert!(!root.join("phases/old").exists());
        assert!(root.join("outputs/mid").exists() && root.join("phases/new").exists());
    }

    /// `bytes` gzipped (flate2, one member).
    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn a_tar_beside_its_tgz_is_kept_as_the_tgz_content_and_checked_when_made_again() {
        let d = tempfile::tempdir().unwrap();
        let cache = OutputCache::new(&d.path().join("cache"));
        let name_d = d.path().join("img.d");
        let (tar, tgz) = (d.path().join("img.tar"), d.path().join("img.tgz"));
        let content: Vec<u8> = (0..300_000u32).flat_map(u32::to_le_bytes).collect();
        fs::write(&tar, &content).unwrap();
        fs::write(&tgz, gz(&content)).unwrap();
        let files = [tar.clone(), tgz.clone()];
        let pairs = [(tar.clone(), tgz.clone())];
        cache.store_deriving("k", &files, &name_d, &pairs).unwrap();
        let entry = cache.verify("k").unwrap().unwrap();
        assert!(!entry.join("files/img.tar").exists(), "the tar was stored");
        let label = &scan(&d.path().join("cache")).entries[0].label;
        assert_eq!(label, "img.tar,img.tgz");
        let out = d.path().join("out.tar");
        cache.copy_out(&entry, "img.tar", &out).unwrap();
        assert!(fs::read(&out).unwrap() == content);
        cache.copy_out(&entry, "img.tgz", &out).unwrap();
        assert_eq!(fs::read(&out).unwrap(), fs::read(&tgz).unwrap());

        // A tar that is not the tgz's content is never handed back: made again, it fails its
        // digest, and nothing is left at the destination.
        fs::write(&tar, b"another tar").unwrap();
        cache.store_deriving("k2", &files, &name_d, &pairs).unwrap();
        let entry2 = cache.verify("k2").unwrap().unwrap();
        let out = d.path().join("out0.tar");
        let err = cache.copy_out(&entry2, "img.tar", &out).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(!out.exists());

        // The entry's tgz decompressing to other bytes is damage: named, and nothing left.
        let swapped = gz(b"other content");
        let stored_tgz = entry.join("files/img.tgz");
        fs::write(&stored_tgz, &swapped).unwrap();
        let digests: BTreeMap<String, String> =
            serde_json::from_str(&fs::read_to_string(entry.join(OUTPUT_DIGESTS)).unwrap()).unwrap();
        let mut digests = digests;
        digests.insert("files/img.tgz".into(), file_digest(&stored_tgz).unwrap());
        fs::write(
            entry.join(OUTPUT_DIGESTS),
            serde_json::to_string(&digests).unwrap(),
        )
        .unwrap();
        let out = d.path().join("out2.tar");
        let err = cache.copy_out(&entry, "img.tar", &out).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("img.tgz"), "{err}");
        assert!(!out.exists());
        // A derived output whose source is gone fails verification.
        fs::remove_file(&stored_tgz).unwrap();
        digests.remove("files/img.tgz");
        fs::write(
            entry.join(OUTPUT_DIGESTS),
            serde_json::to_string(&digests).unwrap(),
        )
        .unwrap();
        let err = cache.verify("k").unwrap_err();
        assert!(
            err.to_string().contains("img.tar is made from img.tgz"),
            "{err}"
        );
    }

    #[test]
    fn reuse_indexes_are_kept_beside_the_outputs_and_found_newest_first() {
        let d = tempfile::tempdir().unwrap();
        let cache = OutputCache::new(&d.path().join("cache"));
        let (qcow2, tar) = (d.path().join("img.qcow2"), d.path().join("img.tar"));
        fs::write(&qcow2, b"qcow2 bytes").unwrap();
        fs::write(&tar, b"tar bytes").unwrap();
        let index = d.path().join("index.json");
        fs::write(&index, b"{}").unwrap();
        let name_d = d.path().join("img.d");
        assert!(cache.reusable("qcow2", "img.qcow2", 3).is_empty());
        for (key, used) in [("old", 100), ("new", 300), ("mid", 200)] {
            cache
                .store(key, &[qcow2.clone(), tar.clone()], &name_d)
                .unwrap();
            cache.attach_index(key, "img.qcow2", &index).unwrap();
            fs::write(cache.dir.join(key).join("used"), used.to_string()).unwrap();
        }
        // An entry without an index, and one whose output is gone, are not offered.
        cache
            .store("plain", std::slice::from_ref(&qcow2), &name_d)
            .unwrap();
        fs::remove_file(cache.dir.join("mid/files/img.qcow2")).unwrap();
        // The index is not one of the entry's files: the entry still verifies.
        assert!(cache.verify("new").unwrap().is_some());
        // An older entry of another image's qcow2 comes after the same image's.
        let other = d.path().join("other.qcow2");
        fs::write(&other, b"other bytes").unwrap();
        cache
            .store("else", std::slice::from_ref(&other), &name_d)
            .unwrap();
        cache.attach_index("else", "other.qcow2", &index).unwrap();
        fs::write(cache.dir.join("else").join("used"), "400").unwrap();
        let found = cache.reusable("qcow2", "img.qcow2", 4);
        let keys: Vec<_> = found
            .iter()
            .map(|(f, i)| {
                let name = f.file_name().unwrap().to_string_lossy().into_owned();
                assert_eq!(
                    i.file_name().unwrap().to_string_lossy(),
                    format!("{name}.json")
                );
                f.parent().unwrap().parent().unwrap().file_name().unwrap()
            })
            .collect();
        assert_eq!(keys, ["new", "old", "else"]);
        assert_eq!(cache.reusable("qcow2", "img.qcow2", 1).len(), 1);
        assert!(cache.reusable("vmdk", "img.vmdk", 3).is_empty());
        // No index is kept for an entry that is not complete.
        cache.attach_index("missing", "img.qcow2", &index).unwrap();
        assert!(!cache.dir.join("missing").exists());
    }

    #[test]
    fn output_entries_are_checked_against_their_digests() {
        type Damage = fn(&Path);
        let d = tempfile::tempdir().unwrap();
        let cache = OutputCache::new(&d.path().join("cache"));
        let out = d.path().join("img.qcow2");
        fs::write(&out, b"qcow2 bytes").unwrap();
        let name_d = d.path().join("img.d");
        fs::create_dir_all(name_d.join("dib-manifests")).unwrap();
        fs::write(name_d.join("sbom.spdx.json"), "{}").unwrap();
        fs::write(name_d.join("dib-manifests/dpkg"), "pkg 1\n").unwrap();
        // Each damage on its own makes verify fail, naming the file; discard removes the entry.
        let damages: [(&str, Damage); 5] = [
            ("files/img.qcow2", |e| {
                fs::write(e.join("files/img.qcow2"), b"qcow2 bytez").unwrap();
            }),
            ("files/img.qcow2", |e| {
                fs::write(e.join("files/img.qcow2"), b"qcow2").unwrap();
            }),
            ("name.d/dib-manifests/dpkg", |e| {
                fs::remove_file(e.join("name.d/dib-manifests/dpkg")).unwrap();
            }),
            ("name.d/extra", |e| {
                fs::write(e.join("name.d/extra"), "x").unwrap();
            }),
            ("digests.json", |e| {
                fs::remove_file(e.join("digests.json")).unwrap();
            }),
        ];
        for (file, damage) in damages {
            cache
                .store("k", std::slice::from_ref(&out), &name_d)
                .unwrap();
            let entry = cache.verify("k").unwrap().expect("a complete entry");
            assert_eq!(entry, cache.dir.join("k"));
            damage(&entry);
            let err = cache.verify("k").unwrap_err();
            assert!(
                matches!(&err, Error::Corrupt { path, .. } if path.ends_with(file)),
                "{file}: {err}"
            );
            cache.discard("k").unwrap();
            assert!(cache.verify("k").unwrap().is_none() && !entry.exists());
        }
        assert!(cache.verify("never-stored").unwrap().is_none());
    }

    #[test]
    fn a_directory_output_is_stored_checked_and_copied_back_whole() {
        let d = tempfile::tempdir().unwrap();
        let cache = OutputCache::new(&d.path().join("cache"));
        let out = d.path().join("img.oci");
        fs::create_dir_all(out.join("blobs/sha256")).unwrap();
        fs::write(out.join("index.json"), "{}").unwrap();
        fs::write(out.join("blobs/sha256/ab"), "blob").unwrap();
        cache
            .store("k", std::slice::from_ref(&out), &d.path().join("no-name.d"))
            .unwrap();
        let entry = cache.verify("k").unwrap().expect("a complete entry");
        let back = d.path().join("back/img.oci");
        copy_file(&entry.join("files/img.oci"), &back).unwrap();
        assert_eq!(fs::read_to_string(back.join("index.json")).unwrap(), "{}");
        assert_eq!(
            fs::read_to_string(back.join("blobs/sha256/ab")).unwrap(),
            "blob"
        );
        // A changed blob inside the directory is caught.
        fs::write(entry.join("files/img.oci/blobs/sha256/ab"), "blub").unwrap();
        let err = cache.verify("k").unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt { path, .. } if path.ends_with("files/img.oci/blobs/sha256/ab")),
            "{err}"
        );
    }
}
