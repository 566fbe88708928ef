//! From raw nodes to a checked, ordered graph of typed nodes.
//!
//! Each raw node's settings are read into its typed [`NodeKind`] (defaults applied, the
//! legacy root params merged into `mkfs_root`), partitions and LVM volumes become nodes of
//! their own, and then the whole set is checked: bases, labels, mount points, partition fit.
//! Last, the graph is ordered topologically with ties broken by name, so the order never
//! depends on a hash.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::path::{Component, Path, PathBuf};

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;

use crate::config::{Plugin, RawNode, RawPartition};
use crate::error::{closest, At, Error};
use crate::ids::Ids;
use crate::layout::{self, LayoutError, PartReq, TableLabel, TableLayout};
use crate::node::{default_root_label, is_fat, label_max, Node, NodeKind};
use crate::plan::Params;
use crate::size::{human, parse_size, parse_size_spec};
use crate::yaml::{V, Y};

/// The number of entries in the GPT partition array kiln writes.
const GPT_MAX_PARTITIONS: usize = 128;

/// The largest image or volume kiln makes (1 PiB): sizes above it are refused when the config
/// is read, so that arithmetic on sectors and bytes never comes near overflowing.
pub(crate) const MAX_SIZE: u64 = 1 << 50;

/// A checked graph: nodes in creation order and what planning derived from them.
pub(crate) struct Checked {
    pub nodes: Vec<Node>,
    pub graph: DiGraph<String, ()>,
    pub layouts: BTreeMap<String, TableLayout>,
    /// Mount node names sorted by mount point.
    pub mounts: Vec<String>,
}

/// Types, checks and orders the raw nodes of a config.
pub(crate) fn build(raws: &[RawNode], source: &str, params: &Params) -> Result<Checked, Error> {
    let canonical = serde_json::Value::Array(raws.iter().map(RawNode::to_json).collect());
    let mut b = Builder {
        source,
        params,
        ids: Ids::new(params.seed.as_deref(), &canonical),
        nodes: Vec::new(),
        lines: HashMap::new(),
    };
    for raw in raws {
        b.expand(raw)?;
    }
    let Builder { mut nodes, .. } = b;
    check_bases(&nodes, source)?;
    check_filesystems(&nodes, source)?;
    let mounts = check_mounts(&mut nodes, source, params)?;
    let layouts = lay_out(&mut nodes, source, params)?;
    if !nodes.iter().any(|n| n.name == "image0") {
        return Err(Error::NoImage0 {
            config: source.to_owned(),
        });
    }
    let (nodes, graph) = order(nodes, &mounts, source)?;
    Ok(Checked {
        nodes,
        graph,
        layouts,
        mounts,
    })
}

/// Reads typed values out of one node's settings, with errors that point at the node.
struct Keys<'a> {
    source: &'a str,
    plugin: &'static str,
    node: &'a str,
    line: u32,
    cfg: &'a [(String, Y)],
}

impl<'a> Keys<'a> {
    fn at(&self, line: u32) -> At {
        At {
            source: self.source.to_owned(),
            line: Some(if line > 0 { line } else { self.line }).filter(|l| *l > 0),
        }
    }

    fn get(&self, key: &str) -> Option<&'a Y> {
        self.cfg
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .filter(|v| v.v != V::Null)
    }

    fn invalid(&self, key: &str, y: &Y, reason: impl Into<String>) -> Error {
        Error::InvalidValue {
            at: Box::new(self.at(y.line)),
            plugin: self.plugin,
            node: self.node.to_owned(),
            key: key.to_owned(),
            value: y.scalar_text().unwrap_or_else(|| y.kind().to_owned()),
            reason: reason.into(),
        }
    }

    fn missing(&self, key: &str) -> Error {
        Error::MissingKey {
            at: Box::new(self.at(self.line)),
            plugin: self.plugin,
            node: self.node.to_owned(),
            key: key.to_owned(),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(y) => y.scalar_text().map(Some).ok_or_else(|| {
                self.invalid(key, y, "expected a single value, not a list or mapping")
            }),
        }
    }

    fn required(&self, key: &str) -> Result<String, Error> {
        self.string(key)?.ok_or_else(|| self.missing(key))
    }

    fn size(&self, key: &str) -> Result<Option<u64>, Error> {
        let Some(y) = self.get(key) else {
            return Ok(None);
        };
        let text = y
            .scalar_text()
            .ok_or_else(|| self.invalid(key, y, "expected a size such as 2GiB"))?;
        let size = parse_size(&text).map_err(|e| self.invalid(key, y, size_reason(&e)))?;
        if size > MAX_SIZE {
            return Err(self.invalid(key, y, format!("sizes are at most {}", human(MAX_SIZE))));
        }
        Ok(Some(size))
    }

    fn uint(&self, key: &str, default: u32) -> Result<u32, Error> {
        let Some(y) = self.get(key) else {
            return Ok(default);
        };
        y.scalar_text()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .ok_or_else(|| self.invalid(key, y, "expected a whole number"))
    }

    /// A list of words: a YAML list, or one string split on whitespace.
    fn words(&self, key: &str) -> Result<Vec<String>, Error> {
        let Some(y) = self.get(key) else {
            return Ok(Vec::new());
        };
        match &y.v {
            V::Seq(items) => items
                .iter()
                .map(|i| {
                    i.scalar_text()
                        .ok_or_else(|| self.invalid(key, i, "expected a list of plain values"))
                })
                .collect(),
            _ => Ok(y
                .scalar_text()
                .ok_or_else(|| self.invalid(key, y, "expected a list or a string"))?
                .split_whitespace()
                .map(str::to_owned)
                .collect()),
        }
    }

    fn warn_unknown(&self, allowed: &[&str]) {
        for (k, _) in self.cfg {
            if !allowed.contains(&k.as_str()) {
                tracing::warn!(
                    "{}: {} node `{}`: ignoring unknown key `{k}` (known: {})",
                    self.at(self.line),
                    self.plugin,
                    self.node,
                    allowed.join(", ")
                );
            }
        }
    }
}

