//! `kiln publish`: the image server tree against its real clients, from fixture builds (no image
//! build): the layout and SHA256SUMS, simplestreams compared with what `incus-simplestreams add`
//! writes for the same files and checked by `incus-simplestreams verify`, `gpg --verify` of
//! every signature, retention, expiry, idempotence and conflicts, an update interrupted at each
//! step (injected) or killed with SIGKILL at each stage, concurrent publishes, and `lxc-create -t
//! download` against `kiln publish --serve` over
//! HTTPS (root; over plain HTTP it must fail).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kiln_publish::{BuildInput, Options};
use serde_json::Value;

use kiln_testkit::clients::{gpg_home, run_ok, test_certificate, Download, GpgAgent, Served};

use crate::support::{assert_input_error, kiln_bin, run};

const TOOLS: &[&str] = &[
    "tar",
    "xz",
    "mksquashfs",
    "qemu-img",
    "incus-simplestreams",
    "gpg",
    "openssl",
    "lxc-create",
    "wget",
];

/// Skips (visibly) when a tool is missing; true when the test can run.
fn tools_present(test: &str) -> bool {
    let missing: Vec<&str> = TOOLS
        .iter()
        .copied()
        .filter(|t| which(t).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    kiln_testkit::skip(
        test,
        &format!(
            "not installed: {} (scripts/install-host-deps)",
            missing.join(", ")
        ),
    );
    false
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(tool))
            .find(|c| c.is_file())
    })
}

/// A fixture of what a container build leaves: `DIR/NAME.d/image.json` and the outputs it lists.
struct Fixture<'a> {
    dir: &'a Path,
    name: &'a str,
    release: &'a str,
    serial: &'a str,
    created: u64,
    expiry: u64,
    marker: &'a str,
    outputs: &'a [&'a str],
}

