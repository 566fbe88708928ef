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
    Plan(Box<commands::plan::PlanCmd>),
    /// Pin the packages a build installs in a lock file (an apt Packages index).
    Lock(Box<commands::lock::LockCmd>),
    /// Compare an image with another, or with its rebuild: the first differing path.
    ///
    /// `kiln verify IMAGE --against OTHER` compares two images of one type. `kiln verify IMAGE
    /// ELEMENTS... [options]` rebuilds with that request and compares; `kiln verify IMAGE` alone
    /// rebuilds from the record `kiln build` wrote in NAME.d/request.json. IMAGE is
    /// NAME.<type> (image.qcow2, image.tar, …), or NAME to compare every type the record lists.
    /// The rebuild needs root, ignores kiln's caches and is removed afterwards.
    ///
    /// Prints "identical", or the first path inside the filesystem that differs and what
    /// differs (only in one image, type, mode, owner, size, content, link target, xattrs,
    /// mtime); then, when diffoscope is installed, its report on that pair. Exit status: 0
    /// identical, 1 different, 2 bad input.
    Verify(Box<commands::verify::VerifyCmd>),
    /// Add container builds to an image server tree for LXC and Incus clients, and serve it.
    ///
    /// `kiln publish NAME... --to DIR` copies the lxc, incus, incus-vm and incus-unified
    /// outputs of each build (read from NAME.d/image.json) into
    /// DIR/images/DIST/RELEASE/ARCH/VARIANT/BUILD/ with SHA256SUMS, then rewrites
    /// DIR/meta/1.0/index-system and index-user (LXC's download template) and
    /// DIR/streams/v1/index.json and images.json (Incus and LXD simplestreams). Builds that
    /// expired or are beyond --keep leave the indexes and the tree. Indexes are replaced by
    /// rename after the files they name are in place, so a client never sees a dangling entry;
    /// concurrent publishes into DIR wait for each other. See docs/publishing.md.
    ///
    /// Exit status: 0 published, 1 failed, 2 bad input (an expired build, a serial already
    /// published with other files, a missing output).
    Publish(Box<commands::publish::PublishCmd>),
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
    /// Build matrices: list, run or emit as CI jobs the cells of a matrix file.
    #[command(subcommand)]
    Matrix(commands::matrix::MatrixCmd),
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
            kiln_sandbox::die_quietly_on_closed_pipe();
            let cmd = commands::element_info::ElementInfoCmd::parse_from(argv);
            cmd.run()
        }
        _ => match Cli::parse_from(argv).command {
            Command::Build(c) => c.run(),
            Command::Plan(c) => {
                kiln_sandbox::die_quietly_on_closed_pipe();
                c.run()
            }
            Command::Lock(c) => c.run(),
            Command::Verify(c) => c.run(),
            Command::Publish(c) => c.run(),
            Command::ElementInfo(c) => {
                kiln_sandbox::die_quietly_on_closed_pipe();
                c.run()
            }
            Command::BlockDevice(c) => c.run(),
            Command::Test(c) => c.run(),
            Command::Cache(c) => c.run(),
            Command::Elements(c) => c.run(),
            Command::Matrix(c) => c.run(),
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
            return e.exit_code();
        }
        if let Some(e) = cause.downcast_ref::<kiln_verify::Error>() {
            return if e.is_input_error() { 2 } else { 1 };
        }
        if let Some(e) = cause.downcast_ref::<kiln_publish::Error>() {
            return if e.is_input_error() { 2 } else { 1 };
        }
        if let Some(e) = cause.downcast_ref::<kiln_matrix::Error>() {
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
    use clap::{Args as _, CommandFactory};

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// Every request flag, with a value that changes the request.
    const FLAGS: &[&[&str]] = &[
        &["-a", "arm64"],
        &["-o", "other"],
        &["-t", "raw,tar"],
        &["-x"],
        &["--lock", "x.lock"],
        &["-u"],
        &["-c"],
        &["-n"],
        &["-p", "vim,curl"],
        &["--checksum"],
        &["--no-tmpfs"],
        &["--min-tmpfs", "7"],
        &["--offline"],
        &["--image-size", "3"],
        &["--image-extra-size", "100"],
        &["--mkfs-journal-size", "32"],
        &["--image-cache", "/elsewhere"],
        &["--max-online-resize", "1000"],
        &["--mkfs-options", "-m 1"],
        &["--qemu-img-options", "compat=1.1"],
        &["--root-label", "lbl"],
        &["--install-type", "package"],
        &["--no-cache"],
        &["--seed", "s1"],
        &["--docker-target", "repo:tag"],
    ];

    /// Flags accepted for DIB's sake that make no request: `kiln build` and `kiln plan` reject
    /// the ramdisk element.
    const COMPAT_ONLY: &[&[&str]] = &[&["--ramdisk-element", "ramdisk"]];

    /// The request each front end makes for `el FLAGS`.
    fn requests(flags: &[&str]) -> [String; 3] {
        let env: std::collections::BTreeMap<String, String> = [
            ("PATH", "/bin"),
            ("DIB_RELEASE", "bookworm"),
            ("OTHER", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let argv = |cmd: &[&'static str]| -> Vec<OsString> {
            cmd.iter()
                .chain(&["el"])
                .chain(flags)
                .map(OsString::from)
                .collect()
        };
        let build = match Cli::try_parse_from(argv(&["kiln", "build"]))
            .unwrap()
            .command
        {
            Command::Build(c) => c.request_in(env.clone(), Vec::new()),
            other => panic!("{other:?}"),
        };
        let plan = match Cli::try_parse_from(argv(&["kiln", "plan"]))
            .unwrap()
            .command
        {
            Command::Plan(c) => c.request_in(env.clone(), Vec::new()),
            other => panic!("{other:?}"),
        };
        let dic = commands::build::disk_image_create_args(argv(&["disk-image-create"]))
            .unwrap()
            .request_in(env, Vec::new());
        [build, plan, dic].map(|r| format!("{r:?}"))
    }

    /// `kiln lock` makes `kiln build`'s request for every request flag but `-o` (which names
    /// the lock file there).
    #[test]
    fn lock_makes_the_build_request() {
        let env: std::collections::BTreeMap<String, String> =
            [("PATH", "/usr/bin"), ("DIB_RELEASE", "bookworm")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        for flags in FLAGS.iter().chain(COMPAT_ONLY).filter(|f| f[0] != "-o") {
            let argv = |cmd: &str| -> Vec<OsString> {
                ["kiln", cmd, "el"]
                    .iter()
                    .chain(flags.iter())
                    .map(OsString::from)
                    .collect()
            };
            let build = match Cli::try_parse_from(argv("build")).unwrap().command {
                Command::Build(c) => c.request_in(env.clone(), Vec::new()),
                other => panic!("{other:?}"),
            };
            let lock = match Cli::try_parse_from(argv("lock")).unwrap().command {
                Command::Lock(c) => c.request_in(env.clone(), Vec::new()),
                other => panic!("{other:?}"),
            };
            assert_eq!(
                format!("{build:?}"),
                format!("{lock:?}"),
                "kiln lock {flags:?}"
            );
        }
    }

    /// `kiln build`, `kiln plan` and `disk-image-create` make the same request for every request
    /// flag, and every flag of the shared group is listed in FLAGS and changes the request.
    #[test]
    fn plan_and_build_make_the_same_request() {
        let group = crate::dib::RequestArgs::augment_args(clap::Command::new("x"));
        for arg in group.get_arguments().filter(|a| !a.is_positional()) {
            let names: Vec<String> = arg
                .get_short()
                .map(|c| format!("-{c}"))
                .into_iter()
                .chain(arg.get_long().map(|l| format!("--{l}")))
                .collect();
            assert!(
                FLAGS
                    .iter()
                    .chain(COMPAT_ONLY)
                    .any(|f| names.contains(&f[0].to_string())),
                "request flag {names:?} is missing from FLAGS"
            );
        }
        let [base, ..] = requests(&[]);
        for flags in FLAGS {
            let [build, plan, dic] = requests(flags);
            assert_eq!(build, plan, "kiln plan {flags:?}");
            assert_eq!(build, dic, "disk-image-create {flags:?}");
            assert_ne!(build, base, "{flags:?} does not change the request");
        }
        for flags in COMPAT_ONLY {
            let [build, plan, dic] = requests(flags);
            assert_eq!(build, plan, "kiln plan {flags:?}");
            assert_eq!(build, dic, "disk-image-create {flags:?}");
        }
    }
}
