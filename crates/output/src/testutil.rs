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
    let opts = crate::Options {
        source_date_epoch: epoch.parse().ok(),
        compress: ty == "qcow2",
        qcow2_level: (ty == "qcow2").then_some(crate::qcow2::DEFAULT_LEVEL),
        ..crate::Options::default()
    };
    crate::produce(
        crate::OutputType::parse(ty).unwrap(),
        Path::new(root),
        Path::new(dest),
        &opts,
    )
    .unwrap();
}