impl Fixture<'_> {
    fn new<'a>(dir: &'a Path, name: &'a str, serial: &'a str, created: u64) -> Fixture<'a> {
        Fixture {
            dir,
            name,
            release: "trixie",
            serial,
            created,
            expiry: created + 30 * 86_400,
            marker: serial,
            outputs: &["lxc", "incus", "incus-vm"],
        }
    }

    /// Writes the build; returns its NAME path (the `-o` base).
    fn write(&self) -> PathBuf {
        let base = self.dir.join(self.name);
        let work = self.dir.join(format!("{}.work", self.name));
        let root = work.join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::write(root.join("etc/hostname"), "buildhost\n").unwrap();
        std::fs::write(
            root.join("etc/hosts"),
            "127.0.0.1 localhost\n127.0.1.1 LXC_NAME\n",
        )
        .unwrap();
        std::fs::write(root.join("etc/kiln-marker"), format!("{}\n", self.marker)).unwrap();
        std::fs::write(root.join("usr/bin/true"), "#!/bin/sh\n").unwrap();
        let mut outputs = serde_json::Map::new();
        for out in self.outputs {
            match *out {
                "lxc" => self.lxc_output(&root, &work, &base),
                "incus" | "incus-vm" => {
                    let d = PathBuf::from(format!("{}.{out}", base.display()));
                    std::fs::create_dir_all(&d).unwrap();
                    self.incus_meta(&work, &d.join("incus.tar.xz"));
                    if *out == "incus" {
                        run_ok(
                            Command::new("mksquashfs")
                                .arg(&root)
                                .arg(d.join("rootfs.squashfs"))
                                .args(["-quiet", "-noappend", "-no-progress"]),
                        );
                    } else {
                        run_ok(
                            Command::new("qemu-img")
                                .args(["create", "-q", "-f", "qcow2"])
                                .arg(d.join("disk.qcow2"))
                                .arg("16M"),
                        );
                    }
                }
                "incus-unified" => {
                    let meta = work.join("unified");
                    std::fs::create_dir_all(&meta).unwrap();
                    self.incus_meta(&work, &work.join("unused.tar.xz"));
                    std::fs::copy(
                        work.join("incus-meta/metadata.yaml"),
                        meta.join("metadata.yaml"),
                    )
                    .unwrap();
                    run_ok(
                        Command::new("cp")
                            .arg("-a")
                            .arg(&root)
                            .arg(meta.join("rootfs")),
                    );
                    run_ok(
                        Command::new("tar")
                            .arg("-C")
                            .arg(&meta)
                            .args(["--sort=name", "-czf"])
                            .arg(format!("{}.incus.tar.gz", base.display()))
                            .args(["metadata.yaml", "rootfs"]),
                    );
                }
                other => panic!("no fixture for {other}"),
            }
            let file = if *out == "incus-unified" {
                format!("{}.incus.tar.gz", self.name)
            } else {
                format!("{}.{out}", self.name)
            };
            outputs.insert((*out).to_string(), Value::String(file));
        }
        let record = serde_json::json!({
            "os": "debian",
            "release": self.release,
            "variant": "default",
            "architecture": "amd64",
            "serial": self.serial,
            "description": format!("Debian {} amd64 (default) ({})", self.release, self.serial),
            "creation_date": self.created,
            "expiry_date": self.expiry,
            "outputs": outputs,
            "fingerprints": {"incus": "not trusted"},
            "future_key": 1,
        });
        let d = PathBuf::from(format!("{}.d", base.display()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("image.json"),
            serde_json::to_vec_pretty(&record).unwrap(),
        )
        .unwrap();
        base
    }

    /// `NAME.lxc/`: rootfs.tar.xz and meta.tar.xz as LXC templates read them.
    fn lxc_output(&self, root: &Path, work: &Path, base: &Path) {
        let d = PathBuf::from(format!("{}.lxc", base.display()));
        std::fs::create_dir_all(&d).unwrap();
        let meta = work.join("meta");
        std::fs::create_dir_all(&meta).unwrap();
        let config = "lxc.include = LXC_TEMPLATE_CONFIG/common.conf\nlxc.arch = linux64\n";
        std::fs::write(meta.join("config"), config).unwrap();
        std::fs::write(
                meta.join("config-user"),
                "lxc.include = LXC_TEMPLATE_CONFIG/common.conf\nlxc.include = LXC_TEMPLATE_CONFIG/userns.conf\nlxc.arch = linux64\n",
            )
            .unwrap();
        std::fs::write(meta.join("templates"), "/etc/hostname\n/etc/hosts\n").unwrap();
        std::fs::write(meta.join("create-message"), "kiln fixture\n").unwrap();
        std::fs::write(meta.join("expiry"), format!("{}\n", self.expiry)).unwrap();
        std::fs::write(meta.join("excludes-user"), "\n").unwrap();
        // The hostname template: LXC substitutes LXC_NAME.
        std::fs::write(root.join("etc/hostname"), "LXC_NAME\n").unwrap();
        run_ok(
            Command::new("tar")
                .arg("-C")
                .arg(root)
                .args(["--numeric-owner", "--sort=name", "-cJf"])
                .arg(d.join("rootfs.tar.xz"))
                .arg("."),
        );
        run_ok(
            Command::new("tar")
                .arg("-C")
                .arg(&meta)
                .args(["--sort=name", "-cJf"])
                .arg(d.join("meta.tar.xz"))
                .arg("."),
        );
    }

    fn incus_meta(&self, work: &Path, dest: &Path) {
        let meta = work.join("incus-meta");
        std::fs::create_dir_all(meta.join("templates")).unwrap();
        std::fs::write(
            meta.join("metadata.yaml"),
            format!(
                "architecture: x86_64\ncreation_date: {}\nexpiry_date: {}\nproperties:\n  architecture: amd64\n  description: Debian {r} amd64 (default) ({s})\n  os: debian\n  release: {r}\n  variant: default\n  serial: \"{s}\"\ntemplates:\n  /etc/hostname:\n    when: [create, copy]\n    template: hostname.tpl\n",
                self.created, self.expiry, r = self.release, s = self.serial
            ),
        )
        .unwrap();
        std::fs::write(
            meta.join("templates/hostname.tpl"),
            "{{ container.name }}\n",
        )
        .unwrap();
        run_ok(
            Command::new("tar")
                .arg("-C")
                .arg(&meta)
                .args([
                    "--sort=name",
                    "--mtime=@0",
                    "--owner=0",
                    "--group=0",
                    "-cJf",
                ])
                .arg(dest)
                .args(["metadata.yaml", "templates"]),
        );
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn publish_cmd(cwd: &Path, names: &[&str], to: &Path) -> Command {
    let mut c = Command::new(kiln_bin());
    c.current_dir(cwd)
        .arg("publish")
        .args(names)
        .arg("--to")
        .arg(to)
        .env("NO_COLOR", "1");
    c
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

/// images.json with every item path replaced by its file name (the two tools lay files out
/// differently; everything else must agree).
fn without_paths(mut v: Value) -> Value {
    for product in v["products"].as_object_mut().unwrap().values_mut() {
        for version in product["versions"].as_object_mut().unwrap().values_mut() {
            for item in version["items"].as_object_mut().unwrap().values_mut() {
                item["path"] = Value::String(String::new());
            }
        }
    }
    v
}

/// Every index in `srv` names only files that exist with the hashes it gives.
fn assert_consistent(srv: &Path) {
    let system = std::fs::read_to_string(srv.join("meta/1.0/index-system")).unwrap();
    let user = std::fs::read_to_string(srv.join("meta/1.0/index-user")).unwrap();
    for line in system.lines().chain(user.lines()) {
        let f: Vec<&str> = line.split(';').collect();
        assert_eq!(f.len(), 6, "{line}");
        let dir = srv.join(f[5].trim_matches('/'));
        for file in ["rootfs.tar.xz", "meta.tar.xz", "SHA256SUMS"] {
            assert!(dir.join(file).is_file(), "{line}: no {file}");
        }
    }
    let images = read_json(&srv.join("streams/v1/images.json"));
    let index = read_json(&srv.join("streams/v1/index.json"));
    for p in index["index"]["images"]["products"].as_array().unwrap() {
        assert!(
            images["products"].get(p.as_str().unwrap()).is_some(),
            "{p} not in images.json"
        );
    }
    for product in images["products"].as_object().unwrap().values() {
        for version in product["versions"].as_object().unwrap().values() {
            for item in version["items"].as_object().unwrap().values() {
                let path = srv.join(item["path"].as_str().unwrap());
                let bytes =
                    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert_eq!(item["size"].as_u64().unwrap(), bytes.len() as u64);
                let sum = run_ok(Command::new("sha256sum").arg(&path));
                assert_eq!(item["sha256"].as_str().unwrap(), &sum[..64]);
            }
        }
    }
}

/// Publishes a build with only the unified tarball (release forky) with kiln, and adds the
/// same file to `other` with incus-simplestreams.
fn add_unified(t: &Path, srv: &Path, other: &Path, created: u64) {
    // A build with only the unified tarball, under another release.
    let mut f = Fixture::new(t, "uni", "20231114_2213", created);
    f.release = "forky";
    f.outputs = &["incus-unified"];
    f.write();
    let (code, out, err) = run(publish_cmd(t, &["uni"], srv));
    assert_eq!(code, 0, "{out}{err}");
    assert!(srv
        .join("images/debian/forky/amd64/default/20231114_2213/incus-unified.tar.gz")
        .is_file());
    run_ok(
        Command::new("incus-simplestreams")
            .current_dir(other)
            .env("TZ", "UTC")
            .arg("add")
            .arg(t.join("uni.incus.tar.gz")),
    );
}

/// The build directory of fixture `deb` (serial 20231114_2213) in `srv`, and the LXC index.
fn assert_build_dir(t: &Path, srv: &Path) {
    let build = srv.join("images/debian/trixie/amd64/default/20231114_2213");
    let mut names: Vec<String> = std::fs::read_dir(&build)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "SHA256SUMS",
            "build.json",
            "disk.qcow2",
            "incus.tar.xz",
            "meta.tar.xz",
            "rootfs.squashfs",
            "rootfs.tar.xz"
        ]
    );
    // The copies are the build's bytes, and SHA256SUMS checks them.
    assert_eq!(
        std::fs::read(build.join("rootfs.tar.xz")).unwrap(),
        std::fs::read(t.join("deb.lxc/rootfs.tar.xz")).unwrap()
    );
    run_ok(
        Command::new("sha256sum")
            .current_dir(&build)
            .args(["--strict", "-c", "SHA256SUMS"]),
    );
    assert_eq!(
        std::fs::read_to_string(build.join("SHA256SUMS"))
            .unwrap()
            .lines()
            .count(),
        5
    );
    assert_eq!(
        std::fs::read_to_string(srv.join("meta/1.0/index-system")).unwrap(),
        "debian;trixie;amd64;default;20231114_2213;/images/debian/trixie/amd64/default/20231114_2213/\n"
    );
}

#[test]
fn publish_tree_matches_incus_simplestreams_and_the_lxc_layout() {
    if !tools_present("publish_tree_matches_incus_simplestreams_and_the_lxc_layout") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let created = now() - 3600;
    Fixture::new(t.path(), "deb", "20231114_2213", created).write();
    let srv = t.path().join("srv");
    let (code, out, err) = run(publish_cmd(t.path(), &["deb"], Path::new("srv")));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("added      images/debian/trixie/amd64/default/20231114_2213"),
        "{out}"
    );

    assert_build_dir(t.path(), &srv);
    assert_consistent(&srv);

    // incus-simplestreams on the same files, in a tree of its own.
    let other = t.path().join("other");
    std::fs::create_dir(&other).unwrap();
    run_ok(
        Command::new("incus-simplestreams")
            .current_dir(&other)
            .env("TZ", "UTC")
            .arg("add")
            .arg(t.path().join("deb.incus/incus.tar.xz"))
            .arg(t.path().join("deb.incus/rootfs.squashfs")),
    );
    run_ok(
        Command::new("incus-simplestreams")
            .current_dir(&other)
            .env("TZ", "UTC")
            .arg("add")
            .arg(t.path().join("deb.incus-vm/incus.tar.xz"))
            .arg(t.path().join("deb.incus-vm/disk.qcow2")),
    );
    add_unified(t.path(), &srv, &other, created);
    // Only LXC builds are in LXC's index.
    assert_eq!(
        std::fs::read_to_string(srv.join("meta/1.0/index-system"))
            .unwrap()
            .lines()
            .count(),
        1
    );
    let ours = read_json(&srv.join("streams/v1/images.json"));
    let theirs = read_json(&other.join("streams/v1/images.json"));
    assert_eq!(
        without_paths(ours.clone()),
        without_paths(theirs),
        "images.json"
    );
    // The index's product list is a set (incus-simplestreams keeps its own order; kiln sorts).
    let sorted = |mut v: Value| {
        let list = v["index"]["images"]["products"].as_array_mut().unwrap();
        list.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
        v
    };
    let ours_index = read_json(&srv.join("streams/v1/index.json"));
    assert_eq!(
        ours_index,
        sorted(ours_index.clone()),
        "kiln's products are sorted"
    );
    assert_eq!(
        ours_index,
        sorted(read_json(&other.join("streams/v1/index.json"))),
        "index.json"
    );
    let meta = &ours["products"]["debian:trixie:default:amd64"]["versions"];
    let items = &meta.as_object().unwrap().values().next().unwrap()["items"];
    assert_eq!(
        items["squashfs"]["path"],
        "images/debian/trixie/amd64/default/20231114_2213/rootfs.squashfs"
    );
    // incus-simplestreams verify re-hashes every item of our tree.
    let out = run_ok(
        Command::new("incus-simplestreams")
            .current_dir(&srv)
            .arg("verify"),
    );
    assert!(!out.contains("mismatch"), "{out}");
    // Its list reads the image back with both fingerprints.
    let list = run_ok(
        Command::new("incus-simplestreams")
            .current_dir(&srv)
            .args(["list", "-f", "csv"]),
    );
    assert_eq!(list.lines().count(), 3, "{list}");
    let fp = items["incus.tar.xz"]["combined_squashfs_sha256"]
        .as_str()
        .unwrap();
    assert!(list.contains(fp), "{list}");
}

