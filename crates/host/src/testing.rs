//! A recording fake [`Runner`], for tests here and in the crates that drive block devices.
//!
//! It runs nothing: it records every command and host operation in order, answers `losetup`
//! with `/dev/loopN`, and can be told to fail commands (by prefix, or the effect at a given
//! position of the record), hide device nodes, report filesystems the kernel cannot mount, and
//! list directory contents. Clones share one record, so the runner that kiln-blockdev's
//! `Created` keeps for its drop-time safety net logs into the same place, and so can a fake of a
//! wider host (kiln-pipeline's `RecordingHost`), through [`RecordingRunner::record`].
//!
//! [`unreleased`] reads such a record back and lists every set-up that was never undone.
//! The record's lines follow one grammar, which it relies on:
//!
//! | set-up | undo |
//! |---|---|
//! | `mount ... TARGET` (last word is the mount point) | `umount [-l] TARGET` |
//! | `losetup --show ...` (the Nth one made `/dev/loopN`, as this fake answers) | `losetup -d /dev/loopN` |
//! | `partx -a DEVICE` | `partx -d DEVICE` |
//! | `phase NAME ...` (a process group) | `killpg NAME` |

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
    fail_at: Vec<usize>,
    failed: Vec<usize>,
    responses: Vec<(String, String)>,
    next_loop: u32,
    missing_until: Vec<(PathBuf, String)>,
    unmountable: HashSet<String>,
    device_mapper: bool,
    dirs: HashMap<PathBuf, Vec<PathBuf>>,
    redirects: HashMap<PathBuf, PathBuf>,
}

/// One recorded effect: its line, and whether it failed (by an injected failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    /// The effect as a line (`losetup --show -f /x/image.raw`, `mount tmpfs /x`, ...).
    pub line: String,
    /// Whether it failed, and so had no effect.
    pub failed: bool,
}

