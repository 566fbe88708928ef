//! Root filesystem images: one default-release build written as tar, tgz, squashfs and the
//! container images (docker, oci) with checksums (the tar is reused as the root of the fixture
//! OS of the failure and cache tests), and a foreign-architecture build.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_testkit::clients::run_ok;
use std::sync::OnceLock;

use crate::harness::{
    assert_no_leftovers, build, capable, heavy, kiln_command, sh, tar_listing, walk, work, Timer,
};

/// The fixed timestamp the root filesystem build is given.
const EPOCH: u64 = 1_700_000_000;

/// What the shared root filesystem build produced.
#[derive(Clone)]
pub struct Rootfs {
    /// The tar (`NAME.tar`).
    pub tar: PathBuf,
}

static ROOTFS: OnceLock<Result<Rootfs, String>> = OnceLock::new();

/// The root filesystem of Debian's default release (no `DIB_RELEASE`, as a user who names none
/// builds) with the `container` element, built once per run with the tree outputs tar, tgz, squashfs,
/// docker, oci, lxc and incus, checksums, an extra package (`-p`) and `SOURCE_DATE_EPOCH`.
pub fn debian_rootfs() -> Result<Rootfs, String> {
    ROOTFS
        .get_or_init(|| {
            let h = heavy();
            let dir = work("rootfs").keep();
            let epoch = EPOCH.to_string();
            let o = build(
                &dir,
                None,
                &[
                    "debian-minimal",
                    "container",
                    "-t",
                    "tar,tgz,squashfs,oci,docker,lxc,incus",
                    "--checksum",
                    "-p",
                    "less",
                    "-o",
                    "debian-rootfs",
                ],
                // The `container` element, named (tar is not a container output, so kiln
                // would not add it): no kernel, a root filesystem for containers and chroots
                // as users build one, and a smaller tree for every fixture build that unpacks it.
                &[
                    ("DIB_RELEASE", ""),
                    ("SOURCE_DATE_EPOCH", &epoch),
                    // The LXC and Incus images must not be expired today (creation is 2023).
                    ("KILN_IMAGE_EXPIRY", "36500"),
                ],
            );
            if o.code != 0 {
                return Err(format!("rootfs build failed ({}):\n{}", o.code, o.stderr));
            }
            assert_no_leftovers(&dir, &h);
            Ok(Rootfs {
                tar: dir.join("debian-rootfs.tar"),
            })
        })
        .clone()
}

/// The entries of mmdebstrap's minimal /dev; anything else there came from a host.
const STATIC_DEV: &[&str] = &[
    "./dev/",
    "./dev/console",
    "./dev/fd",
    "./dev/full",
    "./dev/null",
    "./dev/ptmx",
    "./dev/pts/",
    "./dev/random",
    "./dev/shm/",
    "./dev/stderr",
    "./dev/stdin",
    "./dev/stdout",
    "./dev/tty",
    "./dev/urandom",
    "./dev/zero",
];

/// No release named: the image follows Debian's `stable`, as DIB's default does, resolved once
/// to the codename the mirror's dists/stable/Release names: the image's sources (the release
/// and its -updates and -security suites) say the codename, never the alias, and the manifest
/// records both.
fn check_release_codename(tar: &Path, dir: &Path) {
    let codename = sh(&format!(
        "tar -xOf '{}' ./usr/lib/os-release | sed -n 's/^VERSION_CODENAME=//p'",
        tar.display()
    ));
    let codename = codename.trim();
    assert!(!codename.is_empty(), "no VERSION_CODENAME in the image");
    for (list, suite) in [
        ("default", codename.to_string()),
        ("updates", format!("{codename}-updates")),
        ("security", format!("{codename}-security")),
    ] {
        let sources = sh(&format!(
            "tar -xOf '{}' ./etc/apt/sources.list.d/{list}.list",
            tar.display()
        ));
        assert!(
            sources
                .lines()
                .any(|l| l.split_whitespace().nth(2) == Some(suite.as_str())),
            "{list}.list does not name {suite}: {sources}"
        );
        assert!(!sources.contains(" stable"), "{list}.list: {sources}");
    }
    // The manifest records what was asked and what it meant.
    let environment = sh(&format!(
        "cat '{}'",
        dir.join("debian-rootfs.d/dib-manifests/dib_environment")
            .display()
    ));
    assert!(
        environment.contains(&format!("DIB_RELEASE={codename}"))
            && environment.contains("DIB_RELEASE_ASKED=stable"),
        "{environment}"
    );
}

