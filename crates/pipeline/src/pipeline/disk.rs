//! The disk stage: the tree moved aside, the image sized, block-device.d run, the block devices
//! created and the fstab written, the tree copied into the image once; after finalise, the
//! image unmounted (offline filesystems filled, loop device detached).
//!
//! With `SOURCE_DATE_EPOCH` set the image is made reproducible: a filesystem that was mounted
//! read-write never is (block placement, mount and write times, deleted data in free blocks),
//! so before the unmount each filesystem's final content is copied out (`cp -ax`, on the
//! build's tmpfs; a filesystem mounted below another is its own tree) and its times clamped,
//! and the unmount makes each ext2/3/4 and vfat filesystem again from its tree, offline, with
//! every byte fixed ([`kiln_blockdev::Created::umount_reproducibly`]). Filesystems kiln cannot
//! make that way (xfs, btrfs, …) stay as they are, with a warning: the image is then not
//! reproducible.

use std::fs;
use std::path::{Path, PathBuf};

use kiln_element::Phase;
use kiln_host::Cmd;

use super::preflight::blockdev_params;
use super::Ctx;
use crate::host::Host;
use crate::{io, settings, Error};

impl Ctx<'_> {
    /// Everything from the finished tree to a mounted image holding it: steps `size`,
    /// `block-device` (the phase), `block-device-create`, `copy-into-image`.
    pub(super) fn make_image(&mut self) -> Result<(), Error> {
        let mnt = self.ws.mnt();
        let built = self.ws.build_dir.join("built");
        fs::rename(&mnt, &built).map_err(io(&mnt))?;
        fs::create_dir_all(&mnt).map_err(io(&mnt))?;

        // Size (reference 4.5), with --image-extra-size and --mkfs-journal-size working.
        let bp = self.step("size", |ctx| ctx.size_layout(&built))?;

        // Legacy block-device.d hooks may hand over a device themselves.
        let legacy = self.run_phase_capture(Phase::BlockDevice, "IMAGE_BLOCK_DEVICE=")?;
        if let Some(line) = legacy.last() {
            return Err(Error::Step {
                step: "block-device.d".into(),
                message: format!("a hook set {line}; kiln does not support block-device.d hooks that create their own device yet: use a block-device-*.yaml layout instead"),
            });
        }
        self.step("block-device-create", |ctx| ctx.create_devices(&bp))?;
        let created = self.ws.blockdev.as_ref().expect("just set");
        created.write_fstab(&crate::in_image::path(&built, "etc/fstab")?)?;

        // One copy of the tree into the image filesystem.
        self.step("copy-into-image", |ctx| {
            copy_tree(ctx.ws.host.as_mut(), &built, &mnt)?;
            // As DIB does: the tree now lives in the image; free the memory it held.
            let _ = fs::remove_dir_all(&built);
            Ok(())
        })
    }

    /// Measures the tree and plans the block devices at the size it needs; sets
    /// `DIB_IMAGE_SIZE` (KiB) for the hooks.
    fn size_layout(&mut self, built: &Path) -> Result<kiln_blockdev::Plan, Error> {
        let plan = self.plan;
        let du = du_kib(self.ws.host.as_mut(), built)?;
        let req = &plan.request;
        let fs_type = self
            .env
            .get(settings::FS_TYPE.name)
            .cloned()
            .unwrap_or_else(|| settings::FS_TYPE.default_value().into());
        // environment.d may have set the sizes too: checked again here, never ignored.
        let sizes = crate::request::DiskSizes::from_env(&|name| {
            self.env.get(name).filter(|v| !v.is_empty()).cloned()
        })?;
        let opts = kiln_blockdev::SizeOpts {
            image_size_gb: sizes.image_size_gb,
            extra_size_mb: sizes.extra_size_mb,
            journal_size_mb: sizes.journal_size_mb,
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
        let size_bytes = size_kib
            .checked_mul(1024)
            .filter(|b| *b <= crate::request::MAX_IMAGE_BYTES)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "the image would be {size_kib} KiB, more than kiln's limit of {} bytes; set a smaller --image-size or --image-extra-size",
                    crate::request::MAX_IMAGE_BYTES
                ))
            })?;
        let mut params = blockdev_params(
            plan,
            &self.ws.build_dir,
            &self.ws.image_dir,
            Some(size_bytes),
        );
        params.root_fs_opts = Some(mkfs_opts.trim().to_string());
        // The identifiers' seed: the user's, else the output key (a digest of every input), so
        // the same inputs give the same identifiers and other inputs others.
        if params.seed.is_none() {
            params.seed.clone_from(&self.out_key);
        }
        Ok(kiln_blockdev::plan(
            &plan.block_device.1,
            &plan.block_device.0.describe(),
            &params,
        )?)
    }

    /// Creates the image and its block devices (the runner tells the watchdog the loop device), and sets
    /// `IMAGE_BLOCK_DEVICE(S)` for the hooks.
    fn create_devices(&mut self, bp: &kiln_blockdev::Plan) -> Result<(), Error> {
        let created = bp.create(self.ws.host.runner())?;
        // The watchdog was told the loop device by the host's runner the moment it was
        // attached (see `host::SystemHost`).
        self.env.insert(
            settings::IMAGE_BLOCK_DEVICE.name.into(),
            created.image_block_device().to_string(),
        );
        self.env.insert(
            settings::IMAGE_BLOCK_DEVICES.name.into(),
            created.image_block_devices(),
        );
        self.ws.blockdev = Some(created);
        Ok(())
    }

    /// Unmounts the image (this copies offline filesystems in and detaches the loop device),
    /// keeping the raw file for conversion (step `block-device-umount`). Returns the raw file.
    pub(super) fn release_image(&mut self) -> Result<PathBuf, Error> {
        let remake = match self.plan.request.source_date_epoch()? {
            Some(epoch) => Some(self.step("reproducible-trees", |ctx| ctx.copy_out(epoch))?),
            None => None,
        };
        self.step("block-device-umount", |ctx| {
            let created = ctx.ws.blockdev.take().expect("created above");
            let raw = created.image_path().to_path_buf();
            match &remake {
                Some(r) => created.umount_reproducibly(ctx.ws.host.runner(), r)?,
                None => created.umount(ctx.ws.host.runner())?,
            }
            if let Some(r) = &remake {
                for (_, tree) in &r.trees {
                    let _ = fs::remove_dir_all(tree);
                }
            }
            Ok(raw)
        })
    }

    /// Copies each filesystem of the mounted image that kiln can make again reproducibly into
    /// its own tree under `BUILD_DIR/repro/` (step `reproducible-trees`), with its times
    /// clamped to `epoch`; warns about the others.
    fn copy_out(&mut self, epoch: u64) -> Result<kiln_blockdev::Remake, Error> {
        let base = self.ws.build_dir.join("repro");
        let mounts = self
            .ws
            .blockdev
            .as_ref()
            .map(|c| c.mounts().to_vec())
            .unwrap_or_default();
        let mut trees = Vec::new();
        for (i, m) in mounts.iter().enumerate() {
            if !kiln_blockdev::can_remake(&m.fstype) {
                let msg = format!(
                    "warning: the {} filesystem at {} cannot be made reproducibly (only ext2/3/4 and vfat can): the disk image will differ from build to build",
                    m.fstype, m.mount_point
                );
                tracing::warn!("{msg}");
                self.console.say(&msg);
                continue;
            }
            let tree = base.join(i.to_string());
            fs::create_dir_all(&tree).map_err(io(&tree))?;
            let cmd = Cmd::new("cp")
                .args([
                    "-a",
                    "--preserve=all",
                    "--one-file-system",
                    "--no-target-directory",
                ])
                .arg(&m.target)
                .arg(&tree);
            self.ws.host.run(&cmd).map_err(|e| Error::Step {
                step: "reproducible-trees".into(),
                message: e.to_string(),
            })?;
            let mut problems = Vec::new();
            crate::in_image::clamp_times(&tree, epoch, &mut problems);
            for p in problems {
                self.console
                    .say(&format!("warning: reproducible-trees: {p}"));
            }
            trees.push((m.target.clone(), tree));
        }
        Ok(kiln_blockdev::Remake { epoch, trees })
    }
}

fn du_kib(host: &mut dyn Host, dir: &Path) -> Result<u64, Error> {
    let cmd = Cmd::new("du").args(["-s", "-k", "-x"]).arg(dir);
    let out = host.output(&cmd).map_err(|e| Error::Step {
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
fn copy_tree(host: &mut dyn Host, from: &Path, to: &Path) -> Result<(), Error> {
    let cmd = Cmd::new("cp")
        .arg("-a")
        .arg("--preserve=all")
        .arg("--no-target-directory")
        .arg(from)
        .arg(to);
    host.run(&cmd).map(|_| ()).map_err(|e| Error::Step {
        step: "copy-into-image".into(),
        message: e.to_string(),
    })
}
