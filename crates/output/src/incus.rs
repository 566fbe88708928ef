//! `incus`, `incus-unified` and `incus-vm`: the image formats Incus (and LXD) import.
//!
//! - `incus` (split container image, directory `NAME.incus/`): `incus.tar.xz`, the metadata
//!   (`metadata.yaml` and `templates/`), and `rootfs.squashfs`, the tree as distrobuilder makes
//!   it (`mksquashfs -comp xz -b 1M -no-exports -no-recovery`, `/proc` and `/sys` empty).
//! - `incus-unified` (file `NAME.incus.tar.gz`): one gzip tarball holding `metadata.yaml`,
//!   `templates/` and the tree under `rootfs/`, the simplestreams `incus_combined.tar.gz` item.
//!   gzip on every core as `gzip -n` writes it (no name, time 0; [`crate::gzip`]), so the bytes
//!   are deterministic.
//! - `incus-vm` (directory `NAME.incus-vm/`): `incus.tar.xz` (whose properties carry
//!   `requirements.secureboot: "false"`: kiln's boot chain is not signed for Secure Boot) and
//!   `disk.qcow2`, written from the raw disk by kiln's qcow2 writer ([`crate::qcow2`]).
//!
//! `metadata.yaml` gives the architecture in Incus's names, the creation and expiry dates and
//! the properties `os`, `release`, `variant`, `architecture` (Debian's name), `description`,
//! `serial` and `name`, all from the build's one [`crate::identity::ImageInfo`]. Container
//! images carry pongo2 templates that give `/etc/hostname` and the `127.0.1.1` line of
//! `/etc/hosts` the instance's name (`{{ container.name }}`) when it is created or copied.
//!
//! Incus's fingerprint of an image ([`fingerprint`]) is the SHA-256 of the metadata file's bytes
//! followed by the data file's bytes for a split image, and of the file for a unified one.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufWriter, Write as _};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::container::{write_tree, Archive, TreeStyle};
use crate::gzip::ParGzWriter;
use crate::identity::ImageInfo;
use crate::lxc::{image_info, named_files};
use crate::{Error, Options, Producer, Result};

/// The split container image's producer.
#[derive(Debug)]
pub struct Incus;

/// The unified container tarball's producer.
#[derive(Debug)]
pub struct IncusUnified;

/// The VM image's producer.
#[derive(Debug)]
pub struct IncusVm;

/// The name of the metadata file of split images.
pub const METADATA_FILE: &str = "incus.tar.xz";
/// The data file of the split container image.
pub const ROOTFS_FILE: &str = "rootfs.squashfs";
/// The data file of the VM image.
pub const DISK_FILE: &str = "disk.qcow2";

/// The instance-name expression of Incus's pongo2 templates.
const INSTANCE_NAME: &str = "{{ container.name }}";

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `metadata.yaml` (lxc/incus `shared/api` `ImageMetadata`).
#[derive(Debug, Serialize)]
struct Metadata {
    architecture: String,
    creation_date: u64,
    expiry_date: u64,
    properties: BTreeMap<&'static str, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    templates: BTreeMap<String, Template>,
}

/// One file Incus renders from a template (the field names are Incus's).
#[derive(Debug, Serialize)]
#[allow(clippy::struct_field_names)]
struct Template {
    when: Vec<&'static str>,
    create_only: bool,
    template: String,
    properties: BTreeMap<String, String>,
}

/// The template files (`templates/NAME.tpl` → contents) of a container image of `root`, keyed
/// by the tree path they render.
fn templates(root: &Path) -> Result<BTreeMap<String, (String, Vec<u8>)>> {
    let mut out = BTreeMap::new();
    for (rel, bytes) in named_files(root, INSTANCE_NAME)? {
        let stem = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.insert(
            format!("/{}", rel.display()),
            (format!("{stem}.tpl"), bytes),
        );
    }
    Ok(out)
}

