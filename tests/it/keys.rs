//! What enters the cache keys, through the command line (`kiln plan --explain-cache --json`,
//! no root, no network): only the variables hooks can read, host files by content, and every
//! apt suite of the image's sources read from `file:` mirrors.

use std::fs;
use std::path::Path;

use crate::support::{assert_input_error, kiln, run, Tree};

/// An OS element whose environment.d lists its apt sources (as the Debian elements do) on the
/// `file:` mirror `mirror`, and an element whose hook reads `APP_SETTING` and which declares
/// the host file named by `APP_KEYS_FILE`.
fn fixture(mirror: &Path) -> Tree {
    let t = Tree::new();
    let m = mirror.display();
    t.os().env(
        "20-sources",
        &format!(
            "export DIB_APT_SOURCES_CONF=\"default:deb file://{m} bookworm main\nupdates:deb file://{m} bookworm-updates main\nsecurity:deb [trusted=yes] file:{m}/ bookworm-security main\"\n"
        ),
    );
    t.el("app")
        .hook(
            "install",
            "10-app",
            "echo \"${APP_SETTING:-none}\" > /etc/app",
        )
        .file("cache-inputs", "# the app's keys\n$APP_KEYS_FILE\n");
    t
}

/// A file mirror with the three suites.
fn mirror() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (suite, text) in [
        ("bookworm", "main 1"),
        ("bookworm-updates", "updates 1"),
        ("bookworm-security", "security 1"),
    ] {
        let p = d.path().join("dists").join(suite);
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("InRelease"), text).unwrap();
    }
    d
}

/// Every step's key and the output key of `kiln plan test-os app -n` with `env`.
fn keys(t: &Tree, cache: &Path, env: &[(&str, &str)]) -> Vec<String> {
    let mut c = kiln(&[t.path()], cache);
    c.args(["plan", "test-os", "app", "-n", "--explain-cache", "--json"]);
    for (k, v) in env {
        c.env(k, v);
    }
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut k: Vec<String> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap().to_string())
        .collect();
    k.push(v["outputs"]["key"].as_str().unwrap().to_string());
    k
}

#[test]
fn only_variables_hooks_can_read_change_the_keys() {
    let m = mirror();
    let t = fixture(m.path());
    let cache = tempfile::tempdir().unwrap();
    let base = keys(&t, cache.path(), &[("BUILD_NUMBER", "1")]);
    // A CI build number, a run id, anything no hook names: the same keys.
    assert_eq!(
        base,
        keys(
            &t,
            cache.path(),
            &[("BUILD_NUMBER", "2"), ("FOO", "bar"), ("CI_RUN_ID", "77")]
        )
    );
    // Each of these is read by hooks (or listed by the user): every key changes.
    for env in [
        &[("APP_SETTING", "x")][..],
        &[("DIB_SOMETHING_NEW", "1")],
        &[("http_proxy", "http://127.0.0.1:3128")],
        &[("NO_PROXY", "localhost")],
        &[("LANG", "de_DE.UTF-8")],
        &[("LC_TIME", "C")],
        &[("KILN_CACHE_ENV", "CORP_FLAVOUR"), ("CORP_FLAVOUR", "a")],
    ] {
        let k = keys(&t, cache.path(), env);
        assert!(
            base.iter().zip(&k).all(|(a, b)| a != b),
            "{env:?} left a key as it was"
        );
    }
    // KILN_CACHE_ENV alone (naming an unset variable) is not an input.
    assert_eq!(
        base,
        keys(&t, cache.path(), &[("KILN_CACHE_ENV", "CORP_FLAVOUR")])
    );
}

#[test]
fn declared_and_well_known_host_files_are_keyed_by_content() {
    let m = mirror();
    let t = fixture(m.path());
    let cache = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let declared_file = files.path().join("app.keys");
    fs::write(&declared_file, "key one").unwrap();
    let key_dir = files.path().join("apt-keys");
    fs::create_dir(&key_dir).unwrap();
    fs::write(key_dir.join("a.asc"), "A").unwrap();
    let env = [
        ("APP_KEYS_FILE", declared_file.to_str().unwrap()),
        ("DIB_ADD_APT_KEYS", key_dir.to_str().unwrap()),
    ];
    let first = keys(&t, cache.path(), &env);
    assert_eq!(first, keys(&t, cache.path(), &env));
    // The same names, new content: every key changes.
    fs::write(&declared_file, "key two").unwrap();
    let second = keys(&t, cache.path(), &env);
    assert!(
        first.iter().zip(&second).all(|(x, y)| x != y),
        "{first:?}\n{second:?}"
    );
    fs::write(key_dir.join("b.gpg"), "B").unwrap();
    let third = keys(&t, cache.path(), &env);
    assert!(
        second.iter().zip(&third).all(|(x, y)| x != y),
        "{second:?}\n{third:?}"
    );
}

#[test]
fn every_suite_of_the_image_sources_is_keyed() {
    let m = mirror();
    let t = fixture(m.path());
    let cache = tempfile::tempdir().unwrap();
    let mut before = keys(&t, cache.path(), &[]);
    for suite in ["bookworm-security", "bookworm-updates", "bookworm"] {
        let p = m.path().join("dists").join(suite).join("InRelease");
        fs::write(&p, format!("{suite} 2")).unwrap();
        let after = keys(&t, cache.path(), &[]);
        assert!(
            before.iter().zip(&after).all(|(x, y)| x != y),
            "a change to {suite} left a key as it was"
        );
        before = after;
    }
    // Offline, the mirror is not asked: a change there changes nothing.
    let off = keys(&t, cache.path(), &[("DIB_OFFLINE", "1")]);
    fs::write(
        m.path().join("dists/bookworm-security/InRelease"),
        "security 3",
    )
    .unwrap();
    assert_eq!(off, keys(&t, cache.path(), &[("DIB_OFFLINE", "1")]));
}

