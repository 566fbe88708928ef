//! `kiln test`: boot a disk image in qemu; pass on a login prompt, on the user's marker, or
//! (`--check`) on a first boot whose facts are all as they should be.
//!
//! The booting and the checking live in kiln-boot; this file holds the arguments and the
//! printing.

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use kiln_boot::{Arch, BootConfig, Firmware, Seed, Wait};

use super::UsageError;

/// Boot IMAGE in qemu; pass when a login prompt (or --expect) appears on the serial console,
/// or, with --check, when every first-boot fact the guest reports is as it should be.
#[derive(Debug, Args)]
pub struct TestCmd {
    /// The disk image (qcow2, raw, vmdk, …). It is never changed: the guest boots from a
    /// temporary overlay 1 GiB larger than the image.
    image: PathBuf,
    /// Boot with UEFI firmware (OVMF) instead of SeaBIOS. arm64 guests always boot with UEFI
    /// (AAVMF).
    #[arg(long)]
    uefi: bool,
    /// Seconds to wait before failing. Default: 300, or 1200 for a guest of another
    /// architecture than the host's (emulated instruction by instruction).
    #[arg(long)]
    timeout: Option<u64>,
    /// Text to wait for instead of a login prompt.
    #[arg(long, value_name = "TEXT", conflicts_with = "check")]
    expect: Option<String>,
    /// Check the first boot: cloud-init finished with the NoCloud datasource, no failed units,
    /// root filesystem grown to the disk, the firmware asked for, a machine id and SSH host
    /// keys made at first boot, a serial console on the kernel command line. Prints a table;
    /// exits 1 if a fact fails.
    #[arg(long)]
    check: bool,
    /// With --check: print the result as JSON instead of a table.
    #[arg(long, requires = "check")]
    json: bool,
    /// Put this user-data file on the NoCloud seed instead of kiln's (use --expect to wait
    /// for what it prints).
    #[arg(long, value_name = "FILE", conflicts_with = "check")]
    user_data: Option<PathBuf>,
    /// qemu accelerator: kvm or tcg. Default: kvm only where it can run a guest, else tcg.
    #[arg(long, value_name = "ACCEL")]
    accel: Option<String>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    memory: u32,
    /// Write the serial console log to this file as well.
    #[arg(long, value_name = "FILE")]
    console_log: Option<PathBuf>,
    /// Guest architecture (x86_64/amd64 or aarch64/arm64). Default: the architecture the
    /// image was built for, read from its build record (`NAME.d/request.json` beside the
    /// image) when there is one, else x86_64.
    #[arg(long)]
    arch: Option<String>,
}

/// The architecture `image` was built for, from the `kiln build` record beside it
/// (`NAME.d/request.json` for `NAME.qcow2`), when there is one that names it.
fn recorded_arch(image: &std::path::Path) -> Option<String> {
    let record = crate::record::Record::read(&crate::record::path_for(&image.with_extension("")));
    record.ok()?.request.arch
}

impl TestCmd {
    fn config(&self) -> anyhow::Result<BootConfig> {
        let arch: Arch = match &self.arch {
            Some(a) => a
                .parse()
                .map_err(|e: kiln_boot::Error| UsageError(format!("--arch: {e}")))?,
            // A record naming an architecture kiln cannot boot falls back to the host's.
            None => recorded_arch(&self.image)
                .and_then(|a| a.parse().ok())
                .unwrap_or(Arch::X86_64),
        };
        let mut cfg = BootConfig::new(&self.image);
        cfg.arch = arch;
        // arm64 machines boot through UEFI only.
        cfg.firmware = if self.uefi || arch == Arch::Aarch64 {
            Firmware::Uefi
        } else {
            Firmware::Bios
        };
        cfg.accel.clone_from(&self.accel);
        cfg.memory_mib = self.memory;
        let timeout = self
            .timeout
            .unwrap_or(if arch.is_host() { 300 } else { 1200 });
        cfg.timeout = Duration::from_secs(timeout);
        if let Some(ud) = &self.user_data {
            cfg.seed = Seed::with_user_data_file(ud)?;
        }
        cfg.wait = match &self.expect {
            Some(t) => Wait::Text(t.clone()),
            None => Wait::LoginPrompt,
        };
        // SIGINT and SIGTERM stop the boot: qemu is killed and its files removed before kiln
        // exits 130 or 143.
        let flag = Arc::new(AtomicUsize::new(0));
        for (signal, value) in [
            (signal_hook::consts::SIGINT, 2),
            (signal_hook::consts::SIGTERM, 15),
        ] {
            signal_hook::flag::register_usize(signal, Arc::clone(&flag), value)
                .context("installing the signal handlers")?;
        }
        cfg.interrupt = Some(flag);
        Ok(cfg)
    }

    /// Boots the image and reports; returns the exit code.
    pub fn run(&self) -> anyhow::Result<i32> {
        let cfg = self.config()?;
        eprintln!(
            "kiln test: booting {} ({}, {}{}){}",
            self.image.display(),
            cfg.arch.qemu_name(),
            self.accel.as_deref().unwrap_or("auto"),
            if cfg.firmware == Firmware::Uefi {
                ", UEFI"
            } else {
                ""
            },
            if self.check {
                ", checking the first boot"
            } else {
                ""
            }
        );
        if self.check {
            return self.run_check(&cfg);
        }
        let outcome = kiln_boot::boot(&cfg)?;
        self.save_console(&outcome.console)?;
        let what = self.expect.as_deref().unwrap_or("a login prompt");
        if outcome.reached {
            println!(
                "kiln test: PASS: {} reached {what} in {:.1} s ({})",
                self.image.display(),
                outcome.seconds,
                outcome.accel
            );
            Ok(0)
        } else {
            print_console(&outcome);
            eprintln!("kiln test: FAIL: no {what} after {:.1} s", outcome.seconds);
            Ok(1)
        }
    }

