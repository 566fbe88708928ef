//! kiln-matrix: build matrices. A YAML file names axes (distribution, release, architecture,
//! variant, outputs), include and exclude rules and environments; it expands into cells, each
//! one `kiln build` command line.
//!
//! Why a crate of its own: the matrix is a seam above the build. The same expanded cells are
//! printed (`kiln matrix plan`), run on this machine by child `kiln build` processes
//! ([`run`]: one process per cell isolates failures and reuses `kiln build`'s own teardown on
//! signals), or written as pipeline definitions for a CI engine ([`emit`]), which then runs
//! each cell as a job of its own: kiln has no scheduler.

pub mod emit;
mod error;
pub mod expand;
pub mod run;
pub mod spec;

pub use error::Error;
pub use expand::{boot_check, expand, load, plan_text, select, BootCheck, Cell, AXES};