fn lvm_plugin(what: &str) -> &'static str {
    match what {
        "pv" => "lvm pv",
        "vg" => "lvm vg",
        _ => "lvm lv",
    }
}

fn size_reason(e: &Error) -> String {
    match e {
        Error::InvalidSize { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// Turns raw nodes into typed nodes, expanding partitions and LVM volumes.
struct Builder<'a> {
    source: &'a str,
    params: &'a Params,
    ids: Ids,
    nodes: Vec<Node>,
    lines: HashMap<String, u32>,
}

impl<'a> Builder<'a> {
    fn push(
        &mut self,
        name: &str,
        line: u32,
        base: Vec<String>,
        kind: NodeKind,
    ) -> Result<(), Error> {
        let node = Node {
            name: name.to_owned(),
            line: (line > 0).then_some(line),
            base,
            kind,
        };
        if let Some(reason) = node_name_problem(name) {
            return Err(Error::InvalidValue {
                at: At::new(self.source, line),
                plugin: node.kind_name(),
                node: name.to_owned(),
                key: "name".into(),
                value: name.to_owned(),
                reason,
            });
        }
        if let Some(first) = self.lines.get(name) {
            return Err(Error::DuplicateName {
                at: At::new(self.source, line),
                name: name.to_owned(),
                first_line: (*first > 0).then_some(*first),
            });
        }
        self.lines.insert(name.to_owned(), line);
        self.nodes.push(node);
        Ok(())
    }

    fn keys<'k>(&self, raw: &'k RawNode) -> Keys<'k>
    where
        'a: 'k,
    {
        Keys {
            source: self.source,
            plugin: raw.plugin.key(),
            node: &raw.name,
            line: raw.line,
            cfg: &raw.cfg,
        }
    }

    /// The base of a node as a single name.
    fn base_one(&self, raw: &RawNode) -> Result<String, Error> {
        let k = self.keys(raw);
        let Some(b) = raw.base.as_ref() else {
            return Err(k.missing("base"));
        };
        b.scalar_text()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| k.invalid("base", b, "`base` must be the name of one node"))
    }

    fn expand(&mut self, raw: &RawNode) -> Result<(), Error> {
        match raw.plugin {
            Plugin::LocalLoop => self.local_loop(raw),
            Plugin::Partitioning => self.partitioning(raw),
            Plugin::Lvm => self.lvm(raw),
            Plugin::Mkfs => self.mkfs(raw),
            Plugin::Mount => self.mount(raw),
            Plugin::Fstab => self.fstab(raw),
        }
    }

    fn local_loop(&mut self, raw: &RawNode) -> Result<(), Error> {
        let k = self.keys(raw);
        k.warn_unknown(&["size", "directory", "block_size"]);
        let size = k.size("size")?;
        let dir = k
            .string("directory")?
            .map_or_else(|| self.params.image_dir.clone(), PathBuf::from);
        let block_size = match self.params.block_size {
            Some(bs) => bs,
            None => match k.get("block_size") {
                None => 512,
                Some(y) => {
                    let t = y.scalar_text().unwrap_or_default();
                    parse_size(&t).map_err(|e| k.invalid("block_size", y, size_reason(&e)))?
                }
            },
        };
        if ![512, 1024, 2048, 4096].contains(&block_size) {
            let y = k
                .get("block_size")
                .cloned()
                .unwrap_or_else(|| Y::new(raw.line, V::Int(i128::from(block_size))));
            return Err(k.invalid(
                "block_size",
                &y,
                "a loop device's sector size must be 512, 1024, 2048 or 4096",
            ));
        }
        let image_path = dir.join(format!("{}.raw", raw.name));
        self.push(
            &raw.name,
            raw.line,
            Vec::new(),
            NodeKind::LocalLoop {
                size,
                image_path,
                block_size,
            },
        )
    }

    fn partitioning(&mut self, raw: &RawNode) -> Result<(), Error> {
        let base = self.base_one(raw)?;
        let k = self.keys(raw);
        k.warn_unknown(&["label", "align"]);
        let label = match k.required("label")?.as_str() {
            "mbr" => TableLabel::Mbr,
            "gpt" => TableLabel::Gpt,
            _ => {
                let y = k.get("label").expect("label was read");
                return Err(k.invalid(
                    "label",
                    y,
                    "the partition table `label` must be `mbr` or `gpt`",
                ));
            }
        };
        let align = match k.size("align")? {
            None => 1 << 20,
            Some(0) => {
                let y = k.get("align").expect("align was read");
                return Err(k.invalid("align", y, "the alignment must be more than 0"));
            }
            Some(a) => a,
        };
        if raw.partitions.is_empty() {
            return Err(k.missing("partitions"));
        }
        // kiln writes GPT with sgdisk's 128-entry array; a 129th partition would only fail
        // when the table is written, after every phase has run.
        if label == TableLabel::Gpt && raw.partitions.len() > GPT_MAX_PARTITIONS {
            let p = &raw.partitions[GPT_MAX_PARTITIONS];
            return Err(Error::InvalidValue {
                at: Box::new(k.at(p.line)),
                plugin: "partitioning",
                node: raw.name.clone(),
                key: "partitions".into(),
                value: format!("{} partitions", raw.partitions.len()),
                reason: format!(
                    "a GPT table holds at most {GPT_MAX_PARTITIONS} partitions and `{}` is number {}; merge or drop partitions",
                    p.name,
                    GPT_MAX_PARTITIONS + 1
                ),
            });
        }
        let disk_id = match label {
            TableLabel::Mbr => format!("0x{:08x}", self.ids.u32("mbr-disk-id", &raw.name)),
            TableLabel::Gpt => self.ids.uuid("gpt-disk-guid", &raw.name),
        };
        let names: Vec<String> = raw.partitions.iter().map(|p| p.name.clone()).collect();
        self.push(
            &raw.name,
            raw.line,
            vec![base],
            NodeKind::PartitionTable {
                label,
                align,
                partitions: names,
                disk_id,
            },
        )?;
        for p in &raw.partitions {
            self.partition(raw, label, p)?;
        }
        Ok(())
    }

    fn partition(
        &mut self,
        table: &RawNode,
        label: TableLabel,
        p: &RawPartition,
    ) -> Result<(), Error> {
        let k = Keys {
            source: self.source,
            plugin: "partition",
            node: &p.name,
            line: p.line,
            cfg: &p.cfg,
        };
        k.warn_unknown(&["size", "flags", "type"]);
        let size_y = k.get("size").ok_or_else(|| k.missing("size"))?;
        let size_text = size_y
            .scalar_text()
            .ok_or_else(|| k.invalid("size", size_y, "expected a size such as 8MiB or 100%"))?;
        let size =
            parse_size_spec(&size_text).map_err(|e| k.invalid("size", size_y, size_reason(&e)))?;
        let mut boot = false;
        let mut primary = false;
        for flag in k.words("flags")? {
            match flag.as_str() {
                "boot" => boot = true,
                "primary" => primary = true,
                _ => {
                    let y = k.get("flags").expect("flags were read");
                    return Err(k.invalid(
                        "flags",
                        &Y::new(y.line, V::Str(flag.clone())),
                        "the known partition flags are `boot` and `primary`",
                    ));
                }
            }
        }
        let ptype = match label {
            TableLabel::Mbr => mbr_type(&k)?,
            TableLabel::Gpt => {
                if primary {
                    return Err(Error::PrimaryOnGpt {
                        at: At::new(self.source, p.line),
                        table: table.name.clone(),
                        partition: p.name.clone(),
                    });
                }
                gpt_type(&k)?
            }
        };
        let guid = (label == TableLabel::Gpt).then(|| self.ids.uuid("gpt-part-guid", &p.name));
        self.push(
            &p.name,
            p.line,
            vec![table.name.clone()],
            NodeKind::Partition {
                table: table.name.clone(),
                number: 0,
                size,
                boot,
                primary,
                ptype,
                guid,
                start: None,
                sectors: None,
            },
        )
    }

    fn lvm(&mut self, raw: &RawNode) -> Result<(), Error> {
        let k = self.keys(raw);
        k.warn_unknown(&["pvs", "vgs", "lvs"]);
        let list = |key: &str| -> Result<Vec<&Y>, Error> {
            match k.get(key) {
                None => Err(k.missing(key)),
                Some(y) => match &y.v {
                    V::Seq(items) if !items.is_empty() => Ok(items.iter().collect()),
                    _ => Err(k.invalid(key, y, format!("`{key}` must be a non-empty list"))),
                },
            }
        };
        let pvs = list("pvs")?;
        let vgs = list("vgs")?;
        let lvs = list("lvs")?;
        for (what, items) in [("pv", pvs), ("vg", vgs), ("lv", lvs)] {
            for item in items {
                let Some(cfg) = item.as_map() else {
                    return Err(k.invalid(
                        &format!("{what}s"),
                        item,
                        format!("each {what} must be a mapping with `name` and `base`"),
                    ));
                };
                let name = cfg
                    .iter()
                    .find(|(key, _)| key == "name")
                    .and_then(|(_, v)| v.scalar_text())
                    .ok_or_else(|| Error::MissingKey {
                        at: At::new(self.source, item.line),
                        plugin: lvm_plugin(what),
                        node: format!("(a {what} of {})", raw.name),
                        key: "name".into(),
                    })?;
                let ik = Keys {
                    source: self.source,
                    plugin: lvm_plugin(what),
                    node: &name,
                    line: item.line,
                    cfg,
                };
                let options = ik.words("options")?;
                let base = ik.words("base")?;
                if base.is_empty() {
                    return Err(ik.missing("base"));
                }
                let kind = match what {
                    "pv" => {
                        ik.warn_unknown(&["name", "base", "options"]);
                        if base.len() != 1 {
                            let y = ik.get("base").expect("base was read");
                            return Err(ik.invalid("base", y, "a pv sits on exactly one device"));
                        }
                        NodeKind::LvmPv { options }
                    }
                    "vg" => {
                        ik.warn_unknown(&["name", "base", "options"]);
                        NodeKind::LvmVg {
                            pvs: base.clone(),
                            options,
                        }
                    }
                    _ => lvm_lv(&ik, &base, options)?,
                };
                let mut bases = base;
                if let NodeKind::LvmLv {
                    thin_pool: Some(pool),
                    ..
                } = &kind
                {
                    bases.push(pool.clone());
                }
                self.push(&name, item.line, bases, kind)?;
            }
        }
        Ok(())
    }

    fn mkfs(&mut self, raw: &RawNode) -> Result<(), Error> {
        let base = self.base_one(raw)?;
        let k = self.keys(raw);
        k.warn_unknown(&["type", "label", "opts", "uuid"]);
        let is_root = raw.name == "mkfs_root";
        let fstype = match k.string("type")? {
            Some(t) if !t.is_empty() => t,
            _ if is_root => self.params.root_fs_type.clone(),
            _ => return Err(k.missing("type")),
        };
        let label = match k.get("label") {
            Some(y) => y
                .scalar_text()
                .ok_or_else(|| k.invalid("label", y, "a label is a short string"))?,
            None if is_root => self
                .params
                .root_label
                .clone()
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| default_root_label(&fstype).to_owned()),
            None => raw.name.clone(),
        };
        let label = if is_fat(&fstype) {
            label.to_uppercase()
        } else {
            label
        };
        check_mkfs_words(&k, raw.line, &fstype, &label)?;
        let opts = if k.get("opts").is_some() {
            k.words("opts")?
        } else if is_root {
            self.params
                .root_fs_opts
                .as_deref()
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        } else {
            Vec::new()
        };
        let uuid = match k.string("uuid")? {
            Some(u) => {
                if let Some(reason) = fstab_field_problem(&u) {
                    let y = k.get("uuid").expect("uuid was read");
                    return Err(k.invalid(
                        "uuid",
                        y,
                        format!("{reason}; a uuid goes into /etc/fstab as UUID=<uuid>"),
                    ));
                }
                u
            }
            None if is_fat(&fstype) => {
                let s = self.ids.u32("vfat-serial", &raw.name);
                format!("{:04X}-{:04X}", s >> 16, s & 0xFFFF)
            }
            None => self.ids.uuid("fs-uuid", &raw.name),
        };
        if is_fat(&fstype) {
            let hex: String = uuid.chars().filter(|c| *c != '-').collect();
            if hex.len() != 8 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                let y = k
                    .get("uuid")
                    .expect("only a configured uuid can be malformed");
                return Err(k.invalid(
                    "uuid",
                    y,
                    "a vfat volume id is 8 hex digits, e.g. 1234-ABCD",
                ));
            }
        }
        self.push(
            &raw.name,
            raw.line,
            vec![base],
            NodeKind::Mkfs {
                fstype,
                label,
                opts,
                uuid,
            },
        )
    }

    fn mount(&mut self, raw: &RawNode) -> Result<(), Error> {
        let base = self.base_one(raw)?;
        let k = self.keys(raw);
        k.warn_unknown(&["mount_point"]);
        let mp = k.required("mount_point")?;
        if let Some(reason) = fstab_field_problem(&mp) {
            let y = k.get("mount_point").expect("mount_point was read");
            return Err(k.invalid(
                "mount_point",
                y,
                format!("{reason}; a mount point is a field of an /etc/fstab line"),
            ));
        }
        self.push(
            &raw.name,
            raw.line,
            vec![base],
            NodeKind::Mount {
                target: self.params.mount_base.clone(),
                mount_point: mp,
            },
        )
    }

    fn fstab(&mut self, raw: &RawNode) -> Result<(), Error> {
        let base = self.base_one(raw)?;
        let k = self.keys(raw);
        k.warn_unknown(&["options", "dump-freq", "fsck-passno"]);
        let options = k
            .string("options")?
            .filter(|o| !o.trim().is_empty())
            .unwrap_or_else(|| "defaults".to_owned());
        if let Some(reason) = fstab_field_problem(&options) {
            let y = k
                .get("options")
                .expect("only configured options can be malformed");
            return Err(k.invalid(
                "options",
                y,
                format!(
                    "{reason}; write the mount options as one comma list, e.g. defaults,noatime"
                ),
            ));
        }
        let dump_freq = k.uint("dump-freq", 0)?;
        let fsck_passno = k.uint("fsck-passno", 2)?;
        self.push(
            &raw.name,
            raw.line,
            vec![base],
            NodeKind::Fstab {
                options,
                dump_freq,
                fsck_passno,
            },
        )
    }
}

