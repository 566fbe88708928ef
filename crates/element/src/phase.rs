//! The build phases an element can hook into, in the order DIB runs them.
//!
//! The names and the in-chroot flag are part of the element contract: an element's
//! `<phase>.d/` directory holds that phase's hooks, and the hooks of the four in-chroot phases
//! run inside the target root. The derived `Ord` is the run order, so a `BTreeMap<Phase, _>`
//! iterates in the order phases execute.

use std::fmt;

/// One build phase. Variants are declared in run order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// `root.d`: host; creates the initial root tree in `$TARGET_ROOT`.
    Root,
    /// `extra-data.d`: host; copies data into the tree before the chroot phases.
    ExtraData,
    /// `pre-install.d`: chroot.
    PreInstall,
    /// `install.d`: chroot.
    Install,
    /// `post-install.d`: chroot.
    PostInstall,
    /// `post-root.d`: host, after the chroot phases.
    PostRoot,
    /// `block-device.d`: host; may print `IMAGE_BLOCK_DEVICE=` lines.
    BlockDevice,
    /// `pre-finalise.d`: host, with the image filesystem mounted.
    PreFinalise,
    /// `finalise.d`: chroot inside the real image filesystem.
    Finalise,
    /// `cleanup.d`: host, last.
    Cleanup,
}

impl Phase {
    /// Every phase, in run order.
    pub const ALL: [Phase; 10] = [
        Phase::Root,
        Phase::ExtraData,
        Phase::PreInstall,
        Phase::Install,
        Phase::PostInstall,
        Phase::PostRoot,
        Phase::BlockDevice,
        Phase::PreFinalise,
        Phase::Finalise,
        Phase::Cleanup,
    ];

    /// The phase name as DIB spells it, e.g. `"extra-data"`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Root => "root",
            Phase::ExtraData => "extra-data",
            Phase::PreInstall => "pre-install",
            Phase::Install => "install",
            Phase::PostInstall => "post-install",
            Phase::PostRoot => "post-root",
            Phase::BlockDevice => "block-device",
            Phase::PreFinalise => "pre-finalise",
            Phase::Finalise => "finalise",
            Phase::Cleanup => "cleanup",
        }
    }

    /// The hook directory name, e.g. `"root.d"`.
    pub fn dir_name(self) -> String {
        format!("{}.d", self.name())
    }

    /// Whether the phase's hooks run inside the target (pre-install, install, post-install,
    /// finalise).
    pub fn in_chroot(self) -> bool {
        matches!(
            self,
            Phase::PreInstall | Phase::Install | Phase::PostInstall | Phase::Finalise
        )
    }

    /// Parses a phase name (`"install"`); `None` for anything else.
    pub fn from_name(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.name() == s)
    }

    /// Parses a hook directory name (`"install.d"`); `None` for anything else.
    pub fn from_dir_name(s: &str) -> Option<Phase> {
        s.strip_suffix(".d").and_then(Phase::from_name)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_order() {
        let names: Vec<&str> = Phase::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(
            names,
            [
                "root",
                "extra-data",
                "pre-install",
                "install",
                "post-install",
                "post-root",
                "block-device",
                "pre-finalise",
                "finalise",
                "cleanup"
            ]
        );
        for p in Phase::ALL {
            assert_eq!(Phase::from_name(p.name()), Some(p));
            assert_eq!(Phase::from_dir_name(&p.dir_name()), Some(p));
        }
        assert_eq!(Phase::from_name("environment"), None);
        assert_eq!(Phase::from_dir_name("environment.d"), None);
        assert_eq!(Phase::Root.dir_name(), "root.d");
        let mut sorted = Phase::ALL;
        sorted.sort();
        assert_eq!(sorted, Phase::ALL);
    }

    #[test]
    fn chroot_phases() {
        let chroot: Vec<Phase> = Phase::ALL.into_iter().filter(|p| p.in_chroot()).collect();
        assert_eq!(
            chroot,
            [
                Phase::PreInstall,
                Phase::Install,
                Phase::PostInstall,
                Phase::Finalise
            ]
        );
    }
}
