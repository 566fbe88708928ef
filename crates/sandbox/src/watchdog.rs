//! The watchdog: cleans up after a build that was killed outright (SIGKILL, OOM killer).
//!
//! Every other way a build ends runs kiln's own teardown. A killed process runs nothing, so
//! `kiln build` starts a small helper first, in the host's mount namespace and in a process group
//! of its own (a Ctrl-C at the terminal does not reach it), and tells it over a pipe what it sets
//! up: its mount namespace and its build directories. When kiln finishes it says `done` and the
//! helper exits. If the pipe closes without `done`, kiln died: the helper kills every process
//! still in kiln's mount namespace (the namespace, and every mount in it, then goes away with
//! them), detaches the loop devices kiln attached, and removes the build's directories.
//!
//! It touches only its own build, never by path prefix: other builds run beside it, and their
//! directories may share a prefix (`/tmp/kiln_pipeline.ab` and `/tmp/kiln_pipeline.abc`).
//!
//! - **Processes** are those in the build's mount namespace, compared by the namespace's inode
//!   (not its name as text). The helper opens the namespace when kiln reports it and holds it
//!   until the processes are gone, so its inode cannot be reused by another build meanwhile.
//!   Only when kiln died before reporting a namespace does it fall back to processes whose root
//!   is one of the recorded directories or below it (compared by whole path components).
//! - **Loop devices** are only those kiln reported, each with the device and inode of its
//!   backing file as kiln saw them when it attached it; a device that is now backed by anything
//!   else (kiln detached it and another build attached the same number) is left alone.

use std::fs;
use std::io::{BufRead, Write};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Stdio};

use kiln_host::{Cmd, Stdin};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

static PIPE: Mutex<Option<ChildStdin>> = Mutex::new(None);

/// Starts the watchdog (`EXE ARGS...` must end up in [`serve`]). Call before the build enters
/// its own mount namespace. Failing to start it is not fatal: the build runs unguarded.
pub fn start(exe: &Path, args: &[&str]) {
    let child = Cmd::new(exe)
        .args(args)
        .stdin(Stdin::Pipe)
        .process_group()
        .spawn(Stdio::null(), Stdio::inherit());
    match child {
        Ok(mut c) => {
            if let Ok(mut p) = PIPE.lock() {
                *p = c.child_mut().stdin.take();
            }
            c.detach();
        }
        Err(e) => tracing::warn!("could not start the build watchdog: {e}"),
    }
}

fn tell(line: &str) {
    if let Ok(mut guard) = PIPE.lock() {
        if let Some(p) = guard.as_mut() {
            if writeln!(p, "{line}").and_then(|()| p.flush()).is_err() {
                *guard = None;
            }
        }
    }
}

/// Tells the watchdog this process's mount namespace (call after unsharing it).
pub fn note_namespace() {
    if let Ok(ns) = fs::read_link("/proc/self/ns/mnt") {
        tell(&format!("ns {} {}", std::process::id(), ns.display()));
    }
}

/// Tells the watchdog a directory the build owns (removed, with what is in it, if kiln dies).
pub fn note_dir(dir: &Path) {
    tell(&format!("dir {}", dir.display()));
}

/// Tells the watchdog a loop device the build attached (detached if kiln dies), with the device
/// and inode of its backing file as this process sees it, so the watchdog can tell it from a
/// device of the same name that another build attached later.
pub fn note_loop(device: &str) {
    let name = device.trim_start_matches("/dev/");
    let backing = fs::read_to_string(format!("/sys/block/{name}/loop/backing_file"))
        .ok()
        .and_then(|b| fs::metadata(b.trim_end().trim_end_matches(" (deleted)")).ok());
    if let Some(m) = backing {
        tell(&format!(
            "loop {device} {}:{} {}",
            nix::sys::stat::major(m.dev()),
            nix::sys::stat::minor(m.dev()),
            m.ino()
        ));
    } else {
        tracing::warn!(
            "could not read the backing file of {device}: the watchdog will not detach it"
        );
    }
}

