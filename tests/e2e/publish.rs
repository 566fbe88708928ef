//! The suite's Debian root filesystem (its `lxc` and `incus` outputs, no new build) published as
//! a user would: `kiln publish debian-rootfs --to srv --sign-key KEY`, every signature checked
//! with `gpg --verify`, every build directory with `sha256sum -c`, the simplestreams tree with
//! `incus-simplestreams verify`, and `lxc-create -t download` over HTTPS from `kiln publish
//! --serve` making a container whose root filesystem is this build's. Publishing again changes
//! nothing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_testkit::clients::{gpg_home, run_ok, test_certificate, Download, GpgAgent, Served};

use crate::harness::{capable, sh, which, Timer};
use crate::rootfs::{assert_container_is, debian_rootfs};

/// Every file under `dir` with its bytes, sorted by path.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn go(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                go(&p, out);
            } else {
                let bytes = fs::read(&p).unwrap();
                out.push((p, bytes));
            }
        }
    }
    let mut out = Vec::new();
    go(dir, &mut out);
    out.sort();
    out
}

/// The build's directory in the LXC layout under `srv`, its checksums, its LXC pair the same
/// bytes as the build's in `dir`, and the index line naming it.
fn assert_layout(srv: &Path, dir: &Path, release: &str, arch: &str, serial: &str) {
    let build = srv.join(format!("images/debian/{release}/{arch}/default/{serial}"));
    for f in [
        "rootfs.tar.xz",
        "meta.tar.xz",
        "incus.tar.xz",
        "rootfs.squashfs",
        "SHA256SUMS",
    ] {
        assert!(
            build.join(f).is_file(),
            "{f} missing in {}",
            build.display()
        );
    }
    sh(&format!(
        "cd '{}' && sha256sum -c SHA256SUMS",
        build.display()
    ));
    assert_eq!(
        fs::read(build.join("rootfs.tar.xz")).unwrap(),
        fs::read(dir.join("debian-rootfs.lxc/rootfs.tar.xz")).unwrap()
    );
    let index = fs::read_to_string(srv.join("meta/1.0/index-system")).unwrap();
    assert_eq!(
        index,
        format!("debian;{release};{arch};default;{serial};/images/debian/{release}/{arch}/default/{serial}/\n")
    );
}

/// Every index and checksum file under `srv` is signed, and every signature verifies with the
/// keyring at `home`.
fn assert_every_signature_verifies(srv: &Path, home: &Path) {
    // Every index and checksum file is signed, and every signature verifies.
    let sigs: Vec<String> = sh(&format!(
        "cd '{}' && find . -name '*.asc' | sort",
        srv.display()
    ))
    .lines()
    .map(str::to_string)
    .collect();
    for signed in [
        "./meta/1.0/index-system.asc",
        "./meta/1.0/index-user.asc",
        "./streams/v1/index.json.asc",
        "./streams/v1/images.json.asc",
    ] {
        assert!(
            sigs.iter().any(|s| s == signed),
            "{signed} missing: {sigs:?}"
        );
    }
    assert!(
        sigs.iter().any(|s| s.ends_with("/SHA256SUMS.asc")),
        "no SHA256SUMS signature: {sigs:?}"
    );
    for sig in &sigs {
        let sig = srv.join(sig);
        let data = sig.with_extension("");
        let out = Command::new("gpg")
            .env("GNUPGHOME", home)
            .args(["--batch", "--verify"])
            .arg(&sig)
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "gpg --verify {}: {}",
            sig.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Incus's own tool re-hashes every simplestreams item of `srv`, and lists the image under
/// kiln's fingerprint `fp`.
fn assert_incus_reads(srv: &Path, fp: &str) {
    let said = run_ok(
        Command::new("incus-simplestreams")
            .current_dir(srv)
            .arg("verify"),
    );
    assert!(!said.contains("mismatch"), "{said}");
    let list = sh(&format!(
        "cd '{}' && incus-simplestreams list -f csv",
        srv.display()
    ));
    assert!(
        list.contains(fp),
        "{fp} not in incus-simplestreams list:\n{list}"
    );
}

#[test]
fn rootfs_published_for_lxc_download_and_incus() {
    let test = "rootfs_published_for_lxc_download_and_incus";
    if !capable(test) {
        return;
    }
    for tool in [
        "lxc-create",
        "incus-simplestreams",
        "gpg",
        "openssl",
        "wget",
    ] {
        if which(tool).is_none() {
            kiln_testkit::skip(
                test,
                &format!("{tool} is not installed (scripts/install-host-deps installs it)"),
            );
            return;
        }
    }
    let r = debian_rootfs().unwrap();
    let _t = Timer::start(test);
    let dir = r.tar.parent().unwrap().to_path_buf();
    let record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("debian-rootfs.d/image.json")).unwrap())
            .unwrap();
    let (release, arch, serial) = (
        record["release"].as_str().unwrap(),
        record["architecture"].as_str().unwrap(),
        record["serial"].as_str().unwrap(),
    );
    let x = tempfile::tempdir_in(&dir).unwrap();
    let home = x.path().join("gnupg");
    let fpr = gpg_home(&home);
    let _agent = GpgAgent(&home);
    let srv = x.path().join("srv");
    let publish = || {
        run_ok(
            Command::new(crate::kiln_bin())
                .current_dir(&dir)
                .env("GNUPGHOME", &home)
                .args(["publish", "debian-rootfs", "--to"])
                .arg(&srv)
                .args(["--sign-key", &fpr]),
        );
    };
    publish();

    assert_layout(&srv, &dir, release, arch, serial);
    assert_every_signature_verifies(&srv, &home);

    assert_incus_reads(&srv, record["fingerprints"]["incus"].as_str().unwrap());

    // lxc-create -t download over HTTPS from kiln publish --serve: the container is this build.
    test_certificate(x.path());
    let served = Served::start(
        &crate::kiln_bin(),
        x.path(),
        Path::new("srv"),
        Some((&x.path().join("cert.pem"), &x.path().join("key.pem"))),
    );
    let download = Download {
        dir: x.path(),
        port: served.port,
        name: "d1",
        dist: "debian",
        release,
        arch,
    };
    let (ok, log) = download.run();
    assert!(ok, "lxc-create -t download failed:\n{log}");
    assert_container_is(
        &x.path().join("lxc/d1"),
        "d1",
        &dir.join("debian-rootfs.lxc/rootfs.tar.xz"),
        &r.tar,
    );
    assert_eq!(
        fs::read(download.rootfs().join("usr/lib/os-release")).unwrap(),
        sh(&format!(
            "tar -xOf '{}' ./usr/lib/os-release",
            r.tar.display()
        ))
        .into_bytes()
    );
    assert!(served.stop().success());

    // Publishing the same build again changes no byte of the tree (signatures included: the
    // indexes are unchanged, so they are not signed again).
    let before = snapshot(&srv);
    publish();
    let after = snapshot(&srv);
    assert!(
        before == after,
        "a second publish changed the tree: {:?}",
        after
            .iter()
            .filter(|f| !before.contains(f))
            .map(|f| &f.0)
            .collect::<Vec<_>>()
    );
}
