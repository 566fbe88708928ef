//! The element linter behind `kiln elements check`: what in an element will not work with
//! kiln or DIB, found by reading the element, before anyone builds with it.
//!
//! Most rules are about things DIB ignores silently: a hook named `10-foo.sh` or without the
//! execute bit never runs, an `environment.d` file with a space in its name is never sourced,
//! a `#` line in `element-deps` is read as an element name. Others are about things that fail
//! later, far from their cause: an unknown dependency, a hook name that another element also
//! uses, a malformed `package-installs.yaml` or `pkg-map`. Name clashes are looked for in
//! every directory DIB merges (`bin/` and the like too, not only the phase directories),
//! because a clash in any of them fails the build the same way.
//!
//! The rules here only read files. The two checks that need more, sourcing `environment.d`
//! files in bash and planning `block-device-*.yaml` layouts with kiln-blockdev, are left to
//! the caller through [`Checker`], so that this crate stays pure (no processes, no dependency
//! on the block-device crate) and every rule is testable with a few files in a temporary
//! directory. Findings are sorted, so the output is the same on every run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use regex::Regex;

use crate::error::{Error, IoContext};
use crate::hooks::{is_env_file_name, is_runnable_hook_name};
use crate::library::{read_name_list, Element, Library};
use crate::package_installs::RUNNER_PHASES;
use crate::phase::Phase;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The element will not work as its author meant (a hook that never runs, a build that
    /// fails).
    Error,
    /// Probably a mistake, or something that breaks only in some combinations.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem found in one file. Displayed as `FILE[:LINE]: error|warning: MESSAGE`, where
/// the message says what is wrong and, in parentheses, what to do.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Finding {
    /// The file (or element directory) the finding is about.
    pub path: PathBuf,
    /// The 1-based line, where one makes sense.
    pub line: Option<usize>,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong, then what to do in parentheses.
    pub message: String,
}

impl Finding {
    /// An error finding.
    pub fn error(
        path: impl Into<PathBuf>,
        line: Option<usize>,
        message: impl Into<String>,
    ) -> Self {
        Finding {
            path: path.into(),
            line,
            severity: Severity::Error,
            message: message.into(),
        }
    }

    /// A warning finding.
    pub fn warning(
        path: impl Into<PathBuf>,
        line: Option<usize>,
        message: impl Into<String>,
    ) -> Self {
        Finding {
            path: path.into(),
            line,
            severity: Severity::Warning,
            message: message.into(),
        }
    }

    /// An error finding for a kiln-element [`Error`], placed at the file and line the error
    /// names (or at `fallback` when it names none), with that location cut from the message.
    pub fn from_error(err: &Error, fallback: &Path) -> Self {
        let (path, line) = error_location(err);
        let path = path.unwrap_or(fallback).to_path_buf();
        let text = err.to_string();
        let message = strip_location(&text, &path).to_string();
        Finding::error(path, line, message)
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": {}: {}", self.severity, self.message)
    }
}

/// One `environment.d` file to check, with what DIB would source before it.
#[derive(Debug, Clone)]
pub struct EnvFile<'a> {
    /// The element it belongs to.
    pub element: &'a Element,
    /// The file.
    pub path: &'a Path,
    /// The element and its transitive `element-deps` found on the path, in breadth-first
    /// order: the smallest set it is ever used in (`IMAGE_ELEMENT`).
    pub elements: Vec<String>,
    /// The `environment.d` files of those elements that DIB sources before this one (they
    /// sort before it by name), in sourcing order. A file may rely on what they export.
    pub sourced_before: Vec<PathBuf>,
}

/// The checks [`lint`] leaves to its caller, because they run processes or need other crates.
pub trait Checker {
    /// Checks one `environment.d` file that DIB sources (its name matches
    /// `^[0-9A-Za-z_.-]+$`), e.g. by running it in bash with `set -eu` after the files
    /// sourced before it.
    fn environment_file(&mut self, file: &EnvFile<'_>) -> Vec<Finding>;

    /// Checks one `block-device-*.yaml` file at the top of an element.
    fn block_device_config(&mut self, element: &Element, path: &Path) -> Vec<Finding>;
}

/// A [`Checker`] that checks nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoChecker;

impl Checker for NoChecker {
    fn environment_file(&mut self, _: &EnvFile<'_>) -> Vec<Finding> {
        Vec::new()
    }

