//! Executing a [`BuildPlan`]: DIB's steps in DIB's order (reference 3.1), with kiln's teardown.
//!
//! root.d (host) → resolv.conf → extra-data.d (host) → pre-install/install/`-p`/post-install
//! (chroot) → post-root (host) → unmount → [disk: size → block-device.d → create → fstab →
//! one copy into the image] → pre-finalise (host) → finalise (chroot) → cleanup (host) → tidy →
//! tree outputs → teardown → disk conversions. Every step checks for an interrupt first; every
//! error path ends in [`Workspace::teardown`].

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_element::Phase;
use kiln_host::Cmd;
use serde_json::json;

use crate::cache;
use crate::env;
use crate::plan::BuildPlan;
use crate::runner::{self, check_interrupt, Console, Place, StepTiming};
use crate::workspace::Workspace;
use crate::{io, settings, Error};

const DIB_RUN_PARTS: &str = include_str!("assets/dib-run-parts");

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

struct Ctx<'a> {
    plan: &'a BuildPlan,
    console: &'a Console,
    ws: Workspace,
    env: BTreeMap<String, String>,
    hook_elements: BTreeMap<Phase, BTreeMap<String, String>>,
    timings: Vec<StepTiming>,
    breaks: Vec<String>,
    out_key: Option<String>,
}

/// Runs the build. On failure everything set up is torn down before the error returns.
pub fn run(plan: &BuildPlan, console: &Console) -> Result<BuildReport, Error> {
    let start = Instant::now();
    preflight(plan)?;
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
    let use_tmpfs = !no_tmpfs && kiln_sandbox::mem_total_bytes() >= 2 * min_tmpfs_gib * (1 << 30);
    let ws = Workspace::create(&base, use_tmpfs)?;
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
    let mut ctx = Ctx {
        plan,
        console,
        ws,
        env: BTreeMap::new(),
        hook_elements,
        timings: Vec::new(),
        breaks,
        out_key: None,
    };
    let result = ctx.build();
    let problems = ctx.ws.teardown();
    for p in &problems {
        console.say(&format!("teardown: {p}"));
    }
    let outputs = match result {
        Ok(pending) => pending,
        Err(e) => {
            if let Error::HookFailed { .. } = &e {
                ctx.check_break("after-error", None);
            }
            return Err(e);
        }
    };
    let report = BuildReport {
        outputs,
        timings: ctx.timings,
        seconds: start.elapsed().as_secs_f64(),
    };
    write_timings(plan, &report);
    print_timings(console, &report);
    Ok(report)
}

/// Checks, before anything runs, that the host can build this plan: every tool it will use is
/// installed (one message lists all that are missing, exit 2), the block-device layout is valid,
/// device-mapper is there for LVM, and a foreign architecture has its binfmt interpreter.
pub fn preflight(plan: &BuildPlan) -> Result<(), Error> {
    if plan.needs_disk() {
        let bp = layout_plan(plan)?;
        // LVM on a kernel without device-mapper: say so now, not after the phases ran.
        if bp.uses_lvm()
            && !kiln_blockdev::Runner::has_device_mapper(&mut kiln_blockdev::SystemRunner)
        {
            // Like a missing host tool: the request cannot be built here (exit 2).
            return Err(Error::Usage(format!(
                "{}: {}",
                plan.block_device.0.describe(),
                kiln_blockdev::Error::NoDeviceMapper
            )));
        }
    }
    // Installing packages does not give the kernel device-mapper, so that is said first.
    let needs = required_tools(plan)?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing = kiln_host::tools::missing(&needs, &path);
    // A foreign architecture's qemu-user interpreter is checked in binfmt_misc (where the kernel
    // finds it), not on PATH; what is missing there joins the same message.
    match (
        missing.is_empty(),
        kiln_sandbox::check_foreign_arch(&plan.arch),
    ) {
        (true, result) => Ok(result?),
        (false, Ok(())) => Err(Error::Usage(kiln_host::tools::missing_message(&missing))),
        (false, Err(binfmt)) => Err(Error::Usage(format!(
            "{}\nand: {binfmt}",
            kiln_host::tools::missing_message(&missing)
        ))),
    }
}

/// The block-device plan of the layout, with placeholder directories (validates the layout).
fn layout_plan(plan: &BuildPlan) -> Result<kiln_blockdev::Plan, Error> {
    let params = blockdev_params(
        plan,
        Path::new("/nonexistent"),
        Path::new("/nonexistent"),
        None,
    );
    Ok(kiln_blockdev::plan(
        &plan.block_device.1,
        &plan.block_device.0.describe(),
        &params,
    )?)
}

/// Every host tool the build of `plan` will run, and why: the engine's own (bash, chroot, cp,
/// …), the bootstrap tool of the debootstrap element, zstd for the phase cache, the
/// block-device layout's tools, and each output's.
pub fn required_tools(plan: &BuildPlan) -> Result<Vec<kiln_host::tools::Need>, Error> {
    use kiln_host::tools::Need;
    let req = &plan.request;
    let mut needs = vec![
        Need::new("bash", "hooks"),
        Need::new("chroot", "hooks"),
        Need::new("env", "hooks"),
        Need::new("cp", "copies"),
        Need::new("rm", "cleanup"),
        Need::new("du", "image size"),
        Need::new("date", "timestamps"),
    ];
    if plan.set.elements.iter().any(|e| e.name == "debootstrap") {
        let why = "the debootstrap element";
        needs.push(match req.var("DIB_DEBOOTSTRAP_TOOL") {
            Some(t) if !t.is_empty() => Need::new(t, why),
            _ => Need::new("mmdebstrap", why).or("debootstrap"),
        });
    }
    if !req.no_cache {
        needs.push(Need::new("tar", "the phase cache"));
        needs.push(Need::new("zstd", "the phase cache"));
    }
    if plan.needs_disk() {
        let bp = layout_plan(plan)?;
        let why = format!("the block-device layout {}", plan.block_device.0.describe());
        for (tool, package) in bp.required_programs() {
            let need = Need::new(&tool, &why);
            needs.push(if package.is_empty() {
                need
            } else {
                need.package(package)
            });
        }
        if bp.required_programs().iter().any(|(t, _)| t == "mkfs.vfat")
            && !kiln_host::host_can_mount("vfat")
        {
            needs.push(Need::new("mcopy", "filling vfat offline"));
        }
        needs.push(Need::new("lsattr", "the copy into the image"));
    }
    let output_opts = plan.output_options()?;
    for ty in &plan.outputs {
        let why = format!("the {} output", ty.extension());
        for tool in kiln_output::tools_for(*ty, &output_opts) {
            needs.push(Need::new(tool, &why));
        }
    }
    Ok(needs)
}

