//! The build plan: everything decided before anything runs.
//!
//! `kiln plan` prints it and `kiln build` executes it. Computing it reads element files and
//! nothing else: no root, no chroot, no network, so it is cheap and testable.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use kiln_element::{self as element, ElementSet, HookTree, Library, Phase, Reason};

use crate::report::{PhaseHooks, PlanElement, PlanHook, PlanOutput, PlanOverride, PlanReport};
use crate::request::BuildRequest;
use crate::{settings, Error};

/// Where the block-device configuration came from (reference 4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockDeviceSource {
    /// `DIB_BLOCK_DEVICE_CONFIG=file://PATH`.
    File(PathBuf),
    /// `DIB_BLOCK_DEVICE_CONFIG` holding the YAML itself.
    Inline,
    /// An element's `block-device-*.yaml`.
    Element {
        /// The element.
        element: String,
        /// The file.
        path: PathBuf,
    },
    /// kiln's built-in fallback: one filesystem on the whole image, no partition table.
    Fallback,
}

impl BlockDeviceSource {
    /// A short human description, also used to name the config in error messages.
    pub fn describe(&self) -> String {
        match self {
            Self::File(p) => p.display().to_string(),
            Self::Inline => settings::DIB_BLOCK_DEVICE_CONFIG.name.into(),
            Self::Element { path, .. } => path.display().to_string(),
            Self::Fallback => "the built-in fallback layout".into(),
        }
    }
}

/// A resolved, merged, ready-to-run build.
#[derive(Debug)]
pub struct BuildPlan {
    /// The request it was made from.
    pub request: BuildRequest,
    /// Target architecture (Debian naming).
    pub arch: String,
    /// The image name (suffix stripped).
    pub image_name: PathBuf,
    /// The complete ELEMENTS_PATH (user entries, then the built-in library).
    pub elements_path: Vec<PathBuf>,
    /// The element library.
    pub library: Library,
    /// The resolved elements.
    pub set: ElementSet,
    /// The merged hooks.
    pub hooks: HookTree,
    /// The output types.
    pub outputs: Vec<kiln_output::OutputType>,
    /// The block-device configuration text and where it came from.
    pub block_device: (BlockDeviceSource, String),
    /// kiln's cache root (`DIB_IMAGE_CACHE`).
    pub cache_root: PathBuf,
    /// The ELEMENTS_PATH exported to hooks (see [`exported_elements_path`]).
    pub exported_elements_path: String,
    /// What the plan warns about, one line each (the container outputs of a build with a VM
    /// disk or the `vm` element); `kiln plan` prints them and `kiln build` logs each once.
    pub notes: Vec<String>,
}

/// kiln's cache root: `--image-cache`, else `DIB_IMAGE_CACHE`, else `$XDG_CACHE_HOME/kiln`,
/// else `~/.cache/kiln`.
pub fn cache_root(req: &BuildRequest) -> PathBuf {
    if let Some(p) = &req.image_cache {
        return p.clone();
    }
    if let Some(p) = req.var(settings::DIB_IMAGE_CACHE.name) {
        return PathBuf::from(p);
    }
    if let Some(p) = req.var(settings::XDG_CACHE_HOME.name) {
        return Path::new(p).join("kiln");
    }
    let home = settings::HOME.get_or_default(&req.env);
    Path::new(home).join(".cache/kiln")
}

/// [`cache_root`], made private (0700) if kiln creates it, and refused (exit 2) if it belongs to
/// another user or others can write it: hooks run from it (see [`kiln_cache::secure_root`]).
pub fn checked_cache_root(req: &BuildRequest) -> Result<PathBuf, Error> {
    let root = cache_root(req);
    kiln_cache::secure_root(&root)?;
    Ok(root)
}

/// The user's ELEMENTS_PATH entries followed by the built-in library.
pub fn elements_path(req: &BuildRequest, builtin: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = req
        .var(settings::ELEMENTS_PATH.name)
        .unwrap_or("")
        .split(':')
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect();
    v.push(builtin.to_path_buf());
    v
}

