//! Pipeline definitions for CI engines: the matrix's cells as parallel jobs, one job per cell,
//! on GitHub Actions, GitLab CI or Zuul. kiln schedules nothing itself; the engine does.
//!
//! Every job runs in a checkout of kiln's repository holding the matrix file, on a machine
//! with root, loop devices and the host's Debian mirror (see `docs/matrix.md`), and does the
//! same steps as `kiln matrix run` does for one cell:
//!
//! 1. install the host tools (`scripts/install-host-deps`) and build kiln;
//! 2. print the cell's cache key inputs (`kiln plan --explain-cache`: every phase key, with
//!    the digest of each apt suite's InRelease, or of the lock) into `.kiln-key-ID.json`;
//! 3. restore kiln's cache (`DIB_IMAGE_CACHE`, `.kiln-cache` in the checkout);
//! 4. `kiln build` in `out/ID/`; 5. `kiln test --check` when the output boots;
//! 6. save the cache; keep `out/ID/` (outputs and `ID.d/` with build.log, timings) as the
//!    job's artefacts.
//!
//! Caches: GitHub's are immutable once saved, so the key carries the hash of the key inputs
//! (a new mirror state or lock makes a new entry; `restore-keys` falls back to the cell's
//! latest, from which kiln reuses the layers whose own keys still match). GitLab overwrites a
//! key's cache after every job, so the key is the cell's id alone. Either way, kiln's keys
//! decide what is reused: a restored cache can only give hits for unchanged inputs.

use serde_json::{json, Map, Value};

use crate::expand::BootCheck;
use crate::Cell;

/// The directory (relative to the checkout) that holds kiln's cache in CI jobs.
pub const CACHE_DIR: &str = ".kiln-cache";

/// A job id the engines accept (`[A-Za-z_][A-Za-z0-9_-]*`) for a cell id.
pub fn job_id(cell: &Cell) -> String {
    let mut s: String = cell
        .id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        s.insert(0, '_');
    }
    s
}

fn quote_args(args: &[String]) -> String {
    kiln_host::quote_argv(args)
}

/// The shell lines of one cell's steps, shared by the engines. `kiln` is the binary's path.
struct Steps {
    key: String,
    build: String,
    boot: Option<String>,
}

fn steps(cell: &Cell, matrix_file: &str, kiln: &str) -> Steps {
    // `kiln plan` takes `kiln build`'s request flags; `-o` only names the outputs.
    let mut plan_args = vec!["plan".to_string(), "--explain-cache".into()];
    plan_args.extend(cell.args.iter().skip(1).cloned());
    let _ = matrix_file;
    Steps {
        key: format!(
            "{kiln} {} > .kiln-key-{}.json",
            quote_args(&plan_args),
            cell.id
        ),
        build: format!(
            "mkdir -p out/{id} && cd out/{id} && sudo -E {kiln} {}",
            quote_args(&cell.args),
            id = cell.id
        ),
        boot: cell.boot.as_ref().map(|b: &BootCheck| {
            format!(
                "cd out/{} && sudo -E {kiln} {}",
                cell.id,
                quote_args(&b.args())
            )
        }),
    }
}

fn env_map(cell: &Cell, extra: &[(&str, &str)]) -> Value {
    let mut m = Map::new();
    for (k, v) in extra {
        m.insert((*k).to_string(), json!(v));
    }
    for (k, v) in &cell.env {
        m.insert(k.clone(), json!(v));
    }
    Value::Object(m)
}

