//! kiln-host: the one way kiln runs programs on the build host.
//!
//! Why one layer: an image build runs hundreds of external commands (`losetup`, `sgdisk`,
//! `mkfs.*`, `tar`, `zstd`, `qemu-img`, `chroot`, …). Going through one builder means every one
//! of them is logged the same way, fails with the same typed error, and can be replaced by a
//! recording fake in tests.
//!
//! - [`Cmd`]: program, arguments, environment, working directory, standard input and an
//!   optional process group of its own. [`Cmd::run`] captures the output and fails on a
//!   non-zero exit; [`Cmd::run_json`] parses the JSON a tool prints (`lsblk -J`, `sfdisk -J`,
//!   `qemu-img info --output=json`, `losetup -J`; see [`json`]); [`Cmd::status`] lets the
//!   output through to kiln's own; [`Cmd::spawn`] streams it to the caller.
//! - Logging: every command that ran emits one `tracing` event at target [`LOG_TARGET`]
//!   (`kiln::cmd`, level info) when it ends, with the full argv shell-quoted, its duration and
//!   its exit status ([`log_line`]). The CLI writes that target to the build's `build.log`, and
//!   to the terminal with `-v`.
//! - [`Error`]: a tool that is not installed names the Debian package that provides it
//!   ([`tools::package_for`]); a failure carries the tool, the command line, the exit status
//!   and the last lines of stderr.
//! - [`Runner`], [`SystemRunner`] and the fake [`RecordingRunner`]: the seam through which the
//!   block-device layer (and anything else that wants a testable host) runs commands. The
//!   fake's record ([`Effect`]s) is shared with kiln-pipeline's wider `Host` fake, and
//!   [`unreleased`] checks it for set-ups (mounts, loop devices, partitions, process groups)
//!   that were never undone.
//! - [`tools`]: the table from tool to Debian package, and the preflight check that lists
//!   every missing tool in one message.
//!
//! Exceptions: none in the library crates. Every `std::process::Command` outside this crate
//! and outside tests goes through [`Cmd`]; the phase runner uses [`Cmd::process_group`] and
//! [`Cmd::spawn`] for hooks that run in their own process group with streamed output, and the
//! watchdog's helper process is started with [`Cmd::spawn`] and [`Running::detach`]; the boot
//! test (`kiln-boot`) starts qemu with [`Cmd::spawn`] and reads its console through the pipes.
//! Unit tests may run tools directly for their own checks.

mod cmd;
mod error;
pub mod json;
mod runner;
mod testing;
pub mod tools;

pub use cmd::{log_line, quote, quote_argv, Captured, Cmd, Outcome, Running, Stdin, LOG_TARGET};
pub use error::Error;
pub use runner::{host_can_mount, Output, Runner, SystemRunner};
pub use testing::{unreleased, Effect, RecordingRunner};
