//! Building from a lock, for real: `kiln lock debian-minimal vm` of Debian's default release (no
//! `DIB_RELEASE`), a locked build that fills the `.deb` store, then `kiln build --lock
//! --offline` inside `unshare --net` (no network at all, not even loopback), written as tar and
//! raw. The offline image's final apt sources are the ones the elements write (no
//! trace of the lock's repository), its dpkg manifest is the lock, and its tar's timestamps are
//! the lock's time (the default `SOURCE_DATE_EPOCH` of a locked build); its SBOM gives each
//! `.deb`'s SHA256 as locked.
//!
//! The two builds' directories are kept (`e2e/locked/warm` and `e2e/locked/offline` under the
//! test's target tmpdir) with the lock, so bit-identical comparisons of locked outputs can be
//! added on top of them.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use crate::harness::{
    assert_no_leftovers, capable, heavy, kiln_command, run_build, sh, tail, walk, which, work,
    Heavy, Timer, BUILD_BUDGET,
};

/// `program args...` running `command` (a [`kiln_command`]) with its environment and working
/// directory: `unshare --net` (no network at all) or `sh -c 'umask 077; exec "$0" "$@"'`.
fn wrapped(prefix: &[&str], command: &Command) -> Command {
    let mut c = Command::new(prefix[0]);
    c.args(&prefix[1..])
        .arg(command.get_program())
        .args(command.get_args());
    if let Some(d) = command.get_current_dir() {
        c.current_dir(d);
    }
    for (k, v) in command.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

fn without_network(command: &Command) -> Command {
    wrapped(&["unshare", "--net"], command)
}

fn with_umask_077(command: &Command) -> Command {
    wrapped(&["sh", "-c", "umask 077; exec \"$0\" \"$@\""], command)
}

/// SHA-256 of a file, as `sha256sum` prints it.
fn sha256(file: &Path) -> String {
    sh(&format!("sha256sum < '{}'", file.display()))
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// `kiln verify ARGS`: "exit N" and what it printed on stdout and stderr.
fn verify(args: &[&str]) -> String {
    let out = Command::new(crate::kiln_bin())
        .arg("verify")
        .args(args)
        .output()
        .unwrap();
    format!(
        "exit {}\n{}{}",
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `(Package, FIELD)` of every stanza of a lock.
fn locked_field(lock: &Path, field: &str) -> BTreeMap<String, String> {
    fs::read_to_string(lock)
        .unwrap()
        .split("\n\n")
        .filter_map(|s| {
            let get = |k: &str| {
                s.lines()
                    .find_map(|l| l.strip_prefix(&format!("{k}: ")))
                    .map(String::from)
            };
            Some((get("Package")?, get(field)?))
        })
        .collect()
}

/// `(Package, Version)` of the dpkg manifest in `NAME.d`.
fn manifest_versions(record: &Path) -> BTreeMap<String, String> {
    let file = walk(record)
        .into_iter()
        .find(|e| e.file_name().unwrap().to_string_lossy().contains("dpkg"))
        .expect("a dpkg manifest");
    fs::read_to_string(&file)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(p, v)| (p.to_string(), v.to_string()))
        .collect()
}

/// The offline image's final apt sources are the elements' own (the lock's URIs, no trace of
/// the local repository or of the build-time configuration) and its tar's timestamps are the
/// lock's time (`SOURCE_DATE_EPOCH` defaults to it).
fn check_sources_and_times(tar: &Path, meta: &str, locked_at: &str) {
    let listing = sh(&format!("tar -tf '{}'", tar.display()));
    assert!(
        !listing.contains("kiln-lock"),
        "the image keeps something of the lock's repository:\n{}",
        listing
            .lines()
            .filter(|l| l.contains("kiln-lock"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let sources = sh(&format!(
        "tar -xOf '{}' --wildcards './etc/apt/sources.list.d/*'",
        tar.display()
    ));
    for uri in meta.lines().filter_map(|l| l.strip_prefix("URI: ")) {
        assert!(
            sources.contains(uri),
            "{uri} missing from the image's sources:\n{sources}"
        );
    }
    assert!(!sources.contains("file:"), "{sources}");
    // The lock recorded the codename `stable` meant when it was made, and the offline build
    // (which asks no mirror) wrote that codename into the image's sources.
    for suite in meta.lines().filter_map(|l| l.strip_prefix("Suite: ")) {
        assert!(
            !suite.starts_with("stable"),
            "the lock recorded the alias {suite}:\n{meta}"
        );
        assert!(
            sources.contains(&format!(" {suite} ")),
            "{suite} missing from the image's sources:\n{sources}"
        );
    }
    let epoch = sh(&format!("date -u -d '{locked_at}' +%s"));
    let first = sh(&format!(
        "TZ=UTC tar --full-time -tvf '{}' ./etc/hostname",
        tar.display()
    ));
    let mtime = sh(&format!(
        "date -u -d '{}' +%s",
        first
            .split_whitespace()
            .skip(3)
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    ));
    assert_eq!(mtime.trim(), epoch.trim(), "{first}");
}

/// `kiln lock debian-minimal vm` of the default release into `lock`: the locked versions, the
/// side file and its `Locked:` time.
fn make_lock(root: &Path, lock: &str) -> (BTreeMap<String, String>, String, String) {
    let out = kiln_command(
        "lock",
        root,
        None,
        &["debian-minimal", "vm", "-o", lock],
        &[("DIB_RELEASE", "")],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "kiln lock failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta = fs::read_to_string(format!("{lock}.meta")).unwrap();
    let locked_at = meta
        .lines()
        .find_map(|l| l.strip_prefix("Locked: "))
        .unwrap()
        .to_string();
    (locked_field(Path::new(lock), "Version"), meta, locked_at)
}

/// The SBOM of a locked build gives every package's `.deb` SHA256 as the lock has it.
fn check_sbom(sbom: &Path, lock: &Path) {
    let sha = locked_field(lock, "SHA256");
    let doc: serde_json::Value = serde_json::from_str(&fs::read_to_string(sbom).unwrap()).unwrap();
    let mut checked = 0;
    for p in doc["packages"].as_array().unwrap() {
        let Some(want) = p["name"].as_str().and_then(|n| sha.get(n)) else {
            continue;
        };
        let got = p["checksums"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["algorithm"] == "SHA256"))
            .and_then(|c| c["checksumValue"].as_str());
        assert_eq!(got, Some(want.as_str()), "SBOM checksum of {}", p["name"]);
        checked += 1;
    }
    assert_eq!(
        checked,
        sha.len(),
        "the SBOM lists other packages than the lock"
    );
}

#[test]
fn locked_offline_build_without_network_matches_the_lock() {
    if !capable("locked_offline_build_without_network_matches_the_lock") {
        return;
    }
    if which("unshare").is_none() {
        kiln_testkit::skip(
            "locked_offline_build_without_network_matches_the_lock",
            "needs unshare (util-linux)",
        );
        return;
    }
    let h = heavy();
    let _t = Timer::start("locked_offline_build_without_network_matches_the_lock");
    let root = work("locked").keep();
    let lock = root.join("kiln.lock");
    let lock_arg = lock.display().to_string();
    let (locked, meta, locked_at) = make_lock(&root, &lock_arg);

    // 1. `kiln lock --fetch` fills the `.deb` store; nothing else needs the network.
    let out = kiln_command("lock", &root, None, &["--fetch", "-o", &lock_arg], &[])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kiln lock --fetch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 2. Offline, without any network (not even loopback): the image is the lock.
    let args = [
        "--lock",
        &lock_arg,
        "--offline",
        "-t",
        "tar,raw,qcow2,oci",
        "-o",
        "img",
        "debian-minimal",
        "vm",
    ];
    let dir_a = root.join("a");
    fs::create_dir_all(&dir_a).unwrap();
    let o = run_build(
        without_network(&kiln_command(
            "build",
            &dir_a,
            None,
            &args,
            &[("DIB_RELEASE", "")],
        )),
        &dir_a,
        &args,
        BUILD_BUDGET,
    );
    assert_eq!(
        o.code,
        0,
        "offline locked build failed: {}\n{}",
        o.stderr,
        tail(&o.log, 40)
    );
    assert_no_leftovers(&dir_a, &h);
    assert!(
        o.log
            .contains(&format!("lock: {} packages of ", locked.len()))
            && o.log.contains("(0 fetched into "),
        "{}",
        tail(&o.log, 40)
    );
    let tar = dir_a.join("img.tar");
    assert!(tar.is_file() && dir_a.join("img.raw").is_file());
    let installed = manifest_versions(&dir_a.join("img.d"));
    assert_eq!(
        installed, locked,
        "the offline image's packages are not the lock's"
    );
    check_sources_and_times(&tar, &meta, &locked_at);
    check_sbom(&dir_a.join("img.d/sbom.spdx.json"), &lock);

    identical_elsewhere(&root, &args, &dir_a, &h);
    perturbed_is_named(&root, &lock_arg, &dir_a, &h);
}

/// Step 3 of the locked test: the same locked request again, elsewhere (another directory,
/// umask 077, another time zone, a cache of its own holding only a copy of the store), so
/// nothing of the first build is reused: every output is the same, byte for byte.
fn identical_elsewhere(root: &Path, args: &[&str], dir_a: &Path, h: &Heavy) {
    let dir_b = root.join("b");
    let cache_b = root.join("cache-b");
    fs::create_dir_all(&dir_b).unwrap();
    fs::create_dir_all(&cache_b).unwrap();
    sh(&format!(
        "chmod 700 '{}' && cp -al '{}' '{}'",
        cache_b.display(),
        crate::harness::cache().join("debs").display(),
        cache_b.join("debs").display()
    ));
    let cache_b_s = cache_b.display().to_string();
    let env_b = [
        ("DIB_RELEASE", ""),
        ("DIB_IMAGE_CACHE", cache_b_s.as_str()),
        ("TZ", "Pacific/Chatham"),
    ];
    let out = run_build(
        with_umask_077(&without_network(&kiln_command(
            "build", &dir_b, None, args, &env_b,
        ))),
        &dir_b,
        args,
        BUILD_BUDGET,
    );
    assert_eq!(
        out.code,
        0,
        "second offline locked build failed: {}\n{}",
        out.stderr,
        tail(&out.log, 40)
    );
    assert_no_leftovers(&dir_b, h);
    assert!(
        !out.log.contains("cache: root hit"),
        "{}",
        tail(&out.log, 40)
    );
    for ext in ["tar", "raw", "qcow2"] {
        let (mine, theirs) = (
            dir_a.join(format!("img.{ext}")),
            dir_b.join(format!("img.{ext}")),
        );
        if sha256(&mine) != sha256(&theirs) {
            let v = verify(&[
                &mine.display().to_string(),
                "--against",
                &theirs.display().to_string(),
            ]);
            panic!("img.{ext} differs between two locked builds:\n{v}");
        }
    }
    let (a, b) = (
        oci_digests(&dir_a.join("img.oci")),
        oci_digests(&dir_b.join("img.oci")),
    );
    assert_eq!(a, b, "the OCI layouts of two locked builds differ");
}

/// The digests of an OCI layout: `index.json`'s own SHA-256, then the manifest's, the config's
/// and each layer's as the manifest names them, each checked against its blob's content.
fn oci_digests(layout: &Path) -> Vec<(String, String)> {
    let blob = |digest: &str| {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        let path = layout.join("blobs/sha256").join(hex);
        assert_eq!(sha256(&path), hex, "{} is not its digest", path.display());
        fs::read(&path).unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest: serde_json::Value = serde_json::from_slice(&blob(&manifest_digest)).unwrap();
    let config = manifest["config"]["digest"].as_str().unwrap().to_string();
    blob(&config);
    let mut digests = vec![
        ("index.json".to_string(), sha256(&layout.join("index.json"))),
        ("manifest".to_string(), manifest_digest),
        ("config".to_string(), config),
    ];
    for layer in manifest["layers"].as_array().unwrap() {
        let d = layer["digest"].as_str().unwrap().to_string();
        blob(&d);
        digests.push(("layer".to_string(), d));
    }
    assert!(digests.len() >= 4, "{digests:?}");
    digests
}

/// Step 4 of the locked test: a deliberately perturbed build (one more element, whose finalise
/// hook adds a file) and `kiln verify` names the file that differs, by path inside the
/// filesystem.
fn perturbed_is_named(root: &Path, lock_arg: &str, dir_a: &Path, h: &Heavy) {
    let elements = root.join("elements");
    let hook = elements.join("kiln-perturb/finalise.d/99-kiln-perturb");
    fs::create_dir_all(hook.parent().unwrap()).unwrap();
    fs::write(&hook, "#!/bin/bash\necho perturbed > /.kiln-perturbed\n").unwrap();
    sh(&format!("chmod 755 '{}'", hook.display()));
    let dir_c = root.join("c");
    fs::create_dir_all(&dir_c).unwrap();
    let args_c = [
        "--lock",
        lock_arg,
        "--offline",
        "-t",
        "raw",
        "-o",
        "img",
        "debian-minimal",
        "vm",
        "kiln-perturb",
    ];
    let out = run_build(
        without_network(&kiln_command(
            "build",
            &dir_c,
            Some(&elements),
            &args_c,
            &[("DIB_RELEASE", "")],
        )),
        &dir_c,
        &args_c,
        BUILD_BUDGET,
    );
    assert_eq!(
        out.code,
        0,
        "perturbed build failed: {}\n{}",
        out.stderr,
        tail(&out.log, 40)
    );
    assert_no_leftovers(&dir_c, h);
    let v = verify(&[
        &dir_c.join("img.raw").display().to_string(),
        "--against",
        &dir_a.join("img.raw").display().to_string(),
    ]);
    assert!(
        v.starts_with("exit 1\n") && v.contains("/.kiln-perturbed"),
        "kiln verify did not name the perturbed file:\n{v}"
    );
}
