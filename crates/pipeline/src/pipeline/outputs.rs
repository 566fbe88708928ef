//! Outputs: the tree outputs (tar, tgz, squashfs) made from the finished tree, the disk
//! conversions made from the raw image, and the output cache (an identical request copies its
//! cached outputs; a finished build stores its own).

use std::fs;
use std::path::{Path, PathBuf};

use kiln_host::Cmd;
use kiln_output::OutputType;

use super::Ctx;
use crate::cache;
use crate::{settings, Error};

impl Ctx<'_> {
    /// Copies a cached request's outputs into place (and its NAME.d manifests).
    pub(super) fn outputs_from_cache(&mut self, entry: &Path) -> Result<Vec<PathBuf>, Error> {
        let sums = self.checksums();
        let overwrite = self.overwrite();
        let stamp = timestamp();
        let mut outs = Vec::new();
        for ty in kiln_output::production_order(&self.plan.outputs) {
            let dest = kiln_output::output_path(&self.plan.image_name, &ty);
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
    /// named by its extension).
    pub(super) fn disk_outputs(
        &mut self,
        raw: &Path,
        outputs: &mut Vec<PathBuf>,
    ) -> Result<(), Error> {
        let plan = self.plan;
        let disk_opts = disk_options(&plan.request)?;
        let sums = self.checksums();
        let overwrite = self.overwrite();
        let stamp = timestamp();
        for ty in kiln_output::production_order(&plan.outputs) {
            let dest = kiln_output::output_path(&plan.image_name, &ty);
            self.timed(|ctx| {
                match &ty {
                    OutputType::Disk(f) => kiln_output::write_disk(raw, f, &dest, &disk_opts)?,
                    OutputType::Raw => kiln_output::write_raw(raw, &dest)?,
                    _ => return Ok((None, ())),
                }
                kiln_output::finish(&dest, overwrite, sums, &stamp)?;
                ctx.console.say(&format!("wrote {}", dest.display()));
                outputs.push(dest);
                Ok((Some(ty.extension().to_string()), ()))
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

    /// The tree outputs of `root`: tar and tgz (one tar for both), squashfs.
    pub(super) fn tree_outputs(
        &mut self,
        root: &Path,
        outputs: &mut Vec<PathBuf>,
    ) -> Result<(), Error> {
        let plan = self.plan;
        let sde = plan
            .request
            .var(settings::SOURCE_DATE_EPOCH.name)
            .and_then(|v| v.parse().ok());
        let sums = self.checksums();
        let overwrite = self.overwrite();
        let stamp = timestamp();
        let wants = |t: &OutputType| plan.outputs.contains(t);
        if wants(&OutputType::Tar) || wants(&OutputType::Tgz) {
            self.step("tar", |ctx| {
                let tar = kiln_output::output_path(&plan.image_name, &OutputType::Tar);
                kiln_output::write_tar(root, &tar, sde)?;
                let pending = kiln_output::pending_path(&tar);
                if wants(&OutputType::Tgz) {
                    let tgz = kiln_output::output_path(&plan.image_name, &OutputType::Tgz);
                    kiln_output::write_tgz(&pending, &tgz)?;
                    kiln_output::finish(&tgz, overwrite, sums, &stamp)?;
                    ctx.console.say(&format!("wrote {}", tgz.display()));
                    outputs.push(tgz);
                }
                if wants(&OutputType::Tar) {
                    kiln_output::finish(&tar, overwrite, sums, &stamp)?;
                    ctx.console.say(&format!("wrote {}", tar.display()));
                    outputs.push(tar);
                } else {
                    let _ = fs::remove_file(&pending);
                }
                Ok(())
            })?;
        }
        if wants(&OutputType::Squashfs) {
            self.step("squashfs", |ctx| {
                let dest = kiln_output::output_path(&plan.image_name, &OutputType::Squashfs);
                kiln_output::write_squashfs(root, &dest)?;
                kiln_output::finish(&dest, overwrite, sums, &stamp)?;
                ctx.console.say(&format!("wrote {}", dest.display()));
                outputs.push(dest);
                Ok(())
            })?;
        }
        Ok(())
    }
}

/// The stamp an old output is renamed with when it is kept.
fn timestamp() -> String {
    Cmd::new("date")
        .arg("+%Y.%m.%d-%H.%M.%S")
        .run()
        .map_or_else(|_| "old".into(), |o| o.stdout_str().trim().to_string())
}

/// The options of the disk conversions: compression, `--qemu-img-options` (or
/// `QEMU_IMG_OPTIONS`), kiln's own qcow2 level.
fn disk_options(req: &crate::BuildRequest) -> Result<kiln_output::DiskOptions, Error> {
    Ok(kiln_output::DiskOptions {
        compress: !req.uncompressed,
        qemu_img_options: req
            .qemu_img_options
            .clone()
            .or_else(|| req.var(settings::QEMU_IMG_OPTIONS.name).map(String::from)),
        qcow2_level: req.qcow2_level()?,
    })
}
