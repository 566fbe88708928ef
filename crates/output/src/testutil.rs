//! Small inputs for the producers' tests: a tree with the directories the tree outputs treat
//! specially, and a sparse raw disk with data, holes and a tail.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use kiln_host::Cmd;

/// The `security.capability` value [`small_tree`] gives `usr/bin/tool` (cap_net_raw and
/// cap_chown, permitted and effective; a version-2 capability set).
pub const CAPABILITY: [u8; 20] = [
    1, 0, 0, 2, 1, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// A small root tree under `dir/root`: files, a symlink, a hard link (`usr/bin/tool2`), a fifo,
/// an empty directory, contents in `proc/`, `dev/` and `tmp/in_target.d` that the tree outputs
/// leave out, and (where the filesystem and privileges allow) a `security.capability` and a
/// `user.kiln` xattr on `usr/bin/tool`. Modes are set explicitly, whatever the umask.
pub fn small_tree(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let root = dir.join("root");
    for d in [
        "etc",
        "proc/1",
        "sys/kernel",
        "dev/pts",
        "tmp/in_target.d",
        "var/empty",
        "usr/bin",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("etc/hostname"), b"kiln\n").unwrap();
    fs::write(root.join("proc/1/status"), b"not in the output").unwrap();
    fs::write(root.join("sys/kernel/x"), b"not in the output").unwrap();
    fs::write(root.join("tmp/in_target.d/hook"), b"not in the output").unwrap();
    fs::write(root.join("usr/bin/tool"), vec![b'x'; 100_000]).unwrap();
    std::os::unix::fs::symlink("tool", root.join("usr/bin/alias")).unwrap();
    fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool2")).unwrap();
    fs::write(root.join("dev/null-ish"), b"not in the output").unwrap();
    nix::unistd::mkfifo(
        &root.join("var/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let _ = xattr::set(
        root.join("usr/bin/tool"),
        "security.capability",
        &CAPABILITY,
    );
    let _ = xattr::set(root.join("usr/bin/tool"), "user.kiln", b"yes");
    for (p, mode) in [
        ("usr/bin/tool", 0o4755),
        ("etc/hostname", 0o644),
        ("var/fifo", 0o600),
    ] {
        fs::set_permissions(root.join(p), fs::Permissions::from_mode(mode)).unwrap();
    }
    let mut dirs = vec![root.clone()];
    while let Some(d) = dirs.pop() {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            }
        }
    }
    root
}

/// An 8 MiB sparse raw disk `dir/disk.raw`: text at 1 MiB, a block of bytes at 5 MiB, a tail.
pub fn sparse_disk(dir: &Path) -> PathBuf {
    let path = dir.join("disk.raw");
    let f = fs::File::create(&path).unwrap();
    let len: u64 = 8 << 20;
    f.set_len(len).unwrap();
    let text: Vec<u8> = (0..20_000u32)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    f.write_all_at(&text, 1 << 20).unwrap();
    f.write_all_at(&vec![0xa5; 70_000], (5 << 20) + 123)
        .unwrap();
    f.write_all_at(b"tail", len - 4).unwrap();
    path
}

/// Asserts that qemu-img sees the same guest data in `image` as in the raw `disk`.
pub fn qemu_img_compare(disk: &Path, image: &Path) {
    let out = Cmd::new("qemu-img")
        .args(["compare", "-f", "raw"])
        .arg(disk)
        .arg(image)
        .run_unchecked()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}{}",
        image.display(),
        out.stdout_str(),
        out.stderr_str()
    );
}

/// The variable that tells [`child_produce`] what to make (type, tree, destination, epoch).
const CHILD_JOB: &str = "KILN_OUTPUT_TEST_CHILD_JOB";

