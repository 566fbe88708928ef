//! `lxc`: the image pair LXC's `local` and `download` templates read, in the directory
//! `NAME.lxc/`.
//!
//! - `rootfs.tar.xz`: the finished tree, entries named `./…` with a `./` entry for the root,
//!   sorted, numeric owners, xattrs as PAX `SCHILY.xattr.*` records, mtimes clamped to
//!   `SOURCE_DATE_EPOCH`; `/proc` and `/sys` without contents, `/dev` with its static nodes (an
//!   unprivileged container skips them, see `excludes-user`). `/etc/hostname` holds `LXC_NAME`
//!   and `/etc/hosts` a `127.0.1.1 LXC_NAME` line, which the template replaces by the
//!   container's name. They are substituted in the stream: the build's tree, which other
//!   outputs read, is not changed. The walk is [`crate::container`]'s.
//! - `meta.tar.xz`: `config` and `config-user` (LXC's `common.conf`, for unprivileged containers
//!   `userns.conf` too, and the architecture's personality), `create-message`, `expiry` (seconds
//!   since 1970 and a newline), `excludes-user` (one `./dev/NODE` per device node in the
//!   root filesystem, or a lone newline) and `templates` (the files in which the template
//!   substitutes `LXC_NAME`).
//!
//! Both are xz-compressed on every core with a fixed block size ([`crate::xz`]): the same tree,
//! epoch and settings give the same bytes. `lxc-create -t local -- --metadata meta.tar.xz
//! --fstree rootfs.tar.xz` makes a container from them.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};

use crate::container::{write_tree, Archive, TreeStyle};
use crate::identity::ImageInfo;
use crate::{Error, Options, Producer, Result};

/// The placeholder LXC's templates replace by the container's name.
pub const LXC_NAME: &str = "LXC_NAME";

/// The files in which the name is substituted, relative to the tree.
pub(crate) const NAMED_FILES: &[&str] = &["etc/hostname", "etc/hosts"];

/// Directories the root filesystem keeps without their contents.
const EMPTIED: &[&str] = &["proc", "sys"];

/// The `lxc` producer.
#[derive(Debug)]
pub struct Lxc;

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The identity the LXC and Incus producers need (the pipeline computes it once per build).
pub(crate) fn image_info(opts: &Options) -> Result<&ImageInfo> {
    opts.image.as_ref().ok_or_else(|| {
        Error::Identity(
            "the image's identity (distribution, release, dates) was not computed for this output"
                .into(),
        )
    })
}

/// `/etc/hosts` with the image's own name `name`: every `127.0.1.1` line replaced by one
/// `127.0.1.1<TAB>name` line, placed after the first `127.0.0.1` line (first if there is none).
pub(crate) fn hosts_with_name(hosts: &str, name: &str) -> String {
    let mut out = String::new();
    let own = format!("127.0.1.1\t{name}\n");
    let mut placed = false;
    for line in hosts.lines() {
        if line.split_whitespace().next() == Some("127.0.1.1") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if !placed && line.split_whitespace().next() == Some("127.0.0.1") {
            out.push_str(&own);
            placed = true;
        }
    }
    if !placed {
        out.insert_str(0, &own);
    }
    out
}

/// The tree's files among [`NAMED_FILES`] that are regular files, with their contents naming
/// the image `name` (`/etc/hostname` as `name` alone).
pub(crate) fn named_files(root: &Path, name: &str) -> Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for rel in NAMED_FILES {
        let path = root.join(rel);
        if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let bytes = if *rel == "etc/hostname" {
            format!("{name}\n").into_bytes()
        } else {
            let text = fs::read(&path).map_err(io_at(&path))?;
            hosts_with_name(&String::from_utf8_lossy(&text), name).into_bytes()
        };
        out.insert(PathBuf::from(rel), bytes);
    }
    Ok(out)
}

