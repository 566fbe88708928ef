//! `kiln cache`: list and trim kiln's cache (phase layers and cached outputs).

use std::fs;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use kiln_build::BuildRequest;

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

struct Entry {
    path: PathBuf,
    kind: &'static str,
    label: String,
    bytes: u64,
    used: u64,
}

fn used_time(p: &Path) -> u64 {
    for f in ["used", "complete", "meta.json"] {
        if let Ok(t) = fs::read_to_string(p.join(f)) {
            if let Ok(v) = t.trim().parse() {
                return v;
            }
        }
        if let Ok(m) = fs::metadata(p.join(f)) {
            if let Ok(t) = m.modified() {
                return t
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
            }
        }
    }
    0
}

fn entries(root: &Path) -> Vec<Entry> {
    let mut v = Vec::new();
    for (kind, sub) in [("layer", "phases"), ("outputs", "outputs")] {
        let Ok(rd) = fs::read_dir(root.join(sub)) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let label = if kind == "layer" {
                fs::read_to_string(p.join("meta.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .and_then(|v| v["inputs"]["phase"].as_str().map(String::from))
                    .unwrap_or_default()
            } else {
                fs::read_dir(p.join("files"))
                    .map(|rd| {
                        rd.flatten()
                            .map(|f| f.file_name().to_string_lossy().into_owned())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default()
            };
            v.push(Entry {
                bytes: kiln_build::cache::du_bytes(&p),
                used: used_time(&p),
                path: p,
                kind,
                label,
            });
        }
    }
    v.sort_by(|a, b| a.used.cmp(&b.used).then(a.path.cmp(&b.path)));
    v
}

impl CacheCmd {
    /// Runs the subcommand.
    pub fn run(&self) -> anyhow::Result<i32> {
        crate::logging::init(0);
        let req = BuildRequest {
            env: std::env::vars().collect(),
            ..BuildRequest::default()
        };
        let root = kiln_build::plan::cache_root(&req);
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
                let es = entries(&root);
                let mut total: u64 = es.iter().map(|e| e.bytes).sum();
                let mut removed = 0;
                for e in &es {
                    if total <= max {
                        break;
                    }
                    fs::remove_dir_all(&e.path)?;
                    total = total.saturating_sub(e.bytes);
                    removed += 1;
                }
                println!("removed {removed} entries; cache is now {}", human(total));
                Ok(0)
            }
        }
    }
}

fn human(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", units[i])
}
