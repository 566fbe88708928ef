//! Creating the planned block devices, and tearing them down again.
//!
//! Creation walks the plan's nodes in order. Every step that leaves something behind (an
//! attached loop device, partition nodes, an active volume group, a mount) pushes its undo
//! onto a stack; teardown pops that stack, so it always runs in exact reverse order, on every
//! path: an explicit [`Created::umount`], a rollback when creation fails midway, and the
//! best-effort [`Drop`] safety net. Teardown never stops at the first failure: it undoes all
//! it can and reports the rest.
//!
//! A filesystem the running kernel cannot mount (vfat on a kernel without it) is not mounted.
//! Its mount point is left as a plain directory in the parent filesystem; at teardown the
//! directory's contents are copied into the filesystem with mtools, and the directory is
//! emptied, so files placed there end up where they would have with a real mount.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, TeardownError};
use crate::layout::TableLabel;
use crate::mbr::{self, MbrPart};
use crate::node::{is_fat, Node, NodeKind};
use crate::plan::{losetup_argv, lv_device, lvcreate_argv, mkfs_argv, vgcreate_argv, Plan};
use crate::remake::{self, MkfsSpec, Remake};
use kiln_host::Runner;

/// How many times `umount` is retried (1 s apart) before a lazy unmount.
const UMOUNT_RETRIES: u32 = 9;
/// How many times `losetup -d` and `partx -d` are tried.
const DETACH_TRIES: u32 = 3;

/// One thing to undo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "undo", rename_all = "snake_case")]
enum Undo {
    Detach { device: String },
    PartxDelete { device: String },
    DeactivateVg { vg: String },
    DeactivateLv { vg: String, lv: String },
    Unmount { target: PathBuf, fstype: String },
    CopyIntoFat { dir: PathBuf, device: String },
}

/// A mounted (or offline-filled) filesystem of a [`Created`] image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountInfo {
    /// The mount point inside the image.
    pub mount_point: String,
    /// Where it is on the host.
    pub target: PathBuf,
    /// The block device.
    pub device: String,
    /// The filesystem type.
    pub fstype: String,
    /// True when the kernel cannot mount it and `target` is a plain directory whose contents
    /// are copied in at teardown.
    pub offline: bool,
}

/// The block devices of a created image: what exists, and how to take it down.
///
/// Call [`Created::umount`] when done. If it is dropped without that, [`Drop`] runs the same
/// teardown as a best-effort safety net and logs what it could not undo.
pub struct Created {
    source: String,
    devices: Vec<(String, String)>,
    image_path: PathBuf,
    image_device: String,
    fstab: String,
    mounts: Vec<MountInfo>,
    undo: Vec<Undo>,
    /// How each mounted filesystem was made, for [`Created::umount_reproducibly`].
    specs: Vec<MkfsSpec>,
    drop_runner: Option<Box<dyn Runner + Send>>,
}

impl std::fmt::Debug for Created {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Created")
            .field("source", &self.source)
            .field("devices", &self.devices)
            .field("image_path", &self.image_path)
            .field("mounts", &self.mounts)
            .field("undo", &self.undo)
            .finish_non_exhaustive()
    }
}

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

/// The device node of partition `number` of `device` (`/dev/loop0` → `/dev/loop0p1`,
/// `/dev/sda` → `/dev/sda1`).
pub fn partition_device(device: &str, number: u32) -> String {
    if device.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{device}p{number}")
    } else {
        format!("{device}{number}")
    }
}

