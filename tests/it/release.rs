//! Release aliases resolved to codenames at plan time, against a `file:` mirror whose alias
//! paths are stale (as a caching proxy serves them) and whose codename paths are fresh.

use std::fs;
use std::path::Path;

use crate::support::{kiln, run};

/// A Release file of `suite` named `codename`, valid until `valid_until`.
fn release(suite: &str, codename: &str, valid_until: &str) -> String {
    format!(
        "Origin: Debian\nLabel: Debian\nSuite: {suite}\nCodename: {codename}\nDate: Sat, 01 Nov 2025 09:00:00 UTC\nValid-Until: {valid_until}\nArchitectures: amd64 arm64\nComponents: main\nSHA256:\n 0000000000000000000000000000000000000000000000000000000000000000 0 main/binary-amd64/Packages\n"
    )
}

/// The mirror: `dists/stable*` expired weeks ago, `dists/trixie*` fresh; `with_alias` false
/// leaves `dists/stable` out.
fn mirror(with_alias: bool) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let put = |suite: &str, text: String| {
        let dir = d.path().join("dists").join(suite);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("Release"), text).unwrap();
    };
    let stale = "Sat, 08 Nov 2025 09:00:00 UTC";
    let fresh = "Sat, 08 Nov 2036 09:00:00 UTC";
    if with_alias {
        put("stable", release("stable", "trixie", stale));
        put(
            "stable-updates",
            release("stable-updates", "trixie-updates", stale),
        );
        put(
            "stable-security",
            release("stable-security", "trixie-security", stale),
        );
    }
    put("trixie", release("stable", "trixie", fresh));
    put(
        "trixie-updates",
        release("stable-updates", "trixie-updates", fresh),
    );
    put(
        "trixie-security",
        release("stable-security", "trixie-security", fresh),
    );
    put("bookworm", release("oldstable", "bookworm", fresh));
    d
}

/// `kiln plan debian-minimal -t tar --explain-cache [--json]` against `mirror`, with
/// `DIB_RELEASE` set to `release` or unset.
fn plan(mirror: &Path, release: Option<&str>, json: bool) -> (i32, String, String) {
    let cache = tempfile::tempdir().unwrap();
    let uri = format!("file://{}", mirror.display());
    let mut c = kiln(&[], cache.path());
    c.env_remove("ELEMENTS_PATH")
        .env_remove("DIB_RELEASE")
        .env_remove("DIB_OFFLINE")
        .env("DIB_DISTRIBUTION_MIRROR", &uri)
        .env("DIB_DEBIAN_SECURITY_MIRROR", &uri)
        .args(["plan", "debian-minimal", "-t", "tar", "--explain-cache"]);
    if json {
        c.arg("--json");
    }
    if let Some(r) = release {
        c.env("DIB_RELEASE", r);
    }
    run(c)
}

fn json(mirror: &Path, release: Option<&str>) -> serde_json::Value {
    let (code, out, err) = plan(mirror, release, true);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn suites(v: &serde_json::Value) -> Vec<String> {
    v["suites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().split(' ').next().unwrap().to_string())
        .collect()
}

#[test]
fn the_default_release_is_the_codename_of_stable() {
    let m = mirror(true);
    let v = json(m.path(), None);
    let uri = format!("file://{}", m.path().display());
    assert_eq!(
        v["release"],
        serde_json::json!({
            "asked": "stable",
            "codename": "trixie",
            "from": format!("{uri}/dists/stable/Release"),
        })
    );
    // The image's sources, and so the keyed suites, name the codename only.
    assert_eq!(
        suites(&v),
        ["trixie", "trixie-security", "trixie-updates"],
        "{v}"
    );
    // Spelled out, `stable` means the same release and the same keys.
    let asked = json(m.path(), Some("stable"));
    assert_eq!(asked["release"], v["release"]);
    assert_eq!(asked["steps"], v["steps"]);
    // And the keys are those of an explicit trixie build (whose plan resolves nothing).
    let trixie = json(m.path(), Some("trixie"));
    assert!(trixie.get("release").is_none(), "{trixie}");
    assert_eq!(trixie["steps"], v["steps"]);
    // The text form says it in one line.
    let (code, text, err) = plan(m.path(), None, false);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        text.lines().next().unwrap(),
        format!("release: DIB_RELEASE=stable is trixie (read from {uri}/dists/stable/Release)")
    );
}

#[test]
fn an_explicit_codename_is_left_alone() {
    let m = mirror(true);
    let v = json(m.path(), Some("bookworm"));
    assert!(v.get("release").is_none(), "{v}");
    assert_eq!(
        suites(&v),
        ["bookworm", "bookworm-security", "bookworm-updates"]
    );
}

#[test]
fn a_mirror_without_the_alias_is_one_clear_error() {
    let m = mirror(false);
    let (code, out, err) = plan(m.path(), None, true);
    assert_eq!(code, 2, "{out}{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains(&format!(
            "DIB_RELEASE=stable: cannot read file://{}/dists/stable/Release",
            m.path().display()
        )) && lines[0].contains("set DIB_RELEASE to the release's codename"),
        "{err}"
    );
}
