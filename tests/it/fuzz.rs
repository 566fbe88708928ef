//! Property tests over what users and element authors hand kiln: element trees (names,
//! element-deps, package-installs YAML/JSON, pkg-map, environment.d, hook names, odd bytes)
//! and block-device YAML, valid-looking and mutated.
//!
//! The properties: nothing panics or hangs (FIFOs among the files); every rejection is a typed error naming the file it is
//! about; what is accepted is safe to hand on (package names and phases that are plain words,
//! fstab lines of six fields, at most 128 GPT partitions); and a bounded number of `kiln plan`
//! runs on generated trees exit 0 or 2, never anything else, with one message naming a file
//! of the tree, writing nothing in the working directory.
//!
//! The number of cases is bounded so the suite takes well under 30 s on the 2-core CI machine
//! (`FUZZ_LIB_CASES` cases for the library properties, `FUZZ_CLI_CASES` for the `kiln plan`
//! runs); `PROPTEST_CASES` overrides both, e.g. `PROPTEST_CASES=5000` for a longer campaign.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kiln_element::{names, package_installs, pkg_map, Library, ResolveRequest};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};

use crate::support::{kiln, run};

/// Library-level cases per property when `PROPTEST_CASES` is unset.
const FUZZ_LIB_CASES: u32 = 256;
/// `kiln plan` runs when `PROPTEST_CASES` is unset (each is a process, about 0.3 s).
const FUZZ_CLI_CASES: u32 = 64;

fn config(default: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Config {
        cases,
        // Shrinking a CLI case runs kiln again and again; the failing input is printed anyway.
        max_shrink_iters: 64,
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

/// Names as an element author might write them, and as an attacker would.
fn any_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z][a-z0-9-]{1,10}",
        1 => "[a-zA-Z0-9_.+-]{1,8}",
        1 => prop::sample::select(vec![
            "$(touch PWNED)", "`id`", "a b", "-oAPT::Get=1", "--reinstall", "..", "../x",
            "x;y", "é", "a\tb", "#c", "a\\b", "Vim", "x", "a'b", "a\"b", "*", "~x",
        ])
        .prop_map(String::from),
    ]
}

/// A `phase:` value: phase directories, near misses and paths.
fn any_phase() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "install.d",
        "pre-install.d",
        "post-install.d",
        "finalise.d",
        "root.d",
        "install",
        "../../x",
        "/tmp/x.d",
        "install.d/../../y",
        "",
        "x.d",
    ])
    .prop_map(String::from)
}

/// A YAML scalar, quoted or not.
fn yaml_scalar(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '/'))
        && !s.is_empty()
    {
        s.to_string()
    } else {
        format!("{s:?}")
    }
}

/// One option line of a package entry.
fn any_option() -> impl Strategy<Value = String> {
    prop_oneof![
        any_phase().prop_map(|p| format!("phase: {}", yaml_scalar(&p))),
        Just("uninstall: true".to_string()),
        Just("build-only: yes".to_string()),
        prop::sample::select(vec!["amd64", "arm64", "amd64,arm64", "[x]"])
            .prop_map(|a| format!("arch: {a}")),
        Just("not-arch: s390x".to_string()),
        Just("installtype: source".to_string()),
        Just("dib_python_version: 3".to_string()),
        prop::sample::select(vec!["DIB_RELEASE = bookworm", "HOME != x", "bad", "[1, 2]"])
            .prop_map(|w| format!("when: {w}")),
        "[a-z]{1,6}: [a-z0-9]{0,4}",
    ]
}

