//! The end-to-end harness: capability checks, one heavy job at a time, budgets, leak checks and
//! boot checks.
//!
//! - **One build or boot at a time.** [`heavy`] takes an in-process mutex and an `flock` on a file
//!   (`KILN_TEST_LOCK`, default in the target dir), so builds of concurrent test threads — and of
//!   other processes using the same lock file — never overlap on a small machine.
//! - **Budgets.** Every build runs under a time budget; past it kiln gets SIGTERM (it tears down
//!   and exits 143), then SIGKILL, and the test fails with the end of the build log instead of
//!   hanging until CI's own limit kills the whole run.
//! - **Honest leak checks.** Loop devices are compared as a set with those attached when the
//!   heavy lock was taken (the kernel stops showing a backing file's path under the build
//!   directory once the build's namespace is gone, so matching on the path cannot see a leak).
//!   Mounts are searched in the mountinfo of every live process, so a mount kept alive in a
//!   namespace that some leftover process still holds is found; processes are found by their root
//!   directory and by a marker variable every build gets (`KILN_TEST_WORK`).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use kiln_testkit::Timer;

/// Build budgets, from measured figures on the 2-core CI machine with headroom: a cold VM image
/// takes about 2.5 minutes, a root filesystem 1.5, a foreign-architecture root filesystem about 5.
pub const BUILD_BUDGET: Duration = Duration::from_secs(900);
/// A boot to the end of the checks under TCG: BIOS about 100-150 s here.
pub const BIOS_BOOT_BUDGET: u64 = 420;
/// UEFI under TCG: 90-200 s here, more under load.
pub const UEFI_BOOT_BUDGET: u64 = 600;

static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// The right to run one build or boot: held for the whole of it and its checks.
pub struct Heavy {
    _guard: MutexGuard<'static, ()>,
    _file: nix::fcntl::Flock<fs::File>,
    /// Loop devices attached when the lock was taken.
    loops_before: BTreeSet<String>,
}

impl Heavy {
    /// The loop devices attached when the lock was taken.
    pub fn loops_before(&self) -> &BTreeSet<String> {
        &self.loops_before
    }
}

/// Takes the heavy lock (waits for other builds and boots, in this process and others).
pub fn heavy() -> Heavy {
    let guard = BUILD_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let path = std::env::var_os("KILN_TEST_LOCK").map_or_else(
        || PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kiln-heavy.lock"),
        PathBuf::from,
    );
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("flock {}: {e}", path.display()));
    Heavy {
        _guard: guard,
        _file: file,
        loops_before: attached_loops(),
    }
}

fn missing_capability() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("root".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("loop devices (/dev/loop-control)".into());
    }
    for tool in [
        "mmdebstrap",
        "qemu-img",
        "qemu-system-x86_64",
        "mkfs.vfat",
        "mcopy",
        "sgdisk",
        "zstd",
        "mksquashfs",
    ] {
        if which(tool).is_none() {
            return Some(format!("`{tool}` (scripts/install-host-deps)"));
        }
    }
    let sources = fs::read_dir("/etc/apt/sources.list.d").is_ok_and(|rd| {
        rd.flatten().any(|e| {
            fs::read_to_string(e.path()).is_ok_and(|t| t.contains("URIs:") || t.contains("deb "))
        })
    }) || fs::read_to_string("/etc/apt/sources.list")
        .is_ok_and(|t| t.contains("deb "));
    if !sources && std::env::var("DIB_DISTRIBUTION_MIRROR").is_err() {
        return Some("a Debian mirror in the host's apt sources or DIB_DISTRIBUTION_MIRROR".into());
    }
    None
}

/// Whether end-to-end tests can run here; a visible skip otherwise (a failure under CI).
pub fn capable(test: &str) -> bool {
    match missing_capability() {
        None => true,
        Some(why) => {
            kiln_testkit::skip(test, &format!("needs {why}"));
            false
        }
    }
}

/// `tool` on PATH.
pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .ok()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// The kiln cache shared by every test of the run.
pub fn cache() -> PathBuf {
    std::env::var("KILN_TEST_CACHE").map_or_else(
        |_| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kiln-test-cache"),
        PathBuf::from,
    )
}

/// A test's working directory: removed when the test passes (images are large and the whole
/// suite must fit on a CI disk), kept for a look when it fails.
pub struct Work(PathBuf);

impl Work {
    /// Keeps the directory for the rest of the run.
    pub fn keep(self) -> PathBuf {
        let p = self.0.clone();
        std::mem::forget(self);
        p
    }
}