    fn block_device_config(&mut self, _: &Element, _: &Path) -> Vec<Finding> {
        Vec::new()
    }
}

/// Files whose presence makes a directory an element for [`is_element_dir`], besides
/// `environment.d/`, the `<phase>.d/` directories and `block-device-*.yaml`. A README alone
/// is a weaker sign (see there). They must be files: DIB's own `pkg-map` and
/// `package-installs` elements are directories of those names in a directory of elements.
const ELEMENT_MARKER_FILES: [&str; 5] = [
    "element-deps",
    "element-provides",
    "package-installs.yaml",
    "package-installs.json",
    "pkg-map",
];

/// Whether `dir` looks like one element rather than a directory of elements: it holds
/// `element-deps`, `element-provides`, a `<phase>.d` directory, `environment.d`,
/// `package-installs.{yaml,json}`, `pkg-map` or a `block-device-*.yaml`; or it holds a
/// `README.rst` and none of its subdirectories looks like an element by those signs (a
/// directory of elements often has a README of its own).
pub fn is_element_dir(dir: &Path) -> bool {
    if has_element_markers(dir) {
        return true;
    }
    if !dir.join("README.rst").is_file() {
        return false;
    }
    !subdirs(dir).iter().any(|(_, sub)| has_element_markers(sub))
}

fn has_element_markers(dir: &Path) -> bool {
    if ELEMENT_MARKER_FILES.iter().any(|m| dir.join(m).is_file())
        || dir.join("environment.d").is_dir()
    {
        return true;
    }
    let Ok(items) = fs::read_dir(dir) else {
        return false;
    };
    items.flatten().any(|item| {
        let name = item.file_name();
        let name = name.to_string_lossy();
        let path = item.path();
        (Phase::from_dir_name(&name).is_some() && path.is_dir())
            || (name.starts_with("block-device-") && name.ends_with(".yaml") && path.is_file())
    })
}

/// The non-hidden subdirectories (or symlinks to directories) of `dir`, sorted by name.
fn subdirs(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(items) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = items
        .flatten()
        .filter_map(|item| {
            let name = item.file_name().into_string().ok()?;
            let path = item.path();
            (!name.starts_with('.') && path.is_dir()).then_some((name, path))
        })
        .collect();
    out.sort();
    out
}

/// The elements to check for the given paths, in order: a path that [`is_element_dir`] is one
/// element; any other directory is an `ELEMENTS_PATH` entry, and each of its subdirectories
/// is an element (sorted by name), except hidden ones and `__pycache__`.
///
/// Unlike [`Library::discover`], the elements' `path` is the path as given (joined with the
/// element name for an entry), not the canonical one, so that findings name files the way
/// the user wrote them. `entry` is the given directory, or the parent of an element path.
pub fn targets(paths: &[PathBuf]) -> Result<Vec<Element>, Error> {
    let mut out = Vec::new();
    for path in paths {
        if !path.is_dir() {
            return Err(Error::NotADirectory { path: path.clone() });
        }
        if is_element_dir(path) {
            let canonical = fs::canonicalize(path).at(path)?;
            let name = canonical
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            let entry = canonical.parent().unwrap_or(&canonical).to_path_buf();
            out.push(element_at(name, path.clone(), entry)?);
        } else {
            for (name, sub) in subdirs(path) {
                // Python leaves its byte-code cache beside the elements of a package.
                if name != "__pycache__" {
                    out.push(element_at(name, sub, path.clone())?);
                }
            }
        }
    }
    Ok(out)
}

fn element_at(name: String, path: PathBuf, entry: PathBuf) -> Result<Element, Error> {
    // A FIFO or device among the element's files would hang or read the host: refused before
    // any file is opened, as discovery does.
    crate::library::check_files(&path)?;
    let deps = read_name_list(&path.join("element-deps"))?;
    let provides = read_name_list(&path.join("element-provides"))?;
    Ok(Element {
        name,
        path,
        entry,
        deps,
        provides,
    })
}

/// Checks `targets` (see [`targets`]) against the element contract. `library` is the rest of
/// the search path (`ELEMENTS_PATH` and the built-in elements): dependencies must resolve in
/// the targets or there, and hook names must not clash with elements there. A library element
/// with the name of a target is shadowed by it, as the checked paths come first.
///
/// The result is sorted by file, line, severity and message, without duplicates.
pub fn lint(targets: &[Element], library: &Library, checker: &mut dyn Checker) -> Vec<Finding> {
    let target_names: BTreeSet<&str> = targets.iter().map(|e| e.name.as_str()).collect();
    let everyone: Vec<&Element> = targets
        .iter()
        .chain(
            library
                .elements()
                .filter(|e| !target_names.contains(e.name.as_str())),
        )
        .collect();
    let known: BTreeSet<&str> = everyone
        .iter()
        .flat_map(|e| std::iter::once(&e.name).chain(&e.provides))
        .map(String::as_str)
        .collect();
    let contents: Vec<Contents> = everyone.iter().map(|e| Contents::read(&e.path)).collect();
    let path_set = PathSet::new(&everyone);

    let mut out = Vec::new();
    for (index, element) in targets.iter().enumerate() {
        if let Some(reason) = crate::names::element_name_problem(&element.name) {
            out.push(Finding::error(
                &element.path,
                None,
                format!("'{}' cannot be an element name: {reason} (kiln refuses it on ELEMENTS_PATH; rename the directory)", element.name),
            ));
        }
        check_readme(element, &mut out);
        check_name_list(element, "element-deps", Some(&known), &mut out);
        check_name_list(element, "element-provides", None, &mut out);
        for phase in Phase::ALL {
            check_phase_dir(&element.path.join(phase.dir_name()), &mut out);
        }
        check_environment(element, &path_set, checker, &mut out);
        check_package_installs(element, &mut out);
        check_pkg_map(element, &mut out);
        for config in block_device_configs(&element.path) {
            out.extend(checker.block_device_config(element, &config));
        }
        check_duplicates(index, &everyone, &contents, &mut out);
    }
    out.sort();
    out.dedup();
    out
}

fn check_readme(element: &Element, out: &mut Vec<Finding>) {
    if element.path.join("README.rst").is_file() {
        return;
    }
    let md = element.path.join("README.md");
    if md.is_file() {
        out.push(Finding::warning(
            md,
            None,
            "the README is Markdown, but DIB's lint and docs tooling want README.rst (convert it to reStructuredText)",
        ));
    } else {
        out.push(Finding::warning(
            &element.path,
            None,
            "no README.rst (add one saying what the element does and which variables it reads; DIB's lint requires it)",
        ));
    }
}

/// `element-deps` / `element-provides`: no comment syntax, and (for deps) every name known.
fn check_name_list(
    element: &Element,
    file: &str,
    known: Option<&BTreeSet<&str>>,
    out: &mut Vec<Finding>,
) {
    let path = element.path.join(file);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            out.push(Finding::from_error(&Error::io(&path, e), &path));
            return;
        }
    };
    for (index, raw) in text.lines().enumerate() {
        let line = Some(index + 1);
        let name = raw.trim();
        if name.is_empty() {
            continue;
        }
        if name.contains('#') || name.contains(char::is_whitespace) {
            out.push(Finding::warning(
                &path,
                line,
                format!(
                    "{file} has no comment syntax: the whole line {name:?} is read as one name (put one bare name per line and move comments to README.rst)"
                ),
            ));
        }
        if let Some(known) = known {
            if !known.contains(name) {
                out.push(Finding::error(
                    &path,
                    line,
                    format!(
                        "depends on '{name}', which no element on the path is or provides (fix the name, or add the directory that holds it to ELEMENTS_PATH or to the paths checked)"
                    ),
                ));
            }
        }
    }
}

