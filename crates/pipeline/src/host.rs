//! The build's host: one value that carries every effect a build has on the machine.
//!
//! A build mounts (the workspace's tmpfs, the chroot's `/proc`, `/dev`, `/dev/pts`, `/sys`,
//! the hook tree's bind, the snapshot's view), runs phases in process groups, runs commands
//! (`du`, `cp`, `rm`, `lsattr`, environment.d), drives block devices, reaps processes left in
//! the chroot and writes outputs from the raw image. Each of those goes through the [`Host`]
//! trait, which [`crate::pipeline::run_with`] takes as a value: [`SystemHost`] does them on this
//! machine (exactly what the pipeline did before the seam), and
//! [`crate::testing::RecordingHost`] records them in order and does none of them, so the whole
//! pipeline, its command sequence and its teardown after any failure, is testable without root.
//!
//! What stays outside: file work inside kiln's own directories (the hook tree, the tree's
//! resolv.conf and fstab, the phase cache and output cache under the cache directory, the
//! output files' renames and checksums), reading `/proc/meminfo`, and DIB's interactive
//! `break=` shell.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_host::{Captured, Cmd, Runner};

use crate::runner::{self, Console, Finished, Place};
use crate::Error;

/// One phase (or plain engine command) to run in its own process group: what
/// [`crate::runner::run`] takes.
#[derive(Debug, Clone, Copy)]
pub struct PhaseRun<'a> {
    /// The phase's name (`root`, `install`, `packages`, …).
    pub phase: &'a str,
    /// On the host or in a chroot.
    pub place: &'a Place,
    /// The command (`bash …/dib-run-parts …/root.d`).
    pub argv: &'a [String],
    /// Exactly the environment it gets.
    pub env: &'a BTreeMap<String, String>,
    /// Hook name to element, for the report.
    pub elements: &'a BTreeMap<String, String>,
    /// Output lines starting with this are returned (block-device.d's `IMAGE_BLOCK_DEVICE=`).
    pub capture: Option<&'a str>,
}

/// Mounts made as one value (a bind, or the chroot's mounts): [`Mounted::unmount`] undoes them
/// and reports failure; dropping an implementation without it unmounts as a safety net.
pub trait Mounted: Send {
    /// The mount points, in the order they were made.
    fn paths(&self) -> Vec<PathBuf>;
    /// Unmounts them, last first, reporting every one that could not be unmounted.
    fn unmount(self: Box<Self>) -> Result<(), Error>;
}

impl Mounted for kiln_sandbox::Mount {
    fn paths(&self) -> Vec<PathBuf> {
        vec![self.path().to_path_buf()]
    }

    fn unmount(self: Box<Self>) -> Result<(), Error> {
        Ok(kiln_sandbox::Mount::unmount(*self)?)
    }
}

impl Mounted for kiln_sandbox::ChrootMounts {
    fn paths(&self) -> Vec<PathBuf> {
        kiln_sandbox::ChrootMounts::paths(self)
            .map(Path::to_path_buf)
            .collect()
    }

    fn unmount(self: Box<Self>) -> Result<(), Error> {
        Ok(kiln_sandbox::ChrootMounts::unmount(*self)?)
    }
}

/// Every effect a build has on its host. See the module docs.
pub trait Host: Send {
    /// The block-device layer's runner (commands and device operations of kiln-blockdev).
    fn runner(&mut self) -> &mut dyn Runner;

    /// Runs a command to its end, capturing its output, whatever its exit status
    /// ([`Cmd::run_unchecked`]).
    fn output(&mut self, cmd: &Cmd) -> Result<Captured, kiln_host::Error>;

    /// Runs a command, failing unless it exits 0 ([`Cmd::run`]).
    fn run(&mut self, cmd: &Cmd) -> Result<Captured, kiln_host::Error> {
        let out = self.output(cmd)?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(cmd.failed(out.status, &out.stderr_str()))
        }
    }

    /// Runs a phase in its own process group, streaming its output through `console`; the
    /// group (and, in a chroot, every process rooted there) is gone when it returns.
    fn run_phase(&mut self, console: &Console, run: &PhaseRun<'_>) -> Result<Finished, Error>;

    /// Mounts a tmpfs (the kernel's default size) on `dir`.
    fn mount_tmpfs(&mut self, dir: &Path) -> Result<(), Error>;

    /// Bind-mounts `src` on `dst` (read-only when asked), as a value.
    fn bind(&mut self, src: &Path, dst: &Path, readonly: bool) -> Result<Box<dyn Mounted>, Error>;

    /// Mounts what a chroot phase needs inside `root` ([`kiln_sandbox::ChrootMounts`]).
    fn mount_chroot(&mut self, root: &Path) -> Result<Box<dyn Mounted>, Error>;

    /// Unmounts one mount point (retrying a busy one, then lazily).
    fn umount(&mut self, path: &Path) -> Result<(), Error>;

    /// Every mount point at or below `dir`, deepest and latest first.
    fn mounts_under(&mut self, dir: &Path) -> Vec<PathBuf>;

    /// Unmounts everything at or below `dir`, deepest first; reports what it could not.
    fn umount_all_under(&mut self, dir: &Path) -> Result<(), Error> {
        let mut failed = Vec::new();
        for m in self.mounts_under(dir) {
            if let Err(e) = self.umount(&m) {
                tracing::warn!("{e}");
                failed.push(m.display().to_string());
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(kiln_sandbox::Error::Busy(failed).into())
        }
    }

    /// Kills every process whose root is inside `dir`; returns those that survived.
    fn reap(&mut self, dir: &Path) -> Vec<i32>;

    /// Writes the output `ty` from `source` (the tree or the raw image) to `dest`'s pending
    /// file ([`kiln_output::produce`]).
    fn produce(
        &mut self,
        ty: kiln_output::OutputType,
        source: &Path,
        dest: &Path,
        opts: &kiln_output::Options,
    ) -> Result<(), Error>;

    /// Removes a build directory (nothing may be mounted below it any more).
    fn remove_tree(&mut self, dir: &Path) -> Result<(), Error>;

    /// The signal that interrupted the build, if any (checked between steps).
    fn interrupted(&self) -> Option<i32>;
}

/// The real host: every effect on this machine, as the pipeline always did them.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemHost {
    runner: WatchedRunner,
}

