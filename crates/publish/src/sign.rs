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

/// Whether `asc` is a good signature of `file` made by `key` (a key id, fingerprint or user id,
/// as for `--local-user`): the signing (sub)key or its primary key is one of the keys `key`
/// names in the keyring. An unchanged index whose signature passes is not signed again, so
/// publishing the same builds twice changes no byte of the tree.
pub fn signed_by(key: &str, file: &Path, asc: &Path) -> bool {
    let Ok(listed) = Cmd::new("gpg")
        .args(["--batch", "--with-colons", "--list-keys", key])
        .run()
    else {
        return false;
    };
    let fingerprints: Vec<String> = listed
        .stdout_str()
        .lines()
        .filter(|l| l.starts_with("fpr:"))
        .filter_map(|l| l.split(':').nth(9).map(str::to_string))
        .collect();
    let Ok(verified) = Cmd::new("gpg")
        .args(["--batch", "--status-fd", "1", "--verify"])
        .arg(asc)
        .arg(file)
        .run()
    else {
        return false;
    };
    // [GNUPG:] VALIDSIG <signing key fpr> <date> <time> ... <primary key fpr>
    verified.stdout_str().lines().any(|l| {
        l.strip_prefix("[GNUPG:] VALIDSIG ").is_some_and(|rest| {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields
                .first()
                .into_iter()
                .chain(fields.last())
                .any(|f| fingerprints.iter().any(|k| k == f))
        })
    })
}
