//! The phase cache as the pipeline uses it: everything of [`kiln_cache`] (layers, keys, index,
//! gc), plus what a key needs from kiln's settings table and the network, which the cache crate
//! itself never touches: the environment filtered for the phase keys, the digest of the mirror's
//! `InRelease` (fetched here, passed to [`kiln_cache::Inputs`] as a value), and the size limit
//! from `KILN_CACHE_MAX_SIZE`.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_host::Cmd;
use sha2::{Digest, Sha256};

pub use kiln_cache::*;

use crate::settings;

/// The environment as it enters a phase key: every variable but those the settings table
/// ([`settings::not_phase_keys`]) and the session noise leave out, with kiln's helper directory
/// removed from PATH.
pub fn key_env(env: &BTreeMap<String, String>, lib_dir: &Path) -> BTreeMap<String, String> {
    let lib = lib_dir.display().to_string();
    env.iter()
        .filter(|(k, _)| {
            !settings::not_phase_keys().any(|n| n == k.as_str())
                && !settings::SESSION_NOISE.contains(&k.as_str())
                && !settings::SESSION_NOISE_PREFIXES
                    .iter()
                    .any(|p| k.starts_with(p))
        })
        .map(|(k, v)| {
            let v = if k == settings::PATH.name {
                v.split(':')
                    .filter(|p| *p != lib)
                    .collect::<Vec<_>>()
                    .join(":")
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

/// sha256 of `<mirror>/dists/<release>/InRelease` (or `Release`), fetched with curl.
pub fn release_digest(mirror: &str, release: &str) -> Option<String> {
    for file in ["InRelease", "Release"] {
        let url = format!("{}/dists/{release}/{file}", mirror.trim_end_matches('/'));
        // A mirror that cannot answer means "unknown", not an error.
        if let Ok(out) = Cmd::new("curl")
            .args(["-fsSL", "--max-time", "20"])
            .arg(&url)
            .run()
        {
            if !out.stdout.is_empty() {
                return Some(hex::encode(Sha256::digest(&out.stdout)));
            }
        }
    }
    None
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
    fn key_env_drops_paths_and_noise() {
        let mut e = BTreeMap::new();
        e.insert("TMP_BUILD_DIR".into(), "/tmp/x".into());
        e.insert("DIB_RELEASE".into(), "bookworm".into());
        e.insert("PATH".into(), "/b/lib:/usr/bin".into());
        e.insert("SSH_TTY".into(), "x".into());
        let k = key_env(&e, Path::new("/b/lib"));
        assert_eq!(k.len(), 2);
        assert_eq!(k["PATH"], "/usr/bin");
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
}