/// The request, with the lock's `Locked:` time as `SOURCE_DATE_EPOCH` when it is a locked
/// build (`--lock`) and the user set none: hooks, the outputs and the SBOM all read it from here.
fn with_lock_epoch(req: &BuildRequest) -> Result<BuildRequest, Error> {
    let mut r = req.clone();
    let Some(path) = &req.lock else {
        return Ok(r);
    };
    let meta_path = crate::lock::Lock::meta_path(path);
    for p in [path, &meta_path] {
        if !p.is_file() {
            return Err(Error::Usage(format!(
                "{}: no such lock file; make the lock with `kiln lock` (it writes FILE and FILE.meta)",
                p.display()
            )));
        }
    }
    if req.var(settings::SOURCE_DATE_EPOCH.name).is_none() {
        let text = std::fs::read_to_string(&meta_path).map_err(crate::io(&meta_path))?;
        let meta = crate::lock::LockMeta::parse(&text, &meta_path)?;
        if let Some(epoch) = crate::locked::locked_epoch(&meta.locked) {
            r.env
                .insert(settings::SOURCE_DATE_EPOCH.name.into(), epoch.to_string());
        }
    }
    Ok(r)
}

impl BuildPlan {
    /// Resolves the request into a plan. Reads element files only.
    pub fn new(req: &BuildRequest) -> Result<Self, Error> {
        let arch = req
            .arch
            .clone()
            .or_else(|| req.var(settings::ARCH.name).map(String::from))
            .unwrap_or_else(kiln_sandbox::host_arch);
        // The output types first: a type kiln cannot make is refused before anything is read.
        let outputs = req
            .output_types()
            .iter()
            .map(|t| kiln_output::OutputType::parse(t))
            .collect::<Result<Vec<_>, _>>()?;
        req.check_inputs()?;
        let cache_root = checked_cache_root(req)?;
        let builtin = element::builtin::extract(&cache_root)?;
        let elements_path = elements_path(req, &builtin);
        let library = Library::discover(&elements_path)?;
        let containers = ContainerRule::new(&req.elements, &outputs);
        let mut elements = req.elements.clone();
        if containers.add {
            elements.push(CONTAINER_ELEMENT.into());
        }
        let mut set = element::resolve(
            &library,
            &element::ResolveRequest {
                elements,
                arch: arch.clone(),
                skip_base: req.skip_base,
            },
        )?;
        containers.apply(&mut set)?;
        let hooks = element::merge_hooks(&set)?;
        req.qcow2_level()?;
        req.squashfs_comp()?;
        req.image_expiry_days()?;
        req.image_variant()?;
        req.initramfs_modules()?;
        validate_packages(req, &library, &set, &hooks, &arch)?;
        let block_device = choose_block_device(req, &set, &arch)?;
        let exported_elements_path =
            exported_elements_path(&elements_path, &builtin, &library, &cache_root)?;
        Ok(Self {
            request: with_lock_epoch(req)?,
            arch,
            image_name: req.image_name(),
            elements_path,
            library,
            set,
            hooks,
            outputs,
            block_device,
            cache_root,
            exported_elements_path,
            notes: containers.notes,
        })
    }

    /// Whether the build makes a disk image: when a requested output is one, and also when
    /// the build has a disk layout (a `block-device-*` element's, or `DIB_BLOCK_DEVICE_CONFIG`)
    /// but asks only for tree outputs. DIB always makes the disk, and the finalise hooks of such
    /// builds (the bootloader's `grub-mkconfig`) need it: `-t tar debian-minimal vm` is a tar
    /// of the finished VM tree, made from the mounted image.
    pub fn needs_disk(&self) -> bool {
        self.outputs
            .iter()
            .any(|t| kiln_output::OutputType::needs_disk(*t))
            || !matches!(self.block_device.0, BlockDeviceSource::Fallback)
    }

