//! Executing a [`BuildPlan`]: DIB's steps in DIB's order (reference 3.1), with kiln's teardown.
//!
//! root.d (host) → resolv.conf → extra-data.d (host) → pre-install/install/`-p`/post-install
//! (chroot) → post-root (host) → unmount → [disk: size → block-device.d → create → fstab →
//! one copy into the image] → pre-finalise (host) → finalise (chroot) → cleanup (host) → tidy →
//! tree outputs → [disk: unmount → disk conversions] → teardown. [`Ctx::build`] is that list;
//! each named step runs through one wrapper, [`Ctx::step`], which checks for an interrupt
//! first and records the step's time (`timings.json`, the timing table). Every error path ends
//! in [`Workspace::teardown`]. Every effect on the machine goes through the [`Host`] the build
//! is given ([`run`]: the real one; [`run_with`]: any, such as a recording fake).
//!
//! The stages live in submodules: `preflight` (host checks before anything runs), `prepare`
//! (hook tree and environment), `keys` (cache keys), `snapshots` (cache lookup, layers, trim),
//! `phases` (running hooks, the finalise sequence), `disk` (size, block devices, the copy into
//! the image), `outputs` (tree and disk outputs, the output cache), `explain`
//! (`--explain-cache`) and `timings` (the report).

mod disk;
mod explain;
mod keys;
mod lockrepo;
mod outputs;
mod phases;
mod preflight;
mod prepare;
mod snapshots;
mod space;
mod timings;

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use kiln_element::Phase;

use crate::host::{Host, SystemHost};
use crate::plan::BuildPlan;
use crate::runner::{Console, HookTiming, StepTiming};
use crate::workspace::Workspace;
use crate::{io, settings, Error};

pub use explain::explain_cache;
pub use keys::{cache_steps, kiln_identity, output_key, CacheStep};
pub use preflight::{layout_plan, preflight, required_tools};
pub use prepare::{prepare, Prepared};

/// What a successful build produced.
#[derive(Debug)]
pub struct BuildReport {
    /// Output files written.
    pub outputs: Vec<PathBuf>,
    /// Timings of every step.
    pub timings: Vec<StepTiming>,
    /// Total seconds.
    pub seconds: f64,
}

/// Everything the steps of one build share.
struct Ctx<'a> {
    plan: &'a BuildPlan,
    console: &'a Console,
    ws: Workspace,
    env: BTreeMap<String, String>,
    hook_elements: BTreeMap<Phase, BTreeMap<String, String>>,
    timings: Vec<StepTiming>,
    /// The hooks the current step ran (a phase's), for its timing.
    hooks_ran: Vec<HookTiming>,
    breaks: Vec<String>,
    out_key: Option<String>,
    /// A locked build's local repository, once laid out.
    lock_repo: Option<PathBuf>,
    /// A locked build's lock.
    locked: Option<crate::locked::Input>,
    /// When the build started, in seconds since 1970 (the image's creation date without
    /// `SOURCE_DATE_EPOCH`).
    started: u64,
    /// The image's identity, computed from the final tree when an output needs it.
    image_info: Option<kiln_output::identity::ImageInfo>,
}

/// Runs the build on this machine, after the [`preflight`]. On failure everything set up is
/// torn down before the error returns.
///
/// The build runs with umask 022, whatever the caller's: hooks, the tools kiln runs and kiln
/// itself create files in the image, and an image must not depend on who built it (a umask of
/// 077 would leave `/boot/grub` unreadable to all but root and the bytes different). The
/// caller's umask is restored afterwards and still gives the outputs their mode
/// ([`kiln_output::set_output_umask`]).
pub fn run(plan: &BuildPlan, console: &Console) -> Result<BuildReport, Error> {
    use nix::sys::stat::{umask, Mode};
    preflight(plan)?;
    let caller = umask(Mode::from_bits_truncate(0o022));
    kiln_output::set_output_umask(caller.bits());
    let result = run_with(plan, console, Box::new(SystemHost::new()));
    umask(caller);
    result
}

/// Runs the build with every host effect going to `host` (no preflight: the caller checks
/// the host first, as [`run`] does). On failure everything set up is torn down, on `host`,
/// before the error returns.
pub fn run_with(
    plan: &BuildPlan,
    console: &Console,
    host: Box<dyn Host>,
) -> Result<BuildReport, Error> {
    let start = Instant::now();
    let mut ctx = Ctx::new(plan, console, host)?;
    let result = ctx.build();
    // Before the teardown frees the build's space: which filesystem is full, if one is.
    let space_note = result.as_ref().err().and_then(|e| ctx.space_note(e));
    let problems = ctx.ws.teardown();
    for p in &problems {
        console.say(&format!("teardown: {p}"));
    }
    let outputs = match result {
        Ok(outputs) if !problems.is_empty() => {
            return Err(Error::LeftBehind { outputs, problems });
        }
        Ok(outputs) => outputs,
        Err(e) => {
            if let Error::HookFailed { .. } = &e {
                ctx.check_break("after-error", None);
            }
            return Err(match space_note {
                Some(note) => Error::NoSpace {
                    source: Box::new(e),
                    note,
                },
                None => e,
            });
        }
    };
    let report = BuildReport {
        outputs,
        timings: ctx.timings,
        seconds: start.elapsed().as_secs_f64(),
    };
    timings::write_timings(plan, &report);
    timings::print_timings(console, &report);
    Ok(report)
}