fn blockdev_params(
    plan: &BuildPlan,
    build_dir: &Path,
    image_dir: &Path,
    size: Option<u64>,
) -> kiln_blockdev::Params {
    let req = &plan.request;
    kiln_blockdev::Params {
        image_size: size.or(Some(1 << 30)),
        image_dir: image_dir.to_path_buf(),
        mount_base: build_dir.join("mnt"),
        build_dir: build_dir.to_path_buf(),
        root_label: req
            .root_label
            .clone()
            .or_else(|| req.var(settings::ROOT_LABEL.name).map(String::from)),
        root_fs_type: settings::FS_TYPE.get_or_default(&req.env).to_string(),
        root_fs_opts: None,
        block_size: req
            .var(settings::DIB_BLOCK_SIZE.name)
            .and_then(|v| v.parse().ok()),
    }
}

fn write_timings(plan: &BuildPlan, report: &BuildReport) {
    let dir = PathBuf::from(format!("{}.d", plan.image_name.display()));
    let _ = fs::create_dir_all(&dir);
    let v = json!({
        "total_seconds": report.seconds,
        "steps": report.timings,
    });
    let _ = fs::write(
        dir.join("timings.json"),
        serde_json::to_string_pretty(&v).unwrap_or_default(),
    );
}

fn print_timings(console: &Console, report: &BuildReport) {
    console.say("timings:");
    for s in &report.timings {
        console.say(&format!("  {:<22} {:>8.1} s", s.step, s.seconds));
        let mut hooks = s.hooks.clone();
        hooks.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        for h in hooks.iter().filter(|h| h.seconds >= 0.5) {
            console.say(&format!(
                "      {:<30} {:>8.1} s  ({})",
                h.name, h.seconds, h.element
            ));
        }
    }
    console.say(&format!("  {:<22} {:>8.1} s", "total", report.seconds));
}

/// The hook tree laid out, the environment exported to hooks, and the environment as
/// environment.d leaves it (DISTRO_NAME, DIB_RELEASE, …), with the package lists written.
pub struct Prepared {
    /// Variables exported to hooks.
    pub env: BTreeMap<String, String>,
    /// The environment after sourcing environment.d.
    pub evaluated: BTreeMap<String, String>,
    /// Digest of every entry of the hook tree (before any hook ran).
    pub files: BTreeMap<String, String>,
}

