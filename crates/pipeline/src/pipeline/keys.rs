//! The cache keys of a build: one per cacheable step (chained, each over everything that step
//! can see), kiln's own identity in every key, and the key of the whole request's outputs.

use std::path::{Path, PathBuf};

use kiln_element::Phase;

use super::prepare::{Prepared, DIB_RUN_PARTS};
use crate::cache;
use crate::plan::BuildPlan;
use crate::settings;

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
    let env = cache::key_env(&prepared.evaluated, lib, &prepared.named);
    let mirror = mirror_state(prepared);
    let host_files = cache::host_files::digests(&prepared.host_inputs, &prepared.evaluated);
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
            mirror: mirror.clone(),
            version: kiln_identity(),
            env: cache::variables::env_at(&env, phase.unwrap_or(Phase::Install), || {
                cache::variables::named_visible_to(&plan.hooks, phase)
            }),
            host_files: host_files.clone(),
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

/// The digest of every apt suite of the image's sources, fetched in parallel; nothing when
/// offline (`DIB_OFFLINE`), where the mirror is not asked. A locked build keys the digest of
/// its lock instead, and asks no mirror.
fn mirror_state(prepared: &Prepared) -> std::collections::BTreeMap<String, String> {
    if let Some(locked) = &prepared.locked {
        return std::collections::BTreeMap::from([(
            crate::locked::MIRROR_LABEL.to_string(),
            locked.digest.clone(),
        )]);
    }
    let offline = prepared
        .env
        .get(settings::DIB_OFFLINE.name)
        .is_some_and(|v| !v.is_empty());
    if offline {
        return std::collections::BTreeMap::new();
    }
    let suites = cache::mirror::image_suites(&prepared.evaluated);
    cache::mirror::digests(&suites, cache::mirror::FETCH_TIMEOUT)
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
    let mut env = cache::key_env(&prepared.evaluated, &lib, &prepared.named);
    for k in settings::output_key_only() {
        if let Some(v) = prepared.env.get(k) {
            env.insert(k.to_string(), cache::variables::value_digest(k, v));
        }
    }
    let mut v = serde_json::json!({
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
    // The container outputs' name is inside them (added only when set: other keys unchanged).
    if let Some(t) = &req.docker_target {
        v["docker_target"] = t.clone().into();
    }
    hex::encode(sha2::Sha256::digest(
        serde_json::to_vec(&v).unwrap_or_default(),
    ))
}