/// One `<phase>.d` directory: what `dib-run-parts` would skip, and hooks that cannot be exec'd.
fn check_phase_dir(dir: &Path, out: &mut Vec<Finding>) {
    for (name, path) in dir_entries(dir) {
        let Ok(link_meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let Ok(meta) = fs::metadata(&path) else {
            if link_meta.file_type().is_symlink() {
                out.push(Finding::warning(
                    &path,
                    None,
                    "dangling symlink, so dib-run-parts never runs it (point it at an existing file or remove it)",
                ));
            }
            continue;
        };
        if !meta.is_file() {
            // Directories (e.g. install-types' `NN-foo-source-install/`) are not hooks.
            continue;
        }
        let executable = meta.permissions().mode() & 0o111 != 0;
        let runnable_name = is_runnable_hook_name(&name);
        match (runnable_name, executable) {
            (false, true) => out.push(Finding::warning(
                &path,
                None,
                format!(
                    "will never run: dib-run-parts only runs names matching [0-9A-Za-z_-]+ (rename it, e.g. to {})",
                    suggest_hook_name(&name)
                ),
            )),
            (true, false) => out.push(Finding::error(
                &path,
                None,
                "not executable, so it will be skipped (chmod +x it; if it is a data file, give it a name with a dot, such as .conf)",
            )),
            (true, true) => {
                if let Some(problem) = shebang_problem(&path) {
                    out.push(problem);
                }
            }
            // Non-executable names with a dot or other characters are data files read by
            // the hooks; they are fine.
            (false, false) => {}
        }
    }
}

/// A name `dib-run-parts` would run, made from `name`: without its extension when that is
/// enough, with every other character replaced by `-` otherwise.
fn suggest_hook_name(name: &str) -> String {
    if let Some((stem, _)) = name.rsplit_once('.') {
        if is_runnable_hook_name(stem) {
            return stem.to_string();
        }
    }
    let replaced: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    replaced
}

/// An executable hook must start with `#!` (or be a compiled program).
fn shebang_problem(path: &Path) -> Option<Finding> {
    let mut head = [0_u8; 4];
    let read = fs::File::open(path).and_then(|mut f| {
        let mut total = 0;
        while total < head.len() {
            let n = f.read(&mut head[total..])?;
            if n == 0 {
                break;
            }
            total += n;
        }
        Ok(total)
    });
    match read {
        Err(e) => Some(Finding::from_error(&Error::io(path, e), path)),
        Ok(n) if head[..n].starts_with(b"#!") || head[..n] == *b"\x7fELF" => None,
        Ok(_) => Some(Finding::error(
            path,
            Some(1),
            "no #! line: the hook runs only through bash's fallback for files it cannot exec, as a bash script whatever it was written for (make the first line #!/bin/bash, or the interpreter it needs)",
        )),
    }
}

/// The elements on the path by name (the first of a name wins, as in DIB), for following
/// `element-deps`.
struct PathSet<'a> {
    by_name: BTreeMap<&'a str, &'a Element>,
    providers: BTreeMap<&'a str, Vec<&'a Element>>,
}

