//! The phase cache as the pipeline uses it: everything of [`kiln_cache`] (layers, keys, index,
//! gc), plus what a key needs from kiln's settings table, the elements, the host and the
//! network, which the cache crate itself never touches: the variables hooks can read, as
//! digests ([`variables`], [`key_env`]), the state of every apt suite of the image ([`mirror`]),
//! the host files hooks read ([`host_files`]), and the size limit from `KILN_CACHE_MAX_SIZE`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub use kiln_cache::*;

use crate::settings;

pub mod host_files;
pub mod mirror;
pub mod variables;

/// The environment as it enters a phase key: the variables hooks can read
/// ([`variables::is_keyed`], given the names the hooks mention, `named`), each as a digest of
/// its value, with kiln's helper directory removed from PATH first.
pub fn key_env(
    env: &BTreeMap<String, String>,
    lib_dir: &Path,
    named: &BTreeSet<String>,
) -> BTreeMap<String, String> {
    let lib = lib_dir.display().to_string();
    let user = variables::user_names(env);
    let cache = settings::DIB_IMAGE_CACHE
        .get(env)
        .map(|c| c.trim_end_matches('/'))
        .filter(|c| !c.is_empty());
    env.iter()
        .filter(|(k, _)| variables::is_keyed(k, named, &user))
        .map(|(k, v)| {
            let v = if k == settings::PATH.name {
                v.split(':')
                    .filter(|p| *p != lib)
                    .collect::<Vec<_>>()
                    .join(":")
            } else {
                v.clone()
            };
            let v = cache.map_or_else(|| v.clone(), |c| without_cache_root(&v, c));
            (k.clone(), variables::value_digest(k, &v))
        })
        .collect()
}

/// `value` with every path in kiln's cache written relative to `$DIB_IMAGE_CACHE`: where the
/// cache lives (ELEMENTS_PATH holds the built-in elements' extraction in it) is not an input of
/// the image, so two caches give the same keys and the same default build seed.
fn without_cache_root(value: &str, cache: &str) -> String {
    let prefix = format!("{cache}/");
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    // Only whole paths: at the start of the value or after a separator (`:`, space, `=`, `,`).
    while let Some(i) = rest.find(&prefix) {
        let at_start = if i == 0 {
            out.is_empty()
        } else {
            rest[..i].ends_with([':', ' ', '=', ',', '\n'])
        };
        out.push_str(&rest[..i]);
        if at_start {
            out.push_str("$DIB_IMAGE_CACHE/");
        } else {
            out.push_str(&prefix);
        }
        rest = &rest[i + prefix.len()..];
    }
    out.push_str(rest);
    if out == cache {
        return "$DIB_IMAGE_CACHE".to_string();
    }
    out
}

/// The size limit kiln keeps its cache under after every build: `KILN_CACHE_MAX_SIZE` (units as
/// in DIB; `0`, `none` or `unlimited` for no limit), 20 GiB by default.
pub fn max_size(env: &BTreeMap<String, String>) -> Option<u64> {
    const DEFAULT: u64 = 20 << 30;
    let Some(v) = env
        .get(settings::KILN_CACHE_MAX_SIZE.name)
        .map(|v| v.trim())
    else {
        return Some(DEFAULT);
    };
    match v.to_ascii_lowercase().as_str() {
        "" => Some(DEFAULT),
        "0" | "none" | "unlimited" => None,
        _ => match kiln_blockdev::parse_size(v) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(
                    "{}={v}: {e}; keeping the cache under {}",
                    settings::KILN_CACHE_MAX_SIZE.name,
                    settings::KILN_CACHE_MAX_SIZE.default_value()
                );
                Some(DEFAULT)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_env_keeps_what_hooks_read_as_digests() {
        let mut e = BTreeMap::new();
        e.insert("TMP_BUILD_DIR".into(), "/tmp/x".into());
        e.insert("DIB_RELEASE".into(), "bookworm".into());
        e.insert("PATH".into(), "/b/lib:/usr/bin".into());
        e.insert("SSH_TTY".into(), "x".into());
        e.insert("BUILD_NUMBER".into(), "4711".into());
        e.insert("MY_HOOK_VAR".into(), "s3cret".into());
        e.insert("KILN_CACHE_ENV".into(), "CI_PIPELINE_KIND".into());
        e.insert("CI_PIPELINE_KIND".into(), "nightly".into());
        let named = BTreeSet::from(["MY_HOOK_VAR".to_string()]);
        let k = key_env(&e, Path::new("/b/lib"), &named);
        assert_eq!(
            k.keys().collect::<Vec<_>>(),
            ["CI_PIPELINE_KIND", "DIB_RELEASE", "MY_HOOK_VAR", "PATH"]
        );
        assert_eq!(k["PATH"], variables::value_digest("PATH", "/usr/bin"));
        assert_eq!(
            k["MY_HOOK_VAR"],
            variables::value_digest("MY_HOOK_VAR", "s3cret")
        );
        let all = format!("{k:?}");
        for plain in ["s3cret", "bookworm", "/usr/bin", "nightly"] {
            assert!(!all.contains(plain), "{plain} stored in plain text: {all}");
        }
        // An unrelated variable changes nothing.
        e.insert("BUILD_NUMBER".into(), "4712".into());
        e.insert("FOO".into(), "bar".into());
        assert_eq!(key_env(&e, Path::new("/b/lib"), &named), k);
    }

    #[test]
    fn max_size_reads_the_setting() {
        let mut env = BTreeMap::new();
        assert_eq!(max_size(&env), Some(20 << 30));
        assert_eq!(
            kiln_blockdev::parse_size(settings::KILN_CACHE_MAX_SIZE.default_value()).ok(),
            max_size(&env)
        );
        env.insert("KILN_CACHE_MAX_SIZE".to_string(), "none".to_string());
        assert_eq!(max_size(&env), None);
        env.insert("KILN_CACHE_MAX_SIZE".to_string(), "5GiB".to_string());
        assert_eq!(max_size(&env), Some(5 << 30));
    }

    #[test]
    fn where_the_cache_lives_is_not_keyed() {
        let named = BTreeSet::from(["ELEMENTS_PATH".to_string()]);
        let env = |cache: &str| {
            BTreeMap::from([
                ("DIB_IMAGE_CACHE".to_string(), cache.to_string()),
                (
                    "ELEMENTS_PATH".to_string(),
                    format!(
                        "/mine/elements:{}/builtin-elements/abc",
                        cache.trim_end_matches('/')
                    ),
                ),
            ])
        };
        let a = key_env(&env("/var/cache/kiln"), Path::new("/b/lib"), &named);
        let b = key_env(&env("/tmp/other-cache/"), Path::new("/b/lib"), &named);
        assert_eq!(a["ELEMENTS_PATH"], b["ELEMENTS_PATH"]);
        assert!(!a.contains_key("DIB_IMAGE_CACHE"));
        // Only whole paths in the cache are rewritten.
        assert_eq!(
            without_cache_root("/c/x:/d/c/x:/c:/cc/y /c/z", "/c"),
            "$DIB_IMAGE_CACHE/x:/d/c/x:/c:/cc/y $DIB_IMAGE_CACHE/z"
        );
        assert_eq!(without_cache_root("/c", "/c"), "$DIB_IMAGE_CACHE");
    }
}