/// The type names a program (`mkfs.<type>`) and, with the label, a field of an fstab line:
/// each must be one plain word. `line` is the node's, for values that come from elsewhere
/// (`--root-label`, `FS_TYPE`).
fn check_mkfs_words(k: &Keys<'_>, line: u32, fstype: &str, label: &str) -> Result<(), Error> {
    let fstype_ok = fstype
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && fstype
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.'));
    if !fstype_ok {
        let y = k
            .get("type")
            .cloned()
            .unwrap_or_else(|| Y::new(line, V::Str(fstype.to_owned())));
        return Err(k.invalid(
            "type",
            &y,
            "a filesystem type is one word of letters, digits, _ and . (ext4, xfs, vfat, swap)",
        ));
    }
    // An empty label means "none": fstab then names the filesystem by UUID.
    if let Some(reason) = Some(label)
        .filter(|l| !l.is_empty())
        .and_then(fstab_field_problem)
    {
        let y = k
            .get("label")
            .cloned()
            .unwrap_or_else(|| Y::new(line, V::Str(label.to_owned())));
        return Err(k.invalid(
            "label",
            &y,
            format!("{reason}; a label goes into /etc/fstab as LABEL=<label>"),
        ));
    }
    Ok(())
}

/// Why `name` cannot name a node, or `None`. Node names become file names (`<name>.raw`),
/// LVM names (`/dev/<vg>/<lv>`), partition names on commands' argv and the subscripts of
/// `IMAGE_BLOCK_DEVICES`, which hooks `eval`, so they are plain words.
fn node_name_problem(name: &str) -> Option<String> {
    let first = name.chars().next()?;
    if !(first.is_ascii_alphanumeric() || first == '_') {
        return Some(format!(
            "it starts with {first:?}; a node name starts with a letter, a digit or _"
        ));
    }
    name.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '.')))
        .map(|c| {
            format!("it contains {c:?}; a node name holds only letters, digits, _, -, + and .")
        })
}

