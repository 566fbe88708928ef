//! DIB's command-line options, shared by `kiln build`, `kiln plan` and `disk-image-create`.
//!
//! The flags and their meaning follow `disk-image-create` (reference 3.4); kiln accepts a
//! superset: `--image-extra-size` and `--mkfs-journal-size` work (they are broken in DIB), and
//! `--no-cache`, `--seed` and `-v` are kiln's own.
//!
//! [`RequestArgs`] holds every flag that shapes the [`BuildRequest`], and so the cache keys. Every
//! command that computes a plan or keys flattens it (`#[command(flatten)]`) and turns it into a
//! request with [`RequestArgs::request`], so `kiln plan --explain-cache` sees exactly the request
//! `kiln build` would make. [`BuildArgs`] adds what only a running build uses (log file,
//! verbosity).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{ArgAction, Args};
use kiln_pipeline::{settings, BuildRequest};

use crate::commands::UsageError;

/// The options that make up a build request: everything but the log file and verbosity.
/// Serialisable: `NAME.d/request.json` records them (see `crate::record`); a flag added later
/// reads as its default from an older record.
#[derive(Debug, Clone, Default, PartialEq, Args, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RequestArgs {
    /// Elements to build the image from.
    #[arg(required = true, value_name = "ELEMENT")]
    pub elements: Vec<String>,
    /// Target architecture (Debian naming: amd64, arm64, …). Default: the host's.
    #[arg(short = 'a', value_name = "ARCH")]
    pub arch: Option<String>,
    /// Image name (outputs are NAME.<type>). Default: image.
    #[arg(short = 'o', value_name = "NAME")]
    pub name: Option<PathBuf>,
    /// Output types, comma separated (the list comes from kiln-output's table of formats).
    #[arg(short = 't', value_name = "TYPES", help = types_help())]
    pub types: Vec<String>,
    /// Trace hooks (`set -x`); repeat for more.
    #[arg(short = 'x', action = ArgAction::Count)]
    pub trace: u8,
    /// Do not compress the qcow2 output.
    #[arg(short = 'u')]
    pub uncompressed: bool,
    /// Clear the environment before building (only PATH, HOME and the DIB_*/ELEMENTS_PATH variables stay).
    #[arg(short = 'c')]
    pub clear_env: bool,
    /// Do not add the `base` element.
    #[arg(short = 'n')]
    pub skip_base: bool,
    /// Extra packages to install after install.d (comma separated; repeatable).
    #[arg(short = 'p', value_name = "PKGS")]
    pub packages: Vec<String>,
    /// Write .md5 and .sha256 files beside each output.
    #[arg(long)]
    pub checksum: bool,
    /// Do not build in a tmpfs.
    #[arg(long)]
    pub no_tmpfs: bool,
    /// Use a tmpfs only if there are at least 2x this many GiB of RAM (default 2).
    #[arg(long, value_name = "GB")]
    pub min_tmpfs: Option<u64>,
    /// Tell elements to use cached copies instead of fetching (DIB_OFFLINE=1). With --lock:
    /// no network access at all; every package must already be in the cache's .deb store.
    #[arg(long)]
    pub offline: bool,
    /// Build from a lock made by `kiln lock` (FILE and FILE.meta): exactly its packages,
    /// checked by SHA256, from a local repository; the lock's digest replaces the mirror's
    /// state in the cache keys.
    #[arg(long, value_name = "FILE")]
    pub lock: Option<PathBuf>,
    /// Image size in GB (decimals allowed). Default: computed from the tree.
    #[arg(long, value_name = "GB")]
    pub image_size: Option<String>,
    /// Extra space in MB added to the measured tree instead of DIB's 60 % fill rule.
    #[arg(long, value_name = "MB")]
    pub image_extra_size: Option<String>,
    /// ext4 journal size in MB (default 64).
    #[arg(long, value_name = "MB")]
    pub mkfs_journal_size: Option<String>,
    /// Cache directory (DIB_IMAGE_CACHE). Default: ~/.cache/kiln.
    #[arg(long, value_name = "DIR")]
    pub image_cache: Option<PathBuf>,
    /// Maximum online resize of the root ext4 filesystem, in blocks.
    #[arg(long, value_name = "N")]
    pub max_online_resize: Option<String>,
    /// Extra mkfs options for the root filesystem.
    #[arg(long, value_name = "OPTS", allow_hyphen_values = true)]
    pub mkfs_options: Option<String>,
    /// Options for qemu-img convert's -o (k=v,...).
    #[arg(long, value_name = "OPTS")]
    pub qemu_img_options: Option<String>,
    /// Ramdisk element (accepted for compatibility; ramdisk builds are not supported yet).
    #[arg(long, value_name = "ELEMENT")]
    pub ramdisk_element: Option<String>,
    /// Root filesystem label.
    #[arg(long, value_name = "LABEL")]
    pub root_label: Option<String>,
    /// Default install type for elements with install types (default: source).
    #[arg(long, value_name = "TYPE")]
    pub install_type: Option<String>,
    /// Image name of the container outputs (docker, oci, oci-archive), as REPO:TAG
    /// (default: the image name, tag latest).
    #[arg(long, value_name = "REPO:TAG")]
    pub docker_target: Option<String>,
    /// Ignore kiln's caches (bootstrap tarballs) and rebuild them.
    #[arg(long)]
    pub no_cache: bool,
    /// Build seed (any text; KILN_SEED): the filesystem UUIDs and disk ids derive from it.
    /// Default: a digest of the build's inputs.
    #[arg(long, value_name = "SEED")]
    pub seed: Option<String>,
}

