//! The command line itself: help texts, multi-call names, element-info.

use std::process::Command;

use crate::support::{filter, kiln, kiln_bin, run, Tree};

#[test]
fn help_tree_snapshots() {
    for args in [
        vec!["--help"],
        vec!["build", "--help"],
        vec!["plan", "--help"],
        vec!["lock", "--help"],
        vec!["verify", "--help"],
        vec!["publish", "--help"],
        vec!["element-info", "--help"],
        vec!["block-device", "--help"],
        vec!["block-device", "plan", "--help"],
        vec!["test", "--help"],
        vec!["matrix", "--help"],
        vec!["matrix", "plan", "--help"],
        vec!["matrix", "run", "--help"],
        vec!["matrix", "emit", "--help"],
    ] {
        let out = Command::new(kiln_bin())
            .args(&args)
            .env("COLUMNS", "100")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        let name = format!("help_{}", args.join("_").replace("--", ""));
        insta::assert_snapshot!(name, String::from_utf8_lossy(&out.stdout));
    }
}

fn multicall(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let link = d.path().join(name);
    std::os::unix::fs::symlink(kiln_bin(), &link).unwrap();
    (d, link)
}

#[test]
fn element_info_multicall_expands() {
    let t = Tree::new();
    t.os().deps(&["a"]);
    t.el("a").deps(&["b"]);
    t.el("b");
    let cache = tempfile::tempdir().unwrap();
    let (_d, link) = multicall("element-info");
    let mut c = kiln(&[t.path()], cache.path());
    c.args(["test-os"]);
    let mut c2 = Command::new(&link);
    c2.envs(
        c.get_envs()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
    )
    .arg("test-os");
    let (code, out, err) = run(c2);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "b a test-os");
}

#[test]
fn element_info_env_is_evalable() {
    let t = Tree::new();
    t.os().deps(&["a"]);
    t.el("a");
    let cache = tempfile::tempdir().unwrap();
    let mut c = kiln(&[t.path()], cache.path());
    c.args(["element-info", "--env", "test-os"]);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{err}");
    insta::assert_snapshot!(
        "element_info_env",
        filter(&out, Some(t.path()), cache.path())
    );
    // Evaluate it in bash the way DIB's scripts do.
    let script = format!(
        "{out}\neval declare -A image_elements=($(get_image_element_array))\necho \"$IMAGE_ELEMENT|${{image_elements[a]}}\"\nbash -c 'get_image_element_array' >/dev/null && echo exported"
    );
    let r = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&r.stdout);
    assert!(
        s.contains(&format!("a test-os|{}", t.path().join("a").display())),
        "{s}"
    );
    assert!(s.contains("exported"), "{s}");
}

#[test]
fn disk_image_create_multicall_speaks_dib_flags() {
    let (_d, link) = multicall("disk-image-create");
    let out = Command::new(&link).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "-a <ARCH>",
        "-o <NAME>",
        "-t <TYPES>",
        "--image-size",
        "--checksum",
        "--no-tmpfs",
        "--mkfs-journal-size",
        "--image-extra-size",
    ] {
        assert!(help.contains(flag), "{flag} missing:\n{help}");
    }
}

#[test]
fn block_device_plan_prints_commands() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("mbr.yaml");
    std::fs::write(
        &cfg,
        "- local_loop:\n    name: image0\n- partitioning:\n    base: image0\n    label: mbr\n    partitions:\n      - name: root\n        flags: [boot, primary]\n        size: 100%\n        mkfs:\n          type: ext4\n          mount:\n            mount_point: /\n            fstab:\n              options: defaults\n              fsck-passno: 1\n",
    )
    .unwrap();
    let out = Command::new(kiln_bin())
        .args(["block-device", "plan"])
        .arg(&cfg)
        .args(["--image-size", "2GiB"])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(s.contains("mkfs"), "{s}");
    assert!(
        s.contains("LABEL=cloudimg-rootfs / ext4 defaults 0 1"),
        "{s}"
    );
    let out = Command::new(kiln_bin())
        .args(["block-device", "plan", "--json"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success());
    let _: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
}

/// A reader that goes away (`kiln plan … | head -1`) ends a printing command quietly: no panic,
/// no backtrace, the usual SIGPIPE death, as for any Unix tool.
#[test]
fn a_closed_pipe_ends_printing_commands_quietly() {
    use std::os::unix::process::ExitStatusExt as _;
    let t = Tree::new();
    t.os().deps(&["a"]);
    for i in 0..200 {
        t.el("a").hook("install", &format!("{i:03}-hook"), "true");
    }
    let cache = tempfile::tempdir().unwrap();
    for args in [
        vec!["plan", "test-os", "a"],
        vec!["element-info", "--expand-dependencies", "test-os", "a"],
    ] {
        let mut child = kiln(&[t.path()], cache.path())
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before kiln writes.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(
            out.status.success() || out.status.signal() == Some(13),
            "{args:?}: {:?} {stderr}",
            out.status
        );
    }
}
