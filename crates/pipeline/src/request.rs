//! What the user asked for, independent of which command line said it.
//!
//! `kiln build ...` and `disk-image-create ...` both produce a [`BuildRequest`]; everything after
//! this point is shared, so the two front ends cannot drift apart.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::settings;

/// A build request: elements, architecture, outputs, sizes and the `DIB_*` environment.
#[derive(Debug, Clone, Default)]
pub struct BuildRequest {
    /// Elements as given on the command line.
    pub elements: Vec<String>,
    /// Target architecture in Debian naming (`-a`); `None` means the host's.
    pub arch: Option<String>,
    /// Image name (`-o`), relative to the working directory.
    pub image_name: PathBuf,
    /// Output types (`-t`), in the order given.
    pub types: Vec<String>,
    /// `-n`: do not add `base`.
    pub skip_base: bool,
    /// `-p`: extra packages installed after install.d.
    pub packages: Vec<String>,
    /// `-x` count.
    pub debug_trace: u32,
    /// `-u`: do not compress qcow2.
    pub uncompressed: bool,
    /// `--checksum`.
    pub checksum: bool,
    /// `--no-tmpfs`.
    pub no_tmpfs: bool,
    /// `--min-tmpfs GB`.
    pub min_tmpfs: Option<u64>,
    /// `--offline`.
    pub offline: bool,
    /// `--lock FILE`: build from this lock (its side file is `FILE.meta`).
    pub lock: Option<PathBuf>,
    /// `--image-size GB` (floats allowed).
    pub image_size: Option<String>,
    /// `--image-extra-size MB`.
    pub image_extra_size: Option<String>,
    /// `--mkfs-journal-size MB`.
    pub journal_size: Option<String>,
    /// `--image-cache DIR`.
    pub image_cache: Option<PathBuf>,
    /// `--max-online-resize N`.
    pub max_online_resize: Option<String>,
    /// `--mkfs-options STR`.
    pub mkfs_options: Option<String>,
    /// `--qemu-img-options k=v,...`.
    pub qemu_img_options: Option<String>,
    /// `--root-label`.
    pub root_label: Option<String>,
    /// `--install-type`.
    pub install_type: Option<String>,
    /// `--docker-target REPO:TAG`: the name the container outputs (docker, oci) give the image.
    pub docker_target: Option<String>,
    /// `--logfile`.
    pub logfile: Option<PathBuf>,
    /// `--no-cache`: ignore and rewrite kiln's caches.
    pub no_cache: bool,
    /// `--seed`: the build seed the disk's identifiers derive from (`KILN_SEED` otherwise).
    pub seed: Option<String>,
    /// `-v` count.
    pub verbose: u8,
    /// The process environment the request was made in (host variables, `DIB_*`, `break`, …).
    pub env: BTreeMap<String, String>,
    /// The command-line arguments as typed (DIB_ARGS).
    pub args: Vec<String>,
}

impl BuildRequest {
    /// A variable of the request's environment, if set and non-empty.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The build seed the user set (`--seed`, else `KILN_SEED`), if any. Without one, a build
    /// seeds the disk's identifiers with its output key.
    pub fn seed(&self) -> Option<&str> {
        self.seed
            .as_deref()
            .filter(|s| !s.is_empty())
            .or_else(|| self.var(settings::KILN_SEED.name))
    }

    /// How qcow2 is compressed: `KILN_QCOW2_LEVEL` (zlib level 1-9, default 3) for kiln's own
    /// parallel writer, or `qemu-img` to leave it to `qemu-img convert -c` as DIB does.
    /// `None` means qemu-img.
    pub fn qcow2_level(&self) -> Result<Option<u32>, crate::Error> {
        match self.var(settings::KILN_QCOW2_LEVEL.name) {
            None => Ok(Some(kiln_output::qcow2::DEFAULT_LEVEL)),
            Some("qemu-img") => Ok(None),
            Some(v) => match v.parse::<u32>() {
                Ok(n) if (1..=9).contains(&n) => Ok(Some(n)),
                _ => Err(crate::Error::Usage(format!(
                    "{}={v}: use a zlib level from 1 (fastest) to 9 (smallest), or qemu-img",
                    settings::KILN_QCOW2_LEVEL.name
                ))),
            },
        }
    }

