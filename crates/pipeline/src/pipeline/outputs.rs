//! Outputs: the tree outputs (tar, tgz, squashfs) made from the finished tree, the disk
//! conversions made from the raw image, and the output cache (an identical request copies its
//! cached outputs; a finished build stores its own).
//!
//! The LXC and Incus outputs share the image's identity (distribution, release, variant,
//! serial, dates), computed once from the final tree (step `identity`) and written with the
//! outputs' names and Incus fingerprints to `NAME.d/image.json` (step `image-record`), the
//! record `kiln publish` reads.

use std::path::{Path, PathBuf};

use kiln_host::Cmd;

use super::Ctx;
use crate::cache;
use crate::host::Host;
use crate::{settings, Error};

/// Tells the watchdog the private pending directory of output `dest` (`.NAME.ext.kiln-new/`, in
/// the output directory, outside the build's directories): if kiln is killed while writing into
/// it, the watchdog removes it with the build directories. Once the output is renamed into
/// place the directory is gone and nothing is removed.
fn note_pending(dest: &Path) {
    if let Some(dir) = kiln_output::pending_path(dest).parent() {
        kiln_sandbox::watchdog::note_dir(dir);
    }
}

impl Ctx<'_> {
    /// Copies a cached request's outputs into place (and its NAME.d manifests).
    pub(super) fn outputs_from_cache(&mut self, entry: &Path) -> Result<Vec<PathBuf>, Error> {
        let sums = self.checksums();
        let overwrite = self.overwrite();
        let stamp = timestamp(self.ws.host.as_mut());
        let cache = cache::OutputCache::new(&self.plan.cache_root);
        let dests: Vec<PathBuf> = kiln_output::production_order(&self.plan.outputs)
            .into_iter()
            .map(|ty| kiln_output::output_path(&self.plan.image_name, ty))
            .collect();
        // Every output into its pending file first (a derived one checked against its digest),
        // so a damaged entry leaves nothing in place and the build goes on without it.
        for (i, dest) in dests.iter().enumerate() {
            let name = dest.file_name().unwrap_or_default().to_string_lossy();
            note_pending(dest);
            let copied = kiln_output::prepare_pending(dest)
                .map_err(Error::from)
                .and_then(|pending| Ok(cache.copy_out(entry, &name, &pending)?));
            if let Err(e) = copied {
                dests[..=i]
                    .iter()
                    .for_each(|d| kiln_output::discard_pending(d));
                return Err(e);
            }
        }
        let mut outs = Vec::new();
        for (i, dest) in dests.iter().enumerate() {
            if let Err(e) = kiln_output::finish(dest, overwrite, sums, &stamp) {
                // finish removed its own pending file; the ones not yet in place go too.
                dests[i + 1..]
                    .iter()
                    .for_each(|d| kiln_output::discard_pending(d));
                return Err(e.into());
            }
            self.console
                .say(&format!("wrote {} (from the cache)", dest.display()));
            outs.push(dest.clone());
        }
        let name_d = PathBuf::from(format!("{}.d", self.plan.image_name.display()));
        if entry.join("name.d").is_dir() {
            let cp = Cmd::new("cp")
                .arg("-a")
                .arg(entry.join("name.d/."))
                .arg(&name_d);
            let _ = self.ws.host.run(&cp);
        }
        Ok(outs)
    }

    /// Stores this request's outputs and its `NAME.d` in the output cache (step
    /// `output-cache-store`); a failure is only a warning.
    pub(super) fn store_outputs(&mut self, outputs: &[PathBuf]) {
        let Some(key) = self.out_key.clone() else {
            return;
        };
        let name_d = PathBuf::from(format!("{}.d", self.plan.image_name.display()));
        let cache = cache::OutputCache::new(&self.plan.cache_root);
        let index = self.qcow2_index();
        let qcow2 = self
            .output_of("qcow2")
            .filter(|q| outputs.contains(q) && index.is_file());
        // A tar asked for beside its tgz is kept as the tgz's content, not a second file.
        let tar_of_tgz = match (self.output_of("tar"), self.output_of("tgz")) {
            (Some(tar), Some(tgz)) if outputs.contains(&tar) && outputs.contains(&tgz) => {
                vec![(tar, tgz)]
            }
            _ => Vec::new(),
        };
        let stored = self.step("output-cache-store", |_| {
            Ok(cache.store_deriving(&key, outputs, &name_d, &tar_of_tgz)?)
        });
        match stored {
            Err(e) => self
                .console
                .say(&format!("warning: could not cache the outputs: {e}")),
            // The qcow2's cluster index, for the next build's writer to reuse from: only with
            // the qcow2 it describes (not when another build stored this key first).
            Ok(true) => {
                if let Some(name) = qcow2.as_deref().and_then(Path::file_name) {
                    if let Err(e) = cache.attach_index(&key, &name.to_string_lossy(), &index) {
                        self.console.say(&format!(
                            "warning: could not keep the qcow2's cluster index: {e}"
                        ));
                    }
                }
            }
            Ok(false) => {}
        }
    }

    /// The disk outputs, converted from the raw image in production order (a step per format,
    /// named by the table's name).
    pub(super) fn disk_outputs(
        &mut self,
        raw: &Path,
        outputs: &mut Vec<PathBuf>,
    ) -> Result<(), Error> {
        self.outputs_from(kiln_output::Source::Disk, raw, outputs)
    }

    /// The tree outputs of `root` (tar, tgz, squashfs), in production order.
    pub(super) fn tree_outputs(
        &mut self,
        root: &Path,
        outputs: &mut Vec<PathBuf>,
    ) -> Result<(), Error> {
        self.outputs_from(kiln_output::Source::Tree, root, outputs)
    }

    /// Every requested output made from `source` (the tree or the raw disk), each through the
    /// output table's producer, as a step named by the output type.
    fn outputs_from(
        &mut self,
        kind: kiln_output::Source,
        source: &Path,
        outputs: &mut Vec<PathBuf>,
    ) -> Result<(), Error> {
        let plan = self.plan;
        let mut opts = plan.output_options()?;
        opts.image.clone_from(&self.image_info);
        // The qcow2 may take the compressed clusters it shares with an earlier one in the output
        // cache (the same bytes a fresh conversion writes; see kiln_output::clusters), and
        // leaves its own index for the next build; `--no-cache` reads nothing from the cache.
        let reuse = (kind == kiln_output::Source::Disk && self.out_key.is_some()).then(|| {
            let name = self
                .output_of("qcow2")
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default();
            kiln_output::clusters::Reuse {
                writer: super::keys::kiln_identity(),
                earlier: if plan.request.no_cache {
                    Vec::new()
                } else {
                    cache::OutputCache::new(&plan.cache_root).reusable("qcow2", &name, 3)
                },
                index_out: self.qcow2_index(),
            }
        });
        let sums = self.checksums();
        let overwrite = self.overwrite();
        let stamp = timestamp(self.ws.host.as_mut());
        for ty in kiln_output::production_order(&plan.outputs) {
            if ty.source() != kind {
                continue;
            }
            let dest = kiln_output::output_path(&plan.image_name, ty);
            // Only the qcow2 output's own index is kept (incus-vm writes a qcow2 too).
            opts.qcow2_reuse = reuse.clone().filter(|_| ty.name() == "qcow2");
            self.step(ty.name(), |ctx| {
                note_pending(&dest);
                // A failed producer or finish removes the pending directory itself.
                ctx.ws.host.produce(ty, source, &dest, &opts)?;
                kiln_output::finish(&dest, overwrite, sums, &stamp)?;
                ctx.console.say(&format!("wrote {}", dest.display()));
                outputs.push(dest.clone());
                Ok(())
            })?;
            // tgz (after tar in production order) compresses the tar just written.
            if ty.name() == "tar" {
                opts.tar_file = Some(dest);
            } else if ty.name() == "qcow2" {
                self.say_reused(reuse.as_ref());
            }
        }
        Ok(())
    }

    /// The image's identity (step `identity`), from the final tree `root` and the settings,
    /// when an output needs it (LXC, Incus).
    pub(super) fn identity(&mut self, root: &Path) -> Result<(), Error> {
        let plan = self.plan;
        if !plan
            .outputs
            .iter()
            .any(|t| kiln_output::incus::needs_identity(t.name()))
        {
            return Ok(());
        }
        self.step("identity", |ctx| {
            let req = &plan.request;
            let name = plan.image_name.file_name().map_or_else(
                || plan.image_name.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            let inputs = kiln_output::identity::Inputs {
                name,
                arch: plan.arch.clone(),
                source_date_epoch: req.source_date_epoch()?,
                build_start: ctx.started,
                expiry_days: req.image_expiry_days()?,
                variant: req.image_variant()?,
                distro_name: settings::DISTRO_NAME.get(&ctx.env).map(String::from),
                dib_release: settings::DIB_RELEASE.get(&ctx.env).map(String::from),
            };
            ctx.image_info = Some(kiln_output::identity::ImageInfo::new(root, &inputs)?);
            Ok(())
        })
    }

    /// Writes `NAME.d/image.json` (step `image-record`) when the build made an output that
    /// needs the image's identity: the identity, the outputs made (file names beside `NAME.d`)
    /// and Incus's fingerprint of each Incus output.
    pub(super) fn image_record(&mut self, outputs: &[PathBuf]) -> Result<(), Error> {
        let Some(info) = self.image_info.clone() else {
            return Ok(());
        };
        let plan = self.plan;
        self.step("image-record", |_| {
            let mut made = serde_json::Map::new();
            let mut fingerprints = serde_json::Map::new();
            for ty in kiln_output::production_order(&plan.outputs) {
                if !kiln_output::incus::needs_identity(ty.name()) {
                    continue;
                }
                let dest = kiln_output::output_path(&plan.image_name, ty);
                if !outputs.contains(&dest) {
                    continue;
                }
                let file = dest
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                made.insert(ty.name().into(), file.into());
                if let Some(fp) = kiln_output::incus::fingerprint(ty.name(), &dest)? {
                    fingerprints.insert(ty.name().into(), fp.into());
                }
            }
            let mut v = serde_json::to_value(&info).map_err(|e| Error::Io {
                path: plan.image_name.clone(),
                source: std::io::Error::other(e),
            })?;
            if let Some(m) = v.as_object_mut() {
                m.insert("outputs".into(), made.into());
                m.insert("fingerprints".into(), fingerprints.into());
            }
            let name_d = PathBuf::from(format!("{}.d", plan.image_name.display()));
            std::fs::create_dir_all(&name_d).map_err(crate::io(&name_d))?;
            let path = name_d.join(kiln_output::identity::RECORD_FILE);
            let mut bytes = serde_json::to_vec_pretty(&v).unwrap_or_default();
            bytes.push(b'\n');
            std::fs::write(&path, bytes).map_err(crate::io(&path))
        })
    }

    /// Says how many of the qcow2's clusters were taken from an earlier image, when there was
    /// one to take them from (read from the index the writer left).
    fn say_reused(&mut self, reuse: Option<&kiln_output::clusters::Reuse>) {
        if reuse.is_none_or(|r| r.earlier.is_empty()) {
            return;
        }
        let index = std::fs::read(self.qcow2_index())
            .ok()
            .and_then(|b| serde_json::from_slice::<kiln_output::clusters::Index>(&b).ok());
        if let Some(i) = index {
            self.console.say(&format!(
                "qcow2: {} of {} clusters taken from an earlier image (each checked)",
                i.reused,
                i.clusters.len()
            ));
        }
    }

    /// The path of this build's output of type `name` (`qcow2`, `tar`, …), beside `NAME.d`.
    fn output_of(&self, name: &str) -> Option<PathBuf> {
        kiln_output::OutputType::parse(name)
            .ok()
            .map(|ty| kiln_output::output_path(&self.plan.image_name, ty))
    }

    /// Where kiln's qcow2 writer leaves the new image's cluster index (in the build directory,
    /// until the output cache keeps it).
    fn qcow2_index(&self) -> PathBuf {
        self.ws.build_dir.join("qcow2-clusters.json")
    }

    /// The checksum files to write beside each output (`DIB_CHECKSUM`).
    fn checksums(&self) -> kiln_output::Checksums {
        kiln_output::Checksums::parse(settings::DIB_CHECKSUM.get_or_default(&self.env))
    }

    /// Whether an existing output is overwritten rather than kept with a timestamp.
    fn overwrite(&self) -> bool {
        self.plan
            .request
            .var(settings::OVERWRITE_OLD_IMAGE.name)
            .is_some_and(|v| v != "0")
    }
}

/// The stamp an old output is renamed with when it is kept.
fn timestamp(host: &mut dyn Host) -> String {
    host.run(&Cmd::new("date").arg("+%Y.%m.%d-%H.%M.%S"))
        .map_or_else(|_| "old".into(), |o| o.stdout_str().trim().to_string())
}