/// The `-t` help: the listed rows of kiln-output's table of formats.
fn types_help() -> String {
    format!(
        "Output types, comma separated: {}",
        kiln_output::types_help()
    )
}

/// The options of a build: the request, plus what only a running build uses.
#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub request: RequestArgs,
    /// Also write the build log to this file.
    #[arg(long, value_name = "FILE")]
    pub logfile: Option<PathBuf>,
    /// Show hook output (-v) and debug logs (-vv).
    #[arg(short = 'v', long, action = ArgAction::Count)]
    pub verbose: u8,
    /// Internal (tests): print the cache keys this build would use, as `kiln plan
    /// --explain-cache --json` does, and stop. Needs no root.
    #[arg(long, hide = true)]
    pub print_cache_keys: bool,
}

impl BuildArgs {
    /// Turns the options into a request, with the process environment.
    pub fn request(&self, args: Vec<String>) -> BuildRequest {
        self.request_in(std::env::vars().collect(), args)
    }

    /// Turns the options into a request made in the environment `env`.
    pub fn request_in(&self, env: BTreeMap<String, String>, args: Vec<String>) -> BuildRequest {
        let mut req = self.request.request(env, args);
        req.logfile.clone_from(&self.logfile);
        req.verbose = self.verbose;
        req
    }
}

/// What `-c` keeps of the environment besides the `DIB_*` variables.
const KEPT_BY_CLEAR_ENV: &[&str] = &[
    settings::PATH.name,
    settings::HOME.name,
    settings::ELEMENTS_PATH.name,
    "TERM",
    "USER",
    settings::SOURCE_DATE_EPOCH.name,
    settings::KILN_SEED.name,
];

impl RequestArgs {
    /// Rejects what kiln accepts for DIB's sake but cannot build (exit code 2). Output types
    /// kiln cannot make (docker, aci) are refused by the plan, from kiln-output's table.
    pub fn check_supported(&self) -> Result<(), UsageError> {
        if self.ramdisk_element.is_some() {
            return Err(UsageError(
                "ramdisk builds are not supported by kiln yet".into(),
            ));
        }
        Ok(())
    }

    /// Turns the options into a request made in the environment `env`; `args` is the command
    /// line as typed (DIB_ARGS).
    pub fn request(&self, mut env: BTreeMap<String, String>, args: Vec<String>) -> BuildRequest {
        if self.clear_env {
            env.retain(|k, _| k.starts_with("DIB_") || KEPT_BY_CLEAR_ENV.contains(&k.as_str()));
        }
        BuildRequest {
            elements: self.elements.clone(),
            arch: self.arch.clone(),
            image_name: self
                .name
                .clone()
                .unwrap_or_else(|| PathBuf::from(settings::IMAGE_NAME.default_value())),
            types: self.types.clone(),
            skip_base: self.skip_base,
            packages: self.packages.clone(),
            debug_trace: u32::from(self.trace),
            uncompressed: self.uncompressed,
            checksum: self.checksum,
            no_tmpfs: self.no_tmpfs,
            min_tmpfs: self.min_tmpfs,
            offline: self.offline,
            lock: self.lock.clone(),
            image_size: self.image_size.clone(),
            image_extra_size: self.image_extra_size.clone(),
            journal_size: self.mkfs_journal_size.clone(),
            image_cache: self.image_cache.clone(),
            max_online_resize: self.max_online_resize.clone(),
            mkfs_options: self.mkfs_options.clone(),
            qemu_img_options: self.qemu_img_options.clone(),
            root_label: self.root_label.clone(),
            install_type: self.install_type.clone(),
            docker_target: self.docker_target.clone(),
            logfile: None,
            no_cache: self.no_cache,
            seed: self.seed.clone(),
            verbose: 0,
            env,
            args,
        }
    }
}
