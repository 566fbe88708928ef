//! The element linter with the checks that need processes: what `kiln elements check` runs,
//! and what any other command that wants to lint elements calls.
//!
//! The rules that only read files live in `kiln_element::lint` (a pure crate). This module
//! adds the two that need more, through [`ShellChecker`], an implementation of
//! [`kiln_element::lint::Checker`]: `environment.d` files are checked with `bash -n` and then
//! sourced in a clean bash with `set -eu -o pipefail` and a plausible DIB environment (that is
//! the only way to find a variable used without a default), and `block-device-*.yaml` files
//! are planned with kiln-blockdev. [`check`] puts it together: it finds the elements under the
//! given paths, discovers the library they are checked against (the paths, then
//! `ELEMENTS_PATH`, then kiln's built-in elements) and returns a [`Report`]; printing it is
//! the caller's business.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use kiln_element::lint::{self, Checker, EnvFile, Finding, Severity};
use kiln_element::{Element, Library};

use crate::settings as S;
use crate::{BuildRequest, Error};

/// The result of linting some elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Every finding, sorted.
    pub findings: Vec<Finding>,
    /// How many elements were checked.
    pub elements: usize,
}

impl Report {
    /// How many findings are errors.
    pub fn errors(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count()
    }

    /// How many findings are warnings.
    pub fn warnings(&self) -> usize {
        self.findings.len() - self.errors()
    }

    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.errors() > 0
    }
}

/// Lints every element under `paths` (element directories or directories of elements),
/// against the library of the paths, `ELEMENTS_PATH` of `req` and kiln's built-in elements
/// (extracted into the cache of `req`). With `source`, `environment.d` files are sourced in
/// bash (this runs their code; see [`ShellChecker`]); without, they are only parsed.
pub fn check(paths: &[PathBuf], req: &BuildRequest, source: bool) -> Result<Report, Error> {
    let targets = lint::targets(paths)?;
    let cache = crate::plan::checked_cache_root(req)?;
    let builtin = kiln_element::builtin::extract(&cache)?;
    let library = Library::discover(&crate::plan::elements_path(req, &builtin))?;
    let mut checker = ShellChecker::new(source)?;
    let mut findings = lint::lint(&targets, &library, &mut checker);
    findings.extend(targets.iter().filter_map(cache_inputs_finding));
    findings.sort();
    Ok(Report {
        findings,
        elements: targets.len(),
    })
}

/// An error for the first bad line of the element's `cache-inputs` (the host files its hooks
/// read, keyed by kiln's cache), if it has one.
fn cache_inputs_finding(element: &Element) -> Option<Finding> {
    let path = element.path.join(crate::cache::host_files::CACHE_INPUTS);
    if !fs::metadata(&path).is_ok_and(|m| m.is_file()) {
        return None;
    }
    let text = fs::read_to_string(&path).ok()?;
    let e = crate::cache::host_files::parse(&path, &text).err()?;
    Some(Finding::error(path.clone(), Some(e.line), e.message()))
}

/// How long one environment.d file may take to be parsed or sourced.
const SOURCE_TIMEOUT: Duration = Duration::from_secs(5);

/// Marks, on stderr, the point where the checked file is sourced.
const SOURCE_MARK: &str = "kiln-elements-check: sourcing the checked file";

/// Sources `$2...` (the environment.d files DIB sources first) leniently and silently, then
/// `$1` as DIB does, with `set -eu -o pipefail`. A failure in an earlier file is not the
/// checked file's fault, so it only costs the variables that file would have set.
const SOURCE_SCRIPT: &str = r#"__kiln_check_file=$1
shift
set +eu +o pipefail
for __kiln_check_before in "$@"; do
    source "$__kiln_check_before" >/dev/null 2>&1 || true
done
set --
echo "kiln-elements-check: sourcing the checked file" >&2
set -eu -o pipefail
source "$__kiln_check_file"
"#;

/// The image size the block-device layouts are planned for.
const PLAN_IMAGE_SIZE: u64 = 10 << 30;

/// The image size a layout is planned for again when it does not fit in
/// [`PLAN_IMAGE_SIZE`]; below the 2 TiB limit of MBR.
const LARGE_IMAGE_SIZE: u64 = 1 << 40;

