//! Running diffoscope on the first differing pair, when it is installed: its text report,
//! bounded in size (`--max-report-size`) and in time (`timeout`), printed after kiln's own
//! line. kiln's verdict never depends on it.

use std::path::Path;

use kiln_host::Cmd;

/// The report's size limit in bytes.
pub const MAX_REPORT: u64 = 256 * 1024;
/// How long diffoscope may run, in seconds.
pub const TIMEOUT_SECS: u64 = 120;

/// What running diffoscope gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Its text report.
    Text(String),
    /// It is not installed: how to get it.
    NotInstalled,
    /// It ran out of time or failed: why.
    Failed(String),
}

/// The hint printed when diffoscope is missing.
pub const INSTALL_HINT: &str =
    "diffoscope is not installed: `apt-get install diffoscope-minimal` shows the differences \
     in detail here";

/// Runs diffoscope on `a` and `b`.
pub fn run(a: &Path, b: &Path) -> Report {
    if !kiln_host::tools::installed("diffoscope") {
        return Report::NotInstalled;
    }
    let out = Cmd::new("timeout")
        .args(["--kill-after=10", &TIMEOUT_SECS.to_string(), "diffoscope"])
        .args(["--text", "-", "--no-progress"])
        .arg(format!("--max-report-size={MAX_REPORT}"))
        .arg(a)
        .arg(b)
        .run_unchecked();
    match out {
        // 0: no differences, 1: differences shown.
        Ok(o) if matches!(o.status.code(), Some(0 | 1)) => Report::Text(o.stdout_str()),
        Ok(o) if o.status.code() == Some(124) => Report::Failed(format!(
            "diffoscope took longer than {TIMEOUT_SECS} s; stopped"
        )),
        Ok(o) => Report::Failed(format!(
            "diffoscope failed ({}): {}",
            o.status,
            o.stderr_str().lines().last().unwrap_or("").trim()
        )),
        Err(e) => Report::Failed(e.to_string()),
    }
}
