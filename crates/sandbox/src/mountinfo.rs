//! Reading `/proc/self/mountinfo` exactly.
//!
//! The kernel writes each mount point as the raw bytes of its canonical path, except that space,
//! tab, newline and backslash are written as three-digit octal escapes (`\040`, `\011`, `\012`,
//! `\134`). Bytes ≥ 0x80 (UTF-8 or not) are written raw. A path compared with a mount point must
//! therefore be canonical (no symlinks) and compared as bytes: a lossy string comparison or a
//! symlinked `TMPDIR` matches nothing, and teardown would then leave the chroot's mounts behind.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// Decodes one mountinfo field: `\NNN` (three octal digits) becomes that byte, anything else is
/// kept as it is.
pub fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() && is_octal_escape(&field[i + 1..i + 4]) {
            let d = &field[i + 1..i + 4];
            out.push(((d[0] - b'0') << 6) | ((d[1] - b'0') << 3) | (d[2] - b'0'));
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    out
}

fn is_octal_escape(d: &[u8]) -> bool {
    // The first digit is at most 3 so the value fits in a byte.
    d.len() == 3
        && (b'0'..=b'3').contains(&d[0])
        && d[1..].iter().all(|c| (b'0'..=b'7').contains(c))
}

/// The mount points listed in a mountinfo text, in the order the kernel lists them (the later of
/// two stacked mounts comes later). Malformed lines are skipped.
pub fn mount_points(info: &[u8]) -> Vec<PathBuf> {
    info.split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .filter(|f| !f.is_empty())
        .map(|f| PathBuf::from(OsString::from_vec(unescape(f))))
        .collect()
}

/// The mount points at or below `dir` (compared component by component, as bytes), deepest
/// first; for equal depth the later mount first, so stacked mounts come off top first.
pub fn mounts_under_in(info: &[u8], dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mount_points(info)
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect();
    found.reverse();
    // A stable sort keeps the reversed (latest first) order within one depth.
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn escapes_decode() {
        assert_eq!(unescape(br"/a\040b"), b"/a b");
        assert_eq!(unescape(br"/t\011ab\012nl"), b"/t\tab\nnl");
        assert_eq!(unescape(br"/back\134slash"), b"/back\\slash");
        assert_eq!(unescape(b"/plain"), b"/plain");
    }

    #[test]
    fn raw_high_bytes_stay_raw() {
        // "wörk" in UTF-8, and a byte that is not UTF-8 at all.
        assert_eq!(
            unescape("/tmp/w\u{f6}rk".as_bytes()),
            "/tmp/w\u{f6}rk".as_bytes()
        );
        assert_eq!(unescape(b"/tmp/\xff\\040x"), b"/tmp/\xff x");
    }

    #[test]
    fn incomplete_or_non_octal_escapes_are_kept() {
        assert_eq!(unescape(br"/a\04"), br"/a\04");
        assert_eq!(unescape(br"/a\089"), br"/a\089");
        assert_eq!(unescape(br"/a\"), br"/a\");
        assert_eq!(unescape(br"/a\400"), br"/a\400");
    }

    const INFO: &[u8] = b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
30 22 0:5 / /tmp/kiln\\040w\xc3\xb6rk/real/kiln_pipeline.x rw - tmpfs tmpfs rw\n\
31 30 0:6 / /tmp/kiln\\040w\xc3\xb6rk/real/kiln_pipeline.x/mnt/proc rw - proc proc rw\n\
32 30 0:7 / /tmp/kiln\\040w\xc3\xb6rk/real/kiln_pipeline.x/mnt/dev rw - devtmpfs udev rw\n\
33 32 0:8 / /tmp/kiln\\040w\xc3\xb6rk/real/kiln_pipeline.x/mnt/dev/pts rw - devpts devpts rw\n\
34 31 0:6 / /tmp/kiln\\040w\xc3\xb6rk/real/kiln_pipeline.x/mnt/proc rw - proc proc rw\n\
35 22 0:9 / /tmp/kiln\\040w\xc3\xb6rk/real/kiln_pipeline.xy rw - tmpfs tmpfs rw\n\
broken line\n";

    #[test]
    fn finds_mounts_below_a_non_ascii_path_with_spaces() {
        let dir = Path::new("/tmp/kiln w\u{f6}rk/real/kiln_pipeline.x");
        let got = mounts_under_in(INFO, dir);
        let names: Vec<&[u8]> = got.iter().map(|p| p.as_os_str().as_bytes()).collect();
        let base = "/tmp/kiln w\u{f6}rk/real/kiln_pipeline.x";
        let want: Vec<String> = vec![
            format!("{base}/mnt/dev/pts"),
            format!("{base}/mnt/proc"),
            format!("{base}/mnt/dev"),
            format!("{base}/mnt/proc"),
            base.to_string(),
        ];
        let want: Vec<&[u8]> = want.iter().map(String::as_bytes).collect();
        assert_eq!(names, want);
        // The sibling whose name merely starts with the same bytes is not below it.
        assert!(!got.iter().any(|p| p.ends_with("kiln_pipeline.xy")));
    }

    #[test]
    fn a_symlinked_spelling_does_not_match() {
        // Why callers canonicalise: mountinfo only ever shows the resolved path.
        assert!(mounts_under_in(INFO, Path::new("/tmp/kiln-link/kiln_pipeline.x")).is_empty());
    }
}
