//! `kiln lock` against a `file:` mirror the test makes (dpkg-deb, dpkg-scanpackages and a
//! Release file it writes): the lock lists exactly the closure apt would install for the
//! elements' package-installs (after pkg-map, without Recommends), stanzas verbatim from the
//! mirror's index; `--update` reports an upgraded and an added package.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{assert_input_error, kiln, run, Tree};

pub(crate) const SUITE: &str = "kilntest";

/// A flat-file apt mirror with one suite, `kilntest main`, for amd64.
pub(crate) struct Mirror {
    dir: tempfile::TempDir,
    suite: &'static str,
}

pub(crate) fn sh(script: &str) -> String {
    let out = Command::new("bash")
        .args(["-c", script])
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Mirror {
    pub(crate) fn new() -> Self {
        Self::with_suite(SUITE)
    }

    fn with_suite(suite: &'static str) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            suite,
        }
    }

    pub(crate) fn root(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    /// Adds package `name` `version` (architecture all) with extra control `fields`.
    pub(crate) fn add(&self, name: &str, version: &str, fields: &str) {
        let src = self.dir.path().join(format!("src/{name}_{version}"));
        fs::create_dir_all(src.join("DEBIAN")).unwrap();
        fs::create_dir_all(src.join(format!("usr/share/{name}"))).unwrap();
        fs::write(src.join(format!("usr/share/{name}/version")), version).unwrap();
        fs::write(
            src.join("DEBIAN/control"),
            format!("Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: kiln tests <kiln@localhost>\n{fields}Description: kiln lock fixture {name}\n"),
        )
        .unwrap();
        let pool = self.root().join("pool/main");
        fs::create_dir_all(&pool).unwrap();
        sh(&format!(
            "dpkg-deb --root-owner-group --build '{}' '{}/{name}_{version}_all.deb' >/dev/null",
            src.display(),
            pool.display()
        ));
    }

    /// Rewrites the suite's Packages index and Release file.
    pub(crate) fn publish(&self) {
        let suite = self.suite;
        let bin = self.root().join(format!("dists/{suite}/main/binary-amd64"));
        fs::create_dir_all(&bin).unwrap();
        sh(&format!(
            "cd '{}' && dpkg-scanpackages --multiversion pool /dev/null 2>/dev/null > 'dists/{suite}/main/binary-amd64/Packages'",
            self.root().display()
        ));
        let packages = fs::read(bin.join("Packages")).unwrap();
        let sha = sh(&format!(
            "sha256sum '{}' | cut -d' ' -f1",
            bin.join("Packages").display()
        ));
        fs::write(
            self.root().join(format!("dists/{suite}/Release")),
            format!(
                "Suite: {suite}\nCodename: {suite}\nDate: {}\nArchitectures: amd64 all\nComponents: main\nSHA256:\n {} {} main/binary-amd64/Packages\n",
                sh("date -u -R").trim(),
                sha.trim(),
                packages.len()
            ),
        )
        .unwrap();
    }

    fn packages_index(&self) -> String {
        let suite = self.suite;
        fs::read_to_string(
            self.root()
                .join(format!("dists/{suite}/main/binary-amd64/Packages")),
        )
        .unwrap()
    }
}

/// The fixture mirror: `app-server` needs `libfoo (>= 1)` (2.0 is the newest) and
/// `web-common | other-common`, recommends `extra-tool`; `tool-debian` is what pkg-map maps
/// `generic-tool` to; `unrelated` is asked for by nobody.
pub(crate) fn mirror() -> Mirror {
    let m = Mirror::new();
    m.add(
        "app-server",
        "1.0",
        "Depends: libfoo (>= 1), web-common | other-common\nRecommends: extra-tool\n",
    );
    m.add("libfoo", "1.0", "");
    m.add("libfoo", "2.0", "");
    m.add("web-common", "1.0", "");
    m.add("other-common", "1.0", "");
    m.add("extra-tool", "1.0", "");
    m.add("tool-debian", "3.1", "");
    m.add("unrelated", "1.0", "Priority: required\n");
    m.publish();
    m
}

/// `test-os` with the mirror as its only source, `app` asking for `app-server` (install.d)
/// and `generic-tool` (pre-install.d, mapped by pkg-map).
pub(crate) fn fixture(m: &Mirror) -> Tree {
    fixture_with(m, None)
}

/// [`fixture`], with `security` as the image's security suite too.
fn fixture_with(m: &Mirror, security: Option<&Mirror>) -> Tree {
    let t = Tree::new();
    let mut sources = format!(
        "default:deb [trusted=yes] file://{} {SUITE} main",
        m.root().display()
    );
    if let Some(sec) = security {
        let _ = write!(
            sources,
            "\nsecurity:deb [trusted=yes] file://{} {} main",
            sec.root().display(),
            sec.suite
        );
    }
    t.os().env(
        "20-sources",
        &format!("export DIB_RELEASE={SUITE}\nexport DIB_APT_SOURCES_CONF=\"{sources}\"\n"),
    );
    t.el("app")
        .file(
            "package-installs.yaml",
            "app-server:\ngeneric-tool:\n  phase: pre-install.d\n",
        )
        .file(
            "pkg-map",
            "{\"distro\": {\"debian\": {\"generic-tool\": \"tool-debian\"}}}\n",
        );
    t
}

pub(crate) fn lock(t: &Tree, cache: &Path, out: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut c = kiln(&[t.path()], cache);
    c.args(["lock", "test-os", "app", "-n", "-o"])
        .arg(out)
        .args(extra);
    run(c)
}

/// (Package, Version) of each stanza of a Packages text, in order.
fn names(text: &str) -> Vec<(String, String)> {
    text.split("\n\n")
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            let get = |k: &str| {
                s.lines()
                    .find_map(|l| l.strip_prefix(&format!("{k}: ")))
                    .unwrap_or_default()
                    .to_string()
            };
            (get("Package"), get("Version"))
        })
        .collect()
}

