//! What a disk image's initramfs holds, read offline: the disk converted to raw, its Linux
//! partition opened by `debugfs` at its offset, `/boot/initrd.img-*` dumped, and the archive
//! walked in Rust (uncompressed `newc` cpio segments, such as early microcode, then one
//! compressed segment unpacked by gzip, zstd or xz). No mount and no initramfs-tools on the
//! host.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use kiln_testkit::clients::run_ok;

/// The Linux filesystem partition types: GPT's and MBR's.
const LINUX_TYPES: &[&str] = &["0FC63DAF-8483-4772-8E79-3D69D8477DE4", "83"];

/// The file names (no directory) of the kernel modules in the initramfs of the disk image
/// `image` (any format qemu-img reads), sorted; `tmp` holds the raw copy while it is read.
pub fn modules_in_image(image: &Path, tmp: &Path) -> Vec<String> {
    let raw = tmp.join("initramfs-disk.raw");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(image)
            .arg(&raw),
    );
    let table: serde_json::Value =
        serde_json::from_str(&run_ok(Command::new("sfdisk").arg("-J").arg(&raw))).unwrap();
    let table = &table["partitiontable"];
    let sector = table["sectorsize"].as_u64().unwrap_or(512);
    let part = table["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            let t = p["type"].as_str().unwrap_or_default().to_ascii_uppercase();
            LINUX_TYPES.contains(&t.as_str())
        })
        .unwrap_or_else(|| panic!("no Linux partition in {}: {table:#}", image.display()));
    let spec = format!(
        "{}?offset={}",
        raw.display(),
        part["start"].as_u64().unwrap() * sector
    );
    // `ls -p` prints /inode/mode/uid/gid/name/size/ per entry.
    let listing = run_ok(Command::new("debugfs").args(["-R", "ls -p /boot", &spec]));
    let initrds: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split('/').nth(5))
        .filter(|n| n.starts_with("initrd.img-"))
        .collect();
    assert_eq!(initrds.len(), 1, "one initramfs in /boot: {listing}");
    let dumped = tmp.join("initramfs.img");
    run_ok(Command::new("debugfs").args([
        "-R",
        &format!("dump /boot/{} {}", initrds[0], dumped.display()),
        &spec,
    ]));
    std::fs::remove_file(&raw).unwrap();
    let data = std::fs::read(&dumped).unwrap();
    assert!(!data.is_empty(), "{} is empty", initrds[0]);
    let mut names = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        if data[pos] == 0 {
            pos += 1;
            continue;
        }
        if data[pos..].starts_with(b"070701") {
            pos += cpio_names(&data[pos..], &mut names);
            continue;
        }
        // The rest is one compressed archive.
        let tool = match data[pos..] {
            [0x1f, 0x8b, ..] => "gzip",
            [0x28, 0xb5, 0x2f, 0xfd, ..] => "zstd",
            [0xfd, b'7', b'z', b'X', b'Z', ..] => "xz",
            _ => panic!("unknown initramfs segment at byte {pos} of {}", initrds[0]),
        };
        let unpacked = unpack(tool, &data[pos..]);
        cpio_names(&unpacked, &mut names);
        break;
    }
    let mut modules: Vec<String> = names
        .iter()
        .filter_map(|n| n.rsplit('/').next())
        .filter(|n| n.split('.').skip(1).any(|part| part == "ko"))
        .map(String::from)
        .collect();
    modules.sort();
    modules
}

/// `tool -dc` of `data`.
fn unpack(tool: &str, data: &[u8]) -> Vec<u8> {
    let mut child = Command::new(tool)
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let writer = std::thread::spawn(move || {
        // The tool may stop reading at the end of its stream; trailing bytes are not an error.
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "{tool} -dc failed on the initramfs");
    out.stdout
}

/// Adds the member names of the `newc` cpio archive at the start of `data` to `names` and
/// returns its length up to and including the trailer.
fn cpio_names(data: &[u8], names: &mut Vec<String>) -> usize {
    let field = |at: usize, i: usize| -> usize {
        let s = std::str::from_utf8(&data[at + 6 + 8 * i..at + 14 + 8 * i]).unwrap();
        usize::from_str_radix(s, 16).unwrap()
    };
    let mut pos = 0;
    loop {
        assert!(
            data[pos..].starts_with(b"070701"),
            "not a newc cpio header at byte {pos}"
        );
        let (size, name_len) = (field(pos, 6), field(pos, 11));
        let name = String::from_utf8_lossy(&data[pos + 110..pos + 110 + name_len - 1]).into_owned();
        pos = (pos + 110 + name_len + 3) & !3;
        pos = (pos + size + 3) & !3;
        if name == "TRAILER!!!" {
            return pos;
        }
        names.push(name);
    }
}
