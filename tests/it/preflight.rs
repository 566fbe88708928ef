//! The preflight: a build whose host lacks a tool fails at once (exit 2), with one message naming
//! the tool's package and an `apt-get install` line, before the root check and before any hook.
//! No root needed.

use std::fs;
use std::path::Path;

use crate::support::{assert_input_error, kiln, run, Tree};

/// A directory of symlinks to every program on the usual PATH except `without`.
fn path_without(dir: &Path, without: &str) {
    for bin in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        let Ok(rd) = fs::read_dir(bin) else { continue };
        for e in rd.flatten() {
            let name = e.file_name();
            let link = dir.join(&name);
            if name == without || link.symlink_metadata().is_ok() {
                continue;
            }
            std::os::unix::fs::symlink(e.path(), &link).unwrap();
        }
    }
}

/// Runs `kiln build` of `test-os` plus `extra` with PATH lacking `tool`; returns exit code and
/// stderr, and whether the root.d hook ran.
fn build_without(tool: &str, extra: &[&str], types: &str) -> (i32, String, bool) {
    let tree = Tree::new();
    let work = tempfile::tempdir().unwrap();
    let marker = work.path().join("root.d-ran");
    tree.os().hook(
        "root",
        "10-marker",
        &format!("touch '{}'\nexit 1", marker.display()),
    );
    let bin = work.path().join("bin");
    fs::create_dir(&bin).unwrap();
    path_without(&bin, tool);
    let cache = work.path().join("cache");
    let mut c = kiln(&[tree.path()], &cache);
    c.env("PATH", &bin)
        .arg("build")
        .arg("-o")
        .arg(work.path().join("img"))
        .args(["-t", types, "test-os"])
        .args(extra);
    let (code, _, stderr) = run(c);
    (code, stderr, marker.exists())
}

#[test]
fn missing_zstd_stops_a_tar_build_before_any_hook() {
    let (code, stderr, ran) = build_without("zstd", &[], "tar");
    assert_input_error(
        code,
        &stderr,
        &[
            "zstd: package zstd (for the phase cache)",
            "apt-get install zstd",
        ],
    );
    assert!(!ran, "the root.d hook ran");
    assert!(!stderr.contains("needs root"), "{stderr}");
}

#[test]
fn missing_sgdisk_stops_a_gpt_build_before_any_hook() {
    let (code, stderr, ran) = build_without("sgdisk", &["block-device-gpt"], "raw");
    assert_input_error(
        code,
        &stderr,
        &[
            "sgdisk: package gdisk (for the block-device layout",
            "apt-get install gdisk",
        ],
    );
    assert!(!ran, "the root.d hook ran");
}
