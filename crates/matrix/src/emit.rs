//! Pipeline definitions for CI engines: the matrix's cells as parallel jobs, one job per cell,
//! on GitHub Actions, GitLab CI or Zuul. kiln schedules nothing itself; the engine does.
//!
//! Every job runs in a checkout of kiln's repository holding the matrix file, on a machine
//! with root, loop devices and the host's Debian mirror (see `docs/matrix.md`), and does the
//! same steps as `kiln matrix run` does for one cell:
//!
//! 1. install the host tools (`scripts/install-host-deps`) and build kiln;
//! 2. print the cell's cache key inputs (`kiln plan --explain-cache --json`: every phase key,
//!    which covers the digest of each apt suite's InRelease, or of the lock, and the output
//!    key) into `.kiln-key-ID.json`, before the cache is restored, so every status in it is
//!    a miss and the file changes only with the keys;
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

/// The shell lines of one cell's steps, shared by the engines: `root` is the checkout (a
/// shell expression), `kiln` the binary's path.
struct Steps {
    key: String,
    build: String,
    boot: Option<String>,
}

fn steps(cell: &Cell, root: &str, kiln: &str) -> Steps {
    // `kiln plan` takes `kiln build`'s request flags; `-o` only names the outputs.
    let mut plan_args = vec![
        "plan".to_string(),
        "--explain-cache".into(),
        "--json".into(),
    ];
    plan_args.extend(cell.args.iter().skip(1).cloned());
    let dir = format!("\"{root}/out/{}\"", cell.id);
    Steps {
        key: format!(
            "{kiln} {} > \"{root}/.kiln-key-{}.json\"",
            quote_args(&plan_args),
            cell.id
        ),
        build: format!(
            "mkdir -p {dir} && cd {dir} && sudo -E {kiln} {}",
            quote_args(&cell.args)
        ),
        boot: cell
            .boot
            .as_ref()
            .map(|b: &BootCheck| format!("cd {dir} && sudo -E {kiln} {}", quote_args(&b.args()))),
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
        let s = steps(c, "$GITHUB_WORKSPACE", kiln);
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
            "run": format!("sudo chown -R \"$(id -u):$(id -g)\" {CACHE_DIR} out || true"),
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
pub fn gitlab(cells: &[Cell]) -> Value {
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
        let s = steps(c, "$CI_PROJECT_DIR", kiln);
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
        let mut plan_args = vec![
            "plan".to_string(),
            "--explain-cache".into(),
            "--json".into(),
        ];
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
    let env = format!(
        "{{{{ kiln_env | combine({{'DIB_IMAGE_CACHE': zuul.project.src_dir ~ '/{CACHE_DIR}'}}) }}}}"
    );
    let argv =
        |list: &str| format!("{{{{ [zuul.project.src_dir ~ '/target/release/kiln'] + {list} }}}}");
    json!([{
        "hosts": "builder",
        "become": true,
        "tasks": [
            {"name": "Install host dependencies", "command": "scripts/install-host-deps", "args": {"chdir": dir}},
            {"name": "Build kiln", "command": "cargo build --release --locked -p kiln-cli", "args": {"chdir": dir}},
            {"name": "Cache key inputs", "shell": format!("{kiln} {{{{ kiln_plan_args | map('quote') | join(' ') }}}} > .kiln-key-{{{{ kiln_cell }}}}.json"), "args": {"chdir": dir}, "environment": env},
            {"name": "Cell directory", "file": {"path": format!("{dir}/out/{{{{ kiln_cell }}}}"), "state": "directory"}},
            {"name": "Build", "command": {"argv": argv("kiln_build_args")}, "args": {"chdir": format!("{dir}/out/{{{{ kiln_cell }}}}")}, "environment": env},
            {"name": "Boot check", "when": "kiln_test_args", "command": {"argv": argv("kiln_test_args")}, "args": {"chdir": format!("{dir}/out/{{{{ kiln_cell }}}}")}},
            {"name": "Keep the outputs", "synchronize": {"mode": "pull", "src": format!("{dir}/out/{{{{ kiln_cell }}}}/"), "dest": "{{ zuul.executor.log_root }}/{{ kiln_cell }}/"}, "become": false},
        ],
    }])
}

/// Renders a definition as YAML text, with a header naming its source.
pub fn to_yaml(v: &Value, matrix_file: &str) -> String {
    // Long command lines stay on one line (folding them would split `${{ … }}` expressions);
    // multi-line scripts are literal blocks.
    let options = serde_saphyr::ser_options! { folded_wrap_chars: 100_000 };
    let body = serde_saphyr::to_string_with_options(v, options).unwrap_or_default();
    format!("# Written by `kiln matrix emit` from {matrix_file}; edit the matrix file and emit again.\n{body}")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The worked example of docs/matrix.md: two releases × amd64 and arm64 × VM and tar.
    pub(crate) const EXAMPLE: &str = include_str!("../../../docs/matrix-example.yaml");

    /// The example's cells, with the boot checks `kiln matrix` gives them (the vm variant's
    /// resolved set holds `bootloader`).
    fn cells() -> Vec<Cell> {
        let p = Path::new("docs/matrix-example.yaml");
        let mut cells = crate::expand(p, &crate::spec::parse(p, EXAMPLE).unwrap()).unwrap();
        for c in &mut cells {
            let set: &[&str] = if c.elements.iter().any(|e| e == "vm") {
                &["debian-minimal", "vm", "bootloader"]
            } else {
                &["debian-minimal"]
            };
            c.boot = crate::boot_check(c, set, "amd64");
        }
        cells
    }

    fn schema(name: &str) -> jsonschema::Validator {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/schemas")
            .join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        jsonschema::validator_for(&v).unwrap()
    }

    /// The emitted text read back as YAML (what the engine will read), checked against the
    /// engine's schema.
    fn assert_valid(text: &str, schema_file: &str) -> Value {
        let v: Value = serde_saphyr::from_str(text).unwrap();
        let validator = schema(schema_file);
        let errors: Vec<String> = validator
            .iter_errors(&v)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "{schema_file}:\n{}\n{text}",
            errors.join("\n")
        );
        v
    }

    #[test]
    fn the_example_has_six_cells_and_three_boot() {
        let c = cells();
        assert_eq!(c.len(), 6);
        assert_eq!(c.iter().filter(|c| c.boot.is_some()).count(), 3);
        insta::assert_snapshot!("plan", crate::plan_text(&c));
    }

    #[test]
    fn github_workflow_is_valid_and_one_job_per_cell() {
        let c = cells();
        let text = to_yaml(
            &github(&c, "docs/matrix-example.yaml"),
            "docs/matrix-example.yaml",
        );
        let v = assert_valid(&text, "github-workflows.json");
        let jobs = v["jobs"].as_object().unwrap();
        assert_eq!(jobs.len(), c.len());
        for cell in &c {
            let job = &jobs[&job_id(cell)];
            let runs: Vec<&str> = job["steps"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|s| s["run"].as_str())
                .collect();
            assert!(runs
                .iter()
                .any(|r| r.contains(&kiln_host::quote_argv(&cell.args))));
            assert_eq!(
                runs.iter().any(|r| r.contains(" test --check ")),
                cell.boot.is_some(),
                "{}",
                cell.id
            );
            assert_eq!(job["env"]["DIB_RELEASE"], cell.env["DIB_RELEASE"].as_str());
        }
        insta::assert_snapshot!("github", text);
    }

    #[test]
    fn a_broken_workflow_fails_the_schema() {
        // The check can fail: a job without runs-on, and a step with an unknown key.
        let mut v = github(&cells(), "m.yaml");
        let job = v["jobs"]
            .as_object_mut()
            .unwrap()
            .values_mut()
            .next()
            .unwrap();
        job.as_object_mut().unwrap().remove("runs-on");
        let validator = schema("github-workflows.json");
        assert!(!validator.is_valid(&v));
        let c = cells();
        let mut v = gitlab(&c);
        v[job_id(&c[0])]["when"] = json!("sometimes");
        assert!(!schema("gitlab-ci.json").is_valid(&v));
    }

    #[test]
    fn gitlab_file_is_valid_and_one_job_per_cell() {
        let c = cells();
        let text = to_yaml(&gitlab(&c), "docs/matrix-example.yaml");
        let v = assert_valid(&text, "gitlab-ci.json");
        for cell in &c {
            let job = &v[job_id(cell)];
            assert_eq!(job["extends"], ".kiln-matrix");
            assert_eq!(job["cache"]["key"], format!("kiln-{}", cell.id));
            let script = job["script"].as_array().unwrap();
            assert_eq!(script.len(), if cell.boot.is_some() { 3 } else { 2 });
        }
        insta::assert_snapshot!("gitlab", text);
    }

    #[test]
    fn zuul_jobs_and_playbook() {
        let c = cells();
        let text = to_yaml(
            &zuul(&c, "docs/matrix-example.yaml"),
            "docs/matrix-example.yaml",
        );
        let v: Value = serde_saphyr::from_str(&text).unwrap();
        let items = v.as_array().unwrap();
        // The base job, one per cell, the project.
        assert_eq!(items.len(), c.len() + 2);
        assert_eq!(
            items[c.len() + 1]["project"]["check"]["jobs"]
                .as_array()
                .unwrap()
                .len(),
            c.len()
        );
        insta::assert_snapshot!("zuul", text);
        let pb = to_yaml(&zuul_playbook(), "docs/matrix-example.yaml");
        let pv: Value = serde_saphyr::from_str(&pb).unwrap();
        assert_eq!(pv[0]["hosts"], "builder");
        insta::assert_snapshot!("zuul_playbook", pb);
    }

    #[test]
    fn job_ids_are_what_the_engines_accept() {
        let mut c = cells().remove(0);
        c.id = "9debian.x+y".into();
        assert_eq!(job_id(&c), "_9debian_x_y");
    }
}
