//! One qemu boot: firmware, accelerator, a grown copy-on-write overlay, the NoCloud seed, and
//! the serial console captured until what we wait for appears or the time runs out.
//!
//! The guest boots from a qcow2 overlay in a temporary directory, backed by the image and
//! [`BootConfig::grow_bytes`] larger than it: the image itself is never written, and the guest
//! has new space to grow its root filesystem into, which the boot check then looks for.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{exec, facts, Error, Seed};

/// The guest architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// x86_64 (`qemu-system-x86_64`, serial console `ttyS0`).
    X86_64,
    /// arm64 (`qemu-system-aarch64 -machine virt`, serial console `ttyAMA0`).
    Aarch64,
}

impl Arch {
    /// True when this is the architecture kiln runs on (the only one kvm can run).
    pub fn is_host(self) -> bool {
        std::env::consts::ARCH == self.qemu_name()
    }

    /// The qemu name of the architecture (`x86_64`, `aarch64`).
    pub fn qemu_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// The serial console device the kernel should log to on this architecture.
    pub fn serial_tty(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Aarch64 => "ttyAMA0",
        }
    }
}

impl std::str::FromStr for Arch {
    type Err = Error;

    /// Accepts qemu's and Debian's names: `x86_64`/`amd64`, `aarch64`/`arm64`.
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "x86_64" | "amd64" => Ok(Arch::X86_64),
            "aarch64" | "arm64" => Ok(Arch::Aarch64),
            _ => Err(Error::BadArch(s.to_string())),
        }
    }
}

/// The firmware the guest boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Firmware {
    /// Legacy BIOS (SeaBIOS) on x86_64.
    Bios,
    /// UEFI (OVMF on x86_64, AAVMF on arm64).
    Uefi,
}

impl Firmware {
    /// `bios` or `uefi`, as the guest reports it.
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

/// What ends a boot successfully.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Wait {
    /// A console line ending in `login:`.
    LoginPrompt,
    /// This text anywhere on the console.
    Text(String),
    /// The boot check's end marker (see [`facts`]).
    FactsEnd,
}

/// Everything one boot needs.
#[derive(Debug, Clone)]
pub struct BootConfig {
    /// The disk image; any format qemu reads.
    pub image: PathBuf,
    /// Guest architecture.
    pub arch: Arch,
    /// Firmware to boot with.
    pub firmware: Firmware,
    /// qemu accelerator (`kvm`, `tcg`); `None`: kvm where it can run a guest, else tcg.
    pub accel: Option<String>,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// How long to wait for [`BootConfig::wait`].
    pub timeout: Duration,
    /// How much larger than the image the guest's disk is.
    pub grow_bytes: u64,
    /// The NoCloud seed attached as a second disk.
    pub seed: Seed,
    /// What ends the boot successfully.
    pub wait: Wait,
    /// Set to a signal number (by the caller's SIGINT/SIGTERM handler) to stop the boot: qemu
    /// is killed, the temporary files are removed and [`boot`] returns
    /// [`Error::Interrupted`]. Checked four times a second.
    pub interrupt: Option<Arc<AtomicUsize>>,
}

impl BootConfig {
    /// A configuration with kiln's defaults: x86_64, BIOS, 1 GiB of memory, 300 s, a disk
    /// 1 GiB larger than the image, a plain seed, waiting for a login prompt.
    pub fn new(image: impl Into<PathBuf>) -> Self {
        BootConfig {
            image: image.into(),
            arch: Arch::X86_64,
            firmware: Firmware::Bios,
            accel: None,
            memory_mib: 1024,
            timeout: Duration::from_secs(300),
            grow_bytes: 1 << 30,
            seed: Seed::plain(),
            wait: Wait::LoginPrompt,
            interrupt: None,
        }
    }

    fn interrupted(&self) -> Option<i32> {
        let sig = self.interrupt.as_ref()?.load(Ordering::SeqCst);
        (sig != 0).then(|| i32::try_from(sig).unwrap_or(i32::MAX))
    }
}

