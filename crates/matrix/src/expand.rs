//! Expanding a matrix file into its cells, with the include/exclude semantics of GitHub
//! Actions' `strategy.matrix`, which CI users already know:
//!
//! 1. The product of the axes present, in the fixed axis order (distribution, release, arch,
//!    variant, outputs), each axis in file order.
//! 2. `exclude`: every combination matching all the keys of an entry is removed. An entry's
//!    keys must be axes of the matrix and its values values of those axes (a typo is an error,
//!    not an entry that silently matches nothing).
//! 3. `include`, entry by entry in file order, on the list as it stands: an entry *matches* a
//!    combination when each of its keys that is an axis of that combination has the same
//!    value. It is added to every combination it matches: its keys that are not axes of the
//!    combination are set (overwriting what an earlier include set), its `elements` appended,
//!    its `env` merged. An entry that matches no combination becomes a new combination of its
//!    own keys.
//!
//! A cell's environment, later winning: the file's `env`, then the `env` of its distribution,
//! release, arch, variant and outputs values, then each matching include's `env` in file
//! order. The release is `DIB_RELEASE`; setting `DIB_RELEASE` in any `env` is an error, since
//! the cell's id would then lie. The elements: the distribution, the variant's, then the
//! includes'. The outputs: the `outputs` value, else the variant's `outputs`, else kiln's
//! default type.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::spec::{line_of, MatrixFile, Rule, Value, Variant};
use crate::Error;

/// The axes in their fixed order.
pub const AXES: [&str; 5] = ["distribution", "release", "arch", "variant", "outputs"];

/// One build of the matrix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cell {
    /// The id: its axis values in axis order joined by `-` (`,` in outputs read `+`). Also the
    /// image name and the name of its output directory.
    pub id: String,
    /// Its value on each axis it has (axis name → value).
    pub values: BTreeMap<String, String>,
    /// The elements, in order.
    pub elements: Vec<String>,
    /// The output types (`-t`).
    pub outputs: Vec<String>,
    /// The architecture (`-a`), or none for the host's.
    pub arch: Option<String>,
    /// The environment the build gets on top of the caller's.
    pub env: BTreeMap<String, String>,
    /// `kiln build`'s arguments (after `kiln`), run in the cell's own directory.
    pub args: Vec<String>,
    /// The boot check after the build, when its output boots (decided by the caller, which
    /// resolves the elements: see [`BootCheck`]).
    pub boot: Option<BootCheck>,
}

/// The `kiln test --check` a cell's output gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootCheck {
    /// The image file, relative to the cell's directory (`ID.qcow2`).
    pub image: String,
    /// `kiln test --arch` (x86_64, aarch64).
    pub arch: String,
    /// Boot with UEFI firmware (`--uefi`).
    pub uefi: bool,
}

impl BootCheck {
    /// `kiln test`'s arguments (after `kiln`), run in the cell's directory.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["test".to_string(), "--check".into()];
        if self.uefi {
            a.push("--uefi".into());
        }
        a.extend(["--arch".into(), self.arch.clone(), self.image.clone()]);
        a
    }
}

impl Cell {
    /// The command line, as a shell would take it: `VAR=value … kiln build …`.
    pub fn command_line(&self) -> String {
        let mut words: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", kiln_host::quote(v)))
            .collect();
        words.push("kiln".into());
        words.push(kiln_host::quote_argv(&self.args));
        words.join(" ")
    }
}

/// A combination being built up: axis values and what includes added.
#[derive(Debug, Clone, Default)]
struct Combo {
    /// Axis → value; `original` lists the keys that came from the axes (or, for a combination
    /// an include made, from that include).
    values: BTreeMap<&'static str, String>,
    original: Vec<&'static str>,
    elements: Vec<String>,
    env: Vec<BTreeMap<String, String>>,
    /// Where the combination came from: `None` for the axes, else the include's line.
    line: Option<usize>,
}

