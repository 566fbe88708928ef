//! The command builder and the log line every command leaves.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::{last_lines, Error};
use crate::tools;

/// The `tracing` target of the one event each command emits when it ends. The CLI routes it to
/// `build.log` (and to the terminal with `-v`).
pub const LOG_TARGET: &str = "kiln::cmd";

/// What a command reads on standard input.
#[derive(Debug, Clone, Default)]
pub enum Stdin {
    /// Nothing (`/dev/null`): the default, so no command ever waits on the terminal.
    #[default]
    Null,
    /// kiln's own standard input.
    Inherit,
    /// These bytes.
    Bytes(Vec<u8>),
    /// The contents of this file.
    File(PathBuf),
    /// A pipe the caller writes to (take it from [`Running::child_mut`]).
    Pipe,
}

/// What a command printed, and how it ended.
#[derive(Debug, Clone)]
pub struct Captured {
    /// How it ended.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
}

impl Captured {
    /// Standard output as text (invalid UTF-8 replaced).
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Standard error as text (invalid UTF-8 replaced).
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// One external command, built up and then run once or more. See the crate docs.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env_clear: bool,
    env: Vec<(OsString, Option<OsString>)>,
    cwd: Option<PathBuf>,
    stdin: Stdin,
    process_group: bool,
    die_with_parent: bool,
}

