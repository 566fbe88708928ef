//! A build that failed for want of space says which filesystem is full.
//!
//! Hooks and tools report ENOSPC about some file ("tar: …: Cannot write: No space left on
//! device"), or not at all (tar piping into a compressor says "Wrote only 4096 of 10240
//! bytes"); the user needs the filesystem and the fix. When a build fails, [`Ctx::space_note`]
//! looks, before the teardown frees anything, at the filesystems the build writes to (the build
//! and image directories under TMPDIR, the output directory, the cache) and names each one
//! that is full. The cache names itself when one of its stores fails
//! ([`crate::cache::Error::NoSpace`]), so that error needs no note.

use std::path::Path;

use super::Ctx;
use crate::cache::space::{mentions_no_space, Filesystem};
use crate::Error;

impl Ctx<'_> {
    /// What to tell the user about the full filesystems behind `err`, if any is full (or, when
    /// `err` reports ENOSPC, nearly so).
    pub(super) fn space_note(&self, err: &Error) -> Option<String> {
        if matches!(err, Error::Cache(crate::cache::Error::NoSpace { .. })) {
            return None;
        }
        let enospc = mentions_no_space(&err.to_string());
        let tmpdir = "point TMPDIR at a larger filesystem (with DIB_NO_TMPFS=1 the build \
                      directory is on TMPDIR's filesystem, otherwise it is a tmpfs in memory)";
        let out_dir = self
            .plan
            .image_name
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let places: [(&str, &Path, &str); 4] = [
            ("the build directory", &self.ws.build_dir, tmpdir),
            ("the image directory", &self.ws.image_dir, tmpdir),
            (
                "the output directory",
                out_dir,
                "free space there or write the image elsewhere (-o)",
            ),
            (
                "the cache",
                &self.plan.cache_root,
                "free space there, lower KILN_CACHE_MAX_SIZE or point DIB_IMAGE_CACHE at a \
                 larger filesystem",
            ),
        ];
        let mut seen = Vec::new();
        let mut lines = Vec::new();
        for (what, path, fix) in places {
            let Some(fs) = Filesystem::of(path) else {
                continue;
            };
            if seen.contains(&fs.mount_point) {
                continue;
            }
            seen.push(fs.mount_point.clone());
            if fs.is_full() || (enospc && fs.is_nearly_full()) {
                lines.push(format!(
                    "no space left on the filesystem of {what} ({}: {fs}); {fix}",
                    path.display()
                ));
            }
        }
        (!lines.is_empty()).then(|| lines.join("\n"))
    }
}