impl Plan {
    /// Creates the image: loop devices, partitions, LVM, filesystems and mounts, in order.
    ///
    /// On failure, everything created so far is torn down in reverse before the error is
    /// returned. The image file itself is kept (it is converted afterwards, or removed with
    /// the image directory).
    pub fn create(&self, runner: &mut dyn Runner) -> Result<Created, Error> {
        for n in &self.nodes {
            if let NodeKind::LocalLoop { size, .. } = &n.kind {
                if size.or(self.params.image_size).is_none() {
                    return Err(Error::ImageSizeUnknown {
                        config: self.source.clone(),
                        node: n.name.clone(),
                    });
                }
            }
        }
        if self.uses_lvm() && !runner.has_device_mapper() {
            return Err(Error::NoDeviceMapper);
        }
        let image_path = match self.node("image0").map(|n| &n.kind) {
            Some(NodeKind::LocalLoop { image_path, .. }) => image_path.clone(),
            _ => PathBuf::new(),
        };
        let mut st = Created {
            source: self.source.clone(),
            devices: Vec::new(),
            image_path,
            image_device: String::new(),
            fstab: self.fstab(),
            mounts: Vec::new(),
            undo: Vec::new(),
            specs: Vec::new(),
            drop_runner: None,
        };
        for n in &self.nodes {
            tracing::debug!(node = %n.name, kind = n.kind_name(), "create");
            if let Err(e) = self.create_node(n, runner, &mut st) {
                tracing::error!(
                    "creating block device node `{}` failed: {e}; rolling back",
                    n.name
                );
                let undo = std::mem::take(&mut st.undo);
                return match teardown(undo, runner, None) {
                    Ok(()) => Err(e),
                    Err(rollback) => Err(Error::RollbackFailed {
                        cause: Box::new(e),
                        rollback,
                    }),
                };
            }
        }
        st.drop_runner = runner.boxed_clone();
        Ok(st)
    }

    fn create_node(
        &self,
        n: &Node,
        runner: &mut dyn Runner,
        st: &mut Created,
    ) -> Result<(), Error> {
        match &n.kind {
            NodeKind::LocalLoop {
                size,
                image_path,
                block_size,
            } => {
                let size = size.or(self.params.image_size).unwrap_or_default();
                runner.create_sparse_file(image_path, size)?;
                let out = runner.run(&losetup_argv(image_path, *block_size))?;
                let device = out.stdout.lines().next().unwrap_or("").trim().to_owned();
                if device.is_empty() {
                    return Err(Error::NoLoopDevice {
                        image: image_path.clone(),
                    });
                }
                st.undo.push(Undo::Detach {
                    device: device.clone(),
                });
                if n.name == "image0" {
                    st.image_device.clone_from(&device);
                }
                st.devices.push((n.name.clone(), device));
            }
            NodeKind::PartitionTable { label, disk_id, .. } => {
                self.create_table(n, *label, disk_id, runner, st)?;
            }
            NodeKind::Partition { table, number, .. } => {
                let table_node = self.node(table).expect("tables exist");
                let device = st.device_of(&table_node.base[0]);
                st.devices
                    .push((n.name.clone(), partition_device(&device, *number)));
            }
            NodeKind::LvmPv { options } => {
                let mut v = argv(&["pvcreate"]);
                v.extend(options.iter().cloned());
                v.push(st.device_of(&n.base[0]));
                runner.run(&v)?;
            }
            NodeKind::LvmVg { pvs, options } => {
                let devs: Vec<String> = pvs
                    .iter()
                    .filter_map(|p| self.node(p))
                    .map(|p| st.device_of(&p.base[0]))
                    .collect();
                runner.run(&vgcreate_argv(&n.name, options, &devs))?;
                st.undo.push(Undo::DeactivateVg { vg: n.name.clone() });
            }
            NodeKind::LvmLv { vg, .. } => {
                runner.run(&lvcreate_argv(&n.name, vg, &n.kind))?;
                st.undo.push(Undo::DeactivateLv {
                    vg: vg.clone(),
                    lv: n.name.clone(),
                });
                st.devices.push((n.name.clone(), lv_device(vg, &n.name)));
            }
            NodeKind::Mkfs {
                fstype,
                label,
                opts,
                uuid,
            } => {
                let device = st.device_of(&self.device_node_of(n).name);
                runner.run(&mkfs_argv(fstype, label, opts, uuid, &device))?;
            }
            NodeKind::Mount {
                mount_point,
                target,
            } => self.create_mount(n, mount_point, target, runner, st)?,
            NodeKind::Fstab { .. } => {}
        }
        Ok(())
    }

