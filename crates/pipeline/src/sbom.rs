//! The image's software bill of materials: an SPDX 2.3 JSON document of the Debian packages
//! installed in the finished tree, written as `NAME.d/sbom.spdx.json`.
//!
//! What each package entry carries, and where it comes from:
//!
//! - name, version, architecture and source package: the tree's dpkg status
//!   (`/var/lib/dpkg/status`, packages whose status is `installed`);
//! - SHA256 of the `.deb` and its download location: apt's package lists
//!   (`/var/lib/apt/lists/*_Packages`), read by [`AptIndex::read`] *before* the cleanup phase
//!   empties them, matched by name, version and architecture, the location being the source's
//!   URI (from the tree's apt sources) joined with the index's `Filename`;
//! - declared licence: the `License:` fields of the package's machine-readable copyright file
//!   (`/usr/share/doc/PKG/copyright`, DEP-5). Debian's short names are not SPDX identifiers, so
//!   each becomes a `LicenseRef-` with an extracted-licensing entry naming it.
//!
//! What is not known is `NOASSERTION`, as SPDX allows. The document is deterministic: packages
//! sorted by name and architecture, identifiers derived from them, the namespace a digest of
//! the content, and the creation time `SOURCE_DATE_EPOCH` when that is set. Control data is
//! parsed with `deb822-fast`; every path inside the image is resolved with
//! [`kiln_sandbox::path::resolve_in_root`], so a symlink in the tree never leads out of it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use deb822_fast::{Deb822, Paragraph};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The file name of the SBOM inside `NAME.d/`.
pub const FILE_NAME: &str = "sbom.spdx.json";

/// The dpkg status file, inside the image.
const STATUS: &str = "var/lib/dpkg/status";
/// apt's downloaded package lists, inside the image.
const LISTS: &str = "var/lib/apt/lists";
/// What SPDX says for a value that is not known.
const NOASSERTION: &str = "NOASSERTION";

/// A problem making the SBOM; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum SbomError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A control file (dpkg status, apt list, sources) is not valid deb822.
    #[error("{path}: not valid Debian control data: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A stanza of the dpkg status lacks a field every installed package has.
    #[error("{path}: package stanza {index} has no {field} field")]
    MissingField {
        /// The status file.
        path: PathBuf,
        /// The stanza's position (1-based).
        index: usize,
        /// The field.
        field: &'static str,
    },
    /// A path inside the image could not be resolved (a symlink loop).
    #[error(transparent)]
    Resolve(#[from] kiln_sandbox::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SbomError + '_ {
    move |source| SbomError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn parse_err(path: &Path, e: &deb822_fast::Error) -> SbomError {
    SbomError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// One installed package, as the dpkg status records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledPackage {
    /// `Package`.
    pub name: String,
    /// `Version`.
    pub version: String,
    /// `Architecture`.
    pub architecture: String,
    /// The source package's name (`Source`, else the package's own).
    pub source: String,
    /// The source package's version (from `Source: NAME (VERSION)`, else the package's).
    pub source_version: String,
}

/// The installed packages of the tree at `root`, sorted by name and architecture; `None` when
/// the tree has no dpkg status (not a Debian-family tree).
pub fn installed_packages(root: &Path) -> Result<Option<Vec<InstalledPackage>>, SbomError> {
    let path = kiln_sandbox::path::resolve_in_root(root, Path::new(STATUS))?;
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path)(e)),
    };
    parse_status(&text, &path).map(Some)
}

/// The installed packages of a dpkg status file's text (`path` names it in errors).
pub fn parse_status(text: &str, path: &Path) -> Result<Vec<InstalledPackage>, SbomError> {
    let doc: Deb822 = text.parse().map_err(|e| parse_err(path, &e))?;
    let mut out = Vec::new();
    for (i, p) in doc.iter().enumerate() {
        let installed = p
            .get("Status")
            .and_then(|s| s.split_whitespace().last())
            .is_some_and(|s| s == "installed");
        if !installed {
            continue;
        }
        let field = |field: &'static str| {
            p.get(field)
                .map(|v| v.trim().to_string())
                .ok_or_else(|| SbomError::MissingField {
                    path: path.to_path_buf(),
                    index: i + 1,
                    field,
                })
        };
        let name = field("Package")?;
        let version = field("Version")?;
        let architecture = field("Architecture")?;
        let (source, source_version) = match p.get("Source").map(str::trim) {
            Some(s) if !s.is_empty() => match s.split_once('(') {
                Some((n, v)) => (
                    n.trim().to_string(),
                    v.trim_end_matches(')').trim().to_string(),
                ),
                None => (s.to_string(), version.clone()),
            },
            _ => (name.clone(), version.clone()),
        };
        out.push(InstalledPackage {
            name,
            version,
            architecture,
            source,
            source_version,
        });
    }
    out.sort_by(|a, b| (&a.name, &a.architecture).cmp(&(&b.name, &b.architecture)));
    Ok(out)
}

