//! Running the cells on this machine: one child `kiln build` per cell (a failing cell cannot
//! take the others down, and each child tears itself down on SIGINT/SIGTERM as `kiln build`
//! always does), then `kiln test --check` when its output boots ([`crate::boot_check`]).
//!
//! Each cell works in its own directory `OUT/ID/` (outputs `ID.<type>`, the build's record
//! `ID.d/`, and `matrix.log`, the children's console output). Every child gets the caller's
//! environment plus the cell's, so all of them share the one cache `DIB_IMAGE_CACHE` names
//! (or the default): kiln's cache keys cover every input, so no cell is handed another's
//! result for different inputs, and concurrent builds are safe on it (each holds a shared
//! lock; a layer or output is written under a `.tmp-*` name and renamed into place; the trim
//! after a build is skipped while another build holds the lock).
//!
//! Children run in their own process groups, so a Ctrl-C on the terminal reaches `kiln matrix`
//! only; it forwards the signal to each running child, starts nothing more and waits for them.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::{Cell, Error};

/// How to run the cells.
#[derive(Debug, Clone)]
pub struct Options {
    /// The kiln binary the children run.
    pub kiln: PathBuf,
    /// The directory holding one directory per cell.
    pub out_dir: PathBuf,
    /// How many cells may build at once (already bounded: see [`job_limit`]).
    pub jobs: usize,
}

/// How a cell ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Built, and booted if it boots.
    Passed,
    /// `kiln build` failed.
    BuildFailed,
    /// The build passed, the boot check failed.
    BootFailed,
    /// Stopped by a signal.
    Interrupted,
    /// Never started (the run was interrupted first).
    NotRun,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::BuildFailed => "build failed",
            Self::BootFailed => "boot failed",
            Self::Interrupted => "interrupted",
            Self::NotRun => "not run",
        }
    }
}

/// One line of the summary.
#[derive(Debug, Clone, Serialize)]
pub struct CellResult {
    /// The cell's id.
    pub id: String,
    /// How it ended.
    pub result: Outcome,
    /// `kiln build`'s exit status.
    pub build_exit: Option<i32>,
    /// Seconds `kiln build` took.
    pub build_seconds: f64,
    /// Seconds `kiln test --check` took (none when the output does not boot or the build
    /// failed).
    pub boot_seconds: Option<f64>,
    /// Total size in bytes of the outputs (`ID.<type>`).
    pub size_bytes: u64,
    /// The phase cache's answer: `output` (the whole request was cached), `H/N` (H of the N
    /// cached steps restored), or none when the build did not get that far.
    pub cache_hits: Option<String>,
    /// The cell's directory.
    pub dir: PathBuf,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Each cell, in matrix order.
    pub cells: Vec<CellResult>,
    /// How many cells ran at once.
    pub jobs: usize,
    /// Seconds the whole run took.
    pub seconds: f64,
    /// The signal that stopped the run, if any.
    pub interrupted_by: Option<i32>,
}

impl Summary {
    /// Whether every cell passed.
    pub fn passed(&self) -> bool {
        self.cells.iter().all(|c| c.result == Outcome::Passed)
    }

