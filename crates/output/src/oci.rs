//! `oci` and `oci-archive`: the finished tree as an OCI image layout.
//!
//! `oci` writes the layout directory `NAME.oci/`: `oci-layout`, `index.json` (one manifest,
//! tagged by the `org.opencontainers.image.ref.name` annotation: the `--docker-target` tag,
//! default `latest`) and `blobs/sha256/` holding the gzip-compressed layer, the config and the
//! manifest. `oci-archive` writes the same layout as a tar, `NAME.oci.tar`
//! (containers-transports(5)). The layer and config are those of [`crate::container`]; the blob
//! digests are of the stored (compressed) bytes, the config's `diff_id` of the uncompressed
//! tar. Readers: `skopeo inspect oci:NAME.oci:latest`, `umoci unpack --image NAME.oci:latest`,
//! `podman load -i NAME.oci.tar`.

use std::fs;
use std::io::Write as _;
use std::path::Path;

use serde::Serialize;
use serde_json::json;

use crate::container::{self, Archive, Digest, HashWriter, ImageConfig, ImageRef};
use crate::gzip::ParGzWriter;
use crate::{Error, Options, Producer, Result};

/// Media types of the OCI image spec.
const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The `oci` producer: an OCI image layout directory.
#[derive(Debug)]
pub struct Oci;

/// The `oci-archive` producer: a tar of the OCI image layout.
#[derive(Debug)]
pub struct OciArchive;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: &'static str,
    digest: String,
    size: u64,
}

impl Descriptor {
    fn new(media_type: &'static str, d: &Digest) -> Self {
        Self {
            media_type,
            digest: d.oci(),
            size: d.size,
        }
    }
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the OCI image layout of tree `root` as the new directory `dir`, naming the image
/// `name`.
pub fn write_layout(root: &Path, dir: &Path, name: &ImageRef, opts: &Options) -> Result<()> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(io_at(&blobs))?;
    // The layer: tar → diff_id hash → gzip → blob hash → file.
    let tmp = blobs.join(".layer.tmp");
    let file = fs::File::create(&tmp).map_err(io_at(&tmp))?;
    let gz = ParGzWriter::new(HashWriter::new(file), container::GZIP_LEVEL).map_err(io_at(&tmp))?;
    let (gz, diff_id) = container::write_layer(root, gz, opts, &tmp)?;
    let (mut file, blob) = gz.finish().map_err(io_at(&tmp))?.finish();
    file.flush().map_err(io_at(&tmp))?;
    drop(file);
    let layer_path = blobs.join(&blob.hex);
    fs::rename(&tmp, &layer_path).map_err(io_at(&layer_path))?;

    let config = ImageConfig::new(root, &diff_id, opts);
    let config_bytes = config.to_bytes();
    let config_digest = put_blob(&blobs, &config_bytes)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": Descriptor::new(MT_CONFIG, &config_digest),
        "layers": [Descriptor::new(MT_LAYER_GZIP, &blob)],
        "annotations": {
            "org.opencontainers.image.created": container::created(opts),
        },
    });
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap_or_default();
    let manifest_digest = put_blob(&blobs, &manifest_bytes)?;
    let mut platform = json!({ "architecture": config.architecture(), "os": "linux" });
    if let Some(v) = config.variant() {
        platform["variant"] = v.into();
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [{
            "mediaType": MT_MANIFEST,
            "digest": manifest_digest.oci(),
            "size": manifest_digest.size,
            "platform": platform,
            "annotations": {
                "io.containerd.image.name": name.full(),
                "org.opencontainers.image.ref.name": name.tag,
            },
        }],
    });
    container::write_new(
        &dir.join("index.json"),
        &serde_json::to_vec(&index).unwrap_or_default(),
    )?;
    container::write_new(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
}

/// Stores `bytes` as a blob and returns its digest.
fn put_blob(blobs: &Path, bytes: &[u8]) -> Result<Digest> {
    let d = Digest::of(bytes);
    container::write_new(&blobs.join(&d.hex), bytes)?;
    Ok(d)
}

impl Producer for Oci {
    fn produce(&self, root: &Path, pending: &Path, opts: &Options) -> Result<()> {
        let name = ImageRef::for_output(pending, opts)?;
        write_layout(root, pending, &name, opts)
    }

    fn runs_tools(&self, _opts: &Options) -> bool {
        false
    }
}

impl Producer for OciArchive {
    fn produce(&self, root: &Path, pending: &Path, opts: &Options) -> Result<()> {
        let name = ImageRef::for_output(pending, opts)?;
        // The layout is made in the private pending directory, archived, then removed.
        let layout = pending.with_file_name("layout");
        write_layout(root, &layout, &name, opts)?;
        let r = archive_layout(&layout, pending, opts);
        let _ = fs::remove_dir_all(&layout);
        r
    }

    fn runs_tools(&self, _opts: &Options) -> bool {
        false
    }
}