/// What happened during a boot.
#[derive(Debug, Clone, Serialize)]
pub struct BootOutcome {
    /// Whether what we waited for appeared before the timeout.
    pub reached: bool,
    /// Seconds from starting qemu to the end of the wait.
    pub seconds: f64,
    /// The accelerator used.
    pub accel: String,
    /// The virtual size of the disk the guest saw (image size + grow), in bytes.
    pub disk_bytes: u64,
    /// The serial console, as captured (lossily decoded as UTF-8).
    pub console: String,
    /// qemu's own stderr, when it said anything.
    pub qemu_stderr: String,
    /// qemu's exit status, when it exited by itself before the end of the wait.
    pub qemu_exit: Option<String>,
}

/// True when `/dev/kvm` opens and the CPU has virtualisation extensions.
pub fn kvm_usable() -> bool {
    let opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    opens
        && cpu
            .lines()
            .any(|l| l.starts_with("flags") && (l.contains(" vmx") || l.contains(" svm")))
}

/// UEFI firmware: code and (optionally) a variable store template, for `arch`.
fn find_uefi(arch: Arch) -> Result<(PathBuf, Option<PathBuf>), Error> {
    let (pairs, package): (&[(&str, &str)], &str) = match arch {
        Arch::X86_64 => (
            &[
                (
                    "/usr/share/OVMF/OVMF_CODE_4M.fd",
                    "/usr/share/OVMF/OVMF_VARS_4M.fd",
                ),
                (
                    "/usr/share/OVMF/OVMF_CODE.fd",
                    "/usr/share/OVMF/OVMF_VARS.fd",
                ),
                ("/usr/share/ovmf/OVMF.fd", ""),
            ],
            "ovmf",
        ),
        Arch::Aarch64 => (
            &[
                (
                    "/usr/share/AAVMF/AAVMF_CODE.fd",
                    "/usr/share/AAVMF/AAVMF_VARS.fd",
                ),
                ("/usr/share/qemu-efi-aarch64/QEMU_EFI.fd", ""),
            ],
            "qemu-efi-aarch64",
        ),
    };
    pairs
        .iter()
        .find(|(code, _)| Path::new(code).exists())
        .map(|(code, vars)| {
            (
                PathBuf::from(code),
                (!vars.is_empty() && Path::new(vars).exists()).then(|| PathBuf::from(vars)),
            )
        })
        .ok_or_else(|| Error::NoFirmware {
            arch: arch.qemu_name().to_string(),
            looked: pairs.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", "),
            package: package.to_string(),
        })
}

/// The format and virtual size of `image`, from `qemu-img info --output=json`.
fn image_info(image: &Path) -> Result<(String, u64), Error> {
    let out = exec::run(
        "qemu-img",
        "qemu-utils",
        &["info".as_ref(), "--output=json".as_ref(), image.as_os_str()],
    )?;
    let bad = |reason: String| Error::ImageInfo {
        path: image.to_path_buf(),
        reason,
    };
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| bad(e.to_string()))?;
    let format = v["format"]
        .as_str()
        .ok_or_else(|| bad("no \"format\"".into()))?
        .to_string();
    let size = v["virtual-size"]
        .as_u64()
        .ok_or_else(|| bad("no \"virtual-size\"".into()))?;
    Ok((format, size))
}

/// Creates `dir/disk.qcow2` backed by `image`, `grow` bytes larger; returns its path and size.
fn make_overlay(image: &Path, grow: u64, dir: &Path) -> Result<(PathBuf, u64), Error> {
    let (format, size) = image_info(image)?;
    let image = std::fs::canonicalize(image).map_err(|e| Error::io(image, e))?;
    let overlay = dir.join("disk.qcow2");
    let total = size + grow;
    let total_s = total.to_string();
    exec::run(
        "qemu-img",
        "qemu-utils",
        &[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-b".as_ref(),
            image.as_os_str(),
            "-F".as_ref(),
            format.as_ref(),
            overlay.as_os_str(),
            total_s.as_ref(),
        ],
    )?;
    Ok((overlay, total))
}

