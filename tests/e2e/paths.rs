//! Paths that must not fool kiln: a `TMPDIR` reached through a symlink whose target has a space
//! and non-ASCII characters (mountinfo shows the canonical, escaped path), and an image whose
//! `/tmp` is a symlink to `/var/tmp` (the host-side tidy-up must empty the image's directory,
//! never the host's).

use std::fs;

use crate::failures::{fixture_elements, MBR};
use crate::harness::{
    assert_no_leftovers, build_command, capable, heavy, run_build, sh, work, Timer, BUILD_BUDGET,
};
use crate::rootfs::rootfs_tar;

#[test]
fn symlinked_non_ascii_tmpdir_and_a_tmp_link_in_the_image_leave_the_host_alone() {
    if !capable("symlinked_non_ascii_tmpdir_and_a_tmp_link_in_the_image_leave_the_host_alone") {
        return;
    }
    let t = fixture_elements(&rootfs_tar());
    // The image's /tmp is an absolute link to /var/tmp, as some distributions ship it: every
    // later host-side step that follows it without resolving inside the image lands in the
    // host's /var/tmp (the hooks' bind mount, the tidy-up).
    t.el("tmp-link").hook(
        "root",
        "20-tmp-link",
        "rm -rf \"$TARGET_ROOT/tmp\" && ln -s /var/tmp \"$TARGET_ROOT/tmp\"\n\
         echo image > \"$TARGET_ROOT/var/tmp/image-file\"",
    );
    let h = heavy();
    let _t =
        Timer::start("symlinked_non_ascii_tmpdir_and_a_tmp_link_in_the_image_leave_the_host_alone");
    let dir = work("paths");
    // A marker in the host's /var/tmp that the tidy-up must not touch.
    let marker =
        std::path::Path::new("/var/tmp").join(format!("kiln-e2e-marker-{}", std::process::id()));
    fs::write(&marker, "host").unwrap();
    let real = dir.join("kiln wörk/réel");
    fs::create_dir_all(&real).unwrap();
    let link = dir.join("tmp-link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    for (ty, name) in [("tar", "p"), ("raw", "d")] {
        let mut env = vec![];
        if ty == "raw" {
            env.push(("DIB_BLOCK_DEVICE_CONFIG", MBR));
        }
        let args = ["-n", "test-rootfs", "tmp-link", "-t", ty, "-o", name];
        let mut c = build_command(&dir, Some(t.path()), &args, &env);
        c.env("TMPDIR", &link);
        let o = run_build(c, &dir, &args, BUILD_BUDGET);
        assert_eq!(o.code, 0, "{ty}: {}", o.stderr);
        assert!(
            o.log.contains("kiln wörk/réel/"),
            "{ty}: the build dir is not the canonical path:\n{}",
            crate::harness::tail(&o.log, 20)
        );
        // Nothing left under the real directory, in any namespace; no loop device.
        let left: Vec<_> = fs::read_dir(&real)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "{ty}: left in TMPDIR: {left:?}");
        let mounted = sh(&format!(
            "cat /proc/[0-9]*/mountinfo 2>/dev/null | grep -c '{}' || true",
            dir.display()
        ));
        assert_eq!(
            mounted.trim(),
            "0",
            "{ty}: mounts left under {}",
            dir.display()
        );
        assert_no_leftovers(&dir, &h);
        assert_eq!(
            fs::read_to_string(&marker).unwrap_or_default(),
            "host",
            "{ty}: the host's /var/tmp was touched"
        );
    }
    // The tar holds the image's link and nothing of the host's /dev.
    let list = sh(&format!("tar -tvf '{}'", dir.join("p.tar").display()));
    assert!(
        list.lines().any(|l| l.contains("./tmp -> /var/tmp")),
        "the image's /tmp link is missing"
    );
    let host_dev: Vec<&str> = list
        .lines()
        .filter(|l| {
            [
                "./dev/loop",
                "./dev/sd",
                "./dev/vd",
                "./dev/kvm",
                "./dev/tty1",
                "./dev/kmsg",
            ]
            .iter()
            .any(|p| l.contains(p))
        })
        .collect();
    assert!(
        host_dev.is_empty(),
        "host device nodes in the tar: {host_dev:?}"
    );
    let _ = fs::remove_file(&marker);
}

/// A link planted where kiln writes its record beside the outputs (`NAME.d -> elsewhere`, or
/// `NAME.d/build.log` and `NAME.d/timings.json` pointing at files of the host) is removed, never
/// written through: kiln writes there as root.
#[test]
fn links_planted_at_the_build_record_are_never_followed() {
    if !capable("links_planted_at_the_build_record_are_never_followed") {
        return;
    }
    let t = fixture_elements(&rootfs_tar());
    let h = heavy();
    let _t = Timer::start("links_planted_at_the_build_record_are_never_followed");
    let dir = work("record-links");
    let victim_dir = dir.join("victim-dir");
    fs::create_dir_all(&victim_dir).unwrap();
    let victim = dir.join("victim-file");
    fs::write(&victim, "host data\n").unwrap();
    // First: NAME.d itself is a link to another directory.
    std::os::unix::fs::symlink(&victim_dir, dir.join("one.d")).unwrap();
    // Second: NAME.d is a directory whose build.log and timings.json are links to a host file.
    fs::create_dir_all(dir.join("two.d")).unwrap();
    for name in ["build.log", "timings.json"] {
        std::os::unix::fs::symlink(&victim, dir.join("two.d").join(name)).unwrap();
    }
    for name in ["one", "two"] {
        let cmd = build_command(
            &dir,
            Some(t.path()),
            &["-n", "test-rootfs", "-t", "tar", "-o", name],
            &[],
        );
        let out = run_build(cmd, &dir, &["-o", name], BUILD_BUDGET);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let record = dir.join(format!("{name}.d"));
        let meta = fs::symlink_metadata(&record).unwrap();
        assert!(
            meta.is_dir(),
            "{} is not a real directory",
            record.display()
        );
        for f in ["build.log", "timings.json"] {
            let meta = fs::symlink_metadata(record.join(f)).unwrap();
            assert!(meta.is_file(), "{name}.d/{f} is not a plain file");
        }
    }
    assert_eq!(fs::read_dir(&victim_dir).unwrap().count(), 0);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "host data\n");
    assert_no_leftovers(&dir, &h);
}