#[test]
fn rootfs_outputs_checksums_and_manifests() {
    if !capable("rootfs_outputs_checksums_and_manifests") {
        return;
    }
    let r = debian_rootfs().unwrap();
    let _t = Timer::start("rootfs_outputs_checksums_and_manifests");
    let dir = r.tar.parent().unwrap().to_path_buf();
    check_release_codename(&r.tar, &dir);
    // Every output with both checksums, each verifiable.
    for f in [
        "debian-rootfs.tar",
        "debian-rootfs.tgz",
        "debian-rootfs.squash",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
        for sum in ["md5", "sha256"] {
            let s = format!("{f}.{sum}");
            assert!(dir.join(&s).is_file(), "{s} missing");
            sh(&format!("cd '{}' && {sum}sum -c '{s}'", dir.display()));
        }
    }
    // The container element: no kernel or initramfs, an empty fstab, DHCP on eth0 by networkd.
    let listing = sh(&format!("tar -tf '{}'", r.tar.display()));
    assert!(
        !listing
            .lines()
            .any(|l| l.starts_with("./boot/vmlinuz") || l.starts_with("./boot/initrd")),
        "a kernel or initramfs in the container tree"
    );
    assert_eq!(
        sh(&format!("tar -xOf '{}' ./etc/fstab", r.tar.display())),
        ""
    );
    let network = sh(&format!(
        "tar -xOf '{}' ./etc/systemd/network/80-container-eth0.network",
        r.tar.display()
    ));
    assert!(
        network.contains("eth0") && network.contains("DHCP"),
        "{network}"
    );
    // apt works in the tarball's chroot, and `-p less` was installed.
    let x = tempfile::tempdir().unwrap();
    let st = Command::new("tar")
        .args(["--numeric-owner", "-xpf"])
        .arg(&r.tar)
        .arg("-C")
        .arg(x.path())
        .status()
        .unwrap();
    assert!(st.success());
    let out = Command::new("chroot")
        .arg(x.path())
        .args(["apt", "--version"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "apt --version failed in the tarball's chroot"
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("apt "));
    assert!(
        x.path().join("usr/bin/less").exists(),
        "-p less was not installed"
    );
    // NAME.d/sbom.spdx.json: exactly the image's installed packages, valid SPDX.
    assert_sbom(&dir.join("debian-rootfs.d/sbom.spdx.json"), x.path());
    // The tgz and the squashfs hold the same tree as the tar.
    assert_same_tree(&dir, &r.tar);
    // SOURCE_DATE_EPOCH honoured; nothing of the host's /dev, /proc or /sys.
    assert_tar_is_clean(&r.tar);
    // NAME.d/: the installed packages, the environment, the arguments, the timings.
    let d = dir.join("debian-rootfs.d");
    let pkgs = walk(&d)
        .into_iter()
        .filter(|e| e.file_name().unwrap().to_string_lossy().contains("dpkg"))
        .map(|e| fs::read_to_string(e).unwrap())
        .collect::<Vec<_>>();
    assert!(
        !pkgs.is_empty(),
        "no installed-package list in {}",
        d.display()
    );
    assert!(pkgs
        .iter()
        .any(|t| t.lines().any(|l| l.starts_with("apt "))));
    assert!(pkgs
        .iter()
        .any(|t| t.lines().any(|l| l.starts_with("less "))));
    let timings: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(d.join("timings.json")).unwrap()).unwrap();
    assert!(timings["steps"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["step"] == "install"));
}

