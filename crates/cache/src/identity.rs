//! Generated identities: files a distribution creates once per machine, which must never be
//! frozen into a shared layer.
//!
//! Package scripts create some files that are meant to be unique to one machine: SSH host keys
//! (openssh-server's postinst), the random seeds systemd and the urandom script save, the iSCSI
//! initiator name (open-iscsi's postinst), the machine id. A layer restored into many builds would
//! hand every image built from it the same keys and names, so [`IDENTITIES`], the one table of
//! them, drives two things:
//!
//! - [`strip`]: before a layer is stored, its entries that are identities are left out (the tree
//!   of the running build keeps them, so that build's image is exactly what it was before), and
//!   [`present`] records in the layer's meta which identities the tree held at that point;
//! - after a build restores a chain of layers, the pipeline runs each recorded row's
//!   [`Identity::regenerate`] script in the chroot, so the build goes on from a tree that has
//!   what a fresh build would have had: new SSH host keys (`ssh-keygen -A`), a new initiator
//!   name (the distribution's `iscsi-iname`, or the `GenerateName=yes` form its package
//!   understands), an empty machine id and no seeds, which is how the distributions ship images
//!   (systemd writes the id and the seed at first boot).
//!
//! A file only counts when it is a regular file and, for the rows with a content rule, when it
//! holds an identity: `/etc/machine-id` reading `uninitialized` or empty, or an initiator-name
//! file saying `GenerateName=yes`, is the image-friendly form and stays in the layer.

use std::fs;
use std::path::{Path, PathBuf};

/// Which files of the tree a row covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Exactly this path, relative to the tree's root.
    File(&'static str),
    /// Every file directly in the directory `dir` whose name starts with `prefix`.
    Prefix {
        /// The directory, relative to the tree's root.
        dir: &'static str,
        /// The start of the file names.
        prefix: &'static str,
    },
}

/// One kind of generated identity.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    /// Short name, recorded in a layer's meta (`ssh-host-keys`).
    pub name: &'static str,
    /// The files it covers.
    pub pattern: Pattern,
    /// Whether the file's content decides (see [`holds_identity`]).
    pub content_rule: ContentRule,
    /// POSIX sh run in the chroot after a restore when the layer's tree had this identity;
    /// empty when the file is simply left out (the system makes it at boot).
    pub regenerate: &'static str,
    /// What makes it and what happens to it, for the docs.
    pub why: &'static str,
}

/// Whether a covered file's content matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentRule {
    /// Every regular file the pattern covers is an identity.
    Any,
    /// A machine id: neither empty nor `uninitialized`.
    MachineId,
    /// An iSCSI initiator-name file with an `InitiatorName=` line.
    InitiatorName,
}

/// The script that writes a fresh initiator name: the distribution's `iscsi-iname` when the
/// tree has it, else the `GenerateName=yes` form open-iscsi's start-up turns into a name.
const ISCSI_REGENERATE: &str = "f=/etc/iscsi/initiatorname.iscsi; \
if command -v iscsi-iname >/dev/null 2>&1; then \
printf 'InitiatorName=%s\\n' \"$(iscsi-iname)\" > \"$f\"; \
else printf 'GenerateName=yes\\n' > \"$f\"; fi; chmod 600 \"$f\"";

/// Every generated identity kiln keeps out of layers, in the order they are regenerated.
pub const IDENTITIES: &[Identity] = &[
    Identity {
        name: "ssh-host-keys",
        pattern: Pattern::Prefix {
            dir: "etc/ssh",
            prefix: "ssh_host_",
        },
        content_rule: ContentRule::Any,
        regenerate: "ssh-keygen -A",
        why: "SSH host keys (openssh-server's postinst); new ones with `ssh-keygen -A`",
    },
    Identity {
        name: "iscsi-initiator-name",
        pattern: Pattern::File("etc/iscsi/initiatorname.iscsi"),
        content_rule: ContentRule::InitiatorName,
        regenerate: ISCSI_REGENERATE,
        why: "the iSCSI initiator name (open-iscsi's postinst); a new one from `iscsi-iname`, \
              else `GenerateName=yes`",
    },
    Identity {
        name: "machine-id",
        pattern: Pattern::File("etc/machine-id"),
        content_rule: ContentRule::MachineId,
        regenerate: ": > /etc/machine-id",
        why: "the machine id (systemd's postinst); left empty, so systemd makes one at boot",
    },
    Identity {
        name: "dbus-machine-id",
        pattern: Pattern::File("var/lib/dbus/machine-id"),
        content_rule: ContentRule::MachineId,
        regenerate: "",
        why: "D-Bus's copy of the machine id (a regular file, not the usual link); left out",
    },
    Identity {
        name: "systemd-random-seed",
        pattern: Pattern::File("var/lib/systemd/random-seed"),
        content_rule: ContentRule::Any,
        regenerate: "",
        why: "systemd's saved random seed; left out, written at boot",
    },
    Identity {
        name: "urandom-seed",
        pattern: Pattern::File("var/lib/urandom/random-seed"),
        content_rule: ContentRule::Any,
        regenerate: "",
        why: "the sysvinit urandom script's saved seed; left out, written at boot",
    },
    Identity {
        name: "systemd-credential-secret",
        pattern: Pattern::File("var/lib/systemd/credential.secret"),
        content_rule: ContentRule::Any,
        regenerate: "",
        why: "systemd's host key for encrypted credentials; left out, made when first needed",
    },
];

