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

/// Checks an `env` map: names a shell can export, and no `DIB_RELEASE` when there is a release
/// axis (the axis sets it).
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
