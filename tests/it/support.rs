//! Test helpers: element trees built in temp dirs, running the kiln binary, snapshot filters.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// kiln's built-in elements, as the source tree holds them.
pub fn builtin_elements() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../elements")
}

/// Writes `text` to `path` as an executable file.
pub fn executable(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// `DIR/bin` with a stand-in for the `die` helper a hook finds on DIB's PATH (it prints
/// `ERROR: ...` and fails), for running a built-in hook by itself; returns the directory.
pub fn bin_with_die(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    executable(
        &bin.join("die"),
        "#!/bin/bash\necho \"ERROR: $*\" >&2\nexit 1\n",
    );
    bin
}

/// A tree of elements in a temp dir (one ELEMENTS_PATH entry).
pub struct Tree {
    pub dir: tempfile::TempDir,
}

/// One element being written.
pub struct El {
    pub path: PathBuf,
}

impl Tree {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts an element (creates its directory).
    pub fn el(&self, name: &str) -> El {
        let path = self.dir.path().join(name);
        fs::create_dir_all(&path).unwrap();
        El { path }
    }

    /// An operating-system element `test-os` providing operating-system, with env.d setting
    /// DISTRO_NAME and friends.
    pub fn os(&self) -> El {
        self.el("test-os")
            .provides(&["operating-system"])
            .env("10-test-os", "export DISTRO_NAME=debian\nexport DIB_RELEASE=${DIB_RELEASE:-bookworm}\nexport DIB_INIT_SYSTEM=systemd\n")
    }
}

impl El {
    pub fn deps(self, deps: &[&str]) -> Self {
        fs::write(self.path.join("element-deps"), deps.join("\n") + "\n").unwrap();
        self
    }

    pub fn provides(self, p: &[&str]) -> Self {
        fs::write(self.path.join("element-provides"), p.join("\n") + "\n").unwrap();
        self
    }

    /// An executable hook `phase.d/name` with `body` after a bash shebang.
    pub fn hook(self, phase: &str, name: &str, body: &str) -> Self {
        let d = self.path.join(format!("{phase}.d"));
        fs::create_dir_all(&d).unwrap();
        let f = d.join(name);
        fs::write(&f, format!("#!/bin/bash\nset -eu -o pipefail\n{body}\n")).unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o755)).unwrap();
        self
    }

    /// An environment.d file (not executable, as DIB wants).
    pub fn env(self, name: &str, body: &str) -> Self {
        let d = self.path.join("environment.d");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(name), body).unwrap();
        self
    }

    /// Any file, relative to the element.
    pub fn file(self, rel: &str, body: &str) -> Self {
        let f = self.path.join(rel);
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(f, body).unwrap();
        self
    }
}

/// The kiln binary under test.
pub fn kiln_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kiln"))
}

/// A kiln command with ELEMENTS_PATH set and a private cache for the built-in elements.
pub fn kiln(elements_path: &[&Path], cache: &Path) -> Command {
    let mut c = Command::new(kiln_bin());
    let ep: Vec<String> = elements_path
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    c.env("ELEMENTS_PATH", ep.join(":"))
        .env("DIB_IMAGE_CACHE", cache)
        .env_remove("ARCH")
        .env_remove("DIB_BLOCK_DEVICE_CONFIG")
        .env("ARCH", "amd64")
        .env("NO_COLOR", "1");
    c
}

/// Runs and returns (exit code, stdout, stderr).
pub fn run(mut c: Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = c.output().expect("run kiln");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// Replaces temp paths and the built-in element dir with stable names for snapshots.
pub fn filter(text: &str, tree: Option<&Path>, cache: &Path) -> String {
    let mut s = text.to_string();
    if let Some(t) = tree {
        s = s.replace(&t.display().to_string(), "[TREE]");
    }
    let re = regex::Regex::new(&format!(
        r"{}/builtin-elements/[0-9a-f]+",
        regex::escape(&cache.display().to_string())
    ))
    .unwrap();
    s = re.replace_all(&s, "[BUILTIN]").into_owned();
    s.replace(&cache.display().to_string(), "[CACHE]")
}

/// Asserts the shape of an input error: exit 2, one message, no panic, no backtrace.
pub fn assert_input_error(code: i32, stderr: &str, needles: &[&str]) {
    assert_eq!(code, 2, "expected exit 2, stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "panic:\n{stderr}");
    assert!(!stderr.contains("stack backtrace"), "backtrace:\n{stderr}");
    assert!(stderr.contains("error"), "no error message:\n{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "missing {n:?} in:\n{stderr}");
    }
}