    /// The summary table.
    pub fn table(&self) -> String {
        let w = self
            .cells
            .iter()
            .map(|c| c.id.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let mut s = format!(
            "{:<w$}  {:<12}  {:>8}  {:>8}  {:>10}  {}\n",
            "cell", "result", "build s", "boot s", "size", "cache hits"
        );
        for c in &self.cells {
            let _ = writeln!(
                s,
                "{:<w$}  {:<12}  {:>8.1}  {:>8}  {:>10}  {}",
                c.id,
                c.result.label(),
                c.build_seconds,
                c.boot_seconds
                    .map_or_else(|| "-".into(), |b| format!("{b:.1}")),
                human_size(c.size_bytes),
                c.cache_hits.as_deref().unwrap_or("-"),
            );
        }
        let failed = self
            .cells
            .iter()
            .filter(|c| c.result != Outcome::Passed)
            .count();
        let _ = writeln!(
            s,
            "{} cells, {} passed, {failed} not passed, {:.1} s",
            self.cells.len(),
            self.cells.len() - failed,
            self.seconds
        );
        s
    }
}

fn human_size(b: u64) -> String {
    if b == 0 {
        return "-".into();
    }
    let mib = b as f64 / 1_048_576.0;
    if b < 1024 {
        format!("{b} B")
    } else if mib < 1.0 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else if mib >= 1024.0 {
        format!("{:.2} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

/// The bound on `-j`: the cores (`available_parallelism`) and the memory, one cell per 3 GiB
/// of `MemAvailable` (a build's tmpfs, its image and a 1 GiB boot guest), at least one.
pub fn job_limit(requested: usize) -> (usize, String) {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let by_mem = usize::try_from(mem_kib / (3 * 1024 * 1024))
        .unwrap_or(usize::MAX)
        .max(1);
    let jobs = requested.max(1).min(cores).min(by_mem);
    let why = format!(
        "{jobs} at a time (asked {requested}; {cores} cores; {} GiB available memory, 3 GiB per cell)",
        mem_kib / 1024 / 1024
    );
    (jobs, why)
}

/// What the runner tells its caller as cells progress.
#[derive(Debug, Clone)]
pub enum Event {
    /// A cell's build started.
    Started(String),
    /// A cell entered a phase (`root`, `install`, …, `cache`, `boot`).
    Phase(String, String),
    /// A cell finished.
    Finished(CellResult),
}

/// The live state of a running cell, updated by its output reader.
#[derive(Debug, Default)]
struct Live {
    phase: String,
    hits: usize,
    steps: usize,
    output_hit: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Build,
    Boot,
}

struct Slot {
    index: usize,
    stage: Stage,
    child: kiln_host::Running,
    reader: Option<std::thread::JoinHandle<()>>,
    live: Arc<Mutex<Live>>,
    started: Instant,
    build_exit: Option<i32>,
    build_seconds: f64,
    phase_seen: String,
}

/// What the live view shows of a running cell.
#[derive(Debug, Clone)]
pub struct Status {
    /// The cell's id.
    pub id: String,
    /// Its phase (`root`, `install`, …, `cache`, `boot`).
    pub phase: String,
    /// Seconds since its build started.
    pub seconds: f64,
}

/// Runs `cells` as `opts` says. `interrupted` answers whether a signal arrived (and which);
/// `on_event` hears every start, phase change and end; `status` is called about every second
/// with the running cells, for a live view.
pub fn run(
    cells: &[Cell],
    opts: &Options,
    interrupted: &dyn Fn() -> Option<i32>,
    on_event: &mut dyn FnMut(Event),
    status: &mut dyn FnMut(&[Status]),
) -> Result<Summary, Error> {
    let start = Instant::now();
    std::fs::create_dir_all(&opts.out_dir).map_err(|source| Error::Io {
        path: opts.out_dir.clone(),
        source,
    })?;
    let mut r = Runner {
        cells,
        opts,
        queue: (0..cells.len()).collect(),
        results: vec![None; cells.len()],
        running: Vec::new(),
        signal: None,
    };
    let mut forwarded = false;
    let mut last_status = Instant::now();
    loop {
        if r.signal.is_none() {
            r.signal = interrupted();
        }
        if let (Some(sig), false) = (r.signal, forwarded) {
            for s in &r.running {
                forward(&s.child, sig);
            }
            forwarded = true;
        }
        r.start_more(on_event)?;
        if r.running.is_empty() && (r.queue.is_empty() || r.signal.is_some()) {
            break;
        }
        let mut k = 0;
        while k < r.running.len() {
            if r.poll(k, on_event)? {
                r.running.remove(k);
            } else {
                k += 1;
            }
        }
        if last_status.elapsed() >= Duration::from_secs(1) {
            last_status = Instant::now();
            status(&r.view());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let cells_out = r
        .results
        .into_iter()
        .enumerate()
        .map(|(i, res)| {
            res.unwrap_or_else(|| {
                let dir = opts.out_dir.join(&cells[i].id);
                result(&cells[i], &dir, Outcome::NotRun, None, 0.0, None, None)
            })
        })
        .collect();
    Ok(Summary {
        cells: cells_out,
        jobs: opts.jobs,
        seconds: start.elapsed().as_secs_f64(),
        interrupted_by: r.signal,
    })
}

/// The run's state between polls.
struct Runner<'a> {
    cells: &'a [Cell],
    opts: &'a Options,
    queue: VecDeque<usize>,
    results: Vec<Option<CellResult>>,
    running: Vec<Slot>,
    signal: Option<i32>,
}

impl Runner<'_> {
    /// Starts queued cells up to the job limit (none once a signal arrived).
    fn start_more(&mut self, on_event: &mut dyn FnMut(Event)) -> Result<(), Error> {
        while self.signal.is_none() && self.running.len() < self.opts.jobs.max(1) {
            let Some(i) = self.queue.pop_front() else {
                break;
            };
            let cell = &self.cells[i];
            let dir = self.opts.out_dir.join(&cell.id);
            std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
                path: dir.clone(),
                source,
            })?;
            match start_child(self.opts, cell, &dir, Stage::Build, true) {
                Ok((child, reader, live)) => {
                    on_event(Event::Started(cell.id.clone()));
                    self.running.push(Slot {
                        index: i,
                        stage: Stage::Build,
                        child,
                        reader: Some(reader),
                        live,
                        started: Instant::now(),
                        build_exit: None,
                        build_seconds: 0.0,
                        phase_seen: String::new(),
                    });
                }
                Err(e) => {
                    let _ = append_log(
                        &dir,
                        &format!("kiln matrix: cannot start kiln build: {e}\n"),
                    );
                    let r = result(cell, &dir, Outcome::BuildFailed, None, 0.0, None, None);
                    on_event(Event::Finished(r.clone()));
                    self.results[i] = Some(r);
                }
            }
        }
        Ok(())
    }

    /// Looks at the running slot `k`: reports a new phase; when its child ended, starts the
    /// boot check or records the result. Returns whether the slot is done.
    fn poll(&mut self, k: usize, on_event: &mut dyn FnMut(Event)) -> Result<bool, Error> {
        let signal = self.signal;
        let slot = &mut self.running[k];
        let cell = &self.cells[slot.index];
        let phase = slot
            .live
            .lock()
            .map(|l| l.phase.clone())
            .unwrap_or_default();
        if phase != slot.phase_seen && !phase.is_empty() {
            slot.phase_seen.clone_from(&phase);
            on_event(Event::Phase(cell.id.clone(), phase));
        }
        let Some(st) = slot.child.try_wait()? else {
            return Ok(false);
        };
        if let Some(h) = slot.reader.take() {
            let _ = h.join();
        }
        let dir = self.opts.out_dir.join(&cell.id);
        let secs = slot.started.elapsed().as_secs_f64();
        let code = st.code();
        let hits = slot.live.lock().ok().and_then(|l| {
            if l.output_hit {
                Some("output".to_string())
            } else if l.steps > 0 {
                Some(format!("{}/{}", l.hits, l.steps))
            } else {
                None
            }
        });
        let failed = |boot: bool| {
            if signal.is_some() {
                Outcome::Interrupted
            } else if boot {
                Outcome::BootFailed
            } else {
                Outcome::BuildFailed
            }
        };
        let done = match slot.stage {
            Stage::Build if cell.boot.is_some() && code == Some(0) && signal.is_none() => {
                match start_child(self.opts, cell, &dir, Stage::Boot, false) {
                    Ok((child, reader, live)) => {
                        if let (Ok(old), Ok(mut new)) = (slot.live.lock(), live.lock()) {
                            new.hits = old.hits;
                            new.steps = old.steps;
                            new.output_hit = old.output_hit;
                            "boot".clone_into(&mut new.phase);
                        }
                        slot.stage = Stage::Boot;
                        slot.child = child;
                        slot.reader = Some(reader);
                        slot.live = live;
                        slot.build_exit = code;
                        slot.build_seconds = secs;
                        slot.started = Instant::now();
                        return Ok(false);
                    }
                    Err(e) => {
                        let _ = append_log(
                            &dir,
                            &format!("kiln matrix: cannot start kiln test: {e}\n"),
                        );
                        result(cell, &dir, Outcome::BootFailed, code, secs, Some(0.0), hits)
                    }
                }
            }
            Stage::Build => {
                let outcome = if code == Some(0) {
                    Outcome::Passed
                } else {
                    failed(false)
                };
                result(cell, &dir, outcome, code, secs, None, hits)
            }
            Stage::Boot => {
                let outcome = if code == Some(0) {
                    Outcome::Passed
                } else {
                    failed(true)
                };
                let (exit, build) = (slot.build_exit, slot.build_seconds);
                result(cell, &dir, outcome, exit, build, Some(secs), hits)
            }
        };
        on_event(Event::Finished(done.clone()));
        self.results[slot.index] = Some(done);
        Ok(true)
    }

    /// The running cells, for the live view.
    fn view(&self) -> Vec<Status> {
        self.running
            .iter()
            .map(|s| {
                let phase = s.live.lock().map(|l| l.phase.clone()).unwrap_or_default();
                let own = s.started.elapsed().as_secs_f64();
                Status {
                    id: self.cells[s.index].id.clone(),
                    phase,
                    seconds: if s.stage == Stage::Boot {
                        s.build_seconds + own
                    } else {
                        own
                    },
                }
            })
            .collect()
    }
}

fn forward(child: &kiln_host::Running, sig: i32) {
    let Ok(pid) = i32::try_from(child.id()) else {
        return;
    };
    if let Ok(s) = nix::sys::signal::Signal::try_from(sig) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), s);
    }
}

