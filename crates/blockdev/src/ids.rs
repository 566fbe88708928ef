//! Identifiers derived from a build seed: disk ids, GUIDs, filesystem UUIDs and serials.
//!
//! DIB draws these at random, so two builds of the same inputs differ, and no image is
//! reproducible. kiln derives each one from `SHA-256(seed, purpose, node name)`: the seed
//! ([`crate::Params::seed`]) stands for the whole build, the purpose says which identifier it
//! is (`fs-uuid`, `gpt-part-guid`, ...) and the node name which device. The pipeline's default
//! seed is a digest of the build's inputs, so the same inputs give the same identifiers on every
//! host and at every time, and images built from different inputs never share one (two images
//! with one layout no longer share their root UUID). Without a seed (planning a layout on its
//! own, `kiln block-device`), the normalised config (the node graph, not the file's spelling or
//! its path) is the seed. `SOURCE_DATE_EPOCH` plays no part.
//!
//! UUIDs are RFC 9562 version 8 ("custom", the hash-derived kind RFC 9562 reserves for
//! application-defined layouts): the first 16 bytes of the digest with the version nibble set
//! to 8 and the variant bits to `10`.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// The seed of all identifiers of one plan.
#[derive(Debug, Clone)]
pub(crate) struct Ids {
    seed: [u8; 32],
}

impl Ids {
    /// Seeds from the build seed `seed` when there is one (any text; empty counts as none),
    /// else from the canonical JSON of the node list.
    pub fn new(seed: Option<&str>, canonical: &serde_json::Value) -> Self {
        let mut h = Sha256::new();
        if let Some(seed) = seed.filter(|s| !s.is_empty()) {
            h.update(b"kiln-blockdev/ids/seed/v1\0");
            h.update(seed.as_bytes());
        } else {
            h.update(b"kiln-blockdev/ids/v1\0");
            h.update(canonical.to_string().as_bytes());
        }
        Ids {
            seed: h.finalize().into(),
        }
    }

    fn digest(&self, purpose: &str, node: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.seed);
        h.update(purpose.as_bytes());
        h.update([0]);
        h.update(node.as_bytes());
        h.finalize().into()
    }

    /// A UUID (lower-case, hyphenated), with the RFC 9562 version 8 ("custom") and variant
    /// bits set.
    pub fn uuid(&self, purpose: &str, node: &str) -> String {
        v8_uuid(&self.digest(purpose, node))
    }

    /// A non-zero 32-bit value (MBR disk id, vfat volume serial).
    pub fn u32(&self, purpose: &str, node: &str) -> u32 {
        let d = self.digest(purpose, node);
        let v = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
        if v == 0 {
            1
        } else {
            v
        }
    }
}

/// The UUID (lower-case, hyphenated) made of the first 16 bytes of `digest`, with the RFC 9562
/// version 8 ("custom") and variant bits set.
pub(crate) fn v8_uuid(digest: &[u8]) -> String {
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().fold(String::with_capacity(32), |mut acc, x| {
        let _ = write!(acc, "{x:02x}");
        acc
    });
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(name: &str) -> serde_json::Value {
        serde_json::json!([{ "name": name }])
    }

    /// A UUID as RFC 9562 writes it: 8-4-4-4-12 lower-case hex digits, version 8, variant 10.
    fn assert_v8(u: &str) {
        let groups: Vec<&str> = u.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{u}"
        );
        assert!(
            u.chars()
                .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c)),
            "{u}"
        );
        assert_eq!(&u[14..15], "8", "version of {u}");
        assert!(
            matches!(&u[19..20], "8" | "9" | "a" | "b"),
            "variant of {u}"
        );
    }

    #[test]
    fn stable_and_distinct_without_seed() {
        let a = Ids::new(None, &layout("image0"));
        let b = Ids::new(None, &layout("image0"));
        let c = Ids::new(None, &layout("image1"));
        assert_eq!(a.uuid("fs", "root"), b.uuid("fs", "root"));
        assert_ne!(a.uuid("fs", "root"), c.uuid("fs", "root"));
        assert_ne!(a.uuid("fs", "root"), a.uuid("fs", "boot"));
        assert_v8(&a.uuid("fs", "root"));
        assert_ne!(a.u32("disk", "x"), 0);
    }

    #[test]
    fn the_seed_decides() {
        // The same seed gives the same identifiers whatever the layout; another seed others.
        let a = Ids::new(Some("s1"), &layout("image0"));
        let b = Ids::new(Some("s1"), &layout("image1"));
        let c = Ids::new(Some("s2"), &layout("image0"));
        for purpose in ["fs-uuid", "gpt-disk-guid", "gpt-part-guid"] {
            assert_eq!(a.uuid(purpose, "root"), b.uuid(purpose, "root"));
            assert_ne!(a.uuid(purpose, "root"), c.uuid(purpose, "root"));
            assert_v8(&a.uuid(purpose, "root"));
            assert_v8(&c.uuid(purpose, "root"));
        }
        assert_eq!(a.u32("mbr-disk-id", "t"), b.u32("mbr-disk-id", "t"));
        assert_ne!(a.u32("mbr-disk-id", "t"), c.u32("mbr-disk-id", "t"));
        // Purposes and nodes stay apart under one seed.
        assert_ne!(a.uuid("fs-uuid", "root"), a.uuid("gpt-part-guid", "root"));
        assert_ne!(a.uuid("fs-uuid", "root"), a.uuid("fs-uuid", "boot"));
        // A seed never collides with the seedless derivation, and empty means none.
        assert_ne!(
            Ids::new(Some("x"), &layout("image0")).uuid("fs", "root"),
            Ids::new(None, &layout("image0")).uuid("fs", "root")
        );
        assert_eq!(
            Ids::new(Some(""), &layout("image0")).uuid("fs", "root"),
            Ids::new(None, &layout("image0")).uuid("fs", "root")
        );
    }
}
