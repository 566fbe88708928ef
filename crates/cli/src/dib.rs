//! DIB's command-line options, shared by `kiln build` and `disk-image-create`.
//!
//! The flags and their meaning follow `disk-image-create` (reference 3.4); kiln accepts a
//! superset: `--image-extra-size` and `--mkfs-journal-size` work (they are broken in DIB), and
//! `--no-cache` / `-v` are kiln's own.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{ArgAction, Args};
use kiln_pipeline::BuildRequest;

/// The options of a build.
#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    /// Elements to build the image from.
    #[arg(required = true, value_name = "ELEMENT")]
    pub elements: Vec<String>,
    /// Target architecture (Debian naming: amd64, arm64, …). Default: the host's.
    #[arg(short = 'a', value_name = "ARCH")]
    pub arch: Option<String>,
    /// Image name (outputs are NAME.<type>). Default: image.
    #[arg(short = 'o', value_name = "NAME")]
    pub name: Option<PathBuf>,
    /// Output types, comma separated: qcow2 (default), raw, vmdk, vhd, vdi, tar, tgz, squashfs.
    #[arg(short = 't', value_name = "TYPES")]
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
    /// Tell elements to use cached copies instead of fetching (DIB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
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
    /// Docker target (accepted for compatibility; the docker output is not supported yet).
    #[arg(long, value_name = "REPO:TAG")]
    pub docker_target: Option<String>,
    /// Also write the build log to this file.
    #[arg(long, value_name = "FILE")]
    pub logfile: Option<PathBuf>,
    /// Ignore kiln's caches (bootstrap tarballs) and rebuild them.
    #[arg(long)]
    pub no_cache: bool,
    /// Show hook output (-v) and debug logs (-vv).
    #[arg(short = 'v', long, action = ArgAction::Count)]
    pub verbose: u8,
}

impl BuildArgs {
    /// Turns the options into a request, with the process environment.
    pub fn request(&self, args: Vec<String>) -> BuildRequest {
        let mut env: BTreeMap<String, String> = std::env::vars().collect();
        if self.clear_env {
            env.retain(|k, _| {
                k.starts_with("DIB_")
                    || matches!(
                        k.as_str(),
                        "PATH" | "HOME" | "ELEMENTS_PATH" | "TERM" | "USER" | "SOURCE_DATE_EPOCH"
                    )
            });
        }
        BuildRequest {
            elements: self.elements.clone(),
            arch: self.arch.clone(),
            image_name: self.name.clone().unwrap_or_else(|| PathBuf::from("image")),
            types: self.types.clone(),
            skip_base: self.skip_base,
            packages: self.packages.clone(),
            debug_trace: u32::from(self.trace),
            uncompressed: self.uncompressed,
            checksum: self.checksum,
            no_tmpfs: self.no_tmpfs,
            min_tmpfs: self.min_tmpfs,
            offline: self.offline,
            image_size: self.image_size.clone(),
            image_extra_size: self.image_extra_size.clone(),
            journal_size: self.mkfs_journal_size.clone(),
            image_cache: self.image_cache.clone(),
            max_online_resize: self.max_online_resize.clone(),
            mkfs_options: self.mkfs_options.clone(),
            qemu_img_options: self.qemu_img_options.clone(),
            root_label: self.root_label.clone(),
            install_type: self.install_type.clone(),
            logfile: self.logfile.clone(),
            no_cache: self.no_cache,
            verbose: self.verbose,
            env,
            args,
        }
    }
}
