//! `package-installs.{json,yaml}`: declarative package lists, and the squash that turns the
//! files of all elements into the per-phase install/uninstall lists of DIB's
//! `/tmp/package-installs.json`.
//!
//! kiln reads these files natively instead of running DIB's Python squash on the host, but
//! the result must be the same, so the rules are DIB's, quirks included:
//!
//! - the file maps a package name to nothing, a map of options, or a list of such maps, each
//!   evaluated on its own;
//! - `phase` (default `install.d`); `uninstall` and `build-only` count by their presence,
//!   whatever their value; `installtype` against `DIB_INSTALLTYPE_<element>` /
//!   `DIB_DEFAULT_INSTALLTYPE` / `source`; `arch` / `not-arch` as comma lists split without
//!   trimming; `dib_python_version` against `DIB_PYTHON_VERSION`; `when` conditions on
//!   environment variables, where an unset variable is an error;
//! - an uninstall is skipped when another element already installs the package in that phase
//!   without uninstalling it, and a plain install cancels an earlier uninstall;
//! - the squash reads every copy of an element on `ELEMENTS_PATH`, not just the winning one
//!   ([`collect`]).
//!
//! Files are parsed into an order-keeping tree with line numbers so that every error names
//! the file and line of the entry at fault.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use regex::Regex;

use crate::error::{Error, IoContext};
use crate::library::Library;
use crate::node::{self, Node, Value};
use crate::resolve::ElementSet;

/// The phases that have package-installs runner hooks: DIB's three, and finalise.d (a kiln
/// addition, for packages installed into the finished image's filesystem, such as the boot
/// loader's, so that `kiln lock` sees them).
pub const RUNNER_PHASES: [&str; 4] = ["pre-install.d", "install.d", "post-install.d", "finalise.d"];

/// One element's parsed package-installs file(s): package entries in source order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PackageInstalls {
    /// The package entries, in file order (JSON file before YAML file when both exist).
    pub packages: Vec<Package>,
}

/// One `pkgname: params` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Package {
    /// The package name as written (it may be mapped by pkg-map later).
    pub name: String,
    /// The file it is declared in.
    pub path: PathBuf,
    /// The line of the package name, when known.
    pub line: Option<usize>,
    /// The option sets; each one is evaluated independently. A package with no options has
    /// one default set.
    pub params: Vec<Params>,
}

/// One set of options for a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// The line these options start on (the list item, or the package), when known.
    pub line: Option<usize>,
    /// The phase directory name, `install.d` unless given.
    pub phase: String,
    /// `uninstall:` was given (with any value).
    pub uninstall: bool,
    /// `build-only:` was given (with any value): install, and uninstall at the end.
    pub build_only: bool,
    /// `installtype:`: only when the element's install type equals this.
    pub installtype: Option<String>,
    /// `arch:`: comma list of architectures to install on.
    pub arch: Option<String>,
    /// `not-arch:`: comma list of architectures not to install on.
    pub not_arch: Option<String>,
    /// `dib_python_version:` as Python's `str()` of the value.
    pub dib_python_version: Option<String>,
    /// `when:` statements, all of which must hold.
    pub when: Option<Vec<String>>,
}

impl Params {
    fn new(line: Option<usize>) -> Params {
        Params {
            line,
            phase: "install.d".to_string(),
            uninstall: false,
            build_only: false,
            installtype: None,
            arch: None,
            not_arch: None,
            dib_python_version: None,
            when: None,
        }
    }
}

/// Parses one `package-installs.json` or `.yaml` file. Like DIB, the text is tried as JSON
/// first and as YAML when that fails (whatever the extension).
pub fn parse(path: &Path) -> Result<PackageInstalls, Error> {
    let text = std::fs::read_to_string(path).at(path)?;
    parse_text(path, &text)
}