impl<'a> PathSet<'a> {
    fn new(everyone: &[&'a Element]) -> Self {
        let mut by_name = BTreeMap::new();
        let mut providers: BTreeMap<&str, Vec<&Element>> = BTreeMap::new();
        for element in everyone {
            if by_name.contains_key(element.name.as_str()) {
                continue;
            }
            by_name.insert(element.name.as_str(), *element);
            for provided in &element.provides {
                providers
                    .entry(provided.as_str())
                    .or_default()
                    .push(*element);
            }
        }
        PathSet { by_name, providers }
    }

    /// `element` and its transitive deps, breadth first. A virtual name is followed when
    /// exactly one element provides it; with several providers the user picks one, so none
    /// is assumed.
    fn closure(&self, element: &'a Element) -> Vec<&'a Element> {
        let mut seen: BTreeSet<&str> = BTreeSet::from([element.name.as_str()]);
        let mut out = vec![element];
        let mut next = 0;
        while let Some(current) = out.get(next).copied() {
            next += 1;
            for dep in &current.deps {
                let found = self.by_name.get(dep.as_str()).copied().or_else(|| {
                    match self.providers.get(dep.as_str()).map(Vec::as_slice) {
                        Some([only]) => Some(*only),
                        _ => None,
                    }
                });
                if let Some(found) = found {
                    if seen.insert(found.name.as_str()) {
                        out.push(found);
                    }
                }
            }
        }
        out
    }
}

/// The files of `dir` that `dib-run-parts` sources, as `(name, path)`, sorted by name.
fn sourced_env_files(dir: &Path) -> Vec<(String, PathBuf)> {
    dir_entries(dir)
        .into_iter()
        .filter(|(name, path)| is_env_file_name(name) && path.is_file())
        .collect()
}

/// `environment.d`: names that are never sourced, the exec bit, and the caller's check of
/// each file that is sourced.
fn check_environment(
    element: &Element,
    path_set: &PathSet<'_>,
    checker: &mut dyn Checker,
    out: &mut Vec<Finding>,
) {
    let dir = element.path.join("environment.d");
    let closure = path_set.closure(element);
    // Every environment.d file of the closure, in DIB's sourcing order (by name).
    let mut merged: Vec<(String, PathBuf)> = closure
        .iter()
        .flat_map(|e| sourced_env_files(&e.path.join("environment.d")))
        .collect();
    merged.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    for (name, path) in dir_entries(&dir) {
        let Ok(meta) = fs::metadata(&path) else {
            out.push(Finding::warning(
                &path,
                None,
                "dangling symlink, so it is never sourced (point it at an existing file or remove it)",
            ));
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        if meta.permissions().mode() & 0o111 != 0 {
            out.push(Finding::warning(
                &path,
                None,
                "executable, but environment.d files are sourced, not run, and DIB's lint wants them not executable (chmod -x it)",
            ));
        }
        if is_env_file_name(&name) {
            let sourced_before = merged
                .iter()
                .take_while(|(other, _)| other.as_bytes() < name.as_bytes())
                .map(|(_, p)| p.clone())
                .collect();
            out.extend(checker.environment_file(&EnvFile {
                element,
                path: &path,
                elements: closure.iter().map(|e| e.name.clone()).collect(),
                sourced_before,
            }));
        } else {
            out.push(Finding::warning(
                &path,
                None,
                "never sourced: dib-run-parts only sources environment.d names matching [0-9A-Za-z_.-]+ (rename it)",
            ));
        }
    }
}

fn check_package_installs(element: &Element, out: &mut Vec<Finding>) {
    let installs = match element.package_installs() {
        Ok(Some(installs)) => installs,
        Ok(None) => return,
        Err(err) => {
            out.push(Finding::from_error(
                &err,
                &element.path.join("package-installs.yaml"),
            ));
            return;
        }
    };
    let given = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    for package in &installs.packages {
        for params in &package.params {
            if given(&params.arch) && given(&params.not_arch) {
                out.push(Finding::error(
                    &package.path,
                    params.line,
                    format!(
                        "package '{}' gives both 'arch' and 'not-arch', which fails the build (keep only one of them)",
                        package.name
                    ),
                ));
            }
            if !RUNNER_PHASES.contains(&params.phase.as_str()) {
                out.push(Finding::warning(
                    &package.path,
                    params.line,
                    format!(
                        "package '{}' uses phase '{}', which has no package-installs runner, so it is never installed (use one of {})",
                        package.name,
                        params.phase,
                        RUNNER_PHASES.join(", ")
                    ),
                ));
            }
            for statement in params.when.iter().flatten() {
                if !when_regex().is_match(statement) {
                    out.push(Finding::error(
                        &package.path,
                        params.line,
                        format!(
                            "package '{}' has a malformed 'when' condition {statement:?}, which fails the build (write \"VARIABLE = value\" or \"VARIABLE != value\")",
                            package.name
                        ),
                    ));
                }
            }
        }
    }
}

/// The form of a package-installs `when:` statement.
fn when_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^(\w+)\s*(=|!=)\s*(.*)").expect("the when regex is valid"))
}

fn check_pkg_map(element: &Element, out: &mut Vec<Finding>) {
    if let Err(err) = element.pkg_map() {
        out.push(Finding::from_error(&err, &element.path.join("pkg-map")));
    }
}

/// The `block-device-*.yaml` files at the top of an element directory, sorted.
fn block_device_configs(dir: &Path) -> Vec<PathBuf> {
    dir_entries(dir)
        .into_iter()
        .filter(|(name, path)| {
            name.starts_with("block-device-")
                && Path::new(name).extension().is_some_and(|e| e == "yaml")
                && path.is_file()
        })
        .map(|(_, path)| path)
        .collect()
}

/// What an element puts into the merged hook tree: for each merged directory, its entry
/// names and whether each is a directory (two directories of one name merge; anything else
/// of one name clashes).
struct Contents {
    dirs: BTreeMap<String, BTreeMap<String, (PathBuf, bool)>>,
}

impl Contents {
    /// Reads the merged directories of an element as DIB's hook copy sees them: every
    /// subdirectory but `tests/` and `__pycache__/`, and in each its entries without dot names.
    fn read(element_dir: &Path) -> Contents {
        let mut dirs = BTreeMap::new();
        for (dir_name, dir) in subdirs(element_dir) {
            if dir_name == "tests" || dir_name == "__pycache__" {
                continue;
            }
            let entries = dir_entries(&dir)
                .into_iter()
                .map(|(name, path)| {
                    let is_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
                    (name, (path, is_dir))
                })
                .collect();
            dirs.insert(dir_name, entries);
        }
        Contents { dirs }
    }
}

/// Hook (and other merged) file names of `everyone[index]` that another element also has:
/// DIB refuses to merge them. Elements that provide the same name are left out, since they
/// can never be used together.
fn check_duplicates(
    index: usize,
    everyone: &[&Element],
    contents: &[Contents],
    out: &mut Vec<Finding>,
) {
    let me = everyone[index];
    for (dir_name, entries) in &contents[index].dirs {
        for (name, (path, is_dir)) in entries {
            for (other_index, other) in everyone.iter().enumerate() {
                if other.name == me.name || me.provides.iter().any(|p| other.provides.contains(p)) {
                    continue;
                }
                let Some((other_path, other_is_dir)) = contents[other_index]
                    .dirs
                    .get(dir_name)
                    .and_then(|d| d.get(name))
                else {
                    continue;
                };
                if *is_dir && *other_is_dir {
                    continue;
                }
                out.push(Finding::warning(
                    path,
                    None,
                    format!(
                        "element '{}' also has {dir_name}/{name} ({}); DIB fails the build when both elements are used together (rename one of them)",
                        other.name,
                        other_path.display()
                    ),
                ));
            }
        }
    }
}

/// The non-hidden entries of `dir` as `(name, path)`, sorted by name; nothing when `dir` is
/// missing or unreadable. Dot names are skipped because DIB does not copy them into the
/// merged directories, so they neither run nor clash.
fn dir_entries(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(items) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = items
        .flatten()
        .filter_map(|item| {
            let name = item.file_name().into_string().ok()?;
            (!name.starts_with('.')).then(|| (name, item.path()))
        })
        .collect();
    out.sort();
    out
}

/// The file and line an element error is about, when it names them.
fn error_location(err: &Error) -> (Option<&Path>, Option<usize>) {
    match err {
        Error::Yaml { path, line, .. }
        | Error::Json { path, line, .. }
        | Error::ArchAndNotArch { path, line, .. }
        | Error::WhenUnsetVariable { path, line, .. }
        | Error::BadWhen { path, line, .. }
        | Error::BadPackageParams { path, line, .. } => (Some(path), *line),
        Error::Io { path, .. } | Error::NotADirectory { path } => (Some(path), None),
        _ => (None, None),
    }
}

/// `text` without a leading `PATH[:LINE[:COLUMN]]: `, which a [`Finding`] shows already.
fn strip_location<'a>(text: &'a str, path: &Path) -> &'a str {
    let Some(mut rest) = text.strip_prefix(path.display().to_string().as_str()) else {
        return text;
    };
    for _ in 0..2 {
        match rest.strip_prefix(':') {
            Some(after) if after.starts_with(|c: char| c.is_ascii_digit()) => {
                rest = after.trim_start_matches(|c: char| c.is_ascii_digit());
            }
            _ => break,
        }
    }
    rest.strip_prefix(": ").unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Fixture;

