//! The debootstrap element's root.d hook, with a stand-in `mmdebstrap` that records what it is
//! asked (no network, no chroot): which of the operating-system element's sources take part in
//! the bootstrap, and that they enter the bootstrap cache's settings.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::support::{bin_with_die, builtin_elements, executable};

/// Runs 08-debootstrap for bookworm with `sources` as DIB_APT_SOURCES_CONF (`M` standing for
/// the test's mirror, `S` for its security mirror) and a bootstrap cache in `dir`; returns the
/// arguments the stand-in mmdebstrap got (one a line; none on a cache hit), the newest
/// bootstrap cache description and the hook's output.
fn bootstrap(dir: &Path, sources: &str) -> (Vec<String>, String, String) {
    let bin = bin_with_die(dir);
    let args = dir.join("args");
    let _ = fs::remove_file(&args);
    executable(
        &bin.join("mmdebstrap"),
        &format!(
            "#!/bin/bash\n\
             if [ \"$1\" = --version ]; then echo 'mmdebstrap 1.3.5'; exit 0; fi\n\
             printf '%s\\n' \"$@\" > '{}'\n\
             mkdir -p \"$TARGET_ROOT/usr/bin\" && printf '#!/bin/sh\\n' > \"$TARGET_ROOT/usr/bin/apt-get\"\n\
             chmod +x \"$TARGET_ROOT/usr/bin/apt-get\"\n",
            args.display()
        ),
    );
    let (mirror, security) = (dir.join("mirror"), dir.join("security"));
    for (root, suite) in [
        (&mirror, "bookworm"),
        (&mirror, "bookworm-updates"),
        (&security, "bookworm-security"),
    ] {
        let d = root.join("dists").join(suite);
        if !d.exists() {
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("Release"), format!("Suite: {suite}\n")).unwrap();
        }
    }
    let sources = sources
        .replace(" M ", &format!(" file://{} ", mirror.display()))
        .replace(" S ", &format!(" file://{} ", security.display()));
    let target = dir.join("target");
    let _ = fs::remove_dir_all(&target);
    fs::create_dir_all(&target).unwrap();
    let o = Command::new("bash")
        .arg(builtin_elements().join("debootstrap/root.d/08-debootstrap"))
        .env_clear()
        .env(
            "PATH",
            format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display()),
        )
        .env("TARGET_ROOT", &target)
        .env("DISTRO_NAME", "debian")
        .env("DIB_RELEASE", "bookworm")
        .env("ARCH", "amd64")
        .env(
            "DIB_DISTRIBUTION_MIRROR",
            format!("file://{}", mirror.display()),
        )
        .env("DIB_DEBOOTSTRAP_TOOL", "mmdebstrap")
        .env("DIB_APT_LOCAL_CACHE", "0")
        .env("DIB_APT_KEYRING", "/dev/null")
        .env("DIB_IMAGE_CACHE", dir.join("cache"))
        .env("DIB_APT_SOURCES_CONF", sources)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "08-debootstrap failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let args = fs::read_to_string(&args).unwrap_or_default();
    let meta = fs::read_dir(dir.join("cache/bootstrap"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "meta"))
        .max_by_key(|p| fs::metadata(p).unwrap().modified().unwrap())
        .expect("a bootstrap cache description");
    (
        args.lines().map(str::to_string).collect(),
        fs::read_to_string(meta).unwrap(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn mmdebstrap_bootstraps_from_the_releases_update_pockets_too() {
    if !Path::new("/usr/bin/python3").exists() {
        kiln_testkit::skip(
            "mmdebstrap_bootstraps_from_the_releases_update_pockets_too",
            "python3 is not installed (the hook reads the mirror's Release with it)",
        );
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let sources = "\
default:deb M bookworm main
updates:deb M bookworm-updates main contrib
# a comment
security:deb S bookworm-security main
backports:deb M bookworm-backports main
pinned:deb [signed-by=/etc/k.gpg] M bookworm-proposed-updates main
older:deb M bullseye-updates main
sources:deb-src M bookworm-updates main";
    let (args, meta, _) = bootstrap(dir, sources);
    let target = dir.join("target").display().to_string();
    let at = args
        .iter()
        .position(|a| *a == target)
        .unwrap_or_else(|| panic!("no target among {args:?}"));
    assert_eq!(args[at - 1], "bookworm", "{args:?}");
    let mirror = format!("file://{}", dir.join("mirror").display());
    let updates = format!("deb {mirror} bookworm-updates main contrib");
    let security = format!(
        "deb file://{} bookworm-security main",
        dir.join("security").display()
    );
    assert_eq!(
        &args[at + 1..],
        [mirror.clone(), updates.clone(), security.clone()],
        "the mirror, then only the release's own update pockets"
    );
    for pocket in [&updates, &security] {
        let line = format!("pocket={pocket}");
        assert!(meta.lines().any(|l| l == line), "{line} not in:\n{meta}");
    }

    // The same state of every suite: the cached bootstrap is used.
    let (args, _, out) = bootstrap(dir, sources);
    assert!(args.is_empty(), "bootstrapped again: {out}");
    assert!(out.contains("kiln: bootstrap cache hit"), "{out}");
    // A security update (the pocket's Release changed): bootstrapped afresh, never the tarball
    // holding what the pocket had.
    fs::write(
        dir.join("security/dists/bookworm-security/Release"),
        "Suite: bookworm-security\nDate: later\n",
    )
    .unwrap();
    let (args, _, out) = bootstrap(dir, sources);
    assert!(!args.is_empty(), "the cached bootstrap was used: {out}");
    assert!(out.contains("kiln: bootstrap cache miss"), "{out}");

    // Sources without update pockets (a sid-like release): the mirror alone, and other settings.
    let (args, meta2, _) = bootstrap(dir, "default:deb M bookworm main");
    assert_eq!(args.last(), Some(&mirror), "{args:?}");
    assert!(!meta2.contains("pocket="), "{meta2}");
    let key = |m: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix("base=").map(str::to_string))
            .unwrap()
    };
    assert_ne!(
        key(&meta),
        key(&meta2),
        "the pockets are part of the settings"
    );
}
