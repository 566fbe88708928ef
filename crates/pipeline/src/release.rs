//! Suite names as users type them: `stable`, `oldstable`, `testing`, `unstable` (and Ubuntu's
//! `devel`) resolved to the codename the mirror's `dists/<alias>/Release` names, once per build.
//!
//! The same alias means another release a year later, and caching proxies and partial mirrors
//! serve stale copies of the alias paths (`dists/stable-security`) while the codename paths are
//! fresh. So kiln reads the alias's `Codename:` once, before environment.d is sourced for good,
//! and exports the codename as `DIB_RELEASE`: the image's apt sources, the cache keys, the lock,
//! the SBOM and the manifests all speak the codename; `DIB_RELEASE_ASKED` keeps the alias the
//! user asked for (in `dib_environment`). A codename is never touched. A locked build takes the
//! codename from its lock (the suites it recorded) and an offline build asks no mirror.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cache::mirror;
use crate::lock::LockMeta;
use crate::settings;

/// The suite names that are aliases of a release, resolved through the mirror.
pub const ALIASES: &[&str] = &[
    "oldoldstable",
    "oldstable",
    "stable",
    "testing",
    "unstable",
    "devel",
];

/// Whether `release` is an alias kiln resolves to a codename.
pub fn is_alias(release: &str) -> bool {
    ALIASES.contains(&release)
}

/// An alias and the codename it meant for this build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolved {
    /// What the user (or the element's default) asked for: `stable`.
    pub asked: String,
    /// What it meant: `trixie`.
    pub codename: String,
    /// Where the codename was read: the Release file's URL, or the lock's side file.
    pub from: String,
}