/// Publishing the same build again with the same key keeps every signature (gpg's carry a
/// time: a new one would differ); naming another key signs the unchanged indexes again.
fn assert_signed_again_only_when_needed(dir: &Path, home: &Path, fpr: &str, signed: &[&str]) {
    let srv = dir.join("srv");
    let signatures = || -> Vec<Vec<u8>> {
        signed
            .iter()
            .map(|f| std::fs::read(srv.join(format!("{f}.asc"))).unwrap())
            .collect()
    };
    // The same publish again keeps every signature (gpg's carry a time: a new one would differ).
    let first = signatures();
    let mut c = publish_cmd(dir, &["deb"], Path::new("srv"));
    c.env("GNUPGHOME", home).args(["--sign-key", fpr]);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        signatures() == first,
        "a publish of nothing new signed again"
    );
    // Another key asked for: the unchanged indexes are signed again, by that key.
    run_ok(Command::new("gpg").env("GNUPGHOME", home).args([
        "--batch",
        "--passphrase",
        "",
        "--quick-gen-key",
        "kiln second <second@example.invalid>",
        "ed25519",
        "sign",
        "never",
    ]));
    let mut c = publish_cmd(dir, &["deb"], Path::new("srv"));
    c.env("GNUPGHOME", home)
        .args(["--sign-key", "second@example.invalid"]);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{out}{err}");
    let status = run_ok(
        Command::new("gpg")
            .env("GNUPGHOME", home)
            .args(["--batch", "--status-fd", "1", "--verify"])
            .arg(srv.join("meta/1.0/index-system.asc"))
            .arg(srv.join("meta/1.0/index-system")),
    );
    assert!(
        !status.contains(fpr),
        "the index is still signed by the first key: {status}"
    );
    assert!(status.contains("GOODSIG"), "{status}");
}