/// The checks that run bash or kiln-blockdev: sourcing runs code. Every environment.d file
/// is sourced by bash with `set -eu -o pipefail`, after the environment.d files of its element
/// and its dependencies that DIB sources before it, as the current user, with an empty
/// environment apart from a few DIB variables (ARCH=amd64, DISTRO_NAME=debian, ...), in an
/// empty temporary directory, and killed after 5 seconds. Nothing else isolates it.
pub struct ShellChecker {
    /// Whether to source environment.d files (not just `bash -n` them).
    source: bool,
    /// Working directories and output files of the bash runs.
    tmp: tempfile::TempDir,
    /// Runs so far, to name each one's directory.
    runs: usize,
    /// Set once bash turned out to be missing, so that it is reported only once.
    no_bash: bool,
    /// Files (absolute) whose own check found something; they are not sourced before others.
    failed: BTreeSet<PathBuf>,
}

/// The result of one bash run.
enum Run {
    Finished { status: ExitStatus, stderr: String },
    TimedOut { stderr: String },
}

impl ShellChecker {
    /// A checker that sources environment.d files when `source` is set, and only parses
    /// them (`bash -n`) otherwise. Fails when no temporary directory can be created.
    pub fn new(source: bool) -> Result<Self, Error> {
        let tmp = tempfile::Builder::new()
            .prefix("kiln-elements-check-")
            .tempdir()
            .map_err(crate::io(&std::env::temp_dir()))?;
        Ok(ShellChecker {
            source,
            tmp,
            runs: 0,
            no_bash: false,
            failed: BTreeSet::new(),
        })
    }

    /// Runs `bash ARGS` with only `vars` in its environment, in a fresh empty directory, with
    /// stdout and stderr collected together (as `stderr`; env files often explain a failure
    /// on stdout). It runs in its own process group, which is killed after
    /// [`SOURCE_TIMEOUT`] and as soon as bash exits, so that nothing it started in the
    /// background outlives the check.
    fn bash(&mut self, args: &[&str], vars: &[(&str, String)]) -> std::io::Result<Run> {
        self.runs += 1;
        let cwd = self.tmp.path().join(format!("run-{}", self.runs));
        fs::create_dir(&cwd)?;
        let stderr_path = self.tmp.path().join(format!("run-{}.stderr", self.runs));
        let stderr = fs::File::create(&stderr_path)?;
        let mut child = kiln_host::Cmd::new("bash")
            .args(args)
            .env_clear()
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .current_dir(&cwd)
            .process_group()
            .spawn(stderr.try_clone()?.into(), stderr.into())
            .map_err(|e| match e {
                kiln_host::Error::NotFound { .. } => {
                    std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string())
                }
                other => std::io::Error::other(other),
            })?;
        let pgid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        let kill_group = || {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        };
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().map_err(std::io::Error::other)? {
                break Some(status);
            }
            if started.elapsed() >= SOURCE_TIMEOUT {
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        kill_group();
        if status.is_none() {
            let _ = child.wait();
        }
        let stderr = fs::read(&stderr_path).unwrap_or_default();
        let stderr = String::from_utf8_lossy(&stderr).into_owned();
        Ok(match status {
            Some(status) => Run::Finished { status, stderr },
            None => Run::TimedOut { stderr },
        })
    }

    /// Runs bash, turning a missing bash into one warning for the whole run.
    fn bash_or_report(
        &mut self,
        args: &[&str],
        vars: &[(&str, String)],
        path: &Path,
    ) -> Result<Run, Vec<Finding>> {
        match self.bash(args, vars) {
            Ok(run) => Ok(run),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                if self.no_bash {
                    return Err(Vec::new());
                }
                self.no_bash = true;
                Err(vec![Finding::warning(
                    path,
                    None,
                    "bash was not found, so no environment.d file was checked (install bash and run the check again)",
                )])
            }
            Err(err) => Err(vec![Finding::warning(
                path,
                None,
                format!("could not run bash to check it: {err} (check the temporary directory and try again)"),
            )]),
        }
    }
}

impl Checker for ShellChecker {
    fn environment_file(&mut self, file: &EnvFile<'_>) -> Vec<Finding> {
        // bash names the file as it was given; an absolute path also lets the file find its
        // neighbours through BASH_SOURCE.
        let abs = absolute(file.path);
        let findings = match self.syntax_check(file.path, &abs) {
            Some(findings) => findings,
            None if self.source => self.source_check(file, &abs),
            None => Vec::new(),
        };
        if !findings.is_empty() {
            self.failed.insert(abs);
        }
        findings
    }

