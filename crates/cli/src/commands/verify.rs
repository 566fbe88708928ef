//! `kiln verify`: compare an image with another one, or rebuild it and compare.
//!
//! The comparison is `kiln_verify::compare`. The rebuild is `kiln build`'s own path
//! (`build::run_request`) with a request made the way `kiln build` makes it: from the request
//! flags given here ([`RequestArgs`], flattened), or from the record `kiln build` left beside
//! the image (`NAME.d/request.json`, see `crate::record`). It is written into a private
//! temporary directory under the same base name, without kiln's caches (a cached layer would
//! only give back the bytes being verified), and removed afterwards.

use std::path::{Path, PathBuf};

use clap::{ArgAction, Args};
use kiln_output::{OutputType, FORMATS};
use kiln_verify::{diffoscope::Report, Verdict};

use super::UsageError;
use crate::dib::{BuildArgs, RequestArgs};
use crate::record::{self, Record};

/// `kiln verify`'s arguments (the help text is the doc comment of `Command::Verify`).
#[derive(Debug, Args)]
#[command(mut_arg("elements", |a| a
    .required(false)
    .help("Elements to rebuild the image from (default: those of NAME.d/request.json)")))]
#[command(mut_arg("name", |a| a.hide(true)))]
pub struct VerifyCmd {
    /// The image: NAME.<type>, or NAME for every type its record lists.
    #[arg(value_name = "IMAGE")]
    image: PathBuf,
    /// Compare with this image (of the same type) instead of rebuilding.
    #[arg(long, value_name = "OTHER")]
    against: Option<PathBuf>,
    #[command(flatten)]
    request: RequestArgs,
    /// Show the rebuild's hook output (-v) and debug logs (-vv).
    #[arg(short = 'v', long, action = ArgAction::Count)]
    verbose: u8,
    /// Do not run diffoscope on the first difference.
    #[arg(long)]
    no_diffoscope: bool,
}

/// `IMAGE` split into the image name and the output type its extension names, if any.
fn split_image(image: &Path) -> (PathBuf, Option<OutputType>) {
    let s = image.to_string_lossy();
    FORMATS
        .iter()
        .filter(|f| f.is_supported())
        .find_map(|f| {
            let stem = s.strip_suffix(&format!(".{}", f.extension))?;
            Some((PathBuf::from(stem), OutputType::parse(f.name).ok()?))
        })
        .map_or_else(|| (image.to_path_buf(), None), |(n, t)| (n, Some(t)))
}

/// The output types of a `-t` list (comma separated, repeatable).
fn types_of(list: &[String]) -> Result<Vec<OutputType>, kiln_output::Error> {
    let mut out = Vec::new();
    for t in list
        .iter()
        .flat_map(|t| t.split(','))
        .filter(|t| !t.is_empty())
    {
        let ty = OutputType::parse(t)?;
        if !out.contains(&ty) {
            out.push(ty);
        }
    }
    Ok(out)
}

impl VerifyCmd {
    /// Compares, rebuilding first unless `--against` is given.
    pub fn run(&self) -> anyhow::Result<i32> {
        crate::logging::init(self.verbose);
        if self.request.name.is_some() {
            return Err(UsageError(
                "kiln verify names the rebuild after IMAGE; -o is not taken here".into(),
            )
            .into());
        }
        if let Some(other) = &self.against {
            if !self.request.elements.is_empty() {
                return Err(UsageError(format!(
                    "--against compares two existing images; give no elements (got {})",
                    self.request.elements.join(" ")
                ))
                .into());
            }
            let label = other.display().to_string();
            return self.compare(&self.image, other, &label);
        }
        self.rebuild_and_compare()
    }

    /// Compares one pair and prints the verdict; 0 identical, 1 different.
    fn compare(&self, image: &Path, other: &Path, label: &str) -> anyhow::Result<i32> {
        let c = kiln_verify::compare_as(image, other, &image.display().to_string(), label)?;
        match &c.verdict {
            Verdict::Identical { sha256 } => {
                println!(
                    "{}: identical to {label} (sha256 {sha256})",
                    image.display()
                );
                Ok(0)
            }
            Verdict::Different { finding, .. } => {
                println!("{}: differs from {label}: {finding}", image.display());
                if !self.no_diffoscope {
                    match c.diffoscope() {
                        Some(Report::Text(t)) => {
                            println!("--- diffoscope ---");
                            print!("{t}");
                        }
                        Some(Report::NotInstalled) => {
                            eprintln!("kiln: {}", kiln_verify::diffoscope::INSTALL_HINT);
                        }
                        Some(Report::Failed(why)) => eprintln!("kiln: warning: {why}"),
                        None => {}
                    }
                }
                Ok(1)
            }
        }
    }