/// Lays out the hook tree under `build_dir/hooks` and kiln's helpers under `build_dir/lib`,
/// computes the hooks' environment and evaluates environment.d, and writes the package lists.
pub fn prepare(plan: &BuildPlan, build_dir: &Path, image_dir: &Path) -> Result<Prepared, Error> {
    let hooks = build_dir.join("hooks");
    let lib = build_dir.join("lib");
    plan.hooks.materialise(&hooks)?;
    write_exec(&hooks.join("dib-run-parts"), DIB_RUN_PARTS)?;
    fs::create_dir_all(&lib).map_err(io(&lib))?;
    write_exec(&lib.join("dib-run-parts"), DIB_RUN_PARTS)?;
    write_exec(&lib.join("die"), DIE)?;
    fs::create_dir_all(hooks.join("environment.d")).map_err(io(&hooks))?;
    let install_type = plan
        .request
        .install_type
        .clone()
        .or_else(|| {
            plan.request
                .var(settings::DIB_DEFAULT_INSTALLTYPE.name)
                .map(String::from)
        })
        .unwrap_or_else(|| settings::DIB_DEFAULT_INSTALLTYPE.default_value().into());
    fs::write(
        hooks.join("environment.d/11-dib-install-type.bash"),
        format!(
            "export DIB_DEFAULT_INSTALLTYPE=${{DIB_DEFAULT_INSTALLTYPE:-\"{install_type}\"}}\n"
        ),
    )
    .map_err(io(&hooks))?;
    fs::create_dir_all(&plan.cache_root).map_err(io(&plan.cache_root))?;
    let mut env = env::base_env(plan, build_dir, image_dir, &lib);
    // Block-device values known before the build (labels, mount points).
    if plan.needs_disk() {
        let params = blockdev_params(plan, build_dir, image_dir, None);
        let bp = kiln_blockdev::plan(
            &plan.block_device.1,
            &plan.block_device.0.describe(),
            &params,
        )?;
        env.insert(
            settings::DIB_ROOT_LABEL.name.into(),
            bp.root_label().to_string(),
        );
        env.insert(
            settings::DIB_ROOT_FSTYPE.name.into(),
            bp.root_fstype().to_string(),
        );
        env.insert(
            settings::DIB_BOOT_LABEL.name.into(),
            bp.boot_label().unwrap_or_default().to_string(),
        );
        env.insert(
            settings::DIB_MOUNTPOINTS.name.into(),
            bp.mount_points().join("|"),
        );
    } else {
        let label = plan
            .request
            .root_label
            .clone()
            .or_else(|| {
                plan.request
                    .var(settings::ROOT_LABEL.name)
                    .map(String::from)
            })
            .unwrap_or_else(|| settings::DIB_ROOT_LABEL.default_value().into());
        env.insert(settings::DIB_ROOT_LABEL.name.into(), label);
        let fs_type = settings::FS_TYPE.get_or_default(&env).to_string();
        env.insert(settings::DIB_ROOT_FSTYPE.name.into(), fs_type);
        env.insert(settings::DIB_BOOT_LABEL.name.into(), String::new());
        env.insert(settings::DIB_MOUNTPOINTS.name.into(), "/".into());
    }
    // Learn what environment.d says, the way dib-run-parts sources it.
    let marker = hooks.join(".kiln");
    fs::create_dir_all(&marker).map_err(io(&marker))?;
    let out = Cmd::new("bash")
        .arg(hooks.join("dib-run-parts"))
        .arg("--print-env")
        .arg(&marker)
        .env_clear()
        .envs(&env)
        .run_unchecked()
        .map_err(|e| Error::Step {
            step: "environment.d".into(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(Error::Step {
            step: "environment.d".into(),
            message: format!("sourcing environment.d failed:\n{}", out.stderr_str()),
        });
    }
    let evaluated = env::parse_env0(&out.stdout);
    crate::packages::write_lists(plan, &evaluated, &hooks)?;
    let files = cache::hook_tree_files(&hooks);
    Ok(Prepared {
        env,
        evaluated,
        files,
    })
}

const DIE: &str = "#!/bin/bash\n# kiln: DIB's lib/die. Sourced, it defines die(); run, it prints its arguments and fails.\nfunction die {\n    echo \"ERROR: $*\" >&2\n    exit 1\n}\nif [ \"${BASH_SOURCE[0]}\" = \"$0\" ]; then\n    die \"$@\"\nfi\n";

/// One cacheable step and its key.
#[derive(Debug, Clone)]
pub struct CacheStep {
    /// Step name (phase name or `packages`).
    pub name: String,
    /// The phase, or None for the `-p` packages.
    pub phase: Option<Phase>,
    /// Its inputs.
    pub inputs: cache::Inputs,
    /// Its key.
    pub key: String,
}

/// The cacheable steps of `plan` in order, with their keys chained.
pub fn cache_steps(plan: &BuildPlan, prepared: &Prepared, lib: &Path) -> Vec<CacheStep> {
    let env = cache::key_env(&prepared.evaluated, lib);
    let offline = prepared
        .env
        .get(settings::DIB_OFFLINE.name)
        .is_some_and(|v| !v.is_empty());
    let release_digest = if offline {
        None
    } else {
        match (
            prepared
                .evaluated
                .get(settings::DIB_DISTRIBUTION_MIRROR.name),
            prepared.evaluated.get(settings::DIB_RELEASE.name),
        ) {
            (Some(m), Some(r)) if !m.is_empty() && !r.is_empty() => cache::release_digest(m, r),
            _ => None,
        }
    };
    let packages = plan.request.package_list();
    let mut order: Vec<(String, Option<Phase>)> = vec![
        ("root".into(), Some(Phase::Root)),
        ("extra-data".into(), Some(Phase::ExtraData)),
        ("pre-install".into(), Some(Phase::PreInstall)),
        ("install".into(), Some(Phase::Install)),
    ];
    if !packages.is_empty() {
        order.push(("packages".into(), None));
    }
    order.push(("post-install".into(), Some(Phase::PostInstall)));
    order.push(("post-root".into(), Some(Phase::PostRoot)));
    let mut parent: Option<String> = None;
    let mut steps = Vec::new();
    for (name, phase) in order {
        let dir = phase.map(Phase::dir_name);
        let inputs = cache::Inputs {
            phase: name.clone(),
            parent: parent.clone(),
            arch: plan.arch.clone(),
            release_digest: release_digest.clone(),
            version: kiln_identity(),
            env: env.clone(),
            files: cache::visible_to(&prepared.files, dir.as_deref()),
            extra: if phase.is_none() {
                packages.clone()
            } else {
                Vec::new()
            },
        };
        let key = inputs.key();
        parent = Some(key.clone());
        steps.push(CacheStep {
            name,
            phase,
            inputs,
            key,
        });
    }
    steps
}

/// kiln's own identity in every cache key: its version and a digest of the running binary, which
/// embeds the built-in elements and assets. A kiln built from other code never reuses layers or
/// images an older one made, even when the version string is the same.
pub fn kiln_identity() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        use sha2::Digest as _;
        let exe = std::fs::File::open("/proc/self/exe").and_then(|mut f| {
            let mut h = sha2::Sha256::new();
            std::io::copy(&mut f, &mut h)?;
            Ok(hex::encode(h.finalize()))
        });
        // Without /proc (never on a Linux build host), fall back to the embedded assets only.
        let bin = exe.map_or_else(|_| short_digest(DIB_RUN_PARTS), |d| d[..16].to_string());
        format!("{}+{bin}", env!("CARGO_PKG_VERSION"))
    })
    .clone()
}

fn short_digest(s: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))[..12].to_string()
}

