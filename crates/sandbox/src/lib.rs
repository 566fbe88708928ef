//! kiln-sandbox: the isolation a build runs in.
//!
//! A build gets its own mount namespace (so every mount it makes dies with it, even if kiln is
//! killed), chroot mounts of `/proc`, `/dev`, `/dev/pts` and a read-only `/sys` inside the target,
//! a way to find and kill every process whose root lies inside the build, and the binfmt_misc check
//! that a foreign-architecture chroot needs. This is the only crate allowed to use `unsafe`, and it
//! needs it only for the few syscalls that have no safe wrapper.
#![allow(unsafe_code)]

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

pub mod mountinfo;
pub mod path;
pub mod watchdog;

/// Errors of the sandbox layer; each names what it was working on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A syscall failed.
    #[error("{what} {path}: {source}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        source: nix::Error,
    },
    /// An I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The foreign architecture cannot run here.
    #[error("{0}")]
    Binfmt(String),
    /// Paths that could not be unmounted.
    #[error("could not unmount: {}", .0.join(", "))]
    Busy(Vec<String>),
    /// Resolving a path inside an image root met too many symlinks.
    #[error("{}: too many levels of symbolic links resolving {} inside it", root.display(), path.display())]
    SymlinkLoop {
        /// The image root.
        root: PathBuf,
        /// The path being resolved inside it.
        path: PathBuf,
    },
}

/// The sandbox layer's result.
pub type Result<T> = std::result::Result<T, Error>;

/// Moves this process into a private mount namespace. Call before any thread is started.
///
/// Every mount made afterwards (by kiln or any child) lives only in that namespace and is
/// released by the kernel when the last process in it exits, whatever the way it exits.
pub fn unshare_mounts() -> Result<()> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(|source| Error::Sys {
        what: "unshare mount namespace",
        path: PathBuf::from("/"),
        source,
    })?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|source| Error::Sys {
        what: "make mounts private",
        path: PathBuf::from("/"),
        source,
    })
}