/// The real block-device runner, which tells the watchdog each loop device the moment `losetup`
/// attaches it: a kiln killed between the attach and the end of block-device creation (partx,
/// mkfs, mount take a second or more) must not leave the device behind, and once kiln's mount
/// namespace is gone the watchdog can no longer find it by its backing file's path.
#[derive(Debug, Clone, Copy, Default)]
struct WatchedRunner;

impl Runner for WatchedRunner {
    fn run(&mut self, argv: &[String]) -> Result<kiln_host::Output, kiln_host::Error> {
        let out = kiln_host::SystemRunner.run(argv)?;
        if let Some(device) = attached_loop(argv, &out.stdout) {
            kiln_sandbox::watchdog::note_loop(device);
        }
        Ok(out)
    }

    fn boxed_clone(&self) -> Option<Box<dyn Runner + Send>> {
        Some(Box::new(*self))
    }
}

/// The loop device a `losetup --show …` command printed, if `argv` is one.
fn attached_loop<'a>(argv: &[String], stdout: &'a str) -> Option<&'a str> {
    let program = argv.first()?;
    let is_losetup = Path::new(program)
        .file_name()
        .is_some_and(|n| n == "losetup");
    let device = stdout.trim();
    (is_losetup && argv.iter().any(|a| a == "--show") && device.starts_with("/dev/loop"))
        .then_some(device)
}

impl SystemHost {
    /// The host kiln runs on.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Host for SystemHost {
    fn runner(&mut self) -> &mut dyn Runner {
        &mut self.runner
    }

    fn output(&mut self, cmd: &Cmd) -> Result<Captured, kiln_host::Error> {
        cmd.run_unchecked()
    }

    fn run_phase(&mut self, console: &Console, run: &PhaseRun<'_>) -> Result<Finished, Error> {
        runner::run(
            console,
            run.phase,
            run.place,
            run.argv,
            run.env,
            run.elements,
            run.capture,
        )
    }

    fn mount_tmpfs(&mut self, dir: &Path) -> Result<(), Error> {
        Ok(kiln_sandbox::mount_tmpfs(dir, 0)?)
    }

    fn bind(&mut self, src: &Path, dst: &Path, readonly: bool) -> Result<Box<dyn Mounted>, Error> {
        Ok(Box::new(kiln_sandbox::Mount::bind(src, dst, readonly)?))
    }

    fn mount_chroot(&mut self, root: &Path) -> Result<Box<dyn Mounted>, Error> {
        Ok(Box::new(kiln_sandbox::ChrootMounts::mount(root)?))
    }

    fn umount(&mut self, path: &Path) -> Result<(), Error> {
        Ok(kiln_sandbox::umount(path)?)
    }

    fn mounts_under(&mut self, dir: &Path) -> Vec<PathBuf> {
        kiln_sandbox::mounts_under(dir)
    }

    fn reap(&mut self, dir: &Path) -> Vec<i32> {
        kiln_sandbox::kill_processes_rooted_under(dir)
    }

    fn produce(
        &mut self,
        ty: kiln_output::OutputType,
        source: &Path,
        dest: &Path,
        opts: &kiln_output::Options,
    ) -> Result<(), Error> {
        Ok(kiln_output::produce(ty, source, dest, opts)?)
    }

    fn remove_tree(&mut self, dir: &Path) -> Result<(), Error> {
        let cmd = Cmd::new("rm").arg("-rf").arg("--one-file-system").arg(dir);
        self.run(&cmd).map(|_| ()).map_err(|e| Error::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other(e),
        })
    }

    fn interrupted(&self) -> Option<i32> {
        runner::interrupted()
    }
}

#[cfg(test)]
mod tests {
    use super::attached_loop;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_loop_device_losetup_printed_is_recognised() {
        let attach = argv(&[
            "losetup",
            "--show",
            "-f",
            "--direct-io=off",
            "/x/image0.raw",
        ]);
        assert_eq!(attached_loop(&attach, "/dev/loop3\n"), Some("/dev/loop3"));
        let full = argv(&["/usr/sbin/losetup", "--show", "-f", "/x/image0.raw"]);
        assert_eq!(attached_loop(&full, "/dev/loop0"), Some("/dev/loop0"));
        // Not an attach, or nothing printed: nothing to tell.
        assert_eq!(
            attached_loop(&argv(&["losetup", "-d", "/dev/loop3"]), ""),
            None
        );
        assert_eq!(attached_loop(&argv(&["losetup", "--json"]), "{}"), None);
        assert_eq!(
            attached_loop(&argv(&["partx", "--show"]), "/dev/loop1"),
            None
        );
    }
}
