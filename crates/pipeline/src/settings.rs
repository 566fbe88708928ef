//! Every environment variable kiln reads or sets, declared once.
//!
//! DIB is configured through the environment (`DIB_*`, `FS_TYPE`, `ELEMENTS_PATH`, …) and kiln
//! adds a few of its own (`KILN_*`). Each one is a [`Setting`] in the table below: its name, what
//! kind of value it holds, its default, one line of documentation and its [`Scope`] in the
//! caches (whether it enters the phase keys, only the output key, or no key). The code uses the
//! constants instead of string literals, the cache derives its filters from the scopes
//! ([`not_phase_keys`], [`output_key_only`]), and `docs/environment.md` is rendered from the
//! table by [`render_markdown`] (a test fails when the checked-in copy is stale), so the names,
//! the defaults, the cache behaviour and the documentation cannot drift apart.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use kiln_element::Phase;

/// What a variable holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A flag: set (usually `1`) or not.
    Bool,
    /// A whole number.
    Int,
    /// A size or a decimal number (`1.5`, `20GiB`).
    Size,
    /// A file or directory.
    Path,
    /// A colon-separated list of directories.
    PathList,
    /// Free text.
    Text,
}

impl Kind {
    /// The word the documentation uses.
    pub fn word(self) -> &'static str {
        match self {
            Self::Bool => "flag",
            Self::Int => "integer",
            Self::Size => "size",
            Self::Path => "path",
            Self::PathList => "path list",
            Self::Text => "text",
        }
    }
}

/// Whether, and where, a variable enters kiln's cache keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Hooks can see it, so it enters every phase key (and through them the output key).
    PhaseKey,
    /// Only the hooks of this phase and later ones act on it: it enters the keys of this phase
    /// and the later ones, and an earlier phase's key only when a file visible to that phase
    /// (its own hooks, `environment.d`, `bin/`) names it. Changing it reuses the layers before
    /// this phase.
    PhaseKeysFrom(Phase),
    /// It shapes only the disk image or the output files: it enters the output key, not the
    /// phase keys.
    OutputKey,
    /// Per-build paths, logging and cache knobs: it never enters a key.
    NotKey,
}

impl Scope {
    /// Whether it enters phase keys at all (every one, or from a phase on).
    pub fn is_phase_key(self) -> bool {
        matches!(self, Self::PhaseKey | Self::PhaseKeysFrom(_))
    }

    /// The words the documentation uses.
    pub fn words(self) -> String {
        match self {
            Self::PhaseKey => "phase keys".into(),
            Self::PhaseKeysFrom(p) => format!("phase keys from {}", p.name()),
            Self::OutputKey => "output key".into(),
            Self::NotKey => "none".into(),
        }
    }
}

/// The default of a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultValue {
    /// No default: unset means off or absent.
    Unset,
    /// This literal value.
    Value(&'static str),
    /// Computed at build time, as described.
    Computed(&'static str),
}

/// One environment variable: name, kind, default, documentation and cache scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The variable's name.
    pub name: &'static str,
    /// What it holds.
    pub kind: Kind,
    /// Its default.
    pub default: DefaultValue,
    /// Whether it enters the cache keys.
    pub scope: Scope,
    /// One line of documentation.
    pub doc: &'static str,
}

impl Setting {
    /// The value in `env`, if set and non-empty.
    pub fn get<'a>(&self, env: &'a BTreeMap<String, String>) -> Option<&'a str> {
        env.get(self.name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The value in `env`, else the literal default (`""` when there is none).
    pub fn get_or_default<'a>(&self, env: &'a BTreeMap<String, String>) -> &'a str {
        self.get(env).unwrap_or(self.default_value())
    }

    /// The value in `env` parsed as `T`; if it is unset or does not parse, the literal default
    /// parsed (`None` when there is no usable default).
    pub fn parse<T: std::str::FromStr>(&self, env: &BTreeMap<String, String>) -> Option<T> {
        self.get(env)
            .and_then(|v| v.parse().ok())
            .or_else(|| self.default_value().parse().ok())
    }

    /// The literal default, `""` when the default is unset or computed.
    pub fn default_value(&self) -> &'static str {
        match self.default {
            DefaultValue::Value(v) => v,
            DefaultValue::Unset | DefaultValue::Computed(_) => "",
        }
    }
}

