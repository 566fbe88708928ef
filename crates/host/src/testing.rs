//! A recording fake [`Runner`], for tests here and in the crates that drive block devices.
//!
//! It runs nothing: it records every command and host operation in order, answers `losetup`
//! with `/dev/loopN`, and can be told to fail commands, hide device nodes, report filesystems
//! the kernel cannot mount, and list directory contents. Clones share one record, so the
//! runner that kiln-blockdev's `Created` keeps for its drop-time safety net logs into the same place.

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::runner::{Output, Runner};
use crate::Error;

#[derive(Debug, Default)]
struct State {
    log: Vec<String>,
    commands: Vec<Vec<String>>,
    writes: Vec<(PathBuf, u64, Vec<u8>)>,
    failures: Vec<(String, Option<usize>)>,
    responses: Vec<(String, String)>,
    next_loop: u32,
    missing_until: Vec<(PathBuf, String)>,
    unmountable: HashSet<String>,
    device_mapper: bool,
    dirs: HashMap<PathBuf, Vec<PathBuf>>,
    redirects: HashMap<PathBuf, PathBuf>,
}

/// A fake runner that records instead of running. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct RecordingRunner {
    state: Arc<Mutex<State>>,
}

impl RecordingRunner {
    /// A runner on which every command succeeds and every device node exists.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut s)
    }

    /// Every command whose line starts with `prefix` fails.
    #[must_use]
    pub fn fail(self, prefix: &str) -> Self {
        self.with(|s| s.failures.push((prefix.to_owned(), None)));
        self
    }

    /// The next `times` commands whose line starts with `prefix` fail.
    #[must_use]
    pub fn fail_times(self, prefix: &str, times: usize) -> Self {
        self.with(|s| s.failures.push((prefix.to_owned(), Some(times))));
        self
    }

    /// Commands whose line starts with `prefix` print `stdout`.
    #[must_use]
    pub fn respond(self, prefix: &str, stdout: &str) -> Self {
        self.with(|s| s.responses.push((prefix.to_owned(), stdout.to_owned())));
        self
    }

    /// `path` does not exist until a command starting with `command_prefix` has run (use an
    /// empty prefix for never).
    #[must_use]
    pub fn missing_until(self, path: &str, command_prefix: &str) -> Self {
        self.with(|s| {
            s.missing_until
                .push((PathBuf::from(path), command_prefix.to_owned()));
        });
        self
    }

    /// The kernel cannot mount `fstype` (as vfat on a kernel without it).
    #[must_use]
    pub fn without_fs(self, fstype: &str) -> Self {
        self.with(|s| {
            s.unmountable.insert(fstype.to_owned());
        });
        self
    }

    /// Whether `/dev/mapper/control` exists (default: no).
    #[must_use]
    pub fn with_device_mapper(self, present: bool) -> Self {
        self.with(|s| s.device_mapper = present);
        self
    }

    /// What `list_dir(dir)` returns.
    #[must_use]
    pub fn dir_entries(self, dir: &str, entries: &[&str]) -> Self {
        self.with(|s| {
            s.dirs.insert(
                PathBuf::from(dir),
                entries.iter().map(PathBuf::from).collect(),
            );
        });
        self
    }

    /// Byte writes to `device` really go to `file` (to check what would be written).
    #[must_use]
    pub fn redirect_writes(self, device: &str, file: &Path) -> Self {
        self.with(|s| {
            s.redirects
                .insert(PathBuf::from(device), file.to_path_buf());
        });
        self
    }

    /// Every recorded event, in order: command lines, `write ...`, `create ...`, `sleep ...`.
    pub fn log(&self) -> Vec<String> {
        self.with(|s| s.log.clone())
    }

    /// The command lines run, in order.
    pub fn commands(&self) -> Vec<String> {
        self.with(|s| s.commands.iter().map(|c| c.join(" ")).collect())
    }

    /// The argv of every command run, in order.
    pub fn argvs(&self) -> Vec<Vec<String>> {
        self.with(|s| s.commands.clone())
    }

    /// The byte writes, in order: (path, offset, data).
    pub fn writes(&self) -> Vec<(PathBuf, u64, Vec<u8>)> {
        self.with(|s| s.writes.clone())
    }

    /// Forgets what was recorded so far (the configuration stays).
    pub fn clear(&self) {
        self.with(|s| {
            s.log.clear();
            s.commands.clear();
            s.writes.clear();
        });
    }
}