impl Cmd {
    /// A command running `program` (looked up on `PATH` unless it contains a `/`).
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env_clear: false,
            env: Vec::new(),
            cwd: None,
            stdin: Stdin::Null,
            process_group: false,
            die_with_parent: false,
        }
    }

    /// A command from a full argv (`argv[0]` is the program). An empty argv runs nothing and
    /// fails with [`Error::Spawn`].
    pub fn from_argv<S: AsRef<OsStr>>(argv: &[S]) -> Self {
        match argv.split_first() {
            Some((program, rest)) => Self::new(program).args(rest),
            None => Self::new(""),
        }
    }

    /// Adds one argument.
    #[must_use]
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets one environment variable.
    #[must_use]
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// Sets environment variables.
    #[must_use]
    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self = self.env(k, v);
        }
        self
    }

    /// Removes one environment variable.
    #[must_use]
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }

    /// Starts from an empty environment (then [`Cmd::env`] / [`Cmd::envs`] add to it).
    #[must_use]
    pub fn env_clear(mut self) -> Self {
        self.env_clear = true;
        self.env.clear();
        self
    }

    /// Runs in `dir`.
    #[must_use]
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    /// What the command reads on standard input (default: nothing).
    #[must_use]
    pub fn stdin(mut self, stdin: Stdin) -> Self {
        self.stdin = stdin;
        self
    }

    /// Runs the command as the leader of a new process group, so the caller can signal all of
    /// it (and whatever it starts) at once.
    #[must_use]
    pub fn process_group(mut self) -> Self {
        self.process_group = true;
        self
    }

    /// Has the kernel kill the command (SIGKILL) when the thread that started it ends, so a
    /// long-running child (qemu) never outlives a kiln that was killed. Start such commands
    /// from a thread that lives as long as the command should.
    #[must_use]
    pub fn die_with_parent(mut self) -> Self {
        self.die_with_parent = true;
        self
    }

    /// The program (`argv[0]`) as text.
    pub fn program(&self) -> String {
        self.program.to_string_lossy().into_owned()
    }

    /// The full argv as text.
    pub fn argv(&self) -> Vec<String> {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// The command line, shell-quoted (what the log shows).
    pub fn command_line(&self) -> String {
        quote_argv(&self.argv())
    }

    #[allow(unsafe_code)] // pre_exec, for die_with_parent
    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        if self.env_clear {
            c.env_clear();
        }
        for (k, v) in &self.env {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        if let Some(dir) = &self.cwd {
            c.current_dir(dir);
        }
        c.stdin(match self.stdin {
            Stdin::Null => Stdio::null(),
            Stdin::Inherit => Stdio::inherit(),
            Stdin::Bytes(_) | Stdin::File(_) | Stdin::Pipe => Stdio::piped(),
        });
        if self.process_group {
            c.process_group(0);
        }
        if self.die_with_parent {
            // SAFETY: only async-signal-safe calls (getpid, prctl, getppid, _exit) run between
            // fork and exec.
            let parent = std::process::id();
            unsafe {
                use std::os::unix::process::CommandExt as _;
                c.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // The parent may have died before the request took effect.
                    if u32::try_from(libc::getppid()).ok() != Some(parent) {
                        libc::_exit(1);
                    }
                    Ok(())
                });
            }
        }
        c
    }

    fn spawn_error(&self, source: std::io::Error, started: Instant) -> Error {
        let line = self.command_line();
        let program = self.program();
        let err = if self.program.is_empty() {
            Error::Spawn {
                program,
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"),
            }
        } else if source.kind() == std::io::ErrorKind::NotFound {
            // A missing working directory also says NotFound; only blame the program when it
            // really is not there.
            let cwd_missing = self.cwd.as_ref().is_some_and(|d| !d.is_dir());
            if cwd_missing {
                Error::Spawn { program, source }
            } else {
                let tool = Path::new(&self.program)
                    .file_name()
                    .map_or_else(|| program.clone(), |n| n.to_string_lossy().into_owned());
                Error::NotFound {
                    package: tools::package_for(&tool).map(String::from),
                    tool,
                }
            }
        } else {
            Error::Spawn { program, source }
        };
        emit(&log_line(
            &line,
            started.elapsed(),
            &Outcome::NotStarted(&err.to_string()),
        ));
        err
    }

    /// Starts the command with the given standard output and error, for callers that stream or
    /// pipe them. The log line is written when the returned [`Running`] is waited for.
    pub fn spawn(&self, stdout: Stdio, stderr: Stdio) -> Result<Running, Error> {
        let started = Instant::now();
        let mut c = self.command();
        if let Stdin::File(path) = &self.stdin {
            let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            c.stdin(f);
        }
        c.stdout(stdout).stderr(stderr);
        tracing::debug!(target: LOG_TARGET, "start: {}", self.command_line());
        let mut child = c.spawn().map_err(|e| self.spawn_error(e, started))?;
        if let Stdin::Bytes(bytes) = &self.stdin {
            if let Some(mut sink) = child.stdin.take() {
                let bytes = bytes.clone();
                // A writer thread: a command that prints before it reads all its input must
                // not deadlock against us.
                std::thread::spawn(move || {
                    let _ = sink.write_all(&bytes);
                });
            }
        }
        Ok(Running {
            child,
            line: self.command_line(),
            tool: self.program(),
            started,
            logged: false,
        })
    }

    /// Runs the command to its end, capturing its output, whatever its exit status.
    pub fn run_unchecked(&self) -> Result<Captured, Error> {
        let running = self.spawn(Stdio::piped(), Stdio::piped())?;
        running.wait_with_output()
    }

    /// Runs the command, capturing its output; fails unless it exits 0.
    pub fn run(&self) -> Result<Captured, Error> {
        let out = self.run_unchecked()?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(self.failed(out.status, &out.stderr_str()))
        }
    }

    /// Runs the command with its standard output going to `stdout` (a file, say), capturing
    /// stderr; fails unless it exits 0.
    pub fn run_to(&self, stdout: Stdio) -> Result<Captured, Error> {
        let out = self.spawn(stdout, Stdio::piped())?.wait_with_output()?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(self.failed(out.status, &out.stderr_str()))
        }
    }

    /// Runs the command and parses its standard output as JSON into `T`.
    pub fn run_json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        let out = self.run()?;
        serde_json::from_slice(&out.stdout).map_err(|source| Error::Json {
            command: self.command_line(),
            source,
        })
    }

    /// Runs the command with its output going to kiln's own; fails unless it exits 0.
    pub fn status(&self) -> Result<(), Error> {
        let mut running = self.spawn(Stdio::inherit(), Stdio::inherit())?;
        let status = running.wait()?;
        if status.success() {
            Ok(())
        } else {
            Err(self.failed(status, ""))
        }
    }

    /// Runs the command with its output discarded except for stderr, which a failure reports.
    pub fn run_quiet(&self) -> Result<(), Error> {
        self.run().map(|_| ())
    }

    /// The error for this command ending with `status`.
    pub fn failed(&self, status: ExitStatus, stderr: &str) -> Error {
        Error::Failed {
            tool: self.program(),
            command: self.command_line(),
            status: status.to_string(),
            stderr: last_lines(stderr),
        }
    }
}

/// A started command (see [`Cmd::spawn`]). Its log line is written when it has been waited for
/// (or, if it never was, when it is dropped).
#[derive(Debug)]
pub struct Running {
    child: Child,
    line: String,
    tool: String,
    started: Instant,
    logged: bool,
}

impl Running {
    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child, to take its piped stdout/stderr.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The program (`argv[0]`).
    pub fn tool(&self) -> &str {
        &self.tool
    }

    fn finish(&mut self, status: ExitStatus) {
        if !self.logged {
            self.logged = true;
            emit(&log_line(
                &self.line,
                self.started.elapsed(),
                &Outcome::Exited(status),
            ));
        }
    }

    /// Leaves it running on its own (a helper that outlives this handle): logs that it was
    /// started and forgets it.
    pub fn detach(mut self) {
        self.logged = true;
        emit(&log_line(
            &self.line,
            self.started.elapsed(),
            &Outcome::Detached(self.child.id()),
        ));
    }

