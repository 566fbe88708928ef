//! Hook merging: the single `$TMP_HOOKS_PATH` tree that DIB builds from all elements, and
//! the order `dib-run-parts` runs each phase in.
//!
//! DIB copies every element's subdirectories (`<phase>.d/`, `environment.d/`, `bin/`,
//! `static/`, ...; not `tests/` or `__pycache__/`) into one merged directory of the same name,
//! and every top-level file flat into the tree. Within a merged directory a name may appear
//! only once, except that two real directories of the same name are merged; a clash is fatal.
//! Top-level files simply overwrite: the last element in set order wins (`*.pyc` is skipped).
//! Entries whose name starts with a dot are not copied into merged directories (DIB lists
//! them with `ls`), while top-level files and directories are found with `find`, which does
//! see dot names.
//!
//! A phase then runs the executable regular files (or symlinks to them) of its directory
//! whose names match `^[0-9A-Za-z_-]+$`, in `LC_ALL=C sort -n` order; `environment.d` files
//! matching `^[0-9A-Za-z_.-]+$` are sourced first. The tree is computed without touching the
//! destination, so the plan can be printed and hashed, and [`HookTree::materialise`] lays it
//! out on disk.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext};
use crate::phase::Phase;
use crate::resolve::ElementSet;

/// One file contributed by one element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// The file name.
    pub name: String,
    /// The element it comes from.
    pub element: String,
    /// The source file.
    pub path: PathBuf,
}

/// What an entry of a merged directory is (symlinks are not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file, copied with its mode.
    File,
    /// A symlink, copied as a symlink with the same target.
    Symlink,
    /// A directory, copied recursively; directories of the same name from several elements
    /// are merged (later files overwrite earlier ones, as `cp -a` does).
    Dir,
}

/// One entry of a merged directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// The entry name inside the merged directory.
    pub name: String,
    /// The element it comes from.
    pub element: String,
    /// The source path.
    pub path: PathBuf,
    /// File, symlink or directory.
    pub kind: EntryKind,
}

/// One merged directory (`install.d`, `environment.d`, `bin`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergedDir {
    /// The element directories merged into it, in element order: `(element, source dir)`.
    pub sources: Vec<(String, PathBuf)>,
    /// Its entries, in copy order (element order, then name).
    pub entries: Vec<TreeEntry>,
}

/// The merged hook tree of an element set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookTree {
    /// For each phase whose `<phase>.d` exists in at least one element: the runnable hooks in
    /// `dib-run-parts` order (possibly none). A phase without a key is skipped entirely,
    /// `environment.d` included, as DIB's `run_d` does.
    pub phases: BTreeMap<Phase, Vec<Hook>>,
    /// The `environment.d` files, in sourcing order.
    pub environment: Vec<Hook>,
    /// Every merged directory by name: phase dirs, `environment.d` and all others.
    pub dirs: BTreeMap<String, MergedDir>,
    /// Top-level files by name: the copy that wins (the last element in set order).
    pub files: BTreeMap<String, Hook>,
}

const ENVIRONMENT_DIR: &str = "environment.d";

/// Merges the hooks of `set`, in set order. A file name that appears twice in one merged
/// directory is [`Error::DuplicateHook`], naming both elements and both files.
pub fn merge_hooks(set: &ElementSet) -> Result<HookTree, Error> {
    let mut tree = HookTree::default();
    for element in &set.elements {
        for (name, path) in sorted_children(&element.path, true)? {
            // Follow symlinks, as `find -follow` does; dangling links match neither test.
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                if name == "tests" || name == "__pycache__" {
                    continue;
                }
                merge_dir(&mut tree, &name, &element.name, &path)?;
            } else if meta.is_file() {
                if Path::new(&name).extension().is_some_and(|ext| ext == "pyc") {
                    continue;
                }
                let hook = Hook {
                    name: name.clone(),
                    element: element.name.clone(),
                    path,
                };
                if let Some(old) = tree.files.insert(name.clone(), hook) {
                    tracing::debug!(
                        "top-level file {name} of element {} replaces the one of element {}",
                        element.name,
                        old.element
                    );
                }
            }
        }
    }

    // A top-level file and a merged directory cannot share a name in one tree.
    for (name, file) in &tree.files {
        if let Some(dir) = tree.dirs.get(name) {
            if let Some((dir_element, dir_path)) = dir.sources.first() {
                return Err(Error::DuplicateHook {
                    dir: ".".into(),
                    name: name.clone(),
                    first_element: dir_element.clone(),
                    first_path: dir_path.clone(),
                    second_element: file.element.clone(),
                    second_path: file.path.clone(),
                });
            }
        }
    }

    for phase in Phase::ALL {
        if let Some(dir) = tree.dirs.get(&phase.dir_name()) {
            let mut hooks: Vec<Hook> = dir
                .entries
                .iter()
                .filter(|e| is_runnable_hook_name(&e.name) && is_executable_file(&e.path))
                .map(TreeEntry::to_hook)
                .collect();
            hooks.sort_by(|a, b| run_parts_cmp(&a.name, &b.name));
            tree.phases.insert(phase, hooks);
        }
    }
    if let Some(dir) = tree.dirs.get(ENVIRONMENT_DIR) {
        let mut env: Vec<Hook> = dir
            .entries
            .iter()
            .filter(|e| {
                is_env_file_name(&e.name) && fs::metadata(&e.path).is_ok_and(|m| m.is_file())
            })
            .map(TreeEntry::to_hook)
            .collect();
        env.sort_by(|a, b| env_cmp(&a.name, &b.name));
        tree.environment = env;
    }
    Ok(tree)
}

