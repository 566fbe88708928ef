//! `kiln elements check`: the element linter, run as users run it on element trees in temp
//! dirs (and on kiln's own built-in library).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{assert_input_error, filter, kiln, kiln_bin, run, Tree};

/// Runs `kiln elements check ARGS` with an empty ELEMENTS_PATH (so only the built-in
/// elements are on the path) and a private cache.
fn check(args: &[&Path]) -> (i32, String, String) {
    check_with(args, &[], &[])
}

fn check_with(paths: &[&Path], flags: &[&str], elements_path: &[&Path]) -> (i32, String, String) {
    let cache = tempfile::tempdir().unwrap();
    let mut c = kiln(elements_path, cache.path());
    c.args(["elements", "check"]).args(flags).args(paths);
    let (code, out, err) = run(c);
    // The built-in library's paths show up in duplicate-name warnings.
    (code, filter(&out, None, cache.path()), err)
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// An element with nothing to complain about.
fn good(t: &Tree, name: &str) -> PathBuf {
    t.el(name)
        .file("README.rst", "Good.\n")
        .hook("install", &format!("10-{name}"), "echo hi")
        .file(&format!("install.d/{name}.conf"), "data\n")
        .env(
            &format!("10-{name}.bash"),
            "export GOOD=${GOOD:-1}\nexport R=$DIB_RELEASE\n",
        )
        .path
}

#[test]
fn clean_tree_exits_zero() {
    let t = Tree::new();
    good(&t, "one");
    good(&t, "two");
    t.el("three")
        .file("README.rst", "x\n")
        .deps(&["one", "debian-minimal", "block-device"]);
    let (code, out, err) = check(&[t.path()]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "0 errors, 0 warnings in 3 elements\n");
}

#[test]
fn broken_tree_report() {
    let t = Tree::new();
    let el = t
        .el("broken")
        .file("element-deps", "one\nnope\nbase # the base\n")
        .hook("install", "10-renamed.sh", "true")
        .file("install.d/20-not-exec", "#!/bin/bash\n")
        .file("install.d/30-no-shebang", "echo hi\n")
        .file("install.d/data.conf", "x\n")
        .hook("root", "08-debootstrap", "true")
        .env("10-unbound", "export A=1\n\nexport B=$NOT_SET_ANYWHERE\n")
        .env("20-syntax", "if then\n")
        .env("30-fails", "echo 'no such release' >&2\nexit 3\n")
        .env("40-exec", "export X=${X:-1}\n")
        .env("50 space", "")
        .file(
            "package-installs.yaml",
            "pkg:\n  arch: amd64\n  not-arch: arm64\n",
        )
        .file("pkg-map", "{\"default\": [\n")
        .file(
            "block-device-default.yaml",
            "- local_loop:\n    name: image0\n    size: lots\n",
        )
        .path;
    chmod(&el.join("install.d/30-no-shebang"), 0o755);
    chmod(&el.join("environment.d/40-exec"), 0o755);
    t.el("md").file("README.md", "x\n");
    good(&t, "one");

    let (code, out, err) = check(&[t.path()]);
    assert_eq!(code, 1, "{out}{err}");
    let out = filter(&out, Some(t.path()), Path::new("/nonexistent-cache"));
    insta::assert_snapshot!("broken_tree_report", out);
}

#[test]
fn element_dir_or_directory_of_elements() {
    let t = Tree::new();
    let one = good(&t, "one");
    fs::write(t.path().join("README.rst"), "A collection.\n").unwrap();
    // One element.
    let (code, out, err) = check(&[&one]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.ends_with("in 1 element\n"), "{out}");
    // The directory of elements, despite its own README.
    good(&t, "two");
    let (code, out, _) = check(&[t.path()]);
    assert_eq!(code, 0);
    assert!(out.ends_with("in 2 elements\n"), "{out}");
    // A dependency on a sibling is unknown when only the element is checked ...
    let three = t.el("three").file("README.rst", "x\n").deps(&["two"]).path;
    let (code, out, _) = check(&[&three]);
    assert_eq!(code, 1);
    assert!(
        out.contains("three/element-deps:1: error: depends on 'two'"),
        "{out}"
    );
    // ... and known when the directory is on ELEMENTS_PATH or checked too.
    let (code, out, _) = check_with(&[&three], &[], &[t.path()]);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = check(&[&three, &t.path().join("two")]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn warnings_alone_exit_zero() {
    let t = Tree::new();
    t.el("no-readme").hook("install", "10-x.sh", "true");
    let (code, out, _) = check(&[t.path()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.ends_with("0 errors, 2 warnings in 1 element\n"),
        "{out}"
    );
}

#[test]
fn environment_d_sees_what_its_dependencies_export() {
    let t = Tree::new();
    t.el("base-env")
        .file("README.rst", "x\n")
        .env("10-base-env", "export FROM_BASE=yes\n");
    t.el("user")
        .file("README.rst", "x\n")
        .deps(&["base-env"])
        .env("20-user", "export MINE=$FROM_BASE\n")
        // Sorted before the file it needs, so it is sourced before it: unbound.
        .env("05-early", "export EARLY=$FROM_BASE\n")
        .env(
            "30-image-element",
            "case \" $IMAGE_ELEMENT \" in *\" base-env \"*) ;; *) exit 1 ;; esac\n",
        );
    let (code, out, err) = check(&[t.path()]);
    assert_eq!(code, 1, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].ends_with("user/environment.d/05-early:1: error: uses $FROM_BASE without a default (write ${FROM_BASE:-default}; environment.d files are sourced with set -u)"),
        "{out}"
    );
}

#[test]
fn no_source_only_parses() {
    let t = Tree::new();
    let marker = t.path().join("was-sourced");
    t.el("el").file("README.rst", "x\n").env(
        "10-el",
        &format!("touch {}\nexport A=$UNSET\n", marker.display()),
    );
    t.el("bad")
        .file("README.rst", "x\n")
        .env("10-bad", "if then\n");
    let (code, out, _) = check_with(&[t.path()], &["--no-source"], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(!marker.exists(), "--no-source sourced the file");
    assert!(out.contains("bad/environment.d/10-bad:1: error: bash cannot parse it"));
    assert!(!out.contains("UNSET"), "{out}");
    // Without the flag it is sourced, in a clean environment, from an empty directory.
    let (code, out, _) = check(&[&t.path().join("el")]);
    assert_eq!(code, 1);
    assert!(marker.exists());
    assert!(
        out.contains("10-el:2: error: uses $UNSET without a default"),
        "{out}"
    );
}

#[test]
fn sourcing_is_time_limited() {
    let t = Tree::new();
    t.el("slow")
        .file("README.rst", "x\n")
        .env("10-slow", "sleep 60 &\nsleep 60\n")
        .env("20-after", "export A=${A:-1}\n");
    let started = Instant::now();
    let (code, out, _) = check(&[t.path()]);
    assert!(started.elapsed() < Duration::from_secs(30), "took too long");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "slow/environment.d/10-slow: warning: sourcing it does not finish within 5 seconds"
        ),
        "{out}"
    );
    // The slow file is not sourced again before the next one.
    assert!(out.ends_with("0 errors, 1 warning in 1 element\n"), "{out}");
}

#[test]
fn duplicate_of_a_builtin_hook() {
    let t = Tree::new();
    t.el("mine")
        .file("README.rst", "x\n")
        .hook("root", "08-debootstrap", "true");
    let (code, out, _) = check(&[t.path()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("mine/root.d/08-debootstrap: warning: element 'debootstrap' also has root.d/08-debootstrap ([BUILTIN]/debootstrap/root.d/08-debootstrap); DIB fails the build when both elements are used together (rename one of them)"),
        "{out}"
    );
}

#[test]
fn bad_paths_are_input_errors() {
    let t = Tree::new();
    let (code, _, err) = check(&[&t.path().join("missing")]);
    assert_input_error(code, &err, &["missing", "does not exist"]);
    let file = t.path().join("file");
    fs::write(&file, "").unwrap();
    let (code, _, err) = check(&[&file]);
    assert_input_error(code, &err, &["is not a directory"]);
    let out = Command::new(kiln_bin())
        .args(["elements", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The built-in library must pass its own linter.
#[test]
fn builtin_library_has_no_errors() {
    let elements = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../elements");
    let (code, out, err) = check(&[&elements]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains(": error: "), "{out}");
}

#[test]
fn help_snapshots() {
    for args in [
        vec!["elements", "--help"],
        vec!["elements", "check", "--help"],
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

#[test]
fn a_bad_cache_inputs_line_is_an_error() {
    let t = Tree::new();
    let ok = good(&t, "declares");
    fs::write(
        ok.join("cache-inputs"),
        "# keys\n$DIB_MY_KEYS\n~/.ssh/id_rsa.pub\n",
    )
    .unwrap();
    let (code, out, err) = check(&[&ok]);
    assert_eq!(code, 0, "{out}{err}");
    fs::write(ok.join("cache-inputs"), "$DIB_MY_KEYS\nkeys.txt\n").unwrap();
    let (code, out, _) = check(&[&ok]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("declares/cache-inputs:2: error: 'keys.txt' is neither $VARIABLE"),
        "{out}"
    );
}