    /// Whether it has ended, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, Error> {
        let st = self
            .child
            .try_wait()
            .map_err(|e| Error::io(&self.tool, e))?;
        if let Some(st) = st {
            self.finish(st);
        }
        Ok(st)
    }

    /// Waits for it to end.
    pub fn wait(&mut self) -> Result<ExitStatus, Error> {
        let st = self.child.wait().map_err(|e| Error::io(&self.tool, e))?;
        self.finish(st);
        Ok(st)
    }

    /// Waits for it to end, collecting the output it was spawned to pipe.
    pub fn wait_with_output(mut self) -> Result<Captured, Error> {
        // Read both pipes at once (stderr on a thread) so neither fills up and blocks it.
        let mut stdout = self.child.stdout.take();
        let stderr = self.child.stderr.take();
        let err_reader = stderr.map(|mut e| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = std::io::Read::read_to_end(&mut e, &mut buf);
                buf
            })
        });
        let mut out = Vec::new();
        if let Some(o) = stdout.as_mut() {
            std::io::Read::read_to_end(o, &mut out).map_err(|e| Error::io(&self.tool, e))?;
        }
        let err = err_reader.and_then(|h| h.join().ok()).unwrap_or_default();
        let status = self.wait()?;
        Ok(Captured {
            status,
            stdout: out,
            stderr: err,
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.logged {
            self.logged = true;
            emit(&log_line(
                &self.line,
                self.started.elapsed(),
                &Outcome::Abandoned,
            ));
        }
    }
}

/// How a command ended, for its log line.
#[derive(Debug)]
pub enum Outcome<'a> {
    /// It ran and ended.
    Exited(ExitStatus),
    /// It could not start (the message says why).
    NotStarted(&'a str),
    /// It was dropped without being waited for.
    Abandoned,
    /// It was left running in the background, with this process id.
    Detached(u32),
}

fn emit(line: &str) {
    tracing::info!(target: LOG_TARGET, "{line}");
}

/// The log line of one command: `cmd: exit 0, 0.012 s: sgdisk -Z /dev/loop0`. The argv is
/// last and shell-quoted, so it can be pasted into a shell.
pub fn log_line(command_line: &str, duration: Duration, outcome: &Outcome<'_>) -> String {
    use std::os::unix::process::ExitStatusExt;
    let how = match outcome {
        Outcome::Exited(st) => match (st.code(), st.signal()) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(sig)) => format!("signal {sig}"),
            (None, None) => "ended".to_string(),
        },
        Outcome::NotStarted(why) => format!("not started ({why})"),
        Outcome::Abandoned => "not waited for".to_string(),
        Outcome::Detached(pid) => format!("running in the background as pid {pid}"),
    };
    format!(
        "cmd: {how}, {:.3} s: {command_line}",
        duration.as_secs_f64()
    )
}