/// The bytes of `metadata.yaml`.
fn metadata_yaml(
    info: &ImageInfo,
    vm: bool,
    templates: &BTreeMap<String, (String, Vec<u8>)>,
) -> Result<String> {
    let mut properties = BTreeMap::from([
        ("architecture", info.architecture.clone()),
        ("description", info.description.clone()),
        ("name", info.name.clone()),
        ("os", info.os.clone()),
        ("release", info.release.clone()),
        ("serial", info.serial.clone()),
        ("variant", info.variant.clone()),
    ]);
    if vm {
        properties.insert("requirements.secureboot", "false".into());
    }
    let m = Metadata {
        architecture: info.incus_arch(),
        creation_date: info.creation_date,
        expiry_date: info.expiry_date,
        properties,
        templates: templates
            .iter()
            .map(|(path, (file, _))| {
                (
                    path.clone(),
                    Template {
                        when: vec!["create", "copy"],
                        create_only: false,
                        template: file.clone(),
                        properties: BTreeMap::new(),
                    },
                )
            })
            .collect(),
    };
    serde_saphyr::to_string(&m).map_err(|e| Error::Identity(format!("metadata.yaml: {e}")))
}

/// Appends the metadata entries (`metadata.yaml`, `templates/…`) to `ar`.
fn metadata_entries<W: io::Write>(
    ar: &mut Archive<W>,
    info: &ImageInfo,
    vm: bool,
    templates: &BTreeMap<String, (String, Vec<u8>)>,
) -> Result<()> {
    ar.bytes(
        "metadata.yaml",
        metadata_yaml(info, vm, templates)?.as_bytes(),
    )?;
    if !templates.is_empty() {
        ar.dir("templates/")?;
        let files: BTreeMap<_, _> = templates.values().map(|(f, b)| (f, b)).collect();
        for (file, bytes) in files {
            ar.bytes(&format!("templates/{file}"), bytes)?;
        }
    }
    Ok(())
}

/// Writes the xz-compressed metadata tarball to `dest`.
fn write_metadata(
    dest: &Path,
    info: &ImageInfo,
    vm: bool,
    templates: &BTreeMap<String, (String, Vec<u8>)>,
    opts: &Options,
) -> Result<()> {
    let mut ar = Archive::new(Vec::new(), opts, dest);
    metadata_entries(&mut ar, info, vm, templates)?;
    let tar = ar.finish()?;
    let xz = crate::xz::compress(&tar).map_err(io_at(dest))?;
    fs::write(dest, xz).map_err(io_at(dest))
}

impl Producer for Incus {
    fn produce(&self, root: &Path, pending: &Path, opts: &Options) -> Result<()> {
        let info = image_info(opts)?;
        fs::create_dir(pending).map_err(io_at(pending))?;
        write_metadata(
            &pending.join(METADATA_FILE),
            info,
            false,
            &templates(root)?,
            opts,
        )?;
        crate::squashfs::mksquashfs(
            root,
            &pending.join(ROOTFS_FILE),
            opts.source_date_epoch,
            crate::squashfs::Compressor::Xz,
            &["-b", "1M", "-no-exports"],
        )
    }
}

impl Producer for IncusUnified {
    fn produce(&self, root: &Path, pending: &Path, opts: &Options) -> Result<()> {
        let info = image_info(opts)?;
        let file = fs::File::create(pending).map_err(io_at(pending))?;
        let gz = ParGzWriter::new(BufWriter::new(file), crate::container::GZIP_LEVEL)
            .map_err(io_at(pending))?;
        let mut ar = Archive::new(gz, opts, pending);
        metadata_entries(&mut ar, info, false, &templates(root)?)?;
        let style = TreeStyle {
            prefix: "rootfs/",
            emptied: &["proc", "sys"],
            replace: BTreeMap::new(),
        };
        write_tree(ar.builder(), root, opts, pending, &style)?;
        let gz = ar.finish()?;
        let mut out = gz.finish().map_err(io_at(pending))?;
        out.flush().map_err(io_at(pending))
    }

    fn runs_tools(&self, _opts: &Options) -> bool {
        false
    }
}