/// Why `value` cannot be one field of an `/etc/fstab` line, or `None`. Fields are separated
/// by blanks and `\` starts an octal escape, so neither may appear, nor control characters;
/// a field starting with `#` would turn the line into a comment.
pub(crate) fn fstab_field_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        return Some("it is empty".into());
    }
    if value.starts_with('#') {
        return Some("it starts with #, which would make the fstab line a comment".into());
    }
    value
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '\\')
        .map(|c| format!("it contains {c:?}, which an fstab field cannot hold"))
}

fn at_node(source: &str, n: &Node) -> At {
    At {
        source: source.to_owned(),
        line: n.line,
    }
}

/// Every base exists and is of a kind the node can sit on.
fn check_bases(nodes: &[Node], source: &str) -> Result<(), Error> {
    let by_name: HashMap<&str, &Node> = nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    for n in nodes {
        for b in &n.base {
            let Some(base) = by_name.get(b.as_str()) else {
                return Err(Error::MissingBase {
                    at: Box::new(at_node(source, n)),
                    node: n.name.clone(),
                    base: b.clone(),
                    suggestion: closest(b, by_name.keys().copied()),
                });
            };
            let ok = match (&n.kind, &base.kind) {
                (NodeKind::PartitionTable { .. }, NodeKind::LocalLoop { .. })
                | (NodeKind::Partition { .. }, NodeKind::PartitionTable { .. })
                | (
                    NodeKind::LvmPv { .. },
                    NodeKind::LocalLoop { .. } | NodeKind::Partition { .. },
                )
                | (NodeKind::LvmVg { .. }, NodeKind::LvmPv { .. })
                | (NodeKind::LvmLv { .. }, NodeKind::LvmVg { .. })
                | (
                    NodeKind::Mkfs { .. },
                    NodeKind::LocalLoop { .. }
                    | NodeKind::Partition { .. }
                    | NodeKind::LvmLv { .. },
                )
                | (NodeKind::Mount { .. }, NodeKind::Mkfs { .. })
                | (NodeKind::Fstab { .. }, NodeKind::Mount { .. }) => true,
                (
                    NodeKind::LvmLv {
                        thin_pool: Some(p), ..
                    },
                    NodeKind::LvmLv { lv_type, .. },
                ) => p == b && lv_type.as_deref() == Some("thin-pool"),
                _ => false,
            };
            if !ok {
                let expected = match n.kind {
                    NodeKind::PartitionTable { .. } => "a local_loop node",
                    NodeKind::LvmPv { .. } => "a partition or a local_loop node",
                    NodeKind::LvmVg { .. } => "lvm pvs",
                    NodeKind::LvmLv { .. } => "an lvm vg (and a thin-pool lv for thin volumes)",
                    NodeKind::Mkfs { .. } => {
                        "a block device: a local_loop, partition or lvm lv node"
                    }
                    NodeKind::Mount { .. } => "a mkfs node",
                    NodeKind::Fstab { .. } => "a mount node",
                    NodeKind::LocalLoop { .. } | NodeKind::Partition { .. } => "nothing",
                };
                return Err(Error::WrongBase {
                    at: Box::new(at_node(source, n)),
                    plugin: n.kind_name(),
                    node: n.name.clone(),
                    base: b.clone(),
                    found: base.kind_name(),
                    expected,
                });
            }
        }
    }
    Ok(())
}