impl<'a> Ctx<'a> {
    /// The workspace made (on tmpfs when there is memory for it, as DIB decides), and what the
    /// steps need from the plan.
    fn new(plan: &'a BuildPlan, console: &'a Console, host: Box<dyn Host>) -> Result<Self, Error> {
        let req = &plan.request;
        let base = req
            .var(settings::TMPDIR.name)
            .or_else(|| req.var(settings::TMP_DIR.name))
            .map_or_else(
                || PathBuf::from(settings::TMPDIR.default_value()),
                PathBuf::from,
            );
        let min_tmpfs_gib: u64 = req
            .min_tmpfs
            .or_else(|| settings::DIB_MIN_TMPFS.parse(&req.env))
            .unwrap_or_default();
        let no_tmpfs = req.no_tmpfs || req.var(settings::DIB_NO_TMPFS.name) == Some("1");
        let use_tmpfs =
            !no_tmpfs && kiln_sandbox::mem_total_bytes() >= 2 * min_tmpfs_gib * (1 << 30);
        let ws = Workspace::create(&base, use_tmpfs, host)?;
        console.say(&format!(
            "build dir {} ({})",
            ws.build_dir.display(),
            if ws.tmpfs { "tmpfs" } else { "disk" }
        ));
        let hook_elements = plan
            .hooks
            .phases
            .iter()
            .map(|(p, hooks)| {
                (
                    *p,
                    hooks
                        .iter()
                        .map(|h| (h.name.clone(), h.element.clone()))
                        .collect(),
                )
            })
            .collect();
        let breaks = req
            .var(settings::BREAK.name)
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        Ok(Ctx {
            plan,
            console,
            ws,
            env: BTreeMap::new(),
            hook_elements,
            timings: Vec::new(),
            hooks_ran: Vec::new(),
            breaks,
            out_key: None,
            lock_repo: None,
            locked: None,
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            image_info: None,
        })
    }
}

impl Ctx<'_> {
    /// The build, step by step; returns the outputs written.
    fn build(&mut self) -> Result<Vec<PathBuf>, Error> {
        let mnt = self.ws.mnt();
        fs::create_dir_all(&mnt).map_err(io(&mnt))?;
        let prepared = self.step("prepare", |ctx| {
            let ws = &mut ctx.ws;
            let prepared =
                prepare::prepare_on(ctx.plan, &ws.build_dir, &ws.image_dir, ws.host.as_mut())?;
            ctx.env = prepared.env.clone();
            Ok(prepared)
        })?;
        if let Some(r) = &prepared.release {
            self.console.say(&format!(
                "release: DIB_RELEASE={} is {} (read from {}); the build uses {}",
                r.asked, r.codename, r.from, r.codename
            ));
        }
        if let Some(input) = &prepared.locked {
            self.lock_repo(input, &prepared.evaluated)?;
        }
        let (mut snap, hits, out_key) = match self.cache_lookup(&prepared)? {
            snapshots::Lookup::Outputs(outs) => return Ok(outs),
            snapshots::Lookup::Layers {
                snap,
                hits,
                out_key,
            } => (snap, hits, out_key),
        };
        self.install_phases(&mut snap, hits)?;
        self.leave_chroot()?;
        self.out_key = Some(out_key);

        let mut outputs = Vec::new();
        let disk = self.plan.needs_disk();
        if disk {
            self.make_image()?;
        }
        self.finalise(&mut outputs)?;
        if disk {
            let raw = self.release_image()?;
            self.disk_outputs(&raw, &mut outputs)?;
        }
        self.image_record(&outputs)?;
        self.store_outputs(&outputs);
        // The snapshotter holds the cache's shared lock; the trim needs it released.
        drop(snap);
        self.trim_cache();
        Ok(outputs)
    }

    /// Runs one named step: checks for an interrupt first, then records how long the step
    /// took under `name` (with the hooks it ran, for a phase).
    fn step<T>(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Self) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.timed(|ctx| f(ctx).map(|v| (Some(name.to_string()), v)))
    }

    /// [`Self::step`] for a step whose name depends on what it did (the cache lookup is
    /// `output-cache` or `cache-restore`), or that had nothing to do (no name: no timing).
    fn timed<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<(Option<String>, T), Error>,
    ) -> Result<T, Error> {
        if let Some(signal) = self.ws.host.interrupted() {
            return Err(Error::Interrupted { signal });
        }
        let t = Instant::now();
        let (name, value) = f(self)?;
        let hooks = std::mem::take(&mut self.hooks_ran);
        if let Some(step) = name {
            self.timings.push(StepTiming {
                step,
                seconds: t.elapsed().as_secs_f64(),
                hooks,
            });
        }
        Ok(value)
    }
}