/// The key of a whole request's outputs: the last layer, every hook, the block-device layout,
/// the outputs and every option that shapes them.
pub fn output_key(plan: &BuildPlan, prepared: &Prepared, last: Option<&str>) -> String {
    use sha2::Digest as _;
    let req = &plan.request;
    // What hooks see (as the phase keys do), plus the knobs that shape the disk and outputs.
    let lib = PathBuf::from(
        prepared
            .env
            .get(settings::LIB.name)
            .cloned()
            .unwrap_or_default(),
    );
    let mut env = cache::key_env(&prepared.evaluated, &lib);
    for k in settings::output_key_only() {
        if let Some(v) = prepared.env.get(k) {
            env.insert(k.to_string(), v.clone());
        }
    }
    let v = serde_json::json!({
        "last": last,
        "files": prepared.files,
        "block_device": if plan.needs_disk() { Some(&plan.block_device.1) } else { None },
        "outputs": plan.outputs.iter().map(|t| t.extension().to_string()).collect::<Vec<_>>(),
        "name": plan.image_name.file_name().map(|n| n.to_string_lossy().into_owned()),
        "env": env,
        "opts": [req.mkfs_options.clone(), req.qemu_img_options.clone(), req.image_size.clone(), req.image_extra_size.clone(), req.journal_size.clone()],
        "uncompressed": req.uncompressed,
        "qcow2_level": req.qcow2_level().ok().flatten(),
    });
    hex::encode(sha2::Sha256::digest(
        serde_json::to_vec(&v).unwrap_or_default(),
    ))
}

/// Where the snapshotting stands during a build.
struct Snapshotter<'a> {
    layers: &'a cache::PhaseCache,
    steps: &'a [CacheStep],
    tree_index: cache::Index,
    hooks_index: cache::Index,
}

