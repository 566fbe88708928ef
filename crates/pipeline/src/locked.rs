//! Building from a lock (`kiln build --lock FILE [--offline]`): the `.deb` store, the local
//! repository and the checks that keep a locked build to the lock.
//!
//! Every `.deb` a lock names is fetched once into a content-addressed store in the cache,
//! `<cache>/debs/sha256/<sha256>`, from the archive URIs the lock's side file records (the
//! image's own apt sources when it was locked; kiln names no mirror), in parallel, with curl
//! (which honours the usual proxy variables) or, for `file:` URIs, by copying. Each file is
//! checked against the stanza's `Size` and `SHA256` before it is renamed into the store, so the
//! store only ever holds files whose name is their digest; a mismatch names the package and the
//! file and stores nothing. With `--offline` nothing is fetched: every file must be in the store.
//!
//! Each build then lays out a local repository from the lock (the files hard-linked from the
//! store, copied across filesystems): `dists/<suite>/Release` listing the SHA256 of
//! `dists/<suite>/main/binary-<arch>/Packages`, whose text is the lock's stanzas verbatim, and
//! the pool paths of the stanzas' `Filename`s. mmdebstrap, debootstrap and apt read it as any
//! archive; it is served `[trusted=yes]` because every file was checked by hash against the
//! lock, which is the thing the user trusts. The repository also carries the one-line sources
//! file and the apt configuration that point apt in the chroot at it (at [`CHROOT_PATH`], where
//! the engine binds it read-only for every chroot phase) instead of the image's own sources.
//!
//! What the build asks for is checked against the lock before anything runs: a package of the
//! package-installs lists, `-p` or the bootstrap's includes that the lock lacks stops the build
//! naming it and saying to re-lock; apt's own "Unable to locate package" in a failing phase is
//! translated into the same message ([`not_in_lock_in_output`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use kiln_host::Cmd;
use sha2::{Digest, Sha256};

use crate::lock::{Lock, Stanza};

/// The label the lock's digest is keyed under, in place of the mirror's suites.
pub const MIRROR_LABEL: &str = "lock";
/// The local repository's directory in the build directory.
pub const REPO_DIR: &str = "lock-repo";

/// A locked build's lock, read and checked against what the build asks for before anything
/// runs.
#[derive(Debug, Clone)]
pub struct Input {
    /// The lock file.
    pub path: PathBuf,
    /// The lock.
    pub lock: Lock,
    /// [`digest`] of the lock and its side file.
    pub digest: String,
    /// Its files.
    pub debs: Vec<Deb>,
}

impl Input {
    /// Reads the lock at `path` for a build of `arch` wanting `wanted` (package-installs after
    /// pkg-map, `-p`, the bootstrap's includes): a package it lacks, or another architecture,
    /// stops the build here.
    pub fn load<'a>(
        path: &Path,
        arch: &str,
        wanted: impl IntoIterator<Item = &'a String>,
    ) -> Result<Self, crate::Error> {
        let lock = Lock::read(path)?;
        if !lock.meta.architectures.iter().any(|a| a == arch) {
            return Err(crate::Error::Usage(format!(
                "{}: the lock is for {}, the build for {arch}; lock this architecture with `kiln lock -a {arch}`",
                Lock::meta_path(path).display(),
                lock.meta.architectures.join(" ")
            )));
        }
        let missing = not_in_lock(&lock, wanted);
        if !missing.is_empty() {
            return Err(Error::NotInLock {
                lock: path.to_path_buf(),
                packages: missing,
            }
            .into());
        }
        let debs = debs(&lock, path)?;
        Ok(Self {
            path: path.to_path_buf(),
            digest: digest(path)?,
            lock,
            debs,
        })
    }
}

/// Where the engine binds the local repository inside the chroot (read-only).
pub const CHROOT_PATH: &str = "/tmp/kiln-lock-repo";
/// The component of the local repository.
pub const COMPONENT: &str = "main";
/// How many files are fetched at once.
pub const PARALLEL: usize = 6;
/// How long one `.deb` may take to download.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(600);

