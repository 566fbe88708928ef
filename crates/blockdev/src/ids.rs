//! Identifiers derived from the config: disk ids, GUIDs, filesystem UUIDs and serials.
//!
//! DIB draws these at random, so two builds of the same inputs differ. kiln derives each one
//! from a SHA-256 of the normalised config (the node graph, not the file's spelling or its
//! path) plus what the identifier is for and which node it belongs to. The same config gives
//! the same identifiers on every host and at every time; `SOURCE_DATE_EPOCH` plays no part.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// The seed of all identifiers of one plan.
#[derive(Debug, Clone)]
pub(crate) struct Ids {
    seed: [u8; 32],
}

impl Ids {
    /// Seeds from the canonical JSON of the node list.
    pub fn new(canonical: &serde_json::Value) -> Self {
        let mut h = Sha256::new();
        h.update(b"kiln-blockdev/ids/v1\0");
        h.update(canonical.to_string().as_bytes());
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

    /// A UUID, with the RFC 9562 version 8 ("custom") and variant bits set.
    pub fn uuid(&self, purpose: &str, node: &str) -> String {
        let mut b = [0u8; 16];
        b.copy_from_slice(&self.digest(purpose, node)[..16]);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_distinct() {
        let a = Ids::new(&serde_json::json!([{"name": "image0"}]));
        let b = Ids::new(&serde_json::json!([{"name": "image0"}]));
        let c = Ids::new(&serde_json::json!([{"name": "image1"}]));
        assert_eq!(a.uuid("fs", "root"), b.uuid("fs", "root"));
        assert_ne!(a.uuid("fs", "root"), c.uuid("fs", "root"));
        assert_ne!(a.uuid("fs", "root"), a.uuid("fs", "boot"));
        let u = a.uuid("fs", "root");
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "8");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(a.u32("disk", "x"), 0);
    }
}