impl Ctx<'_> {
    fn build(&mut self) -> Result<Vec<PathBuf>, Error> {
        let plan = self.plan;
        let build_dir = self.ws.build_dir.clone();
        let image_dir = self.ws.image_dir.clone();
        let hooks = build_dir.join("hooks");
        let lib = build_dir.join("lib");
        let mnt = self.ws.mnt();
        fs::create_dir_all(&mnt).map_err(io(&mnt))?;
        let t = Instant::now();
        let prepared = prepare(plan, &build_dir, &image_dir)?;
        self.env = prepared.env.clone();
        self.timing("prepare", t, Vec::new());

        // The phase cache: keys for every step, then the longest prefix already stored.
        let no_cache = plan.request.no_cache;
        let t = Instant::now();
        let steps = cache_steps(plan, &prepared, &lib);
        let out_key = output_key(plan, &prepared, steps.last().map(|s| s.key.as_str()));
        let outputs_cache = cache::OutputCache::new(&plan.cache_root);
        if !no_cache {
            if let Some(entry) = outputs_cache.get(&out_key) {
                let outs = self.outputs_from_cache(&entry)?;
                self.console.say(&format!(
                    "cache: output hit {} (nothing changed)",
                    &out_key[..16]
                ));
                self.timing("output-cache", t, Vec::new());
                return Ok(outs);
            }
        }
        let layers = cache::PhaseCache::new(&plan.cache_root);
        let mut hits = 0;
        if !no_cache {
            while hits < steps.len() && layers.get(&steps[hits].key).is_some() {
                hits += 1;
            }
        }
        for (i, s) in steps.iter().enumerate() {
            let state = if i < hits { "hit" } else { "miss" };
            self.console
                .say(&format!("cache: {} {state} {}", s.name, &s.key[..16]));
        }
        let mut tree_index = cache::Index::new();
        let mut hooks_index = cache::index(&hooks);
        if hits > 0 {
            let keys: Vec<String> = steps[..hits].iter().map(|s| s.key.clone()).collect();
            layers.restore(&keys, &mnt, &hooks)?;
            tree_index = self.view_index(&mnt)?;
            hooks_index = cache::index(&hooks);
            self.timing("cache-restore", t, Vec::new());
        }
        let mut snap = Snapshotter {
            layers: &layers,
            steps: &steps,
            tree_index,
            hooks_index,
        };

        // root.d on the host with TARGET_ROOT.
        if hits == 0 {
            self.run_phase(Phase::Root, &Place::Host, Some(&mnt))?;
            if !runner::has_content(&mnt) {
                return Err(Error::Step {
                    step: "root.d".into(),
                    message: "Failed to deploy the root element: the target is still empty after root.d (is an operating-system element's root.d missing?)".into(),
                });
            }
            self.snapshot(&mut snap, 0)?;
        }
        // Layers after root were taken with the build's resolv.conf in place already.
        if hits <= 1 {
            crate::in_image::resolv_conf_in(&mnt)?;
        }
        self.ws.mount_chroot()?;
        for (i, s) in steps.iter().enumerate().skip(1) {
            if i < hits {
                continue;
            }
            match s.phase {
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
            self.snapshot(&mut snap, i)?;
        }
        let _ = fs::remove_dir_all(mnt.join("lost+found"));
        check_interrupt()?;
        self.ws.umount_chroot()?;
        self.out_key = Some(out_key);

        let mut outputs = Vec::new();
        if plan.needs_disk() {
            self.build_disk(&mut outputs)?;
        } else {
            // A root filesystem only: finalise runs in the tree itself.
            self.ws.mount_chroot()?;
            self.run_phase(Phase::PreFinalise, &Place::Host, None)?;
            self.run_phase(Phase::Finalise, &Place::Chroot(mnt.clone()), None)?;
            self.run_phase(Phase::Cleanup, &Place::Host, Some(&mnt))?;
            self.ws.umount_chroot()?;
            self.tidy(&mnt)?;
            self.tree_outputs(&mnt, &mut outputs)?;
        }
        self.store_outputs(&outputs);
        self.trim_cache();
        Ok(outputs)
    }

    /// Keeps the cache under its size limit (least recently used entries go first).
    fn trim_cache(&mut self) {
        let Some(max) = cache::max_size(&self.plan.request.env) else {
            return;
        };
        match cache::gc(&self.plan.cache_root, max) {
            Ok((0, _)) => {}
            Ok((n, left)) => self.console.say(&format!(
                "cache: removed {n} least recently used entries; {} left (KILN_CACHE_MAX_SIZE)",
                cache::human(left)
            )),
            Err(e) => self
                .console
                .say(&format!("warning: could not trim the cache: {e}")),
        }
    }

    /// Indexes the tree through a non-recursive bind mount, so nothing mounted inside it counts.
    fn view_index(&self, mnt: &Path) -> Result<cache::Index, Error> {
        let view = self.ws.build_dir.join("view");
        fs::create_dir_all(&view).map_err(io(&view))?;
        kiln_sandbox::bind(mnt, &view, true)?;
        let idx = cache::index(&view);
        kiln_sandbox::umount(&view)?;
        Ok(idx)
    }

    /// Stores the change step `i` made, as a layer keyed by its inputs.
    fn snapshot(&mut self, snap: &mut Snapshotter<'_>, i: usize) -> Result<(), Error> {
        let t = Instant::now();
        let mnt = self.ws.mnt();
        let hooks = self.ws.build_dir.join("hooks");
        let view = self.ws.build_dir.join("view");
        fs::create_dir_all(&view).map_err(io(&view))?;
        kiln_sandbox::bind(&mnt, &view, true)?;
        let result = (|| {
            let tree_now = cache::index(&view);
            let hooks_now = cache::index(&hooks);
            let (changed, deleted) = cache::diff(&snap.tree_index, &tree_now);
            let (hchanged, hdeleted) = cache::diff(&snap.hooks_index, &hooks_now);
            let kib = tree_now.values().map(cache::EntryMeta::kib).sum();
            snap.layers.store(
                &snap.steps[i].inputs,
                &cache::Delta {
                    root: &view,
                    changed: &changed,
                    deleted: &deleted,
                },
                &cache::Delta {
                    root: &hooks,
                    changed: &hchanged,
                    deleted: &hdeleted,
                },
                kib,
            )?;
            snap.tree_index = tree_now;
            snap.hooks_index = hooks_now;
            Ok::<(), Error>(())
        })();
        let _ = kiln_sandbox::umount(&view);
        result?;
        self.timing(&format!("snapshot-{}", snap.steps[i].name), t, Vec::new());
        Ok(())
    }

    fn install_extra_packages(&mut self, mnt: &Path) -> Result<(), Error> {
        let t = Instant::now();
        let mut argv = vec!["install-packages".to_string()];
        argv.extend(self.plan.request.package_list());
        runner::run_simple(
            self.console,
            "packages",
            &Place::Chroot(mnt.to_path_buf()),
            &argv,
            &self.env,
        )?;
        self.timing("packages", t, Vec::new());
        Ok(())
    }

    /// Copies a cached request's outputs into place (and its NAME.d manifests).
    fn outputs_from_cache(&mut self, entry: &Path) -> Result<Vec<PathBuf>, Error> {
        let sums = self.checksums();
        let overwrite = self.overwrite();
        let stamp = timestamp();
        let mut outs = Vec::new();
        for ty in kiln_output::production_order(&self.plan.outputs) {
            let dest = kiln_output::output_path(&self.plan.image_name, ty);
            let name = dest.file_name().unwrap_or_default();
            let src = entry.join("files").join(name);
            cache::copy_file(&src, &kiln_output::pending_path(&dest))?;
            kiln_output::finish(&dest, overwrite, sums, &stamp)?;
            self.console
                .say(&format!("wrote {} (from the cache)", dest.display()));
            outs.push(dest);
        }
        let name_d = PathBuf::from(format!("{}.d", self.plan.image_name.display()));
        if entry.join("name.d").is_dir() {
            let _ = Cmd::new("cp")
                .arg("-a")
                .arg(entry.join("name.d/."))
                .arg(&name_d)
                .run();
        }
        Ok(outs)
    }

    fn store_outputs(&mut self, outputs: &[PathBuf]) {
        let Some(key) = self.out_key.clone() else {
            return;
        };
        let t = Instant::now();
        let name_d = PathBuf::from(format!("{}.d", self.plan.image_name.display()));
        let cache = cache::OutputCache::new(&self.plan.cache_root);
        match cache.store(&key, outputs, &name_d) {
            Ok(()) => self.timing("output-cache-store", t, Vec::new()),
            Err(e) => self
                .console
                .say(&format!("warning: could not cache the outputs: {e}")),
        }
    }

    fn build_disk(&mut self, outputs: &mut Vec<PathBuf>) -> Result<(), Error> {
        let plan = self.plan;
        let build_dir = self.ws.build_dir.clone();
        let image_dir = self.ws.image_dir.clone();
        let mnt = self.ws.mnt();
        let built = build_dir.join("built");
        fs::rename(&mnt, &built).map_err(io(&mnt))?;
        fs::create_dir_all(&mnt).map_err(io(&mnt))?;

        // Size (reference 4.5), with --image-extra-size and --mkfs-journal-size working.
        let t = Instant::now();
        let du = du_kib(&built)?;
        let req = &plan.request;
        let fs_type = self
            .env
            .get(settings::FS_TYPE.name)
            .cloned()
            .unwrap_or_else(|| settings::FS_TYPE.default_value().into());
        let opts = kiln_blockdev::SizeOpts {
            image_size_gb: self
                .env
                .get(settings::DIB_IMAGE_SIZE.name)
                .and_then(|v| v.parse().ok()),
            extra_size_mb: self
                .env
                .get(settings::DIB_IMAGE_EXTRA_SIZE.name)
                .and_then(|v| v.parse().ok()),
            journal_size_mb: settings::DIB_JOURNAL_SIZE
                .parse(&self.env)
                .unwrap_or_default(),
            root_fs_type: fs_type.clone(),
            efi: plan
                .set
                .names()
                .iter()
                .any(|n| n.starts_with("block-device-efi")),
        };
        let size_kib = kiln_blockdev::image_size_kib(du, &opts);
        self.env
            .insert(settings::DIB_IMAGE_SIZE.name.into(), size_kib.to_string());
        let mut mkfs_opts = req.mkfs_options.clone().unwrap_or_default();
        if fs_type == "ext4" {
            mkfs_opts = format!("-i 4096 -J size={} {mkfs_opts}", opts.journal_size_mb);
        }
        if let Some(n) = self
            .env
            .get(settings::MAX_ONLINE_RESIZE.name)
            .filter(|v| !v.is_empty())
        {
            mkfs_opts = format!("-E resize={n} {mkfs_opts}");
        }
        let mut params = blockdev_params(plan, &build_dir, &image_dir, Some(size_kib * 1024));
        params.root_fs_opts = Some(mkfs_opts.trim().to_string());
        let bp = kiln_blockdev::plan(
            &plan.block_device.1,
            &plan.block_device.0.describe(),
            &params,
        )?;
        self.timing("size", t, Vec::new());

        // Legacy block-device.d hooks may hand over a device themselves.
        let legacy = self.run_phase_capture(Phase::BlockDevice, "IMAGE_BLOCK_DEVICE=")?;
        if let Some(line) = legacy.last() {
            return Err(Error::Step {
                step: "block-device.d".into(),
                message: format!("a hook set {line}; kiln does not support block-device.d hooks that create their own device yet: use a block-device-*.yaml layout instead"),
            });
        }
        check_interrupt()?;
        let t = Instant::now();
        let mut runner = kiln_blockdev::SystemRunner;
        let created = bp.create(&mut runner)?;
        // Once the build's namespace is gone, the kernel no longer shows this loop device's
        // backing file under the build directory; the watchdog needs its name.
        kiln_sandbox::watchdog::note_loop(created.image_block_device());
        self.env.insert(
            settings::IMAGE_BLOCK_DEVICE.name.into(),
            created.image_block_device().to_string(),
        );
        self.env.insert(
            settings::IMAGE_BLOCK_DEVICES.name.into(),
            created.image_block_devices(),
        );
        self.ws.blockdev = Some(created);
        self.timing("block-device-create", t, Vec::new());
        let created = self.ws.blockdev.as_ref().expect("just set");
        created.write_fstab(&crate::in_image::path(&built, "etc/fstab")?)?;

        // One copy of the tree into the image filesystem.
        let t = Instant::now();
        copy_tree(&built, &mnt)?;
        // As DIB does: the tree now lives in the image; free the memory it held.
        let _ = fs::remove_dir_all(&built);
        self.timing("copy-into-image", t, Vec::new());
        check_interrupt()?;

        self.ws.mount_chroot()?;
        self.run_phase(Phase::PreFinalise, &Place::Host, None)?;
        self.run_phase(Phase::Finalise, &Place::Chroot(mnt.clone()), None)?;
        self.run_phase(Phase::Cleanup, &Place::Host, Some(&mnt))?;
        self.ws.umount_chroot()?;
        self.tidy(&mnt)?;
        self.tree_outputs(&mnt, outputs)?;

        // Unmount the image (this copies offline filesystems in and detaches the loop device),
        // keeping the raw file for conversion.
        let t = Instant::now();
        let created = self.ws.blockdev.take().expect("created above");
        let raw = created.image_path().to_path_buf();
        created.umount(&mut runner)?;
        self.timing("block-device-umount", t, Vec::new());
        self.outputs_from(kiln_output::Source::Disk, &raw, outputs)
    }

    fn checksums(&self) -> kiln_output::Checksums {
        kiln_output::Checksums::parse(settings::DIB_CHECKSUM.get_or_default(&self.env))
    }

    fn overwrite(&self) -> bool {
        self.plan
            .request
            .var(settings::OVERWRITE_OLD_IMAGE.name)
            .is_some_and(|v| v != "0")
    }

    fn tree_outputs(&mut self, root: &Path, outputs: &mut Vec<PathBuf>) -> Result<(), Error> {
        self.outputs_from(kiln_output::Source::Tree, root, outputs)
    }

    /// Makes every requested output made from `kind` (the tree at `source`, or the raw image
    /// at `source`) through kiln-output's one entry point, in production order.
    fn outputs_from(
        &mut self,
        kind: kiln_output::Source,
        source: &Path,
        outputs: &mut Vec<PathBuf>,
    ) -> Result<(), Error> {
        let plan = self.plan;
        let opts = plan.output_options()?;
        let sums = self.checksums();
        let overwrite = self.overwrite();
        let stamp = timestamp();
        for ty in kiln_output::production_order(&plan.outputs) {
            if ty.source() != kind {
                continue;
            }
            check_interrupt()?;
            let dest = kiln_output::output_path(&plan.image_name, ty);
            let t = Instant::now();
            kiln_output::produce(ty, source, &dest, &opts)?;
            kiln_output::finish(&dest, overwrite, sums, &stamp)?;
            self.console.say(&format!("wrote {}", dest.display()));
            self.timing(ty.name(), t, Vec::new());
            outputs.push(dest);
        }
        Ok(())
    }

    /// After cleanup.d: the tidy-up of the tree ([`crate::in_image::tidy`]); what it could not
    /// remove is a warning.
    fn tidy(&self, mnt: &Path) -> Result<(), Error> {
        for p in crate::in_image::tidy(mnt)? {
            self.console.say(&format!("warning: tidy: {p}"));
        }
        Ok(())
    }

    fn phase_env(&self, target_root: Option<&Path>) -> BTreeMap<String, String> {
        let mut e = self.env.clone();
        if let Some(t) = target_root {
            e.insert(settings::TARGET_ROOT.name.into(), t.display().to_string());
        }
        e
    }

    fn run_phase(
        &mut self,
        phase: Phase,
        place: &Place,
        target_root: Option<&Path>,
    ) -> Result<(), Error> {
        self.run_phase_inner(phase, place, target_root, None)
            .map(|_| ())
    }

    fn run_phase_capture(&mut self, phase: Phase, prefix: &str) -> Result<Vec<String>, Error> {
        self.run_phase_inner(phase, &Place::Host, None, Some(prefix))
    }

    fn run_phase_inner(
        &mut self,
        phase: Phase,
        place: &Place,
        target_root: Option<&Path>,
        prefix: Option<&str>,
    ) -> Result<Vec<String>, Error> {
        check_interrupt()?;
        let hooks = self.ws.build_dir.join("hooks");
        let dir = hooks.join(phase.dir_name());
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        self.check_break(&format!("before-{}", phase.name()), Some(place));
        let t = Instant::now();
        let env = self.phase_env(target_root);
        let elements = self.hook_elements.get(&phase).cloned().unwrap_or_default();
        self.console.say(&format!("==> {}.d", phase.name()));
        let result = match place {
            Place::Host => {
                let argv = vec![
                    "bash".to_string(),
                    hooks.join("dib-run-parts").display().to_string(),
                    dir.display().to_string(),
                ];
                runner::run(
                    self.console,
                    phase.name(),
                    place,
                    &argv,
                    &env,
                    &elements,
                    prefix,
                )
            }
            Place::Chroot(root) => {
                let in_target =
                    kiln_sandbox::path::create_dir_all_in_root(root, Path::new("tmp/in_target.d"))?;
                let hooks_mount = kiln_sandbox::Mount::bind(&hooks, &in_target, true)?;
                let argv = vec![
                    "bash".to_string(),
                    "/tmp/in_target.d/dib-run-parts".to_string(),
                    format!("/tmp/in_target.d/{}", phase.dir_name()),
                ];
                let r = runner::run(
                    self.console,
                    phase.name(),
                    place,
                    &argv,
                    &env,
                    &elements,
                    prefix,
                );
                if r.is_err() {
                    if let Err(Error::HookFailed { .. }) = &r {
                        // Let a debugging user look around before the mounts go.
                        self.check_break("after-error", Some(place));
                    }
                }
                kiln_sandbox::kill_processes_rooted_under(root);
                if let Err(e) = hooks_mount.unmount() {
                    self.console.say(&format!("warning: {e}"));
                }
                let _ = fs::remove_dir(&in_target);
                r
            }
        };
        match result {
            Ok(fin) => {
                self.timing(phase.name(), t, fin.hooks);
                self.check_break(&format!("after-{}", phase.name()), Some(place));
                Ok(fin.captured)
            }
            Err(e) => {
                if let Error::HookFailed { hooks, .. } = &e {
                    self.timing(phase.name(), t, hooks.clone());
                }
                Err(e)
            }
        }
    }

    /// DIB's `break=` debugging points: run `$break_cmd` (default bash) on the host or in the
    /// chroot when the named point is reached.
    fn check_break(&self, point: &str, place: Option<&Place>) {
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

    fn timing(&mut self, step: &str, t: Instant, hooks: Vec<runner::HookTiming>) {
        self.timings.push(StepTiming {
            step: step.to_string(),
            seconds: t.elapsed().as_secs_f64(),
            hooks,
        });
    }
}

fn write_exec(path: &Path, text: &str) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, text).map_err(io(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).map_err(io(path))
}