/// A GitHub Actions workflow (`.github/workflows/NAME.yml`): one job per cell on
/// `ubuntu-latest` runners (sudo without a password), manual and nightly triggers.
pub fn github(cells: &[Cell], matrix_file: &str) -> Value {
    let kiln = "\"$GITHUB_WORKSPACE/target/release/kiln\"";
    let mut jobs = Map::new();
    for c in cells {
        let s = steps(c, matrix_file, kiln);
        let key_file = format!(".kiln-key-{}.json", c.id);
        let mut st = vec![
            json!({"uses": "actions/checkout@v4"}),
            json!({"name": "Install host dependencies", "run": "sudo scripts/install-host-deps"}),
            json!({"name": "Build kiln", "run": "cargo build --release --locked -p kiln-cli"}),
            json!({"name": "Cache key inputs", "run": s.key}),
            json!({
                "name": "Restore kiln's cache",
                "uses": "actions/cache/restore@v4",
                "with": {
                    "path": CACHE_DIR,
                    "key": format!("kiln-{}-${{{{ hashFiles('{key_file}') }}}}", c.id),
                    "restore-keys": format!("kiln-{}-", c.id),
                }
            }),
            json!({
                "name": "Build",
                "run": format!(
                    "if [ -d {CACHE_DIR} ]; then sudo chown -R root:root {CACHE_DIR}; fi\n{}",
                    s.build
                )
            }),
        ];
        if let Some(boot) = &s.boot {
            st.push(json!({"name": "Boot check", "run": boot}));
        }
        st.push(json!({
            "name": "Save kiln's cache",
            "if": "always()",
            "run": format!("sudo chown -R \"$(id -u):$(id -g)\" {CACHE_DIR} out"),
        }));
        st.push(json!({
            "if": "always()",
            "uses": "actions/cache/save@v4",
            "with": {
                "path": CACHE_DIR,
                "key": format!("kiln-{}-${{{{ hashFiles('{key_file}') }}}}", c.id),
            }
        }));
        st.push(json!({
            "name": "Keep the outputs",
            "if": "always()",
            "uses": "actions/upload-artifact@v4",
            "with": {
                "name": c.id,
                "path": format!("out/{}/\n{key_file}", c.id),
                "if-no-files-found": "warn",
            }
        }));
        jobs.insert(
            job_id(c),
            json!({
                "name": c.id,
                "runs-on": "ubuntu-latest",
                "timeout-minutes": 120,
                "env": env_map(c, &[("DIB_IMAGE_CACHE", &format!("${{{{ github.workspace }}}}/{CACHE_DIR}"))]),
                "steps": st,
            }),
        );
    }
    json!({
        "name": format!("kiln matrix {matrix_file}"),
        "on": {
            "workflow_dispatch": {},
            "schedule": [{"cron": "0 3 * * *"}],
        },
        "permissions": {"contents": "read"},
        "jobs": jobs,
    })
}

/// A GitLab CI file (`.gitlab-ci.yml`): a hidden template job and one job per cell, on a
/// privileged Docker runner (loop devices) with the Rust image.
pub fn gitlab(cells: &[Cell], matrix_file: &str) -> Value {
    let kiln = "\"$CI_PROJECT_DIR/target/release/kiln\"";
    let mut top = Map::new();
    top.insert("stages".into(), json!(["matrix"]));
    top.insert(
        ".kiln-matrix".into(),
        json!({
            "stage": "matrix",
            "image": "rust:1-bookworm",
            "timeout": "2h",
            "variables": {"DIB_IMAGE_CACHE": format!("$CI_PROJECT_DIR/{CACHE_DIR}")},
            "before_script": [
                "apt-get update && apt-get install -y sudo",
                "scripts/install-host-deps",
                "cargo build --release --locked -p kiln-cli",
            ],
        }),
    );
    for c in cells {
        let s = steps(c, matrix_file, kiln);
        let mut script = vec![json!(s.key), json!(s.build)];
        if let Some(b) = &s.boot {
            script.push(json!(b));
        }
        top.insert(
            job_id(c),
            json!({
                "extends": ".kiln-matrix",
                "variables": env_map(c, &[]),
                "script": script,
                "cache": {
                    "key": format!("kiln-{}", c.id),
                    "paths": [format!("{CACHE_DIR}/")],
                    "when": "always",
                },
                "artifacts": {
                    "name": c.id,
                    "when": "always",
                    "paths": [format!("out/{}/", c.id), format!(".kiln-key-{}.json", c.id)],
                },
            }),
        );
    }
    Value::Object(top)
}