#[test]
fn publish_signs_every_index_and_checksum_file() {
    if !tools_present("publish_signs_every_index_and_checksum_file") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("gnupg");
    let fpr = gpg_home(&home);
    let _agent = GpgAgent(&home);
    Fixture::new(t.path(), "deb", "s1", now() - 60).write();
    let mut c = publish_cmd(t.path(), &["deb"], Path::new("srv"));
    c.env("GNUPGHOME", &home).args(["--sign-key", &fpr]);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{out}{err}");
    let srv = t.path().join("srv");
    let signed = [
        "meta/1.0/index-system",
        "meta/1.0/index-user",
        "streams/v1/index.json",
        "streams/v1/images.json",
        "images/debian/trixie/amd64/default/s1/SHA256SUMS",
    ];
    for f in signed {
        let asc = srv.join(format!("{f}.asc"));
        let text = std::fs::read_to_string(&asc).unwrap();
        assert!(text.starts_with("-----BEGIN PGP SIGNATURE-----"), "{f}");
        run_ok(
            Command::new("gpg")
                .env("GNUPGHOME", &home)
                .args(["--batch", "--verify"])
                .arg(&asc)
                .arg(srv.join(f)),
        );
    }
    assert_signed_again_only_when_needed(t.path(), &home, &fpr, &signed);
    // A tampered index fails to verify: the check above can fail.
    let idx = srv.join("meta/1.0/index-system");
    std::fs::write(&idx, "tampered\n").unwrap();
    let status = Command::new("gpg")
        .env("GNUPGHOME", &home)
        .args(["--batch", "--verify"])
        .arg(srv.join("meta/1.0/index-system.asc"))
        .arg(&idx)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success());
    // An unknown key fails with gpg's message and exit 1, and leaves the indexes as they were.
    let before = std::fs::read(srv.join("streams/v1/images.json")).unwrap();
    Fixture::new(t.path(), "deb2", "s2", now() - 30).write();
    let mut c = publish_cmd(t.path(), &["deb2"], Path::new("srv"));
    c.env("GNUPGHOME", &home)
        .args(["--sign-key", "nobody@example.invalid"]);
    let (code, _, err) = run(c);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("gpg"), "{err}");
    assert_eq!(
        std::fs::read(srv.join("streams/v1/images.json")).unwrap(),
        before
    );
    assert!(!srv.join("images/debian/trixie/amd64/default/s2").exists());
    let hidden: Vec<String> = std::fs::read_dir(srv.join("images/debian/trixie/amd64/default"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "left behind: {hidden:?}");
}