    /// The options of the output producers, from the request: compression (`-u`),
    /// `--qemu-img-options` (else `QEMU_IMG_OPTIONS`), `KILN_QCOW2_LEVEL`, `KILN_SQUASHFS_COMP`,
    /// `SOURCE_DATE_EPOCH`, the architecture and `--docker-target` (the container outputs'
    /// config and name).
    pub fn output_options(&self) -> Result<kiln_output::Options, Error> {
        let req = &self.request;
        Ok(kiln_output::Options {
            compress: !req.uncompressed,
            qemu_img_options: req
                .qemu_img_options
                .clone()
                .or_else(|| req.var(settings::QEMU_IMG_OPTIONS.name).map(String::from)),
            qcow2_level: req.qcow2_level()?,
            // Set by the pipeline once it knows the output cache (outputs.rs).
            qcow2_reuse: None,
            tar_file: None,
            squashfs_comp: req.squashfs_comp()?,
            source_date_epoch: req.source_date_epoch()?,
            arch: Some(self.arch.clone()),
            docker_target: req.docker_target.clone(),
            // Computed from the final tree, once it exists (the pipeline's tree outputs).
            image: None,
        })
    }

    /// The plan as a typed report; `kiln plan --json` prints it.
    pub fn report(&self) -> PlanReport {
        let hook = |h: &element::Hook| PlanHook {
            name: h.name.clone(),
            element: h.element.clone(),
        };
        PlanReport {
            arch: self.arch.clone(),
            image_name: self.image_name.clone(),
            elements_path: self.elements_path.clone(),
            elements: self
                .set
                .elements
                .iter()
                .map(|e| PlanElement {
                    name: e.name.clone(),
                    path: e.path.clone(),
                    reason: reason_text(&e.reason),
                })
                .collect(),
            overrides: self
                .library
                .overrides()
                .iter()
                .map(|o| PlanOverride {
                    name: o.name.clone(),
                    winner: o.winner.clone(),
                    shadowed: o.shadowed.clone(),
                })
                .collect(),
            phases: PhaseHooks(
                Phase::ALL
                    .iter()
                    .map(|p| {
                        let hooks = self
                            .hooks
                            .phases
                            .get(p)
                            .map(|v| v.iter().map(hook).collect())
                            .unwrap_or_default();
                        (p.name().to_string(), hooks)
                    })
                    .collect(),
            ),
            environment: self.hooks.environment.iter().map(hook).collect(),
            block_device: self.needs_disk().then(|| self.block_device.1.clone()),
            block_device_source: self.block_device.0.describe(),
            outputs: self
                .outputs
                .iter()
                .map(|t| PlanOutput {
                    kind: t.name().to_string(),
                    path: kiln_output::output_path(&self.image_name, *t),
                })
                .collect(),
            notes: self.notes.clone(),
        }
    }

    /// The plan as text (`kiln plan`).
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "image: {} (arch {})",
            self.image_name.display(),
            self.arch
        );
        for n in &self.notes {
            let _ = writeln!(s, "warning: {n}");
        }
        let _ = writeln!(s, "\nelements ({}):", self.set.elements.len());
        let width = self
            .set
            .elements
            .iter()
            .map(|e| e.name.len())
            .max()
            .unwrap_or(0);
        for e in &self.set.elements {
            let _ = writeln!(
                s,
                "  {:width$}  {}  [{}]",
                e.name,
                e.path.display(),
                reason_text(&e.reason)
            );
        }
        for o in self.library.overrides() {
            let _ = writeln!(
                s,
                "  note: {} from {} overrides {}",
                o.name,
                o.winner.display(),
                o.shadowed.display()
            );
        }
        let _ = writeln!(s, "\nenvironment.d:");
        for h in &self.hooks.environment {
            let _ = writeln!(s, "  {}  ({})", h.name, h.element);
        }
        for p in Phase::ALL {
            let hooks = self.hooks.phases.get(&p).map_or(&[][..], Vec::as_slice);
            let place = if p.in_chroot() { "chroot" } else { "host" };
            let _ = writeln!(s, "\n{}.d ({place}):", p.name());
            if hooks.is_empty() {
                let _ = writeln!(s, "  (none)");
            }
            for h in hooks {
                let _ = writeln!(s, "  {}  ({})", h.name, h.element);
            }
        }
        let _ = writeln!(s, "\nblock device: {}", self.block_device.0.describe());
        if self.needs_disk() {
            for l in self.block_device.1.lines() {
                let _ = writeln!(s, "  | {l}");
            }
        } else {
            let _ = writeln!(s, "  (not used: no disk output)");
        }
        let _ = writeln!(s, "\noutputs:");
        for t in &self.outputs {
            let _ = writeln!(
                s,
                "  {}",
                kiln_output::output_path(&self.image_name, *t).display()
            );
        }
        s
    }
}

