//! The typed, serialisable reports kiln prints as JSON: the plan (`kiln plan --json`) and the
//! cache explanation (`kiln plan --explain-cache --json`, `kiln build --print-cache-keys`).
//!
//! They are plain structs rather than ad hoc JSON so that the shape is written down in one
//! place, checked by the compiler and usable from Rust (the text output reads the same
//! values). Field order is the JSON key order, which the tests compare byte for byte: do not
//! reorder fields.

use std::path::PathBuf;

use serde::ser::SerializeMap as _;
use serde::{Serialize, Serializer};

/// `kiln plan --json`: what a build would do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanReport {
    /// The target architecture.
    pub arch: String,
    /// The image name (path prefix of the outputs).
    pub image_name: PathBuf,
    /// The element search path, in order.
    pub elements_path: Vec<PathBuf>,
    /// Every element of the build, with why it is in.
    pub elements: Vec<PlanElement>,
    /// Elements found more than once on the path, and which copy is used.
    pub overrides: Vec<PlanOverride>,
    /// The hooks of every phase, in DIB's phase order and run order.
    pub phases: PhaseHooks,
    /// The environment.d files, in sourcing order.
    pub environment: Vec<PlanHook>,
    /// The block-device layout (YAML), when an output needs a disk.
    pub block_device: Option<String>,
    /// Where the layout comes from.
    pub block_device_source: String,
    /// The outputs and their paths.
    pub outputs: Vec<PlanOutput>,
    /// The plan's warnings (container outputs with a VM disk or element); absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The hooks of every phase, keyed by phase name (a JSON object, in phase order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PhaseHooks(pub Vec<(String, Vec<PlanHook>)>);

impl Serialize for PhaseHooks {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (phase, hooks) in &self.0 {
            map.serialize_entry(phase, hooks)?;
        }
        map.end()
    }
}

/// One element of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanElement {
    /// The element name.
    pub name: String,
    /// Its directory.
    pub path: PathBuf,
    /// Why it is part of the build.
    pub reason: String,
}

/// An element that is found more than once on the element path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanOverride {
    /// The element name.
    pub name: String,
    /// The directory that is used.
    pub winner: PathBuf,
    /// The directory that is ignored.
    pub shadowed: PathBuf,
}

/// One hook (or environment.d file) and the element it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanHook {
    /// The file name.
    pub name: String,
    /// The element.
    pub element: String,
}

/// One output of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanOutput {
    /// The output type, as its file extension (`qcow2`, `raw`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// Where it is written.
    pub path: PathBuf,
}

/// `kiln plan --explain-cache`: which cached steps a build would reuse, and why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheExplanation {
    /// The release alias the request asked for and the codename the build uses; absent when
    /// `DIB_RELEASE` is a codename.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<crate::release::Resolved>,
    /// The apt suites of the image's sources whose state is keyed (`SUITE URI`); empty offline
    /// and for a locked build.
    pub suites: Vec<String>,
    /// The cached steps, in build order.
    pub steps: Vec<CacheStep>,
    /// The output cache.
    pub outputs: CacheOutputs,
}

/// Whether a cache entry is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheStatus {
    /// Stored: the step would be reused.
    Hit,
    /// Not stored: the step would run.
    Miss,
}

impl CacheStatus {
    /// `Hit` when `hit`, else `Miss`.
    pub fn from_hit(hit: bool) -> Self {
        if hit {
            Self::Hit
        } else {
            Self::Miss
        }
    }

    /// `hit` or `miss`, as in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
        }
    }
}

/// One cached step of a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheStep {
    /// The step name.
    pub step: String,
    /// Its cache key (hex SHA-256).
    pub key: String,
    /// Hit or miss.
    pub status: CacheStatus,
    /// Why it misses, in words (empty on a hit).
    pub reasons: Vec<String>,
}

/// The output cache entry of a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheOutputs {
    /// The output cache key (hex SHA-256).
    pub key: String,
    /// Hit or miss.
    pub status: CacheStatus,
}