/// Writes `rootfs.tar.xz` of `root` to `dest` and returns the device nodes it holds.
fn write_rootfs(root: &Path, dest: &Path, opts: &Options) -> Result<Vec<PathBuf>> {
    let file = fs::File::create(dest).map_err(io_at(dest))?;
    let xz = crate::xz::encoder(BufWriter::new(file)).map_err(io_at(dest))?;
    let mut b = tar::Builder::new(xz);
    let style = TreeStyle {
        prefix: "./",
        emptied: EMPTIED,
        replace: named_files(root, LXC_NAME)?,
    };
    let devices = write_tree(&mut b, root, opts, dest, &style)?;
    let xz = b.into_inner().map_err(io_at(dest))?;
    let mut out = xz.finish().map_err(io_at(dest))?;
    out.flush().map_err(io_at(dest))?;
    Ok(devices)
}

/// The files of `meta.tar.xz`, by name.
fn meta_files(
    info: &ImageInfo,
    devices: &[PathBuf],
    templates: &[&str],
) -> BTreeMap<&'static str, String> {
    let arch = format!("lxc.arch = {}\n", info.lxc_personality());
    let common = "lxc.include = LXC_TEMPLATE_CONFIG/common.conf\n";
    let mut m = BTreeMap::new();
    m.insert("config", format!("{common}{arch}"));
    m.insert(
        "config-user",
        format!("{common}lxc.include = LXC_TEMPLATE_CONFIG/userns.conf\n{arch}"),
    );
    m.insert(
        "create-message",
        format!(
            "You just created a {} container (made by kiln).\n",
            info.description
        ),
    );
    m.insert("expiry", format!("{}\n", info.expiry_date));
    let excludes = if devices.is_empty() {
        "\n".to_string()
    } else {
        devices.iter().fold(String::new(), |mut s, d| {
            s.push_str("./");
            s.push_str(&d.to_string_lossy());
            s.push('\n');
            s
        })
    };
    m.insert("excludes-user", excludes);
    m.insert(
        "templates",
        templates.iter().fold(String::new(), |mut s, t| {
            s.push('/');
            s.push_str(t);
            s.push('\n');
            s
        }),
    );
    m
}

impl Producer for Lxc {
    fn produce(&self, root: &Path, pending: &Path, opts: &Options) -> Result<()> {
        let info = image_info(opts)?;
        fs::create_dir(pending).map_err(io_at(pending))?;
        let devices = write_rootfs(root, &pending.join("rootfs.tar.xz"), opts)?;
        let present: Vec<&str> = NAMED_FILES
            .iter()
            .copied()
            .filter(|rel| fs::symlink_metadata(root.join(rel)).is_ok_and(|m| m.is_file()))
            .collect();
        let meta_path = pending.join("meta.tar.xz");
        let mut ar = Archive::new(Vec::new(), opts, &meta_path);
        for (name, text) in meta_files(info, &devices, &present) {
            ar.bytes(name, text.as_bytes())?;
        }
        let tar = ar.finish()?;
        let xz = crate::xz::compress(&tar).map_err(io_at(&meta_path))?;
        fs::write(&meta_path, xz).map_err(io_at(&meta_path))
    }

    fn runs_tools(&self, _opts: &Options) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{image_opts, read_layer, small_tree, xz_file};
    use crate::{pending_path, produce, OutputType};
    use tar::EntryType as T;

    #[test]
    fn hosts_get_one_line_for_the_name() {
        assert_eq!(
            hosts_with_name(
                "127.0.0.1\tlocalhost\n127.0.1.1\tbuild\n::1 localhost\n",
                "c1"
            ),
            "127.0.0.1\tlocalhost\n127.0.1.1\tc1\n::1 localhost\n"
        );
        assert_eq!(
            hosts_with_name("::1 localhost\n", "c1"),
            "127.0.1.1\tc1\n::1 localhost\n"
        );
    }

