//! Which variables enter the phase keys, and how their values are kept out of the cache.
//!
//! A hook can only read a variable it names, so the keys cover exactly: every `DIB_*` variable;
//! the settings table's phase-key entries; proxies (`http_proxy`, `https_proxy`, `ftp_proxy`,
//! `all_proxy`, `no_proxy`, in any case) and locale (`LANG`, `LANGUAGE`, `LC_*`); every name
//! that appears in the text of the resolved elements' hooks, `environment.d` files and `bin/`
//! scripts; and the names the user lists in `KILN_CACHE_ENV`. Any other variable (a CI build
//! number, a terminal's id) changes no key.
//!
//! The scan is deliberately generous: every identifier-shaped word of every file in the merged
//! hook tree's directories counts as named (so `$NAME`, `${NAME:-x}`, `export NAME`,
//! `os.environ["NAME"]` and `getenv("NAME")` are all caught, and so is a word in a comment). A
//! false positive only costs a cache miss when that variable changes; a false negative would
//! hand back a stale layer.
//!
//! Values never reach the cache: each value enters the key as a digest salted with its name, so
//! `meta.json` files say which variables a layer saw and whether they changed, not what they were.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read as _;
use std::path::Path;

use kiln_element::{HookTree, Phase};
use sha2::{Digest, Sha256};

use crate::settings;

/// Files larger than this are not scanned for names (no hook script is this large; a large
/// data file in an element's tree would only add noise).
const MAX_SCAN_BYTES: u64 = 8 << 20;

/// Proxy variables: curl, apt (through its `Acquire::*::Proxy` defaults), wget and pip read them,
/// in either case.
const PROXIES: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "ftp_proxy",
    "all_proxy",
    "no_proxy",
];

/// Every variable name the hook tree's text can read: the identifier-shaped words of every file
/// under the merged directories (`<phase>.d`, `environment.d`, `bin`, and any other directory an
/// element ships), plus those of `extra` (kiln's own helpers written into the tree).
pub fn named_in_hooks(tree: &HookTree, extra: &[&str]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for dir in tree.dirs.values() {
        for entry in &dir.entries {
            scan_path(&entry.path, &mut names);
        }
    }
    for text in extra {
        scan_text(text.as_bytes(), &mut names);
    }
    names
}

/// The names a step's hooks can read: those of the merged directories that are not phase
/// directories (`environment.d`, `bin`, …) and of the step's own phase directory (`None`, the
/// `-p` packages step, has none).
pub fn named_visible_to(tree: &HookTree, phase: Option<Phase>) -> BTreeSet<String> {
    let own = phase.map(Phase::dir_name);
    let mut names = BTreeSet::new();
    for (name, dir) in &tree.dirs {
        let is_phase_dir = Phase::ALL.iter().any(|p| p.dir_name() == *name);
        if is_phase_dir && own.as_ref() != Some(name) {
            continue;
        }
        for entry in &dir.entries {
            scan_path(&entry.path, &mut names);
        }
    }
    names
}