/// Labels fit their filesystem and are unique.
fn check_filesystems(nodes: &[Node], source: &str) -> Result<(), Error> {
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for n in nodes {
        let NodeKind::Mkfs { fstype, label, .. } = &n.kind else {
            continue;
        };
        if label.is_empty() {
            continue;
        }
        if let Some(max) = label_max(fstype) {
            if label.chars().count() > max {
                return Err(Error::LabelTooLong {
                    at: Box::new(at_node(source, n)),
                    node: n.name.clone(),
                    label: label.clone(),
                    fstype: fstype.clone(),
                    max,
                });
            }
        }
        if let Some(first) = seen.get(label.as_str()) {
            return Err(Error::DuplicateLabel {
                at: Box::new(at_node(source, n)),
                label: label.clone(),
                first: (*first).to_owned(),
                second: n.name.clone(),
            });
        }
        seen.insert(label, &n.name);
    }
    Ok(())
}

fn mkfs_of<'n>(nodes: &'n [Node], mount: &Node) -> Option<&'n Node> {
    nodes.iter().find(|n| mount.base.first() == Some(&n.name))
}

/// Mount points are absolute, unique and include `/`; fills in mount targets. Returns the
/// mount node names sorted by mount point.
fn check_mounts(nodes: &mut [Node], source: &str, params: &Params) -> Result<Vec<String>, Error> {
    let swap_mounts: Vec<bool> = nodes
        .iter()
        .map(|n| {
            matches!(n.kind, NodeKind::Mount { .. })
                && matches!(mkfs_of(nodes, n).map(|m| &m.kind), Some(NodeKind::Mkfs { fstype, .. }) if fstype == "swap")
        })
        .collect();
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut mounts: Vec<(String, String)> = Vec::new();
    for (n, swap) in nodes.iter_mut().zip(swap_mounts) {
        let at = Box::new(at_node(source, n));
        let name = n.name.clone();
        let NodeKind::Mount {
            mount_point,
            target,
        } = &mut n.kind
        else {
            continue;
        };
        if swap {
            *target = PathBuf::new();
            mounts.push((mount_point.clone(), name));
            continue;
        }
        let p = Path::new(mount_point.as_str());
        let bad = !p.is_absolute()
            || p.components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir));
        if bad {
            return Err(Error::InvalidValue {
                at,
                plugin: "mount",
                node: name,
                key: "mount_point".into(),
                value: mount_point.clone(),
                reason: "a mount point is an absolute path inside the image, such as / or /boot"
                    .into(),
            });
        }
        let normal: PathBuf = p.components().collect();
        let mp = normal.to_string_lossy().into_owned();
        if let Some(first) = seen.get(&mp) {
            return Err(Error::DuplicateMountPoint {
                at,
                mount_point: mp,
                first: first.clone(),
                second: name,
            });
        }
        seen.insert(mp.clone(), name.clone());
        *target = mount_target(&params.mount_base, &mp);
        mount_point.clone_from(&mp);
        mounts.push((mp, name));
    }
    if !seen.contains_key("/") {
        return Err(Error::NoRootMount {
            config: source.to_owned(),
        });
    }
    mounts.sort();
    Ok(mounts.into_iter().map(|(_, n)| n).collect())
}