    /// Lints everything in the fixture's `main` entry against the library of `lib_entries`.
    fn lint_main(fx: &Fixture, lib_entries: &[&str]) -> Vec<Finding> {
        let targets = targets(&[fx.path("main")]).unwrap();
        let lib = fx.library_of(lib_entries);
        lint(&targets, &lib, &mut NoChecker)
    }

    /// Findings as `REL[:LINE]: severity: message` with the fixture path cut off.
    fn render(fx: &Fixture, findings: &[Finding]) -> Vec<String> {
        findings
            .iter()
            .map(|f| relative(fx, &f.to_string()))
            .collect()
    }

    /// `text` with the fixture directory (as given and canonical) cut from paths.
    fn relative(fx: &Fixture, text: &str) -> String {
        let root = fx.path("");
        let canonical = fs::canonicalize(&root).unwrap();
        let mut out = text.to_string();
        for dir in [canonical, root] {
            let prefix = format!("{}/", dir.display().to_string().trim_end_matches('/'));
            out = out.replace(&prefix, "");
        }
        out
    }

    fn has(lines: &[String], needle: &str) -> bool {
        lines.iter().any(|l| l.contains(needle))
    }

    #[test]
    fn clean_element_has_no_findings() {
        let fx = Fixture::new();
        fx.element("good")
            .file("README.rst", "good\n")
            .deps(&["other"])
            .exec("install.d/10-good", "#!/bin/bash\necho hi\n")
            .file("install.d/good.conf", "data\n")
            .file("environment.d/10-good.bash", "export GOOD=${GOOD:-1}\n")
            .mkdir("install.d/50-good-source-install");
        fx.element("other").file("README.rst", "other\n");
        let found = lint_main(&fx, &[]);
        assert!(found.is_empty(), "{:#?}", render(&fx, &found));
    }

