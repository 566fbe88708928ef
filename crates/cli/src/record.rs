//! `NAME.d/request.json`: what `kiln build` needs to repeat a build, written beside every image
//! so that `kiln verify IMAGE` can rebuild it without the original command line.
//!
//! It holds the request flags exactly as parsed ([`RequestArgs`], so a rebuild goes through the
//! same conversion to a `BuildRequest` as `kiln build`), the command line as typed (`DIB_ARGS`)
//! and the environment that shapes the image: every `DIB_*` variable and every setting of
//! kiln's settings table that enters a cache key (`SOURCE_DATE_EPOCH`, `KILN_SEED`, `FS_TYPE`,
//! …), but never a per-build or session variable (`DIB_ENV` holds the whole environment,
//! `DIB_ARGS`, paths, `PATH`, `HOME`) nor proxies. Values can be secrets: a variable whose name
//! says it is one (`PASSWORD`, `SECRET`, `TOKEN`, `CREDENTIAL`, `PRIVATE`, a `_KEY` suffix) or
//! whose value is a URL with a password is recorded by name only, and a rebuild takes its value
//! from the environment it runs in (or stops, exit 2, naming it).
//!
//! The record lives in the CLI, not a library, because it records the CLI's own flags.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_pipeline::settings::{self, Scope};
use serde::{Deserialize, Serialize};

use crate::commands::UsageError;
use crate::dib::RequestArgs;

/// The record's file name in `NAME.d/`.
pub const FILE_NAME: &str = "request.json";

/// The version of the record's layout.
pub const FORMAT: u32 = 1;

/// What is needed to repeat a build.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// [`FORMAT`]: the JSON key says what the file is.
    #[allow(clippy::struct_field_names)]
    pub kiln_record: u32,
    /// The kiln version that built the image.
    pub kiln_version: String,
    /// The request flags as parsed.
    pub request: RequestArgs,
    /// The command line as typed (DIB_ARGS).
    pub args: Vec<String>,
    /// The variables that shape the image: a value, or `null` when it was withheld as a
    /// possible secret.
    pub environment: BTreeMap<String, Option<String>>,
}

/// Whether `name` is recorded: a `DIB_*` variable or a setting that enters a cache key, but
/// never one that holds per-build state or the whole environment.
fn recorded(name: &str) -> bool {
    if matches!(name, "PATH" | "HOME") {
        return false;
    }
    match settings::find(name) {
        Some(s) => s.scope != Scope::NotKey,
        None => name.starts_with("DIB_"),
    }
}

/// Whether the value of `name` may be a secret and is left out of the record.
pub fn withheld(name: &str, value: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    let secret_name = [
        "PASSWORD",
        "PASSWD",
        "SECRET",
        "TOKEN",
        "CREDENTIAL",
        "PRIVATE",
    ]
    .iter()
    .any(|w| upper.contains(w))
        || upper.ends_with("_KEY");
    // `scheme://user:password@host`: the part before the host holds a colon.
    let url_password = value.split("://").skip(1).any(|rest| {
        let authority = rest.split('/').next().unwrap_or("");
        authority
            .rsplit_once('@')
            .is_some_and(|(user, _)| user.contains(':'))
    });
    secret_name || url_password
}

impl Record {
    /// The record of a build made with `request` and `args` in the environment `env`.
    pub fn new(request: &RequestArgs, args: &[String], env: &BTreeMap<String, String>) -> Self {
        let environment = env
            .iter()
            .filter(|(k, _)| recorded(k))
            .map(|(k, v)| (k.clone(), (!withheld(k, v)).then(|| v.clone())))
            .collect();
        // A relative lock path would name another file when verify runs elsewhere.
        let mut request = request.clone();
        if let Some(lock) = request.lock.as_mut().filter(|l| l.is_relative()) {
            if let Ok(cwd) = std::env::current_dir() {
                *lock = cwd.join(&*lock);
            }
        }
        Self {
            kiln_record: FORMAT,
            kiln_version: env!("CARGO_PKG_VERSION").to_string(),
            request,
            args: args.to_vec(),
            environment,
        }
    }

