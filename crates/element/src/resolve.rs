//! Element resolution: from the names the user asked for to the final, ordered element set.
//!
//! Membership follows DIB's `element-info` exactly (a breadth-first walk over `element-deps`,
//! virtual names from `element-provides`, the same errors), so the same command line gives
//! the same elements as DIB. DIB's *order* is a Python set and so undefined; ours is a
//! topological order of the `element-deps` graph (dependencies first) with ties broken by
//! name, and cycles broken at the smallest remaining name, so the same input gives the same
//! order on every machine. Order matters in exactly three places: the block-device config
//! ("first match wins"), top-level file overwrite in the hook tree ("last wins") and the
//! package-installs squash.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::PathBuf;

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;

use crate::error::Error;
use crate::library::{block_device_config_in, Library};

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveRequest {
    /// Element names as given on the command line, in order.
    pub elements: Vec<String>,
    /// The target architecture in Debian spelling (`amd64`, `arm64`, ...).
    pub arch: String,
    /// `-n`: do not add `base`.
    pub skip_base: bool,
}

/// Why an element is in the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The user asked for it.
    Requested,
    /// Listed in the `element-deps` of this element (the first one, in walk order).
    DependencyOf(String),
    /// Added by a rule of the command line, explained in the text.
    AutoAdded(String),
}

/// One element of the resolved set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedElement {
    /// The element name.
    pub name: String,
    /// Its canonical directory.
    pub path: PathBuf,
    /// Why it is included.
    pub reason: Reason,
}

/// The resolved elements, in their final (deterministic) order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ElementSet {
    /// The elements in final order: every element after the elements it depends on.
    pub elements: Vec<ResolvedElement>,
    /// Virtual names (from `element-provides`) and the element providing each.
    pub provided: BTreeMap<String, String>,
}

const OPERATING_SYSTEM: &str = "operating-system";

/// Resolves `req` against `lib`, with DIB's rules:
///
/// 1. If the literal name `vm` was requested and no requested name starts with
///    `block-device-`, `block-device-efi` (arm64/aarch64) or `block-device-mbr` is added.
/// 2. `base` is prepended unless `skip_base`.
/// 3. DIB's breadth-first expansion over `element-deps` and `element-provides`; unknown
///    elements, doubly provided names, requested elements that are also provided, and a
///    missing `operating-system` are errors. Cycles and self-dependencies are allowed.
/// 4. The result (all reached names minus the provided ones) is ordered topologically.
pub fn resolve(lib: &Library, req: &ResolveRequest) -> Result<ElementSet, Error> {
    let (user, reasons) = rewrite_request(req);
    expand(lib, &user, reasons)
}

/// Resolves exactly the requested names, without the command-line rewrites (`base`, the
/// block-device for `vm`): what DIB's `element-info` does, since disk-image-create applies those
/// rules before calling it.
pub fn resolve_exact(lib: &Library, req: &ResolveRequest) -> Result<ElementSet, Error> {
    let mut user: Vec<String> = Vec::new();
    let mut reasons = HashMap::new();
    for name in &req.elements {
        if !name.is_empty() && !user.contains(name) {
            user.push(name.clone());
            reasons.insert(name.clone(), Reason::Requested);
        }
    }
    expand(lib, &user, reasons)
}