    #[test]
    fn hook_names_modes_and_shebangs() {
        let fx = Fixture::new();
        fx.element("el")
            .file("README.rst", "x\n")
            .exec("install.d/10-foo.sh", "#!/bin/bash\n")
            .file("install.d/20-not-exec", "#!/bin/bash\n")
            .file("install.d/data.conf", "x\n")
            .exec("install.d/30-no-shebang", "echo hi\n")
            .exec("install.d/31-empty", "")
            .exec("install.d/32-elf", "\x7fELF....")
            .exec("install.d/.hidden.sh", "")
            .exec("root.d/a b", "#!/bin/sh\n")
            .symlink("cleanup.d/99-dangling", "nowhere")
            .exec("ramdisk-install.d/10-x.sh", "");
        let found = render(&fx, &lint_main(&fx, &[]));
        assert_eq!(
            found,
            [
                "main/el/cleanup.d/99-dangling: warning: dangling symlink, so dib-run-parts never runs it (point it at an existing file or remove it)",
                "main/el/install.d/10-foo.sh: warning: will never run: dib-run-parts only runs names matching [0-9A-Za-z_-]+ (rename it, e.g. to 10-foo)",
                "main/el/install.d/20-not-exec: error: not executable, so it will be skipped (chmod +x it; if it is a data file, give it a name with a dot, such as .conf)",
                "main/el/install.d/30-no-shebang:1: error: no #! line: the hook runs only through bash's fallback for files it cannot exec, as a bash script whatever it was written for (make the first line #!/bin/bash, or the interpreter it needs)",
                "main/el/install.d/31-empty:1: error: no #! line: the hook runs only through bash's fallback for files it cannot exec, as a bash script whatever it was written for (make the first line #!/bin/bash, or the interpreter it needs)",
                "main/el/root.d/a b: warning: will never run: dib-run-parts only runs names matching [0-9A-Za-z_-]+ (rename it, e.g. to a-b)",
            ]
        );
    }

