//! The one place this crate starts external programs (mkfs.vfat, mcopy, qemu-img, qemu).
//!
//! Every argv is logged at debug level and a missing program is reported with the package
//! that provides it. When the shared host-command layer lands, this module is what it
//! replaces.

use std::ffi::OsStr;
use std::process::{Child, Command, Output, Stdio};

use crate::Error;

/// Builds the command for `program` with `args`, logging the argv. Stdin is closed.
fn command<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    tracing::debug!(argv = ?cmd, "running");
    cmd
}

/// Runs `program` to completion with its output captured; a non-zero exit is an error that
/// carries the argv and stderr. `package` names what to install when the program is missing.
pub(crate) fn run<S: AsRef<OsStr>>(
    program: &str,
    package: &str,
    args: &[S],
) -> Result<Output, Error> {
    let out = command(program, args)
        .output()
        .map_err(|source| spawn_error(program, package, source))?;
    if !out.status.success() {
        return Err(Error::ToolFailed {
            argv: argv_text(program, args),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// Starts `program` with stdout and stderr piped, for long-running processes (qemu).
pub(crate) fn spawn<S: AsRef<OsStr>>(
    program: &str,
    package: &str,
    args: &[S],
) -> Result<Child, Error> {
    command(program, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| spawn_error(program, package, source))
}

fn spawn_error(program: &str, package: &str, source: std::io::Error) -> Error {
    if source.kind() == std::io::ErrorKind::NotFound {
        Error::ToolMissing {
            tool: program.to_string(),
            package: package.to_string(),
        }
    } else {
        Error::ToolStart {
            tool: program.to_string(),
            source,
        }
    }
}

fn argv_text<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.as_ref().to_string_lossy());
    }
    s
}
