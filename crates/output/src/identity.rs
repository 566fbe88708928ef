//! The image's identity: what the LXC and Incus outputs, and `NAME.d/image.json`, say the image
//! is (distribution, release, variant, architecture, serial, creation and expiry dates).
//!
//! It is computed once per build, from the final tree and the build's settings, by
//! [`ImageInfo::new`], and handed to every producer in [`crate::Options::image`], so the LXC
//! metadata, Incus's `metadata.yaml` and the record `kiln publish` reads can never disagree.
//! The distribution and release come from the tree's `os-release` (`ID`, `VERSION_CODENAME`),
//! read without following a symlink out of the tree (os-release(5): `/etc/os-release`, else
//! `/usr/lib/os-release`); the values are unquoted with shell rules, as the format says.

use std::fs;
use std::path::Path;

use serde::Serialize;

use crate::{Error, Result};

/// The record of the image's identity, its outputs and their fingerprints, in the build's
/// `NAME.d` (written by the pipeline; `kiln publish` reads it).
pub const RECORD_FILE: &str = "image.json";

/// What the identity is computed from, besides the tree.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The image's name (the file name of `-o`).
    pub name: String,
    /// The build's architecture, Debian-named.
    pub arch: String,
    /// `SOURCE_DATE_EPOCH`, when set: the creation date.
    pub source_date_epoch: Option<u64>,
    /// When the build started (seconds since 1970): the creation date without an epoch.
    pub build_start: u64,
    /// Days from creation to expiry (`KILN_IMAGE_EXPIRY`).
    pub expiry_days: u64,
    /// The variant (`KILN_IMAGE_VARIANT`).
    pub variant: String,
    /// `DISTRO_NAME`: the distribution when the tree has no os-release `ID`.
    pub distro_name: Option<String>,
    /// `DIB_RELEASE`: the release when the tree has no os-release `VERSION_CODENAME`.
    pub dib_release: Option<String>,
}

/// The image's identity. Serialised as the leading keys of `NAME.d/image.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageInfo {
    /// Distribution (`debian`).
    pub os: String,
    /// Release codename (`trixie`).
    pub release: String,
    /// Variant (`default`).
    pub variant: String,
    /// Architecture, Debian-named (`amd64`).
    pub architecture: String,
    /// Build serial: the creation time in UTC, `YYYYMMDD_HHMM`.
    pub serial: String,
    /// One line saying what the image is.
    pub description: String,
    /// Creation time, seconds since 1970.
    pub creation_date: u64,
    /// Expiry time, seconds since 1970.
    pub expiry_date: u64,
    /// The image's name (`-o`).
    #[serde(skip)]
    pub name: String,
}

impl ImageInfo {
    /// The identity of the tree `root` built with `inputs`. A tree with neither an os-release
    /// naming the distribution and release nor `DISTRO_NAME`/`DIB_RELEASE` is an error naming
    /// what is missing.
    pub fn new(root: &Path, inputs: &Inputs) -> Result<Self> {
        let osr = read_os_release(root)?;
        let get = |k: &str| {
            osr.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        };
        let os = get("ID")
            .or_else(|| inputs.distro_name.clone().filter(|v| !v.is_empty()))
            .ok_or_else(|| {
                Error::Identity(format!(
                    "{}: no ID in the tree's os-release and DISTRO_NAME is not set: the LXC and Incus outputs need the distribution's name",
                    root.display()
                ))
            })?;
        let release = get("VERSION_CODENAME")
            .or_else(|| inputs.dib_release.clone().filter(|v| !v.is_empty()))
            .ok_or_else(|| {
                Error::Identity(format!(
                    "{}: no VERSION_CODENAME in the tree's os-release and DIB_RELEASE is not set: the LXC and Incus outputs need the release's name",
                    root.display()
                ))
            })?;
        let creation_date = inputs.source_date_epoch.unwrap_or(inputs.build_start);
        let serial = serial(creation_date);
        let description = format!(
            "{} {release} {} ({}) ({serial})",
            capitalised(&os),
            inputs.arch,
            inputs.variant
        );
        Ok(Self {
            os,
            release,
            variant: inputs.variant.clone(),
            architecture: inputs.arch.clone(),
            serial,
            description,
            creation_date,
            expiry_date: creation_date.saturating_add(inputs.expiry_days.saturating_mul(86_400)),
            name: inputs.name.clone(),
        })
    }

    /// The architecture as Incus names it.
    pub fn incus_arch(&self) -> String {
        incus_arch(&self.architecture)
    }

    /// The personality LXC's `lxc.arch` takes.
    pub fn lxc_personality(&self) -> &'static str {
        lxc_personality(&self.architecture)
    }
}

/// The last second RFC 3339 (four-digit years) can write: 9999-12-31T23:59:59Z.
const LAST_RFC3339_SECOND: u64 = 253_402_300_799;

/// A build serial, `YYYYMMDD_HHMM` in UTC, of `epoch` (a time past the year 9999 is written
/// as its last minute).
pub fn serial(epoch: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch.min(LAST_RFC3339_SECOND));
    // "2023-11-14T22:13:20Z"
    let s = humantime::format_rfc3339_seconds(t).to_string();
    format!(
        "{}{}{}_{}{}",
        &s[0..4],
        &s[5..7],
        &s[8..10],
        &s[11..13],
        &s[14..16]
    )
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next().map_or_else(String::new, |f| {
        f.to_uppercase().chain(c).collect::<String>()
    })
}

