//! Typed views of the JSON that host tools print, so no caller scrapes their text output.
//!
//! Only the fields kiln reads are declared; the tools add fields between versions and serde
//! ignores the rest. Each type has a [`crate::Cmd`] that produces it.

use std::path::Path;

use serde::Deserialize;

use crate::{Cmd, Error};

/// `lsblk -J -b -o NAME,PATH,SIZE,TYPE,FSTYPE,LABEL,UUID,MOUNTPOINT DEVICE`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Lsblk {
    /// The devices asked about, partitions as their children.
    pub blockdevices: Vec<BlockDevice>,
}

/// One device in [`Lsblk`].
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct BlockDevice {
    /// Kernel name (`loop0p1`).
    pub name: String,
    /// Device path (`/dev/loop0p1`).
    #[serde(default)]
    pub path: Option<String>,
    /// Size in bytes (with `-b`).
    #[serde(default)]
    pub size: Option<u64>,
    /// `loop`, `part`, `lvm`, …
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// Filesystem type.
    #[serde(default)]
    pub fstype: Option<String>,
    /// Filesystem label.
    #[serde(default)]
    pub label: Option<String>,
    /// Filesystem UUID.
    #[serde(default)]
    pub uuid: Option<String>,
    /// Where it is mounted.
    #[serde(default)]
    pub mountpoint: Option<String>,
    /// Partitions and holders.
    #[serde(default)]
    pub children: Vec<BlockDevice>,
}

/// The command that prints [`Lsblk`] for `device`.
pub fn lsblk_cmd(device: &Path) -> Cmd {
    Cmd::new("lsblk")
        .args([
            "-J",
            "-b",
            "-o",
            "NAME,PATH,SIZE,TYPE,FSTYPE,LABEL,UUID,MOUNTPOINT",
        ])
        .arg(device)
}

/// `lsblk` of `device`.
pub fn lsblk(device: &Path) -> Result<Lsblk, Error> {
    lsblk_cmd(device).run_json()
}

/// `sfdisk -J DEVICE`: the partition table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Sfdisk {
    /// The table.
    pub partitiontable: PartitionTable,
}

/// The table in [`Sfdisk`].
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct PartitionTable {
    /// `dos` or `gpt`.
    pub label: String,
    /// Disk identifier (`0x…` for dos, a GUID for gpt).
    #[serde(default)]
    pub id: Option<String>,
    /// Sector size in bytes.
    #[serde(default)]
    pub sectorsize: Option<u64>,
    /// The partitions.
    #[serde(default)]
    pub partitions: Vec<Partition>,
}

/// One partition in [`PartitionTable`].
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Partition {
    /// Device node.
    pub node: String,
    /// First sector.
    pub start: u64,
    /// Length in sectors.
    pub size: u64,
    /// Type (hex code for dos, a GUID for gpt).
    #[serde(rename = "type")]
    pub kind: String,
    /// Partition name (gpt).
    #[serde(default)]
    pub name: Option<String>,
    /// Bootable flag (dos).
    #[serde(default)]
    pub bootable: bool,
}

/// `sfdisk -J` of `device` (a disk or an image file).
pub fn sfdisk(device: &Path) -> Result<Sfdisk, Error> {
    Cmd::new("sfdisk").arg("-J").arg(device).run_json()
}

/// `qemu-img info --output=json FILE`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct QemuImgInfo {
    /// `raw`, `qcow2`, `vmdk`, …
    pub format: String,
    /// Size the guest sees, in bytes.
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    /// Bytes used on the host.
    #[serde(rename = "actual-size", default)]
    pub actual_size: Option<u64>,
    /// Cluster size (qcow2).
    #[serde(rename = "cluster-size", default)]
    pub cluster_size: Option<u64>,
}

/// `qemu-img info` of `file`.
pub fn qemu_img_info(file: &Path) -> Result<QemuImgInfo, Error> {
    Cmd::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(file)
        .run_json()
}

/// `losetup -J -l`: the attached loop devices.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
pub struct Losetup {
    /// The devices (missing when there are none).
    #[serde(default)]
    pub loopdevices: Vec<LoopDevice>,
}

