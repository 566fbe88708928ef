//! Host files in the phase keys: the files on the build host that hooks read, keyed by content.
//!
//! A variable's value is keyed (it is a `DIB_*` name), but the file it names can change under
//! the same name: a revoked SSH key, a rotated apt key. So the content of each such file enters
//! every phase key. Two sources list them:
//!
//! - kiln's own list of DIB variables that name host files ([`WELL_KNOWN`]), keyed whenever set;
//! - an element's `cache-inputs` file, one entry a line: `$NAME` (the file or directory the
//!   variable names; `*` in the name matches any run of characters, e.g.
//!   `$DIB_DEV_USER_*_AUTHORIZED_KEYS`), or a path, absolute or `~/`-relative (the home of the
//!   user who started kiln: `SUDO_USER`'s, else `HOME`). Blank lines and `#` comments are
//!   skipped; anything else is an input error naming the file and line.
//!
//! A directory is keyed by the names and contents of every regular file under it; a missing
//! file or directory as `missing`. Special files (FIFOs, devices) are never opened.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The name of the element file that declares the host files its hooks read.
pub const CACHE_INPUTS: &str = "cache-inputs";

/// DIB variables whose value is a host file or directory some element reads.
pub const WELL_KNOWN: &[&str] = &[
    "DIB_APT_SOURCES",
    "DIB_ADD_APT_KEYS",
    "DIB_DEV_USER_AUTHORIZED_KEYS",
    "DIB_DEV_USER_*_AUTHORIZED_KEYS",
    "DIB_APT_KEYRING",
    "DIB_DEBIAN_DEBOOTSTRAP_SCRIPT",
];

/// What is keyed as the content of a file that does not exist.
pub const MISSING: &str = "missing";

/// A bad line in an element's `cache-inputs`.
#[derive(Debug, thiserror::Error)]
#[error("{}:{line}: {}", path.display(), self.message())]
pub struct DeclError {
    /// The `cache-inputs` file.
    pub path: PathBuf,
    /// The line number (1-based).
    pub line: usize,
    /// The line.
    pub text: String,
}

impl DeclError {
    /// What is wrong and what to do, without the file and line.
    pub fn message(&self) -> String {
        format!(
            "'{}' is neither $VARIABLE nor an absolute or ~/ path (write one host file per line, e.g. $DIB_MY_KEYS or /etc/my-app.conf)",
            self.text
        )
    }
}

/// One declared host input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Declared {
    /// The file or directory named by each variable matching this pattern (`*` wildcards).
    Var(String),
    /// A host path, absolute or starting with `~/`.
    Path(String),
}

/// Parses the text of a `cache-inputs` file.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Declared>, DeclError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || DeclError {
            path: path.to_path_buf(),
            line: i + 1,
            text: line.to_string(),
        };
        if let Some(name) = line.strip_prefix('$') {
            let name = name
                .strip_prefix('{')
                .and_then(|n| n.strip_suffix('}'))
                .unwrap_or(name);
            let ok = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '*');
            if !ok {
                return Err(bad());
            }
            out.push(Declared::Var(name.to_string()));
        } else if line.starts_with('/') || line.starts_with("~/") {
            out.push(Declared::Path(line.to_string()));
        } else {
            return Err(bad());
        }
    }
    Ok(out)
}

/// The `cache-inputs` declarations of every element directory in `dirs`; a missing file
/// declares nothing, one that is not a regular file is skipped.
pub fn declared<'a>(
    dirs: impl IntoIterator<Item = &'a Path>,
) -> Result<Vec<Declared>, crate::Error> {
    let mut out = Vec::new();
    for dir in dirs {
        let p = dir.join(CACHE_INPUTS);
        if !fs::metadata(&p).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let text = fs::read_to_string(&p).map_err(crate::io(&p))?;
        out.extend(parse(&p, &text)?);
    }
    Ok(out)
}

/// `name` matches `pattern`, where `*` stands for any run of characters.
fn matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The home directory `~/` stands for: the invoking user's when kiln runs through sudo, else
/// `HOME`.
fn home(env: &BTreeMap<String, String>) -> Option<PathBuf> {
    if let Some(user) = env
        .get("SUDO_USER")
        .filter(|u| !u.is_empty() && *u != "root")
    {
        if let Ok(Some(u)) = nix::unistd::User::from_name(user) {
            return Some(u.dir);
        }
    }
    env.get("HOME").filter(|h| !h.is_empty()).map(PathBuf::from)
}

/// The digest of every host input: kiln's [`WELL_KNOWN`] variables and `decls`, resolved
/// against `env`. Label → digest: the variable's name for `$NAME`, the path as written for a
/// path.
pub fn digests(decls: &[Declared], env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let vars = WELL_KNOWN
        .iter()
        .map(|v| Declared::Var((*v).to_string()))
        .chain(decls.iter().cloned());
    for d in vars {
        match d {
            Declared::Var(pattern) => {
                for (name, value) in env.iter().filter(|(k, _)| matches(&pattern, k)) {
                    if !value.is_empty() {
                        out.insert(name.clone(), content_digest(Path::new(value)));
                    }
                }
            }
            Declared::Path(p) => {
                let path = match p.strip_prefix("~/") {
                    Some(rel) => match home(env) {
                        Some(h) => h.join(rel),
                        None => continue,
                    },
                    None => PathBuf::from(&p),
                };
                out.insert(p, content_digest(&path));
            }
        }
    }
    out
}