    /// Writes a partition table (MBR by kiln itself, GPT with sgdisk) and makes the kernel
    /// see its partitions.
    fn create_table(
        &self,
        n: &Node,
        label: TableLabel,
        disk_id: &str,
        runner: &mut dyn Runner,
        st: &mut Created,
    ) -> Result<(), Error> {
        let device = st.device_of(&n.base[0]);
        let layout = self
            .layouts
            .get(&n.name)
            .expect("a plan with a known size has a layout for every table");
        match label {
            TableLabel::Mbr => {
                let parts: Vec<MbrPart> = self
                    .partitions_of(n)
                    .iter()
                    .map(|p| match &p.kind {
                        NodeKind::Partition { boot, ptype, .. } => MbrPart {
                            boot: *boot,
                            ptype: u8::from_str_radix(ptype.trim_start_matches("0x"), 16)
                                .unwrap_or(0x83),
                        },
                        _ => unreachable!("partitions are partitions"),
                    })
                    .collect();
                let id = u32::from_str_radix(disk_id.trim_start_matches("0x"), 16).unwrap_or(1);
                for (offset, record) in mbr::encode(layout, &parts, id) {
                    runner.write_at(Path::new(&device), offset, &record)?;
                }
            }
            TableLabel::Gpt => {
                runner.run(&self.sgdisk_argv(n, &device))?;
            }
        }
        st.undo.push(Undo::PartxDelete {
            device: device.clone(),
        });
        let expected: Vec<String> = self
            .partitions_of(n)
            .iter()
            .filter_map(|p| match p.kind {
                NodeKind::Partition { number, .. } => Some(partition_device(&device, number)),
                _ => None,
            })
            .collect();
        add_partitions(runner, &device, &expected)?;
        Ok(())
    }

    /// Mounts a filesystem (or, where the kernel cannot mount it, a tmpfs copied into it
    /// offline at teardown); swap is not mounted.
    fn create_mount(
        &self,
        n: &Node,
        mount_point: &str,
        target: &Path,
        runner: &mut dyn Runner,
        st: &mut Created,
    ) -> Result<(), Error> {
        if self.is_swap_mount(n) {
            return Ok(());
        }
        let fstype = match self.base_node(n).map(|b| &b.kind) {
            Some(NodeKind::Mkfs { fstype, .. }) => fstype.clone(),
            _ => String::new(),
        };
        let device = st.device_of(&self.device_node_of(n).name);
        if let Some(NodeKind::Mkfs {
            fstype,
            label,
            opts,
            uuid,
        }) = self.base_node(n).map(|b| &b.kind)
        {
            st.specs.push(MkfsSpec {
                target: target.to_path_buf(),
                fstype: fstype.clone(),
                label: label.clone(),
                opts: opts.clone(),
                uuid: uuid.clone(),
                device: device.clone(),
            });
        }
        let t = target.display().to_string();
        runner.run(&argv(&["mkdir", "-p", &t]))?;
        let offline = !runner.kernel_can_mount(&fstype);
        if offline {
            if !is_fat(&fstype) {
                return Err(Error::CannotMount {
                    node: n.name.clone(),
                    fstype,
                });
            }
            // The copy happens at teardown; make sure it can, before anything is
            // written into the directory.
            if let Err(e) = runner.run(&argv(&["mcopy", "--version"])) {
                return Err(Error::NoMtools {
                    node: n.name.clone(),
                    reason: e.to_string(),
                });
            }
            tracing::info!(
                "the kernel cannot mount {fstype}: {t} is a tmpfs whose contents are \
                 copied into {device} at teardown"
            );
            // A tmpfs whose source is the partition device: tools that insist the
            // directory is a mount point of that device (grub-install's EFI checks read
            // the device from mountinfo and probe it themselves) are satisfied, and the
            // files land outside the parent filesystem.
            runner.run(&argv(&[
                "mount",
                "-t",
                "tmpfs",
                "-o",
                "mode=0755",
                &device,
                &t,
            ]))?;
            st.undo.push(Undo::Unmount {
                target: target.to_path_buf(),
                fstype: "tmpfs".to_owned(),
            });
            st.undo.push(Undo::CopyIntoFat {
                dir: target.to_path_buf(),
                device: device.clone(),
            });
        } else {
            runner.run(&argv(&["mount", &device, &t]))?;
            st.undo.push(Undo::Unmount {
                target: target.to_path_buf(),
                fstype: fstype.clone(),
            });
        }
        st.mounts.push(MountInfo {
            mount_point: mount_point.to_owned(),
            target: target.to_path_buf(),
            device,
            fstype,
            offline,
        });
        Ok(())
    }
}

