//! The published tree and its update: copy builds in, choose what stays, rewrite the indexes.
//!
//! ```text
//! DIR/images/DIST/RELEASE/ARCH/VARIANT/BUILD/   rootfs.tar.xz meta.tar.xz incus.tar.xz
//!                                               rootfs.squashfs disk.qcow2 incus-unified.tar.gz
//!                                               SHA256SUMS[.asc] build.json
//! DIR/meta/1.0/index-system[.asc], index-user[.asc]
//! DIR/streams/v1/index.json[.asc], images.json[.asc]
//! DIR/.kiln-publish.lock
//! ```
//!
//! `build.json` is kiln's record of a published build (the image record, each file's size and
//! SHA256, the Incus fingerprints): the indexes are made from these records, so a publish
//! rewrites them for the whole tree without hashing old images again.
//!
//! The order keeps a client that reads the tree at any instant consistent: a new build is
//! copied into a hidden directory beside its final place and renamed into place whole; then
//! every index is written to a hidden temporary name and renamed over the old one (images.json
//! before index.json, which names its products); only then are the builds the indexes no longer
//! name removed (renamed aside, then deleted). A publish killed at any point leaves the previous
//! or the new indexes, each naming files that exist; the next publish clears what it left. Two
//! publishes into one tree are serialised by an exclusive `flock` on `DIR/.kiln-publish.lock`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::input::{BuildInput, ImageRecord};
use crate::streams::{self, Index, IndexEntry, Item, Product, Products, Version};
use crate::{io_err, rfc3339, sign, Error};

/// How to publish.
#[derive(Debug, Clone)]
pub struct Options {
    /// The tree's root.
    pub to: PathBuf,
    /// The GPG key (id, fingerprint or user id) signing the indexes and checksums, if any.
    pub sign_key: Option<String>,
    /// Builds kept per image (os, release, arch, variant), newest first; at least 1.
    pub keep: usize,
    /// The time expiry is judged against, Unix seconds.
    pub now: u64,
    /// Tests only: fail right after the named step (`build-files`, `images.json`,
    /// `index.json`, `index-system`, `index-user`).
    #[doc(hidden)]
    pub fail_after: Option<&'static str>,
}

/// What a publish did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Build directories added (relative to the tree).
    pub added: Vec<String>,
    /// Build directories that were already there with the same files.
    pub unchanged: Vec<String>,
    /// Build directories removed, with the reason.
    pub removed: Vec<(String, String)>,
    /// The lines of `meta/1.0/index-system`.
    pub index: Vec<String>,
}

/// Size and SHA256 of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Bytes.
    pub size: u64,
    /// Hex SHA256.
    pub sha256: String,
}

/// `build.json`: kiln's record of one published build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The image record the build came with (`outputs` left out).
    pub image: ImageRecord,
    /// The build directory's files.
    pub files: BTreeMap<String, FileInfo>,
    /// Incus fingerprints by data item type (`squashfs`, `disk-kvm.img`).
    pub fingerprints: BTreeMap<String, String>,
}

/// The SHA256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, Error> {
    let mut h = Sha256::new();
    hash_into(&mut h, path)?;
    Ok(hex::encode(h.finalize()))
}

fn hash_into(h: &mut Sha256, path: &Path) -> Result<u64, Error> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            return Ok(total);
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
}