/// Tells the watchdog the build ended through kiln's own teardown.
pub fn done() {
    tell("done");
    if let Ok(mut guard) = PIPE.lock() {
        *guard = None;
    }
}

/// A loop device kiln attached: its name and its backing file's `major:minor` and inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopRecord {
    /// `/dev/loopN`.
    pub device: String,
    /// The backing file's filesystem device, `major:minor`.
    pub backing_dev: String,
    /// The backing file's inode.
    pub backing_ino: u64,
}

/// Everything kiln told the watchdog.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// kiln's pid and the name of its mount namespace (`mnt:[4026532…]`).
    pub ns: Option<(u32, String)>,
    /// The build's directories.
    pub dirs: Vec<PathBuf>,
    /// The loop devices it attached.
    pub loops: Vec<LoopRecord>,
    /// Whether kiln said `done`.
    pub finished: bool,
}

impl Record {
    /// Reads one line kiln sent; lines it does not understand are ignored.
    pub fn read_line(&mut self, line: &str) {
        if let Some(v) = line.strip_prefix("ns ") {
            if let Some((pid, name)) = v.split_once(' ') {
                if let Ok(pid) = pid.parse() {
                    self.ns = Some((pid, name.to_string()));
                }
            }
        } else if let Some(v) = line.strip_prefix("dir ") {
            self.dirs.push(PathBuf::from(v));
        } else if let Some(v) = line.strip_prefix("loop ") {
            let f: Vec<&str> = v.split(' ').collect();
            if let [device, dev, ino] = f[..] {
                if let Ok(backing_ino) = ino.parse() {
                    self.loops.push(LoopRecord {
                        device: device.to_string(),
                        backing_dev: dev.to_string(),
                        backing_ino,
                    });
                }
            }
        } else if line == "done" {
            self.finished = true;
        }
    }

    fn is_empty(&self) -> bool {
        self.ns.is_none() && self.dirs.is_empty() && self.loops.is_empty()
    }
}

/// The watchdog's main loop: reads what kiln tells it until the pipe closes, then cleans up
/// unless kiln said `done`. Returns the exit code.
pub fn serve() -> i32 {
    let mut rec = Record::default();
    // The namespace, held open from the moment kiln names it, so its identity stays unique.
    let mut held: Option<fs::File> = None;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        rec.read_line(&line);
        if line.starts_with("ns ") {
            held = rec
                .ns
                .as_ref()
                .and_then(|(pid, name)| open_namespace(*pid, name));
        }
    }
    if rec.finished || rec.is_empty() {
        return 0;
    }
    let report = clean_up(&rec, held);
    if !report.is_empty() {
        eprintln!(
            "kiln watchdog: the build was killed; cleaned up: {}",
            report.join("; ")
        );
    }
    0
}

/// Opens kiln's mount namespace, checking it is still the one kiln named.
fn open_namespace(pid: u32, name: &str) -> Option<fs::File> {
    let link = format!("/proc/{pid}/ns/mnt");
    let f = fs::File::open(&link).ok()?;
    (fs::read_link(&link).ok()?.as_os_str() == name).then_some(f)
}

/// `(device, inode)` of a mount namespace, the identity the kernel compares.
type NsId = (u64, u64);

/// One process as the watchdog sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessView {
    /// Its pid.
    pub pid: i32,
    /// The identity of its mount namespace.
    pub ns: Option<NsId>,
    /// Its root directory, as `/proc/PID/root` reads.
    pub root: Option<PathBuf>,
}

/// The processes of the build: those in its namespace `ns`, or, only when the namespace is
/// unknown, those whose root is one of `dirs` or below it (whole components: a sibling that
/// shares a prefix is not below).
pub fn build_processes(procs: &[ProcessView], ns: Option<NsId>, dirs: &[PathBuf]) -> Vec<i32> {
    procs
        .iter()
        .filter(|p| match ns {
            Some(id) => p.ns == Some(id),
            None => p
                .root
                .as_ref()
                .is_some_and(|r| dirs.iter().any(|d| r.starts_with(d))),
        })
        .map(|p| p.pid)
        .collect()
}