/// Makes the kernel see the partitions: `partx -a`, then `partx -u` if nodes are missing,
/// then a short wait for the nodes.
fn add_partitions(runner: &mut dyn Runner, device: &str, expected: &[String]) -> Result<(), Error> {
    let added = runner.run(&argv(&["partx", "-a", device]));
    let all_there = |r: &mut dyn Runner| expected.iter().all(|p| r.path_exists(Path::new(p)));
    if added.is_err() || !all_there(runner) {
        if let Err(e) = &added {
            tracing::debug!("partx -a failed ({e}); trying partx -u");
        }
        let updated = runner.run(&argv(&["partx", "-u", device]));
        if let (Err(first), Err(_)) = (added, updated) {
            return Err(first.into());
        }
    }
    for _ in 0..20 {
        if all_there(runner) {
            return Ok(());
        }
        runner.sleep(Duration::from_millis(100));
    }
    let missing = expected
        .iter()
        .find(|p| !runner.path_exists(Path::new(p.as_str())))
        .cloned()
        .unwrap_or_default();
    Err(Error::PartitionDeviceMissing { device: missing })
}

/// Runs a command up to `tries` times, 1 s apart.
fn retry(runner: &mut dyn Runner, cmd: &[String], tries: u32) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..tries {
        match runner.run(cmd) {
            Ok(_) => return Ok(()),
            Err(e) => {
                last = e.to_string();
                if attempt + 1 < tries {
                    runner.sleep(Duration::from_secs(1));
                }
            }
        }
    }
    Err(last)
}

/// The filesystems to make again after their unmount, with what they were made with.
struct Remaking<'a> {
    remake: &'a Remake,
    specs: &'a [MkfsSpec],
}

impl Remaking<'_> {
    /// The spec and tree of the filesystem mounted at `target`, when it is to be made again.
    fn of(&self, target: &Path) -> Option<(&MkfsSpec, &Path)> {
        let tree = self.remake.tree_for(target)?;
        let spec = self.specs.iter().find(|s| s.target == target)?;
        Some((spec, tree))
    }
}

