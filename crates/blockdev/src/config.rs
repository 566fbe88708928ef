//! DIB's config document to a flat list of raw nodes (the tree-to-graph step).
//!
//! The config is a YAML list of single-key mappings whose key is a plugin. A plugin key nested
//! inside a node becomes a node of its own: its `base` defaults to the parent's name and its
//! `name` to `<plugin>_<base>`. Items of a partitioning's `partitions` list are nodes too, and
//! a plugin nested in a partition sits on that partition. Tree and graph forms mix freely
//! because the result is the same flat list; edges are resolved later, by name.

use crate::error::{closest, At, Error};
use crate::yaml::{V, Y};

/// The plugin names, in DIB's order.
pub const PLUGIN_NAMES: [&str; 6] = [
    "local_loop",
    "partitioning",
    "lvm",
    "mkfs",
    "mount",
    "fstab",
];

/// A block-device plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plugin {
    LocalLoop,
    Partitioning,
    Lvm,
    Mkfs,
    Mount,
    Fstab,
}

impl Plugin {
    pub fn from_key(key: &str) -> Option<Plugin> {
        Some(match key {
            "local_loop" => Plugin::LocalLoop,
            "partitioning" => Plugin::Partitioning,
            "lvm" => Plugin::Lvm,
            "mkfs" => Plugin::Mkfs,
            "mount" => Plugin::Mount,
            "fstab" => Plugin::Fstab,
            _ => return None,
        })
    }

    pub fn key(self) -> &'static str {
        match self {
            Plugin::LocalLoop => "local_loop",
            Plugin::Partitioning => "partitioning",
            Plugin::Lvm => "lvm",
            Plugin::Mkfs => "mkfs",
            Plugin::Mount => "mount",
            Plugin::Fstab => "fstab",
        }
    }
}

/// One partition of a partitioning node, with its nested plugins already split off.
#[derive(Debug, Clone)]
pub(crate) struct RawPartition {
    pub name: String,
    pub line: u32,
    pub cfg: Vec<(String, Y)>,
}

/// A node after tree-to-graph conversion: plugin, name, base and its own settings.
#[derive(Debug, Clone)]
pub(crate) struct RawNode {
    pub plugin: Plugin,
    pub name: String,
    /// The `base` as written (a string, or a list for lvm), or the parent's name.
    pub base: Option<Y>,
    pub line: u32,
    /// Settings other than name, base, nested plugins and partitions.
    pub cfg: Vec<(String, Y)>,
    pub partitions: Vec<RawPartition>,
}

impl RawNode {
    /// The canonical JSON of the node, the input of derived identifiers.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("plugin".into(), self.plugin.key().into());
        m.insert("name".into(), self.name.clone().into());
        m.insert(
            "base".into(),
            self.base
                .as_ref()
                .map_or(serde_json::Value::Null, Y::to_json),
        );
        for (k, v) in &self.cfg {
            m.insert(k.clone(), v.to_json());
        }
        let parts: Vec<serde_json::Value> = self
            .partitions
            .iter()
            .map(|p| {
                let mut pm = serde_json::Map::new();
                pm.insert("name".into(), p.name.clone().into());
                for (k, v) in &p.cfg {
                    pm.insert(k.clone(), v.to_json());
                }
                pm.into()
            })
            .collect();
        if !parts.is_empty() {
            m.insert("partitions".into(), parts.into());
        }
        m.into()
    }
}

/// Converts the parsed document to raw nodes, in document order (parents before children).
pub(crate) fn to_raw_nodes(doc: &Y, source: &str) -> Result<Vec<RawNode>, Error> {
    let at = |line: u32| At::new(source, line);
    let items = match &doc.v {
        V::Seq(items) => items.as_slice(),
        V::Null => &[],
        V::Map(_) => {
            return Err(Error::NotAList {
                at: at(doc.line),
                what: "the document is a single mapping (write a `- ` before each plugin)".into(),
            })
        }
        _ => {
            return Err(Error::NotAList {
                at: at(doc.line),
                what: format!("the document is {}", doc.kind()),
            })
        }
    };
    let mut out = Vec::new();
    for item in items {
        let Some(entries) = item.as_map() else {
            return Err(Error::NotAList {
                at: at(item.line),
                what: format!("a list entry is {}", item.kind()),
            });
        };
        if entries.len() != 1 {
            return Err(Error::MultiKeyNode {
                at: at(item.line),
                keys: entries.iter().map(|(k, _)| k.clone()).collect(),
            });
        }
        let (key, value) = &entries[0];
        let Some(plugin) = Plugin::from_key(key) else {
            return Err(unknown_plugin(key, at(item.line)));
        };
        recurse(plugin, value, None, item.line, source, &mut out)?;
    }
    Ok(out)
}