fn opts(to: &Path, keep: usize, now: u64) -> Options {
    Options {
        to: to.to_path_buf(),
        sign_key: None,
        keep,
        now,
        fail_after: None,
    }
}

fn load(base: &Path) -> BuildInput {
    BuildInput::load(base.to_str().unwrap()).unwrap()
}

#[test]
fn publish_keeps_the_newest_builds_drops_expired_ones_and_refuses_conflicts() {
    if !tools_present("publish_keeps_the_newest_builds_drops_expired_ones_and_refuses_conflicts") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let srv = t.path().join("srv");
    // Whole minutes, ten days ago: the CLI below judges expiry against the real clock.
    let base = (now() - 10 * 86_400) / 60 * 60;
    let key = |t: u64| kiln_publish::streams::version_key(t);
    let mut inputs = Vec::new();
    for (i, serial) in ["s1", "s2", "s3", "s4"].iter().enumerate() {
        let name = format!("b{i}");
        let mut f = Fixture::new(t.path(), &name, serial, base + i as u64 * 86_400);
        f.outputs = &["lxc", "incus"];
        inputs.push(load(&f.write()));
    }
    let r = kiln_publish::publish(&inputs, &opts(&srv, 2, base + 4 * 86_400)).unwrap();
    assert_eq!(r.added.len(), 4);
    let removed: Vec<&str> = r.removed.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(
        removed,
        [
            "images/debian/trixie/amd64/default/s2",
            "images/debian/trixie/amd64/default/s1"
        ]
    );
    assert!(r.removed[0].1.contains("--keep"), "{:?}", r.removed);
    assert_eq!(
        r.index,
        ["debian;trixie;amd64;default;s4;/images/debian/trixie/amd64/default/s4/"]
    );
    let versions = read_json(&srv.join("streams/v1/images.json"))["products"]
        ["debian:trixie:default:amd64"]["versions"]
        .clone();
    let keys: Vec<String> = versions.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, [key(base + 2 * 86_400), key(base + 3 * 86_400)]);
    assert!(!srv.join("images/debian/trixie/amd64/default/s1").exists());
    assert_consistent(&srv);

    // The same builds again: nothing changes, byte for byte.
    let snapshot = |p: &Path| -> Vec<Vec<u8>> {
        [
            "meta/1.0/index-system",
            "streams/v1/images.json",
            "streams/v1/index.json",
        ]
        .iter()
        .map(|f| std::fs::read(p.join(f)).unwrap())
        .collect()
    };
    let before = snapshot(&srv);
    let r = kiln_publish::publish(&inputs[2..], &opts(&srv, 2, base + 4 * 86_400)).unwrap();
    assert_eq!(r.unchanged.len(), 2);
    assert!(r.added.is_empty() && r.removed.is_empty());
    assert_eq!(snapshot(&srv), before);

    // Time passes: s3 expires (30 days after its creation), s4 stays.
    let later = base + 2 * 86_400 + 30 * 86_400 + 1;
    let r = kiln_publish::publish(&[], &opts(&srv, 2, later)).unwrap();
    assert_eq!(r.removed.len(), 1);
    let expired = format!("expired at {}", kiln_publish::rfc3339(base + 32 * 86_400));
    assert_eq!(r.removed[0].1, expired);
    assert_consistent(&srv);

    // The same serial with other bytes is refused, naming the directory and the file.
    let mut f = Fixture::new(t.path(), "again", "s4", base + 3 * 86_400);
    f.outputs = &["lxc", "incus"];
    f.marker = "different";
    f.write();
    let (code, _, err) = run(publish_cmd(t.path(), &["again"], &srv));
    assert_input_error(
        code,
        &err,
        &[
            "images/debian/trixie/amd64/default/s4",
            "already published",
            "rootfs.squashfs differs from again.incus/rootfs.squashfs",
        ],
    );

    // No names: expiry and retention only, here with nothing to drop.
    let (code, out, err) = run(publish_cmd(t.path(), &[], &srv));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 image(s) in meta/1.0/index-system"), "{out}");
}

