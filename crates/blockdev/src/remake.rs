//! Making an image's filesystems again, offline, so that every byte of them is fixed.
//!
//! A filesystem that was mounted read-write is never reproducible: the kernel places blocks and
//! inodes as writes arrive, stamps mount and write times, and leaves the data of deleted files
//! in free blocks. When a build asks for reproducible output (`SOURCE_DATE_EPOCH`), the pipeline
//! copies each filesystem's final content out before the image is unmounted, and the teardown
//! ([`crate::Created::umount_reproducibly`]) makes the filesystem again from that tree once it
//! is unmounted, on the same device, with the options the layout asked for:
//!
//! - ext2/3/4: the device is discarded first (a loop device punches holes, so every block reads
//!   zero; `blkdiscard -z` writes zeroes where that fails), then `mke2fs -d TREE` with the
//!   layout's options, the same UUID, a directory hash seed derived from that UUID,
//!   `root_owner=0:0`, inode-table initialisation fixed (`lazy_itable_init=1`,
//!   `lazy_journal_init=0`, `nodiscard`: otherwise the host kernel decides) and
//!   `SOURCE_DATE_EPOCH` in its environment (e2fsprogs 1.47.1 or later use it for every time
//!   they write and clamp atimes to it);
//! - vfat: discarded, `mkfs.vfat --invariant` with the same volume id (given after it, which
//!   overrides the constant id `--invariant` sets), then the tree copied in
//!   with mtools in sorted order (directories with `mmd`, files with `mcopy -m`, which keeps
//!   their mtimes), with `TZ=UTC` (FAT stores local time) and `SOURCE_DATE_EPOCH` (the time
//!   mtools gives directories).
//!
//! Boot code outside the filesystems (an MBR's boot code, GRUB's core image in the gap before
//! the first partition) is not touched; GRUB finds its files on ext4 by name, not by block, so
//! it keeps working (the boot check proves it). Other filesystems (xfs, btrfs, …) cannot be made
//! from a tree with fixed bytes here: [`can_remake`] says which can.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::node::is_fat;

/// Whether kiln can make a filesystem of type `fstype` again from a tree with every byte fixed.
pub fn can_remake(fstype: &str) -> bool {
    matches!(fstype, "ext2" | "ext3" | "ext4") || is_fat(fstype)
}

/// What a filesystem was made with: enough to make it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MkfsSpec {
    /// Where it is mounted on the host (the key the pipeline's trees are given by).
    pub target: PathBuf,
    /// The filesystem type.
    pub fstype: String,
    /// Its label (may be empty).
    pub label: String,
    /// The layout's mkfs options.
    pub opts: Vec<String>,
    /// Its UUID (vfat: the volume id, hyphens and all, as the plan has it).
    pub uuid: String,
    /// Its block device.
    pub device: String,
}

/// The trees to make the image's filesystems from, and the time to stamp them with.
#[derive(Debug, Clone, Default)]
pub struct Remake {
    /// `SOURCE_DATE_EPOCH`: every time the new filesystems record.
    pub epoch: u64,
    /// For each filesystem to make again, by its mount target on the host
    /// ([`crate::MountInfo::target`]), the directory holding its final content.
    pub trees: Vec<(PathBuf, PathBuf)>,
}

impl Remake {
    /// The tree given for the filesystem mounted at `target`.
    pub(crate) fn tree_for(&self, target: &Path) -> Option<&Path> {
        self.trees
            .iter()
            .find(|(t, _)| t == target)
            .map(|(_, tree)| tree.as_path())
    }
}

fn s(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| (*p).to_owned()).collect()
}

/// The environment prefix of every command that writes a remade filesystem.
fn env_prefix(epoch: u64) -> Vec<String> {
    vec![
        "env".into(),
        "TZ=UTC".into(),
        format!("SOURCE_DATE_EPOCH={epoch}"),
    ]
}

/// `blkdiscard DEVICE`: every block of the device reads zero afterwards.
pub(crate) fn discard_argv(device: &str) -> Vec<String> {
    s(&["blkdiscard", device])
}

/// `blkdiscard -z DEVICE`: zeroes written, where discarding is not supported.
pub(crate) fn zero_argv(device: &str) -> Vec<String> {
    s(&["blkdiscard", "-z", device])
}

/// The directory hash seed of an ext filesystem with UUID `uuid`: a UUID derived from it, so
/// it follows the build seed as the UUID does.
pub(crate) fn hash_seed(uuid: &str) -> String {
    let d = Sha256::new()
        .chain_update(b"kiln-blockdev/ext-hash-seed/v1\0")
        .chain_update(uuid.as_bytes())
        .finalize();
    crate::ids::v8_uuid(&d)
}