    /// `KILN_SQUASHFS_COMP`: the compressor of the `squashfs` output, xz by default. Another
    /// name is a usage error naming the ones there are.
    pub fn squashfs_comp(&self) -> Result<kiln_output::squashfs::Compressor, crate::Error> {
        use kiln_output::squashfs::Compressor;
        match self
            .var(settings::KILN_SQUASHFS_COMP.name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            None => Ok(Compressor::default()),
            Some(v) => Compressor::parse(v).ok_or_else(|| {
                let names: Vec<&str> = Compressor::ALL.iter().map(|c| c.name()).collect();
                crate::Error::Usage(format!(
                    "{}={v:?}: use one of {}",
                    settings::KILN_SQUASHFS_COMP.name,
                    names.join(", ")
                ))
            }),
        }
    }

    /// `KILN_IMAGE_EXPIRY`: days from the image's creation to its expiry (LXC's `expiry`,
    /// Incus's `expiry_date`), 30 by default. Not a whole number is a usage error.
    pub fn image_expiry_days(&self) -> Result<u64, crate::Error> {
        match self
            .var(settings::KILN_IMAGE_EXPIRY.name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            None => Ok(settings::KILN_IMAGE_EXPIRY
                .default_value()
                .parse()
                .unwrap_or(30)),
            Some(v) => v.parse().map_err(|_| {
                crate::Error::Usage(format!(
                    "{}={v:?} is not a number of days: give a whole number, e.g. 30",
                    settings::KILN_IMAGE_EXPIRY.name
                ))
            }),
        }
    }