/// [`parse`] on text already read; `path` is used in errors.
pub fn parse_text(path: &Path, text: &str) -> Result<PackageInstalls, Error> {
    let root = match node::parse_json(text) {
        Ok(node) => node,
        Err(json_err) => match node::parse_yaml(text) {
            Ok(node) => node,
            Err(yaml_err) => {
                let is_json = path.extension().is_some_and(|e| e == "json");
                return Err(if is_json {
                    Error::Json {
                        path: path.to_path_buf(),
                        line: json_err.line,
                        column: json_err.column,
                        message: json_err.message,
                    }
                } else {
                    Error::Yaml {
                        path: path.to_path_buf(),
                        line: yaml_err.line,
                        column: yaml_err.column,
                        message: yaml_err.message,
                    }
                });
            }
        },
    };
    let entries = match root.value {
        Value::Null => Vec::new(),
        Value::Map(entries) => entries,
        other => {
            return Err(Error::BadPackageParams {
                path: path.to_path_buf(),
                line: root.line,
                package: String::new(),
                message: format!(
                    "the file holds {} but must be a map of package names to options; write it as `pkgname:` lines",
                    other.type_name()
                ),
            })
        }
    };
    let mut packages = Vec::with_capacity(entries.len());
    for (name, key_line, value) in entries {
        let line = key_line.or(value.line);
        let ctx = EntryCtx {
            path,
            package: &name,
        };
        if let Some(reason) = crate::names::generic_package_name_problem(&name) {
            return Err(ctx.bad(
                line,
                format!(
                    "{reason}; write the package's name as the key (it reaches the package manager as an argument)"
                ),
            ));
        }
        let params = if value.value.is_falsy() {
            vec![Params::new(line)]
        } else if let Value::Seq(items) = value.value {
            items
                .into_iter()
                .map(|item| {
                    let item_line = item.line.or(line);
                    ctx.params(item, item_line)
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            vec![ctx.params(value, line)?]
        };
        packages.push(Package {
            name,
            path: path.to_path_buf(),
            line,
            params,
        });
    }
    Ok(PackageInstalls { packages })
}

/// Where an entry is, for building its errors.
struct EntryCtx<'a> {
    path: &'a Path,
    package: &'a str,
}

impl EntryCtx<'_> {
    fn bad(&self, line: Option<usize>, message: String) -> Error {
        Error::BadPackageParams {
            path: self.path.to_path_buf(),
            line,
            package: self.package.to_string(),
            message,
        }
    }

    /// Reads one option map (or an empty value) into [`Params`].
    fn params(&self, node: Node, line: Option<usize>) -> Result<Params, Error> {
        let mut params = Params::new(line);
        let entries = match node.value {
            v if v.is_falsy() => return Ok(params),
            Value::Map(entries) => entries,
            other => {
                return Err(self.bad(
                    line,
                    format!(
                        "options must be a map (phase, uninstall, build-only, installtype, arch, not-arch, dib_python_version, when) or a list of maps, not {}",
                        other.type_name()
                    ),
                ))
            }
        };
        for (key, key_line, value) in entries {
            let at = key_line.or(line);
            match key.as_str() {
                "phase" => match value.value {
                    Value::Str(s) => {
                        if crate::names::package_phase(&s).is_none() {
                            return Err(self.bad(
                                at,
                                format!(
                                    "'phase' is {s:?}, which is not a phase directory; use one of {}",
                                    RUNNER_PHASES.join(", ")
                                ),
                            ));
                        }
                        if !RUNNER_PHASES.contains(&s.as_str()) {
                            tracing::warn!(
                                "{}: package '{}' uses phase '{s}', which has no package-installs runner (only {}); it will not be installed",
                                location(self.path, at),
                                self.package,
                                RUNNER_PHASES.join(", ")
                            );
                        }
                        params.phase = s;
                    }
                    other => {
                        return Err(self.bad(
                            at,
                            format!(
                                "'phase' must be a string such as install.d, not {}",
                                other.type_name()
                            ),
                        ))
                    }
                },
                "uninstall" => params.uninstall = true,
                "build-only" => params.build_only = true,
                "installtype" => params.installtype = self.opt_string(&key, value, at)?,
                "arch" => params.arch = self.opt_string(&key, value, at)?,
                "not-arch" => params.not_arch = self.opt_string(&key, value, at)?,
                "dib_python_version" => match value.value.python_str() {
                    Some(s) => params.dib_python_version = Some(s),
                    None => {
                        return Err(self.bad(
                            at,
                            "'dib_python_version' must be 2 or 3, not a list or map".to_string(),
                        ))
                    }
                },
                "when" => params.when = self.when(value, at)?,
                other => tracing::warn!(
                    "{}: package '{}' has unknown option '{other}', which is ignored",
                    location(self.path, at),
                    self.package
                ),
            }
        }
        Ok(params)
    }

    fn opt_string(
        &self,
        key: &str,
        node: Node,
        line: Option<usize>,
    ) -> Result<Option<String>, Error> {
        match node.value {
            Value::Null => Ok(None),
            Value::Str(s) => Ok(Some(s)),
            other => Err(self.bad(
                line,
                format!(
                    "'{key}' must be a string, not {}; quote the value",
                    other.type_name()
                ),
            )),
        }
    }

    fn when(&self, node: Node, line: Option<usize>) -> Result<Option<Vec<String>>, Error> {
        let bad_when = |statement: String| Error::BadWhen {
            path: self.path.to_path_buf(),
            line,
            package: self.package.to_string(),
            statement,
        };
        match node.value {
            Value::Null => Ok(None),
            Value::Str(s) => Ok(Some(vec![s])),
            Value::Seq(items) => items
                .into_iter()
                .map(|item| match item.value {
                    Value::Str(s) => Ok(s),
                    other => Err(bad_when(other.to_string())),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            other => Err(bad_when(other.to_string())),
        }
    }
}

fn location(path: &Path, line: Option<usize>) -> String {
    match line {
        Some(line) => format!("{}:{line}", path.display()),
        None => path.display().to_string(),
    }
}

/// Reads the package-installs files of one element directory: `package-installs.json`
/// then `package-installs.yaml`, both when both exist. `None` when neither exists.
pub fn load_dir(dir: &Path) -> Result<Option<PackageInstalls>, Error> {
    let mut found: Option<PackageInstalls> = None;
    for ext in ["json", "yaml"] {
        let path = dir.join(format!("package-installs.{ext}"));
        if path.exists() {
            let parsed = parse(&path)?;
            found
                .get_or_insert_with(PackageInstalls::default)
                .packages
                .extend(parsed.packages);
        }
    }
    Ok(found)
}

/// Checks a legacy plain package list (`<phase>.d/package-installs-<element>`, read by the
/// in-target `package-installs` script): per line, `#` starts a comment, words are package
/// names, a leading `-` means "uninstall". Every name must be a generic package name
/// ([`crate::names::generic_package_name_problem`]; the script maps it with pkg-map); the
/// error names the file and line.
pub fn check_legacy_list(path: &Path, text: &str) -> Result<(), Error> {
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default();
        for word in line.split_whitespace() {
            let name = word.strip_prefix('-').unwrap_or(word);
            if let Some(reason) = crate::names::generic_package_name_problem(name) {
                return Err(Error::BadPackageParams {
                    path: path.to_path_buf(),
                    line: Some(i + 1),
                    package: word.to_string(),
                    message: format!(
                        "{reason}; list one package name per word (a leading - means uninstall)"
                    ),
                });
            }
        }
    }
    Ok(())
}

/// The input of [`squash`] for an element set, read the way DIB's squash reads it: for
/// each element in set order, every copy of it on `ELEMENTS_PATH` (winner first), each
/// copy's JSON then YAML file.
pub fn collect(lib: &Library, set: &ElementSet) -> Result<Vec<(String, PackageInstalls)>, Error> {
    let mut out = Vec::new();
    for element in &set.elements {
        let mut copies = lib.all_copies(&element.name);
        if copies.is_empty() {
            copies.push(element.path.clone());
        }
        for copy in copies {
            if let Some(pi) = load_dir(&copy)? {
                out.push((element.name.clone(), pi));
            }
        }
    }
    Ok(out)
}

/// What the squash needs from the build: the architecture and the environment (for
/// `DIB_INSTALLTYPE_*`, `DIB_DEFAULT_INSTALLTYPE`, `DIB_PYTHON_VERSION` and `when` variables).
pub struct SquashContext<'a> {
    /// `$ARCH`.
    pub arch: &'a str,
    /// Looks up an environment variable; `Some("")` is a set-but-empty variable.
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

/// The squashed lists of one phase: `(package, element)` pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PhaseLists {
    /// Packages to install, in order.
    pub install: Vec<(String, String)>,
    /// Packages to uninstall, in order.
    pub uninstall: Vec<(String, String)>,
}