/// Where a `.deb` came from: its SHA256 and download location, from apt's lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    /// The `SHA256` field of the package's index stanza.
    pub sha256: Option<String>,
    /// The source's URI joined with the stanza's `Filename`, when the list's source is known.
    pub location: Option<String>,
}

/// The `.deb` files apt knew of, by (name, version, architecture): read from the tree's apt
/// lists before the cleanup phase removes them.
#[derive(Debug, Default, Clone)]
pub struct AptIndex {
    debs: BTreeMap<(String, String, String), Download>,
}

impl AptIndex {
    /// Reads every uncompressed `*_Packages` list under the tree's `/var/lib/apt/lists`, with
    /// the tree's apt sources to turn each list back into its URI. No lists: an empty index.
    pub fn read(root: &Path) -> Result<Self, SbomError> {
        let lists = kiln_sandbox::path::resolve_in_root(root, Path::new(LISTS))?;
        let mut names = match fs::read_dir(&lists) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with("_Packages"))
                .collect::<Vec<_>>(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(io_err(&lists)(e)),
        };
        names.sort();
        let uris = source_uris(root)?;
        let mut index = Self::default();
        for name in names {
            let path = lists.join(&name);
            if !path.is_file() {
                continue;
            }
            let base = list_base_uri(&name, &uris);
            let file = fs::File::open(&path).map_err(io_err(&path))?;
            for p in Deb822::iter_paragraphs_from_reader(BufReader::new(file)) {
                let p = p.map_err(|e| parse_err(&path, &e))?;
                index.add(&p, base.as_deref());
            }
        }
        Ok(index)
    }

    /// The index of a locked build: the lock's own stanzas (SHA256 as locked), located under
    /// `base`, the archive URI, when the lock names only one.
    pub fn from_lock(lock: &crate::lock::Lock) -> Self {
        let mut uris: Vec<&str> = lock
            .meta
            .suites
            .iter()
            .map(|s| s.uri.trim_end_matches('/'))
            .collect();
        uris.dedup();
        let base = match uris.as_slice() {
            [one] => Some(*one),
            _ => None,
        };
        let mut index = Self::default();
        for stanza in &lock.stanzas {
            if let Ok(doc) = stanza.text.parse::<Deb822>() {
                for p in doc.iter() {
                    index.add(p, base);
                }
            }
        }
        index
    }

    /// Adds one index stanza (the first list naming a package wins, as lists are sorted).
    fn add(&mut self, p: &Paragraph, base: Option<&str>) {
        let (Some(name), Some(version), Some(arch)) =
            (p.get("Package"), p.get("Version"), p.get("Architecture"))
        else {
            return;
        };
        let location = match (base, p.get("Filename")) {
            (Some(b), Some(f)) => Some(format!(
                "{}/{}",
                b.trim_end_matches('/'),
                f.trim().trim_start_matches('/')
            )),
            _ => None,
        };
        let sha256 = p
            .get("SHA256")
            .map(str::trim)
            .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_ascii_lowercase);
        self.debs
            .entry((
                name.trim().into(),
                version.trim().into(),
                arch.trim().into(),
            ))
            .or_insert(Download { sha256, location });
    }

    /// What the index knows of `pkg`'s `.deb`.
    pub fn get(&self, pkg: &InstalledPackage) -> Option<&Download> {
        self.debs.get(&(
            pkg.name.clone(),
            pkg.version.clone(),
            pkg.architecture.clone(),
        ))
    }

    /// How many `.deb` files the index knows.
    pub fn len(&self) -> usize {
        self.debs.len()
    }

    /// Whether the index is empty (no lists were left in the tree).
    pub fn is_empty(&self) -> bool {
        self.debs.is_empty()
    }
}

