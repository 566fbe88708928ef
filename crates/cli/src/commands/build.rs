//! `kiln build` and `disk-image-create`: run a build.

use std::ffi::OsString;
use std::fs;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser};
use kiln_pipeline::runner::Console;
use kiln_pipeline::BuildPlan;

use super::UsageError;
use crate::dib::BuildArgs;

/// Build an image from elements.
#[derive(Debug, Args)]
pub struct BuildCmd {
    #[command(flatten)]
    args: BuildArgs,
}

impl BuildCmd {
    /// Runs the build.
    pub fn run(&self) -> anyhow::Result<i32> {
        let argv: Vec<String> = std::env::args().skip(2).collect();
        run_build(&self.args, argv)
    }
}

/// `disk-image-create`: DIB's command, same options as `kiln build`.
#[derive(Debug, Parser)]
#[command(
    name = "disk-image-create",
    version,
    about = "Build an image from diskimage-builder elements (kiln)"
)]
struct DiskImageCreate {
    #[command(flatten)]
    args: BuildArgs,
}

/// Entry point when invoked as `disk-image-create`.
pub fn disk_image_create(argv: Vec<OsString>) -> anyhow::Result<i32> {
    let raw: Vec<String> = argv
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let cmd = DiskImageCreate::parse_from(argv);
    run_build(&cmd.args, raw)
}

fn run_build(args: &BuildArgs, typed: Vec<String>) -> anyhow::Result<i32> {
    crate::logging::init(args.verbose);
    for t in args.types.iter().flat_map(|t| t.split(',')) {
        if matches!(t, "docker" | "aci") {
            return Err(UsageError(format!(
                "output type '{t}' is not supported by kiln yet: use tar and import it (`docker import NAME.tar`)"
            ))
            .into());
        }
    }
    if args.ramdisk_element.is_some() {
        return Err(UsageError("ramdisk builds are not supported by kiln yet".into()).into());
    }
    // What the build needs of the host is known before anything runs, and needs no root: a
    // missing tool is reported (exit 2) before the root check, the namespace or any hook.
    let req = args.request(typed);
    let plan = BuildPlan::new(&req)?;
    kiln_pipeline::pipeline::preflight(&plan)?;
    if !nix::unistd::geteuid().is_root() {
        return Err(UsageError(
            "kiln build needs root (loop devices, mounts, chroot): run it as root or with sudo"
                .into(),
        )
        .into());
    }
    // The watchdog cleans up if this process is killed outright; it stays in the host's mount
    // namespace. Then our own mount namespace, before any thread exists: every mount dies with
    // the build.
    if let Ok(exe) = std::env::current_exe() {
        kiln_sandbox::watchdog::start(&exe, &["__watchdog"]);
    }
    let result = guarded_build(args, &req, &plan);
    kiln_sandbox::watchdog::done();
    result
}

fn guarded_build(
    args: &BuildArgs,
    req: &kiln_pipeline::BuildRequest,
    plan: &BuildPlan,
) -> anyhow::Result<i32> {
    kiln_sandbox::unshare_mounts().context("setting up the build's mount namespace")?;
    kiln_sandbox::watchdog::note_namespace();
    kiln_pipeline::runner::install_signal_handlers()?;
    let out_dir = PathBuf::from(format!("{}.d", plan.image_name.display()));
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let log_path = args
        .logfile
        .clone()
        .unwrap_or_else(|| out_dir.join("build.log"));
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    // Every external command also lands in the log, through the same file offset.
    if let Ok(handle) = log.try_clone() {
        crate::logging::set_build_log(handle);
    }
    let quiet = req.var("DIB_QUIET").is_some_and(|v| v == "1");
    let console = Console::new(Some(log), args.verbose, quiet);
    console.say(&format!(
        "kiln {}: building {} from {}",
        env!("CARGO_PKG_VERSION"),
        plan.image_name.display(),
        plan.set.image_element()
    ));
    let report = kiln_pipeline::pipeline::run(plan, &console)?;
    console.say(&format!(
        "Build completed successfully in {:.1} s: {}",
        report.seconds,
        report
            .outputs
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(0)
}