impl State {
    /// Records `line` and decides whether it fails: an armed prefix matches it, or it is
    /// recorded at a position given to [`RecordingRunner::fail_at`].
    fn push(&mut self, line: &str) -> bool {
        let index = self.log.len();
        self.log.push(line.to_owned());
        let mut fail = self.fail_at.contains(&index);
        if !fail {
            for (prefix, times) in &mut self.failures {
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
        }
        if fail {
            self.failed.push(index);
        }
        fail
    }
}

fn injected(line: &str, tool: &str) -> Error {
    Error::Failed {
        tool: tool.to_owned(),
        command: line.to_owned(),
        status: "exit status: 1".into(),
        stderr: "injected failure".into(),
    }
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

    /// The effect recorded at position `index` (0-based, counting every line of
    /// [`Self::log`]) fails; may be given more than once.
    #[must_use]
    pub fn fail_at(self, index: usize) -> Self {
        self.with(|s| s.fail_at.push(index));
        self
    }

    /// Records one host effect that is not a command (`mount tmpfs /x`, `phase root.d (host)`),
    /// in the same sequence as the commands, and fails it as a command would be failed (an
    /// armed prefix, or its position). The error names `what` as the tool.
    pub fn record(&self, what: &str, line: &str) -> Result<(), Error> {
        tracing::debug!(effect = %line, "effect (recorded)");
        if self.with(|s| s.push(line)) {
            Err(injected(line, what))
        } else {
            Ok(())
        }
    }

    /// Records an effect that cannot fail (a process group killed: a group already gone is no
    /// error), so no injected failure applies to it.
    pub fn note(&self, line: &str) {
        tracing::debug!(effect = %line, "effect (recorded)");
        self.with(|s| s.log.push(line.to_owned()));
    }

    /// How many effects were recorded so far.
    pub fn len(&self) -> usize {
        self.with(|s| s.log.len())
    }

    /// Whether nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every recorded effect, in order, with whether it failed.
    pub fn effects(&self) -> Vec<Effect> {
        self.with(|s| {
            s.log
                .iter()
                .enumerate()
                .map(|(i, line)| Effect {
                    line: line.clone(),
                    failed: s.failed.contains(&i),
                })
                .collect()
        })
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
            s.failed.clear();
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
            let fail = s.push(&line);
            s.commands.push(argv.to_vec());
            s.missing_until
                .retain(|(_, prefix)| prefix.is_empty() || !line.starts_with(prefix.as_str()));
            if fail {
                return Err(injected(&line, argv.first().map_or("", String::as_str)));
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
        let line = format!("write {} @{offset} ({} bytes)", path.display(), data.len());
        let (fail, target) = self.with(|s| {
            let fail = s.push(&line);
            if !fail {
                s.writes.push((path.to_path_buf(), offset, data.to_vec()));
            }
            (fail, s.redirects.get(path).cloned())
        });
        if fail {
            return Err(injected(&line, "write"));
        }
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
        let line = format!("create {} ({size} bytes)", path.display());
        if self.with(|s| s.push(&line)) {
            return Err(injected(&line, "create"));
        }
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
        // Sleeping cannot fail; the line only shows the retry.
        self.with(|s| s.log.push(format!("sleep {}ms", duration.as_millis())));
    }

    fn boxed_clone(&self) -> Option<Box<dyn Runner + Send>> {
        Some(Box::new(self.clone()))
    }
}

/// Every set-up in `effects` that was never undone, as its line, in the order they were made
/// (see the module docs for the grammar). Failed effects had no effect and count for nothing.
/// A checker for tests of teardown: after any build, successful or not, this must be empty.
pub fn unreleased(effects: &[Effect]) -> Vec<String> {
    let mut open: Vec<(String, String)> = Vec::new();
    let mut loops = 0;
    let close = |open: &mut Vec<(String, String)>, key: String| {
        if let Some(i) = open.iter().rposition(|(k, _)| *k == key) {
            open.remove(i);
        }
    };
    for e in effects.iter().filter(|e| !e.failed) {
        let words: Vec<&str> = e.line.split_whitespace().collect();
        let last = words.last().copied().unwrap_or_default();
        match words.as_slice() {
            ["mount", ..] => open.push((format!("mount {last}"), e.line.clone())),
            ["umount", ..] => close(&mut open, format!("mount {last}")),
            ["losetup", "--show", ..] => {
                open.push((format!("loop /dev/loop{loops}"), e.line.clone()));
                loops += 1;
            }
            ["losetup", "-d", dev] => close(&mut open, format!("loop {dev}")),
            ["partx", "-a", dev] => open.push((format!("partx {dev}"), e.line.clone())),
            ["partx", "-d", dev] => close(&mut open, format!("partx {dev}")),
            ["phase", name, ..] => open.push((format!("group {name}"), e.line.clone())),
            ["killpg", name] => close(&mut open, format!("group {name}")),
            _ => {}
        }
    }
    open.into_iter().map(|(_, line)| line).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn the_effect_at_a_position_fails_once_and_is_marked() {
        let mut r = RecordingRunner::new().fail_at(1);
        r.run(&argv("losetup --show -f /x")).unwrap();
        assert!(r.record("mount", "mount tmpfs /y").is_err());
        r.run(&argv("mount tmpfs /y")).unwrap();
        let failed: Vec<bool> = r.effects().iter().map(|e| e.failed).collect();
        assert_eq!(failed, [false, true, false]);
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn unreleased_pairs_each_set_up_with_its_undo() {
        let mut r = RecordingRunner::new().fail("umount /b");
        for l in [
            "losetup --show -f /img",
            "partx -a /dev/loop0",
            "mount /dev/loop0p1 /b",
            "umount /b",
        ] {
            let _ = r.run(&argv(l));
        }
        r.record("phase", "phase root.d (host)").unwrap();
        r.record("killpg", "killpg root.d").unwrap();
        r.record("mount", "mount tmpfs /t").unwrap();
        r.record("umount", "umount /t").unwrap();
        assert_eq!(
            unreleased(&r.effects()),
            [
                "losetup --show -f /img",
                "partx -a /dev/loop0",
                "mount /dev/loop0p1 /b"
            ]
        );
        for l in [
            "umount -l /b",
            "partx -d /dev/loop0",
            "losetup -d /dev/loop0",
        ] {
            r.run(&argv(l)).unwrap();
        }
        assert!(unreleased(&r.effects()).is_empty());
    }
}
