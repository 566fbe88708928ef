//! `kiln lock`: the package closure a build installs, pinned in an apt `Packages` index.
//!
//! A lock is two files. `kiln.lock` is an ordinary apt `Packages` index: one stanza per package
//! the build installs, copied byte for byte from the archive's own index (Package, Version,
//! Architecture, Filename, Size, SHA256 and the rest), sorted by package, architecture and
//! version, so `git diff` of two locks reads as a changelog and apt can later serve it as a
//! local repository. `kiln.lock.meta` (deb822 as well) says where the stanzas came from: the
//! time of locking, the architectures, the elements, the digest of `kiln.lock`, and one stanza
//! per suite with its URI as configured, its components and the sha256 of its `InRelease`.
//!
//! The closure is computed without building anything: the hook tree is laid out and
//! environment.d evaluated exactly as a build does (so pkg-map and `when:` conditions give the
//! same lists), then apt runs on a private state directory (`APT_CONFIG`, nothing of the host's
//! apt configuration or state is read) with the image's sources, fetches their indexes and
//! simulates installing, from nothing, the bootstrap's base set (when the `debootstrap` element
//! is in the build: every `Essential: yes` and `Priority: required` package, `apt`, `tzdata` and
//! `DIB_DEBOOTSTRAP_EXTRA_PACKAGES`, as the minbase bootstrap does), every phase's
//! package-installs list after pkg-map, and `-p`. Recommends are off, as the dpkg element sets
//! them. What apt would install is the lock. Packages a hook installs by calling apt itself
//! are not seen (see `docs/reproducible.md`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use deb822_lossless::Deb822;
use kiln_host::Cmd;
use sha2::{Digest, Sha256};

use crate::cache::mirror::{self, Suite};
use crate::plan::BuildPlan;
use crate::settings;

/// The lock file's default name.
pub const LOCK_FILE: &str = "kiln.lock";
/// What is appended to the lock file's name to name its side file.
pub const META_SUFFIX: &str = ".meta";
/// The format version written in the side file.
pub const FORMAT: &str = "1";

/// What can go wrong making, reading or comparing a lock.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Control data that does not parse (a lock, its side file or an archive index).
    #[error("{path}:{line}: {message}; {hint}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The line (1-based).
        line: usize,
        /// What is wrong.
        message: String,
        /// What to do.
        hint: &'static str,
    },
    /// A stanza without a field every package stanza has.
    #[error("{path}:{line}: stanza has no {field} field; {hint}")]
    MissingField {
        /// The file.
        path: PathBuf,
        /// The line where the stanza starts.
        line: usize,
        /// The missing field.
        field: &'static str,
        /// What to do.
        hint: &'static str,
    },
    /// An I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The build names no apt source to resolve against.
    #[error("the elements name no apt source (DIB_APT_SOURCES_CONF, DIB_APT_SOURCES or DIB_DISTRIBUTION_MIRROR with DIB_RELEASE): add an operating-system element such as debian-minimal, or set DIB_DISTRIBUTION_MIRROR")]
    NoSources,
    /// apt failed on the private state directory.
    #[error("apt-get {what} failed: {message}; check the image's apt sources and the package names the elements and -p ask for")]
    Apt {
        /// The apt-get command (`update`, `install --simulate`).
        what: String,
        /// Its error, with the end of its output.
        message: String,
    },
    /// apt chose a package the fetched indexes do not list.
    #[error(
        "apt would install {package} {version} ({arch}), but no fetched Packages index lists it"
    )]
    NotIndexed {
        /// Package name.
        package: String,
        /// Version.
        version: String,
        /// Architecture.
        arch: String,
    },
}

impl Error {
    /// Whether the error is the user's input (exit 2): a lock or side file that does not parse.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            Self::Parse { .. } | Self::MissingField { .. } | Self::NoSources
        )
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One package stanza, as the archive's index has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stanza {
    /// `Package`.
    pub package: String,
    /// `Version`.
    pub version: String,
    /// `Architecture`.
    pub architecture: String,
    /// The stanza's text, byte for byte, ending in one newline.
    pub text: String,
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |t| t.bytes().filter(|b| *b == b'\n').count() + 1)
}

/// The paragraphs of deb822 `text` read from `path`, as (first line, field lookup, verbatim
/// text). Parse errors name the file and line, with `hint` saying what to do.
fn paragraphs(
    text: &str,
    path: &Path,
    hint: &'static str,
) -> Result<Vec<(usize, deb822_lossless::Paragraph, String)>, Error> {
    let parsed = Deb822::parse(text);
    if let Some(e) = parsed.positioned_errors().first() {
        return Err(Error::Parse {
            path: path.to_path_buf(),
            line: line_of(text, usize::from(e.range.start())),
            message: e.message.clone(),
            hint,
        });
    }
    if let Some(e) = parsed.errors().first() {
        return Err(Error::Parse {
            path: path.to_path_buf(),
            line: 1,
            message: e.clone(),
            hint,
        });
    }
    let tree = parsed.tree();
    let mut out = Vec::new();
    for p in tree.paragraphs() {
        let r = p.text_range();
        let (start, end) = (usize::from(r.start()), usize::from(r.end()));
        let raw = text.get(start..end).unwrap_or_default();
        let verbatim = format!("{}\n", raw.trim_end_matches('\n'));
        out.push((line_of(text, start), p, verbatim));
    }
    Ok(out)
}

