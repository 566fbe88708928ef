//! Package trust, without network: a bootstrap never goes on unchecked unless asked for by name,
//! and a Release file past its validity gets kiln's own explanation and way out (a local file
//! mirror whose Release has a past Valid-Until, read by the host's apt with its own state
//! directories).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{bin_with_die, builtin_elements};

fn on_path(tool: &str) -> bool {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .any(|d| Path::new(d).join(tool).is_file())
}

/// A file mirror with one suite whose Release says `date` and `valid_until`, and an apt
/// configuration that reads only it; returns the path of the configuration.
fn file_mirror(dir: &Path, date: &str, valid_until: &str) -> PathBuf {
    let repo = dir.join("repo");
    let bin = repo.join("dists/stable/main/binary-amd64");
    fs::create_dir_all(&bin).unwrap();
    fs::write(bin.join("Packages"), "").unwrap();
    // sha256 of the empty Packages file.
    let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    fs::write(
        repo.join("dists/stable/Release"),
        format!(
            "Origin: kiln-test\nSuite: stable\nCodename: stable\nDate: {date}\n\
             Valid-Until: {valid_until}\nArchitectures: amd64\nComponents: main\n\
             SHA256:\n {empty} 0 main/binary-amd64/Packages\n"
        ),
    )
    .unwrap();
    let etc = dir.join("etc");
    for d in [
        "apt.conf.d",
        "preferences.d",
        "sources.list.d",
        "trusted.gpg.d",
    ] {
        fs::create_dir_all(etc.join(d)).unwrap();
    }
    fs::create_dir_all(dir.join("state/lists/partial")).unwrap();
    fs::create_dir_all(dir.join("cache/archives/partial")).unwrap();
    fs::write(
        etc.join("sources.list"),
        format!("deb [trusted=yes] file:{} stable main\n", repo.display()),
    )
    .unwrap();
    let conf = dir.join("apt.conf");
    fs::write(
        &conf,
        format!(
            "Dir::Etc \"{}\";\nDir::State \"{}\";\nDir::Cache \"{}\";\n\
             APT::Sandbox::User \"root\";\nDebug::NoLocking \"true\";\n",
            etc.display(),
            dir.join("state").display(),
            dir.join("cache").display()
        ),
    )
    .unwrap();
    conf
}

fn apt_update(conf: &Path, allow_expired: Option<&str>) -> Output {
    let mut c = Command::new("bash");
    c.arg(builtin_elements().join("dpkg/bin/kiln-apt-update"))
        .env("APT_CONFIG", conf)
        .env_remove("DIB_APT_ALLOW_EXPIRED");
    if let Some(v) = allow_expired {
        c.env("DIB_APT_ALLOW_EXPIRED", v);
    }
    c.output().unwrap()
}

#[test]
fn an_expired_release_gets_kilns_message_and_the_named_way_out() {
    let test = "an_expired_release_gets_kilns_message_and_the_named_way_out";
    if !on_path("apt-get") {
        kiln_testkit::skip(test, "apt-get is not installed");
        return;
    }
    for (date, until, says) in [
        (
            "Sat, 01 Jan 2000 00:00:00 UTC",
            "Sun, 02 Jan 2000 00:00:00 UTC",
            "is expired",
        ),
        (
            "Sat, 01 Jan 2150 00:00:00 UTC",
            "Sun, 02 Jan 2150 00:00:00 UTC",
            "is not valid yet",
        ),
    ] {
        let d = tempfile::tempdir().unwrap();
        let conf = file_mirror(d.path(), date, until);
        let o = apt_update(&conf, None);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success(),
            "{says}: apt-get update succeeded:\n{err}"
        );
        for needle in [
            "outside its validity period",
            says,
            "snapshot or a",
            "DIB_DISTRIBUTION_MIRROR",
            "DIB_APT_ALLOW_EXPIRED=1",
        ] {
            assert!(err.contains(needle), "{says}: no {needle:?} in:\n{err}");
        }
        // Asked for by name, the frozen mirror is read.
        let o = apt_update(&conf, Some("1"));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success(),
            "{says}: with DIB_APT_ALLOW_EXPIRED=1:\n{err}"
        );
        assert!(!err.contains("validity"), "{err}");
        // Any other value is not a yes.
        assert!(!apt_update(&conf, Some("yes")).status.success());
    }
}

#[test]
fn a_current_release_and_other_failures_pass_through() {
    let test = "a_current_release_and_other_failures_pass_through";
    if !on_path("apt-get") {
        kiln_testkit::skip(test, "apt-get is not installed");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let conf = file_mirror(
        d.path(),
        "Sat, 01 Jan 2000 00:00:00 UTC",
        "Fri, 01 Jan 2100 00:00:00 UTC",
    );
    let o = apt_update(&conf, None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A mirror without the suite: apt's own error and status, no word about validity.
    fs::remove_dir_all(d.path().join("repo/dists")).unwrap();
    let o = apt_update(&conf, None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(!err.contains("validity"), "{err}");
}

/// Runs the debootstrap element's root.d hook for a distribution whose archive keyring the host
/// lacks, against a mirror that does not exist (nothing may be downloaded).
fn bootstrap_without_keyring(dir: &Path, env: &[(&str, &str)]) -> Output {
    let bin = bin_with_die(dir);
    let target = dir.join("target");
    fs::create_dir_all(&target).unwrap();
    let mut c = Command::new("bash");
    c.arg(builtin_elements().join("debootstrap/root.d/08-debootstrap"))
        .env_clear()
        .env(
            "PATH",
            format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display()),
        )
        .env("TARGET_ROOT", &target)
        .env("DISTRO_NAME", "kilntestdistro")
        .env("DIB_RELEASE", "stable")
        .env("ARCH", "amd64")
        .env(
            "DIB_DISTRIBUTION_MIRROR",
            format!("file://{}/no-mirror", dir.display()),
        )
        .env("DIB_DEBOOTSTRAP_TOOL", "debootstrap")
        .env("DIB_IMAGE_CACHE", dir.join("cache"));
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn a_bootstrap_without_the_archive_keyring_stops_unless_asked_by_name() {
    let test = "a_bootstrap_without_the_archive_keyring_stops_unless_asked_by_name";
    if !on_path("debootstrap") {
        kiln_testkit::skip(test, "debootstrap is not installed");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let o = bootstrap_without_keyring(d.path(), &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    for needle in [
        "/usr/share/keyrings/kilntestdistro-archive-keyring.gpg",
        "apt-get install kilntestdistro-archive-keyring",
        "DIB_APT_KEYRING",
        "DIB_DEBOOTSTRAP_INSECURE=1",
    ] {
        assert!(err.contains(needle), "no {needle:?} in:\n{err}");
    }
    // It stopped before asking the mirror anything.
    assert!(!err.contains("Cannot read"), "{err}");
    // Asked for by name: a loud warning, then on to the mirror (which does not exist here).
    let o = bootstrap_without_keyring(d.path(), &[("DIB_DEBOOTSTRAP_INSECURE", "1")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(
            "WARNING: DIB_DEBOOTSTRAP_INSECURE=1: bootstrapping kilntestdistro without checking"
        ),
        "{err}"
    );
    assert!(err.contains("Cannot read"), "{err}");
}
