//! The phase cache during a build: the lookup before the first phase (the whole request's
//! outputs, else the longest chain of stored layers that pass their digest check, restored), a
//! layer after each cacheable step, and the trim to `KILN_CACHE_MAX_SIZE` at the end. After a
//! restore, the generated identities the layers left out (SSH host keys, the iSCSI initiator
//! name, the machine id; see [`cache::identity`]) are made anew in the chroot, so every image
//! gets its own.
//!
//! From the lookup until its outputs are stored a build holds the cache's shared lock (kept in
//! the [`Snapshotter`]); the trim takes the exclusive lock only if no other build holds the
//! cache, and otherwise leaves the trim to a later build, so it never waits and never removes
//! what another build is restoring. A layer that fails its digest check is discarded with a
//! warning, and its phase and those after it run again.

use std::fs;
use std::path::{Path, PathBuf};

use super::keys::{cache_steps, output_key, CacheStep};
use super::prepare::Prepared;
use super::Ctx;
use crate::cache;
use crate::runner::Place;
use crate::{io, Error};

/// Where the snapshotting stands during a build.
pub(super) struct Snapshotter {
    /// The cache's shared lock, held until the snapshotter is dropped (before the trim).
    _lock: cache::SharedLock,
    layers: cache::PhaseCache,
    /// The cacheable steps, in order, with their keys.
    pub(super) steps: Vec<CacheStep>,
    tree_index: cache::Index,
    hooks_index: cache::Index,
}

/// What the cache holds for this request.
pub(super) enum Lookup {
    /// The whole request was cached: its outputs, copied into place.
    Outputs(Vec<PathBuf>),
    /// The first `hits` layers were restored; the build goes on from there.
    Layers {
        /// The snapshotter for the steps that run.
        snap: Snapshotter,
        /// How many leading steps the cache held.
        hits: usize,
        /// The key of the request's outputs.
        out_key: String,
    },
}