/// The paths under `root`, relative, sorted, without following symlinks.
fn tree_paths(root: &std::path::Path) -> Vec<String> {
    fn go(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                go(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    go(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn rootfs_container_images() {
    if !capable("rootfs_container_images") {
        return;
    }
    for tool in ["skopeo", "umoci"] {
        if crate::harness::which(tool).is_none() {
            kiln_testkit::skip(
                "rootfs_container_images",
                &format!("{tool} is not installed (scripts/install-host-deps installs it)"),
            );
            return;
        }
    }
    let r = debian_rootfs().unwrap();
    let _t = Timer::start("rootfs_container_images");
    let dir = r.tar.parent().unwrap().to_path_buf();
    let layout = dir.join("debian-rootfs.oci");
    let archive = dir.join("debian-rootfs.docker.tar");
    assert!(layout.join("index.json").is_file());
    // The docker archive has its checksums; the layout directory none.
    for sum in ["md5", "sha256"] {
        sh(&format!(
            "cd '{}' && {sum}sum -c debian-rootfs.docker.tar.{sum}",
            dir.display()
        ));
        assert!(!dir.join(format!("debian-rootfs.oci.{sum}")).exists());
    }
    let inspect = |what: String| -> serde_json::Value {
        serde_json::from_str(&sh(&format!("skopeo inspect '{what}'"))).unwrap()
    };
    let oci = inspect(format!("oci:{}:latest", layout.display()));
    let docker = inspect(format!("docker-archive:{}", archive.display()));
    let host_arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    for seen in [&oci, &docker] {
        assert_eq!(seen["Architecture"], host_arch, "{seen}");
        assert_eq!(seen["Os"], "linux");
        assert_eq!(seen["Created"], "2023-11-14T22:13:20Z", "SOURCE_DATE_EPOCH");
        assert_eq!(seen["Layers"].as_array().unwrap().len(), 1);
    }
    // Both carry the same config (so the same layer, by its diff_id): the docker archive names
    // the config file by its digest, the OCI manifest by the same digest.
    let manifest: serde_json::Value = serde_json::from_str(&sh(&format!(
        "skopeo inspect --raw 'oci:{}:latest'",
        layout.display()
    )))
    .unwrap();
    let config_hex = manifest["config"]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let docker_manifest: serde_json::Value = serde_json::from_str(&sh(&format!(
        "tar -xOf '{}' manifest.json",
        archive.display()
    )))
    .unwrap();
    assert_eq!(docker_manifest[0]["Config"], format!("{config_hex}.json"));
    assert_eq!(
        docker_manifest[0]["RepoTags"],
        serde_json::json!(["debian-rootfs:latest"])
    );
    // umoci unpacks the tar's tree: the same paths, /dev without the static nodes the tar
    // keeps (a container runtime makes its own).
    let x = tempfile::tempdir_in(&dir).unwrap();
    let bundle = x.path().join("bundle");
    sh(&format!(
        "umoci unpack --image '{}:latest' '{}'",
        layout.display(),
        bundle.display()
    ));
    let unpacked = tree_paths(&bundle.join("rootfs"));
    let mut from_tar: Vec<String> = sh(&format!("tar -tf '{}'", r.tar.display()))
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
        .filter(|p| !p.is_empty() && p != "." && !p.starts_with("dev/"))
        .collect();
    from_tar.sort();
    assert!(
        unpacked == from_tar,
        "the OCI image and the tar differ: only in the image {:?}, only in the tar {:?}",
        unpacked
            .iter()
            .filter(|p| from_tar.binary_search(p).is_err())
            .collect::<Vec<_>>(),
        from_tar
            .iter()
            .filter(|p| unpacked.binary_search(p).is_err())
            .collect::<Vec<_>>()
    );
}

/// Checks `dir/streams/v1/images.json` (written by incus-simplestreams) names an item whose
/// `key` is `fingerprint`, and `incus-simplestreams verify` accepts the tree.
pub fn assert_simplestreams_item(dir: &std::path::Path, key: &str, fingerprint: &str) {
    run_ok(
        Command::new("incus-simplestreams")
            .arg("verify")
            .current_dir(dir),
    );
    let images: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("streams/v1/images.json")).unwrap())
            .unwrap();
    let mut seen = Vec::new();
    for product in images["products"].as_object().unwrap().values() {
        for version in product["versions"].as_object().unwrap().values() {
            for item in version["items"].as_object().unwrap().values() {
                if let Some(v) = item.get(key) {
                    seen.push(v.as_str().unwrap_or_default().to_string());
                }
            }
        }
    }
    assert!(
        seen.iter().any(|s| s == fingerprint),
        "incus-simplestreams computed {key} {seen:?}, kiln {fingerprint}"
    );
}

/// `lxc-create -t local` makes container `c1` under `x` from the pair in `lxc`: its root
/// filesystem holds what the tarball lists, named by the template, and its config the
/// architecture; the tar output `tar` (the same tree) keeps its own hostname.
fn assert_lxc_container(x: &std::path::Path, lxc: &std::path::Path, tar: &std::path::Path) {
    // lxc-create -t local: a container from the two files.
    let lxcpath = x.join("lxc");
    fs::create_dir_all(&lxcpath).unwrap();
    let meta = lxc.join("meta.tar.xz");
    let rootfs = lxc.join("rootfs.tar.xz");
    run_ok(
        Command::new("lxc-create")
            .arg("-P")
            .arg(&lxcpath)
            .args(["-t", "local", "-n", "c1", "--", "--metadata"])
            .arg(&meta)
            .arg("--fstree")
            .arg(&rootfs),
    );
    assert_container_is(&lxcpath.join("c1"), "c1", &rootfs, tar);
}

/// The LXC container at `c` (named `name`) holds exactly the entries of the image's
/// `rootfs.tar.xz`, named by the template (`/etc/hostname`, `/etc/hosts`, `lxc.uts.name`), with
/// the architecture's personality; the build's own tar (`tar`) keeps its hostname.
pub fn assert_container_is(
    c: &std::path::Path,
    name: &str,
    rootfs: &std::path::Path,
    tar: &std::path::Path,
) {
    let made = tree_paths(&c.join("rootfs"));
    let mut from_tar: Vec<String> = sh(&format!("tar -tJf '{}'", rootfs.display()))
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
        .filter(|p| !p.is_empty())
        .collect();
    from_tar.sort();
    assert!(
        made == from_tar,
        "the container and the tarball differ: only in the container {:?}, only in the tarball {:?}",
        made.iter()
            .filter(|p| from_tar.binary_search(p).is_err())
            .collect::<Vec<_>>(),
        from_tar
            .iter()
            .filter(|p| made.binary_search(p).is_err())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        fs::read_to_string(c.join("rootfs/etc/hostname")).unwrap(),
        format!("{name}\n")
    );
    let hosts = fs::read_to_string(c.join("rootfs/etc/hosts")).unwrap();
    assert!(hosts.contains(&format!("127.0.1.1\t{name}\n")), "{hosts}");
    let config = fs::read_to_string(c.join("config")).unwrap();
    let personality = "lxc.arch = linux64";
    assert!(config.contains(personality), "{config}");
    assert!(
        config.contains(&format!("lxc.uts.name = {name}")),
        "{config}"
    );
    // The tree of the tar output is unchanged: its own hostname.
    assert_ne!(
        sh(&format!("tar -xOf '{}' ./etc/hostname", tar.display())),
        "LXC_NAME\n"
    );
}

/// The LXC and Incus images of the root filesystem, read by their real clients:
/// `lxc-create -t local` makes a container whose root filesystem is the tarball's (named by
/// the template), and `incus-simplestreams add`/`verify` accepts the split image with kiln's
/// fingerprint; `NAME.d/image.json` records both.
#[test]
fn rootfs_lxc_and_incus_images() {
    if !capable("rootfs_lxc_and_incus_images") {
        return;
    }
    for tool in ["lxc-create", "incus-simplestreams"] {
        if crate::harness::which(tool).is_none() {
            kiln_testkit::skip(
                "rootfs_lxc_and_incus_images",
                &format!("{tool} is not installed (scripts/install-host-deps installs it)"),
            );
            return;
        }
    }
    let r = debian_rootfs().unwrap();
    let _t = Timer::start("rootfs_lxc_and_incus_images");
    let dir = r.tar.parent().unwrap().to_path_buf();
    let lxc = dir.join("debian-rootfs.lxc");
    let incus = dir.join("debian-rootfs.incus");
    // The record kiln publish reads.
    let record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("debian-rootfs.d/image.json")).unwrap())
            .unwrap();
    assert_eq!(record["os"], "debian", "{record:#}");
    assert_eq!(record["variant"], "default");
    assert_eq!(record["creation_date"], EPOCH);
    assert_eq!(record["expiry_date"], EPOCH + 36_500 * 86_400);
    assert_eq!(record["serial"], "20231114_2213");
    assert_eq!(
        record["outputs"],
        serde_json::json!({"lxc": "debian-rootfs.lxc", "incus": "debian-rootfs.incus"})
    );
    let release = record["release"].as_str().unwrap().to_string();
    let os_release = sh(&format!(
        "tar -xOf '{}' ./usr/lib/os-release",
        r.tar.display()
    ));
    assert!(
        os_release.contains(&format!("VERSION_CODENAME={release}")),
        "{release} is not the image's codename: {os_release}"
    );

    let x = tempfile::tempdir_in(&dir).unwrap();
    assert_lxc_container(x.path(), &lxc, &r.tar);

    // incus-simplestreams add + verify of the split image, with kiln's fingerprint.
    let ss = x.path().join("simplestreams");
    fs::create_dir_all(&ss).unwrap();
    let meta = incus.join("incus.tar.xz");
    let data = incus.join("rootfs.squashfs");
    run_ok(
        Command::new("incus-simplestreams")
            .arg("add")
            .arg(&meta)
            .arg(&data)
            .current_dir(&ss),
    );
    let fp = record["fingerprints"]["incus"].as_str().unwrap();
    assert_eq!(fp.len(), 64);
    assert_simplestreams_item(&ss, "combined_squashfs_sha256", fp);
}

