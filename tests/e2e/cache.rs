//! The phase cache: hits and misses exactly where inputs changed, a restored chain equal to a
//! fresh build, and `kiln cache` on the command line.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::failures::fixture_elements;
use crate::harness::{assert_no_leftovers, build, capable, heavy, kiln_command, work, Timer};
use crate::rootfs::rootfs_tar;

/// Runs `kiln plan --explain-cache --json` and returns (step, status, reasons) per step.
pub(crate) fn explain(
    dir: &Path,
    elements_path: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Vec<(String, String, Vec<String>)>, String) {
    explain_with(dir, Some(elements_path), args, env)
}

/// The codename the release of a request resolves to (`kiln plan --explain-cache --json`'s
/// `release`; the release itself when it names no alias).
pub(crate) fn resolved_codename(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let v = explain_json(dir, None, args, env);
    v["release"]["codename"]
        .as_str()
        .unwrap_or_else(|| panic!("no resolved release in {v:#}"))
        .to_string()
}

/// `kiln plan --explain-cache --json` of a request, parsed; fails with its stderr.
fn explain_json(
    dir: &Path,
    elements_path: Option<&Path>,
    args: &[&str],
    env: &[(&str, &str)],
) -> serde_json::Value {
    let mut c = kiln_command("plan", dir, elements_path, args, env);
    c.args(["--explain-cache", "--json"]);
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// [`explain`] with the built-in elements only when `elements_path` is None.
pub(crate) fn explain_with(
    dir: &Path,
    elements_path: Option<&Path>,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Vec<(String, String, Vec<String>)>, String) {
    let v = explain_json(dir, elements_path, args, env);
    let steps = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
                s["reasons"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    (steps, v["outputs"]["status"].as_str().unwrap().to_string())
}

pub(crate) fn first_miss(steps: &[(String, String, Vec<String>)]) -> Option<(String, Vec<String>)> {
    steps
        .iter()
        .find(|s| s.1 == "miss")
        .map(|s| (s.0.clone(), s.2.clone()))
}

#[test]
fn phase_cache_hits_and_misses_exactly_where_inputs_changed() {
    if !capable("phase_cache_hits_and_misses_exactly_where_inputs_changed") {
        return;
    }
    let t = fixture_elements(&rootfs_tar());
    let el = t
        .el("cachey")
        .hook(
            "install",
            "50-cachey",
            "echo one > /etc/cachey\necho \"${KILN_TEST_VAR:-}\" > /etc/cachey-var",
        )
        .hook("post-install", "50-cachey-post", "echo post >> /etc/cachey")
        .hook("finalise", "50-cachey-final", "echo final >> /etc/cachey");
    let args = ["-n", "test-rootfs", "cachey", "-t", "tar", "-o", "c"];
    let env = [("KILN_TEST_VAR", "1")];
    let h = heavy();
    // Timed from here: the wait for the heavy lock is not this test's time.
    let _t = Timer::start("phase_cache_hits_and_misses_exactly_where_inputs_changed");
    let dir = work("cache");
    let o = build(&dir, Some(t.path()), &args, &env);
    assert_eq!(o.code, 0, "{}", o.stderr);
    // Nothing changed: every step hits, and so do the outputs.
    let (steps, outs) = explain(&dir, t.path(), &args[..3], &env);
    assert!(steps.iter().all(|s| s.1 == "hit"), "{steps:?}");
    let (_, outs_tar) = explain(&dir, t.path(), &args, &env);
    assert_eq!(outs_tar, "hit");
    let _ = outs;
    let t0 = Instant::now();
    let o = build(&dir, Some(t.path()), &args, &env);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.log.contains("output hit"), "{}", o.log);
    eprintln!(
        "rebuild with nothing changed: {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    // Hook content: misses from install on.
    let hook = el.path.join("install.d/50-cachey");
    let orig = fs::read_to_string(&hook).unwrap();
    fs::write(&hook, orig.replace("one", "two")).unwrap();
    let (steps, _) = explain(&dir, t.path(), &args, &env);
    let (step, why) = first_miss(&steps).unwrap();
    assert_eq!(step, "install", "{steps:?}");
    assert!(
        why.iter()
            .any(|r| r.contains("install.d/50-cachey changed")),
        "{why:?}"
    );
    assert!(steps
        .iter()
        .skip_while(|s| s.0 != "install")
        .all(|s| s.1 == "miss"));
    fs::write(&hook, &orig).unwrap();
    // Hook mode: misses from post-install.
    let post = el.path.join("post-install.d/50-cachey-post");
    fs::set_permissions(&post, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let (steps, _) = explain(&dir, t.path(), &args, &env);
    let (step, why) = first_miss(&steps).unwrap();
    assert_eq!(step, "post-install", "{steps:?}");
    assert!(why.iter().any(|r| r.contains("mode changed")), "{why:?}");
    fs::set_permissions(&post, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // A finalise hook is not an input of any cached phase: only the outputs miss.
    let fin = el.path.join("finalise.d/50-cachey-final");
    let forig = fs::read_to_string(&fin).unwrap();
    fs::write(&fin, forig.replace("final", "finale")).unwrap();
    let (steps, outs) = explain(&dir, t.path(), &args, &env);
    assert!(steps.iter().all(|s| s.1 == "hit"), "{steps:?}");
    assert_eq!(outs, "miss");
    fs::write(&fin, &forig).unwrap();
    // A variable a hook names: every phase can see it, so the first miss is root.
    let (steps, _) = explain(&dir, t.path(), &args, &[("KILN_TEST_VAR", "2")]);
    let (step, why) = first_miss(&steps).unwrap();
    assert_eq!(step, "root");
    assert!(why.iter().any(|r| r.contains("KILN_TEST_VAR")), "{why:?}");
    // An element added: IMAGE_ELEMENT changes, visible to every phase.
    t.el("newcomer").hook("post-root", "50-newcomer", "true");
    let (steps, _) = explain(
        &dir,
        t.path(),
        &["-n", "test-rootfs", "cachey", "newcomer", "-t", "tar"],
        &env,
    );
    let (step, why) = first_miss(&steps).unwrap();
    assert_eq!(step, "root");
    assert!(
        why.iter().any(|r| r.contains("elements changed")),
        "{why:?}"
    );
    assert_no_leftovers(&dir, &h);
}

/// Type, mode, owner, size, content, link target, device, xattrs and link count of every entry.
fn tree_manifest(root: &Path) -> Vec<String> {
    let out = Command::new("find")
        .arg(".")
        .args(["-printf", "%p|%y|%m|%U|%G|%s|%n|%l|%D\\n"])
        .current_dir(root)
        .output()
        .unwrap();
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            // %D (device of the fs) is the same for all; drop it, keep the rest.
            l.rsplit_once('|')
                .map_or(l.to_string(), |(a, _)| a.to_string())
        })
        .collect();
    let sums = Command::new("bash")
        .arg("-c")
        .arg("find . -type f -print0 | sort -z | xargs -0 sha256sum")
        .current_dir(root)
        .output()
        .unwrap();
    lines.extend(
        String::from_utf8_lossy(&sums.stdout)
            .lines()
            .map(String::from),
    );
    let xattrs = Command::new("getfattr")
        .args(["-R", "-d", "-h", "-m", "-", "--absolute-names", "."])
        .current_dir(root)
        .output()
        .unwrap();
    lines.extend(
        String::from_utf8_lossy(&xattrs.stdout)
            .lines()
            .map(String::from),
    );
    let devs = Command::new("bash")
        .arg("-c")
        .arg("find . \\( -type b -o -type c \\) -exec stat -c '%n %t:%T' {} +")
        .current_dir(root)
        .output()
        .unwrap();
    lines.extend(
        String::from_utf8_lossy(&devs.stdout)
            .lines()
            .map(String::from),
    );
    lines.sort();
    lines
}

#[test]
fn restored_snapshot_equals_a_fresh_build() {
    if !capable("restored_snapshot_equals_a_fresh_build") {
        return;
    }
    let t = fixture_elements(&rootfs_tar());
    let shape = t
        .el("treeshape")
        .hook(
            "install",
            "50-treeshape",
            "mkdir -p /srv/shape/sticky && chmod 1777 /srv/shape/sticky\n\
             echo data > /srv/shape/owned && chown 1234:5678 /srv/shape/owned && chmod 4750 /srv/shape/owned\n\
             ln /srv/shape/owned /srv/shape/hardlink\n\
             ln -s owned /srv/shape/symlink\n\
             mknod /srv/shape/null c 1 3 && mknod /srv/shape/loopish b 7 200\n\
             mkfifo /srv/shape/fifo\n\
             python3 -c 'import os; os.setxattr(\"/srv/shape/owned\", \"trusted.kiln\", b\"v1\")'\n\
             rm -f /etc/issue.net",
        )
        .hook("post-install", "50-treeshape-post", "echo more >> /srv/shape/owned\nrm /srv/shape/fifo")
        .hook("post-root", "50-treeshape-root", "echo run-one");
    let args = ["-n", "test-rootfs", "treeshape", "-t", "tar", "-o", "shape"];
    let h = heavy();
    // Timed from here: the wait for the heavy lock is not this test's time.
    let _t = Timer::start("restored_snapshot_equals_a_fresh_build");
    let dir = work("shape");
    let fresh = build(
        &dir,
        Some(t.path()),
        &[
            "--no-cache",
            "-n",
            "test-rootfs",
            "treeshape",
            "-t",
            "tar",
            "-o",
            "fresh",
        ],
        &[],
    );
    assert_eq!(fresh.code, 0, "{}", fresh.stderr);
    // Change only post-root: the chain up to post-install is restored from the cache.
    let hook = shape.path.join("post-root.d/50-treeshape-root");
    fs::write(&hook, "#!/bin/bash\necho run-two\n").unwrap();
    let cached = build(&dir, Some(t.path()), &args, &[]);
    assert_eq!(cached.code, 0, "{}", cached.stderr);
    assert!(
        cached.log.contains("cache: post-install hit"),
        "{}",
        cached.log
    );
    assert!(
        cached.log.contains("cache: post-root miss"),
        "{}",
        cached.log
    );
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for (tar, d) in [("fresh.tar", a.path()), ("shape.tar", b.path())] {
        let st = Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
            .arg(dir.join(tar))
            .arg("-C")
            .arg(d)
            .status()
            .unwrap();
        assert!(st.success());
    }
    // Generated identities are made anew for a restored chain (every image gets its own), so
    // their content and size may differ; their presence, type, mode and owner may not.
    let ma = without_identity_contents(tree_manifest(a.path()));
    let mb = without_identity_contents(tree_manifest(b.path()));
    let only_a: Vec<_> = ma.iter().filter(|l| !mb.contains(l)).collect();
    let only_b: Vec<_> = mb.iter().filter(|l| !ma.contains(l)).collect();
    assert!(
        only_a.is_empty() && only_b.is_empty(),
        "fresh only: {only_a:#?}\ncached only: {only_b:#?}"
    );
    assert!(
        ma.iter().any(|l| l.contains("trusted.kiln")),
        "xattr not captured"
    );
    assert_no_leftovers(&dir, &h);
}

/// A [`tree_manifest`] with the content of generated identities left out (their checksum
/// lines, and the size in their `find` line); everything else of them is kept.
fn without_identity_contents(lines: Vec<String>) -> Vec<String> {
    let identity = |p: &str| {
        let p = p.trim_start_matches("./");
        p.starts_with("etc/ssh/ssh_host_")
            || matches!(
                p,
                "etc/iscsi/initiatorname.iscsi"
                    | "etc/machine-id"
                    | "var/lib/dbus/machine-id"
                    | "var/lib/systemd/random-seed"
                    | "var/lib/urandom/random-seed"
                    | "var/lib/systemd/credential.secret"
            )
    };
    lines
        .into_iter()
        .filter_map(|l| {
            // A checksum line: "<sha256>  <path>".
            if let Some((sum, path)) = l.split_once("  ") {
                if sum.len() == 64 && identity(path) {
                    return None;
                }
            }
            // A find line: path|type|mode|uid|gid|size|links|target.
            let fields: Vec<&str> = l.split('|').collect();
            if fields.len() == 8 && identity(fields[0]) {
                let mut kept = fields.clone();
                kept[5] = "-";
                return Some(kept.join("|"));
            }
            Some(l)
        })
        .collect()
}

/// Runs `kiln cache ARGS` on the cache at `dir`; returns stdout.
fn kiln_cache(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(crate::kiln_bin())
        .arg("cache")
        .args(args)
        .env("DIB_IMAGE_CACHE", dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kiln cache {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn kiln_cache_ls_and_gc_on_the_command_line() {
    if !capable("kiln_cache_ls_and_gc_on_the_command_line") {
        return;
    }
    let t = fixture_elements(&rootfs_tar());
    let h = heavy();
    // Timed from here: the wait for the heavy lock is not this test's time.
    let _t = Timer::start("kiln_cache_ls_and_gc_on_the_command_line");
    let dir = work("cache-cli");
    let private = dir.join("cache");
    let private_s = private.display().to_string();
    let args = ["-n", "test-rootfs", "-t", "tar", "-o", "g"];
    let o = build(
        &dir,
        Some(t.path()),
        &args,
        &[("DIB_IMAGE_CACHE", &private_s)],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let ls = kiln_cache(&private, &["ls"]);
    let kinds: Vec<(&str, &str)> = ls
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?, w.next()?))
        })
        .collect();
    assert!(kinds.contains(&("layer", "root")), "{ls}");
    assert!(kinds.contains(&("outputs", "g.tar")), "{ls}");
    // Trim to almost nothing: the big root layer and the outputs go; a stray file in outputs/
    // and a directory kiln did not make are skipped and reported, and the trim succeeds.
    fs::write(private.join("outputs/stray.txt"), "not kiln's").unwrap();
    fs::create_dir_all(private.join("phases/not-a-layer")).unwrap();
    let gc = Command::new(crate::kiln_bin())
        .args(["cache", "gc", "--max-size", "1MiB"])
        .env("DIB_IMAGE_CACHE", &private)
        .output()
        .unwrap();
    let gc_err = String::from_utf8_lossy(&gc.stderr);
    assert!(gc.status.success(), "{gc_err}");
    for stray in ["outputs/stray.txt", "phases/not-a-layer"] {
        let p = private.join(stray);
        assert!(
            gc_err.contains(&format!("{} is not an entry kiln made", p.display())),
            "{gc_err}"
        );
        assert!(p.exists(), "gc removed {stray}");
    }
    assert!(String::from_utf8_lossy(&gc.stdout).contains("2 skipped"));
    let after = kiln_cache(&private, &["ls"]);
    assert!(
        !after
            .lines()
            .any(|l| l.starts_with("outputs") || l.contains(" root ")),
        "gc left large entries:\n{after}"
    );
    let o = build(
        &dir,
        Some(t.path()),
        &args,
        &[("DIB_IMAGE_CACHE", &private_s)],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.log.contains("cache: root miss"), "{}", o.log);
    // A bad size is an input error.
    let out = Command::new(crate::kiln_bin())
        .args(["cache", "gc", "--max-size", "lots"])
        .env("DIB_IMAGE_CACHE", &private)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_no_leftovers(&dir, &h);
}

/// Every file of the layers of the build `kiln build ARGS` would make (its keys from
/// `--print-cache-keys`) that is a generated identity: an SSH host key, a random seed, a machine
/// id that is neither empty nor `uninitialized`, an iSCSI initiator name. Each entry is
/// `KEY-PREFIX: PATH`; a layer not in the cache is skipped (it was never stored).
pub fn identities_in_layers(
    dir: &Path,
    elements_path: Option<&Path>,
    args: &[&str],
    env: &[(&str, &str)],
) -> Vec<String> {
    let mut c = kiln_command("build", dir, elements_path, args, env);
    c.arg("--print-cache-keys");
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<String> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap().to_string())
        .collect();
    assert!(!keys.is_empty(), "no cache steps in {v:#}");
    let mut found = Vec::new();
    let mut listed = 0;
    for key in &keys {
        let layer = crate::harness::cache()
            .join("phases")
            .join(key)
            .join("layer.tar.zst");
        if !layer.is_file() {
            continue;
        }
        listed += 1;
        let list = Command::new("tar")
            .arg("-tf")
            .arg(&layer)
            .arg("--use-compress-program=zstd -d")
            .output()
            .unwrap();
        assert!(list.status.success(), "tar -t {}", layer.display());
        for entry in String::from_utf8_lossy(&list.stdout).lines() {
            let p = entry.trim_start_matches("./");
            let judged_by_content = matches!(
                p,
                "etc/machine-id" | "var/lib/dbus/machine-id" | "etc/iscsi/initiatorname.iscsi"
            );
            let always = p.starts_with("etc/ssh/ssh_host_")
                || matches!(
                    p,
                    "var/lib/systemd/random-seed"
                        | "var/lib/urandom/random-seed"
                        | "var/lib/systemd/credential.secret"
                );
            let identity = always
                || (judged_by_content && {
                    let content = Command::new("tar")
                        .arg("-xOf")
                        .arg(&layer)
                        .arg("--use-compress-program=zstd -d")
                        .arg(entry)
                        .output()
                        .unwrap()
                        .stdout;
                    let t = String::from_utf8_lossy(&content);
                    let t = t.trim();
                    if p.ends_with("initiatorname.iscsi") {
                        t.contains("InitiatorName=")
                    } else {
                        !t.is_empty() && t != "uninitialized"
                    }
                });
            if identity {
                found.push(format!("{}: {p}", &key[..12]));
            }
        }
    }
    assert!(listed > 0, "none of the build's layers is in the cache");
    found
}

/// `tar -xOf TAR ./PATH`: the content of one file of a tar output (None when it has none).
fn file_in_tar(tar: &Path, path: &str) -> Option<String> {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(tar)
        .arg(format!("./{path}"))
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn images_from_one_cached_chain_get_their_own_identities() {
    if !capable("images_from_one_cached_chain_get_their_own_identities") {
        return;
    }
    let t = fixture_elements(&rootfs_tar());
    // A stand-in for openssh-server and open-iscsi: the install phase makes host keys (with the
    // tree's ssh-keygen, or a fake one that writes random keys as `ssh-keygen -A` does), a
    // machine id, a random seed and an initiator name.
    let ids = t
        .el("identities")
        .hook(
            "install",
            "50-make-identities",
            "mkdir -p /etc/ssh /etc/iscsi /var/lib/systemd /usr/local/sbin\n\
             if ! command -v ssh-keygen >/dev/null; then\n\
             printf '%s\\n' '#!/bin/sh' '[ \"$1\" = -A ] || exit 64' \
             'head -c 32 /dev/urandom | od -An -tx1 | tr -d \" \\\\n\" > /etc/ssh/ssh_host_ed25519_key' \
             'echo public > /etc/ssh/ssh_host_ed25519_key.pub' > /usr/local/sbin/ssh-keygen\n\
             chmod 755 /usr/local/sbin/ssh-keygen\n\
             fi\n\
             ssh-keygen -A\n\
             test -s /etc/ssh/ssh_host_ed25519_key\n\
             head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /etc/machine-id\n\
             head -c 512 /dev/urandom > /var/lib/systemd/random-seed\n\
             echo \"InitiatorName=iqn.1993-08.org.debian:01:$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \\n')\" > /etc/iscsi/initiatorname.iscsi",
        )
        .hook("post-root", "50-variant", "echo variant-zero");
    let h = heavy();
    let _t = Timer::start("images_from_one_cached_chain_get_their_own_identities");
    let dir = work("identities");
    let hook = ids.path.join("post-root.d/50-variant");
    // A run-unique post-root, so the first build stores the chain and the others restore it
    // (each with its own output key: a changed post-root).
    let run = format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let mut keys = Vec::new();
    for n in 0..3 {
        fs::write(&hook, format!("#!/bin/bash\necho variant-{run}-{n}\n")).unwrap();
        let name = format!("ids{n}");
        let args = ["-n", "test-rootfs", "identities", "-t", "tar", "-o", &name];
        let o = build(&dir, Some(t.path()), &args, &[]);
        assert_eq!(o.code, 0, "{}", o.stderr);
        if n > 0 {
            assert!(o.log.contains("cache: post-install hit"), "{}", o.log);
            assert!(
                o.log
                    .contains("cache: made new ssh-host-keys, iscsi-initiator-name, machine-id"),
                "{}",
                o.log
            );
            // None of the identities came from the cache.
            assert_eq!(
                identities_in_layers(&dir, Some(t.path()), &args, &[]),
                Vec::<String>::new()
            );
        }
        let tar = dir.join(format!("{name}.tar"));
        let key = file_in_tar(&tar, "etc/ssh/ssh_host_ed25519_key")
            .expect("the image has no SSH host key");
        assert!(!key.trim().is_empty());
        if n > 0 {
            // What a distribution ships in an image: an empty machine id, no seed, and a
            // name made for this image (or made at first start).
            assert_eq!(file_in_tar(&tar, "etc/machine-id").as_deref(), Some(""));
            assert_eq!(file_in_tar(&tar, "var/lib/systemd/random-seed"), None);
            let iscsi = file_in_tar(&tar, "etc/iscsi/initiatorname.iscsi").unwrap();
            assert!(
                iscsi.starts_with("InitiatorName=") || iscsi == "GenerateName=yes\n",
                "{iscsi:?}"
            );
        }
        keys.push(key);
    }
    assert_ne!(
        keys[1], keys[2],
        "two images from one cached chain share a host key"
    );
    assert_ne!(
        keys[0], keys[1],
        "a restored image kept the first build's host key"
    );
    assert_no_leftovers(&dir, &h);
}

#[test]
fn a_damaged_layer_is_rebuilt_not_restored() {
    if !capable("a_damaged_layer_is_rebuilt_not_restored") {
        return;
    }
    let t = fixture_elements(&rootfs_tar());
    let marker = |last: &str| {
        t.el("damage")
            .hook("install", "50-damage", "echo installed > /etc/damage")
            .hook(
                "finalise",
                "50-damage",
                &format!("echo {last} > /etc/damage-final"),
            );
    };
    let h = heavy();
    // Timed from here: the wait for the heavy lock is not this test's time.
    let _t = Timer::start("a_damaged_layer_is_rebuilt_not_restored");
    let dir = work("cache-damaged");
    let private = dir.join("cache");
    let private_s = private.display().to_string();
    let env = [("DIB_IMAGE_CACHE", private_s.as_str())];
    let args = |name: &'static str| ["-n", "test-rootfs", "damage", "-t", "tar", "-o", name];
    marker("1");
    let first = build(&dir, Some(t.path()), &args("one"), &env);
    assert_eq!(first.code, 0, "{}", first.stderr);
    // Truncate the root layer (the chain's first): as a full disk or a killed copy would.
    let root_layer = fs::read_dir(private.join("phases"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            fs::read_to_string(p.join("meta.json")).is_ok_and(|m| m.contains("\"phase\": \"root\""))
        })
        .expect("a root layer");
    let tar = root_layer.join("layer.tar.zst");
    let len = fs::metadata(&tar).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&tar)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    // --explain-cache says so, and the build (a finalise change, so the outputs miss) warns
    // and runs root again.
    marker("2");
    let (steps, _) = explain(&dir, t.path(), &args("two"), &env);
    assert_eq!(steps[0].0, "root", "{steps:?}");
    assert_eq!(steps[0].1, "miss", "{steps:?}");
    assert!(
        steps[0]
            .2
            .iter()
            .any(|r| r.contains("the stored layer is damaged")),
        "{steps:?}"
    );
    let second = build(&dir, Some(t.path()), &args("two"), &env);
    assert_eq!(second.code, 0, "{}", second.stderr);
    for said in [&second.stderr, &second.log] {
        assert!(said.contains("warning: cache: layer root"), "{said}");
        assert!(
            said.contains("layer.tar.zst: does not match the digest"),
            "{said}"
        );
    }
    assert!(second.log.contains("cache: root miss"), "{}", second.log);
    // The image is whole: the same tree as the first build's, and the new finalise mark.
    let names = |name: &str| -> Vec<String> {
        crate::harness::tar_listing(&dir.join(name), true)
            .iter()
            .filter_map(|l| l.split_whitespace().nth(5).map(String::from))
            .collect()
    };
    assert_eq!(names("one.tar"), names("two.tar"));
    let final_mark = crate::harness::sh(&format!(
        "tar -xOf {} ./etc/damage-final",
        dir.join("two.tar").display()
    ));
    assert_eq!(final_mark, "2\n");
    // The rebuilt layer was stored again and is restored from now on.
    marker("3");
    let third = build(&dir, Some(t.path()), &args("three"), &env);
    assert_eq!(third.code, 0, "{}", third.stderr);
    assert!(third.log.contains("cache: root hit"), "{}", third.log);
    assert!(!third.log.contains("is damaged"), "{}", third.log);
    damaged_outputs_are_rebuilt(&dir, t.path(), &private, &args("three"), &env);
    assert_no_leftovers(&dir, &h);
}

/// A damaged output-cache entry is never handed back: the request `args` (already built, its
/// outputs cached in `private`), again with one byte of its cached tar changed, warns, discards
/// the entry and makes the tar from the layers.
fn damaged_outputs_are_rebuilt(
    dir: &Path,
    elements: &Path,
    private: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) {
    let cached_tar = fs::read_dir(private.join("outputs"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("files/three.tar"))
        .find(|p| p.is_file())
        .expect("the third build's outputs in the cache");
    let mut bytes = fs::read(&cached_tar).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    fs::write(&cached_tar, &bytes).unwrap();
    let fourth = build(dir, Some(elements), args, env);
    assert_eq!(fourth.code, 0, "{}", fourth.stderr);
    assert!(
        fourth.log.contains("warning: cache: the cached outputs")
            && fourth
                .log
                .contains("files/three.tar: does not match the digest"),
        "{}",
        fourth.log
    );
    assert!(!fourth.log.contains("output hit"), "{}", fourth.log);
    assert!(fourth.log.contains("cache: root hit"), "{}", fourth.log);
    // The entry was stored anew, whole.
    assert_eq!(
        fs::read(&cached_tar).unwrap(),
        fs::read(dir.join("three.tar")).unwrap()
    );
    let final_mark = crate::harness::sh(&format!(
        "tar -xOf {} ./etc/damage-final",
        dir.join("three.tar").display()
    ));
    assert_eq!(final_mark, "3\n");
}

#[test]
fn a_tar_beside_its_tgz_is_cached_as_the_tgz_and_checked_when_made_again() {
    if !capable("a_tar_beside_its_tgz_is_cached_as_the_tgz_and_checked_when_made_again") {
        return;
    }
    let t = fixture_elements(&rootfs_tar());
    t.el("pair")
        .hook("finalise", "50-pair", "echo pair > /etc/pair");
    let h = heavy();
    // Timed from here: the wait for the heavy lock is not this test's time.
    let _t = Timer::start("a_tar_beside_its_tgz_is_cached_as_the_tgz_and_checked_when_made_again");
    let dir = work("cache-tgz");
    let private = dir.join("cache");
    let private_s = private.display().to_string();
    let env = [
        ("DIB_IMAGE_CACHE", private_s.as_str()),
        ("OVERWRITE_OLD_IMAGE", "1"),
    ];
    let args = ["-n", "test-rootfs", "pair", "-t", "tar,tgz", "-o", "p"];
    let digest = |cmd: &str| crate::harness::sh(&format!("{cmd} | sha256sum"));
    let (tar, tgz) = (dir.join("p.tar"), dir.join("p.tgz"));
    let first = build(&dir, Some(t.path()), &args, &env);
    assert_eq!(first.code, 0, "{}", first.stderr);
    // The tgz is the tar written beside it, compressed.
    let tar_digest = digest(&format!("cat {}", tar.display()));
    assert_eq!(digest(&format!("gzip -dc {}", tgz.display())), tar_digest);
    // The entry keeps the tgz, not the tar.
    let entry = fs::read_dir(private.join("outputs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("complete").is_file())
        .expect("the outputs in the cache");
    assert!(entry.join("files/p.tgz").is_file());
    assert!(!entry.join("files/p.tar").exists());
    // The same request: an output hit, the tar made again from the tgz, the same bytes.
    let second = build(&dir, Some(t.path()), &args, &env);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(second.log.contains("output hit"), "{}", second.log);
    assert_eq!(digest(&format!("cat {}", tar.display())), tar_digest);
    // A record that does not match what the tgz holds is damage: warned about, discarded,
    // and the outputs made from the layers.
    let record = entry.join("derived.json");
    let text = fs::read_to_string(&record).unwrap();
    let want = tar_digest.split_whitespace().next().unwrap().to_string();
    assert!(text.contains(&want), "{text}");
    fs::write(&record, text.replace(&want, &"0".repeat(64))).unwrap();
    let third = build(&dir, Some(t.path()), &args, &env);
    assert_eq!(third.code, 0, "{}", third.stderr);
    assert!(
        third.log.contains("warning: cache: the cached outputs")
            && third.log.contains("does not decompress to the p.tar"),
        "{}",
        third.log
    );
    assert!(!third.log.contains("output hit"), "{}", third.log);
    assert!(third.log.contains("cache: root hit"), "{}", third.log);
    assert_eq!(
        crate::harness::sh(&format!("tar -xOf {} ./etc/pair", tar.display())),
        "pair\n"
    );
    assert!(!dir.join(".p.tar.kiln-new").exists());
    assert_no_leftovers(&dir, &h);
}

/// The "qcow2: N of M clusters taken from an earlier image" line of a build log: (N, M).
fn reused_clusters(log: &str) -> Option<(u64, u64)> {
    let line = log
        .lines()
        .find(|l| l.contains("clusters taken from an earlier image"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "qcow2:")?;
    Some((words[at + 1].parse().ok()?, words[at + 3].parse().ok()?))
}

#[test]
fn a_reproducible_rebuild_takes_the_last_qcow2s_clusters_and_writes_the_same_bytes() {
    if !capable("a_reproducible_rebuild_takes_the_last_qcow2s_clusters_and_writes_the_same_bytes") {
        return;
    }
    let t = fixture_elements(&rootfs_tar());
    let marker = |n: &str| {
        t.el("mark")
            .hook("finalise", "50-mark", &format!("echo {n} > /etc/mark"));
    };
    let h = heavy();
    // Timed from here: the wait for the heavy lock is not this test's time.
    let _t = Timer::start(
        "a_reproducible_rebuild_takes_the_last_qcow2s_clusters_and_writes_the_same_bytes",
    );
    let dir = work("cache-qcow2-reuse");
    let private = dir.join("cache");
    let private_s = private.display().to_string();
    let env = [
        ("DIB_IMAGE_CACHE", private_s.as_str()),
        ("SOURCE_DATE_EPOCH", "1700000000"),
        ("DIB_BLOCK_DEVICE_CONFIG", crate::failures::MBR),
        ("OVERWRITE_OLD_IMAGE", "1"),
    ];
    let args = ["-n", "test-rootfs", "mark", "-t", "qcow2", "-o", "r"];
    marker("1");
    let first = build(&dir, Some(t.path()), &args, &env);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(reused_clusters(&first.log), None, "{}", first.log);
    // A finalise edit: the filesystem, made again offline, differs in a few clusters only.
    marker("2");
    let second = build(&dir, Some(t.path()), &args, &env);
    assert_eq!(second.code, 0, "{}", second.stderr);
    let (reused, total) = reused_clusters(&second.log).unwrap_or_else(|| panic!("{}", second.log));
    assert!(reused * 2 > total && reused < total, "{reused} of {total}");
    let kept = dir.join("kept.qcow2");
    fs::rename(dir.join("r.qcow2"), &kept).unwrap();
    // The same request built from nothing writes the very same file.
    let mut fresh_args = args.to_vec();
    fresh_args.insert(0, "--no-cache");
    let third = build(&dir, Some(t.path()), &fresh_args, &env);
    assert_eq!(third.code, 0, "{}", third.stderr);
    assert_eq!(reused_clusters(&third.log), None, "{}", third.log);
    assert!(
        fs::read(&kept).unwrap() == fs::read(dir.join("r.qcow2")).unwrap(),
        "the qcow2 that reused clusters is not the one a build from nothing writes"
    );
    assert_no_leftovers(&dir, &h);
}

#[test]
fn kiln_cache_gc_waits_for_a_build_using_the_cache() {
    if !capable("kiln_cache_gc_waits_for_a_build_using_the_cache") {
        return;
    }
    let t = fixture_elements(&rootfs_tar());
    let h = heavy();
    // Timed from here: the wait for the heavy lock is not this test's time.
    let _t = Timer::start("kiln_cache_gc_waits_for_a_build_using_the_cache");
    let dir = work("cache-lock");
    let private = dir.join("cache");
    let private_s = private.display().to_string();
    let mut c = crate::harness::build_command(
        &dir,
        Some(t.path()),
        &["-n", "test-rootfs", "fail-at", "-t", "tar", "-o", "l"],
        &[
            ("DIB_IMAGE_CACHE", &private_s),
            ("KILN_TEST_SLOW", "install"),
        ],
    );
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut build = c.spawn().unwrap();
    let log = dir.join("l.d/build.log");
    let t0 = Instant::now();
    while !fs::read_to_string(&log).is_ok_and(|l| l.contains("kiln-test-sleeping")) {
        assert!(t0.elapsed().as_secs() < 180, "the slow hook never started");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The build has stored its root layer and holds the cache: a trim to nothing must wait.
    let gc_err = dir.join("gc.stderr");
    let mut gc = Command::new(crate::kiln_bin())
        .args(["cache", "gc", "--max-size", "0"])
        .env("DIB_IMAGE_CACHE", &private)
        .stdout(std::process::Stdio::null())
        .stderr(fs::File::create(&gc_err).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(
        gc.try_wait().unwrap().is_none(),
        "gc did not wait for the build"
    );
    assert!(fs::read_to_string(&gc_err)
        .unwrap()
        .contains("waiting for the builds using the cache"));
    assert!(
        kiln_cache(&private, &["ls"]).contains("layer    root"),
        "a layer went while the build held the cache"
    );
    crate::harness::signal(build.id(), nix::sys::signal::Signal::SIGINT);
    assert_eq!(build.wait().unwrap().code(), Some(130));
    // Once the build is gone the trim runs.
    let t1 = Instant::now();
    let status = loop {
        if let Some(st) = gc.try_wait().unwrap() {
            break st;
        }
        assert!(
            t1.elapsed().as_secs() < 60,
            "gc still waits after the build ended"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(status.success(), "{}", fs::read_to_string(&gc_err).unwrap());
    assert!(!kiln_cache(&private, &["ls"]).contains("layer"));
    assert_no_leftovers(&dir, &h);
}