/// The ELEMENTS_PATH hooks see: the user's entries, then kiln's built-in library. When an
/// earlier entry overrides built-in elements, the built-in entry is replaced by a view holding
/// only the elements nothing overrides (symlinks, content-addressed in the cache), because
/// DIB's package-installs squash reads every copy of an element on the path and would
/// otherwise merge the shadowed built-in copies in.
fn exported_elements_path(
    entries: &[PathBuf],
    builtin: &Path,
    library: &Library,
    cache_root: &Path,
) -> Result<String, Error> {
    let user: Vec<String> = entries[..entries.len().saturating_sub(1)]
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let mut builtin_names: Vec<String> = std::fs::read_dir(builtin)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    builtin_names.sort();
    let kept: Vec<&String> = builtin_names
        .iter()
        .filter(|n| library.get(n).is_some_and(|e| e.entry == builtin))
        .collect();
    let last = if kept.len() == builtin_names.len() {
        builtin.to_path_buf()
    } else {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(builtin.as_os_str().as_encoded_bytes());
        for k in &kept {
            h.update(k.as_bytes());
            h.update(b"\0");
        }
        let view = cache_root
            .join("element-views")
            .join(&hex::encode(h.finalize())[..16]);
        if !view.is_dir() {
            let tmp = cache_root
                .join("element-views")
                .join(format!(".tmp-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp).map_err(|source| Error::Io {
                path: tmp.clone(),
                source,
            })?;
            for k in &kept {
                std::os::unix::fs::symlink(builtin.join(k), tmp.join(k)).map_err(|source| {
                    Error::Io {
                        path: tmp.join(k),
                        source,
                    }
                })?;
            }
            if std::fs::rename(&tmp, &view).is_err() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
        }
        view
    };
    let mut all = user;
    all.push(last.display().to_string());
    Ok(all.join(":"))
}

/// The element that makes a container's root filesystem (no kernel, initramfs, boot loader or
/// growroot), added when every output is a container output.
pub const CONTAINER_ELEMENT: &str = "container";

/// Whether an element only makes sense on a disk that boots, and so not with `container`.
fn boots_a_disk(name: &str) -> bool {
    matches!(name, "vm" | "bootloader" | "growroot") || name.starts_with("block-device-")
}

/// The container rule of a request: kiln adds the `container` element when every output is a
/// container output ([`kiln_output::Format::container`]) and the user named neither `container`
/// nor `vm`; with `vm` it warns instead, and a build making a disk and a container image from
/// one tree says that the container image carries the disk's kernel and boot loader.
struct ContainerRule {
    /// Whether `container` is added to the requested elements.
    add: bool,
    /// The `-t` names of the container outputs, comma separated.
    outputs: String,
    /// The warnings of the plan.
    notes: Vec<String>,
}

impl ContainerRule {
    fn new(elements: &[String], outputs: &[kiln_output::OutputType]) -> Self {
        let names = |container: bool| {
            outputs
                .iter()
                .filter(|t| t.is_container() == container)
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join(",")
        };
        let (containers, others) = (names(true), names(false));
        let asked = |e: &str| elements.iter().any(|x| x == e);
        let mut rule = Self {
            add: false,
            outputs: containers.clone(),
            notes: Vec::new(),
        };
        if containers.is_empty() || asked(CONTAINER_ELEMENT) {
            return rule;
        }
        let disks: Vec<&str> = outputs
            .iter()
            .filter(|t| t.needs_disk())
            .map(|t| t.name())
            .collect();
        if others.is_empty() && asked("vm") {
            rule.notes.push(format!(
                "-t {containers} with element vm: the container image will carry the VM's kernel and boot loader; leave out vm (kiln then adds the container element) for a lean one"
            ));
        } else if others.is_empty() {
            rule.add = true;
        } else if !disks.is_empty() {
            rule.notes.push(format!(
                "-t {containers} is made from the same tree as the disk output{s} ({disks}) and carries its kernel and boot loader; for a lean container image build it separately with only container outputs (-t {containers}), which adds the container element",
                s = if disks.len() == 1 { "" } else { "s" },
                disks = disks.join(",")
            ));
        }
        rule
    }