/// What can go wrong fetching into the store, laying out the repository or checking a build
/// against its lock.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A stanza lacks a field a locked build needs.
    #[error("{lock}: the stanza of {package} has no usable {field} field; re-create the lock with `kiln lock`")]
    Field {
        /// The lock file.
        lock: PathBuf,
        /// The package.
        package: String,
        /// The field (`Filename`, `Size`, `SHA256`).
        field: &'static str,
    },
    /// A downloaded file is not the one the lock names.
    #[error("{package}: {file} does not match the lock ({what}); nothing was stored. The mirror serves another file under this name: re-lock with `kiln lock --update` if the archive changed on purpose")]
    Mismatch {
        /// The package.
        package: String,
        /// Its `Filename` (and the URL it came from).
        file: String,
        /// Which check failed, with expected and found values.
        what: String,
    },
    /// A file could not be fetched from any of the lock's URIs.
    #[error("{package}: cannot fetch {file} from {tried}: {message}")]
    Fetch {
        /// The package.
        package: String,
        /// Its `Filename`.
        file: String,
        /// The URIs tried.
        tried: String,
        /// The last error.
        message: String,
    },
    /// `--offline` with files missing from the store.
    #[error("--offline: {} of the lock's packages are not in the .deb store {store}: {}; run the build once without --offline to fetch them", missing.len(), missing.join(", "))]
    Missing {
        /// The store directory.
        store: PathBuf,
        /// The packages missing.
        missing: Vec<String>,
    },
    /// Packages the build asks for that the lock does not hold.
    #[error("{lock}: the build wants {} that the lock does not hold: {}; re-lock with `kiln lock --update` and the same elements and options", if packages.len() == 1 { "a package" } else { "packages" }, packages.join(", "))]
    NotInLock {
        /// The lock file.
        lock: PathBuf,
        /// The packages.
        packages: Vec<String>,
    },
    /// The lock names no archive URI to fetch from.
    #[error("{0}: the side file names no archive URI to fetch the packages from; re-create the lock with `kiln lock`")]
    NoUri(PathBuf),
    /// An I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl Error {
    /// Whether the error is the user's input (exit 2): a lock whose stanzas are unusable.
    pub fn is_input_error(&self) -> bool {
        matches!(self, Self::Field { .. } | Self::NoUri(_))
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One file of the lock: what the store holds it under and where the archive keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deb {
    /// Package name.
    pub package: String,
    /// `Filename`: the path under the archive root (checked to stay under it).
    pub filename: String,
    /// `Size` in bytes.
    pub size: u64,
    /// `SHA256`, lower-case hex.
    pub sha256: String,
}

/// The files of `lock` (read from `path`), one per stanza.
pub fn debs(lock: &Lock, path: &Path) -> Result<Vec<Deb>, Error> {
    lock.stanzas.iter().map(|s| deb_of(s, path)).collect()
}

fn deb_of(s: &Stanza, lock: &Path) -> Result<Deb, Error> {
    let fields = fields(&s.text);
    let bad = |field| Error::Field {
        lock: lock.to_path_buf(),
        package: s.package.clone(),
        field,
    };
    let filename = fields
        .get("Filename")
        .filter(|f| safe_relative(f))
        .cloned()
        .ok_or_else(|| bad("Filename"))?;
    let size = fields
        .get("Size")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad("Size"))?;
    let sha256 = fields
        .get("SHA256")
        .map(|v| v.to_ascii_lowercase())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| bad("SHA256"))?;
    Ok(Deb {
        package: s.package.clone(),
        filename,
        size,
        sha256,
    })
}

/// The single-line fields of one stanza (as the lock already parsed it, so this cannot fail).
fn fields(text: &str) -> BTreeMap<String, String> {
    let parsed = deb822_lossless::Deb822::parse(text).tree();
    let mut out = BTreeMap::new();
    if let Some(p) = parsed.paragraphs().next() {
        for name in ["Filename", "Size", "SHA256"] {
            if let Some(v) = p.get(name) {
                out.insert(name.to_string(), v.trim().to_string());
            }
        }
    }
    out
}