/// Reads a `Packages` index (an archive's, or a lock) into its stanzas, in file order.
pub fn parse_index(text: &str, path: &Path, hint: &'static str) -> Result<Vec<Stanza>, Error> {
    let mut out = Vec::new();
    for (line, p, verbatim) in paragraphs(text, path, hint)? {
        let get = |field: &'static str| {
            p.get(field).ok_or_else(|| Error::MissingField {
                path: path.to_path_buf(),
                line,
                field,
                hint,
            })
        };
        out.push(Stanza {
            package: get("Package")?,
            version: get("Version")?,
            architecture: get("Architecture")?,
            text: verbatim,
        });
    }
    Ok(out)
}

/// The stanzas sorted (package, architecture, version) and joined as a `Packages` index.
pub fn render_index(stanzas: &[Stanza]) -> String {
    let mut v: Vec<&Stanza> = stanzas.iter().collect();
    v.sort_by(|a, b| {
        (&a.package, &a.architecture, &a.version).cmp(&(&b.package, &b.architecture, &b.version))
    });
    v.dedup_by(|a, b| {
        a.package == b.package && a.architecture == b.architecture && a.version == b.version
    });
    v.iter()
        .map(|s| s.text.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// One suite the lock was resolved against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedSuite {
    /// The archive URI as the sources configure it, without any `user:password@`.
    pub uri: String,
    /// The suite (or a flat repository's path ending in `/`).
    pub suite: String,
    /// The components whose indexes were read.
    pub components: Vec<String>,
    /// sha256 of the suite's `InRelease` (else `Release`), or `unavailable`.
    pub inrelease_sha256: String,
}

/// The side file: where and when the lock was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockMeta {
    /// When it was locked, UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub locked: String,
    /// The architectures resolved for.
    pub architectures: Vec<String>,
    /// The elements asked for.
    pub elements: Vec<String>,
    /// sha256 of the lock file.
    pub packages_sha256: String,
    /// The suites, sorted.
    pub suites: Vec<LockedSuite>,
}

impl LockMeta {
    /// The side file's text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "Kiln-Lock-Format: {FORMAT}");
        let _ = writeln!(s, "Locked: {}", self.locked);
        let _ = writeln!(s, "Architectures: {}", self.architectures.join(" "));
        let _ = writeln!(s, "Elements: {}", self.elements.join(" "));
        let _ = writeln!(s, "Packages-SHA256: {}", self.packages_sha256);
        for suite in &self.suites {
            let _ = writeln!(s);
            let _ = writeln!(s, "URI: {}", suite.uri);
            let _ = writeln!(s, "Suite: {}", suite.suite);
            let _ = writeln!(s, "Components: {}", suite.components.join(" "));
            let _ = writeln!(s, "InRelease-SHA256: {}", suite.inrelease_sha256);
        }
        s
    }

    /// Reads a side file.
    pub fn parse(text: &str, path: &Path) -> Result<Self, Error> {
        const HINT: &str = "re-create it with `kiln lock`";
        let paras = paragraphs(text, path, HINT)?;
        let Some((line, head, _)) = paras.first() else {
            return Err(Error::Parse {
                path: path.to_path_buf(),
                line: 1,
                message: "empty side file".into(),
                hint: HINT,
            });
        };
        let need = |p: &deb822_lossless::Paragraph, line: usize, field: &'static str| {
            p.get(field).ok_or_else(|| Error::MissingField {
                path: path.to_path_buf(),
                line,
                field,
                hint: HINT,
            })
        };
        let words = |s: String| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let format = need(head, *line, "Kiln-Lock-Format")?;
        if format != FORMAT {
            return Err(Error::Parse {
                path: path.to_path_buf(),
                line: *line,
                message: format!("lock format {format} is not {FORMAT}, the one this kiln reads"),
                hint: HINT,
            });
        }
        let mut suites = Vec::new();
        for (line, p, _) in paras.iter().skip(1) {
            suites.push(LockedSuite {
                uri: need(p, *line, "URI")?,
                suite: need(p, *line, "Suite")?,
                components: words(need(p, *line, "Components")?),
                inrelease_sha256: need(p, *line, "InRelease-SHA256")?,
            });
        }
        Ok(Self {
            locked: need(head, *line, "Locked")?,
            architectures: words(need(head, *line, "Architectures")?),
            elements: words(need(head, *line, "Elements")?),
            packages_sha256: need(head, *line, "Packages-SHA256")?,
            suites,
        })
    }
}

/// A lock: the stanzas and the side file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    /// The package stanzas, sorted.
    pub stanzas: Vec<Stanza>,
    /// Where and when.
    pub meta: LockMeta,
    /// Per package name, the suite its stanza came from (known for a fresh resolution only).
    pub origin: BTreeMap<String, String>,
}

impl Lock {
    /// The side file's path for the lock at `path`.
    pub fn meta_path(path: &Path) -> PathBuf {
        let mut s = path.as_os_str().to_os_string();
        s.push(META_SUFFIX);
        PathBuf::from(s)
    }

