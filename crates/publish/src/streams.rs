//! Simplestreams for Incus and LXD: `streams/v1/index.json` and `streams/v1/images.json`.
//!
//! The shape is the one `incus-simplestreams add` writes (a test compares the two): products
//! keyed `os:release:variant:arch` with the alias `os/release/variant`; versions keyed by the
//! creation time as `YYYYMMDDhhmm` in UTC; items keyed by file type. The metadata tarball item
//! (`incus.tar.xz`) carries the fingerprint of each image it describes
//! (`combined_squashfs_sha256`, `combined_disk-kvm-img_sha256`: sha256 over the metadata bytes
//! then the data bytes, as Incus computes it); the unified tarball (`incus_combined.tar.gz`) is
//! its own fingerprint. Item paths point into the LXC layout's build directories, so one copy
//! of each file serves both kinds of client.

use std::collections::BTreeMap;

use serde::Serialize;

/// `streams/v1/index.json`.
#[derive(Debug, Serialize)]
pub struct Index {
    /// The one index entry, `images`.
    pub index: BTreeMap<String, IndexEntry>,
    /// `index:1.0`.
    pub format: &'static str,
}

/// The `images` entry of the index.
#[derive(Debug, Serialize)]
pub struct IndexEntry {
    /// `image-downloads`.
    pub datatype: &'static str,
    /// `streams/v1/images.json`.
    pub path: &'static str,
    /// Every product key of images.json.
    pub products: Vec<String>,
    /// `products:1.0`.
    pub format: &'static str,
}

/// `streams/v1/images.json`.
#[derive(Debug, Serialize)]
pub struct Products {
    /// `images`.
    pub content_id: &'static str,
    /// `image-downloads`.
    pub datatype: &'static str,
    /// `products:1.0`.
    pub format: &'static str,
    /// Products by key.
    pub products: BTreeMap<String, Product>,
}

/// One image (os, release, variant, architecture) and its versions.
#[derive(Debug, Serialize)]
pub struct Product {
    /// `os/release/variant`.
    pub aliases: String,
    /// Debian architecture name.
    pub arch: String,
    /// Distribution.
    pub os: String,
    /// Release.
    pub release: String,
    /// Release title (the release).
    pub release_title: String,
    /// Versions by `YYYYMMDDhhmm`.
    pub versions: BTreeMap<String, Version>,
    /// Variant.
    pub variant: String,
}

/// The files of one build.
#[derive(Debug, Serialize)]
pub struct Version {
    /// Items by file type.
    pub items: BTreeMap<String, Item>,
}

/// One file.
#[derive(Debug, Serialize)]
pub struct Item {
    /// Fingerprint of the VM image (metadata item only).
    #[serde(
        rename = "combined_disk-kvm-img_sha256",
        skip_serializing_if = "Option::is_none"
    )]
    pub combined_disk_kvm_img_sha256: Option<String>,
    /// Fingerprint of the container image (metadata item only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub combined_squashfs_sha256: Option<String>,
    /// File type: `incus.tar.xz`, `squashfs`, `disk-kvm.img`, `incus_combined.tar.gz`.
    pub ftype: String,
    /// Path from the tree's root.
    pub path: String,
    /// SHA256 of the file.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// The simplestreams version key of a creation time: `YYYYMMDDhhmm`, UTC.
pub fn version_key(creation_date: u64) -> String {
    crate::rfc3339(creation_date)
        .chars()
        .filter(char::is_ascii_digit)
        .take(12)
        .collect()
}

/// The product key of an image.
pub fn product_key(os: &str, release: &str, variant: &str, arch: &str) -> String {
    format!("{os}:{release}:{variant}:{arch}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_keys_are_utc_minutes() {
        assert_eq!(version_key(1_700_000_000), "202311142213");
        assert_eq!(version_key(0), "197001010000");
        assert_eq!(version_key(951_782_400), "200002290000");
    }
}