fn expand(
    lib: &Library,
    user: &[String],
    mut reasons: HashMap<String, Reason>,
) -> Result<ElementSet, Error> {
    // DIB's breadth-first expansion.
    let mut queue: VecDeque<String> = user.iter().cloned().collect();
    let mut seen: HashSet<String> = user.iter().cloned().collect();
    // Names in the order they were first reached, so the result does not depend on hashing.
    let mut reached: Vec<String> = user.to_vec();
    let mut provided: BTreeMap<String, String> = BTreeMap::new();

    while let Some(name) = queue.pop_front() {
        if provided.contains_key(&name) {
            continue;
        }
        let Some(element) = lib.get(&name) else {
            return Err(unknown_element(lib, &name, &reasons));
        };
        for p in &element.provides {
            if let Some(first) = provided.get(p) {
                let first_file = lib
                    .get(first)
                    .map(crate::library::Element::provides_file)
                    .unwrap_or_default();
                return Err(Error::AlreadyProvided {
                    name: p.clone(),
                    by: vec![first.clone(), name.clone()],
                    files: vec![first_file, element.provides_file()],
                });
            }
            provided.insert(p.clone(), name.clone());
        }
        for dep in &element.deps {
            if !seen.contains(dep) && !provided.contains_key(dep) {
                queue.push_back(dep.clone());
            }
            if seen.insert(dep.clone()) {
                reached.push(dep.clone());
            }
            reasons
                .entry(dep.clone())
                .or_insert_with(|| Reason::DependencyOf(name.clone()));
        }
    }

    for name in user {
        if let Some(by) = provided.get(name) {
            let file = lib
                .get(by)
                .map(crate::library::Element::provides_file)
                .unwrap_or_default();
            return Err(Error::ProvidedUserElement {
                name: name.clone(),
                by: by.clone(),
                file,
            });
        }
    }
    if !provided.contains_key(OPERATING_SYSTEM) {
        return Err(Error::NoOperatingSystem {
            elements: user.to_vec(),
            candidates: lib.providers_of(OPERATING_SYSTEM),
        });
    }

    let members: Vec<&str> = reached
        .iter()
        .map(String::as_str)
        .filter(|n| !provided.contains_key(*n))
        .collect();
    let ordered = order(lib, &members, &provided);
    let elements = ordered
        .into_iter()
        .map(|name| {
            // Every member was popped from the queue and found in the library.
            let path = lib.get(name).map(|e| e.path.clone()).unwrap_or_default();
            let reason = reasons.get(name).cloned().unwrap_or(Reason::Requested);
            ResolvedElement {
                name: name.to_string(),
                path,
                reason,
            }
        })
        .collect();
    Ok(ElementSet { elements, provided })
}

/// Applies the command-line rewrites (block-device default for `vm`, `base`), drops empty
/// and repeated names, and records why each user element is there.
fn rewrite_request(req: &ResolveRequest) -> (Vec<String>, HashMap<String, Reason>) {
    let mut user: Vec<String> = Vec::new();
    let mut reasons: HashMap<String, Reason> = HashMap::new();
    let push = |user: &mut Vec<String>,
                reasons: &mut HashMap<String, Reason>,
                name: &str,
                reason: Reason| {
        if !name.is_empty() && !user.iter().any(|u| u == name) {
            user.push(name.to_string());
            reasons.insert(name.to_string(), reason);
        }
    };
    if !req.skip_base {
        push(
            &mut user,
            &mut reasons,
            "base",
            Reason::AutoAdded("base is added unless -n is given".into()),
        );
    }
    let base_requested = req.elements.iter().any(|e| e == "base");
    for name in &req.elements {
        push(&mut user, &mut reasons, name, Reason::Requested);
    }
    if base_requested {
        reasons.insert("base".into(), Reason::Requested);
    }
    let has_vm = req.elements.iter().any(|e| e == "vm");
    let has_block_device = req.elements.iter().any(|e| e.starts_with("block-device-"));
    if has_vm && !has_block_device {
        let bd = if matches!(req.arch.as_str(), "arm64" | "aarch64") {
            "block-device-efi"
        } else {
            "block-device-mbr"
        };
        push(
            &mut user,
            &mut reasons,
            bd,
            Reason::AutoAdded(format!(
                "{bd} is added because vm was requested without a block-device-* element (arch {})",
                req.arch
            )),
        );
    }
    (user, reasons)
}

fn unknown_element(lib: &Library, name: &str, reasons: &HashMap<String, Reason>) -> Error {
    let needed_by = match reasons.get(name) {
        Some(Reason::DependencyOf(parent)) => {
            lib.get(parent).map(crate::library::Element::deps_file)
        }
        _ => None,
    };
    Error::UnknownElement {
        name: name.to_string(),
        suggestions: suggest(lib, name),
        needed_by,
        searched: lib.entries().to_vec(),
    }
}

