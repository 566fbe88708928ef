//! kiln's end-to-end tests (the last tier of `scripts/test`): real builds, teardown on failure
//! and interrupt, the phase cache, and boots. They need root, loop devices, the host tools of
//! `scripts/install-host-deps` and the Debian mirror of the host's apt sources; without them each
//! test skips visibly, and under CI a skip fails.
//!
//! Each distinct image is built once and checked many ways: the default-release root filesystem
//! (tar, tgz, squashfs) is also the root of the tiny fixture OS of the failure and cache tests;
//! one hybrid VM image boots under UEFI and BIOS; one image of DIB's own tree is written in every
//! disk format. New outputs belong in these builds, not in new ones.

mod cache;
mod dib;
mod failures;
mod harness;
mod initramfs;
mod keys;
mod locked;
mod matrix;
mod paths;
mod publish;
mod rootfs;
#[path = "../it/support.rs"]
#[allow(dead_code)]
mod support;
mod vm;

/// The kiln binary under test.
pub fn kiln_bin() -> std::path::PathBuf {
    support::kiln_bin()
}
