//! kiln-element: everything kiln knows about elements before anything runs.
//!
//! An element is a directory of hooks and data on `ELEMENTS_PATH`, in the format of
//! OpenStack diskimage-builder. This crate discovers elements ([`Library`]), resolves what
//! the user asked for into an ordered set ([`resolve`]), merges their hooks into the tree DIB
//! calls `$TMP_HOOKS_PATH` ([`merge_hooks`]), and reads the declarative element files
//! ([`package_installs`], [`pkg_map`]). It also carries the built-in element library
//! ([`builtin`]).
//!
//! The crate is pure: no root, no processes, no network; only reading element directories
//! and writing the merged tree. That keeps every rule here testable with a few files in a
//! temporary directory. Everything is deterministic (sorted directory walks, ordered maps),
//! because the same command line must give the same plan on every machine.

// Error values carry every path a user needs to fix the problem (DuplicateHook names two
// elements and two files); they are built once on a failing path, so their size does not
// matter and boxing them would only make matching on them clumsier for callers.
#![allow(clippy::result_large_err)]

mod error;
mod hooks;
mod library;
mod node;
mod phase;
mod resolve;

pub mod builtin;
pub mod lint;
pub mod names;
pub mod package_installs;
pub mod pkg_map;

#[cfg(test)]
mod testutil;

pub use error::Error;
pub use hooks::{
    env_sort, is_env_file_name, is_runnable_hook_name, merge_hooks, run_parts_cmp, run_parts_sort,
    EntryKind, Hook, HookTree, MergedDir, TreeEntry,
};
pub use library::{Element, Library, Override};
pub use package_installs::PackageInstalls;
pub use phase::Phase;
pub use pkg_map::PkgMap;
pub use resolve::{
    resolve, resolve_exact, shell_quote, shell_word, ElementSet, Reason, ResolveRequest,
    ResolvedElement,
};