    fn block_device_config(&mut self, _element: &Element, path: &Path) -> Vec<Finding> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) => {
                return vec![Finding::error(
                    path,
                    None,
                    format!("cannot be read: {err} (check its permissions)"),
                )]
            }
        };
        let source = path.display().to_string();
        let plan = |size: u64| {
            let params = kiln_blockdev::Params {
                image_size: Some(size),
                ..kiln_blockdev::Params::default()
            };
            kiln_blockdev::plan(&text, &source, &params)
        };
        // A layout with fixed partition sizes may simply need a bigger image than the one
        // planned for (the user sets DIB_IMAGE_SIZE); that is not a fault of the layout.
        if plan(PLAN_IMAGE_SIZE).is_ok() {
            return Vec::new();
        }
        let Err(err) = plan(LARGE_IMAGE_SIZE) else {
            return Vec::new();
        };
        let text = err.to_string();
        let (line, message) = split_location(&text, &source);
        vec![Finding::error(path, line, message)]
    }
}

impl ShellChecker {
    /// `bash -n`: `Some` findings when bash cannot parse the file (or could not run).
    fn syntax_check(&mut self, path: &Path, abs: &Path) -> Option<Vec<Finding>> {
        let abs_text = abs.display().to_string();
        let base_env = [("PATH", CLEAN_PATH.to_string())];
        match self.bash_or_report(&["-n", &abs_text], &base_env, path) {
            Err(findings) => Some(findings),
            Ok(Run::TimedOut { .. }) => Some(vec![Finding::warning(
                path,
                None,
                "bash -n did not finish within 5 seconds (check the file with bash -n)",
            )]),
            Ok(Run::Finished { status, stderr }) if !status.success() => {
                let (line, message) = bash_message(&stderr, &abs_text)
                    .map_or((None, last_line(&stderr)), |(l, m)| (Some(l), m));
                Some(vec![Finding::error(
                    path,
                    line,
                    format!("bash cannot parse it: {message} (fix the syntax; bash -n shows it)"),
                )])
            }
            Ok(Run::Finished { .. }) => None,
        }
    }

    /// Sources the file as DIB does, after the files DIB sources before it (leaving out
    /// those whose own check failed, so that one slow or exiting file is reported once).
    fn source_check(&mut self, file: &EnvFile<'_>, abs: &Path) -> Vec<Finding> {
        let path = file.path;
        let abs_text = abs.display().to_string();
        let vars = [
            (S::ARCH.name, "amd64".to_string()),
            (S::DISTRO_NAME.name, "debian".to_string()),
            (S::DIB_RELEASE.name, "bookworm".to_string()),
            (S::DIB_INIT_SYSTEM.name, "systemd".to_string()),
            (S::TMP_MOUNT_PATH.name, "/nonexistent".to_string()),
            (S::TMP_HOOKS_PATH.name, "/nonexistent".to_string()),
            (S::IMAGE_NAME.name, "image".to_string()),
            (S::IMAGE_ELEMENT.name, file.elements.join(" ")),
            (S::DIB_DEBUG_TRACE.name, "0".to_string()),
            (S::PATH.name, CLEAN_PATH.to_string()),
        ];
        let before: Vec<PathBuf> = file
            .sourced_before
            .iter()
            .map(|p| absolute(p))
            .filter(|p| !self.failed.contains(p))
            .collect();
        let before_text: Vec<String> = before.iter().map(|p| p.display().to_string()).collect();
        let mut args = vec!["-c", SOURCE_SCRIPT, "kiln-elements-check", &abs_text];
        args.extend(before_text.iter().map(String::as_str));
        let run = match self.bash_or_report(&args, &vars, path) {
            Ok(run) => run,
            Err(findings) => return findings,
        };
        let stderr = match &run {
            Run::Finished { stderr, .. } | Run::TimedOut { stderr } => stderr.as_str(),
        };
        let Some((_, own)) = stderr.split_once(SOURCE_MARK) else {
            let what = if matches!(run, Run::TimedOut { .. }) {
                "does not finish within 5 seconds"
            } else {
                "exits the shell"
            };
            return vec![Finding::warning(
                path,
                None,
                format!(
                    "not checked: one of the environment.d files DIB sources before it {what} ({}) (check those files)",
                    before_text.join(", ")
                ),
            )];
        };
        match run {
            Run::TimedOut { .. } => vec![Finding::warning(
                path,
                None,
                "sourcing it does not finish within 5 seconds, and DIB sources it before every phase (make it fast and non-interactive)",
            )],
            Run::Finished { status, .. } if status.success() => Vec::new(),
            Run::Finished { status, .. } => source_failure(path, &abs_text, status, own),
        }
    }
}

