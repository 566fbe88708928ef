//! Planning: config text to a checked, ordered graph of typed nodes.
//!
//! Planning is pure (no root, no processes, no files): the config is parsed, converted from
//! tree to graph form, defaulted from the params, checked, and ordered. Everything that can be
//! wrong with a config is found here, before anything is created. The image size may still be
//! unknown (DIB plans once before sizing, to learn the root label); partition fit is then
//! checked when the plan is made again with the size.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use petgraph::graph::DiGraph;

use crate::config;
use crate::error::{At, Error};
use crate::graph::{self, Checked};
use crate::layout::{TableLabel, TableLayout};
use crate::node::{is_fat, Node, NodeKind};
use crate::yaml;

/// Values from outside the config (DIB's `params.yaml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// The image size in bytes (`image-size`), once sizing has run.
    pub image_size: Option<u64>,
    /// Where image files go (`image-dir`, `$TMP_IMAGE_DIR`).
    pub image_dir: PathBuf,
    /// Where filesystems are mounted (`mount-base`, `$TMP_BUILD_DIR/mnt`).
    pub mount_base: PathBuf,
    /// The build directory (`build-dir`).
    pub build_dir: PathBuf,
    /// The root label (`root-label`, `ROOT_LABEL`); `None` or empty picks the default.
    pub root_label: Option<String>,
    /// The root filesystem type (`root-fs-type`, `FS_TYPE`), default ext4.
    pub root_fs_type: String,
    /// Extra mkfs options for the root filesystem (`root-fs-opts`, `MKFS_OPTS`).
    pub root_fs_opts: Option<String>,
    /// Sector size that overrides every local_loop's `block_size` (`DIB_BLOCK_SIZE`).
    pub block_size: Option<u64>,
    /// The build seed every derived identifier (filesystem UUIDs, GPT GUIDs, the MBR disk id,
    /// vfat serials) comes from; any text. `None` (or empty) derives them from the layout
    /// alone. Identifiers the config sets itself (`uuid:`) are kept.
    pub seed: Option<String>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            image_size: None,
            image_dir: PathBuf::from("/tmp"),
            mount_base: PathBuf::from("/tmp/mnt"),
            build_dir: PathBuf::from("/tmp"),
            root_label: None,
            root_fs_type: "ext4".to_owned(),
            root_fs_opts: None,
            block_size: None,
            seed: None,
        }
    }
}

/// A checked block-device plan: the nodes in creation order and what they will do.
#[derive(Debug, Clone)]
pub struct Plan {
    pub(crate) source: String,
    pub(crate) params: Params,
    pub(crate) nodes: Vec<Node>,
    pub(crate) index: HashMap<String, usize>,
    pub(crate) graph: DiGraph<String, ()>,
    pub(crate) layouts: BTreeMap<String, TableLayout>,
    /// Mount node names sorted by mount point.
    pub(crate) mounts: Vec<String>,
}

/// Plans a block-device config.
///
/// `source` names the config in messages: a file path, or `DIB_BLOCK_DEVICE_CONFIG` when the
/// YAML came from that variable.
pub fn plan(config_text: &str, source: &str, params: &Params) -> Result<Plan, Error> {
    let doc = yaml::parse(config_text).map_err(|e| Error::Yaml {
        at: Box::new(At {
            source: source.to_owned(),
            line: e.line,
        }),
        column: e.column,
        message: e.message,
    })?;
    let raws = config::to_raw_nodes(&doc, source)?;
    let Checked {
        nodes,
        graph,
        layouts,
        mounts,
    } = graph::build(&raws, source, params)?;
    let index = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.clone(), i))
        .collect();
    Ok(Plan {
        source: source.to_owned(),
        params: params.clone(),
        nodes,
        index,
        graph,
        layouts,
        mounts,
    })
}

/// `${name}`: how a node's device is shown before it exists.
pub(crate) fn symbolic(name: &str) -> String {
    format!("${{{name}}}")
}