macro_rules! settings {
    ($($id:ident = $name:literal, $kind:ident, $default:expr, $scope:ident $(($($sarg:tt)*))?, $doc:literal;)*) => {
        $(
            #[doc = concat!("`", $name, "`: ", $doc)]
            pub const $id: Setting = Setting {
                name: $name,
                kind: Kind::$kind,
                default: $default,
                scope: Scope::$scope $(($($sarg)*))?,
                doc: $doc,
            };
        )*
        /// Every setting, in the order of the documentation.
        pub const ALL: &[Setting] = &[$($id),*];
    };
}

use DefaultValue::{Computed, Unset, Value};

settings! {
    // What to build and where elements come from.
    ELEMENTS_PATH = "ELEMENTS_PATH", PathList, Unset, PhaseKey,
        "Directories of elements searched before kiln's built-in elements; hooks see it with the built-ins appended.";
    ARCH = "ARCH", Text, Computed("the host's architecture"), PhaseKey,
        "Target architecture in Debian naming when `-a` is not given; kiln exports the resolved one.";
    IMAGE_ELEMENT = "IMAGE_ELEMENT", Text, Computed("the expanded element set"), PhaseKey,
        "Set by kiln: the element names of the build, space separated.";
    IMAGE_ELEMENT_YAML = "IMAGE_ELEMENT_YAML", Text, Computed("the expanded element set"), PhaseKey,
        "Set by kiln: the element set as YAML (name: path).";
    SKIP_BASE = "SKIP_BASE", Bool, Unset, PhaseKey,
        "Set by kiln to 1 with `-n` (the `base` element is not added).";
    DIB_DEFAULT_INSTALLTYPE = "DIB_DEFAULT_INSTALLTYPE", Text, Value("source"), PhaseKey,
        "Install type of elements that have several (`--install-type` overrides it).";
    DIB_PYTHON_VERSION = "DIB_PYTHON_VERSION", Text, Unset, PhaseKey,
        "Python major version package-installs entries may be restricted to (read by kiln-element).";
    DIB_BLOCK_DEVICE_CONFIG = "DIB_BLOCK_DEVICE_CONFIG", Text, Computed("the elements' block-device-default.yaml"), PhaseKey,
        "Block-device layout: inline YAML or `file://PATH`.";
    // Distribution and mirrors.
    DISTRO_NAME = "DISTRO_NAME", Text, Unset, PhaseKey,
        "Set by the OS element's environment.d (debian, ubuntu, …); selects pkg-map entries.";
    DIB_INIT_SYSTEM = "DIB_INIT_SYSTEM", Text, Unset, PhaseKey,
        "Init system, set by the OS element's environment.d; `kiln elements check` assumes systemd.";
    DIB_RELEASE = "DIB_RELEASE", Text, Unset, PhaseKey,
        "Distribution release (usually set by the OS element's environment.d); selects the mirror's Release file. An alias (`stable`, `oldstable`, `oldoldstable`, `testing`, `unstable`, `devel`) is resolved once to the codename its Release file names, which kiln exports instead (see DIB_RELEASE_ASKED).";
    DIB_RELEASE_ASKED = "DIB_RELEASE_ASKED", Text, Computed("set by kiln when DIB_RELEASE is an alias"), OutputKey,
        "The alias the build asked for (`stable`, `oldstable`, `testing`, `unstable`, Ubuntu's `devel`) when kiln exported its codename as DIB_RELEASE, read once from the mirror's `dists/<alias>/Release` (a locked build: from the lock); recorded in `dib_environment`.";
    DIB_DISTRIBUTION_MIRROR = "DIB_DISTRIBUTION_MIRROR", Text, Unset, PhaseKey,
        "Package mirror; unless offline, the digest of the InRelease of every suite of the image's sources (this mirror's DIB_RELEASE, DIB_APT_SOURCES_CONF, the DIB_APT_SOURCES file) enters the phase keys.";
    DIB_DEBIAN_SECURITY_MIRROR = "DIB_DEBIAN_SECURITY_MIRROR", Text, Computed("the host's apt security source, if any"), PhaseKey,
        "Debian security mirror.";
    DIB_OFFLINE = "DIB_OFFLINE", Bool, Unset, PhaseKey,
        "Non-empty and not 0 (or `--offline`): elements use cached downloads and kiln does not ask the mirror for the keys.";
    DIB_DEBOOTSTRAP_INSECURE = "DIB_DEBOOTSTRAP_INSECURE", Bool, Unset, PhaseKey,
        "1: bootstrap without checking the mirror's signatures when the host lacks the distribution's archive keyring (otherwise the build stops and names the package to install).";
    DIB_APT_ALLOW_EXPIRED = "DIB_APT_ALLOW_EXPIRED", Bool, Unset, PhaseKey,
        "1: apt accepts a Release file past its Valid-Until or dated ahead of the clock, to build from a snapshot or frozen mirror named by DIB_DISTRIBUTION_MIRROR.";
    DIB_DEBIAN_COMPONENTS = "DIB_DEBIAN_COMPONENTS", Text, Computed("main, by the Debian element"), PhaseKey,
        "Archive components of the image's sources (comma or space separated); `kiln lock` uses them when the sources are only DIB_DISTRIBUTION_MIRROR and DIB_RELEASE.";
    DIB_DEBOOTSTRAP_EXTRA_PACKAGES = "DIB_DEBOOTSTRAP_EXTRA_PACKAGES", Text, Unset, PhaseKey,
        "Extra packages the bootstrap includes (space or comma separated); part of `kiln lock`'s closure.";
    DIB_APT_KEYRING = "DIB_APT_KEYRING", Path, Computed("/usr/share/keyrings/$DISTRO_NAME-archive-keyring.gpg"), PhaseKey,
        "Keyring the bootstrap, and `kiln lock`'s apt, check the mirror's signatures with.";
    // Hooks' environment.
    PATH = "PATH", PathList, Value("/usr/local/bin:/usr/bin:/bin"), PhaseKey,
        "Command search path; hooks get kiln's helper directory first (left out of the keys) and the sbin directories appended.";
    HOME = "HOME", Path, Value("/root"), PhaseKey,
        "Home directory; the cache defaults to `$HOME/.cache/kiln`.";
    LC_ALL = "LC_ALL", Text, Value("C"), PhaseKey,
        "Set by kiln to C for every hook.";
    SOURCE_DATE_EPOCH = "SOURCE_DATE_EPOCH", Int, Unset, PhaseKey,
        "Timestamp (seconds since 1970) that makes the build reproducible (docs/reproducible.md): exported to hooks (shadow, initramfs-tools and Python use it), every time in the tree clamped to it, leftovers removed, the disk's filesystems made again offline, DIB_ARGS without host paths. A locked build (`--lock`) defaults it to the lock's `Locked:` time.";
    DIB_DEBUG_TRACE = "DIB_DEBUG_TRACE", Int, Value("0"), PhaseKey,
        "Trace hooks with `set -x` when above 0 (`-x` raises it).";
    DIB_PYTHON_EXEC = "DIB_PYTHON_EXEC", Path, Computed("the first python3 on the elements' or host's path"), PhaseKey,
        "Python interpreter for hooks run on the host.";
    DIB_IMAGE_CACHE = "DIB_IMAGE_CACHE", Path, Computed("$XDG_CACHE_HOME/kiln, else ~/.cache/kiln"), NotKey,
        "kiln's cache directory (`--image-cache` overrides it); hooks cache downloads under it too (keyed by what they hold, never by where the cache is: builds with two caches get the same keys and the same default seed).";
    XDG_CACHE_HOME = "XDG_CACHE_HOME", Path, Unset, NotKey,
        "The cache is `$XDG_CACHE_HOME/kiln` when DIB_IMAGE_CACHE is unset.";
    DIB_LOCKFILES = "DIB_LOCKFILES", Path, Computed("$DIB_IMAGE_CACHE/lockfiles"), NotKey,
        "Directory of lock files elements share between builds.";
    DIB_MIN_TMPFS = "DIB_MIN_TMPFS", Int, Value("2"), PhaseKey,
        "Build in a tmpfs only if the host has at least twice this many GiB of RAM (`--min-tmpfs`).";
    DIB_NO_TMPFS = "DIB_NO_TMPFS", Bool, Value("0"), PhaseKey,
        "1 (or `--no-tmpfs`): build on disk, not in a tmpfs.";
    DIB_QUIET = "DIB_QUIET", Bool, Value("0"), PhaseKey,
        "1: the console shows only kiln's own lines; the log file has everything.";
    // Root filesystem and block devices (hooks see them: fstab, bootloader).
    FS_TYPE = "FS_TYPE", Text, Value("ext4"), PhaseKey,
        "Root filesystem type.";
    ROOT_LABEL = "ROOT_LABEL", Text, Unset, PhaseKey,
        "Root filesystem label (`--root-label` overrides it).";
    DIB_ROOT_LABEL = "DIB_ROOT_LABEL", Text, Value("cloudimg-rootfs"), PhaseKey,
        "Set by kiln: the root filesystem's label as the layout makes it.";
    DIB_ROOT_FSTYPE = "DIB_ROOT_FSTYPE", Text, Computed("FS_TYPE or the layout's"), PhaseKey,
        "Set by kiln: the root filesystem's type.";
    DIB_BOOT_LABEL = "DIB_BOOT_LABEL", Text, Unset, PhaseKey,
        "Set by kiln: the boot filesystem's label, if the layout has one.";
    DIB_MOUNTPOINTS = "DIB_MOUNTPOINTS", Text, Value("/"), PhaseKey,
        "Set by kiln: the layout's mount points, separated by `|`.";
    DIB_BLOCK_SIZE = "DIB_BLOCK_SIZE", Int, Unset, PhaseKey,
        "Block size of the root filesystem.";
    DIB_INITRAMFS_MODULES = "DIB_INITRAMFS_MODULES", Text, Value("most"), PhaseKeysFrom(Phase::PostInstall),
        "Kernel modules of the initramfs (dpkg element, kiln addition): `most`, initramfs-tools' default and DIB's; `vm`, only what virtual machines boot from (virtio, NVMe, SATA/IDE, Xen, Hyper-V and VMware disks, the root filesystem), a smaller initramfs made faster (elements/dpkg/README.rst).";
    // Disk and outputs: only the output key.
    DIB_IMAGE_SIZE = "DIB_IMAGE_SIZE", Size, Computed("the tree's size with DIB's 60 % fill rule"), OutputKey,
        "Image size in GB, decimals allowed (`--image-size`); set by kiln to the size used, in KiB, for finalise.";
    DIB_IMAGE_EXTRA_SIZE = "DIB_IMAGE_EXTRA_SIZE", Size, Unset, OutputKey,
        "MB added to the measured tree instead of the fill rule (`--image-extra-size`).";
    DIB_JOURNAL_SIZE = "DIB_JOURNAL_SIZE", Int, Value("64"), OutputKey,
        "ext4 journal size in MB (`--mkfs-journal-size`).";
    MAX_ONLINE_RESIZE = "MAX_ONLINE_RESIZE", Int, Unset, OutputKey,
        "Maximum online resize of the root ext4 filesystem, in blocks (`--max-online-resize`).";
    COMPRESS_IMAGE = "COMPRESS_IMAGE", Bool, Value("1"), OutputKey,
        "Set by kiln: empty with `-u` (the qcow2 output is not compressed).";
    QEMU_IMG_OPTIONS = "QEMU_IMG_OPTIONS", Text, Unset, OutputKey,
        "Options for the qcow2/vmdk/vhd conversion, `k=v,...` (`--qemu-img-options` overrides it).";
    IMAGE_TYPES = "IMAGE_TYPES", Text, Value("qcow2"), OutputKey,
        "Set by kiln: the output types, space separated (`-t`).";
    KILN_QCOW2_LEVEL = "KILN_QCOW2_LEVEL", Text, Value("3"), OutputKey,
        "zlib level 1-9 of kiln's own qcow2 writer, or `qemu-img` to let `qemu-img convert -c` compress.";
    KILN_SQUASHFS_COMP = "KILN_SQUASHFS_COMP", Text, Value("xz"), OutputKey,
        "Compressor of the `squashfs` output: `xz` (as DIB makes it), or, opt-in, `zstd` or `gzip` (several times faster, a few per cent larger; kernel readers since 4.14 take zstd). Incus's root filesystem stays xz.";
    KILN_IMAGE_EXPIRY = "KILN_IMAGE_EXPIRY", Int, Value("30"), OutputKey,
        "Days from the image's creation to its expiry, for the LXC and Incus outputs (LXC's `expiry`, Incus's `expiry_date`) and `NAME.d/image.json`.";
    KILN_IMAGE_VARIANT = "KILN_IMAGE_VARIANT", Text, Value("default"), OutputKey,
        "The image's variant in the LXC and Incus outputs and `NAME.d/image.json` (letters, digits, `.`, `_`, `-`).";
    KILN_SEED = "KILN_SEED", Text, Computed("the build's output key, a digest of all its inputs"), OutputKey,
        "Build seed (`--seed` overrides it; any text): every filesystem UUID, GPT disk and partition GUID, MBR disk id and vfat serial the layout does not set derives from it, so one seed gives one set of identifiers.";
    // Never a key.
    IMAGE_NAME = "IMAGE_NAME", Path, Value("image"), NotKey,
        "Set by kiln: the image name (`-o`) without the output suffix.";
    IMAGE_TYPE = "IMAGE_TYPE", Text, Value("qcow2"), NotKey,
        "Set by kiln: the first output type.";
    DIB_ARGS = "DIB_ARGS", Text, Computed("the command line"), NotKey,
        "Set by kiln: the arguments as typed.";
    DIB_ENV = "DIB_ENV", Text, Computed("the caller's DIB_* variables"), NotKey,
        "Set by kiln: the caller's `DIB_*` variables as `declare -x` lines.";
    DIB_MANIFEST_SAVE_DIR = "DIB_MANIFEST_SAVE_DIR", Path, Computed("IMAGE_NAME.d"), NotKey,
        "Where the manifests element copies its files; only finalise and cleanup read it.";
    DIB_CHECKSUM = "DIB_CHECKSUM", Text, Value("0"), NotKey,
        "1 (or `--checksum`): write .md5 and .sha256 files beside each output; `md5`/`sha256` for one kind.";
    OVERWRITE_OLD_IMAGE = "OVERWRITE_OLD_IMAGE", Bool, Unset, NotKey,
        "Set and not 0: replace an existing output instead of renaming it with a timestamp.";
    TMPDIR = "TMPDIR", Path, Value("/tmp"), NotKey,
        "Where the build directory is made.";
    TMP_DIR = "TMP_DIR", Path, Unset, NotKey,
        "DIB's older name for TMPDIR, read when TMPDIR is unset.";
    TMP_BUILD_DIR = "TMP_BUILD_DIR", Path, Computed("a new directory under TMPDIR"), NotKey,
        "Set by kiln: the build directory.";
    TMP_IMAGE_DIR = "TMP_IMAGE_DIR", Path, Computed("a new directory under TMPDIR"), NotKey,
        "Set by kiln: the directory the image files are made in.";
    TMP_HOOKS_PATH = "TMP_HOOKS_PATH", Path, Computed("$TMP_BUILD_DIR/hooks"), NotKey,
        "Set by kiln: the merged hook tree.";
    TMP_MOUNT_PATH = "TMP_MOUNT_PATH", Path, Computed("$TMP_BUILD_DIR/mnt"), NotKey,
        "Set by kiln: the root of the tree being built.";
    TARGET_ROOT = "TARGET_ROOT", Path, Computed("$TMP_MOUNT_PATH"), NotKey,
        "Set by kiln for root.d hooks: where to put the root filesystem.";
    LIB = "_LIB", Path, Computed("$TMP_BUILD_DIR/lib"), NotKey,
        "Set by kiln: the directory of DIB's helper scripts (`die`, `dib-run-parts`).";
    BREAK = "break", Text, Unset, NotKey,
        "DIB's break points (`before-install`, `after-error`, …): open a shell there.";
    BREAK_CMD = "break_cmd", Text, Value("bash"), NotKey,
        "The command run at a break point.";
    BREAK_OUTSIDE_TARGET = "break_outside_target", Bool, Unset, NotKey,
        "Set and not 0: run the break command on the host, not in the chroot.";
    IMAGE_BLOCK_DEVICE = "IMAGE_BLOCK_DEVICE", Path, Computed("the image's loop device"), NotKey,
        "Set by kiln once the image's devices exist (from block-device.d on, after the keys are computed).";
    IMAGE_BLOCK_DEVICES = "IMAGE_BLOCK_DEVICES", Text, Computed("the layout's devices"), NotKey,
        "Set by kiln with IMAGE_BLOCK_DEVICE: every device of the layout, as `[name]=device` words (a bash array body).";
    KILN_NO_CACHE = "KILN_NO_CACHE", Bool, Unset, NotKey,
        "Set by kiln to 1 with `--no-cache` (caches are ignored and rewritten).";
    KILN_LOCK_REPO = "KILN_LOCK_REPO", Path, Computed("set by kiln with `--lock`"), NotKey,
        "Set by kiln in a locked build (`--lock`): the build's local apt repository of the lock's packages. The debootstrap element bootstraps from it, apt in the chroot installs only from it (bound read-only at /tmp/kiln-lock-repo), and the image's own sources are left as the elements write them.";
    KILN_LOCK_DIGEST = "KILN_LOCK_DIGEST", Text, Computed("set by kiln with `--lock`"), NotKey,
        "Set by kiln in a locked build: the sha256 of the lock and its side file. It stands for the mirror's state in the phase keys and the bootstrap cache's key (it enters them as the mirror state, not as a variable).";
    KILN_CACHE_ENV = "KILN_CACHE_ENV", Text, Unset, NotKey,
        "More variables to key the phase cache on, comma separated, besides `DIB_*`, the phase-key settings, proxies, locale and every name the elements' hooks mention (any other variable changes no key).";
    KILN_CACHE_MAX_SIZE = "KILN_CACHE_MAX_SIZE", Size, Value("20GiB"), NotKey,
        "kiln trims its cache to this size after every build, least recently used first; `0`, `none` or `unlimited` for no limit.";
    KILN_LOG = "KILN_LOG", Text, Computed("warnings, and kiln's own info lines; more with -v"), NotKey,
        "Log filter for kiln's own diagnostics (tracing's EnvFilter syntax, e.g. `kiln_pipeline=debug`).";
}