pub(crate) fn have_tools() -> bool {
    ["dpkg-deb", "dpkg-scanpackages", "apt-get"]
        .iter()
        .all(|t| which(t))
}

pub(crate) fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn lock_lists_exactly_the_closure_with_verbatim_stanzas() {
    if !have_tools() {
        kiln_testkit::skip(
            "lock_lists_exactly_the_closure_with_verbatim_stanzas",
            "dpkg-dev and apt are needed to make and read a local mirror",
        );
        return;
    }
    let m = mirror();
    let t = fixture(&m);
    let cache = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("kiln.lock");
    let (code, _, err) = lock(&t, cache.path(), &out, &[]);
    assert_eq!(code, 0, "{err}");
    let text = fs::read_to_string(&out).unwrap();
    assert_eq!(
        names(&text),
        [
            ("app-server", "1.0"),
            ("libfoo", "2.0"),
            ("tool-debian", "3.1"),
            ("web-common", "1.0"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string())),
        "{text}"
    );
    // Each stanza is the mirror's own, byte for byte.
    let index = m.packages_index();
    for stanza in text.split("\n\n") {
        let stanza = stanza.trim_end_matches('\n');
        assert!(
            index.contains(&format!("{stanza}\n")),
            "not verbatim from the index:\n{stanza}"
        );
        assert!(stanza.contains("\nSHA256: "), "{stanza}");
        assert!(stanza.contains("\nFilename: pool/main/"), "{stanza}");
    }
    // The side file names the suite, its components, the InRelease digest and the lock's digest.
    let meta = fs::read_to_string(work.path().join("kiln.lock.meta")).unwrap();
    let release = sh(&format!(
        "sha256sum '{}/dists/{SUITE}/Release' | cut -d' ' -f1",
        m.root().display()
    ));
    let lock_sha = sh(&format!("sha256sum '{}' | cut -d' ' -f1", out.display()));
    assert!(meta.starts_with("Kiln-Lock-Format: 1\nLocked: "), "{meta}");
    assert!(meta.contains("\nArchitectures: amd64\n"), "{meta}");
    assert!(meta.contains("\nElements: test-os app\n"), "{meta}");
    assert!(
        meta.contains(&format!("\nPackages-SHA256: {}\n", lock_sha.trim())),
        "{meta}"
    );
    assert!(
        meta.contains(&format!(
            "\nURI: file://{}\nSuite: {SUITE}\nComponents: main\nInRelease-SHA256: {}\n",
            m.root().display(),
            release.trim()
        )),
        "{meta}"
    );
    // -p packages are part of the closure too.
    let (code, _, err) = lock(&t, cache.path(), &out, &["-p", "other-common"]);
    assert_eq!(code, 0, "{err}");
    let with_p = names(&fs::read_to_string(&out).unwrap());
    assert!(
        with_p.iter().any(|(n, _)| n == "other-common"),
        "{with_p:?}"
    );
}

