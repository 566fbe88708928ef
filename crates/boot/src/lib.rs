//! kiln-boot: boot a disk image in qemu and test what it does on its first boot.
//!
//! `kiln test` uses it today; later commands (a build matrix, publishing) use it to gate
//! images on a real boot. The pieces, one module each:
//!
//! - [`seed`]: the NoCloud seed, a small vfat disk labelled `cidata` made without mounting;
//! - [`vm`]: the qemu run: firmware, accelerator, a copy-on-write overlay larger than the image
//!   (so the image is never changed and the guest has room to grow its root filesystem), and
//!   the serial console captured until a marker, a login prompt or the timeout;
//! - [`facts`]: the boot check. A guest script started after cloud-init has finished prints
//!   `KILN-FACT name=value` lines on the serial console; the host parses them from the noisy
//!   console, judges each against what was asked (firmware, disk size, architecture) and
//!   renders a table or JSON.
//!
//! Every result type is serialisable, so callers can store or print them as JSON.

pub mod facts;
pub mod seed;
pub mod vm;

mod exec;

use std::path::PathBuf;

pub use facts::{check, CheckReport, Expectations, FactRow, ParsedFacts};
pub use seed::Seed;
pub use vm::{boot, Arch, BootConfig, BootOutcome, Firmware, Wait};

/// Errors from preparing or running a boot.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image to boot does not exist.
    #[error("{}: no such image", path.display())]
    NoImage { path: PathBuf },
    /// A user-supplied user-data file cannot be used.
    #[error("{}: {reason}", path.display())]
    BadUserData { path: PathBuf, reason: String },
    /// An unknown guest architecture was asked for.
    #[error("unknown architecture {0:?}: use x86_64 or aarch64")]
    BadArch(String),
    /// A combination of options that cannot boot.
    #[error("{0}")]
    Unsupported(String),
    /// UEFI was asked for and no firmware files were found.
    #[error("UEFI boot on {arch} needs firmware files ({looked}); install {package}")]
    NoFirmware {
        arch: String,
        looked: String,
        package: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An external program is not installed.
    #[error("{tool} not found: install {package}")]
    ToolMissing { tool: String, package: String },
    /// An external program could not be started.
    #[error("cannot start {tool}: {source}")]
    ToolStart {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    /// An external program failed.
    #[error("`{argv}` failed ({status}): {stderr}")]
    ToolFailed {
        argv: String,
        status: String,
        stderr: String,
    },
    /// SIGINT or SIGTERM arrived during the boot; qemu was stopped and its files removed.
    #[error("interrupted by signal {signal}: qemu stopped, its temporary files removed")]
    Interrupted { signal: i32 },
    /// `qemu-img info` said something we could not read.
    #[error("{}: cannot read qemu-img info: {reason}", path.display())]
    ImageInfo { path: PathBuf, reason: String },
}

impl Error {
    /// True when the error comes from what the user gave (exit code 2), not from the boot.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            Error::NoImage { .. }
                | Error::BadUserData { .. }
                | Error::BadArch(_)
                | Error::Unsupported(_)
                | Error::NoFirmware { .. }
                | Error::ImageInfo { .. }
        )
    }

    /// The exit code a command should end with for this error: 128 + the signal for an
    /// interruption, 2 for bad input, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Interrupted { signal } => 128 + signal,
            e if e.is_input_error() => 2,
            _ => 1,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
