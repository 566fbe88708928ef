//! A locked build's steps (`--lock`): the lock's `.deb` files fetched into the store (or, with
//! `--offline`, found there), the build's local repository laid out from them, and that
//! repository bound read-only into the chroot around every chroot phase, so apt there reads
//! only the lock. What the repository holds and why is [`crate::locked`].

use std::fs;
use std::path::{Path, PathBuf};

use super::Ctx;
use crate::host::Mounted;
use crate::locked::{self, Store};
use crate::{settings, Error};

/// The repository's bind in the chroot during one phase: its mount point and the mount.
pub(super) type BoundRepo = Option<(PathBuf, Box<dyn Mounted>)>;

impl Ctx<'_> {
    /// Step `lock-fetch`: every file of the lock in the store, then the local repository in
    /// the build directory ([`locked::REPO_DIR`]).
    pub(super) fn lock_repo(
        &mut self,
        input: &locked::Input,
        evaluated: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), Error> {
        self.step("lock-fetch", |ctx| {
            let offline = ctx
                .env
                .get(settings::DIB_OFFLINE.name)
                .is_some_and(|v| !v.is_empty());
            let suite = settings::DIB_RELEASE
                .get(evaluated)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    Error::Usage(
                        "a locked build needs DIB_RELEASE (set by the operating-system element) to name its local repository's suite".into(),
                    )
                })?
                .to_string();
            let store = Store::new(&ctx.plan.cache_root);
            let uris = locked::uris(&input.lock, &input.path)?;
            // The cache's shared lock: a trim never runs while the store is filled.
            let guard = crate::cache::SharedLock::acquire(&ctx.plan.cache_root)?;
            let fetched = store.fill(&input.debs, &uris, offline)?;
            drop(guard);
            ctx.console.say(&format!(
                "lock: {} packages of {} ({} fetched into {})",
                input.debs.len(),
                input.path.display(),
                fetched,
                store.dir().display()
            ));
            let repo = ctx.ws.build_dir.join(locked::REPO_DIR);
            locked::make_repo(
                &input.lock,
                &input.debs,
                &store,
                &repo,
                &suite,
                &ctx.plan.arch,
            )?;
            ctx.lock_repo = Some(repo);
            ctx.locked = Some(input.clone());
            Ok(())
        })
    }

    /// In a locked build, binds the local repository read-only at [`locked::CHROOT_PATH`] in
    /// the chroot `root`; returns the mount point and the mount, to undo after the phase.
    pub(super) fn bind_lock_repo(&mut self, root: &Path) -> Result<BoundRepo, Error> {
        let Some(repo) = self.lock_repo.clone() else {
            return Ok(None);
        };
        let rel = locked::CHROOT_PATH.trim_start_matches('/');
        let at = kiln_sandbox::path::create_dir_all_in_root(root, Path::new(rel))?;
        let m = self.ws.host.bind(&repo, &at, true)?;
        Ok(Some((at, m)))
    }

    /// Undoes [`Self::bind_lock_repo`].
    pub(super) fn unbind_lock_repo(&mut self, bound: BoundRepo) {
        if let Some((at, m)) = bound {
            if let Err(e) = m.unmount() {
                self.console.say(&format!("warning: {e}"));
            }
            let _ = fs::remove_dir(&at);
        }
    }

    /// A failed phase of a locked build whose apt could not find a package: the lock lacks it.
    pub(super) fn explain_locked_failure(&self, err: Error) -> Error {
        let (Some(_), Some(path)) = (&self.lock_repo, &self.plan.request.lock) else {
            return err;
        };
        if let Error::HookFailed { tail, .. } = &err {
            let missing = locked::not_in_lock_in_output(tail);
            if !missing.is_empty() {
                return locked::Error::NotInLock {
                    lock: path.clone(),
                    packages: missing,
                }
                .into();
            }
        }
        err
    }
}
