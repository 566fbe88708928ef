//! Bad input: exit 2, one message naming the file (and line) and what to do; never a panic.

use crate::support::{assert_input_error, kiln, run, Tree};

fn plan(t: &Tree, args: &[&str]) -> (i32, String, String) {
    let cache = tempfile::tempdir().unwrap();
    let mut c = kiln(&[t.path()], cache.path());
    c.arg("plan").args(args);
    run(c)
}

#[test]
fn unknown_element_suggests_close_names() {
    let t = Tree::new();
    t.os();
    t.el("cloud-init-datasources");
    let (code, _, err) = plan(&t, &["test-os", "cloud-init-datasource", "-n"]);
    assert_input_error(
        code,
        &err,
        &["cloud-init-datasource", "cloud-init-datasources"],
    );
}

#[test]
fn double_provide() {
    let t = Tree::new();
    t.os();
    t.el("other-os").provides(&["operating-system"]);
    let (code, _, err) = plan(&t, &["test-os", "other-os", "-n"]);
    assert_input_error(code, &err, &["operating-system", "more than one element"]);
}

#[test]
fn no_operating_system() {
    let t = Tree::new();
    t.el("lonely");
    let (code, _, err) = plan(&t, &["lonely", "-n"]);
    assert_input_error(code, &err, &["operating system"]);
}

#[test]
fn elements_path_entry_not_a_directory() {
    let t = Tree::new();
    let f = t.path().join("file");
    std::fs::write(&f, "x").unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut c = kiln(&[&f], cache.path());
    c.args(["plan", "x"]);
    let (code, _, err) = run(c);
    assert_input_error(code, &err, &[&f.display().to_string(), "not a directory"]);
}

#[test]
fn malformed_yaml_names_file_and_line() {
    let t = Tree::new();
    t.os().file(
        "package-installs.yaml",
        "good:\nbad: [unclosed\n  more: x\n",
    );
    let (code, _, err) = plan(&t, &["test-os", "-n"]);
    let path = t.path().join("test-os/package-installs.yaml");
    assert_input_error(code, &err, &[&format!("{}:3", path.display())]);
}

#[test]
fn malformed_pkg_map_json_names_file() {
    let t = Tree::new();
    t.os().file("pkg-map", "{\"default\": {\"a\": \"b\",}");
    let (code, _, err) = plan(&t, &["test-os", "-n"]);
    let path = t.path().join("test-os/pkg-map");
    assert_input_error(code, &err, &[&path.display().to_string()]);
}

#[test]
fn arch_with_not_arch() {
    let t = Tree::new();
    t.os().file(
        "package-installs.yaml",
        "foo:\n  arch: amd64\n  not-arch: arm64\n",
    );
    let (code, _, err) = plan(&t, &["test-os", "-n"]);
    assert_input_error(code, &err, &["package-installs.yaml", "foo", "not-arch"]);
}

#[test]
fn when_on_unset_variable() {
    let t = Tree::new();
    t.os().file(
        "package-installs.yaml",
        "foo:\n  when: KILN_TEST_SURELY_UNSET = yes\n",
    );
    let (code, _, err) = plan(&t, &["test-os", "-n"]);
    assert_input_error(
        code,
        &err,
        &["package-installs.yaml", "KILN_TEST_SURELY_UNSET"],
    );
}