/// The binary-package URIs of the tree's apt sources (one-line `.list` files and deb822
/// `.sources` files).
fn source_uris(root: &Path) -> Result<Vec<String>, SbomError> {
    let mut files = vec![kiln_sandbox::path::resolve_in_root(
        root,
        Path::new("etc/apt/sources.list"),
    )?];
    let dir = kiln_sandbox::path::resolve_in_root(root, Path::new("etc/apt/sources.list.d"))?;
    if let Ok(rd) = fs::read_dir(&dir) {
        let mut more: Vec<PathBuf> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    let mut uris = Vec::new();
    for f in files {
        let name = f.to_string_lossy();
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        if name.ends_with(".sources") {
            let doc: Deb822 = text.parse().map_err(|e| parse_err(&f, &e))?;
            for p in doc.iter() {
                let deb = p
                    .get("Types")
                    .is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
                if deb {
                    if let Some(u) = p.get("URIs") {
                        uris.extend(u.split_whitespace().map(String::from));
                    }
                }
            }
        } else if name.ends_with(".list") {
            uris.extend(text.lines().filter_map(one_line_uri));
        }
    }
    Ok(uris)
}

/// The URI of a one-line `deb [options] URI suite components` source line.
fn one_line_uri(line: &str) -> Option<String> {
    let mut words = line.split_whitespace();
    if words.next()? != "deb" {
        return None;
    }
    let mut w = words.next()?;
    if w.starts_with('[') {
        while !w.ends_with(']') {
            w = words.next()?;
        }
        w = words.next()?;
    }
    Some(w.to_string())
}

/// The name apt gives a URI's files in its lists directory: scheme and credentials dropped,
/// `_` escaped, `/` turned into `_`.
fn uri_file_prefix(uri: &str) -> String {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    let rest = match rest.split_once('/') {
        Some((host, path)) => format!("{}/{path}", host.rsplit_once('@').map_or(host, |(_, h)| h)),
        None => rest.rsplit_once('@').map_or(rest, |(_, h)| h).to_string(),
    };
    let escaped = rest.trim_end_matches('/').replace('_', "%5f");
    escaped.replace('/', "_")
}

/// The source URI whose lists file `list` is (the longest match), if any.
fn list_base_uri(list: &str, uris: &[String]) -> Option<String> {
    uris.iter()
        .filter(|u| list.starts_with(&format!("{}_", uri_file_prefix(u))))
        .max_by_key(|u| uri_file_prefix(u).len())
        .cloned()
}

/// The declared licence of a package: its DEP-5 copyright file's `License:` short names, as
/// an SPDX expression of `LicenseRef-`s, and the short names behind each reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredLicense {
    /// The SPDX licence expression.
    pub expression: String,
    /// Each `LicenseRef-` used, with the Debian short names it stands for.
    pub refs: BTreeMap<String, BTreeSet<String>>,
}

/// The declared licence of package `name` in the tree at `root`, when its copyright file is
/// machine-readable; `None` otherwise (no file, free-form, unreadable).
pub fn declared_license(root: &Path, name: &str) -> Option<DeclaredLicense> {
    let rel = PathBuf::from("usr/share/doc").join(name).join("copyright");
    let path = kiln_sandbox::path::resolve_in_root(root, &rel).ok()?;
    let text = fs::read_to_string(path).ok()?;
    license_of_copyright(&text)
}

/// The declared licence of a copyright file's text: `None` unless it is machine-readable
/// (a `Format:` header naming the copyright format) with at least one `Files` licence.
pub fn license_of_copyright(text: &str) -> Option<DeclaredLicense> {
    let doc: Deb822 = text.parse().ok()?;
    let mut paras = doc.iter();
    let header = paras.next()?;
    if !header
        .get("Format")
        .is_some_and(|f| f.contains("copyright-format"))
    {
        return None;
    }
    let mut terms = BTreeSet::new();
    let mut refs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in doc.iter().skip(1).filter(|p| p.get("Files").is_some()) {
        let Some(first) = p.get("License").and_then(|l| l.lines().next()) else {
            continue;
        };
        if let Some(term) = license_term(first.trim(), &mut refs) {
            terms.insert(term);
        }
    }
    if terms.is_empty() {
        return None;
    }
    let many = terms.len() > 1;
    let expression = terms
        .into_iter()
        .map(|t| {
            if many && (t.contains(" OR ") || t.contains(" AND ")) {
                format!("({t})")
            } else {
                t
            }
        })
        .collect::<Vec<_>>()
        .join(" AND ");
    Some(DeclaredLicense { expression, refs })
}

/// One `License:` first line as an SPDX expression: `A or B and C` keeps its operators; a
/// line that is not a plain alternation of names and operators (an exception clause, say) is
/// one reference as a whole.
fn license_term(line: &str, refs: &mut BTreeMap<String, BTreeSet<String>>) -> Option<String> {
    let words: Vec<&str> = line
        .split_whitespace()
        .map(|w| w.trim_matches(','))
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        return None;
    }
    let op = |w: &str| match w.to_ascii_lowercase().as_str() {
        "or" => Some("OR"),
        "and" => Some("AND"),
        _ => None,
    };
    let alternates = words.len() % 2 == 1
        && words
            .iter()
            .enumerate()
            .all(|(i, w)| (i % 2 == 1) == op(w).is_some());
    let mut add = |name: &str| {
        let r = license_ref(name);
        refs.entry(r.clone()).or_default().insert(name.to_string());
        r
    };
    if !alternates {
        return Some(add(&words.join(" ")));
    }
    Some(
        words
            .iter()
            .map(|w| op(w).map_or_else(|| add(w), String::from))
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// The `LicenseRef-` for a Debian short licence name: `+` (or later) spelled out, anything
/// outside SPDX's idstring characters turned into `-`.
fn license_ref(name: &str) -> String {
    let mut id = String::from("LicenseRef-");
    for c in name.chars() {
        match c {
            '+' => id.push_str("-or-later"),
            c if c.is_ascii_alphanumeric() || c == '.' || c == '-' => id.push(c),
            _ => id.push('-'),
        }
    }
    id
}

/// An SPDX 2.3 document (the fields kiln writes, in SPDX's JSON key names and order).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpdxDocument {
    /// Always `SPDX-2.3`.
    pub spdx_version: String,
    /// Always `CC0-1.0`.
    pub data_license: String,
    /// Always `SPDXRef-DOCUMENT`.
    #[serde(rename = "SPDXID")]
    pub spdx_id: String,
    /// The image's name.
    pub name: String,
    /// A URI unique to this document (derived from its content).
    pub document_namespace: String,
    /// Who made it, and when.
    pub creation_info: CreationInfo,
    /// The image, then every installed package.
    pub packages: Vec<SpdxPackage>,
    /// The document describes the image; the image contains each package.
    pub relationships: Vec<Relationship>,
    /// The `LicenseRef-`s the packages use.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub has_extracted_licensing_infos: Vec<ExtractedLicense>,
}

