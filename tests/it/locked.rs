//! Building from a lock, the parts that need no root: the `.deb` store filled from a `file:`
//! mirror and from one served on 127.0.0.1 (made with dpkg-deb and dpkg-scanpackages, as in
//! `lock.rs`), each file once, checked against Size and SHA256 (a mismatch names the package
//! and the file and stores nothing), `--offline` with a cold store listing what is missing, the
//! local repository laid out from the store, and a package the build wants that the lock lacks
//! stopping the build before anything runs.

use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use kiln_pipeline::lock::Lock;
use kiln_pipeline::locked::{self, Store};

use crate::lock::{fixture, have_tools, lock, mirror, sh, Mirror, SUITE};
use crate::support::{kiln, run, Tree};

/// The fixture mirror, its elements and a lock of them (`kiln.lock` in `work`).
struct Locked {
    mirror: Mirror,
    tree: Tree,
    work: tempfile::TempDir,
}

impl Locked {
    fn new() -> Self {
        let mirror = mirror();
        let tree = fixture(&mirror);
        let work = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let (code, _, err) = lock(&tree, cache.path(), &work.path().join("kiln.lock"), &[]);
        assert_eq!(code, 0, "{err}");
        Self { mirror, tree, work }
    }

    fn path(&self) -> PathBuf {
        self.work.path().join("kiln.lock")
    }

    fn read(&self) -> Lock {
        Lock::read(&self.path()).unwrap()
    }
}

fn sha256_of(p: &Path) -> String {
    sh(&format!("sha256sum '{}' | cut -d' ' -f1", p.display()))
        .trim()
        .to_string()
}