/// Writes the layout directory `layout` as the tar `dest`, entries in name order.
fn archive_layout(layout: &Path, dest: &Path, opts: &Options) -> Result<()> {
    let out = fs::File::create(dest).map_err(io_at(dest))?;
    let mut ar = Archive::new(std::io::BufWriter::new(out), opts, dest);
    ar.dir("blobs/")?;
    ar.dir("blobs/sha256/")?;
    let blobs = layout.join("blobs/sha256");
    let mut names = fs::read_dir(&blobs)
        .map_err(io_at(&blobs))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io_at(&blobs))?;
    names.sort();
    for n in names {
        ar.file(&format!("blobs/sha256/{n}"), &blobs.join(&n))?;
    }
    ar.file("index.json", &layout.join("index.json"))?;
    ar.file("oci-layout", &layout.join("oci-layout"))?;
    let out = ar.finish()?;
    out.into_inner()
        .map_err(|e| Error::Io {
            path: dest.to_path_buf(),
            source: e.into_error(),
        })?
        .flush()
        .map_err(io_at(dest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{read_layer, small_tree, tree_list};
    use crate::{finish, produce, Checksums, OutputType};
    use kiln_host::Cmd;
    use serde_json::Value;
    use std::io::Read as _;

    fn opts() -> Options {
        Options {
            source_date_epoch: Some(1_700_000_000),
            arch: Some("armhf".into()),
            ..Options::default()
        }
    }

    fn json(path: &Path) -> Value {
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    }

    /// The blob a descriptor names, checked against its digest and size.
    fn blob(layout: &Path, desc: &Value) -> Vec<u8> {
        let digest = desc["digest"].as_str().unwrap();
        let hex = digest.strip_prefix("sha256:").unwrap();
        let bytes = fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
        assert_eq!(Digest::of(&bytes).oci(), digest);
        assert_eq!(desc["size"].as_u64().unwrap(), bytes.len() as u64);
        bytes
    }

    /// Makes `NAME.oci` of a small tree in `d` and puts it in place; returns the layout.
    fn layout(d: &Path, root: &Path, o: &Options) -> std::path::PathBuf {
        let dest = d.join("img.oci");
        produce(OutputType::parse("oci").unwrap(), root, &dest, o).unwrap();
        finish(
            &dest,
            true,
            Checksums {
                md5: true,
                sha256: true,
            },
            "s",
        )
        .unwrap();
        dest
    }

    #[test]
    fn the_layout_is_consistent_from_index_to_layer() {
        let d = tempfile::tempdir().unwrap();
        let root = small_tree(d.path());
        let dir = layout(d.path(), &root, &opts());
        assert!(fs::metadata(&dir).unwrap().is_dir());
        // No checksum files beside a directory.
        assert!(!d.path().join("img.oci.sha256").exists());
        assert_eq!(
            json(&dir.join("oci-layout")),
            serde_json::json!({"imageLayoutVersion": "1.0.0"})
        );
        let index = json(&dir.join("index.json"));
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["mediaType"], MT_INDEX);
        let m = &index["manifests"][0];
        assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(m["mediaType"], MT_MANIFEST);
        assert_eq!(
            m["annotations"]["org.opencontainers.image.ref.name"],
            "latest"
        );
        assert_eq!(m["annotations"]["io.containerd.image.name"], "img:latest");
        assert_eq!(
            m["platform"],
            serde_json::json!({"architecture": "arm", "os": "linux", "variant": "v7"})
        );
        let manifest: Value = serde_json::from_slice(&blob(&dir, m)).unwrap();
        assert_eq!(manifest["mediaType"], MT_MANIFEST);
        assert_eq!(manifest["config"]["mediaType"], MT_CONFIG);
        let config: Value = serde_json::from_slice(&blob(&dir, &manifest["config"])).unwrap();
        assert_eq!(config["architecture"], "arm");
        assert_eq!(config["variant"], "v7");
        assert_eq!(config["created"], "2023-11-14T22:13:20Z");
        assert_eq!(
            manifest["annotations"]["org.opencontainers.image.created"],
            "2023-11-14T22:13:20Z"
        );
        let layer = &manifest["layers"][0];
        assert_eq!(layer["mediaType"], MT_LAYER_GZIP);
        let gz = blob(&dir, layer);
        // gzip with no name and mtime 0.
        assert_eq!(&gz[..3], &[0x1f, 0x8b, 8]);
        assert_eq!(gz[3], 0, "no FNAME or other flags");
        assert_eq!(&gz[4..8], &[0, 0, 0, 0], "mtime 0");
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_end(&mut tar)
            .unwrap();
        // The diff_id is of the uncompressed tar, the blob digest of the compressed one.
        assert_eq!(config["rootfs"]["diff_ids"][0], Digest::of(&tar).oci());
        assert_ne!(layer["digest"], config["rootfs"]["diff_ids"][0]);
        let mut listed: Vec<_> = read_layer(&tar).into_iter().map(|e| e.path).collect();
        listed.sort();
        assert_eq!(listed, tree_list(&root));
        // Exactly the three blobs.
        assert_eq!(fs::read_dir(dir.join("blobs/sha256")).unwrap().count(), 3);
    }

    #[test]
    fn the_same_tree_and_epoch_give_the_same_bytes_whatever_the_umask() {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        let r1 = small_tree(d1.path());
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        let r2 = small_tree(d2.path());
        nix::sys::stat::umask(old);
        let o = opts();
        let mut outs = Vec::new();
        for d in [d1.path(), d2.path()] {
            let root = d.join("root");
            let mut files = Vec::new();
            for ty in ["oci-archive", "docker"] {
                let ty = OutputType::parse(ty).unwrap();
                let dest = crate::output_path(&d.join("img"), ty);
                produce(ty, &root, &dest, &o).unwrap();
                finish(&dest, true, Checksums::default(), "s").unwrap();
                files.push(fs::read(&dest).unwrap());
            }
            let dir = layout(d, &root, &o);
            files.push(fs::read(dir.join("index.json")).unwrap());
            let mut blobs: Vec<_> = fs::read_dir(dir.join("blobs/sha256"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            blobs.sort();
            outs.push((files, blobs));
        }
        assert!(r1 != r2);
        assert!(outs[0] == outs[1], "two builds of the same tree differ");
        // The archive holds the layout, file for file.
        let dir = d1.path().join("img.oci");
        let archive = fs::read(d1.path().join("img.oci.tar")).unwrap();
        let mut ar = tar::Archive::new(archive.as_slice());
        let mut names = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            if e.header().entry_type().is_file() {
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                assert_eq!(data, fs::read(dir.join(&name)).unwrap(), "{name}");
            }
            names.push(name);
        }
        assert_eq!(names.len(), 2 + 3 + 2, "{names:?}");
        assert_eq!(names[..2], ["blobs/", "blobs/sha256/"]);
        assert_eq!(names[5..], ["index.json", "oci-layout"]);
    }

    #[test]
    fn an_old_layout_is_kept_aside_or_replaced() {
        let d = tempfile::tempdir().unwrap();
        let root = small_tree(d.path());
        let dest = d.path().join("img.oci");
        fs::create_dir_all(dest.join("old")).unwrap();
        produce(OutputType::parse("oci").unwrap(), &root, &dest, &opts()).unwrap();
        finish(&dest, false, Checksums::default(), "stamp").unwrap();
        assert!(d.path().join("img-stamp.oci/old").is_dir());
        assert!(dest.join("index.json").is_file());
        fs::write(dest.join("extra"), b"").unwrap();
        produce(OutputType::parse("oci").unwrap(), &root, &dest, &opts()).unwrap();
        finish(&dest, true, Checksums::default(), "stamp2").unwrap();
        assert!(!dest.join("extra").exists());
        assert!(dest.join("index.json").is_file());
        assert!(!d.path().join(".img.oci.kiln-new").exists());
    }

    fn skopeo_umoci_missing(test: &str) -> bool {
        for tool in ["skopeo", "umoci"] {
            if !kiln_host::tools::installed(tool) {
                kiln_testkit::skip(test, &format!("{tool} is not installed"));
                return true;
            }
        }
        false
    }

    #[test]
    fn skopeo_and_umoci_read_the_layout() {
        if skopeo_umoci_missing("oci::skopeo_and_umoci_read_the_layout") {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let root = small_tree(d.path());
        // A file of several gzip blocks, so Go's reader sees blocks joined by sync flushes.
        let mut big = Vec::new();
        let mut i: u64 = 1;
        while big.len() < 3 * crate::gzip::BLOCK_SIZE + 4321 {
            i = i.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            big.extend_from_slice(format!("{} {}\n", i >> 40, i % 1009).as_bytes());
        }
        fs::write(root.join("big.txt"), &big).unwrap();
        let o = Options {
            arch: Some("amd64".into()),
            docker_target: Some("kiln/test:v1".into()),
            ..opts()
        };
        let dir = layout(d.path(), &root, &o);
        let out = Cmd::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("oci:{}:v1", dir.display()))
            .run()
            .unwrap()
            .stdout;
        let manifest: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(manifest["layers"][0]["mediaType"], MT_LAYER_GZIP);
        let out = Cmd::new("skopeo")
            .arg("inspect")
            .arg(format!("oci:{}:v1", dir.display()))
            .run()
            .unwrap()
            .stdout;
        let seen: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(seen["Architecture"], "amd64");
        assert_eq!(seen["Os"], "linux");
        assert_eq!(seen["Layers"][0], manifest["layers"][0]["digest"]);
        // umoci unpacks the same files (as root: owners and devices are kept).
        if !nix::unistd::geteuid().is_root() {
            kiln_testkit::skip(
                "oci::skopeo_and_umoci_read_the_layout",
                "umoci unpack needs root",
            );
            return;
        }
        let bundle = d.path().join("bundle");
        Cmd::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:v1", dir.display()))
            .arg(&bundle)
            .run()
            .unwrap();
        assert_eq!(tree_list(&bundle.join("rootfs")), tree_list(&root));
        assert!(fs::read(bundle.join("rootfs/big.txt")).unwrap() == big);
        let tool = bundle.join("rootfs/usr/bin/tool");
        assert_eq!(
            xattr::get(&tool, "security.capability").unwrap().as_deref(),
            Some(&crate::testutil::CAPABILITY[..])
        );
    }
}