/// SPDX `creationInfo`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreationInfo {
    /// UTC, `YYYY-MM-DDThh:mm:ssZ`.
    pub created: String,
    /// `Tool: kiln-VERSION`.
    pub creators: Vec<String>,
}

/// One SPDX package.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpdxPackage {
    /// `SPDXRef-…`, unique in the document.
    #[serde(rename = "SPDXID")]
    pub spdx_id: String,
    /// The package's name.
    pub name: String,
    /// Its version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_info: Option<String>,
    /// Where its `.deb` was fetched from, or `NOASSERTION`.
    pub download_location: String,
    /// Always false: the files inside are not listed.
    pub files_analyzed: bool,
    /// The `.deb`'s SHA256, when known.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checksums: Vec<Checksum>,
    /// Where it was built from (the source package).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_info: Option<String>,
    /// Always `NOASSERTION`: kiln concludes nothing about licences.
    pub license_concluded: String,
    /// What the package's copyright file declares, or `NOASSERTION`.
    pub license_declared: String,
    /// Always `NOASSERTION`.
    pub copyright_text: String,
    /// `OPERATING-SYSTEM` for the image, `LIBRARY`-like purposes are not guessed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_package_purpose: Option<String>,
    /// The package URL (`pkg:deb/…`) with the architecture.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub external_refs: Vec<ExternalRef>,
}

/// An SPDX checksum.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Checksum {
    /// `SHA256`.
    pub algorithm: String,
    /// Lower-case hex.
    pub checksum_value: String,
}

/// An SPDX external reference.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalRef {
    /// `PACKAGE-MANAGER`.
    pub reference_category: String,
    /// `purl`.
    pub reference_type: String,
    /// The package URL.
    pub reference_locator: String,
}

/// An SPDX relationship.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Relationship {
    /// The subject.
    pub spdx_element_id: String,
    /// `DESCRIBES`, `CONTAINS`.
    pub relationship_type: String,
    /// The object.
    pub related_spdx_element: String,
}

/// An SPDX extracted licensing info: what a `LicenseRef-` stands for.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtractedLicense {
    /// The `LicenseRef-`.
    pub license_id: String,
    /// The Debian short names behind it.
    pub extracted_text: String,
    /// The first short name.
    pub name: String,
}