#[test]
fn publish_refuses_bad_input_with_one_message() {
    if !tools_present("publish_refuses_bad_input_with_one_message") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let srv = t.path().join("srv");
    let base = (now() - 10 * 86_400) / 60 * 60;
    // An expired build is reported with its expiry and the setting that changes it.
    let mut f = Fixture::new(t.path(), "old", "s0", base);
    f.expiry = base + 10;
    f.write();
    let (code, _, err) = run(publish_cmd(t.path(), &["old"], &srv));
    let expected = format!(
        "old: the image expired at {} ({})",
        base + 10,
        kiln_publish::rfc3339(base + 10)
    );
    assert_input_error(code, &err, &[&expected, "KILN_IMAGE_EXPIRY"]);

    // A record naming an output that is not there.
    Fixture::new(t.path(), "b3", "s3", base).write();
    std::fs::remove_file(t.path().join("b3.lxc/meta.tar.xz")).unwrap();
    let (code, _, err) = run(publish_cmd(t.path(), &["b3"], &srv));
    assert_input_error(code, &err, &["b3.lxc/meta.tar.xz", "missing"]);
    // Not a container build at all.
    let (code, _, err) = run(publish_cmd(t.path(), &["nothing"], &srv));
    assert_input_error(
        code,
        &err,
        &["nothing.d/image.json", "not a container build"],
    );
    // A serial that would leave the tree.
    let mut f = Fixture::new(t.path(), "evil", "..", base);
    f.outputs = &["lxc"];
    f.write();
    let (code, _, err) = run(publish_cmd(t.path(), &["evil"], &srv));
    assert_input_error(code, &err, &["evil.d/image.json", "field serial"]);
    // Serving a tree that does not exist.
    let mut c = publish_cmd(t.path(), &[], Path::new("nowhere"));
    c.args(["--serve", "127.0.0.1:0"]);
    let (code, _, err) = run(c);
    assert_input_error(code, &err, &["nowhere: no such directory to serve"]);
    assert!(!srv.exists(), "bad input made the tree");
}