fn all_processes() -> Vec<ProcessView> {
    let me = std::process::id();
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            if pid.unsigned_abs() == me {
                return None;
            }
            Some(ProcessView {
                pid,
                ns: fs::metadata(e.path().join("ns/mnt"))
                    .ok()
                    .map(|m| (m.dev(), m.ino())),
                root: fs::read_link(e.path().join("root")).ok(),
            })
        })
        .collect()
}

/// One attached loop device as `losetup` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedLoop {
    /// `/dev/loopN`.
    pub device: String,
    /// Its backing file's `major:minor`.
    pub backing_dev: String,
    /// Its backing file's inode.
    pub backing_ino: u64,
}

/// The recorded loop devices still attached to the same backing file.
pub fn build_loops(attached: &[AttachedLoop], recorded: &[LoopRecord]) -> Vec<String> {
    let mut v: Vec<String> = attached
        .iter()
        .filter(|a| {
            recorded.iter().any(|r| {
                r.device == a.device
                    && r.backing_dev == a.backing_dev
                    && r.backing_ino == a.backing_ino
            })
        })
        .map(|a| a.device.clone())
        .collect();
    v.sort();
    v
}

/// `losetup -J -l -O NAME,BACK-MAJ:MIN,BACK-INO`, read into [`AttachedLoop`]s.
fn attached_loops() -> Vec<AttachedLoop> {
    let Ok(out) = Cmd::new("losetup")
        .args(["-J", "-l", "-O", "NAME,BACK-MAJ:MIN,BACK-INO"])
        .run()
    else {
        return Vec::new();
    };
    parse_losetup(&out.stdout)
}