/// The axes present, each with its values.
type AxisTable = Vec<(&'static str, Vec<String>)>;

/// Expands a parsed matrix file (`path` names it in errors).
pub fn expand(path: &Path, file: &MatrixFile) -> Result<Vec<Cell>, Error> {
    let invalid = |line: Option<usize>, message: String| Error::Invalid {
        path: path.to_path_buf(),
        line,
        message,
    };
    check_env(file, &file.env).map_err(|m| invalid(None, format!("env: {m}")))?;
    check_args(&file.args).map_err(|m| invalid(None, format!("args: {m}")))?;
    let axes = axis_table(path, file)?;
    let variants: BTreeMap<&str, &Variant> = file
        .axes
        .variant
        .iter()
        .flatten()
        .map(|v| (v.value.name.as_str(), &v.value))
        .collect();
    let mut combos = product(&axes);
    for rule in &file.exclude {
        exclude(&axes, &mut combos, &rule.value).map_err(|m| invalid(line_of(rule), m))?;
    }
    for rule in &file.include {
        include(file, &variants, &mut combos, &rule.value, line_of(rule))
            .map_err(|m| invalid(line_of(rule), m))?;
    }
    let mut cells: Vec<Cell> = Vec::with_capacity(combos.len());
    let mut origin: BTreeMap<String, Option<usize>> = BTreeMap::new();
    for c in combos {
        let cell = make_cell(file, &variants, &c).map_err(|m| invalid(c.line, m))?;
        if let Some(first) = origin.get(&cell.id) {
            let first = first.map_or_else(
                || "the axes".to_string(),
                |l| format!("the include at line {l}"),
            );
            return Err(invalid(
                c.line,
                format!(
                    "the cell `{}` is made twice (also by {first}); give one of them another value",
                    cell.id
                ),
            ));
        }
        origin.insert(cell.id.clone(), c.line);
        cells.push(cell);
    }
    if cells.is_empty() {
        return Err(invalid(
            None,
            "the matrix has no cells: give `axes`, or `include` entries, and check that \
             `exclude` leaves some"
                .into(),
        ));
    }
    Ok(cells)
}

/// Step 1: the product of the axes, in order (none without axes).
fn product(axes: &AxisTable) -> Vec<Combo> {
    if axes.is_empty() {
        return Vec::new();
    }
    let mut combos = vec![Combo::default()];
    for (axis, values) in axes {
        let mut next = Vec::with_capacity(combos.len() * values.len());
        for c in &combos {
            for v in values {
                let mut c = c.clone();
                c.values.insert(axis, v.clone());
                c.original.push(axis);
                next.push(c);
            }
        }
        combos = next;
    }
    combos
}

/// Step 2: removes the combinations matching every key of `r`.
fn exclude(axes: &AxisTable, combos: &mut Vec<Combo>, r: &Rule) -> Result<(), String> {
    if !r.elements.is_empty() || !r.env.is_empty() {
        return Err(
            "an exclude entry matches axis values only; move `elements` and `env` to an \
                    include entry"
                .into(),
        );
    }
    let keys = rule_keys(r);
    if keys.is_empty() {
        return Err("an exclude entry needs at least one axis".into());
    }
    for (k, v) in &keys {
        let Some((_, values)) = axes.iter().find(|(a, _)| a == k) else {
            return Err(format!(
                "exclude names the axis `{k}`, which the matrix does not have (its axes: {})",
                axis_names(axes)
            ));
        };
        if !values.contains(v) {
            return Err(format!(
                "exclude names {k} `{v}`, which is not a value of that axis ({})",
                values.join(", ")
            ));
        }
    }
    combos.retain(|c| !keys.iter().all(|(k, v)| c.values.get(k) == Some(v)));
    Ok(())
}

/// Step 3: adds `r` to the combinations it matches, or makes a new one.
fn include(
    file: &MatrixFile,
    variants: &BTreeMap<&str, &Variant>,
    combos: &mut Vec<Combo>,
    r: &Rule,
    line: Option<usize>,
) -> Result<(), String> {
    let keys = rule_keys(r);
    if let Some(name) = &r.variant {
        if !variants.contains_key(name.as_str()) {
            return Err(format!(
                "include names the variant `{name}`, which axes.variant does not define; \
                 define it there (name, elements)"
            ));
        }
    }
    for (k, v) in &keys {
        check_name(k, v)?;
    }
    check_env(file, &r.env)?;
    let mut matched = false;
    for c in combos.iter_mut() {
        let hit = keys
            .iter()
            .all(|(k, v)| !c.original.contains(k) || c.values.get(k) == Some(v));
        if hit {
            matched = true;
            for (k, v) in &keys {
                if !c.original.contains(k) {
                    c.values.insert(k, v.clone());
                }
            }
            c.elements.extend(r.elements.iter().cloned());
            c.env.push(r.env.clone());
        }
    }
    if !matched {
        if keys.is_empty() && r.elements.is_empty() {
            return Err(
                "an include entry that matches no cell makes a new one, but this one has no \
                 axis value and no elements"
                    .into(),
            );
        }
        combos.push(Combo {
            values: keys.iter().map(|(k, v)| (*k, v.clone())).collect(),
            original: keys.iter().map(|(k, _)| *k).collect(),
            elements: r.elements.clone(),
            env: vec![r.env.clone()],
            line,
        });
    }
    Ok(())
}

/// The axes present, in order, with their values, each value checked.
fn axis_table(path: &Path, file: &MatrixFile) -> Result<AxisTable, Error> {
    let a = &file.axes;
    let mut out = Vec::new();
    let plain = [
        ("distribution", &a.distribution),
        ("release", &a.release),
        ("arch", &a.arch),
    ];
    let mut push =
        |axis: &'static str, items: Vec<(String, Option<usize>, BTreeMap<String, String>)>| {
            if items.is_empty() {
                return Err(Error::Invalid {
                    path: path.to_path_buf(),
                    line: None,
                    message: format!("axes.{axis} is empty: give it values or remove it"),
                });
            }
            let mut names: Vec<String> = Vec::new();
            for (name, line, env) in items {
                let bad = |message: String| Error::Invalid {
                    path: path.to_path_buf(),
                    line,
                    message,
                };
                check_name(axis, &name).map_err(bad)?;
                check_env(file, &env).map_err(bad)?;
                if names.contains(&name) {
                    return Err(bad(format!("axes.{axis} lists `{name}` twice")));
                }
                names.push(name);
            }
            out.push((axis, names));
            Ok(())
        };
    for (axis, values) in plain {
        if let Some(v) = values {
            push(
                axis,
                v.iter()
                    .map(|s| (s.value.name().to_string(), line_of(s), s.value.env()))
                    .collect(),
            )?;
        }
    }
    if let Some(v) = &a.variant {
        for s in v {
            check_args(&s.value.args).map_err(|message| Error::Invalid {
                path: path.to_path_buf(),
                line: line_of(s),
                message,
            })?;
            if let Some(o) = &s.value.outputs {
                check_name("outputs", o).map_err(|message| Error::Invalid {
                    path: path.to_path_buf(),
                    line: line_of(s),
                    message,
                })?;
            }
        }
        push(
            "variant",
            v.iter()
                .map(|s| (s.value.name.clone(), line_of(s), s.value.env.clone()))
                .collect(),
        )?;
    }
    if let Some(v) = &a.outputs {
        push(
            "outputs",
            v.iter()
                .map(|s| (s.value.name().to_string(), line_of(s), s.value.env()))
                .collect(),
        )?;
    }
    Ok(out)
}