/// Up to three known names close to `name`, closest first.
fn suggest(lib: &Library, name: &str) -> Vec<String> {
    let mut scored: Vec<(f64, &str)> = lib
        .names()
        .filter_map(|candidate| {
            let score = strsim::jaro_winkler(name, candidate);
            let edits = strsim::levenshtein(name, candidate);
            let close =
                edits <= 2 || score >= 0.88 || (name.len() >= 3 && candidate.contains(name));
            close.then_some((score, candidate))
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored
        .into_iter()
        .take(3)
        .map(|(_, n)| n.to_string())
        .collect()
}

/// Orders `members` so that each element comes after the elements in its `element-deps`
/// (a dep naming a virtual name stands for its provider). Ties go to the smallest name; when
/// only cycles remain, the smallest remaining name goes next.
fn order<'a>(
    lib: &Library,
    members: &[&'a str],
    provided: &BTreeMap<String, String>,
) -> Vec<&'a str> {
    let mut graph: DiGraph<&'a str, ()> = DiGraph::new();
    let index: HashMap<&str, NodeIndex> = members
        .iter()
        .map(|&name| (name, graph.add_node(name)))
        .collect();
    for &name in members {
        let Some(element) = lib.get(name) else {
            continue;
        };
        let to = index[name];
        for dep in &element.deps {
            let dep = provided.get(dep).map_or(dep.as_str(), String::as_str);
            if let Some(&from) = index.get(dep) {
                if from != to && graph.find_edge(from, to).is_none() {
                    graph.add_edge(from, to, ());
                }
            }
        }
    }

    let mut indegree: HashMap<NodeIndex, usize> = graph
        .node_indices()
        .map(|n| (n, graph.neighbors_directed(n, Direction::Incoming).count()))
        .collect();
    let mut ready: BTreeSet<(&str, NodeIndex)> = indegree
        .iter()
        .filter(|(_, &d)| d == 0)
        .map(|(&n, _)| (graph[n], n))
        .collect();
    let mut remaining: BTreeSet<(&str, NodeIndex)> =
        graph.node_indices().map(|n| (graph[n], n)).collect();
    let mut out = Vec::with_capacity(members.len());

    while !remaining.is_empty() {
        // Take the smallest ready node; if none is ready, a cycle remains: break it at the
        // smallest remaining name.
        let next = match ready.pop_first() {
            Some(next) => next,
            None => match remaining.first() {
                Some(&first) => first,
                None => break,
            },
        };
        remaining.remove(&next);
        out.push(next.0);
        indegree.insert(next.1, 0);
        for succ in graph.neighbors_directed(next.1, Direction::Outgoing) {
            if !remaining.contains(&(graph[succ], succ)) {
                continue;
            }
            if let Some(d) = indegree.get_mut(&succ) {
                if *d > 0 {
                    *d -= 1;
                    if *d == 0 {
                        ready.insert((graph[succ], succ));
                    }
                }
            }
        }
    }
    out
}

impl ElementSet {
    /// The element names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.elements.iter().map(|e| e.name.as_str()).collect()
    }

    /// `IMAGE_ELEMENT`: the names, space separated, in order.
    pub fn image_element(&self) -> String {
        self.names().join(" ")
    }

    /// `IMAGE_ELEMENT_YAML`: a flow-style YAML map `{name: path, ...}` in element order, with
    /// scalars quoted only where YAML needs it (as PyYAML's `safe_dump` does).
    pub fn image_element_yaml(&self) -> String {
        let pairs: Vec<String> = self
            .elements
            .iter()
            .map(|e| {
                format!(
                    "{}: {}",
                    yaml_scalar(&e.name),
                    yaml_scalar(&e.path.to_string_lossy())
                )
            })
            .collect();
        format!("{{{}}}", pairs.join(", "))
    }

    /// The text `get_image_element_array` echoes: `[name]=path ...`, for
    /// `eval declare -A image_elements=($(get_image_element_array))`. Names or paths with
    /// characters the shell would split or expand are single-quoted, which that `eval` undoes.
    pub fn element_array(&self) -> String {
        self.elements
            .iter()
            .map(|e| {
                format!(
                    "[{}]={}",
                    shell_word(&e.name),
                    shell_word(&e.path.to_string_lossy())
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Eval-able bash, equivalent to `element-info --env`: exports `IMAGE_ELEMENT` and
    /// `IMAGE_ELEMENT_YAML`, and defines and exports the function `get_image_element_array`.
    pub fn env_script(&self) -> String {
        format!(
            "export IMAGE_ELEMENT={}\nexport IMAGE_ELEMENT_YAML={}\nfunction get_image_element_array {{\n  echo {}\n}};\nexport -f get_image_element_array;\n",
            shell_quote(&self.image_element()),
            shell_quote(&self.image_element_yaml()),
            shell_quote(&self.element_array()),
        )
    }

    /// The block-device config DIB would pick from the elements (reference 4.1 step 3): for
    /// each element in order, `block-device-<arch>.yaml` else `block-device-default.yaml`;
    /// the first element with either wins. Returns the element name and the file.
    pub fn block_device_config(&self, arch: &str) -> Option<(String, PathBuf)> {
        self.elements
            .iter()
            .find_map(|e| block_device_config_in(&e.path, arch).map(|file| (e.name.clone(), file)))
    }

    /// The resolved element of that name.
    pub fn get(&self, name: &str) -> Option<&ResolvedElement> {
        self.elements.iter().find(|e| e.name == name)
    }
}

/// Quotes `s` for bash with single quotes (always).
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `s` unchanged when the shell would read it as one literal word, else single-quoted.
pub fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./+:@%,=".contains(c));
    if plain {
        s.to_string()
    } else {
        shell_quote(s)
    }
}

/// A YAML scalar: plain when that reads back as the same string, else single-quoted.
fn yaml_scalar(s: &str) -> String {
    if yaml_plain_ok(s) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// Plain words YAML 1.1 reads as booleans or null (compared case-insensitively).
const YAML_SPECIAL_WORDS: [&str; 10] = [
    "y", "n", "yes", "no", "true", "false", "on", "off", "null", "~",
];

/// Whether `s` can be written as a plain YAML scalar and still read back as that string
/// under YAML 1.1 rules (PyYAML): only safe characters, not starting with an indicator, and
/// not looking like a boolean, null or number.
fn yaml_plain_ok(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    let safe_chars = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-./+@~".contains(c));
    if !safe_chars || first == '-' || first == '~' || first == '@' {
        return false;
    }
    if YAML_SPECIAL_WORDS.contains(&s.to_ascii_lowercase().as_str()) {
        return false;
    }
    // Anything that starts like a number (or .inf/.nan) is quoted: over-quoting is harmless.
    let unsigned = s.strip_prefix('+').unwrap_or(s);
    !(unsigned.starts_with(|c: char| c.is_ascii_digit())
        || unsigned.starts_with('.')
            && unsigned.len() > 1
            && !unsigned.starts_with("./")
            && !unsigned.starts_with(".."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Fixture;

    fn req(elements: &[&str]) -> ResolveRequest {
        ResolveRequest {
            elements: elements.iter().map(ToString::to_string).collect(),
            arch: "amd64".into(),
            skip_base: true,
        }
    }

    fn names(set: &ElementSet) -> Vec<&str> {
        set.names()
    }

    /// A small library: an OS element, base, vm and the block-device elements.
    fn os_fixture() -> Fixture {
        let fx = Fixture::new();
        fx.element("debian-minimal")
            .provides(&["operating-system"])
            .deps(&["debootstrap", "dpkg"]);
        fx.element("debootstrap").deps(&["dpkg"]);
        fx.element("dpkg");
        fx.element("base").deps(&["install-bin"]);
        fx.element("install-bin");
        fx.element("vm").deps(&["bootloader"]);
        fx.element("bootloader");
        fx.element("block-device-mbr").provides(&["block-device"]);
        fx.element("block-device-efi").provides(&["block-device"]);
        fx.element("block-device-gpt").provides(&["block-device"]);
        fx
    }

    #[test]
    fn expands_deps_and_orders_dependencies_first() {
        let fx = os_fixture();
        let set = resolve(&fx.library(), &req(&["debian-minimal"])).unwrap();
        assert_eq!(names(&set), ["dpkg", "debootstrap", "debian-minimal"]);
        assert_eq!(set.get("debian-minimal").unwrap().reason, Reason::Requested);
        assert_eq!(
            set.get("dpkg").unwrap().reason,
            Reason::DependencyOf("debian-minimal".into())
        );
        assert_eq!(
            set.get("debootstrap").unwrap().reason,
            Reason::DependencyOf("debian-minimal".into())
        );
        assert_eq!(set.provided["operating-system"], "debian-minimal");
        assert_eq!(
            set.get("dpkg").unwrap().path,
            std::fs::canonicalize(fx.path("main/dpkg")).unwrap()
        );
    }

    #[test]
    fn base_is_prepended_unless_skipped() {
        let fx = os_fixture();
        let lib = fx.library();
        let mut r = req(&["debian-minimal"]);
        r.skip_base = false;
        let set = resolve(&lib, &r).unwrap();
        assert_eq!(
            names(&set),
            [
                "dpkg",
                "debootstrap",
                "debian-minimal",
                "install-bin",
                "base"
            ]
        );
        assert!(
            matches!(set.get("base").unwrap().reason, Reason::AutoAdded(ref why) if why.contains("-n"))
        );
        assert_eq!(
            set.get("install-bin").unwrap().reason,
            Reason::DependencyOf("base".into())
        );
        // Asking for base explicitly makes it Requested.
        let mut r = req(&["debian-minimal", "base"]);
        r.skip_base = false;
        let set = resolve(&lib, &r).unwrap();
        assert_eq!(set.get("base").unwrap().reason, Reason::Requested);
        assert_eq!(set.names().iter().filter(|n| **n == "base").count(), 1);
    }

    #[test]
    fn vm_adds_block_device_mbr_or_efi() {
        let fx = os_fixture();
        let lib = fx.library();
        let set = resolve(&lib, &req(&["debian-minimal", "vm"])).unwrap();
        assert!(set.get("block-device-mbr").is_some());
        assert!(set.get("block-device-efi").is_none());
        assert!(
            matches!(set.get("block-device-mbr").unwrap().reason, Reason::AutoAdded(ref why) if why.contains("vm"))
        );
        assert_eq!(set.provided["block-device"], "block-device-mbr");

        for arch in ["arm64", "aarch64"] {
            let mut r = req(&["debian-minimal", "vm"]);
            r.arch = arch.into();
            let set = resolve(&lib, &r).unwrap();
            assert!(set.get("block-device-efi").is_some(), "{arch}");
            assert!(set.get("block-device-mbr").is_none(), "{arch}");
        }

        // An explicit block-device-* element suppresses the default.
        let set = resolve(&lib, &req(&["debian-minimal", "vm", "block-device-gpt"])).unwrap();
        assert!(set.get("block-device-gpt").is_some());
        assert!(set.get("block-device-mbr").is_none());

        // Without vm nothing is added.
        let set = resolve(&lib, &req(&["debian-minimal"])).unwrap();
        assert!(set.get("block-device-mbr").is_none());
    }

    #[test]
    fn transitive_vm_gets_no_block_device() {
        let fx = os_fixture();
        fx.element("cloud").deps(&["vm"]);
        fx.element("needs-bd").deps(&["block-device"]);
        let lib = fx.library();
        let set = resolve(&lib, &req(&["debian-minimal", "cloud"])).unwrap();
        assert!(set.get("vm").is_some());
        assert!(set.get("block-device-mbr").is_none());
        // A virtual name nobody provides is "not found".
        let err = resolve(&lib, &req(&["debian-minimal", "needs-bd"])).unwrap_err();
        assert!(matches!(err, Error::UnknownElement { ref name, .. } if name == "block-device"));
    }

    #[test]
    fn virtual_dep_provided_later_is_satisfied() {
        let fx = os_fixture();
        fx.element("needs-bd").deps(&["block-device"]);
        fx.element("needs-os").deps(&["operating-system"]);
        let lib = fx.library();
        let set = resolve(
            &lib,
            &req(&["needs-bd", "needs-os", "block-device-gpt", "debian-minimal"]),
        )
        .unwrap();
        assert!(set.get("block-device").is_none());
        assert!(set.get("operating-system").is_none());
        let order = set.names();
        let pos = |n: &str| order.iter().position(|x| *x == n).unwrap();
        // Virtual deps order after their provider.
        assert!(pos("block-device-gpt") < pos("needs-bd"));
        assert!(pos("debian-minimal") < pos("needs-os"));
    }

    #[test]
    fn unknown_element_suggests_close_names() {
        let fx = os_fixture();
        let lib = fx.library();
        let err = resolve(&lib, &req(&["debian-minimal", "debian-minmal"])).unwrap_err();
        match &err {
            Error::UnknownElement {
                name,
                suggestions,
                needed_by,
                searched,
            } => {
                assert_eq!(name, "debian-minmal");
                assert_eq!(
                    suggestions.first().map(String::as_str),
                    Some("debian-minimal")
                );
                assert!(needed_by.is_none());
                assert_eq!(searched, &[fx.path("main")]);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            err.to_string().contains("did you mean 'debian-minimal'?"),
            "{err}"
        );

        fx.element("broken").deps(&["zzz-nothing-like-it"]);
        let lib = fx.library();
        let err = resolve(&lib, &req(&["debian-minimal", "broken"])).unwrap_err();
        match &err {
            Error::UnknownElement {
                suggestions,
                needed_by,
                ..
            } => {
                assert!(suggestions.is_empty());
                assert_eq!(
                    needed_by.as_deref(),
                    Some(lib.get("broken").unwrap().deps_file().as_path())
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("element-deps"), "{err}");
    }

    #[test]
    fn double_provide_is_an_error() {
        let fx = os_fixture();
        fx.element("other-os").provides(&["operating-system"]);
        let err = resolve(&fx.library(), &req(&["debian-minimal", "other-os"])).unwrap_err();
        match &err {
            Error::AlreadyProvided { name, by, files } => {
                assert_eq!(name, "operating-system");
                assert_eq!(by, &["debian-minimal", "other-os"]);
                assert_eq!(files.len(), 2);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("'debian-minimal'"), "{err}");
    }

    #[test]
    fn requested_element_that_is_provided_is_an_error() {
        let fx = os_fixture();
        fx.element("fat-os").provides(&["operating-system", "dpkg"]);
        let err = resolve(&fx.library(), &req(&["fat-os", "dpkg"])).unwrap_err();
        assert!(
            matches!(&err, Error::ProvidedUserElement { name, by, .. } if name == "dpkg" && by == "fat-os"),
            "{err:?}"
        );
        // A provided name reached only as a dependency is just dropped.
        fx.element("wants-dpkg").deps(&["dpkg"]);
        let set = resolve(&fx.library(), &req(&["fat-os", "wants-dpkg"])).unwrap();
        assert_eq!(set.names(), ["fat-os", "wants-dpkg"]);
    }

    #[test]
    fn operating_system_is_required() {
        let fx = os_fixture();
        let err = resolve(&fx.library(), &req(&["vm"])).unwrap_err();
        match &err {
            Error::NoOperatingSystem {
                elements,
                candidates,
            } => {
                assert_eq!(elements, &["vm", "block-device-mbr"]);
                assert_eq!(candidates, &["debian-minimal"]);
            }
            other => panic!("unexpected {other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.starts_with("Please include an operating system element"),
            "{text}"
        );
        assert!(text.contains("debian-minimal"), "{text}");
    }

    #[test]
    fn ties_break_by_name_and_cycles_are_allowed() {
        let fx = Fixture::new();
        fx.element("os").provides(&["operating-system"]);
        // zeta, alpha and mid all independent; mid depends on both; cycle c1 <-> c2; self-dep.
        fx.element("top")
            .deps(&["zeta", "alpha", "mid", "c2", "selfish"]);
        fx.element("zeta");
        fx.element("alpha");
        fx.element("mid").deps(&["zeta", "alpha"]);
        fx.element("c1").deps(&["c2", "alpha"]);
        fx.element("c2").deps(&["c1"]);
        fx.element("selfish").deps(&["selfish"]);
        let lib = fx.library();
        let set = resolve(&lib, &req(&["top", "os"])).unwrap();
        assert_eq!(
            set.names(),
            ["alpha", "os", "selfish", "zeta", "mid", "c1", "c2", "top"]
        );
        // Same input, same order, whatever the request order.
        let again = resolve(&lib, &req(&["os", "top"])).unwrap();
        assert_eq!(again.names(), set.names());
    }

    #[test]
    fn duplicate_requests_are_merged() {
        let fx = os_fixture();
        let set = resolve(
            &fx.library(),
            &req(&["debian-minimal", "debian-minimal", ""]),
        )
        .unwrap();
        assert_eq!(set.names(), ["dpkg", "debootstrap", "debian-minimal"]);
    }

    fn fake_set(pairs: &[(&str, &str)]) -> ElementSet {
        ElementSet {
            elements: pairs
                .iter()
                .map(|(n, p)| ResolvedElement {
                    name: (*n).into(),
                    path: PathBuf::from(p),
                    reason: Reason::Requested,
                })
                .collect(),
            provided: BTreeMap::new(),
        }
    }

    #[test]
    fn env_outputs() {
        let set = fake_set(&[("base", "/e/base"), ("vm", "/e/vm")]);
        assert_eq!(set.image_element(), "base vm");
        assert_eq!(set.image_element_yaml(), "{base: /e/base, vm: /e/vm}");
        assert_eq!(set.element_array(), "[base]=/e/base [vm]=/e/vm");
        assert_eq!(
            set.env_script(),
            "export IMAGE_ELEMENT='base vm'\n\
             export IMAGE_ELEMENT_YAML='{base: /e/base, vm: /e/vm}'\n\
             function get_image_element_array {\n  echo '[base]=/e/base [vm]=/e/vm'\n};\n\
             export -f get_image_element_array;\n"
        );
    }

    #[test]
    fn yaml_and_shell_quoting() {
        let set = fake_set(&[
            ("yes", "/p/it's here"),
            ("1x", "/p/a: b"),
            ("ok-name_1", "/p/plain.d"),
        ]);
        assert_eq!(
            set.image_element_yaml(),
            "{'yes': '/p/it''s here', '1x': '/p/a: b', ok-name_1: /p/plain.d}"
        );
        assert_eq!(
            set.element_array(),
            r"[yes]='/p/it'\''s here' [1x]='/p/a: b' [ok-name_1]=/p/plain.d"
        );
        let script = set.env_script();
        assert!(script.contains(r"export IMAGE_ELEMENT='yes 1x ok-name_1'"));
        assert!(script.contains(r"'{'\''yes'\'': "), "{script}");
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
        for s in [
            "null", "True", "~", "-x", "+1", ".5", "", "a b", "a:b", "#x",
        ] {
            assert!(!yaml_plain_ok(s), "{s}");
        }
        for s in ["base", "/usr/share/x", "block-device-mbr", "./rel", "a.b"] {
            assert!(yaml_plain_ok(s), "{s}");
        }
    }

    #[test]
    fn block_device_first_match_in_order() {
        let fx = Fixture::new();
        fx.element("os").provides(&["operating-system"]);
        fx.element("aa-plain");
        fx.element("bb-default")
            .file("block-device-default.yaml", "");
        fx.element("cc-arch")
            .file("block-device-amd64.yaml", "")
            .deps(&["bb-default"]);
        let lib = fx.library();
        let set = resolve(&lib, &req(&["os", "aa-plain", "cc-arch"])).unwrap();
        assert_eq!(set.names(), ["aa-plain", "bb-default", "cc-arch", "os"]);
        let (element, file) = set.block_device_config("amd64").unwrap();
        assert_eq!(element, "bb-default");
        assert!(file.ends_with("block-device-default.yaml"));
        let set = resolve(&lib, &req(&["os", "aa-plain"])).unwrap();
        assert_eq!(set.block_device_config("amd64"), None);
    }
}
