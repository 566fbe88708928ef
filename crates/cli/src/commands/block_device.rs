//! `kiln block-device`: inspect DIB block-device layouts without root.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;

/// Block-device subcommands.
#[derive(Debug, Subcommand)]
pub enum BlockDeviceCmd {
    /// Validate a layout and print its nodes in order with the commands they would run.
    Plan {
        /// The block-device YAML file (DIB schema).
        config: PathBuf,
        /// Image size for the plan (units as in DIB: 2GiB, 500MB, …). Default 4GiB.
        #[arg(long, value_name = "SIZE", default_value = "4GiB")]
        image_size: String,
        /// Root filesystem type given to the `mkfs_root` node.
        #[arg(long, default_value = "ext4")]
        fs_type: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

impl BlockDeviceCmd {
    /// Runs the subcommand.
    pub fn run(&self) -> anyhow::Result<i32> {
        crate::logging::init(0);
        match self {
            Self::Plan {
                config,
                image_size,
                fs_type,
                json,
            } => {
                let text = std::fs::read_to_string(config)
                    .with_context(|| format!("reading {}", config.display()))
                    .map_err(|e| super::UsageError(format!("{e:#}")))?;
                let size = kiln_blockdev::parse_size(image_size)?;
                let params = kiln_blockdev::Params {
                    image_size: Some(size),
                    image_dir: PathBuf::from("$TMP_IMAGE_DIR"),
                    mount_base: PathBuf::from("$TMP_BUILD_DIR/mnt"),
                    build_dir: PathBuf::from("$TMP_BUILD_DIR"),
                    root_label: None,
                    root_fs_type: fs_type.clone(),
                    root_fs_opts: None,
                    block_size: None,
                    seed: None,
                };
                let plan = kiln_blockdev::plan(&text, &config.display().to_string(), &params)?;
                if *json {
                    println!("{}", serde_json::to_string_pretty(&plan.to_json())?);
                } else {
                    for line in plan.commands() {
                        println!("{line}");
                    }
                    println!("\n# fstab\n{}", plan.fstab());
                }
                Ok(0)
            }
        }
    }
}
