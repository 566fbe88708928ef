//! Errors of the block-device layer.
//!
//! Config problems are found before anything is created, and each kind has its own variant so
//! that callers (and tests) can tell them apart. Every config message is one line that starts
//! with where the problem is (`<source>:<line>:`, the source being a file path or
//! `DIB_BLOCK_DEVICE_CONFIG`) and ends with what to do about it.

use std::fmt;
use std::path::PathBuf;

use kiln_host::Error as RunError;

/// Where in a block-device config something is: its source and, when known, the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At {
    /// The config's source: a file path, or `DIB_BLOCK_DEVICE_CONFIG` for inline YAML.
    pub source: String,
    /// The 1-based line, when known.
    pub line: Option<u32>,
}

impl At {
    /// A location, boxed as [`Error`] holds it (so that the error stays small); line 0 means
    /// unknown.
    pub fn new(source: &str, line: u32) -> Box<Self> {
        Box::new(At {
            source: source.to_owned(),
            line: (line > 0).then_some(line),
        })
    }
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}", self.source),
            None => f.write_str(&self.source),
        }
    }
}

/// Formats an optional "did you mean" hint.
fn hint(suggestion: Option<&String>) -> String {
    suggestion.map_or_else(String::new, |s| format!(" (did you mean `{s}`?)"))
}

fn line_hint(line: Option<u32>) -> String {
    line.map_or_else(String::new, |l| format!(" (first at line {l})"))
}

