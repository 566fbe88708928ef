//! The matrix file: typed serde structs read with serde-saphyr, every struct closed
//! (`deny_unknown_fields`), so a misspelt key is an error with its line rather than a silently
//! ignored setting. Entries that later checks may reject are kept with their position
//! ([`Spanned`]) so those errors name the line too.
//!
//! ```yaml
//! env: {SOURCE_DATE_EPOCH: "1700000000"}   # every cell
//! args: [--checksum]                        # more kiln build flags, every cell
//! axes:
//!   distribution: [debian-minimal]          # the operating-system element
//!   release: [trixie, {value: bookworm, env: {DIB_APT_MINIMAL_CREATE_INTERFACES: "0"}}]
//!   arch: [amd64, arm64]                    # kiln build -a
//!   variant:                                # element sets
//!     - {name: vm, elements: [vm, cloud-init], outputs: qcow2}
//!     - {name: rootfs, elements: [], outputs: tar}
//!   outputs: [qcow2]                        # kiln build -t (one value: a comma list)
//! exclude: [{release: bookworm, arch: arm64}]
//! include: [{variant: vm, env: {DIB_BOOTLOADER_DEFAULT_CMDLINE: quiet}}]
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::Error;

/// The whole matrix file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixFile {
    /// Environment every cell gets (lowest precedence).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// More `kiln build` flags every cell gets (`-n`, `--checksum`, `--image-size 3`); `-o`,
    /// `-a` and `-t` belong to the matrix.
    #[serde(default)]
    pub args: Vec<String>,
    /// The axes whose product makes the cells.
    #[serde(default)]
    pub axes: Axes,
    /// Combinations to remove (applied before `include`).
    #[serde(default)]
    pub exclude: Vec<Spanned<Rule>>,
    /// Keys to add to matching combinations, or new combinations.
    #[serde(default)]
    pub include: Vec<Spanned<Rule>>,
}

/// The axes, in the fixed order that also orders a cell's id.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Axes {
    /// Operating-system elements (`debian-minimal`, `ubuntu-minimal`, …).
    pub distribution: Option<Vec<Spanned<Value>>>,
    /// Releases (`DIB_RELEASE`).
    pub release: Option<Vec<Spanned<Value>>>,
    /// Architectures (`kiln build -a`, Debian names).
    pub arch: Option<Vec<Spanned<Value>>>,
    /// Element sets.
    pub variant: Option<Vec<Spanned<Variant>>>,
    /// Output types (`kiln build -t`; one value may list several, comma separated).
    pub outputs: Option<Vec<Spanned<Value>>>,
}

/// One value of a plain axis: a name, or a name with the environment its cells get.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// `trixie`
    Name(String),
    /// `{value: trixie, env: {…}}`
    Full(FullValue),
}

/// The long form of an axis value.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullValue {
    /// The value.
    pub value: String,
    /// Environment of the cells with this value.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl Value {
    /// The value itself.
    pub fn name(&self) -> &str {
        match self {
            Self::Name(n) => n,
            Self::Full(f) => &f.value,
        }
    }

    /// The environment it brings (empty for the short form).
    pub fn env(&self) -> BTreeMap<String, String> {
        match self {
            Self::Name(_) => BTreeMap::new(),
            Self::Full(f) => f.env.clone(),
        }
    }
}

/// One value of the `variant` axis: a named element set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// The name (part of the cell id).
    pub name: String,
    /// Elements added after the distribution's element.
    #[serde(default)]
    pub elements: Vec<String>,
    /// Output types of this variant's cells when there is no `outputs` axis (comma list).
    pub outputs: Option<String>,
    /// More `kiln build` flags for this variant's cells, after the file's `args`.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment of this variant's cells.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// An `include` or `exclude` entry: axis values to match, and (include only) what to add.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// A distribution element.
    pub distribution: Option<String>,
    /// A release.
    pub release: Option<String>,
    /// An architecture.
    pub arch: Option<String>,
    /// A variant's name.
    pub variant: Option<String>,
    /// Output types (comma list).
    pub outputs: Option<String>,
    /// Include only: elements appended to the matching cells.
    #[serde(default)]
    pub elements: Vec<String>,
    /// Include only: environment of the matching cells (highest precedence).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// Reads and parses a matrix file.
pub fn read(path: &Path) -> Result<MatrixFile, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Parses the text of a matrix file; `path` names it in errors.
pub fn parse(path: &Path, text: &str) -> Result<MatrixFile, Error> {
    serde_saphyr::from_str::<MatrixFile>(text).map_err(|e| {
        let line = e
            .location()
            .and_then(|l| usize::try_from(l.line()).ok())
            .filter(|l| *l > 0);
        let rendered = e.without_snippet().to_string();
        let first = rendered
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("invalid YAML")
            .to_string();
        Error::Syntax {
            path: path.to_path_buf(),
            line,
            message: format!(
                "{first} (docs/matrix.md describes the matrix file: env, axes, exclude, include)"
            ),
        }
    })
}

/// The 1-based line of a spanned entry.
pub(crate) fn line_of<T>(s: &Spanned<T>) -> Option<usize> {
    usize::try_from(s.referenced.line()).ok().filter(|l| *l > 0)
}