/// The `PATH` of the bash that checks environment.d files.
const CLEAN_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// `path` made absolute and free of symlinks when possible.
fn absolute(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The finding for a failed `source`: an unbound variable is an error at the line bash
/// names; anything else is a warning with bash's last message.
fn source_failure(path: &Path, abs: &str, status: ExitStatus, stderr: &str) -> Vec<Finding> {
    if let Some((file, line, var)) = stderr.lines().find_map(unbound_variable) {
        let fix = format!("write ${{{var}:-default}}; environment.d files are sourced with set -u");
        return vec![if file == abs {
            Finding::error(
                path,
                Some(line),
                format!("uses ${var} without a default ({fix})"),
            )
        } else {
            Finding::error(
                path,
                None,
                format!(
                    "sourcing it fails because {file}, line {line}, uses ${var} without a default ({fix})"
                ),
            )
        }];
    }
    let code = status.code().map_or_else(
        || "is killed".to_string(),
        |c| format!("fails with status {c}"),
    );
    let detail = match bash_message(stderr, abs) {
        Some((_, message)) => format!(": {message}"),
        None => match last_line(stderr) {
            m if m.is_empty() => String::new(),
            m => format!(": {m}"),
        },
    };
    let line = bash_message(stderr, abs).map(|(l, _)| l);
    vec![Finding::warning(
        path,
        line,
        format!(
            "sourcing it with set -eu -o pipefail {code}{detail}; the test environment had ARCH=amd64 DISTRO_NAME=debian DIB_RELEASE=bookworm (DIB sources it this way before every phase: make it succeed, unless it fails on purpose, e.g. for an unsupported ARCH)"
        ),
    )]
}

/// Parses bash's `FILE: line N: VAR: unbound variable` into `(FILE, N, VAR)`.
fn unbound_variable(line: &str) -> Option<(&str, usize, &str)> {
    let rest = line.strip_suffix(": unbound variable")?;
    let (location, var) = rest.rsplit_once(": ")?;
    let (file, number) = location.rsplit_once(": line ")?;
    Some((file, number.parse().ok()?, var))
}

/// The first `FILE: line N: MESSAGE` of `stderr` that is about `file`, as `(N, MESSAGE)`.
fn bash_message(stderr: &str, file: &str) -> Option<(usize, String)> {
    let prefix = format!("{file}: line ");
    stderr.lines().find_map(|l| {
        let rest = l.strip_prefix(&prefix)?;
        let (number, message) = rest.split_once(": ")?;
        Some((number.parse().ok()?, message.to_string()))
    })
}

/// The last non-empty line of `text`, trimmed.
fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .to_string()
}

/// Splits a kiln-blockdev message `SOURCE[:LINE]: MESSAGE` into the line and the message.
fn split_location(text: &str, source: &str) -> (Option<usize>, String) {
    let Some(rest) = text.strip_prefix(source) else {
        return (None, text.to_string());
    };
    if let Some(after) = rest.strip_prefix(':') {
        let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
        if let (Ok(line), Some(message)) = (
            digits.parse::<usize>(),
            after[digits.len()..].strip_prefix(": "),
        ) {
            return (Some(line), message.to_string());
        }
    }
    match rest.strip_prefix(": ") {
        Some(message) => (None, message.to_string()),
        None => (None, text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_split_off() {
        assert_eq!(
            split_location("a/b.yaml:7: bad thing; do x", "a/b.yaml"),
            (Some(7), "bad thing; do x".to_string())
        );
        assert_eq!(
            split_location("a/b.yaml: bad", "a/b.yaml"),
            (None, "bad".to_string())
        );
        assert_eq!(
            split_location("other: bad", "a/b.yaml"),
            (None, "other: bad".to_string())
        );
        assert_eq!(
            bash_message("junk\n/x/f: line 3: syntax error: oops\n", "/x/f"),
            Some((3, "syntax error: oops".to_string()))
        );
        assert_eq!(bash_message("/y/f: line 3: z\n", "/x/f"), None);
        assert_eq!(last_line("a\nb  \n\n"), "b");
        assert_eq!(
            unbound_variable("/x/f: line 12: FOO: unbound variable"),
            Some(("/x/f", 12, "FOO"))
        );
        assert_eq!(unbound_variable("/x/f: line 12: other"), None);
        assert!(SOURCE_SCRIPT.contains(&format!("echo \"{SOURCE_MARK}\" >&2")));
    }

    #[test]
    fn report_counts_errors_and_warnings() {
        let report = Report {
            findings: vec![
                Finding::error(Path::new("a"), Some(1), "bad (fix it)"),
                Finding::warning(Path::new("b"), None, "odd (look)"),
                Finding::warning(Path::new("c"), None, "odd (look)"),
            ],
            elements: 2,
        };
        assert_eq!((report.errors(), report.warnings()), (1, 2));
        assert!(report.has_errors());
        let clean = Report {
            findings: report.findings[1..].to_vec(),
            elements: 1,
        };
        assert_eq!((clean.errors(), clean.warnings()), (0, 2));
        assert!(!clean.has_errors());
    }
}
