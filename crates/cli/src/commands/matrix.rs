//! `kiln matrix`: build matrices (`plan`, `run`, `emit`). The file format, the expansion and
//! the runner live in kiln-matrix; this file parses arguments, resolves each cell's elements
//! (through `kiln build`'s own request flags and `BuildPlan`, to decide its boot check) and
//! prints.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use kiln_matrix::run::{Event, Status, Summary};
use kiln_matrix::Cell;
use kiln_pipeline::BuildPlan;

use super::UsageError;
use crate::dib::RequestArgs;

/// Describe, run or emit a matrix of builds (distribution × release × architecture × variant
/// × outputs), from a YAML file (docs/matrix.md).
#[derive(Debug, Subcommand)]
pub enum MatrixCmd {
    /// List the cells: id, the `kiln build` command each runs, its environment, its boot check.
    Plan(PlanArgs),
    /// Build the cells on this machine (each then boot-checked when its output boots), and
    /// print a summary table. Exit status: 0 when every cell passed, 1 otherwise, 2 bad input,
    /// 130/143 interrupted.
    Run(RunArgs),
    /// Write a CI pipeline running the cells as parallel jobs (one per cell).
    Emit(EmitArgs),
}

/// `kiln matrix plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The matrix file (YAML).
    file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `kiln matrix run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The matrix file (YAML).
    file: PathBuf,
    /// Cells to build at once; bounded by the cores and by the available memory (3 GiB per
    /// cell).
    #[arg(short = 'j', long = "jobs", default_value_t = 1, value_name = "N")]
    jobs: usize,
    /// Only the cells whose id matches: a glob with `*`, else a substring.
    #[arg(long, value_name = "PATTERN")]
    only: Option<String>,
    /// The directory holding one directory per cell (OUT/ID/).
    #[arg(
        short = 'o',
        long = "out",
        default_value = "matrix-out",
        value_name = "DIR"
    )]
    out: PathBuf,
    /// Also write the summary as JSON here (it is always written to OUT/summary.json).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// The kiln binary the cells run (default: this one).
    #[arg(long, value_name = "PATH", hide = true)]
    kiln_binary: Option<PathBuf>,
}

/// `kiln matrix emit`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("engine").required(true))]
pub struct EmitArgs {
    /// The matrix file (YAML), as the pipeline will find it in the checkout.
    file: PathBuf,
    /// A GitHub Actions workflow (.github/workflows/NAME.yml).
    #[arg(long, group = "engine")]
    github: bool,
    /// A GitLab CI file (.gitlab-ci.yml).
    #[arg(long, group = "engine")]
    gitlab: bool,
    /// Zuul job definitions (zuul.d/kiln-matrix.yaml).
    #[arg(long, group = "engine")]
    zuul: bool,
    /// The Ansible playbook the Zuul jobs run (playbooks/kiln-matrix/run.yaml).
    #[arg(long, group = "engine")]
    zuul_playbook: bool,
    /// Write to this file instead of standard output.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
}

impl MatrixCmd {
    /// Runs the subcommand.
    pub fn run(&self) -> anyhow::Result<i32> {
        crate::logging::init(0);
        match self {
            Self::Plan(a) => a.run(),
            Self::Run(a) => a.run(),
            Self::Emit(a) => a.run(),
        }
    }
}

/// `kiln build`'s request flags, parsed from a cell's arguments.
#[derive(Debug, Parser)]
#[command(name = "kiln-build")]
struct CellRequest {
    #[command(flatten)]
    request: RequestArgs,
}

/// Expands the file and resolves each cell: its request is checked as `kiln build` would
/// check it, and its resolved elements decide its boot check (`kiln_matrix::boot_check`).
fn cells(file: &Path) -> anyhow::Result<Vec<Cell>> {
    let mut cells = kiln_matrix::load(file)?;
    let env: BTreeMap<String, String> = std::env::vars().collect();
    for cell in &mut cells {
        let parsed = CellRequest::try_parse_from(
            std::iter::once("kiln-build").chain(cell.args.iter().skip(1).map(String::as_str)),
        )
        .map_err(|e| {
            UsageError(format!(
                "{}: cell {}: {}",
                file.display(),
                cell.id,
                e.kind()
            ))
        })?;
        parsed.request.check_supported()?;
        let mut cell_env = env.clone();
        cell_env.extend(cell.env.clone());
        let req = parsed.request.request(cell_env, cell.args[1..].to_vec());
        let plan = BuildPlan::new(&req)
            .with_context(|| format!("{}: cell {}", file.display(), cell.id))?;
        let names = plan.set.names();
        cell.boot = kiln_matrix::boot_check(cell, &names, &plan.arch);
    }
    Ok(cells)
}

impl PlanArgs {
    fn run(&self) -> anyhow::Result<i32> {
        kiln_sandbox::die_quietly_on_closed_pipe();
        let cells = cells(&self.file)?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&cells)?);
            return Ok(0);
        }
        print!("{}", kiln_matrix::plan_text(&cells));
        Ok(0)
    }
}

impl RunArgs {
    fn run(&self) -> anyhow::Result<i32> {
        let cells = kiln_matrix::select(&self.file, cells(&self.file)?, self.only.as_deref())?;
        kiln_pipeline::runner::install_signal_handlers()?;
        let (jobs, why) = kiln_matrix::run::job_limit(self.jobs);
        let kiln = match &self.kiln_binary {
            Some(p) => p.clone(),
            None => std::env::current_exe().context("finding the kiln binary")?,
        };
        let opts = kiln_matrix::run::Options {
            kiln,
            out_dir: self.out.clone(),
            jobs,
        };
        let tty = std::io::stderr().is_terminal();
        eprintln!(
            "kiln matrix: {} cells, {why}; outputs in {}",
            cells.len(),
            self.out.display()
        );
        // The status lines drawn last, erased before anything else is printed.
        let drawn = std::cell::Cell::new(0usize);
        let mut on_event = |e: Event| {
            if tty {
                clear(&drawn);
            }
            match e {
                Event::Started(id) => eprintln!("[{id}] started"),
                Event::Phase(id, p) if !tty => eprintln!("[{id}] {p}"),
                Event::Phase(..) => {}
                Event::Finished(r) => eprintln!(
                    "[{}] {} after {:.1} s (log: {})",
                    r.id,
                    serde_json::to_value(r.result)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                    r.build_seconds + r.boot_seconds.unwrap_or(0.0),
                    r.dir.join("matrix.log").display()
                ),
            }
        };
        let mut status = |view: &[Status]| {
            if !tty {
                return;
            }
            clear(&drawn);
            for s in view {
                eprintln!("  {:<40} {:<14} {:>7.0} s", s.id, s.phase, s.seconds);
            }
            drawn.set(view.len());
        };
        let summary = kiln_matrix::run::run(
            &cells,
            &opts,
            &kiln_pipeline::runner::interrupted,
            &mut on_event,
            &mut status,
        )?;
        if tty {
            clear(&drawn);
        }
        print!("{}", summary.table());
        write_summary(&self.out.join("summary.json"), &summary)?;
        if let Some(p) = &self.json {
            write_summary(p, &summary)?;
        }
        Ok(match summary.interrupted_by {
            Some(sig) => 128 + sig,
            None if summary.passed() => 0,
            None => 1,
        })
    }
}

/// Erases the `n` status lines drawn last (terminal only).
fn clear(n: &std::cell::Cell<usize>) {
    let mut err = std::io::stderr();
    for _ in 0..n.get() {
        let _ = write!(err, "\x1b[1A\x1b[2K");
    }
    n.set(0);
}

fn write_summary(path: &Path, s: &Summary) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(s)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

impl EmitArgs {
    fn run(&self) -> anyhow::Result<i32> {
        let file = self.file.display().to_string();
        let text = if self.zuul_playbook {
            kiln_matrix::emit::to_yaml(&kiln_matrix::emit::zuul_playbook(), &file)
        } else {
            let cells = cells(&self.file)?;
            let v = if self.github {
                kiln_matrix::emit::github(&cells, &file)
            } else if self.gitlab {
                kiln_matrix::emit::gitlab(&cells)
            } else {
                kiln_matrix::emit::zuul(&cells, &file)
            };
            kiln_matrix::emit::to_yaml(&v, &file)
        };
        match &self.output {
            Some(p) => {
                std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
            }
            None => print!("{text}"),
        }
        Ok(0)
    }
}
