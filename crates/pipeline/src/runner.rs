//! Running one phase: `dib-run-parts` on the host or inside the chroot, its output captured.
//!
//! Every phase runs in its own process group, so an interrupt or a failure can kill all of it at
//! once. Its standard output and error go through one pipe (so their order is kept) to the build
//! log, to the terminal when verbose, and to a ring of the last lines for the failure report.
//! `dib-run-parts` marks each hook's start and end on stderr; the runner turns those marks into the
//! progress line and the per-hook timing table.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};

use kiln_host::Cmd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::Error;

/// How many lines of a failed hook's output the report shows.
pub const TAIL_LINES: usize = 20;

static SIGINT: OnceLock<Arc<AtomicBool>> = OnceLock::new();
static SIGTERM: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Installs SIGINT and SIGTERM handlers that only set a flag; the runner polls it, kills the
/// running phase and lets the teardown run. Call once, early, after the namespace is set up.
pub fn install_signal_handlers() -> Result<(), Error> {
    let int = SIGINT.get_or_init(|| Arc::new(AtomicBool::new(false)));
    let term = SIGTERM.get_or_init(|| Arc::new(AtomicBool::new(false)));
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(int))
        .and_then(|_| signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(term)))
        .map(|_| ())
        .map_err(|source| Error::Io {
            path: PathBuf::from("signal handlers"),
            source,
        })
}

/// The signal that interrupted the build, if any (2 for SIGINT, 15 for SIGTERM).
pub fn interrupted() -> Option<i32> {
    if SIGINT.get().is_some_and(|f| f.load(Ordering::SeqCst)) {
        Some(2)
    } else if SIGTERM.get().is_some_and(|f| f.load(Ordering::SeqCst)) {
        Some(15)
    } else {
        None
    }
}

/// Returns an error if the build was interrupted; called between steps.
pub fn check_interrupt() -> Result<(), Error> {
    match interrupted() {
        Some(sig) => Err(Error::Interrupted { signal: sig }),
        None => Ok(()),
    }
}

/// Timing of one hook.
#[derive(Debug, Clone, Serialize)]
pub struct HookTiming {
    /// Hook file name.
    pub name: String,
    /// Element it came from.
    pub element: String,
    /// Exit status.
    pub status: i32,
    /// Seconds it took.
    pub seconds: f64,
}

/// Timing of one step (a phase or an engine step such as the copy into the image).
#[derive(Debug, Clone, Serialize)]
pub struct StepTiming {
    /// Step name (`root`, `install`, `copy-into-image`, `qcow2`, …).
    pub step: String,
    /// Seconds it took.
    pub seconds: f64,
    /// Its hooks, for phases.
    pub hooks: Vec<HookTiming>,
}

/// Where a command runs.
#[derive(Debug, Clone)]
pub enum Place {
    /// On the build host, in the caller's working directory.
    Host,
    /// Inside a chroot of this directory, cwd `/`, as root.
    Chroot(PathBuf),
}

/// Output handling shared by all phases of one build.
pub struct Console {
    log: Arc<Mutex<Option<File>>>,
    verbose: u8,
    tty: bool,
    quiet: bool,
}

impl Console {
    /// A console writing the full log to `log` (if any).
    pub fn new(log: Option<File>, verbose: u8, quiet: bool) -> Self {
        Self {
            log: Arc::new(Mutex::new(log)),
            verbose,
            tty: std::io::stderr().is_terminal(),
            quiet,
        }
    }

    /// Prints a status line (and logs it).
    pub fn say(&self, msg: &str) {
        self.log_line(&format!("kiln: {msg}"));
        if !self.quiet {
            if self.tty {
                eprintln!("\r\x1b[K{msg}");
            } else {
                eprintln!("{msg}");
            }
        }
    }

    /// Writes one line to the log only.
    pub fn log_line(&self, line: &str) {
        if let Ok(mut g) = self.log.lock() {
            if let Some(f) = g.as_mut() {
                let _ = writeln!(f, "{line}");
            }
        }
    }
}

/// What a finished command reports.
pub struct Finished {
    /// Hook timings parsed from the markers.
    pub hooks: Vec<HookTiming>,
    /// All output lines that start with a given prefix (for block-device.d's IMAGE_BLOCK_DEVICE=).
    pub captured: Vec<String>,
}

