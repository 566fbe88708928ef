//! The whole pipeline without root: a real `BuildPlan` of a disk build (a fixture operating
//! system with root.d, install.d and finalise.d hooks, a partitioned layout like `vm`'s, qcow2
//! and raw outputs) run through `RecordingHost`, which records every host effect and performs
//! none. Checked: the exact effect sequence (a snapshot, paths normalised), that a failure at
//! any one effect returns an error and undoes every set-up, that an interrupt between steps does
//! the same, and that the real host gained no mount.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use kiln_host::{unreleased, Effect, RecordingRunner};
use kiln_pipeline::runner::Console;
use kiln_pipeline::testing::RecordingHost;
use kiln_pipeline::{BuildPlan, BuildRequest, Error};

use crate::support::Tree;

/// `vm`'s shape: an MBR with one bootable root partition, ext4, mounted at `/`.
const LAYOUT: &str = "\
- local_loop:
    name: image0
- partitioning:
    base: image0
    label: mbr
    partitions:
      - name: root
        flags: [ boot, primary ]
        size: 100%
        mkfs:
          type: ext4
          mount:
            mount_point: /
            fstab:
              options: defaults
              fsck-passno: 1
";

/// The elements, the cache, the build's `TMPDIR` and the output directory of one fixture.
struct Fixture {
    tree: Tree,
    cache: tempfile::TempDir,
    tmp: tempfile::TempDir,
    out: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let tree = Tree::new();
        tree.os()
            .hook(
                "root",
                "10-bootstrap",
                "touch \"$TARGET_ROOT/bootstrapped\"",
            )
            .hook("install", "10-install", "true")
            .hook("finalise", "50-finalise", "true")
            .file("block-device-default.yaml", LAYOUT);
        // A second element, so that two plans can differ in their elements only.
        tree.el("extra").hook("install", "20-extra", "echo extra");
        Self {
            tree,
            cache: tempfile::tempdir().unwrap(),
            tmp: tempfile::tempdir().unwrap(),
            out: tempfile::tempdir().unwrap(),
        }
    }

    /// The build's `TMPDIR`, canonical (as the workspace makes it).
    fn tmp(&self) -> PathBuf {
        fs::canonicalize(self.tmp.path()).unwrap()
    }

    /// The fixture's plan, with a fixed build seed: the identifiers in the record (the mkfs
    /// `-U` value) are then the same whatever kiln binary runs the test.
    fn plan(&self) -> BuildPlan {
        self.plan_of(&["test-os"], Some("pipeline-fixture"))
    }

    /// A plan of `elements` with the build seed `seed` (`--seed`), or the default seed.
    fn plan_of(&self, elements: &[&str], seed: Option<&str>) -> BuildPlan {
        self.plan_env(elements, seed, &[])
    }

    /// [`Self::plan_of`] with more variables in the request's environment.
    fn plan_env(&self, elements: &[&str], seed: Option<&str>, extra: &[(&str, &str)]) -> BuildPlan {
        let mut env = vec![
            ("ELEMENTS_PATH", self.tree.path().display().to_string()),
            ("TMPDIR", self.tmp().display().to_string()),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_string())));
        let req = BuildRequest {
            elements: elements.iter().map(|e| (*e).to_string()).collect(),
            arch: Some("amd64".into()),
            image_name: self.out.path().join("image"),
            types: vec!["qcow2".into(), "raw".into()],
            skip_base: true,
            image_cache: Some(self.cache.path().to_path_buf()),
            no_cache: true,
            // Always on tmpfs, whatever this machine's memory: the mounts are part of the test.
            min_tmpfs: Some(0),
            seed: seed.map(String::from),
            env: env.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            ..BuildRequest::default()
        };
        BuildPlan::new(&req).expect("the fixture plans")
    }

    /// Runs the build on a recording host set up by `arm`; returns the result, the record
    /// and what the console logged. The output directory is emptied first.
    fn build(
        &self,
        plan: &BuildPlan,
        arm: impl FnOnce(RecordingRunner) -> RecordingRunner,
        interrupt_at: Option<usize>,
    ) -> (Result<Vec<PathBuf>, Error>, Vec<Effect>, String) {
        for e in fs::read_dir(self.out.path()).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                fs::remove_dir_all(&p).unwrap();
            } else {
                fs::remove_file(&p).unwrap();
            }
        }
        let runner = arm(RecordingRunner::new().respond("du -s -k -x", "20480\t.\n"));
        let mut host = RecordingHost::new(runner).on_phase("root", |run| {
            // What root.d would leave: a tree that is not empty.
            let root = Path::new(&run.env["TARGET_ROOT"]);
            fs::write(root.join("bootstrapped"), "").unwrap();
        });
        if let Some(n) = interrupt_at {
            host = host.interrupt_at(n);
        }
        let log = self.out.path().join("console.log");
        let console = Console::new(Some(fs::File::create(&log).unwrap()), 0, true);
        let result = kiln_pipeline::pipeline::run_with(plan, &console, Box::new(host.clone()))
            .map(|r| r.outputs);
        let text = fs::read_to_string(&log).unwrap();
        fs::remove_file(&log).unwrap();
        (result, host.recorder().effects(), text)
    }

    /// `text` with the build's random directories and the fixture's paths named.
    fn norm(&self, text: &str) -> String {
        let tmp = regex::escape(&self.tmp().display().to_string());
        let build = regex::Regex::new(&format!(r"{tmp}/kiln_pipeline\.[A-Za-z0-9]+")).unwrap();
        let image = regex::Regex::new(&format!(r"{tmp}/kiln_image\.[A-Za-z0-9]+")).unwrap();
        let text = build.replace_all(text, "[BUILD]");
        let text = image.replace_all(&text, "[IMAGE]");
        text.replace(&self.out.path().display().to_string(), "[OUT]")
    }

    /// The record's lines, normalised ([`Self::norm`]).
    fn lines(&self, effects: &[Effect]) -> Vec<String> {
        effects.iter().map(|e| self.norm(&e.line)).collect()
    }

    /// The record as text, one effect a line (see [`Self::lines`]).
    fn normalise(&self, effects: &[Effect]) -> String {
        self.lines(effects).join("\n") + "\n"
    }

    /// What is left in the build's `TMPDIR` (the build and image directories must be gone).
    fn leftover_dirs(&self) -> Vec<PathBuf> {
        fs::read_dir(self.tmp())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }
}

