//! Test helpers: element trees built in a temporary directory with a small fluent API, and a
//! tracing subscriber that captures log messages.
//!
//! ```ignore
//! let fx = Fixture::new();
//! fx.element("debian-minimal").provides(&["operating-system"]).exec("root.d/10-x", "#!/bin/sh\n");
//! let lib = fx.library(); // entry "main"
//! ```

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::library::Library;

/// A temporary directory holding one or more `ELEMENTS_PATH` entries.
pub(crate) struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().expect("create temp dir"),
        }
    }

    /// `rel` inside the fixture.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// An element in the default entry `main`.
    pub fn element(&self, name: &str) -> ElementBuilder {
        self.element_in("main", name)
    }

    /// An element in entry `entry` (created if needed).
    pub fn element_in(&self, entry: &str, name: &str) -> ElementBuilder {
        let path = self.path(entry).join(name);
        fs::create_dir_all(&path).expect("create element dir");
        ElementBuilder { path }
    }

    pub fn file(&self, rel: &str, content: &str) {
        write(&self.path(rel), content);
    }

    pub fn mkdir(&self, rel: &str) {
        fs::create_dir_all(self.path(rel)).expect("mkdir");
    }

    pub fn symlink(&self, rel: &str, target: &str) {
        let link = self.path(rel);
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).expect("mkdir");
        }
        std::os::unix::fs::symlink(target, link).expect("symlink");
    }

    /// The library of the single entry `main`.
    pub fn library(&self) -> Library {
        self.library_of(&["main"])
    }

    /// Discovers the library of the single entry `main`, returning the error if any.
    pub fn try_library(&self) -> Result<Library, crate::Error> {
        fs::create_dir_all(self.path("main")).expect("mkdir entry");
        Library::discover(&[self.path("main")])
    }

    /// The library of the given entries, in order.
    pub fn library_of(&self, entries: &[&str]) -> Library {
        let entries: Vec<PathBuf> = entries.iter().map(|e| self.path(e)).collect();
        for e in &entries {
            fs::create_dir_all(e).expect("mkdir entry");
        }
        Library::discover(&entries).expect("discover")
    }
}

/// Adds files to one element directory.
pub(crate) struct ElementBuilder {
    path: PathBuf,
}

impl ElementBuilder {
    pub fn path(&self) -> PathBuf {
        self.path.clone()
    }

    pub fn deps(self, names: &[&str]) -> Self {
        self.file("element-deps", &lines(names))
    }

    pub fn provides(self, names: &[&str]) -> Self {
        self.file("element-provides", &lines(names))
    }

    /// A file with mode 0644.
    pub fn file(self, rel: &str, content: &str) -> Self {
        let p = self.path.join(rel);
        write(&p, content);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).expect("chmod");
        self
    }

    /// A file with mode 0755.
    pub fn exec(self, rel: &str, content: &str) -> Self {
        let p = self.path.join(rel);
        write(&p, content);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
        self
    }

    pub fn mode(self, rel: &str, mode: u32) -> Self {
        fs::set_permissions(self.path.join(rel), fs::Permissions::from_mode(mode)).expect("chmod");
        self
    }

    pub fn mkdir(self, rel: &str) -> Self {
        fs::create_dir_all(self.path.join(rel)).expect("mkdir");
        self
    }

    pub fn symlink(self, rel: &str, target: &str) -> Self {
        let link = self.path.join(rel);
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).expect("mkdir");
        }
        std::os::unix::fs::symlink(target, link).expect("symlink");
        self
    }
}

fn lines(names: &[&str]) -> String {
    names.iter().fold(String::new(), |mut s, n| {
        let _ = writeln!(s, "{n}");
        s
    })
}

fn write(path: &Path, content: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(path, content).expect("write");
}

/// Runs `f` with a subscriber that records every event's message; returns them, one a line.
pub(crate) fn capture_logs(f: impl FnOnce()) -> String {
    let sink = Arc::new(Mutex::new(String::new()));
    let subscriber = Capture { sink: sink.clone() };
    tracing::subscriber::with_default(subscriber, f);
    let out = sink.lock().map(|s| s.clone()).unwrap_or_default();
    out
}

struct Capture {
    sink: Arc<Mutex<String>>,
}

struct MessageVisitor<'a>(&'a mut String);

impl tracing::field::Visit for MessageVisitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        }
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = String::new();
        event.record(&mut MessageVisitor(&mut line));
        if let Ok(mut sink) = self.sink.lock() {
            sink.push_str(&line);
            sink.push('\n');
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