    /// `KILN_IMAGE_VARIANT`: the image's variant (LXC's and Incus's `variant`), `default` by
    /// default: letters, digits, `.`, `_` and `-` only (it becomes part of image-server paths).
    pub fn image_variant(&self) -> Result<String, crate::Error> {
        let v = self
            .var(settings::KILN_IMAGE_VARIANT.name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .unwrap_or(settings::KILN_IMAGE_VARIANT.default_value());
        let ok = !v.starts_with('.')
            && v.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c));
        if ok {
            Ok(v.to_string())
        } else {
            Err(crate::Error::Usage(format!(
                "{}={v:?}: use letters, digits, '.', '_' and '-' only (not starting with '.')",
                settings::KILN_IMAGE_VARIANT.name
            )))
        }
    }

    /// `DIB_INITRAMFS_MODULES`: the initramfs's module set, `most` (initramfs-tools' default,
    /// DIB's) unless set; `vm` keeps only what virtual machines boot from (the dpkg element's
    /// `post-install.d/97-dpkg-initramfs-modules`). Any other value is a usage error.
    pub fn initramfs_modules(&self) -> Result<&str, crate::Error> {
        let v = self
            .var(settings::DIB_INITRAMFS_MODULES.name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .unwrap_or(settings::DIB_INITRAMFS_MODULES.default_value());
        match v {
            "most" | "vm" => Ok(v),
            _ => Err(crate::Error::Usage(format!(
                "{}={v:?}: use most (initramfs-tools' default) or vm (only what virtual machines boot from)",
                settings::DIB_INITRAMFS_MODULES.name
            ))),
        }
    }

    /// `SOURCE_DATE_EPOCH`, when set (and not empty): the build is then reproducible
    /// (`docs/reproducible.md`). A value that is not a whole number of seconds is a usage
    /// error.
    pub fn source_date_epoch(&self) -> Result<Option<u64>, crate::Error> {
        match self
            .var(settings::SOURCE_DATE_EPOCH.name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                crate::Error::Usage(format!(
                    "{}={v:?} is not a time: give whole seconds since 1970 (for example `git log -1 --format=%ct`)",
                    settings::SOURCE_DATE_EPOCH.name
                ))
            }),
        }
    }

    /// Checks what the request hands to commands before anything is read or run: every `-p`
    /// package name (Debian policy syntax: a name starting with `-` would reach apt as an
    /// option), the architecture (one lower-case word), `--max-online-resize` (a number), the
    /// install type (written into a shell file), `DIB_BLOCK_SIZE` (a sector size, never
    /// ignored), `DISTRO_NAME` and `DIB_RELEASE`
    /// ([`check_path_words`]) and the disk sizes ([`DiskSizes::from_env`] on the request's
    /// flags and environment).
    pub fn check_inputs(&self) -> Result<(), crate::Error> {
        if self.seed.as_deref() == Some("") {
            return Err(crate::Error::Usage(
                "--seed is empty: give any text (the same seed gives the same disk identifiers), or leave --seed out to seed from the build's inputs".into(),
            ));
        }
        self.source_date_epoch()?;
        for name in self.package_list() {
            if let Some(reason) = kiln_element::names::package_name_problem(&name) {
                return Err(crate::Error::Usage(format!(
                    "-p {name}: {reason}; give package names separated by commas"
                )));
            }
        }
        // The architecture names files (`block-device-<arch>.yaml`) and reaches debootstrap and
        // qemu-user: one lower-case word.
        if let Some(arch) = self
            .arch
            .as_deref()
            .or_else(|| self.var(settings::ARCH.name))
        {
            let word = !arch.is_empty()
                && arch
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !word {
                return Err(crate::Error::Usage(format!(
                    "architecture {arch:?} (-a or {}) is not an architecture name: use a Debian one such as amd64, arm64, armhf, i386, ppc64el, s390x",
                    settings::ARCH.name
                )));
            }
        }
        if let Some(v) = self
            .max_online_resize
            .as_deref()
            .filter(|v| !v.is_empty())
            .or_else(|| self.var(settings::MAX_ONLINE_RESIZE.name))
        {
            if v.trim().parse::<u64>().is_err() {
                return Err(crate::Error::Usage(format!(
                    "{v:?} (--max-online-resize or {}) is not a number of blocks: give a whole number",
                    settings::MAX_ONLINE_RESIZE.name
                )));
            }
        }
        let install_type = self
            .install_type
            .as_deref()
            .filter(|v| !v.is_empty())
            .or_else(|| self.var(settings::DIB_DEFAULT_INSTALLTYPE.name));
        if let Some(v) = install_type {
            if !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
            {
                return Err(crate::Error::Usage(format!(
                    "install type {v:?} (--install-type or {}) is not a word: use source or package",
                    settings::DIB_DEFAULT_INSTALLTYPE.name
                )));
            }
        }
        if let Some(t) = self.docker_target.as_deref() {
            kiln_output::container::ImageRef::parse(t)
                .map_err(|e| crate::Error::Usage(format!("--docker-target: {e}")))?;
        }
        if let Some(v) = self.var(settings::DIB_BLOCK_SIZE.name) {
            if !matches!(v.trim(), "512" | "1024" | "2048" | "4096") {
                return Err(crate::Error::Usage(format!(
                    "{}={v:?}: a loop device's sector size is 512, 1024, 2048 or 4096",
                    settings::DIB_BLOCK_SIZE.name
                )));
            }
        }
        check_path_words(&|name| self.var(name).map(String::from))?;
        DiskSizes::from_env(&|name| {
            let flag = match name {
                n if n == settings::DIB_IMAGE_SIZE.name => self.image_size.as_deref(),
                n if n == settings::DIB_IMAGE_EXTRA_SIZE.name => self.image_extra_size.as_deref(),
                n if n == settings::DIB_JOURNAL_SIZE.name => self.journal_size.as_deref(),
                _ => None,
            };
            flag.filter(|v| !v.is_empty())
                .or_else(|| self.var(name))
                .map(String::from)
        })?;
        Ok(())
    }

    /// The output types, defaulting to qcow2 as DIB does.
    pub fn output_types(&self) -> Vec<String> {
        let mut t: Vec<String> = self
            .types
            .iter()
            .flat_map(|t| t.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect();
        if t.is_empty() {
            t.push(kiln_output::OutputType::default_type().name().into());
        }
        // `-t tgz` implies the tar it is made from (DIB), but kiln keeps `tar` only when asked.
        t
    }

    /// The `-p` packages, comma lists split.
    pub fn package_list(&self) -> Vec<String> {
        self.packages
            .iter()
            .flat_map(|p| p.split(','))
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect()
    }

    /// The image name with a single type's suffix stripped (`-o x.qcow2 -t qcow2` → `x`).
    pub fn image_name(&self) -> PathBuf {
        let name = if self.image_name.as_os_str().is_empty() {
            PathBuf::from("image")
        } else {
            self.image_name.clone()
        };
        let types = self.output_types();
        if types.len() == 1 {
            let s = name.to_string_lossy();
            if let Some(stripped) = s.strip_suffix(&format!(".{}", types[0])) {
                return PathBuf::from(stripped);
            }
        }
        name
    }
}