/// The real host's mount points at or below `dir`.
fn host_mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read("/proc/self/mountinfo").unwrap();
    kiln_sandbox::mountinfo::mounts_under_in(&info, dir)
}

#[test]
fn disk_build_effect_sequence() {
    let fx = Fixture::new();
    let plan = fx.plan();
    let (result, effects, console) = fx.build(&plan, |r| r, None);
    let outputs = result.unwrap_or_else(|e| panic!("{e}\n{console}"));
    assert_eq!(
        outputs,
        [
            fx.out.path().join("image.qcow2"),
            fx.out.path().join("image.raw")
        ]
    );
    assert!(outputs.iter().all(|o| o.is_file()), "{outputs:?}");
    assert!(effects.iter().all(|e| !e.failed));
    assert_eq!(unreleased(&effects), Vec::<String>::new());
    assert_eq!(fx.leftover_dirs(), Vec::<PathBuf>::new());
    // The fake saw the mounts; the real host got none of them.
    assert!(effects.iter().any(|e| e.line.starts_with("mount tmpfs ")));
    // (Other builds on this machine may mount elsewhere meanwhile, so only this build's own
    // directories are looked at.)
    assert_eq!(host_mounts_under(&fx.tmp()), Vec::<PathBuf>::new());
    let out = fs::canonicalize(fx.out.path()).unwrap();
    assert_eq!(host_mounts_under(&out), Vec::<PathBuf>::new());
    insta::assert_snapshot!("pipeline_disk_build_effects", fx.normalise(&effects));
}

