//! Input that would reach a path or a command (issue 12): each case is refused by the `kiln`
//! binary with exit 2 and one message naming the file (and line), before anything is written or
//! run, and nothing appears outside the build.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{assert_input_error, kiln, run, Tree};

/// Runs `kiln ARGS` in a fresh working directory with `t` on ELEMENTS_PATH; returns the exit
/// code, stderr, and the working directory (which must stay empty).
fn kiln_in(t: &Tree, args: &[&str], env: &[(&str, &str)]) -> (i32, String, tempfile::TempDir) {
    let cache = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let mut c = kiln(&[t.path()], cache.path());
    c.current_dir(cwd.path()).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let (code, _, err) = run(c);
    (code, err, cwd)
}

fn assert_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    assert!(left.is_empty(), "{} holds {left:?}", dir.display());
}

#[test]
fn package_installs_phase_is_never_a_path() {
    let t = Tree::new();
    let escape = t.path().join("ESCAPED");
    let rel = "../../../../../../../../../..".to_string() + &escape.display().to_string();
    t.os().file(
        "package-installs.yaml",
        &format!("vim:\n  phase: {rel:?}\n"),
    );
    let file = t.path().join("test-os/package-installs.yaml");
    for args in [
        &["plan", "test-os", "-n", "--explain-cache"][..],
        &["plan", "test-os", "-n"],
    ] {
        let (code, err, cwd) = kiln_in(&t, args, &[]);
        assert_input_error(
            code,
            &err,
            &[&format!("{}:2", file.display()), "vim", "install.d"],
        );
        assert_empty(cwd.path());
    }
    for suffix in ["", ".install", ".uninstall"] {
        let p = format!("{}{suffix}", escape.display());
        assert!(!Path::new(&p).exists(), "{p} was written");
    }
}

#[test]
fn package_names_never_reach_apt_as_options() {
    let t = Tree::new();
    t.os().file(
        "package-installs.json",
        "{\n  \"vim\": null,\n  \"-oAPT::Get::AllowUnauthenticated=1\": null\n}\n",
    );
    let file = t.path().join("test-os/package-installs.json");
    let (code, err, _) = kiln_in(&t, &["plan", "test-os", "-n"], &[]);
    assert_input_error(
        code,
        &err,
        &[&format!("{}:3", file.display()), "package name"],
    );

    let t = Tree::new();
    t.os();
    for bad in ["vim,-oDebug::pkgProblemResolver=1", "vim,Foo", "vim,a b"] {
        let (code, err, _) = kiln_in(&t, &["plan", "test-os", "-n", &format!("-p={bad}")], &[]);
        assert_input_error(code, &err, &["-p", "package name"]);
    }
}