impl Plan {
    /// The config's source, as given to [`plan`].
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The params the plan was made with.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The nodes in creation order (topological; ties broken by name).
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    /// The graph's edges as (from, to) names, sorted.
    pub fn edges(&self) -> Vec<(String, String)> {
        let mut e: Vec<(String, String)> = self
            .graph
            .edge_indices()
            .filter_map(|e| self.graph.edge_endpoints(e))
            .map(|(a, b)| (self.graph[a].clone(), self.graph[b].clone()))
            .collect();
        e.sort();
        e
    }

    /// The size of `image0` in bytes, if known.
    pub fn image_size(&self) -> Option<u64> {
        match self.node("image0").map(|n| &n.kind) {
            Some(NodeKind::LocalLoop { size, .. }) => size.or(self.params.image_size),
            _ => None,
        }
    }

    /// The computed layout of a partitioning node (once the image size is known).
    pub fn table_layout(&self, table: &str) -> Option<&TableLayout> {
        self.layouts.get(table)
    }

    /// Whether any partition table is created (DIB images without one are a bare filesystem).
    pub fn has_partition_table(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| matches!(n.kind, NodeKind::PartitionTable { .. }))
    }

    /// Whether the plan uses LVM.
    pub fn uses_lvm(&self) -> bool {
        self.nodes.iter().any(|n| {
            matches!(
                n.kind,
                NodeKind::LvmPv { .. } | NodeKind::LvmVg { .. } | NodeKind::LvmLv { .. }
            )
        })
    }

    /// The mount nodes, sorted by mount point.
    pub fn mounts(&self) -> impl Iterator<Item = &Node> {
        self.mounts.iter().filter_map(|m| self.node(m))
    }

    /// The mkfs node a mount (or any node) sits on.
    pub(crate) fn base_node(&self, n: &Node) -> Option<&Node> {
        n.base.first().and_then(|b| self.node(b))
    }

    fn fs_at(&self, mount_point: &str) -> Option<&Node> {
        self.mounts()
            .find(
                |m| matches!(&m.kind, NodeKind::Mount { mount_point: mp, .. } if mp == mount_point),
            )
            .and_then(|m| self.base_node(m))
    }

    fn label_of(n: &Node) -> Option<&str> {
        match &n.kind {
            NodeKind::Mkfs { label, .. } => Some(label),
            _ => None,
        }
    }

    /// The label of the filesystem mounted at `/` (DIB's `getval root-label`).
    pub fn root_label(&self) -> &str {
        self.fs_at("/").and_then(Self::label_of).unwrap_or_default()
    }

    /// The type of the filesystem mounted at `/` (DIB's `getval root-fstype`).
    pub fn root_fstype(&self) -> &str {
        match self.fs_at("/").map(|n| &n.kind) {
            Some(NodeKind::Mkfs { fstype, .. }) => fstype,
            _ => "",
        }
    }

    /// The label of the filesystem mounted at `/boot`, if there is one (`getval boot-label`).
    pub fn boot_label(&self) -> Option<&str> {
        self.fs_at("/boot")
            .and_then(Self::label_of)
            .filter(|l| !l.is_empty())
    }

    /// The mount points, sorted as strings (`getval mount-points`); swap is not included.
    pub fn mount_points(&self) -> Vec<String> {
        self.mounts()
            .filter(|m| !self.is_swap_mount(m))
            .filter_map(|m| match &m.kind {
                NodeKind::Mount { mount_point, .. } => Some(mount_point.clone()),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn is_swap_mount(&self, m: &Node) -> bool {
        matches!(self.base_node(m).map(|n| &n.kind), Some(NodeKind::Mkfs { fstype, .. }) if fstype == "swap")
    }

    /// The node that provides the block device a node works on (mkfs → its partition, mount →
    /// the mkfs's device, ...).
    pub(crate) fn device_node_of<'p>(&'p self, n: &'p Node) -> &'p Node {
        let mut cur = n;
        loop {
            if cur.has_device() {
                return cur;
            }
            match self.base_node(cur) {
                Some(b) => cur = b,
                None => return cur,
            }
        }
    }

    /// The fstab text: one line per mount that has an fstab node, in mount order.
    pub fn fstab(&self) -> String {
        let mut out = String::new();
        for m in self.mounts() {
            let Some(fstab) = self.nodes.iter().find(|n| {
                matches!(n.kind, NodeKind::Fstab { .. }) && n.base.first() == Some(&m.name)
            }) else {
                continue;
            };
            let NodeKind::Fstab {
                options,
                dump_freq,
                fsck_passno,
            } = &fstab.kind
            else {
                continue;
            };
            let NodeKind::Mount { mount_point, .. } = &m.kind else {
                continue;
            };
            let Some(NodeKind::Mkfs {
                fstype,
                label,
                uuid,
                ..
            }) = self.base_node(m).map(|n| &n.kind)
            else {
                continue;
            };
            let spec = if label.is_empty() {
                format!("UUID={uuid}")
            } else {
                format!("LABEL={label}")
            };
            if fstype == "swap" {
                let _ = writeln!(out, "{spec} none swap sw 0 0");
            } else {
                let _ = writeln!(
                    out,
                    "{spec} {mount_point} {fstype} {options} {dump_freq} {fsck_passno}"
                );
            }
        }
        out
    }

    /// The commands each node would run, for display. Devices that do not exist yet are
    /// shown as `${name}` (the node that provides them).
    pub fn commands(&self) -> Vec<String> {
        let dev = |n: &str| symbolic(n);
        let mut out = Vec::new();
        for n in &self.nodes {
            for argv in self.node_commands(n, &dev) {
                out.push(argv);
            }
        }
        out
    }

    /// The display commands of one node, with devices named by `dev`.
    pub(crate) fn node_commands(&self, n: &Node, dev: &dyn Fn(&str) -> String) -> Vec<String> {
        let join = |v: Vec<String>| v.join(" ");
        match &n.kind {
            NodeKind::LocalLoop {
                size,
                image_path,
                block_size,
            } => {
                let size = size
                    .or(self.params.image_size)
                    .map_or_else(|| "$IMAGE_SIZE".to_owned(), |s| s.to_string());
                vec![
                    format!("truncate -s {size} {}", image_path.display()),
                    join(losetup_argv(image_path, *block_size)),
                ]
            }
            NodeKind::PartitionTable { label, disk_id, .. } => {
                let d = dev(&n.base[0]);
                let first = match label {
                    TableLabel::Mbr => {
                        let parts: Vec<String> = self
                            .partitions_of(n)
                            .iter()
                            .map(|p| match &p.kind {
                                NodeKind::Partition {
                                    number,
                                    ptype,
                                    boot,
                                    start,
                                    sectors,
                                    size,
                                    ..
                                } => {
                                    let place = match (start, sectors) {
                                        (Some(s), Some(c)) => format!("start={s} sectors={c}"),
                                        _ => format!("size={size}"),
                                    };
                                    format!(
                                        "{number}:{}:{place}:type={ptype}{}",
                                        p.name,
                                        if *boot { ":boot" } else { "" }
                                    )
                                }
                                _ => String::new(),
                            })
                            .collect();
                        format!("write-mbr {d} disk-id={disk_id} {}", parts.join(" "))
                    }
                    TableLabel::Gpt => join(self.sgdisk_argv(n, &d)),
                };
                vec![first, format!("partx -a {d}")]
            }
            NodeKind::Partition { .. } | NodeKind::Fstab { .. } => Vec::new(),
            NodeKind::LvmPv { options } => {
                let mut v = vec!["pvcreate".to_owned()];
                v.extend(options.iter().cloned());
                v.push(dev(&n.base[0]));
                vec![join(v)]
            }
            NodeKind::LvmVg { pvs, options } => {
                let devs: Vec<String> = pvs
                    .iter()
                    .filter_map(|p| self.node(p))
                    .map(|p| dev(&p.base[0]))
                    .collect();
                vec![join(vgcreate_argv(&n.name, options, &devs))]
            }
            NodeKind::LvmLv { .. } => {
                let vg = &n.base[0];
                vec![join(lvcreate_argv(&n.name, vg, &n.kind))]
            }
            NodeKind::Mkfs {
                fstype,
                label,
                opts,
                uuid,
            } => {
                let d = dev(&self.device_node_of(n).name);
                vec![join(mkfs_argv(fstype, label, opts, uuid, &d))]
            }
            NodeKind::Mount { target, .. } => {
                if self.is_swap_mount(n) {
                    return Vec::new();
                }
                let d = dev(&self.device_node_of(n).name);
                vec![
                    format!("mkdir -p {}", target.display()),
                    format!("mount {d} {}", target.display()),
                ]
            }
        }
    }

    pub(crate) fn partitions_of(&self, table: &Node) -> Vec<&Node> {
        match &table.kind {
            NodeKind::PartitionTable { partitions, .. } => {
                partitions.iter().filter_map(|p| self.node(p)).collect()
            }
            _ => Vec::new(),
        }
    }

    /// The `sgdisk` command that writes a GPT table onto `device`.
    pub(crate) fn sgdisk_argv(&self, table: &Node, device: &str) -> Vec<String> {
        let NodeKind::PartitionTable { disk_id, .. } = &table.kind else {
            return Vec::new();
        };
        let mut v: Vec<String> = vec!["sgdisk".into(), "-o".into(), "-U".into(), disk_id.clone()];
        for p in self.partitions_of(table) {
            let NodeKind::Partition {
                number,
                ptype,
                guid,
                start,
                sectors,
                size,
                ..
            } = &p.kind
            else {
                continue;
            };
            let range = match (start, sectors) {
                (Some(s), Some(c)) => format!("{number}:{s}:{}", s + c - 1),
                _ => format!("{number}:auto:{size}"),
            };
            v.extend(["-n".into(), range]);
            v.extend(["-t".into(), format!("{number}:{ptype}")]);
            v.extend(["-c".into(), format!("{number}:{}", p.name)]);
            if let Some(g) = guid {
                v.extend(["-u".into(), format!("{number}:{g}")]);
            }
        }
        v.push(device.to_owned());
        v
    }

    /// Everything about the plan as JSON (for `kiln plan --json`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "source": self.source,
            "image_size": self.image_size(),
            "has_partition_table": self.has_partition_table(),
            "root_label": self.root_label(),
            "root_fstype": self.root_fstype(),
            "boot_label": self.boot_label(),
            "mount_points": self.mount_points(),
            "nodes": self.nodes,
            "edges": self.edges(),
            "layouts": self.layouts,
            "commands": self.commands(),
            "fstab": self.fstab(),
        })
    }

    /// The programs creation and teardown run, each with the Debian package that provides it,
    /// sorted, for checking before a build starts. (mtools, needed only where the kernel
    /// cannot mount vfat, is checked when that is found out, before anything is written.)
    pub fn required_programs(&self) -> Vec<(String, &'static str)> {
        let mut v: Vec<(String, &'static str)> = Vec::new();
        let mut add = |program: &str, package: &'static str| v.push((program.to_owned(), package));
        add("losetup", "mount");
        add("sync", "coreutils");
        for n in &self.nodes {
            match &n.kind {
                NodeKind::PartitionTable { label, .. } => {
                    add("partx", "util-linux");
                    if *label == TableLabel::Gpt {
                        add("sgdisk", "gdisk");
                    }
                }
                NodeKind::LvmPv { .. } => add("pvcreate", "lvm2"),
                NodeKind::LvmVg { .. } => {
                    add("vgcreate", "lvm2");
                    add("vgchange", "lvm2");
                }
                NodeKind::LvmLv { .. } => {
                    add("lvcreate", "lvm2");
                    add("lvchange", "lvm2");
                }
                NodeKind::Mkfs { fstype, .. } => {
                    if is_fat(fstype) {
                        add("mkfs.vfat", "dosfstools");
                    } else if fstype == "swap" {
                        add("mkswap", "util-linux");
                    } else {
                        add("mkfs", "util-linux");
                        let package = match fstype.as_str() {
                            "ext2" | "ext3" | "ext4" => "e2fsprogs",
                            "xfs" => "xfsprogs",
                            "btrfs" => "btrfs-progs",
                            _ => "",
                        };
                        add(&format!("mkfs.{fstype}"), package);
                    }
                }
                NodeKind::Mount { .. } => {
                    add("mkdir", "coreutils");
                    add("mount", "mount");
                    add("umount", "mount");
                    add("fstrim", "util-linux");
                }
                _ => {}
            }
        }
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// `losetup --show -f --direct-io=off [--sector-size BS] FILE`.
pub(crate) fn losetup_argv(file: &Path, block_size: u64) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "losetup".into(),
        "--show".into(),
        "-f".into(),
        "--direct-io=off".into(),
    ];
    if block_size != 512 {
        v.extend(["--sector-size".into(), block_size.to_string()]);
    }
    v.push(file.display().to_string());
    v
}

