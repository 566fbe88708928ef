//! The real clients of published images, driven the same way by the integration tests (fixture
//! builds) and the end-to-end tests (the suite's Debian build): `kiln publish --serve` in the
//! background, a self-signed certificate for 127.0.0.1 with a wgetrc trusting it, a throwaway
//! GnuPG home with one signing key, and `lxc-create -t download`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

/// Runs `cmd`, fails the test with what it printed unless it succeeds, and returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kiln publish --to SRV --serve 127.0.0.1:0` in the background (HTTPS with `tls`), on the
/// port it printed; stopped with SIGINT by [`Served::stop`], killed on drop.
pub struct Served {
    child: std::process::Child,
    /// The port it listens on.
    pub port: u16,
}

impl Served {
    /// Starts `kiln` (the binary at `kiln`) serving `srv`, relative to `cwd`.
    pub fn start(kiln: &Path, cwd: &Path, srv: &Path, tls: Option<(&Path, &Path)>) -> Self {
        let mut c = Command::new(kiln);
        c.current_dir(cwd)
            .args(["publish", "--to"])
            .arg(srv)
            .args(["--serve", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((cert, key)) = tls {
            c.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        let mut child = c.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stderr.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Served { child, port }
    }

    /// Stops the server with SIGINT and returns how it exited.
    pub fn stop(mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap()),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed certificate for 127.0.0.1 (`cert.pem`, `key.pem`) and a `wgetrc` trusting
/// it, in `dir`.
pub fn test_certificate(dir: &Path) {
    run_ok(
        Command::new("openssl")
            .current_dir(dir)
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
            ])
            .args([
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
            ])
            .stderr(Stdio::null()),
    );
    std::fs::write(
        dir.join("wgetrc"),
        format!("ca_certificate = {}\n", dir.join("cert.pem").display()),
    )
    .unwrap();
}

/// A throwaway GNUPGHOME at `dir` (created) with one signing key; returns the key's fingerprint.
/// Keep a [`GpgAgent`] for it so the agent gpg starts is stopped.
pub fn gpg_home(dir: &Path) -> String {
    std::fs::create_dir(dir).unwrap();
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    run_ok(Command::new("gpg").env("GNUPGHOME", dir).args([
        "--batch",
        "--passphrase",
        "",
        "--quick-gen-key",
        "kiln test <kiln@example.invalid>",
        "ed25519",
        "sign",
        "never",
    ]));
    let out = run_ok(Command::new("gpg").env("GNUPGHOME", dir).args([
        "--batch",
        "--with-colons",
        "--list-secret-keys",
    ]));
    out.lines()
        .find(|l| l.starts_with("fpr:"))
        .and_then(|l| l.split(':').nth(9))
        .unwrap()
        .to_string()
}

/// Stops the gpg-agent of a GNUPGHOME on drop.
pub struct GpgAgent<'a>(pub &'a Path);

impl Drop for GpgAgent<'_> {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.0)
            .args(["--kill", "all"])
            .status();
    }
}

/// What `lxc-create -t download` is asked for.
pub struct Download<'a> {
    /// The directory holding `wgetrc` (see [`test_certificate`]); `lxc/` (the lxcpath) and
    /// `cache/` (`LXC_CACHE_PATH`) are made in it.
    pub dir: &'a Path,
    /// The server's port on 127.0.0.1.
    pub port: u16,
    /// The container's name.
    pub name: &'a str,
    /// `-d`, `-r`, `-a`.
    pub dist: &'a str,
    /// The release.
    pub release: &'a str,
    /// The architecture (Debian's name).
    pub arch: &'a str,
}

impl Download<'_> {
    /// Runs `lxc-create -P DIR/lxc -t download` with `WGETRC` and `LXC_CACHE_PATH` of `dir`;
    /// returns whether it succeeded and what it printed.
    pub fn run(&self) -> (bool, String) {
        for d in ["lxc", "cache"] {
            std::fs::create_dir_all(self.dir.join(d)).unwrap();
        }
        let out = Command::new("lxc-create")
            .arg("-P")
            .arg(self.dir.join("lxc"))
            .args(["-t", "download", "-n", self.name, "--", "--server"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["-d", self.dist, "-r", self.release, "-a", self.arch])
            .env("WGETRC", self.dir.join("wgetrc"))
            .env("LXC_CACHE_PATH", self.dir.join("cache"))
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// The container's root filesystem.
    pub fn rootfs(&self) -> std::path::PathBuf {
        self.dir.join("lxc").join(self.name).join("rootfs")
    }

    /// The container's LXC config.
    pub fn config(&self) -> String {
        std::fs::read_to_string(self.dir.join("lxc").join(self.name).join("config")).unwrap()
    }
}