/// Whether `p` is a relative path of normal components (no `..`, no root): a `Filename` that
/// cannot lead out of the repository.
fn safe_relative(p: &str) -> bool {
    !p.is_empty()
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// The digest of a lock and its side file, which stands for the mirror's state in a locked
/// build's cache keys.
pub fn digest(path: &Path) -> Result<String, Error> {
    let mut h = Sha256::new();
    for p in [path.to_path_buf(), Lock::meta_path(path)] {
        let bytes = fs::read(&p).map_err(io(&p))?;
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(hex::encode(h.finalize()))
}

/// The content-addressed `.deb` store: `<cache>/debs/sha256/<sha256>`.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store of the cache at `cache_root` (created on first use).
    pub fn new(cache_root: &Path) -> Self {
        Self {
            dir: cache_root.join("debs").join("sha256"),
        }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the store keeps `deb`.
    pub fn path(&self, deb: &Deb) -> PathBuf {
        self.dir.join(&deb.sha256)
    }

    /// Whether the store holds `deb` (a file of the right size under its digest; the digest
    /// was checked when it was stored).
    pub fn has(&self, deb: &Deb) -> bool {
        fs::symlink_metadata(self.path(deb)).is_ok_and(|m| m.is_file() && m.len() == deb.size)
    }

    /// Fetches every file of `debs` the store lacks, from the first of `uris` that serves it,
    /// `PARALLEL` at a time; with `offline`, fetches nothing and fails listing what is missing.
    /// Returns how many files were fetched.
    pub fn fill(&self, debs: &[Deb], uris: &[String], offline: bool) -> Result<usize, Error> {
        let mut missing: Vec<&Deb> = Vec::new();
        let mut seen = BTreeSet::new();
        for d in debs {
            if !self.has(d) && seen.insert(&d.sha256) {
                missing.push(d);
            }
        }
        if missing.is_empty() {
            return Ok(0);
        }
        if offline {
            return Err(Error::Missing {
                store: self.dir.clone(),
                missing: missing.iter().map(|d| d.package.clone()).collect(),
            });
        }
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let queue = std::sync::Mutex::new(missing.clone().into_iter());
        let errors = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..PARALLEL.min(missing.len()) {
                s.spawn(|| loop {
                    let next = queue.lock().ok().and_then(|mut q| q.next());
                    let Some(deb) = next else { break };
                    if let Err(e) = self.fetch_one(deb, uris) {
                        if let Ok(mut v) = errors.lock() {
                            v.push(e);
                        }
                    }
                });
            }
        });
        let mut errors = errors.into_inner().unwrap_or_default();
        errors.sort_by_key(ToString::to_string);
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(missing.len()),
        }
    }

    /// Fetches one file into a temporary name in the store, checks it, renames it into place.
    fn fetch_one(&self, deb: &Deb, uris: &[String]) -> Result<(), Error> {
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".tmp-{}-", &deb.sha256[..16]))
            .tempfile_in(&self.dir)
            .map_err(io(&self.dir))?;
        let mut last = String::from("no URI");
        for uri in uris {
            let url = format!("{}/{}", uri.trim_end_matches('/'), deb.filename);
            match fetch_to(&url, tmp.path()) {
                Ok(()) => {
                    check(tmp.path(), deb, &url)?;
                    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))
                        .map_err(io(tmp.path()))?;
                    let dest = self.path(deb);
                    tmp.persist(&dest).map_err(|e| Error::Io {
                        path: dest.clone(),
                        source: e.error,
                    })?;
                    return Ok(());
                }
                Err(e) => last = e,
            }
        }
        Err(Error::Fetch {
            package: deb.package.clone(),
            file: deb.filename.clone(),
            tried: uris.join(", "),
            message: last,
        })
    }
}