/// Adds the entries of one element's `dir_name` directory to the merged directory.
fn merge_dir(tree: &mut HookTree, dir_name: &str, element: &str, src: &Path) -> Result<(), Error> {
    let merged = tree.dirs.entry(dir_name.to_string()).or_default();
    merged
        .sources
        .push((element.to_string(), src.to_path_buf()));
    for (name, path) in sorted_children(src, false)? {
        let meta = fs::symlink_metadata(&path).at(&path)?;
        let kind = if meta.file_type().is_symlink() {
            EntryKind::Symlink
        } else if meta.is_dir() {
            EntryKind::Dir
        } else if meta.is_file() {
            EntryKind::File
        } else {
            tracing::warn!(
                "ignoring special file {} (not a file, directory or symlink)",
                path.display()
            );
            continue;
        };
        if let Some(prev) = merged.entries.iter().find(|e| e.name == name) {
            if !(prev.kind == EntryKind::Dir && kind == EntryKind::Dir) {
                return Err(Error::DuplicateHook {
                    dir: dir_name.to_string(),
                    name,
                    first_element: prev.element.clone(),
                    first_path: prev.path.clone(),
                    second_element: element.to_string(),
                    second_path: path,
                });
            }
        }
        merged.entries.push(TreeEntry {
            name,
            element: element.to_string(),
            path,
            kind,
        });
    }
    Ok(())
}

/// The children of `dir` as `(name, path)`, sorted by name; dot names only when
/// `include_hidden`; non-UTF-8 names are skipped with a warning.
fn sorted_children(dir: &Path, include_hidden: bool) -> Result<Vec<(String, PathBuf)>, Error> {
    let mut out = Vec::new();
    for item in fs::read_dir(dir).at(dir)? {
        let item = item.at(dir)?;
        match item.file_name().into_string() {
            Ok(name) => {
                if include_hidden || !name.starts_with('.') {
                    out.push((name, item.path()));
                }
            }
            Err(raw) => tracing::warn!(
                "ignoring non-UTF-8 file name {:?} in {}",
                raw,
                dir.display()
            ),
        }
    }
    out.sort();
    Ok(out)
}

/// A regular file, or a symlink to one, with any execute bit set.
fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl TreeEntry {
    fn to_hook(&self) -> Hook {
        Hook {
            name: self.name.clone(),
            element: self.element.clone(),
            path: self.path.clone(),
        }
    }
}

impl HookTree {
    /// The runnable hooks of `phase` in run order (empty when the phase has none).
    pub fn hooks(&self, phase: Phase) -> &[Hook] {
        self.phases.get(&phase).map_or(&[], Vec::as_slice)
    }

    /// Whether any element has a `<phase>.d` directory; DIB skips the phase otherwise.
    pub fn has_phase(&self, phase: Phase) -> bool {
        self.phases.contains_key(&phase)
    }