    fn run_check(&self, cfg: &BootConfig) -> anyhow::Result<i32> {
        let (report, outcome) = kiln_boot::check(cfg)?;
        self.save_console(&outcome.console)?;
        if !report.finished {
            print_console(&outcome);
        }
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.table());
        }
        let failed: Vec<&str> = report
            .facts
            .iter()
            .filter(|r| !r.ok)
            .map(|r| r.name.as_str())
            .collect();
        if failed.is_empty() {
            eprintln!(
                "kiln test: PASS: {} facts ok after {:.1} s ({})",
                report.facts.len(),
                report.boot_seconds,
                report.accel
            );
            Ok(0)
        } else {
            eprintln!(
                "kiln test: FAIL: {} after {:.1} s ({})",
                failed.join(", "),
                report.boot_seconds,
                report.accel
            );
            Ok(1)
        }
    }

    fn save_console(&self, console: &str) -> anyhow::Result<()> {
        if let Some(p) = &self.console_log {
            std::fs::write(p, console).with_context(|| format!("writing {}", p.display()))?;
        }
        Ok(())
    }
}

/// Prints the console and qemu's own complaints to stderr, for a boot that did not get there.
fn print_console(outcome: &kiln_boot::BootOutcome) {
    eprintln!(
        "----- serial console -----\n{}\n----- end of console -----",
        outcome.console
    );
    if !outcome.qemu_stderr.is_empty() {
        eprintln!("qemu: {}", outcome.qemu_stderr);
    }
    if let Some(status) = &outcome.qemu_exit {
        eprintln!("qemu exited early: {status}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrap {
        #[command(flatten)]
        cmd: TestCmd,
    }

    fn parse(args: &[&str]) -> Result<TestCmd, clap::Error> {
        Wrap::try_parse_from(std::iter::once("test").chain(args.iter().copied())).map(|w| w.cmd)
    }

    #[test]
    fn options_make_the_config() {
        let c = parse(&["img.qcow2", "--uefi", "--timeout", "42", "--arch", "arm64"]).unwrap();
        let cfg = c.config().unwrap();
        assert_eq!(cfg.firmware, Firmware::Uefi);
        assert_eq!(cfg.arch, Arch::Aarch64);
        assert_eq!(cfg.timeout, Duration::from_secs(42));
        assert_eq!(cfg.wait, Wait::LoginPrompt);
        assert_eq!(cfg.seed, Seed::plain());
        let c = parse(&["img", "--expect", "READY"]).unwrap();
        assert_eq!(c.config().unwrap().wait, Wait::Text("READY".into()));
    }

    #[test]
    fn the_architecture_comes_from_the_build_record() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("arm.qcow2");
        let cfg = parse(&[img.to_str().unwrap()]).unwrap().config().unwrap();
        assert_eq!(cfg.arch, Arch::X86_64, "no record: the default");
        assert_eq!(cfg.firmware, Firmware::Bios);
        let record_dir = d.path().join("arm.d");
        std::fs::create_dir(&record_dir).unwrap();
        let record_of = |arch: &str| {
            let request = crate::dib::RequestArgs {
                arch: Some(arch.to_string()),
                ..Default::default()
            };
            crate::record::Record::new(&request, &[], &std::collections::BTreeMap::new())
                .write(&record_dir)
                .unwrap();
        };
        record_of("arm64");
        let cfg = parse(&[img.to_str().unwrap()]).unwrap().config().unwrap();
        assert_eq!(cfg.arch, Arch::Aarch64);
        assert_eq!(cfg.firmware, Firmware::Uefi, "arm64 boots with UEFI only");
        assert_eq!(
            cfg.timeout,
            Duration::from_secs(if Arch::Aarch64.is_host() { 300 } else { 1200 })
        );
        // --arch wins over the record.
        let cfg = parse(&[img.to_str().unwrap(), "--arch", "x86_64"])
            .unwrap()
            .config()
            .unwrap();
        assert_eq!(cfg.arch, Arch::X86_64);
        // A record naming an architecture kiln cannot boot is not an error.
        record_of("riscv64");
        let cfg = parse(&[img.to_str().unwrap()]).unwrap().config().unwrap();
        assert_eq!(cfg.arch, Arch::X86_64);
    }

    #[test]
    fn conflicting_options_are_refused() {
        assert!(parse(&["img", "--check", "--expect", "x"]).is_err());
        assert!(parse(&["img", "--check", "--user-data", "ud"]).is_err());
        assert!(parse(&["img", "--json"]).is_err());
        assert!(parse(&["img", "--check", "--json"]).is_ok());
    }

    #[test]
    fn bad_input_exits_2_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let ud = d.path().join("user-data.yaml");
        std::fs::write(&ud, "runcmd: []\n").unwrap();
        let c = parse(&["img", "--user-data", ud.to_str().unwrap()]).unwrap();
        let e = c.config().unwrap_err();
        assert_eq!(crate::app::exit_code(&e), 2);
        assert!(format!("{e:#}").contains("user-data.yaml: line 1"), "{e:#}");
        let c = parse(&["img", "--arch", "mips"]).unwrap();
        let e = c.config().unwrap_err();
        assert_eq!(crate::app::exit_code(&e), 2);
        assert!(format!("{e:#}").contains("--arch"), "{e:#}");
        let c = parse(&[d.path().join("nope.qcow2").to_str().unwrap(), "--check"]).unwrap();
        let e = c.run().unwrap_err();
        assert_eq!(crate::app::exit_code(&e), 2);
        assert!(
            format!("{e:#}").contains("nope.qcow2: no such image"),
            "{e:#}"
        );
    }
}
