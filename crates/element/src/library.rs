//! Element discovery: which elements exist, and where, given the `ELEMENTS_PATH` entries.
//!
//! An element is any directory directly under an entry; its name is the directory name and
//! its path is the canonical (symlink-free) path, as DIB's `realpath`. When two entries hold
//! an element of the same name the earlier entry wins, as a whole directory: there is no
//! file-level merge between copies. The one place DIB reads the shadowed copies too is the
//! package-installs squash, so every copy is remembered (`Library::all_copies`).
//!
//! `element-deps` and `element-provides` are read here, once, because resolution needs them
//! for every element it visits. Directory listings are sorted so that everything derived from
//! a library is the same on every machine.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext};
use crate::package_installs::{self, PackageInstalls};
use crate::pkg_map::{self, PkgMap};

/// One element: a directory under an `ELEMENTS_PATH` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// The element name (its directory name).
    pub name: String,
    /// The canonical path of the element directory.
    pub path: PathBuf,
    /// The `ELEMENTS_PATH` entry it was found in, as given.
    pub entry: PathBuf,
    /// The names in `element-deps`, in file order, without duplicates.
    pub deps: Vec<String>,
    /// The names in `element-provides`, in file order, without duplicates.
    pub provides: Vec<String>,
}

/// An element found in more than one entry: the earlier entry's copy shadows the later one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The element name.
    pub name: String,
    /// The element directory that is used.
    pub winner: PathBuf,
    /// The element directory that is ignored (except by the package-installs squash).
    pub shadowed: PathBuf,
}

/// All elements discovered on the search path.
#[derive(Debug, Clone, Default)]
pub struct Library {
    entries: Vec<PathBuf>,
    elements: BTreeMap<String, Element>,
    copies: BTreeMap<String, Vec<PathBuf>>,
    overrides: Vec<Override>,
}

impl Library {
    /// Discovers every element under `entries`: the user's `ELEMENTS_PATH` entries in order,
    /// then the built-in directory last. Each entry must be a directory
    /// ([`Error::NotADirectory`] otherwise). Earlier entries win, whole directory; each
    /// override is logged with `tracing::info!` as "element X from A overrides B" and recorded
    /// in [`Library::overrides`].
    pub fn discover(entries: &[PathBuf]) -> Result<Library, Error> {
        let mut lib = Library {
            entries: entries.to_vec(),
            ..Library::default()
        };
        for entry in entries {
            if !entry.is_dir() {
                return Err(Error::NotADirectory {
                    path: entry.clone(),
                });
            }
            for name in element_dir_names(entry)? {
                let dir = entry.join(&name);
                let path = fs::canonicalize(&dir).at(&dir)?;
                check_files(&path)?;
                lib.copies
                    .entry(name.clone())
                    .or_default()
                    .push(path.clone());
                if let Some(winner) = lib.elements.get(&name) {
                    let winner_dir = winner.entry.join(&name);
                    tracing::info!(
                        "element {name} from {} overrides {}",
                        winner_dir.display(),
                        dir.display()
                    );
                    lib.overrides.push(Override {
                        name,
                        winner: winner_dir,
                        shadowed: dir,
                    });
                    continue;
                }
                let deps = read_name_list(&path.join("element-deps"))?;
                let provides = read_name_list(&path.join("element-provides"))?;
                lib.elements.insert(
                    name.clone(),
                    Element {
                        name,
                        path,
                        entry: entry.clone(),
                        deps,
                        provides,
                    },
                );
            }
        }
        Ok(lib)
    }

    /// The element of that name, if any entry has one (the winning copy).
    pub fn get(&self, name: &str) -> Option<&Element> {
        self.elements.get(name)
    }