#[test]
fn an_interrupted_publish_leaves_valid_indexes() {
    if !tools_present("an_interrupted_publish_leaves_valid_indexes") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let srv = t.path().join("srv");
    let base = now() - 86_400;
    let first = load(&Fixture::new(t.path(), "a", "s1", base).write());
    kiln_publish::publish(&[first], &opts(&srv, 1, now())).unwrap();
    let before = std::fs::read(srv.join("meta/1.0/index-system")).unwrap();
    let steps = [
        "build-files",
        "images.json",
        "index.json",
        "index-system",
        "index-user",
    ];
    for (i, step) in steps.iter().enumerate() {
        let serial = format!("n{i}");
        let next = load(
            &Fixture::new(
                t.path(),
                &format!("b{i}"),
                &serial,
                base + 60 * (i as u64 + 1),
            )
            .write(),
        );
        let mut o = opts(&srv, 1, now());
        o.fail_after = Some(step);
        let err = kiln_publish::publish(&[next], &o).unwrap_err();
        assert!(
            matches!(err, kiln_publish::Error::Injected(s) if s == *step),
            "{err}"
        );
        // Whatever step it stopped after, every index names files that are there.
        assert_consistent(&srv);
        if i == 0 {
            assert_eq!(
                std::fs::read(srv.join("meta/1.0/index-system")).unwrap(),
                before
            );
        }
    }
    // A staged build left by a killed publish is cleared by the next one.
    let stale = srv.join("images/debian/trixie/amd64/default/.zz.kiln-new");
    std::fs::create_dir(&stale).unwrap();
    let r = kiln_publish::publish(&[], &opts(&srv, 1, now())).unwrap();
    assert!(!stale.exists());
    assert_eq!(
        std::fs::read(srv.join("meta/1.0/index-system")).unwrap(),
        std::fs::read(srv.join("meta/1.0/index-user")).unwrap()
    );
    assert_eq!(
        r.index,
        ["debian;trixie;amd64;default;n4;/images/debian/trixie/amd64/default/n4/"]
    );
    let left: Vec<String> = std::fs::read_dir(srv.join("images/debian/trixie/amd64/default"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["n4"]);
    assert_consistent(&srv);
}

#[test]
fn a_killed_publish_leaves_valid_indexes() {
    if !tools_present("a_killed_publish_leaves_valid_indexes") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let srv = t.path().join("srv");
    let base = now() - 86_400;
    let big = |name: &str, serial: &str, created: u64| {
        Fixture::new(t.path(), name, serial, created).write();
        run_ok(
            Command::new("dd")
                .args(["if=/dev/urandom", "bs=1M", "count=64", "status=none"])
                .arg(format!(
                    "of={}/{name}.incus/rootfs.squashfs",
                    t.path().display()
                )),
        );
    };
    big("a", "s0", base);
    let (code, out, err) = run(publish_cmd(t.path(), &["a"], Path::new("srv")));
    assert_eq!(code, 0, "{out}{err}");
    // SIGKILL a publish of 64 MiB (keeping one build, so each publish also removes one) as
    // soon as it reaches a point: its staged copy appears, the build is renamed into place,
    // images.json names it, index-system names it. Wherever the kill lands, the indexes name
    // files that are there, and the next publish completes.
    let dir = srv.join("images/debian/trixie/amd64/default");
    let points = ["staging", "in place", "images.json", "index-system"];
    let mut killed = 0;
    for (i, point) in points.into_iter().enumerate() {
        let name = format!("k{i}");
        let serial = format!("s{}", i + 1);
        big(&name, &serial, base + 60 * (i as u64 + 1));
        let reached = || match point {
            "staging" => dir.join(format!(".{serial}.kiln-new")).exists(),
            "in place" => dir.join(&serial).exists(),
            "images.json" => std::fs::read_to_string(srv.join("streams/v1/images.json"))
                .is_ok_and(|t| t.contains(&format!("/{serial}/"))),
            _ => std::fs::read_to_string(srv.join("meta/1.0/index-system"))
                .is_ok_and(|t| t.contains(&serial)),
        };
        let mut c = publish_cmd(t.path(), &[&name], Path::new("srv"));
        c.args(["--keep", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = c.spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !reached() && child.try_wait().unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "publish hangs");
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        let _ = child.kill();
        let status = child.wait().unwrap();
        if !status.success() {
            killed += 1;
        }
        assert_consistent(&srv);
        let index = std::fs::read_to_string(srv.join("meta/1.0/index-system")).unwrap();
        eprintln!(
            "killed after {point}: {status}; build in place {}, indexed {}",
            dir.join(&serial).exists(),
            index.contains(&serial)
        );
    }
    eprintln!(
        "{killed} of {} publishes killed before they finished",
        points.len()
    );
    assert!(killed > 0, "no publish was killed before it finished");
    let (code, out, err) = run(publish_cmd(t.path(), &[], Path::new("srv")));
    assert_eq!(code, 0, "{out}{err}");
    assert_consistent(&srv);
    let hidden = run_ok(Command::new("find").arg(&srv).args(["-name", ".*.kiln-*"]));
    assert!(hidden.is_empty(), "left behind: {hidden}");
}

#[test]
fn concurrent_publishes_into_one_tree_are_serialised() {
    if !tools_present("concurrent_publishes_into_one_tree_are_serialised") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let srv = t.path().join("srv");
    let releases = ["r1", "r2", "r3", "r4"];
    let inputs: Vec<BuildInput> = releases
        .iter()
        .map(|r| {
            let mut f = Fixture::new(t.path(), r, "s1", now() - 60);
            f.release = r;
            load(&f.write())
        })
        .collect();
    std::thread::scope(|s| {
        for input in &inputs {
            let srv = &srv;
            s.spawn(move || {
                kiln_publish::publish(std::slice::from_ref(input), &opts(srv, 3, now())).unwrap()
            });
        }
    });
    let index = std::fs::read_to_string(srv.join("meta/1.0/index-system")).unwrap();
    assert_eq!(index.lines().count(), 4, "{index}");
    let products =
        read_json(&srv.join("streams/v1/index.json"))["index"]["images"]["products"].clone();
    assert_eq!(products.as_array().unwrap().len(), 4, "{products}");
    assert_consistent(&srv);
}

fn raw_get(port: u16, target: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn serve_speaks_https_to_wget_without_root() {
    if !tools_present("serve_speaks_https_to_wget_without_root") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let p = t.path();
    Fixture::new(p, "deb", "s1", now() - 60).write();
    let (code, out, err) = run(publish_cmd(p, &["deb"], Path::new("srv")));
    assert_eq!(code, 0, "{out}{err}");
    test_certificate(p);
    let served = Served::start(
        &kiln_bin(),
        p,
        Path::new("srv"),
        Some((&p.join("cert.pem"), &p.join("key.pem"))),
    );
    let wget = |target: &str, out: &Path| {
        Command::new("wget")
            .env("WGETRC", p.join("wgetrc"))
            .args(["-q", "-T", "10", "-t", "1", "-O"])
            .arg(out)
            .arg(format!("https://127.0.0.1:{}{target}", served.port))
            .status()
            .unwrap()
            .success()
    };
    // The doubled slash lxc-download sends, over TLS, with the certificate trusted.
    assert!(wget("//meta/1.0/index-system", &p.join("got-index")));
    assert_eq!(
        std::fs::read(p.join("got-index")).unwrap(),
        std::fs::read(p.join("srv/meta/1.0/index-system")).unwrap()
    );
    assert!(wget(
        "/images/debian/trixie/amd64/default/s1/rootfs.squashfs",
        &p.join("got-squashfs")
    ));
    assert_eq!(
        std::fs::read(p.join("got-squashfs")).unwrap(),
        std::fs::read(p.join("deb.incus/rootfs.squashfs")).unwrap()
    );
    assert!(!wget("/nothing", &p.join("got-nothing")));
    // Without the certificate wget refuses the server: the TLS check is real.
    std::fs::write(p.join("empty-wgetrc"), "").unwrap();
    let untrusted = Command::new("wget")
        .env("WGETRC", p.join("empty-wgetrc"))
        .args(["-nv", "-T", "10", "-t", "1", "-O", "/dev/null"])
        .arg(format!(
            "https://127.0.0.1:{}/meta/1.0/index-system",
            served.port
        ))
        .output()
        .unwrap();
    assert!(!untrusted.status.success());
    let why = String::from_utf8_lossy(&untrusted.stderr);
    assert!(why.contains("certificate"), "{why}");
    assert!(
        served.stop().success(),
        "SIGINT must stop the server cleanly"
    );
}

#[test]
fn lxc_download_creates_the_published_rootfs_over_https_only() {
    let test = "lxc_download_creates_the_published_rootfs_over_https_only";
    if !tools_present(test) {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        kiln_testkit::skip(test, "lxc-create -t download needs root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let p = t.path();
    Fixture::new(p, "deb", "20231114_2213", now() - 60).write();
    let (code, out, err) = run(publish_cmd(p, &["deb"], Path::new("srv")));
    assert_eq!(code, 0, "{out}{err}");
    test_certificate(p);

    // Plain HTTP: the template speaks HTTPS only, so it must fail; the server itself answers
    // the doubled slash the template sends and refuses paths out of the tree.
    let plain = Served::start(&kiln_bin(), p, Path::new("srv"), None);
    let got = raw_get(plain.port, "//meta/1.0/index-system");
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
    assert!(
        got.ends_with("/images/debian/trixie/amd64/default/20231114_2213/\n"),
        "{got}"
    );
    assert!(raw_get(plain.port, "/../deb.d/image.json").starts_with("HTTP/1.1 400"));
    assert!(raw_get(plain.port, "/images/../../deb.d/image.json").starts_with("HTTP/1.1 400"));
    std::os::unix::fs::symlink(p.join("deb.d"), p.join("srv/escape")).unwrap();
    assert!(raw_get(plain.port, "/escape/image.json").starts_with("HTTP/1.1 404"));
    std::fs::remove_file(p.join("srv/escape")).unwrap();
    let download = |port, name| Download {
        dir: p,
        port,
        name,
        dist: "debian",
        release: "trixie",
        arch: "amd64",
    };
    let (ok, log) = download(plain.port, "c0").run();
    assert!(!ok, "lxc-create over plain HTTP succeeded:\n{log}");
    assert!(!p.join("lxc/c0/rootfs/etc/kiln-marker").exists());
    assert!(plain.stop().success());

    // HTTPS with the test certificate trusted through WGETRC.
    let tls = Served::start(
        &kiln_bin(),
        p,
        Path::new("srv"),
        Some((&p.join("cert.pem"), &p.join("key.pem"))),
    );
    let (ok, log) = download(tls.port, "c1").run();
    assert!(ok, "lxc-create failed:\n{log}");
    let rootfs = p.join("lxc/c1/rootfs");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc/kiln-marker")).unwrap(),
        "20231114_2213\n"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc/hostname")).unwrap(),
        "c1\n"
    );
    let config = std::fs::read_to_string(p.join("lxc/c1/config")).unwrap();
    assert!(config.contains("lxc.uts.name = c1"), "{config}");
    assert!(config.contains("lxc.arch = linux64"), "{config}");
    let status = tls.stop();
    assert!(status.success(), "{status}");
}