    /// Writes the lock to `path` and its side file beside it, each through a temporary file
    /// renamed into place.
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        let index = render_index(&self.stanzas);
        let mut meta = self.meta.clone();
        meta.packages_sha256 = hex::encode(Sha256::digest(index.as_bytes()));
        write_atomically(path, &index)?;
        write_atomically(&Self::meta_path(path), &meta.render())
    }

    /// Reads the lock at `path` and its side file.
    pub fn read(path: &Path) -> Result<Self, Error> {
        const HINT: &str = "re-create it with `kiln lock`";
        let text = fs::read_to_string(path).map_err(io(path))?;
        let stanzas = parse_index(&text, path, HINT)?;
        let meta_path = Self::meta_path(path);
        let meta_text = fs::read_to_string(&meta_path).map_err(io(&meta_path))?;
        let meta = LockMeta::parse(&meta_text, &meta_path)?;
        Ok(Self {
            stanzas,
            meta,
            origin: BTreeMap::new(),
        })
    }
}

fn write_atomically(path: &Path, text: &str) -> Result<(), Error> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io(dir))?;
    fs::write(tmp.path(), text).map_err(io(tmp.path()))?;
    tmp.persist(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// The current time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs)
}

/// `secs` after the epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian calendar).
pub fn format_utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (the era-based algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// --- resolving --------------------------------------------------------------------------------

/// What to resolve: the sources, the architecture and the packages asked for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// apt one-line sources (`deb [opts] URI SUITE COMPONENT...`).
    pub sources_list: Vec<String>,
    /// A deb822 `.sources` file's text, if the image's sources come as one.
    pub sources_deb822: Option<String>,
    /// The image's architecture.
    pub arch: String,
    /// Whether the bootstrap's base set is part of the image (the debootstrap element).
    pub base_set: bool,
    /// The packages the phases ask for (package-installs after pkg-map, `-p`, the bootstrap's
    /// includes).
    pub packages: BTreeSet<String>,
    /// Keyrings apt trusts for the sources.
    pub keyrings: Vec<PathBuf>,
    /// Accept unsigned repositories (`DIB_DEBOOTSTRAP_INSECURE=1`).
    pub insecure: bool,
    /// Accept expired Release files (`DIB_APT_ALLOW_EXPIRED=1`).
    pub allow_expired: bool,
}

/// The resolution: the stanzas apt would install and the suites read.
#[derive(Debug, Clone)]
pub struct Resolution {
    /// The stanzas, in no particular order.
    pub stanzas: Vec<Stanza>,
    /// Per package name, the suite its stanza came from.
    pub origin: BTreeMap<String, String>,
    /// The suites read.
    pub suites: Vec<LockedSuite>,
}

/// The request a build of `plan` makes, from the environment environment.d leaves
/// (`evaluated`) and the package lists written under `hooks/.kiln/package-installs`.
pub fn request_for(
    plan: &BuildPlan,
    evaluated: &BTreeMap<String, String>,
    hooks: &Path,
) -> Result<Request, Error> {
    let mut req = Request {
        arch: plan.arch.clone(),
        ..Request::default()
    };
    if let Some(conf) = evaluated.get(mirror::APT_SOURCES_CONF) {
        for entry in conf.lines() {
            if let Some((_, line)) = entry.split_once(':') {
                if mirror::parse_one_line(line).is_some() {
                    req.sources_list.push(line.trim().to_string());
                }
            }
        }
    }
    if let Some(file) = evaluated.get(mirror::APT_SOURCES).filter(|f| !f.is_empty()) {
        let path = Path::new(file);
        let text = fs::read_to_string(path).map_err(io(path))?;
        if text.lines().any(|l| {
            let l = l.trim_start().to_ascii_lowercase();
            l.starts_with("types:") || l.starts_with("uris:")
        }) {
            req.sources_deb822 = Some(text);
        } else {
            req.sources_list.extend(
                text.lines()
                    .filter(|l| mirror::parse_one_line(l).is_some())
                    .map(|l| l.trim().to_string()),
            );
        }
    }
    if req.sources_list.is_empty() && req.sources_deb822.is_none() {
        if let (Some(m), Some(r)) = (
            settings::DIB_DISTRIBUTION_MIRROR.get(evaluated),
            settings::DIB_RELEASE.get(evaluated),
        ) {
            let components = settings::DIB_DEBIAN_COMPONENTS
                .get(evaluated)
                .map_or("main".to_string(), |c| c.replace(',', " "));
            req.sources_list.push(format!("deb {m} {r} {components}"));
        }
    }
    if req.sources_list.is_empty() && req.sources_deb822.is_none() {
        return Err(Error::NoSources);
    }
    req.base_set = plan.set.elements.iter().any(|e| e.name == "debootstrap");
    if req.base_set {
        req.packages
            .extend(["apt".to_string(), "tzdata".to_string()]);
        if let Some(extra) = settings::DIB_DEBOOTSTRAP_EXTRA_PACKAGES.get(evaluated) {
            req.packages.extend(
                extra
                    .split([' ', '\t', ','])
                    .filter(|p| !p.is_empty())
                    .map(String::from),
            );
        }
    }
    let lists = hooks.join(".kiln/package-installs");
    if lists.is_dir() {
        let mut entries: Vec<PathBuf> = fs::read_dir(&lists)
            .map_err(io(&lists))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "install"))
            .collect();
        entries.sort();
        for p in entries {
            let text = fs::read_to_string(&p).map_err(io(&p))?;
            req.packages.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from),
            );
        }
    }
    req.packages.extend(plan.request.package_list());
    if let Some(k) = settings::DIB_APT_KEYRING
        .get(evaluated)
        .filter(|k| !k.is_empty())
    {
        req.keyrings.push(PathBuf::from(k));
    } else if let Some(distro) = settings::DISTRO_NAME.get(evaluated) {
        let default = PathBuf::from(format!("/usr/share/keyrings/{distro}-archive-keyring.gpg"));
        if default.is_file() {
            req.keyrings.push(default);
        }
    }
    req.insecure = settings::DIB_DEBOOTSTRAP_INSECURE
        .get(evaluated)
        .is_some_and(|v| v == "1");
    req.allow_expired = settings::DIB_APT_ALLOW_EXPIRED
        .get(evaluated)
        .is_some_and(|v| v == "1");
    Ok(req)
}

