//! What the cache keys cover, on real builds: a variable no hook reads (a CI build number) is an
//! output-cache hit and never stored in plain text, a declared host file's new content is named
//! as the change, and a security update in the image's security suite rebuilds the image, which
//! then carries the new version.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cache::{explain, explain_with, first_miss, resolved_codename};
use crate::failures::fixture_elements;
use crate::harness::{assert_no_leftovers, build, capable, heavy, sh, which, work, Timer};
use crate::rootfs::rootfs_tar;

/// A value that differs on every run, as `$RANDOM` or a CI build number does.
fn random() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}{nanos}", std::process::id())
}

/// Every `meta.json` of the shared cache's phase layers.
fn layer_metas() -> Vec<(PathBuf, String)> {
    let dir = crate::harness::cache().join("phases");
    fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let p = e.path().join("meta.json");
                    fs::read_to_string(&p).ok().map(|t| (p, t))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn unrelated_variables_are_output_cache_hits_and_values_stay_secret() {
    if !capable("unrelated_variables_are_output_cache_hits_and_values_stay_secret") {
        return;
    }
    let t = fixture_elements(&rootfs_tar());
    t.el("keyed")
        .hook(
            "install",
            "50-keyed",
            "echo \"${KILN_TEST_NAMED:-unset}\" > /etc/keyed",
        )
        .file("cache-inputs", "$KILN_TEST_HOSTFILE\n");
    let h = heavy();
    let _t = Timer::start("unrelated_variables_are_output_cache_hits_and_values_stay_secret");
    let dir = work("keys-unrelated");
    let hostfile = dir.join("hostfile");
    fs::write(&hostfile, "one\n").unwrap();
    let hostfile_s = hostfile.display().to_string();
    let secret = format!("kiln-secret-{}", random());
    let args = ["-n", "test-rootfs", "keyed", "-t", "tar", "-o", "bn"];
    let (n1, n2) = (random(), format!("{}9", random()));
    let env = |build_number: &str, job: &str| -> Vec<(&'static str, String)> {
        vec![
            ("BUILD_NUMBER", build_number.to_string()),
            ("CI_JOB_ID", job.to_string()),
            ("DIB_KILN_TEST_SECRET", secret.clone()),
            ("KILN_TEST_NAMED", secret.clone()),
            ("KILN_TEST_HOSTFILE", hostfile_s.clone()),
        ]
    };
    let first = env(&n1, "job-a");
    let first_refs: Vec<(&str, &str)> = first.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let o = build(&dir, Some(t.path()), &args, &first_refs);
    assert_eq!(o.code, 0, "{}", o.stderr);
    // A new build number, another job id and a variable nobody reads: everything hits.
    let mut second = env(&n2, "job-b");
    second.push(("FOO", "bar".to_string()));
    let second_refs: Vec<(&str, &str)> = second.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (steps, outputs) = explain(&dir, t.path(), &args, &second_refs);
    assert!(steps.iter().all(|s| s.1 == "hit"), "{steps:?}");
    assert_eq!(outputs, "hit");
    let o = build(&dir, Some(t.path()), &args, &second_refs);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.log.contains("cache: output hit"), "{}", o.log);
    // The layers record the variables hooks can read, never their values, and nothing of the
    // variables no hook reads.
    let metas = layer_metas();
    let ours: Vec<_> = metas
        .iter()
        .filter(|(_, m)| m.contains("\"DIB_KILN_TEST_SECRET\""))
        .collect();
    assert!(
        ours.iter().any(|(_, m)| m.contains("\"KILN_TEST_NAMED\"")),
        "no stored layer records the variables this build's hooks read"
    );
    for (p, m) in &ours {
        for unread in ["BUILD_NUMBER", "CI_JOB_ID", "\"FOO\""] {
            assert!(!m.contains(unread), "{} keys {unread}", p.display());
        }
    }
    for (p, m) in &metas {
        assert!(
            !m.contains(&secret),
            "{} holds a value in plain text",
            p.display()
        );
    }
    // The declared host file, same name, new content: every phase misses, and says why.
    fs::write(&hostfile, "two\n").unwrap();
    let (steps, outputs) = explain(&dir, t.path(), &args, &second_refs);
    let (step, why) = first_miss(&steps).expect("a miss");
    assert_eq!(step, "root", "{steps:?}");
    assert!(
        why.iter().any(|r| r == "KILN_TEST_HOSTFILE file changed"),
        "{why:?}"
    );
    assert_eq!(outputs, "miss");
    assert_no_leftovers(&dir, &h);
}

/// A local apt repository served over HTTP on 127.0.0.1 (a host `file:` path is not visible
/// inside the chroot), acting as the image's security suite (`<codename>-security`).
struct SecuritySuite {
    root: PathBuf,
    suite: String,
    server: Child,
    port: u16,
}