/// Host and session variables that are not settings but must never enter a key.
pub const SESSION_NOISE: &[&str] = &[
    "TERM",
    "COLUMNS",
    "LINES",
    "SHLVL",
    "PWD",
    "OLDPWD",
    "_",
    "DISPLAY",
    "MAIL",
    "LS_COLORS",
    "INVOCATION_ID",
    "JOURNAL_STREAM",
    "NO_COLOR",
    "SUDO_COMMAND",
];

/// Prefixes of session and toolchain variables that never enter a key.
pub const SESSION_NOISE_PREFIXES: &[&str] = &[
    "SSH_",
    "XDG_",
    "CARGO",
    "RUSTUP",
    "RUST_",
    "KILN_TEST_CACHE",
];

/// The settings with this scope.
pub fn with_scope(scope: Scope) -> impl Iterator<Item = &'static Setting> {
    ALL.iter().filter(move |s| s.scope == scope)
}

/// The names the phase keys leave out: every setting that enters no phase key.
pub fn not_phase_keys() -> impl Iterator<Item = &'static str> {
    ALL.iter()
        .filter(|s| !s.scope.is_phase_key())
        .map(|s| s.name)
}

/// The settings that enter the phase keys only from a given phase on, with that phase.
pub fn phase_keys_from() -> impl Iterator<Item = (&'static Setting, Phase)> {
    ALL.iter().filter_map(|s| match s.scope {
        Scope::PhaseKeysFrom(p) => Some((s, p)),
        _ => None,
    })
}

