//! Outputs: the tree outputs (tar, tgz, squashfs) made from the finished tree, the disk
//! conversions made from the raw image, and the output cache (an identical request copies its
//! cached outputs; a finished build stores its own).

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
        let mut outs = Vec::new();
        for ty in kiln_output::production_order(&self.plan.outputs) {
            let dest = kiln_output::output_path(&self.plan.image_name, ty);
            let name = dest.file_name().unwrap_or_default();
            let src = entry.join("files").join(name);
            note_pending(&dest);
            let pending = kiln_output::prepare_pending(&dest)?;
            if let Err(e) = cache::copy_file(&src, &pending) {
                kiln_output::discard_pending(&dest);
                return Err(e.into());
            }
            kiln_output::finish(&dest, overwrite, sums, &stamp)?;
            self.console
                .say(&format!("wrote {} (from the cache)", dest.display()));
            outs.push(dest);
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
        if let Err(e) = self.step("output-cache-store", |_| {
            Ok(cache.store(&key, outputs, &name_d)?)
        }) {
            self.console
                .say(&format!("warning: could not cache the outputs: {e}"));
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
        let opts = plan.output_options()?;
        let sums = self.checksums();
        let overwrite = self.overwrite();
        let stamp = timestamp(self.ws.host.as_mut());
        for ty in kiln_output::production_order(&plan.outputs) {
            if ty.source() != kind {
                continue;
            }
            let dest = kiln_output::output_path(&plan.image_name, ty);
            self.step(ty.name(), |ctx| {
                note_pending(&dest);
                // A failed producer or finish removes the pending directory itself.
                ctx.ws.host.produce(ty, source, &dest, &opts)?;
                kiln_output::finish(&dest, overwrite, sums, &stamp)?;
                ctx.console.say(&format!("wrote {}", dest.display()));
                outputs.push(dest.clone());
                Ok(())
            })?;
        }
        Ok(())
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