#[test]
fn a_bad_cache_inputs_line_is_an_input_error() {
    let m = mirror();
    let t = fixture(m.path());
    t.el("app")
        .file("cache-inputs", "$APP_KEYS_FILE\nrelative/path\n");
    let cache = tempfile::tempdir().unwrap();
    let mut c = kiln(&[t.path()], cache.path());
    c.args(["plan", "test-os", "app", "-n", "--explain-cache"]);
    let (code, _, err) = run(c);
    assert_input_error(code, &err, &["app/cache-inputs:2:", "relative/path"]);
}

/// The image identity's settings shape only the LXC and Incus outputs, and
/// `KILN_SQUASHFS_COMP` only the squashfs: they change the output key (a changed expiry never
/// hands back an old `meta.tar.xz`) and no phase key; a bad value is an input error naming the
/// variable.
#[test]
fn image_identity_settings_enter_the_output_key_only() {
    let m = mirror();
    let t = fixture(m.path());
    let cache = tempfile::tempdir().unwrap();
    let base = keys(&t, cache.path(), &[]);
    for env in [
        [("KILN_IMAGE_EXPIRY", "7")],
        [("KILN_IMAGE_VARIANT", "cloud")],
        [("KILN_SQUASHFS_COMP", "zstd")],
    ] {
        let k = keys(&t, cache.path(), &env);
        let n = k.len();
        assert_eq!(base[..n - 1], k[..n - 1], "{env:?} changed a phase key");
        assert_ne!(
            base[n - 1],
            k[n - 1],
            "{env:?} left the output key as it was"
        );
    }
    for (var, value) in [
        ("KILN_IMAGE_EXPIRY", "soon"),
        ("KILN_IMAGE_VARIANT", "a/b"),
        ("KILN_SQUASHFS_COMP", "lz4"),
    ] {
        let mut c = kiln(&[t.path()], cache.path());
        c.args(["plan", "test-os", "app", "-n", "-t", "lxc"])
            .env(var, value);
        let (code, _, err) = run(c);
        crate::support::assert_input_error(code, &err, &[var]);
    }
}

/// The step names and keys (the output key last, as `output`) of `kiln plan ELEMENTS -n`.
fn named_keys(
    t: &Tree,
    cache: &Path,
    elements: &[&str],
    env: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut c = kiln(&[t.path()], cache);
    c.arg("plan")
        .args(elements)
        .args(["-n", "--explain-cache", "--json"]);
    for (k, v) in env {
        c.env(k, v);
    }
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut k: Vec<(String, String)> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_string(),
                s["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    k.push((
        "output".to_string(),
        v["outputs"]["key"].as_str().unwrap().to_string(),
    ));
    k
}

/// The steps whose keys differ between `a` and `b` (same steps in the same order).
fn moved(a: &[(String, String)], b: &[(String, String)]) -> Vec<String> {
    assert_eq!(
        a.iter().map(|s| &s.0).collect::<Vec<_>>(),
        b.iter().map(|s| &s.0).collect::<Vec<_>>()
    );
    a.iter()
        .zip(b)
        .filter(|(x, y)| x.1 != y.1)
        .map(|(x, _)| x.0.clone())
        .collect()
}

#[test]
fn initramfs_modules_move_the_keys_from_post_install_on() {
    let m = mirror();
    let t = fixture(m.path());
    // An element whose install.d hook reads the setting: its install key must follow it.
    t.el("reader").hook(
        "install",
        "20-reader",
        "echo \"${DIB_INITRAMFS_MODULES:-most}\" > /etc/reader",
    );
    let cache = tempfile::tempdir().unwrap();
    let later = ["post-install", "post-root", "output"];
    let els = ["test-os", "app"];
    let base = named_keys(&t, cache.path(), &els, &[]);
    // Each value moves the keys from post-install on, never an earlier one.
    let most = named_keys(&t, cache.path(), &els, &[("DIB_INITRAMFS_MODULES", "most")]);
    assert_eq!(moved(&base, &most), later);
    let vm = named_keys(&t, cache.path(), &els, &[("DIB_INITRAMFS_MODULES", "vm")]);
    assert_eq!(moved(&base, &vm), later);
    assert_eq!(moved(&most, &vm), later);
    // A hook of an earlier phase that names it brings that phase's key in (and no other).
    let els = ["test-os", "app", "reader"];
    let base = named_keys(&t, cache.path(), &els, &[]);
    let vm = named_keys(&t, cache.path(), &els, &[("DIB_INITRAMFS_MODULES", "vm")]);
    assert_eq!(
        moved(&base, &vm),
        ["install", "post-install", "post-root", "output"]
    );
    // Any other value is refused before anything runs, naming the variable.
    let mut c = kiln(&[t.path()], cache.path());
    c.args(["plan", "test-os", "app", "-n"])
        .env("DIB_INITRAMFS_MODULES", "dep");
    let (code, _, err) = run(c);
    assert_input_error(code, &err, &["DIB_INITRAMFS_MODULES", "most", "vm"]);
}