/// The spdx-tools release (PyPI) whose validator checks the SBOM.
const SPDX_TOOLS_VERSION: &str = "0.8.5";

static SPDX_VALIDATOR: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// `pyspdxtools`, the SPDX project's validator, from `pip install spdx-tools==VERSION` into a
/// venv of this run.
fn spdx_validator() -> Result<PathBuf, String> {
    SPDX_VALIDATOR
        .get_or_init(|| {
            let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("spdx-tools-venv-{SPDX_TOOLS_VERSION}"));
            let bin = venv.join("bin/pyspdxtools");
            if bin.exists() {
                return Ok(bin);
            }
            let st = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status();
            if !st.is_ok_and(|s| s.success()) {
                return Err("python3 -m venv failed (install python3-venv)".into());
            }
            let st = Command::new(venv.join("bin/pip"))
                .args([
                    "install",
                    "-q",
                    &format!("spdx-tools=={SPDX_TOOLS_VERSION}"),
                ])
                .status();
            if !st.is_ok_and(|s| s.success()) {
                return Err(format!(
                    "pip install spdx-tools=={SPDX_TOOLS_VERSION} failed"
                ));
            }
            Ok(bin)
        })
        .clone()
}

/// The SBOM at `sbom` lists exactly the installed packages of the tree at `root` (as dpkg
/// itself reports them), with the `.deb` checksums and locations of the packages apt
/// installed, and the SPDX project's validator accepts it.
fn assert_sbom(sbom: &std::path::Path, root: &std::path::Path) {
    let text = fs::read_to_string(sbom)
        .unwrap_or_else(|e| panic!("{}: {e} (no SBOM beside the image)", sbom.display()));
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["spdxVersion"], "SPDX-2.3");
    // SOURCE_DATE_EPOCH (1700000000) is the creation time.
    assert_eq!(doc["creationInfo"]["created"], "2023-11-14T22:13:20Z");
    let pkgs = doc["packages"].as_array().unwrap();
    let mut listed: Vec<String> = pkgs
        .iter()
        .filter(|p| p["SPDXID"] != "SPDXRef-Image")
        .map(|p| {
            let arch = p["externalRefs"][0]["referenceLocator"]
                .as_str()
                .and_then(|l| l.rsplit_once("arch="))
                .map(|(_, a)| a.to_string())
                .unwrap_or_default();
            format!(
                "{}:{} {}",
                p["name"].as_str().unwrap(),
                arch,
                p["versionInfo"].as_str().unwrap()
            )
        })
        .collect();
    listed.sort();
    let mut installed: Vec<String> = sh(&format!(
        "dpkg-query --admindir='{}/var/lib/dpkg' -W \
         -f '${{db:Status-Abbrev}} ${{Package}}:${{Architecture}} ${{Version}}\n'",
        root.display()
    ))
    .lines()
    .filter_map(|l| l.strip_prefix("ii ").or_else(|| l.strip_prefix("hi ")))
    .map(|l| l.trim().to_string())
    .collect();
    installed.sort();
    assert_eq!(
        listed, installed,
        "the SBOM's packages differ from the image's dpkg status"
    );
    // The packages apt installed carry their .deb's SHA256 and where it came from.
    for name in ["apt", "less"] {
        let p = pkgs.iter().find(|p| p["name"] == name).unwrap();
        let sum = p["checksums"][0]["checksumValue"].as_str().unwrap_or("");
        assert!(
            sum.len() == 64 && sum.bytes().all(|b| b.is_ascii_hexdigit()),
            "{name}: no SHA256 in the SBOM: {p}"
        );
        let loc = p["downloadLocation"].as_str().unwrap();
        assert!(
            loc.contains("://") && loc.contains(&format!("/{name}_")),
            "{name}: download location {loc}"
        );
    }
    let validator = spdx_validator().unwrap();
    let out = Command::new(&validator)
        .arg("-i")
        .arg(sbom)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pyspdxtools rejects {}:\n{}{}",
        sbom.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kiln lock` of the root filesystem's request lists exactly the packages of the image's dpkg
/// manifest, at the same versions: the packages the built-in elements install are all in their
/// package-installs.yaml, so no `-p` beyond the build's own is needed.
#[test]
fn rootfs_lock_equals_the_dpkg_manifest() {
    if !capable("rootfs_lock_equals_the_dpkg_manifest") {
        return;
    }
    let r = debian_rootfs().unwrap();
    let _t = Timer::start("rootfs_lock_equals_the_dpkg_manifest");
    let dir = r.tar.parent().unwrap().to_path_buf();
    let lock = dir.join("debian-rootfs.lock");
    let lock_arg = lock.display().to_string();
    let out = kiln_command(
        "lock",
        &dir,
        None,
        &["debian-minimal", "container", "-p", "less", "-o", &lock_arg],
        &[("DIB_RELEASE", "")],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "kiln lock failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let locked: std::collections::BTreeMap<String, String> = fs::read_to_string(&lock)
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
        .collect();
    let manifest_file = walk(&dir.join("debian-rootfs.d"))
        .into_iter()
        .find(|e| e.file_name().unwrap().to_string_lossy().contains("dpkg"))
        .expect("a dpkg manifest");
    let installed: std::collections::BTreeMap<String, String> = fs::read_to_string(&manifest_file)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(p, v)| (p.to_string(), v.to_string()))
        .collect();
    let differ: Vec<String> = locked
        .iter()
        .filter(|(p, v)| installed.get(*p) != Some(v))
        .map(|(p, v)| format!("{p} {v} (image: {:?})", installed.get(p)))
        .collect();
    let unlocked: Vec<&String> = installed
        .keys()
        .filter(|p| !locked.contains_key(*p))
        .collect();
    assert!(
        differ.is_empty() && unlocked.is_empty(),
        "lock and image differ: locked but not in the image at that version {differ:?}; in the image but not locked {unlocked:?}"
    );
}

/// The tgz and the squashfs next to `tar_file` hold the same tree as it.
fn assert_same_tree(dir: &std::path::Path, tar_file: &std::path::Path) {
    let tgz = tar_listing(&dir.join("debian-rootfs.tgz"), true);
    let tar = tar_listing(tar_file, true);
    assert_eq!(tgz, tar, "the tgz differs from the tar");
    let sq = sh(&format!(
        "unsquashfs -l '{}' | sed -n 's|^squashfs-root/|/|p' | sort",
        dir.join("debian-rootfs.squash").display()
    ));
    let mut tar_paths: Vec<String> = sh(&format!("tar -tf '{}'", tar_file.display()))
        .lines()
        .map(|l| l.trim_start_matches('.').trim_end_matches('/').to_string())
        .filter(|l| !l.is_empty())
        .collect();
    tar_paths.sort();
    let mut sq_paths: Vec<String> = sq.lines().map(String::from).collect();
    sq_paths.sort();
    let only_tar: Vec<_> = tar_paths
        .iter()
        .filter(|p| sq_paths.binary_search(p).is_err())
        .collect();
    let only_sq: Vec<_> = sq_paths
        .iter()
        .filter(|p| tar_paths.binary_search(p).is_err())
        .collect();
    assert!(
        only_tar.is_empty() && only_sq.is_empty(),
        "tar and squashfs differ: only in the tar {only_tar:?}, only in the squashfs {only_sq:?}"
    );
}

/// No entry of `tar_file` is newer than SOURCE_DATE_EPOCH, and it holds nothing of the host's
/// /dev, /proc or /sys, nor the hook tree's bind mount.
fn assert_tar_is_clean(tar_file: &std::path::Path) {
    // SOURCE_DATE_EPOCH: no entry is newer than it.
    let mut archive = tar::Archive::new(fs::File::open(tar_file).unwrap());
    let mut newest = 0;
    let mut dev_entries = Vec::new();
    let mut proc_sys = Vec::new();
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        newest = newest.max(e.header().mtime().unwrap());
        let p = e.path().unwrap().display().to_string();
        let p = if e.header().entry_type().is_dir() && !p.ends_with('/') {
            format!("{p}/")
        } else {
            p
        };
        if p.starts_with("./dev/") && !STATIC_DEV.contains(&p.as_str()) {
            dev_entries.push(p.clone());
        }
        if (p.starts_with("./proc/") || p.starts_with("./sys/")) && p.len() > 7 && p != "./sys/" {
            proc_sys.push(p.clone());
        }
        assert!(!p.starts_with("./tmp/in_target.d"), "{p} in the tar");
    }
    assert!(
        newest <= EPOCH,
        "an entry is newer than SOURCE_DATE_EPOCH: {newest}"
    );
    // Nothing of the host's /dev, /proc or /sys.
    assert!(
        dev_entries.is_empty(),
        "host device entries in the tar: {dev_entries:?}"
    );
    assert!(
        proc_sys.is_empty(),
        "/proc or /sys contents in the tar: {proc_sys:?}"
    );
}

/// The shared tar, for fixture elements.
pub fn rootfs_tar() -> PathBuf {
    debian_rootfs().unwrap().tar
}