/// A private apt: configuration, sources, lists and an empty dpkg status under one directory.
struct AptRoot {
    dir: tempfile::TempDir,
}

impl AptRoot {
    fn new(req: &Request) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("kiln-lock.")
            .tempdir()
            .map_err(io(Path::new("/tmp")))?;
        let root = dir.path();
        for d in [
            "etc/apt/apt.conf.d",
            "etc/apt/preferences.d",
            "etc/apt/sources.list.d",
            "etc/apt/trusted.gpg.d",
            "var/lib/apt/lists/partial",
            "var/cache/apt/archives/partial",
            "var/lib/dpkg",
            "var/log/apt",
        ] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io(&p))?;
        }
        let status = root.join("var/lib/dpkg/status");
        fs::write(&status, "").map_err(io(&status))?;
        for (i, k) in req.keyrings.iter().enumerate() {
            let ext = if k.extension().is_some_and(|x| x == "asc") {
                "asc"
            } else {
                "gpg"
            };
            let dest = root.join(format!("etc/apt/trusted.gpg.d/kiln-{i}.{ext}"));
            fs::copy(k, &dest).map_err(io(k))?;
        }
        let list = root.join("etc/apt/sources.list");
        fs::write(&list, req.sources_list.join("\n") + "\n").map_err(io(&list))?;
        if let Some(text) = &req.sources_deb822 {
            let p = root.join("etc/apt/sources.list.d/image.sources");
            fs::write(&p, text).map_err(io(&p))?;
        }
        let r = root.display();
        let arch = &req.arch;
        let mut conf = format!(
            "Dir \"{r}/\";\n\
             Dir::State::status \"{r}/var/lib/dpkg/status\";\n\
             APT::Architecture \"{arch}\";\n\
             APT::Architectures {{ \"{arch}\"; }};\n\
             APT::Install-Recommends \"false\";\n\
             APT::Install-Suggests \"false\";\n\
             APT::Sandbox::User \"root\";\n\
             Acquire::Languages \"none\";\n\
             Acquire::GzipIndexes \"false\";\n\
             Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled \"false\";\n\
             Debug::NoLocking \"true\";\n"
        );
        if req.insecure {
            conf.push_str("Acquire::AllowInsecureRepositories \"true\";\n");
        }
        if req.allow_expired {
            conf.push_str(
                "Acquire::Check-Valid-Until \"false\";\nAcquire::Check-Date \"false\";\n",
            );
        }
        let p = root.join("etc/apt/apt.conf");
        fs::write(&p, conf).map_err(io(&p))?;
        Ok(Self { dir })
    }

    fn apt(&self, program: &str) -> Cmd {
        Cmd::new(program)
            .env("APT_CONFIG", self.dir.path().join("etc/apt/apt.conf"))
            .env("LC_ALL", "C.UTF-8")
            .env("DEBIAN_FRONTEND", "noninteractive")
    }
}

/// Runs an apt command; its stderr's last lines make the error when it fails, or when
/// `apt-get update` could not fetch an index (it exits 0 then).
fn run_apt(what: &str, cmd: &Cmd) -> Result<String, Error> {
    let out = cmd.run_unchecked().map_err(|e| Error::Apt {
        what: what.into(),
        message: e.to_string(),
    })?;
    let stderr = out.stderr_str();
    // apt-get update exits 0 when an index could not be fetched; its "E:"/"W:" lines say so.
    let failed_fetch = stderr
        .lines()
        .any(|l| l.starts_with("E:") || (l.starts_with("W:") && l.contains("Failed to fetch")));
    if !out.status.success() || failed_fetch {
        let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let start = tail.len().saturating_sub(8);
        return Err(Error::Apt {
            what: what.into(),
            message: tail[start..].join(" / "),
        });
    }
    Ok(out.stdout_str())
}

/// One fetched `Packages` index.
struct Target {
    file: PathBuf,
    uri: String,
    suite: String,
    component: String,
}

