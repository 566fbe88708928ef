//! `kiln elements check`: lint third-party elements against the DIB element contract.
//!
//! The linter itself is library code (`kiln_element::lint` for the rules that only read
//! files, `kiln_pipeline::lint` for the ones that run bash or plan block-device layouts).
//! This file only takes the arguments, prints the findings and a summary, and picks the exit
//! code.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use kiln_pipeline::BuildRequest;

/// Element subcommands.
#[derive(Debug, Subcommand)]
pub enum ElementsCmd {
    /// Check elements for what will not work with kiln or DIB, and say how to fix it.
    ///
    /// Each PATH is an element directory, or a directory of elements (an ELEMENTS_PATH entry):
    /// a directory holding element-deps, element-provides, a <phase>.d directory,
    /// environment.d, package-installs.yaml, pkg-map, a block-device-*.yaml or a README.rst
    /// is taken as one element.
    ///
    /// Checked: hooks that dib-run-parts would skip (names with dots, missing exec bit) or
    /// cannot exec (no #! line); environment.d names that are never sourced, exec bits,
    /// syntax, and variables used without a default under `set -u`; README.rst;
    /// element-deps names that no element on the path is or provides (the PATHs, then
    /// ELEMENTS_PATH, then kiln's built-in elements), and comments there; hook names that
    /// another element on the path also uses; package-installs and pkg-map files;
    /// block-device-*.yaml layouts.
    ///
    /// Findings are printed one a line, as FILE[:LINE]: error|warning: MESSAGE (what to do),
    /// sorted, then a summary. Exit code: 0 when there is no error (warnings allowed), 1 when
    /// there are errors, 2 when a PATH is not a directory.
    ///
    /// Sourcing runs code: every environment.d file is sourced by bash with `set -eu -o
    /// pipefail`, after the environment.d files of its element and its dependencies that DIB
    /// sources before it, as the current user, with an empty environment apart from a few DIB
    /// variables (ARCH=amd64, DISTRO_NAME=debian, DIB_RELEASE=bookworm, ...), in an empty
    /// temporary directory, and killed after 5 seconds. Nothing else isolates it: a file that writes outside its
    /// directory or uses the network does so. Use --no-source for elements you do not trust;
    /// their environment.d files are then only parsed (bash -n).
    Check(CheckArgs),
}

/// Arguments of `kiln elements check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Element directories, or directories of elements.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Do not source environment.d files; only check their syntax with `bash -n`.
    #[arg(long)]
    no_source: bool,
}

impl ElementsCmd {
    /// Runs the subcommand; returns the exit code.
    pub fn run(&self) -> anyhow::Result<i32> {
        crate::logging::init(0);
        match self {
            Self::Check(args) => args.run(),
        }
    }
}

impl CheckArgs {
    fn run(&self) -> anyhow::Result<i32> {
        for path in &self.paths {
            if !path.is_dir() {
                let what = if path.exists() {
                    "is not a directory"
                } else {
                    "does not exist"
                };
                return Err(super::UsageError(format!(
                    "{} {what}; give element directories or directories of elements",
                    path.display()
                ))
                .into());
            }
        }
        let req = BuildRequest {
            env: std::env::vars().collect(),
            ..BuildRequest::default()
        };
        let report = kiln_pipeline::lint::check(&self.paths, &req, !self.no_source)?;
        for finding in &report.findings {
            println!("{finding}");
        }
        println!(
            "{}, {} in {}",
            plural(report.errors(), "error"),
            plural(report.warnings(), "warning"),
            plural(report.elements, "element")
        );
        Ok(i32::from(report.has_errors()))
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}
