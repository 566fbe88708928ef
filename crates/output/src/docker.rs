//! `docker`: the finished tree as a docker-archive file, `NAME.docker.tar`, which `docker
//! load`, `podman load` and `skopeo … docker-archive:NAME.docker.tar` read.
//!
//! The archive holds `manifest.json` (`Config`, `RepoTags` from `--docker-target REPO:TAG`,
//! default the image name and `latest`, `Layers`), the config (`<image id>.json`, the same
//! JSON as the OCI config blob; the image id is its SHA-256), one layer directory named by
//! the layer's `diff_id` with `VERSION`, the legacy `json` and the uncompressed `layer.tar`,
//! and the legacy `repositories` file. DIB pipes a tar into `docker import` and writes no
//! file; kiln writes the archive itself and needs no daemon.

use std::fs;
use std::io::Write as _;
use std::path::Path;

use serde_json::json;

use crate::container::{self, Archive, Digest, ImageConfig, ImageRef};
use crate::{Error, Options, Producer, Result};

/// The `docker` producer.
#[derive(Debug)]
pub struct Docker;

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Producer for Docker {
    fn produce(&self, root: &Path, pending: &Path, opts: &Options) -> Result<()> {
        let name = ImageRef::for_output(pending, opts)?;
        // The layer first, beside the pending file in the private directory: its size goes in
        // the archive's header before its bytes.
        let layer = pending.with_file_name("layer.tar");
        let r = write_archive(root, pending, &layer, &name, opts);
        let _ = fs::remove_file(&layer);
        r
    }

    fn runs_tools(&self, _opts: &Options) -> bool {
        false
    }
}

