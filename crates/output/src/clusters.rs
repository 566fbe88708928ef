//! Reusing the compressed clusters of an earlier qcow2 image.
//!
//! A rebuild after a small change (one finalise hook edited, one package added) makes a raw
//! disk that differs from the last one in a few clusters, yet compressing every cluster again
//! was the largest single step of such a rebuild. Next to each qcow2 it writes, kiln's writer
//! can leave an [`Index`]: for every data cluster, the CRC-32 of its raw content and where its
//! stored form lies in the file. A later conversion given that image and index ([`Memo`]) looks
//! each new cluster up by CRC, reads the earlier stored form, and takes it only after checking
//! that it holds exactly the same bytes: a compressed form is inflated and compared in full, an
//! uncompressed one compared as it is. So a damaged or stale earlier image can cost time, never
//! correctness.
//!
//! The result is the file a fresh conversion would write, byte for byte: deflate is
//! deterministic for the same input, level and implementation, a cluster that did not shrink is
//! stored raw either way, and the layout (guest order, packed back to back) does not depend on
//! where the bytes came from. An index records who wrote it (the caller's `writer` string: kiln
//! passes its own identity, version and binary digest, so another zlib build or level is never
//! mixed in), the level and the cluster size; an index that differs in any of them is not used.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use flate2::{Decompress, FlushDecompress, Status};
use serde::{Deserialize, Serialize};

use crate::qcow2::Options;

/// The version of the index's own layout.
const INDEX_FORMAT: u32 = 1;

/// One data cluster of an image, as its index records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// CRC-32 of the cluster's raw content (the whole cluster, zero-padded at the end).
    pub crc: u32,
    /// Where its stored form starts in the qcow2 file.
    pub offset: u64,
    /// How many bytes its stored form takes.
    pub len: u32,
    /// Stored uncompressed (it did not shrink).
    pub raw: bool,
}

/// What a qcow2 written by kiln holds, cluster by cluster, and how it was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// [`INDEX_FORMAT`].
    pub format: u32,
    /// Who wrote the image (kiln's identity); only the same writer's clusters are reused.
    pub writer: String,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// zlib level.
    pub level: u32,
    /// Every data cluster, in guest order.
    pub clusters: Vec<Entry>,
    /// How many of them were taken from an earlier image when this one was written.
    pub reused: u64,
}

impl Index {
    /// An empty index of an image written by `writer` with `opts`.
    pub fn new(writer: &str, opts: &Options) -> Self {
        Self {
            format: INDEX_FORMAT,
            writer: writer.to_string(),
            cluster_bits: opts.cluster_bits,
            level: opts.level.clamp(1, 9),
            clusters: Vec::new(),
            reused: 0,
        }
    }

    /// Writes the index as JSON to `path` (through a temporary file renamed into place).
    pub fn save(&self, path: &Path) -> Result<(), crate::Error> {
        let io = |source| crate::Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let bytes = serde_json::to_vec(self).map_err(|e| io(std::io::Error::other(e)))?;
        let tmp = path.with_extension("kiln-tmp");
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                io(e)
            })
    }
}

/// Where a conversion may find earlier clusters, and where it leaves the new image's index
/// ([`crate::Options::qcow2_reuse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reuse {
    /// The writer's identity, recorded in the new index and required of an earlier one.
    pub writer: String,
    /// Earlier images and their indexes, the most promising first; the first one that opens
    /// and matches is used.
    pub earlier: Vec<(PathBuf, PathBuf)>,
    /// Where the new image's index is written.
    pub index_out: PathBuf,
}

/// An earlier image opened for reuse: its file and its clusters by CRC.
#[derive(Debug)]
pub struct Memo {
    file: File,
    pub(crate) by_crc: HashMap<u32, Vec<Entry>>,
    cluster_size: usize,
}

impl Memo {
    /// Opens the image `qcow2` with its index `index` for a conversion with `opts` by `writer`;
    /// `None` when either cannot be read or the index was written by another writer, at
    /// another level or cluster size (nothing is reused then, and nothing fails).
    pub fn open(qcow2: &Path, index: &Path, writer: &str, opts: &Options) -> Option<Self> {
        let text = std::fs::read(index).ok()?;
        let idx: Index = serde_json::from_slice(&text).ok()?;
        let want = Index::new(writer, opts);
        if idx.format != want.format
            || idx.writer != want.writer
            || idx.cluster_bits != want.cluster_bits
            || idx.level != want.level
        {
            return None;
        }
        let file = File::open(qcow2).ok()?;
        let len = file.metadata().ok()?.len();
        let cluster_size: usize = 1 << opts.cluster_bits;
        let mut by_crc: HashMap<u32, Vec<Entry>> = HashMap::new();
        // The index is not covered by the entry's digests: an entry that cannot describe a
        // stored cluster of this file (empty, longer than a cluster, past its end) is dropped.
        let fits = |e: &Entry| {
            let n = e.len as usize;
            n > 0
                && n <= cluster_size
                && (!e.raw || n == cluster_size)
                && e.offset
                    .checked_add(u64::from(e.len))
                    .is_some_and(|end| end <= len)
        };
        for e in idx.clusters.into_iter().filter(fits) {
            by_crc.entry(e.crc).or_default().push(e);
        }
        Some(Self {
            file,
            by_crc,
            cluster_size,
        })
    }

    /// The earlier stored form of `cluster` (whose CRC-32 is `crc`), checked to hold exactly
    /// its bytes: `Some(Ok(bytes))` for a compressed form, `Some(Err(()))` when the earlier
    /// image stored it uncompressed; `None` when no earlier cluster has this content.
    pub(crate) fn find(
        &self,
        crc: u32,
        cluster: &[u8],
        inflate: &mut Decompress,
        scratch: &mut Vec<u8>,
    ) -> Option<Result<Vec<u8>, ()>> {
        if cluster.len() != self.cluster_size {
            return None;
        }
        for e in self.by_crc.get(&crc)? {
            let mut stored = vec![0u8; e.len as usize];
            if self.file.read_exact_at(&mut stored, e.offset).is_err() {
                continue;
            }
            if e.raw {
                if stored == cluster {
                    return Some(Err(()));
                }
                continue;
            }
            inflate.reset(false);
            scratch.clear();
            scratch.reserve(self.cluster_size);
            let whole = matches!(
                inflate.decompress_vec(&stored, scratch, FlushDecompress::Finish),
                Ok(Status::StreamEnd)
            );
            if whole && inflate.total_in() == stored.len() as u64 && scratch.as_slice() == cluster {
                return Some(Ok(stored));
            }
        }
        None
    }
}

/// CRC-32 of a cluster's content.
pub(crate) fn crc(cluster: &[u8]) -> u32 {
    let mut c = flate2::Crc::new();
    c.update(cluster);
    c.sum()
}