    #[test]
    fn bad_element_names_and_fifos() {
        let fx = Fixture::new();
        fx.element("$(touch x)").file("README.rst", "x\n");
        let found = render(&fx, &lint_main(&fx, &[]));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0].starts_with("main/$(touch x): error: '$(touch x)' cannot be an element name"),
            "{found:#?}"
        );
        // A FIFO is refused before anything opens it (the lint would hang reading it).
        let fx = Fixture::new();
        fx.element("el").file("README.rst", "x\n");
        nix::unistd::mkfifo(
            &fx.path("main/el/element-deps"),
            nix::sys::stat::Mode::S_IRWXU,
        )
        .unwrap();
        let err = targets(&[fx.path("main")]).unwrap_err();
        assert!(
            matches!(err, Error::SpecialFile { kind: "FIFO", .. }),
            "{err}"
        );
    }

    #[test]
    fn hook_name_suggestions() {
        assert_eq!(suggest_hook_name("10-foo.sh"), "10-foo");
        assert_eq!(suggest_hook_name("10-foo.bar.sh"), "10-foo-bar-sh");
        assert_eq!(suggest_hook_name("a b"), "a-b");
    }

    #[test]
    fn environment_d_rules() {
        struct Recorder(Vec<PathBuf>);
        impl Checker for Recorder {
            fn environment_file(&mut self, file: &EnvFile<'_>) -> Vec<Finding> {
                assert_eq!(file.element.name, "el");
                self.0.push(file.path.to_path_buf());
                vec![Finding::error(file.path, Some(3), "from the checker")]
            }
            fn block_device_config(&mut self, _: &Element, _: &Path) -> Vec<Finding> {
                Vec::new()
            }
        }
        let fx = Fixture::new();
        fx.element("el")
            .file("README.rst", "x\n")
            .file("environment.d/10-ok.bash", "export A=1\n")
            .exec("environment.d/20-exec", "export B=1\n")
            .file("environment.d/30 space", "export C=1\n")
            .file("environment.d/.hidden", "")
            .mkdir("environment.d/subdir");
        let mut rec = Recorder(Vec::new());
        let found = lint(
            &targets(&[fx.path("main")]).unwrap(),
            &Library::default(),
            &mut rec,
        );
        let names: Vec<String> = rec
            .0
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["10-ok.bash", "20-exec"]);
        assert_eq!(
            render(&fx, &found),
            [
                "main/el/environment.d/10-ok.bash:3: error: from the checker",
                "main/el/environment.d/20-exec: warning: executable, but environment.d files are sourced, not run, and DIB's lint wants them not executable (chmod -x it)",
                "main/el/environment.d/20-exec:3: error: from the checker",
                "main/el/environment.d/30 space: warning: never sourced: dib-run-parts only sources environment.d names matching [0-9A-Za-z_.-]+ (rename it)",
            ]
        );
    }

    #[test]
    fn environment_d_files_sourced_before() {
        #[derive(Default)]
        struct Seen(Vec<(String, Vec<String>, Vec<String>)>);
        impl Checker for Seen {
            fn environment_file(&mut self, file: &EnvFile<'_>) -> Vec<Finding> {
                let name = |p: &PathBuf| {
                    let parts: Vec<_> = p.iter().rev().take(3).collect();
                    format!(
                        "{}/{}",
                        parts[2].to_string_lossy(),
                        parts[0].to_string_lossy()
                    )
                };
                self.0.push((
                    name(&file.path.to_path_buf()),
                    file.elements.clone(),
                    file.sourced_before.iter().map(name).collect(),
                ));
                Vec::new()
            }
            fn block_device_config(&mut self, _: &Element, _: &Path) -> Vec<Finding> {
                Vec::new()
            }
        }
        let fx = Fixture::new();
        fx.element("top")
            .file("README.rst", "x\n")
            .deps(&["mid", "virtual", "os"])
            .file("environment.d/20-top", "")
            .file("environment.d/05-top", "");
        fx.element_in("lib", "mid")
            .deps(&["low", "top"])
            .file("environment.d/10-mid.bash", "")
            .file("environment.d/30-mid", "");
        fx.element_in("lib", "low")
            .file("environment.d/15-low", "")
            .file("environment.d/bad name", "");
        fx.element_in("lib", "only-provider")
            .provides(&["virtual"])
            .file("environment.d/11-virtual", "");
        fx.element_in("lib", "os-a")
            .provides(&["os"])
            .file("environment.d/01-os-a", "");
        fx.element_in("lib", "os-b").provides(&["os"]);
        let mut seen = Seen::default();
        let targets = targets(&[fx.path("main")]).unwrap();
        lint(&targets, &fx.library_of(&["lib"]), &mut seen);
        let chain = ["top", "mid", "only-provider", "low"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            seen.0,
            [
                ("top/05-top".to_string(), chain.clone(), vec![]),
                (
                    "top/20-top".to_string(),
                    chain,
                    [
                        "top/05-top",
                        "mid/10-mid.bash",
                        "only-provider/11-virtual",
                        "low/15-low"
                    ]
                    .map(String::from)
                    .to_vec()
                ),
            ]
        );
    }

    #[test]
    fn readme_rules() {
        let fx = Fixture::new();
        fx.element("rst").file("README.rst", "x\n");
        fx.element("md").file("README.md", "x\n").deps(&["rst"]);
        fx.element("none").deps(&["rst"]);
        let found = render(&fx, &lint_main(&fx, &[]));
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(found[0].starts_with("main/md/README.md: warning: the README is Markdown"));
        assert!(found[1].starts_with("main/none: warning: no README.rst"));
    }

    #[test]
    fn element_deps_names_and_lines() {
        let fx = Fixture::new();
        fx.element("el").file("README.rst", "x\n").file(
            "element-deps",
            "known\n\n  provided  \n# a comment\nmissing\nlib-el\nknown # why\n",
        );
        fx.element("known")
            .file("README.rst", "x\n")
            .file("element-provides", "provided\nvirt # x\n");
        fx.element_in("lib", "lib-el");
        let found = render(&fx, &lint_main(&fx, &["lib"]));
        assert_eq!(
            found,
            [
                "main/el/element-deps:4: error: depends on '# a comment', which no element on the path is or provides (fix the name, or add the directory that holds it to ELEMENTS_PATH or to the paths checked)",
                "main/el/element-deps:4: warning: element-deps has no comment syntax: the whole line \"# a comment\" is read as one name (put one bare name per line and move comments to README.rst)",
                "main/el/element-deps:5: error: depends on 'missing', which no element on the path is or provides (fix the name, or add the directory that holds it to ELEMENTS_PATH or to the paths checked)",
                "main/el/element-deps:7: error: depends on 'known # why', which no element on the path is or provides (fix the name, or add the directory that holds it to ELEMENTS_PATH or to the paths checked)",
                "main/el/element-deps:7: warning: element-deps has no comment syntax: the whole line \"known # why\" is read as one name (put one bare name per line and move comments to README.rst)",
                "main/known/element-provides:2: warning: element-provides has no comment syntax: the whole line \"virt # x\" is read as one name (put one bare name per line and move comments to README.rst)",
            ]
        );
    }

    #[test]
    fn duplicates_against_targets_and_library() {
        let fx = Fixture::new();
        fx.element("a")
            .file("README.rst", "x\n")
            .exec("install.d/50-same", "#!/bin/sh\n")
            .file("environment.d/10-env", "")
            .exec("bin/tool", "#!/bin/sh\n")
            .file("static/etc/a.conf", "")
            .file("install.d/.hidden", "");
        fx.element("b")
            .file("README.rst", "x\n")
            .exec("install.d/50-same", "#!/bin/sh\n")
            .file("static/etc/b.conf", "")
            .file("install.d/.hidden", "");
        // In the library: a clash on environment.d, a copy of `a` that `a` shadows, and an
        // alternative to `a` (same provides) that can never be used with it.
        fx.element_in("lib", "c").file("environment.d/10-env", "");
        fx.element_in("lib", "a").exec("bin/tool", "#!/bin/sh\n");
        fx.element_in("lib", "alt")
            .provides(&["thing"])
            .exec("bin/tool", "");
        fx.element_in("main", "a").provides(&["thing"]);
        let found = render(&fx, &lint_main(&fx, &["lib"]));
        let lib = relative(
            &fx,
            &fs::canonicalize(fx.path("lib"))
                .unwrap()
                .display()
                .to_string(),
        );
        assert_eq!(
            found,
            [
                format!("main/a/environment.d/10-env: warning: element 'c' also has environment.d/10-env ({lib}/c/environment.d/10-env); DIB fails the build when both elements are used together (rename one of them)"),
                "main/a/install.d/50-same: warning: element 'b' also has install.d/50-same (main/b/install.d/50-same); DIB fails the build when both elements are used together (rename one of them)".to_string(),
                "main/b/install.d/50-same: warning: element 'a' also has install.d/50-same (main/a/install.d/50-same); DIB fails the build when both elements are used together (rename one of them)".to_string(),
            ]
        );
    }

    #[test]
    fn package_installs_and_pkg_map() {
        let fx = Fixture::new();
        fx.element("bad-yaml")
            .file("README.rst", "x\n")
            .file("package-installs.yaml", "a:\n  - b: [\n");
        fx.element("semantic").file("README.rst", "x\n").file(
            "package-installs.yaml",
            "ok:\nboth:\n  arch: amd64\n  not-arch: arm64\nlate:\n  phase: cleanup.d\nodd:\n  when: nonsense\n",
        );
        fx.element("bad-map")
            .file("README.rst", "x\n")
            .file("pkg-map", "{\n  \"default\": {\n    \"a\": 1\n  }\n}\n");
        let found = render(&fx, &lint_main(&fx, &[]));
        assert_eq!(found.len(), 5, "{found:#?}");
        assert!(
            found[0].starts_with("main/bad-map/pkg-map:3: error: invalid JSON"),
            "{}",
            found[0]
        );
        assert!(
            found[1].starts_with("main/bad-yaml/package-installs.yaml:"),
            "{}",
            found[1]
        );
        assert!(found[1].contains(": error: invalid YAML"), "{}", found[1]);
        assert!(has(&found, "main/semantic/package-installs.yaml:2: error: package 'both' gives both 'arch' and 'not-arch'"));
        assert!(has(
            &found,
            "main/semantic/package-installs.yaml:5: warning: package 'late' uses phase 'cleanup.d'"
        ));
        assert!(has(&found, "main/semantic/package-installs.yaml:7: error: package 'odd' has a malformed 'when' condition \"nonsense\""));
    }

    #[test]
    fn block_device_files_go_to_the_checker() {
        struct Bd(Vec<String>);
        impl Checker for Bd {
            fn environment_file(&mut self, _: &EnvFile<'_>) -> Vec<Finding> {
                Vec::new()
            }
            fn block_device_config(&mut self, _: &Element, path: &Path) -> Vec<Finding> {
                self.0
                    .push(path.file_name().unwrap().to_string_lossy().into_owned());
                Vec::new()
            }
        }
        let fx = Fixture::new();
        fx.element("bd")
            .file("README.rst", "x\n")
            .file("block-device-default.yaml", "")
            .file("block-device-arm64.yaml", "")
            .file("block-device-notes.txt", "");
        let mut bd = Bd(Vec::new());
        lint(
            &targets(&[fx.path("main")]).unwrap(),
            &Library::default(),
            &mut bd,
        );
        assert_eq!(
            bd.0,
            ["block-device-arm64.yaml", "block-device-default.yaml"]
        );
    }

    #[test]
    fn element_or_directory_of_elements() {
        let fx = Fixture::new();
        fx.element("with-deps").deps(&["x"]);
        fx.element("with-phase").mkdir("install.d");
        fx.element("with-bd").file("block-device-default.yaml", "");
        fx.element("readme-only").file("README.rst", "x\n");
        fx.element("nothing");
        fx.file("main/README.rst", "the collection\n");
        // Elements named like marker files do not make their parent an element.
        fx.element("pkg-map").file("README.rst", "x\n");
        fx.mkdir("main/.git");
        fx.mkdir("main/__pycache__");
        for el in ["with-deps", "with-phase", "with-bd", "readme-only"] {
            assert!(is_element_dir(&fx.path(&format!("main/{el}"))), "{el}");
        }
        assert!(!is_element_dir(&fx.path("main/nothing")));
        // A README of its own does not make a directory of elements an element.
        assert!(!is_element_dir(&fx.path("main")));

        let found = targets(&[fx.path("main/with-deps"), fx.path("main")]).unwrap();
        let names: Vec<&str> = found.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "with-deps",
                "nothing",
                "pkg-map",
                "readme-only",
                "with-bd",
                "with-deps",
                "with-phase"
            ]
        );
        assert_eq!(found[0].path, fx.path("main/with-deps"));
        assert_eq!(found[0].deps, ["x"]);
        assert_eq!(found[1].path, fx.path("main/nothing"));
        assert_eq!(found[1].entry, fx.path("main"));

        // "." names the element by its real directory name.
        let dot = fx.path("main/with-phase/.");
        let found = targets(std::slice::from_ref(&dot)).unwrap();
        assert_eq!(found[0].name, "with-phase");
        assert_eq!(found[0].path, dot);

        assert!(matches!(
            targets(&[fx.path("missing")]),
            Err(Error::NotADirectory { .. })
        ));
    }

    #[test]
    fn findings_display_and_locations() {
        let f = Finding::warning("a/b", Some(3), "msg (do this)");
        assert_eq!(f.to_string(), "a/b:3: warning: msg (do this)");
        let f = Finding::error("a/b", None, "msg");
        assert_eq!(f.to_string(), "a/b: error: msg");
        let err = Error::Json {
            path: "x/pkg-map".into(),
            line: Some(2),
            column: Some(5),
            message: "bad".into(),
        };
        let f = Finding::from_error(&err, Path::new("unused"));
        assert_eq!(f.path, Path::new("x/pkg-map"));
        assert_eq!(f.line, Some(2));
        assert_eq!(f.message, "invalid JSON: bad; fix the file at that place");
        assert_eq!(strip_location("p: x", Path::new("p")), "x");
        assert_eq!(strip_location("p:1:2: x", Path::new("p")), "x");
        assert_eq!(strip_location("q: x", Path::new("p")), "q: x");
    }

    #[test]
    fn output_is_sorted_errors_first_per_line() {
        let mut v = [
            Finding::warning("b", Some(1), "w"),
            Finding::warning("a", Some(2), "w"),
            Finding::error("a", Some(2), "e"),
            Finding::warning("a", None, "w"),
        ];
        v.sort();
        let shown: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "a: warning: w",
                "a:2: error: e",
                "a:2: warning: w",
                "b:1: warning: w"
            ]
        );
    }
}