fn axis_names(axes: &AxisTable) -> String {
    if axes.is_empty() {
        return "none".into();
    }
    axes.iter().map(|(a, _)| *a).collect::<Vec<_>>().join(", ")
}

/// The axis keys an entry names, in axis order.
fn rule_keys(r: &Rule) -> Vec<(&'static str, String)> {
    [
        ("distribution", &r.distribution),
        ("release", &r.release),
        ("arch", &r.arch),
        ("variant", &r.variant),
        ("outputs", &r.outputs),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
    .collect()
}

/// Checks one axis value: a name usable in an id and a path; outputs must be kiln's types.
fn check_name(axis: &str, v: &str) -> Result<(), String> {
    if axis == "outputs" {
        for t in v.split(',') {
            kiln_output::OutputType::parse(t.trim()).map_err(|e| format!("outputs `{v}`: {e}"))?;
        }
        return Ok(());
    }
    let ok = !v.is_empty()
        && !v.starts_with(['-', '.'])
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{axis} `{v}` is not a usable name: use letters, digits, `.`, `_`, `+` and `-`, not \
             starting with `-` or `.` (it becomes part of the cell's id and directory)"
        ))
    }
}

/// Checks extra `kiln build` flags: they may not set what the matrix sets (`-o`, `-a`, `-t`,
/// alone or in a cluster such as `-nt`). The CLI then parses each cell's whole argv as
/// `kiln build` would.
fn check_args(args: &[String]) -> Result<(), String> {
    for a in args {
        if let Some(cluster) = a.strip_prefix('-').filter(|c| !c.starts_with('-')) {
            if let Some(f) = cluster.chars().find(|c| matches!(c, 'o' | 'a' | 't')) {
                return Err(format!(
                    "`{a}`: -{f} is set by the matrix (the cell id, the arch axis, the outputs); \
                     remove it from args"
                ));
            }
        }
    }
    Ok(())
}

