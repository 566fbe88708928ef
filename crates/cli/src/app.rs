//! Command-line parsing and dispatch. The clap doc comments are the help text.

use std::ffi::OsString;
use std::path::Path;

use clap::{Parser, Subcommand};

use crate::commands;

/// kiln builds Linux images from diskimage-builder elements: fast, reproducible, and tidy.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build an image (the same options as disk-image-create).
    Build(Box<commands::build::BuildCmd>),
    /// Show everything a build would do, without running anything.
    Plan(commands::plan::PlanCmd),
    /// Print the expanded element set, as DIB's element-info does.
    ElementInfo(commands::element_info::ElementInfoCmd),
    /// Inspect block-device layouts.
    #[command(name = "block-device", subcommand)]
    BlockDevice(commands::block_device::BlockDeviceCmd),
    /// Boot a disk image in qemu: wait for a login prompt, or check the first boot (--check).
    Test(commands::test::TestCmd),
    /// Check element repositories against the DIB element contract.
    #[command(subcommand)]
    Elements(commands::elements::ElementsCmd),
    /// List and trim kiln's cache.
    #[command(subcommand)]
    Cache(commands::cache::CacheCmd),
    /// Internal: the helper `kiln build` starts to clean up if it is killed.
    #[command(name = "__watchdog", hide = true)]
    Watchdog,
}

/// Parses `argv` (dispatching on the program name) and runs the command; returns the exit code.
pub fn run(argv: Vec<OsString>) -> anyhow::Result<i32> {
    let prog = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|a| a.to_str())
        .unwrap_or("kiln")
        .to_string();
    match prog.as_str() {
        "disk-image-create" => commands::build::disk_image_create(argv),
        "element-info" => {
            let cmd = commands::element_info::ElementInfoCmd::parse_from(argv);
            cmd.run()
        }
        _ => match Cli::parse_from(argv).command {
            Command::Build(c) => c.run(),
            Command::Plan(c) => c.run(),
            Command::ElementInfo(c) => c.run(),
            Command::BlockDevice(c) => c.run(),
            Command::Test(c) => c.run(),
            Command::Cache(c) => c.run(),
            Command::Elements(c) => c.run(),
            Command::Watchdog => Ok(kiln_sandbox::watchdog::serve()),
        },
    }
}

/// Maps an error to kiln's exit codes: 2 for bad input, 1 for a failed build, 128+N for signals.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<kiln_pipeline::Error>() {
            return e.exit_code();
        }
        if cause.downcast_ref::<kiln_element::Error>().is_some() {
            return 2;
        }
        if let Some(e) = cause.downcast_ref::<kiln_blockdev::Error>() {
            return if e.is_input_error() { 2 } else { 1 };
        }
        if let Some(e) = cause.downcast_ref::<kiln_boot::Error>() {
            return if e.is_input_error() { 2 } else { 1 };
        }
        if cause.downcast_ref::<commands::UsageError>().is_some() {
            return 2;
        }
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