/// package-installs text: YAML or JSON, well formed or nearly.
fn package_installs_text() -> impl Strategy<Value = String> {
    let entry = (
        any_name(),
        prop::collection::vec(any_option(), 0..3),
        any::<bool>(),
    );
    let yaml = prop::collection::vec(entry, 0..6).prop_map(|entries| {
        let mut s = String::new();
        for (name, opts, list) in entries {
            s.push_str(&yaml_scalar(&name));
            s.push_str(":\n");
            for (i, o) in opts.iter().enumerate() {
                let lead = if list && i == 0 {
                    "  - "
                } else if list {
                    "    "
                } else {
                    "  "
                };
                s.push_str(lead);
                s.push_str(o);
                s.push('\n');
            }
        }
        s
    });
    let json = prop::collection::vec((any_name(), proptest::option::of(any_phase())), 0..5)
        .prop_map(|entries| {
            let items: Vec<String> = entries
                .iter()
                .map(|(n, p)| match p {
                    Some(p) => format!("{n:?}: {{\"phase\": {p:?}}}"),
                    None => format!("{n:?}: null"),
                })
                .collect();
            format!("{{\n{}\n}}", items.join(",\n"))
        });
    mutated(prop_oneof![3 => yaml, 1 => json])
}

/// A text, or the same text with a few bytes flipped, inserted or cut.
fn mutated(base: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    (
        base,
        prop_oneof![
            2 => Just(Vec::new()),
            1 => prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<char>()), 1..3),
        ],
    )
        .prop_map(|(text, edits)| {
            let mut chars: Vec<char> = text.chars().collect();
            for (at, op, c) in edits {
                if chars.is_empty() {
                    chars.push(c);
                    continue;
                }
                let i = at.index(chars.len());
                match op {
                    0 => chars[i] = c,
                    1 => chars.insert(i, c),
                    2 => {
                        chars.remove(i);
                    }
                    _ => chars.insert(i, ['\n', ':', '-', '{', '[', '"', ' '][i % 7]),
                }
            }
            chars.into_iter().collect()
        })
}

/// A block-device config: DIB's layouts with generated names, sizes and fstab fields, then
/// mutated.
fn block_device_text() -> impl Strategy<Value = String> {
    let size = prop_oneof![
        6 => prop::sample::select(vec!["1MiB", "8MiB", "16MiB", "10%", "1.5MiB"]),
        1 => prop::sample::select(vec![
            "100%", "0", "1.5GiB", "18446744073709551615", "99999999TiB", "-1", "abc", "101%",
            "3GiB",
        ]),
    ];
    let word = prop_oneof![
        8 => "[a-z][a-z0-9_]{0,6}",
        1 => prop::sample::select(vec!["my root", "a\tb", "#x", "a\\b", "../x", "", "-x", "é"])
            .prop_map(String::from),
    ];
    let part = (
        word.clone(),
        size.clone(),
        proptest::option::of(word.clone()),
    );
    (
        prop_oneof![4 => Just("gpt"), 4 => Just("mbr"), 1 => Just("dos")],
        prop::collection::vec(part, 1..5),
        prop_oneof![
            6 => Just("/"),
            1 => prop::sample::select(vec!["/boot", "/my data", "relative", "/a/../b", "/srv", "/a\tb"]),
        ],
        proptest::option::of(word.clone()),
        proptest::option::of(word),
        prop_oneof![
            6 => prop::sample::select(vec!["ext4", "xfs", "vfat"]),
            1 => prop::sample::select(vec!["swap", "../x", "ext 4", "-x"]),
        ],
        0usize..6,
    )
        .prop_map(|(label, parts, mp, fs_label, options, fstype, many)| {
            let mut s = String::from("- local_loop:\n    name: image0\n");
            let _ = write!(
                s,
                "- partitioning:\n    base: image0\n    label: {label}\n    partitions:\n"
            );
            for (i, (name, size, mkfs_label)) in parts.iter().enumerate() {
                let _ = write!(
                s,
                    "      - name: {}\n        size: {}\n",
                    yaml_scalar(&format!("{name}{i}")),
                    yaml_scalar(size)
                );
                if i == 0 {
                    let _ = write!(
                s,
                        "        mkfs:\n          name: mkfs_root\n          type: {}\n",
                        yaml_scalar(fstype)
                    );
                    if let Some(l) = fs_label.as_ref().or(mkfs_label.as_ref()) {
                        let _ = writeln!(s, "          label: {}", yaml_scalar(l));
                    }
                    let _ = write!(
                s,
                        "          mount:\n            mount_point: {}\n            fstab:\n",
                        yaml_scalar(mp)
                    );
                    let _ = writeln!(
                s,
                        "              options: {}",
                        yaml_scalar(options.as_deref().unwrap_or("defaults"))
                    );
                }
            }
            // Now and then, far too many partitions.
            if many == 0 {
                for i in 0..130 {
                    let _ = write!(s, "      - name: extra{i}\n        size: 1MiB\n");
                }
            }
            s
        })
        .prop_flat_map(|s| mutated(Just(s)))
}

