//! Small inputs for the producers' tests: a tree with the directories the tree outputs treat
//! specially, and a sparse raw disk with data, holes and a tail.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use kiln_host::Cmd;

/// A small root tree under `dir/root`: files, a symlink, an empty directory, and contents in
/// `proc/` and `tmp/in_target.d` that the tree outputs leave out.
pub fn small_tree(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    for d in [
        "etc",
        "proc/1",
        "sys/kernel",
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