/// Publishes `inputs` into `opts.to` and rewrites its indexes (see the module docs).
pub fn publish(inputs: &[BuildInput], opts: &Options) -> Result<Report, Error> {
    let root = &opts.to;
    let mut seen = BTreeMap::new();
    for input in inputs {
        let r = &input.record;
        if r.expiry_date <= opts.now {
            return Err(Error::Expired {
                name: input.name.clone(),
                expiry: r.expiry_date,
                when: rfc3339(r.expiry_date),
            });
        }
        if let Some(other) = seen.insert(r.rel_dir(), &input.name) {
            return Err(Error::Input {
                path: input.record_path.clone(),
                message: format!(
                    "{} and {} are the same build ({}); publish one of them",
                    other,
                    input.name,
                    r.rel_dir().display()
                ),
            });
        }
    }

    std::fs::create_dir_all(root).map_err(io_err(root))?;
    let _lock = lock(root)?;
    clear_leftovers(root)?;

    let mut report = Report::default();
    for input in inputs {
        let rel = input.record.rel_dir();
        let dir = root.join(&rel);
        let rel_s = rel.display().to_string();
        if dir.exists() {
            same_build(&dir, input)?;
            report.unchanged.push(rel_s);
        } else {
            add_build(&dir, input, opts)?;
            report.added.push(rel_s);
        }
    }
    fail_point(opts, "build-files")?;

    // What the tree holds now, and what stays.
    let all = scan(root)?;
    let mut by_image: BTreeMap<_, Vec<(PathBuf, Published)>> = BTreeMap::new();
    for (rel, p) in all {
        by_image.entry(p.image.key()).or_default().push((rel, p));
    }
    let mut kept: Vec<(PathBuf, Published)> = Vec::new();
    let mut dropped: Vec<(PathBuf, String)> = Vec::new();
    for builds in by_image.values_mut() {
        builds.sort_by(|a, b| {
            (b.1.image.creation_date, &b.1.image.serial)
                .cmp(&(a.1.image.creation_date, &a.1.image.serial))
        });
        let mut live = 0;
        for (rel, p) in builds.drain(..) {
            if p.image.expiry_date <= opts.now {
                let why = format!("expired at {}", rfc3339(p.image.expiry_date));
                dropped.push((rel, why));
            } else if live >= opts.keep.max(1) {
                dropped.push((
                    rel,
                    format!("beyond the newest {} (--keep)", opts.keep.max(1)),
                ));
            } else {
                live += 1;
                kept.push((rel, p));
            }
        }
    }

    let lxc = lxc_index(&kept);
    let (index, images) = simplestreams(&kept);
    let mut json = serde_json::to_vec(&images).expect("serialisable");
    json.push(b'\n');
    write_index(root, "streams/v1/images.json", &json, opts)?;
    fail_point(opts, "images.json")?;
    let mut json = serde_json::to_vec(&index).expect("serialisable");
    json.push(b'\n');
    write_index(root, "streams/v1/index.json", &json, opts)?;
    fail_point(opts, "index.json")?;
    let text: String = lxc.iter().flat_map(|l| [l.as_str(), "\n"]).collect();
    write_index(root, "meta/1.0/index-system", text.as_bytes(), opts)?;
    fail_point(opts, "index-system")?;
    write_index(root, "meta/1.0/index-user", text.as_bytes(), opts)?;
    fail_point(opts, "index-user")?;

    for (rel, why) in dropped {
        remove_build(root, &rel)?;
        report.removed.push((rel.display().to_string(), why));
    }
    report.index = lxc;
    Ok(report)
}

fn fail_point(opts: &Options, step: &'static str) -> Result<(), Error> {
    if opts.fail_after == Some(step) {
        return Err(Error::Injected(step));
    }
    Ok(())
}

/// Takes the tree's lock, waiting (and saying so) while another publish holds it.
fn lock(root: &Path) -> Result<nix::fcntl::Flock<File>, Error> {
    use nix::fcntl::{Flock, FlockArg};
    let path = root.join(".kiln-publish.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(l),
        Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
            tracing::warn!(
                "{}: another kiln publish is updating this tree; waiting",
                path.display()
            );
            Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, e)| io_err(&path)(std::io::Error::from(e)))
        }
        Err((_, e)) => Err(io_err(&path)(std::io::Error::from(e))),
    }
}

/// Hidden names a killed publish may have left: staged builds, builds being removed, index
/// temporaries. Called under the lock, so none of them belongs to a live publish.
fn is_leftover(name: &str) -> bool {
    name.starts_with('.')
        && (name.ends_with(".kiln-new")
            || name.ends_with(".kiln-old")
            || name.ends_with(".kiln-tmp"))
}