fn du_kib(dir: &Path) -> Result<u64, Error> {
    let out = Cmd::new("du")
        .args(["-s", "-k", "-x"])
        .arg(dir)
        .run_unchecked()
        .map_err(|e| Error::Step {
            step: "size".into(),
            message: e.to_string(),
        })?;
    out.stdout_str()
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Step {
            step: "size".into(),
            message: format!("cannot measure {}", dir.display()),
        })
}

/// Copies a tree with everything kept (owners, modes, hardlinks, xattrs, ACLs, device nodes).
fn copy_tree(from: &Path, to: &Path) -> Result<(), Error> {
    Cmd::new("cp")
        .arg("-a")
        .arg("--preserve=all")
        .arg("--no-target-directory")
        .arg(from)
        .arg(to)
        .run()
        .map(|_| ())
        .map_err(|e| Error::Step {
            step: "copy-into-image".into(),
            message: e.to_string(),
        })
}

fn timestamp() -> String {
    Cmd::new("date")
        .arg("+%Y.%m.%d-%H.%M.%S")
        .run()
        .map_or_else(|_| "old".into(), |o| o.stdout_str().trim().to_string())
}

/// Per step, whether the phase cache holds it, and if not, why not (`kiln plan --explain-cache`).
/// Lays the hook tree out in a temp dir and sources environment.d to compute the keys; runs
/// no hook.
pub fn explain_cache(plan: &BuildPlan) -> Result<crate::report::CacheExplanation, Error> {
    let tmp = tempfile::tempdir().map_err(io(Path::new("/tmp")))?;
    let build_dir = tmp.path().join("build");
    let image_dir = tmp.path().join("image");
    fs::create_dir_all(&build_dir).map_err(io(&build_dir))?;
    fs::create_dir_all(&image_dir).map_err(io(&image_dir))?;
    let prepared = prepare(plan, &build_dir, &image_dir)?;
    let steps = cache_steps(plan, &prepared, &build_dir.join("lib"));
    let layers = cache::PhaseCache::new(&plan.cache_root);
    let stored = layers.all();
    let mut out = Vec::new();
    let mut chain_ok = true;
    for s in &steps {
        let hit = chain_ok && layers.get(&s.key).is_some();
        let mut reasons = Vec::new();
        if !hit {
            if !chain_ok {
                reasons.push("an earlier step missed, so this one runs again".to_string());
            }
            // The closest stored layer of the same step tells what changed.
            let best = stored
                .iter()
                .filter(|l| l.inputs.phase == s.name)
                .map(|l| (input_changes(&l.inputs, &s.inputs), l))
                .min_by_key(|(c, _)| c.len());
            match best {
                Some((changes, _)) if chain_ok => reasons.extend(changes),
                None if chain_ok => reasons.push("never built with these elements".to_string()),
                _ => {}
            }
        }
        chain_ok = hit;
        out.push(crate::report::CacheStep {
            step: s.name.clone(),
            key: s.key.clone(),
            status: crate::report::CacheStatus::from_hit(hit),
            reasons,
        });
    }
    let out_key = output_key(plan, &prepared, steps.last().map(|s| s.key.as_str()));
    let out_hit = cache::OutputCache::new(&plan.cache_root)
        .get(&out_key)
        .is_some();
    Ok(crate::report::CacheExplanation {
        steps: out,
        outputs: crate::report::CacheOutputs {
            key: out_key,
            status: crate::report::CacheStatus::from_hit(out_hit),
        },
    })
}

