//! `kiln plan`: resolution, hook order, environment, block-device choice and outputs.

use std::fmt::Write as _;

use crate::support::{filter, kiln, run, Tree};

fn fixture() -> Tree {
    let t = Tree::new();
    t.os()
        .deps(&["helper"])
        .hook("root", "10-bootstrap", "true")
        .hook("install", "10-a", "true")
        .hook("install", "5-b", "true")
        .file("block-device-default.yaml", "- local_loop:\n    name: image0\n- mkfs:\n    name: mkfs_root\n    base: image0\n    type: ext4\n    mount:\n      mount_point: /\n      fstab:\n        options: defaults\n        fsck-passno: 1\n");
    t.el("helper")
        .hook("install", "9-x", "true")
        .hook("install", "foo", "true")
        .hook("install", "00-b", "true")
        .hook("install", "0-a", "true")
        .hook("install", "05-z", "true")
        .hook("install", "10-y", "true")
        .hook("install", "with.dot", "true")
        .file("install.d/20-not-executable", "data")
        .env("10-helper.bash", "export HELPER=1\n")
        .env("05-first", "export FIRST=1\n");
    t.el("app")
        .deps(&["helper", "test-os"])
        .hook("finalise", "50-app", "true");
    t
}

#[test]
fn fixture_plan_text() {
    let t = fixture();
    let cache = tempfile::tempdir().unwrap();
    let mut c = kiln(&[t.path()], cache.path());
    c.args(["plan", "app", "-n", "-t", "raw,tar", "-o", "out/app"]);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{err}");
    insta::assert_snapshot!(
        "fixture_plan_text",
        filter(&out, Some(t.path()), cache.path())
    );
}