impl Pattern {
    /// Whether the relative path `rel` is one this pattern covers.
    fn covers(self, rel: &Path) -> bool {
        match self {
            Pattern::File(f) => rel == Path::new(f),
            Pattern::Prefix { dir, prefix } => {
                rel.parent() == Some(Path::new(dir))
                    && rel
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(prefix))
            }
        }
    }

    /// The files under `root` this pattern covers (not following a symlinked directory).
    fn files_in(self, root: &Path) -> Vec<PathBuf> {
        match self {
            Pattern::File(f) => vec![PathBuf::from(f)],
            Pattern::Prefix { dir, .. } => {
                let full = root.join(dir);
                let is_dir = fs::symlink_metadata(&full).is_ok_and(|m| m.is_dir());
                if !is_dir {
                    return Vec::new();
                }
                let mut v: Vec<PathBuf> = fs::read_dir(&full)
                    .map(|rd| {
                        rd.flatten()
                            .map(|e| Path::new(dir).join(e.file_name()))
                            .filter(|rel| self.covers(rel))
                            .collect()
                    })
                    .unwrap_or_default();
                v.sort();
                v
            }
        }
    }
}

/// Whether `content` holds an identity under `rule`.
pub fn holds_identity(rule: ContentRule, content: &[u8]) -> bool {
    match rule {
        ContentRule::Any => true,
        ContentRule::MachineId => {
            let t = String::from_utf8_lossy(content);
            let t = t.trim();
            !t.is_empty() && t != "uninitialized"
        }
        ContentRule::InitiatorName => String::from_utf8_lossy(content)
            .lines()
            .any(|l| l.trim_start().starts_with("InitiatorName=")),
    }
}

/// The row of [`IDENTITIES`] the entry `rel` of the tree `root` belongs to, if it is a regular
/// file that holds an identity (the path's parents are not followed out of the tree: the
/// patterns name real directories, and a symlink among them makes the entry not count).
pub fn identity_of(root: &Path, rel: &Path) -> Option<&'static Identity> {
    let row = IDENTITIES.iter().find(|i| i.pattern.covers(rel))?;
    let mut p = root.to_path_buf();
    for c in rel.components() {
        p.push(c);
        if fs::symlink_metadata(&p).ok()?.file_type().is_symlink() {
            return None;
        }
    }
    if !fs::symlink_metadata(&p).ok()?.is_file() {
        return None;
    }
    if row.content_rule != ContentRule::Any {
        let content = fs::read(&p).ok()?;
        if !holds_identity(row.content_rule, &content) {
            return None;
        }
    }
    Some(row)
}

/// Splits the entries `changed` of `root` into those a layer may store and the identities it
/// must not.
pub fn strip(root: &Path, changed: &[PathBuf]) -> (Vec<PathBuf>, Vec<PathBuf>) {
    changed
        .iter()
        .cloned()
        .partition(|rel| identity_of(root, rel).is_none())
}

/// The names of the rows of [`IDENTITIES`] the tree `root` holds now, in table order.
pub fn present(root: &Path) -> Vec<String> {
    IDENTITIES
        .iter()
        .filter(|row| {
            row.pattern
                .files_in(root)
                .iter()
                .any(|rel| identity_of(root, rel).is_some_and(|r| r.name == row.name))
        })
        .map(|row| row.name.to_string())
        .collect()
}