    fn rebuild_and_compare(&self) -> anyhow::Result<i32> {
        let (name, own_type) = split_image(&self.image);
        let current: std::collections::BTreeMap<String, String> = std::env::vars().collect();
        let (mut request, env, dib_args) = if self.request.elements.is_empty() {
            let path = record::path_for(&name);
            let rec = Record::read(&path)?;
            let env = rec.environment(&current, &path)?;
            let mut request = rec.request.clone();
            if !self.request.types.is_empty() {
                request.types.clone_from(&self.request.types);
            }
            (request, env, rec.args)
        } else {
            let mut request = self.request.clone();
            if request.types.is_empty() {
                let Some(t) = own_type else {
                    return Err(UsageError(format!(
                        "{}: give the output types to rebuild with -t, or IMAGE as NAME.<type>",
                        self.image.display()
                    ))
                    .into());
                };
                request.types = vec![t.name().to_string()];
            }
            // DIB_ARGS as `kiln build` with these flags would have it: without IMAGE and the
            // options of verify itself.
            let own = ["--no-diffoscope", "-v", "-vv", "--verbose"];
            let dib_args: Vec<String> = std::env::args()
                .skip(2)
                .filter(|a| Path::new(a) != self.image && !own.contains(&a.as_str()))
                .collect();
            (request, current, dib_args)
        };
        // What to compare: the type IMAGE names when it names one, else every requested type.
        let mut types = types_of(&request.types).map_err(kiln_pipeline::Error::from)?;
        if types.is_empty() {
            types.push(OutputType::default_type());
        }
        if let Some(t) = own_type {
            if !types.contains(&t) {
                return Err(UsageError(format!(
                    "{}: the rebuild makes {}, not {}",
                    self.image.display(),
                    types.iter().map(|t| t.name()).collect::<Vec<_>>().join(","),
                    t.name()
                ))
                .into());
            }
            types = vec![t];
        }
        for t in &types {
            let mine = kiln_output::output_path(&name, *t);
            if !mine.is_file() {
                return Err(
                    UsageError(format!("{}: no such image to verify", mine.display())).into(),
                );
            }
        }
        let work = tempfile::Builder::new()
            .prefix("kiln-verify.")
            .tempdir()
            .map_err(|e| anyhow::anyhow!("creating a temporary directory: {e}"))?;
        let base = name
            .file_name()
            .map_or_else(|| "image".into(), PathBuf::from);
        let rebuilt_name = work.path().join(&base);
        request.name = Some(rebuilt_name.clone());
        let build = BuildArgs {
            request,
            logfile: None,
            verbose: self.verbose,
            print_cache_keys: false,
        };
        build.request.check_supported()?;
        let mut req = build.request_in(env, dib_args);
        // A cached layer or output would give back what is being verified.
        req.no_cache = true;
        eprintln!(
            "kiln verify: rebuilding {} into {} (caches ignored)",
            name.display(),
            work.path().display()
        );
        let code = super::build::run_request(&build, &req)?;
        if code != 0 {
            return Ok(code);
        }
        let mut worst = 0;
        for t in &types {
            let mine = kiln_output::output_path(&name, *t);
            let theirs = kiln_output::output_path(&rebuilt_name, *t);
            worst = worst.max(self.compare(&mine, &theirs, "the rebuild")?);
        }
        Ok(worst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_split_into_name_and_type() {
        let (n, t) = split_image(Path::new("out/img.qcow2"));
        assert_eq!(
            (n.as_path(), t.map(OutputType::name)),
            (Path::new("out/img"), Some("qcow2"))
        );
        let (n, t) = split_image(Path::new("img.squash"));
        assert_eq!(
            (n.as_path(), t.map(OutputType::name)),
            (Path::new("img"), Some("squashfs"))
        );
        let (n, t) = split_image(Path::new("img"));
        assert_eq!((n.as_path(), t), (Path::new("img"), None));
    }

    #[test]
    fn type_lists_are_split_and_deduplicated() {
        let t = types_of(&["tar,qcow2".into(), "tar".into()]).unwrap();
        assert_eq!(
            t.iter().map(|t| t.name()).collect::<Vec<_>>(),
            ["tar", "qcow2"]
        );
        assert!(types_of(&["nope".into()]).is_err());
    }
}