/// Runs `argv` at `place` with exactly `env`, labelled `phase`; `elements` maps hook names to
/// their elements for the report. Returns the timings, or a [`Error::HookFailed`] with the report.
pub fn run(
    console: &Console,
    phase: &str,
    place: &Place,
    argv: &[String],
    env: &BTreeMap<String, String>,
    elements: &BTreeMap<String, String>,
    capture_prefix: Option<&str>,
) -> Result<Finished, Error> {
    check_interrupt()?;
    let cmd = phase_cmd(place, argv);
    // Its own process group, so the whole phase can be signalled at once.
    let cmd = cmd.env_clear().envs(env).process_group();
    let (rd, wr) = std::io::pipe().map_err(|source| Error::Io {
        path: PathBuf::from("pipe"),
        source,
    })?;
    let wr2 = wr.try_clone().map_err(|source| Error::Io {
        path: PathBuf::from("pipe"),
        source,
    })?;
    tracing::debug!("run [{phase}] {}", cmd.command_line());
    let mut child = cmd.spawn(wr.into(), wr2.into()).map_err(|e| Error::Step {
        step: phase.to_string(),
        message: e.to_string(),
    })?;
    // The write ends now live only in the child (and were moved into the spawn above), so the
    // reader sees end-of-file when the phase and everything it started are gone.
    let pgid = i32::try_from(child.id()).unwrap_or(0);

    let tty = console.tty && !console.quiet;
    let sink = OutputReader {
        log: Arc::clone(&console.log),
        verbose: console.verbose,
        tty,
        quiet: console.quiet,
        phase: phase.to_string(),
        elements: elements.clone(),
        prefix: capture_prefix.map(String::from),
    };
    let reader = std::thread::spawn(move || sink.read(rd));

    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) => {}
            Err(_) => break None,
        }
        if let Some(sig) = interrupted() {
            kill_group(pgid);
            if let Place::Chroot(root) = place {
                kiln_sandbox::kill_processes_rooted_under(root);
            }
            let _ = child.wait();
            let _ = reader.join();
            if tty {
                eprintln!();
            }
            return Err(Error::Interrupted { signal: sig });
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The phase is over: anything it left running in its group goes now.
    kill_group(pgid);
    if let Place::Chroot(root) = place {
        kiln_sandbox::kill_processes_rooted_under(root);
    }
    let (tail, hooks, current, captured) = reader.join().unwrap_or_default();
    if tty {
        eprint!("\r\x1b[K");
    }
    let code = status.and_then(|s| s.code()).unwrap_or(-1);
    if code == 0 {
        return Ok(Finished { hooks, captured });
    }
    let hook = current.unwrap_or_else(|| "(environment.d or dib-run-parts itself)".to_string());
    let element = elements.get(&hook).cloned().unwrap_or_else(|| "-".into());
    Err(Error::HookFailed {
        phase: phase.to_string(),
        element,
        hook,
        status: code,
        tail: tail.into_iter().collect(),
        hooks,
    })
}