/// Checks an `env` map: names a shell can export, and no `DIB_RELEASE` (the release axis, or
/// an include's `release`, sets it).
fn check_env(file: &MatrixFile, env: &BTreeMap<String, String>) -> Result<(), String> {
    for k in env.keys() {
        let ok = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(format!("`{k}` is not an environment variable name"));
        }
        if k == "DIB_RELEASE" {
            return Err(
                "DIB_RELEASE is set by the release axis (or an include's `release`); use those \
                 instead of env, so the cell's id names its release"
                    .into(),
            );
        }
    }
    let _ = file;
    Ok(())
}

fn value_env(
    values: Option<&Vec<serde_saphyr::Spanned<Value>>>,
    name: &str,
) -> BTreeMap<String, String> {
    values
        .into_iter()
        .flatten()
        .find(|v| v.value.name() == name)
        .map(|v| v.value.env())
        .unwrap_or_default()
}

fn make_cell(
    file: &MatrixFile,
    variants: &BTreeMap<&str, &Variant>,
    c: &Combo,
) -> Result<Cell, String> {
    let get = |k: &str| c.values.get(k).cloned();
    let variant = get("variant").and_then(|n| variants.get(n.as_str()).copied());
    let mut env = file.env.clone();
    let a = &file.axes;
    if let Some(d) = get("distribution") {
        env.extend(value_env(a.distribution.as_ref(), &d));
    }
    if let Some(r) = get("release") {
        env.extend(value_env(a.release.as_ref(), &r));
    }
    if let Some(r) = get("arch") {
        env.extend(value_env(a.arch.as_ref(), &r));
    }
    if let Some(v) = variant {
        env.extend(v.env.clone());
    }
    if let Some(o) = get("outputs") {
        env.extend(value_env(a.outputs.as_ref(), &o));
    }
    for e in &c.env {
        env.extend(e.clone());
    }
    if let Some(r) = get("release") {
        env.insert("DIB_RELEASE".into(), r);
    }
    let mut elements: Vec<String> = Vec::new();
    elements.extend(get("distribution"));
    if let Some(v) = variant {
        elements.extend(v.elements.iter().cloned());
    }
    for e in &c.elements {
        if !elements.contains(e) {
            elements.push(e.clone());
        }
    }
    if elements.is_empty() {
        return Err(
            "this cell has no elements: give a distribution axis, a variant with \
                    elements, or elements in the include"
                .into(),
        );
    }
    let outputs: Vec<String> = get("outputs")
        .or_else(|| variant.and_then(|v| v.outputs.clone()))
        .map_or_else(
            || vec![kiln_output::OutputType::default_type().name().to_string()],
            |o| o.split(',').map(|t| t.trim().to_string()).collect(),
        );
    let id = AXES
        .iter()
        .filter_map(|k| c.values.get(k))
        .map(|v| v.replace(',', "+"))
        .collect::<Vec<_>>()
        .join("-");
    let id = if id.is_empty() {
        elements.join("-")
    } else {
        id
    };
    let arch = get("arch");
    let mut args = vec!["build".to_string(), "-o".into(), id.clone()];
    if let Some(a) = &arch {
        args.extend(["-a".into(), a.clone()]);
    }
    args.extend(["-t".into(), outputs.join(",")]);
    args.extend(file.args.iter().cloned());
    if let Some(v) = variant {
        args.extend(v.args.iter().cloned());
    }
    args.extend(elements.iter().cloned());
    Ok(Cell {
        id,
        values: c
            .values
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect(),
        elements,
        outputs,
        arch,
        env,
        args,
        boot: None,
    })
}

