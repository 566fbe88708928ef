//! `kiln matrix run` on real builds of the fixture OS (root.d unpacks the shared root
//! filesystem tar, so each cell costs seconds): two cells at once sharing the run's cache, a
//! failing cell that does not stop the others, the summary and its JSON, the exit status; a
//! second run of the same matrix gets every passing cell from the output cache and the same
//! failure again, and nothing is left behind.

use std::fs;

use crate::failures::fixture_elements;
use crate::harness::{assert_no_leftovers, capable, heavy, kiln_command, work, Timer};
use crate::rootfs::rootfs_tar;

const MATRIX: &str = "\
args: [-n]
axes:
  distribution: [test-rootfs]
  variant:
    - {name: plain}
    - {name: failing, elements: [fail-at], env: {KILN_TEST_FAIL_PHASE: install}}
  outputs: [tar, 'tar,tgz']
";

#[test]
fn matrix_run_of_fixture_cells() {
    if !capable("matrix_run_of_fixture_cells") {
        return;
    }
    let rootfs = rootfs_tar();
    let h = heavy();
    let _t = Timer::start("matrix_run_of_fixture_cells");
    let dir = work("matrix");
    let t = fixture_elements(&rootfs);
    fs::write(dir.join("m.yaml"), MATRIX).unwrap();
    let summary = |run: &str| -> serde_json::Value {
        let out = kiln_command(
            "matrix",
            &dir,
            Some(t.path()),
            &["run", "m.yaml", "-j", "2", "-o", run],
            &[],
        )
        .output()
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
        assert!(
            stdout.contains("4 cells, 2 passed, 2 not passed"),
            "{stdout}"
        );
        serde_json::from_str(&fs::read_to_string(dir.join(run).join("summary.json")).unwrap())
            .unwrap()
    };
    let first = summary("one");
    let results = |s: &serde_json::Value| -> Vec<(String, String)> {
        s["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["id"].as_str().unwrap().to_string(),
                    c["result"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let want: Vec<(String, String)> = [
        ("test-rootfs-plain-tar", "passed"),
        ("test-rootfs-plain-tar+tgz", "passed"),
        ("test-rootfs-failing-tar", "build-failed"),
        ("test-rootfs-failing-tar+tgz", "build-failed"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_string(), (*b).to_string()))
    .collect();
    assert_eq!(results(&first), want);
    let one = dir.join("one");
    assert!(one
        .join("test-rootfs-plain-tar/test-rootfs-plain-tar.tar")
        .is_file());
    assert!(one
        .join("test-rootfs-plain-tar+tgz/test-rootfs-plain-tar+tgz.tgz")
        .is_file());
    let log = fs::read_to_string(one.join("test-rootfs-failing-tar/matrix.log")).unwrap();
    assert!(log.contains("kiln-test-marker-install"), "{log}");
    for c in first["cells"].as_array().unwrap() {
        if c["result"] == "passed" {
            assert!(c["size_bytes"].as_u64().unwrap() > 1_000_000, "{c}");
            assert!(c["boot_seconds"].is_null(), "tar outputs do not boot: {c}");
        }
    }
    assert_no_leftovers(&dir, &h);

    // Again: the passing cells come from the output cache, the failing ones fail the same way.
    let second = summary("two");
    assert_eq!(results(&second), want);
    for c in second["cells"].as_array().unwrap() {
        if c["result"] == "passed" {
            assert_eq!(c["cache_hits"], "output", "{c}");
        }
    }
    assert_no_leftovers(&dir, &h);
}