/// Makes output `ty` of `root` at `dest` in a child process of this test binary that differs
/// from this one in everything that must not matter: umask 077, `TZ=Pacific/Chatham` and
/// another working directory. Tests compare its bytes with those made here.
pub fn produce_elsewhere(ty: &str, root: &Path, dest: &Path, epoch: Option<u64>) {
    let exe = std::env::current_exe().unwrap();
    let job = format!(
        "{ty}\n{}\n{}\n{}",
        root.display(),
        dest.display(),
        epoch.map(|e| e.to_string()).unwrap_or_default()
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Cmd::new("sh")
        .args(["-c", "umask 077; exec \"$0\" \"$@\""])
        .arg(exe)
        .args([
            "--exact",
            "testutil::child_produce",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_JOB, job)
        .env("TZ", "Pacific/Chatham")
        .current_dir(elsewhere.path())
        .run_unchecked()
        .unwrap();
    assert!(
        out.status.success() && out.stdout_str().contains("1 passed"),
        "the child producer failed: {}{}",
        out.stdout_str(),
        out.stderr_str()
    );
}

/// The child side of [`produce_elsewhere`] (run only by it: without its job it does nothing).
/// A qcow2 is written compressed by kiln's own writer at its default level.
#[test]
#[ignore = "run by produce_elsewhere in a child process"]
fn child_produce() {
    let Ok(job) = std::env::var(CHILD_JOB) else {
        return;
    };
    let mut parts = job.split('\n');
    let (Some(ty), Some(root), Some(dest), Some(epoch)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        panic!("bad job {job:?}");
    };
    let mut opts = crate::Options {
        source_date_epoch: epoch.parse().ok(),
        compress: ty == "qcow2",
        qcow2_level: (ty == "qcow2").then_some(crate::qcow2::DEFAULT_LEVEL),
        ..crate::Options::default()
    };
    if crate::incus::needs_identity(ty) {
        opts.image = image_opts(Path::new(root), "amd64").image;
    }
    crate::produce(
        crate::OutputType::parse(ty).unwrap(),
        Path::new(root),
        Path::new(dest),
        &opts,
    )
    .unwrap();
}

/// One entry of a layer as a strict reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    /// Path in the archive.
    pub path: String,
    /// Entry type.
    pub kind: tar::EntryType,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time.
    pub mtime: u64,
    /// Link target (symlinks and hard links).
    pub link: Option<String>,
    /// Content size.
    pub size: u64,
    /// PAX records, in order.
    pub pax: Vec<(String, Vec<u8>)>,
}

/// Reads every entry of the uncompressed tar `bytes` with the `tar` crate; a malformed header
/// or PAX record fails the test. Checks each header's user and group names are empty.
pub fn read_layer(bytes: &[u8]) -> Vec<LayerEntry> {
    let mut ar = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let pax = match e.pax_extensions().unwrap() {
            Some(p) => p
                .map(|r| {
                    let r = r.unwrap();
                    (r.key().unwrap().to_string(), r.value_bytes().to_vec())
                })
                .collect(),
            None => Vec::new(),
        };
        let h = e.header();
        assert_eq!(h.username_bytes().unwrap_or_default(), b"");
        assert_eq!(h.groupname_bytes().unwrap_or_default(), b"");
        let entry = LayerEntry {
            path: e.path().unwrap().to_string_lossy().into_owned(),
            kind: h.entry_type(),
            mode: h.mode().unwrap(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            mtime: h.mtime().unwrap(),
            link: e
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned()),
            size: h.size().unwrap(),
            pax,
        };
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        assert_eq!(data.len() as u64, entry.size, "{}", entry.path);
        out.push(entry);
    }
    out
}

/// The paths under `root` (relative, sorted; directories with a trailing `/`) a layer of it
/// holds: `proc`, `sys` and `dev` without their contents, no `tmp/in_target.d`.
pub fn tree_list(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == "tmp/in_target.d" {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                out.push(format!("{rel}/"));
                if !["proc", "sys", "dev"].contains(&rel.as_str()) {
                    walk(root, &e.path(), out);
                }
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Options with `SOURCE_DATE_EPOCH` 1700000000 and the identity of the tree `root` for `arch`:
/// Debian trixie (from DISTRO_NAME and DIB_RELEASE when the tree has no os-release), variant
/// `default`, 30 days to expiry, named after the tree's directory.
pub fn image_opts(root: &Path, arch: &str) -> crate::Options {
    let inputs = crate::identity::Inputs {
        name: root.file_name().unwrap().to_string_lossy().into_owned(),
        arch: arch.into(),
        source_date_epoch: Some(1_700_000_000),
        build_start: 1_800_000_000,
        expiry_days: 30,
        variant: "default".into(),
        distro_name: Some("debian".into()),
        dib_release: Some("trixie".into()),
    };
    crate::Options {
        source_date_epoch: Some(1_700_000_000),
        arch: Some(arch.into()),
        image: Some(crate::identity::ImageInfo::new(root, &inputs).unwrap()),
        ..crate::Options::default()
    }
}

/// The decompressed bytes of the xz file `path`.
pub fn xz_file(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(
        &mut liblzma::read::XzDecoder::new(fs::File::open(path).unwrap()),
        &mut out,
    )
    .unwrap();
    out
}
