//! package-installs and pkg-map, read natively and handed to the in-chroot hooks as plain lists.
//!
//! DIB squashes every element's `package-installs.yaml` with a Python helper on the host and maps
//! names through `pkg-map` (also Python) inside the chroot. kiln does both here, once, after
//! sourcing environment.d to learn DISTRO_NAME and DIB_RELEASE, and writes
//! `$TMP_HOOKS_PATH/.kiln/package-installs/<phase>.{install,uninstall}` (one package a line,
//! mapped, de-duplicated) and `$TMP_HOOKS_PATH/.kiln/pkg-map/<element>` (`name<TAB>packages`),
//! so the hooks inside the target need nothing but a shell.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use kiln_element::package_installs::{self, PackageInstalls, SquashContext};
use kiln_element::pkg_map::PkgMap;

use crate::plan::BuildPlan;
use crate::{settings, Error};

/// Writes the package lists and flat pkg-map tables for `plan` under `hooks/.kiln`, with
/// `env` the environment as environment.d leaves it. Returns the squashed lists for the log.
pub fn write_lists(
    plan: &BuildPlan,
    env: &BTreeMap<String, String>,
    hooks: &Path,
) -> Result<BTreeMap<String, package_installs::PhaseLists>, Error> {
    let distro = env
        .get(settings::DISTRO_NAME.name)
        .cloned()
        .unwrap_or_default();
    let release = env
        .get(settings::DIB_RELEASE.name)
        .cloned()
        .unwrap_or_default();
    let mut inputs: Vec<(String, PackageInstalls)> = Vec::new();
    let mut maps: BTreeMap<String, PkgMap> = BTreeMap::new();
    for e in &plan.set.elements {
        let Some(el) = plan.library.get(&e.name) else {
            continue;
        };
        if let Some(pi) = el.package_installs()? {
            inputs.push((e.name.clone(), pi));
        }
        if let Some(m) = el.pkg_map()? {
            maps.insert(e.name.clone(), m);
        }
    }
    let lookup = |k: &str| env.get(k).cloned();
    let ctx = SquashContext {
        arch: &plan.arch,
        env: &lookup,
    };
    let squashed = package_installs::squash(&inputs, &ctx)?;
    let dir = hooks.join(".kiln/package-installs");
    mkdir(&dir)?;
    for (phase, lists) in &squashed {
        let short = phase.trim_end_matches(".d");
        // The names were checked to be plain words when package-installs was read; what
        // pkg-map turns them into (or the name itself, unmapped) reaches apt, so it must be a
        // Debian package name: checked here, before any phase, naming the file to fix.
        let map_list = |list: &[(String, String)]| -> Result<Vec<String>, Error> {
            let mut out: Vec<String> = Vec::new();
            for (pkg, element) in list {
                let mapping = maps
                    .get(element)
                    .and_then(|m| m.lookup(&distro, &release, pkg));
                let mapped = mapping.clone().unwrap_or_else(|| pkg.clone());
                for p in mapped.split_whitespace() {
                    if let Some(reason) = kiln_element::names::package_name_problem(p) {
                        let dir = plan
                            .library
                            .get(element)
                            .map(|e| e.path.clone())
                            .unwrap_or_default();
                        let (path, message) = if mapping.is_some() {
                            (
                                dir.join("pkg-map"),
                                format!("maps to {p:?} for {distro} {release}, which is not a package name: {reason}; fix the mapping"),
                            )
                        } else {
                            (
                                dir,
                                format!("has no pkg-map entry for {distro} {release} and is not a Debian package name: {reason}; map it in the element's pkg-map or use the distribution's name"),
                            )
                        };
                        return Err(kiln_element::Error::BadPackageParams {
                            path,
                            line: None,
                            package: pkg.clone(),
                            message,
                        }
                        .into());
                    }
                    if !out.iter().any(|x| x == p) {
                        out.push(p.to_string());
                    }
                }
            }
            Ok(out)
        };
        // The phase was checked to name a phase directory when the file was read.
        write(
            &dir.join(format!("{short}.install")),
            &lines(&map_list(&lists.install)?),
        )?;
        write(
            &dir.join(format!("{short}.uninstall")),
            &lines(&map_list(&lists.uninstall)?),
        )?;
    }
    // DIB's own format too, for elements that read it.
    write(
        &hooks.join(".kiln/package-installs.json"),
        &serde_json::to_string_pretty(&package_installs::to_dib_json(&squashed))
            .unwrap_or_default(),
    )?;
    let mdir = hooks.join(".kiln/pkg-map");
    mkdir(&mdir)?;
    for (element, m) in &maps {
        let mut s = String::new();
        for name in m.names() {
            if let Some(v) = m.lookup(&distro, &release, &name) {
                let _ = writeln!(s, "{name}\t{v}");
            }
        }
        write(&mdir.join(element), &s)?;
    }
    Ok(squashed)
}

fn lines(v: &[String]) -> String {
    let mut s = String::new();
    for l in v {
        s.push_str(l);
        s.push('\n');
    }
    s
}

fn mkdir(p: &Path) -> Result<(), Error> {
    fs::create_dir_all(p).map_err(|source| Error::Io {
        path: p.to_path_buf(),
        source,
    })
}

fn write(p: &Path, s: &str) -> Result<(), Error> {
    fs::write(p, s).map_err(|source| Error::Io {
        path: p.to_path_buf(),
        source,
    })
}