/// The layout's options with every `-E` (mke2fs keeps only the last one) taken out, and the
/// extended options they named, in order.
fn split_extended(opts: &[String]) -> (Vec<String>, Vec<String>) {
    let mut rest = Vec::new();
    let mut extended = Vec::new();
    let mut it = opts.iter();
    while let Some(o) = it.next() {
        if o == "-E" {
            if let Some(v) = it.next() {
                extended.extend(v.split(',').filter(|x| !x.is_empty()).map(String::from));
            }
        } else if let Some(v) = o.strip_prefix("-E") {
            extended.extend(v.split(',').filter(|x| !x.is_empty()).map(String::from));
        } else {
            rest.push(o.clone());
        }
    }
    (rest, extended)
}

/// `env TZ=UTC SOURCE_DATE_EPOCH=E mke2fs -F -q -t TYPE OPTS -E …,hash_seed=…,root_owner=0:0,…
/// [-L LABEL] -U UUID -d TREE DEVICE`.
pub(crate) fn mke2fs_argv(spec: &MkfsSpec, tree: &Path, epoch: u64) -> Vec<String> {
    let (rest, mut extended) = split_extended(&spec.opts);
    // Ours last: where the layout names one of them too, mke2fs takes the later value.
    extended.extend([
        format!("hash_seed={}", hash_seed(&spec.uuid)),
        "root_owner=0:0".into(),
        "lazy_itable_init=1".into(),
        "lazy_journal_init=0".into(),
        "nodiscard".into(),
    ]);
    let mut v = env_prefix(epoch);
    v.extend(s(&["mke2fs", "-F", "-q", "-t", &spec.fstype]));
    v.extend(rest);
    v.extend(["-E".into(), extended.join(",")]);
    if !spec.label.is_empty() {
        v.extend(["-L".into(), spec.label.clone()]);
    }
    v.extend(["-U".into(), spec.uuid.clone()]);
    v.extend(["-d".into(), tree.display().to_string()]);
    v.push(spec.device.clone());
    v
}

/// `env TZ=UTC SOURCE_DATE_EPOCH=E mkfs.vfat --invariant OPTS [-n LABEL] -i ID DEVICE`.
/// `--invariant` comes first: it also sets a constant volume id, which the later `-i`
/// (the seed's) overrides.
pub(crate) fn mkfs_vfat_argv(spec: &MkfsSpec, epoch: u64) -> Vec<String> {
    let mut v = env_prefix(epoch);
    let mkfs = crate::plan::mkfs_argv(
        &spec.fstype,
        &spec.label,
        &spec.opts,
        &spec.uuid,
        &spec.device,
    );
    let mut it = mkfs.into_iter();
    v.extend(it.next());
    v.push("--invariant".into());
    v.extend(it);
    v
}

/// The mtools commands that copy `tree` into the vfat filesystem on `device`, in sorted order:
/// one `mmd` of every directory (parents first), then per directory one `mcopy -m` of its
/// files. Only the tree is read (without following symlinks out of it: a symlink is copied as
/// the file it names only when that is a regular file, as `mcopy` reads it).
pub(crate) fn fat_fill_argvs(
    tree: &Path,
    device: &str,
    epoch: u64,
) -> std::io::Result<Vec<Vec<String>>> {
    let mut dirs = Vec::new();
    let mut files: Vec<(String, Vec<PathBuf>)> = Vec::new();
    walk(tree, "", &mut dirs, &mut files)?;
    let mut cmds = Vec::new();
    if !dirs.is_empty() {
        let mut v = env_prefix(epoch);
        v.extend(s(&["mmd", "-i", device]));
        v.extend(dirs.iter().map(|d| format!("::/{d}")));
        cmds.push(v);
    }
    for (dir, list) in files {
        let mut v = env_prefix(epoch);
        v.extend(s(&["mcopy", "-m", "-o", "-i", device]));
        v.extend(list.iter().map(|p| p.display().to_string()));
        v.push(format!("::/{dir}"));
        cmds.push(v);
    }
    Ok(cmds)
}