/// `<mount_base>/<mount_point>`; the root is the mount base itself.
pub(crate) fn mount_target(base: &Path, mount_point: &str) -> PathBuf {
    let rel = mount_point.trim_start_matches('/');
    if rel.is_empty() {
        base.to_path_buf()
    } else {
        base.join(rel)
    }
}

/// The partitions of a table: their node indexes and what each asks for, in table order.
fn partition_requests(nodes: &[Node], partitions: &[String]) -> (Vec<usize>, Vec<PartReq>) {
    let part_idx: Vec<usize> = partitions
        .iter()
        .map(|p| {
            nodes
                .iter()
                .position(|n| &n.name == p)
                .expect("partition node exists")
        })
        .collect();
    let reqs: Vec<PartReq> = part_idx
        .iter()
        .map(|&i| match &nodes[i].kind {
            NodeKind::Partition { size, primary, .. } => PartReq {
                name: nodes[i].name.clone(),
                size: *size,
                primary: *primary,
            },
            _ => unreachable!("partition nodes are partitions"),
        })
        .collect();
    (part_idx, reqs)
}

/// Numbers partitions and, when the image size is known, places them.
fn lay_out(
    nodes: &mut [Node],
    source: &str,
    params: &Params,
) -> Result<BTreeMap<String, TableLayout>, Error> {
    let mut layouts = BTreeMap::new();
    let tables: Vec<usize> = (0..nodes.len())
        .filter(|i| matches!(nodes[*i].kind, NodeKind::PartitionTable { .. }))
        .collect();
    for ti in tables {
        let table = nodes[ti].clone();
        let NodeKind::PartitionTable {
            label,
            align,
            partitions,
            ..
        } = &table.kind
        else {
            continue;
        };
        let image = nodes
            .iter()
            .find(|n| table.base.first() == Some(&n.name))
            .cloned()
            .expect("bases were checked");
        let NodeKind::LocalLoop {
            size, block_size, ..
        } = image.kind
        else {
            continue;
        };
        let (part_idx, reqs) = partition_requests(nodes, partitions);
        if *align % block_size != 0 {
            return Err(Error::InvalidValue {
                at: Box::new(at_node(source, &table)),
                plugin: "partitioning",
                node: table.name.clone(),
                key: "align".into(),
                value: human(*align),
                reason: format!("the alignment must be a multiple of the {block_size}-byte sector"),
            });
        }
        let disk = size.or(params.image_size);
        // Without a size, lay out on a huge disk only to check the structure and number
        // the partitions.
        let probe = disk.unwrap_or(1 << 50);
        let result = match label {
            TableLabel::Mbr => layout::mbr(&reqs, probe, block_size, *align),
            TableLabel::Gpt => layout::gpt(&reqs, probe, block_size),
        };
        let lay = match result {
            Ok(l) => l,
            Err(LayoutError::Mbr { index, reason }) => {
                return Err(Error::BadMbrLayout {
                    at: Box::new(at_node(source, &nodes[part_idx[index]])),
                    table: table.name.clone(),
                    reason,
                })
            }
            Err(LayoutError::DoesNotFit { index, detail }) => {
                let detail = match disk {
                    Some(d) => format!("{detail} (image size {})", human(d)),
                    None => detail,
                };
                return Err(Error::PartitionsDoNotFit {
                    at: Box::new(at_node(source, &nodes[part_idx[index]])),
                    table: table.name.clone(),
                    image: image.name.clone(),
                    detail,
                });
            }
        };
        for (&i, ext) in part_idx.iter().zip(&lay.extents) {
            if let NodeKind::Partition {
                number,
                start,
                sectors,
                ..
            } = &mut nodes[i].kind
            {
                *number = ext.number;
                if disk.is_some() {
                    *start = Some(ext.start);
                    *sectors = Some(ext.sectors);
                }
            }
        }
        if disk.is_some() {
            layouts.insert(table.name.clone(), lay);
        }
    }
    Ok(layouts)
}