impl Drop for SecuritySuite {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

const PROBE: &str = "kiln-sec-probe";

impl SecuritySuite {
    fn start(root: &Path, suite: String) -> Self {
        fs::create_dir_all(root.join("pool/main")).unwrap();
        // A free port: bound here, released, then taken by the server.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = Command::new("/usr/bin/python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg("--directory")
            .arg(root)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        let s = Self {
            root: root.to_path_buf(),
            suite,
            server,
            port,
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the test's HTTP server did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    /// Adds version `version` of the probe package (its file /usr/share/kiln-sec-probe/version
    /// holds the version) and rewrites the suite's Packages and Release.
    fn publish(&self, version: &str) {
        let pkg = self.root.join(format!("../pkg-{version}"));
        let data = pkg.join(format!("usr/share/{PROBE}"));
        fs::create_dir_all(&data).unwrap();
        fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
        fs::write(data.join("version"), format!("{version}\n")).unwrap();
        fs::write(
            pkg.join("DEBIAN/control"),
            format!("Package: {PROBE}\nVersion: {version}\nArchitecture: all\nMaintainer: kiln tests <kiln@localhost>\nDescription: kiln's security-suite probe\n"),
        )
        .unwrap();
        let deb = self
            .root
            .join(format!("pool/main/{PROBE}_{version}_all.deb"));
        sh(&format!(
            "dpkg-deb --root-owner-group --build '{}' '{}' >/dev/null",
            pkg.display(),
            deb.display()
        ));
        let arch = sh("dpkg --print-architecture").trim().to_string();
        let bin = format!("main/binary-{arch}");
        let suite = &self.suite;
        let dists = self.root.join("dists").join(suite);
        fs::create_dir_all(dists.join(&bin)).unwrap();
        sh(&format!(
            "cd '{}' && dpkg-scanpackages --multiversion pool /dev/null 2>/dev/null > 'dists/{suite}/{bin}/Packages'",
            self.root.display()
        ));
        let packages = fs::read(dists.join(&bin).join("Packages")).unwrap();
        let sha = sh(&format!(
            "sha256sum '{}' | cut -d' ' -f1",
            dists.join(&bin).join("Packages").display()
        ));
        let stamp = sh("date -u -R");
        fs::write(
            dists.join("Release"),
            format!(
                "Suite: {suite}\nDate: {}\nArchitectures: {arch} all\nComponents: main\nSHA256:\n {} {} {bin}/Packages\n",
                stamp.trim(),
                sha.trim(),
                packages.len()
            ),
        )
        .unwrap();
    }

    /// What DIB_DEBIAN_SECURITY_MIRROR is set to. The Debian element writes the security
    /// source as `deb ${DIB_DEBIAN_SECURITY_MIRROR} ${DIB_DEBIAN_SECURITY_SUBPATH} main`, so
    /// the options of an unsigned test suite can ride in front of the URI.
    fn mirror(&self) -> String {
        format!("[trusted=yes] http://127.0.0.1:{}", self.port)
    }
}

/// The probe's version as the image at `tar` carries it.
fn probe_version(tar: &Path) -> String {
    sh(&format!(
        "tar -xOf '{}' ./usr/share/{PROBE}/version",
        tar.display()
    ))
    .trim()
    .to_string()
}

#[test]
fn a_security_update_rebuilds_and_lands_in_the_image() {
    if !capable("a_security_update_rebuilds_and_lands_in_the_image") {
        return;
    }
    for tool in ["dpkg-deb", "dpkg-scanpackages"] {
        if which(tool).is_none() {
            kiln_testkit::skip(
                "a_security_update_rebuilds_and_lands_in_the_image",
                &format!("needs `{tool}` (scripts/install-host-deps)"),
            );
            return;
        }
    }
    let h = heavy();
    let _t = Timer::start("a_security_update_rebuilds_and_lands_in_the_image");
    let dir = work("keys-security");
    // The image's security suite is its release's codename's (kiln resolves `stable` once).
    let codename = resolved_codename(
        &dir,
        &["debian-minimal", "-t", "tar"],
        &[("DIB_RELEASE", ""), ("DIB_DEBIAN_INSTALL_KERNEL", "0")],
    );
    let suite = SecuritySuite::start(&dir.join("repo"), format!("{codename}-security"));
    suite.publish("1");
    let mirror = suite.mirror();
    // Debian's default release (no DIB_RELEASE), a root filesystem without a kernel.
    let env = [
        ("DIB_RELEASE", ""),
        ("DIB_DEBIAN_INSTALL_KERNEL", "0"),
        ("DIB_DEBIAN_SECURITY_MIRROR", mirror.as_str()),
    ];
    let args = ["debian-minimal", "-p", PROBE, "-t", "tar", "-o", "sec"];
    let o = build(&dir, None, &args, &env);
    assert_eq!(o.code, 0, "{}\n{}", o.stderr, o.log);
    assert_eq!(probe_version(&dir.join("sec.tar")), "1");
    // Nothing changed yet: every step and the outputs hit.
    let (steps, outputs) = explain_with(&dir, None, &args, &env);
    assert!(steps.iter().all(|s| s.1 == "hit"), "{steps:?}");
    assert_eq!(outputs, "hit");
    // A security update: version 2 in the security suite only.
    suite.publish("2");
    let (steps, outputs) = explain_with(&dir, None, &args, &env);
    let (step, why) = first_miss(&steps).expect("a miss after the security update");
    assert_eq!(step, "root", "{steps:?}");
    assert!(
        why.iter()
            .any(|r| r.starts_with(&format!("{} InRelease changed", suite.suite))),
        "{why:?}"
    );
    assert_eq!(outputs, "miss");
    let o = build(&dir, None, &args, &env);
    assert_eq!(o.code, 0, "{}\n{}", o.stderr, o.log);
    assert!(o.log.contains("cache: root miss"), "{}", o.log);
    assert_eq!(probe_version(&dir.join("sec.tar")), "2");
    drop(suite);
    assert_no_leftovers(&dir, &h);
}
