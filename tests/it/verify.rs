//! `kiln verify IMAGE --against OTHER` on small images made here from temp trees, no root:
//! tar, tgz, squashfs, an MBR disk (ext4 made with `mke2fs -d`, vfat with mtools) as raw and
//! as qcow2. One file deep in the tree is perturbed (content, mode, link target, missing, extra,
//! only its mtime) and the verdict must name exactly that path and what differs.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{assert_input_error, kiln_bin, run};

/// The deep file every perturbation touches.
const DEEP: &str = "usr/share/doc/pkg/deep/file.txt";
const TIME: &str = "@1700000000";

fn on_path(tool: &str) -> bool {
    kiln_host::tools::installed(tool)
}

/// Skips (visibly) unless every tool is installed.
fn have(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    if missing.is_empty() {
        return true;
    }
    kiln_testkit::skip(test, &format!("not installed: {}", missing.join(", ")));
    false
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().expect("run a tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every entry's mtime set to [`TIME`] (links too).
fn settle(root: &Path) {
    sh(Command::new("find")
        .arg(root)
        .args(["-exec", "touch", "-h", "-d", TIME, "{}", "+"]));
}

/// The base tree: a few directories, files of several modes, a symlink.
fn base_tree(root: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let w = |rel: &str, body: &str| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    };
    w("etc/hostname", "kiln\n");
    w(DEEP, "the same length A\n");
    w("usr/share/doc/pkg/deep/other", "other\n");
    w("usr/bin/tool", "#!/bin/sh\n");
    w("usr/lib/libx.so.1", "lib\n");
    std::fs::set_permissions(
        root.join("usr/bin/tool"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("libx.so.1", root.join("usr/lib/libx.so")).unwrap();
    std::os::unix::fs::symlink("file.txt", root.join("usr/share/doc/pkg/deep/link")).unwrap();
    settle(root);
}

/// A perturbation of the base tree and the message it must give (after the path).
struct Case {
    name: &'static str,
    apply: fn(&Path),
    /// The path the verdict names.
    path: &'static str,
    /// What the verdict says differs, its start.
    says: &'static str,
}

fn cases() -> Vec<Case> {
    use std::os::unix::fs::PermissionsExt as _;
    vec![
        Case {
            name: "content",
            apply: |r| {
                std::fs::write(r.join(DEEP), "the same length B\n").unwrap();
                settle(r);
            },
            path: "/usr/share/doc/pkg/deep/file.txt",
            says: "content differs (same size; sha256 ",
        },
        Case {
            name: "mode",
            apply: |r| {
                std::fs::set_permissions(r.join(DEEP), std::fs::Permissions::from_mode(0o600))
                    .unwrap();
            },
            path: "/usr/share/doc/pkg/deep/file.txt",
            says: "mode differs: 0644 vs 0600",
        },
        Case {
            name: "link",
            apply: |r| {
                let l = r.join("usr/share/doc/pkg/deep/link");
                std::fs::remove_file(&l).unwrap();
                std::os::unix::fs::symlink("other", &l).unwrap();
                settle(r);
            },
            path: "/usr/share/doc/pkg/deep/link",
            says: "link target differs: file.txt vs other",
        },
        Case {
            name: "missing",
            apply: |r| {
                std::fs::remove_file(r.join(DEEP)).unwrap();
                settle(r);
            },
            path: "/usr/share/doc/pkg/deep/file.txt",
            says: "only in A, missing from B",
        },
        Case {
            name: "extra",
            apply: |r| {
                std::fs::write(r.join("usr/share/doc/pkg/deep/extra"), "x").unwrap();
                settle(r);
            },
            path: "/usr/share/doc/pkg/deep/extra",
            says: "only in B, missing from A",
        },
        Case {
            name: "mtime",
            apply: |r| {
                sh(Command::new("touch")
                    .args(["-d", "@1700000001"])
                    .arg(r.join(DEEP)));
            },
            path: "/usr/share/doc/pkg/deep/file.txt",
            says: "mtime differs: 1700000000 vs 1700000001",
        },
    ]
}

#[derive(Clone, Copy, Debug)]
enum Fmt {
    Tar,
    Tgz,
    Squashfs,
    Raw,
    Qcow2,
}

impl Fmt {
    fn ext(self) -> &'static str {
        match self {
            Fmt::Tar => "tar",
            Fmt::Tgz => "tgz",
            Fmt::Squashfs => "squash",
            Fmt::Raw => "raw",
            Fmt::Qcow2 => "qcow2",
        }
    }

    fn tools(self) -> &'static [&'static str] {
        match self {
            Fmt::Tar | Fmt::Tgz => &["tar", "gzip"],
            Fmt::Squashfs => &["mksquashfs", "unsquashfs"],
            Fmt::Raw | Fmt::Qcow2 => &[
                "mke2fs",
                "debugfs",
                "sfdisk",
                "blkid",
                "mkfs.vfat",
                "mcopy",
                "qemu-img",
            ],
        }
    }

    /// Makes the image `out` of the tree `root`; `esp` is the content of the disk's vfat file.
    fn make(self, root: &Path, out: &Path, esp: &str) {
        match self {
            Fmt::Tar => sh(Command::new("tar")
                .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "-C"])
                .arg(root)
                .arg("-cf")
                .arg(out)
                .arg(".")),
            Fmt::Tgz => sh(Command::new("sh").arg("-c").arg(format!(
                "tar --sort=name --owner=0 --group=0 --numeric-owner -C '{}' -c . | gzip -n -6 > '{}'",
                root.display(),
                out.display()
            ))),
            Fmt::Squashfs => sh(Command::new("mksquashfs")
                .arg(root)
                .arg(out)
                .args(["-noappend", "-quiet", "-no-progress", "-all-root", "-mkfs-time", "0"])),
            Fmt::Raw => make_disk(root, out, esp, UUID),
            Fmt::Qcow2 => {
                let raw = out.with_extension("tmp-raw");
                make_disk(root, &raw, esp, UUID);
                sh(Command::new("qemu-img")
                    .args(["convert", "-f", "raw", "-O", "qcow2"])
                    .arg(&raw)
                    .arg(out));
                std::fs::remove_file(raw).unwrap();
            }
        }
    }
}