fn walk(
    dir: &Path,
    rel: &str,
    dirs: &mut Vec<String>,
    files: &mut Vec<(String, Vec<PathBuf>)>,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    let mut here = Vec::new();
    let mut subdirs = Vec::new();
    for p in entries {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let m = std::fs::symlink_metadata(&p)?;
        if m.is_dir() {
            subdirs.push((p, name));
        } else {
            here.push(p);
        }
    }
    if !here.is_empty() {
        files.push((rel.to_owned(), here));
    }
    for (p, name) in subdirs {
        let sub = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        dirs.push(sub.clone());
        walk(&p, &sub, dirs, files)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(fstype: &str, opts: &[&str]) -> MkfsSpec {
        MkfsSpec {
            target: PathBuf::from("/b/mnt"),
            fstype: fstype.into(),
            label: "cloudimg-rootfs".into(),
            opts: opts.iter().map(|o| (*o).to_owned()).collect(),
            uuid: "0b6f6c1e-2b7a-8d3c-9e4f-5a6b7c8d9e0f".into(),
            device: "/dev/loop0p1".into(),
        }
    }

    #[test]
    fn mke2fs_keeps_the_layout_options_and_merges_every_extended_option_into_one() {
        let s = spec(
            "ext4",
            &[
                "-E",
                "resize=1000",
                "-i",
                "4096",
                "-Estride=4",
                "-J",
                "size=64",
            ],
        );
        let argv = mke2fs_argv(&s, Path::new("/b/tree/0"), 1_700_000_000);
        let seed = hash_seed(&s.uuid);
        assert_eq!(
            argv.join(" "),
            format!(
                "env TZ=UTC SOURCE_DATE_EPOCH=1700000000 mke2fs -F -q -t ext4 -i 4096 -J size=64 \
                 -E resize=1000,stride=4,hash_seed={seed},root_owner=0:0,lazy_itable_init=1,\
                 lazy_journal_init=0,nodiscard -L cloudimg-rootfs \
                 -U 0b6f6c1e-2b7a-8d3c-9e4f-5a6b7c8d9e0f -d /b/tree/0 /dev/loop0p1"
            )
        );
        // Exactly one -E: mke2fs would ignore all but the last.
        assert_eq!(argv.iter().filter(|a| *a == "-E").count(), 1);
    }

    #[test]
    fn the_hash_seed_follows_the_uuid() {
        let a = hash_seed("0b6f6c1e-2b7a-8d3c-9e4f-5a6b7c8d9e0f");
        assert_eq!(a, hash_seed("0b6f6c1e-2b7a-8d3c-9e4f-5a6b7c8d9e0f"));
        assert_ne!(a, hash_seed("0b6f6c1e-2b7a-8d3c-9e4f-5a6b7c8d9e10"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8");
    }

    #[test]
    fn vfat_is_made_invariant_with_its_volume_id() {
        let mut s = spec("vfat", &["-F", "32"]);
        s.label = "ESP".into();
        s.uuid = "1234-abcd".into();
        assert_eq!(
            mkfs_vfat_argv(&s, 5).join(" "),
            "env TZ=UTC SOURCE_DATE_EPOCH=5 mkfs.vfat --invariant -F 32 -n ESP -i 1234abcd /dev/loop0p1"
        );
    }

    #[test]
    fn fat_fill_is_sorted_parents_first() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path();
        std::fs::create_dir_all(t.join("EFI/debian")).unwrap();
        std::fs::create_dir_all(t.join("EFI/BOOT")).unwrap();
        std::fs::write(t.join("EFI/debian/b.efi"), "b").unwrap();
        std::fs::write(t.join("EFI/debian/a.efi"), "a").unwrap();
        std::fs::write(t.join("EFI/BOOT/BOOTX64.EFI"), "x").unwrap();
        std::fs::write(t.join("top"), "t").unwrap();
        let cmds = fat_fill_argvs(t, "/dev/loop0p15", 7).unwrap();
        let text: Vec<String> = cmds
            .iter()
            .map(|c| c.join(" ").replace(&t.display().to_string(), "T"))
            .collect();
        assert_eq!(
            text,
            [
                "env TZ=UTC SOURCE_DATE_EPOCH=7 mmd -i /dev/loop0p15 ::/EFI ::/EFI/BOOT ::/EFI/debian",
                "env TZ=UTC SOURCE_DATE_EPOCH=7 mcopy -m -o -i /dev/loop0p15 T/top ::/",
                "env TZ=UTC SOURCE_DATE_EPOCH=7 mcopy -m -o -i /dev/loop0p15 T/EFI/BOOT/BOOTX64.EFI ::/EFI/BOOT",
                "env TZ=UTC SOURCE_DATE_EPOCH=7 mcopy -m -o -i /dev/loop0p15 T/EFI/debian/a.efi T/EFI/debian/b.efi ::/EFI/debian",
            ]
        );
    }

    #[test]
    fn only_ext_and_fat_can_be_remade() {
        for t in ["ext2", "ext3", "ext4", "vfat", "fat"] {
            assert!(can_remake(t), "{t}");
        }
        for t in ["xfs", "btrfs", "swap", ""] {
            assert!(!can_remake(t), "{t}");
        }
    }

    /// Runs `argv` (an `env …` command line), with the caller's `TZ` and umask as given.
    fn run(argv: &[String], tz: &str, umask: &str) {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
            .args(argv)
            .env("TZ", tz)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{argv:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn tools(names: &[&str], test: &str) -> bool {
        let missing: Vec<&&str> = names
            .iter()
            .filter(|n| {
                !std::process::Command::new("sh")
                    .arg("-c")
                    .arg(format!("command -v {n}"))
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .collect();
        if missing.is_empty() {
            return true;
        }
        kiln_testkit::skip(test, &format!("{missing:?} not installed"));
        false
    }

    /// A small tree, copied a second time a moment later (other ctimes and atimes).
    fn two_copies(d: &Path) -> (PathBuf, PathBuf) {
        let a = d.join("a");
        std::fs::create_dir_all(a.join("EFI/debian")).unwrap();
        std::fs::write(a.join("EFI/debian/grubx64.efi"), vec![7u8; 100_000]).unwrap();
        std::fs::write(a.join("EFI/debian/grub.cfg"), "search --fs-uuid x\n").unwrap();
        let b = d.join("b");
        let cp = std::process::Command::new("cp")
            .args(["-a", "--preserve=all"])
            .arg(&a)
            .arg(&b)
            .status()
            .unwrap();
        assert!(cp.success());
        for t in [&a, &b] {
            let touch = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "find '{}' -exec touch -h -d @1600000000 {{}} +",
                    t.display()
                ))
                .status()
                .unwrap();
            assert!(touch.success());
        }
        (a, b)
    }

    fn image(d: &Path, name: &str, mib: u64) -> String {
        let p = d.join(name);
        std::fs::File::create(&p)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        p.display().to_string()
    }

    #[test]
    fn vfat_made_twice_under_other_tz_and_umask_is_byte_identical_and_keeps_its_id() {
        let test =
            "remake::vfat_made_twice_under_other_tz_and_umask_is_byte_identical_and_keeps_its_id";
        if !tools(&["mkfs.vfat", "mmd", "mcopy", "mdir"], test) {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let (a, b) = two_copies(d.path());
        let mut images = Vec::new();
        for (tree, tz, umask, name) in [
            (&a, "UTC", "022", "a.img"),
            (&b, "Pacific/Chatham", "077", "b.img"),
        ] {
            let mut s = spec("vfat", &[]);
            s.label = "ESP".into();
            s.uuid = "dead-beef".into();
            s.device = image(d.path(), name, 40);
            run(&mkfs_vfat_argv(&s, 1_700_000_000), tz, umask);
            for cmd in fat_fill_argvs(tree, &s.device, 1_700_000_000).unwrap() {
                run(&cmd, tz, umask);
            }
            images.push(s.device);
        }
        let bytes = std::fs::read(&images[0]).unwrap();
        assert!(
            bytes == std::fs::read(&images[1]).unwrap(),
            "the two vfat images differ"
        );
        let dir = std::process::Command::new("mdir")
            .args(["-i", &images[0], "::/EFI/debian"])
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&dir.stdout);
        assert!(
            listing.contains("DEAD-BEEF"),
            "the volume id is not the seed's: {listing}"
        );
        assert!(listing.contains("grubx64"), "{listing}");
    }

    #[test]
    fn ext4_made_twice_from_two_copies_is_byte_identical() {
        let test = "remake::ext4_made_twice_from_two_copies_is_byte_identical";
        if !tools(&["mke2fs"], test) {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let (a, b) = two_copies(d.path());
        let mut images = Vec::new();
        for (tree, tz, umask, name) in [
            (&a, "UTC", "022", "a.img"),
            (&b, "Pacific/Chatham", "077", "b.img"),
        ] {
            let mut s = spec("ext4", &["-i", "4096"]);
            s.device = image(d.path(), name, 32);
            // atimes as the pipeline leaves them: the epoch.
            let touch = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "find '{}' -exec touch -h -a -d @1700000000 {{}} +",
                    tree.display()
                ))
                .status()
                .unwrap();
            assert!(touch.success());
            run(&mke2fs_argv(&s, tree, 1_700_000_000), tz, umask);
            images.push(s.device);
        }
        assert!(
            std::fs::read(&images[0]).unwrap() == std::fs::read(&images[1]).unwrap(),
            "the two ext4 images differ"
        );
    }
}