    /// The pair of a small tree: rootfs entries, meta files.
    fn pair(
        root: &Path,
        dir: &Path,
        opts: &Options,
    ) -> (Vec<crate::testutil::LayerEntry>, BTreeMap<String, String>) {
        let dest = dir.join("img.lxc");
        produce(OutputType::parse("lxc").unwrap(), root, &dest, opts).unwrap();
        let out = pending_path(&dest);
        let rootfs = read_layer(&xz_file(&out.join("rootfs.tar.xz")));
        let meta = read_layer(&xz_file(&out.join("meta.tar.xz")));
        let mut files = BTreeMap::new();
        let raw = xz_file(&out.join("meta.tar.xz"));
        let mut ar = tar::Archive::new(raw.as_slice());
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            files.insert(e.path().unwrap().display().to_string(), s);
        }
        assert_eq!(meta.len(), files.len());
        (rootfs, files)
    }

    #[test]
    fn the_pair_reads_back_strictly() {
        let d = tempfile::tempdir().unwrap();
        let root = small_tree(d.path());
        fs::write(
            root.join("etc/hosts"),
            "127.0.0.1 localhost\n127.0.1.1 kiln\n",
        )
        .unwrap();
        let is_root = nix::unistd::geteuid().is_root();
        if is_root {
            nix::sys::stat::mknod(
                &root.join("dev/null"),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(1, 3),
            )
            .unwrap();
        }
        let opts = image_opts(&root, "amd64");
        let (rootfs, meta) = pair(&root, d.path(), &opts);
        let names: Vec<&str> = rootfs.iter().map(|e| e.path.as_str()).collect();
        let mut want = vec!["./", "./dev/"];
        if is_root {
            want.push("./dev/null");
        }
        want.extend([
            "./dev/null-ish",
            "./dev/pts/",
            "./etc/",
            "./etc/hostname",
            "./etc/hosts",
            "./proc/",
            "./sys/",
            "./tmp/",
            "./usr/",
            "./usr/bin/",
            "./usr/bin/alias",
            "./usr/bin/tool",
            "./usr/bin/tool2",
            "./var/",
            "./var/empty/",
            "./var/fifo",
        ]);
        assert_eq!(names, want);
        let get = |p: &str| rootfs.iter().find(|e| e.path == p).unwrap();
        assert_eq!(get("./usr/bin/tool2").kind, T::Link);
        assert_eq!(
            get("./usr/bin/tool2").link.as_deref(),
            Some("./usr/bin/tool")
        );
        assert_eq!(get("./usr/bin/alias").link.as_deref(), Some("tool"));
        assert_eq!(get("./etc/hostname").size, "LXC_NAME\n".len() as u64);
        // The tree itself is unchanged.
        assert_eq!(
            fs::read_to_string(root.join("etc/hostname")).unwrap(),
            "kiln\n"
        );
        assert!(rootfs.iter().all(|e| e.mtime <= 1_700_000_000));
        assert_eq!(
            meta.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "config",
                "config-user",
                "create-message",
                "excludes-user",
                "expiry",
                "templates"
            ]
        );
        assert_eq!(
            meta["config"],
            "lxc.include = LXC_TEMPLATE_CONFIG/common.conf\nlxc.arch = linux64\n"
        );
        assert_eq!(
            meta["config-user"],
            "lxc.include = LXC_TEMPLATE_CONFIG/common.conf\nlxc.include = LXC_TEMPLATE_CONFIG/userns.conf\nlxc.arch = linux64\n"
        );
        assert_eq!(meta["expiry"], "1702592000\n");
        assert_eq!(meta["templates"], "/etc/hostname\n/etc/hosts\n");
        assert_eq!(
            meta["excludes-user"],
            if is_root { "./dev/null\n" } else { "\n" }
        );
        assert!(
            meta["create-message"].contains("Debian trixie amd64"),
            "{}",
            meta["create-message"]
        );
        // The hosts file in the tarball names LXC_NAME.
        let raw = xz_file(&pending_path(&d.path().join("img.lxc")).join("rootfs.tar.xz"));
        let mut ar = tar::Archive::new(raw.as_slice());
        let mut hosts = String::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            if e.path_bytes().as_ref() == b"./etc/hosts" {
                std::io::Read::read_to_string(&mut e, &mut hosts).unwrap();
            }
        }
        assert_eq!(hosts, "127.0.0.1 localhost\n127.0.1.1\tLXC_NAME\n");
        // A 32-bit architecture's personality.
        fs::create_dir(d.path().join("b")).unwrap();
        let (_, meta) = pair(&root, &d.path().join("b"), &image_opts(&root, "armhf"));
        assert!(meta["config"].ends_with("lxc.arch = linux32\n"));
    }

    #[test]
    fn long_names_survive_with_their_prefix() {
        let d = tempfile::tempdir().unwrap();
        let root = small_tree(d.path());
        let deep = root.join("var").join("x".repeat(90)).join("y".repeat(90));
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("f"), b"1").unwrap();
        std::os::unix::fs::symlink("z".repeat(150), deep.join("l")).unwrap();
        let (rootfs, _) = pair(&root, d.path(), &image_opts(&root, "amd64"));
        let long = format!("./var/{}/{}/f", "x".repeat(90), "y".repeat(90));
        assert!(rootfs.iter().any(|e| e.path == long), "{long} missing");
        let l = rootfs.iter().find(|e| e.path.ends_with("/l")).unwrap();
        assert_eq!(l.link.as_deref(), Some("z".repeat(150).as_str()));
        // GNU tar lists them too.
        let f = pending_path(&d.path().join("img.lxc")).join("rootfs.tar.xz");
        let list = kiln_host::Cmd::new("tar")
            .args(["-tJf"])
            .arg(&f)
            .run()
            .unwrap()
            .stdout_str();
        assert!(list.lines().any(|l| l == long), "{list}");
    }

    #[test]
    fn the_same_tree_gives_the_same_bytes_and_no_identity_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let root = small_tree(d.path());
        let opts = image_opts(&root, "amd64");
        let ty = OutputType::parse("lxc").unwrap();
        let a = d.path().join("a.lxc");
        produce(ty, &root, &a, &opts).unwrap();
        let b = d.path().join("b.lxc");
        crate::testutil::produce_elsewhere("lxc", &root, &b, Some(1_700_000_000));
        for f in ["rootfs.tar.xz", "meta.tar.xz"] {
            assert!(
                fs::read(pending_path(&a).join(f)).unwrap()
                    == fs::read(pending_path(&b).join(f)).unwrap(),
                "{f} differs"
            );
        }
        let e = produce(ty, &root, &d.path().join("c.lxc"), &Options::default()).unwrap_err();
        assert!(matches!(e, Error::Identity(_)), "{e}");
        assert!(!d.path().join(".c.lxc.kiln-new").exists());
    }

    /// LXC's own `local` template makes a container from the pair (root only: it extracts
    /// with owners kept).
    #[test]
    fn lxc_create_reads_the_pair() {
        if !nix::unistd::geteuid().is_root() || !kiln_host::tools::installed("lxc-create") {
            kiln_testkit::skip(
                "lxc::lxc_create_reads_the_pair",
                "needs root and lxc-create (package lxc)",
            );
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let root = small_tree(d.path());
        fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
        let mut opts = image_opts(&root, "amd64");
        // Not expired today.
        if let Some(i) = opts.image.as_mut() {
            i.expiry_date = u64::MAX / 2;
        }
        let dest = d.path().join("img.lxc");
        produce(OutputType::parse("lxc").unwrap(), &root, &dest, &opts).unwrap();
        let out = pending_path(&dest);
        let lxcpath = d.path().join("lxc");
        fs::create_dir(&lxcpath).unwrap();
        kiln_host::Cmd::new("lxc-create")
            .arg("-P")
            .arg(&lxcpath)
            .args(["-t", "local", "-n", "c1", "--", "--metadata"])
            .arg(out.join("meta.tar.xz"))
            .arg("--fstree")
            .arg(out.join("rootfs.tar.xz"))
            .run()
            .unwrap();
        let c1 = lxcpath.join("c1");
        assert_eq!(
            fs::read_to_string(c1.join("rootfs/etc/hostname")).unwrap(),
            "c1\n"
        );
        assert_eq!(
            fs::read_to_string(c1.join("rootfs/etc/hosts")).unwrap(),
            "127.0.0.1 localhost\n127.0.1.1\tc1\n"
        );
        assert!(c1.join("rootfs/usr/bin/tool2").is_file());
        let config = fs::read_to_string(c1.join("config")).unwrap();
        assert!(config.contains("lxc.arch = linux64"), "{config}");
    }
}