/// One generated element.
#[derive(Debug, Clone)]
struct GenElement {
    name: String,
    deps: Vec<String>,
    package_installs: Option<(bool, String)>,
    pkg_map: Option<String>,
    env_files: Vec<(Vec<u8>, String)>,
    hooks: Vec<(String, Vec<u8>)>,
    odd: Option<Vec<u8>>,
    /// A FIFO in place of one of the element's files.
    fifo: Option<&'static str>,
}

fn file_name_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => "[0-9]{2}-[a-z]{1,6}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 1..10).prop_map(|mut v| {
            // A file name: no NUL, no slash, not `.` or `..`.
            v.retain(|b| *b != 0 && *b != b'/');
            if v.is_empty() || v == b"." || v == b".." {
                v = b"x".to_vec();
            }
            v
        }),
    ]
}

fn gen_element() -> impl Strategy<Value = GenElement> {
    (
        any_name(),
        prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(any_name(), 1..3)],
        proptest::option::of((any::<bool>(), package_installs_text())),
        proptest::option::of(mutated(
            prop::sample::select(vec![
                "{\"default\": {\"vim\": \"vim-nox\"}}",
                "{\"distro\": {\"debian\": {\"vim\": \"-oX=1 vim\"}}}",
                "{\"family\": {\"debian\": {\"x\": null}}}",
                "[]",
            ])
            .prop_map(String::from),
        )),
        prop::collection::vec(
            (
                file_name_bytes(),
                prop::sample::select(vec![
                    "export DIB_FOO=1\n",
                    "export X=$(echo hi)\n",
                    "export DIB_RELEASE='bookworm main'\n",
                    "export DISTRO_NAME=../x\n",
                    "return 3\n",
                    "\u{0}\u{1}binary",
                    "",
                ])
                .prop_map(String::from),
            ),
            0..3,
        ),
        prop::collection::vec(
            (
                prop::sample::select(vec!["root", "install", "finalise", "cleanup", "bogus"])
                    .prop_map(String::from),
                file_name_bytes(),
            ),
            0..3,
        ),
        proptest::option::of(prop::collection::vec(any::<u8>(), 0..32)),
        prop_oneof![
            9 => Just(None),
            1 => prop::sample::select(vec![
                "element-deps",
                "element-provides",
                "package-installs.yaml",
                "pkg-map",
                "environment.d/50-fifo",
                "install.d/50-fifo",
                "static/etc/fifo",
            ])
            .prop_map(Some),
        ],
    )
        .prop_map(
            |(name, deps, package_installs, pkg_map, env_files, hooks, odd, fifo)| GenElement {
                name,
                deps,
                package_installs,
                pkg_map,
                env_files,
                hooks,
                odd,
                fifo,
            },
        )
}