/// Merges the package-installs of `elements` (element name and its parsed files, in
/// element-set order) into per-phase install and uninstall lists, keyed by phase directory
/// name (`"install.d"`).
pub fn squash(
    elements: &[(String, PackageInstalls)],
    ctx: &SquashContext<'_>,
) -> Result<BTreeMap<String, PhaseLists>, Error> {
    let mut out: BTreeMap<String, PhaseLists> = BTreeMap::new();
    for (element, installs) in elements {
        let installtype_var = format!("DIB_INSTALLTYPE_{}", element.replace('-', "_"));
        let element_installtype = (ctx.env)(&installtype_var)
            .or_else(|| (ctx.env)("DIB_DEFAULT_INSTALLTYPE"))
            .unwrap_or_else(|| "source".to_string());
        let python_version = (ctx.env)("DIB_PYTHON_VERSION").unwrap_or_default();
        for package in &installs.packages {
            for params in &package.params {
                // Evaluate every filter, so that configuration errors surface even when an
                // earlier filter already excludes the entry.
                let arch_ok = arch_matches(package, params, ctx.arch)?;
                let when_ok = when_holds(package, params, ctx)?;
                let type_ok = params
                    .installtype
                    .as_ref()
                    .is_none_or(|t| *t == element_installtype);
                let python_ok = params
                    .dib_python_version
                    .as_ref()
                    .is_none_or(|v| v.is_empty() || *v == python_version);
                if !(arch_ok && when_ok && type_ok && python_ok) {
                    tracing::debug!(
                        "package-installs: skipping {} of {element} (arch {arch_ok}, when {when_ok}, installtype {type_ok}, python {python_ok})",
                        package.name
                    );
                    continue;
                }
                let lists = out.entry(params.phase.clone()).or_default();
                let item = (package.name.clone(), element.clone());
                if params.build_only {
                    lists.install.push(item.clone());
                    add_uninstall(lists, item);
                } else if params.uninstall {
                    add_uninstall(lists, item);
                } else {
                    lists.uninstall.retain(|(p, _)| *p != package.name);
                    lists.install.push(item);
                }
            }
        }
    }
    Ok(out)
}

