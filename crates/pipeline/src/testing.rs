//! A recording fake of the build's [`Host`], for tests of the whole pipeline without root.
//!
//! [`RecordingHost`] does nothing on the machine: every effect of a build (commands, phases,
//! mounts, unmounts, reaping, block devices, outputs) becomes one line in the record of a
//! [`kiln_host::RecordingRunner`], the same record the block-device layer's commands go to, so
//! the whole build reads as one ordered sequence:
//!
//! ```text
//! mount tmpfs /B
//! phase root (host): bash /B/hooks/dib-run-parts /B/hooks/root.d
//! killpg root
//! mount proc /B/mnt/proc
//! losetup --show -f /I/image.raw
//! ...
//! ```
//!
//! Mounts are tracked from that record (`mount … TARGET` / `umount TARGET` lines, the
//! block-device layer's included), so [`Host::mounts_under`] answers as the kernel would.
//! Failures are injected through the runner ([`RecordingRunner::fail_at`] for the Nth effect,
//! [`RecordingRunner::fail`] for a prefix); an injected failure has no effect. An interrupt
//! can be raised once a number of effects were recorded ([`RecordingHost::interrupt_at`]),
//! as the SIGINT flag would be, without touching the process's real flag.
//!
//! The fake writes only two things, both inside directories the build itself made: an empty
//! pending file for each output (so the output's rename and checksums run), and the removal of
//! the build directories (`rm -rf`), which it really does since nothing was mounted there.
//! Tests check the record with [`kiln_host::unreleased`].

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, PoisonError};

use kiln_host::{Captured, Cmd, RecordingRunner, Runner};

use crate::host::{Host, Mounted, PhaseRun};
use crate::runner::{Console, Finished, Place};
use crate::Error;

/// What a test runs when a phase "runs" (say, root.d leaving a file in `TARGET_ROOT`).
type PhaseAction = Box<dyn Fn(&PhaseRun<'_>) + Send>;

#[derive(Default)]
struct Shared {
    interrupt_at: Option<usize>,
    on_phase: Vec<(String, PhaseAction)>,
}

/// A [`Host`] that records instead of acting. See the module docs. Clones share one record.
#[derive(Clone, Default)]
pub struct RecordingHost {
    runner: RecordingRunner,
    shared: Arc<Mutex<Shared>>,
}

impl std::fmt::Debug for RecordingHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingHost")
            .field("runner", &self.runner)
            .finish_non_exhaustive()
    }
}

impl RecordingHost {
    /// A host on which everything succeeds, recording into `runner` (configure failures and
    /// command answers, such as `du`'s, there).
    pub fn new(runner: RecordingRunner) -> Self {
        Self {
            runner,
            shared: Arc::default(),
        }
    }

    /// The record (shared with the runner given to [`Self::new`]).
    pub fn recorder(&self) -> &RecordingRunner {
        &self.runner
    }

    /// From the moment `count` effects are recorded, the build counts as interrupted by SIGINT.
    #[must_use]
    pub fn interrupt_at(self, count: usize) -> Self {
        self.with(|s| s.interrupt_at = Some(count));
        self
    }

    /// When the phase `phase` runs successfully, `action` runs with what it was given (a
    /// stand-in for what the phase's hooks would have done to the tree).
    #[must_use]
    pub fn on_phase(self, phase: &str, action: impl Fn(&PhaseRun<'_>) + Send + 'static) -> Self {
        self.with(|s| s.on_phase.push((phase.to_owned(), Box::new(action))));
        self
    }

    fn with<R>(&self, f: impl FnOnce(&mut Shared) -> R) -> R {
        let mut s = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut s)
    }

    /// Records `line`; an injected failure becomes an engine error naming the effect.
    fn effect(&self, line: &str) -> Result<(), Error> {
        let what = line.split_whitespace().next().unwrap_or("effect");
        self.runner.record(what, line).map_err(|e| Error::Step {
            step: what.to_owned(),
            message: e.to_string(),
        })
    }

    /// What is mounted now, in mount order, replayed from the record.
    fn mounted(&self) -> Vec<PathBuf> {
        let mut now: Vec<PathBuf> = Vec::new();
        for e in self.runner.effects().into_iter().filter(|e| !e.failed) {
            let mut words = e.line.split_whitespace();
            let first = words.next();
            let Some(target) = words.next_back().map(PathBuf::from) else {
                continue;
            };
            match first {
                Some("mount") => now.push(target),
                Some("umount") => {
                    if let Some(i) = now.iter().rposition(|m| *m == target) {
                        now.remove(i);
                    }
                }
                _ => {}
            }
        }
        now
    }

    /// Unmounts `paths` last first, skipping what is no longer mounted.
    fn unmount_paths(&self, paths: &[PathBuf]) -> Result<(), Error> {
        let mut failed = Vec::new();
        for p in paths.iter().rev() {
            if self.mounted().contains(p) && self.effect(&umount_line(p)).is_err() {
                failed.push(p.display().to_string());
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(kiln_sandbox::Error::Busy(failed).into())
        }
    }

    fn mounts(&self, paths: Vec<PathBuf>) -> Box<dyn Mounted> {
        Box::new(RecordedMounts {
            host: self.clone(),
            paths,
            done: false,
        })
    }
}

fn umount_line(p: &Path) -> String {
    format!("umount {}", p.display())
}

/// Mounts the fake made, undone into the same record.
struct RecordedMounts {
    host: RecordingHost,
    paths: Vec<PathBuf>,
    done: bool,
}

impl Mounted for RecordedMounts {
    fn paths(&self) -> Vec<PathBuf> {
        self.paths.clone()
    }