/// Writes `elements` (and the operating-system element `test-os`) under `root`. Names that
/// cannot be directory names are skipped.
fn write_tree(root: &Path, elements: &[GenElement]) -> Vec<String> {
    let os = root.join("test-os");
    fs::create_dir_all(os.join("environment.d")).unwrap();
    fs::write(os.join("element-provides"), "operating-system\n").unwrap();
    fs::write(
        os.join("environment.d/10-test-os"),
        "export DISTRO_NAME=debian\nexport DIB_RELEASE=bookworm\n",
    )
    .unwrap();
    let mut written = Vec::new();
    for e in elements {
        if e.name.contains('/') || e.name == "." || e.name == ".." || e.name == "test-os" {
            continue;
        }
        let dir = root.join(&e.name);
        if fs::create_dir(&dir).is_err() {
            continue;
        }
        written.push(e.name.clone());
        fs::write(dir.join("element-deps"), e.deps.join("\n")).unwrap();
        if let Some((json, text)) = &e.package_installs {
            let file = if *json {
                "package-installs.json"
            } else {
                "package-installs.yaml"
            };
            fs::write(dir.join(file), text).unwrap();
        }
        if let Some(m) = &e.pkg_map {
            fs::write(dir.join("pkg-map"), m).unwrap();
        }
        for (name, body) in &e.env_files {
            let d = dir.join("environment.d");
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join(std::ffi::OsStr::from_bytes(name)), body).unwrap();
        }
        for (phase, name) in &e.hooks {
            let d = dir.join(format!("{phase}.d"));
            fs::create_dir_all(&d).unwrap();
            let f = d.join(std::ffi::OsStr::from_bytes(name));
            if fs::write(&f, "#!/bin/sh\ntrue\n").is_ok() {
                let _ = fs::set_permissions(&f, fs::Permissions::from_mode(0o755));
            }
        }
        if let Some(bytes) = &e.odd {
            fs::write(dir.join("odd-file"), bytes).unwrap();
        }
        if let Some(rel) = e.fifo {
            let f = dir.join(rel);
            let _ = fs::remove_file(&f);
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            nix::unistd::mkfifo(&f, nix::sys::stat::Mode::S_IRWXU).unwrap();
        }
    }
    written
}

// ---------------------------------------------------------------------------------------------
// Library properties
// ---------------------------------------------------------------------------------------------

