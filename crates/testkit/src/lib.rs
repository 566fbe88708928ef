//! Test support shared by kiln's test binaries (a dev-dependency only).
//!
//! libtest hides what a passing test prints, so a test that returns early because the machine
//! lacks root, loop devices or a tool would look like a pass. Every such test calls [`skip`]
//! instead of returning silently: under CI the skip is a failure; elsewhere it is written to the
//! file named by `KILN_TEST_SKIPS`, which `scripts/test` prints as a table at the end of the run.
//! [`Timer`] records how long each end-to-end test took (`KILN_TEST_TIMES`), for the same table.

use std::io::Write as _;

pub mod clients;
use std::time::Instant;

/// Whether this run is a CI run: `CI` set to anything but empty, `0` or `false`.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| {
        let v = v.trim();
        !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false")
    })
}

/// Records that `test` cannot run here because of `why`, and panics under CI.
///
/// Call it and return: `if let Some(why) = missing() { kiln_testkit::skip("name", &why); return; }`.
pub fn skip(test: &str, why: &str) {
    assert!(
        !under_ci(),
        "{test}: cannot run under CI: {why} (a CI run must not skip)"
    );
    eprintln!("SKIPPED {test}: {why}");
    append("KILN_TEST_SKIPS", &format!("{test}\t{}\n", one_line(why)));
}

/// Measures one test; when dropped, records its name, seconds and outcome in `KILN_TEST_TIMES`
/// and prints them (visible with `--nocapture` and in a failing test's output).
pub struct Timer {
    name: String,
    start: Instant,
}

impl Timer {
    /// Starts timing `name`.
    pub fn start(name: &str) -> Self {
        Self {
            name: name.to_string(),
            start: Instant::now(),
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        let secs = self.start.elapsed().as_secs_f64();
        let outcome = if std::thread::panicking() {
            "FAILED"
        } else {
            "ok"
        };
        eprintln!("timing: {} {secs:.1} s {outcome}", self.name);
        append(
            "KILN_TEST_TIMES",
            &format!("{}\t{secs:.1}\t{outcome}\n", self.name),
        );
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn append(var: &str, line: &str) {
    let Ok(path) = std::env::var(var) else {
        return;
    };
    if path.is_empty() {
        return;
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let _ = f.write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_folds_whitespace() {
        assert_eq!(one_line("a\n  b\tc "), "a b c");
    }
}