/// The names that enter the output key but not the phase keys.
pub fn output_key_only() -> impl Iterator<Item = &'static str> {
    with_scope(Scope::OutputKey).map(|s| s.name)
}

/// Looks a setting up by name.
pub fn find(name: &str) -> Option<&'static Setting> {
    ALL.iter().find(|s| s.name == name)
}

/// `docs/environment.md`: the table as markdown.
pub fn render_markdown() -> String {
    let mut s = String::new();
    s.push_str("<!-- Generated from crates/pipeline/src/settings.rs; do not edit. Regenerate with\n     KILN_UPDATE_DOCS=1 cargo test -p kiln-pipeline settings -->\n\n");
    s.push_str("# Environment variables\n\n");
    s.push_str(
        "Every variable kiln reads or sets. Any other variable of the caller's environment is \
         passed to the hooks unchanged. It enters the phase keys (as a digest, never its value) \
         only if a hook can read it: `DIB_*`, proxies (`http_proxy`, `https_proxy`, `ftp_proxy`, \
         `all_proxy`, `no_proxy`, any case), locale (`LANG`, `LANGUAGE`, `LC_*`), a name that \
         appears in the text of the elements' hooks, `environment.d` files or `bin/` scripts, or \
         one listed in `KILN_CACHE_ENV`. Session noise (`TERM`, `PWD`, `SSH_*`, `XDG_*`, …) never \
         does, and neither does any other variable (a CI build number changes nothing).\n\n",
    );
    s.push_str(
        "**Cache** says where a variable enters kiln's caches: *phase keys* (hooks can see \
                it: a change rebuilds from the first phase and so also changes the output key), \
                *phase keys from PHASE* (only that phase's hooks and later ones act on it: a \
                change rebuilds from that phase, or from an earlier one whose hooks, \
                `environment.d` or `bin/` name it), *output key* (only the disk image and the output files change: the phases are \
                restored from the cache), or *none*.\n\n",
    );
    s.push_str("| Variable | Kind | Default | Cache | Meaning |\n");
    s.push_str("|---|---|---|---|---|\n");
    for v in ALL {
        let default = match v.default {
            DefaultValue::Unset => "unset".to_string(),
            DefaultValue::Value(d) => format!("`{d}`"),
            DefaultValue::Computed(d) => d.replace('|', "\\|"),
        };
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {} |",
            v.name,
            v.kind.word(),
            default,
            v.scope.words(),
            v.doc.replace('|', "\\|")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn names_are_unique() {
        for (i, a) in ALL.iter().enumerate() {
            assert!(
                ALL[i + 1..].iter().all(|b| b.name != a.name),
                "{} is declared twice",
                a.name
            );
        }
    }

    #[test]
    fn scopes_derive_the_filters() {
        let deny: Vec<&str> = not_phase_keys().collect();
        assert!(deny.contains(&"DIB_MANIFEST_SAVE_DIR"));
        assert!(deny.contains(&"DIB_IMAGE_SIZE"));
        assert!(!deny.contains(&"DIB_RELEASE"));
        assert!(!deny.contains(&"DIB_INITRAMFS_MODULES"));
        assert_eq!(
            phase_keys_from()
                .map(|(s, p)| (s.name, p))
                .collect::<Vec<_>>(),
            [("DIB_INITRAMFS_MODULES", Phase::PostInstall)]
        );
        let out: Vec<&str> = output_key_only().collect();
        assert!(out.contains(&"DIB_IMAGE_SIZE"));
        assert!(!out.contains(&"DIB_CHECKSUM"));
        assert!(!out.contains(&"FS_TYPE"));
    }

    #[test]
    fn numeric_defaults_parse() {
        for s in ALL
            .iter()
            .filter(|s| matches!(s.kind, Kind::Int | Kind::Bool))
        {
            if let DefaultValue::Value(v) = s.default {
                assert!(
                    v.parse::<u64>().is_ok(),
                    "{}: default {v} is not a number",
                    s.name
                );
            }
        }
        let env = BTreeMap::new();
        assert_eq!(DIB_MIN_TMPFS.parse::<u64>(&env), Some(2));
        assert_eq!(DIB_JOURNAL_SIZE.parse::<u64>(&env), Some(64));
    }

    #[test]
    fn defaults_and_lookup() {
        let mut env = BTreeMap::new();
        assert_eq!(FS_TYPE.get_or_default(&env), "ext4");
        env.insert("FS_TYPE".to_string(), String::new());
        assert_eq!(FS_TYPE.get(&env), None);
        env.insert("FS_TYPE".to_string(), "xfs".to_string());
        assert_eq!(FS_TYPE.get_or_default(&env), "xfs");
        assert_eq!(DIB_RELEASE.get_or_default(&env), "");
        assert_eq!(find("break"), Some(&BREAK));
        assert_eq!(
            KILN_QCOW2_LEVEL.default_value(),
            kiln_output::qcow2::DEFAULT_LEVEL.to_string()
        );
        assert_eq!(
            KILN_SQUASHFS_COMP.default_value(),
            kiln_output::squashfs::Compressor::default().name()
        );
    }

    /// `docs/environment.md` is the rendered table; `KILN_UPDATE_DOCS=1` rewrites it.
    #[test]
    fn environment_md_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/environment.md");
        let want = render_markdown();
        if std::env::var_os("KILN_UPDATE_DOCS").is_some() {
            std::fs::write(&path, &want).expect("writing docs/environment.md");
            return;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "docs/environment.md is stale: regenerate it with\n    KILN_UPDATE_DOCS=1 cargo test -p kiln-pipeline settings\nand commit it"
        );
    }
}