/// True when `console` shows what `wait` waits for.
pub fn reached(console: &str, wait: &Wait) -> bool {
    match wait {
        Wait::LoginPrompt => console.lines().any(|l| l.trim_end().ends_with("login:")),
        Wait::Text(t) => console.contains(t.as_str()),
        Wait::FactsEnd => facts::parse(console).end_count.is_some(),
    }
}

/// The qemu argv for a boot (without the program name).
fn qemu_args(
    cfg: &BootConfig,
    accel: &str,
    disk: &Path,
    seed: &Path,
    uefi: Option<(&Path, Option<&Path>)>,
) -> Vec<String> {
    let mut a: Vec<String> = [
        "-nodefaults",
        "-nographic",
        "-serial",
        "stdio",
        "-monitor",
        "none",
    ]
    .map(String::from)
    .to_vec();
    let push = |a: &mut Vec<String>, k: &str, v: String| {
        a.push(k.to_string());
        a.push(v);
    };
    push(&mut a, "-m", cfg.memory_mib.to_string());
    push(&mut a, "-smp", "2".into());
    push(&mut a, "-accel", accel.to_string());
    // Under TCG, arm64's `max` CPU emulates pointer authentication with the architected
    // QARMA algorithm, which costs a large share of the guest's time; the implementation-defined
    // algorithm is as good for booting and far cheaper to emulate.
    let cpu = match (accel, cfg.arch) {
        ("tcg", Arch::Aarch64) => "max,pauth-impdef=on",
        ("tcg", _) => "max",
        _ => "host",
    };
    push(&mut a, "-cpu", cpu.into());
    if cfg.arch == Arch::Aarch64 {
        push(&mut a, "-machine", "virt".into());
    }
    push(
        &mut a,
        "-drive",
        format!(
            "file={},format=qcow2,if=virtio,cache=unsafe",
            disk.display()
        ),
    );
    push(
        &mut a,
        "-drive",
        format!("file={},if=virtio,format=raw,readonly=on", seed.display()),
    );
    push(&mut a, "-netdev", "user,id=n0".into());
    // No option ROM: the firmware then offers no PXE boot to try before the disk.
    push(
        &mut a,
        "-device",
        "virtio-net-pci,netdev=n0,romfile=".into(),
    );
    if let Some((code, vars)) = uefi {
        push(
            &mut a,
            "-drive",
            format!("if=pflash,format=raw,readonly=on,file={}", code.display()),
        );
        if let Some(v) = vars {
            push(
                &mut a,
                "-drive",
                format!("if=pflash,format=raw,file={}", v.display()),
            );
        }
    }
    a
}