/// What differs between the inputs of a stored layer and the current ones, in words.
fn input_changes(old: &cache::Inputs, new: &cache::Inputs) -> Vec<String> {
    let mut v = Vec::new();
    if old.parent != new.parent {
        v.push("the previous step's result changed".to_string());
    }
    if old.arch != new.arch {
        v.push(format!("architecture {} -> {}", old.arch, new.arch));
    }
    if old.release_digest != new.release_digest {
        v.push("the mirror's Release file changed (a mirror update)".to_string());
    }
    if old.version != new.version {
        v.push(format!(
            "kiln itself changed ({} -> {})",
            old.version, new.version
        ));
    }
    if old.extra != new.extra {
        v.push(format!("packages {:?} -> {:?}", old.extra, new.extra));
    }
    for (k, val) in &new.env {
        match old.env.get(k) {
            None => v.push(format!("variable {k} added")),
            Some(o) if o != val => {
                if k == settings::IMAGE_ELEMENT.name {
                    v.push(format!("elements changed: '{o}' -> '{val}'"));
                } else {
                    v.push(format!("variable {k} changed"));
                }
            }
            _ => {}
        }
    }
    for k in old.env.keys() {
        if !new.env.contains_key(k) {
            v.push(format!("variable {k} removed"));
        }
    }
    for (f, d) in &new.files {
        match old.files.get(f) {
            None => v.push(format!("hook tree: {f} added")),
            Some(o) if o != d => {
                let mode_only = o.split_once(':').map(|x| x.1) == d.split_once(':').map(|x| x.1);
                if mode_only {
                    v.push(format!("hook tree: {f} mode changed"));
                } else {
                    v.push(format!("hook tree: {f} changed"));
                }
            }
            _ => {}
        }
    }
    for f in old.files.keys() {
        if !new.files.contains_key(f) {
            v.push(format!("hook tree: {f} removed"));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BuildRequest;

    fn tools(elements: &[&str], types: &[&str], no_cache: bool, cache: &Path) -> Vec<String> {
        let req = BuildRequest {
            elements: elements.iter().map(|e| (*e).to_string()).collect(),
            arch: Some("amd64".into()),
            image_name: PathBuf::from("image"),
            types: types.iter().map(|t| (*t).to_string()).collect(),
            image_cache: Some(cache.to_path_buf()),
            no_cache,
            ..BuildRequest::default()
        };
        let plan = BuildPlan::new(&req).unwrap();
        let mut v: Vec<String> = required_tools(&plan)
            .unwrap()
            .into_iter()
            .map(|n| {
                std::iter::once(n.tool)
                    .chain(n.or)
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }

    #[test]
    fn tools_of_an_efi_disk_build() {
        let cache = tempfile::tempdir().unwrap();
        let mut t = tools(
            &["debian-minimal", "block-device-efi"],
            &["vmdk", "raw"],
            false,
            cache.path(),
        );
        // Only where the kernel cannot mount vfat does the build fill it with mtools.
        t.retain(|x| x != "mcopy");
        assert_eq!(
            t,
            [
                "bash",
                "chroot",
                "cp",
                "date",
                "du",
                "env",
                "fstrim",
                "losetup",
                "lsattr",
                "mkdir",
                "mkfs",
                "mkfs.ext4",
                "mkfs.vfat",
                "mmdebstrap|debootstrap",
                "mount",
                "partx",
                "qemu-img",
                "rm",
                "sgdisk",
                "sync",
                "tar",
                "umount",
                "zstd"
            ]
        );
    }

    #[test]
    fn tools_of_a_tar_build_without_the_cache() {
        let cache = tempfile::tempdir().unwrap();
        let t = tools(
            &["debian-minimal"],
            &["tar", "squashfs"],
            true,
            cache.path(),
        );
        assert_eq!(
            t,
            [
                "bash",
                "chroot",
                "cp",
                "date",
                "du",
                "env",
                "mksquashfs",
                "mmdebstrap|debootstrap",
                "rm",
                "tar"
            ]
        );
    }
}