/// The ext4 UUID of the test disks.
const UUID: &str = "2d4c6b0a-0000-4000-8000-000000000001";

/// An MBR disk: partition 1 ext4 of `root` (UUID `uuid`, fixed hash seed), partition 2 vfat
/// with `EFI/BOOT/boot.txt` holding `esp`.
fn make_disk(root: &Path, out: &Path, esp: &str, uuid: &str) {
    let dir = out.parent().unwrap();
    let fs = dir.join(format!(
        "{}.ext4",
        out.file_name().unwrap().to_string_lossy()
    ));
    sh(Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-U", uuid])
        .args([
            "-E",
            "hash_seed=2d4c6b0a-0000-4000-8000-000000000002,root_owner=0:0",
        ])
        .env("E2FSPROGS_FAKE_TIME", "1700000000")
        .arg("-d")
        .arg(root)
        .arg(&fs)
        .arg("8M"));
    let vf = dir.join(format!(
        "{}.vfat",
        out.file_name().unwrap().to_string_lossy()
    ));
    let _ = std::fs::remove_file(&vf);
    sh(Command::new("mkfs.vfat")
        .args(["-i", "12345678", "-C"])
        .arg(&vf)
        .arg("4096"));
    let payload = dir.join("boot.txt");
    std::fs::write(&payload, esp).unwrap();
    sh(Command::new("touch").args(["-d", TIME]).arg(&payload));
    let img = format!("{}", vf.display());
    sh(Command::new("mmd")
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["-i", &img, "::/EFI", "::/EFI/BOOT"]));
    sh(Command::new("mcopy")
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["-m", "-i", &img])
        .arg(&payload)
        .arg("::/EFI/BOOT/boot.txt"));
    sh(Command::new("truncate").args(["-s", "16M"]).arg(out));
    sh(Command::new("sh").arg("-c").arg(format!(
        "printf 'label: dos\\nlabel-id: 0x12345678\\nstart=2048,size=16384,type=83\\nstart=18432,size=8192,type=c\\n' | sfdisk -q '{}'",
        out.display()
    )));
    for (part, seek) in [(&fs, "2048"), (&vf, "18432")] {
        sh(Command::new("dd")
            .arg(format!("if={}", part.display()))
            .arg(format!("of={}", out.display()))
            .args([
                "bs=512",
                &format!("seek={seek}"),
                "conv=notrunc,sparse",
                "status=none",
            ]));
    }
    std::fs::remove_file(fs).unwrap();
    std::fs::remove_file(vf).unwrap();
}

fn verify(a: &Path, b: &Path) -> (i32, String, String) {
    let mut c = Command::new(kiln_bin());
    c.arg("verify")
        .arg(a)
        .arg("--against")
        .arg(b)
        .arg("--no-diffoscope");
    run(c)
}

