//! The errors of running a host command.

use std::path::PathBuf;

/// A command or host operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The program is not installed (not on `PATH`).
    #[error("`{tool}` is not installed{}", package_hint(package.as_deref()))]
    NotFound {
        /// The program.
        tool: String,
        /// The Debian package that provides it, when kiln knows.
        package: Option<String>,
    },
    /// The program could not be started for another reason.
    #[error("cannot run `{program}`: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The command ran and failed.
    #[error("`{command}` failed ({status}){}", stderr_tail(stderr))]
    Failed {
        /// The program (`argv[0]`).
        tool: String,
        /// The command line, shell-quoted.
        command: String,
        /// Its exit status, as the system describes it (`exit status: 1`, `signal: 9 …`).
        status: String,
        /// The last lines of what it printed on stderr.
        stderr: String,
    },
    /// A tool's JSON output did not parse.
    #[error("`{command}` printed JSON kiln cannot read: {source}")]
    Json {
        /// The command line, shell-quoted.
        command: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

fn package_hint(package: Option<&str>) -> String {
    match package {
        Some(p) => format!(": install the `{p}` package (apt-get install {p})"),
        None => String::new(),
    }
}

/// How many lines of stderr a [`Error::Failed`] keeps.
pub(crate) const KEPT_STDERR_LINES: usize = 20;

/// The last non-blank lines of `stderr` (at most [`KEPT_STDERR_LINES`]).
pub(crate) fn last_lines(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(KEPT_STDERR_LINES)..].join("\n")
}

fn stderr_tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        String::new()
    } else {
        let tail = &lines[lines.len().saturating_sub(3)..];
        format!(": {}", tail.join(" / "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_names_the_package() {
        let e = Error::NotFound {
            tool: "sgdisk".into(),
            package: Some("gdisk".into()),
        };
        assert_eq!(
            e.to_string(),
            "`sgdisk` is not installed: install the `gdisk` package (apt-get install gdisk)"
        );
    }

    #[test]
    fn failed_shows_the_last_three_stderr_lines() {
        let e = Error::Failed {
            tool: "mkfs".into(),
            command: "mkfs -t ext4 /dev/loop0p1".into(),
            status: "exit status: 1".into(),
            stderr: "one\ntwo\n\nthree\nfour\n".into(),
        };
        assert_eq!(
            e.to_string(),
            "`mkfs -t ext4 /dev/loop0p1` failed (exit status: 1): two / three / four"
        );
    }

    #[test]
    fn last_lines_keeps_the_end() {
        let text: String = (0..30)
            .map(|i| format!("line {i}\n"))
            .collect::<Vec<_>>()
            .concat();
        let kept = last_lines(&text);
        assert_eq!(kept.lines().count(), KEPT_STDERR_LINES);
        assert!(kept.ends_with("line 29"));
        assert!(kept.starts_with("line 10"));
    }
}
