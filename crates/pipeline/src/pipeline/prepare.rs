//! Preparing the build directory: the merged hook tree and kiln's helpers laid out, the hooks'
//! environment computed and environment.d evaluated, the package lists written.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use kiln_host::Cmd;

use super::preflight::blockdev_params;
use crate::cache;
use crate::env;
use crate::host::{Host, SystemHost};
use crate::plan::BuildPlan;
use crate::{io, settings, Error};

/// kiln's `dib-run-parts`, written into the hook tree and the helper directory.
pub(super) const DIB_RUN_PARTS: &str = include_str!("../assets/dib-run-parts");

/// The hook tree laid out, the environment exported to hooks, and the environment as
/// environment.d leaves it (DISTRO_NAME, DIB_RELEASE, …), with the package lists written.
pub struct Prepared {
    /// Variables exported to hooks.
    pub env: BTreeMap<String, String>,
    /// The environment after sourcing environment.d.
    pub evaluated: BTreeMap<String, String>,
    /// Digest of every entry of the hook tree (before any hook ran).
    pub files: BTreeMap<String, String>,
    /// Every variable name the hooks, `environment.d` files and `bin/` scripts mention (the
    /// resolved elements scanned once): the variables outside kiln's fixed rules that enter
    /// the keys.
    pub named: BTreeSet<String>,
    /// The host files the elements declare in `cache-inputs`.
    pub host_inputs: Vec<cache::host_files::Declared>,
    /// The lock of a locked build (`--lock`), checked against the package lists.
    pub locked: Option<crate::locked::Input>,
    /// The release alias the build asked for and the codename kiln exported for it.
    pub release: Option<crate::release::Resolved>,
}

/// Lays out the hook tree under `build_dir/hooks` and kiln's helpers under `build_dir/lib`,
/// computes the hooks' environment and evaluates environment.d, and writes the package lists.
pub fn prepare(plan: &BuildPlan, build_dir: &Path, image_dir: &Path) -> Result<Prepared, Error> {
    prepare_on(plan, build_dir, image_dir, &mut SystemHost::new())
}

/// [`prepare`], running environment.d through `host`.
pub(super) fn prepare_on(
    plan: &BuildPlan,
    build_dir: &Path,
    image_dir: &Path,
    host: &mut dyn Host,
) -> Result<Prepared, Error> {
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
    let mut evaluated = evaluate(plan, &hooks, &marker, host, &env)?;
    // A release alias (DIB_RELEASE=stable) becomes its codename, once, before anything reads
    // the sources: environment.d is sourced again with the codename exported.
    let release = export_release(plan, &mut env, &evaluated)?;
    if release.is_some() {
        evaluated = evaluate(plan, &hooks, &marker, host, &env)?;
    }
    // environment.d may have set them: checked again before any hook sees them, naming the
    // files that assign them.
    if let Err(e) = crate::request::check_path_words(&|name| evaluated.get(name).cloned()) {
        return Err(name_setters(plan, e));
    }
    crate::packages::write_lists(plan, &evaluated, &hooks)?;
    let locked = load_lock(plan, &hooks, build_dir, &mut env, &evaluated)?;
    let files = cache::hook_tree_files(&hooks);
    let named = cache::variables::named_in_hooks(&plan.hooks, &[DIB_RUN_PARTS]);
    let host_inputs =
        cache::host_files::declared(plan.set.elements.iter().map(|e| e.path.as_path()))?;
    Ok(Prepared {
        env,
        evaluated,
        files,
        named,
        host_inputs,
        locked,
        release,
    })
}