/// The prefix of the verdict line for a path inside the filesystem.
fn prefix(fmt: Fmt) -> &'static str {
    match fmt {
        Fmt::Raw | Fmt::Qcow2 => "partition 1 (ext4): ",
        _ => "",
    }
}

fn perturbations_are_named(fmt: Fmt) {
    let test = &format!("verify_{fmt:?}_names_the_perturbed_path");
    if !have(test, fmt.tools()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    base_tree(&base);
    let a = dir.path().join(format!("a.{}", fmt.ext()));
    fmt.make(&base, &a, "esp");
    // A copy: identical bytes.
    let same = dir.path().join(format!("same.{}", fmt.ext()));
    std::fs::copy(&a, &same).unwrap();
    let (code, out, err) = verify(&a, &same);
    assert_eq!(code, 0, "{fmt:?} identical: {out}{err}");
    assert!(
        out.contains(": identical to ") && out.contains("(sha256 "),
        "{out}"
    );
    for case in cases() {
        let tree = dir.path().join(case.name);
        sh(Command::new("cp").arg("-a").arg(&base).arg(&tree));
        (case.apply)(&tree);
        let b = dir.path().join(format!("{}.{}", case.name, fmt.ext()));
        fmt.make(&tree, &b, "esp");
        let (code, out, err) = verify(&a, &b);
        let says = case
            .says
            .replace(" A", &format!(" {}", a.display()))
            .replace(" B", &format!(" {}", b.display()));
        let want = format!(
            "{}: differs from {}: {}{}: {says}",
            a.display(),
            b.display(),
            prefix(fmt),
            case.path
        );
        assert_eq!(code, 1, "{fmt:?} {}: {out}{err}", case.name);
        assert!(
            out.starts_with(&want),
            "{fmt:?} {}:\nwant {want}\ngot  {out}{err}",
            case.name
        );
        assert_eq!(out.lines().count(), 1, "{out}");
    }
    // Nothing of the extractions is left in TMPDIR.
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let b = dir.path().join(format!("content.{}", fmt.ext()));
    let mut c = Command::new(kiln_bin());
    c.env("TMPDIR", &tmp)
        .arg("verify")
        .arg(&a)
        .arg("--against")
        .arg(&b)
        .arg("--no-diffoscope");
    assert_eq!(run(c).0, 1);
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "left in TMPDIR"
    );
}

#[test]
fn verify_tar_names_the_perturbed_path() {
    perturbations_are_named(Fmt::Tar);
}

#[test]
fn verify_tgz_names_the_perturbed_path() {
    perturbations_are_named(Fmt::Tgz);
}

#[test]
fn verify_squashfs_names_the_perturbed_path() {
    perturbations_are_named(Fmt::Squashfs);
}

#[test]
fn verify_raw_names_the_perturbed_path() {
    perturbations_are_named(Fmt::Raw);
}

#[test]
fn verify_qcow2_names_the_perturbed_path() {
    perturbations_are_named(Fmt::Qcow2);
}

#[test]
fn verify_names_a_file_of_the_vfat_partition() {
    let test = "verify_names_a_file_of_the_vfat_partition";
    if !have(test, Fmt::Raw.tools()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    base_tree(&base);
    let (a, b) = (dir.path().join("a.raw"), dir.path().join("b.raw"));
    Fmt::Raw.make(&base, &a, "loader 1");
    Fmt::Raw.make(&base, &b, "loader 2");
    let (code, out, err) = verify(&a, &b);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(": partition 2 (vfat): /EFI/BOOT/boot.txt: content differs (same size;"),
        "{out}"
    );
}

#[test]
fn same_files_in_other_structures_name_the_structure() {
    let test = "same_files_in_other_structures_name_the_structure";
    if !have(
        test,
        &[
            "tar",
            "gzip",
            "mke2fs",
            "debugfs",
            "sfdisk",
            "blkid",
            "mkfs.vfat",
            "mcopy",
        ],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    base_tree(&base);
    // tgz: the same tar compressed at two levels.
    let (a, b) = (dir.path().join("a.tgz"), dir.path().join("b.tgz"));
    Fmt::Tgz.make(&base, &a, "");
    sh(Command::new("sh").arg("-c").arg(format!(
        "tar --sort=name --owner=0 --group=0 --numeric-owner -C '{}' -c . | gzip -n -1 > '{}'",
        base.display(),
        b.display()
    )));
    let (code, out, _) = verify(&a, &b);
    assert_eq!(code, 1);
    assert!(
        out.contains(": the files are identical; the archives differ"),
        "{out}"
    );
    // A disk whose ext4 has another UUID: the partition is named, no path, no byte offset of
    // a file.
    let (a, b) = (dir.path().join("a.raw"), dir.path().join("b.raw"));
    make_disk(&base, &a, "esp", UUID);
    make_disk(&base, &b, "esp", "2d4c6b0a-0000-4000-8000-0000000000ff");
    let (code, out, err) = verify(&a, &b);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(": the files are identical; the filesystem structures of partition 1 (ext4,"),
        "{out}"
    );
}

