//! The errors of comparing two images.

use std::path::PathBuf;

/// Why two images could not be compared.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file operation failed.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause (shown in the message, so not a `source` of its own).
        cause: std::io::Error,
    },
    /// The image's format is not one kiln can compare (by its extension).
    #[error(
        "{}: kiln verify cannot tell the image's format from its name; expected one of .tar, \
         .tgz (.tar.gz), .squash (.squashfs), .raw, .qcow2, .vmdk, .vhd, .vdi, .qed, .vhdx",
        path.display()
    )]
    UnknownFormat {
        /// The image.
        path: PathBuf,
    },
    /// The two images are not of the same format.
    #[error("{} and {} are not of the same format ({first} vs {second}): compare images of one output type", a.display(), b.display())]
    FormatMismatch {
        /// The first image.
        a: PathBuf,
        /// The second image.
        b: PathBuf,
        /// The first image's format.
        first: String,
        /// The second image's format.
        second: String,
    },
    /// The image is damaged or not what its name says.
    #[error("{}: cannot read the image: {what}", path.display())]
    Damaged {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A host tool failed or is missing.
    #[error(transparent)]
    Host(#[from] kiln_host::Error),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            cause: source,
        }
    }

    /// Whether the error is the user's input (exit code 2): an image that does not exist, has
    /// no known format, does not match the other or cannot be read.
    pub fn is_input_error(&self) -> bool {
        match self {
            Error::Io { cause, .. } => matches!(
                cause.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ),
            Error::UnknownFormat { .. } | Error::FormatMismatch { .. } | Error::Damaged { .. } => {
                true
            }
            Error::Host(e) => matches!(e, kiln_host::Error::NotFound { .. }),
        }
    }
}