#[test]
fn element_directory_names_are_plain_words() {
    // Hooks expand IMAGE_ELEMENT unquoted: this name would run `touch` in the working directory.
    let t = Tree::new();
    t.os();
    t.el("$(touch PWNED)");
    let (code, err, cwd) = kiln_in(&t, &["plan", "test-os", "-n"], &[]);
    assert_input_error(
        code,
        &err,
        &["'$(touch PWNED)'", "element name", "rename the directory"],
    );
    assert_empty(cwd.path());
    // Dot directories are not elements and are skipped.
    let t = Tree::new();
    t.os();
    t.el(".git");
    let (code, err, _) = kiln_in(&t, &["plan", "test-os", "-n"], &[]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_fifo_in_an_element_is_refused_without_hanging() {
    for rel in [
        "element-deps",
        "package-installs.yaml",
        "environment.d/20-fifo",
    ] {
        let t = Tree::new();
        t.os();
        let fifo = t.path().join("test-os").join(rel);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let cache = tempfile::tempdir().unwrap();
        let mut c = kiln(&[t.path()], cache.path());
        c.args(["plan", "test-os", "-n"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("kiln hung on a FIFO at {rel}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert_input_error(
            status.code().unwrap_or(-1),
            &err,
            &[&fifo.display().to_string(), "FIFO"],
        );
    }
}

/// An OS element with `layout` as its block-device-default.yaml.
fn with_layout(layout: &str) -> (Tree, String) {
    let t = Tree::new();
    t.os().file("block-device-default.yaml", layout);
    let file = t
        .path()
        .join("test-os/block-device-default.yaml")
        .display()
        .to_string();
    (t, file)
}

const ROOT: &str = "- local_loop:\n    name: image0\n- mkfs:\n    name: mkfs_root\n    base: image0\n    mount:\n      mount_point: /\n      fstab:\n        options: defaults\n";

#[test]
fn fstab_fields_that_would_break_the_line_are_refused_by_plan_and_build() {
    for (from, to, line, what) in [
        (
            "    base: image0\n",
            "    base: image0\n    label: 'my root'\n",
            6,
            "label",
        ),
        (
            "options: defaults",
            "options: 'defaults nofail'",
            9,
            "options",
        ),
        (
            "options: defaults",
            "options: \"defaults\\nLABEL=x /x ext4\"",
            9,
            "options",
        ),
    ] {
        let (t, file) = with_layout(&ROOT.replace(from, to));
        for cmd in ["plan", "build"] {
            let (code, err, cwd) = kiln_in(&t, &[cmd, "test-os", "-n", "-t", "raw"], &[]);
            assert_input_error(code, &err, &[&format!("{file}:{line}"), what, "fstab"]);
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
            assert_empty(cwd.path());
        }
    }
    let (t, file) = with_layout(&ROOT.replace(
        "- mkfs:\n",
        "- mkfs:\n    name: data\n    type: ext4\n    base: image0\n    mount:\n      mount_point: '/srv/my data'\n- mkfs:\n",
    ));
    let (code, err, _) = kiln_in(&t, &["plan", "test-os", "-n", "-t", "raw"], &[]);
    assert_input_error(code, &err, &[&format!("{file}:8"), "mount_point"]);
}

#[test]
fn more_than_128_gpt_partitions_are_refused_before_any_phase() {
    let mut layout = String::from(
        "- local_loop:\n    name: image0\n    size: 1GiB\n- partitioning:\n    base: image0\n    label: gpt\n    partitions:\n",
    );
    for i in 0..129 {
        layout.push_str("      - name: p");
        layout.push_str(&i.to_string());
        layout.push_str("\n        size: 1MiB\n");
    }
    layout
        .push_str("- mkfs:\n    name: mkfs_root\n    base: p0\n    mount:\n      mount_point: /\n");
    let (t, file) = with_layout(&layout);
    let started = Instant::now();
    for cmd in ["plan", "build"] {
        let (code, err, cwd) = kiln_in(&t, &[cmd, "test-os", "-n", "-t", "raw"], &[]);
        assert_input_error(
            code,
            &err,
            &[&format!("{file}:{}", 8 + 2 * 128), "at most 128", "p128"],
        );
        assert_empty(cwd.path());
    }
    assert!(started.elapsed() < Duration::from_secs(30), "a phase ran");
}

#[test]
fn invalid_image_sizes_are_refused() {
    let t = Tree::new();
    t.os();
    for (args, env, needle) in [
        (&["--image-size", "abc"][..], &[][..], "--image-size"),
        (&["--image-size=-1"], &[], "--image-size"),
        (&["--image-size", "nan"], &[], "--image-size"),
        (&["--image-size", "1e300"], &[], "at most"),
        (&[], &[("DIB_IMAGE_SIZE", "2GB")], "DIB_IMAGE_SIZE"),
        (&["--image-extra-size=-5"], &[], "--image-extra-size"),
        (&["--mkfs-journal-size", "x"], &[], "--mkfs-journal-size"),
        (
            &[],
            &[("DIB_JOURNAL_SIZE", "99999999999999999999")],
            "DIB_JOURNAL_SIZE",
        ),
    ] {
        for cmd in ["plan", "build"] {
            let mut a = vec![cmd, "test-os", "-n", "-t", "raw"];
            a.extend_from_slice(args);
            let (code, err, cwd) = kiln_in(&t, &a, env);
            assert_input_error(code, &err, &[needle]);
            assert_empty(cwd.path());
        }
    }
    // A valid decimal size is accepted.
    let (code, err, _) = kiln_in(&t, &["plan", "test-os", "-n", "--image-size", "2.5"], &[]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn sizes_that_would_wrap_are_refused() {
    for (layout, line) in [
        (
            ROOT.replace(
                "    name: image0\n",
                "    name: image0\n    size: 18446744073709551615\n",
            ),
            3,
        ),
        (
            ROOT.replace(
                "    name: image0\n",
                "    name: image0\n    size: 99999999999999999999999TiB\n",
            ),
            3,
        ),
    ] {
        let (t, file) = with_layout(&layout);
        let (code, err, _) = kiln_in(&t, &["plan", "test-os", "-n", "-t", "raw"], &[]);
        assert_input_error(code, &err, &[&format!("{file}:{line}"), "size"]);
    }
    // A partition too large for any disk is "does not fit", not a wrapped number.
    let layout = "- local_loop:\n    name: image0\n- partitioning:\n    base: image0\n    label: mbr\n    align: 8000000TiB\n    partitions:\n      - name: root\n        size: 100%\n        mkfs:\n          mount: {mount_point: /}\n";
    let (t, file) = with_layout(layout);
    let (code, err, _) = kiln_in(&t, &["plan", "test-os", "-n", "-t", "raw"], &[]);
    assert_input_error(code, &err, &[&file]);
}

#[test]
fn architecture_and_resize_values_are_words_and_numbers() {
    let t = Tree::new();
    t.os();
    for (args, env, needle) in [
        (&["-a", "../../tmp/x"][..], &[][..], "architecture"),
        (&[], &[("ARCH", "amd64 -x")], "architecture"),
        (
            &["--max-online-resize", "1 -O x"],
            &[],
            "--max-online-resize",
        ),
        (&[], &[("MAX_ONLINE_RESIZE", "lots")], "MAX_ONLINE_RESIZE"),
    ] {
        let mut a = vec!["plan", "test-os", "-n"];
        a.extend_from_slice(args);
        let (code, err, cwd) = kiln_in(&t, &a, env);
        assert_input_error(code, &err, &[needle]);
        assert_empty(cwd.path());
    }
}

#[test]
fn legacy_package_lists_and_pkg_map_results_hold_only_package_names() {
    let t = Tree::new();
    t.os().file(
        "install.d/package-installs-test-os",
        "vim\n--allow-downgrades\n",
    );
    let file = t.path().join("test-os/install.d/package-installs-test-os");
    let (code, err, _) = kiln_in(&t, &["plan", "test-os", "-n"], &[]);
    assert_input_error(
        code,
        &err,
        &[&format!("{}:2", file.display()), "package name"],
    );

    // pkg-map is applied when the lists are written (for --explain-cache, and before any phase
    // of a build): what it maps a name to is checked there, naming the pkg-map file.
    let t = Tree::new();
    t.os().file("package-installs.yaml", "vim:\n").file(
        "pkg-map",
        "{\"distro\": {\"debian\": {\"vim\": \"vim -oAPT::Get::Assume-Yes=1\"}}}",
    );
    let map = t.path().join("test-os/pkg-map");
    let (code, err, cwd) = kiln_in(&t, &["plan", "test-os", "-n", "--explain-cache"], &[]);
    assert_input_error(code, &err, &[&map.display().to_string(), "vim", "-oAPT"]);
    assert_empty(cwd.path());

    // A generic name (allowed, for pkg-map to translate) that reaches apt unmapped.
    let t = Tree::new();
    t.os().file("package-installs.yaml", "NetworkManager:\n");
    let dir = t.path().join("test-os");
    let (code, err, _) = kiln_in(&t, &["plan", "test-os", "-n", "--explain-cache"], &[]);
    assert_input_error(
        code,
        &err,
        &[
            &dir.display().to_string(),
            "NetworkManager",
            "no pkg-map entry",
        ],
    );
    // Mapped, it is fine.
    let t = Tree::new();
    t.os()
        .file("package-installs.yaml", "NetworkManager:\n")
        .file(
            "pkg-map",
            "{\"family\": {\"debian\": {\"NetworkManager\": \"network-manager\"}}}",
        );
    let (code, err, _) = kiln_in(&t, &["plan", "test-os", "-n", "--explain-cache"], &[]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn block_device_config_file_must_be_a_regular_file() {
    let t = Tree::new();
    t.os();
    let fifo = t.path().join("layout.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    for (value, needle) in [
        (format!("file://{}", fifo.display()), "not a regular file"),
        (
            format!("file://{}", t.path().join("missing.yaml").display()),
            "No such file",
        ),
        (
            format!("file://{}", t.path().display()),
            "not a regular file",
        ),
    ] {
        let started = Instant::now();
        let (code, err, _) = kiln_in(
            &t,
            &["plan", "test-os", "-n", "-t", "raw"],
            &[("DIB_BLOCK_DEVICE_CONFIG", &value)],
        );
        assert_input_error(code, &err, &["DIB_BLOCK_DEVICE_CONFIG", needle]);
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}

#[test]
fn values_that_reach_shell_files_and_host_paths_are_words() {
    // --install-type is written into an environment.d file that bash sources on the host.
    let t = Tree::new();
    t.os();
    let (code, err, cwd) = kiln_in(
        &t,
        &[
            "plan",
            "test-os",
            "-n",
            "--explain-cache",
            "--install-type",
            "\"$(touch PWNED)\"",
        ],
        &[],
    );
    assert_input_error(code, &err, &["--install-type", "source or package"]);
    assert_empty(cwd.path());
    // DIB_RELEASE becomes part of a host path in the cache (apt/$DISTRO_NAME-$DIB_RELEASE-$ARCH),
    // whether it comes from the environment or from an environment.d file.
    let (code, err, _) = kiln_in(
        &t,
        &["plan", "test-os", "-n"],
        &[("DIB_RELEASE", "../../../tmp/x")],
    );
    assert_input_error(code, &err, &["DIB_RELEASE", "not a name"]);
    let t = Tree::new();
    t.os()
        .env("20-release", "export DIB_RELEASE='bookworm main contrib'\n");
    let file = t.path().join("test-os/environment.d/20-release");
    let (code, err, _) = kiln_in(&t, &["plan", "test-os", "-n", "--explain-cache"], &[]);
    assert_input_error(code, &err, &["DIB_RELEASE", &file.display().to_string()]);
}

#[test]
fn a_failing_environment_d_file_is_named_by_its_element_path() {
    let t = Tree::new();
    t.os().env("20-broken", "export A=1\n\u{1}binary\n");
    let file = t.path().join("test-os/environment.d/20-broken");
    let (code, err, cwd) = kiln_in(&t, &["plan", "test-os", "-n", "--explain-cache"], &[]);
    assert_input_error(code, &err, &[&file.display().to_string(), "environment.d"]);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_empty(cwd.path());
    // A file that stops the sourcing without a message of its own is named too.
    let t = Tree::new();
    t.os().env("30-quiet", "return 3\n");
    let file = t.path().join("test-os/environment.d/30-quiet");
    let (code, err, _) = kiln_in(&t, &["plan", "test-os", "-n", "--explain-cache"], &[]);
    assert_input_error(code, &err, &[&file.display().to_string(), "status 3"]);
}
