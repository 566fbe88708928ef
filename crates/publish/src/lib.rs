//! kiln-publish: `kiln publish`, an image server tree made from kiln's container builds.
//!
//! A build with `-t lxc`, `-t incus`, `-t incus-vm` or `-t incus-unified` leaves
//! `NAME.d/image.json` beside its outputs ([`input`]). [`publish`] copies those outputs into one
//! static directory tree that plain web servers can serve and two kinds of clients read:
//!
//! - LXC's `download` template: `images/DIST/RELEASE/ARCH/VARIANT/BUILD/` with `rootfs.tar.xz`,
//!   `meta.tar.xz` and `SHA256SUMS`, and `meta/1.0/index-system` / `index-user` naming the
//!   newest build of each image;
//! - Incus and LXD: a simplestreams tree, `streams/v1/index.json` and `images.json`
//!   ([`streams`]), whose items are the Incus files beside the LXC ones in the same build
//!   directory.
//!
//! The tree is rebuilt from what it holds on every publish, under a lock file, in an order that
//! keeps every index valid at every instant ([`tree`]): build files first, indexes last, by
//! rename, removals after. [`sign`] makes detached GPG signatures with the host's `gpg`;
//! [`serve`] is a small read-only HTTP/HTTPS server for trying a tree out.

pub mod input;
pub mod serve;
pub mod sign;
pub mod streams;
pub mod tree;

use std::path::PathBuf;

pub use input::{BuildInput, ImageRecord};
pub use tree::{publish, Options, Report};

/// What can go wrong while publishing or serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A build's `NAME.d/image.json` (or a file it names) is not usable.
    #[error("{}: {message}", path.display())]
    Input {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// The build to publish has already expired.
    #[error(
        "{name}: the image expired at {expiry} ({when}), before now; rebuild it with a later \
         expiry (KILN_IMAGE_EXPIRY at build time sets it) or publish a newer build"
    )]
    Expired {
        /// The build's name (`-o` base).
        name: String,
        /// Its expiry, Unix seconds.
        expiry: u64,
        /// The same, RFC 3339 UTC.
        when: String,
    },
    /// The same serial is already published with other files.
    #[error(
        "{}: build {serial} is already published with different files ({detail}); give the new \
         build its own serial (rebuild it) or remove that directory first",
        dir.display()
    )]
    Conflict {
        /// The build directory in the tree.
        dir: PathBuf,
        /// The serial.
        serial: String,
        /// Which file differs.
        detail: String,
    },
    /// A host command (gpg) failed or is missing.
    #[error(transparent)]
    Host(#[from] kiln_host::Error),
    /// The TLS certificate or key cannot be used.
    #[error("{}: {message}", path.display())]
    Tls {
        /// The PEM file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A step failed on purpose (tests of the update order).
    #[error("injected failure after step {0}")]
    Injected(&'static str),
}

impl Error {
    /// Whether the error is the user's input (exit 2) rather than a failure (exit 1).
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            Error::Input { .. }
                | Error::Expired { .. }
                | Error::Conflict { .. }
                | Error::Tls { .. }
        ) || matches!(self, Error::Host(kiln_host::Error::NotFound { .. }))
    }
}

/// `Error::Io` for `path`.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}

/// Unix seconds as RFC 3339 UTC (`2023-11-14T22:13:20Z`).
pub fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}