/// Makes one filesystem again from `tree` (see [`crate::remake`]): discard (or zeroes), then
/// mke2fs or mkfs.vfat and mtools.
fn remake_fs(
    runner: &mut dyn Runner,
    spec: &MkfsSpec,
    tree: &Path,
    epoch: u64,
) -> Result<(), String> {
    if let Err(e) = runner.run(&remake::discard_argv(&spec.device)) {
        tracing::info!("discarding {} failed ({e}); writing zeroes", spec.device);
        runner
            .run(&remake::zero_argv(&spec.device))
            .map_err(|e| e.to_string())?;
    }
    if is_fat(&spec.fstype) {
        runner
            .run(&remake::mkfs_vfat_argv(spec, epoch))
            .map_err(|e| e.to_string())?;
        let cmds = remake::fat_fill_argvs(tree, &spec.device, epoch)
            .map_err(|e| format!("read {}: {e}", tree.display()))?;
        for cmd in cmds {
            runner.run(&cmd).map_err(|e| e.to_string())?;
        }
    } else {
        runner
            .run(&remake::mke2fs_argv(spec, tree, epoch))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Undoes in reverse order, continuing past failures. With `remaking`, each filesystem it
/// names is made again from its tree right after its unmount, instead of being filled offline.
fn teardown(
    mut undo: Vec<Undo>,
    runner: &mut dyn Runner,
    remaking: Option<&Remaking<'_>>,
) -> Result<(), TeardownError> {
    let mut failures = Vec::new();
    while let Some(step) = undo.pop() {
        tracing::debug!(?step, "teardown");
        match step {
            Undo::CopyIntoFat { dir, .. } if remaking.is_some_and(|r| r.of(&dir).is_some()) => {
                // Made again from its tree after the unmount below.
            }
            Undo::Unmount { target, fstype } => {
                let t = target.display().to_string();
                if let Err(e) = runner.run(&argv(&["sync"])) {
                    tracing::warn!("sync failed: {e}");
                }
                if !is_fat(&fstype) && fstype != "tmpfs" {
                    if let Err(e) = runner.run(&argv(&["fstrim", "--verbose", &t])) {
                        tracing::debug!("fstrim {t} failed (ignored): {e}");
                    }
                }
                let mut unmounted = true;
                if let Err(e) = retry(runner, &argv(&["umount", &t]), UMOUNT_RETRIES + 1) {
                    tracing::warn!("umount {t} kept failing ({e}); unmounting lazily");
                    unmounted = false;
                    if let Err(e) = runner.run(&argv(&["umount", "-l", &t])) {
                        failures.push(format!("unmount {t}: {e}"));
                    }
                }
                if let Some((spec, tree)) = remaking.and_then(|r| r.of(&target)) {
                    let epoch = remaking.map_or(0, |r| r.remake.epoch);
                    if !unmounted {
                        // A lazily unmounted filesystem may still be written: never remake it.
                        failures.push(format!(
                            "make the {} filesystem on {} again: it did not unmount cleanly",
                            spec.fstype, spec.device
                        ));
                    } else if let Err(e) = remake_fs(runner, spec, tree, epoch) {
                        failures.push(format!(
                            "make the {} filesystem on {} again from {}: {e}",
                            spec.fstype,
                            spec.device,
                            tree.display()
                        ));
                    }
                }
            }
            Undo::CopyIntoFat { dir, device } => {
                let d = dir.display().to_string();
                match runner.list_dir(&dir) {
                    Ok(entries) if entries.is_empty() => {}
                    Ok(entries) => {
                        let mut cmd = argv(&["mcopy", "-s", "-o", "-i", &device]);
                        cmd.extend(entries.iter().map(|e| e.display().to_string()));
                        cmd.push("::/".to_owned());
                        match runner.run(&cmd) {
                            Ok(_) => {
                                if let Err(e) = runner.run(&argv(&["sync"])) {
                                    tracing::warn!("sync failed: {e}");
                                }
                                if let Err(e) =
                                    runner.run(&argv(&["find", &d, "-mindepth", "1", "-delete"]))
                                {
                                    failures.push(format!(
                                        "empty {d} after copying it into {device}: {e}"
                                    ));
                                }
                            }
                            Err(e) => failures.push(format!(
                                "copy the contents of {d} into the vfat filesystem on {device}: {e}"
                            )),
                        }
                    }
                    Err(e) => failures.push(format!("list {d} to copy it into {device}: {e}")),
                }
            }
            Undo::DeactivateLv { vg, lv } => {
                if let Err(e) = runner.run(&argv(&["lvchange", "-an", &format!("{vg}/{lv}")])) {
                    failures.push(format!("deactivate logical volume {vg}/{lv}: {e}"));
                }
            }
            Undo::DeactivateVg { vg } => {
                if let Err(e) = runner.run(&argv(&["vgchange", "-an", &vg])) {
                    failures.push(format!("deactivate volume group {vg}: {e}"));
                }
            }
            Undo::PartxDelete { device } => {
                if let Err(e) = retry(runner, &argv(&["partx", "-d", &device]), DETACH_TRIES) {
                    failures.push(format!("remove the partition devices of {device}: {e}"));
                }
            }
            Undo::Detach { device } => {
                if let Err(e) = retry(runner, &argv(&["losetup", "-d", &device]), DETACH_TRIES) {
                    failures.push(format!("detach loop device {device}: {e}"));
                }
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        for f in &failures {
            tracing::error!("teardown: could not {f}");
        }
        Err(TeardownError { failures })
    }
}

impl Created {
    fn device_of(&self, node: &str) -> String {
        self.devices
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, d)| d.clone())
            .unwrap_or_default()
    }

    /// The block device of a node (`image0` → `/dev/loop0`, `root` → `/dev/loop0p1`).
    pub fn device(&self, node: &str) -> Option<&str> {
        self.devices
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, d)| d.as_str())
    }

    /// Every node that has a block device, with it, in creation order.
    pub fn devices(&self) -> &[(String, String)] {
        &self.devices
    }

    /// The image file of `image0` (DIB's `getval image-path`).
    pub fn image_path(&self) -> &Path {
        &self.image_path
    }

    /// The loop device of `image0` (DIB's `getval image-block-device`).
    pub fn image_block_device(&self) -> &str {
        &self.image_device
    }

    /// DIB's `getval image-block-devices`: ` [image0]=/dev/loop0 [root]=/dev/loop0p1 `, ready
    /// for `eval DEVICES=( $IMAGE_BLOCK_DEVICES )`.
    pub fn image_block_devices(&self) -> String {
        let items: Vec<String> = self
            .devices
            .iter()
            .map(|(n, d)| format!("[{n}]={d}"))
            .collect();
        format!(" {} ", items.join(" "))
    }

    /// The filesystems, in mount order.
    pub fn mounts(&self) -> &[MountInfo] {
        &self.mounts
    }

    /// The fstab text of the plan.
    pub fn fstab(&self) -> &str {
        &self.fstab
    }

    /// Writes the fstab (DIB's `writefstab`), replacing the file; its directory is created.
    pub fn write_fstab(&self, etc_fstab: &Path) -> Result<(), Error> {
        let io = |p: &Path, source| Error::Io {
            path: p.to_path_buf(),
            source,
        };
        if let Some(dir) = etc_fstab.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        std::fs::write(etc_fstab, &self.fstab).map_err(|e| io(etc_fstab, e))
    }

    /// The state as JSON: devices, mounts, and what teardown will undo.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "source": self.source,
            "image_path": self.image_path,
            "image_block_device": self.image_device,
            "image_block_devices": self.image_block_devices(),
            "devices": self.devices,
            "mounts": self.mounts,
            "undo": self.undo,
        })
    }

    /// Tears everything down in reverse order of creation: for mounts `sync`, `fstrim`,
    /// `umount` (retried, then lazy); offline vfat filesystems get their directory copied in;
    /// then `partx -d` and `losetup -d`. The image file is kept. Keeps going past failures
    /// and reports all of them.
    pub fn umount(mut self, runner: &mut dyn Runner) -> Result<(), TeardownError> {
        let undo = std::mem::take(&mut self.undo);
        teardown(undo, runner, None)
    }

    /// [`Created::umount`], and every filesystem `remake` gives a tree for is made again from
    /// that tree right after its unmount, with every byte fixed ([`crate::remake`]); an offline
    /// vfat given a tree is made from it instead of being filled from its directory. A
    /// filesystem that cannot be made again ([`crate::can_remake`]) or did not unmount cleanly
    /// is a failure. The trees must hold each filesystem's final content (nothing of the
    /// filesystems mounted below it).
    pub fn umount_reproducibly(
        mut self,
        runner: &mut dyn Runner,
        remake: &Remake,
    ) -> Result<(), TeardownError> {
        let undo = std::mem::take(&mut self.undo);
        let mut failures = Vec::new();
        for (target, _) in &remake.trees {
            match self.specs.iter().find(|s| &s.target == target) {
                Some(s) if remake::can_remake(&s.fstype) => {}
                Some(s) => failures.push(format!(
                    "make the {} filesystem on {} again: kiln cannot make {} reproducibly",
                    s.fstype, s.device, s.fstype
                )),
                None => failures.push(format!(
                    "make the filesystem mounted at {} again: no filesystem of the image is \
                     mounted there",
                    target.display()
                )),
            }
        }
        if !failures.is_empty() {
            // Nothing is remade: tear down as usual and report.
            let _ = teardown(undo, runner, None);
            return Err(TeardownError { failures });
        }
        let remaking = Remaking {
            remake,
            specs: &self.specs,
        };
        teardown(undo, runner, Some(&remaking))
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        if self.undo.is_empty() {
            return;
        }
        let undo = std::mem::take(&mut self.undo);
        let Some(mut runner) = self.drop_runner.take() else {
            tracing::error!(
                "block devices of {} were not torn down and no runner is left to do it: {:?}",
                self.image_path.display(),
                undo
            );
            return;
        };
        tracing::warn!(
            "block devices of {} were not torn down; tearing them down now",
            self.image_path.display()
        );
        if let Err(e) = teardown(undo, runner.as_mut(), None) {
            tracing::error!("{e}");
        }
    }
}

impl Created {
    /// Host paths of everything mounted for the image (the staging tmpfs of offline
    /// filesystems included), so callers can tell them from other mounts below the mount base.
    pub fn mounted_paths(&self) -> Vec<PathBuf> {
        self.mounts().iter().map(|m| m.target.clone()).collect()
    }
}