/// The rows named in `names` (a layer's record) that have something to regenerate, in table
/// order; unknown names (from another kiln) are ignored.
pub fn to_regenerate(names: &[String]) -> Vec<&'static Identity> {
    IDENTITIES
        .iter()
        .filter(|row| !row.regenerate.is_empty() && names.iter().any(|n| n == row.name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for (p, c) in files {
            let full = t.path().join(p);
            fs::create_dir_all(full.parent().unwrap()).unwrap();
            fs::write(full, c).unwrap();
        }
        t
    }

    fn paths(v: &[&str]) -> Vec<PathBuf> {
        v.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn strip_leaves_out_identities_and_keeps_everything_else() {
        let t = tree(&[
            ("etc/ssh/ssh_host_ed25519_key", "private"),
            ("etc/ssh/ssh_host_ed25519_key.pub", "public"),
            ("etc/ssh/sshd_config", "Port 22"),
            ("etc/machine-id", "0123456789abcdef0123456789abcdef\n"),
            ("var/lib/systemd/random-seed", "seed"),
            ("var/lib/urandom/random-seed", "seed"),
            (
                "etc/iscsi/initiatorname.iscsi",
                "InitiatorName=iqn.1993-08.org.debian:01:abc\n",
            ),
            ("etc/hostname", "debian"),
        ]);
        let changed = paths(&[
            "etc",
            "etc/ssh",
            "etc/ssh/ssh_host_ed25519_key",
            "etc/ssh/ssh_host_ed25519_key.pub",
            "etc/ssh/sshd_config",
            "etc/machine-id",
            "var/lib/systemd/random-seed",
            "var/lib/urandom/random-seed",
            "etc/iscsi/initiatorname.iscsi",
            "etc/hostname",
        ]);
        let (kept, stripped) = strip(t.path(), &changed);
        assert_eq!(
            kept,
            paths(&["etc", "etc/ssh", "etc/ssh/sshd_config", "etc/hostname"])
        );
        assert_eq!(stripped.len(), 6);
        assert_eq!(
            present(t.path()),
            vec![
                "ssh-host-keys",
                "iscsi-initiator-name",
                "machine-id",
                "systemd-random-seed",
                "urandom-seed"
            ]
        );
    }

    #[test]
    fn image_friendly_forms_are_not_identities() {
        let t = tree(&[
            ("etc/machine-id", "uninitialized\n"),
            ("var/lib/dbus/machine-id", ""),
            (
                "etc/iscsi/initiatorname.iscsi",
                "## comment\nGenerateName=yes\n",
            ),
        ]);
        let changed = paths(&[
            "etc/machine-id",
            "var/lib/dbus/machine-id",
            "etc/iscsi/initiatorname.iscsi",
        ]);
        let (kept, stripped) = strip(t.path(), &changed);
        assert_eq!(kept, changed);
        assert!(stripped.is_empty());
        assert!(present(t.path()).is_empty());
    }

    #[test]
    fn links_and_directories_are_not_identities() {
        let t = tree(&[("etc/machine-id", "0123456789abcdef0123456789abcdef\n")]);
        fs::create_dir_all(t.path().join("var/lib/dbus")).unwrap();
        std::os::unix::fs::symlink("/etc/machine-id", t.path().join("var/lib/dbus/machine-id"))
            .unwrap();
        fs::create_dir_all(t.path().join("etc/ssh/ssh_host_keys.d")).unwrap();
        let changed = paths(&["var/lib/dbus/machine-id", "etc/ssh/ssh_host_keys.d"]);
        let (kept, _) = strip(t.path(), &changed);
        assert_eq!(kept, changed);
        assert_eq!(present(t.path()), vec!["machine-id"]);
    }

    #[test]
    fn a_symlinked_parent_does_not_count() {
        let t = tree(&[("elsewhere/ssh_host_rsa_key", "k")]);
        fs::create_dir_all(t.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("../elsewhere", t.path().join("etc/ssh")).unwrap();
        assert!(identity_of(t.path(), Path::new("etc/ssh/ssh_host_rsa_key")).is_none());
        assert!(present(t.path()).is_empty());
    }

    #[test]
    fn regeneration_follows_the_table_and_skips_what_is_left_out() {
        let names: Vec<String> = ["urandom-seed", "machine-id", "ssh-host-keys", "unknown"]
            .iter()
            .map(ToString::to_string)
            .collect();
        let rows: Vec<&str> = to_regenerate(&names).iter().map(|r| r.name).collect();
        assert_eq!(rows, vec!["ssh-host-keys", "machine-id"]);
    }

    #[test]
    fn table_names_are_unique() {
        let mut names: Vec<&str> = IDENTITIES.iter().map(|i| i.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), IDENTITIES.len());
    }
}