/// Reads, parses and expands the matrix file at `path`.
pub fn load(path: &Path) -> Result<Vec<Cell>, Error> {
    let file = crate::spec::read(path)?;
    expand(path, &file)
}

/// The cells whose id matches `pattern` (`*` matches any run of characters; no `*` means a
/// substring of the id), or an error when none does.
pub fn select(path: &Path, cells: Vec<Cell>, pattern: Option<&str>) -> Result<Vec<Cell>, Error> {
    let Some(p) = pattern else { return Ok(cells) };
    let out: Vec<Cell> = cells.into_iter().filter(|c| id_matches(p, &c.id)).collect();
    if out.is_empty() {
        return Err(Error::NoCellMatches {
            path: PathBuf::from(path),
            pattern: p.to_string(),
        });
    }
    Ok(out)
}

/// Whether `id` matches `pattern`: a glob with `*` over the whole id, or else a substring.
pub fn id_matches(pattern: &str, id: &str) -> bool {
    if !pattern.contains('*') {
        return id.contains(pattern);
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !id.starts_with(first) || id.len() < first.len() + last.len() || !id.ends_with(last) {
        return false;
    }
    let mut rest = &id[first.len()..id.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Whether a cell's output boots, and how to check it: the rule `kiln matrix` applies.
///
/// A cell is boot-checked when (1) one of its outputs is a disk image (qcow2 preferred, then
/// raw, then the first other disk type), (2) its resolved element set (`resolved`, after
/// element-deps) holds `bootloader`, the element that installs a boot loader (`vm` brings it),
/// and (3) its architecture is one `kiln test` boots: amd64 (`x86_64`; BIOS, or UEFI when the
/// set holds `block-device-efi`, whose layout has no BIOS boot partition) or arm64
/// (`aarch64`, UEFI). `host_arch` stands for a cell without `arch`.
pub fn boot_check(cell: &Cell, resolved: &[&str], host_arch: &str) -> Option<BootCheck> {
    if !resolved.contains(&"bootloader") {
        return None;
    }
    let disks: Vec<kiln_output::OutputType> = cell
        .outputs
        .iter()
        .filter_map(|o| kiln_output::OutputType::parse(o).ok())
        .filter(|t| t.needs_disk())
        .collect();
    let pick = ["qcow2", "raw"]
        .iter()
        .find_map(|n| disks.iter().find(|t| t.name() == *n))
        .or_else(|| disks.first())?;
    let arch = match cell.arch.as_deref().unwrap_or(host_arch) {
        "amd64" | "x86_64" => "x86_64",
        "arm64" | "aarch64" => "aarch64",
        _ => return None,
    };
    Some(BootCheck {
        image: format!("{}.{}", cell.id, pick.extension()),
        arch: arch.to_string(),
        uefi: arch == "aarch64" || resolved.contains(&"block-device-efi"),
    })
}

/// The text `kiln matrix plan` prints: each cell's id, command line and boot check.
pub fn plan_text(cells: &[Cell]) -> String {
    use std::fmt::Write as _;
    let mut s = format!("{} cells\n", cells.len());
    for c in cells {
        let _ = writeln!(s, "\n{}\n  run:  {}", c.id, c.command_line());
        let boot = c.boot.as_ref().map_or_else(
            || "no (no disk output with a boot loader)".to_string(),
            |b| format!("kiln {}", kiln_host::quote_argv(&b.args())),
        );
        let _ = writeln!(s, "  boot: {boot}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(text: &str) -> Result<Vec<Cell>, Error> {
        let p = Path::new("m.yaml");
        expand(p, &crate::spec::parse(p, text)?)
    }

    fn ids(text: &str) -> Vec<String> {
        cells(text).unwrap().into_iter().map(|c| c.id).collect()
    }

    fn err(text: &str) -> String {
        cells(text).unwrap_err().to_string()
    }

    const BASE: &str = "axes:\n  distribution: [debian-minimal]\n  release: [trixie, bookworm]\n  arch: [amd64, arm64]\n";

    #[test]
    fn product_in_axis_order() {
        assert_eq!(
            ids(BASE),
            [
                "debian-minimal-trixie-amd64",
                "debian-minimal-trixie-arm64",
                "debian-minimal-bookworm-amd64",
                "debian-minimal-bookworm-arm64",
            ]
        );
    }

    #[test]
    fn exclude_removes_every_combination_matching_all_its_keys() {
        let t = format!("{BASE}exclude:\n  - {{release: bookworm, arch: arm64}}\n");
        assert_eq!(
            ids(&t),
            [
                "debian-minimal-trixie-amd64",
                "debian-minimal-trixie-arm64",
                "debian-minimal-bookworm-amd64"
            ]
        );
        let t = format!("{BASE}exclude:\n  - {{arch: arm64}}\n");
        assert_eq!(
            ids(&t),
            [
                "debian-minimal-trixie-amd64",
                "debian-minimal-bookworm-amd64"
            ]
        );
    }

    #[test]
    fn include_adds_to_matches_and_never_overwrites_an_axis_value() {
        let t = format!(
            "{BASE}include:\n  - {{arch: arm64, outputs: tar, env: {{A: '1'}}}}\n  \
             - {{release: trixie, arch: amd64, elements: [vm]}}\n"
        );
        let c = cells(&t).unwrap();
        // outputs is not an axis: the include sets it on the arm64 cells, whose id grows.
        assert_eq!(c[1].id, "debian-minimal-trixie-arm64-tar");
        assert_eq!(c[1].outputs, ["tar"]);
        assert_eq!(c[1].env.get("A").map(String::as_str), Some("1"));
        assert_eq!(c[0].outputs, ["qcow2"], "kiln's default type");
        assert!(!c[0].env.contains_key("A"));
        assert_eq!(c[0].elements, ["debian-minimal", "vm"]);
        assert_eq!(c[2].elements, ["debian-minimal"]);
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn an_include_matching_nothing_is_a_new_cell() {
        let t = format!("{BASE}include:\n  - {{release: sid, arch: amd64, elements: [x]}}\n");
        let c = cells(&t).unwrap();
        assert_eq!(c.len(), 5);
        assert_eq!(c[4].id, "sid-amd64");
        assert_eq!(c[4].elements, ["x"]);
        // A new cell has only the include's keys: no distribution, so no element.
        assert!(err(&format!("{BASE}include:\n  - {{release: sid}}\n"))
            .contains("m.yaml:6: this cell has no elements"));
        let t = format!(
            "{BASE}include:\n  - {{distribution: ubuntu-minimal, release: noble, arch: amd64}}\n"
        );
        assert_eq!(cells(&t).unwrap()[4].id, "ubuntu-minimal-noble-amd64");
    }

    #[test]
    fn added_keys_are_overwritten_by_later_includes() {
        let t = format!(
            "{BASE}include:\n  - {{arch: amd64, outputs: tar}}\n  - {{release: trixie, outputs: raw}}\n"
        );
        let c = cells(&t).unwrap();
        assert_eq!(c[0].outputs, ["raw"]);
        assert_eq!(c[2].outputs, ["tar"]);
        assert_eq!(c[1].outputs, ["raw"]);
    }

    #[test]
    fn environment_precedence() {
        let t = "env: {A: file, B: file, C: file, D: file}\naxes:\n  distribution: [debian-minimal]\n  \
                 release: [{value: trixie, env: {A: release, B: release, C: release}}]\n  \
                 variant:\n    - {name: vm, elements: [vm], env: {B: variant, C: variant}}\n\
                 include:\n  - {variant: vm, env: {C: include}}\n";
        let c = &cells(t).unwrap()[0];
        let env: Vec<(&str, &str)> = c
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            env,
            [
                ("A", "release"),
                ("B", "variant"),
                ("C", "include"),
                ("D", "file"),
                ("DIB_RELEASE", "trixie")
            ]
        );
        assert_eq!(
            c.args,
            [
                "build",
                "-o",
                "debian-minimal-trixie-vm",
                "-t",
                "qcow2",
                "debian-minimal",
                "vm"
            ]
        );
        assert_eq!(
            c.command_line(),
            "A=release B=variant C=include D=file DIB_RELEASE=trixie kiln build -o \
             debian-minimal-trixie-vm -t qcow2 debian-minimal vm"
        );
    }

    #[test]
    fn extra_build_flags() {
        let t = "args: [-n, --checksum]\naxes:\n  distribution: [test-os]\n  variant:\n    \
                 - {name: big, args: [--image-size, '3']}\n    - {name: small}\n";
        let c = cells(t).unwrap();
        assert_eq!(
            c[0].args,
            [
                "build",
                "-o",
                "test-os-big",
                "-t",
                "qcow2",
                "-n",
                "--checksum",
                "--image-size",
                "3",
                "test-os"
            ]
        );
        assert_eq!(c[1].args[5..], ["-n", "--checksum", "test-os"]);
        assert!(err("args: [-nt, tar]\naxes:\n  distribution: [x]\n")
            .contains("m.yaml: args: `-nt`: -t is set by the matrix"));
        assert!(
            err("axes:\n  distribution: [x]\n  variant:\n    - {name: v, args: [-o, y]}\n")
                .contains("m.yaml:4: `-o`: -o is set by the matrix")
        );
    }

    #[test]
    fn variants_and_outputs() {
        let t = "axes:\n  distribution: [debian-minimal]\n  variant:\n    \
                 - {name: vm, elements: [vm, cloud-init], outputs: 'qcow2,raw'}\n    \
                 - {name: rootfs}\n";
        let c = cells(t).unwrap();
        assert_eq!(c[0].id, "debian-minimal-vm");
        assert_eq!(c[0].outputs, ["qcow2", "raw"]);
        assert_eq!(c[0].elements, ["debian-minimal", "vm", "cloud-init"]);
        assert_eq!(c[1].outputs, ["qcow2"]);
        let t = "axes:\n  distribution: [debian-minimal]\n  outputs: [tar, 'qcow2,tar']\n";
        assert_eq!(ids(t), ["debian-minimal-tar", "debian-minimal-qcow2+tar"]);
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let cases: &[(&str, &str)] = &[
            ("axes:\n  relase: [trixie]\n", "m.yaml:2: "),
            ("axes:\n  release: [trixie]\nexclude:\n  - {release: bullseye}\n", "m.yaml:4: exclude names release `bullseye`"),
            (&format!("{BASE}exclude:\n  - {{variant: vm}}\n"), "m.yaml:6: exclude names the axis `variant`"),
            (&format!("{BASE}exclude:\n  - {{arch: amd64, env: {{A: b}}}}\n"), "m.yaml:6: an exclude entry matches axis values only"),
            (&format!("{BASE}include:\n  - {{variant: vm}}\n"), "m.yaml:6: include names the variant `vm`"),
            ("axes:\n  distribution: [debian-minimal]\n  outputs: [qcow2, tra]\n", "m.yaml:3: outputs `tra`"),
            ("axes:\n  distribution: [debian-minimal]\n  arch: [amd64, 'a b']\n", "m.yaml:3: arch `a b` is not a usable name"),
            ("axes:\n  distribution: [debian-minimal]\n  arch: [amd64, amd64]\n", "axes.arch lists `amd64` twice"),
            ("env: {DIB_RELEASE: x}\naxes:\n  distribution: [debian-minimal]\n", "DIB_RELEASE is set by the release axis"),
            (&format!("{BASE}include:\n  - {{distribution: debian-minimal, release: trixie, arch: amd64, elements: [x]}}\n  - {{release: trixie, arch: amd64}}\n"), ""),
            ("axes:\n  release: [trixie]\n", "m.yaml: this cell has no elements"),
            ("axes:\n  distribution: [debian-minimal]\nexclude:\n  - {distribution: debian-minimal}\n", "the matrix has no cells"),
            ("include:\n  - {release: trixie, elements: [a]}\n  - {release: trixie, elements: [b]}\n", ""),
            ("axes: [\n", "m.yaml:"),
            ("axes:\n  distribution: []\n", "axes.distribution is empty"),
        ];
        for (text, want) in cases {
            match cells(text) {
                Err(e) => {
                    assert!(e.is_input_error());
                    assert!(e.to_string().contains(want), "{text:?}: {e}");
                }
                Ok(c) => assert!(
                    want.is_empty(),
                    "{text:?} expanded to {:?}",
                    c.iter().map(|c| &c.id).collect::<Vec<_>>()
                ),
            }
        }
    }

    #[test]
    fn a_cell_made_twice_names_both_places() {
        let t = "axes:\n  distribution: [debian-minimal]\n  outputs: [tar]\ninclude:\n  \
                 - {distribution: d2, elements: [x]}\n  - {distribution: d2, outputs: tar}\n";
        // The second include matches the cell the first made (distribution d2) and adds
        // outputs to it: one new cell, no duplicate.
        assert_eq!(ids(t), ["debian-minimal-tar", "d2-tar"]);
        let t = "axes:\n  distribution: [debian-minimal]\n  variant:\n    - {name: a, outputs: tar}\n    \
                 - {name: b, outputs: tar}\ninclude:\n  - {variant: a, outputs: raw}\n";
        assert_eq!(ids(t), ["debian-minimal-a-raw", "debian-minimal-b"]);
        let t = "include:\n  - {distribution: x, release: r}\n  - {distribution: x, arch: a}\n  \
                 - {distribution: x, arch: b}\n";
        // Include 2 matches the first cell (arch is no axis of it) and sets arch a; include 3
        // overwrites it with b: one cell.
        assert_eq!(ids(t), ["x-r-b"]);
    }

    #[test]
    fn duplicate_ids_are_an_error_with_the_line() {
        let t = "axes:\n  distribution: [a-b]\n  release: [c]\ninclude:\n  - {distribution: a, release: b-c}\n";
        let e = err(t);
        assert!(
            e.contains("m.yaml:5: the cell `a-b-c` is made twice (also by the axes)"),
            "{e}"
        );
    }

    #[test]
    fn only_patterns() {
        assert!(id_matches("trixie", "debian-minimal-trixie-amd64"));
        assert!(id_matches("*-arm64", "debian-minimal-trixie-arm64"));
        assert!(!id_matches("*-arm64", "debian-minimal-trixie-amd64"));
        assert!(id_matches(
            "debian-*-amd64*",
            "debian-minimal-trixie-amd64-vm"
        ));
        assert!(!id_matches(
            "debian*bookworm*",
            "debian-minimal-trixie-amd64"
        ));
        let c = cells(BASE).unwrap();
        let e = select(Path::new("m.yaml"), c.clone(), Some("sid")).unwrap_err();
        assert!(e.is_input_error() && e.to_string().contains("no cell matches --only \"sid\""));
        assert_eq!(
            select(Path::new("m.yaml"), c, Some("*arm64"))
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn boot_rule() {
        let t = "axes:\n  distribution: [debian-minimal]\n  arch: [amd64, arm64, riscv64]\n  \
                 outputs: ['tar,raw', tar, 'vmdk,qcow2']\n";
        let c = cells(t).unwrap();
        let with = ["debian-minimal", "vm", "bootloader"];
        let b = |i: usize, set: &[&str]| boot_check(&c[i], set, "amd64");
        assert_eq!(
            b(0, &with),
            Some(BootCheck {
                image: "debian-minimal-amd64-tar+raw.raw".into(),
                arch: "x86_64".into(),
                uefi: false
            })
        );
        assert_eq!(b(1, &with), None, "no disk output");
        assert_eq!(
            b(2, &with).unwrap().image,
            "debian-minimal-amd64-vmdk+qcow2.qcow2"
        );
        assert_eq!(b(0, &["debian-minimal"]), None, "no boot loader");
        assert!(b(0, &["bootloader", "block-device-efi"]).unwrap().uefi);
        let arm = b(3, &with).unwrap();
        assert_eq!((arm.arch.as_str(), arm.uefi), ("aarch64", true));
        assert_eq!(b(6, &with), None, "riscv64: kiln test does not boot it");
        assert_eq!(
            arm.args(),
            [
                "test",
                "--check",
                "--uefi",
                "--arch",
                "aarch64",
                "debian-minimal-arm64-tar+raw.raw"
            ]
        );
    }
}