    fn unmount(mut self: Box<Self>) -> Result<(), Error> {
        self.done = true;
        self.host.unmount_paths(&self.paths)
    }
}

impl Drop for RecordedMounts {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.host.unmount_paths(&self.paths);
        }
    }
}

impl Host for RecordingHost {
    fn runner(&mut self) -> &mut dyn Runner {
        &mut self.runner
    }

    fn output(&mut self, cmd: &Cmd) -> Result<Captured, kiln_host::Error> {
        let out = self.runner.run(&cmd.argv())?;
        Ok(Captured {
            status: ExitStatus::from_raw(0),
            stdout: out.stdout.into_bytes(),
            stderr: out.stderr.into_bytes(),
        })
    }

    fn run_phase(&mut self, _console: &Console, run: &PhaseRun<'_>) -> Result<Finished, Error> {
        let place = match run.place {
            Place::Host => "host".to_owned(),
            Place::Chroot(root) => format!("chroot {}", root.display()),
        };
        let line = format!("phase {} ({place}): {}", run.phase, run.argv.join(" "));
        let ran = self.runner.record("phase", &line);
        // The group goes when the phase ends, whatever its end (and, in a chroot, whatever
        // is still rooted there). Killing it cannot fail: a group already gone is no error.
        self.runner.note(&format!("killpg {}", run.phase));
        if let Place::Chroot(root) = run.place {
            let _ = self.reap(root);
        }
        if let Err(e) = ran {
            return Err(Error::HookFailed {
                phase: run.phase.to_owned(),
                element: "-".into(),
                hook: "(injected failure)".into(),
                status: 1,
                tail: vec![e.to_string()],
                hooks: Vec::new(),
            });
        }
        self.with(|s| {
            for (phase, action) in &s.on_phase {
                if phase == run.phase {
                    action(run);
                }
            }
        });
        Ok(Finished {
            hooks: Vec::new(),
            captured: Vec::new(),
        })
    }

    fn mount_tmpfs(&mut self, dir: &Path) -> Result<(), Error> {
        self.effect(&format!("mount tmpfs {}", dir.display()))
    }

    fn bind(&mut self, src: &Path, dst: &Path, readonly: bool) -> Result<Box<dyn Mounted>, Error> {
        let ro = if readonly { " -o ro" } else { "" };
        self.effect(&format!(
            "mount --bind{ro} {} {}",
            src.display(),
            dst.display()
        ))?;
        Ok(self.mounts(vec![dst.to_path_buf()]))
    }

    fn mount_chroot(&mut self, root: &Path) -> Result<Box<dyn Mounted>, Error> {
        let mut made = Vec::new();
        for (how, rel) in [
            ("proc", "proc"),
            ("--bind /dev", "dev"),
            ("devpts", "dev/pts"),
            ("sysfs -o ro", "sys"),
        ] {
            let at = root.join(rel);
            if let Err(e) = self.effect(&format!("mount {how} {}", at.display())) {
                // As ChrootMounts does: a failure undoes the mounts made so far.
                let _ = self.unmount_paths(&made);
                return Err(e);
            }
            made.push(at);
        }
        Ok(self.mounts(made))
    }

    fn umount(&mut self, path: &Path) -> Result<(), Error> {
        self.effect(&umount_line(path))
    }

    fn mounts_under(&mut self, dir: &Path) -> Vec<PathBuf> {
        let mut under: Vec<(usize, PathBuf)> = self
            .mounted()
            .into_iter()
            .enumerate()
            .filter(|(_, m)| m.starts_with(dir))
            .collect();
        // Deepest first, then latest first, as mountinfo is read.
        under.sort_by(|(ia, a), (ib, b)| {
            b.components()
                .count()
                .cmp(&a.components().count())
                .then(ib.cmp(ia))
        });
        under.into_iter().map(|(_, m)| m).collect()
    }

    fn reap(&mut self, dir: &Path) -> Vec<i32> {
        // A failed reap means a process survived.
        match self.effect(&format!("reap {}", dir.display())) {
            Ok(()) => Vec::new(),
            Err(_) => vec![0],
        }
    }

    fn produce(
        &mut self,
        ty: kiln_output::OutputType,
        source: &Path,
        dest: &Path,
        _opts: &kiln_output::Options,
    ) -> Result<(), Error> {
        self.effect(&format!(
            "produce {} {} -> {}",
            ty.name(),
            source.display(),
            dest.display()
        ))?;
        // Where the real producer writes: the output's private pending directory.
        let pending = kiln_output::prepare_pending(dest)?;
        std::fs::write(&pending, b"").map_err(crate::io(&pending))
    }

    fn remove_tree(&mut self, dir: &Path) -> Result<(), Error> {
        self.effect(&format!("rm -rf --one-file-system {}", dir.display()))?;
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(crate::io(dir)(e)),
            _ => Ok(()),
        }
    }

    fn interrupted(&self) -> Option<i32> {
        let at = self.with(|s| s.interrupt_at)?;
        (self.runner.len() >= at).then_some(2)
    }
}