/// The command of a phase: `argv` on the host, or in the chroot with DIB's fixed PATH and HOME.
fn phase_cmd(place: &Place, argv: &[String]) -> Cmd {
    match place {
        Place::Host => Cmd::from_argv(argv),
        Place::Chroot(root) => Cmd::new("chroot")
            .arg(root)
            .arg("/usr/bin/env")
            .arg("-u")
            .arg("TMPDIR")
            .arg("-u")
            .arg("VIRTUAL_ENV")
            .arg("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .arg("HOME=/root")
            .args(argv)
            .current_dir("/"),
    }
}

/// What a phase's output leaves for `Finished` and the failure report: the last lines,
/// the hooks' timings, the hook running when it ended, and the captured lines.
type ReadOutput = (
    VecDeque<String>,
    Vec<HookTiming>,
    Option<String>,
    Vec<String>,
);

/// Reads a phase's output on its own thread: every line into the build log, hook starts on
/// the console, hook ends as timings, the last lines for the report.
struct OutputReader {
    log: Arc<Mutex<Option<File>>>,
    verbose: u8,
    tty: bool,
    quiet: bool,
    phase: String,
    elements: BTreeMap<String, String>,
    prefix: Option<String>,
}

impl OutputReader {
    fn read(self, rd: std::io::PipeReader) -> ReadOutput {
        let phase_s = &self.phase;
        let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES + 1);
        let mut hooks = Vec::new();
        let mut current: Option<String> = None;
        let mut captured = Vec::new();
        for line in BufReader::new(rd).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line).into_owned();
            if let Ok(mut g) = self.log.lock() {
                if let Some(f) = g.as_mut() {
                    let _ = writeln!(f, "[{phase_s}] {line}");
                }
            }
            if let Some(rest) = line.strip_prefix("kiln-run-parts: start ") {
                let name = rest.trim().to_string();
                let el = self.elements.get(&name).cloned().unwrap_or_default();
                if !self.quiet {
                    if self.tty && self.verbose == 0 {
                        eprint!("\r\x1b[K[{phase_s}] {name} ({el})");
                    } else {
                        eprintln!("[{phase_s}] {name} ({el})");
                    }
                }
                current = Some(name);
                tail.clear();
                continue;
            }
            if let Some(rest) = line.strip_prefix("kiln-run-parts: done ") {
                let mut it = rest.split_whitespace();
                let name = it.next().unwrap_or_default().to_string();
                let status = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                let seconds = it.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
                let element = self.elements.get(&name).cloned().unwrap_or_default();
                hooks.push(HookTiming {
                    name,
                    element,
                    status,
                    seconds,
                });
                if status == 0 {
                    current = None;
                }
                continue;
            }
            if let Some(p) = &self.prefix {
                if line.starts_with(p.as_str()) {
                    captured.push(line.clone());
                }
            }
            if self.verbose > 0 && !self.quiet {
                eprintln!("{line}");
            }
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        (tail, hooks, current, captured)
    }
}

fn kill_group(pgid: i32) {
    if pgid <= 0 {
        return;
    }
    kiln_sandbox::signal_group(pgid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        if nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kiln_sandbox::signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
}

/// Whether `path` is a directory with something other than `lost+found` and `tmp` in it.
pub fn has_content(path: &Path) -> bool {
    std::fs::read_dir(path).is_ok_and(|rd| {
        rd.flatten()
            .any(|e| !matches!(e.file_name().to_str(), Some("lost+found" | "tmp")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["bash".into(), "-c".into(), script.into()]
    }

    fn env() -> BTreeMap<String, String> {
        BTreeMap::from([("PATH".to_string(), "/usr/bin:/bin".to_string())])
    }

    #[test]
    fn a_phase_streams_to_the_log_and_reports_its_hooks() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("build.log");
        let console = Console::new(Some(File::create(&log).unwrap()), 0, true);
        let elements = BTreeMap::from([("10-a".to_string(), "el".to_string())]);
        let done = run(
            &console,
            "root",
            &Place::Host,
            &sh(
                "echo kiln-run-parts: start 10-a >&2; echo hello; echo IMAGE_X=1; \
                 echo 'kiln-run-parts: done 10-a 0 0.5' >&2; sleep 30 & exit 0",
            ),
            &env(),
            &elements,
            Some("IMAGE_X="),
        )
        .unwrap();
        assert_eq!(done.captured, ["IMAGE_X=1"]);
        assert_eq!(done.hooks.len(), 1);
        assert_eq!(done.hooks[0].element, "el");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("[root] hello\n"), "{text}");
    }

    #[test]
    fn a_failed_phase_names_its_hook_and_tail() {
        let console = Console::new(None, 0, true);
        let elements = BTreeMap::from([("20-b".to_string(), "el".to_string())]);
        let err = run(
            &console,
            "install",
            &Place::Host,
            &sh("echo kiln-run-parts: start 20-b >&2; echo boom; exit 3"),
            &env(),
            &elements,
            None,
        )
        .err()
        .expect("the phase fails");
        match err {
            Error::HookFailed {
                hook,
                element,
                status,
                tail,
                ..
            } => {
                assert_eq!((hook.as_str(), element.as_str(), status), ("20-b", "el", 3));
                assert_eq!(tail, ["boom"]);
            }
            other => panic!("unexpected {other}"),
        }
    }
}
