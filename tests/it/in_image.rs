//! Without root: this machine's real mountinfo parses to paths that exist, and the tidy-up of a
//! fake image tree (under a non-ASCII directory with a space, its `/tmp` a symlink out of the
//! tree) touches nothing outside the tree.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

#[test]
fn every_mount_point_in_this_machines_mountinfo_exists() {
    let info = fs::read("/proc/self/mountinfo").expect("reading /proc/self/mountinfo");
    let points = kiln_sandbox::mountinfo::mount_points(&info);
    assert!(points.iter().any(|p| p == Path::new("/")));
    assert!(points.iter().any(|p| p == Path::new("/proc")));
    for p in &points {
        // A mount point hidden under a later mount may be gone; everything else must resolve.
        if fs::symlink_metadata(p).is_err() {
            assert!(
                p.ancestors()
                    .skip(1)
                    .any(|a| points.contains(&a.to_path_buf())),
                "{} is listed but does not exist",
                p.display()
            );
        }
    }
    assert!(kiln_sandbox::mounts_under(Path::new("/proc"))
        .iter()
        .any(|p| p == Path::new("/proc")));
}

#[test]
fn tidy_under_a_non_ascii_symlinked_base_keeps_the_outside() {
    let d = tempfile::tempdir().expect("temp dir");
    let real = d.path().join("kiln w\u{f6}rk").join("real");
    fs::create_dir_all(&real).expect("mkdir");
    let link = d.path().join("link");
    symlink(&real, &link).expect("symlink");
    // What the workspace does with TMPDIR: canonicalise once.
    let base = fs::canonicalize(&link).expect("canonicalize");
    assert_eq!(base, fs::canonicalize(&real).expect("canonicalize"));
    let root = base.join("image");
    let outside = base.join("host tmp");
    fs::create_dir_all(root.join("etc")).expect("mkdir");
    fs::create_dir_all(&outside).expect("mkdir");
    fs::write(outside.join("precious"), "keep").expect("write");
    symlink(&outside, root.join("tmp-abs")).expect("symlink");
    symlink("../host tmp", root.join("tmp")).expect("symlink");
    let problems = kiln_pipeline::in_image::tidy(&root).expect("tidy");
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        fs::read_to_string(outside.join("precious")).expect("read"),
        "keep"
    );
    // Resolved inside the tree, an absolute link names the tree's own copy of that path.
    let r = kiln_sandbox::path::resolve_in_root(&root, Path::new("tmp-abs/x")).expect("resolve");
    assert!(r.starts_with(&root), "{}", r.display());
}
