//! Disk formats written by `qemu-img convert` from the raw image: `vmdk`, `vhd` (qemu-img's
//! `vpc` driver), `vdi`, `qed`, `vhdx`, and `qcow2` when kiln's own writer does not apply.
//!
//! The conversion runs with 16 coroutines and out-of-order writes (`-m 16 -W`) so that qcow2
//! compression uses every core; `--qemu-img-options` are passed as `-o`. Out-of-order writes
//! place clusters in the order their coroutines finish, so with `SOURCE_DATE_EPOCH` set
//! (reproducible output) kiln leaves `-W` out: the file is then the same for the same disk.

use std::path::Path;

use kiln_host::Cmd;

use crate::{Options, Producer, Result};

/// A producer converting with `qemu-img convert -O <driver>`.
#[derive(Debug)]
pub struct QemuImg {
    /// qemu-img's name of the format (`vpc` for `vhd`).
    pub driver: &'static str,
}

impl QemuImg {
    /// Converts `raw` to `pending`; `compress` adds `-c` (qcow2 only).
    pub(crate) fn convert(
        &self,
        raw: &Path,
        pending: &Path,
        opts: &Options,
        compress: bool,
    ) -> Result<()> {
        let mut cmd = Cmd::new("qemu-img").arg("convert");
        if compress {
            cmd = cmd.arg("-c");
        }
        cmd = cmd.args(["-m", "16"]);
        if opts.source_date_epoch.is_none() {
            cmd = cmd.arg("-W");
        }
        cmd = cmd.args(["-f", "raw", "-O", self.driver]);
        if let Some(o) = opts.qemu_img_options.as_deref().filter(|o| !o.is_empty()) {
            cmd = cmd.arg("-o").arg(o);
        }
        cmd.arg(raw).arg(pending).run()?;
        Ok(())
    }
}

impl Producer for QemuImg {
    fn produce(&self, raw: &Path, pending: &Path, opts: &Options) -> Result<()> {
        self.convert(raw, pending, opts, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{qemu_img_compare, sparse_disk};
    use crate::{pending_path, produce, OutputType, FORMATS};

    #[test]
    fn every_qemu_img_format_holds_the_disk() {
        if !kiln_host::tools::installed("qemu-img") {
            kiln_testkit::skip(
                "qemu_img::every_qemu_img_format_holds_the_disk",
                "qemu-img is not installed",
            );
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let disk = sparse_disk(d.path());
        let opts = Options {
            compress: true,
            qcow2_level: None,
            ..Options::default()
        };
        let mut seen = Vec::new();
        for f in FORMATS.iter().filter(|f| f.is_supported()) {
            let ty = OutputType::parse(f.name).unwrap();
            // incus-vm is a directory holding a qcow2 (incus.rs tests it).
            if ty.source() != crate::Source::Disk
                || ty.format().moves_source
                || f.name == "incus-vm"
            {
                continue;
            }
            let dest = d.path().join(format!("img.{}", f.extension));
            produce(ty, &disk, &dest, &opts).unwrap();
            let info = kiln_host::json::qemu_img_info(&pending_path(&dest)).unwrap();
            // vhd rounds the size up to a whole disk geometry.
            assert!(info.virtual_size >= 8 << 20, "{}", f.name);
            qemu_img_compare(&disk, &pending_path(&dest));
            seen.push(info.format);
        }
        for driver in ["vmdk", "vpc", "vdi", "qcow2"] {
            assert!(seen.iter().any(|s| s == driver), "{driver} in {seen:?}");
        }
    }
}