/// With SOURCE_DATE_EPOCH the root filesystem's final content is copied out before the
/// unmount and the filesystem made again from it offline (discard, `mke2fs -d` with the same
/// UUID); nothing is left behind.
#[test]
fn reproducible_disk_build_effect_sequence() {
    let fx = Fixture::new();
    let plan = fx.plan_env(
        &["test-os"],
        Some("pipeline-fixture"),
        &[("SOURCE_DATE_EPOCH", "1700000000")],
    );
    let (result, effects, console) = fx.build(&plan, |r| r, None);
    result.unwrap_or_else(|e| panic!("{e}\n{console}"));
    assert!(effects.iter().all(|e| !e.failed));
    assert_eq!(unreleased(&effects), Vec::<String>::new());
    assert_eq!(fx.leftover_dirs(), Vec::<PathBuf>::new());
    let lines = fx.lines(&effects);
    let pos = |prefix: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in {lines:#?}"))
    };
    let copy = pos("cp -a --preserve=all --one-file-system --no-target-directory [BUILD]/mnt ");
    let umount = lines
        .iter()
        .rposition(|l| l == "umount [BUILD]/mnt")
        .expect("the image is unmounted");
    let discard = pos("blkdiscard /dev/loop0p1");
    let mke2fs = pos("env TZ=UTC SOURCE_DATE_EPOCH=1700000000 mke2fs ");
    let detach = pos("losetup -d ");
    assert!(copy < umount && umount < discard && discard < mke2fs && mke2fs < detach);
    // The same UUID as the filesystem made first.
    assert_eq!(
        lines[mke2fs]
            .split(" -U ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next(),
        Some(root_uuid(&fx, &plan).as_str())
    );
    insta::assert_snapshot!(
        "pipeline_reproducible_disk_build_effects",
        fx.normalise(&effects)
    );
}

/// The root filesystem UUID a recorded build gave `mkfs` (`-U`).
fn root_uuid(fx: &Fixture, plan: &BuildPlan) -> String {
    let (result, effects, console) = fx.build(plan, |r| r, None);
    result.unwrap_or_else(|e| panic!("{e}\n{console}"));
    let mkfs: Vec<&str> = effects
        .iter()
        .map(|e| e.line.as_str())
        .filter(|l| l.starts_with("mkfs -t ext4 "))
        .collect();
    let [line] = mkfs[..] else {
        panic!("one mkfs expected: {mkfs:?}")
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "-U").expect("mkfs -U");
    let uuid = words[at + 1].to_string();
    assert_eq!(uuid.len(), 36, "{line}");
    assert_eq!(&uuid[14..15], "8", "not a version 8 UUID: {line}");
    uuid
}

/// The root filesystem's UUID comes from the build seed: by default a digest of the build's
/// inputs, so the same plan gives the same UUID, a plan with other elements (same layout)
/// another; `--seed` sets it, and two seeds give two UUIDs.
#[test]
fn root_uuid_follows_the_build_seed() {
    let fx = Fixture::new();
    let plain = root_uuid(&fx, &fx.plan_of(&["test-os"], None));
    assert_eq!(plain, root_uuid(&fx, &fx.plan_of(&["test-os"], None)));
    let extra = root_uuid(&fx, &fx.plan_of(&["test-os", "extra"], None));
    assert_ne!(plain, extra, "two images with one layout share a root UUID");
    let seeded = root_uuid(&fx, &fx.plan_of(&["test-os"], Some("one")));
    assert_ne!(seeded, plain);
    assert_ne!(seeded, extra);
    // An explicit seed alone decides: the elements no longer matter, another seed does.
    assert_eq!(
        seeded,
        root_uuid(&fx, &fx.plan_of(&["test-os", "extra"], Some("one")))
    );
    assert_ne!(
        seeded,
        root_uuid(&fx, &fx.plan_of(&["test-os"], Some("two")))
    );
}

/// How one run ended, for the checks below.
struct Ending {
    /// The error's first line, or `ok`.
    result: String,
    /// Set-ups never undone ([`unreleased`]).
    left: Vec<String>,
    /// Directories left in `TMPDIR`.
    dirs: Vec<PathBuf>,
    /// The console's `teardown: ...` lines (what teardown could not undo).
    teardown: Vec<String>,
}

impl Fixture {
    fn ending(
        &self,
        result: &Result<Vec<PathBuf>, Error>,
        effects: &[Effect],
        console: &str,
    ) -> Ending {
        let ending = Ending {
            result: match result {
                Ok(_) => "ok".into(),
                Err(e) => self.norm(e.to_string().lines().next().unwrap_or_default()),
            },
            left: self.lines(
                &unreleased(effects)
                    .into_iter()
                    .map(|line| Effect {
                        line,
                        failed: false,
                    })
                    .collect::<Vec<_>>(),
            ),
            dirs: self.leftover_dirs(),
            teardown: console
                .lines()
                .filter(|l| l.starts_with("kiln: teardown: "))
                .map(String::from)
                .collect(),
        };
        // Leave the next run a clean TMPDIR, whatever this one left.
        for d in &ending.dirs {
            fs::remove_dir_all(d).unwrap();
        }
        ending
    }
}

/// The effects whose failure does not fail the build, each by design.
fn tolerated(what: &str) -> bool {
    // Killing a phase's group cannot fail (a group already gone is no error).
    what.starts_with("killpg ")
        // A reap after a phase that leaves a process: teardown reaps the build again.
        || what.starts_with("reap ")
        // The snapshot's view and the hook tree's bind: unmounted again with the chroot, or
        // at teardown (a warning at most).
        || what == "umount [BUILD]/view"
        || what == "umount [BUILD]/mnt/tmp/in_target.d"
        // The block-device layer: `partx -u` when `partx -a` fails; sync and fstrim are
        // best effort; umount, `partx -d` and `losetup -d` are retried.
        || what.starts_with("partx -")
        || what == "sync"
        || what.starts_with("fstrim ")
        || what == "umount [BUILD]/mnt"
        || what.starts_with("losetup -d ")
        // Reading the immutable flag of resolv.conf, and the stamp for an old output.
        || what.starts_with("lsattr ")
        || what.starts_with("date ")
}

/// A failure injected at each effect of the disk build in turn. Whatever fails, a failed
/// build returns its error with nothing left behind (no mount, loop device, partition
/// devices or process group, and no build directory); a failure kiln tolerates by design
/// (sync, fstrim, a retried umount, `partx -a` falling back to `partx -u`, the snapshot
/// view's unmount that teardown redoes, ...) still leaves nothing. The one exception is an
/// undo of the final teardown failing itself: then teardown says so, the build fails although
/// its outputs were written, and what it could not undo is exactly what is left. The snapshot
/// lists every case.
#[test]
fn a_failure_at_any_effect_is_torn_down() {
    let fx = Fixture::new();
    let plan = fx.plan();
    let (result, baseline, _) = fx.build(&plan, |r| r, None);
    result.expect("the build without failures succeeds");
    // The final teardown starts after the last output is written.
    let teardown_from = baseline
        .iter()
        .rposition(|e| e.line.starts_with("produce "))
        .expect("outputs were produced")
        + 1;
    let mut table = String::new();
    for (i, effect) in baseline.iter().enumerate() {
        let (result, effects, console) = fx.build(&plan, |r| r.fail_at(i), None);
        // The same build up to the failure, and the failure hit the effect meant.
        assert_eq!(
            fx.lines(&effects[..=i]),
            fx.lines(&baseline[..=i]),
            "effect {i} ({})",
            effect.line
        );
        let can_fail = !effect.line.starts_with("killpg ");
        assert_eq!(effects[i].failed, can_fail, "effect {i} ({})", effect.line);
        let end = fx.ending(&result, &effects, &console);
        let what = &fx.lines(std::slice::from_ref(effect))[0];
        if i < teardown_from {
            assert_eq!(
                end.result == "ok",
                tolerated(what),
                "failing effect {i} `{what}` ended with: {}",
                end.result
            );
            assert!(
                end.left.is_empty() && end.dirs.is_empty() && end.teardown.is_empty(),
                "failing effect {i} `{what}` left {:?}, directories {:?}, teardown said {:?}",
                end.left,
                end.dirs,
                end.teardown
            );
        } else {
            // The outputs were written, but the undo that failed is reported and fails the
            // build (a leak is a failure), and nothing but what it was undoing is left.
            assert!(
                end.result.starts_with("the outputs were written")
                    && end
                        .result
                        .contains("the teardown could not undo everything"),
                "effect {i} `{what}`: {}",
                end.result
            );
            assert!(
                !end.teardown.is_empty(),
                "effect {i} `{what}` went unreported"
            );
            let undone = what.split_whitespace().last().unwrap_or_default();
            let expected_left: Vec<String> = if what.starts_with("umount ") {
                vec![format!("mount tmpfs {undone}")]
            } else {
                Vec::new()
            };
            assert_eq!(end.left, expected_left, "effect {i} `{what}`");
            assert!(end.dirs.len() <= 1, "effect {i} `{what}`: {:?}", end.dirs);
        }
        let _ = writeln!(
            table,
            "{what}\n    => {}{}{}{}",
            if can_fail { "" } else { "(cannot fail) " },
            end.result,
            if end.left.is_empty() {
                String::new()
            } else {
                format!("; left: {}", end.left.join(", "))
            },
            if end.teardown.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} teardown problem(s), {} directory left",
                    end.teardown.len(),
                    end.dirs.len()
                )
            },
        );
    }
    insta::assert_snapshot!("pipeline_failure_at_each_effect", table);
}