/// The SPDX document of image `image_name` holding `packages`, with what `index` and
/// `licenses` know of each; created at `created`.
pub fn document(
    image_name: &str,
    packages: &[InstalledPackage],
    index: &AptIndex,
    licenses: &BTreeMap<String, DeclaredLicense>,
    created: SystemTime,
) -> SpdxDocument {
    const IMAGE_ID: &str = "SPDXRef-Image";
    let mut spdx_packages = vec![SpdxPackage {
        spdx_id: IMAGE_ID.into(),
        name: image_name.into(),
        version_info: None,
        download_location: NOASSERTION.into(),
        files_analyzed: false,
        checksums: Vec::new(),
        source_info: None,
        license_concluded: NOASSERTION.into(),
        license_declared: NOASSERTION.into(),
        copyright_text: NOASSERTION.into(),
        primary_package_purpose: Some("OPERATING-SYSTEM".into()),
        external_refs: Vec::new(),
    }];
    let mut relationships = vec![Relationship {
        spdx_element_id: "SPDXRef-DOCUMENT".into(),
        relationship_type: "DESCRIBES".into(),
        related_spdx_element: IMAGE_ID.into(),
    }];
    let mut ids = BTreeSet::new();
    let mut refs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in packages {
        let base = format!(
            "SPDXRef-deb-{}-{}",
            id_part(&p.name),
            id_part(&p.architecture)
        );
        let mut id = base.clone();
        let mut n = 2;
        while !ids.insert(id.clone()) {
            id = format!("{base}-{n}");
            n += 1;
        }
        let dl = index.get(p);
        let lic = licenses.get(&p.name);
        if let Some(l) = lic {
            for (r, names) in &l.refs {
                refs.entry(r.clone())
                    .or_default()
                    .extend(names.iter().cloned());
            }
        }
        spdx_packages.push(SpdxPackage {
            spdx_id: id.clone(),
            name: p.name.clone(),
            version_info: Some(p.version.clone()),
            download_location: dl
                .and_then(|d| d.location.clone())
                .unwrap_or_else(|| NOASSERTION.into()),
            files_analyzed: false,
            checksums: dl
                .and_then(|d| d.sha256.clone())
                .map(|v| Checksum {
                    algorithm: "SHA256".into(),
                    checksum_value: v,
                })
                .into_iter()
                .collect(),
            source_info: Some(format!(
                "built from Debian source package {} version {}",
                p.source, p.source_version
            )),
            license_concluded: NOASSERTION.into(),
            license_declared: lic.map_or_else(|| NOASSERTION.into(), |l| l.expression.clone()),
            copyright_text: NOASSERTION.into(),
            primary_package_purpose: None,
            external_refs: vec![ExternalRef {
                reference_category: "PACKAGE-MANAGER".into(),
                reference_type: "purl".into(),
                reference_locator: purl(p),
            }],
        });
        relationships.push(Relationship {
            spdx_element_id: IMAGE_ID.into(),
            relationship_type: "CONTAINS".into(),
            related_spdx_element: id,
        });
    }
    let extracted = refs
        .into_iter()
        .map(|(license_id, names)| {
            let list = names.iter().cloned().collect::<Vec<_>>();
            ExtractedLicense {
                extracted_text: format!(
                    "The licence named {} in the machine-readable Debian copyright files \
                     (/usr/share/doc/*/copyright) of the image.",
                    list.iter()
                        .map(|n| format!("\"{n}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                name: list.first().cloned().unwrap_or_default(),
                license_id,
            }
        })
        .collect();
    let mut doc = SpdxDocument {
        spdx_version: "SPDX-2.3".into(),
        data_license: "CC0-1.0".into(),
        spdx_id: "SPDXRef-DOCUMENT".into(),
        name: image_name.into(),
        document_namespace: String::new(),
        creation_info: CreationInfo {
            created: humantime::format_rfc3339_seconds(created).to_string(),
            creators: vec![format!("Tool: kiln-{}", env!("CARGO_PKG_VERSION"))],
        },
        packages: spdx_packages,
        relationships,
        has_extracted_licensing_infos: extracted,
    };
    doc.document_namespace = namespace(&doc);
    doc
}

/// A `urn:uuid:` from the digest of the document's content (namespace left empty), so two
/// different images never share one and the same image always has the same.
fn namespace(doc: &SpdxDocument) -> String {
    let bytes = serde_json::to_vec(doc).unwrap_or_default();
    let h = hex::encode(Sha256::digest(&bytes));
    format!(
        "urn:uuid:{}-{}-5{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// A package name or architecture as part of an SPDX identifier (letters, digits, `.`, `-`).
fn id_part(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '+' => 'P',
            c if c.is_ascii_alphanumeric() || c == '.' || c == '-' => c,
            _ => '-',
        })
        .collect()
}

/// The package URL of an installed Debian package.
fn purl(p: &InstalledPackage) -> String {
    let enc = |s: &str| {
        s.chars()
            .map(|c| match c {
                c if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '~') => {
                    c.to_string()
                }
                c => format!("%{:02X}", c as u32),
            })
            .collect::<String>()
    };
    format!(
        "pkg:deb/debian/{}@{}?arch={}",
        enc(&p.name),
        enc(&p.version),
        enc(&p.architecture)
    )
}

/// The creation time: `SOURCE_DATE_EPOCH` seconds when given, else now.
pub fn created_at(source_date_epoch: Option<u64>) -> SystemTime {
    source_date_epoch.map_or_else(SystemTime::now, |s| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    })
}

/// Makes the SBOM of the tree at `root` (its apt lists already read into `index`) and writes
/// it to `dest` (a temporary file renamed into place). Returns how many packages it lists, or
/// `None` when the tree has no dpkg status and nothing was written.
pub fn write(
    root: &Path,
    image_name: &str,
    index: &AptIndex,
    source_date_epoch: Option<u64>,
    dest: &Path,
) -> Result<Option<usize>, SbomError> {
    let Some(packages) = installed_packages(root)? else {
        return Ok(None);
    };
    let licenses = packages
        .iter()
        .filter_map(|p| declared_license(root, &p.name).map(|l| (p.name.clone(), l)))
        .collect();
    let doc = document(
        image_name,
        &packages,
        index,
        &licenses,
        created_at(source_date_epoch),
    );
    let mut json = serde_json::to_string_pretty(&doc).map_err(|e| SbomError::Io {
        path: dest.to_path_buf(),
        source: e.into(),
    })?;
    json.push('\n');
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let tmp = dest.with_extension("json.kiln-new");
    fs::write(&tmp, json).map_err(io_err(&tmp))?;
    if let Err(e) = fs::rename(&tmp, dest) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(dest)(e));
    }
    Ok(Some(packages.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS_FIXTURE: &str = include_str!("../testdata/sbom/status");
    const AMD64_LIST: &str = "mirror.example_debian_dists_stable_main_binary-amd64_Packages";
    const I386_LIST: &str = "mirror.example_debian_dists_stable_main_binary-i386_Packages";

    fn put(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    /// A finished tree: the fixture status, two apt lists of one source, copyright files
    /// (machine-readable, free-form, one reached through a symlinked doc directory).
    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        put(r, STATUS, STATUS_FIXTURE);
        let lists = format!("{LISTS}/");
        put(
            r,
            &format!("{lists}{AMD64_LIST}"),
            include_str!("../testdata/sbom/Packages-amd64"),
        );
        put(
            r,
            &format!("{lists}{I386_LIST}"),
            include_str!("../testdata/sbom/Packages-i386"),
        );
        put(r, &format!("{lists}lock"), "");
        put(
            r,
            "etc/apt/sources.list.d/default.list",
            "# the image's sources\ndeb [arch=amd64,i386 trusted=yes] http://mirror.example/debian stable main\n",
        );
        put(
            r,
            "usr/share/doc/libc6/copyright",
            include_str!("../testdata/sbom/copyright-dep5"),
        );
        put(
            r,
            "usr/share/doc/gcc-12-base/copyright",
            include_str!("../testdata/sbom/copyright-gcc"),
        );
        put(
            r,
            "usr/share/doc/base-files/copyright",
            include_str!("../testdata/sbom/copyright-freeform"),
        );
        std::os::unix::fs::symlink("gcc-12-base", r.join("usr/share/doc/libstdc++6")).unwrap();
        // A link that would leave the tree: resolved inside it, where there is no copyright.
        std::os::unix::fs::symlink(
            "/../../../usr/share/doc/none",
            r.join("usr/share/doc/tzdata"),
        )
        .unwrap();
        t
    }

    #[test]
    fn status_lists_installed_packages_sorted_with_their_source() {
        let pkgs = parse_status(STATUS_FIXTURE, Path::new("status")).unwrap();
        let names: Vec<String> = pkgs
            .iter()
            .map(|p| format!("{}:{} {}", p.name, p.architecture, p.version))
            .collect();
        assert_eq!(
            names,
            [
                "base-files:amd64 12.4+deb12u5",
                "libc6:amd64 2.36-9+deb12u4",
                "libc6:i386 2.36-9+deb12u4",
                "libstdc++6:amd64 12.2.0-14",
                "tzdata:all 2024a-0+deb12u1",
                "util-linux:amd64 2.38.1-5+b1",
            ]
        );
        let src = |n: &str| {
            let p = pkgs.iter().find(|p| p.name == n).unwrap();
            format!("{} {}", p.source, p.source_version)
        };
        assert_eq!(src("base-files"), "base-files 12.4+deb12u5");
        assert_eq!(src("libc6"), "glibc 2.36-9+deb12u4");
        assert_eq!(src("libstdc++6"), "gcc-12 12.2.0-14");
        assert_eq!(src("util-linux"), "util-linux 2.38.1-5");
    }

    #[test]
    fn a_stanza_without_version_is_an_error_naming_the_file() {
        let text = "Package: a\nStatus: install ok installed\nArchitecture: all\n";
        let e = parse_status(text, Path::new("/img/var/lib/dpkg/status")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/img/var/lib/dpkg/status: package stanza 1 has no Version field"
        );
    }

    #[test]
    fn apt_index_gives_each_deb_its_sha256_and_location() {
        let t = tree();
        let index = AptIndex::read(t.path()).unwrap();
        assert_eq!(index.len(), 6);
        let pkgs = installed_packages(t.path()).unwrap().unwrap();
        let get = |n: &str, a: &str| {
            let p = pkgs
                .iter()
                .find(|p| p.name == n && p.architecture == a)
                .unwrap();
            index.get(p).cloned()
        };
        // The installed version's stanza, not the older one beside it.
        assert_eq!(
            get("libc6", "amd64").unwrap(),
            Download {
                sha256: Some("3".repeat(64)),
                location: Some(
                    "http://mirror.example/debian/pool/main/g/glibc/libc6_2.36-9+deb12u4_amd64.deb"
                        .into()
                ),
            }
        );
        assert_eq!(get("libc6", "i386").unwrap().sha256, Some("6".repeat(64)));
        assert_eq!(get("tzdata", "all"), None);
    }

    #[test]
    fn lists_of_an_unknown_source_keep_their_checksums_without_a_location() {
        let t = tree();
        fs::remove_file(t.path().join("etc/apt/sources.list.d/default.list")).unwrap();
        let index = AptIndex::read(t.path()).unwrap();
        let pkgs = installed_packages(t.path()).unwrap().unwrap();
        let d = index.get(&pkgs[0]).unwrap();
        assert_eq!(d.sha256, Some("1".repeat(64)));
        assert_eq!(d.location, None);
    }

    #[test]
    fn no_lists_give_an_empty_index() {
        let t = tempfile::tempdir().unwrap();
        assert!(AptIndex::read(t.path()).unwrap().is_empty());
    }

    #[test]
    fn apt_list_names_match_their_source_uri() {
        assert_eq!(
            uri_file_prefix("http://user:pw@mirror.example:8080/de_bian/"),
            "mirror.example:8080_de%5fbian"
        );
        let uris = vec![
            "http://mirror.example/debian".to_string(),
            "http://mirror.example/debian-security".to_string(),
        ];
        assert_eq!(
            list_base_uri(
                "mirror.example_debian-security_dists_stable-security_main_binary-amd64_Packages",
                &uris
            ),
            Some("http://mirror.example/debian-security".into())
        );
        assert_eq!(list_base_uri("other.example_x_Packages", &uris), None);
        assert_eq!(
            one_line_uri("deb [ signed-by=/k.gpg ] http://m.example/d stable main"),
            Some("http://m.example/d".into())
        );
        assert_eq!(one_line_uri("deb-src http://m.example/d stable main"), None);
    }

    #[test]
    fn sources_in_deb822_format_are_read() {
        let t = tree();
        fs::remove_file(t.path().join("etc/apt/sources.list.d/default.list")).unwrap();
        put(
            t.path(),
            "etc/apt/sources.list.d/debian.sources",
            "Types: deb deb-src\nURIs: http://mirror.example/debian\nSuites: stable\nComponents: main\n",
        );
        let index = AptIndex::read(t.path()).unwrap();
        let pkgs = installed_packages(t.path()).unwrap().unwrap();
        assert_eq!(
            index.get(&pkgs[0]).unwrap().location.as_deref(),
            Some("http://mirror.example/debian/pool/main/b/base-files/base-files_12.4+deb12u5_amd64.deb")
        );
    }

    #[test]
    fn machine_readable_copyright_becomes_a_licence_expression() {
        let l = license_of_copyright(include_str!("../testdata/sbom/copyright-dep5")).unwrap();
        assert_eq!(
            l.expression,
            "(LicenseRef-GPL-2-or-later OR LicenseRef-Artistic) AND \
             LicenseRef-GPL-2-or-later-with-OpenSSL-exception AND LicenseRef-LGPL-2.1-or-later"
        );
        let names: Vec<_> = l.refs.values().flatten().cloned().collect();
        assert_eq!(
            names,
            [
                "Artistic",
                "GPL-2+",
                "GPL-2+ with OpenSSL exception",
                "LGPL-2.1+"
            ]
        );
        assert_eq!(
            license_of_copyright(include_str!("../testdata/sbom/copyright-freeform")),
            None
        );
    }

    #[test]
    fn document_carries_what_is_known_and_noassertion_otherwise() {
        let t = tree();
        let dest = t.path().join("out/img.d").join(FILE_NAME);
        let n = write(
            t.path(),
            "img",
            &AptIndex::read(t.path()).unwrap(),
            Some(1_700_000_000),
            &dest,
        )
        .unwrap();
        assert_eq!(n, Some(6));
        let text = fs::read_to_string(&dest).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["spdxVersion"], "SPDX-2.3");
        assert_eq!(v["SPDXID"], "SPDXRef-DOCUMENT");
        assert_eq!(v["creationInfo"]["created"], "2023-11-14T22:13:20Z");
        assert!(v["documentNamespace"]
            .as_str()
            .unwrap()
            .starts_with("urn:uuid:"));
        let pkgs = v["packages"].as_array().unwrap();
        assert_eq!(pkgs.len(), 7);
        assert_eq!(pkgs[0]["SPDXID"], "SPDXRef-Image");
        let ids: BTreeSet<&str> = pkgs.iter().map(|p| p["SPDXID"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 7);
        let pkg = |id: &str| pkgs.iter().find(|p| p["SPDXID"] == id).unwrap();
        let libc = pkg("SPDXRef-deb-libc6-i386");
        assert_eq!(libc["versionInfo"], "2.36-9+deb12u4");
        assert_eq!(libc["checksums"][0]["algorithm"], "SHA256");
        assert_eq!(libc["checksums"][0]["checksumValue"], "6".repeat(64));
        assert_eq!(
            libc["downloadLocation"],
            "http://mirror.example/debian/pool/main/g/glibc/libc6_2.36-9+deb12u4_i386.deb"
        );
        assert_eq!(
            libc["sourceInfo"],
            "built from Debian source package glibc version 2.36-9+deb12u4"
        );
        assert_eq!(
            libc["externalRefs"][0]["referenceLocator"],
            "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=i386"
        );
        // Through the symlinked doc directory.
        let stdcxx = pkg("SPDXRef-deb-libstdcPP6-amd64");
        assert_eq!(stdcxx["licenseDeclared"], "LicenseRef-GPL-3-or-later");
        // Free-form copyright, no list entry, a doc link that would leave the tree.
        let base = pkg("SPDXRef-deb-base-files-amd64");
        assert_eq!(base["licenseDeclared"], "NOASSERTION");
        let tz = pkg("SPDXRef-deb-tzdata-all");
        assert_eq!(tz["downloadLocation"], "NOASSERTION");
        assert_eq!(tz["licenseDeclared"], "NOASSERTION");
        assert!(tz.get("checksums").is_none());
        // Every LicenseRef used is declared.
        let declared: BTreeSet<&str> = v["hasExtractedLicensingInfos"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["licenseId"].as_str().unwrap())
            .collect();
        assert_eq!(declared.len(), 5);
        for p in pkgs {
            for word in p["licenseDeclared"]
                .as_str()
                .unwrap()
                .split([' ', '(', ')'])
            {
                if word.starts_with("LicenseRef-") {
                    assert!(declared.contains(word), "{word} undeclared");
                }
            }
        }
        let rels = v["relationships"].as_array().unwrap();
        assert_eq!(rels.len(), 7);
        assert_eq!(rels[0]["relationshipType"], "DESCRIBES");
        assert!(!dest.with_extension("json.kiln-new").exists());
    }

    #[test]
    fn the_same_tree_gives_the_same_bytes_and_another_image_another_namespace() {
        let t = tree();
        let index = AptIndex::read(t.path()).unwrap();
        let first = t.path().join("a.json");
        let again = t.path().join("b.json");
        let other = t.path().join("c.json");
        write(t.path(), "img", &index, Some(1), &first).unwrap();
        write(t.path(), "img", &index, Some(1), &again).unwrap();
        write(t.path(), "other", &index, Some(1), &other).unwrap();
        assert_eq!(fs::read(&first).unwrap(), fs::read(&again).unwrap());
        let ns = |p: &Path| {
            let v: serde_json::Value =
                serde_json::from_str(&fs::read_to_string(p).unwrap()).unwrap();
            v["documentNamespace"].as_str().unwrap().to_string()
        };
        assert_ne!(ns(&first), ns(&other));
    }

    #[test]
    fn a_tree_without_dpkg_gets_no_sbom() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join(FILE_NAME);
        let n = write(t.path(), "img", &AptIndex::default(), None, &dest).unwrap();
        assert_eq!(n, None);
        assert!(!dest.exists());
    }

    #[test]
    fn an_unreadable_status_fails_naming_it() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join(STATUS)).unwrap();
        let e = installed_packages(t.path()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&t.path().join(STATUS).display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn a_locked_build_takes_checksums_and_locations_from_its_lock() {
        let sha = "ab".repeat(32);
        let text = format!("Package: zlib1g\nVersion: 1:1.3\nArchitecture: amd64\nFilename: pool/main/z/zlib1g_1.3_amd64.deb\nSize: 3\nSHA256: {sha}\n");
        let stanzas = crate::lock::parse_index(&text, Path::new("kiln.lock"), "re-lock").unwrap();
        let suite = |uri: &str| crate::lock::LockedSuite {
            uri: uri.into(),
            suite: "stable".into(),
            components: vec!["main".into()],
            inrelease_sha256: "x".into(),
        };
        let mut lock = crate::lock::Lock {
            stanzas,
            meta: crate::lock::LockMeta {
                locked: "2026-01-02T03:04:05Z".into(),
                architectures: vec!["amd64".into()],
                elements: Vec::new(),
                packages_sha256: String::new(),
                suites: vec![suite("http://m/debian/")],
            },
            origin: BTreeMap::new(),
        };
        let pkg = InstalledPackage {
            name: "zlib1g".into(),
            version: "1:1.3".into(),
            architecture: "amd64".into(),
            source: "zlib".into(),
            source_version: "1:1.3".into(),
        };
        let d = AptIndex::from_lock(&lock).get(&pkg).cloned().unwrap();
        assert_eq!(d.sha256.as_deref(), Some(sha.as_str()));
        assert_eq!(
            d.location.as_deref(),
            Some("http://m/debian/pool/main/z/zlib1g_1.3_amd64.deb")
        );
        // Two archives: which one served the file is not known, the checksum is.
        lock.meta.suites.push(suite("http://s/debian-security"));
        let d = AptIndex::from_lock(&lock).get(&pkg).cloned().unwrap();
        assert_eq!(d.sha256.as_deref(), Some(sha.as_str()));
        assert_eq!(d.location, None);
    }
}
