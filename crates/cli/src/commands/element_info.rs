//! `element-info` / `kiln element-info`: DIB's element expansion tool.

use std::path::PathBuf;

use clap::Parser;
use kiln_element::{Library, ResolveRequest};
use kiln_pipeline::BuildRequest;

/// Print the expanded element set (space separated), or with --env the bash that exports it.
#[derive(Debug, Parser)]
#[command(name = "element-info", version)]
pub struct ElementInfoCmd {
    /// Elements to expand.
    #[arg(required = true, value_name = "ELEMENT")]
    elements: Vec<String>,
    /// Print eval-able bash exporting IMAGE_ELEMENT, IMAGE_ELEMENT_YAML and get_image_element_array.
    #[arg(long)]
    env: bool,
    /// Accepted for compatibility with DIB (expansion is always done).
    #[arg(long, short = 'e')]
    expand_dependencies: bool,
    /// Target architecture (default: ARCH, else the host's).
    #[arg(short = 'a', value_name = "ARCH")]
    arch: Option<String>,
}

impl ElementInfoCmd {
    /// Prints the expansion.
    pub fn run(&self) -> anyhow::Result<i32> {
        crate::logging::init(0);
        let req = BuildRequest {
            env: std::env::vars().collect(),
            ..BuildRequest::default()
        };
        let arch = self
            .arch
            .clone()
            .or_else(|| {
                req.var(kiln_pipeline::settings::ARCH.name)
                    .map(String::from)
            })
            .unwrap_or_else(kiln_sandbox::host_arch);
        let cache = kiln_pipeline::plan::checked_cache_root(&req)?;
        let builtin: PathBuf = kiln_element::builtin::extract(&cache)?;
        let lib = Library::discover(&kiln_pipeline::plan::elements_path(&req, &builtin))?;
        // element-info expands exactly what it is given: base and block-device are added by
        // disk-image-create before it calls element-info, not by element-info itself.
        let set = kiln_element::resolve_exact(
            &lib,
            &ResolveRequest {
                elements: self.elements.clone(),
                arch,
                skip_base: true,
            },
        )?;
        if self.env {
            print!("{}", set.env_script());
        } else {
            println!("{}", set.image_element());
        }
        Ok(0)
    }
}
