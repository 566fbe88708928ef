//! `kiln publish`: add container builds to an image server tree, and serve it for a try-out.
//!
//! The work is `kiln_publish::publish` (the tree, indexes, signatures, retention) and
//! `kiln_publish::serve` (the static server); this file parses the flags and prints.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{ArgAction, Args};
use kiln_publish::serve::{Server, Tls};
use kiln_publish::{BuildInput, Options};

use super::UsageError;

/// `kiln publish`'s arguments (the help text is the doc comment of `Command::Publish`).
#[derive(Debug, Args)]
pub struct PublishCmd {
    /// Builds to publish: the `-o` NAME of each (reads NAME.d/image.json).
    #[arg(value_name = "NAME")]
    names: Vec<String>,
    /// The image server tree to add them to (created if missing).
    #[arg(long, value_name = "DIR")]
    to: PathBuf,
    /// Sign every index and SHA256SUMS with this GPG key (id, fingerprint or user id of a
    /// secret key in your keyring): FILE.asc, armored and detached.
    #[arg(long, value_name = "KEY")]
    sign_key: Option<String>,
    /// Builds kept per image (distribution, release, architecture, variant); older ones leave
    /// the indexes and the tree.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    keep: u32,
    /// Then serve the tree read-only on this address (e.g. 127.0.0.1:8443) until Ctrl-C.
    #[arg(long, value_name = "ADDR")]
    serve: Option<String>,
    /// Serve HTTPS with this PEM certificate (chain); needs --tls-key. LXC's download template
    /// speaks HTTPS only.
    #[arg(long, value_name = "FILE", requires = "tls_key", requires = "serve")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Show more (-v: each request served).
    #[arg(short = 'v', long, action = ArgAction::Count)]
    verbose: u8,
}

impl PublishCmd {
    /// Publishes, then serves if asked.
    pub fn run(&self) -> anyhow::Result<i32> {
        crate::logging::init(self.verbose);
        // Names, or neither names nor --serve (expiry and retention only): publish. --serve
        // alone serves the tree as it is.
        if !self.names.is_empty() || self.serve.is_none() {
            self.publish()?;
        } else if !self.to.is_dir() {
            return Err(UsageError(format!(
                "{}: no such directory to serve; publish builds into it first (kiln publish \
                 NAME --to {})",
                self.to.display(),
                self.to.display()
            ))
            .into());
        }
        if let Some(addr) = &self.serve {
            self.serve(addr)?;
        }
        Ok(0)
    }

    fn publish(&self) -> anyhow::Result<()> {
        let inputs = self
            .names
            .iter()
            .map(|n| BuildInput::load(n))
            .collect::<Result<Vec<_>, _>>()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let opts = Options {
            to: self.to.clone(),
            sign_key: self.sign_key.clone(),
            keep: self.keep as usize,
            now,
            fail_after: None,
        };
        let report = kiln_publish::publish(&inputs, &opts)?;
        for d in &report.added {
            println!("added      {d}");
        }
        for d in &report.unchanged {
            println!("unchanged  {d}");
        }
        for (d, why) in &report.removed {
            println!("removed    {d}: {why}");
        }
        println!(
            "{}: {} image(s) in meta/1.0/index-system; streams/v1/index.json for Incus{}",
            self.to.display(),
            report.index.len(),
            if self.sign_key.is_some() {
                ", signed"
            } else {
                ""
            }
        );
        Ok(())
    }

    fn serve(&self, addr: &str) -> anyhow::Result<()> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(Tls {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        let server = Server::bind(addr, &self.to, tls.as_ref())?;
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, Arc::clone(&stop))?;
        }
        let local = server.local_addr()?;
        let scheme = if server.is_tls() { "https" } else { "http" };
        eprintln!(
            "serving {} on {scheme}://{local}/ (read-only; Ctrl-C stops)",
            self.to.display()
        );
        server.run(&stop)?;
        eprintln!("stopped");
        Ok(())
    }
}
