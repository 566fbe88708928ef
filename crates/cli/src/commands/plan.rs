//! `kiln plan`: show everything a build would do, without running anything.

use std::path::PathBuf;

use clap::Args;
use kiln_pipeline::{BuildPlan, BuildRequest};

/// Resolve elements and print the build plan.
#[derive(Debug, Args)]
pub struct PlanCmd {
    /// Elements to build the image from.
    #[arg(required = true, value_name = "ELEMENT")]
    elements: Vec<String>,
    /// Target architecture (Debian naming). Default: the host's.
    #[arg(short = 'a', value_name = "ARCH")]
    arch: Option<String>,
    /// Output types, comma separated (default qcow2).
    #[arg(short = 't', value_name = "TYPES")]
    types: Vec<String>,
    /// Image name.
    #[arg(short = 'o', value_name = "NAME")]
    name: Option<PathBuf>,
    /// Do not add the `base` element.
    #[arg(short = 'n')]
    skip_base: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Say, per cacheable phase, whether kiln's phase cache holds it and if not what changed.
    /// This sources environment.d (in a temp dir) to compute the keys; it runs no hook.
    #[arg(long)]
    explain_cache: bool,
}

impl PlanCmd {
    /// Prints the plan.
    pub fn run(&self) -> anyhow::Result<i32> {
        crate::logging::init(0);
        let req = BuildRequest {
            elements: self.elements.clone(),
            arch: self.arch.clone(),
            image_name: self.name.clone().unwrap_or_else(|| PathBuf::from("image")),
            types: self.types.clone(),
            skip_base: self.skip_base,
            env: std::env::vars().collect(),
            ..BuildRequest::default()
        };
        let plan = BuildPlan::new(&req)?;
        if self.explain_cache {
            let v = kiln_pipeline::pipeline::explain_cache(&plan)?;
            if self.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for s in v["steps"].as_array().into_iter().flatten() {
                    println!(
                        "{:<13} {:<4} {}",
                        s["step"].as_str().unwrap_or(""),
                        s["status"].as_str().unwrap_or(""),
                        &s["key"].as_str().unwrap_or("")[..16]
                    );
                    for r in s["reasons"].as_array().into_iter().flatten() {
                        println!("    {}", r.as_str().unwrap_or(""));
                    }
                }
                println!(
                    "{:<13} {}",
                    "outputs",
                    v["outputs"]["status"].as_str().unwrap_or("")
                );
            }
            return Ok(0);
        }
        if self.json {
            println!("{}", serde_json::to_string_pretty(&plan.to_json())?);
        } else {
            print!("{}", plan.to_text());
        }
        Ok(0)
    }
}