fn sys<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> Error + 'a {
    move |source| Error::Sys {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Bind-mounts `src` on `dst`, read-only when asked (a bind is made read-only by a remount).
pub fn bind(src: &Path, dst: &Path, readonly: bool) -> Result<()> {
    tracing::debug!("bind {} -> {} ro={readonly}", src.display(), dst.display());
    mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(sys("bind-mount onto", dst))?;
    if readonly {
        mount(
            None::<&str>,
            dst,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(sys("remount read-only", dst))?;
    }
    Ok(())
}

/// Mounts a tmpfs of at most `size_bytes` (0: the kernel default) on `dst`, private to the user
/// (mode 0700: the build tree and image inside are nobody else's to read).
pub fn mount_tmpfs(dst: &Path, size_bytes: u64) -> Result<()> {
    let opts = if size_bytes > 0 {
        format!("size={size_bytes},mode=0700")
    } else {
        "mode=0700".to_string()
    };
    mount(
        Some("tmpfs"),
        dst,
        Some("tmpfs"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(sys("mount tmpfs on", dst))
}

/// One mount this process made, unmounted by [`Mount::unmount`] (which reports failure) or, as a
/// safety net, when dropped (which can only log it).
#[derive(Debug)]
#[must_use = "dropping a Mount unmounts it"]
pub struct Mount {
    path: PathBuf,
    mounted: bool,
}

impl Mount {
    /// Bind-mounts `src` on `dst` (read-only when asked) and returns the mount.
    pub fn bind(src: &Path, dst: &Path, readonly: bool) -> Result<Self> {
        bind(src, dst, readonly)?;
        Ok(Self::adopt(dst))
    }

    /// Takes charge of a mount already made on `path`.
    fn adopt(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            mounted: true,
        }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts it (retrying a busy mount, then lazily), reporting failure.
    pub fn unmount(mut self) -> Result<()> {
        self.mounted = false;
        umount(&self.path)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = umount(&self.path) {
                tracing::warn!("{e}");
            }
        }
    }
}

/// The mounts a chroot phase needs inside an image root, made by [`ChrootMounts::mount`] and
/// undone in reverse order by [`ChrootMounts::unmount`] (or, as a safety net, on drop).
#[derive(Debug)]
#[must_use = "dropping ChrootMounts unmounts them"]
pub struct ChrootMounts {
    root: PathBuf,
    mounts: Vec<Mount>,
}

impl ChrootMounts {
    /// Mounts, as DIB does, proc, a bind of the host's `/dev` (so grub-install sees loop
    /// devices), devpts and a read-only sysfs inside `root`. Each mount point is resolved inside
    /// the root ([`path::resolve_in_root`]), so an image whose `/dev` or `/proc` is a symlink
    /// cannot make kiln mount over a host directory. A failure undoes the mounts made so far.
    pub fn mount(root: &Path) -> Result<Self> {
        let mut me = Self {
            root: root.to_path_buf(),
            mounts: Vec::new(),
        };
        let proc_ = path::create_dir_all_in_root(root, Path::new("proc"))?;
        mount(
            Some("proc"),
            &proc_,
            Some("proc"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(sys("mount proc on", &proc_))?;
        me.mounts.push(Mount::adopt(&proc_));
        let dev = path::create_dir_all_in_root(root, Path::new("dev"))?;
        mount(
            Some(Path::new("/dev")),
            &dev,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(sys("bind /dev on", &dev))?;
        me.mounts.push(Mount::adopt(&dev));
        let pts = path::create_dir_all_in_root(root, Path::new("dev/pts"))?;
        mount(
            Some("devpts"),
            &pts,
            Some("devpts"),
            MsFlags::empty(),
            Some("newinstance,ptmxmode=0666,mode=620,gid=5"),
        )
        .map_err(sys("mount devpts on", &pts))?;
        me.mounts.push(Mount::adopt(&pts));
        let sys_ = path::create_dir_all_in_root(root, Path::new("sys"))?;
        mount(
            Some("sysfs"),
            &sys_,
            Some("sysfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(sys("mount sysfs on", &sys_))?;
        me.mounts.push(Mount::adopt(&sys_));
        Ok(me)
    }

    /// The image root they are mounted in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Their mount points, in the order they were mounted.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.mounts.iter().map(Mount::path)
    }

    /// Unmounts them, last first; reports every one that could not be unmounted.
    pub fn unmount(mut self) -> Result<()> {
        let mut failed = Vec::new();
        while let Some(m) = self.mounts.pop() {
            let p = m.path().display().to_string();
            if let Err(e) = m.unmount() {
                tracing::warn!("{e}");
                failed.push(p);
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(Error::Busy(failed))
        }
    }
}

impl Drop for ChrootMounts {
    fn drop(&mut self) {
        // Last first; each Mount's own Drop unmounts it and logs a failure.
        while let Some(m) = self.mounts.pop() {
            drop(m);
        }
    }
}

/// Every mount point at or below `dir`, deepest first, read from `/proc/self/mountinfo`.
///
/// The kernel lists canonical paths, so `dir` must be canonical too (the workspace canonicalises
/// its base directory once, when it is created); the comparison is by bytes.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    match fs::read("/proc/self/mountinfo") {
        Ok(info) => mountinfo::mounts_under_in(&info, dir),
        Err(e) => {
            tracing::warn!("/proc/self/mountinfo: {e}");
            Vec::new()
        }
    }
}

/// Unmounts one mount point, retrying a busy one and falling back to a lazy unmount.
pub fn umount(path: &Path) -> Result<()> {
    for attempt in 0..5 {
        match umount2(path, MntFlags::empty()) {
            // EINVAL / ENOENT: not (or no longer) a mount point, which is what we wanted.
            Ok(()) | Err(nix::Error::EINVAL | nix::Error::ENOENT) => return Ok(()),
            Err(nix::Error::EBUSY) if attempt < 4 => {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(_) => break,
        }
    }
    umount2(path, MntFlags::MNT_DETACH).map_err(sys("unmount", path))
}

/// Unmounts everything at or below `dir`, deepest first; reports what it could not unmount.
pub fn umount_all_under(dir: &Path) -> Result<()> {
    let mut failed = Vec::new();
    for m in mounts_under(dir) {
        if let Err(e) = umount(&m) {
            tracing::warn!("{e}");
            failed.push(m.display().to_string());
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Busy(failed))
    }
}

/// PIDs of processes whose root directory or working directory lies inside `dir`
/// (chroot processes of a build), excluding this process.
pub fn processes_rooted_under(dir: &Path) -> Vec<i32> {
    let me = std::process::id();
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid as u32 == me {
            continue;
        }
        let root = fs::read_link(e.path().join("root"));
        if let Ok(r) = root {
            if r.starts_with(dir) {
                pids.push(pid);
            }
        }
    }
    pids.sort_unstable();
    pids
}

/// Kills (SIGKILL) every process whose root is inside `dir`, repeatedly until none is left
/// or a few rounds passed. Returns the PIDs that survived.
pub fn kill_processes_rooted_under(dir: &Path) -> Vec<i32> {
    for _ in 0..20 {
        let pids = processes_rooted_under(dir);
        if pids.is_empty() {
            return pids;
        }
        for pid in &pids {
            tracing::info!("killing leftover chroot process {pid}");
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    processes_rooted_under(dir)
}

/// Sends `sig` to the process group `pgid` (a hook runner's group), ignoring a gone group.
pub fn signal_group(pgid: i32, sig: Signal) {
    let _ = killpg(Pid::from_raw(pgid), sig);
}

/// The machine's architecture in Debian's naming.
pub fn host_arch() -> String {
    if let Ok(out) = kiln_host::Cmd::new("dpkg")
        .arg("--print-architecture")
        .run()
    {
        let s = out.stdout_str().trim().to_string();
        if !s.is_empty() {
            return s;
        }
    }
    debian_arch(std::env::consts::ARCH).to_string()
}

/// Maps a kernel / Rust architecture name to Debian's (x86_64 → amd64, aarch64 → arm64, …).
pub fn debian_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" | "i686" | "i586" | "i386" => "i386",
        "powerpc64le" | "ppc64le" => "ppc64el",
        a if a.starts_with("armv") || a == "arm" => "armhf",
        a => a,
    }
}

/// The qemu-user name of a Debian architecture (arm64 → aarch64).
pub fn qemu_arch(debian: &str) -> &str {
    match debian {
        "amd64" | "x86_64" => "x86_64",
        "arm64" | "aarch64" => "aarch64",
        "armhf" | "armel" => "arm",
        "i386" => "i386",
        "ppc64el" | "ppc64le" => "ppc64le",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        other => other,
    }
}

/// Checks that binaries of `arch` can run inside a chroot of this machine: either it is the
/// host's own architecture (or i386 on amd64), or binfmt_misc has a qemu interpreter for it with
/// the F (fix binary) flag, which a chroot needs because the interpreter is not inside it.
pub fn check_foreign_arch(arch: &str) -> Result<()> {
    let host = host_arch();
    let target = debian_arch(arch);
    if target == host || (host == "amd64" && target == "i386") {
        return Ok(());
    }
    let q = qemu_arch(target);
    let entry = PathBuf::from(format!("/proc/sys/fs/binfmt_misc/qemu-{q}"));
    let hint = "install them with `apt-get install qemu-user-static binfmt-support` \
                (on Debian 12, qemu-user-static from bookworm-backports registers with flag F)";
    let text = fs::read_to_string(&entry).map_err(|_| {
        Error::Binfmt(format!(
            "building for {target} on this {host} machine needs a qemu-{q} interpreter registered \
             in binfmt_misc ({} is missing): {hint}",
            entry.display()
        ))
    })?;
    if !text.lines().any(|l| l.trim() == "enabled") {
        return Err(Error::Binfmt(format!(
            "binfmt_misc entry {} is disabled: enable it with `update-binfmts --enable qemu-{q}`",
            entry.display()
        )));
    }
    let flags = text
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .unwrap_or("")
        .trim()
        .to_string();
    if !flags.contains('F') {
        return Err(Error::Binfmt(format!(
            "binfmt_misc entry {} lacks the F flag, so the interpreter cannot be found inside a \
             chroot: {hint}",
            entry.display()
        )));
    }
    Ok(())
}

/// Whether a `PR_SET_PDEATHSIG`-style parent-death signal can be set; used by child setup.
pub fn set_parent_death_signal() {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a plain integer argument and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    }
}

/// Restores the default action of SIGPIPE (the Rust runtime ignores it, so a write to a closed
/// pipe fails and `println!` panics). For commands that only print and set nothing up
/// (`kiln plan | head`): the reader going away ends the process quietly, as it does for `ls`.
/// Never for a command that mounts or attaches anything, which must live to tear it down.
pub fn die_quietly_on_closed_pipe() {
    // SAFETY: installs the default disposition for one signal; no handler code and no memory
    // are involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Total physical memory in bytes (from /proc/meminfo), 0 when unknown.
pub fn mem_total_bytes() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names() {
        assert_eq!(debian_arch("x86_64"), "amd64");
        assert_eq!(debian_arch("aarch64"), "arm64");
        assert_eq!(debian_arch("armv7l"), "armhf");
        assert_eq!(qemu_arch("arm64"), "aarch64");
        assert_eq!(qemu_arch("ppc64el"), "ppc64le");
    }

    #[test]
    fn host_arch_checks_itself() {
        let h = host_arch();
        assert!(check_foreign_arch(&h).is_ok());
    }

    #[test]
    fn unknown_arch_names_the_packages() {
        let err = check_foreign_arch("nosucharch").unwrap_err().to_string();
        assert!(err.contains("qemu-user-static"), "{err}");
    }

    #[test]
    fn meminfo_reads() {
        assert!(mem_total_bytes() > 0);
    }
}