/// The `Packages` indexes apt fetched, from `apt-get indextargets`.
fn targets(root: &AptRoot) -> Result<Vec<Target>, Error> {
    let text = run_apt(
        "indextargets",
        &root
            .apt("apt-get")
            .args(["indextargets", "Identifier: Packages"]),
    )?;
    let mut out = Vec::new();
    for (_, p, _) in paragraphs(&text, Path::new("apt-get indextargets"), "report a bug")? {
        let (Some(file), Some(base), Some(suite)) =
            (p.get("Filename"), p.get("Base-URI"), p.get("Release"))
        else {
            continue;
        };
        let file = PathBuf::from(file);
        if !file.is_file() {
            continue;
        }
        let base = base.trim_end_matches('/');
        let dists = format!("/dists/{}", suite.trim_end_matches('/'));
        let uri = base.strip_suffix(&dists).unwrap_or(base).to_string();
        out.push(Target {
            file,
            uri,
            suite,
            component: p.get("Component").unwrap_or_default(),
        });
    }
    Ok(out)
}

/// `Inst NAME (VERSION SUITES [ARCH])` lines of `apt-get --simulate` as (name, version, arch).
pub fn parse_simulation(out: &str) -> Vec<(String, String, String)> {
    let mut v = Vec::new();
    for line in out.lines() {
        let Some(rest) = line.strip_prefix("Inst ") else {
            continue;
        };
        let Some((name, tail)) = rest.split_once(' ') else {
            continue;
        };
        // `(VERSION RELEASES [ARCH])`, sometimes followed by ` []` (apt's note of packages it
        // must break a loop for): only the first parenthesis counts.
        let Some(open) = tail.find('(') else { continue };
        let rest = &tail[open + 1..];
        let inner = rest.split_once(')').map_or(rest, |(i, _)| i);
        let version = inner.split_whitespace().next().unwrap_or_default();
        let arch = inner
            .rsplit_once('[')
            .map(|(_, a)| a.trim_end_matches(']'))
            .unwrap_or_default();
        let name = name.split(':').next().unwrap_or(name);
        if !version.is_empty() && !arch.is_empty() {
            v.push((name.to_string(), version.to_string(), arch.to_string()));
        }
    }
    v
}

/// The apt pattern of the minbase bootstrap's own set: every `Essential: yes` and every
/// `Priority: required` package (of the one architecture apt is configured for).
pub const BASE_SET_PATTERN: &str = "?or(?essential,?priority(required))";

/// The stanzas of a `Packages` index `text` whose `Package` is one of `names`, as slices of the
/// text. An archive's index holds tens of thousands of stanzas; only the few the lock needs
/// are handed to the control-data parser. Stanzas are separated by blank lines (the format's
/// rule); the name is read from the `Package:` line only to choose which to parse.
pub fn stanzas_named<'a>(text: &'a str, names: &BTreeSet<&str>) -> Vec<&'a str> {
    text.split("\n\n")
        .filter(|chunk| {
            chunk
                .lines()
                .find_map(|l| l.strip_prefix("Package:"))
                .is_some_and(|n| names.contains(n.trim()))
        })
        .collect()
}

/// The suites apt read, with their URIs as `req` configures them (apt spells `file:///x` as
/// `file:/x`), without credentials, and each one's `InRelease` digest.
fn locked_suites(
    req: &Request,
    suites: BTreeMap<(String, String), BTreeSet<String>>,
) -> Vec<LockedSuite> {
    let mut configured: Vec<String> = req
        .sources_list
        .iter()
        .filter_map(|l| mirror::parse_one_line(l))
        .map(|s| s.uri)
        .collect();
    if let Some(text) = &req.sources_deb822 {
        configured.extend(mirror::parse_sources_file(text).into_iter().map(|s| s.uri));
    }
    suites
        .into_iter()
        .map(|((uri, suite), components)| {
            // apt spells `file:///x` as `file:/x`: the lock names the URI as configured.
            let uri = configured
                .iter()
                .find(|c| normalise_uri(c) == normalise_uri(&uri))
                .cloned()
                .unwrap_or(uri);
            let digest = mirror::suite_digest(
                &Suite {
                    uri: uri.clone(),
                    suite: suite.clone(),
                },
                mirror::FETCH_TIMEOUT,
            );
            LockedSuite {
                uri: mirror::redact(&uri),
                suite,
                components: components.into_iter().collect(),
                inrelease_sha256: digest,
            }
        })
        .collect()
}