/// One device in [`Losetup`].
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub name: String,
    /// The backing file.
    #[serde(rename = "back-file", default)]
    pub back_file: Option<String>,
}

/// The attached loop devices. `losetup -J -l` prints nothing at all when there are none.
pub fn losetup_list() -> Result<Losetup, Error> {
    let cmd = Cmd::new("losetup").args(["-J", "-l"]);
    let out = cmd.run()?;
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Losetup::default());
    }
    serde_json::from_slice(&out.stdout).map_err(|source| Error::Json {
        command: cmd.command_line(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsblk_parses() {
        let text = r#"{"blockdevices": [{"name": "loop0", "path": "/dev/loop0", "size": 1073741824,
          "type": "loop", "fstype": null, "label": null, "uuid": null, "mountpoint": null,
          "children": [{"name": "loop0p1", "path": "/dev/loop0p1", "size": 1072693248,
            "type": "part", "fstype": "ext4", "label": "cloudimg-rootfs",
            "uuid": "0b9e4a2c-1d7f-4e1c-9a44-3f0c1c7f2a10", "mountpoint": "/mnt"}]}]}"#;
        let l: Lsblk = serde_json::from_str(text).unwrap();
        let part = &l.blockdevices[0].children[0];
        assert_eq!(part.path.as_deref(), Some("/dev/loop0p1"));
        assert_eq!(part.size, Some(1_072_693_248));
        assert_eq!(part.label.as_deref(), Some("cloudimg-rootfs"));
        assert_eq!(l.blockdevices[0].kind.as_deref(), Some("loop"));
    }

    #[test]
    fn sfdisk_parses() {
        let text = r#"{"partitiontable": {"label": "gpt", "id": "A1B2C3D4-0000-4000-8000-000000000001",
          "device": "disk.raw", "unit": "sectors", "firstlba": 34, "lastlba": 2097118,
          "sectorsize": 512, "partitions": [
            {"node": "disk.raw1", "start": 2048, "size": 16384,
             "type": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "uuid": "x", "name": "ESP"},
            {"node": "disk.raw2", "start": 18432, "size": 2078687,
             "type": "0FC63DAF-8483-4772-8E79-3D69D8477DE4", "name": "root"}]}}"#;
        let s: Sfdisk = serde_json::from_str(text).unwrap();
        assert_eq!(s.partitiontable.label, "gpt");
        assert_eq!(s.partitiontable.partitions.len(), 2);
        assert_eq!(s.partitiontable.partitions[0].name.as_deref(), Some("ESP"));
        assert_eq!(s.partitiontable.partitions[1].start, 18432);
    }

    #[test]
    fn qemu_img_info_parses() {
        let text = r#"{"virtual-size": 2147483648, "filename": "x.qcow2", "cluster-size": 65536,
          "format": "qcow2", "actual-size": 352321536, "dirty-flag": false}"#;
        let q: QemuImgInfo = serde_json::from_str(text).unwrap();
        assert_eq!(q.format, "qcow2");
        assert_eq!(q.virtual_size, 2_147_483_648);
        assert_eq!(q.cluster_size, Some(65536));
    }

    #[test]
    fn losetup_parses() {
        let text = r#"{"loopdevices": [{"name": "/dev/loop0", "sizelimit": 0, "offset": 0,
          "autoclear": false, "ro": false, "back-file": "/tmp/kiln.x/image/disk.raw", "dio": false,
          "log-sec": 512}]}"#;
        let l: Losetup = serde_json::from_str(text).unwrap();
        assert_eq!(
            l.loopdevices[0].back_file.as_deref(),
            Some("/tmp/kiln.x/image/disk.raw")
        );
    }

    #[test]
    fn qemu_img_info_of_a_real_file() {
        // Only where qemu-img is installed (it is on the build hosts).
        if which::which("qemu-img").is_err() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.raw");
        std::fs::File::create(&f).unwrap().set_len(3 << 20).unwrap();
        let info = qemu_img_info(&f).unwrap();
        assert_eq!(info.format, "raw");
        assert_eq!(info.virtual_size, 3 << 20);
    }
}
