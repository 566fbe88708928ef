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
use kiln_output::OutputType;
use serde_json::json;

use crate::env;
use crate::plan::BuildPlan;
use crate::runner::{self, check_interrupt, Console, Place, StepTiming};
use crate::workspace::Workspace;
use crate::Error;

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
}

/// Runs the build. On failure everything set up is torn down before the error returns.
pub fn run(plan: &BuildPlan, console: &Console) -> Result<BuildReport, Error> {
    let start = Instant::now();
    preflight(plan)?;
    let req = &plan.request;
    let base = req
        .var("TMPDIR")
        .or_else(|| req.var("TMP_DIR"))
        .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    let min_tmpfs_gib: u64 = req
        .min_tmpfs
        .or_else(|| req.var("DIB_MIN_TMPFS").and_then(|v| v.parse().ok()))
        .unwrap_or(2);
    let no_tmpfs = req.no_tmpfs || req.var("DIB_NO_TMPFS") == Some("1");
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
        .var("break")
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

fn preflight(plan: &BuildPlan) -> Result<(), Error> {
    kiln_sandbox::check_foreign_arch(&plan.arch)?;
    let mut needed: Vec<(&str, &str)> = vec![("chroot", "coreutils"), ("tar", "tar")];
    if plan.needs_disk() {
        needed.push(("losetup", "mount"));
        needed.push(("partx", "util-linux"));
        if plan
            .outputs
            .iter()
            .any(|t| matches!(t, OutputType::Disk(_)))
        {
            needed.push(("qemu-img", "qemu-utils"));
        }
    }
    if plan.outputs.contains(&OutputType::Squashfs) {
        needed.push(("mksquashfs", "squashfs-tools"));
    }
    for (tool, pkg) in needed {
        if which::which(tool).is_err() {
            return Err(Error::Usage(format!(
                "`{tool}` is not installed: install the `{pkg}` package (apt-get install {pkg})"
            )));
        }
    }
    if plan.needs_disk() {
        // Validate the layout before anything is built.
        let params = blockdev_params(plan, Path::new("/nonexistent"), Path::new("/nonexistent"), None);
        kiln_blockdev::plan(
            &plan.block_device.1,
            &plan.block_device.0.describe(),
            &params,
        )?;
    }
    Ok(())
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
            .or_else(|| req.var("ROOT_LABEL").map(String::from)),
        root_fs_type: req.var("FS_TYPE").unwrap_or("ext4").to_string(),
        root_fs_opts: None,
        block_size: req.var("DIB_BLOCK_SIZE").and_then(|v| v.parse().ok()),
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

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Ctx<'_> {
    fn build(&mut self) -> Result<Vec<PathBuf>, Error> {
        let plan = self.plan;
        let build_dir = self.ws.build_dir.clone();
        let hooks = build_dir.join("hooks");
        let lib = build_dir.join("lib");
        let mnt = self.ws.mnt();
        // The merged hook tree, DIB's layout, plus kiln's dib-run-parts and install-type env.
        plan.hooks.materialise(&hooks)?;
        write_exec(&hooks.join("dib-run-parts"), DIB_RUN_PARTS)?;
        fs::create_dir_all(&lib).map_err(io(&lib))?;
        write_exec(&lib.join("dib-run-parts"), DIB_RUN_PARTS)?;
        write_exec(
            &lib.join("die"),
            "#!/bin/bash\n# kiln: die MESSAGE — print and exit 1 (DIB's lib/die).\nfunction die {\n    echo \"ERROR: $*\" >&2\n    exit 1\n}\n",
        )?;
        fs::create_dir_all(hooks.join("environment.d")).map_err(io(&hooks))?;
        let install_type = plan
            .request
            .install_type
            .clone()
            .or_else(|| {
                plan.request
                    .var("DIB_DEFAULT_INSTALLTYPE")
                    .map(String::from)
            })
            .unwrap_or_else(|| "source".into());
        fs::write(
            hooks.join("environment.d/11-dib-install-type.bash"),
            format!(
                "export DIB_DEFAULT_INSTALLTYPE=${{DIB_DEFAULT_INSTALLTYPE:-\"{install_type}\"}}\n"
            ),
        )
        .map_err(io(&hooks))?;
        fs::create_dir_all(&mnt).map_err(io(&mnt))?;
        let image_dir = self.ws.image_dir.clone();
        self.env = env::base_env(plan, &build_dir, &image_dir, &lib);
        let cache = plan.cache_root.clone();
        fs::create_dir_all(&cache).map_err(io(&cache))?;

        // Block-device params known before the build (labels, mount points).
        if plan.needs_disk() {
            let params = blockdev_params(plan, &build_dir, &image_dir, None);
            let bp = kiln_blockdev::plan(
                &plan.block_device.1,
                &plan.block_device.0.describe(),
                &params,
            )?;
            self.env
                .insert("DIB_ROOT_LABEL".into(), bp.root_label().to_string());
            self.env
                .insert("DIB_ROOT_FSTYPE".into(), bp.root_fstype().to_string());
            self.env.insert(
                "DIB_BOOT_LABEL".into(),
                bp.boot_label().unwrap_or_default().to_string(),
            );
            self.env
                .insert("DIB_MOUNTPOINTS".into(), bp.mount_points().join("|"));
        } else {
            let label = plan
                .request
                .root_label
                .clone()
                .or_else(|| plan.request.var("ROOT_LABEL").map(String::from))
                .unwrap_or_else(|| "cloudimg-rootfs".into());
            self.env.insert("DIB_ROOT_LABEL".into(), label);
            self.env.insert(
                "DIB_ROOT_FSTYPE".into(),
                self.env
                    .get("FS_TYPE")
                    .cloned()
                    .unwrap_or_else(|| "ext4".into()),
            );
            self.env.insert("DIB_BOOT_LABEL".into(), String::new());
            self.env.insert("DIB_MOUNTPOINTS".into(), "/".into());
        }

        // Learn what environment.d says (DISTRO_NAME, DIB_RELEASE, …) and write package lists.
        let t = Instant::now();
        let evaluated = self.evaluate_env(&hooks)?;
        crate::packages::write_lists(plan, &evaluated, &hooks)?;
        self.timing("plan-packages", t, Vec::new());

        // root.d on the host with TARGET_ROOT.
        self.run_phase(Phase::Root, &Place::Host, Some(&mnt))?;
        if !runner::has_content(&mnt) {
            return Err(Error::Step {
                step: "root.d".into(),
                message: "Failed to deploy the root element: the target is still empty after root.d (is an operating-system element's root.d missing?)".into(),
            });
        }
        Self::resolv_conf_in(&mnt)?;
        fs::create_dir_all(mnt.join("tmp")).map_err(io(&mnt))?;
        kiln_sandbox::mount_chroot_fs(&mnt)?;
        self.run_phase(Phase::ExtraData, &Place::Host, None)?;
        for p in [Phase::PreInstall, Phase::Install] {
            self.run_phase(p, &Place::Chroot(mnt.clone()), None)?;
        }
        if !plan.request.packages.is_empty() {
            let t = Instant::now();
            let mut argv = vec!["install-packages".to_string()];
            argv.extend(
                plan.request
                    .packages
                    .iter()
                    .flat_map(|p| p.split(','))
                    .filter(|p| !p.is_empty())
                    .map(String::from),
            );
            runner::run_simple(
                self.console,
                "packages",
                &Place::Chroot(mnt.clone()),
                &argv,
                &self.env,
            )?;
            self.timing("extra-packages", t, Vec::new());
        }
        self.run_phase(Phase::PostInstall, &Place::Chroot(mnt.clone()), None)?;
        self.run_phase(Phase::PostRoot, &Place::Host, None)?;
        let _ = fs::remove_dir_all(mnt.join("lost+found"));
        check_interrupt()?;
        self.ws.umount_chroot()?;

        let mut outputs = Vec::new();
        if plan.needs_disk() {
            self.build_disk(&mut outputs)?;
        } else {
            // A root filesystem only: finalise runs in the tree itself.
            kiln_sandbox::mount_chroot_fs(&mnt)?;
            self.run_phase(Phase::PreFinalise, &Place::Host, None)?;
            self.run_phase(Phase::Finalise, &Place::Chroot(mnt.clone()), None)?;
            self.run_phase(Phase::Cleanup, &Place::Host, Some(&mnt))?;
            self.ws.umount_chroot()?;
            Self::tidy(&mnt)?;
            self.tree_outputs(&mnt, &mut outputs)?;
        }
        Ok(outputs)
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
            .get("FS_TYPE")
            .cloned()
            .unwrap_or_else(|| "ext4".into());
        let opts = kiln_blockdev::SizeOpts {
            image_size_gb: self.env.get("DIB_IMAGE_SIZE").and_then(|v| v.parse().ok()),
            extra_size_mb: self
                .env
                .get("DIB_IMAGE_EXTRA_SIZE")
                .and_then(|v| v.parse().ok()),
            journal_size_mb: self
                .env
                .get("DIB_JOURNAL_SIZE")
                .and_then(|v| v.parse().ok())
                .unwrap_or(64),
            root_fs_type: fs_type.clone(),
            efi: plan
                .set
                .names()
                .iter()
                .any(|n| n.starts_with("block-device-efi")),
        };
        let size_kib = kiln_blockdev::image_size_kib(du, &opts);
        self.env
            .insert("DIB_IMAGE_SIZE".into(), size_kib.to_string());
        let mut mkfs_opts = req.mkfs_options.clone().unwrap_or_default();
        if fs_type == "ext4" {
            mkfs_opts = format!("-i 4096 -J size={} {mkfs_opts}", opts.journal_size_mb);
        }
        if let Some(n) = self.env.get("MAX_ONLINE_RESIZE").filter(|v| !v.is_empty()) {
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
        self.env.insert(
            "IMAGE_BLOCK_DEVICE".into(),
            created.image_block_device().to_string(),
        );
        self.env
            .insert("IMAGE_BLOCK_DEVICES".into(), created.image_block_devices());
        self.ws.blockdev = Some(created);
        self.timing("block-device-create", t, Vec::new());
        let created = self.ws.blockdev.as_ref().expect("just set");
        created.write_fstab(&built.join("etc/fstab"))?;

        // One copy of the tree into the image filesystem.
        let t = Instant::now();
        copy_tree(&built, &mnt)?;
        self.timing("copy-into-image", t, Vec::new());
        check_interrupt()?;

        fs::create_dir_all(mnt.join("tmp")).map_err(io(&mnt))?;
        kiln_sandbox::mount_chroot_fs(&mnt)?;
        self.run_phase(Phase::PreFinalise, &Place::Host, None)?;
        self.run_phase(Phase::Finalise, &Place::Chroot(mnt.clone()), None)?;
        self.run_phase(Phase::Cleanup, &Place::Host, Some(&mnt))?;
        self.ws.umount_chroot()?;
        Self::tidy(&mnt)?;
        self.tree_outputs(&mnt, outputs)?;

        // Unmount the image (this copies offline filesystems in and detaches the loop device),
        // keeping the raw file for conversion.
        let t = Instant::now();
        let created = self.ws.blockdev.take().expect("created above");
        let raw = created.image_path().to_path_buf();
        created.umount(&mut runner)?;
        self.timing("block-device-umount", t, Vec::new());
        let disk_opts = kiln_output::DiskOptions {
            compress: !req.uncompressed,
            qemu_img_options: req
                .qemu_img_options
                .clone()
                .or_else(|| req.var("QEMU_IMG_OPTIONS").map(String::from)),
        };
        let sums = self.checksums();
        let overwrite = self.overwrite();
        let stamp = timestamp();
        for ty in kiln_output::production_order(&plan.outputs) {
            check_interrupt()?;
            let dest = kiln_output::output_path(&plan.image_name, &ty);
            let t = Instant::now();
            match &ty {
                OutputType::Disk(f) => kiln_output::write_disk(&raw, f, &dest, &disk_opts)?,
                OutputType::Raw => kiln_output::write_raw(&raw, &dest)?,
                _ => continue,
            }
            kiln_output::finish(&dest, overwrite, sums, &stamp)?;
            self.console.say(&format!("wrote {}", dest.display()));
            self.timing(ty.extension(), t, Vec::new());
            outputs.push(dest);
        }
        Ok(())
    }

    fn checksums(&self) -> kiln_output::Checksums {
        kiln_output::Checksums::parse(self.env.get("DIB_CHECKSUM").map_or("0", String::as_str))
    }

    fn overwrite(&self) -> bool {
        self.plan
            .request
            .var("OVERWRITE_OLD_IMAGE")
            .is_some_and(|v| v != "0")
    }

    fn tree_outputs(&mut self, root: &Path, outputs: &mut Vec<PathBuf>) -> Result<(), Error> {
        let plan = self.plan;
        let sde = plan
            .request
            .var("SOURCE_DATE_EPOCH")
            .and_then(|v| v.parse().ok());
        let sums = self.checksums();
        let overwrite = self.overwrite();
        let stamp = timestamp();
        let wants = |t: &OutputType| plan.outputs.contains(t);
        if wants(&OutputType::Tar) || wants(&OutputType::Tgz) {
            let t = Instant::now();
            let tar = kiln_output::output_path(&plan.image_name, &OutputType::Tar);
            kiln_output::write_tar(root, &tar, sde)?;
            let pending = kiln_output::pending_path(&tar);
            if wants(&OutputType::Tgz) {
                let tgz = kiln_output::output_path(&plan.image_name, &OutputType::Tgz);
                kiln_output::write_tgz(&pending, &tgz)?;
                kiln_output::finish(&tgz, overwrite, sums, &stamp)?;
                self.console.say(&format!("wrote {}", tgz.display()));
                outputs.push(tgz);
            }
            if wants(&OutputType::Tar) {
                kiln_output::finish(&tar, overwrite, sums, &stamp)?;
                self.console.say(&format!("wrote {}", tar.display()));
                outputs.push(tar);
            } else {
                let _ = fs::remove_file(&pending);
            }
            self.timing("tar", t, Vec::new());
        }
        if wants(&OutputType::Squashfs) {
            let t = Instant::now();
            let dest = kiln_output::output_path(&plan.image_name, &OutputType::Squashfs);
            kiln_output::write_squashfs(root, &dest)?;
            kiln_output::finish(&dest, overwrite, sums, &stamp)?;
            self.console.say(&format!("wrote {}", dest.display()));
            outputs.push(dest);
            self.timing("squashfs", t, Vec::new());
        }
        Ok(())
    }

    /// DIB's resolv.conf dance, first half: keep the target's, use the host's during the build.
    fn resolv_conf_in(mnt: &Path) -> Result<(), Error> {
        let etc = mnt.join("etc");
        fs::create_dir_all(&etc).map_err(io(&etc))?;
        let target = etc.join("resolv.conf");
        let orig = etc.join("resolv.conf.ORIG");
        if fs::symlink_metadata(&target).is_ok() {
            fs::rename(&target, &orig).map_err(io(&target))?;
        }
        let host = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let text = if host.trim().is_empty() {
            "nameserver 127.0.0.1\n".to_string()
        } else {
            host
        };
        fs::write(&target, text).map_err(io(&target))?;
        Ok(())
    }

    /// After cleanup.d: restore resolv.conf, empty /tmp, truncate /var/log, drop /root/*.log.
    fn tidy(mnt: &Path) -> Result<(), Error> {
        let etc = mnt.join("etc");
        let target = etc.join("resolv.conf");
        let orig = etc.join("resolv.conf.ORIG");
        let is_link = fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink());
        let immutable = std::process::Command::new("lsattr")
            .arg("-d")
            .arg(&target)
            .output()
            .is_ok_and(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .next()
                    .is_some_and(|a| a.contains('i'))
            });
        if is_link || immutable {
            let _ = fs::remove_file(&orig);
        } else {
            let _ = fs::remove_file(&target);
            if fs::symlink_metadata(&orig).is_ok() {
                fs::rename(&orig, &target).map_err(io(&orig))?;
            }
        }
        let tmp = mnt.join("tmp");
        let _ = kiln_sandbox::umount_all_under(&tmp);
        if let Ok(rd) = fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() && !p.is_symlink() {
                    let _ = fs::remove_dir_all(&p);
                } else {
                    let _ = fs::remove_file(&p);
                }
            }
        }
        truncate_logs(&mnt.join("var/log"));
        if let Ok(rd) = fs::read_dir(mnt.join("root")) {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    fn evaluate_env(&mut self, hooks: &Path) -> Result<BTreeMap<String, String>, Error> {
        let marker = hooks.join(".kiln");
        fs::create_dir_all(&marker).map_err(io(&marker))?;
        let out = std::process::Command::new("bash")
            .arg(hooks.join("dib-run-parts"))
            .arg("--print-env")
            .arg(&marker)
            .env_clear()
            .envs(&self.env)
            .output()
            .map_err(io(hooks))?;
        if !out.status.success() {
            return Err(Error::Step {
                step: "environment.d".into(),
                message: format!(
                    "sourcing environment.d failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        Ok(env::parse_env0(&out.stdout))
    }

    fn phase_env(&self, target_root: Option<&Path>) -> BTreeMap<String, String> {
        let mut e = self.env.clone();
        if let Some(t) = target_root {
            e.insert("TARGET_ROOT".into(), t.display().to_string());
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
                let in_target = root.join("tmp/in_target.d");
                fs::create_dir_all(&in_target).map_err(io(&in_target))?;
                kiln_sandbox::bind(&hooks, &in_target, true)?;
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
                let _ = kiln_sandbox::umount(&in_target);
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
        let cmd = self
            .plan
            .request
            .var("break_cmd")
            .unwrap_or("bash")
            .to_string();
        let outside = self
            .plan
            .request
            .var("break_outside_target")
            .is_some_and(|v| v != "0");
        self.console.say(&format!(
            "break point {point}: running `{cmd}`; exit it to continue"
        ));
        let mut c = match place {
            Some(Place::Chroot(root)) if !outside => {
                let mut c = std::process::Command::new("chroot");
                c.arg(root).arg("bash").arg("-c").arg(&cmd);
                c
            }
            _ => {
                let mut c = std::process::Command::new("bash");
                c.arg("-c").arg(&cmd);
                c
            }
        };
        let _ = c.env_clear().envs(&self.env).status();
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
    let out = std::process::Command::new("du")
        .args(["-s", "-k", "-x"])
        .arg(dir)
        .output()
        .map_err(io(dir))?;
    String::from_utf8_lossy(&out.stdout)
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
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg("--preserve=all")
        .arg("--no-target-directory")
        .arg(from)
        .arg(to)
        .status()
        .map_err(io(from))?;
    if st.success() {
        Ok(())
    } else {
        Err(Error::Step {
            step: "copy-into-image".into(),
            message: format!("cp -a {} {} exited with {st}", from.display(), to.display()),
        })
    }
}

fn truncate_logs(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            truncate_logs(&p);
        } else if m.is_file() {
            let _ = fs::OpenOptions::new().write(true).truncate(true).open(&p);
        }
    }
}

fn timestamp() -> String {
    let out = std::process::Command::new("date")
        .arg("+%Y.%m.%d-%H.%M.%S")
        .output();
    out.map_or_else(
        |_| "old".into(),
        |o| String::from_utf8_lossy(&o.stdout).trim().to_string(),
    )
}