/// Why an alias could not be resolved (exit 2: the request names a suite the mirror lacks).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Release file could not be read.
    #[error("DIB_RELEASE={alias}: cannot read {url}, so the codename it stands for is unknown; set DIB_RELEASE to the release's codename (e.g. trixie), or point DIB_DISTRIBUTION_MIRROR at a mirror that has dists/{alias}")]
    Unreadable {
        /// The alias.
        alias: String,
        /// The Release file's URL.
        url: String,
    },
    /// The Release file has no `Codename:` field.
    #[error("DIB_RELEASE={alias}: {url} has no Codename field; set DIB_RELEASE to the release's codename")]
    NoCodename {
        /// The alias.
        alias: String,
        /// The Release file's URL.
        url: String,
    },
    /// The lock's side file could not be read.
    #[error("{}: {message}", path.display())]
    Lock {
        /// The side file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// The codename `evaluated` `DIB_RELEASE` (environment.d's result) stands for, when it is an
/// alias: from the lock of a locked build (`lock`, its suites for `DIB_DISTRIBUTION_MIRROR`),
/// else, unless `offline`, from the mirror's `dists/<alias>/Release`. None when the release is
/// a codename, no mirror is known, an offline build has no lock, or the lock recorded the alias.
pub fn resolve(
    evaluated: &BTreeMap<String, String>,
    lock: Option<&Path>,
    offline: bool,
) -> Result<Option<Resolved>, Error> {
    let Some(alias) = settings::DIB_RELEASE.get(evaluated).filter(|r| is_alias(r)) else {
        return Ok(None);
    };
    let mirror = settings::DIB_DISTRIBUTION_MIRROR
        .get(evaluated)
        .unwrap_or("")
        .trim_end_matches('/');
    if let Some(lock) = lock {
        return from_lock(&crate::lock::Lock::meta_path(lock), mirror, alias);
    }
    if offline || mirror.is_empty() {
        return Ok(None);
    }
    from_mirror(mirror, alias, mirror::FETCH_TIMEOUT).map(Some)
}

/// The codename of `alias` on `mirror`: the `Codename:` of `dists/<alias>/Release`.
pub fn from_mirror(
    mirror: &str,
    alias: &str,
    timeout: std::time::Duration,
) -> Result<Resolved, Error> {
    let url = format!("{mirror}/dists/{alias}/Release");
    let label = mirror::redact(&url);
    let Some(bytes) = mirror::fetch(&url, timeout) else {
        return Err(Error::Unreadable {
            alias: alias.into(),
            url: label,
        });
    };
    let text = String::from_utf8_lossy(&bytes);
    let codename = codename(&text).ok_or_else(|| Error::NoCodename {
        alias: alias.into(),
        url: label.clone(),
    })?;
    Ok(Resolved {
        asked: alias.into(),
        codename,
        from: label,
    })
}

/// The `Codename:` of a Release file's first paragraph.
fn codename(text: &str) -> Option<String> {
    let parsed = deb822_lossless::Deb822::parse(text).tree();
    let paragraph = parsed.paragraphs().next()?;
    let v = paragraph.get("Codename")?.trim().to_string();
    (!v.is_empty() && !v.contains(char::is_whitespace)).then_some(v)
}

/// The codename a lock recorded for `mirror`: its suite on that URI without a `-pocket` or a
/// path (`trixie` beside `trixie-updates`). None when the lock recorded the alias itself.
fn from_lock(meta_path: &Path, mirror: &str, alias: &str) -> Result<Option<Resolved>, Error> {
    let lock_err = |message: String| Error::Lock {
        path: meta_path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(meta_path).map_err(|e| lock_err(e.to_string()))?;
    let meta = LockMeta::parse(&text, meta_path).map_err(|e| lock_err(e.to_string()))?;
    let codename = meta
        .suites
        .iter()
        .filter(|s| s.uri.trim_end_matches('/') == mirror)
        .map(|s| s.suite.as_str())
        .find(|s| !s.contains(['-', '/']));
    Ok(codename.filter(|c| *c != alias).map(|c| Resolved {
        asked: alias.into(),
        codename: c.to_string(),
        from: meta_path.display().to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    /// A `file:` mirror with `dists/<suite>/Release` for each (suite, text).
    fn mirror(releases: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (suite, text) in releases {
            let dir = d.path().join("dists").join(suite);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("Release"), text).unwrap();
        }
        d
    }

    const TRIXIE: &str = "Origin: Debian\nSuite: stable\nCodename: trixie\nDate: Sat, 01 Nov 2025 00:00:00 UTC\nSHA256:\n 0123 10 main/Release\n";

    #[test]
    fn an_alias_becomes_the_codename_its_release_file_names() {
        let m = mirror(&[
            ("stable", TRIXIE),
            ("unstable", "Suite: unstable\nCodename: sid\n"),
        ]);
        let uri = format!("file://{}", m.path().display());
        let r = resolve(
            &env(&[("DIB_RELEASE", "stable"), ("DIB_DISTRIBUTION_MIRROR", &uri)]),
            None,
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (r.asked.as_str(), r.codename.as_str()),
            ("stable", "trixie")
        );
        assert_eq!(r.from, format!("{uri}/dists/stable/Release"));
        let r = resolve(
            &env(&[
                ("DIB_RELEASE", "unstable"),
                ("DIB_DISTRIBUTION_MIRROR", &format!("{uri}/")),
            ]),
            None,
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.codename, "sid");
        // A codename, offline, or no mirror: nothing asked.
        for (e, offline) in [
            (
                env(&[
                    ("DIB_RELEASE", "bookworm"),
                    ("DIB_DISTRIBUTION_MIRROR", &uri),
                ]),
                false,
            ),
            (
                env(&[("DIB_RELEASE", "stable"), ("DIB_DISTRIBUTION_MIRROR", &uri)]),
                true,
            ),
            (env(&[("DIB_RELEASE", "stable")]), false),
            (env(&[("DIB_DISTRIBUTION_MIRROR", &uri)]), false),
        ] {
            assert_eq!(resolve(&e, None, offline).unwrap(), None, "{e:?}");
        }
    }

    #[test]
    fn a_missing_alias_or_codename_is_one_clear_error() {
        let m = mirror(&[("testing", "Suite: testing\n")]);
        let uri = format!("file://{}", m.path().display());
        let e = from_mirror(&uri, "stable", mirror::FETCH_TIMEOUT).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("DIB_RELEASE=stable: cannot read {uri}/dists/stable/Release, so the codename it stands for is unknown; set DIB_RELEASE to the release's codename (e.g. trixie), or point DIB_DISTRIBUTION_MIRROR at a mirror that has dists/stable")
        );
        let e = from_mirror(&uri, "testing", mirror::FETCH_TIMEOUT).unwrap_err();
        assert!(e.to_string().contains("has no Codename field"), "{e}");
    }

    #[test]
    fn a_lock_gives_its_recorded_codename_without_the_network() {
        let d = tempfile::tempdir().unwrap();
        let lock = d.path().join("kiln.lock");
        let meta = crate::lock::Lock::meta_path(&lock);
        let suite = |s: &str| {
            format!("\nURI: http://mirror.invalid/debian\nSuite: {s}\nComponents: main\nInRelease-SHA256: {}\n", "0".repeat(64))
        };
        std::fs::write(
            &meta,
            format!(
                "Kiln-Lock-Format: 1\nLocked: 2025-11-01T00:00:00Z\nArchitectures: amd64\nElements: debian-minimal\nPackages-SHA256: {}\n{}{}",
                "0".repeat(64),
                suite("trixie"),
                suite("trixie-updates")
            ),
        )
        .unwrap();
        let e = env(&[
            ("DIB_RELEASE", "stable"),
            ("DIB_DISTRIBUTION_MIRROR", "http://mirror.invalid/debian/"),
        ]);
        let r = resolve(&e, Some(&lock), true).unwrap().unwrap();
        assert_eq!(r.codename, "trixie");
        assert_eq!(r.from, meta.display().to_string());
    }
}