impl Producer for IncusVm {
    fn produce(&self, raw: &Path, pending: &Path, opts: &Options) -> Result<()> {
        let info = image_info(opts)?;
        fs::create_dir(pending).map_err(io_at(pending))?;
        write_metadata(
            &pending.join(METADATA_FILE),
            info,
            true,
            &BTreeMap::new(),
            opts,
        )?;
        crate::qcow2::Qcow2.produce(raw, &pending.join(DISK_FILE), opts)
    }

    fn runs_tools(&self, opts: &Options) -> bool {
        crate::qcow2::Qcow2.runs_tools(opts)
    }
}

/// The files an output of type `ty` (a name of the table) at `dest` is fingerprinted from, in
/// order; none for other types.
fn fingerprint_files(ty: &str, dest: &Path) -> Vec<PathBuf> {
    match ty {
        "incus" => vec![dest.join(METADATA_FILE), dest.join(ROOTFS_FILE)],
        "incus-vm" => vec![dest.join(METADATA_FILE), dest.join(DISK_FILE)],
        "incus-unified" => vec![dest.to_path_buf()],
        _ => Vec::new(),
    }
}

/// Incus's fingerprint of the output of type `ty` at `dest`: the SHA-256 of the metadata then
/// the data file of a split image, of the file of a unified one; `None` for other types.
pub fn fingerprint(ty: &str, dest: &Path) -> Result<Option<String>> {
    let files = fingerprint_files(ty, dest);
    if files.is_empty() {
        return Ok(None);
    }
    let mut h = Sha256::new();
    for f in files {
        let mut file = fs::File::open(&f).map_err(io_at(&f))?;
        io::copy(&mut file, &mut h).map_err(io_at(&f))?;
    }
    Ok(Some(hex::encode(h.finalize())))
}