/// Adds an uninstall unless another element already installs the package in this phase
/// without uninstalling it.
fn add_uninstall(lists: &mut PhaseLists, item: (String, String)) {
    let (package, element) = &item;
    let kept_by_other = lists.install.iter().any(|installed| {
        installed.0 == *package && installed.1 != *element && !lists.uninstall.contains(installed)
    });
    if kept_by_other {
        tracing::debug!(
            "package-installs: not uninstalling {package} for {element}: another element installs it"
        );
        return;
    }
    lists.uninstall.push(item);
}

fn arch_matches(package: &Package, params: &Params, arch: &str) -> Result<bool, Error> {
    let given = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    if given(&params.arch) && given(&params.not_arch) {
        return Err(Error::ArchAndNotArch {
            path: package.path.clone(),
            line: params.line,
            package: package.name.clone(),
        });
    }
    // DIB splits on "," and does not strip the pieces.
    let in_list = |list: &str| list.split(',').any(|a| a == arch);
    Ok(match (&params.arch, &params.not_arch) {
        (Some(list), _) if !list.is_empty() => in_list(list),
        (_, Some(list)) => !in_list(list),
        (Some(list), None) => in_list(list),
        (None, None) => true,
    })
}

fn when_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^(\w+)\s*(=|!=)\s*(.*)").expect("the when regex is valid"))
}

fn when_holds(package: &Package, params: &Params, ctx: &SquashContext<'_>) -> Result<bool, Error> {
    let Some(statements) = &params.when else {
        return Ok(true);
    };
    let mut all = true;
    for statement in statements {
        let Some(caps) = when_regex().captures(statement) else {
            return Err(Error::BadWhen {
                path: package.path.clone(),
                line: params.line,
                package: package.name.clone(),
                statement: statement.clone(),
            });
        };
        let variable = &caps[1];
        let Some(actual) = (ctx.env)(variable) else {
            return Err(Error::WhenUnsetVariable {
                path: package.path.clone(),
                line: params.line,
                package: package.name.clone(),
                variable: variable.to_string(),
            });
        };
        let wanted = &caps[3];
        let holds = match &caps[2] {
            "=" => actual == wanted,
            _ => actual != wanted,
        };
        all &= holds;
    }
    Ok(all)
}

