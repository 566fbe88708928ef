//! The watchdog: cleans up after a build that was killed outright (SIGKILL, OOM killer).
//!
//! Every other way a build ends runs kiln's own teardown. A killed process runs nothing, so
//! `kiln build` starts a small helper first, in the host's mount namespace and in a process group
//! of its own (a Ctrl-C at the terminal does not reach it), and tells it over a pipe what it sets
//! up: its mount namespace and its build directories. When kiln finishes it says `done` and the
//! helper exits. If the pipe closes without `done`, kiln died: the helper kills every process
//! still in kiln's mount namespace or rooted in a build directory (the namespace, and every mount
//! in it, then goes away with them), detaches the loop devices whose backing files lie in the
//! build directories, and removes those directories.

use std::fs;
use std::io::{BufRead, Write};
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
        tell(&format!("ns {}", ns.display()));
    }
}

/// Tells the watchdog a directory the build owns (removed, with what is in it, if kiln dies).
pub fn note_dir(dir: &Path) {
    tell(&format!("dir {}", dir.display()));
}

/// Tells the watchdog a loop device the build attached (detached if kiln dies).
pub fn note_loop(device: &str) {
    tell(&format!("loop {device}"));
}

/// Tells the watchdog the build ended through kiln's own teardown.
pub fn done() {
    tell("done");
    if let Ok(mut guard) = PIPE.lock() {
        *guard = None;
    }
}

/// The watchdog's main loop: reads what kiln tells it until the pipe closes, then cleans up
/// unless kiln said `done`. Returns the exit code.
pub fn serve() -> i32 {
    let mut ns = None;
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut loops: Vec<String> = Vec::new();
    let mut finished = false;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if let Some(v) = line.strip_prefix("ns ") {
            ns = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("dir ") {
            dirs.push(PathBuf::from(v));
        } else if let Some(v) = line.strip_prefix("loop ") {
            loops.push(v.to_string());
        } else if line == "done" {
            finished = true;
        }
    }
    if finished || (ns.is_none() && dirs.is_empty() && loops.is_empty()) {
        return 0;
    }
    let report = clean_up(ns.as_deref(), &dirs, &loops);
    if !report.is_empty() {
        eprintln!(
            "kiln watchdog: the build was killed; cleaned up: {}",
            report.join("; ")
        );
    }
    0
}

fn in_namespace(pid: &str, ns: &str) -> bool {
    fs::read_link(format!("/proc/{pid}/ns/mnt")).is_ok_and(|l| l.as_os_str() == ns)
}

fn leftover_processes(ns: Option<&str>, dirs: &[PathBuf]) -> Vec<i32> {
    let me = std::process::id();
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let pid: i32 = name.parse().ok()?;
            if pid as u32 == me {
                return None;
            }
            let rooted = fs::read_link(e.path().join("root"))
                .is_ok_and(|r| dirs.iter().any(|d| r.starts_with(d)));
            (rooted || ns.is_some_and(|ns| in_namespace(&name, ns))).then_some(pid)
        })
        .collect()
}

/// Loop devices (`/dev/loopN`) still attached that the build named, or whose backing file lies
/// in one of `dirs` (a path the kernel can show only while the build's mounts exist).
fn loops_backed_in(dirs: &[PathBuf], named: &[String]) -> Vec<String> {
    let Ok(rd) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let backing = fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            let backing = backing.trim().trim_end_matches(" (deleted)");
            let dev = format!("/dev/{name}");
            (named.contains(&dev) || dirs.iter().any(|d| Path::new(backing).starts_with(d)))
                .then_some(dev)
        })
        .collect();
    v.sort();
    v
}

/// Undoes what a killed build left; returns what it did.
pub fn clean_up(ns: Option<&str>, dirs: &[PathBuf], named_loops: &[String]) -> Vec<String> {
    let mut report = Vec::new();
    let mut killed = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let pids = leftover_processes(ns, dirs);
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
    if !killed.is_empty() {
        report.push(format!("killed {} processes", killed.len()));
    }
    // The namespace is gone with its last process; give the kernel a moment to release its
    // mounts before the loop devices under them are detached.
    for attempt in 0..20 {
        let loops = loops_backed_in(dirs, named_loops);
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
    for dir in dirs {
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
