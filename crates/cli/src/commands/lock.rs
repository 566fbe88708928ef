//! `kiln lock`: write the lock of a build, the apt `Packages` stanzas of every package it
//! installs, and with `--update` say what changed since the last one.
//!
//! It takes `kiln build`'s request flags ([`RequestArgs`], flattened) so the lock covers what
//! the same build would install (`-p`, `-n`, `--install-type`, …); `-o` names the lock file
//! instead of the image. The work is `kiln_pipeline::lock`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;

use kiln_pipeline::lock::{self, Lock};
use kiln_pipeline::{BuildPlan, BuildRequest};

use crate::dib::RequestArgs;

/// Resolve a build's packages with apt and write them, pinned, to a lock file.
#[derive(Debug, Args)]
#[command(mut_arg("name", |a| a
    .value_name("FILE")
    .help("The lock file to write (default: kiln.lock); its side file is FILE.meta")))]
#[command(mut_arg("elements", |a| a.required(false).required_unless_present("fetch")))]
pub struct LockCmd {
    #[command(flatten)]
    request: RequestArgs,
    /// Re-resolve, print what changed since the existing lock (added, removed, upgraded;
    /// "(security)" when the new version comes from a security suite) and rewrite it.
    #[arg(long)]
    update: bool,
    /// With --update: print the changes as one JSON object.
    #[arg(long, requires = "update")]
    json: bool,
    /// Resolve nothing: fetch every `.deb` of the existing lock into the cache's store (checked
    /// by Size and SHA256), so that `kiln build --lock FILE --offline` needs no network. No
    /// elements are needed; `-o` names the lock, `--image-cache` the cache.
    #[arg(long, conflicts_with_all = ["update", "json"])]
    fetch: bool,
}

impl LockCmd {
    /// The request the lock is made for, in the environment `env`: the one `kiln build` with
    /// the same flags makes, except that `-o` names the lock file, not the image.
    pub fn request_in(&self, env: BTreeMap<String, String>, typed: Vec<String>) -> BuildRequest {
        let mut req = self.request.request(env, typed);
        req.image_name = PathBuf::from(kiln_pipeline::settings::IMAGE_NAME.default_value());
        req
    }

    /// `--fetch`: fills the cache's `.deb` store with every file of the lock at `path`.
    fn fetch(&self, path: &std::path::Path) -> anyhow::Result<i32> {
        use kiln_pipeline::locked;
        if !path.is_file() {
            return Err(super::UsageError(format!(
                "{}: no lock to fetch for; make one with `kiln lock ELEMENTS... -o {}`",
                path.display(),
                path.display()
            ))
            .into());
        }
        let lock = Lock::read(path).map_err(kiln_pipeline::Error::from)?;
        let debs = locked::debs(&lock, path).map_err(kiln_pipeline::Error::from)?;
        let uris = locked::uris(&lock, path).map_err(kiln_pipeline::Error::from)?;
        let req = self.request_in(std::env::vars().collect(), Vec::new());
        let root = kiln_pipeline::plan::checked_cache_root(&req)?;
        let store = locked::Store::new(&root);
        // The cache's shared lock: a trim never runs while the store is filled.
        let guard = kiln_pipeline::cache::SharedLock::acquire(&root)?;
        let fetched = store
            .fill(&debs, &uris, false)
            .map_err(kiln_pipeline::Error::from)?;
        drop(guard);
        eprintln!(
            "kiln: {} packages of {} in {} ({fetched} fetched)",
            debs.len(),
            path.display(),
            store.dir().display()
        );
        Ok(0)
    }

    /// Makes the lock and writes it (and with `--update`, prints the changes).
    pub fn run(&self) -> anyhow::Result<i32> {
        crate::logging::init(0);
        self.request.check_supported()?;
        if self.request.lock.is_some() {
            return Err(super::UsageError(
                "--lock builds from a lock (kiln build, kiln plan); kiln lock makes one: leave it out"
                    .into(),
            )
            .into());
        }
        let path = self
            .request
            .name
            .clone()
            .unwrap_or_else(|| PathBuf::from(lock::LOCK_FILE));
        if self.fetch {
            return self.fetch(&path);
        }
        // The old lock is read first: a damaged one stops the update before apt runs.
        let old = if self.update {
            if !path.exists() {
                return Err(super::UsageError(format!(
                    "{}: no lock to update; make one with `kiln lock` first",
                    path.display()
                ))
                .into());
            }
            Some(Lock::read(&path).map_err(kiln_pipeline::Error::from)?)
        } else {
            None
        };
        let typed: Vec<String> = std::env::args().skip(2).collect();
        let req = self.request_in(std::env::vars().collect(), typed);
        let plan = BuildPlan::new(&req)?;
        let new = lock::lock(&plan)?;
        new.write(&path).map_err(kiln_pipeline::Error::from)?;
        if let Some(old) = old {
            let d = lock::diff(&old, &new);
            if self.json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else if d.is_empty() {
                println!(
                    "{}: unchanged ({} packages)",
                    path.display(),
                    new.stanzas.len()
                );
            } else {
                print!("{}", d.to_text());
            }
        } else {
            eprintln!(
                "kiln: locked {} packages in {}",
                new.stanzas.len(),
                path.display()
            );
        }
        Ok(0)
    }
}