fn append_log(dir: &Path, text: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("matrix.log"))?;
    f.write_all(text.as_bytes())
}

type Started = (
    kiln_host::Running,
    std::thread::JoinHandle<()>,
    Arc<Mutex<Live>>,
);

/// Starts `kiln build` (or `kiln test`) for `cell` in `dir`, its output appended to
/// `dir/matrix.log` by a reader thread that also follows the phase and the cache's answers.
fn start_child(
    opts: &Options,
    cell: &Cell,
    dir: &Path,
    stage: Stage,
    fresh_log: bool,
) -> Result<Started, Error> {
    let log_path = dir.join("matrix.log");
    let io = |source| Error::Io {
        path: log_path.clone(),
        source,
    };
    let log = if fresh_log {
        File::create(&log_path).map_err(io)?
    } else {
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log_path)
            .map_err(io)?
    };
    let args = match stage {
        Stage::Build => cell.args.clone(),
        Stage::Boot => cell
            .boot
            .as_ref()
            .map(crate::BootCheck::args)
            .unwrap_or_default(),
    };
    let cmd = kiln_host::Cmd::new(&opts.kiln)
        .args(&args)
        .envs(cell.env.iter())
        .current_dir(dir)
        .process_group();
    let mut header = log.try_clone().map_err(io)?;
    let _ = writeln!(
        header,
        "kiln matrix: {} in {}",
        kiln_host::quote_argv(
            &std::iter::once("kiln".to_string())
                .chain(args)
                .collect::<Vec<_>>()
        ),
        dir.display()
    );
    let (rd, wr) = std::io::pipe().map_err(io)?;
    let wr2 = wr.try_clone().map_err(io)?;
    let child = cmd.spawn(wr.into(), wr2.into())?;
    drop(cmd);
    let live = Arc::new(Mutex::new(Live::default()));
    let l2 = Arc::clone(&live);
    let reader = std::thread::spawn(move || follow(rd, log, &l2));
    Ok((child, reader, live))
}

