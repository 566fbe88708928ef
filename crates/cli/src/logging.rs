//! Logging setup: `tracing` to stderr, quiet by default, more with `-v` / `-vv`; and the build
//! log's share of it.
//!
//! Every external command kiln runs ends with one event at target [`kiln_host::LOG_TARGET`]
//! (`kiln::cmd`). Those events go to the build's `build.log` once [`set_build_log`] has named
//! it, whatever the verbosity, and to the terminal with `-v` (they are at info level). Warnings
//! and errors of every kiln crate (targets `kiln*`) go to the build log too, whatever
//! `KILN_LOG` says, so that build.log alone explains a failed build.
//!
//! Colour: the terminal layer colours its level names only when stderr is a terminal and
//! `NO_COLOR` is not set (<https://no-color.org>); the build log never gets escape codes.

use std::fs::File;
use std::io::{IsTerminal as _, Write};
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
        .with_ansi(use_colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_filter(filter);
    let commands = BuildLog.with_filter(tracing_subscriber::filter::filter_fn(|m| {
        for_build_log(m.target(), *m.level())
    }));
    let _ = tracing_subscriber::registry()
        .with(terminal)
        .with(commands)
        .try_init();
}

/// Whether the terminal layer may write colour codes: only to a terminal, and not when
/// `NO_COLOR` is set to anything non-empty.
fn use_colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

/// Whether an event goes to the build log: the commands run (target [`kiln_host::LOG_TARGET`],
/// info and above), and warnings and errors of every kiln crate.
fn for_build_log(target: &str, level: tracing::Level) -> bool {
    (target == kiln_host::LOG_TARGET && level <= tracing::Level::INFO)
        || (is_kiln_target(target) && level <= tracing::Level::WARN)
}

/// Whether `target` is one of kiln's (`kiln`, `kiln_pipeline::x`, `kiln::cmd`, ...), not a
/// dependency's.
fn is_kiln_target(target: &str) -> bool {
    let krate = target.split("::").next().unwrap_or(target);
    krate == "kiln" || krate.starts_with("kiln_")
}

/// From now on, the commands run are also written to `log` (a handle on the build log).
pub fn set_build_log(log: File) {
    if let Ok(mut g) = BUILD_LOG.lock() {
        *g = Some(log);
    }
}

/// Writes the messages of `kiln::cmd` events to the build log, one line each, and those of
/// warnings and errors as `warning: MESSAGE` / `error: MESSAGE`.
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
        let meta = event.metadata();
        let prefix = if meta.target() == kiln_host::LOG_TARGET {
            ""
        } else if *meta.level() == tracing::Level::ERROR {
            "error: "
        } else {
            "warning: "
        };
        if let Ok(mut g) = BUILD_LOG.lock() {
            if let Some(f) = g.as_mut() {
                let _ = writeln!(f, "{prefix}{}", m.0);
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
        tracing::warn!(target: "kiln_pipeline::pipeline", "a pipeline warning");
        tracing::warn!(target: "hyper::client", "not kiln's");
        if let Ok(mut g) = BUILD_LOG.lock() {
            *g = None;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let re = regex::Regex::new(r"^cmd: exit 0, \d+\.\d{3} s: sh -c 'exit 0' 'x y'$").unwrap();
        assert!(re.is_match(lines[0]), "{text}");
        assert_eq!(lines[1], "warning: a pipeline warning");
        assert!(!text.contains('\x1b'), "{text}");
    }

    #[test]
    fn build_log_takes_commands_and_kiln_warnings_only() {
        use tracing::Level;
        let cmd = kiln_host::LOG_TARGET;
        assert!(for_build_log(cmd, Level::INFO));
        assert!(for_build_log(cmd, Level::WARN));
        assert!(!for_build_log(cmd, Level::DEBUG));
        for target in [
            "kiln",
            "kiln_pipeline::pipeline",
            "kiln_element",
            "kiln_blockdev::x",
        ] {
            assert!(for_build_log(target, Level::WARN), "{target}");
            assert!(for_build_log(target, Level::ERROR), "{target}");
            assert!(!for_build_log(target, Level::INFO), "{target}");
            assert!(!for_build_log(target, Level::DEBUG), "{target}");
        }
        for target in ["hyper::client", "kilnish", "tokio", "my_kiln"] {
            assert!(!for_build_log(target, Level::ERROR), "{target}");
        }
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
        assert!(!use_colour(false, Some(OsStr::new("1"))));
    }
}