fn unknown_plugin(key: &str, at: Box<At>) -> Error {
    Error::UnknownPlugin {
        at,
        plugin: key.to_owned(),
        suggestion: closest(key, PLUGIN_NAMES),
    }
}

fn text_of(y: &Y) -> Option<String> {
    y.scalar_text().filter(|s| !s.is_empty())
}

/// Base as text, for auto-naming (`<plugin>_<base>`); a list base joins its items.
fn base_text(y: &Y) -> Option<String> {
    match &y.v {
        V::Seq(items) => {
            let parts: Vec<String> = items.iter().filter_map(text_of).collect();
            (!parts.is_empty()).then(|| parts.join("_"))
        }
        _ => text_of(y),
    }
}

/// The nodes nested in partitions, each with the name of its partition (its parent).
type Nested<'y> = Vec<(Plugin, &'y Y, u32, String)>;

/// The `partitions` list of the partitioning node `name`: its partitions, and the nodes nested
/// in them.
fn partitions<'y>(
    plugin: Plugin,
    v: &'y Y,
    name: &str,
    line: u32,
    source: &str,
) -> Result<(Vec<RawPartition>, Nested<'y>), Error> {
    let at = |l: u32| At::new(source, if l > 0 { l } else { line });
    let mut partitions = Vec::new();
    let mut partition_children: Nested<'y> = Vec::new();
    let V::Seq(parts) = &v.v else {
        return Err(Error::InvalidValue {
            at: at(v.line),
            plugin: plugin.key(),
            node: name.to_owned(),
            key: "partitions".into(),
            value: v.kind().into(),
            reason: "`partitions` must be a list of partitions".into(),
        });
    };
    for p in parts {
        let Some(pentries) = p.as_map() else {
            return Err(Error::InvalidValue {
                at: at(p.line),
                plugin: plugin.key(),
                node: name.to_owned(),
                key: "partitions".into(),
                value: p.scalar_text().unwrap_or_else(|| p.kind().into()),
                reason: "each partition must be a mapping with at least `name` and `size`".into(),
            });
        };
        let pname = pentries
            .iter()
            .find(|(k, _)| k == "name")
            .and_then(|(_, n)| text_of(n))
            .ok_or_else(|| Error::MissingKey {
                at: at(p.line),
                plugin: "partition",
                node: format!("(partition of {name})"),
                key: "name".into(),
            })?;
        let mut cfg = Vec::new();
        for (pk, pv) in pentries {
            if pk == "name" {
                continue;
            }
            if let Some(child) = Plugin::from_key(pk) {
                partition_children.push((child, pv, pv.line, pname.clone()));
            } else {
                cfg.push((pk.clone(), pv.clone()));
            }
        }
        partitions.push(RawPartition {
            name: pname,
            line: if p.line > 0 { p.line } else { line },
            cfg,
        });
    }
    Ok((partitions, partition_children))
}