/// The mkfs command for a filesystem on `device`.
pub(crate) fn mkfs_argv(
    fstype: &str,
    label: &str,
    opts: &[String],
    uuid: &str,
    device: &str,
) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    let label_args = |flag: &str| -> Vec<String> {
        if label.is_empty() {
            Vec::new()
        } else {
            vec![flag.to_owned(), label.to_owned()]
        }
    };
    if is_fat(fstype) {
        v.push("mkfs.vfat".into());
        v.extend(opts.iter().cloned());
        v.extend(label_args("-n"));
        v.extend(["-i".into(), uuid.replace('-', "")]);
    } else if fstype == "swap" {
        v.push("mkswap".into());
        v.extend(opts.iter().cloned());
        v.extend(label_args("-L"));
        v.extend(["-U".into(), uuid.to_owned()]);
    } else {
        v.extend(["mkfs".into(), "-t".into(), fstype.to_owned()]);
        v.extend(opts.iter().cloned());
        v.extend(label_args("-L"));
        match fstype {
            "ext2" | "ext3" | "ext4" | "btrfs" => {
                v.extend(["-U".into(), uuid.to_owned(), "-q".into()]);
            }
            "xfs" => v.extend(["-m".into(), format!("uuid={uuid}"), "-q".into()]),
            _ => {}
        }
    }
    v.push(device.to_owned());
    v
}

