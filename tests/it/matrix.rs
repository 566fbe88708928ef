//! `kiln matrix`: plan, input errors, and `run` end to end against a stand-in for the
//! `kiln build` and `kiln test` children (a shell script that prints what kiln prints and writes
//! the outputs), so the orchestration is tested without root: a failing cell does not stop the
//! others, the summary table, its JSON and the exit status, `--only`, and an interrupt
//! forwarded to the running child. Real builds of a fixture matrix are in tests/e2e/matrix.rs.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{assert_input_error, kiln, run, Tree};

/// Fixture elements: an OS element and `fx-vm`, which brings a (fixture) boot loader.
fn fixture() -> Tree {
    let t = Tree::new();
    t.os();
    t.el("bootloader");
    t.el("fx-vm").deps(&["bootloader"]);
    t
}

const MATRIX: &str = "\
env: {FX_ALL: '1'}
axes:
  distribution: [test-os]
  release: [trixie, bookworm]
  variant:
    - {name: vm, elements: [fx-vm], outputs: qcow2}
    - {name: tar, outputs: tar}
include:
  - {release: bookworm, variant: vm, env: {FAKE_FAIL: '1'}}
";

/// A stand-in for the kiln binary: `build` prints the cache and phase lines kiln prints and
/// writes each `-t` output (1000 bytes), failing when FAKE_FAIL=1 or sleeping when
/// FAKE_SLEEP=1 (until a signal, then exit 130 as kiln does); `test` records its arguments.
const FAKE: &str = r#"#!/bin/sh
cmd=$1; shift
if [ "$cmd" = test ]; then echo "test $*" > booted; echo "KILN-FACT ok"; exit 0; fi
[ "$cmd" = build ] || exit 9
name=image; types=qcow2
while [ $# -gt 0 ]; do
  case $1 in -o) name=$2; shift 2;; -t) types=$2; shift 2;; -a) shift 2;; *) shift;; esac
done
echo "cache: root hit 0123456789abcdef" >&2
echo "cache: install miss 0123456789abcdef" >&2
echo "[install] 50-fx (test-os)" >&2
env | grep -E '^(FX_ALL|DIB_RELEASE|FAKE_FAIL)=' | sort > env.txt
if [ "${FAKE_SLEEP:-}" = 1 ]; then
  trap 'echo interrupted > signalled; exit 130' INT TERM
  echo sleeping > started
  while :; do sleep 0.1; done
fi
if [ "${FAKE_FAIL:-}" = 1 ]; then echo "hook 50-fx failed" >&2; exit 1; fi
for t in $(echo "$types" | tr , ' '); do head -c 1000 /dev/zero > "$name.$t"; done
echo "Build completed"
"#;

fn setup(matrix: &str) -> (Tree, tempfile::TempDir, std::path::PathBuf) {
    let t = fixture();
    let work = tempfile::tempdir().unwrap();
    fs::write(work.path().join("m.yaml"), matrix).unwrap();
    let fake = work.path().join("fake-kiln");
    fs::write(&fake, FAKE).unwrap();
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    (t, work, fake)
}

fn matrix_cmd(t: &Tree, cache: &Path, work: &Path, args: &[&str]) -> Command {
    let mut c = kiln(&[t.path()], cache);
    c.current_dir(work).arg("matrix").args(args);
    c
}

#[test]
fn matrix_plan_lists_cells_commands_and_boot_checks() {
    let (t, work, _) = setup(MATRIX);
    let cache = tempfile::tempdir().unwrap();
    let (code, out, err) = run(matrix_cmd(
        &t,
        cache.path(),
        work.path(),
        &["plan", "m.yaml"],
    ));
    assert_eq!(code, 0, "{err}");
    insta::assert_snapshot!("matrix_plan_text", out);
    let (code, out, err) = run(matrix_cmd(
        &t,
        cache.path(),
        work.path(),
        &["plan", "m.yaml", "--json"],
    ));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let cells = v.as_array().unwrap();
    assert_eq!(cells.len(), 4);
    assert_eq!(cells[0]["id"], "test-os-trixie-vm");
    assert_eq!(cells[0]["boot"]["image"], "test-os-trixie-vm.qcow2");
    assert!(cells[1]["boot"].is_null());
    assert_eq!(cells[2]["env"]["FAKE_FAIL"], "1");
}

#[test]
fn matrix_input_errors_exit_2_naming_file_and_line() {
    let cases: &[(&str, &[&str])] = &[
        (
            "axes:\n  release: [trixie]\n  arhc: [amd64]\n",
            &["m.yaml:3", "arhc"],
        ),
        (
            "axes:\n  distribution: [test-os]\nexclude:\n  - {release: sid}\n",
            &["m.yaml:4", "exclude names the axis `release`"],
        ),
        (
            "axes:\n  distribution: [no-such-element]\n",
            &["m.yaml: cell no-such-element", "no-such-element"],
        ),
    ];
    for (text, needles) in cases {
        let (t, work, _) = setup(text);
        let cache = tempfile::tempdir().unwrap();
        let (code, _, err) = run(matrix_cmd(
            &t,
            cache.path(),
            work.path(),
            &["plan", "m.yaml"],
        ));
        assert_input_error(code, &err, needles);
    }
    let (t, work, fake) = setup(MATRIX);
    let cache = tempfile::tempdir().unwrap();
    let (code, _, err) = run(matrix_cmd(
        &t,
        cache.path(),
        work.path(),
        &[
            "run",
            "m.yaml",
            "--only",
            "sid",
            "--kiln-binary",
            fake.to_str().unwrap(),
        ],
    ));
    assert_input_error(code, &err, &["m.yaml: no cell matches --only \"sid\""]);
    let (code, _, err) = run(matrix_cmd(
        &t,
        cache.path(),
        work.path(),
        &["plan", "missing.yaml"],
    ));
    assert_input_error(code, &err, &["missing.yaml: cannot read the matrix file"]);
}

