//! kiln-pipeline: the build pipeline.
//!
//! A [`BuildRequest`] becomes a [`BuildPlan`] (pure: elements resolved, hooks merged, outputs and
//! block-device layout chosen), and [`pipeline::run`] executes the plan in DIB's phase order and
//! places, with every failure path tearing down what was set up.

// Errors are returned only on the failure path, where their size does not matter; the report
// they carry (the last lines of a failed hook) is worth more than a smaller Result.
#![allow(clippy::result_large_err)]

pub mod cache;
pub mod env;
pub mod host;
pub mod in_image;
pub mod lint;
pub mod lock;
pub mod locked;
pub mod packages;
pub mod pipeline;
pub mod plan;
pub mod release;
pub mod report;
pub mod request;
pub mod runner;
pub mod sbom;
pub mod settings;
pub mod testing;
mod workspace;

use std::path::PathBuf;

pub use plan::BuildPlan;
pub use request::BuildRequest;

/// Everything that can stop a build. Input errors map to exit code 2, build failures to 1,
/// interrupts to 128 + signal.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A problem in the elements (unknown element, bad YAML, duplicate hook, …).
    #[error(transparent)]
    Element(#[from] kiln_element::Error),
    /// A problem in the block-device layer.
    #[error(transparent)]
    BlockDevice(#[from] kiln_blockdev::Error),
    /// Block devices that could not be fully torn down.
    #[error(transparent)]
    Teardown(#[from] kiln_blockdev::TeardownError),
    /// A problem producing outputs.
    #[error(transparent)]
    Output(#[from] kiln_output::Error),
    /// A phase-cache or output-cache problem (storing, restoring, copying).
    #[error(transparent)]
    Cache(#[from] kiln_cache::Error),
    /// A sandbox problem (namespace, mounts, binfmt).
    #[error(transparent)]
    Sandbox(#[from] kiln_sandbox::Error),
    /// An I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A usage error detected by the engine (bad option value, missing tool).
    #[error("{0}")]
    Usage(String),
    /// A lock could not be made or read (`kiln lock`).
    #[error(transparent)]
    Lock(#[from] lock::Error),
    /// A locked build could not fetch, lay out or keep to its lock (`kiln build --lock`).
    #[error(transparent)]
    Locked(#[from] locked::Error),
    /// A release alias (`DIB_RELEASE=stable`) the mirror cannot resolve to a codename.
    #[error(transparent)]
    Release(#[from] release::Error),
    /// A bad line in an element's `cache-inputs` file.
    #[error(transparent)]
    CacheInputs(#[from] cache::host_files::DeclError),
    /// A hook failed.
    #[error("{phase}.d failed: hook {hook} of element {element} exited with status {status}\n--- last {n} lines of its output ---\n{}", tail.join("\n"), n = tail.len())]
    HookFailed {
        /// Phase name.
        phase: String,
        /// Element of the failing hook.
        element: String,
        /// Hook name.
        hook: String,
        /// Exit status.
        status: i32,
        /// The last lines of output.
        tail: Vec<String>,
        /// Timings of the hooks that ran.
        hooks: Vec<runner::HookTiming>,
    },
    /// The image's SBOM could not be made (`NAME.d/sbom.spdx.json`).
    #[error(transparent)]
    Sbom(#[from] sbom::SbomError),
    /// An engine step failed.
    #[error("{step} failed: {message}")]
    Step {
        /// Step name.
        step: String,
        /// What went wrong.
        message: String,
    },
    /// A build failed because a filesystem it writes to is full; `note` names it.
    #[error("{source}\n{note}")]
    NoSpace {
        /// The error the build stopped with.
        source: Box<Error>,
        /// Which filesystem is full and what to do.
        note: String,
    },
    /// The build was interrupted by a signal.
    #[error("interrupted by signal {signal}")]
    Interrupted {
        /// The signal number.
        signal: i32,
    },
    /// The build wrote its outputs, but its teardown could not undo everything it set up: a
    /// leak on the build host is a failure, not a warning.
    #[error(
        "the outputs were written ({}), but the teardown could not undo everything: {}; \
         check `findmnt`, `losetup -a` and the processes named, and remove what is left by hand",
        path_list(.outputs),
        .problems.join("; ")
    )]
    LeftBehind {
        /// The outputs the build wrote.
        outputs: Vec<PathBuf>,
        /// What could not be undone.
        problems: Vec<String>,
    },
}

/// Paths as a comma-separated list, for messages.
fn path_list(paths: &[PathBuf]) -> String {
    let v: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    v.join(", ")
}

/// Maps an I/O error on `path` to [`Error::Io`]; for `map_err(io(path))`.
pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Error {
    /// The process exit code for this error: 2 for bad input, 1 for a failed build, 128+N
    /// for a signal.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Element(_)
            | Self::Usage(_)
            | Self::CacheInputs(_)
            | Self::Release(_)
            | Self::Sandbox(kiln_sandbox::Error::Binfmt(_)) => 2,
            Self::BlockDevice(e) if e.is_input_error() => 2,
            Self::Output(e) if e.is_input_error() => 2,
            Self::Cache(e) if e.is_input_error() => 2,
            Self::Lock(e) if e.is_input_error() => 2,
            Self::Locked(e) if e.is_input_error() => 2,
            Self::Interrupted { signal } => 128 + signal,
            _ => 1,
        }
    }
}
