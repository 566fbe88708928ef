//! `kiln build` and `disk-image-create`: run a build.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

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
    /// The request this build makes in the environment `env`.
    #[cfg(test)]
    pub fn request_in(
        &self,
        env: std::collections::BTreeMap<String, String>,
        typed: Vec<String>,
    ) -> kiln_pipeline::BuildRequest {
        self.args.request_in(env, typed)
    }

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

/// Parses a `disk-image-create` command line.
pub fn disk_image_create_args(argv: Vec<OsString>) -> Result<BuildArgs, clap::Error> {
    DiskImageCreate::try_parse_from(argv).map(|c| c.args)
}

/// Entry point when invoked as `disk-image-create`.
pub fn disk_image_create(argv: Vec<OsString>) -> anyhow::Result<i32> {
    let raw: Vec<String> = argv
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let parsed = disk_image_create_args(argv).unwrap_or_else(|e| e.exit());
    run_build(&parsed, raw)
}

fn run_build(args: &BuildArgs, typed: Vec<String>) -> anyhow::Result<i32> {
    crate::logging::init(args.verbose);
    args.request.check_supported()?;
    if args.print_cache_keys {
        // The same request and key computation as below, without building.
        let plan = BuildPlan::new(&args.request(typed))?;
        let v = kiln_pipeline::pipeline::explain_cache(&plan)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    run_request(args, &args.request(typed))
}

/// Builds `req`, made from `args` (by `kiln build`, or by `kiln verify` for its rebuild): the
/// preflight, the root check, the watchdog, the build's own mount namespace, the pipeline.
pub(crate) fn run_request(
    args: &BuildArgs,
    req: &kiln_pipeline::BuildRequest,
) -> anyhow::Result<i32> {
    // What the build needs of the host is known before anything runs, and needs no root: a
    // missing tool is reported (exit 2) before the root check, the namespace or any hook.
    let plan = BuildPlan::new(req)?;
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
    let result = guarded_build(args, req, &plan);
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
    record_dir(&out_dir)?;
    crate::record::Record::new(&args.request, &req.args, &req.env).write(&out_dir)?;
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
    let quiet = req
        .var(kiln_pipeline::settings::DIB_QUIET.name)
        .is_some_and(|v| v == "1");
    // The plan's warnings (container outputs with a VM disk or element), once, on the terminal
    // and in build.log.
    for note in &plan.notes {
        tracing::warn!("{note}");
    }
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

/// The files kiln itself writes at the top of `NAME.d/` (the manifests element writes
/// `dib-manifests/`).
const RECORD_FILES: [&str; 5] = [
    "build.log",
    crate::record::FILE_NAME,
    "timings.json",
    kiln_pipeline::sbom::FILE_NAME,
    "dib-manifests",
];

/// Makes `NAME.d/`, the build's record beside its outputs, a real directory whose entries kiln
/// writes are not symlinks: kiln writes there as root, so a link planted in the output
/// directory (`NAME.d -> /etc`, `NAME.d/build.log -> /etc/shadow`) must be removed, never
/// followed. Links elsewhere in the directory are left alone; kiln does not write through them.
fn record_dir(dir: &Path) -> anyhow::Result<()> {
    if fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
        fs::remove_file(dir).with_context(|| format!("removing the link {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for name in RECORD_FILES {
        let p = dir.join(name);
        if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            fs::remove_file(&p).with_context(|| format!("removing the link {}", p.display()))?;
        }
    }
    Ok(())
}