    /// All element names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.elements.keys().map(String::as_str)
    }

    /// All elements, sorted by name.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.elements.values()
    }

    /// Every override found, in the order the entries were scanned.
    pub fn overrides(&self) -> &[Override] {
        &self.overrides
    }

    /// The entries this library was discovered from, in search order.
    pub fn entries(&self) -> &[PathBuf] {
        &self.entries
    }

    /// Every copy of an element across all entries (canonical paths), winner first. DIB's
    /// package-installs squash reads all of them.
    pub fn all_copies(&self, name: &str) -> Vec<PathBuf> {
        self.copies.get(name).cloned().unwrap_or_default()
    }

    /// Element names that provide `name` in their `element-provides`, sorted.
    pub fn providers_of(&self, name: &str) -> Vec<String> {
        self.elements
            .values()
            .filter(|e| e.provides.iter().any(|p| p == name))
            .map(|e| e.name.clone())
            .collect()
    }
}

impl Element {
    /// The element's `element-deps` file (which may not exist).
    pub fn deps_file(&self) -> PathBuf {
        self.path.join("element-deps")
    }

    /// The element's `element-provides` file (which may not exist).
    pub fn provides_file(&self) -> PathBuf {
        self.path.join("element-provides")
    }

    /// Parses the element's `package-installs.json` and `package-installs.yaml`. As DIB's
    /// squash does, both are read when both exist (JSON first), and each file is tried as
    /// JSON first and as YAML when that fails. `None` when neither file exists.
    pub fn package_installs(&self) -> Result<Option<PackageInstalls>, Error> {
        package_installs::load_dir(&self.path)
    }