/// The keyed environment of a step that runs at phase `at`: `env` (every keyed variable, as
/// [`crate::cache::key_env`] gives it) without the settings that enter the keys only from a
/// later phase ([`settings::Scope::PhaseKeysFrom`]), unless the step's hooks name them (`visible`, the
/// names from [`named_visible_to`], computed only when such a setting is set).
pub fn env_at(
    env: &BTreeMap<String, String>,
    at: Phase,
    visible: impl FnOnce() -> BTreeSet<String>,
) -> BTreeMap<String, String> {
    let later: Vec<&str> = settings::phase_keys_from()
        .filter(|(s, from)| *from > at && env.contains_key(s.name))
        .map(|(s, _)| s.name)
        .collect();
    if later.is_empty() {
        return env.clone();
    }
    let visible = visible();
    env.iter()
        .filter(|(k, _)| !later.contains(&k.as_str()) || visible.contains(k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Adds the names in a file, or in every file under a directory (symlinks followed, special
/// files skipped, so a FIFO never blocks the scan).
fn scan_path(path: &Path, names: &mut BTreeSet<String>) {
    let Ok(meta) = fs::metadata(path) else {
        return;
    };
    if meta.is_dir() {
        let Ok(rd) = fs::read_dir(path) else { return };
        for e in rd.flatten() {
            scan_path(&e.path(), names);
        }
    } else if meta.is_file() && meta.len() <= MAX_SCAN_BYTES {
        let mut buf = Vec::new();
        if fs::File::open(path)
            .and_then(|f| f.take(MAX_SCAN_BYTES).read_to_end(&mut buf))
            .is_ok()
        {
            scan_text(&buf, names);
        }
    }
}

/// Adds every identifier-shaped word of `text` (`[A-Za-z_][A-Za-z0-9_]*`) to `names`.
pub fn scan_text(text: &[u8], names: &mut BTreeSet<String>) {
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    for word in text.split(|b| !is_word(*b)) {
        if word.first().is_some_and(|b| !b.is_ascii_digit()) {
            names.insert(String::from_utf8_lossy(word).into_owned());
        }
    }
}

/// The names listed in `KILN_CACHE_ENV` (comma or space separated).
pub fn user_names(env: &BTreeMap<String, String>) -> BTreeSet<String> {
    settings::KILN_CACHE_ENV
        .get(env)
        .unwrap_or_default()
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Whether `name` enters the phase keys, given the names the hooks mention and those the user
/// listed.
pub fn is_keyed(name: &str, named: &BTreeSet<String>, user: &BTreeSet<String>) -> bool {
    if let Some(s) = settings::find(name) {
        // Per-build paths, logging and disk-only knobs never enter the phase keys, even when a
        // hook names them.
        return s.scope.is_phase_key();
    }
    if user.contains(name) {
        return true;
    }
    if settings::SESSION_NOISE.contains(&name)
        || settings::SESSION_NOISE_PREFIXES
            .iter()
            .any(|p| name.starts_with(p))
    {
        return false;
    }
    name.starts_with("DIB_")
        || PROXIES.iter().any(|p| p.eq_ignore_ascii_case(name))
        || name == "LANG"
        || name == "LANGUAGE"
        || name.starts_with("LC_")
        || named.contains(name)
}

/// The digest a value enters a key as: sha256 of the name and the value, so equal values of
/// different variables do not look alike.
pub fn value_digest(name: &str, value: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"kiln-env-v1\0");
    h.update(name.as_bytes());
    h.update(b"\0");
    h.update(value.as_bytes());
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(words: &[&str]) -> BTreeSet<String> {
        words.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn scan_catches_every_way_a_hook_names_a_variable() {
        let mut n = BTreeSet::new();
        scan_text(
            b"echo $ALPHA ${BETA:-x} \"${GAMMA}\"\nexport DELTA=1\nimport os; os.environ['EPSILON']\nos.getenv(\"ZETA\")\n# 9LIVES is no name\n",
            &mut n,
        );
        for w in [
            "ALPHA", "BETA", "GAMMA", "DELTA", "EPSILON", "ZETA", "environ", "x",
        ] {
            assert!(n.contains(w), "{w} not found in {n:?}");
        }
        assert!(!n.contains("9LIVES"));
        assert!(!n.contains("BUILD_NUMBER"));
    }

    #[test]
    fn keyed_variables_follow_the_rules() {
        let named = set(&["MY_APP_PORT", "PWD", "TMP_BUILD_DIR"]);
        let user = set(&["CORP_TOKEN"]);
        let k = |n: &str| is_keyed(n, &named, &user);
        // DIB_*, settings with phase scope, proxies, locale, names in hooks, the user's list.
        for yes in [
            "DIB_RELEASE",
            "DIB_ANYTHING_NEW",
            "FS_TYPE",
            "ELEMENTS_PATH",
            "http_proxy",
            "HTTPS_PROXY",
            "No_Proxy",
            "ALL_PROXY",
            "ftp_proxy",
            "LANG",
            "LANGUAGE",
            "LC_MESSAGES",
            "MY_APP_PORT",
            "CORP_TOKEN",
        ] {
            assert!(k(yes), "{yes} should be keyed");
        }
        // Everything else, session noise even when named, and settings outside the phase keys
        // even when named.
        for no in [
            "BUILD_NUMBER",
            "FOO",
            "GITHUB_RUN_ID",
            "PWD",
            "TERM",
            "SSH_AUTH_SOCK",
            "TMP_BUILD_DIR",
            "DIB_IMAGE_SIZE",
            "KILN_CACHE_ENV",
        ] {
            assert!(!k(no), "{no} should not be keyed");
        }
    }

    #[test]
    fn settings_keyed_from_a_phase_leave_earlier_keys_unless_named_there() {
        let env: BTreeMap<String, String> =
            [("DIB_INITRAMFS_MODULES", "d1"), ("DIB_RELEASE", "d2")]
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect();
        let names = |e: &BTreeMap<String, String>| e.keys().cloned().collect::<Vec<_>>();
        // Before post-install, and not named by the step's hooks: left out.
        let at_install = env_at(&env, Phase::Install, BTreeSet::new);
        assert_eq!(names(&at_install), ["DIB_RELEASE"]);
        // Named by a file the step sees: kept.
        let seen = env_at(&env, Phase::Root, || set(&["DIB_INITRAMFS_MODULES"]));
        assert_eq!(seen, env);
        // From post-install on: always kept, and the hooks are not scanned.
        for at in [Phase::PostInstall, Phase::PostRoot] {
            assert_eq!(env_at(&env, at, || unreachable!("no scan needed")), env);
        }
        // Unset: nothing to decide, no scan.
        let mut without = env.clone();
        without.remove("DIB_INITRAMFS_MODULES");
        assert_eq!(
            env_at(&without, Phase::Root, || unreachable!("no scan needed")),
            without
        );
    }

    #[test]
    fn digests_hide_values_and_tell_variables_apart() {
        let d = value_digest("DIB_PASSWORD", "hunter2");
        assert!(!d.contains("hunter2"));
        assert_eq!(d.len(), 64);
        assert_eq!(d, value_digest("DIB_PASSWORD", "hunter2"));
        assert_ne!(d, value_digest("DIB_PASSWORD", "hunter3"));
        assert_ne!(d, value_digest("DIB_OTHER", "hunter2"));
    }

    #[test]
    fn user_names_split_on_commas_and_spaces() {
        let mut env = BTreeMap::new();
        env.insert("KILN_CACHE_ENV".to_string(), "A,B  C,".to_string());
        assert_eq!(user_names(&env), set(&["A", "B", "C"]));
        assert!(user_names(&BTreeMap::new()).is_empty());
    }

    #[test]
    fn the_hook_tree_bin_and_environment_d_are_scanned() {
        let d = tempfile::tempdir().unwrap();
        let el = d.path().join("el");
        fs::create_dir_all(el.join("install.d")).unwrap();
        fs::create_dir_all(el.join("bin")).unwrap();
        fs::create_dir_all(el.join("environment.d")).unwrap();
        fs::write(el.join("install.d/10-a"), "echo ${HOOK_VAR}\n").unwrap();
        fs::write(el.join("bin/tool"), "print(os.environ['BIN_VAR'])\n").unwrap();
        fs::write(el.join("environment.d/10-e"), "export ENV_VAR=1\n").unwrap();
        fs::write(el.join("README.rst"), "README_VAR\n").unwrap();
        fs::write(el.join("element-provides"), "operating-system\n").unwrap();
        let lib = kiln_element::Library::discover(&[d.path().to_path_buf()]).unwrap();
        let req = kiln_element::ResolveRequest {
            elements: vec!["el".to_string()],
            arch: "amd64".to_string(),
            skip_base: true,
        };
        let set_ = kiln_element::resolve_exact(&lib, &req).unwrap();
        let tree = kiln_element::merge_hooks(&set_).unwrap();
        let n = named_in_hooks(&tree, &["HELPER_VAR"]);
        for w in ["HOOK_VAR", "BIN_VAR", "ENV_VAR", "HELPER_VAR"] {
            assert!(n.contains(w), "{w} missing from {n:?}");
        }
        assert!(!n.contains("README_VAR"), "top-level files are not hooks");
    }
}