pub(crate) fn vgcreate_argv(name: &str, options: &[String], devices: &[String]) -> Vec<String> {
    let mut v = vec!["vgcreate".to_owned()];
    v.extend(options.iter().cloned());
    v.push(name.to_owned());
    v.extend(devices.iter().cloned());
    v
}

/// LVM sizes are given in MiB, rounded up to the 4 MiB default extent.
fn lvm_mib(bytes: u64) -> String {
    const EXTENT: u64 = 4 << 20;
    format!("{}m", bytes.div_ceil(EXTENT) * EXTENT / (1 << 20))
}

pub(crate) fn lvcreate_argv(name: &str, vg: &str, kind: &NodeKind) -> Vec<String> {
    let NodeKind::LvmLv {
        size,
        extents,
        lv_type,
        thin_pool,
        options,
        ..
    } = kind
    else {
        return Vec::new();
    };
    let mut v: Vec<String> = vec!["lvcreate".into(), "--name".into(), name.to_owned()];
    if let Some(t) = lv_type {
        v.extend(["--type".into(), t.clone()]);
    }
    if lv_type.as_deref() == Some("thin") {
        if let Some(p) = thin_pool {
            v.extend(["--thinpool".into(), p.clone()]);
        }
        if let Some(s) = size {
            v.extend(["-V".into(), lvm_mib(*s)]);
        }
    } else if let Some(s) = size {
        v.extend(["-L".into(), lvm_mib(*s)]);
    } else if let Some(e) = extents {
        v.extend(["-l".into(), e.clone()]);
    }
    v.extend(options.iter().cloned());
    v.push(vg.to_owned());
    v
}

/// The device-mapper node of a logical volume (`-` inside names is doubled).
pub(crate) fn lv_device(vg: &str, lv: &str) -> String {
    format!(
        "/dev/mapper/{}-{}",
        vg.replace('-', "--"),
        lv.replace('-', "--")
    )
}