/// sha256 over a file's content, or over the relative names and contents of every regular file
/// under a directory (sorted); [`MISSING`] when there is nothing to read.
pub fn content_digest(path: &Path) -> String {
    let Ok(meta) = fs::metadata(path) else {
        return MISSING.to_string();
    };
    let mut h = Sha256::new();
    if meta.is_file() {
        match fs::read(path) {
            Ok(b) => h.update(&b),
            Err(_) => return MISSING.to_string(),
        }
    } else if meta.is_dir() {
        let mut files = Vec::new();
        walk(path, path, &mut files, 0);
        files.sort();
        for (rel, data) in files {
            h.update(rel.as_bytes());
            h.update(b"\0");
            h.update(Sha256::digest(&data));
        }
    } else {
        return MISSING.to_string();
    }
    hex::encode(h.finalize())
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>, depth: usize) {
    // A directory of keys is shallow; a link loop must not recurse forever.
    if depth > 16 {
        return;
    }
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = fs::metadata(&p) else { continue };
        if m.is_dir() {
            walk(base, &p, out, depth + 1);
        } else if m.is_file() {
            if let Ok(data) = fs::read(&p) {
                let rel = p.strip_prefix(base).unwrap_or(&p).display().to_string();
                out.push((rel, data));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_variables_and_paths_and_names_bad_lines() {
        let p = Path::new("/e/cache-inputs");
        let got = parse(
            p,
            "# keys\n$DIB_MY_KEYS\n${DIB_OTHER}\n\n$DIB_DEV_USER_*_AUTHORIZED_KEYS\n/etc/app.conf\n~/.ssh/id_rsa.pub\n",
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                Declared::Var("DIB_MY_KEYS".into()),
                Declared::Var("DIB_OTHER".into()),
                Declared::Var("DIB_DEV_USER_*_AUTHORIZED_KEYS".into()),
                Declared::Path("/etc/app.conf".into()),
                Declared::Path("~/.ssh/id_rsa.pub".into()),
            ]
        );
        for (text, line) in [
            ("$OK\nrelative/path\n", 2),
            ("$\n", 1),
            ("\n\n$A-B\n", 3),
            ("$1X\n", 1),
        ] {
            let e = parse(p, text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}");
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("/e/cache-inputs:{line}: ")),
                "{msg}"
            );
        }
    }

    #[test]
    fn wildcards() {
        assert!(matches(
            "DIB_DEV_USER_*_AUTHORIZED_KEYS",
            "DIB_DEV_USER_ALICE_AUTHORIZED_KEYS"
        ));
        assert!(!matches(
            "DIB_DEV_USER_*_AUTHORIZED_KEYS",
            "DIB_DEV_USER_AUTHORIZED_KEYS"
        ));
        assert!(matches("A", "A"));
        assert!(!matches("A", "AB"));
        assert!(matches("A*", "AB"));
        assert!(matches("*B*D", "xBcD"));
    }

    #[test]
    fn contents_are_keyed_for_files_directories_and_declared_paths() {
        let d = tempfile::tempdir().unwrap();
        let keys = d.path().join("keys");
        fs::create_dir(&keys).unwrap();
        fs::write(keys.join("a.gpg"), "A").unwrap();
        let sources = d.path().join("sources.list");
        fs::write(&sources, "deb http://m/debian bookworm main\n").unwrap();
        let home_dir = d.path().join("home");
        fs::create_dir_all(home_dir.join(".ssh")).unwrap();
        fs::write(home_dir.join(".ssh/id_ed25519.pub"), "ssh-ed25519 AAA one").unwrap();
        let mut env = BTreeMap::new();
        env.insert("DIB_ADD_APT_KEYS".into(), keys.display().to_string());
        env.insert("DIB_APT_SOURCES".into(), sources.display().to_string());
        env.insert("HOME".into(), home_dir.display().to_string());
        env.insert("DIB_DEV_USER_AUTHORIZED_KEYS".into(), String::new());
        let decls = vec![
            Declared::Path("~/.ssh/id_ed25519.pub".into()),
            Declared::Path("~/.ssh/id_rsa.pub".into()),
        ];
        let a = digests(&decls, &env);
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            [
                "DIB_ADD_APT_KEYS",
                "DIB_APT_SOURCES",
                "~/.ssh/id_ed25519.pub",
                "~/.ssh/id_rsa.pub"
            ]
        );
        assert_eq!(a["~/.ssh/id_rsa.pub"], MISSING);
        // Each file's content, and a new file in a keyed directory, changes its entry only.
        fs::write(keys.join("b.asc"), "B").unwrap();
        let b = digests(&decls, &env);
        assert_ne!(a["DIB_ADD_APT_KEYS"], b["DIB_ADD_APT_KEYS"]);
        assert_eq!(a["DIB_APT_SOURCES"], b["DIB_APT_SOURCES"]);
        fs::write(home_dir.join(".ssh/id_ed25519.pub"), "ssh-ed25519 AAA two").unwrap();
        let c = digests(&decls, &env);
        assert_ne!(b["~/.ssh/id_ed25519.pub"], c["~/.ssh/id_ed25519.pub"]);
        assert_eq!(b["DIB_ADD_APT_KEYS"], c["DIB_ADD_APT_KEYS"]);
        // A FIFO is never opened.
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        assert_eq!(content_digest(&fifo), MISSING);
    }

    #[test]
    fn declarations_are_read_from_element_directories() {
        let d = tempfile::tempdir().unwrap();
        let el = d.path().join("el");
        fs::create_dir(&el).unwrap();
        fs::write(el.join(CACHE_INPUTS), "$DIB_MY_FILE\n").unwrap();
        let none = d.path().join("none");
        fs::create_dir(&none).unwrap();
        let got = declared([el.as_path(), none.as_path()]).unwrap();
        assert_eq!(got, vec![Declared::Var("DIB_MY_FILE".into())]);
        fs::write(el.join(CACHE_INPUTS), "oops\n").unwrap();
        let e = declared([el.as_path()]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("cache-inputs:1:"), "{e}");
    }
}