#[test]
fn diffoscope_runs_on_the_differing_pair_or_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    base_tree(&base);
    let a = dir.path().join("a.tar");
    Fmt::Tar.make(&base, &a, "");
    std::fs::write(base.join(DEEP), "the same length B\n").unwrap();
    settle(&base);
    let b = dir.path().join("b.tar");
    Fmt::Tar.make(&base, &b, "");
    let mut c = Command::new(kiln_bin());
    c.arg("verify").arg(&a).arg("--against").arg(&b);
    let (code, out, err) = run(c);
    assert_eq!(code, 1, "{out}{err}");
    let first = out.lines().next().unwrap_or("");
    assert!(
        first.contains("/usr/share/doc/pkg/deep/file.txt: content differs"),
        "{out}"
    );
    if on_path("diffoscope") {
        // The report is on the two extracted files, not the archives.
        assert!(out.contains("--- diffoscope ---"), "{out}");
        assert!(
            out.contains("-the same length A") && out.contains("+the same length B"),
            "{out}"
        );
    } else {
        assert!(err.contains("apt-get install diffoscope-minimal"), "{err}");
    }
}

#[test]
fn bad_input_exits_2_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| -> PathBuf { dir.path().join(n) };
    std::fs::write(p("x.tar"), vec![0u8; 10240]).unwrap();
    // Unknown format, two formats, a missing image.
    for (a, b, needle) in [
        (
            "x.iso",
            "x.tar",
            "x.iso: kiln verify cannot tell the image's format",
        ),
        (
            "x.tar",
            "y.qcow2",
            "are not of the same format (tar vs qcow2)",
        ),
        ("x.tar", "none.tar", "none.tar: No such file or directory"),
    ] {
        std::fs::write(p("x.iso"), "x").unwrap();
        std::fs::write(p("y.qcow2"), "x").unwrap();
        let (code, _, err) = verify(&p(a), &p(b));
        assert_input_error(code, &err, &[needle]);
    }
    // Damaged images: a truncated gzip, a squashfs that is not one, a cut qcow2.
    std::fs::write(p("d.tgz"), [0x1f, 0x8b, 8, 0, 0, 0, 0, 0]).unwrap();
    std::fs::write(p("e.tgz"), [0x1f, 0x8b, 8, 0, 0, 0, 0, 1]).unwrap();
    let (code, _, err) = verify(&p("d.tgz"), &p("e.tgz"));
    assert_input_error(code, &err, &["d.tgz: cannot read the image"]);
    if on_path("unsquashfs") {
        std::fs::write(p("d.squash"), "not a squashfs").unwrap();
        std::fs::write(p("e.squash"), "not a squashfs either").unwrap();
        let (code, _, err) = verify(&p("d.squash"), &p("e.squash"));
        assert_input_error(code, &err, &["d.squash: cannot read the image: unsquashfs"]);
    }
    if on_path("qemu-img") {
        sh(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(p("ok.qcow2"))
            .arg("16M"));
        let bytes = std::fs::read(p("ok.qcow2")).unwrap();
        std::fs::write(p("cut.qcow2"), &bytes[..100]).unwrap();
        let (code, _, err) = verify(&p("cut.qcow2"), &p("ok.qcow2"));
        assert_input_error(code, &err, &["cut.qcow2: cannot read the image"]);
    }
    // --against with elements, and -o.
    let mut c = Command::new(kiln_bin());
    c.arg("verify")
        .arg(p("x.tar"))
        .args(["--against", "y.tar", "vm"]);
    let (code, _, err) = run(c);
    assert_input_error(code, &err, &["--against compares two existing images"]);
    // Without elements and without a record.
    let mut c = Command::new(kiln_bin());
    c.arg("verify").arg(p("x.tar"));
    let (code, _, err) = run(c);
    assert_input_error(code, &err, &["x.d/request.json", "give the elements"]);
}