/// Builds the graph and orders it: topological, ties broken by name.
fn order(
    nodes: Vec<Node>,
    mounts: &[String],
    source: &str,
) -> Result<(Vec<Node>, DiGraph<String, ()>), Error> {
    let mut graph = DiGraph::<String, ()>::new();
    let idx: HashMap<String, NodeIndex> = nodes
        .iter()
        .map(|n| (n.name.clone(), graph.add_node(n.name.clone())))
        .collect();
    for n in &nodes {
        for b in &n.base {
            graph.update_edge(idx[b], idx[&n.name], ());
        }
        if let NodeKind::PartitionTable { partitions, .. } = &n.kind {
            for pair in partitions.windows(2) {
                graph.update_edge(idx[&pair[0]], idx[&pair[1]], ());
            }
        }
    }
    for pair in mounts.windows(2) {
        graph.update_edge(idx[&pair[0]], idx[&pair[1]], ());
    }

    let mut indegree: HashMap<NodeIndex, usize> = graph
        .node_indices()
        .map(|i| (i, graph.neighbors_directed(i, Direction::Incoming).count()))
        .collect();
    let mut ready: BinaryHeap<Reverse<(String, NodeIndex)>> = indegree
        .iter()
        .filter(|(_, d)| **d == 0)
        .map(|(i, _)| Reverse((graph[*i].clone(), *i)))
        .collect();
    let mut ordered = Vec::with_capacity(nodes.len());
    while let Some(Reverse((name, i))) = ready.pop() {
        ordered.push(name);
        for next in graph.neighbors_directed(i, Direction::Outgoing) {
            let d = indegree.get_mut(&next).expect("every node has a degree");
            *d -= 1;
            if *d == 0 {
                ready.push(Reverse((graph[next].clone(), next)));
            }
        }
    }
    if ordered.len() != nodes.len() {
        let mut stuck: Vec<String> = nodes
            .iter()
            .filter(|n| !ordered.contains(&n.name))
            .map(|n| n.name.clone())
            .collect();
        stuck.sort();
        return Err(Error::Cycle {
            config: source.to_owned(),
            nodes: stuck,
        });
    }
    let mut by_name: HashMap<String, Node> =
        nodes.into_iter().map(|n| (n.name.clone(), n)).collect();
    let nodes = ordered
        .iter()
        .map(|n| by_name.remove(n).expect("ordered names are node names"))
        .collect();
    Ok((nodes, graph))
}

