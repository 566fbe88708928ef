//! Preflight: before anything runs, check that this host can build the plan (every tool
//! installed, the layout valid, device-mapper for LVM, binfmt for a foreign architecture), and
//! the block-device parameters the checks and the disk stage share.

use std::path::Path;

use crate::plan::BuildPlan;
use crate::{settings, Error};

/// Checks, before anything runs, that the host can build this plan: every tool it will use is
/// installed (one message lists all that are missing, exit 2), the block-device layout is valid,
/// device-mapper is there for LVM, and a foreign architecture has its binfmt interpreter.
pub fn preflight(plan: &BuildPlan) -> Result<(), Error> {
    if plan.needs_disk() {
        let bp = layout_plan(plan)?;
        // LVM on a kernel without device-mapper: say so now, not after the phases ran.
        if bp.uses_lvm()
            && !kiln_blockdev::Runner::has_device_mapper(&mut kiln_blockdev::SystemRunner)
        {
            // Like a missing host tool: the request cannot be built here (exit 2).
            return Err(Error::Usage(format!(
                "{}: {}",
                plan.block_device.0.describe(),
                kiln_blockdev::Error::NoDeviceMapper
            )));
        }
    }
    // Installing packages does not give the kernel device-mapper, so that is said first.
    let needs = required_tools(plan)?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing = kiln_host::tools::missing(&needs, &path);
    // A foreign architecture's qemu-user interpreter is checked in binfmt_misc (where the kernel
    // finds it), not on PATH; what is missing there joins the same message.
    match (
        missing.is_empty(),
        kiln_sandbox::check_foreign_arch(&plan.arch),
    ) {
        (true, result) => Ok(result?),
        (false, Ok(())) => Err(Error::Usage(kiln_host::tools::missing_message(&missing))),
        (false, Err(binfmt)) => Err(Error::Usage(format!(
            "{}\nand: {binfmt}",
            kiln_host::tools::missing_message(&missing)
        ))),
    }
}

/// The block-device plan of the layout, with placeholder directories (validates the layout:
/// `kiln plan` calls it too, so a layout `kiln build` would refuse is refused by both).
pub fn layout_plan(plan: &BuildPlan) -> Result<kiln_blockdev::Plan, Error> {
    let params = blockdev_params(
        plan,
        Path::new("/nonexistent"),
        Path::new("/nonexistent"),
        None,
    );
    Ok(kiln_blockdev::plan(
        &plan.block_device.1,
        &plan.block_device.0.describe(),
        &params,
    )?)
}

/// Every host tool the build of `plan` will run, and why: the engine's own (bash, chroot, cp,
/// …), the bootstrap tool of the debootstrap element, zstd for the phase cache, the
/// block-device layout's tools, and each output's.
pub fn required_tools(plan: &BuildPlan) -> Result<Vec<kiln_host::tools::Need>, Error> {
    use kiln_host::tools::Need;
    let req = &plan.request;
    let mut needs = vec![
        Need::new("bash", "hooks"),
        Need::new("chroot", "hooks"),
        Need::new("env", "hooks"),
        Need::new("cp", "copies"),
        Need::new("rm", "cleanup"),
        Need::new("du", "image size"),
        Need::new("date", "timestamps"),
    ];
    if plan.set.elements.iter().any(|e| e.name == "debootstrap") {
        let why = "the debootstrap element";
        needs.push(match req.var("DIB_DEBOOTSTRAP_TOOL") {
            Some(t) if !t.is_empty() => Need::new(t, why),
            _ => Need::new("mmdebstrap", why).or("debootstrap"),
        });
    }
    if !req.no_cache {
        needs.push(Need::new("tar", "the phase cache"));
        needs.push(Need::new("zstd", "the phase cache"));
    }
    if plan.needs_disk() {
        let bp = layout_plan(plan)?;
        let why = format!("the block-device layout {}", plan.block_device.0.describe());
        for (tool, package) in bp.required_programs() {
            let need = Need::new(&tool, &why);
            needs.push(if package.is_empty() {
                need
            } else {
                need.package(package)
            });
        }
        if bp.required_programs().iter().any(|(t, _)| t == "mkfs.vfat")
            && !kiln_host::host_can_mount("vfat")
        {
            needs.push(Need::new("mcopy", "filling vfat offline"));
        }
        needs.push(Need::new("lsattr", "the copy into the image"));
        if req.source_date_epoch()?.is_some() {
            let why = "making the filesystems again reproducibly (SOURCE_DATE_EPOCH)";
            needs.push(Need::new("blkdiscard", why));
            let progs = bp.required_programs();
            if progs.iter().any(|(t, _)| t.starts_with("mkfs.ext")) {
                needs.push(Need::new("mke2fs", why));
            }
            if progs.iter().any(|(t, _)| t == "mkfs.vfat") {
                needs.push(Need::new("mcopy", why));
                needs.push(Need::new("mmd", why));
            }
        }
    }
    let output_opts = plan.output_options()?;
    for ty in &plan.outputs {
        let why = format!("the {} output", ty.name());
        for tool in kiln_output::tools_for(*ty, &output_opts) {
            needs.push(Need::new(tool, &why));
        }
    }
    Ok(needs)
}

