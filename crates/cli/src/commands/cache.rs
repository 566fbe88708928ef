//! `kiln cache`: list and trim kiln's cache (phase layers and cached outputs).

use clap::Subcommand;
use kiln_pipeline::cache::{entries, gc, human};
use kiln_pipeline::BuildRequest;

/// Cache subcommands.
#[derive(Debug, Subcommand)]
pub enum CacheCmd {
    /// List phase layers and cached outputs, oldest use first.
    Ls,
    /// Delete the least recently used entries until the cache is at most SIZE (e.g. 20GiB).
    Gc {
        /// Size limit (units as in DIB: 20GiB, 500MB, …).
        #[arg(long, value_name = "SIZE")]
        max_size: String,
    },
}

impl CacheCmd {
    /// Runs the subcommand.
    pub fn run(&self) -> anyhow::Result<i32> {
        crate::logging::init(0);
        let req = BuildRequest {
            env: std::env::vars().collect(),
            ..BuildRequest::default()
        };
        let root = kiln_pipeline::plan::cache_root(&req);
        match self {
            Self::Ls => {
                let es = entries(&root);
                let total: u64 = es.iter().map(|e| e.bytes).sum();
                for e in &es {
                    println!(
                        "{:<8} {:<13} {:>10}  {}",
                        e.kind,
                        e.label,
                        human(e.bytes),
                        e.path.file_name().unwrap_or_default().to_string_lossy()
                    );
                }
                println!(
                    "{} entries, {} in {}",
                    es.len(),
                    human(total),
                    root.display()
                );
                Ok(0)
            }
            Self::Gc { max_size } => {
                let max = kiln_blockdev::parse_size(max_size)?;
                let (removed, total) = gc(&root, max)?;
                println!("removed {removed} entries; cache is now {}", human(total));
                Ok(0)
            }
        }
    }
}