#[test]
fn when_on_a_variable_the_engine_computes_is_not_an_error() {
    // DIB_ROOT_FSTYPE is set by the engine (from FS_TYPE or the layout) before the build
    // evaluates package-installs: a plan must not call it unset.
    let t = Tree::new();
    t.os().file(
        "package-installs.yaml",
        "foo:\n  - when: DIB_ROOT_FSTYPE = ext4\n  - when: DIB_ROOT_FSTYPE = xfs\n",
    );
    let (code, _, err) = plan(&t, &["test-os", "-n"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn duplicate_hook_names_both_elements() {
    let t = Tree::new();
    t.os().deps(&["twin"]).hook("install", "50-same", "true");
    t.el("twin").hook("install", "50-same", "true");
    let (code, _, err) = plan(&t, &["test-os", "-n"]);
    assert_input_error(code, &err, &["50-same", "test-os", "twin"]);
}

#[test]
fn invalid_block_device_layout() {
    let t = Tree::new();
    t.os().file(
        "block-device-default.yaml",
        "- local_loop:\n    name: image0\n- mkfs:\n    name: fs\n    base: nowhere\n    type: ext4\n",
    );
    let cache = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    let mut c = kiln(&[t.path()], cache.path());
    c.current_dir(d.path())
        .args(["build", "test-os", "-n", "-t", "raw"]);
    let (code, _, err) = run(c);
    // Validated before anything runs: the file, the line of the bad node and the missing base.
    assert_input_error(
        code,
        &err,
        &["block-device-default.yaml:4", "`fs`", "`nowhere`"],
    );
}

#[test]
fn block_device_plan_rejects_bad_config() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("bad.yaml");
    std::fs::write(
        &cfg,
        "- local_loop:\n    name: image0\n- frobnicate:\n    name: x\n",
    )
    .unwrap();
    let out = std::process::Command::new(crate::support::kiln_bin())
        .args(["block-device", "plan"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_input_error(
        out.status.code().unwrap(),
        &err,
        &["frobnicate", &cfg.display().to_string()],
    );
}

#[test]
fn lvm_without_device_mapper_is_refused_before_building() {
    let has_dm = std::fs::read_to_string("/proc/misc").is_ok_and(|m| m.contains("device-mapper"));
    if has_dm || !nix::unistd::geteuid().is_root() {
        kiln_testkit::skip(
            "lvm_without_device_mapper_is_refused_before_building",
            "needs root on a kernel without device-mapper",
        );
        return;
    }
    let t = Tree::new();
    t.os().file(
        "block-device-default.yaml",
        "- local_loop:\n    name: image0\n    size: 3GiB\n- partitioning:\n    base: image0\n    label: mbr\n    partitions:\n      - name: root\n        size: 100%\n- lvm:\n    name: lvm\n    base: [root]\n    pvs:\n      - name: pv\n        base: root\n    vgs:\n      - name: vg\n        base: [pv]\n    lvs:\n      - name: lv_root\n        base: vg\n        size: 1GiB\n- mkfs:\n    name: fs_root\n    base: lv_root\n    type: ext4\n    mount:\n      mount_point: /\n",
    );
    let cache = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    let mut c = kiln(&[t.path()], cache.path());
    c.current_dir(d.path())
        .args(["build", "test-os", "-n", "-t", "raw"]);
    let started = std::time::Instant::now();
    let (code, _, err) = run(c);
    assert_input_error(code, &err, &["device-mapper", "lvm"]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "it built first"
    );
}

#[test]
fn output_types_kiln_cannot_make_are_refused_alike_by_plan_and_build() {
    let t = Tree::new();
    t.os();
    let cache = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    for (types, message) in [
        (
            "tar,aci",
            "output type 'aci' is not supported by kiln yet: use tar (an ACI is a tar of the tree with a manifest)",
        ),
        (
            "floppy",
            "unknown output type 'floppy': use one of qcow2, raw, vmdk, vhd, vdi, tar, tgz, squashfs, docker, oci, oci-archive",
        ),
    ] {
        let mut seen = Vec::new();
        for cmd in ["plan", "build"] {
            let mut c = kiln(&[t.path()], cache.path());
            // The type is refused before the elements are even resolved.
            c.current_dir(d.path())
                .args([cmd, "test-os", "no-such-element", "-n", "-t", types]);
            let (code, _, err) = run(c);
            assert_input_error(code, &err, &[message]);
            seen.push(err);
        }
        assert_eq!(seen[0], seen[1], "{types}");
    }
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
}

#[test]
fn a_bad_docker_target_is_refused_alike_by_plan_and_build() {
    let t = Tree::new();
    t.os();
    let cache = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    let mut seen = Vec::new();
    for cmd in ["plan", "build"] {
        let mut c = kiln(&[t.path()], cache.path());
        c.current_dir(d.path()).args([
            cmd,
            "test-os",
            "-n",
            "-t",
            "oci",
            "--docker-target",
            "Kiln:1",
        ]);
        let (code, _, err) = run(c);
        assert_input_error(
            code,
            &err,
            &["--docker-target: 'Kiln:1' is not a REPO:TAG image name"],
        );
        seen.push(err);
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
}

#[test]
fn a_cache_directory_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let t = Tree::new();
    t.os();
    let d = tempfile::tempdir().unwrap();
    let shared = d.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let shown = shared.display().to_string();
    for args in [
        &["plan", "test-os", "-n"][..],
        &["cache", "ls"],
        &["cache", "gc", "--max-size", "1GiB"],
    ] {
        let mut c = kiln(&[t.path()], &shared);
        c.args(args);
        let (code, _, err) = run(c);
        assert_input_error(
            code,
            &err,
            &[
                &shown,
                "writable by its group and others",
                "chmod go-w",
                "DIB_IMAGE_CACHE",
            ],
        );
    }
    // Nothing was written into it.
    assert_eq!(std::fs::read_dir(&shared).unwrap().count(), 0);
}

#[test]
fn a_cache_directory_kiln_makes_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let t = Tree::new();
    t.os();
    let d = tempfile::tempdir().unwrap();
    let fresh = d.path().join("new/kiln");
    let mut c = kiln(&[t.path()], &fresh);
    c.args(["plan", "test-os", "-n"]);
    let (code, _, err) = run(c);
    assert_eq!(code, 0, "{err}");
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
}