/// Incus's name of a Debian architecture (lxc/incus `shared/osarch`).
pub fn incus_arch(debian: &str) -> String {
    match debian {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        "armhf" | "armel" => "armv7l",
        "i386" => "i686",
        "ppc64el" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "loong64" => "loongarch64",
        "mips64el" => "mips64",
        other => other,
    }
    .to_string()
}

/// LXC's personality (`lxc.arch`) of a Debian architecture: `linux32` for the 32-bit ones.
pub fn lxc_personality(debian: &str) -> &'static str {
    match debian {
        "i386" | "armhf" | "armel" | "mipsel" => "linux32",
        _ => "linux64",
    }
}

/// The tree's os-release as (name, value) pairs, values unquoted; empty when it has none.
/// `/etc/os-release` when it is a regular file, else `/usr/lib/os-release` (where Debian's
/// `/etc/os-release` symlink points); a symlink is never followed, so nothing outside the tree
/// is read.
fn read_os_release(root: &Path) -> Result<Vec<(String, String)>> {
    for rel in ["etc/os-release", "usr/lib/os-release"] {
        let path = root.join(rel);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => {
                let text = fs::read_to_string(&path).map_err(|source| Error::Io {
                    path: path.clone(),
                    source,
                })?;
                return Ok(parse_os_release(&text));
            }
            _ => {}
        }
    }
    Ok(Vec::new())
}

/// `KEY=value` lines, values unquoted as a shell would (comments and blank lines skipped; a
/// value that does not parse as one word is skipped too).
fn parse_os_release(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            let words = shell_words::split(v).ok()?;
            let value = match words.as_slice() {
                [] => String::new(),
                [one] => one.clone(),
                _ => return None,
            };
            Some((k.trim().to_string(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs {
        Inputs {
            name: "img".into(),
            arch: "amd64".into(),
            source_date_epoch: Some(1_700_000_000),
            build_start: 1_800_000_000,
            expiry_days: 30,
            variant: "default".into(),
            distro_name: Some("fallback".into()),
            dib_release: Some("fallrel".into()),
        }
    }

    #[test]
    fn from_the_trees_os_release() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("usr/lib")).unwrap();
        fs::create_dir_all(d.path().join("etc")).unwrap();
        fs::write(
            d.path().join("usr/lib/os-release"),
            "PRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\n# c\nID=debian\nVERSION_CODENAME='trixie'\n",
        )
        .unwrap();
        // Debian's /etc/os-release is a link; an absolute one is never followed to the host.
        std::os::unix::fs::symlink("/etc/os-release", d.path().join("etc/os-release")).unwrap();
        let i = ImageInfo::new(d.path(), &inputs()).unwrap();
        assert_eq!(
            i,
            ImageInfo {
                os: "debian".into(),
                release: "trixie".into(),
                variant: "default".into(),
                architecture: "amd64".into(),
                serial: "20231114_2213".into(),
                description: "Debian trixie amd64 (default) (20231114_2213)".into(),
                creation_date: 1_700_000_000,
                expiry_date: 1_702_592_000,
                name: "img".into(),
            }
        );
        assert_eq!(i.incus_arch(), "x86_64");
        assert_eq!(i.lxc_personality(), "linux64");
        let v = serde_json::to_value(&i).unwrap();
        assert_eq!(v["expiry_date"], 1_702_592_000);
        assert!(v.get("name").is_none());
    }

    #[test]
    fn without_os_release_the_settings_and_without_an_epoch_the_start() {
        let d = tempfile::tempdir().unwrap();
        let mut inp = inputs();
        inp.source_date_epoch = None;
        inp.expiry_days = 1;
        let i = ImageInfo::new(d.path(), &inp).unwrap();
        assert_eq!((i.os.as_str(), i.release.as_str()), ("fallback", "fallrel"));
        assert_eq!(i.creation_date, 1_800_000_000);
        assert_eq!(i.expiry_date, 1_800_086_400);
        inp.distro_name = None;
        let e = ImageInfo::new(d.path(), &inp).unwrap_err();
        assert!(e.to_string().contains("DISTRO_NAME"), "{e}");
        assert!(
            e.to_string().contains(&d.path().display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn architecture_names() {
        for (deb, incus, pers) in [
            ("amd64", "x86_64", "linux64"),
            ("arm64", "aarch64", "linux64"),
            ("armhf", "armv7l", "linux32"),
            ("i386", "i686", "linux32"),
            ("ppc64el", "ppc64le", "linux64"),
            ("s390x", "s390x", "linux64"),
            ("riscv64", "riscv64", "linux64"),
        ] {
            assert_eq!(incus_arch(deb), incus, "{deb}");
            assert_eq!(lxc_personality(deb), pers, "{deb}");
        }
    }

    #[test]
    fn serials_are_utc() {
        assert_eq!(serial(0), "19700101_0000");
        assert_eq!(serial(1_700_000_000), "20231114_2213");
        assert_eq!(serial(u64::MAX), "99991231_2359");
    }
}