/// Parses `losetup -J -l -O NAME,BACK-MAJ:MIN,BACK-INO` (numbers may come as numbers or
/// strings, depending on the version, and `back-maj:min` padded with spaces; nothing at all
/// when no device is attached).
pub fn parse_losetup(json: &[u8]) -> Vec<AttachedLoop> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) else {
        return Vec::new();
    };
    // losetup pads some columns with spaces, even in JSON.
    let text = |x: &serde_json::Value| match x {
        serde_json::Value::String(s) => s.trim().to_string(),
        other => other.to_string(),
    };
    v["loopdevices"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| {
                    Some(AttachedLoop {
                        device: d["name"].as_str()?.to_string(),
                        backing_dev: text(&d["back-maj:min"]),
                        backing_ino: text(&d["back-ino"]).parse().ok()?,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Undoes what a killed build left; returns what it did. `held` keeps the build's namespace
/// open while its processes are found; it is closed before the loop devices are detached (an
/// open namespace keeps its mounts, and they keep the devices busy).
pub fn clean_up(rec: &Record, held: Option<fs::File>) -> Vec<String> {
    let mut report = Vec::new();
    let mut killed = std::collections::BTreeSet::new();
    let ns: Option<NsId> = held
        .as_ref()
        .and_then(|f| f.metadata().ok())
        .map(|m| (m.dev(), m.ino()));
    if rec.ns.is_some() && ns.is_none() {
        // kiln named a namespace that is already gone: nothing can be in it, and no path may
        // stand in for it.
        report.push("the build's namespace was already gone".to_string());
    }
    let by_root = if rec.ns.is_none() { &rec.dirs[..] } else { &[] };
    for _ in 0..50 {
        let pids = if ns.is_some() || rec.ns.is_none() {
            build_processes(&all_processes(), ns, by_root)
        } else {
            Vec::new()
        };
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                killed.insert(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(held);
    if !killed.is_empty() {
        report.push(format!("killed {} processes", killed.len()));
    }
    // The namespace is gone with its last process; give the kernel a moment to release its
    // mounts before the loop devices under them are detached.
    for attempt in 0..20 {
        let loops = build_loops(&attached_loops(), &rec.loops);
        if loops.is_empty() {
            break;
        }
        for dev in &loops {
            let _ = Cmd::new("partx").args(["-d", dev]).run();
            let ok = Cmd::new("losetup").args(["-d", dev]).run().is_ok();
            if ok {
                report.push(format!("detached {dev}"));
            }
        }
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    for dir in &rec.dirs {
        for m in crate::mounts_under(dir).into_iter().rev() {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        if dir.exists() && crate::mounts_under(dir).is_empty() {
            let ok = Cmd::new("rm")
                .args(["-rf", "--one-file-system"])
                .arg(dir)
                .run()
                .is_ok();
            if ok {
                report.push(format!("removed {}", dir.display()));
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: i32, ns: NsId, root: &str) -> ProcessView {
        ProcessView {
            pid,
            ns: Some(ns),
            root: Some(PathBuf::from(root)),
        }
    }

    #[test]
    fn reads_what_kiln_tells() {
        let mut r = Record::default();
        for l in [
            "ns 4242 mnt:[4026532001]",
            "dir /tmp/kiln_pipeline.ab",
            "loop /dev/loop3 0:52 17",
            "loop /dev/loop4",
            "nonsense",
        ] {
            r.read_line(l);
        }
        assert_eq!(r.ns, Some((4242, "mnt:[4026532001]".to_string())));
        assert_eq!(r.dirs, vec![PathBuf::from("/tmp/kiln_pipeline.ab")]);
        assert_eq!(
            r.loops,
            vec![LoopRecord {
                device: "/dev/loop3".into(),
                backing_dev: "0:52".into(),
                backing_ino: 17
            }]
        );
        assert!(!r.finished);
        r.read_line("done");
        assert!(r.finished);
    }

    #[test]
    fn processes_by_namespace_never_by_path() {
        let mine = (4, 4_026_532_001);
        let other = (4, 4_026_532_002);
        let procs = [
            proc(10, mine, "/tmp/kiln_pipeline.ab/mnt"),
            proc(11, mine, "/"),
            // Another build whose directory shares the prefix, in its own namespace.
            proc(20, other, "/tmp/kiln_pipeline.abc/mnt"),
            // Even rooted in our directory: another namespace is another build's.
            proc(21, other, "/tmp/kiln_pipeline.ab/mnt"),
        ];
        let dirs = [PathBuf::from("/tmp/kiln_pipeline.ab")];
        assert_eq!(build_processes(&procs, Some(mine), &dirs), vec![10, 11]);
    }

    #[test]
    fn without_a_namespace_only_whole_components_count() {
        let ns = (4, 1);
        let procs = [
            proc(10, ns, "/tmp/kiln_pipeline.ab/mnt"),
            proc(11, ns, "/tmp/kiln_pipeline.ab"),
            proc(20, ns, "/tmp/kiln_pipeline.abc/mnt"),
            proc(21, ns, "/tmp/kiln_pipeline.a"),
        ];
        let dirs = [PathBuf::from("/tmp/kiln_pipeline.ab")];
        assert_eq!(build_processes(&procs, None, &dirs), vec![10, 11]);
    }

    #[test]
    fn loops_only_when_name_and_backing_file_match() {
        let rec = [LoopRecord {
            device: "/dev/loop3".into(),
            backing_dev: "0:52".into(),
            backing_ino: 17,
        }];
        let attached = parse_losetup(
            br#"{"loopdevices": [
                {"name": "/dev/loop3", "back-maj:min": "       0:52 ", "back-ino": 17},
                {"name": "/dev/loop4", "back-maj:min": "0:52", "back-ino": "17"},
                {"name": "/dev/loop5", "back-maj:min": "0:53", "back-ino": 99}
            ]}"#,
        );
        assert_eq!(attached.len(), 3);
        assert_eq!(build_loops(&attached, &rec), vec!["/dev/loop3"]);
        // Detached by kiln, then attached by another build to its own image: left alone.
        let reused = [AttachedLoop {
            device: "/dev/loop3".into(),
            backing_dev: "0:61".into(),
            backing_ino: 17,
        }];
        assert!(build_loops(&reused, &rec).is_empty());
        assert!(parse_losetup(b"").is_empty());
    }
}
