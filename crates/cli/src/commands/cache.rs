//! `kiln cache`: list and trim kiln's cache (phase layers and cached outputs).
//!
//! Both refuse a cache directory that is not the user's own and private (exit 2). `gc` takes
//! the cache's exclusive lock, so it waits for builds using the cache and never removes what
//! one of them is restoring; it skips and reports what it does not recognise.

use clap::Subcommand;
use kiln_pipeline::cache::{gc, human, scan, ExclusiveLock};
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
        let root = kiln_pipeline::plan::checked_cache_root(&req)?;
        match self {
            Self::Ls => {
                let found = scan(&root);
                let total: u64 = found.entries.iter().map(|e| e.bytes).sum();
                for e in &found.entries {
                    println!(
                        "{:<8} {:<13} {:>10}  {}",
                        e.kind,
                        e.label,
                        human(e.bytes),
                        e.path.file_name().unwrap_or_default().to_string_lossy()
                    );
                }
                for p in &found.unrecognised {
                    println!("{:<8} {:<13} {:>10}  {}", "unknown", "", "", p.display());
                }
                println!(
                    "{} entries, {} in {}",
                    found.entries.len(),
                    human(total),
                    root.display()
                );
                Ok(0)
            }
            Self::Gc { max_size } => {
                let max = kiln_blockdev::parse_size(max_size)?;
                let lock = if let Some(lock) = ExclusiveLock::try_acquire(&root)? {
                    lock
                } else {
                    eprintln!("kiln cache gc: waiting for the builds using the cache");
                    ExclusiveLock::acquire(&root)?
                };
                let r = gc(&lock, max);
                for p in &r.skipped {
                    eprintln!(
                        "warning: {} is not an entry kiln made; left alone (remove it if it is not yours)",
                        p.display()
                    );
                }
                for f in &r.failed {
                    eprintln!("warning: could not remove {f}");
                }
                let temporary = if r.temporary > 0 {
                    format!(
                        " and {} unfinished entries of interrupted builds",
                        r.temporary
                    )
                } else {
                    String::new()
                };
                println!(
                    "removed {} entries{temporary}; cache is now {}; {} skipped",
                    r.removed,
                    human(r.left),
                    r.skipped.len()
                );
                Ok(i32::from(!r.failed.is_empty()))
            }
        }
    }
}
