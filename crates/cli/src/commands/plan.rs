//! `kiln plan`: show everything a build would do, without running anything.
//!
//! It takes exactly `kiln build`'s request flags ([`RequestArgs`], flattened) and makes the
//! request the same way, so `kiln plan --explain-cache` computes the keys the build would.

use clap::Args;
use std::collections::BTreeMap;

use kiln_pipeline::{BuildPlan, BuildRequest};

use crate::dib::RequestArgs;

/// Resolve elements and print the build plan.
#[derive(Debug, Args)]
pub struct PlanCmd {
    #[command(flatten)]
    request: RequestArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Say, per cacheable phase, whether kiln's phase cache holds it and if not what changed.
    /// This sources environment.d (in a temp dir) to compute the keys; it runs no hook.
    #[arg(long)]
    explain_cache: bool,
}

impl PlanCmd {
    /// The request this plan is made for, in the environment `env`: the one `kiln build` with
    /// the same flags makes.
    pub fn request_in(&self, env: BTreeMap<String, String>, typed: Vec<String>) -> BuildRequest {
        self.request.request(env, typed)
    }

    /// Prints the plan.
    pub fn run(&self) -> anyhow::Result<i32> {
        crate::logging::init(0);
        self.request.check_supported()?;
        let typed: Vec<String> = std::env::args().skip(2).collect();
        let req = self.request_in(std::env::vars().collect(), typed);
        let plan = BuildPlan::new(&req)?;
        // The block-device layout is validated as `kiln build` validates it before any phase.
        if plan.needs_disk() {
            kiln_pipeline::pipeline::layout_plan(&plan)?;
        }
        if self.explain_cache {
            let v = kiln_pipeline::pipeline::explain_cache(&plan)?;
            if self.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                if let Some(r) = &v.release {
                    println!(
                        "release: DIB_RELEASE={} is {} (read from {})",
                        r.asked, r.codename, r.from
                    );
                }
                for s in &v.steps {
                    println!(
                        "{:<13} {:<4} {}",
                        s.step,
                        s.status.as_str(),
                        s.key.get(..16).unwrap_or(&s.key)
                    );
                    for r in &s.reasons {
                        println!("    {r}");
                    }
                }
                println!("{:<13} {}", "outputs", v.outputs.status.as_str());
            }
            return Ok(0);
        }
        if self.json {
            println!("{}", serde_json::to_string_pretty(&plan.report())?);
        } else {
            print!("{}", plan.to_text());
        }
        Ok(0)
    }
}