    /// Lays the merged tree out under `dest` exactly as DIB's `$TMP_HOOKS_PATH`:
    /// `dest/<phase>.d/*`, `dest/environment.d/*`, `dest/<top-level files>`,
    /// `dest/<other dir>/**`. File modes are kept; symlinks are copied as symlinks with the
    /// same target; directories of the same name are merged. `dest` is created if missing;
    /// files already there are replaced.
    pub fn materialise(&self, dest: &Path) -> Result<(), Error> {
        fs::create_dir_all(dest).at(dest)?;
        for (name, dir) in &self.dirs {
            let target = dest.join(name);
            if !target.is_dir() {
                fs::create_dir(&target).at(&target)?;
            }
            for entry in &dir.entries {
                copy_entry(&entry.path, &target.join(&entry.name))?;
            }
        }
        for (name, file) in &self.files {
            copy_entry(&file.path, &dest.join(name))?;
        }
        Ok(())
    }
}

/// Copies `src` to `dst` like `cp -a` (without ownership and times): files with their mode,
/// symlinks as symlinks, directories recursively, merging into an existing directory.
fn copy_entry(src: &Path, dst: &Path) -> Result<(), Error> {
    let meta = fs::symlink_metadata(src).at(src)?;
    let file_type = meta.file_type();
    if file_type.is_dir() {
        if !fs::symlink_metadata(dst).is_ok_and(|m| m.is_dir()) {
            remove_non_dir(dst)?;
            fs::create_dir(dst).at(dst)?;
        }
        for item in sorted_all(src)? {
            copy_entry(&src.join(&item), &dst.join(&item))?;
        }
        fs::set_permissions(dst, meta.permissions()).at(dst)?;
    } else if file_type.is_symlink() {
        let target = fs::read_link(src).at(src)?;
        remove_non_dir(dst)?;
        std::os::unix::fs::symlink(&target, dst).at(dst)?;
    } else if file_type.is_file() {
        remove_non_dir(dst)?;
        fs::copy(src, dst).at(dst)?;
        fs::set_permissions(dst, meta.permissions()).at(dst)?;
    } else {
        tracing::warn!("not copying special file {}", src.display());
    }
    Ok(())
}

/// Removes `path` if it is a file or symlink (so a copy can replace it); a directory in the
/// way is an error, as with `cp`.
fn remove_non_dir(path: &Path) -> Result<(), Error> {
    match fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => Err(Error::io(
            path,
            std::io::Error::other("a directory is in the way of a file of the same name"),
        )),
        Ok(_) => fs::remove_file(path).at(path),
    }
}

/// All names in `dir` (dot names included), sorted.
fn sorted_all(dir: &Path) -> Result<Vec<std::ffi::OsString>, Error> {
    let mut names = Vec::new();
    for item in fs::read_dir(dir).at(dir)? {
        names.push(item.at(dir)?.file_name());
    }
    names.sort();
    Ok(names)
}

/// Sorts hook names as DIB's `dib-run-parts` does (`LC_ALL=C sort -n`): numerically on the
/// leading number (no number counts as 0), ties broken by a byte comparison of the whole
/// name. `0-a 00-b foo 05-z 5-b 9-x 10-a 10-y` is already in order.
pub fn run_parts_sort(names: &mut [String]) {
    names.sort_by(|a, b| run_parts_cmp(a, b));
}

/// The comparison of [`run_parts_sort`]: GNU `sort -n` in the C locale (optional leading
/// blanks, an optional `-`, digits, an optional `.` fraction; anything else is 0), then the
/// whole strings byte by byte.
pub fn run_parts_cmp(a: &str, b: &str) -> Ordering {
    compare_numeric(&NumKey::parse(a), &NumKey::parse(b))
        .then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

/// Sorts `environment.d` file names in DIB's sourcing order. DIB pipes *full paths*
/// (`<phase dir>/../environment.d/<name>`) through `sort -n`; a path does not start with a
/// number, so every key is 0 and the order is a plain byte comparison, i.e. by name.
pub fn env_sort(names: &mut [String]) {
    names.sort_by(|a, b| env_cmp(a, b));
}

fn env_cmp(a: &str, b: &str) -> Ordering {
    a.as_bytes().cmp(b.as_bytes())
}

/// Whether `name` may run as a hook: `^[0-9A-Za-z_-]+$` (no dots).
pub fn is_runnable_hook_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

/// Whether `name` is sourced from `environment.d`: `^[0-9A-Za-z_.-]+$`.
pub fn is_env_file_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.')
}

/// The numeric key `sort -n` reads at the start of a line.
struct NumKey<'a> {
    negative: bool,
    /// Integer digits without leading zeros.
    int: &'a str,
    /// Fraction digits without trailing zeros.
    frac: &'a str,
}