/// One word quoted for a POSIX shell: unchanged when it is safe, else in single quotes.
pub fn quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'_' | b'.' | b'/' | b':' | b',' | b'=' | b'+' | b'@' | b'%'
                )
        });
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// An argv quoted for a POSIX shell, words separated by spaces.
pub fn quote_argv<S: AsRef<str>>(argv: &[S]) -> String {
    argv.iter()
        .map(|a| quote(a.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn quoting() {
        assert_eq!(quote("sgdisk"), "sgdisk");
        assert_eq!(quote("--sector-size=512"), "--sector-size=512");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("$HOME"), "'$HOME'");
        assert_eq!(
            quote_argv(&["tar", "--use-compress-program=zstd -d", "-xf", "x y.tar"]),
            "tar '--use-compress-program=zstd -d' -xf 'x y.tar'"
        );
    }

    #[test]
    fn log_line_format() {
        let d = Duration::from_millis(1234);
        assert_eq!(
            log_line(
                "sgdisk -Z /dev/loop0",
                d,
                &Outcome::Exited(ExitStatus::from_raw(0))
            ),
            "cmd: exit 0, 1.234 s: sgdisk -Z /dev/loop0"
        );
        // A wait status: exit code 3 is 3 << 8; signal 9 is 9.
        assert_eq!(
            log_line("false", d, &Outcome::Exited(ExitStatus::from_raw(3 << 8))),
            "cmd: exit 3, 1.234 s: false"
        );
        assert_eq!(
            log_line("sleep 9", d, &Outcome::Exited(ExitStatus::from_raw(9))),
            "cmd: signal 9, 1.234 s: sleep 9"
        );
        assert_eq!(
            log_line(
                "zstd -d",
                Duration::ZERO,
                &Outcome::NotStarted("`zstd` is not installed")
            ),
            "cmd: not started (`zstd` is not installed), 0.000 s: zstd -d"
        );
    }

    #[test]
    fn run_captures_and_checks() {
        let out = Cmd::new("sh")
            .args(["-c", "printf out; printf err >&2"])
            .run()
            .unwrap();
        assert_eq!(out.stdout_str(), "out");
        assert_eq!(out.stderr_str(), "err");
        let err = Cmd::new("sh")
            .args(["-c", "echo bad >&2; exit 3"])
            .run()
            .unwrap_err();
        match err {
            Error::Failed {
                tool,
                command,
                status,
                stderr,
            } => {
                assert_eq!(tool, "sh");
                assert_eq!(command, "sh -c 'echo bad >&2; exit 3'");
                assert_eq!(status, "exit status: 3");
                assert_eq!(stderr, "bad");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn env_cwd_and_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let out = Cmd::new("sh")
            .args(["-c", "echo \"$A:$(pwd):$(cat)\"; echo \"${HOME:-unset}\""])
            .env_clear()
            .env("A", "x")
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .current_dir(dir.path())
            .stdin(Stdin::Bytes(b"in".to_vec()))
            .run()
            .unwrap();
        let canon = dir.path().canonicalize().unwrap();
        assert_eq!(
            out.stdout_str(),
            format!("x:{}:in\nunset\n", canon.display())
        );
    }

    #[test]
    fn missing_tool_names_its_package() {
        let err = Cmd::new("/nonexistent/mksquashfs").run().unwrap_err();
        match err {
            Error::NotFound { tool, package } => {
                assert_eq!(tool, "mksquashfs");
                assert_eq!(package.as_deref(), Some("squashfs-tools"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            Cmd::from_argv::<&str>(&[]).run(),
            Err(Error::Spawn { .. })
        ));
    }

    #[test]
    fn json_output_is_typed() {
        #[derive(serde::Deserialize)]
        struct T {
            a: u32,
        }
        let t: T = Cmd::new("echo").arg(r#"{"a": 7}"#).run_json().unwrap();
        assert_eq!(t.a, 7);
        let bad = Cmd::new("echo").arg("not json").run_json::<T>();
        assert!(matches!(bad, Err(Error::Json { .. })));
    }

    #[test]
    fn stdin_from_a_file_and_stdout_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        let output = dir.path().join("out");
        std::fs::write(&input, "abc\n").unwrap();
        let out_file = std::fs::File::create(&output).unwrap();
        Cmd::new("tr")
            .args(["a-z", "A-Z"])
            .stdin(Stdin::File(input))
            .run_to(out_file.into())
            .unwrap();
        assert_eq!(std::fs::read_to_string(&output).unwrap(), "ABC\n");
        let missing = Cmd::new("cat")
            .stdin(Stdin::File(dir.path().join("nope")))
            .run();
        assert!(matches!(missing, Err(Error::Io { .. })));
    }

    #[test]
    fn a_process_group_of_its_own() {
        // Field 5 of /proc/PID/stat is the process group; the shell is its leader.
        let out = Cmd::new("sh")
            .args(["-c", "echo $$; cut -d' ' -f5 /proc/$$/stat"])
            .process_group()
            .run()
            .unwrap()
            .stdout_str();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert_eq!(lines[0], lines[1]);
        let out = Cmd::new("sh")
            .args(["-c", "echo $$; cut -d' ' -f5 /proc/$$/stat"])
            .run()
            .unwrap()
            .stdout_str();
        let lines: Vec<&str> = out.lines().collect();
        assert_ne!(lines[0], lines[1]);
    }

    #[test]
    fn a_pipe_for_the_caller_and_detach() {
        let mut r = Cmd::new("cat")
            .stdin(Stdin::Pipe)
            .spawn(Stdio::piped(), Stdio::null())
            .unwrap();
        let mut sink = r.child_mut().stdin.take().unwrap();
        sink.write_all(b"through").unwrap();
        drop(sink);
        let out = r.wait_with_output().unwrap();
        assert_eq!(out.stdout, b"through");
        let r = Cmd::new("true")
            .spawn(Stdio::null(), Stdio::null())
            .unwrap();
        r.detach();
    }

    #[test]
    fn process_group_and_status() {
        let mut r = Cmd::new("sh")
            .args(["-c", "exit 0"])
            .process_group()
            .spawn(Stdio::null(), Stdio::null())
            .unwrap();
        let pid = r.id();
        assert!(r.wait().unwrap().success());
        assert!(pid > 0);
        assert!(Cmd::new("true").status().is_ok());
        assert!(matches!(
            Cmd::new("false").status(),
            Err(Error::Failed { .. })
        ));
    }
}