#[test]
fn lock_update_prints_upgraded_added_and_removed_packages() {
    if !have_tools() {
        kiln_testkit::skip(
            "lock_update_prints_upgraded_added_and_removed_packages",
            "dpkg-dev and apt are needed to make and read a local mirror",
        );
        return;
    }
    let m = mirror();
    let t = fixture(&m);
    let cache = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("kiln.lock");
    let (code, _, err) = lock(&t, cache.path(), &out, &[]);
    assert_eq!(code, 0, "{err}");
    let (code, stdout, err) = lock(&t, cache.path(), &out, &["--update"]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("unchanged (4 packages)"), "{stdout}");
    // app-server 1.1 needs libbar and no longer web-common.
    m.add("app-server", "1.1", "Depends: libfoo (>= 1), libbar\n");
    m.add("libbar", "0.5", "");
    m.publish();
    let before = fs::read_to_string(&out).unwrap();
    let (code, stdout, err) = lock(&t, cache.path(), &out, &["--update", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["upgraded"][0]["package"], "app-server", "{v}");
    assert_eq!(v["upgraded"][0]["old"], "1.0", "{v}");
    assert_eq!(v["upgraded"][0]["new"], "1.1", "{v}");
    assert_eq!(v["upgraded"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["added"][0]["package"], "libbar", "{v}");
    assert_eq!(v["added"][0]["security"], false, "{v}");
    assert_eq!(v["removed"][0]["package"], "web-common", "{v}");
    let after = fs::read_to_string(&out).unwrap();
    assert_ne!(before, after);
    assert!(after.contains("Package: libbar\n"), "{after}");
    // The text form, on the lock as it was.
    fs::write(&out, &before).unwrap();
    let (code, stdout, err) = lock(&t, cache.path(), &out, &["--update"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        stdout, "+ libbar 0.5\n- web-common 1.0\n~ app-server 1.0 -> 1.1\n",
        "{err}"
    );
}

#[test]
fn a_damaged_lock_is_an_input_error_naming_the_file_and_line() {
    let m = Mirror::new();
    let t = fixture(&m);
    let cache = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("kiln.lock");
    fs::write(
        &out,
        "Package: a\nVersion: 1\nArchitecture: all\n\nPackage: b\nArchitecture: all\n",
    )
    .unwrap();
    fs::write(work.path().join("kiln.lock.meta"), "Kiln-Lock-Format: 1\n").unwrap();
    let (code, _, err) = lock(&t, cache.path(), &out, &["--update"]);
    assert_input_error(
        code,
        &err,
        &["kiln.lock:5", "no Version field", "kiln lock"],
    );
    // No lock to update.
    let (code, _, err) = lock(
        &t,
        cache.path(),
        &work.path().join("none.lock"),
        &["--update"],
    );
    assert_input_error(code, &err, &["none.lock", "no lock to update"]);
}

#[test]
fn with_the_debootstrap_element_the_lock_holds_the_bootstrap_base_set() {
    if !have_tools() {
        kiln_testkit::skip(
            "with_the_debootstrap_element_the_lock_holds_the_bootstrap_base_set",
            "dpkg-dev and apt are needed to make and read a local mirror",
        );
        return;
    }
    let m = mirror();
    // What a minbase bootstrap takes by itself, what it includes by name, and what the
    // debootstrap element's package-installs ask for.
    m.add("base-files", "13", "Essential: yes\nDepends: mawk\n");
    m.add("mawk", "1.3", "Priority: required\n");
    m.add("apt", "2.6", "Priority: important\nDepends: libapt\n");
    m.add("libapt", "2.6", "");
    m.add("tzdata", "2025a", "");
    m.add("nice-to-have", "1", "Priority: important\n");
    for p in [
        "adduser",
        "ca-certificates",
        "locales",
        "lsb-release",
        "extra-base",
    ] {
        m.add(p, "1", "");
    }
    m.publish();
    let t = fixture(&m);
    let cache = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("kiln.lock");
    let mut c = kiln(&[t.path()], cache.path());
    c.args(["lock", "test-os", "debootstrap", "-n", "-o"])
        .arg(&out)
        .env("DIB_DEBOOTSTRAP_EXTRA_PACKAGES", "extra-base");
    let (code, _, err) = run(c);
    assert_eq!(code, 0, "{err}");
    let got: Vec<String> = names(&fs::read_to_string(&out).unwrap())
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        got,
        [
            "adduser",
            "apt",
            "base-files",
            "ca-certificates",
            "extra-base",
            "libapt",
            "locales",
            "lsb-release",
            "mawk",
            "tzdata",
            "unrelated",
        ]
    );
}

#[test]
fn a_package_the_mirror_lacks_fails_naming_it_and_no_sources_is_an_input_error() {
    if !have_tools() {
        kiln_testkit::skip(
            "a_package_the_mirror_lacks_fails_naming_it_and_no_sources_is_an_input_error",
            "dpkg-dev and apt are needed to make and read a local mirror",
        );
        return;
    }
    let m = mirror();
    let t = fixture(&m);
    let cache = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("kiln.lock");
    let (code, _, err) = lock(&t, cache.path(), &out, &["-p", "no-such-package"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("apt-get install --simulate failed"), "{err}");
    assert!(err.contains("no-such-package"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists(), "a failed lock leaves no file");
    // An OS element without any apt source.
    let bare = Tree::new();
    bare.os();
    bare.el("app");
    let mut c = kiln(&[bare.path()], cache.path());
    c.args(["lock", "test-os", "app", "-n", "-o"])
        .arg(&out)
        .env_remove("DIB_DISTRIBUTION_MIRROR")
        .env_remove("DIB_APT_SOURCES")
        .env_remove("DIB_APT_SOURCES_CONF");
    let (code, _, err) = run(c);
    assert_input_error(code, &err, &["no apt source", "DIB_DISTRIBUTION_MIRROR"]);
}

#[test]
fn lock_update_marks_a_version_from_the_security_suite() {
    if !have_tools() {
        kiln_testkit::skip(
            "lock_update_marks_a_version_from_the_security_suite",
            "dpkg-dev and apt are needed to make and read a local mirror",
        );
        return;
    }
    let m = mirror();
    let sec = Mirror::with_suite("kilntest-security");
    sec.add("web-common", "1.0", "");
    sec.publish();
    let t = fixture_with(&m, Some(&sec));
    let cache = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("kiln.lock");
    let (code, _, err) = lock(&t, cache.path(), &out, &[]);
    assert_eq!(code, 0, "{err}");
    let meta = fs::read_to_string(work.path().join("kiln.lock.meta")).unwrap();
    assert!(meta.contains("\nSuite: kilntest-security\n"), "{meta}");
    // A fix for libfoo lands in the security suite.
    sec.add("libfoo", "2.0+sec1", "");
    sec.publish();
    let (code, stdout, err) = lock(&t, cache.path(), &out, &["--update"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(stdout, "~ libfoo 2.0 -> 2.0+sec1 (security)\n", "{err}");
}

#[test]
fn sources_from_a_deb822_file_named_by_dib_apt_sources() {
    if !have_tools() {
        kiln_testkit::skip(
            "sources_from_a_deb822_file_named_by_dib_apt_sources",
            "dpkg-dev and apt are needed to make and read a local mirror",
        );
        return;
    }
    let m = mirror();
    let t = Tree::new();
    t.os()
        .env("20-release", &format!("export DIB_RELEASE={SUITE}\n"));
    t.el("app").file("package-installs.yaml", "libfoo:\n");
    let work = tempfile::tempdir().unwrap();
    let sources = work.path().join("image.sources");
    fs::write(
        &sources,
        format!(
            "Types: deb\nURIs: file://{}\nSuites: {SUITE}\nComponents: main\nTrusted: yes\n",
            m.root().display()
        ),
    )
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = work.path().join("kiln.lock");
    let mut c = kiln(&[t.path()], cache.path());
    c.args(["lock", "test-os", "app", "-n", "-o"])
        .arg(&out)
        .env("DIB_APT_SOURCES", &sources);
    let (code, _, err) = run(c);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        names(&fs::read_to_string(&out).unwrap()),
        [("libfoo".to_string(), "2.0".to_string())]
    );
    let meta = fs::read_to_string(work.path().join("kiln.lock.meta")).unwrap();
    assert!(
        meta.contains(&format!(
            "\nURI: file://{}\nSuite: {SUITE}\nComponents: main\n",
            m.root().display()
        )),
        "{meta}"
    );
}
