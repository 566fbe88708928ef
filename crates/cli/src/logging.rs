//! Logging setup: `tracing` to stderr, quiet by default, more with `-v` / `-vv`; and the build
//! log's share of it.
//!
//! Every external command kiln runs ends with one event at target [`kiln_host::LOG_TARGET`]
//! (`kiln::cmd`). Those events go to the build's `build.log` once [`set_build_log`] has named
//! it, whatever the verbosity, and to the terminal with `-v` (they are at info level).

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

static BUILD_LOG: Mutex<Option<File>> = Mutex::new(None);

/// Installs the subscriber. `verbose` 0 shows info and above from kiln, 1 adds debug and the
/// commands run, 2 trace.
pub fn init(verbose: u8) {
    let default = match verbose {
        0 => "warn,kiln_element=info,kiln_pipeline=info,kiln_blockdev=info",
        1 => "info,kiln_element=debug,kiln_pipeline=debug,kiln_blockdev=debug,kiln_output=debug",
        _ => "debug",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env(kiln_pipeline::settings::KILN_LOG.name)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let terminal = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .with_filter(filter);
    let commands = BuildLog.with_filter(tracing_subscriber::filter::filter_fn(|m| {
        m.target() == kiln_host::LOG_TARGET && *m.level() <= tracing::Level::INFO
    }));
    let _ = tracing_subscriber::registry()
        .with(terminal)
        .with(commands)
        .try_init();
}

/// From now on, the commands run are also written to `log` (a handle on the build log).
pub fn set_build_log(log: File) {
    if let Ok(mut g) = BUILD_LOG.lock() {
        *g = Some(log);
    }
}

/// Writes `kiln::cmd` events' messages to the build log, one line each.
struct BuildLog;

struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for BuildLog {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut m = Message(String::new());
        event.record(&mut m);
        if let Ok(mut g) = BUILD_LOG.lock() {
            if let Some(f) = g.as_mut() {
                let _ = writeln!(f, "{}", m.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_events_reach_the_build_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("build.log");
        init(0);
        set_build_log(File::create(&path).unwrap());
        kiln_host::Cmd::new("sh")
            .args(["-c", "exit 0", "x y"])
            .run()
            .unwrap();
        tracing::info!("not a command");
        if let Ok(mut g) = BUILD_LOG.lock() {
            *g = None;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let re = regex::Regex::new(r"^cmd: exit 0, \d+\.\d{3} s: sh -c 'exit 0' 'x y'$").unwrap();
        assert!(re.is_match(lines[0]), "{text}");
    }
}
