//! One file per subcommand.

pub mod block_device;
pub mod build;
pub mod cache;
pub mod element_info;
pub mod elements;
pub mod lock;
pub mod matrix;
pub mod plan;
pub mod publish;
pub mod test;
pub mod verify;

/// A usage error found by the CLI itself (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);
