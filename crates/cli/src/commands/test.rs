//! `kiln test`: boot a disk image in qemu and wait for a login prompt on the serial console.
//!
//! A NoCloud seed (a small vfat disk labelled `cidata`, made with mkfs.vfat and mtools, no
//! mounting) is attached so cloud-init finds its data at once instead of waiting for a metadata
//! service. The image is opened with `snapshot=on`, so a test never changes it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;

use super::UsageError;

/// Boot IMAGE in qemu; pass when a login prompt (or --expect) appears on the serial console.
#[derive(Debug, Args)]
pub struct TestCmd {
    /// The disk image (qcow2, raw, vmdk, …).
    image: PathBuf,
    /// Boot with UEFI firmware (OVMF) instead of SeaBIOS.
    #[arg(long)]
    uefi: bool,
    /// Seconds to wait before failing.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Text to wait for instead of a login prompt.
    #[arg(long, value_name = "TEXT")]
    expect: Option<String>,
    /// qemu accelerator: kvm or tcg. Default: kvm only where it can run a guest, else tcg.
    #[arg(long, value_name = "ACCEL")]
    accel: Option<String>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    memory: u32,
    /// Write the serial console log to this file as well.
    #[arg(long, value_name = "FILE")]
    console_log: Option<PathBuf>,
    /// Guest architecture (x86_64 or aarch64). Default: x86_64.
    #[arg(long, default_value = "x86_64")]
    arch: String,
}

fn kvm_usable() -> bool {
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

fn make_seed(dir: &Path) -> anyhow::Result<PathBuf> {
    let seed = dir.join("seed.img");
    let md = dir.join("meta-data");
    let ud = dir.join("user-data");
    std::fs::write(&md, "instance-id: kiln-test\nlocal-hostname: kiln-test\n")?;
    std::fs::write(&ud, "#cloud-config\n{}\n")?;
    let st = Command::new("mkfs.vfat")
        .args(["-C", "-n", "CIDATA"])
        .arg(&seed)
        .arg("2048")
        .stdout(Stdio::null())
        .status()
        .context("running mkfs.vfat (install dosfstools)")?;
    if !st.success() {
        bail!("mkfs.vfat failed for the NoCloud seed");
    }
    let st = Command::new("mcopy")
        .arg("-i")
        .arg(&seed)
        .arg(&md)
        .arg(&ud)
        .arg("::")
        .status()
        .context("running mcopy (install mtools)")?;
    if !st.success() {
        bail!("mcopy failed for the NoCloud seed");
    }
    Ok(seed)
}

fn find_ovmf() -> Option<(PathBuf, PathBuf)> {
    let pairs = [
        (
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        (
            "/usr/share/OVMF/OVMF_CODE.fd",
            "/usr/share/OVMF/OVMF_VARS.fd",
        ),
        ("/usr/share/ovmf/OVMF.fd", ""),
    ];
    pairs.iter().find_map(|(c, v)| {
        Path::new(c)
            .exists()
            .then(|| (PathBuf::from(c), PathBuf::from(v)))
    })
}

impl TestCmd {
    /// The qemu command line: the image (a throwaway snapshot), the cloud-init seed, user
    /// networking, and OVMF for `--uefi` (its variables copied into `tmp`).
    fn qemu_command(
        &self,
        qemu: &str,
        accel: &str,
        seed: &Path,
        tmp: &Path,
    ) -> anyhow::Result<Command> {
        let mut cmd = Command::new(qemu);
        cmd.args([
            "-nodefaults",
            "-nographic",
            "-serial",
            "stdio",
            "-monitor",
            "none",
        ])
        .args(["-m", &self.memory.to_string(), "-smp", "2"])
        .args(["-accel", accel]);
        if accel == "tcg" {
            cmd.args(["-cpu", "max"]);
        } else {
            cmd.args(["-cpu", "host"]);
        }
        if self.arch == "aarch64" {
            cmd.args(["-machine", "virt"]);
        }
        cmd.arg("-drive").arg(format!(
            "file={},if=virtio,snapshot=on,cache=unsafe",
            self.image.display()
        ));
        cmd.arg("-drive").arg(format!(
            "file={},if=virtio,format=raw,readonly=on",
            seed.display()
        ));
        cmd.args([
            "-netdev",
            "user,id=n0",
            "-device",
            // No option ROM: the firmware then offers no PXE boot to try before the disk.
            "virtio-net-pci,netdev=n0,romfile=",
        ]);
        if self.uefi {
            let (code, vars) = find_ovmf().ok_or_else(|| {
                UsageError("--uefi needs OVMF firmware: apt-get install ovmf".into())
            })?;
            cmd.arg("-drive").arg(format!(
                "if=pflash,format=raw,readonly=on,file={}",
                code.display()
            ));
            if !vars.as_os_str().is_empty() {
                let v = tmp.join("vars.fd");
                std::fs::copy(&vars, &v)?;
                cmd.arg("-drive")
                    .arg(format!("if=pflash,format=raw,file={}", v.display()));
            }
        }
        Ok(cmd)
    }

    /// Boots the image and reports.
    pub fn run(&self) -> anyhow::Result<i32> {
        if !self.image.exists() {
            return Err(UsageError(format!("{}: no such image", self.image.display())).into());
        }
        let tmp = tempfile::tempdir()?;
        let seed = make_seed(tmp.path())?;
        let accel = self.accel.clone().unwrap_or_else(|| {
            if kvm_usable() {
                "kvm".into()
            } else {
                "tcg".into()
            }
        });
        let qemu = format!("qemu-system-{}", self.arch);
        let mut cmd = self.qemu_command(&qemu, &accel, &seed, tmp.path())?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        eprintln!(
            "kiln test: booting {} ({accel}{})",
            self.image.display(),
            if self.uefi { ", UEFI" } else { "" }
        );
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {qemu} (install qemu-system-x86)"))?;
        let log = Arc::new(Mutex::new(Vec::<u8>::new()));
        let mut out = child.stdout.take().expect("piped");
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
        let mut err = child.stderr.take().expect("piped");
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let deadline = start + Duration::from_secs(self.timeout);
        let found = loop {
            let text = log
                .lock()
                .map(|g| String::from_utf8_lossy(&g).into_owned())
                .unwrap_or_default();
            let hit = match &self.expect {
                Some(m) => text.contains(m.as_str()),
                None => text.lines().any(|l| l.trim_end().ends_with("login:")),
            };
            if hit {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            if let Ok(Some(_)) = child.try_wait() {
                break false;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let secs = start.elapsed().as_secs_f64();
        let _ = child.kill();
        let _ = child.wait();
        let _ = reader.join();
        let stderr = err_reader.join().unwrap_or_default();
        let text = log
            .lock()
            .map(|g| String::from_utf8_lossy(&g).into_owned())
            .unwrap_or_default();
        if let Some(p) = &self.console_log {
            std::fs::write(p, &text)?;
        }
        if found {
            println!(
                "kiln test: PASS: {} reached {} in {secs:.1} s",
                self.image.display(),
                self.expect.as_deref().unwrap_or("a login prompt")
            );
            Ok(0)
        } else {
            eprintln!("----- serial console -----\n{text}\n----- end of console -----");
            if !stderr.trim().is_empty() {
                eprintln!("qemu: {}", stderr.trim());
            }
            eprintln!(
                "kiln test: FAIL: no {} after {secs:.1} s",
                self.expect.as_deref().unwrap_or("login prompt")
            );
            Ok(1)
        }
    }
}