#[test]
fn matrix_run_goes_on_past_a_failed_cell_and_summarises() {
    let (t, work, fake) = setup(MATRIX);
    let cache = tempfile::tempdir().unwrap();
    let (code, out, err) = run(matrix_cmd(
        &t,
        cache.path(),
        work.path(),
        &[
            "run",
            "m.yaml",
            "-o",
            "out",
            "--json",
            "s.json",
            "--kiln-binary",
            fake.to_str().unwrap(),
        ],
    ));
    assert_eq!(code, 1, "one cell failed: exit 1\n{out}\n{err}");
    // Plain lines when not on a terminal: start, phases, end of each cell.
    assert!(err.contains("[test-os-trixie-vm] started"), "{err}");
    assert!(err.contains("[test-os-trixie-vm] install"), "{err}");
    assert!(err.contains("[test-os-bookworm-vm] build-failed"), "{err}");
    let out_dir = work.path().join("out");
    let summary: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out_dir.join("summary.json")).unwrap()).unwrap();
    let again: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(work.path().join("s.json")).unwrap()).unwrap();
    assert_eq!(summary["cells"], again["cells"]);
    let cells = summary["cells"].as_array().unwrap();
    let results: Vec<(&str, &str)> = cells
        .iter()
        .map(|c| (c["id"].as_str().unwrap(), c["result"].as_str().unwrap()))
        .collect();
    assert_eq!(
        results,
        [
            ("test-os-trixie-vm", "passed"),
            ("test-os-trixie-tar", "passed"),
            ("test-os-bookworm-vm", "build-failed"),
            ("test-os-bookworm-tar", "passed"),
        ]
    );
    // Sizes, cache hits, the boot check only where the output boots, each in its directory.
    assert_eq!(cells[0]["size_bytes"], 1000);
    assert_eq!(cells[0]["cache_hits"], "1/2");
    assert!(cells[0]["boot_seconds"].is_f64());
    assert!(cells[1]["boot_seconds"].is_null());
    assert!(cells[2]["boot_seconds"].is_null());
    assert_eq!(cells[2]["build_exit"], 1);
    assert_eq!(cells[2]["size_bytes"], 0);
    let vm = out_dir.join("test-os-trixie-vm");
    assert_eq!(
        fs::read_to_string(vm.join("booted")).unwrap().trim(),
        "test --check --arch x86_64 test-os-trixie-vm.qcow2"
    );
    assert!(!out_dir.join("test-os-trixie-tar/booted").exists());
    assert!(out_dir
        .join("test-os-trixie-tar/test-os-trixie-tar.tar")
        .is_file());
    // The cell's environment on top of the caller's.
    assert_eq!(
        fs::read_to_string(out_dir.join("test-os-bookworm-vm/env.txt")).unwrap(),
        "DIB_RELEASE=bookworm\nFAKE_FAIL=1\nFX_ALL=1\n"
    );
    let log = fs::read_to_string(out_dir.join("test-os-bookworm-vm/matrix.log")).unwrap();
    assert!(log.contains("hook 50-fx failed"), "{log}");
    // The table: one row per cell, the failed one named.
    assert!(out.starts_with("cell "), "{out}");
    let row = |id: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .unwrap_or_else(|| panic!("no row {id}:\n{out}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(
        row("test-os-bookworm-vm").contains(" build failed "),
        "{out}"
    );
    assert!(row("test-os-trixie-vm").contains(" passed "), "{out}");
    assert!(row("test-os-trixie-vm").ends_with(" 1000 B 1/2"), "{out}");
    assert!(out.contains("4 cells, 3 passed, 1 not passed"), "{out}");

    // --only: just the matching cells, all passing: exit 0.
    let (code, out, err) = run(matrix_cmd(
        &t,
        cache.path(),
        work.path(),
        &[
            "run",
            "m.yaml",
            "-o",
            "only",
            "--only",
            "*-tar",
            "-j",
            "2",
            "--kiln-binary",
            fake.to_str().unwrap(),
        ],
    ));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("2 cells, 2 passed"), "{out}");
    assert!(!work.path().join("only/test-os-trixie-vm").exists());
}

#[test]
fn matrix_run_forwards_an_interrupt_and_waits() {
    let (t, work, fake) = setup(
        "axes:\n  distribution: [test-os]\n  release: [trixie, bookworm]\nenv: {FAKE_SLEEP: '1'}\n",
    );
    let cache = tempfile::tempdir().unwrap();
    let mut c = matrix_cmd(
        &t,
        cache.path(),
        work.path(),
        &[
            "run",
            "m.yaml",
            "-o",
            "out",
            "--kiln-binary",
            fake.to_str().unwrap(),
        ],
    );
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first = work.path().join("out/test-os-trixie");
    let t0 = Instant::now();
    while !first.join("started").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the first cell never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    // The running child got the signal and ended before kiln matrix did; the second cell
    // never started.
    assert_eq!(
        fs::read_to_string(first.join("signalled")).unwrap().trim(),
        "interrupted"
    );
    assert!(!work.path().join("out/test-os-bookworm").exists());
    let summary: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(work.path().join("out/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["interrupted_by"], 2);
    assert_eq!(summary["cells"][0]["result"], "interrupted");
    assert_eq!(summary["cells"][1]["result"], "not-run");
}