/// What the store directory holds besides finished files (temporary names).
fn leftovers(store: &Store) -> Vec<String> {
    fs::read_dir(store.dir())
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_store_is_filled_once_from_a_file_mirror_and_the_repository_is_the_lock() {
    if !have_tools() {
        kiln_testkit::skip(
            "the_store_is_filled_once_from_a_file_mirror_and_the_repository_is_the_lock",
            "dpkg-dev and apt are needed to make and read a local mirror",
        );
        return;
    }
    let l = Locked::new();
    let lock = l.read();
    let debs = locked::debs(&lock, &l.path()).unwrap();
    assert_eq!(debs.len(), 4);
    let cache = tempfile::tempdir().unwrap();
    let store = Store::new(cache.path());
    let uris = locked::uris(&lock, &l.path()).unwrap();
    assert_eq!(uris, [format!("file://{}", l.mirror.root().display())]);
    assert_eq!(store.fill(&debs, &uris, false).unwrap(), 4);
    // Once: a second fill (and an offline one) fetches nothing.
    assert_eq!(store.fill(&debs, &uris, false).unwrap(), 0);
    assert_eq!(store.fill(&debs, &uris, true).unwrap(), 0);
    for d in &debs {
        let p = store.path(d);
        assert_eq!(p, cache.path().join("debs/sha256").join(&d.sha256));
        assert_eq!(sha256_of(&p), d.sha256, "{}", d.package);
        assert_eq!(
            fs::read(&p).unwrap(),
            fs::read(l.mirror.root().join(&d.filename)).unwrap()
        );
    }
    assert!(leftovers(&store).is_empty(), "{:?}", leftovers(&store));

    // The local repository: the lock's stanzas as its index, a Release with their digest, the
    // pool hard-linked from the store, and the sources and apt configuration for the chroot.
    let repo = l.work.path().join("repo");
    locked::make_repo(&lock, &debs, &store, &repo, SUITE, "amd64").unwrap();
    let packages = repo.join(format!("dists/{SUITE}/main/binary-amd64/Packages"));
    assert_eq!(
        fs::read_to_string(&packages).unwrap(),
        fs::read_to_string(l.path()).unwrap()
    );
    let release = fs::read_to_string(repo.join(format!("dists/{SUITE}/Release"))).unwrap();
    let size = fs::metadata(&packages).unwrap().len();
    assert!(
        release.contains(&format!(
            "\nSHA256:\n {} {size} main/binary-amd64/Packages\n",
            sha256_of(&packages)
        )),
        "{release}"
    );
    assert!(
        release.contains(&format!("\nSuite: {SUITE}\n")),
        "{release}"
    );
    for d in &debs {
        let in_repo = fs::metadata(repo.join(&d.filename)).unwrap();
        let stored = fs::metadata(store.path(d)).unwrap();
        assert_eq!(
            (in_repo.dev(), in_repo.ino()),
            (stored.dev(), stored.ino()),
            "{} is not a hard link of the store's file",
            d.filename
        );
    }
    assert_eq!(
        fs::read_to_string(repo.join("kiln-lock.list")).unwrap(),
        format!(
            "deb [trusted=yes] file:{} {SUITE} main\n",
            locked::CHROOT_PATH
        )
    );
    let conf = fs::read_to_string(repo.join("apt.conf")).unwrap();
    assert!(conf.contains("Dir::Etc::SourceList \"/tmp/kiln-lock-repo/kiln-lock.list\";"));
    assert!(conf.contains("Dir::Etc::SourceParts \"/tmp/kiln-lock-repo/sources.list.d\";"));
    assert!(repo.join("sources.list.d").is_dir());
    // apt reads the repository as an archive: a simulated install from it alone finds the lock's
    // packages at the lock's versions.
    let state = tempfile::tempdir().unwrap();
    let s = state.path();
    let out = sh(&format!(
        "set -e; mkdir -p {s}/lists/partial {s}/cache/archives/partial {s}/etc/sources.list.d; : > {s}/status
        printf 'deb [trusted=yes] file:{repo} {SUITE} main\\n' > {s}/etc/sources.list
        o=\"-o Dir::State::Lists={s}/lists -o Dir::State::status={s}/status -o Dir::Cache={s}/cache -o Dir::Etc::SourceList={s}/etc/sources.list -o Dir::Etc::SourceParts={s}/etc/sources.list.d -o Dir::Etc::Parts=/nonexistent -o APT::Architecture=amd64 -o Debug::NoLocking=1 -o APT::Install-Recommends=0\"
        apt-get $o -qq update >/dev/null
        apt-get $o -s install app-server",
        s = s.display(),
        repo = repo.display()
    ));
    assert!(out.contains("Inst libfoo (2.0 "), "{out}");
    assert!(out.contains("Inst app-server (1.0 "), "{out}");
    drop(l.tree);
}

#[test]
fn a_file_that_does_not_match_the_lock_names_the_package_and_stores_nothing() {
    if !have_tools() {
        kiln_testkit::skip(
            "a_file_that_does_not_match_the_lock_names_the_package_and_stores_nothing",
            "dpkg-dev and apt are needed to make and read a local mirror",
        );
        return;
    }
    let l = Locked::new();
    let lock = l.read();
    let debs = locked::debs(&lock, &l.path()).unwrap();
    let uris = locked::uris(&lock, &l.path()).unwrap();
    let libfoo = debs.iter().find(|d| d.package == "libfoo").unwrap();
    let on_mirror = l.mirror.root().join(&libfoo.filename);
    let original = fs::read(&on_mirror).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let store = Store::new(cache.path());
    // Another size, then the same size with other bytes.
    for (bytes, what) in [
        (b"not a deb".to_vec(), "Size"),
        (vec![b'x'; original.len()], "SHA256"),
    ] {
        fs::write(&on_mirror, &bytes).unwrap();
        let e = store.fill(&debs, &uris, false).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!(
                "libfoo: pool/main/libfoo_2.0_all.deb (file://{}/pool/main/libfoo_2.0_all.deb) does not match the lock ({what} ",
                l.mirror.root().display()
            )),
            "{msg}"
        );
        assert!(msg.contains("nothing was stored"), "{msg}");
        assert!(!store.path(libfoo).exists());
        assert!(leftovers(&store).is_empty(), "{:?}", leftovers(&store));
    }
    // The right file again: it is stored.
    fs::write(&on_mirror, &original).unwrap();
    store.fill(&debs, &uris, false).unwrap();
    assert_eq!(sha256_of(&store.path(libfoo)), libfoo.sha256);
}