impl Runner for RecordingRunner {
    fn run(&mut self, argv: &[String]) -> Result<Output, Error> {
        let line = argv.join(" ");
        tracing::debug!(command = %line, "run (recorded)");
        self.with(|s| {
            s.log.push(line.clone());
            s.commands.push(argv.to_vec());
            s.missing_until
                .retain(|(_, prefix)| prefix.is_empty() || !line.starts_with(prefix.as_str()));
            let mut fail = false;
            for (prefix, times) in &mut s.failures {
                if line.starts_with(prefix.as_str()) {
                    match times {
                        None => fail = true,
                        Some(0) => {}
                        Some(n) => {
                            *n -= 1;
                            fail = true;
                        }
                    }
                    if fail {
                        break;
                    }
                }
            }
            if fail {
                return Err(Error::Failed {
                    tool: argv.first().cloned().unwrap_or_default(),
                    command: line,
                    status: "exit status: 1".into(),
                    stderr: "injected failure".into(),
                });
            }
            if let Some((_, out)) = s
                .responses
                .iter()
                .find(|(p, _)| line.starts_with(p.as_str()))
            {
                return Ok(Output {
                    stdout: out.clone(),
                    stderr: String::new(),
                });
            }
            if line.starts_with("losetup --show") {
                let n = s.next_loop;
                s.next_loop += 1;
                return Ok(Output {
                    stdout: format!("/dev/loop{n}\n"),
                    stderr: String::new(),
                });
            }
            Ok(Output::default())
        })
    }

    fn write_at(&mut self, path: &Path, offset: u64, data: &[u8]) -> Result<(), Error> {
        let target = self.with(|s| {
            s.log.push(format!(
                "write {} @{offset} ({} bytes)",
                path.display(),
                data.len()
            ));
            s.writes.push((path.to_path_buf(), offset, data.to_vec()));
            s.redirects.get(path).cloned()
        });
        if let Some(file) = target {
            let io = |source| Error::Io {
                path: file.clone(),
                source,
            };
            let mut f = OpenOptions::new().write(true).open(&file).map_err(io)?;
            f.seek(SeekFrom::Start(offset)).map_err(io)?;
            f.write_all(data).map_err(io)?;
        }
        Ok(())
    }

    fn create_sparse_file(&mut self, path: &Path, size: u64) -> Result<(), Error> {
        self.with(|s| {
            s.log
                .push(format!("create {} ({size} bytes)", path.display()));
        });
        Ok(())
    }

    fn path_exists(&mut self, path: &Path) -> bool {
        self.with(|s| !s.missing_until.iter().any(|(p, _)| p == path))
    }

    fn list_dir(&mut self, dir: &Path) -> Result<Vec<PathBuf>, Error> {
        Ok(self.with(|s| s.dirs.get(dir).cloned().unwrap_or_default()))
    }

    fn kernel_can_mount(&mut self, fstype: &str) -> bool {
        self.with(|s| !s.unmountable.contains(fstype))
    }

    fn has_device_mapper(&mut self) -> bool {
        self.with(|s| s.device_mapper)
    }

    fn sleep(&mut self, duration: Duration) {
        self.with(|s| s.log.push(format!("sleep {}ms", duration.as_millis())));
    }

    fn boxed_clone(&self) -> Option<Box<dyn Runner + Send>> {
        Some(Box::new(self.clone()))
    }
}