/// An interrupt (the SIGINT flag, raised by the fake after each number of effects in turn) is
/// seen at the next step and tears down the same way: the build returns "interrupted by
/// signal 2" and leaves nothing behind.
#[test]
fn an_interrupt_between_steps_is_torn_down() {
    let fx = Fixture::new();
    let plan = fx.plan();
    let (result, baseline, _) = fx.build(&plan, |r| r, None);
    result.expect("the build without an interrupt succeeds");
    let mut interrupted = 0;
    for n in 0..baseline.len() {
        let (result, effects, console) = fx.build(&plan, |r| r, Some(n));
        match &result {
            Err(Error::Interrupted { signal: 2 }) => interrupted += 1,
            Err(e) => panic!("interrupt after {n} effects: {e}"),
            Ok(_) => {}
        }
        let end = fx.ending(&result, &effects, &console);
        assert!(
            end.left.is_empty() && end.dirs.is_empty() && end.teardown.is_empty(),
            "interrupt after {n} effects left {:?}, directories {:?}, teardown said {:?}",
            end.left,
            end.dirs,
            end.teardown
        );
    }
    // Every run whose flag was up before the last output's step began saw it; after that
    // no step is left to check it, and the build ends normally.
    let last_output = baseline
        .iter()
        .rposition(|e| e.line.starts_with("produce "))
        .expect("outputs were produced");
    assert_eq!(interrupted, last_output + 1, "interrupted runs");
}