/// Resolves `req` with apt on a private state directory (fetching the sources' indexes) and
/// returns the stanzas of everything apt would install into an empty system.
pub fn resolve(req: &Request) -> Result<Resolution, Error> {
    let root = AptRoot::new(req)?;
    run_apt("update", &root.apt("apt-get").args(["-q", "update"]))?;
    let targets = targets(&root)?;
    let mut suites: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for t in &targets {
        suites
            .entry((t.uri.clone(), t.suite.clone()))
            .or_default()
            .insert(t.component.clone());
    }
    let mut wanted: Vec<String> = req.packages.iter().cloned().collect();
    if req.base_set {
        wanted.push(BASE_SET_PATTERN.to_string());
    }
    let mut stanzas = Vec::new();
    let mut origin = BTreeMap::new();
    if !wanted.is_empty() {
        let out = run_apt(
            "install --simulate",
            &root
                .apt("apt-get")
                .args(["-q", "--simulate", "--assume-yes", "install"])
                .args(&wanted),
        )?;
        let chosen: BTreeSet<(String, String, String)> =
            parse_simulation(&out).into_iter().collect();
        let names: BTreeSet<&str> = chosen.iter().map(|c| c.0.as_str()).collect();
        // The chosen stanzas, with the suite each came from (a security suite wins when the
        // same version is in several).
        let mut found: BTreeMap<(String, String, String), (Stanza, String)> = BTreeMap::new();
        for t in &targets {
            let text = fs::read_to_string(&t.file).map_err(io(&t.file))?;
            for chunk in stanzas_named(&text, &names) {
                for s in parse_index(
                    chunk,
                    &t.file,
                    "the archive's index is damaged; run kiln lock again",
                )? {
                    let key = (s.package.clone(), s.version.clone(), s.architecture.clone());
                    if !chosen.contains(&key) {
                        continue;
                    }
                    match found.entry(key) {
                        std::collections::btree_map::Entry::Vacant(e) => {
                            e.insert((s, t.suite.clone()));
                        }
                        std::collections::btree_map::Entry::Occupied(mut e) => {
                            if is_security_suite(&t.suite) {
                                e.get_mut().1.clone_from(&t.suite);
                            }
                        }
                    }
                }
            }
        }
        for (name, version, arch) in chosen {
            let Some((s, suite)) = found.remove(&(name.clone(), version.clone(), arch.clone()))
            else {
                return Err(Error::NotIndexed {
                    package: name,
                    version,
                    arch,
                });
            };
            origin.insert(name, suite);
            stanzas.push(s);
        }
    }
    let locked_suites = locked_suites(req, suites);
    Ok(Resolution {
        stanzas,
        origin,
        suites: locked_suites,
    })
}

/// `uri` without a trailing slash, with `file:///` and `file://localhost/` written `file:/`.
fn normalise_uri(uri: &str) -> String {
    let uri = uri.trim_end_matches('/');
    for prefix in ["file://localhost/", "file:///"] {
        if let Some(rest) = uri.strip_prefix(prefix) {
            return format!("file:/{rest}");
        }
    }
    uri.to_string()
}

/// Makes the lock of `plan`: lays the hook tree out in a temporary directory and evaluates
/// environment.d as a build does (no hook runs), then resolves with apt.
pub fn lock(plan: &BuildPlan) -> Result<Lock, crate::Error> {
    let tmp = tempfile::tempdir().map_err(crate::io(Path::new("/tmp")))?;
    let build_dir = tmp.path().join("build");
    let image_dir = tmp.path().join("image");
    fs::create_dir_all(&build_dir).map_err(crate::io(&build_dir))?;
    fs::create_dir_all(&image_dir).map_err(crate::io(&image_dir))?;
    let prepared = crate::pipeline::prepare(plan, &build_dir, &image_dir)?;
    let req = request_for(plan, &prepared.evaluated, &build_dir.join("hooks"))?;
    let res = resolve(&req)?;
    let index = render_index(&res.stanzas);
    let stanzas = parse_index(&index, Path::new(LOCK_FILE), "report a bug")?;
    Ok(Lock {
        meta: LockMeta {
            locked: now_utc(),
            architectures: vec![plan.arch.clone()],
            elements: plan.request.elements.clone(),
            packages_sha256: hex::encode(Sha256::digest(index.as_bytes())),
            suites: res.suites,
        },
        stanzas,
        origin: res.origin,
    })
}

// --- comparing --------------------------------------------------------------------------------

/// One package whose version changed between two locks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Upgrade {
    /// Package name.
    pub package: String,
    /// Architecture.
    pub architecture: String,
    /// Version in the old lock.
    pub old: String,
    /// Version in the new lock.
    pub new: String,
    /// Whether the new version comes from a security suite.
    pub security: bool,
}

/// One package only one of the two locks holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    /// Package name.
    pub package: String,
    /// Architecture.
    pub architecture: String,
    /// Version.
    pub version: String,
    /// Whether it comes from a security suite (added packages only).
    pub security: bool,
}

/// What changed from one lock to the next (`kiln lock --update`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Diff {
    /// In the new lock only.
    pub added: Vec<Change>,
    /// In the old lock only.
    pub removed: Vec<Change>,
    /// In both, with another version.
    pub upgraded: Vec<Upgrade>,
}

impl Diff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.upgraded.is_empty()
    }

    /// One line per change: `+ name version`, `- name version`, `~ name old -> new`, with
    /// ` (security)` where it applies.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let sec = |b: bool| if b { " (security)" } else { "" };
        for c in &self.added {
            let _ = writeln!(s, "+ {} {}{}", c.package, c.version, sec(c.security));
        }
        for c in &self.removed {
            let _ = writeln!(s, "- {} {}", c.package, c.version);
        }
        for u in &self.upgraded {
            let _ = writeln!(
                s,
                "~ {} {} -> {}{}",
                u.package,
                u.old,
                u.new,
                sec(u.security)
            );
        }
        s
    }
}

