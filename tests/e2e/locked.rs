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
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{
    assert_no_leftovers, capable, heavy, kiln_command, run_build, sh, tail, walk, which, work,
    Timer, BUILD_BUDGET,
};

/// `(Package, Version)` of every stanza of a lock.
fn locked_versions(lock: &Path) -> BTreeMap<String, String> {
    fs::read_to_string(lock)
        .unwrap()
        .split("\n\n")
        .filter_map(|s| {
            let get = |k: &str| {
                s.lines()
                    .find_map(|l| l.strip_prefix(&format!("{k}: ")))
                    .map(String::from)
            };
            Some((get("Package")?, get("Version")?))
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

/// `command` (a [`kiln_command`]) run as `unshare --net kiln ...`, with the same environment and
/// working directory.
fn without_network(command: &Command) -> Command {
    let mut c = Command::new("unshare");
    c.arg("--net")
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
    (locked_versions(Path::new(lock)), meta, locked_at)
}

/// The SBOM of a locked build gives every package's `.deb` SHA256 as the lock has it.
fn check_sbom(sbom: &Path, lock: &Path) {
    let sha: BTreeMap<String, String> = fs::read_to_string(lock)
        .unwrap()
        .split("\n\n")
        .filter_map(|s| {
            let get = |k: &str| {
                s.lines()
                    .find_map(|l| l.strip_prefix(&format!("{k}: ")))
                    .map(String::from)
            };
            Some((get("Package")?, get("SHA256")?))
        })
        .collect();
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
    let default_release = [("DIB_RELEASE", "")];
    let (locked, meta, locked_at) = make_lock(&root, &lock_arg);

    // 1. A locked build fills the store (and the bootstrap and phase caches for this lock).
    let warm = root.join("warm");
    fs::create_dir_all(&warm).unwrap();
    let args = [
        "--lock",
        &lock_arg,
        "-t",
        "tar,raw",
        "-o",
        "img",
        "debian-minimal",
        "vm",
    ];
    let o = run_build(
        kiln_command("build", &warm, None, &args, &default_release),
        &warm,
        &args,
        BUILD_BUDGET,
    );
    assert_eq!(
        o.code,
        0,
        "locked build failed: {}\n{}",
        o.stderr,
        tail(&o.log, 40)
    );
    assert_no_leftovers(&warm, &h);
    assert!(o.log.contains("lock: "), "{}", tail(&o.log, 40));

    // 2. Offline, without any network: every phase runs again (DIB_OFFLINE is in the phase
    //    keys), installing from the store; the bootstrap tarball of step 1 is reused (its key is
    //    the lock's digest, the same offline or not).
    let offline = root.join("offline");
    fs::create_dir_all(&offline).unwrap();
    let args = [
        "--lock",
        &lock_arg,
        "--offline",
        "-t",
        "tar,raw",
        "-o",
        "img",
        "debian-minimal",
        "vm",
    ];
    let o = run_build(
        without_network(&kiln_command(
            "build",
            &offline,
            None,
            &args,
            &default_release,
        )),
        &offline,
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
    assert_no_leftovers(&offline, &h);
    assert!(
        o.log
            .contains(&format!("lock: {} packages of ", locked.len()))
            && o.log.contains("(0 fetched into "),
        "{}",
        tail(&o.log, 40)
    );
    let tar = offline.join("img.tar");
    assert!(tar.is_file() && offline.join("img.raw").is_file());

    // The image's dpkg manifest is the lock, name for name and version for version.
    let installed = manifest_versions(&offline.join("img.d"));
    assert_eq!(
        installed, locked,
        "the offline image's packages are not the lock's"
    );

    check_sources_and_times(&tar, &meta, &locked_at);
    check_sbom(&offline.join("img.d/sbom.spdx.json"), &lock);
    let kept: Vec<PathBuf> = vec![lock, warm.join("img.tar"), tar];
    eprintln!("locked outputs kept: {kept:?}");
}