/// The squash result in the JSON shape DIB's `package-installs-v2` reads:
/// `{phase: {"install": [[pkg, element], ...], "uninstall": [...]}}`.
pub fn to_dib_json(map: &BTreeMap<String, PhaseLists>) -> serde_json::Value {
    let pairs = |list: &[(String, String)]| {
        serde_json::Value::Array(
            list.iter()
                .map(|(p, e)| serde_json::json!([p, e]))
                .collect(),
        )
    };
    let mut obj = serde_json::Map::new();
    for (phase, lists) in map {
        obj.insert(
            phase.clone(),
            serde_json::json!({
                "install": pairs(&lists.install),
                "uninstall": pairs(&lists.uninstall),
            }),
        );
    }
    serde_json::Value::Object(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn pi(text: &str) -> PackageInstalls {
        parse_text(Path::new("/e/x/package-installs.yaml"), text).unwrap()
    }

    fn run_with(
        arch: &str,
        vars: &[(&str, &str)],
        elements: &[(&str, &str)],
    ) -> Result<BTreeMap<String, PhaseLists>, Error> {
        let env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        let lookup = move |k: &str| env.get(k).cloned();
        let ctx = SquashContext { arch, env: &lookup };
        let parsed: Vec<(String, PackageInstalls)> = elements
            .iter()
            .map(|(name, text)| {
                (
                    (*name).to_string(),
                    parse_text(Path::new(&format!("/e/{name}/package-installs.yaml")), text)
                        .unwrap(),
                )
            })
            .collect();
        squash(&parsed, &ctx)
    }

    fn run(elements: &[(&str, &str)]) -> BTreeMap<String, PhaseLists> {
        run_with("amd64", &[], elements).unwrap()
    }

    fn pkgs(list: &[(String, String)]) -> Vec<String> {
        list.iter().map(|(p, e)| format!("{p}@{e}")).collect()
    }

    #[test]
    fn parses_every_shape() {
        let parsed = pi("aa:\nbb: {}\ncc:\n  phase: pre-install.d\ndd:\n  - arch: amd64\n  - not-arch: arm64\n    uninstall: false\nee: ''\n");
        let names: Vec<&str> = parsed.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["aa", "bb", "cc", "dd", "ee"]);
        assert_eq!(parsed.packages[0].params, [Params::new(Some(1))]);
        assert_eq!(parsed.packages[2].params[0].phase, "pre-install.d");
        assert_eq!(parsed.packages[3].params.len(), 2);
        assert_eq!(parsed.packages[3].params[0].arch.as_deref(), Some("amd64"));
        assert_eq!(parsed.packages[3].params[0].line, Some(6));
        assert!(
            parsed.packages[3].params[1].uninstall,
            "uninstall counts by presence"
        );
        assert_eq!(parsed.packages[3].line, Some(5));
    }

    #[test]
    fn defaults_to_install_d() {
        let out = run(&[("el", "vim:\ncurl: null\n")]);
        assert_eq!(pkgs(&out["install.d"].install), ["vim@el", "curl@el"]);
        assert!(out["install.d"].uninstall.is_empty());
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn phase_uninstall_and_build_only() {
        let out = run(&[(
            "el",
            "gcc:\n  build-only: true\nold:\n  uninstall: True\n  phase: post-install.d\ngrub:\n  phase: pre-install.d\n",
        )]);
        assert_eq!(pkgs(&out["install.d"].install), ["gcc@el"]);
        assert_eq!(pkgs(&out["install.d"].uninstall), ["gcc@el"]);
        assert_eq!(pkgs(&out["post-install.d"].uninstall), ["old@el"]);
        assert!(out["post-install.d"].install.is_empty());
        assert_eq!(pkgs(&out["pre-install.d"].install), ["grub@el"]);
    }

    #[test]
    fn uninstall_skipped_when_another_element_installs() {
        let out = run(&[
            ("keeper", "tool:\n"),
            ("remover", "tool:\n  uninstall: 1\n"),
        ]);
        assert_eq!(pkgs(&out["install.d"].install), ["tool@keeper"]);
        assert!(out["install.d"].uninstall.is_empty());

        // build-only from another element does not keep it.
        let out = run(&[
            ("builder", "tool:\n  build-only:\n"),
            ("remover", "tool:\n  uninstall:\n"),
        ]);
        assert_eq!(
            pkgs(&out["install.d"].uninstall),
            ["tool@builder", "tool@remover"]
        );

        // build-only after a plain install of the same package: the uninstall is skipped.
        let out = run(&[("keeper", "tool:\n"), ("builder", "tool:\n  build-only:\n")]);
        assert_eq!(
            pkgs(&out["install.d"].install),
            ["tool@keeper", "tool@builder"]
        );
        assert!(out["install.d"].uninstall.is_empty());

        // Only the same phase counts.
        let out = run(&[
            ("keeper", "tool:\n  phase: pre-install.d\n"),
            ("remover", "tool:\n  uninstall:\n"),
        ]);
        assert_eq!(pkgs(&out["install.d"].uninstall), ["tool@remover"]);
    }

    #[test]
    fn plain_install_cancels_earlier_uninstall() {
        let out = run(&[("remover", "tool:\n  uninstall:\n"), ("keeper", "tool:\n")]);
        assert_eq!(pkgs(&out["install.d"].install), ["tool@keeper"]);
        assert!(out["install.d"].uninstall.is_empty());
    }

    #[test]
    fn installtype() {
        let text = "src-pkg:\n  installtype: source\npkg-pkg:\n  installtype: package\nany:\n";
        let out = run(&[("my-el", text)]);
        assert_eq!(
            pkgs(&out["install.d"].install),
            ["src-pkg@my-el", "any@my-el"]
        );
        let out = run_with(
            "amd64",
            &[("DIB_DEFAULT_INSTALLTYPE", "package")],
            &[("my-el", text)],
        )
        .unwrap();
        assert_eq!(
            pkgs(&out["install.d"].install),
            ["pkg-pkg@my-el", "any@my-el"]
        );
        // The per-element variable wins, with - turned into _.
        let out = run_with(
            "amd64",
            &[
                ("DIB_DEFAULT_INSTALLTYPE", "package"),
                ("DIB_INSTALLTYPE_my_el", "source"),
            ],
            &[("my-el", text)],
        )
        .unwrap();
        assert_eq!(
            pkgs(&out["install.d"].install),
            ["src-pkg@my-el", "any@my-el"]
        );
    }

    #[test]
    fn arch_and_not_arch() {
        let text = "only-amd:\n  arch: amd64\nnot-arm:\n  not-arch: arm64\nlist:\n  arch: ppc64,amd64\nspaced:\n  arch: ppc64, amd64\nspaced-first:\n  arch: amd64 ,ppc64\n";
        let out = run(&[("el", text)]);
        assert_eq!(
            pkgs(&out["install.d"].install),
            ["only-amd@el", "not-arm@el", "list@el"]
        );
        let out = run_with("arm64", &[], &[("el", text)]).unwrap();
        assert!(!out.contains_key("install.d"));
        let out = run_with("ppc64", &[], &[("el", text)]).unwrap();
        assert_eq!(
            pkgs(&out["install.d"].install),
            ["not-arm@el", "list@el", "spaced@el", "spaced-first@el"]
        );

        let err = run_with(
            "amd64",
            &[],
            &[("el", "# c\nbad:\n  arch: amd64\n  not-arch: arm64\n")],
        )
        .unwrap_err();
        match &err {
            Error::ArchAndNotArch {
                path,
                line,
                package,
            } => {
                assert_eq!(package, "bad");
                assert_eq!(*line, Some(2));
                assert_eq!(path, Path::new("/e/el/package-installs.yaml"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            err.to_string()
                .starts_with("/e/el/package-installs.yaml:2: "),
            "{err}"
        );
    }

    #[test]
    fn dib_python_version() {
        let text = "py2:\n  dib_python_version: 2\npy3:\n  dib_python_version: '3'\n";
        let out = run_with("amd64", &[("DIB_PYTHON_VERSION", "3")], &[("el", text)]).unwrap();
        assert_eq!(pkgs(&out["install.d"].install), ["py3@el"]);
        let out = run(&[("el", text)]);
        assert!(!out.contains_key("install.d"));
    }

    #[test]
    fn when_conditions() {
        let text = "eq:\n  when: DIB_FEATURE = 1\nne:\n  when: DIB_FEATURE != 1\ntight:\n  when: DIB_FEATURE=1\nboth:\n  when:\n    - DIB_FEATURE = 1\n    - DIB_OTHER != x\nempty:\n  when: DIB_EMPTY =\n";
        let vars = [("DIB_FEATURE", "1"), ("DIB_OTHER", "y"), ("DIB_EMPTY", "")];
        let out = run_with("amd64", &vars, &[("el", text)]).unwrap();
        assert_eq!(
            pkgs(&out["install.d"].install),
            ["eq@el", "tight@el", "both@el", "empty@el"]
        );
        let vars = [
            ("DIB_FEATURE", "1"),
            ("DIB_OTHER", "x"),
            ("DIB_EMPTY", "no"),
        ];
        let out = run_with("amd64", &vars, &[("el", text)]).unwrap();
        assert_eq!(pkgs(&out["install.d"].install), ["eq@el", "tight@el"]);
    }

    #[test]
    fn when_errors_carry_lines() {
        let err = run_with(
            "amd64",
            &[],
            &[("el", "aa:\nbb:\n  when: MISSING_VAR = 1\n")],
        )
        .unwrap_err();
        match &err {
            Error::WhenUnsetVariable {
                line,
                package,
                variable,
                ..
            } => {
                assert_eq!(*line, Some(2));
                assert_eq!(package, "bb");
                assert_eq!(variable, "MISSING_VAR");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            err.to_string().contains("package-installs.yaml:2:"),
            "{err}"
        );

        let err = run_with(
            "amd64",
            &[],
            &[("el", "bb:\n  - {}\n  - when: not a condition\n")],
        )
        .unwrap_err();
        match &err {
            Error::BadWhen {
                line, statement, ..
            } => {
                assert_eq!(*line, Some(3));
                assert_eq!(statement, "not a condition");
            }
            other => panic!("unexpected {other:?}"),
        }
        // An unset variable is an error even when another filter excludes the entry.
        let err = run_with(
            "amd64",
            &[],
            &[("el", "bb:\n  arch: s390x\n  when: NOPE = 1\n")],
        )
        .unwrap_err();
        assert!(matches!(err, Error::WhenUnsetVariable { .. }));
    }

    #[test]
    fn shape_errors() {
        let path = Path::new("/e/el/package-installs.yaml");
        let err = parse_text(path, "- a\n- b\n").unwrap_err();
        assert!(matches!(err, Error::BadPackageParams { .. }), "{err:?}");
        let err = parse_text(path, "aa:\n  phase: [x]\n").unwrap_err();
        assert!(
            matches!(err, Error::BadPackageParams { ref package, line: Some(2), .. } if package == "aa"),
            "{err:?}"
        );
        let err = parse_text(path, "aa: just-a-string\n").unwrap_err();
        assert!(
            matches!(err, Error::BadPackageParams { line: Some(1), .. }),
            "{err:?}"
        );
        let err = parse_text(path, "aa:\n  arch: [amd64]\n").unwrap_err();
        assert!(matches!(err, Error::BadPackageParams { .. }), "{err:?}");
        let err = parse_text(path, "a: {phase: \n  - b: [\n").unwrap_err();
        match &err {
            Error::Yaml { path: p, line, .. } => {
                assert_eq!(p, path);
                assert!(line.is_some());
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            err.to_string().starts_with("/e/el/package-installs.yaml:"),
            "{err}"
        );
        // Empty files and comment-only files are empty lists.
        assert!(parse_text(path, "").unwrap().packages.is_empty());
        assert!(parse_text(path, "# nothing\n").unwrap().packages.is_empty());
    }

    #[test]
    fn json_first_then_yaml_fallback() {
        let json_path = Path::new("/e/el/package-installs.json");
        let parsed = parse_text(
            json_path,
            "{\"bb\": null, \"aa\": {\"phase\": \"pre-install.d\"}}",
        )
        .unwrap();
        let names: Vec<&str> = parsed.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["bb", "aa"]);
        assert_eq!(parsed.packages[1].params[0].phase, "pre-install.d");
        // Not JSON, but YAML: DIB accepts it.
        let parsed = parse_text(json_path, "aa:\n  uninstall: yes\n").unwrap();
        assert!(parsed.packages[0].params[0].uninstall);
        // Neither: the JSON error is reported for a .json file, with its line.
        let err = parse_text(json_path, "{\n  \"a\": [\n}\n").unwrap_err();
        assert!(matches!(err, Error::Json { line: Some(_), .. }), "{err:?}");
    }

    #[test]
    fn load_dir_reads_json_then_yaml() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_dir(dir.path()).unwrap().is_none());
        std::fs::write(dir.path().join("package-installs.yaml"), "from-yaml:\n").unwrap();
        std::fs::write(
            dir.path().join("package-installs.json"),
            "{\"from-json\": null}",
        )
        .unwrap();
        let parsed = load_dir(dir.path()).unwrap().unwrap();
        let names: Vec<&str> = parsed.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["from-json", "from-yaml"]);
        assert!(parsed.packages[0].path.ends_with("package-installs.json"));
    }

    #[test]
    fn collect_reads_every_copy() {
        use crate::resolve::{resolve, ResolveRequest};
        use crate::testutil::Fixture;
        let fx = Fixture::new();
        fx.element_in("user", "os")
            .provides(&["operating-system"])
            .file("package-installs.yaml", "user-copy:\n");
        fx.element_in("builtin", "os")
            .provides(&["operating-system"])
            .file("package-installs.yaml", "builtin-copy:\n");
        let lib = fx.library_of(&["user", "builtin"]);
        let set = resolve(
            &lib,
            &ResolveRequest {
                elements: vec!["os".into()],
                arch: "amd64".into(),
                skip_base: true,
            },
        )
        .unwrap();
        let collected = collect(&lib, &set).unwrap();
        assert_eq!(collected.len(), 2);
        let lookup = |_: &str| None;
        let out = squash(
            &collected,
            &SquashContext {
                arch: "amd64",
                env: &lookup,
            },
        )
        .unwrap();
        assert_eq!(
            pkgs(&out["install.d"].install),
            ["user-copy@os", "builtin-copy@os"]
        );
        // The element's own view is the winning copy only.
        let own = lib.get("os").unwrap().package_installs().unwrap().unwrap();
        assert_eq!(own.packages.len(), 1);
        assert_eq!(own.packages[0].name, "user-copy");
    }

    #[test]
    fn dib_json_shape() {
        let out = run(&[("a", "xx:\nyy:\n  uninstall:\n  phase: post-install.d\n")]);
        let json = to_dib_json(&out);
        assert_eq!(
            json,
            serde_json::json!({
                "install.d": {"install": [["xx", "a"]], "uninstall": []},
                "post-install.d": {"install": [], "uninstall": [["yy", "a"]]},
            })
        );
    }

    #[test]
    fn phase_values_that_are_not_phase_directories_are_refused() {
        let path = Path::new("/e/el/package-installs.yaml");
        for phase in ["../../x", "install", "/tmp/x.d", "install.d/../../y", ""] {
            let text = format!("vim:\n  phase: {phase:?}\n");
            let err = parse_text(path, &text).unwrap_err();
            assert!(
                matches!(&err, Error::BadPackageParams { line: Some(2), package, .. } if package == "vim"),
                "{phase}: {err:?}"
            );
            assert!(
                err.to_string()
                    .starts_with("/e/el/package-installs.yaml:2: "),
                "{err}"
            );
            assert!(err.to_string().contains("install.d"), "{err}");
        }
        // Every phase directory is accepted (with a warning when it has no runner).
        let parsed = parse_text(path, "vim:\n  phase: finalise.d\n").unwrap();
        assert_eq!(parsed.packages[0].params[0].phase, "finalise.d");
    }

    #[test]
    fn package_names_that_are_not_plain_words_are_refused() {
        let path = Path::new("/e/el/package-installs.json");
        for (text, line) in [
            ("ok-pkg:\n\"-oAPT::Get::Foo=1\":\n", 2),
            ("\"--reinstall\":\n", 1),
            ("\"foo bar\":\n", 1),
            ("\"v;m\":\n", 1),
            ("{\"ok\": null,\n \"$(id)\": null}", 2),
        ] {
            let err = parse_text(path, text).unwrap_err();
            assert!(
                matches!(&err, Error::BadPackageParams { line: l, .. } if *l == Some(line)),
                "{text}: {err:?}"
            );
            assert!(err.to_string().contains("package name"), "{err}");
        }
        // Generic names that pkg-map turns into distribution names are accepted.
        let parsed = parse_text(
            path,
            "{\"NetworkManager\": null, \"signed_grub_efi\": null}",
        )
        .unwrap();
        assert_eq!(parsed.packages.len(), 2);
    }

    #[test]
    fn legacy_lists_hold_only_package_names() {
        let path = Path::new("/e/el/install.d/package-installs-el");
        check_legacy_list(path, "vim curl # editors\n-nano\n\n# all\nNetworkManager\n").unwrap();
        for (text, line) in [
            ("vim\n--force-yes\n", 2),
            ("-$(id)\n", 1),
            ("ok\nok2 B;d\n", 2),
        ] {
            let err = check_legacy_list(path, text).unwrap_err();
            assert!(
                matches!(&err, Error::BadPackageParams { line: l, .. } if *l == Some(line)),
                "{text}: {err:?}"
            );
            assert!(
                err.to_string()
                    .starts_with(&format!("/e/el/install.d/package-installs-el:{line}: ")),
                "{err}"
            );
        }
    }
}