impl Ctx<'_> {
    /// The phase cache: keys for every step, then the outputs if the whole request is cached,
    /// else the longest prefix of layers already stored, restored into the tree. Timed as
    /// `output-cache` on an output hit, `cache-restore` when layers were restored.
    pub(super) fn cache_lookup(&mut self, prepared: &Prepared) -> Result<Lookup, Error> {
        self.timed(|ctx| {
            let plan = ctx.plan;
            let hooks = ctx.ws.build_dir.join("hooks");
            let lib = ctx.ws.build_dir.join("lib");
            let mnt = ctx.ws.mnt();
            let no_cache = plan.request.no_cache;
            let steps = cache_steps(plan, prepared, &lib);
            let out_key = output_key(plan, prepared, steps.last().map(|s| s.key.as_str()));
            let lock = cache::SharedLock::acquire(&plan.cache_root)?;
            let outputs_cache = cache::OutputCache::new(&plan.cache_root);
            let cached = if no_cache {
                None
            } else {
                match outputs_cache.verify(&out_key) {
                    Ok(entry) => entry,
                    Err(e) => {
                        ctx.console.say(&format!(
                            "warning: cache: the cached outputs {} are damaged ({e}); \
                             discarding them and building",
                            &out_key[..16]
                        ));
                        outputs_cache.discard(&out_key)?;
                        None
                    }
                }
            };
            if let Some(entry) = cached {
                match ctx.outputs_from_cache(&entry) {
                    Ok(outs) => {
                        ctx.console.say(&format!(
                            "cache: output hit {} (nothing changed)",
                            &out_key[..16]
                        ));
                        return Ok((Some("output-cache".into()), Lookup::Outputs(outs)));
                    }
                    // An output the entry makes again came out other than stored.
                    Err(Error::Cache(e @ cache::Error::Corrupt { .. })) => {
                        ctx.console.say(&format!(
                            "warning: cache: the cached outputs {} are damaged ({e}); \
                             discarding them and building",
                            &out_key[..16]
                        ));
                        outputs_cache.discard(&out_key)?;
                    }
                    Err(e) => return Err(e),
                }
            }
            let layers = cache::PhaseCache::new(&plan.cache_root);
            let mut hits = 0;
            if !no_cache {
                while hits < steps.len() {
                    match layers.verify(&steps[hits].key) {
                        Ok(Some(_)) => hits += 1,
                        Ok(None) => break,
                        Err(e) => {
                            ctx.console.say(&format!(
                                "warning: cache: layer {} {} is damaged ({e}); discarding it and \
                                 running {} again",
                                steps[hits].name,
                                &steps[hits].key[..16],
                                steps[hits].name
                            ));
                            layers.discard(&steps[hits].key)?;
                            break;
                        }
                    }
                }
            }
            for (i, s) in steps.iter().enumerate() {
                let state = if i < hits { "hit" } else { "miss" };
                ctx.console
                    .say(&format!("cache: {} {state} {}", s.name, &s.key[..16]));
            }
            let mut tree_index = cache::Index::new();
            let mut hooks_index = cache::index(&hooks);
            let mut timing = None;
            if hits > 0 {
                let keys: Vec<String> = steps[..hits].iter().map(|s| s.key.clone()).collect();
                layers.restore(&keys, &mnt, &hooks)?;
                tree_index = ctx.view_index(&mnt)?;
                hooks_index = cache::index(&hooks);
                timing = Some("cache-restore".into());
            }
            let snap = Snapshotter {
                _lock: lock,
                layers,
                steps,
                tree_index,
                hooks_index,
            };
            Ok((
                timing,
                Lookup::Layers {
                    snap,
                    hits,
                    out_key,
                },
            ))
        })
    }

    /// After `hits` layers were restored (with the chroot mounted): makes new generated
    /// identities for those the tree held when the last restored layer was stored, each with
    /// its row's script in the chroot (step `identities`). Nothing runs when it held none.
    pub(super) fn regenerate_identities(
        &mut self,
        snap: &Snapshotter,
        hits: usize,
    ) -> Result<(), Error> {
        let Some(last) = hits.checked_sub(1).and_then(|i| snap.steps.get(i)) else {
            return Ok(());
        };
        let recorded = snap
            .layers
            .get(&last.key)
            .map(|m| m.identities)
            .unwrap_or_default();
        let rows = cache::identity::to_regenerate(&recorded);
        if rows.is_empty() {
            return Ok(());
        }
        self.step("identities", |ctx| {
            let mnt = ctx.ws.mnt();
            for row in &rows {
                let argv = vec![
                    "sh".to_string(),
                    "-c".to_string(),
                    row.regenerate.to_string(),
                ];
                let place = Place::Chroot(mnt.clone());
                let run = crate::host::PhaseRun {
                    phase: "identities",
                    place: &place,
                    argv: &argv,
                    env: &ctx.env,
                    elements: &std::collections::BTreeMap::new(),
                    capture: None,
                };
                ctx.ws.host.run_phase(ctx.console, &run)?;
            }
            let names: Vec<&str> = rows.iter().map(|r| r.name).collect();
            ctx.console.say(&format!(
                "cache: made new {} (never stored in layers)",
                names.join(", ")
            ));
            Ok(())
        })
    }

    /// Keeps the cache under its size limit (least recently used entries go first) and removes
    /// the unfinished entries of killed builds, if no other build is using the cache (a later
    /// build trims then). Call it after the
    /// snapshotter, and with it this build's shared lock, is gone.
    pub(super) fn trim_cache(&mut self) {
        // Without a limit nothing is trimmed, but killed builds' unfinished entries still go.
        let max = cache::max_size(&self.plan.request.env).unwrap_or(u64::MAX);
        let lock = match cache::ExclusiveLock::try_acquire(&self.plan.cache_root) {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                self.console
                    .say("cache: another build is using the cache; leaving the trim to it");
                return;
            }
            Err(e) => {
                self.console
                    .say(&format!("warning: could not trim the cache: {e}"));
                return;
            }
        };
        let r = cache::gc(&lock, max);
        if r.removed > 0 {
            self.console.say(&format!(
                "cache: removed {} least recently used entries; {} left (KILN_CACHE_MAX_SIZE)",
                r.removed,
                cache::human(r.left)
            ));
        }
        if r.temporary > 0 {
            self.console.say(&format!(
                "cache: removed {} unfinished entries left by interrupted builds",
                r.temporary
            ));
        }
        for p in &r.skipped {
            self.console.say(&format!(
                "warning: cache: {} is not an entry kiln made; left alone (remove it if it is \
                 not yours)",
                p.display()
            ));
        }
        for f in &r.failed {
            self.console
                .say(&format!("warning: cache: could not remove {f}"));
        }
    }

    /// Indexes the tree through a non-recursive bind mount, so nothing mounted inside it counts.
    fn view_index(&mut self, mnt: &Path) -> Result<cache::Index, Error> {
        let view = self.ws.build_dir.join("view");
        fs::create_dir_all(&view).map_err(io(&view))?;
        let bound = self.ws.host.bind(mnt, &view, true)?;
        let idx = cache::index(&view);
        bound.unmount()?;
        Ok(idx)
    }

    /// Stores the change step `i` made, as a layer keyed by its inputs (step `snapshot-NAME`).
    pub(super) fn snapshot(&mut self, snap: &mut Snapshotter, i: usize) -> Result<(), Error> {
        let name = format!("snapshot-{}", snap.steps[i].name);
        self.step(&name, |ctx| {
            let mnt = ctx.ws.mnt();
            let hooks = ctx.ws.build_dir.join("hooks");
            let view = ctx.ws.build_dir.join("view");
            fs::create_dir_all(&view).map_err(io(&view))?;
            let bound = ctx.ws.host.bind(&mnt, &view, true)?;
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
            let _ = bound.unmount();
            result
        })
    }
}