/// Boots `cfg.image` and captures the serial console until `cfg.wait` is met, qemu exits or
/// `cfg.timeout` passes. qemu is killed at the end; the temporary overlay, seed and UEFI
/// variable store are removed.
pub fn boot(cfg: &BootConfig) -> Result<BootOutcome, Error> {
    if !cfg.image.exists() {
        return Err(Error::NoImage {
            path: cfg.image.clone(),
        });
    }
    let uefi = match cfg.firmware {
        Firmware::Uefi => Some(find_uefi(cfg.arch)?),
        Firmware::Bios if cfg.arch == Arch::Aarch64 => {
            return Err(Error::Unsupported(
                "arm64 has no BIOS boot: boot it with UEFI (--uefi)".into(),
            ))
        }
        Firmware::Bios => None,
    };
    let tmp_root = std::env::temp_dir();
    remove_stale_dirs(&tmp_root);
    let tmp = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempdir()
        .map_err(|e| Error::io(&tmp_root, e))?;
    let owner = tmp.path().join(OWNER_FILE);
    std::fs::write(&owner, owner_id(std::process::id()).unwrap_or_default())
        .map_err(|e| Error::io(&owner, e))?;
    let seed = cfg.seed.write(tmp.path())?;
    let (disk, disk_bytes) = make_overlay(&cfg.image, cfg.grow_bytes, tmp.path())?;
    let vars = match &uefi {
        Some((_, Some(template))) => {
            let v = tmp.path().join("vars.fd");
            std::fs::copy(template, &v).map_err(|e| Error::io(template, e))?;
            Some(v)
        }
        _ => None,
    };
    let accel = cfg.accel.clone().unwrap_or_else(|| {
        // kvm runs guests of the host's own architecture only: an arm64 guest on an amd64
        // host is emulated whatever /dev/kvm says.
        if cfg.arch.is_host() && kvm_usable() {
            "kvm".into()
        } else {
            "tcg".into()
        }
    });
    let args = qemu_args(
        cfg,
        &accel,
        &disk,
        &seed,
        uefi.as_ref().map(|(c, _)| (c.as_path(), vars.as_deref())),
    );
    let qemu = format!("qemu-system-{}", cfg.arch.qemu_name());
    let package = match cfg.arch {
        Arch::X86_64 => "qemu-system-x86",
        Arch::Aarch64 => "qemu-system-arm",
    };
    let watched = watch_qemu(&qemu, package, &args, cfg)?;
    if let Some(signal) = watched.interrupted {
        return Err(Error::Interrupted { signal });
    }
    let console = watched.console;
    let (hit, qemu_exit, qemu_stderr, seconds) = (
        watched.hit,
        watched.qemu_exit,
        watched.qemu_stderr,
        watched.seconds,
    );
    // A marker that arrived between the last poll and qemu's exit still counts.
    let reached = hit || reached(&console, &cfg.wait);
    Ok(BootOutcome {
        reached,
        seconds,
        accel,
        disk_bytes,
        console,
        qemu_stderr: qemu_stderr.trim().to_string(),
        qemu_exit,
    })
}

/// The prefix of a boot's temporary directory.
const TMP_PREFIX: &str = "kiln-boot.";
/// The file in a boot's temporary directory naming the process that made it.
const OWNER_FILE: &str = "owner";

/// `PID STARTTIME` of a running process (its start time in clock ticks since boot, field 22 of
/// `/proc/PID/stat`): together they name one process, even after the PID is reused.
fn owner_id(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let started = rest.split_whitespace().nth(19)?;
    Some(format!("{pid} {started}"))
}

/// Removes the temporary directories of boots whose kiln was killed (SIGKILL leaves no chance to
/// clean up; its qemu died with it): those of this user whose owner file names a process that is
/// gone. A directory without an owner file may be one another kiln is just making: left alone.
fn remove_stale_dirs(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    // Our effective uid: /proc/self belongs to it.
    let me = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(TMP_PREFIX) {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_dir() || me.as_ref().ok() != Some(&std::os::unix::fs::MetadataExt::uid(&meta)) {
            continue;
        }
        let Ok(owner) = std::fs::read_to_string(path.join(OWNER_FILE)) else {
            continue;
        };
        let alive = owner
            .split_whitespace()
            .next()
            .and_then(|pid| pid.parse::<u32>().ok())
            .and_then(owner_id)
            .is_some_and(|now| now == owner.trim());
        if !alive {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => tracing::info!(
                    target: "kiln::boot",
                    "removed {}, left by a boot whose kiln was killed",
                    path.display()
                ),
                Err(e) => tracing::warn!(
                    target: "kiln::boot",
                    "cannot remove {}, left by a killed boot: {e}",
                    path.display()
                ),
            }
        }
    }
}

/// What watching a qemu run saw.
struct Watched {
    interrupted: Option<i32>,
    hit: bool,
    qemu_exit: Option<String>,
    qemu_stderr: String,
    seconds: f64,
    console: String,
}

