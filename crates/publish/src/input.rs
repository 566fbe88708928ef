//! The builds to publish: `NAME.d/image.json`, the record every container build writes.
//!
//! The record names the image (os, release, variant, architecture, serial), its dates, and the
//! outputs that build made, relative to the directory holding `NAME.d`. Only what kiln
//! publishes is read; unknown keys are ignored, and fingerprints the record may carry are not
//! trusted: the tree's hashes are computed from the copied bytes. Every name that becomes a
//! path component or an index field is checked here, so nothing later can write outside the
//! tree or break an index line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{io_err, Error};

/// The part of `NAME.d/image.json` kiln publish reads (and keeps in the tree).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Distribution (`debian`).
    pub os: String,
    /// Release (`trixie`).
    pub release: String,
    /// Variant (`default`).
    pub variant: String,
    /// Debian architecture name (`amd64`).
    pub architecture: String,
    /// The build's serial (`20231114_2213`): the BUILD directory of the tree.
    pub serial: String,
    /// Human-readable description.
    #[serde(default)]
    pub description: String,
    /// Creation time, Unix seconds.
    pub creation_date: u64,
    /// Expiry time, Unix seconds.
    pub expiry_date: u64,
    /// The outputs this build made, by type (`lxc`, `incus`, `incus-vm`, `incus-unified`).
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
}

/// One file of a build, by its name in the tree's build directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Name in the build directory (`rootfs.tar.xz`).
    pub name: &'static str,
    /// Where it is now.
    pub path: PathBuf,
}

/// A build found from its name: the record and the files to copy.
#[derive(Debug, Clone)]
pub struct BuildInput {
    /// The name given on the command line.
    pub name: String,
    /// `NAME.d/image.json`.
    pub record_path: PathBuf,
    /// Its content.
    pub record: ImageRecord,
    /// The files, in the order they are copied.
    pub files: Vec<SourceFile>,
}

/// The files of each output type: (type, name in the build dir, name in the output).
/// Directory outputs hold several files; the unified tarball is the output itself (`""`).
const LAYOUT: &[(&str, &str, &str)] = &[
    ("lxc", "rootfs.tar.xz", "rootfs.tar.xz"),
    ("lxc", "meta.tar.xz", "meta.tar.xz"),
    ("incus", "incus.tar.xz", "incus.tar.xz"),
    ("incus", "rootfs.squashfs", "rootfs.squashfs"),
    ("incus-vm", "incus.tar.xz", "incus.tar.xz"),
    ("incus-vm", "disk.qcow2", "disk.qcow2"),
    ("incus-unified", "incus-unified.tar.gz", ""),
];

/// Whether `s` may be a path component and an index field: letters, digits and `._+~:-`, not
/// starting with a dot, at most 100 characters.
pub fn valid_component(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+~:-".contains(c))
}

impl ImageRecord {
    /// Checks every field that becomes a path or an index field.
    pub fn check(&self, path: &Path) -> Result<(), Error> {
        for (field, value) in [
            ("os", &self.os),
            ("release", &self.release),
            ("variant", &self.variant),
            ("architecture", &self.architecture),
            ("serial", &self.serial),
        ] {
            if !valid_component(value) {
                return Err(Error::Input {
                    path: path.to_path_buf(),
                    message: format!(
                        "field {field} is {value:?}: it must be 1-100 letters, digits or ._+~:- \
                         and not start with a dot"
                    ),
                });
            }
        }
        if self.creation_date == 0 {
            return Err(Error::Input {
                path: path.to_path_buf(),
                message: "creation_date is 0; rebuild the image with kiln".into(),
            });
        }
        Ok(())
    }

    /// The image this build is one of: (os, release, architecture, variant).
    pub fn key(&self) -> (String, String, String, String) {
        (
            self.os.clone(),
            self.release.clone(),
            self.architecture.clone(),
            self.variant.clone(),
        )
    }

