//! `pkg-map`: an element's translation of generic package names to distribution names.
//!
//! The file is JSON with up to four sections, from most to least specific:
//! `release{distro{release{name: pkgs}}}`, `distro{distro{name: pkgs}}`,
//! `family{family{name: pkgs}}` and `default{name: pkgs}`. A lookup takes the most specific
//! section that mentions the name. The value is a space-separated package list; an empty
//! string (or null) means "install nothing for this name". The in-chroot `pkg-map` tool does
//! the same lookups; kiln reads the files natively to validate them and to show plans.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, IoContext};

/// A parsed `pkg-map` file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct PkgMap {
    /// `release.<distro>.<release>.<name>`.
    pub release: BTreeMap<String, BTreeMap<String, BTreeMap<String, Option<String>>>>,
    /// `distro.<distro>.<name>`.
    pub distro: BTreeMap<String, BTreeMap<String, Option<String>>>,
    /// `family.<family>.<name>`.
    pub family: BTreeMap<String, BTreeMap<String, Option<String>>>,
    /// `default.<name>`.
    pub default: BTreeMap<String, Option<String>>,
}

/// Parses a `pkg-map` file (JSON). Errors carry the line and column.
pub fn parse(path: &Path) -> Result<PkgMap, Error> {
    let text = std::fs::read_to_string(path).at(path)?;
    parse_text(path, &text)
}

/// [`parse`] on text already read; `path` is used in errors.
pub fn parse_text(path: &Path, text: &str) -> Result<PkgMap, Error> {
    serde_json::from_str(text).map_err(|err| Error::Json {
        path: path.to_path_buf(),
        line: Some(err.line()).filter(|l| *l > 0),
        column: Some(err.column()).filter(|c| *c > 0),
        message: format!(
            "{} (a pkg-map is a JSON object with optional \"release\", \"distro\", \"family\" and \"default\" sections mapping names to package strings)",
            crate::node::strip_position(&err.to_string())
        ),
    })
}

/// The distribution family of `distro`, as pkg-map uses it.
pub fn family(distro: &str) -> Option<&'static str> {
    match distro {
        "almalinux" | "fedora" | "rhel" | "centos" | "openeuler" | "rocky" => Some("redhat"),
        "debian" | "ubuntu" => Some("debian"),
        "opensuse" => Some("suse"),
        "gentoo" => Some("gentoo"),
        _ => None,
    }
}

impl PkgMap {
    /// Every package name mentioned anywhere in the map, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut set = std::collections::BTreeSet::new();
        for releases in self.release.values() {
            for names in releases.values() {
                set.extend(names.keys().cloned());
            }
        }
        for names in self.distro.values().chain(self.family.values()) {
            set.extend(names.keys().cloned());
        }
        set.extend(self.default.keys().cloned());
        set.into_iter().collect()
    }

    /// Maps `name` for `distro` / `release`: release > distro > family > default.
    /// `Some("")` means "skip this package"; `None` means there is no mapping.
    pub fn lookup(&self, distro: &str, release: &str, name: &str) -> Option<String> {
        let by_release = self
            .release
            .get(distro)
            .and_then(|releases| releases.get(release))
            .and_then(|names| names.get(name));
        let by_distro = self.distro.get(distro).and_then(|names| names.get(name));
        let by_family = family(distro)
            .and_then(|f| self.family.get(f))
            .and_then(|names| names.get(name));
        let by_default = self.default.get(name);
        by_release
            .or(by_distro)
            .or(by_family)
            .or(by_default)
            .map(|value| value.clone().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = r#"{
  "release": {"fedora": {"23": {"nova": "openstack-compute-foo"}}},
  "distro": {"fedora": {"nova": "openstack-compute", "glance": "openstack-image"}},
  "family": {"redhat": {"nova": "openstack-nova", "glance": "openstack-glance", "cinder": "a b"},
             "suse": {"nova": ""}},
  "default": {"nova": "nova", "glance": "glance", "gone": null}
}"#;

    fn map() -> PkgMap {
        parse_text(Path::new("/e/x/pkg-map"), MAP).unwrap()
    }

    #[test]
    fn precedence() {
        let m = map();
        assert_eq!(
            m.lookup("fedora", "23", "nova").as_deref(),
            Some("openstack-compute-foo")
        );
        assert_eq!(
            m.lookup("fedora", "24", "nova").as_deref(),
            Some("openstack-compute")
        );
        assert_eq!(
            m.lookup("fedora", "23", "glance").as_deref(),
            Some("openstack-image")
        );
        assert_eq!(
            m.lookup("centos", "9", "nova").as_deref(),
            Some("openstack-nova")
        );
        assert_eq!(m.lookup("rocky", "9", "cinder").as_deref(), Some("a b"));
        assert_eq!(
            m.lookup("debian", "bookworm", "nova").as_deref(),
            Some("nova")
        );
        assert_eq!(m.lookup("debian", "bookworm", "unknown"), None);
        assert_eq!(m.lookup("fedora", "23", "cinder").as_deref(), Some("a b"));
    }

    #[test]
    fn empty_means_skip() {
        let m = map();
        assert_eq!(m.lookup("opensuse", "15", "nova").as_deref(), Some(""));
        assert_eq!(m.lookup("debian", "12", "gone").as_deref(), Some(""));
    }

    #[test]
    fn families() {
        for d in [
            "almalinux",
            "fedora",
            "rhel",
            "centos",
            "openeuler",
            "rocky",
        ] {
            assert_eq!(family(d), Some("redhat"), "{d}");
        }
        assert_eq!(family("debian"), Some("debian"));
        assert_eq!(family("ubuntu"), Some("debian"));
        assert_eq!(family("opensuse"), Some("suse"));
        assert_eq!(family("gentoo"), Some("gentoo"));
        assert_eq!(family("arch"), None);
    }

    #[test]
    fn errors_have_lines() {
        let err = parse_text(
            Path::new("/e/x/pkg-map"),
            "{\n  \"default\": {\"a\": [1]}\n}",
        )
        .unwrap_err();
        match &err {
            Error::Json { line, .. } => assert_eq!(*line, Some(2)),
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().starts_with("/e/x/pkg-map:2:"), "{err}");
        assert!(parse_text(Path::new("p"), "{}").unwrap().default.is_empty());
    }

    #[test]
    fn element_reads_its_pkg_map() {
        let fx = crate::testutil::Fixture::new();
        fx.element("with").file("pkg-map", MAP);
        fx.element("without");
        let lib = fx.library();
        assert!(lib.get("with").unwrap().pkg_map().unwrap().is_some());
        assert!(lib.get("without").unwrap().pkg_map().unwrap().is_none());
    }
}