#[test]
fn offline_with_a_cold_store_lists_what_is_missing() {
    if !have_tools() {
        kiln_testkit::skip(
            "offline_with_a_cold_store_lists_what_is_missing",
            "dpkg-dev and apt are needed to make and read a local mirror",
        );
        return;
    }
    let l = Locked::new();
    let lock = l.read();
    let debs = locked::debs(&lock, &l.path()).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let store = Store::new(cache.path());
    // No URI is even looked at offline.
    let e = store
        .fill(&debs, &["http://192.0.2.1/unreachable".to_string()], true)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "--offline: 4 of the lock's packages are not in the .deb store {}: app-server, libfoo, tool-debian, web-common; run the build once without --offline to fetch them",
            store.dir().display()
        )
    );
    assert!(!store.dir().exists());
}

/// A file server on 127.0.0.1 for `root`, for `requests` requests; returns its URL.
fn serve(root: PathBuf, requests: usize) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for _ in 0..requests {
            let Ok((mut c, _)) = listener.accept() else {
                return;
            };
            let mut buf = [0u8; 4096];
            let n = c.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            let path = req
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .trim_start_matches('/')
                .to_string();
            let reply = match fs::read(root.join(&path)) {
                Ok(body) => {
                    let mut r =
                        format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())
                            .into_bytes();
                    r.extend(body);
                    r
                }
                Err(_) => b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
            };
            let _ = c.write_all(&reply);
        }
    });
    format!("http://127.0.0.1:{port}")
}

#[test]
fn the_store_is_filled_over_http_trying_each_uri_of_the_lock() {
    if !have_tools() || !crate::lock::which("curl") {
        kiln_testkit::skip(
            "the_store_is_filled_over_http_trying_each_uri_of_the_lock",
            "dpkg-dev, apt and curl are needed to make and serve a local mirror",
        );
        return;
    }
    let l = Locked::new();
    let lock = l.read();
    let debs = locked::debs(&lock, &l.path()).unwrap();
    // The first URI serves nothing (404 for each file), the second is the mirror.
    let empty = tempfile::tempdir().unwrap();
    let uris = vec![
        serve(empty.path().to_path_buf(), debs.len() * 3),
        serve(l.mirror.root(), debs.len()),
    ];
    let cache = tempfile::tempdir().unwrap();
    let store = Store::new(cache.path());
    assert_eq!(store.fill(&debs, &uris, false).unwrap(), 4);
    for d in &debs {
        assert_eq!(sha256_of(&store.path(d)), d.sha256);
    }
}

#[test]
fn a_package_the_lock_lacks_stops_the_build_before_anything_runs() {
    if !have_tools() {
        kiln_testkit::skip(
            "a_package_the_lock_lacks_stops_the_build_before_anything_runs",
            "dpkg-dev and apt are needed to make and read a local mirror",
        );
        return;
    }
    let l = Locked::new();
    let cache = tempfile::tempdir().unwrap();
    let keys = |extra: &[&str]| {
        let mut c = kiln(&[l.tree.path()], cache.path());
        c.args([
            "build",
            "--print-cache-keys",
            "test-os",
            "app",
            "-n",
            "--lock",
        ])
        .arg(l.path())
        .args(extra);
        run(c)
    };
    // The locked request's keys hold the lock's digest instead of the mirror's state.
    let (code, out, err) = keys(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("InRelease"), "{out}");
    let (code, _, err) = keys(&["-p", "unrelated,extra-tool"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "{}: the build wants packages that the lock does not hold: extra-tool, unrelated; re-lock with `kiln lock --update`",
            l.path().display()
        )),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // A missing lock is an input error naming it.
    let mut c = kiln(&[l.tree.path()], cache.path());
    c.args(["build", "--print-cache-keys", "test-os", "-n", "--lock"])
        .arg(l.work.path().join("nothing.lock"));
    let (code, _, err) = run(c);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("nothing.lock: no such lock file; make the lock with `kiln lock`"),
        "{err}"
    );
    // A lock of another architecture is an input error naming the side file.
    let meta = Lock::meta_path(&l.path());
    let text = fs::read_to_string(&meta).unwrap();
    fs::write(
        &meta,
        text.replace("Architectures: amd64", "Architectures: arm64"),
    )
    .unwrap();
    let (code, _, err) = keys(&[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "{}: the lock is for arm64, the build for amd64",
            meta.display()
        )),
        "{err}"
    );
}
