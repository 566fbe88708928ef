//! The one place this crate starts external programs (mkfs.vfat, mcopy, qemu-img, qemu), through
//! the host-command layer (`kiln-host`): every command is logged with its argv, duration and
//! exit status, and a missing program is reported with the package that provides it.

use std::ffi::OsStr;
use std::process::Stdio;

use kiln_host::{Captured, Cmd, Running, Stdin};

use crate::Error;

fn command<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Cmd {
    Cmd::new(program).args(args).stdin(Stdin::Null)
}

/// Runs `program` to completion with its output captured; a non-zero exit is an error that
/// carries the argv and stderr. `package` names what to install when the program is missing.
pub(crate) fn run<S: AsRef<OsStr>>(
    program: &str,
    package: &str,
    args: &[S],
) -> Result<Captured, Error> {
    command(program, args)
        .run()
        .map_err(|e| host_error(program, package, e))
}

/// Starts `program` with stdout and stderr piped, for long-running processes (qemu). The kernel
/// kills it when the calling thread ends, so a killed kiln leaves no qemu behind.
pub(crate) fn spawn<S: AsRef<OsStr>>(
    program: &str,
    package: &str,
    args: &[S],
) -> Result<Running, Error> {
    command(program, args)
        .die_with_parent()
        .spawn(Stdio::piped(), Stdio::piped())
        .map_err(|e| host_error(program, package, e))
}

/// The boot test's own error for what the host layer reports.
fn host_error(program: &str, package: &str, e: kiln_host::Error) -> Error {
    match e {
        kiln_host::Error::NotFound { tool, .. } => Error::ToolMissing {
            tool,
            package: package.to_string(),
        },
        kiln_host::Error::Spawn { source, .. } => Error::ToolStart {
            tool: program.to_string(),
            source,
        },
        kiln_host::Error::Failed {
            command,
            status,
            stderr,
            ..
        } => Error::ToolFailed {
            argv: command,
            status,
            stderr,
        },
        other => Error::ToolFailed {
            argv: program.to_string(),
            status: "not run".into(),
            stderr: other.to_string(),
        },
    }
}
