//! The phases: root.d to post-root (each cacheable step followed by its snapshot), the finalise
//! sequence (pre-finalise, finalise, cleanup, tidy, tree outputs; written once, for a root
//! filesystem and for a disk alike), and running one phase's hooks on the host or in the
//! chroot, with DIB's `break=` points around it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use kiln_element::Phase;
use kiln_host::Cmd;

use super::snapshots::Snapshotter;
use super::Ctx;
use crate::host::PhaseRun;
use crate::runner::{self, Place};
use crate::{sbom, settings, Error};

impl Ctx<'_> {
    /// root.d on the host (unless its layer was restored), DIB's resolv.conf, then the chroot
    /// phases and the `-p` packages up to post-root, each followed by its snapshot; the first
    /// `hits` steps came from the cache.
    pub(super) fn install_phases(
        &mut self,
        snap: &mut Snapshotter,
        hits: usize,
    ) -> Result<(), Error> {
        let mnt = self.ws.mnt();
        // root.d on the host with TARGET_ROOT.
        if hits == 0 {
            self.run_phase(Phase::Root, &Place::Host, Some(&mnt))?;
            if !runner::has_content(&mnt) {
                return Err(Error::Step {
                    step: "root.d".into(),
                    message: "Failed to deploy the root element: the target is still empty after root.d (is an operating-system element's root.d missing?)".into(),
                });
            }
            self.snapshot(snap, 0)?;
        }
        // Layers after root were taken with the build's resolv.conf in place already.
        if hits <= 1 {
            crate::in_image::resolv_conf_in(&mnt)?;
        }
        self.ws.mount_chroot()?;
        if hits > 0 {
            self.regenerate_identities(snap, hits)?;
        }
        for i in hits.max(1)..snap.steps.len() {
            match snap.steps[i].phase {
                Some(p) => {
                    let place = if p.in_chroot() {
                        Place::Chroot(mnt.clone())
                    } else {
                        Place::Host
                    };
                    self.run_phase(p, &place, None)?;
                }
                None => self.install_extra_packages(&mnt)?,
            }
            self.snapshot(snap, i)?;
        }
        Ok(())
    }

    /// Leaves the chroot: drops `lost+found` and unmounts the chroot filesystems.
    pub(super) fn leave_chroot(&mut self) -> Result<(), Error> {
        let _ = fs::remove_dir_all(self.ws.mnt().join("lost+found"));
        self.ws.umount_chroot()
    }

    /// The finalise sequence, in the tree or in the mounted image alike: pre-finalise (host),
    /// finalise (chroot), cleanup (host), DIB's tidying, then the tree outputs (tar, squashfs).
    pub(super) fn finalise(&mut self, outputs: &mut Vec<PathBuf>) -> Result<(), Error> {
        let mnt = self.ws.mnt();
        self.ws.mount_chroot()?;
        // apt's lists (the .debs' SHA256 and locations) before cleanup.d empties them.
        let index = self.apt_index(&mnt)?;
        self.run_phase(Phase::PreFinalise, &Place::Host, None)?;
        self.run_phase(Phase::Finalise, &Place::Chroot(mnt.clone()), None)?;
        self.run_phase(Phase::Cleanup, &Place::Host, Some(&mnt))?;
        self.ws.umount_chroot()?;
        self.tidy(&mnt)?;
        self.sbom(&mnt, &index)?;
        self.identity(&mnt)?;
        self.tree_outputs(&mnt, outputs)
    }

    /// The `-p` packages, installed in the chroot (step `packages`).
    fn install_extra_packages(&mut self, mnt: &Path) -> Result<(), Error> {
        self.step("packages", |ctx| {
            let mut argv = vec!["install-packages".to_string()];
            argv.extend(ctx.plan.request.package_list());
            let bound = ctx.bind_lock_repo(mnt)?;
            let run = PhaseRun {
                phase: "packages",
                place: &Place::Chroot(mnt.to_path_buf()),
                argv: &argv,
                env: &ctx.env,
                elements: &BTreeMap::new(),
                capture: None,
            };
            let result = ctx.ws.host.run_phase(ctx.console, &run).map(|_| ());
            ctx.unbind_lock_repo(bound);
            result.map_err(|e| ctx.explain_locked_failure(e))
        })
    }

    /// After cleanup.d: the tidy-up of the tree ([`crate::in_image::tidy`]), every path resolved
    /// inside the image, and with `SOURCE_DATE_EPOCH` the reproducible one
    /// ([`crate::in_image::reproducible_tidy`]); what it could not do is a warning.
    fn tidy(&mut self, mnt: &Path) -> Result<(), Error> {
        let mut problems = crate::in_image::tidy_on(mnt, self.ws.host.as_mut())?;
        if let Some(epoch) = self.plan.request.source_date_epoch()? {
            problems.extend(crate::in_image::reproducible_tidy(mnt, epoch)?);
        }
        for p in problems {
            self.console.say(&format!("warning: tidy: {p}"));
        }
        Ok(())
    }

    /// Reads the tree's apt lists for the SBOM (step `sbom-index`), or a locked build's lock. Lists that cannot be read
    /// are a warning: the SBOM then says NOASSERTION for the .debs' SHA256 and location.
    fn apt_index(&mut self, mnt: &Path) -> Result<sbom::AptIndex, Error> {
        self.step("sbom-index", |ctx| {
            // A locked build's lists are those of its local repository: the lock says more.
            if let Some(input) = &ctx.locked {
                return Ok(sbom::AptIndex::from_lock(&input.lock));
            }
            Ok(sbom::AptIndex::read(mnt).unwrap_or_else(|e| {
                ctx.console.say(&format!(
                    "warning: SBOM: cannot read the apt lists ({e}); no .deb checksums"
                ));
                sbom::AptIndex::default()
            }))
        })
    }

    /// Writes the finished tree's SBOM to `NAME.d/sbom.spdx.json` (step `sbom`); a tree without
    /// a dpkg status gets none. A status that cannot be read fails the build.
    fn sbom(&mut self, mnt: &Path, index: &sbom::AptIndex) -> Result<(), Error> {
        self.step("sbom", |ctx| {
            let image = &ctx.plan.image_name;
            let dest = PathBuf::from(format!("{}.d", image.display())).join(sbom::FILE_NAME);
            let name = image.file_name().map_or_else(
                || image.display().to_string(),
                |n| n.to_string_lossy().into(),
            );
            let epoch = ctx
                .plan
                .request
                .var(settings::SOURCE_DATE_EPOCH.name)
                .and_then(|v| v.parse().ok());
            match sbom::write(mnt, &name, index, epoch, &dest)? {
                Some(n) => ctx
                    .console
                    .say(&format!("wrote {} ({n} packages)", dest.display())),
                None => ctx
                    .console
                    .say("no dpkg status in the image: no SBOM written"),
            }
            Ok(())
        })
    }

    /// The hooks' environment, with `TARGET_ROOT` for the host phases that work on the tree.
    fn phase_env(&self, target_root: Option<&Path>) -> BTreeMap<String, String> {
        let mut e = self.env.clone();
        if let Some(t) = target_root {
            e.insert(settings::TARGET_ROOT.name.into(), t.display().to_string());
        }
        e
    }

    /// Runs one phase's hooks (nothing when the phase has none), timed as the phase's name.
    pub(super) fn run_phase(
        &mut self,
        phase: Phase,
        place: &Place,
        target_root: Option<&Path>,
    ) -> Result<(), Error> {
        self.run_phase_inner(phase, place, target_root, None)
            .map(|_| ())
    }

    /// Runs a host phase and returns the lines of its output that start with `prefix`.
    pub(super) fn run_phase_capture(
        &mut self,
        phase: Phase,
        prefix: &str,
    ) -> Result<Vec<String>, Error> {
        self.run_phase_inner(phase, &Place::Host, None, Some(prefix))
    }

    fn run_phase_inner(
        &mut self,
        phase: Phase,
        place: &Place,
        target_root: Option<&Path>,
        prefix: Option<&str>,
    ) -> Result<Vec<String>, Error> {
        let hooks = self.ws.build_dir.join("hooks");
        if !hooks.join(phase.dir_name()).is_dir() {
            return Ok(Vec::new());
        }
        self.check_break(&format!("before-{}", phase.name()), Some(place));
        let captured = self.step(phase.name(), |ctx| {
            ctx.run_hooks(phase, place, &hooks, target_root, prefix)
        })?;
        self.check_break(&format!("after-{}", phase.name()), Some(place));
        Ok(captured)
    }

    /// One phase's hooks (of the hook tree `hooks`) through dib-run-parts, on the host or in the
    /// chroot (the hook tree bind-mounted at `/tmp/in_target.d`). The hooks' timings go to the
    /// phase's step.
    fn run_hooks(
        &mut self,
        phase: Phase,
        place: &Place,
        hooks: &Path,
        target_root: Option<&Path>,
        prefix: Option<&str>,
    ) -> Result<Vec<String>, Error> {
        let env = self.phase_env(target_root);
        let elements = self.hook_elements.get(&phase).cloned().unwrap_or_default();
        self.console.say(&format!("==> {}.d", phase.name()));
        let (argv, chroot) = match place {
            Place::Host => (
                vec![
                    "bash".to_string(),
                    hooks.join("dib-run-parts").display().to_string(),
                    hooks.join(phase.dir_name()).display().to_string(),
                ],
                None,
            ),
            Place::Chroot(root) => {
                let in_target =
                    kiln_sandbox::path::create_dir_all_in_root(root, Path::new("tmp/in_target.d"))?;
                let hooks_mount = self.ws.host.bind(hooks, &in_target, true)?;
                let repo = match self.bind_lock_repo(root) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = hooks_mount.unmount();
                        let _ = fs::remove_dir(&in_target);
                        return Err(e);
                    }
                };
                (
                    vec![
                        "bash".to_string(),
                        "/tmp/in_target.d/dib-run-parts".to_string(),
                        format!("/tmp/in_target.d/{}", phase.dir_name()),
                    ],
                    Some((root, in_target, hooks_mount, repo)),
                )
            }
        };
        let run = PhaseRun {
            phase: phase.name(),
            place,
            argv: &argv,
            env: &env,
            elements: &elements,
            capture: prefix,
        };
        let result = self.ws.host.run_phase(self.console, &run);
        if let Some((root, in_target, hooks_mount, repo)) = chroot {
            if let Err(Error::HookFailed { .. }) = &result {
                // Let a debugging user look around before the mounts go.
                self.check_break("after-error", Some(place));
            }
            self.ws.host.reap(root);
            self.unbind_lock_repo(repo);
            if let Err(e) = hooks_mount.unmount() {
                self.console.say(&format!("warning: {e}"));
            }
            let _ = fs::remove_dir(&in_target);
        }
        let fin = result.map_err(|e| self.explain_locked_failure(e))?;
        self.hooks_ran = fin.hooks;
        Ok(fin.captured)
    }

    /// DIB's `break=` debugging points: run `$break_cmd` (default bash) on the host or in the
    /// chroot when the named point is reached.
    pub(super) fn check_break(&self, point: &str, place: Option<&Place>) {
        if !self.breaks.iter().any(|b| b == point) {
            return;
        }
        let cmd = settings::BREAK_CMD
            .get_or_default(&self.plan.request.env)
            .to_string();
        let outside = self
            .plan
            .request
            .var(settings::BREAK_OUTSIDE_TARGET.name)
            .is_some_and(|v| v != "0");
        self.console.say(&format!(
            "break point {point}: running `{cmd}`; exit it to continue"
        ));
        let c = match place {
            Some(Place::Chroot(root)) if !outside => {
                Cmd::new("chroot").arg(root).arg("bash").arg("-c").arg(&cmd)
            }
            _ => Cmd::new("bash").arg("-c").arg(&cmd),
        };
        // Interactive: the shell has the terminal; how it exits does not matter.
        let _ = c
            .env_clear()
            .envs(&self.env)
            .stdin(kiln_host::Stdin::Inherit)
            .status();
    }
}