impl<'a> NumKey<'a> {
    fn parse(s: &'a str) -> NumKey<'a> {
        let s = s.trim_start_matches([' ', '\t']);
        let (negative, rest) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int = rest[..int_len].trim_start_matches('0');
        let after = &rest[int_len..];
        let frac = match after.strip_prefix('.') {
            Some(f) => {
                let len = f.bytes().take_while(u8::is_ascii_digit).count();
                f[..len].trim_end_matches('0')
            }
            None => "",
        };
        let zero = int.is_empty() && frac.is_empty();
        NumKey {
            negative: negative && !zero,
            int,
            frac,
        }
    }
}

fn compare_numeric(a: &NumKey<'_>, b: &NumKey<'_>) -> Ordering {
    match (a.negative, b.negative) {
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => compare_magnitude(a, b),
        (true, true) => compare_magnitude(b, a),
    }
}

fn compare_magnitude(a: &NumKey<'_>, b: &NumKey<'_>) -> Ordering {
    a.int
        .len()
        .cmp(&b.int.len())
        .then_with(|| a.int.cmp(b.int))
        .then_with(|| a.frac.cmp(b.frac))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::{ElementSet, Reason, ResolvedElement};
    use crate::testutil::Fixture;

    fn strings(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn run_parts_order_matches_dib() {
        let want = strings("0-a 00-b foo 05-z 5-b 9-x 10-a 10-y");
        assert!(want
            .windows(2)
            .all(|w| run_parts_cmp(&w[0], &w[1]) == Ordering::Less));
        let mut shuffled = strings("10-y foo 5-b 9-x 00-b 10-a 05-z 0-a");
        run_parts_sort(&mut shuffled);
        assert_eq!(shuffled, want);
    }

    #[test]
    fn run_parts_sort_n_details() {
        let mut names = strings("100-a 99-b -1-neg 0010-c 10-b 1000000000000000000000000-big zz 2");
        run_parts_sort(&mut names);
        assert_eq!(
            names,
            strings("-1-neg zz 2 0010-c 10-b 99-b 100-a 1000000000000000000000000-big")
        );
        // Fractions count for sort -n.
        assert_eq!(run_parts_cmp("1.5-a", "1-b"), Ordering::Greater);
        assert_eq!(run_parts_cmp("1.50", "1.5"), Ordering::Greater); // equal numbers, then bytes
        assert_eq!(run_parts_cmp("-0", "0"), Ordering::Less); // -0 == 0, then bytes
    }

    #[test]
    fn env_order_is_by_name() {
        let mut names = strings("99-z 10-b.bash 9-x 10-a foo.sh 05-y");
        env_sort(&mut names);
        assert_eq!(names, strings("05-y 10-a 10-b.bash 9-x 99-z foo.sh"));
    }

    #[test]
    fn name_rules() {
        for ok in ["10-foo", "foo", "A_b-1", "-"] {
            assert!(is_runnable_hook_name(ok), "{ok}");
        }
        for bad in ["", "10-foo.sh", "a b", ".hidden", "é"] {
            assert!(!is_runnable_hook_name(bad), "{bad}");
        }
        for ok in ["10-foo.bash", ".x", "a.b.c", "10_x-y"] {
            assert!(is_env_file_name(ok), "{ok}");
        }
        for bad in ["", "a b", "a~", "é"] {
            assert!(!is_env_file_name(bad), "{bad}");
        }
    }

    fn set_of(fx: &Fixture, names: &[&str]) -> ElementSet {
        ElementSet {
            elements: names
                .iter()
                .map(|n| ResolvedElement {
                    name: (*n).to_string(),
                    path: fs::canonicalize(fx.path(&format!("main/{n}"))).unwrap(),
                    reason: Reason::Requested,
                })
                .collect(),
            provided: BTreeMap::new(),
        }
    }

    fn hook_names(hooks: &[Hook]) -> Vec<&str> {
        hooks.iter().map(|h| h.name.as_str()).collect()
    }

    #[test]
    fn phases_merge_select_and_order() {
        let fx = Fixture::new();
        fx.element("a")
            .exec("install.d/10-a", "#!/bin/sh\n")
            .exec("install.d/9-a", "#!/bin/sh\n")
            .exec("install.d/50-with.dot", "#!/bin/sh\n")
            .file("install.d/20-not-exec", "#!/bin/sh\n")
            .file("install.d/data.conf", "x=1\n")
            .exec("install.d/.hidden", "#!/bin/sh\n")
            .exec("install.d/30-subdir/inner", "#!/bin/sh\n")
            .exec("root.d/10-root", "#!/bin/sh\n");
        fx.element("b")
            .exec("install.d/05-b", "#!/bin/sh\n")
            .exec("install.d/real-target", "#!/bin/sh\n")
            .symlink("install.d/15-link", "real-target")
            .symlink("install.d/16-dangling", "nowhere")
            .mkdir("cleanup.d");
        let tree = merge_hooks(&set_of(&fx, &["a", "b"])).unwrap();
        assert_eq!(
            hook_names(tree.hooks(Phase::Install)),
            ["real-target", "05-b", "9-a", "10-a", "15-link"]
        );
        let link = &tree.hooks(Phase::Install)[4];
        assert_eq!(link.element, "b");
        assert_eq!(hook_names(tree.hooks(Phase::Root)), ["10-root"]);
        // An empty phase dir still makes the phase exist; a missing one does not.
        assert!(tree.has_phase(Phase::Cleanup));
        assert!(tree.hooks(Phase::Cleanup).is_empty());
        assert!(!tree.has_phase(Phase::Finalise));
        // The merged dir keeps data files and subdirs, but not dot files.
        let install: Vec<&str> = tree.dirs["install.d"]
            .entries
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(
            install,
            [
                "10-a",
                "20-not-exec",
                "30-subdir",
                "50-with.dot",
                "9-a",
                "data.conf",
                "05-b",
                "15-link",
                "16-dangling",
                "real-target"
            ]
        );
    }

    #[test]
    fn environment_selection_and_order() {
        let fx = Fixture::new();
        fx.element("a")
            .file("environment.d/10-a.bash", "export A=1\n")
            .file("environment.d/9-nine", "")
            .file("environment.d/bad name", "")
            .file("environment.d/weird~", "")
            .mkdir("environment.d/subdir");
        fx.element("b")
            .exec("environment.d/10-b", "")
            .file("environment.d/99.z", "")
            .symlink("environment.d/11-link", "10-b");
        let tree = merge_hooks(&set_of(&fx, &["a", "b"])).unwrap();
        assert_eq!(
            hook_names(&tree.environment),
            ["10-a.bash", "10-b", "11-link", "9-nine", "99.z"]
        );
    }

    #[test]
    fn duplicate_hook_names_both_elements() {
        let fx = Fixture::new();
        fx.element("first").exec("install.d/50-same", "");
        fx.element("second").file("install.d/50-same", "");
        let err = merge_hooks(&set_of(&fx, &["first", "second"])).unwrap_err();
        match &err {
            Error::DuplicateHook {
                dir,
                name,
                first_element,
                first_path,
                second_element,
                second_path,
            } => {
                assert_eq!(dir, "install.d");
                assert_eq!(name, "50-same");
                assert_eq!(first_element, "first");
                assert_eq!(second_element, "second");
                assert!(first_path.ends_with("first/install.d/50-same"));
                assert!(second_path.ends_with("second/install.d/50-same"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.contains("'first'") && text.contains("'second'"),
            "{text}"
        );

        // The same rule holds in environment.d and in other merged dirs.
        let fx = Fixture::new();
        fx.element("first").file("environment.d/10-x", "");
        fx.element("second").file("environment.d/10-x", "");
        assert!(matches!(
            merge_hooks(&set_of(&fx, &["first", "second"])),
            Err(Error::DuplicateHook { ref dir, .. }) if dir == "environment.d"
        ));
        let fx = Fixture::new();
        fx.element("first").exec("bin/tool", "");
        fx.element("second").symlink("bin/tool", "elsewhere");
        assert!(matches!(
            merge_hooks(&set_of(&fx, &["first", "second"])),
            Err(Error::DuplicateHook { ref dir, .. }) if dir == "bin"
        ));
    }

    #[test]
    fn same_named_subdirectories_merge() {
        let fx = Fixture::new();
        fx.element("a").file("static/etc/a.conf", "a");
        fx.element("b").file("static/etc/b.conf", "b");
        let tree = merge_hooks(&set_of(&fx, &["a", "b"])).unwrap();
        let dest = fx.path("out");
        tree.materialise(&dest).unwrap();
        assert_eq!(
            fs::read_to_string(dest.join("static/etc/a.conf")).unwrap(),
            "a"
        );
        assert_eq!(
            fs::read_to_string(dest.join("static/etc/b.conf")).unwrap(),
            "b"
        );
    }

    #[test]
    fn top_level_files_last_wins_and_exclusions() {
        let fx = Fixture::new();
        fx.element("a")
            .file("README.rst", "from a")
            .file("only-a", "a")
            .file("cached.pyc", "")
            .file(".dotfile", "dot")
            .file("tests/test_x.py", "")
            .file("__pycache__/x.pyc", "")
            .file("test-elements/case/element-deps", "");
        fx.element("b").file("README.rst", "from b");
        let tree = merge_hooks(&set_of(&fx, &["a", "b"])).unwrap();
        assert_eq!(tree.files["README.rst"].element, "b");
        assert_eq!(tree.files["only-a"].element, "a");
        assert!(!tree.files.contains_key("cached.pyc"));
        assert!(tree.files.contains_key(".dotfile"));
        assert!(!tree.dirs.contains_key("tests"));
        assert!(!tree.dirs.contains_key("__pycache__"));
        assert!(tree.dirs.contains_key("test-elements"));

        let dest = fx.path("hooks");
        tree.materialise(&dest).unwrap();
        assert_eq!(
            fs::read_to_string(dest.join("README.rst")).unwrap(),
            "from b"
        );
        assert!(dest.join("test-elements/case/element-deps").is_file());
        assert!(!dest.join("tests").exists());

        // Reversed order, reversed winner.
        let tree = merge_hooks(&set_of(&fx, &["b", "a"])).unwrap();
        assert_eq!(tree.files["README.rst"].element, "a");
    }

    #[test]
    fn top_level_file_clashing_with_dir_is_an_error() {
        let fx = Fixture::new();
        fx.element("a").exec("bin/x", "");
        fx.element("b").file("bin", "");
        let err = merge_hooks(&set_of(&fx, &["a", "b"])).unwrap_err();
        assert!(
            matches!(err, Error::DuplicateHook { ref dir, ref name, .. } if dir == "." && name == "bin")
        );
    }

    #[test]
    fn materialise_keeps_modes_and_symlinks() {
        let fx = Fixture::new();
        fx.element("a")
            .exec("install.d/10-run", "#!/bin/sh\necho hi\n")
            .file("install.d/data.conf", "data")
            .mode("install.d/data.conf", 0o640)
            .symlink("install.d/20-link", "../bin/tool")
            .exec("bin/tool", "#!/bin/sh\n")
            .file("environment.d/10-env", "export X=1\n")
            .exec("install.d/50-foo-source-install/10-inner", "#!/bin/sh\n")
            .mode("install.d/50-foo-source-install", 0o750)
            .file("element-deps", "b\n");
        fx.element("b")
            .file("static/etc/motd", "hello")
            .mkdir("root.d");
        // A symlinked element directory is followed.
        fx.mkdir("store");
        let real = fx
            .element_in("store", "c")
            .exec("post-install.d/10-c", "")
            .path();
        fx.symlink("main/c", &real.display().to_string());
        let tree = merge_hooks(&set_of(&fx, &["a", "b", "c"])).unwrap();

        let dest = fx.path("deep/tmp/hooks");
        tree.materialise(&dest).unwrap();
        let mode = |p: &str| fs::metadata(dest.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("install.d/10-run"), 0o755);
        assert_eq!(mode("install.d/data.conf"), 0o640);
        assert_eq!(mode("install.d/50-foo-source-install"), 0o750);
        assert_eq!(mode("install.d/50-foo-source-install/10-inner"), 0o755);
        assert_eq!(
            fs::read_link(dest.join("install.d/20-link")).unwrap(),
            PathBuf::from("../bin/tool")
        );
        assert_eq!(
            fs::read_to_string(dest.join("install.d/10-run")).unwrap(),
            "#!/bin/sh\necho hi\n"
        );
        assert!(dest.join("environment.d/10-env").is_file());
        assert!(dest.join("root.d").is_dir());
        assert!(dest.join("post-install.d/10-c").is_file());
        assert_eq!(
            fs::read_to_string(dest.join("static/etc/motd")).unwrap(),
            "hello"
        );
        assert_eq!(
            fs::read_to_string(dest.join("element-deps")).unwrap(),
            "b\n"
        );
        assert_eq!(
            hook_names(tree.hooks(Phase::Install)),
            ["10-run", "20-link"]
        );

        // Materialising again over the existing tree works.
        tree.materialise(&dest).unwrap();
    }
}