fn write_archive(
    root: &Path,
    dest: &Path,
    layer: &Path,
    name: &ImageRef,
    opts: &Options,
) -> Result<()> {
    let file = fs::File::create(layer).map_err(io_at(layer))?;
    let (out, diff_id) = container::write_layer(root, std::io::BufWriter::new(file), opts, layer)?;
    out.into_inner()
        .map_err(|e| Error::Io {
            path: layer.to_path_buf(),
            source: e.into_error(),
        })?
        .flush()
        .map_err(io_at(layer))?;

    let config = ImageConfig::new(root, &diff_id, opts);
    let config_bytes = config.to_bytes();
    let image_id = Digest::of(&config_bytes);
    let layer_dir = &diff_id.hex;
    let mut legacy = json!({
        "id": layer_dir,
        "created": container::created(opts),
        "os": "linux",
        "architecture": config.architecture(),
    });
    if let Some(v) = config.variant() {
        legacy["variant"] = v.into();
    }
    let manifest = json!([{
        "Config": format!("{}.json", image_id.hex),
        "RepoTags": [name.full()],
        "Layers": [format!("{layer_dir}/layer.tar")],
    }]);
    let repositories = json!({ &name.repo: { &name.tag: layer_dir } });

    let out = fs::File::create(dest).map_err(io_at(dest))?;
    let mut ar = Archive::new(std::io::BufWriter::new(out), opts, dest);
    ar.dir(&format!("{layer_dir}/"))?;
    ar.bytes(&format!("{layer_dir}/VERSION"), b"1.0")?;
    ar.bytes(
        &format!("{layer_dir}/json"),
        &serde_json::to_vec(&legacy).unwrap_or_default(),
    )?;
    ar.file(&format!("{layer_dir}/layer.tar"), layer)?;
    ar.bytes(&format!("{}.json", image_id.hex), &config_bytes)?;
    ar.bytes(
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap_or_default(),
    )?;
    ar.bytes(
        "repositories",
        &serde_json::to_vec(&repositories).unwrap_or_default(),
    )?;
    ar.finish()?
        .into_inner()
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
    use std::collections::BTreeMap;
    use std::io::Read as _;

    fn opts(target: Option<&str>) -> Options {
        Options {
            source_date_epoch: Some(1_700_000_000),
            arch: Some("arm64".into()),
            docker_target: target.map(String::from),
            ..Options::default()
        }
    }

    /// Makes `img.docker.tar` of `root` in `d`, in place, with checksums.
    fn archive(d: &Path, root: &Path, o: &Options) -> std::path::PathBuf {
        let dest = d.join("img.docker.tar");
        produce(OutputType::parse("docker").unwrap(), root, &dest, o).unwrap();
        finish(
            &dest,
            true,
            Checksums {
                md5: false,
                sha256: true,
            },
            "s",
        )
        .unwrap();
        dest
    }

    /// Every file of the archive by name, read strictly.
    fn members(path: &Path) -> (Vec<String>, BTreeMap<String, Vec<u8>>) {
        let bytes = fs::read(path).unwrap();
        let mut ar = tar::Archive::new(bytes.as_slice());
        let mut names = Vec::new();
        let mut files = BTreeMap::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            assert_eq!(e.header().uid().unwrap(), 0);
            assert_eq!(e.header().mtime().unwrap(), 1_700_000_000);
            if e.header().entry_type().is_file() {
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                files.insert(name.clone(), data);
            }
            names.push(name);
        }
        (names, files)
    }

    #[test]
    fn the_archive_names_its_config_and_layer_by_their_digests() {
        let d = tempfile::tempdir().unwrap();
        let root = small_tree(d.path());
        let dest = archive(d.path(), &root, &opts(None));
        let sum = fs::read_to_string(d.path().join("img.docker.tar.sha256")).unwrap();
        assert!(sum.ends_with("  img.docker.tar\n"), "{sum}");
        assert!(!d.path().join(".img.docker.tar.kiln-new").exists());
        let (names, files) = members(&dest);
        let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        let m = &manifest[0];
        assert_eq!(manifest.as_array().unwrap().len(), 1);
        assert_eq!(m["RepoTags"], serde_json::json!(["img:latest"]));
        let config_name = m["Config"].as_str().unwrap();
        let config_bytes = &files[config_name];
        assert_eq!(
            config_name,
            format!("{}.json", Digest::of(config_bytes).hex)
        );
        let config: Value = serde_json::from_slice(config_bytes).unwrap();
        assert_eq!(
            (config["architecture"].as_str(), config["variant"].as_str()),
            (Some("arm64"), Some("v8"))
        );
        let layer_name = m["Layers"][0].as_str().unwrap();
        let layer = &files[layer_name];
        let diff_id = Digest::of(layer);
        assert_eq!(
            config["rootfs"]["diff_ids"],
            serde_json::json!([diff_id.oci()])
        );
        assert_eq!(layer_name, format!("{}/layer.tar", diff_id.hex));
        assert_eq!(files[&format!("{}/VERSION", diff_id.hex)], b"1.0");
        let legacy: Value =
            serde_json::from_slice(&files[&format!("{}/json", diff_id.hex)]).unwrap();
        assert_eq!(legacy["id"], diff_id.hex);
        let repos: Value = serde_json::from_slice(&files["repositories"]).unwrap();
        assert_eq!(repos, serde_json::json!({"img": {"latest": diff_id.hex}}));
        assert_eq!(
            names,
            [
                format!("{}/", diff_id.hex),
                format!("{}/VERSION", diff_id.hex),
                format!("{}/json", diff_id.hex),
                layer_name.to_string(),
                config_name.to_string(),
                "manifest.json".into(),
                "repositories".into(),
            ]
        );
        let mut listed: Vec<_> = read_layer(layer).into_iter().map(|e| e.path).collect();
        listed.sort();
        assert_eq!(listed, tree_list(&root));
    }

    #[test]
    fn the_docker_target_names_the_image() {
        let d = tempfile::tempdir().unwrap();
        let root = small_tree(d.path());
        let dest = archive(d.path(), &root, &opts(Some("example/kiln:v2")));
        let (_, files) = members(&dest);
        let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        assert_eq!(
            manifest[0]["RepoTags"],
            serde_json::json!(["example/kiln:v2"])
        );
        let repos: Value = serde_json::from_slice(&files["repositories"]).unwrap();
        assert!(repos["example/kiln"]["v2"].is_string(), "{repos}");
    }

    #[test]
    fn a_failure_leaves_nothing_behind() {
        let d = tempfile::tempdir().unwrap();
        let root = small_tree(d.path());
        fs::write(root.join("etc/.wh.x"), b"").unwrap();
        let dest = d.path().join("img.docker.tar");
        let e = produce(
            OutputType::parse("docker").unwrap(),
            &root,
            &dest,
            &opts(None),
        )
        .unwrap_err();
        assert!(matches!(e, Error::Whiteout(_)), "{e}");
        assert!(!d.path().join(".img.docker.tar.kiln-new").exists());
        assert!(!dest.exists());
    }

    #[test]
    fn skopeo_reads_and_copies_the_archive() {
        for tool in ["skopeo", "umoci"] {
            if !kiln_host::tools::installed(tool) {
                kiln_testkit::skip(
                    "docker::skopeo_reads_and_copies_the_archive",
                    &format!("{tool} is not installed"),
                );
                return;
            }
        }
        let d = tempfile::tempdir().unwrap();
        let root = small_tree(d.path());
        let dest = archive(d.path(), &root, &opts(Some("kiln/test:v1")));
        let out = Cmd::new("skopeo")
            .arg("inspect")
            .arg(format!("docker-archive:{}", dest.display()))
            .run()
            .unwrap()
            .stdout;
        let seen: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(seen["Architecture"], "arm64");
        assert_eq!(seen["Created"], "2023-11-14T22:13:20Z");
        assert_eq!(seen["Env"], serde_json::json!([container::PATH_ENV]));
        let (_, files) = members(&dest);
        let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        let layer = &files[manifest[0]["Layers"][0].as_str().unwrap()];
        assert_eq!(seen["Layers"][0], Digest::of(layer).oci());
        // Copied into an OCI layout, then unpacked by umoci: the tree's files.
        let layout = d.path().join("copy.oci");
        Cmd::new("skopeo")
            .args(["copy", "--override-arch", "arm64"])
            .arg(format!("docker-archive:{}", dest.display()))
            .arg(format!("oci:{}:v1", layout.display()))
            .run()
            .unwrap();
        if !nix::unistd::geteuid().is_root() {
            kiln_testkit::skip(
                "docker::skopeo_reads_and_copies_the_archive",
                "umoci unpack needs root",
            );
            return;
        }
        let bundle = d.path().join("bundle");
        Cmd::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:v1", layout.display()))
            .arg(&bundle)
            .run()
            .unwrap();
        assert_eq!(tree_list(&bundle.join("rootfs")), tree_list(&root));
    }
}