#[test]
fn fixture_plan_json_fields() {
    let t = fixture();
    let cache = tempfile::tempdir().unwrap();
    let mut c = kiln(&[t.path()], cache.path());
    c.args(["plan", "app", "-n", "--json"]);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = v["elements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    // Dependencies first, ties by name.
    assert_eq!(names, ["helper", "test-os", "app"]);
    let install: Vec<&str> = v["phases"]["install"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        install,
        ["0-a", "00-b", "foo", "05-z", "5-b", "9-x", "10-a", "10-y"]
    );
    assert_eq!(v["phases"]["install"][6]["element"], "test-os");
    let env: Vec<&str> = v["environment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(env, ["05-first", "10-helper.bash", "10-test-os"]);
    assert!(v["block_device"].as_str().unwrap().contains("mkfs_root"));
    assert!(v["outputs"][0]["path"]
        .as_str()
        .unwrap()
        .ends_with("image.qcow2"));
    for phase in [
        "root",
        "extra-data",
        "pre-install",
        "install",
        "post-install",
        "post-root",
        "block-device",
        "pre-finalise",
        "finalise",
        "cleanup",
    ] {
        assert!(v["phases"][phase].is_array(), "phase {phase} missing");
    }
}

#[test]
fn builtin_debian_vm_cloud_init_plan_is_complete_and_stable() {
    let cache = tempfile::tempdir().unwrap();
    let json = || {
        let mut c = kiln(&[], cache.path());
        c.env_remove("ELEMENTS_PATH").args([
            "plan",
            "debian-minimal",
            "vm",
            "cloud-init",
            "--json",
        ]);
        run(c)
    };
    let (code, first, err) = json();
    assert_eq!(code, 0, "{err}");
    let (_, second, _) = json();
    assert_eq!(first, second, "plan --json differs between runs");
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    let mut names: Vec<&str> = v["elements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    // DIB's element-info gives exactly these 16 for this command line.
    assert_eq!(
        names,
        [
            "base",
            "block-device-mbr",
            "bootloader",
            "cloud-init",
            "debian-minimal",
            "debootstrap",
            "dib-init-system",
            "dpkg",
            "install-bin",
            "install-types",
            "manifests",
            "modprobe",
            "package-installs",
            "pkg-map",
            "sysprep",
            "vm"
        ]
    );
    assert!(v["block_device"].as_str().unwrap().contains("partitioning"));
    let root: Vec<&str> = v["phases"]["root"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert!(root.iter().any(|h| h.contains("debootstrap")), "{root:?}");
    assert!(!v["phases"]["finalise"].as_array().unwrap().is_empty());
    insta::assert_snapshot!(
        "builtin_debian_vm_cloud_init_json",
        filter(&first, None, cache.path())
    );
    // And the text form, also stable.
    let text = || {
        let mut c = kiln(&[], cache.path());
        c.env_remove("ELEMENTS_PATH")
            .args(["plan", "debian-minimal", "vm", "cloud-init"]);
        run(c)
    };
    let (code, t1, err) = text();
    assert_eq!(code, 0, "{err}");
    assert_eq!(t1, text().1);
    insta::assert_snapshot!(
        "builtin_debian_vm_cloud_init_text",
        filter(&t1, None, cache.path())
    );
}

#[test]
fn override_is_whole_directory_and_logged() {
    let first = Tree::new();
    let second = Tree::new();
    second.os().hook("root", "10-second", "true");
    first.os().hook("root", "10-first", "true");
    let cache = tempfile::tempdir().unwrap();
    let mut c = kiln(&[first.path(), second.path()], cache.path());
    c.args(["plan", "test-os", "-n", "--json"]);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["phases"]["root"][0]["name"], "10-first");
    assert_eq!(v["phases"]["root"].as_array().unwrap().len(), 1);
    assert!(err.contains("overrides"), "override not logged: {err}");
}

#[test]
fn vm_auto_adds_block_device_by_arch() {
    let cache = tempfile::tempdir().unwrap();
    let names = |arch: &str| {
        let mut c = kiln(&[], cache.path());
        c.env_remove("ELEMENTS_PATH")
            .args(["plan", "debian-minimal", "vm", "--json", "-a", arch]);
        let (code, out, err) = run(c);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["elements"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert!(names("amd64").contains(&"block-device-mbr".to_string()));
    assert!(names("arm64").contains(&"block-device-efi".to_string()));
}

/// ubuntu-minimal: no Ubuntu mirror is reachable here, so its plan and the apt sources its
/// root.d would write are checked without building.
#[test]
fn ubuntu_minimal_plan_and_generated_sources() {
    let cache = tempfile::tempdir().unwrap();
    let mut c = kiln(&[], cache.path());
    c.env_remove("ELEMENTS_PATH")
        .args(["plan", "ubuntu-minimal", "-t", "tar", "--json"]);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = v["elements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for n in [
        "ubuntu-minimal",
        "ubuntu-common",
        "debootstrap",
        "dpkg",
        "base",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    assert!(!names.contains(&"debian-minimal"));
    let paths: std::collections::HashMap<&str, &str> = v["elements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["path"].as_str().unwrap()))
        .collect();
    // Source environment.d in plan order, then let debootstrap's helper write the sources.
    let mut script = String::from("set -eu\ndie() { echo \"die: $*\" >&2; exit 1; }\n");
    for e in v["environment"].as_array().unwrap() {
        let el = paths[e["element"].as_str().unwrap()];
        let _ = writeln!(
            script,
            "source '{el}/environment.d/{}'",
            e["name"].as_str().unwrap()
        );
    }
    let _ = writeln!(
        script,
        "source '{}/root.d/kiln-apt-baseinstall.bash'\n_kiln_write_sources\n\
         echo \"DISTRO_NAME=$DISTRO_NAME DIB_RELEASE=$DIB_RELEASE DIB_INIT_SYSTEM=$DIB_INIT_SYSTEM\"",
        paths["debootstrap"]
    );
    let target = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("ARCH", "amd64")
        .env("TARGET_ROOT", target.path())
        .env(
            "DIB_DISTRIBUTION_MIRROR",
            "http://mirror.example.invalid/ubuntu",
        )
        .output()
        .unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{so}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        so.contains("DISTRO_NAME=ubuntu DIB_RELEASE=noble DIB_INIT_SYSTEM=systemd"),
        "{so}"
    );
    let read = |n: &str| {
        std::fs::read_to_string(target.path().join("etc/apt/sources.list.d").join(n))
            .unwrap_or_default()
    };
    let m = "http://mirror.example.invalid/ubuntu";
    assert_eq!(
        read("default.list"),
        format!("deb {m} noble main universe\n")
    );
    assert_eq!(
        read("updates.list"),
        format!("deb {m} noble-updates main universe\n")
    );
    assert_eq!(
        read("security.list"),
        format!("deb {m} noble-security main universe\n")
    );
    assert_eq!(
        read("backports.list"),
        format!("deb {m} noble-backports main universe\n")
    );
    assert_eq!(
        std::fs::read_to_string(target.path().join("etc/apt/sources.list")).unwrap(),
        ""
    );
}

/// Output naming and types are not inputs of the cached phases: `-o` and `-t` (and what
/// environment.d derives from them, such as DIB_MANIFEST_SAVE_DIR) leave every phase key as it
/// is, while a real input (DIB_RELEASE) changes them all.
#[test]
fn phase_keys_ignore_output_name_and_type() {
    let cache = tempfile::tempdir().unwrap();
    let keys = |extra: &[&str], release: &str| -> Vec<String> {
        let mut c = kiln(&[], cache.path());
        c.args(["plan", "debian-minimal", "vm", "--explain-cache", "--json"])
            .args(extra)
            .env("DIB_OFFLINE", "1")
            .env("DIB_RELEASE", release)
            .env("DIB_DISTRIBUTION_MIRROR", "http://mirror.invalid/debian")
            .env_remove("ELEMENTS_PATH");
        let (code, out, err) = run(c);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| format!("{}={}", s["step"], s["key"]))
            .collect()
    };
    let a = keys(&["-o", "one"], "bookworm");
    assert!(a.len() >= 6, "{a:?}");
    assert_eq!(a, keys(&["-o", "dir/two", "-t", "tar,raw"], "bookworm"));
    let c = keys(&["-o", "one"], "trixie");
    assert!(a.iter().zip(&c).all(|(x, y)| x != y), "{a:?}\n{c:?}");
}

/// Every request flag of `kiln build` with a value that changes the request. `--checksum` and
/// `--no-cache` are absent: they change no key (DIB_CHECKSUM and KILN_NO_CACHE are not cache
/// inputs); the CLI's unit test `plan_and_build_make_the_same_request` covers them.
fn key_flags() -> Vec<Vec<String>> {
    let v: &[&[&str]] = &[
        &["-a", "arm64"],
        &["-o", "other"],
        &["-t", "raw,tar"],
        &["-x"],
        &["-u"],
        &["-c"],
        &["-p", "vim,curl"],
        &["--no-tmpfs"],
        &["--min-tmpfs", "7"],
        &["--offline"],
        &["--image-size", "3"],
        &["--image-extra-size", "100"],
        &["--mkfs-journal-size", "32"],
        &["--max-online-resize", "1000"],
        &["--mkfs-options", "-m 1"],
        &["--qemu-img-options", "compat=1.1"],
        &["--root-label", "lbl"],
        &["--install-type", "package"],
        &["--seed", "s1"],
        &["--docker-target", "repo:tag"],
    ];
    v.iter()
        .map(|f| f.iter().map(|s| (*s).to_string()).collect())
        .collect()
}

/// The keys `kiln <cmd> ... app -n <flags>` computes: every step's and the outputs'.
fn keys(t: &Tree, cache: &std::path::Path, cmd: &[&str], flags: &[String]) -> serde_json::Value {
    let mut c = kiln(&[t.path()], cache);
    // A variable only `-c` removes, keyed through KILN_CACHE_ENV, so that `-c` changes the keys.
    c.env("KILN_IT_CLEARED_BY_C", "1")
        .env("KILN_CACHE_ENV", "KILN_IT_CLEARED_BY_C");
    c.args(cmd).args(["app", "-n"]).args(flags);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "kiln {cmd:?} {flags:?}: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let mut keys: Vec<serde_json::Value> = v["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| serde_json::json!([s["step"], s["key"]]))
        .collect();
    keys.push(v["outputs"]["key"].clone());
    serde_json::Value::Array(keys)
}

/// `kiln plan --explain-cache` computes the keys `kiln build` would use, for every request flag:
/// a flag that build honours and plan ignores (or the reverse) fails here.
#[test]
fn plan_keys_equal_build_keys_for_every_flag() {
    let t = fixture();
    let cache = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let plan = ["plan", "--explain-cache", "--json"];
    let build = ["build", "--print-cache-keys"];
    let base = keys(&t, cache.path(), &plan, &[]);
    assert_eq!(base, keys(&t, cache.path(), &build, &[]));
    let other = other.path().display().to_string();
    for flags in key_flags() {
        let p = keys(&t, cache.path(), &plan, &flags);
        let b = keys(&t, cache.path(), &build, &flags);
        assert_eq!(p, b, "plan and build disagree on the keys with {flags:?}");
        assert_ne!(p, base, "{flags:?} does not change the keys");
    }
    // Where the cache lives is not an input: another cache gives the same keys (and so the
    // same default build seed).
    let elsewhere = ["--image-cache".to_string(), other];
    assert_eq!(keys(&t, cache.path(), &plan, &elsewhere), base);
    assert_eq!(keys(&t, cache.path(), &build, &elsewhere), base);
}

/// The build seed enters the output key only (the phase layers stay shared), and `--seed` and
/// `KILN_SEED` are one setting: the same value gives the same keys from either. An empty
/// `--seed` is an input error.
#[test]
fn seed_enters_the_output_key_only() {
    let t = fixture();
    let cache = tempfile::tempdir().unwrap();
    let plan = ["plan", "--explain-cache", "--json"];
    let base = keys(&t, cache.path(), &plan, &[]);
    let flag = keys(&t, cache.path(), &plan, &["--seed".into(), "s1".into()]);
    let steps =
        |v: &serde_json::Value| v.as_array().unwrap()[..v.as_array().unwrap().len() - 1].to_vec();
    assert_eq!(steps(&base), steps(&flag), "the seed changed a phase key");
    assert_ne!(
        base.as_array().unwrap().last(),
        flag.as_array().unwrap().last()
    );
    let mut c = kiln(&[t.path()], cache.path());
    c.env("KILN_IT_CLEARED_BY_C", "1")
        .env("KILN_CACHE_ENV", "KILN_IT_CLEARED_BY_C")
        .env("KILN_SEED", "s1")
        .args(plan)
        .args(["app", "-n"]);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(flag.as_array().unwrap().last(), Some(&v["outputs"]["key"]));
    let other = keys(&t, cache.path(), &plan, &["--seed".into(), "s2".into()]);
    assert_ne!(flag, other);

    let mut c = kiln(&[t.path()], cache.path());
    c.args(["plan", "app", "-n", "--seed", ""]);
    let (code, _, err) = run(c);
    crate::support::assert_input_error(code, &err, &["--seed is empty"]);
}

#[test]
fn no_colour_codes_on_a_pipe() {
    // The override is logged at info level, which the terminal layer shows (with a coloured
    // level name on a terminal). stderr is a pipe here, and NO_COLOR is not set.
    let first = Tree::new();
    let second = Tree::new();
    second.os();
    first.os();
    let cache = tempfile::tempdir().unwrap();
    let mut c = kiln(&[first.path(), second.path()], cache.path());
    c.env_remove("NO_COLOR");
    c.args(["plan", "test-os", "-n"]);
    let (code, _, err) = run(c);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("overrides"), "override not logged: {err}");
    assert!(!err.contains("\x1b["), "colour codes on a pipe: {err:?}");
}

/// The container element follows the outputs: `-t docker` adds it (and its environment.d, which
/// turns the kernel off, enters the keys); `-t qcow2,docker` does not and says, in the text and
/// the JSON, that the container image carries the disk's kernel and boot loader.
#[test]
fn container_outputs_choose_the_container_element() {
    let cache = tempfile::tempdir().unwrap();
    let plan = |args: &[&str]| {
        let mut c = kiln(&[], cache.path());
        c.env_remove("ELEMENTS_PATH")
            .env("DIB_OFFLINE", "1")
            .env("DIB_RELEASE", "bookworm")
            .env("DIB_DISTRIBUTION_MIRROR", "http://mirror.invalid/debian")
            .arg("plan")
            .args(args);
        run(c)
    };
    let json = |args: &[&str]| -> serde_json::Value {
        let (code, out, err) = plan(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        serde_json::from_str(&out).unwrap()
    };
    let names = |v: &serde_json::Value| -> Vec<String> {
        v["elements"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect()
    };
    let docker = json(&["debian-minimal", "-t", "docker", "--json"]);
    let container = docker["elements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "container")
        .expect("container added for -t docker");
    assert!(
        container["reason"]
            .as_str()
            .unwrap()
            .starts_with("auto-added: container is added because every output (-t docker)"),
        "{container}"
    );
    assert!(docker.get("notes").is_none(), "{docker}");
    let env: Vec<&str> = docker["environment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert!(env.contains(&"05-container.bash"), "{env:?}");

    let mixed = json(&["debian-minimal", "vm", "-t", "qcow2,docker", "--json"]);
    assert!(!names(&mixed).contains(&"container".to_string()));
    assert_eq!(mixed["notes"].as_array().unwrap().len(), 1, "{mixed}");
    let (code, text, err) = plan(&["debian-minimal", "vm", "-t", "qcow2,docker"]);
    assert_eq!(code, 0, "{err}");
    let warnings: Vec<&str> = text.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(
        warnings,
        ["warning: -t docker is made from the same tree as the disk output (qcow2) and carries its kernel and boot loader; for a lean container image build it separately with only container outputs (-t docker), which adds the container element"]
    );
    // A tree output that is no container image keeps the tree as it is, without a word.
    let tar_docker = json(&["debian-minimal", "-t", "tar,docker", "--json"]);
    assert!(!names(&tar_docker).contains(&"container".to_string()));
    assert!(tar_docker.get("notes").is_none());

    // The element set is in the keys: -t docker builds another tree than -t tar,docker.
    let keys = |t: &str| -> Vec<String> {
        let v = json(&["debian-minimal", "-t", t, "--explain-cache", "--json"]);
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["key"].as_str().unwrap().to_string())
            .collect()
    };
    let (lean, full) = (keys("docker"), keys("tar,docker"));
    assert!(lean.len() >= 6, "{lean:?}");
    assert!(
        lean.iter().zip(&full).all(|(a, b)| a != b),
        "{lean:?}\n{full:?}"
    );
    assert_eq!(full, keys("tar"));
}

/// `container` with an element of a bootable disk: exit 2, one line naming both.
#[test]
fn container_with_vm_is_an_input_error() {
    let cache = tempfile::tempdir().unwrap();
    for (args, other) in [
        (
            &["debian-minimal", "container", "vm", "-t", "tar"][..],
            "vm",
        ),
        (&["debian-minimal", "growroot", "-t", "oci"], "growroot"),
    ] {
        let mut c = kiln(&[], cache.path());
        c.env_remove("ELEMENTS_PATH").arg("plan").args(args);
        let (code, out, err) = run(c);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(
            lines[0].contains("elements container (")
                && lines[0].contains(&format!(" and {other} (")),
            "{err}"
        );
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
    }
}