    /// The build directory in the tree, relative to its root.
    pub fn rel_dir(&self) -> PathBuf {
        [
            "images",
            &self.os,
            &self.release,
            &self.architecture,
            &self.variant,
            &self.serial,
        ]
        .iter()
        .collect()
    }
}

impl BuildInput {
    /// Reads the build named `name` (the `-o` base: `deb` for `deb.d/image.json`).
    pub fn load(name: &str) -> Result<Self, Error> {
        let base = PathBuf::from(name);
        let record_path = PathBuf::from(format!("{name}.d")).join("image.json");
        let text = std::fs::read_to_string(&record_path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                Error::Input {
                    path: record_path.clone(),
                    message: format!(
                        "not found: {name} is not a container build (kiln build -t lxc, incus, \
                         incus-vm or incus-unified -o {name} writes it)"
                    ),
                }
            } else {
                Error::Io {
                    path: record_path.clone(),
                    source,
                }
            }
        })?;
        let record: ImageRecord = serde_json::from_str(&text).map_err(|e| Error::Input {
            path: record_path.clone(),
            message: format!("line {}: not a kiln image record: {e}", e.line()),
        })?;
        record.check(&record_path)?;
        let dir = base
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(PathBuf::new, Path::to_path_buf);
        let mut files = Vec::new();
        for (ty, rel) in &record.outputs {
            if !LAYOUT.iter().any(|(t, _, _)| t == ty) {
                continue; // another output type (oci, tar…): not published here
            }
            if rel.is_empty() || Path::new(rel).is_absolute() || rel.split('/').any(|c| c == "..") {
                return Err(Error::Input {
                    path: record_path.clone(),
                    message: format!(
                        "outputs.{ty} is {rel:?}: it must be a name relative to the directory \
                         holding {name}.d"
                    ),
                });
            }
            for (_, in_tree, in_output) in LAYOUT.iter().filter(|(t, _, _)| t == ty) {
                let path = if in_output.is_empty() {
                    dir.join(rel)
                } else {
                    dir.join(rel).join(in_output)
                };
                check_output_file(&path, ty, name, &record_path)?;
                files.push(SourceFile {
                    name: in_tree,
                    path,
                });
            }
        }
        // One metadata tarball per build directory: the container's and the VM's must agree.
        let metas: Vec<&SourceFile> = files.iter().filter(|f| f.name == "incus.tar.xz").collect();
        if let [a, b] = metas.as_slice() {
            if crate::tree::sha256_file(&a.path)? != crate::tree::sha256_file(&b.path)? {
                return Err(Error::Input {
                    path: b.path.clone(),
                    message: format!(
                        "differs from {}: a published build has one incus.tar.xz for its \
                         container and VM images; publish them from separate builds",
                        a.path.display()
                    ),
                });
            }
            let second = b.path.clone();
            files.retain(|f| f.path != second);
        }
        if files.is_empty() {
            return Err(Error::Input {
                path: record_path,
                message:
                    "lists no lxc, incus, incus-vm or incus-unified output: nothing to publish"
                        .into(),
            });
        }
        Ok(Self {
            name: name.to_string(),
            record_path,
            record,
            files,
        })
    }
}

/// Checks that `path`, a file of output `ty` of build `name`, is a regular file.
fn check_output_file(path: &Path, ty: &str, name: &str, record: &Path) -> Result<(), Error> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(Error::Input {
            path: path.to_path_buf(),
            message: format!("not a regular file (output {ty} of {name})"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Input {
            path: path.to_path_buf(),
            message: format!(
                "missing: {} lists output {ty}, which should hold it; rebuild {name}",
                record.display()
            ),
        }),
        Err(e) => Err(io_err(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_that_could_leave_the_tree_or_break_an_index_are_refused() {
        for bad in ["", ".", "..", "a/b", "a;b", ".hidden", "a b", "x\n"] {
            assert!(!valid_component(bad), "{bad:?}");
        }
        for good in ["debian", "20231114_22:13", "bookworm-backports", "1.0+b1"] {
            assert!(valid_component(good), "{good:?}");
        }
    }
}