/// The environment as environment.d leaves it, sourced the way dib-run-parts sources it.
fn evaluate(
    plan: &BuildPlan,
    hooks: &Path,
    marker: &Path,
    host: &mut dyn Host,
    env: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, Error> {
    let cmd = Cmd::new("bash")
        .arg(hooks.join("dib-run-parts"))
        .arg("--print-env")
        .arg(marker)
        .env_clear()
        .envs(env);
    let out = host.output(&cmd).map_err(|e| Error::Step {
        step: "environment.d".into(),
        message: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(env_d_failure(plan, hooks, marker, &out.stderr_str()));
    }
    Ok(env::parse_env0(&out.stdout))
}

/// Resolves a release alias environment.d left in `evaluated` ([`crate::release::resolve`]) and
/// exports the codename as `DIB_RELEASE` and the alias as `DIB_RELEASE_ASKED` in `env`, both
/// recorded in `DIB_ENV` (the manifests' `dib_environment`).
fn export_release(
    plan: &BuildPlan,
    env: &mut BTreeMap<String, String>,
    evaluated: &BTreeMap<String, String>,
) -> Result<Option<crate::release::Resolved>, Error> {
    let offline = env
        .get(settings::DIB_OFFLINE.name)
        .is_some_and(|v| !v.is_empty());
    let release = crate::release::resolve(evaluated, plan.request.lock.as_deref(), offline)?;
    if let Some(r) = &release {
        let mut caller = plan.request.env.clone();
        for (name, value) in [
            (settings::DIB_RELEASE.name, &r.codename),
            (settings::DIB_RELEASE_ASKED.name, &r.asked),
        ] {
            env.insert(name.into(), value.clone());
            caller.insert(name.into(), value.clone());
        }
        env.insert(settings::DIB_ENV.name.into(), env::dib_env(&caller));
    }
    Ok(release)
}

/// A locked build's lock (`--lock`), read and checked against the package lists written under
/// `hooks`; sets `KILN_LOCK_REPO` and `KILN_LOCK_DIGEST` for the hooks (the plan's request
/// already carries the default `SOURCE_DATE_EPOCH`, the lock's time).
fn load_lock(
    plan: &BuildPlan,
    hooks: &Path,
    build_dir: &Path,
    env: &mut BTreeMap<String, String>,
    evaluated: &BTreeMap<String, String>,
) -> Result<Option<crate::locked::Input>, Error> {
    let Some(path) = &plan.request.lock else {
        return Ok(None);
    };
    let wanted = crate::lock::request_for(plan, evaluated, hooks)?.packages;
    let input = crate::locked::Input::load(path, &plan.arch, &wanted)?;
    let repo = build_dir.join(crate::locked::REPO_DIR);
    env.insert(
        settings::KILN_LOCK_REPO.name.into(),
        repo.display().to_string(),
    );
    env.insert(settings::KILN_LOCK_DIGEST.name.into(), input.digest.clone());
    Ok(Some(input))
}

/// `err` (a bad `DISTRO_NAME` or `DIB_RELEASE`) with the environment.d files that assign the
/// variable appended, so the message names the file to fix.
fn name_setters(plan: &BuildPlan, err: Error) -> Error {
    let msg = err.to_string();
    let Some(var) = [settings::DISTRO_NAME.name, settings::DIB_RELEASE.name]
        .into_iter()
        .find(|v| msg.starts_with(&format!("{v}=")))
    else {
        return err;
    };
    let assign = format!("{var}=");
    let setters: Vec<String> = plan
        .hooks
        .environment
        .iter()
        .filter(|h| fs::read_to_string(&h.path).is_ok_and(|t| t.contains(&assign)))
        .map(|h| h.path.display().to_string())
        .collect();
    if setters.is_empty() {
        return err;
    }
    Error::Usage(format!("{msg}; set in {}", setters.join(", ")))
}

/// The error for environment.d files that failed when sourced. An element's file is at fault:
/// it is named by its path in the element, not in the merged tree, and it is an input error
/// (exit 2) like every other error in an element's files.
fn env_d_failure(plan: &BuildPlan, hooks: &Path, marker: &Path, stderr: &str) -> Error {
    let mut stderr = stderr.trim().to_string();
    for h in &plan.hooks.environment {
        let source = h.path.display().to_string();
        for merged in [
            marker.join("../environment.d").join(&h.name),
            hooks.join("environment.d").join(&h.name),
        ] {
            stderr = stderr.replace(&merged.display().to_string(), &source);
        }
    }
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    Error::Usage(format!(
        "sourcing environment.d failed: {}; fix the environment.d file named there",
        lines.join(" / ")
    ))
}

const DIE: &str = "#!/bin/bash\n# kiln: DIB's lib/die. Sourced, it defines die(); run, it prints its arguments and fails.\nfunction die {\n    echo \"ERROR: $*\" >&2\n    exit 1\n}\nif [ \"${BASH_SOURCE[0]}\" = \"$0\" ]; then\n    die \"$@\"\nfi\n";

fn write_exec(path: &Path, text: &str) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, text).map_err(io(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).map_err(io(path))
}