/// The block-device layer's parameters for `plan` in these directories (`size` in bytes, once
/// known).
pub(super) fn blockdev_params(
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
            .or_else(|| req.var(settings::ROOT_LABEL.name).map(String::from)),
        root_fs_type: settings::FS_TYPE.get_or_default(&req.env).to_string(),
        root_fs_opts: None,
        block_size: req
            .var(settings::DIB_BLOCK_SIZE.name)
            .and_then(|v| v.parse().ok()),
        // The user's seed; a build without one seeds with its output key (`disk.rs`).
        seed: req.seed().map(String::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BuildRequest;
    use std::path::PathBuf;

    fn tools(elements: &[&str], types: &[&str], no_cache: bool, cache: &Path) -> Vec<String> {
        let req = BuildRequest {
            elements: elements.iter().map(|e| (*e).to_string()).collect(),
            arch: Some("amd64".into()),
            image_name: PathBuf::from("image"),
            types: types.iter().map(|t| (*t).to_string()).collect(),
            image_cache: Some(cache.to_path_buf()),
            no_cache,
            ..BuildRequest::default()
        };
        let plan = BuildPlan::new(&req).unwrap();
        let mut v: Vec<String> = required_tools(&plan)
            .unwrap()
            .into_iter()
            .map(|n| {
                std::iter::once(n.tool)
                    .chain(n.or)
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }

    #[test]
    fn tools_of_an_efi_disk_build() {
        let cache = tempfile::tempdir().unwrap();
        let mut t = tools(
            &["debian-minimal", "block-device-efi"],
            &["vmdk", "raw"],
            false,
            cache.path(),
        );
        // Only where the kernel cannot mount vfat does the build fill it with mtools.
        t.retain(|x| x != "mcopy");
        assert_eq!(
            t,
            [
                "bash",
                "chroot",
                "cp",
                "date",
                "du",
                "env",
                "fstrim",
                "losetup",
                "lsattr",
                "mkdir",
                "mkfs",
                "mkfs.ext4",
                "mkfs.vfat",
                "mmdebstrap|debootstrap",
                "mount",
                "partx",
                "qemu-img",
                "rm",
                "sgdisk",
                "sync",
                "tar",
                "umount",
                "zstd"
            ]
        );
    }

    #[test]
    fn tools_of_a_tar_build_without_the_cache() {
        let cache = tempfile::tempdir().unwrap();
        let t = tools(
            &["debian-minimal"],
            &["tar", "squashfs"],
            true,
            cache.path(),
        );
        assert_eq!(
            t,
            [
                "bash",
                "chroot",
                "cp",
                "date",
                "du",
                "env",
                "mksquashfs",
                "mmdebstrap|debootstrap",
                "rm",
                "tar"
            ]
        );
    }
}
