//! Detached, armored GPG signatures (`FILE.asc`) of the tree's index and checksum files.
//!
//! kiln does not handle keys: it runs the host's `gpg --batch --local-user KEY --detach-sign
//! --armor`, so the key stays in the user's keyring and agent (`GNUPGHOME` is honoured). The
//! signature is written to a temporary name the caller renames into place.

use std::path::Path;

use kiln_host::Cmd;

use crate::Error;

/// Signs `file` with `key`, writing the armored detached signature to `out`.
pub fn detach_sign(key: &str, file: &Path, out: &Path) -> Result<(), Error> {
    Cmd::new("gpg")
        .args([
            "--batch",
            "--yes",
            "--local-user",
            key,
            "--detach-sign",
            "--armor",
        ])
        .arg("--output")
        .arg(out)
        .arg(file)
        .run()?;
    Ok(())
}