/// Whether output type `ty` (a name of the table) needs the image's identity.
pub fn needs_identity(ty: &str) -> bool {
    matches!(ty, "lxc" | "incus" | "incus-unified" | "incus-vm")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{image_opts, read_layer, small_tree, sparse_disk, xz_file};
    use crate::{pending_path, produce, OutputType};
    use std::io::Read as _;

    /// The files of an uncompressed tar, by name.
    fn files(tar_bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut ar = tar::Archive::new(tar_bytes);
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let mut v = Vec::new();
            e.read_to_end(&mut v).unwrap();
            out.insert(e.path().unwrap().display().to_string(), v);
        }
        out
    }

    fn yaml(bytes: &[u8]) -> serde_json::Value {
        serde_saphyr::from_str(std::str::from_utf8(bytes).unwrap()).unwrap()
    }

    #[test]
    fn split_image_metadata_squashfs_and_fingerprint() {
        let d = tempfile::tempdir().unwrap();
        let root = small_tree(d.path());
        fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
        let opts = image_opts(&root, "arm64");
        let ty = OutputType::parse("incus").unwrap();
        let dest = d.path().join("img.incus");
        if !kiln_host::tools::installed("mksquashfs") {
            kiln_testkit::skip(
                "incus::split_image_metadata_squashfs_and_fingerprint",
                "mksquashfs (squashfs-tools) is not installed",
            );
            return;
        }
        produce(ty, &root, &dest, &opts).unwrap();
        let out = pending_path(&dest);
        let meta_tar = xz_file(&out.join(METADATA_FILE));
        let entries: Vec<String> = read_layer(&meta_tar).into_iter().map(|e| e.path).collect();
        assert_eq!(
            entries,
            [
                "metadata.yaml",
                "templates/",
                "templates/hostname.tpl",
                "templates/hosts.tpl"
            ]
        );
        let f = files(&meta_tar);
        let text = String::from_utf8(f["metadata.yaml"].clone()).unwrap();
        let m = yaml(text.as_bytes());
        assert_eq!(m["architecture"], "aarch64");
        assert_eq!(m["creation_date"], 1_700_000_000);
        assert_eq!(m["expiry_date"], 1_702_592_000);
        assert_eq!(
            m["properties"],
            serde_json::json!({
                "architecture": "arm64",
                "description": "Debian trixie arm64 (default) (20231114_2213)",
                "name": "root",
                "os": "debian",
                "release": "trixie",
                "serial": "20231114_2213",
                "variant": "default",
            })
        );
        assert_eq!(
            m["templates"]["/etc/hostname"],
            serde_json::json!({"when": ["create", "copy"], "create_only": false, "template": "hostname.tpl", "properties": {}})
        );
        assert_eq!(m["templates"]["/etc/hosts"]["template"], "hosts.tpl");
        assert_eq!(f["templates/hostname.tpl"], b"{{ container.name }}\n");
        assert_eq!(
            f["templates/hosts.tpl"],
            b"127.0.0.1 localhost\n127.0.1.1\t{{ container.name }}\n"
        );
        // The squashfs: 1 MiB blocks (superblock offset 12), xz (compression id 4 at 20).
        let sq = fs::read(out.join(ROOTFS_FILE)).unwrap();
        assert_eq!(&sq[..4], b"hsqs");
        assert_eq!(u32::from_le_bytes(sq[12..16].try_into().unwrap()), 1 << 20);
        assert_eq!(u16::from_le_bytes(sq[20..22].try_into().unwrap()), 4);
        // The fingerprint, recomputed by hand.
        let mut want = fs::read(out.join(METADATA_FILE)).unwrap();
        want.extend_from_slice(&sq);
        assert_eq!(
            fingerprint("incus", &out).unwrap().unwrap(),
            hex::encode(Sha256::digest(&want))
        );
    }

    #[test]
    fn unified_tarball_holds_metadata_templates_and_rootfs() {
        let d = tempfile::tempdir().unwrap();
        let root = small_tree(d.path());
        let opts = image_opts(&root, "amd64");
        let ty = OutputType::parse("incus-unified").unwrap();
        assert_eq!(ty.extension(), "incus.tar.gz");
        let dest = d.path().join("img.incus.tar.gz");
        produce(ty, &root, &dest, &opts).unwrap();
        let gz = fs::read(pending_path(&dest)).unwrap();
        // gzip -n: no name, no time.
        assert_eq!(gz[..3], [0x1f, 0x8b, 8]);
        assert_eq!(gz[3] & 0x18, 0);
        assert_eq!(gz[4..8], [0, 0, 0, 0]);
        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_end(&mut tar_bytes)
            .unwrap();
        let names: Vec<String> = read_layer(&tar_bytes).into_iter().map(|e| e.path).collect();
        assert_eq!(
            names[..3],
            ["metadata.yaml", "templates/", "templates/hostname.tpl"]
        );
        assert_eq!(names[3], "rootfs/");
        assert!(names.contains(&"rootfs/usr/bin/tool".to_string()));
        assert!(names.contains(&"rootfs/proc/".to_string()));
        assert!(!names.iter().any(|n| n.starts_with("rootfs/proc/1")));
        // The tree's own hostname: Incus renders the template over it.
        assert_eq!(files(&tar_bytes)["rootfs/etc/hostname"], b"kiln\n");
        let m = yaml(&files(&tar_bytes)["metadata.yaml"]);
        assert_eq!(m["architecture"], "x86_64");
        assert!(m["properties"].get("requirements.secureboot").is_none());
        assert_eq!(
            fingerprint("incus-unified", &pending_path(&dest))
                .unwrap()
                .unwrap(),
            hex::encode(Sha256::digest(&gz))
        );
        // Deterministic.
        let again = d.path().join("b.incus.tar.gz");
        crate::testutil::produce_elsewhere("incus-unified", &root, &again, Some(1_700_000_000));
        assert!(
            fs::read(pending_path(&again)).unwrap() == gz,
            "not deterministic"
        );
    }

    #[test]
    fn vm_image_metadata_and_qcow2() {
        let d = tempfile::tempdir().unwrap();
        let root = small_tree(d.path());
        let disk = sparse_disk(d.path());
        let mut opts = image_opts(&root, "amd64");
        opts.compress = true;
        opts.qcow2_level = Some(crate::qcow2::DEFAULT_LEVEL);
        let ty = OutputType::parse("incus-vm").unwrap();
        assert_eq!(ty.source(), crate::Source::Disk);
        assert!(ty.tools(&opts).is_empty());
        let dest = d.path().join("img.incus-vm");
        produce(ty, &disk, &dest, &opts).unwrap();
        let out = pending_path(&dest);
        let f = files(&xz_file(&out.join(METADATA_FILE)));
        assert_eq!(f.keys().collect::<Vec<_>>(), ["metadata.yaml"]);
        let text = String::from_utf8(f["metadata.yaml"].clone()).unwrap();
        // A string, not a YAML boolean: Incus reads properties as strings.
        assert!(
            text.contains("requirements.secureboot: \"false\"")
                || text.contains("requirements.secureboot: 'false'"),
            "{text}"
        );
        let m = yaml(text.as_bytes());
        assert_eq!(m["properties"]["requirements.secureboot"], "false");
        assert!(m.get("templates").is_none());
        let q = fs::read(out.join(DISK_FILE)).unwrap();
        assert_eq!(&q[..4], b"QFI\xfb");
        if kiln_host::tools::installed("qemu-img") {
            crate::testutil::qemu_img_compare(&disk, &out.join(DISK_FILE));
        }
        let mut want = fs::read(out.join(METADATA_FILE)).unwrap();
        want.extend_from_slice(&q);
        assert_eq!(
            fingerprint("incus-vm", &out).unwrap().unwrap(),
            hex::encode(Sha256::digest(&want))
        );
        assert_eq!(fingerprint("lxc", &out).unwrap(), None);
    }

    /// Incus's own `incus-simplestreams` accepts the split and the unified image and computes
    /// kiln's fingerprints.
    #[test]
    fn incus_simplestreams_adds_split_and_unified_images() {
        for tool in ["incus-simplestreams", "mksquashfs"] {
            if !kiln_host::tools::installed(tool) {
                kiln_testkit::skip(
                    "incus::incus_simplestreams_adds_split_and_unified_images",
                    &format!("{tool} is not installed (scripts/install-host-deps installs it)"),
                );
                return;
            }
        }
        let d = tempfile::tempdir().unwrap();
        let root = small_tree(d.path());
        let opts = image_opts(&root, "amd64");
        let split = d.path().join("img.incus");
        let unified = d.path().join("img.incus.tar.gz");
        produce(OutputType::parse("incus").unwrap(), &root, &split, &opts).unwrap();
        let mut other = opts.clone();
        // Another serial: the two images are two versions, not duplicates.
        if let Some(i) = other.image.as_mut() {
            i.creation_date += 3600;
        }
        produce(
            OutputType::parse("incus-unified").unwrap(),
            &root,
            &unified,
            &other,
        )
        .unwrap();
        let ss = d.path().join("ss");
        fs::create_dir(&ss).unwrap();
        let (split, unified) = (pending_path(&split), pending_path(&unified));
        kiln_host::Cmd::new("incus-simplestreams")
            .arg("add")
            .arg(split.join(METADATA_FILE))
            .arg(split.join(ROOTFS_FILE))
            .current_dir(&ss)
            .run()
            .unwrap();
        kiln_host::Cmd::new("incus-simplestreams")
            .arg("add")
            .arg(&unified)
            .arg("--no-default-alias")
            .current_dir(&ss)
            .run()
            .unwrap();
        kiln_host::Cmd::new("incus-simplestreams")
            .arg("verify")
            .current_dir(&ss)
            .run()
            .unwrap();
        let images = fs::read_to_string(ss.join("streams/v1/images.json")).unwrap();
        let want_split = fingerprint("incus", &split).unwrap().unwrap();
        let want_unified = fingerprint("incus-unified", &unified).unwrap().unwrap();
        assert!(
            images.contains(&format!("\"combined_squashfs_sha256\": \"{want_split}\""))
                || images.contains(&format!("\"combined_squashfs_sha256\":\"{want_split}\"")),
            "{images}"
        );
        assert!(images.contains(&want_unified), "{images}");
    }
}