/// Runs qemu, collecting its serial console, until the awaited text appears, qemu exits or the
/// timeout passes; then stops it.
fn watch_qemu(
    qemu: &str,
    package: &str,
    args: &[String],
    cfg: &BootConfig,
) -> Result<Watched, Error> {
    let start = Instant::now();
    let mut running = exec::spawn(qemu, package, args)?;
    let child = running.child_mut();
    let log = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut out = child.stdout.take().expect("stdout is piped");
    let log_w = Arc::clone(&log);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut g) = log_w.lock() {
                g.extend_from_slice(&buf[..n]);
            }
        }
    });
    let mut err = child.stderr.take().expect("stderr is piped");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let snapshot = |log: &Arc<Mutex<Vec<u8>>>| {
        log.lock()
            .map(|g| String::from_utf8_lossy(&g).into_owned())
            .unwrap_or_default()
    };
    let deadline = start + cfg.timeout;
    let mut qemu_exit = None;
    let mut interrupted = None;
    let hit = loop {
        if let Some(sig) = cfg.interrupted() {
            interrupted = Some(sig);
            break false;
        }
        if reached(&snapshot(&log), &cfg.wait) {
            break true;
        }
        if let Ok(Some(status)) = child.try_wait() {
            qemu_exit = Some(status.to_string());
            // Whatever qemu wrote last is in the log once the reader ends.
            let _ = child.wait();
            break false;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let seconds = start.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    let qemu_stderr = err_reader.join().unwrap_or_default();
    let console = snapshot(&log);
    Ok(Watched {
        interrupted,
        hit,
        qemu_exit,
        qemu_stderr,
        seconds,
        console,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names() {
        assert_eq!("amd64".parse::<Arch>().unwrap(), Arch::X86_64);
        assert_eq!("aarch64".parse::<Arch>().unwrap(), Arch::Aarch64);
        let e = "sparc".parse::<Arch>().unwrap_err();
        assert!(e.is_input_error() && e.to_string().contains("sparc"));
        assert_eq!(Arch::Aarch64.serial_tty(), "ttyAMA0");
    }

    #[test]
    fn waits() {
        let c =
            "[  OK  ] Started foo\r\nDebian GNU/Linux 12 kiln-test ttyS0\r\n\r\nkiln-test login: ";
        assert!(reached(c, &Wait::LoginPrompt));
        assert!(!reached("Password:\r\n", &Wait::LoginPrompt));
        assert!(reached(c, &Wait::Text("Started foo".into())));
        assert!(!reached(c, &Wait::FactsEnd));
        assert!(reached("x\r\nKILN-FACTS-END count=0\r\n", &Wait::FactsEnd));
    }

    #[test]
    fn qemu_argv() {
        let mut cfg = BootConfig::new("/img.qcow2");
        cfg.memory_mib = 2048;
        let a = qemu_args(
            &cfg,
            "tcg",
            Path::new("/t/disk.qcow2"),
            Path::new("/t/seed.img"),
            Some((Path::new("/fw/CODE.fd"), Some(Path::new("/t/vars.fd")))),
        );
        let s = a.join(" ");
        assert!(s.contains("-m 2048 "), "{s}");
        assert!(s.contains("-accel tcg -cpu max"), "{s}");
        assert!(
            s.contains("-drive file=/t/disk.qcow2,format=qcow2,if=virtio"),
            "{s}"
        );
        assert!(
            s.contains("file=/t/seed.img,if=virtio,format=raw,readonly=on"),
            "{s}"
        );
        assert!(s.contains("readonly=on,file=/fw/CODE.fd"), "{s}");
        assert!(s.contains("if=pflash,format=raw,file=/t/vars.fd"), "{s}");
        assert!(!s.contains("-machine"), "{s}");
        cfg.arch = Arch::Aarch64;
        let s = qemu_args(&cfg, "kvm", Path::new("d"), Path::new("s"), None).join(" ");
        assert!(s.contains("-cpu host -machine virt"), "{s}");
        assert!(!s.contains("pflash"), "{s}");
        let s = qemu_args(&cfg, "tcg", Path::new("d"), Path::new("s"), None).join(" ");
        assert!(s.contains("-cpu max,pauth-impdef=on -machine virt"), "{s}");
    }
}
