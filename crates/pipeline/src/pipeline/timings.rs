//! The timing report at the end of a build: `NAME.d/timings.json` and the table on the console.

use std::fs;
use std::path::PathBuf;

use serde_json::json;

use super::BuildReport;
use crate::plan::BuildPlan;
use crate::runner::Console;

/// Writes `NAME.d/timings.json` (best effort: a build does not fail over its report).
pub(super) fn write_timings(plan: &BuildPlan, report: &BuildReport) {
    let dir = PathBuf::from(format!("{}.d", plan.image_name.display()));
    let _ = fs::create_dir_all(&dir);
    let v = json!({
        "total_seconds": report.seconds,
        "steps": report.timings,
    });
    let _ = fs::write(
        dir.join("timings.json"),
        serde_json::to_string_pretty(&v).unwrap_or_default(),
    );
}

/// Prints the timing table: each step, and under it the hooks that took half a second or more.
pub(super) fn print_timings(console: &Console, report: &BuildReport) {
    console.say("timings:");
    for s in &report.timings {
        console.say(&format!("  {:<22} {:>8.1} s", s.step, s.seconds));
        let mut hooks = s.hooks.clone();
        hooks.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        for h in hooks.iter().filter(|h| h.seconds >= 0.5) {
            console.say(&format!(
                "      {:<30} {:>8.1} s  ({})",
                h.name, h.seconds, h.element
            ));
        }
    }
    console.say(&format!("  {:<22} {:>8.1} s", "total", report.seconds));
}