/// Whether `suite` is a security suite (`bookworm-security`, `jammy-security`, `buster/updates`).
pub fn is_security_suite(suite: &str) -> bool {
    suite.ends_with("-security") || suite.ends_with("/updates")
}

/// The changes from `old` to `new`; `new.origin` marks the security suite's packages.
pub fn diff(old: &Lock, new: &Lock) -> Diff {
    let key = |s: &Stanza| (s.package.clone(), s.architecture.clone());
    let o: BTreeMap<_, _> = old.stanzas.iter().map(|s| (key(s), s)).collect();
    let n: BTreeMap<_, _> = new.stanzas.iter().map(|s| (key(s), s)).collect();
    let security = |p: &str| new.origin.get(p).is_some_and(|s| is_security_suite(s));
    let mut d = Diff::default();
    for (k, s) in &n {
        match o.get(k) {
            None => d.added.push(Change {
                package: s.package.clone(),
                architecture: s.architecture.clone(),
                version: s.version.clone(),
                security: security(&s.package),
            }),
            Some(old) if old.version != s.version => d.upgraded.push(Upgrade {
                package: s.package.clone(),
                architecture: s.architecture.clone(),
                old: old.version.clone(),
                new: s.version.clone(),
                security: security(&s.package),
            }),
            Some(_) => {}
        }
    }
    for (k, s) in &o {
        if !n.contains_key(k) {
            d.removed.push(Change {
                package: s.package.clone(),
                architecture: s.architecture.clone(),
                version: s.version.clone(),
                security: false,
            });
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = "Package: zlib1g\nVersion: 1:1.2.13\nArchitecture: amd64\nPriority: optional\nFilename: pool/main/z/zlib1g_1.2.13_amd64.deb\nSize: 10\nSHA256: aa\nDescription: compression\n  a continuation line\n .\n kept as is\n\nPackage: base-files\nEssential: yes\nVersion: 12.4\nArchitecture: amd64\nFilename: pool/main/b/base-files_12.4_amd64.deb\nSize: 20\nSHA256: bb\n\nPackage: apt\nVersion: 2.6.1\nArchitecture: amd64\nPriority: required\nSize: 30\nSHA256: cc\n\nPackage: base-files\nEssential: yes\nVersion: 12.4\nArchitecture: amd64\nFilename: pool/main/b/base-files_12.4_amd64.deb\nSize: 20\nSHA256: bb\n\nPackage: armonly\nPriority: required\nVersion: 1\nArchitecture: arm64\n";

    #[test]
    fn stanzas_are_read_verbatim_and_written_sorted_without_duplicates() {
        let stanzas = parse_index(INDEX, Path::new("Packages"), "hint").unwrap();
        assert_eq!(stanzas.len(), 5);
        assert_eq!(stanzas[0].package, "zlib1g");
        assert_eq!(stanzas[0].version, "1:1.2.13");
        // Continuation lines, the " ." line and field order are kept byte for byte.
        assert!(INDEX.starts_with(&stanzas[0].text), "{}", stanzas[0].text);
        assert!(stanzas[0].text.ends_with(" kept as is\n"));
        let out = render_index(&stanzas);
        let order: Vec<String> = parse_index(&out, Path::new("kiln.lock"), "hint")
            .unwrap()
            .into_iter()
            .map(|s| s.package)
            .collect();
        assert_eq!(order, ["apt", "armonly", "base-files", "zlib1g"]);
        for s in &stanzas {
            assert!(out.contains(&s.text));
        }
        // Read back, the lock gives the same stanzas again.
        let again = render_index(&parse_index(&out, Path::new("kiln.lock"), "hint").unwrap());
        assert_eq!(again, out);
    }

    #[test]
    fn only_the_named_stanzas_are_picked_out_of_an_index() {
        let names = BTreeSet::from(["apt", "base-files"]);
        let picked = stanzas_named(INDEX, &names);
        assert_eq!(picked.len(), 3);
        let stanzas: Vec<Stanza> = picked
            .iter()
            .flat_map(|c| parse_index(c, Path::new("Packages"), "hint").unwrap())
            .collect();
        let got: Vec<&str> = stanzas.iter().map(|s| s.package.as_str()).collect();
        assert_eq!(got, ["base-files", "apt", "base-files"]);
        // Picked out, a stanza is still the index's own text.
        assert!(INDEX.contains(&stanzas[1].text));
        assert!(stanzas_named(INDEX, &BTreeSet::from(["apt-utils"])).is_empty());
    }

    #[test]
    fn bad_control_data_names_the_file_and_line() {
        let e = parse_index(
            "Package: a\nVersion: 1\nArchitecture: all\n\nPackage: b\nArchitecture: all\n",
            Path::new("/x/kiln.lock"),
            "re-lock",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "/x/kiln.lock:5: stanza has no Version field; re-lock"
        );
        assert!(e.is_input_error());
        let e =
            parse_index("Package: a\nno colon here\n", Path::new("/x/l"), "re-lock").unwrap_err();
        assert!(e.to_string().starts_with("/x/l:2: "), "{e}");
    }

    #[test]
    fn simulation_lines_give_name_version_and_architecture() {
        let out = "NOTE: This is only a simulation!\nInst libc6 (2.36-9+deb12u4 Debian:12.5/stable [amd64])\nInst tzdata (2024a-0+deb12u1 Debian:12.5/stable, Debian-Security:12/stable-security [all])\nConf libc6 (2.36-9+deb12u4 Debian:12.5/stable [amd64])\nInst libfoo:amd64 (1:2.0 localhost [amd64])\nInst libc6 (2.41-12 Debian:13.2/stable [amd64]) []\n";
        assert_eq!(
            parse_simulation(out),
            [
                ("libc6", "2.36-9+deb12u4", "amd64"),
                ("tzdata", "2024a-0+deb12u1", "all"),
                ("libfoo", "1:2.0", "amd64"),
                ("libc6", "2.41-12", "amd64"),
            ]
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        );
    }

    #[test]
    fn the_side_file_round_trips() {
        let meta = LockMeta {
            locked: "2026-01-02T03:04:05Z".into(),
            architectures: vec!["amd64".into()],
            elements: vec!["debian-minimal".into(), "vm".into()],
            packages_sha256: "ab".into(),
            suites: vec![
                LockedSuite {
                    uri: "file:///srv/mirror/debian".into(),
                    suite: "bookworm".into(),
                    components: vec!["main".into(), "contrib".into()],
                    inrelease_sha256: "cd".into(),
                },
                LockedSuite {
                    uri: "file:///srv/mirror/debian-security".into(),
                    suite: "bookworm-security".into(),
                    components: vec!["main".into()],
                    inrelease_sha256: mirror::UNAVAILABLE.into(),
                },
            ],
        };
        let text = meta.render();
        assert!(text.contains("\n\nURI: file:///srv/mirror/debian\nSuite: bookworm\nComponents: main contrib\nInRelease-SHA256: cd\n"), "{text}");
        assert_eq!(LockMeta::parse(&text, Path::new("m")).unwrap(), meta);
        let e = LockMeta::parse("Kiln-Lock-Format: 9\n", Path::new("/l.meta")).unwrap_err();
        assert!(e.to_string().starts_with("/l.meta:1: lock format 9"), "{e}");
    }

    #[test]
    fn a_lock_is_written_and_read_back_with_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.lock");
        let stanzas = parse_index(INDEX, Path::new("Packages"), "hint").unwrap();
        let lock = Lock {
            stanzas,
            meta: LockMeta {
                locked: "2026-01-02T03:04:05Z".into(),
                architectures: vec!["amd64".into()],
                elements: vec!["x".into()],
                packages_sha256: String::new(),
                suites: Vec::new(),
            },
            origin: BTreeMap::new(),
        };
        lock.write(&path).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let back = Lock::read(&path).unwrap();
        assert_eq!(
            back.meta.packages_sha256,
            hex::encode(Sha256::digest(text.as_bytes()))
        );
        assert_eq!(back.stanzas.len(), 4);
        assert_eq!(Lock::meta_path(&path), dir.path().join("kiln.lock.meta"));
    }

    fn stanza(p: &str, v: &str) -> Stanza {
        Stanza {
            package: p.into(),
            version: v.into(),
            architecture: "amd64".into(),
            text: format!("Package: {p}\nVersion: {v}\nArchitecture: amd64\n"),
        }
    }

    fn lock_of(stanzas: Vec<Stanza>, origin: &[(&str, &str)]) -> Lock {
        Lock {
            stanzas,
            meta: LockMeta {
                locked: String::new(),
                architectures: Vec::new(),
                elements: Vec::new(),
                packages_sha256: String::new(),
                suites: Vec::new(),
            },
            origin: origin
                .iter()
                .map(|(a, b)| ((*a).to_string(), (*b).to_string()))
                .collect(),
        }
    }

    #[test]
    fn diff_names_added_removed_and_upgraded_and_marks_security() {
        let old = lock_of(
            vec![stanza("a", "1"), stanza("b", "1"), stanza("c", "1")],
            &[],
        );
        let new = lock_of(
            vec![stanza("a", "1"), stanza("b", "2"), stanza("d", "1")],
            &[("b", "bookworm-security"), ("d", "bookworm-updates")],
        );
        let d = diff(&old, &new);
        assert_eq!(d.to_text(), "+ d 1\n- c 1\n~ b 1 -> 2 (security)\n");
        assert!(d.upgraded[0].security);
        assert!(!d.added[0].security);
        assert!(diff(&old, &old).is_empty());
        assert!(is_security_suite("buster/updates"));
        assert!(!is_security_suite("bookworm-updates"));
    }

    #[test]
    fn times_are_utc_calendar_dates() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_767_225_599), "2025-12-31T23:59:59Z");
    }

    #[test]
    fn file_uris_compare_as_apt_spells_them() {
        assert_eq!(normalise_uri("file:///srv/m/"), "file:/srv/m");
        assert_eq!(normalise_uri("file://localhost/srv/m"), "file:/srv/m");
        assert_eq!(normalise_uri("http://h/debian/"), "http://h/debian");
    }
}