fn check_package_installs(path: &Path, text: &str) -> Result<(), TestCaseError> {
    match package_installs::parse_text(path, text) {
        Ok(parsed) => {
            for p in &parsed.packages {
                prop_assert!(
                    names::generic_package_name_problem(&p.name).is_none(),
                    "accepted package name {:?}",
                    p.name
                );
                for params in &p.params {
                    prop_assert!(
                        names::package_phase(&params.phase).is_some(),
                        "accepted phase {:?}",
                        params.phase
                    );
                }
            }
        }
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(
                msg.starts_with(&path.display().to_string()),
                "error does not start with the file: {msg}"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(FUZZ_LIB_CASES))]

    #[test]
    fn package_installs_never_panic_and_accept_only_safe_names(
        text in package_installs_text(),
        json in any::<bool>(),
    ) {
        let path = if json {
            Path::new("/e/el/package-installs.json")
        } else {
            Path::new("/e/el/package-installs.yaml")
        };
        check_package_installs(path, &text)?;
    }

    #[test]
    fn package_installs_on_arbitrary_text(text in any::<String>()) {
        check_package_installs(Path::new("/e/el/package-installs.yaml"), &text)?;
    }

    #[test]
    fn pkg_map_never_panics(text in mutated(any::<String>())) {
        let path = Path::new("/e/el/pkg-map");
        if let Err(e) = pkg_map::parse_text(path, &text) {
            prop_assert!(e.to_string().starts_with("/e/el/pkg-map"), "{}", e);
        }
    }

    #[test]
    fn block_device_configs_are_planned_or_refused_with_file_and_line(
        text in block_device_text(),
        size in prop::sample::select(vec![None, Some(1u64 << 30), Some(u64::MAX), Some(0)]),
    ) {
        let params = kiln_blockdev::Params { image_size: size, ..kiln_blockdev::Params::default() };
        match kiln_blockdev::plan(&text, "fuzz.yaml", &params) {
            Ok(plan) => {
                for line in plan.fstab().lines() {
                    prop_assert_eq!(line.split_whitespace().count(), 6, "fstab line {:?}", line);
                    prop_assert!(!line.starts_with('#'), "fstab line {:?}", line);
                }
                let gpt_parts = text.matches("      - name:").count();
                prop_assert!(!(text.contains("label: gpt") && gpt_parts > 128 && !text.contains("label: mbr")),
                    "{} partitions planned on GPT", gpt_parts);
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(e.is_input_error(), "not an input error: {}", msg);
                prop_assert!(msg.starts_with("fuzz.yaml"), "error does not name the file: {}", msg);
                prop_assert!(!msg.contains('\n'), "error is not one line: {:?}", msg);
            }
        }
    }

    #[test]
    fn element_trees_are_resolved_or_refused_naming_a_file(
        elements in prop::collection::vec(gen_element(), 0..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        let written = write_tree(&root, &elements);
        let lib = match Library::discover(std::slice::from_ref(&root)) {
            Ok(lib) => lib,
            Err(e) => {
                prop_assert!(e.to_string().contains(&root.display().to_string()), "{}", e);
                return Ok(());
            }
        };
        for name in lib.names() {
            prop_assert!(names::element_name_problem(name).is_none(), "discovered {:?}", name);
        }
        let mut asked = vec!["test-os".to_string()];
        asked.extend(written.into_iter().filter(|n| lib.get(n).is_some()));
        let set = match kiln_element::resolve(&lib, &ResolveRequest {
            elements: asked,
            arch: "amd64".into(),
            skip_base: true,
        }) {
            Ok(set) => set,
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(
                    msg.contains(&root.display().to_string()) || matches!(e, kiln_element::Error::UnknownElement { .. } | kiln_element::Error::AlreadyProvided { .. }),
                    "{}", msg
                );
                return Ok(());
            }
        };
        if let Err(e) = kiln_element::merge_hooks(&set) {
            prop_assert!(e.to_string().contains(&root.display().to_string()), "{}", e);
            return Ok(());
        }
        match package_installs::collect(&lib, &set) {
            Ok(all) => {
                for (_, pi) in all {
                    for p in pi.packages {
                        prop_assert!(names::generic_package_name_problem(&p.name).is_none());
                    }
                }
            }
            Err(e) => prop_assert!(e.to_string().contains(&root.display().to_string()), "{}", e),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The kiln binary
// ---------------------------------------------------------------------------------------------

/// One cache for every CLI case: the built-in elements are unpacked once.
fn shared_cache() -> &'static Path {
    static CACHE: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

proptest! {
    #![proptest_config(config(FUZZ_CLI_CASES))]

    #[test]
    fn kiln_plan_exits_0_or_2_naming_a_file(
        elements in prop::collection::vec(gen_element(), 0..3),
        layout in proptest::option::of(block_device_text()),
        image_size in prop_oneof![
            4 => Just(None),
            1 => prop::sample::select(vec![Some("2"), Some("1.5"), Some("x"), Some("-3"), Some("1e9")]),
        ],
        explain in prop::bool::weighted(0.25),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        let written = write_tree(&root, &elements);
        if let Some(text) = &layout {
            fs::write(root.join("test-os/block-device-default.yaml"), text).unwrap();
        }
        let cwd = tempfile::tempdir().unwrap();
        let mut c = kiln(&[&root], shared_cache());
        c.current_dir(cwd.path()).args(["plan", "-n", "-t", "raw", "test-os"]);
        c.args(written.iter().filter(|n| !n.starts_with('-')));
        if let Some(s) = image_size {
            c.arg(format!("--image-size={s}"));
        }
        // --explain-cache also sources environment.d and writes the package lists.
        if explain {
            c.arg("--explain-cache");
        }
        let (code, _, err) = run(c);
        prop_assert!(code == 0 || code == 2, "exit {}: {}", code, err);
        prop_assert!(!err.contains("panicked"), "{}", err);
        prop_assert!(!err.contains("backtrace"), "{}", err);
        if code == 2 {
            let errors: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
            prop_assert!(!errors.is_empty(), "no error message: {}", err);
            let names_input = err.contains(&root.display().to_string())
                || err.contains("--image-size")
                || err.contains("not found")
                || err.contains("Usage:");
            prop_assert!(names_input, "the message names neither a file nor a flag: {}", err);
        }
        let left: Vec<PathBuf> = fs::read_dir(cwd.path()).unwrap().flatten().map(|e| e.path()).collect();
        prop_assert!(left.is_empty(), "kiln plan wrote {:?}", left);
    }
}