/// The largest image kiln accepts: 1 PiB, far above any disk image and far below where the
/// arithmetic on sizes in bytes could overflow.
pub const MAX_IMAGE_BYTES: u64 = 1 << 50;

/// The disk sizes a build asks for, parsed and range-checked.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DiskSizes {
    /// `--image-size` / `DIB_IMAGE_SIZE` in GB (GiB, as DIB computes it), decimals allowed.
    pub image_size_gb: Option<f64>,
    /// `--image-extra-size` / `DIB_IMAGE_EXTRA_SIZE` in MB.
    pub extra_size_mb: Option<u64>,
    /// `--mkfs-journal-size` / `DIB_JOURNAL_SIZE` in MB (default 64).
    pub journal_size_mb: u64,
}

impl DiskSizes {
    /// Reads and checks the three sizes through `get` (a variable's non-empty value). A value
    /// that is not a number, is not positive or is larger than [`MAX_IMAGE_BYTES`] is
    /// [`crate::Error::Usage`] naming the variable and its flag, never ignored.
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<DiskSizes, crate::Error> {
        let limit_gb = MAX_IMAGE_BYTES >> 30;
        let limit_mib = MAX_IMAGE_BYTES >> 20;
        let image_size_gb = match get(settings::DIB_IMAGE_SIZE.name).as_deref() {
            None => None,
            Some(v) => match v.trim().parse::<f64>() {
                Ok(gb) if gb.is_finite() && gb > 0.0 && gb <= limit_gb as f64 => Some(gb),
                _ => {
                    return Err(crate::Error::Usage(format!(
                        "image size {v:?} (--image-size or {}) is not a size in GB: give a number above 0 and at most {limit_gb}, decimals allowed (e.g. 2.5)",
                        settings::DIB_IMAGE_SIZE.name
                    )))
                }
            },
        };
        let mb = |setting: &settings::Setting, flag: &str| -> Result<Option<u64>, crate::Error> {
            match get(setting.name).as_deref() {
                None => Ok(None),
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(n) if n <= limit_mib => Ok(Some(n)),
                    _ => Err(crate::Error::Usage(format!(
                        "{v:?} ({flag} or {}) is not a size in MB: give a whole number from 0 to {limit_mib}",
                        setting.name
                    ))),
                },
            }
        };
        let extra_size_mb = mb(&settings::DIB_IMAGE_EXTRA_SIZE, "--image-extra-size")?;
        let journal_size_mb = mb(&settings::DIB_JOURNAL_SIZE, "--mkfs-journal-size")?.unwrap_or(
            settings::DIB_JOURNAL_SIZE
                .default_value()
                .parse()
                .unwrap_or(64),
        );
        Ok(DiskSizes {
            image_size_gb,
            extra_size_mb,
            journal_size_mb,
        })
    }
}