    /// Parses the element's `pkg-map` file; `None` when it has none.
    pub fn pkg_map(&self) -> Result<Option<PkgMap>, Error> {
        let path = self.path.join("pkg-map");
        if path.is_file() {
            pkg_map::parse(&path).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The element's block-device config for `arch`: `block-device-<arch>.yaml`
    /// (`block-device-ppc64el.yaml` for both ppc64le and ppc64el) if present, else
    /// `block-device-default.yaml`, else `None`.
    pub fn block_device_config(&self, arch: &str) -> Option<PathBuf> {
        block_device_config_in(&self.path, arch)
    }
}

/// The block-device config choice of DIB's `block_device_create_config_file` for one
/// element directory.
pub(crate) fn block_device_config_in(dir: &Path, arch: &str) -> Option<PathBuf> {
    let arch_file = match arch {
        "ppc64le" | "ppc64el" => "block-device-ppc64el.yaml".to_string(),
        other => format!("block-device-{other}.yaml"),
    };
    let candidates = [dir.join(arch_file), dir.join("block-device-default.yaml")];
    candidates.into_iter().find(|p| p.is_file())
}

/// The names of the directories (or symlinks to directories) directly under `entry`, sorted.
fn element_dir_names(entry: &Path) -> Result<Vec<String>, Error> {
    let mut names = Vec::new();
    for item in fs::read_dir(entry).at(entry)? {
        let item = item.at(entry)?;
        let path = item.path();
        if !path.is_dir() {
            continue;
        }
        match item.file_name().into_string() {
            // Dot directories (`.git`) are not elements: no element name starts with a dot.
            Ok(name) if name.starts_with('.') => {}
            Ok(name) => {
                if let Some(reason) = crate::names::element_name_problem(&name) {
                    return Err(Error::BadElementName { path, name, reason });
                }
                names.push(name);
            }
            Err(raw) => tracing::warn!(
                "ignoring element directory with a non-UTF-8 name {:?} in {}",
                raw,
                entry.display()
            ),
        }
    }
    names.sort();
    Ok(names)
}

/// Checks that everything under an element directory is a regular file, a directory or a
/// symlink to one of them (or a dangling symlink): a FIFO would hang the build when read, a
/// device would be read or copied from the host. Symlinked directories are not descended into.
pub(crate) fn check_files(dir: &Path) -> Result<(), Error> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for item in fs::read_dir(&dir).at(&dir)? {
            let path = item.at(&dir)?.path();
            let meta = fs::symlink_metadata(&path).at(&path)?;
            let file_type = if meta.file_type().is_symlink() {
                match fs::metadata(&path) {
                    Ok(target) => target.file_type(),
                    Err(_) => continue,
                }
            } else {
                meta.file_type()
            };
            if let Some(kind) = special_kind(file_type) {
                return Err(Error::SpecialFile { path, kind });
            }
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(())
}

/// The name of a file type that is neither a regular file, a directory nor a symlink.
fn special_kind(t: fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if t.is_fifo() {
        Some("FIFO")
    } else if t.is_socket() {
        Some("socket")
    } else if t.is_block_device() {
        Some("block device")
    } else if t.is_char_device() {
        Some("character device")
    } else {
        None
    }
}

/// Reads `element-deps` / `element-provides`: one name per line, trimmed, blank lines
/// dropped, no comment syntax (a `#` line is a name, as in DIB). A missing file is an empty
/// list. Duplicates are dropped, keeping the first.
pub(crate) fn read_name_list(path: &Path) -> Result<Vec<String>, Error> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    Ok(parse_name_list(&text))
}

/// The line rule of [`read_name_list`], on text.
pub(crate) fn parse_name_list(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let name = line.trim();
        if !name.is_empty() && !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Fixture;

    #[test]
    fn name_lists_trim_and_keep_hash_lines() {
        assert_eq!(
            parse_name_list("  a \n\n#b\n\tc\t\na\n   \n"),
            ["a", "#b", "c"]
        );
        assert!(parse_name_list("").is_empty());
    }

    #[test]
    fn discovers_deps_and_provides() {
        let fx = Fixture::new();
        fx.element("a")
            .deps(&["b", "c"])
            .provides(&["operating-system"]);
        fx.element("b");
        fx.file("main/not-an-element", "x");
        let lib = fx.library();
        assert_eq!(lib.names().collect::<Vec<_>>(), ["a", "b"]);
        let a = lib.get("a").unwrap();
        assert_eq!(a.deps, ["b", "c"]);
        assert_eq!(a.provides, ["operating-system"]);
        assert_eq!(a.path, fs::canonicalize(fx.path("main/a")).unwrap());
        assert!(lib.get("b").unwrap().deps.is_empty());
        assert!(lib.get("not-an-element").is_none());
        assert_eq!(lib.providers_of("operating-system"), ["a"]);
    }

    #[test]
    fn earlier_entries_win_whole_directory() {
        let fx = Fixture::new();
        fx.element_in("user", "x").deps(&["from-user"]);
        fx.element_in("extra", "x")
            .deps(&["from-extra"])
            .file("only-here", "");
        fx.element_in("builtin", "x").deps(&["from-builtin"]);
        fx.element_in("builtin", "y");
        let lib = fx.library_of(&["user", "extra", "builtin"]);
        let x = lib.get("x").unwrap();
        assert_eq!(x.deps, ["from-user"]);
        assert!(!x.path.join("only-here").exists());
        assert_eq!(x.entry, fx.path("user"));
        assert_eq!(
            lib.overrides(),
            [
                Override {
                    name: "x".into(),
                    winner: fx.path("user/x"),
                    shadowed: fx.path("extra/x"),
                },
                Override {
                    name: "x".into(),
                    winner: fx.path("user/x"),
                    shadowed: fx.path("builtin/x"),
                },
            ]
        );
        let canon = |p: &str| fs::canonicalize(fx.path(p)).unwrap();
        assert_eq!(
            lib.all_copies("x"),
            [canon("user/x"), canon("extra/x"), canon("builtin/x")]
        );
        assert_eq!(lib.all_copies("y"), [canon("builtin/y")]);
        assert!(lib.all_copies("nope").is_empty());
        assert_eq!(lib.entries().len(), 3);
    }

    #[test]
    fn override_is_logged() {
        let fx = Fixture::new();
        fx.element_in("first", "x");
        fx.element_in("second", "x");
        let logs = crate::testutil::capture_logs(|| {
            fx.library_of(&["first", "second"]);
        });
        let want = format!(
            "element x from {} overrides {}",
            fx.path("first/x").display(),
            fx.path("second/x").display()
        );
        assert!(logs.contains(&want), "logs were: {logs}");
    }

    #[test]
    fn entry_must_be_a_directory() {
        let fx = Fixture::new();
        fx.file("plain-file", "");
        let err = Library::discover(&[fx.path("plain-file")]).unwrap_err();
        assert!(matches!(&err, Error::NotADirectory { path } if *path == fx.path("plain-file")));
        assert!(err.to_string().contains("is not a directory"));
        let err = Library::discover(&[fx.path("missing")]).unwrap_err();
        assert!(matches!(err, Error::NotADirectory { .. }));
    }

    #[test]
    fn element_names_that_are_not_shell_words_are_refused() {
        let fx = Fixture::new();
        fx.element("good");
        fx.mkdir("main/.git");
        fx.mkdir("main/$(touch x)");
        let err = fx.try_library().unwrap_err();
        assert!(
            matches!(&err, Error::BadElementName { name, path, .. }
                if name == "$(touch x)" && *path == fx.path("main/$(touch x)")),
            "{err}"
        );
        assert!(err.to_string().contains("rename the directory"), "{err}");
    }

    #[test]
    fn fifos_and_sockets_in_elements_are_refused_without_opening_them() {
        for (rel, kind) in [
            ("main/a/element-deps", "FIFO"),
            ("main/a/install.d/10-x", "FIFO"),
        ] {
            let fx = Fixture::new();
            fx.element("a").exec("install.d/20-ok", "true");
            fs::create_dir_all(fx.path(rel).parent().unwrap()).unwrap();
            nix::unistd::mkfifo(&fx.path(rel), nix::sys::stat::Mode::S_IRWXU).unwrap();
            let err = fx.try_library().unwrap_err();
            assert!(
                matches!(&err, Error::SpecialFile { path, kind: k } if path.ends_with(rel.trim_start_matches("main/")) && *k == kind),
                "{err}"
            );
        }
        // A symlink to a FIFO outside the element is refused too.
        let fx = Fixture::new();
        fx.element("a");
        let fifo = fx.path("elsewhere-fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::os::unix::fs::symlink(&fifo, fx.path("main/a/pkg-map")).unwrap();
        let err = fx.try_library().unwrap_err();
        assert!(matches!(err, Error::SpecialFile { .. }), "{err}");
        // A socket.
        let fx = Fixture::new();
        fx.element("a");
        let _sock = std::os::unix::net::UnixListener::bind(fx.path("main/a/sock")).unwrap();
        let err = fx.try_library().unwrap_err();
        assert!(
            matches!(err, Error::SpecialFile { kind: "socket", .. }),
            "{err}"
        );
    }

    #[test]
    fn symlinked_element_dirs_are_canonicalised() {
        let fx = Fixture::new();
        fx.element_in("store", "real").deps(&["z"]);
        fx.mkdir("main");
        fx.symlink("main/linked", "../store/real");
        let lib = fx.library_of(&["main"]);
        let linked = lib.get("linked").unwrap();
        assert_eq!(
            linked.path,
            fs::canonicalize(fx.path("store/real")).unwrap()
        );
        assert_eq!(linked.deps, ["z"]);
    }

    #[test]
    fn block_device_config_choice() {
        let fx = Fixture::new();
        fx.element("only-default")
            .file("block-device-default.yaml", "");
        fx.element("arch-too")
            .file("block-device-default.yaml", "")
            .file("block-device-arm64.yaml", "")
            .file("block-device-ppc64el.yaml", "");
        fx.element("none");
        let lib = fx.library();
        let file = |e: &str, arch: &str| {
            lib.get(e)
                .unwrap()
                .block_device_config(arch)
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        };
        assert_eq!(
            file("only-default", "amd64").as_deref(),
            Some("block-device-default.yaml")
        );
        assert_eq!(
            file("arch-too", "amd64").as_deref(),
            Some("block-device-default.yaml")
        );
        assert_eq!(
            file("arch-too", "arm64").as_deref(),
            Some("block-device-arm64.yaml")
        );
        assert_eq!(
            file("arch-too", "ppc64le").as_deref(),
            Some("block-device-ppc64el.yaml")
        );
        assert_eq!(
            file("arch-too", "ppc64el").as_deref(),
            Some("block-device-ppc64el.yaml")
        );
        assert_eq!(file("none", "amd64"), None);
    }
}