/// Everything that can go wrong while parsing, planning or creating block devices.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The config is not valid YAML.
    #[error(
        "{at}: malformed YAML{}: {message}; fix the YAML syntax there",
        column.map_or_else(String::new, |c| format!(" (column {c})"))
    )]
    Yaml {
        /// Where the parser stopped.
        at: Box<At>,
        /// The column, when known.
        column: Option<u32>,
        /// The parser's message.
        message: String,
    },

    /// The document is not a list of single-key mappings.
    #[error(
        "{at}: the block-device config must be a list of `- plugin: {{settings}}` entries, \
         but {what}; write it as a YAML list, e.g. `- local_loop: {{name: image0}}`"
    )]
    NotAList {
        /// Where.
        at: Box<At>,
        /// What was found instead.
        what: String,
    },

    /// An entry's key is not a block-device plugin.
    #[error(
        "{at}: unknown block-device plugin `{plugin}`{}; use one of: {}",
        hint(suggestion.as_ref()),
        crate::config::PLUGIN_NAMES.join(", ")
    )]
    UnknownPlugin {
        /// Where.
        at: Box<At>,
        /// The key that was found.
        plugin: String,
        /// The closest known plugin, if any is close.
        suggestion: Option<String>,
    },

    /// An entry has more (or fewer) than one key.
    #[error(
        "{at}: a config entry has {} keys ({}), but each list entry must have exactly one \
         plugin key; split it into one `- plugin: ...` entry per node",
        keys.len(),
        keys.join(", ")
    )]
    MultiKeyNode {
        /// Where.
        at: Box<At>,
        /// The keys of the entry.
        keys: Vec<String>,
    },

    /// Two nodes have the same name.
    #[error(
        "{at}: duplicate node name `{name}`{}; give every node (and partition, pv, vg, lv) a \
         unique `name`",
        line_hint(*first_line)
    )]
    DuplicateName {
        /// Where the second one is.
        at: Box<At>,
        /// The name.
        name: String,
        /// Where the first one is.
        first_line: Option<u32>,
    },

    /// A node's `base` names a node that does not exist.
    #[error(
        "{at}: node `{node}` has base `{base}`, but no node has that name{}; set `base` to \
         the name of an existing node",
        hint(suggestion.as_ref())
    )]
    MissingBase {
        /// Where.
        at: Box<At>,
        /// The node.
        node: String,
        /// The base it names.
        base: String,
        /// The closest existing name, if any is close.
        suggestion: Option<String>,
    },

    /// A node's `base` is a node of the wrong kind.
    #[error(
        "{at}: node `{node}` has base `{base}`, which is a {found} node; a {plugin} node must \
         sit on {expected}; point `base` at such a node"
    )]
    WrongBase {
        /// Where.
        at: Box<At>,
        /// The plugin of the node.
        plugin: &'static str,
        /// The node.
        node: String,
        /// Its base.
        base: String,
        /// What kind of node the base is.
        found: &'static str,
        /// What it should be.
        expected: &'static str,
    },

    /// A required key is missing.
    #[error(
        "{at}: {plugin} node `{node}` is missing the required key `{key}`; add `{key}:` to it"
    )]
    MissingKey {
        /// Where.
        at: Box<At>,
        /// The plugin.
        plugin: &'static str,
        /// The node (or `(unnamed)`).
        node: String,
        /// The key.
        key: String,
    },

    /// A key has a value that cannot be used.
    #[error("{at}: {plugin} node `{}`: invalid `{key}` value `{}`: {reason}", node.escape_debug(), value.escape_debug())]
    InvalidValue {
        /// Where.
        at: Box<At>,
        /// The plugin.
        plugin: &'static str,
        /// The node.
        node: String,
        /// The key.
        key: String,
        /// The value as written.
        value: String,
        /// Why it is wrong and what to write instead.
        reason: String,
    },

    /// Two filesystems have the same label.
    #[error(
        "{at}: label `{label}` of `{second}` is already used by `{first}`; filesystem labels \
         must be unique, so set a different `label` on one of them"
    )]
    DuplicateLabel {
        /// Where the second one is.
        at: Box<At>,
        /// The label.
        label: String,
        /// The first node that has it.
        first: String,
        /// The second node that has it.
        second: String,
    },

    /// A label is longer than its filesystem allows.
    #[error(
        "{at}: label `{label}` of `{node}` has {} characters, but {fstype} allows at most {max}; \
         set a shorter `label`",
        label.chars().count()
    )]
    LabelTooLong {
        /// Where.
        at: Box<At>,
        /// The mkfs node.
        node: String,
        /// The label.
        label: String,
        /// The filesystem type.
        fstype: String,
        /// The longest label it takes.
        max: usize,
    },

    /// Two mounts use the same mount point.
    #[error(
        "{at}: mount point `{mount_point}` of `{second}` is already used by `{first}`; each \
         mount point can be mounted only once"
    )]
    DuplicateMountPoint {
        /// Where the second one is.
        at: Box<At>,
        /// The mount point.
        mount_point: String,
        /// The first mount node.
        first: String,
        /// The second mount node.
        second: String,
    },

    /// The partitions of a table need more space than the image has.
    #[error(
        "{at}: the partitions of `{table}` do not fit in `{image}`: {detail}; make the image \
         larger or the partitions smaller"
    )]
    PartitionsDoNotFit {
        /// Where the table is.
        at: Box<At>,
        /// The partitioning node.
        table: String,
        /// The image node.
        image: String,
        /// Which partition overflows and by how much.
        detail: String,
    },

    /// The MBR-only `primary` flag on a GPT partition.
    #[error(
        "{at}: partition `{partition}` has the `primary` flag, but `{table}` is a GPT table and \
         GPT has no primary/logical distinction; remove `primary` from its flags"
    )]
    PrimaryOnGpt {
        /// Where.
        at: Box<At>,
        /// The table.
        table: String,
        /// The partition.
        partition: String,
    },

    /// An MBR layout that MBR cannot express (too many primaries, primary after logical).
    #[error("{at}: MBR table `{table}`: {reason}")]
    BadMbrLayout {
        /// Where.
        at: Box<At>,
        /// The table.
        table: String,
        /// What is wrong and what to do.
        reason: String,
    },

    /// There is no node named `image0`.
    #[error(
        "{config}: no node is named `image0`; the image that kiln converts is the local_loop \
         node named `image0`, so name the image's local_loop node `image0`"
    )]
    NoImage0 {
        /// The config source (file path or `DIB_BLOCK_DEVICE_CONFIG`).
        config: String,
    },

    /// Nothing is mounted at `/`.
    #[error(
        "{config}: no filesystem is mounted at `/`; add a mount with `mount_point: /` for the \
         root filesystem"
    )]
    NoRootMount {
        /// The config source (file path or `DIB_BLOCK_DEVICE_CONFIG`).
        config: String,
    },

    /// The `base` keys form a cycle.
    #[error(
        "{config}: the nodes {} depend on each other in a cycle; fix their `base` keys",
        nodes.join(", ")
    )]
    Cycle {
        /// The config source (file path or `DIB_BLOCK_DEVICE_CONFIG`).
        config: String,
        /// Nodes that are part of (or wait on) the cycle.
        nodes: Vec<String>,
    },

    /// A size string that cannot be parsed.
    #[error("invalid size `{input}`: {reason}")]
    InvalidSize {
        /// The text.
        input: String,
        /// Why.
        reason: String,
    },

    /// Creating needs the image size, and neither the config nor the params give it.
    #[error(
        "{config}: the size of `{node}` is unknown: it has no `size` key and no image size was \
         given; set `size:` on the local_loop node or pass the image size"
    )]
    ImageSizeUnknown {
        /// The config source (file path or `DIB_BLOCK_DEVICE_CONFIG`).
        config: String,
        /// The local_loop node.
        node: String,
    },

    /// LVM was asked for on a kernel without device-mapper.
    #[error(
        "LVM needs device-mapper, which this kernel lacks (no device-mapper in /proc/misc); use a \
         block-device layout without lvm on this host"
    )]
    NoDeviceMapper,

    /// A filesystem the kernel cannot mount and kiln cannot fill offline.
    #[error(
        "the kernel cannot mount {fstype} (it is not in /proc/filesystems) and kiln can only \
         fill vfat filesystems without mounting them; load the {fstype} module or use another \
         filesystem type for `{node}`"
    )]
    CannotMount {
        /// The mount node.
        node: String,
        /// The filesystem type.
        fstype: String,
    },

    /// vfat must be filled offline, and mtools cannot run.
    #[error(
        "the kernel cannot mount vfat, so kiln fills `{node}` with mtools at teardown, but \
         `mcopy` cannot run ({reason}); install mtools"
    )]
    NoMtools {
        /// The mount node.
        node: String,
        /// Why mcopy failed.
        reason: String,
    },

    /// `losetup` printed no device.
    #[error("`losetup --show` printed no loop device for {}", image.display())]
    NoLoopDevice {
        /// The image file.
        image: PathBuf,
    },

    /// A partition device node did not appear.
    #[error(
        "partition device {device} did not appear after `partx -a`/`partx -u`; check that \
         loop devices support partitions on this host"
    )]
    PartitionDeviceMissing {
        /// The expected device node.
        device: String,
    },

    /// An external command or host operation failed.
    #[error(transparent)]
    Run(#[from] RunError),

    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },

    /// Creating failed, and the rollback could not undo everything either.
    #[error("{cause}; the rollback was incomplete: {rollback}")]
    RollbackFailed {
        /// The error that stopped the creation.
        cause: Box<Error>,
        /// What the rollback could not undo.
        rollback: TeardownError,
    },
}