/// Zuul job definitions (`zuul.d/kiln-matrix.yaml`): a base job running the playbook
/// [`zuul_playbook`] writes, one job per cell setting its variables, and the project's check
/// pipeline listing them.
pub fn zuul(cells: &[Cell], matrix_file: &str) -> Value {
    let mut items = vec![json!({"job": {
        "name": "kiln-matrix-base",
        "abstract": true,
        "description": format!("One cell of the kiln matrix {matrix_file}."),
        "run": "playbooks/kiln-matrix/run.yaml",
        "timeout": 7200,
        "nodeset": {"nodes": [{"name": "builder", "label": "debian-bookworm"}]},
    }})];
    let mut names = Vec::new();
    for c in cells {
        let name = format!("kiln-matrix-{}", job_id(c));
        let mut plan_args = vec!["plan".to_string(), "--explain-cache".into()];
        plan_args.extend(c.args.iter().skip(1).cloned());
        items.push(json!({"job": {
            "name": name,
            "parent": "kiln-matrix-base",
            "vars": {
                "kiln_cell": c.id,
                "kiln_env": c.env,
                "kiln_plan_args": plan_args,
                "kiln_build_args": c.args,
                "kiln_test_args": c.boot.as_ref().map(BootCheck::args),
            },
        }}));
        names.push(json!(name));
    }
    items.push(json!({"project": {"check": {"jobs": names}, "periodic": {"jobs": names}}}));
    Value::Array(items)
}

/// The Ansible playbook the Zuul jobs run (`playbooks/kiln-matrix/run.yaml`): the same steps
/// as the other engines; Zuul has no cache of its own, so `DIB_IMAGE_CACHE` stays on the node
/// (a site with a persistent cache volume points it there) and the key inputs are kept with
/// the logs.
pub fn zuul_playbook() -> Value {
    let dir = "{{ zuul.project.src_dir }}";
    let kiln = format!("{dir}/target/release/kiln");
    let env = format!("{{{{ kiln_env | combine({{'DIB_IMAGE_CACHE': '{dir}/{CACHE_DIR}'}}) }}}}");
    json!([{
        "hosts": "builder",
        "become": true,
        "tasks": [
            {"name": "Install host dependencies", "command": "scripts/install-host-deps", "args": {"chdir": dir}},
            {"name": "Build kiln", "command": "cargo build --release --locked -p kiln-cli", "args": {"chdir": dir}},
            {"name": "Cache key inputs", "shell": format!("{kiln} {{{{ kiln_plan_args | map('quote') | join(' ') }}}} > .kiln-key-{{{{ kiln_cell }}}}.json"), "args": {"chdir": dir}, "environment": env},
            {"name": "Cell directory", "file": {"path": format!("{dir}/out/{{{{ kiln_cell }}}}"), "state": "directory"}},
            {"name": "Build", "command": {"argv": format!("{{{{ ['{kiln}'] + kiln_build_args }}}}")}, "args": {"chdir": format!("{dir}/out/{{{{ kiln_cell }}}}")}, "environment": env},
            {"name": "Boot check", "when": "kiln_test_args", "command": {"argv": format!("{{{{ ['{kiln}'] + kiln_test_args }}}}")}, "args": {"chdir": format!("{dir}/out/{{{{ kiln_cell }}}}")}},
            {"name": "Keep the outputs", "synchronize": {"mode": "pull", "src": format!("{dir}/out/{{{{ kiln_cell }}}}/"), "dest": "{{ zuul.executor.log_root }}/{{ kiln_cell }}/"}, "become": false},
        ],
    }])
}

/// Renders a definition as YAML text, with a header naming its source.
pub fn to_yaml(v: &Value, matrix_file: &str) -> String {
    let body = serde_saphyr::to_string(v).unwrap_or_default();
    format!("# Written by `kiln matrix emit` from {matrix_file}; edit the matrix file and emit again.\n{body}")
}