    /// Writes the record to `dir/request.json`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let p = dir.join(FILE_NAME);
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(&p, text + "\n").map_err(|e| anyhow::anyhow!("writing {}: {e}", p.display()))
    }

    /// Reads `NAME.d/request.json`; a missing or damaged record is the user's input (exit 2).
    pub fn read(path: &Path) -> Result<Self, UsageError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            UsageError(format!(
                "{}: {e}; kiln verify without elements rebuilds from the record `kiln build` \
                 writes beside the image (give the elements, or compare with --against)",
                path.display()
            ))
        })?;
        let r: Record = serde_json::from_str(&text).map_err(|e| {
            UsageError(format!(
                "{}:{}: not a kiln build record: {e}",
                path.display(),
                e.line()
            ))
        })?;
        if r.kiln_record != FORMAT {
            return Err(UsageError(format!(
                "{}: record format {} is not the one this kiln reads ({FORMAT})",
                path.display(),
                r.kiln_record
            )));
        }
        Ok(r)
    }

    /// The environment to rebuild in: `current` without the recorded kinds of variables, then
    /// the recorded values; a withheld value comes from `current`, or the rebuild stops.
    pub fn environment(
        &self,
        current: &BTreeMap<String, String>,
        path: &Path,
    ) -> Result<BTreeMap<String, String>, UsageError> {
        let mut env: BTreeMap<String, String> = current
            .iter()
            .filter(|(k, _)| !recorded(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in &self.environment {
            let value = match v {
                Some(v) => v.clone(),
                None => current.get(k).cloned().ok_or_else(|| {
                    UsageError(format!(
                        "{}: {k} was left out of the record (its value may be a secret); set it \
                         in the environment to rebuild",
                        path.display()
                    ))
                })?,
            };
            env.insert(k.clone(), value);
        }
        Ok(env)
    }
}

/// `NAME.d/request.json` for the image name `name`.
pub fn path_for(name: &Path) -> PathBuf {
    PathBuf::from(format!("{}.d", name.display())).join(FILE_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct P {
        #[command(flatten)]
        r: RequestArgs,
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_image_shaping_variables_are_recorded_and_secrets_by_name_only() {
        let req = P::parse_from(["x", "-t", "tar", "vm"]).r;
        let e = env(&[
            ("DIB_RELEASE", "bookworm"),
            ("DIB_DEV_USER_PASSWORD", "hunter2"),
            (
                "DIB_DISTRIBUTION_MIRROR",
                "http://u:p@mirror.invalid/debian",
            ),
            ("DIB_ENV", "everything"),
            ("DIB_ARGS", "x"),
            ("SOURCE_DATE_EPOCH", "1700000000"),
            ("KILN_SEED", "s"),
            ("http_proxy", "http://u:p@proxy.invalid:3128"),
            ("PATH", "/bin"),
            ("TMPDIR", "/tmp"),
        ]);
        let r = Record::new(&req, &["build".into()], &e);
        let names: Vec<_> = r.environment.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "DIB_DEV_USER_PASSWORD",
                "DIB_DISTRIBUTION_MIRROR",
                "DIB_RELEASE",
                "KILN_SEED",
                "SOURCE_DATE_EPOCH"
            ]
        );
        assert_eq!(r.environment["DIB_DEV_USER_PASSWORD"], None);
        assert_eq!(r.environment["DIB_DISTRIBUTION_MIRROR"], None);
        assert_eq!(r.environment["DIB_RELEASE"].as_deref(), Some("bookworm"));
        let text = serde_json::to_string(&r).unwrap();
        assert!(
            !text.contains("hunter2") && !text.contains("u:p@"),
            "{text}"
        );
    }

    #[test]
    fn a_record_round_trips_and_rebuilds_in_its_own_environment() {
        let dir = tempfile::tempdir().unwrap();
        let req = P::parse_from(["x", "-t", "tar,qcow2", "-p", "vim", "--seed", "s", "vm"]).r;
        let r = Record::new(
            &req,
            &[],
            &env(&[("DIB_RELEASE", "trixie"), ("DIB_X_TOKEN", "t")]),
        );
        r.write(dir.path()).unwrap();
        let back = Record::read(&dir.path().join(FILE_NAME)).unwrap();
        assert_eq!(back, r);
        let p = dir.path().join(FILE_NAME);
        // A DIB_* variable of the verifying shell that the build did not have is dropped; the
        // withheld one must come from the environment.
        let current = env(&[
            ("DIB_RELEASE", "bookworm"),
            ("DIB_OTHER", "1"),
            ("PATH", "/b"),
        ]);
        let err = back.environment(&current, &p).unwrap_err();
        assert!(err.0.contains("DIB_X_TOKEN was left out"), "{}", err.0);
        let current = env(&[("DIB_X_TOKEN", "t2"), ("DIB_OTHER", "1"), ("PATH", "/b")]);
        let got = back.environment(&current, &p).unwrap();
        assert_eq!(
            got,
            env(&[
                ("DIB_RELEASE", "trixie"),
                ("DIB_X_TOKEN", "t2"),
                ("PATH", "/b")
            ])
        );
    }

    #[test]
    fn a_damaged_record_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(FILE_NAME);
        std::fs::write(&p, "{\n  \"kiln_record\": 1,\n  \"request\": 5\n}\n").unwrap();
        let e = Record::read(&p).unwrap_err();
        assert!(e.0.starts_with(&format!("{}:", p.display())), "{}", e.0);
        assert!(e.0.contains("not a kiln build record"), "{}", e.0);
    }

    #[test]
    fn a_record_without_a_newer_flag_reads_it_as_its_default() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(FILE_NAME);
        std::fs::write(
            &p,
            r#"{"kiln_record": 1, "kiln_version": "0", "args": [], "environment": {},
                "request": {"elements": ["vm"], "types": ["tar"]}}"#,
        )
        .unwrap();
        let r = Record::read(&p).unwrap();
        assert_eq!(r.request.elements, ["vm"]);
        assert_eq!(r.request.seed, None);
        assert!(!r.request.skip_base);
    }

    #[test]
    fn urls_with_passwords_are_withheld() {
        assert!(withheld("DIB_X", "https://user:pw@host/path"));
        assert!(!withheld("DIB_X", "https://host/path@x:y"));
        assert!(!withheld("DIB_X", "https://user@host/"));
        assert!(withheld("DIB_SIGNING_KEY", "/path"));
        assert!(!withheld("DIB_APT_KEYRING", "/usr/share/keyrings/k.gpg"));
    }
}