/// What a teardown could not undo. Teardown keeps going past failures, so this lists them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeardownError {
    /// One line per step that failed, in the order they were tried.
    pub failures: Vec<String>,
}

impl fmt::Display for TeardownError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "teardown could not undo {} step(s): {}",
            self.failures.len(),
            self.failures.join("; ")
        )
    }
}

impl std::error::Error for TeardownError {}

/// The closest candidate by edit distance, when it is close enough to be a plausible typo.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = edit_distance(&word.to_lowercase(), &c.to_lowercase());
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .map(|(_, c)| c.to_owned())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

impl Error {
    /// Whether this is a problem with the configuration itself (the user's input, exit code 2)
    /// rather than a failure while creating devices.
    pub fn is_input_error(&self) -> bool {
        !matches!(
            self,
            Error::ImageSizeUnknown { .. }
                | Error::NoDeviceMapper
                | Error::CannotMount { .. }
                | Error::NoMtools { .. }
                | Error::NoLoopDevice { .. }
                | Error::PartitionDeviceMissing { .. }
                | Error::Run(_)
                | Error::Io { .. }
                | Error::RollbackFailed { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let names = ["local_loop", "partitioning", "mkfs", "mount"];
        assert_eq!(closest("localloop", names).as_deref(), Some("local_loop"));
        assert_eq!(closest("mnt", names).as_deref(), Some("mount"));
        assert_eq!(closest("zzzzzzzzzzzz", names), None);
    }
}