/// Copies a child's output to its log and follows it: the phase of each hook line
/// (`[install] 50-x (el)`), and the cache's lines (`cache: root hit …`, `cache: output hit`).
fn follow(rd: std::io::PipeReader, mut log: File, live: &Mutex<Live>) {
    for bytes in BufReader::new(rd).split(b'\n') {
        let Ok(bytes) = bytes else { break };
        let _ = log.write_all(&bytes);
        let _ = log.write_all(b"\n");
        let text = String::from_utf8_lossy(&bytes);
        // A terminal's redraws never reach a pipe, but be safe with stray carriage returns.
        let text = text
            .rsplit('\r')
            .next()
            .unwrap_or_default()
            .trim_start_matches("\x1b[K");
        let Ok(mut l) = live.lock() else { continue };
        if let Some(rest) = text.strip_prefix('[') {
            if let Some((phase, _)) = rest.split_once("] ") {
                if !phase.is_empty()
                    && phase
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
                {
                    l.phase = phase.to_string();
                }
            }
        } else if let Some(rest) = text.strip_prefix("cache: ") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            match words.as_slice() {
                ["output", "hit", ..] => {
                    l.output_hit = true;
                    "cache".clone_into(&mut l.phase);
                }
                [_, "hit", _] => {
                    l.hits += 1;
                    l.steps += 1;
                    "cache".clone_into(&mut l.phase);
                }
                [_, "miss", _] => {
                    l.steps += 1;
                    "cache".clone_into(&mut l.phase);
                }
                _ => {}
            }
        }
    }
}

fn result(
    cell: &Cell,
    dir: &Path,
    outcome: Outcome,
    build_exit: Option<i32>,
    build_seconds: f64,
    boot_seconds: Option<f64>,
    cache_hits: Option<String>,
) -> CellResult {
    CellResult {
        id: cell.id.clone(),
        result: outcome,
        build_exit,
        build_seconds,
        boot_seconds,
        size_bytes: outputs_size(cell, dir),
        cache_hits,
        dir: dir.to_path_buf(),
    }
}

/// The bytes of the cell's outputs (`ID.<ext>`, a directory output summed over its files).
fn outputs_size(cell: &Cell, dir: &Path) -> u64 {
    cell.outputs
        .iter()
        .filter_map(|o| kiln_output::OutputType::parse(o).ok())
        .map(|t| tree_size(&dir.join(format!("{}.{}", cell.id, t.extension()))))
        .sum()
}

fn tree_size(p: &Path) -> u64 {
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if m.is_dir() {
        std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| tree_size(&e.path()))
            .sum()
    } else {
        m.len()
    }
}