/// Checks `DISTRO_NAME` and `DIB_RELEASE` (as `get` returns them: the request's environment,
/// or the environment after environment.d): hooks make host paths of them
/// (`apt/$DISTRO_NAME-$DIB_RELEASE-$ARCH` in the cache) and put them in URLs and apt sources
/// lines, so each must be one word of letters, digits and `. _ + ~ -`, not starting with `.`
/// or `-`.
pub fn check_path_words(get: &dyn Fn(&str) -> Option<String>) -> Result<(), crate::Error> {
    for setting in [settings::DISTRO_NAME, settings::DIB_RELEASE] {
        let Some(v) = get(setting.name).filter(|v| !v.is_empty()) else {
            continue;
        };
        let word = !v.starts_with(['.', '-'])
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '~' | '-'));
        if !word {
            return Err(crate::Error::Usage(format!(
                "{}={v:?} is not a name: hooks make paths and apt sources lines of it, so use letters, digits and . _ + ~ - (e.g. bookworm); check the environment and the elements' environment.d files",
                setting.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(vars: &[(&str, &str)]) -> Result<DiskSizes, crate::Error> {
        let env: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        DiskSizes::from_env(&|name| env.get(name).cloned())
    }

    #[test]
    fn disk_sizes_are_parsed_and_bounded() {
        let s = sizes(&[("DIB_IMAGE_SIZE", "1.5"), ("DIB_IMAGE_EXTRA_SIZE", "100")]).unwrap();
        assert_eq!(s.image_size_gb, Some(1.5));
        assert_eq!(s.extra_size_mb, Some(100));
        assert_eq!(s.journal_size_mb, 64);
        for (var, bad) in [
            ("DIB_IMAGE_SIZE", "abc"),
            ("DIB_IMAGE_SIZE", "0"),
            ("DIB_IMAGE_SIZE", "-1"),
            ("DIB_IMAGE_SIZE", "NaN"),
            ("DIB_IMAGE_SIZE", "inf"),
            ("DIB_IMAGE_SIZE", "1048577"),
            ("DIB_IMAGE_EXTRA_SIZE", "-5"),
            ("DIB_IMAGE_EXTRA_SIZE", "1.5"),
            ("DIB_JOURNAL_SIZE", "18446744073709551615"),
        ] {
            let err = sizes(&[(var, bad)]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{var}={bad}");
            assert!(err.to_string().contains(var), "{err}");
        }
    }

    #[test]
    fn request_inputs_that_reach_commands_are_checked() {
        let ok = BuildRequest {
            packages: vec!["vim,curl".into()],
            arch: Some("arm64".into()),
            install_type: Some("package".into()),
            ..BuildRequest::default()
        };
        ok.check_inputs().unwrap();
        let cases = [
            BuildRequest {
                packages: vec!["vim,-oDebug=1".into()],
                ..BuildRequest::default()
            },
            BuildRequest {
                arch: Some("../x".into()),
                ..BuildRequest::default()
            },
            BuildRequest {
                install_type: Some("\"$(id)\"".into()),
                ..BuildRequest::default()
            },
            BuildRequest {
                max_online_resize: Some("1 -O x".into()),
                ..BuildRequest::default()
            },
            BuildRequest {
                image_size: Some("big".into()),
                ..BuildRequest::default()
            },
            BuildRequest {
                env: [("DIB_RELEASE".to_string(), "a b".to_string())].into(),
                ..BuildRequest::default()
            },
            BuildRequest {
                env: [("DIB_BLOCK_SIZE".to_string(), "4k".to_string())].into(),
                ..BuildRequest::default()
            },
        ];
        for req in cases {
            let err = req.check_inputs().unwrap_err();
            assert_eq!(err.exit_code(), 2, "{req:?}: {err}");
        }
    }
}
