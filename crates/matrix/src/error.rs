//! The errors of kiln-matrix: each names the matrix file and, where known, the line, so a user
//! can go straight to the entry at fault.

use std::path::PathBuf;

/// What can go wrong reading, expanding or running a matrix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The matrix file could not be read.
    #[error("{}: cannot read the matrix file: {source}", path.display())]
    Read {
        /// The matrix file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid YAML, or does not have the matrix file's shape.
    #[error("{}{}: {message}", path.display(), at(*line))]
    Syntax {
        /// The matrix file.
        path: PathBuf,
        /// The line of the error (1-based), when the parser knows it.
        line: Option<usize>,
        /// What is wrong, and what to do.
        message: String,
    },
    /// The file parses, but an entry makes no sense (an unknown axis value, a duplicate cell).
    #[error("{}{}: {message}", path.display(), at(*line))]
    Invalid {
        /// The matrix file.
        path: PathBuf,
        /// The line of the entry at fault (1-based), when known.
        line: Option<usize>,
        /// What is wrong, and what to do.
        message: String,
    },
    /// `--only` matched no cell.
    #[error("{}: no cell matches --only {pattern:?}; `kiln matrix plan {}` lists the cell ids", path.display(), path.display())]
    NoCellMatches {
        /// The matrix file.
        path: PathBuf,
        /// The pattern given.
        pattern: String,
    },
    /// A file or directory kiln matrix writes could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A child process could not be started or waited for.
    #[error(transparent)]
    Host(#[from] kiln_host::Error),
}

impl Error {
    /// Whether the error is the user's input (exit 2) rather than a failure of the run.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            Self::Read { .. }
                | Self::Syntax { .. }
                | Self::Invalid { .. }
                | Self::NoCellMatches { .. }
        )
    }
}

fn at(line: Option<usize>) -> String {
    line.map(|l| format!(":{l}")).unwrap_or_default()
}