fn recurse(
    plugin: Plugin,
    value: &Y,
    parent: Option<&str>,
    fallback_line: u32,
    source: &str,
    out: &mut Vec<RawNode>,
) -> Result<(), Error> {
    let line = if value.line > 0 {
        value.line
    } else {
        fallback_line
    };
    let at = |l: u32| At::new(source, if l > 0 { l } else { line });
    let entries: &[(String, Y)] = match &value.v {
        V::Map(m) => m,
        V::Null => &[],
        _ => {
            return Err(Error::InvalidValue {
                at: at(value.line),
                plugin: plugin.key(),
                node: parent
                    .map_or_else(|| "(unnamed)".into(), |p| format!("{}_{p}", plugin.key())),
                key: plugin.key().into(),
                value: value.scalar_text().unwrap_or_else(|| value.kind().into()),
                reason: "a plugin's settings must be a mapping of keys, e.g. `{name: image0}`"
                    .into(),
            })
        }
    };
    let get = |k: &str| entries.iter().find(|(key, _)| key == k).map(|(_, v)| v);

    let base: Option<Y> = match get("base") {
        Some(b) => Some(b.clone()),
        None => parent.map(|p| Y::new(line, V::Str(p.to_owned()))),
    };
    let name = match get("name") {
        Some(n) => text_of(n).ok_or_else(|| Error::InvalidValue {
            at: at(n.line),
            plugin: plugin.key(),
            node: "(unnamed)".into(),
            key: "name".into(),
            value: n.scalar_text().unwrap_or_else(|| n.kind().into()),
            reason: "a node name must be a non-empty string".into(),
        })?,
        None => match base.as_ref().and_then(base_text) {
            Some(b) => format!("{}_{b}", plugin.key()),
            // The lvm entry itself is not a node (its pvs, vgs and lvs are), so it needs no name.
            None if plugin == Plugin::Lvm => "lvm".to_owned(),
            None => {
                // Without a name or a base there is nothing to call the node.
                let key = if plugin == Plugin::LocalLoop {
                    "name"
                } else {
                    "base"
                };
                return Err(Error::MissingKey {
                    at: at(line),
                    plugin: plugin.key(),
                    node: "(unnamed)".into(),
                    key: key.into(),
                });
            }
        },
    };

    let mut node = RawNode {
        plugin,
        name: name.clone(),
        base,
        line,
        cfg: Vec::new(),
        partitions: Vec::new(),
    };
    let mut children: Vec<(Plugin, &Y, u32)> = Vec::new();
    let mut partition_children: Vec<(Plugin, &Y, u32, String)> = Vec::new();
    for (k, v) in entries {
        if k == "name" || k == "base" {
            continue;
        }
        if let Some(child) = Plugin::from_key(k) {
            children.push((child, v, v.line));
            continue;
        }
        if k == "partitions" && plugin == Plugin::Partitioning {
            let (parts, nested) = partitions(plugin, v, &name, line, source)?;
            node.partitions.extend(parts);
            partition_children.extend(nested);
            continue;
        }
        node.cfg.push((k.clone(), v.clone()));
    }
    out.push(node);
    for (child, v, l, pname) in partition_children {
        recurse(child, v, Some(&pname), l, source, out)?;
    }
    for (child, v, l) in children {
        recurse(child, v, Some(&name), l, source, out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse;

    fn names(text: &str) -> Vec<(String, Option<String>)> {
        let doc = parse(text).unwrap();
        to_raw_nodes(&doc, "t.yaml")
            .unwrap()
            .into_iter()
            .map(|n| (n.name, n.base.and_then(|b| b.scalar_text())))
            .collect()
    }

    #[test]
    fn dib_auto_naming() {
        let text = "
- local_loop:
    name: image0
- partitioning:
    base: image0
    label: mbr
    partitions:
      - name: root
        flags: [boot, primary]
        size: 100%
        mkfs:
          mount:
            mount_point: /
            fstab:
              options: defaults
              fsck-passno: 1
";
        let n = names(text);
        let got: Vec<&str> = n.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(
            got,
            [
                "image0",
                "partitioning_image0",
                "mkfs_root",
                "mount_mkfs_root",
                "fstab_mount_mkfs_root"
            ]
        );
        assert_eq!(n[2].1.as_deref(), Some("root"));
        assert_eq!(n[3].1.as_deref(), Some("mkfs_root"));
        assert_eq!(n[4].1.as_deref(), Some("mount_mkfs_root"));
    }

    #[test]
    fn structural_errors() {
        let doc = parse("- local_loop: {name: a}\n  mkfs: {}\n").unwrap();
        assert!(matches!(
            to_raw_nodes(&doc, "s"),
            Err(Error::MultiKeyNode { .. })
        ));
        let doc = parse("- localloop: {name: a}\n").unwrap();
        let e = to_raw_nodes(&doc, "s").unwrap_err();
        assert!(e.to_string().contains("did you mean `local_loop`"), "{e}");
        let doc = parse("local_loop: {name: a}\n").unwrap();
        assert!(matches!(
            to_raw_nodes(&doc, "s"),
            Err(Error::NotAList { .. })
        ));
    }
}
