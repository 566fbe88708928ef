//! The environment hooks see: DIB's variables with DIB's meaning (reference 3.3 and 10.9).
//!
//! The process environment is passed through (as DIB's `sudo -E` does) and the engine's
//! variables are laid over it. Bash functions `die` and `get_image_element_array` are exported the
//! way bash itself exports functions (`BASH_FUNC_name%%`), so host-side hooks can call them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::plan::BuildPlan;
use crate::settings as S;

/// The fixed variables of a build, before per-phase additions (TARGET_ROOT and the block
/// devices).
// Tabular: one `set` per exported variable, in the order DIB exports them.
#[allow(clippy::too_many_lines)]
pub fn base_env(
    plan: &BuildPlan,
    build_dir: &Path,
    image_dir: &Path,
    lib_dir: &Path,
) -> BTreeMap<String, String> {
    let req = &plan.request;
    let mut env: BTreeMap<String, String> = req.env.clone();
    let mut set = |k: S::Setting, v: String| {
        env.insert(k.name.to_string(), v);
    };
    let d = |p: &Path| p.display().to_string();
    set(S::LC_ALL, "C".into());
    set(S::ARCH, plan.arch.clone());
    set(S::IMAGE_NAME, plan.image_name.display().to_string());
    let types = req.output_types();
    set(S::IMAGE_TYPE, types.first().cloned().unwrap_or_default());
    set(S::IMAGE_TYPES, types.join(" "));
    set(S::ELEMENTS_PATH, plan.exported_elements_path.clone());
    set(S::IMAGE_ELEMENT, plan.set.image_element());
    set(S::IMAGE_ELEMENT_YAML, plan.set.image_element_yaml());
    set(S::TMP_BUILD_DIR, d(build_dir));
    set(S::TMP_IMAGE_DIR, d(image_dir));
    set(S::TMP_HOOKS_PATH, d(&build_dir.join("hooks")));
    set(S::TMP_MOUNT_PATH, d(&build_dir.join("mnt")));
    set(S::LIB, d(lib_dir));
    set(S::DIB_IMAGE_CACHE, d(&plan.cache_root));
    set(
        S::DIB_LOCKFILES,
        req.var(S::DIB_LOCKFILES.name)
            .map_or_else(|| d(&plan.cache_root.join("lockfiles")), String::from),
    );
    set(
        S::DIB_OFFLINE,
        if req.offline || req.var(S::DIB_OFFLINE.name).is_some_and(|v| v != "0") {
            "1".into()
        } else {
            String::new()
        },
    );
    let trace = req.debug_trace.max(
        req.var(S::DIB_DEBUG_TRACE.name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    set(S::DIB_DEBUG_TRACE, trace.to_string());
    set(
        S::DIB_PYTHON_EXEC,
        req.var(S::DIB_PYTHON_EXEC.name)
            .map_or_else(|| find_python(&plan.elements_path), String::from),
    );
    set(
        S::DIB_MIN_TMPFS,
        req.min_tmpfs.map_or_else(
            || S::DIB_MIN_TMPFS.get_or_default(&req.env).to_string(),
            |v| v.to_string(),
        ),
    );
    set(
        S::DIB_NO_TMPFS,
        if req.no_tmpfs || req.var(S::DIB_NO_TMPFS.name).is_some_and(|v| v == "1") {
            "1".into()
        } else {
            "0".into()
        },
    );
    set(
        S::DIB_CHECKSUM,
        if req.checksum {
            "1".into()
        } else {
            S::DIB_CHECKSUM.get_or_default(&req.env).to_string()
        },
    );
    set(S::FS_TYPE, S::FS_TYPE.get_or_default(&req.env).to_string());
    set(
        S::COMPRESS_IMAGE,
        if req.uncompressed {
            String::new()
        } else {
            "1".into()
        },
    );
    set(
        S::SKIP_BASE,
        if req.skip_base {
            "1".into()
        } else {
            String::new()
        },
    );
    if let Some(v) = &req.image_size {
        set(S::DIB_IMAGE_SIZE, v.clone());
    }
    if let Some(v) = &req.image_extra_size {
        set(S::DIB_IMAGE_EXTRA_SIZE, v.clone());
    }
    if let Some(v) = &req.journal_size {
        set(S::DIB_JOURNAL_SIZE, v.clone());
    }
    if let Some(v) = &req.max_online_resize {
        set(S::MAX_ONLINE_RESIZE, v.clone());
    }
    if let Some(v) = &req.root_label {
        set(S::ROOT_LABEL, v.clone());
    }
    if req.no_cache {
        set(S::KILN_NO_CACHE, "1".into());
    }
    if let Some(v) = req.seed.as_deref().filter(|v| !v.is_empty()) {
        set(S::KILN_SEED, v.to_string());
    }
    if req.var(S::DIB_DEBIAN_SECURITY_MIRROR.name).is_none() {
        if let Some(m) = host_debian_security_mirror() {
            set(S::DIB_DEBIAN_SECURITY_MIRROR, m);
        }
    }
    // With SOURCE_DATE_EPOCH the image must not record where it was built (the manifests
    // element writes DIB_ARGS into it).
    let reproducible = req
        .var(S::SOURCE_DATE_EPOCH.name)
        .is_some_and(|v| !v.trim().is_empty());
    set(
        S::DIB_ARGS,
        if reproducible {
            args_without_host_paths(&req.args).join(" ")
        } else {
            req.args.join(" ")
        },
    );
    set(S::DIB_ENV, dib_env(&req.env));
    // PATH: kiln's helpers first, then the caller's, then the sbin dirs DIB appends.
    let mut path = format!("{}:{}", d(lib_dir), S::PATH.get_or_default(&req.env));
    for extra in ["/sbin", "/usr/sbin", "/usr/local/sbin"] {
        if !path.split(':').any(|p| p == extra) {
            path.push(':');
            path.push_str(extra);
        }
    }
    set(S::PATH, path);
    // Exported bash functions are not settings: they are set after the closure's borrow ends.
    env.insert(
        "BASH_FUNC_get_image_element_array%%".to_string(),
        format!("() {{  echo \"{}\"\n}}", plan.set.element_array()),
    );
    env.insert(
        "BASH_FUNC_die%%".to_string(),
        "() {  echo \"ERROR: $*\" >&2;\n exit 1\n}".to_string(),
    );
    env.remove(S::TARGET_ROOT.name);
    env
}

/// `declare -p` style text of every `DIB_*` variable of the caller (DIB_ENV), except the
/// settings that never enter a key (per-build host paths such as `DIB_IMAGE_CACHE`): the image's
/// `dib_environment` records what shaped it, not where this build host keeps its cache.
pub fn dib_env(env: &BTreeMap<String, String>) -> String {
    let mut s = String::new();
    let shapes_the_image = |k: &str| S::find(k).is_none_or(|st| st.scope != S::Scope::NotKey);
    for (k, v) in env
        .iter()
        .filter(|(k, _)| k.starts_with("DIB_") && shapes_the_image(k))
    {
        let _ = writeln!(s, "declare -x {k}={}", kiln_element::shell_word(v));
    }
    s
}

/// DIB_PYTHON_EXEC: a Python that can import `diskimage_builder` and `yaml` (DIB's
/// package-installs squash needs both). The venv that holds a DIB element tree on
/// ELEMENTS_PATH comes first, then every `python3` on PATH; failing those, the first `python3`.
/// Each probe starts a Python, so the answer is kept for the life of the process.
fn find_python(elements_path: &[std::path::PathBuf]) -> String {
    static FOUND: std::sync::Mutex<BTreeMap<Vec<std::path::PathBuf>, String>> =
        std::sync::Mutex::new(BTreeMap::new());
    let key = elements_path.to_vec();
    if let Some(p) = FOUND.lock().ok().and_then(|f| f.get(&key).cloned()) {
        return p;
    }
    let found = probe_python(elements_path);
    if let Ok(mut f) = FOUND.lock() {
        f.insert(key, found.clone());
    }
    found
}

/// [`find_python`]'s probes.
fn probe_python(elements_path: &[std::path::PathBuf]) -> String {
    let mut candidates: Vec<std::path::PathBuf> = elements_path
        .iter()
        .filter(|e| e.ends_with("diskimage_builder/elements"))
        .filter_map(|e| e.ancestors().nth(5).map(|venv| venv.join("bin/python3")))
        .collect();
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        candidates.push(Path::new(dir).join("python3"));
    }
    candidates.push("/usr/bin/python3".into());
    for p in candidates.iter().filter(|p| p.is_file()) {
        let ok = kiln_host::Cmd::new(p)
            .args(["-c", "import diskimage_builder, yaml"])
            .run()
            .is_ok();
        if ok {
            return p.display().to_string();
        }
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .map_or_else(|| "/usr/bin/python3".into(), |p| p.display().to_string())
}

/// On a Debian build host, the security suite's URI from the host's own apt sources (DIB's
/// default security host may be unreachable where only the host's mirror is).
fn host_debian_security_mirror() -> Option<String> {
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    if !os.lines().any(|l| l.trim() == "ID=debian") {
        return None;
    }
    let mut texts: Vec<String> = std::fs::read_dir("/etc/apt/sources.list.d")
        .map(|rd| {
            let mut v: Vec<_> = rd.flatten().map(|e| e.path()).collect();
            v.sort();
            v.into_iter()
                .filter_map(|p| std::fs::read_to_string(p).ok())
                .collect()
        })
        .unwrap_or_default();
    texts.extend(std::fs::read_to_string("/etc/apt/sources.list").ok());
    for t in &texts {
        for l in t.lines() {
            let l = l.trim();
            let uri = if let Some(rest) = l.strip_prefix("URIs:") {
                rest.split_whitespace().next()
            } else if l.starts_with("deb ") {
                l.split_whitespace().find(|w| w.contains("://"))
            } else {
                None
            };
            if let Some(u) = uri.filter(|u| u.contains("security")) {
                return Some(u.to_string());
            }
        }
    }
    None
}

/// Parses `env -0` output into a map.
pub fn parse_env0(bytes: &[u8]) -> BTreeMap<String, String> {
    bytes
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let s = String::from_utf8_lossy(kv);
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// The command line without what names places on the build host: `-o PATH` keeps only the
/// image's file name; `--image-cache` and `--logfile` (which change nothing in the image) are
/// left out with their values. Both spellings (`--opt VALUE`, `--opt=VALUE`, `-oVALUE`).
pub fn args_without_host_paths(args: &[String]) -> Vec<String> {
    const DROPPED: &[&str] = &["--image-cache", "--logfile"];
    let file_name = |v: &str| {
        Path::new(v)
            .file_name()
            .map_or_else(|| v.to_string(), |n| n.to_string_lossy().into_owned())
    };
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if DROPPED.contains(&a.as_str()) {
            it.next();
        } else if DROPPED
            .iter()
            .any(|d| a.strip_prefix(d).is_some_and(|r| r.starts_with('=')))
        {
        } else if a == "-o" {
            out.push(a.clone());
            if let Some(v) = it.next() {
                out.push(file_name(v));
            }
        } else if let Some(v) = a.strip_prefix("-o").filter(|v| !v.is_empty()) {
            out.push(format!("-o{}", file_name(v)));
        } else {
            out.push(a.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        use kiln_element::shell_word;
        assert_eq!(shell_word("plain"), "plain");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn env0() {
        let m = parse_env0(b"A=1\0B=x=y\0");
        assert_eq!(m["A"], "1");
        assert_eq!(m["B"], "x=y");
    }

    #[test]
    fn dib_env_only_dib_vars() {
        let mut e = BTreeMap::new();
        e.insert("DIB_RELEASE".to_string(), "bookworm".to_string());
        e.insert("HOME".to_string(), "/root".to_string());
        e.insert("DIB_IMAGE_CACHE".to_string(), "/var/cache/x".to_string());
        assert_eq!(dib_env(&e), "declare -x DIB_RELEASE=bookworm\n");
    }

    #[test]
    fn reproducible_args_name_no_host_path() {
        let args: Vec<String> = [
            "--seed",
            "s",
            "--image-cache",
            "/c/a",
            "-o",
            "/out/a/image",
            "--logfile=/l/x",
            "-t",
            "tar,raw",
            "debian-minimal",
            "vm",
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
        assert_eq!(
            args_without_host_paths(&args).join(" "),
            "--seed s -o image -t tar,raw debian-minimal vm"
        );
        let joined: Vec<String> = ["-o/x/y/img", "--image-cache=/c", "vm"]
            .iter()
            .map(|s| (*s).to_string())
            .collect();
        assert_eq!(args_without_host_paths(&joined).join(" "), "-oimg vm");
    }
}