fn clear_leftovers(root: &Path) -> Result<(), Error> {
    let mut dirs = vec![root.join("meta/1.0"), root.join("streams/v1")];
    // images/D/R/A/V: where staged and removed builds live.
    let mut level = vec![root.join("images")];
    for _ in 0..4 {
        let mut next = Vec::new();
        for d in level {
            for (name, path) in list_dir(&d)? {
                if !name.starts_with('.') && path.is_dir() {
                    next.push(path);
                }
            }
        }
        level = next;
    }
    dirs.extend(level);
    for d in dirs {
        for (name, path) in list_dir(&d)? {
            if is_leftover(&name) {
                tracing::info!(
                    "removing {}, left by an interrupted publish",
                    path.display()
                );
                remove_any(&path)?;
            }
        }
    }
    Ok(())
}

/// The entries of `dir` (none if it does not exist), sorted by name.
fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>, Error> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(io_err(dir))?;
        out.push((e.file_name().to_string_lossy().into_owned(), e.path()));
    }
    out.sort();
    Ok(out)
}

fn remove_any(path: &Path) -> Result<(), Error> {
    let meta = std::fs::symlink_metadata(path).map_err(io_err(path))?;
    if meta.is_dir() {
        std::fs::remove_dir_all(path).map_err(io_err(path))
    } else {
        std::fs::remove_file(path).map_err(io_err(path))
    }
}

/// Checks that the build already at `dir` is `input`, byte for byte.
fn same_build(dir: &Path, input: &BuildInput) -> Result<(), Error> {
    let conflict = |detail: String| Error::Conflict {
        dir: dir.to_path_buf(),
        serial: input.record.serial.clone(),
        detail,
    };
    let record = dir.join("build.json");
    let published = read_published(&record)?;
    let mut image = input.record.clone();
    image.outputs.clear();
    if published.image != image {
        return Err(conflict(format!(
            "its record {} differs from {}",
            record.display(),
            input.record_path.display()
        )));
    }
    let names: Vec<&str> = input.files.iter().map(|f| f.name).collect();
    let there: Vec<&str> = published.files.keys().map(String::as_str).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    if sorted != there {
        return Err(conflict(format!(
            "it has {}, this build has {}",
            there.join(", "),
            sorted.join(", ")
        )));
    }
    for f in &input.files {
        if published.files[f.name].sha256 != sha256_file(&f.path)? {
            return Err(conflict(format!(
                "{} differs from {}",
                f.name,
                f.path.display()
            )));
        }
    }
    Ok(())
}

fn read_published(path: &Path) -> Result<Published, Error> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|e| Error::Input {
        path: path.to_path_buf(),
        message: format!(
            "line {}: not kiln's record of a published build ({e}); remove that build directory",
            e.line()
        ),
    })
}