/// Downloads `url` to `dest`: a `file:` URI is copied, anything else fetched with curl (which
/// reads `http_proxy`, `https_proxy` and `no_proxy` itself).
fn fetch_to(url: &str, dest: &Path) -> Result<(), String> {
    if let Some(path) = crate::cache::mirror::file_uri_path(url) {
        if !fs::metadata(path).is_ok_and(|m| m.is_file()) {
            return Err(format!("{path}: no such file"));
        }
        return fs::copy(path, dest)
            .map(|_| ())
            .map_err(|e| format!("{path}: {e}"));
    }
    let secs = FETCH_TIMEOUT.as_secs().to_string();
    Cmd::new("curl")
        .args([
            "-fsSL",
            "--retry",
            "2",
            "--connect-timeout",
            "20",
            "--max-time",
            &secs,
            "-o",
        ])
        .arg(dest)
        .arg(url)
        .run()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Checks the file at `path` against `deb`'s Size and SHA256.
fn check(path: &Path, deb: &Deb, url: &str) -> Result<(), Error> {
    let mismatch = |what: String| Error::Mismatch {
        package: deb.package.clone(),
        file: format!("{} ({url})", deb.filename),
        what,
    };
    let len = fs::metadata(path).map_err(io(path))?.len();
    if len != deb.size {
        return Err(mismatch(format!(
            "Size {} expected, {len} received",
            deb.size
        )));
    }
    let mut f = fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let got = hex::encode(h.finalize());
    if got != deb.sha256 {
        return Err(mismatch(format!(
            "SHA256 {} expected, {got} received",
            deb.sha256
        )));
    }
    Ok(())
}

/// The archive URIs of the lock's side file, in its order, without duplicates.
pub fn uris(lock: &Lock, path: &Path) -> Result<Vec<String>, Error> {
    let mut out: Vec<String> = Vec::new();
    for s in &lock.meta.suites {
        let u = s.uri.trim_end_matches('/').to_string();
        if !out.contains(&u) {
            out.push(u);
        }
    }
    if out.is_empty() {
        return Err(Error::NoUri(Lock::meta_path(path)));
    }
    Ok(out)
}

/// Lays out the local repository of `lock` at `dest` (which must not exist): the pool from the
/// store, `dists/<suite>/main/binary-<arch>/Packages` (the lock's stanzas) and its `Release`,
/// the one-line sources file `kiln-lock.list` naming it at [`CHROOT_PATH`], an empty
/// `sources.list.d/` and `apt.conf`, the apt configuration that points apt at those two.
pub fn make_repo(
    lock: &Lock,
    debs: &[Deb],
    store: &Store,
    dest: &Path,
    suite: &str,
    arch: &str,
) -> Result<(), Error> {
    let mkdir = |p: &Path| {
        fs::create_dir_all(p).map_err(io(p))?;
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).map_err(io(p))
    };
    mkdir(dest)?;
    for d in debs {
        let to = dest.join(&d.filename);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        if to.exists() {
            continue;
        }
        let from = store.path(d);
        if fs::hard_link(&from, &to).is_err() {
            fs::copy(&from, &to).map_err(io(&from))?;
        }
    }
    let index = crate::lock::render_index(&lock.stanzas);
    let rel = format!("{COMPONENT}/binary-{arch}/Packages");
    let dists = dest.join("dists").join(suite);
    let packages = dists.join(&rel);
    if let Some(parent) = packages.parent() {
        fs::create_dir_all(parent).map_err(io(parent))?;
    }
    fs::write(&packages, &index).map_err(io(&packages))?;
    let release = release_text(suite, arch, &rel, index.as_bytes());
    let release_path = dists.join("Release");
    fs::write(&release_path, release).map_err(io(&release_path))?;
    let list = dest.join("kiln-lock.list");
    fs::write(
        &list,
        format!("deb [trusted=yes] file:{CHROOT_PATH} {suite} {COMPONENT}\n"),
    )
    .map_err(io(&list))?;
    mkdir(&dest.join("sources.list.d"))?;
    let conf = dest.join("apt.conf");
    fs::write(&conf, apt_conf()).map_err(io(&conf))?;
    // Readable by apt's sandbox user and by the chroot whatever the umask was.
    let chmod = Cmd::new("chmod").args(["-R", "a+rX"]).arg(dest);
    chmod.run().map_err(|e| Error::Io {
        path: dest.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(())
}

/// The apt configuration a locked build puts in the image's `apt.conf.d` while it builds:
/// apt reads only the local repository's sources.
pub fn apt_conf() -> String {
    format!(
        "// kiln: a locked build installs only from the lock's local repository (removed at the end of the build).\nDir::Etc::SourceList \"{CHROOT_PATH}/kiln-lock.list\";\nDir::Etc::SourceParts \"{CHROOT_PATH}/sources.list.d\";\n"
    )
}

/// The `Release` file of the local repository: its one index with size and SHA256.
fn release_text(suite: &str, arch: &str, rel: &str, packages: &[u8]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Origin: kiln");
    let _ = writeln!(s, "Label: kiln lock");
    let _ = writeln!(s, "Suite: {suite}");
    let _ = writeln!(s, "Codename: {suite}");
    let _ = writeln!(s, "Architectures: {arch}");
    let _ = writeln!(s, "Components: {COMPONENT}");
    let _ = writeln!(
        s,
        "Description: the packages of a kiln lock, checked by SHA256"
    );
    let _ = writeln!(s, "SHA256:");
    let _ = writeln!(
        s,
        " {} {} {rel}",
        hex::encode(Sha256::digest(packages)),
        packages.len()
    );
    s
}

/// The packages of `wanted` (names as package-installs, `-p` and the bootstrap give them,
/// perhaps with `:arch` or `=version`) that `lock` does not hold, sorted.
pub fn not_in_lock<'a>(lock: &Lock, wanted: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let have: BTreeSet<&str> = lock.stanzas.iter().map(|s| s.package.as_str()).collect();
    let mut out: BTreeSet<String> = BTreeSet::new();
    for w in wanted {
        let name = w
            .split(['=', ':'])
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        if !name.is_empty() && !have.contains(name.as_str()) {
            out.insert(name);
        }
    }
    out.into_iter().collect()
}

/// The packages apt could not find in a failing phase's output ("Unable to locate package X",
/// "Package 'X' has no installation candidate"), sorted: in a locked build, packages the lock
/// does not hold.
pub fn not_in_lock_in_output(lines: &[String]) -> Vec<String> {
    let mut out = BTreeSet::new();
    for l in lines {
        if let Some((_, rest)) = l.split_once("Unable to locate package ") {
            if let Some(name) = rest.split_whitespace().next() {
                out.insert(name.to_string());
            }
        }
        if let Some((before, _)) = l.split_once("' has no installation candidate") {
            if let Some((_, name)) = before.rsplit_once("Package '") {
                out.insert(name.to_string());
            }
        }
    }
    out.into_iter().collect()
}

/// `Locked:` (`YYYY-MM-DDTHH:MM:SSZ`) as seconds since the epoch, the default
/// `SOURCE_DATE_EPOCH` of a locked build.
pub fn locked_epoch(locked: &str) -> Option<u64> {
    let b = locked.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| locked.get(r).and_then(|s| s.parse::<i64>().ok());
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Civil date to days since 1970-01-01 (the era-based algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::{format_utc, LockMeta, LockedSuite};

    fn lock_with(stanzas: &str, uri: &str) -> Lock {
        Lock {
            stanzas: crate::lock::parse_index(stanzas, Path::new("kiln.lock"), "h").unwrap(),
            meta: LockMeta {
                locked: "2026-01-02T03:04:05Z".into(),
                architectures: vec!["amd64".into()],
                elements: vec!["x".into()],
                packages_sha256: String::new(),
                suites: vec![LockedSuite {
                    uri: uri.into(),
                    suite: "bookworm".into(),
                    components: vec!["main".into()],
                    inrelease_sha256: "x".into(),
                }],
            },
            origin: BTreeMap::new(),
        }
    }

    #[test]
    fn locked_time_round_trips_to_epoch_seconds() {
        for secs in [0, 951_782_400, 1_767_225_599, 1_796_000_000] {
            assert_eq!(locked_epoch(&format_utc(secs)), Some(secs));
        }
        assert_eq!(locked_epoch("2026-13-01T00:00:00Z"), None);
        assert_eq!(locked_epoch("yesterday"), None);
    }

    #[test]
    fn filenames_that_leave_the_repository_are_refused() {
        let l = lock_with(
            "Package: a\nVersion: 1\nArchitecture: all\nFilename: ../../etc/passwd\nSize: 1\nSHA256: 0000000000000000000000000000000000000000000000000000000000000000\n",
            "file:/m",
        );
        let e = debs(&l, Path::new("/x/kiln.lock")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/x/kiln.lock: the stanza of a has no usable Filename field; re-create the lock with `kiln lock`"
        );
        assert!(e.is_input_error());
        assert!(safe_relative("pool/main/a/a_1_all.deb"));
        assert!(!safe_relative("/pool/a.deb"));
    }

    #[test]
    fn apt_messages_name_the_missing_packages() {
        let lines = [
            "E: Unable to locate package frobnicate".to_string(),
            "E: Package 'vim' has no installation candidate".to_string(),
            "Reading package lists...".to_string(),
        ];
        assert_eq!(not_in_lock_in_output(&lines), ["frobnicate", "vim"]);
    }

    #[test]
    fn wanted_names_are_compared_without_arch_or_version() {
        let l = lock_with(
            "Package: a\nVersion: 1\nArchitecture: all\n\nPackage: b\nVersion: 1\nArchitecture: all\n",
            "file:/m",
        );
        let wanted: Vec<String> = ["a:amd64", "b=1", "c", "c"].map(String::from).to_vec();
        assert_eq!(not_in_lock(&l, &wanted), ["c"]);
    }
}