    /// Marks an added `container` as auto-added, and refuses (exit 2) a set holding
    /// `container` and an element of a bootable disk, naming both.
    fn apply(&self, set: &mut ElementSet) -> Result<(), Error> {
        if self.add {
            for e in &mut set.elements {
                if e.name == CONTAINER_ELEMENT {
                    e.reason = Reason::AutoAdded(format!(
                        "container is added because every output (-t {}) is a container image",
                        self.outputs
                    ));
                }
            }
        }
        let Some(container) = set.get(CONTAINER_ELEMENT) else {
            return Ok(());
        };
        // The one the user named, if any, else the first one pulled in.
        let mut disk: Vec<_> = set
            .elements
            .iter()
            .filter(|e| boots_a_disk(&e.name))
            .collect();
        disk.sort_by_key(|e| e.reason != Reason::Requested);
        let Some(disk) = disk.first() else {
            return Ok(());
        };
        Err(Error::Usage(format!(
            "elements {CONTAINER_ELEMENT} ({}) and {} ({}) cannot be combined: a container image has no kernel, boot loader or disk layout; build the VM disk and the container image separately",
            reason_text(&container.reason),
            disk.name,
            reason_text(&disk.reason)
        )))
    }
}

/// The human text of why an element is in the build.
pub fn reason_text(r: &Reason) -> String {
    match r {
        Reason::Requested => "asked for".into(),
        Reason::DependencyOf(x) => format!("dependency of {x}"),
        Reason::AutoAdded(why) => format!("auto-added: {why}"),
    }
}

/// Parses every package-installs and pkg-map file of the set and squashes them once, so that
/// their errors (syntax, `arch` with `not-arch`, a `when` on a variable nothing sets) surface at
/// plan time. A variable that environment.d might set is given a placeholder here; the build
/// evaluates the real value after sourcing environment.d.
fn validate_packages(
    req: &BuildRequest,
    library: &Library,
    set: &ElementSet,
    hooks: &HookTree,
    arch: &str,
) -> Result<(), Error> {
    let env_text: String = hooks
        .environment
        .iter()
        .filter_map(|h| std::fs::read_to_string(&h.path).ok())
        .collect::<Vec<_>>()
        .join("\n");
    let mut inputs = Vec::new();
    for e in &set.elements {
        if let Some(el) = library.get(&e.name) {
            if let Some(pi) = el.package_installs()? {
                inputs.push((e.name.clone(), pi));
            }
            el.pkg_map()?;
        }
    }
    // The engine sets its computed variables (DIB_ROOT_FSTYPE, DIB_ROOT_LABEL, …) before the
    // build evaluates the files: they count as set, as environment.d's do.
    let computed = |k: &str| {
        crate::settings::find(k)
            .is_some_and(|s| matches!(s.default, crate::settings::DefaultValue::Computed(_)))
    };
    let lookup = |k: &str| {
        req.env
            .get(k)
            .cloned()
            .or_else(|| (env_text.contains(k) || computed(k)).then(String::new))
    };
    let ctx = element::package_installs::SquashContext { arch, env: &lookup };
    element::package_installs::squash(&inputs, &ctx)?;
    // The legacy plain lists reach install-packages too.
    for phase in element::package_installs::RUNNER_PHASES {
        let Some(dir) = hooks.dirs.get(phase) else {
            continue;
        };
        for entry in &dir.entries {
            if entry.name.starts_with("package-installs-") && entry.path.is_file() {
                let text = std::fs::read_to_string(&entry.path).map_err(|source| Error::Io {
                    path: entry.path.clone(),
                    source,
                })?;
                element::package_installs::check_legacy_list(&entry.path, &text)?;
            }
        }
    }
    Ok(())
}

