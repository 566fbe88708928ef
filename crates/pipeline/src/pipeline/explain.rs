//! `kiln plan --explain-cache`: per step, whether the phase cache holds it and, if not, why.

use std::fs;
use std::path::Path;

use super::keys::{cache_steps, output_key};
use super::prepare::prepare;
use crate::cache;
use crate::plan::BuildPlan;
use crate::{io, settings, Error};

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
        // A stored layer counts only if it is whole: the build would discard a damaged one.
        let checked = chain_ok.then(|| layers.verify(&s.key));
        let hit = matches!(checked, Some(Ok(Some(_))));
        let mut reasons = Vec::new();
        if let Some(Err(e)) = checked {
            reasons.push(format!(
                "the stored layer is damaged ({e}): the build discards it and runs the step again"
            ));
        } else if !hit {
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
    // Damaged cached outputs are discarded by the build, not handed back: a miss.
    let out_hit = matches!(
        cache::OutputCache::new(&plan.cache_root).verify(&out_key),
        Ok(Some(_))
    );
    let suites = steps
        .first()
        .map(|s| {
            s.inputs
                .mirror
                .keys()
                .filter(|k| *k != crate::locked::MIRROR_LABEL)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    Ok(crate::report::CacheExplanation {
        release: prepared.release.clone(),
        suites,
        steps: out,
        outputs: crate::report::CacheOutputs {
            key: out_key,
            status: crate::report::CacheStatus::from_hit(out_hit),
        },
    })
}

/// What differs between the inputs of a stored layer and the current ones, in words. Values
/// are never printed (the inputs hold only digests of them): a variable, a suite or a host file
/// is named, with what happened to it.
fn input_changes(old: &cache::Inputs, new: &cache::Inputs) -> Vec<String> {
    let mut v = Vec::new();
    if old.parent != new.parent {
        v.push("the previous step's result changed".to_string());
    }
    if old.arch != new.arch {
        v.push(format!("architecture {} -> {}", old.arch, new.arch));
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
    // Mirror state: labels are `SUITE URI`.
    let suite = |label: &str| {
        label
            .split_once(' ')
            .map_or((label.to_string(), String::new()), |(s, u)| {
                (s.to_string(), format!(" ({u})"))
            })
    };
    // A locked build keys the lock instead of the mirror (one entry, `lock`).
    let lock = crate::locked::MIRROR_LABEL;
    match (old.mirror.get(lock), new.mirror.get(lock)) {
        (Some(o), Some(n)) if o != n => v.push("lock changed".to_string()),
        (None, Some(_)) => v.push("built from a lock (--lock) instead of the mirror".to_string()),
        (Some(_), None) => v.push("no longer built from a lock (--lock)".to_string()),
        _ => {}
    }
    let locked = old.mirror.contains_key(lock) || new.mirror.contains_key(lock);
    for (label, d) in new.mirror.iter().filter(|_| !locked) {
        let (s, at) = suite(label);
        match old.mirror.get(label) {
            None => v.push(format!("apt suite {s}{at} added to the image's sources")),
            Some(o) if o != d => v.push(format!("{s} InRelease changed{at}")),
            _ => {}
        }
    }
    for label in old.mirror.keys().filter(|_| !locked) {
        if !new.mirror.contains_key(label) {
            let (s, at) = suite(label);
            v.push(format!(
                "apt suite {s}{at} removed from the image's sources"
            ));
        }
    }
    for (k, d) in &new.host_files {
        match old.host_files.get(k) {
            None => v.push(format!("{k} file added")),
            Some(o) if o != d => v.push(format!("{k} file changed")),
            _ => {}
        }
    }
    for k in old.host_files.keys() {
        if !new.host_files.contains_key(k) {
            v.push(format!("{k} file no longer read"));
        }
    }
    for (k, val) in &new.env {
        match old.env.get(k) {
            None => v.push(format!("variable {k} added")),
            Some(o) if o != val => {
                if k == settings::IMAGE_ELEMENT.name {
                    v.push(format!("elements changed (variable {k} changed)"));
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
    use std::collections::BTreeMap;

    fn inputs() -> cache::Inputs {
        cache::Inputs {
            phase: "root".into(),
            parent: None,
            arch: "amd64".into(),
            mirror: BTreeMap::from([
                ("bookworm http://m/debian".into(), "a".into()),
                (
                    "bookworm-security http://s/debian-security".into(),
                    "b".into(),
                ),
            ]),
            version: "k".into(),
            env: BTreeMap::from([(
                "DIB_RELEASE".into(),
                cache::variables::value_digest("DIB_RELEASE", "bookworm"),
            )]),
            host_files: BTreeMap::from([("DIB_ADD_APT_KEYS".into(), "c".into())]),
            files: BTreeMap::new(),
            extra: Vec::new(),
        }
    }

    #[test]
    fn changes_are_named_in_words_without_values() {
        let old = inputs();
        assert!(input_changes(&old, &old).is_empty());
        let mut new = old.clone();
        new.mirror.insert(
            "bookworm-security http://s/debian-security".into(),
            "b2".into(),
        );
        new.host_files
            .insert("DIB_ADD_APT_KEYS".into(), "c2".into());
        new.env.insert(
            "DIB_RELEASE".into(),
            cache::variables::value_digest("DIB_RELEASE", "trixie"),
        );
        let why = input_changes(&old, &new);
        assert_eq!(
            why,
            [
                "bookworm-security InRelease changed (http://s/debian-security)",
                "DIB_ADD_APT_KEYS file changed",
                "variable DIB_RELEASE changed",
            ]
        );
        assert!(!why
            .iter()
            .any(|r| r.contains("trixie") || r.contains("bookworm ")));
        let mut gone = old.clone();
        gone.mirror.clear();
        gone.host_files.clear();
        let why = input_changes(&old, &gone);
        assert!(
            why.contains(
                &"apt suite bookworm (http://m/debian) removed from the image's sources"
                    .to_string()
            ),
            "{why:?}"
        );
        assert!(why.contains(&"DIB_ADD_APT_KEYS file no longer read".to_string()));
    }

    #[test]
    fn a_locked_build_names_the_lock_not_the_suites() {
        let unlocked = inputs();
        let mut locked = unlocked.clone();
        locked.mirror = BTreeMap::from([(crate::locked::MIRROR_LABEL.into(), "d1".into())]);
        assert_eq!(
            input_changes(&unlocked, &locked),
            ["built from a lock (--lock) instead of the mirror"]
        );
        assert_eq!(
            input_changes(&locked, &unlocked),
            ["no longer built from a lock (--lock)"]
        );
        let mut relocked = locked.clone();
        relocked
            .mirror
            .insert(crate::locked::MIRROR_LABEL.into(), "d2".into());
        assert_eq!(input_changes(&locked, &relocked), ["lock changed"]);
        assert!(input_changes(&locked, &locked).is_empty());
    }
}