impl std::ops::Deref for Work {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Work {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// A fresh working directory for a test (canonical, so it matches what the kernel shows).
pub fn work(name: &str) -> Work {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("e2e")
        .join(name);
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    Work(fs::canonicalize(&d).unwrap())
}

/// What a build did.
pub struct Outcome {
    pub code: i32,
    pub stderr: String,
    pub log: String,
}

/// The release every build gets unless the test names one: `("DIB_RELEASE", "")` in `env`
/// removes it, so the build uses the elements' default, as a user who names none gets.
const RELEASE: &str = "bookworm";

/// A `kiln build ARGS` command in `dir` with a private TMPDIR (checked for leftovers after).
pub fn build_command(
    dir: &Path,
    elements_path: Option<&Path>,
    args: &[&str],
    env: &[(&str, &str)],
) -> Command {
    kiln_command("build", dir, elements_path, args, env)
}

/// `kiln SUBCOMMAND ARGS` with exactly the environment [`build_command`] gives a build, so that
/// `kiln plan --explain-cache` sees what the build saw.
pub fn kiln_command(
    subcommand: &str,
    dir: &Path,
    elements_path: Option<&Path>,
    args: &[&str],
    env: &[(&str, &str)],
) -> Command {
    let tmp = dir.join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    let mut c = Command::new(crate::kiln_bin());
    c.current_dir(dir)
        .arg(subcommand)
        .args(args)
        .env("DIB_IMAGE_CACHE", cache())
        .env("DIB_RELEASE", RELEASE)
        .env("TMPDIR", &tmp)
        .env("KILN_TEST_WORK", dir)
        .env_remove("ELEMENTS_PATH")
        .env_remove("DIB_BLOCK_DEVICE_CONFIG")
        .env_remove("ARCH");
    if let Some(p) = elements_path {
        c.env("ELEMENTS_PATH", p);
    }
    for (k, v) in env {
        if v.is_empty() {
            c.env_remove(k);
        } else {
            c.env(k, v);
        }
    }
    c
}

/// Runs `kiln build ARGS` in `dir` within [`BUILD_BUDGET`].
pub fn build(
    dir: &Path,
    elements_path: Option<&Path>,
    args: &[&str],
    env: &[(&str, &str)],
) -> Outcome {
    run_build(
        build_command(dir, elements_path, args, env),
        dir,
        args,
        BUILD_BUDGET,
    )
}

/// Runs a prepared build command within `budget`; past it, SIGTERM, then SIGKILL, then a failure
/// that quotes the end of the build log.
pub fn run_build(mut c: Command, dir: &Path, args: &[&str], budget: Duration) -> Outcome {
    let err_path = dir.join("kiln.stderr");
    let err = fs::File::create(&err_path).unwrap();
    c.stdout(Stdio::null()).stderr(err);
    let mut child = c.spawn().expect("run kiln build");
    let start = Instant::now();
    let name = args
        .windows(2)
        .find(|w| w[0] == "-o")
        .map_or("image", |w| w[1]);
    let log_path = dir.join(format!("{name}.d/build.log"));
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > budget {
            signal(child.id(), nix::sys::signal::Signal::SIGTERM);
            let t = Instant::now();
            while child.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = child.kill();
            let _ = child.wait();
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            panic!(
                "kiln build {} ran over its budget of {} s and was stopped; the log ends:\n{}",
                args.join(" "),
                budget.as_secs(),
                tail(&log, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "build {} took {:.1} s",
        args.join(" "),
        start.elapsed().as_secs_f64()
    );
    Outcome {
        code: status.code().unwrap_or(-1),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
        log: fs::read_to_string(&log_path).unwrap_or_default(),
    }
}

/// Sends `sig` to process `pid`.
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()), sig).unwrap();
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The loop devices attached now.
pub fn attached_loops() -> BTreeSet<String> {
    let out = Command::new("losetup")
        .args(["--list", "--noheadings", "--output", "NAME"])
        .output()
        .expect("run losetup");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Nothing of a build in `dir` may remain. Waits a few seconds for exiting helpers first.
pub fn assert_no_leftovers(dir: &Path, heavy: &Heavy) {
    assert_no_leftovers_within(dir, heavy, Duration::from_secs(5));
}

/// As [`assert_no_leftovers`], giving the watchdog up to `grace` to clean up.
pub fn assert_no_leftovers_within(dir: &Path, heavy: &Heavy, grace: Duration) {
    let t0 = Instant::now();
    loop {
        match leftovers(dir, heavy) {
            None => return,
            Some(problem) if t0.elapsed() >= grace => panic!("{problem}"),
            Some(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// The first thing a build in `dir` left behind, if any: temp dirs, loop devices, mounts in any
/// live namespace, processes.
pub fn leftovers(dir: &Path, heavy: &Heavy) -> Option<String> {
    let tmp = dir.join("tmp");
    let left: Vec<_> = fs::read_dir(&tmp)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    if !left.is_empty() {
        return Some(format!("temp dirs left behind: {left:?}"));
    }
    let new_loops: Vec<_> = attached_loops()
        .difference(&heavy.loops_before)
        .cloned()
        .collect();
    if !new_loops.is_empty() {
        return Some(format!("loop devices left attached: {new_loops:?}"));
    }
    let me = std::process::id().to_string();
    let marker = format!("KILN_TEST_WORK={}\0", dir.display());
    let tmp_s = tmp.display().to_string();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let p = e.path();
        if let Ok(mi) = fs::read_to_string(p.join("mountinfo")) {
            // Field 5 is the mount point (octal escapes for spaces; test paths have none).
            if let Some(line) = mi
                .lines()
                .find(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&tmp_s)))
            {
                return Some(format!(
                    "a mount left in the namespace of process {pid}: {line}"
                ));
            }
        }
        if fs::read_link(p.join("root")).is_ok_and(|r| r.starts_with(&tmp)) {
            return Some(format!("process {pid} left running inside the build"));
        }
        if fs::read(p.join("environ"))
            .is_ok_and(|env| env.windows(marker.len()).any(|w| w == marker.as_bytes()))
        {
            let cmd = fs::read_to_string(p.join("cmdline")).unwrap_or_default();
            return Some(format!(
                "process {pid} of the build still runs: {}",
                cmd.replace('\0', " ")
            ));
        }
    }
    None
}

/// Walks `d` recursively: every file below it.
pub fn walk(d: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(rd) = fs::read_dir(d) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                v.extend(walk(&p));
            } else {
                v.push(p);
            }
        }
    }
    v
}

/// `tar -tvf` of an archive (any compression tar recognises): one line per entry.
pub fn tar_listing(tar: &Path, numeric: bool) -> Vec<String> {
    let mut c = Command::new("tar");
    c.arg("-tvf").arg(tar).env("TZ", "UTC");
    if numeric {
        c.arg("--numeric-owner");
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "tar -tvf {} failed", tar.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// Runs `sh -c CMD` and returns stdout; panics with stderr on failure.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