fn choose_block_device(
    req: &BuildRequest,
    set: &ElementSet,
    arch: &str,
) -> Result<(BlockDeviceSource, String), Error> {
    if let Some(v) = req.var(settings::DIB_BLOCK_DEVICE_CONFIG.name) {
        if let Some(path) = v.strip_prefix("file://") {
            // Only a regular file is read: a FIFO or a device would hang or read the host.
            let bad = |what: String| {
                Error::Usage(format!(
                    "{}=file://{path}: {what}; point it at a block-device YAML file",
                    settings::DIB_BLOCK_DEVICE_CONFIG.name
                ))
            };
            match std::fs::metadata(path) {
                Ok(m) if m.is_file() => {}
                Ok(_) => return Err(bad("not a regular file".into())),
                Err(e) => return Err(bad(e.to_string())),
            }
            let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
            return Ok((BlockDeviceSource::File(PathBuf::from(path)), text));
        }
        return Ok((BlockDeviceSource::Inline, v.to_string()));
    }
    if let Some((element, path)) = set.block_device_config(arch) {
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        return Ok((BlockDeviceSource::Element { element, path }, text));
    }
    Ok((
        BlockDeviceSource::Fallback,
        kiln_blockdev::fallback_config().to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(types: &[&str], env: &[(&str, &str)], cache: &Path) -> Result<BuildPlan, Error> {
        plan_of(&["debian-minimal"], types, env, cache)
    }

    fn plan_of(
        elements: &[&str],
        types: &[&str],
        env: &[(&str, &str)],
        cache: &Path,
    ) -> Result<BuildPlan, Error> {
        BuildPlan::new(&BuildRequest {
            elements: elements.iter().map(|e| (*e).to_string()).collect(),
            arch: Some("amd64".into()),
            image_name: PathBuf::from("out/img"),
            types: types.iter().map(|t| (*t).to_string()).collect(),
            image_cache: Some(cache.to_path_buf()),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
            ..BuildRequest::default()
        })
    }

    #[test]
    fn a_disk_layout_makes_the_disk_even_for_tree_outputs() {
        let cache = tempfile::tempdir().unwrap();
        let p = plan(&["tar"], &[], cache.path()).unwrap();
        assert!(!p.needs_disk(), "no layout, tree outputs: no disk");
        let p = plan_of(&["debian-minimal", "vm"], &["tar"], &[], cache.path()).unwrap();
        assert!(p.needs_disk(), "vm's layout: the disk is made, as DIB does");
        let p = plan(
            &["tar"],
            &[(
                settings::DIB_BLOCK_DEVICE_CONFIG.name,
                "- local_loop:\n    name: image0\n",
            )],
            cache.path(),
        )
        .unwrap();
        assert!(p.needs_disk(), "the user's layout");
    }

    #[test]
    fn outputs_and_their_options_come_from_the_table_and_the_request() {
        let cache = tempfile::tempdir().unwrap();
        let p = plan(
            &["squash,tar.gz", "raw"],
            &[
                (settings::SOURCE_DATE_EPOCH.name, "1234"),
                (settings::QEMU_IMG_OPTIONS.name, "compat=0.10"),
            ],
            cache.path(),
        )
        .unwrap();
        assert!(p.needs_disk());
        let json = serde_json::to_value(p.report()).unwrap();
        let outs: Vec<(&str, &str)> = json["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| (o["type"].as_str().unwrap(), o["path"].as_str().unwrap()))
            .collect();
        assert_eq!(
            outs,
            [
                ("squashfs", "out/img.squash"),
                ("tgz", "out/img.tgz"),
                ("raw", "out/img.raw")
            ]
        );
        let o = p.output_options().unwrap();
        assert!(o.compress);
        assert_eq!(o.source_date_epoch, Some(1234));
        assert_eq!(o.qemu_img_options.as_deref(), Some("compat=0.10"));
        // The container outputs' config and name.
        assert_eq!(o.arch.as_deref(), Some("amd64"));
        assert_eq!(o.docker_target, None);
        // Without -t: the table's default, qcow2.
        let p = plan(&[], &[], cache.path()).unwrap();
        assert_eq!(p.outputs, [kiln_output::OutputType::default_type()]);
        assert_eq!(p.outputs[0].name(), "qcow2");
        // Refused before the elements are read, with exit code 2.
        let e = plan(&["aci"], &[], cache.path()).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("'aci' is not supported"), "{e}");
    }

    fn names(p: &BuildPlan) -> Vec<&str> {
        p.set.elements.iter().map(|e| e.name.as_str()).collect()
    }

    #[test]
    fn container_element_follows_the_outputs() {
        let cache = tempfile::tempdir().unwrap();
        // Every output a container image: added, and said why.
        for types in [&["docker"][..], &["oci,oci-archive"], &["docker", "oci"]] {
            let p = plan(types, &[], cache.path()).unwrap();
            let c = p.set.get(CONTAINER_ELEMENT).expect("container added");
            assert!(
                matches!(&c.reason, Reason::AutoAdded(why) if why.contains("container image")),
                "{:?}",
                c.reason
            );
            assert!(p.notes.is_empty(), "{:?}", p.notes);
            assert!(p.to_text().contains("auto-added: container is added"));
        }
        // A tree output that is not a container image, or no container output: not added, and
        // nothing to say without a disk.
        for types in [&["tar,docker"][..], &["tar"], &["squashfs", "oci"]] {
            let p = plan(types, &[], cache.path()).unwrap();
            assert!(!names(&p).contains(&CONTAINER_ELEMENT), "{types:?}");
            assert!(p.notes.is_empty(), "{types:?}: {:?}", p.notes);
        }
        // Asked for by name: kept as asked, with any output.
        let p = plan_of(
            &["debian-minimal", "container"],
            &["tar"],
            &[],
            cache.path(),
        )
        .unwrap();
        assert_eq!(
            p.set.get(CONTAINER_ELEMENT).unwrap().reason,
            Reason::Requested
        );
        let p = plan_of(
            &["debian-minimal", "container"],
            &["docker"],
            &[],
            cache.path(),
        )
        .unwrap();
        assert_eq!(
            p.set.get(CONTAINER_ELEMENT).unwrap().reason,
            Reason::Requested
        );
    }

    #[test]
    fn a_vm_disk_and_a_container_image_from_one_tree_say_so() {
        let cache = tempfile::tempdir().unwrap();
        let p = plan_of(
            &["debian-minimal", "vm"],
            &["qcow2,docker"],
            &[],
            cache.path(),
        )
        .unwrap();
        assert!(!names(&p).contains(&CONTAINER_ELEMENT));
        assert_eq!(
            p.notes,
            ["-t docker is made from the same tree as the disk output (qcow2) and carries its kernel and boot loader; for a lean container image build it separately with only container outputs (-t docker), which adds the container element"]
        );
        assert!(p.to_text().contains(&format!("warning: {}", p.notes[0])));
        let json = serde_json::to_value(p.report()).unwrap();
        assert_eq!(json["notes"][0], p.notes[0].as_str());
        // Only container outputs but vm asked for: not added, one warning.
        let p = plan_of(&["debian-minimal", "vm"], &["oci"], &[], cache.path()).unwrap();
        assert!(!names(&p).contains(&CONTAINER_ELEMENT));
        assert_eq!(p.notes.len(), 1, "{:?}", p.notes);
        assert!(
            p.notes[0].starts_with("-t oci with element vm: the container image will carry the VM's kernel and boot loader"),
            "{}",
            p.notes[0]
        );
        // No notes, and no notes key in the JSON, without container outputs.
        let p = plan_of(&["debian-minimal", "vm"], &["qcow2"], &[], cache.path()).unwrap();
        assert!(p.notes.is_empty());
        assert!(serde_json::to_value(p.report())
            .unwrap()
            .get("notes")
            .is_none());
    }

    #[test]
    fn container_with_an_element_of_a_bootable_disk_is_refused() {
        let cache = tempfile::tempdir().unwrap();
        for (elements, types, other) in [
            (&["debian-minimal", "container", "vm"][..], "tar", "vm"),
            (&["debian-minimal", "growroot"], "docker", "growroot"),
            (&["debian-minimal", "bootloader"], "oci", "bootloader"),
            (
                &["debian-minimal", "container", "block-device-gpt"],
                "raw",
                "block-device-gpt",
            ),
        ] {
            let e = plan_of(elements, &[types], &[], cache.path()).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{elements:?}");
            let m = e.to_string();
            assert!(
                m.starts_with("elements container (") && m.contains(&format!(" and {other} (")),
                "{m}"
            );
            assert!(
                m.contains("build the VM disk and the container image separately"),
                "{m}"
            );
        }
    }
}