/// Removes a staged directory unless disarmed.
struct Staged(Option<PathBuf>);

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Copies a new build into a hidden directory beside `dir` and renames it into place.
fn add_build(dir: &Path, input: &BuildInput, opts: &Options) -> Result<(), Error> {
    let parent = dir.parent().expect("build dirs have a parent");
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let staging = parent.join(format!(".{}.kiln-new", input.record.serial));
    if staging.exists() {
        remove_any(&staging)?;
    }
    std::fs::create_dir(&staging).map_err(io_err(&staging))?;
    let guard = Staged(Some(staging.clone()));

    let mut files = BTreeMap::new();
    for f in &input.files {
        let dest = staging.join(f.name);
        std::fs::copy(&f.path, &dest).map_err(io_err(&dest))?;
        File::open(&dest)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&dest))?;
        let size = std::fs::metadata(&dest).map_err(io_err(&dest))?.len();
        files.insert(
            f.name.to_string(),
            FileInfo {
                size,
                sha256: sha256_file(&dest)?,
            },
        );
    }
    let mut fingerprints = BTreeMap::new();
    if staging.join("incus.tar.xz").exists() {
        for (data, ftype) in [
            ("rootfs.squashfs", "squashfs"),
            ("disk.qcow2", "disk-kvm.img"),
        ] {
            if files.contains_key(data) {
                let mut h = Sha256::new();
                hash_into(&mut h, &staging.join("incus.tar.xz"))?;
                hash_into(&mut h, &staging.join(data))?;
                fingerprints.insert(ftype.to_string(), hex::encode(h.finalize()));
            }
        }
    }
    let sums = files.iter().fold(String::new(), |mut out, (name, info)| {
        let _ = writeln!(out, "{}  {name}", info.sha256);
        out
    });
    write_file(&staging.join("SHA256SUMS"), sums.as_bytes())?;
    if let Some(key) = &opts.sign_key {
        sign::detach_sign(
            key,
            &staging.join("SHA256SUMS"),
            &staging.join("SHA256SUMS.asc"),
        )?;
    }
    let mut image = input.record.clone();
    image.outputs.clear();
    let published = Published {
        image,
        files,
        fingerprints,
    };
    let mut json = serde_json::to_vec_pretty(&published).expect("serialisable");
    json.push(b'\n');
    write_file(&staging.join("build.json"), &json)?;
    std::fs::rename(&staging, dir).map_err(io_err(dir))?;
    std::mem::forget(guard);
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut f = File::create(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Every published build: (directory relative to the tree, its record).
fn scan(root: &Path) -> Result<Vec<(PathBuf, Published)>, Error> {
    let mut level = vec![PathBuf::from("images")];
    for _ in 0..5 {
        let mut next = Vec::new();
        for rel in level {
            for (name, path) in list_dir(&root.join(&rel))? {
                if !name.starts_with('.') && path.is_dir() {
                    next.push(rel.join(name));
                }
            }
        }
        level = next;
    }
    let mut out = Vec::new();
    for rel in level {
        let record = root.join(&rel).join("build.json");
        if !record.exists() {
            tracing::warn!(
                "{}: not published by kiln (no build.json); left alone",
                root.join(&rel).display()
            );
            continue;
        }
        let p = read_published(&record)?;
        if p.image.rel_dir() != rel {
            return Err(Error::Input {
                path: record,
                message: format!(
                    "names build {} but lies at {}; remove that directory",
                    p.image.rel_dir().display(),
                    rel.display()
                ),
            });
        }
        out.push((rel, p));
    }
    Ok(out)
}

/// `/images/D/R/A/V/BUILD/` of a relative build directory.
fn url_path(rel: &Path) -> String {
    format!("/{}/", rel.display())
}

/// The LXC index: the newest kept build with both LXC files of each image, sorted.
fn lxc_index(kept: &[(PathBuf, Published)]) -> Vec<String> {
    let mut newest: BTreeMap<_, &(PathBuf, Published)> = BTreeMap::new();
    for b in kept {
        let p = &b.1;
        if p.files.contains_key("rootfs.tar.xz") && p.files.contains_key("meta.tar.xz") {
            // `kept` lists each image's builds newest first.
            newest.entry(p.image.key()).or_insert(b);
        }
    }
    newest
        .values()
        .map(|(rel, p)| {
            let i = &p.image;
            format!(
                "{};{};{};{};{};{}",
                i.os,
                i.release,
                i.architecture,
                i.variant,
                i.serial,
                url_path(rel)
            )
        })
        .collect()
}

/// The simplestreams index and products of the kept builds with Incus files.
fn simplestreams(kept: &[(PathBuf, Published)]) -> (Index, Products) {
    let mut products: BTreeMap<String, Product> = BTreeMap::new();
    for (rel, p) in kept {
        let i = &p.image;
        let item = |name: &str, ftype: &str| {
            p.files.get(name).map(|f| Item {
                combined_disk_kvm_img_sha256: None,
                combined_squashfs_sha256: None,
                ftype: ftype.to_string(),
                path: format!("{}/{name}", rel.display()),
                sha256: f.sha256.clone(),
                size: f.size,
            })
        };
        let mut items = BTreeMap::new();
        if let Some(mut meta) = item("incus.tar.xz", "incus.tar.xz") {
            meta.combined_squashfs_sha256 = p.fingerprints.get("squashfs").cloned();
            meta.combined_disk_kvm_img_sha256 = p.fingerprints.get("disk-kvm.img").cloned();
            items.insert("incus.tar.xz".to_string(), meta);
            for (name, ftype) in [
                ("rootfs.squashfs", "squashfs"),
                ("disk.qcow2", "disk-kvm.img"),
            ] {
                if let Some(it) = item(name, ftype) {
                    items.insert(ftype.to_string(), it);
                }
            }
        }
        if let Some(it) = item("incus-unified.tar.gz", "incus_combined.tar.gz") {
            items.insert("incus_combined.tar.gz".to_string(), it);
        }
        if items.is_empty() {
            continue;
        }
        let key = streams::product_key(&i.os, &i.release, &i.variant, &i.architecture);
        let product = products.entry(key).or_insert_with(|| Product {
            aliases: format!("{}/{}/{}", i.os, i.release, i.variant),
            arch: i.architecture.clone(),
            os: i.os.clone(),
            release: i.release.clone(),
            release_title: i.release.clone(),
            versions: BTreeMap::new(),
            variant: i.variant.clone(),
        });
        // Newest first: a later build of the same minute does not replace the newer one.
        product
            .versions
            .entry(streams::version_key(i.creation_date))
            .or_insert(Version { items });
    }
    let index = Index {
        index: BTreeMap::from([(
            "images".to_string(),
            IndexEntry {
                datatype: "image-downloads",
                path: "streams/v1/images.json",
                products: products.keys().cloned().collect(),
                format: "products:1.0",
            },
        )]),
        format: "index:1.0",
    };
    let products = Products {
        content_id: "images",
        datatype: "image-downloads",
        format: "products:1.0",
        products,
    };
    (index, products)
}

/// Writes an index (and its signature) under hidden names, then renames them into place.
fn write_index(root: &Path, rel: &str, bytes: &[u8], opts: &Options) -> Result<(), Error> {
    let path = root.join(rel);
    let dir = path.parent().expect("indexes live in a directory");
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let name = path
        .file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(".{name}.kiln-tmp"));
    let asc = dir.join(format!("{name}.asc"));
    let asc_tmp = dir.join(format!(".{name}.asc.kiln-tmp"));
    // An unchanged index keeps its file and its signature, when that is the one asked for: a
    // publish that changes nothing rewrites nothing.
    if std::fs::read(&path).is_ok_and(|old| old == bytes) {
        let unchanged = match &opts.sign_key {
            Some(key) => sign::signed_by(key, &path, &asc),
            None => !asc.exists(),
        };
        if unchanged {
            return Ok(());
        }
    }
    let staged = write_file(&tmp, bytes).and_then(|()| match &opts.sign_key {
        Some(key) => sign::detach_sign(key, &tmp, &asc_tmp),
        None => Ok(()),
    });
    if let Err(e) = staged {
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(&asc_tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    if opts.sign_key.is_some() {
        std::fs::rename(&asc_tmp, &asc).map_err(io_err(&asc))?;
    } else if asc.exists() {
        // A signature of an older index would not verify: an unsigned publish removes it.
        std::fs::remove_file(&asc).map_err(io_err(&asc))?;
    }
    Ok(())
}

/// Removes a build the indexes no longer name: renamed aside first, so the tree never shows a
/// half-deleted build under its name; then empty parents up to `images/`.
fn remove_build(root: &Path, rel: &Path) -> Result<(), Error> {
    let dir = root.join(rel);
    let name = rel
        .file_name()
        .expect("a build dir")
        .to_string_lossy()
        .into_owned();
    let aside = dir.with_file_name(format!(".{name}.kiln-old"));
    std::fs::rename(&dir, &aside).map_err(io_err(&dir))?;
    std::fs::remove_dir_all(&aside).map_err(io_err(&aside))?;
    let images = root.join("images");
    let mut parent = dir.parent().map(Path::to_path_buf);
    while let Some(p) = parent {
        if p == images || std::fs::remove_dir(&p).is_err() {
            break;
        }
        parent = p.parent().map(Path::to_path_buf);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A build of plain files (the tree never looks inside them): NAME.lxc/, NAME.incus/.
    fn build(dir: &Path, name: &str, serial: &str, created: u64) -> BuildInput {
        for (out, files) in [
            ("lxc", ["rootfs.tar.xz", "meta.tar.xz"]),
            ("incus", ["incus.tar.xz", "rootfs.squashfs"]),
        ] {
            let d = dir.join(format!("{name}.{out}"));
            std::fs::create_dir_all(&d).unwrap();
            for f in files {
                std::fs::write(d.join(f), format!("{serial} {f}")).unwrap();
            }
        }
        let d = dir.join(format!("{name}.d"));
        std::fs::create_dir_all(&d).unwrap();
        let record = serde_json::json!({
            "os": "debian", "release": "trixie", "variant": "default", "architecture": "amd64",
            "serial": serial, "creation_date": created, "expiry_date": created + 1000,
            "outputs": {"lxc": format!("{name}.lxc"), "incus": format!("{name}.incus")},
        });
        std::fs::write(d.join("image.json"), record.to_string()).unwrap();
        BuildInput::load(dir.join(name).to_str().unwrap()).unwrap()
    }

    fn opts(to: &Path, keep: usize, now: u64) -> Options {
        Options {
            to: to.to_path_buf(),
            sign_key: None,
            keep,
            now,
            fail_after: None,
        }
    }

    #[test]
    fn the_newest_builds_stay_and_the_fingerprint_covers_metadata_then_data() {
        let t = tempfile::tempdir().unwrap();
        let srv = t.path().join("srv");
        let inputs: Vec<BuildInput> = (0..3)
            .map(|i| build(t.path(), &format!("b{i}"), &format!("s{i}"), 100 + i * 60))
            .collect();
        let report = publish(&inputs, &opts(&srv, 2, 150)).unwrap();
        assert_eq!(report.added.len(), 3);
        assert_eq!(
            report.removed,
            [(
                "images/debian/trixie/amd64/default/s0".to_string(),
                "beyond the newest 2 (--keep)".to_string()
            )]
        );
        assert_eq!(
            std::fs::read_to_string(srv.join("meta/1.0/index-user")).unwrap(),
            "debian;trixie;amd64;default;s2;/images/debian/trixie/amd64/default/s2/\n"
        );
        let images: serde_json::Value =
            serde_json::from_slice(&std::fs::read(srv.join("streams/v1/images.json")).unwrap())
                .unwrap();
        let versions = &images["products"]["debian:trixie:default:amd64"]["versions"];
        let item = &versions["197001010002"]["items"]["incus.tar.xz"];
        let mut h = Sha256::new();
        h.update(b"s1 incus.tar.xz");
        h.update(b"s1 rootfs.squashfs");
        assert_eq!(item["combined_squashfs_sha256"], hex::encode(h.finalize()));
        assert_eq!(
            item["path"],
            "images/debian/trixie/amd64/default/s1/incus.tar.xz"
        );
        assert!(versions.get("197001010003").is_some());
        let sums =
            std::fs::read_to_string(srv.join("images/debian/trixie/amd64/default/s2/SHA256SUMS"))
                .unwrap();
        assert_eq!(
            sums.lines().map(|l| &l[66..]).collect::<Vec<_>>(),
            [
                "incus.tar.xz",
                "meta.tar.xz",
                "rootfs.squashfs",
                "rootfs.tar.xz"
            ]
        );
        // Past s1's expiry only s2 is left; past s2's, nothing, and the empty parents go too.
        let r = publish(&[], &opts(&srv, 2, 1160)).unwrap();
        assert_eq!(r.index.len(), 1);
        let r = publish(&[], &opts(&srv, 2, 1220)).unwrap();
        assert!(r.index.is_empty());
        assert!(!srv.join("images/debian").exists());
        assert_eq!(
            std::fs::read(srv.join("meta/1.0/index-system")).unwrap(),
            b""
        );
    }

    #[test]
    fn a_failure_while_staging_leaves_nothing_behind() {
        let t = tempfile::tempdir().unwrap();
        let srv = t.path().join("srv");
        let input = build(t.path(), "b", "s1", 100);
        // The source vanishes between loading and copying.
        std::fs::remove_file(t.path().join("b.incus/rootfs.squashfs")).unwrap();
        let err = publish(&[input], &opts(&srv, 2, 150)).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        let parent = srv.join("images/debian/trixie/amd64/default");
        assert_eq!(std::fs::read_dir(&parent).unwrap().count(), 0);
        assert!(!srv.join("meta").exists());
    }
}