/// An lv of an lvm entry: its checked settings (`size` or `extents`, `type`, `thin-pool`).
fn lvm_lv(ik: &Keys<'_>, base: &[String], options: Vec<String>) -> Result<NodeKind, Error> {
    ik.warn_unknown(&[
        "name",
        "base",
        "options",
        "size",
        "extents",
        "type",
        "thin-pool",
    ]);
    if base.len() != 1 {
        let y = ik.get("base").expect("base was read");
        return Err(ik.invalid("base", y, "an lv belongs to exactly one vg"));
    }
    let size = ik.size("size")?;
    let extents = ik.string("extents")?;
    let lv_type = ik.string("type")?;
    let thin_pool = ik.string("thin-pool")?;
    if let (Some(t), Some(y)) = (&lv_type, ik.get("type")) {
        if t != "thin" && t != "thin-pool" {
            return Err(ik.invalid("type", y, "an lv `type` is `thin` or `thin-pool`"));
        }
    }
    if size.is_none() && extents.is_none() {
        return Err(ik.missing("size"));
    }
    if lv_type.as_deref() == Some("thin") {
        if thin_pool.is_none() {
            return Err(ik.missing("thin-pool"));
        }
        if size.is_none() {
            return Err(ik.missing("size"));
        }
    }
    Ok(NodeKind::LvmLv {
        vg: base[0].clone(),
        size,
        extents,
        lv_type,
        thin_pool,
        options,
    })
}

/// The MBR type of a partition: one hex byte as written (`0x83` by default).
fn mbr_type(k: &Keys<'_>) -> Result<String, Error> {
    Ok(if let Some(y) = k.get("type") {
        // The text as written: `0x83`, '0x83', `83` and `ef` all mean a hex byte.
        let Some(t) = y
            .scalar_text()
            .filter(|_| matches!(y.v, V::Str(_)) || y.raw.is_some())
        else {
            return Err(k.invalid("type", y, "write the MBR type as a hex string, e.g. '0x83'"));
        };
        let hex = t.trim().trim_start_matches("0x").trim_start_matches("0X");
        let v = u8::from_str_radix(hex, 16).map_err(|_| {
            k.invalid(
                "type",
                y,
                "an MBR type is one hex byte, e.g. '0x83' or '0xef'",
            )
        })?;
        if v == 0 || v == 0x05 || v == 0x0F || v == 0x85 {
            return Err(k.invalid(
                "type",
                y,
                "this type is reserved (empty or extended partition); kiln makes the \
                 extended partition itself for non-primary partitions",
            ));
        }
        format!("0x{v:02x}")
    } else {
        "0x83".to_owned()
    })
}

/// The GPT type of a partition: an sgdisk code or a type GUID (`8300` by default).
fn gpt_type(k: &Keys<'_>) -> Result<String, Error> {
    Ok(match k.get("type") {
        None => "8300".to_owned(),
        Some(y) => {
            // sgdisk codes as DIB's layouts write them: 'EF00', '8300', and with
            // a 0x prefix ('0x4100' in DIB's ppc64el layout).
            let mut t = y
                .scalar_text()
                .unwrap_or_default()
                .trim()
                .to_ascii_uppercase();
            if let Some(hex) = t.strip_prefix("0X") {
                if (1..=4).contains(&hex.len()) && hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    t = format!("{hex:0>4}");
                }
            }
            let code = t.len() == 4 && t.chars().all(|c| c.is_ascii_hexdigit());
            let guid = t.len() == 36
                && t.chars().enumerate().all(|(i, c)| {
                    if [8, 13, 18, 23].contains(&i) {
                        c == '-'
                    } else {
                        c.is_ascii_hexdigit()
                    }
                });
            if !code && !guid {
                return Err(k.invalid(
                    "type",
                    y,
                    "a GPT type is an sgdisk code such as '8300' or 'EF00', or a \
                     type GUID",
                ));
            }
            t
        }
    })
}
