//! The mirror state in the phase keys: the digest of the `InRelease` (or `Release`) file of every
//! suite in the image's apt sources.
//!
//! A security update lands in `-security`, a point release in `-updates`, and on Ubuntu the
//! release pocket never changes after release: keying only the main suite would hand back an
//! image without the update. So every suite the image's sources name is keyed: the entries of
//! `DIB_APT_SOURCES_CONF` (one `name:deb-line` a line, as the Debian and Ubuntu elements write
//! it), the file named by `DIB_APT_SOURCES` (one-line or deb822), and `DIB_DISTRIBUTION_MIRROR`'s
//! `DIB_RELEASE`. The files are fetched in parallel, each with a short timeout; `file:` URIs are
//! read directly, others with curl. A suite that cannot be read is keyed as `unavailable`, so
//! its return is a change too. Offline builds key no mirror state (the caller skips this).

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use kiln_host::Cmd;
use sha2::{Digest, Sha256};

use crate::settings;

/// How long one suite's file may take (each of `InRelease` and `Release`).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// What a suite that could not be read is keyed as.
pub const UNAVAILABLE: &str = "unavailable";

/// One suite of an apt source: the archive's URI and the suite (`bookworm-security`, or a flat
/// repository's path ending in `/`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Suite {
    /// The archive root, without trailing slashes.
    pub uri: String,
    /// The suite or flat path.
    pub suite: String,
}

impl Suite {
    /// The label the suite is keyed under and explained by: `SUITE URI`, with any user and
    /// password removed from the URI.
    pub fn label(&self) -> String {
        format!("{} {}", self.suite, redact(&self.uri))
    }

    /// The URLs of its `InRelease` and `Release` files, in the order tried.
    pub fn urls(&self) -> [String; 2] {
        let base = if self.suite.ends_with('/') {
            // A flat repository: the path is relative to the URI, no dists/.
            format!("{}/{}", self.uri, self.suite.trim_start_matches("./"))
        } else {
            format!("{}/dists/{}/", self.uri, self.suite)
        };
        let base = base.trim_end_matches('/').to_string() + "/";
        [format!("{base}InRelease"), format!("{base}Release")]
    }
}

/// The URI without a `user:password@` part.
pub(crate) fn redact(uri: &str) -> String {
    match uri.split_once("://") {
        Some((scheme, rest)) => {
            let (auth, tail) = rest.split_once('/').map_or((rest, ""), |(a, t)| (a, t));
            let host = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
            if tail.is_empty() && !rest.contains('/') {
                format!("{scheme}://{host}")
            } else {
                format!("{scheme}://{host}/{tail}")
            }
        }
        None => uri.to_string(),
    }
}

/// The suite of one one-line source, `deb [options] URI SUITE [COMPONENT...]` (or `deb-src`);
/// None for comments, blank lines, other types and lines without a suite.
pub fn parse_one_line(line: &str) -> Option<Suite> {
    let line = line.split('#').next().unwrap_or("").trim();
    let (kind, mut rest) = line.split_once(char::is_whitespace)?;
    if kind != "deb" && kind != "deb-src" {
        return None;
    }
    rest = rest.trim_start();
    if let Some(opts) = rest.strip_prefix('[') {
        // Options: `[arch=amd64 signed-by=/x.gpg]`, closed by the first `]`.
        let (_, after) = opts.split_once(']')?;
        rest = after.trim_start();
    }
    let mut words = rest.split_whitespace();
    let uri = words.next()?;
    let suite = words.next()?;
    make(uri, suite)
}

fn make(uri: &str, suite: &str) -> Option<Suite> {
    if uri.starts_with("cdrom:") || suite.is_empty() {
        return None;
    }
    Some(Suite {
        uri: uri.trim_end_matches('/').to_string(),
        suite: suite.to_string(),
    })
}

/// The suites of an apt sources file: one-line entries, or deb822 stanzas (`Types`, `URIs`,
/// `Suites`, `Enabled`), whichever the text holds.
pub fn parse_sources_file(text: &str) -> Vec<Suite> {
    let deb822 = text.lines().any(|l| {
        let l = l.trim_start().to_ascii_lowercase();
        l.starts_with("types:") || l.starts_with("uris:")
    });
    if !deb822 {
        return text.lines().filter_map(parse_one_line).collect();
    }
    let mut out = Vec::new();
    // Stanzas are separated by blank lines; continuation lines start with white space.
    for stanza in text.split("\n\n").flat_map(|s| s.split("\r\n\r\n")) {
        let mut fields: BTreeMap<String, String> = BTreeMap::new();
        let mut last: Option<String> = None;
        for line in stanza.lines() {
            if line.trim_start().starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if line.starts_with(char::is_whitespace) {
                if let Some(k) = &last {
                    if let Some(v) = fields.get_mut(k) {
                        v.push(' ');
                        v.push_str(line.trim());
                    }
                }
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                fields.insert(k.clone(), v.trim().to_string());
                last = Some(k);
            }
        }
        let get = |k: &str| fields.get(k).map_or("", String::as_str);
        let types = get("types");
        let enabled = get("enabled").to_ascii_lowercase();
        if !types
            .split_whitespace()
            .any(|t| t == "deb" || t == "deb-src")
            || matches!(enabled.as_str(), "no" | "false" | "0")
        {
            continue;
        }
        for uri in get("uris").split_whitespace() {
            for suite in get("suites").split_whitespace() {
                out.extend(make(uri, suite));
            }
        }
    }
    out
}

/// The suites of `DIB_APT_SOURCES_CONF`: one `name:deb-line` entry a line.
pub fn parse_sources_conf(conf: &str) -> Vec<Suite> {
    conf.lines()
        .filter_map(|l| l.split_once(':').map(|(_, entry)| entry))
        .filter_map(parse_one_line)
        .collect()
}

/// Every suite of the image's sources, as environment.d leaves the environment: the entries of
/// `DIB_APT_SOURCES_CONF`, of the `DIB_APT_SOURCES` file, and `DIB_DISTRIBUTION_MIRROR`'s
/// `DIB_RELEASE`; sorted, without duplicates.
pub fn image_suites(env: &BTreeMap<String, String>) -> Vec<Suite> {
    let mut v = Vec::new();
    if let (Some(m), Some(r)) = (
        settings::DIB_DISTRIBUTION_MIRROR.get(env),
        settings::DIB_RELEASE.get(env),
    ) {
        v.extend(make(m, r));
    }
    if let Some(conf) = env.get(APT_SOURCES_CONF) {
        v.extend(parse_sources_conf(conf));
    }
    if let Some(file) = env.get(APT_SOURCES).filter(|f| !f.is_empty()) {
        if fs::metadata(file).is_ok_and(|m| m.is_file()) {
            if let Ok(text) = fs::read_to_string(file) {
                v.extend(parse_sources_file(&text));
            }
        }
    }
    v.sort();
    v.dedup();
    v
}

/// The variable of the Debian-family elements listing the image's sources.
pub const APT_SOURCES_CONF: &str = "DIB_APT_SOURCES_CONF";
/// The apt-sources element's file of sources on the build host.
pub const APT_SOURCES: &str = "DIB_APT_SOURCES";

/// sha256 of the suite's `InRelease`, else its `Release`, else [`UNAVAILABLE`].
pub fn suite_digest(suite: &Suite, timeout: Duration) -> String {
    for url in suite.urls() {
        if let Some(bytes) = fetch(&url, timeout) {
            return hex::encode(Sha256::digest(&bytes));
        }
    }
    UNAVAILABLE.to_string()
}

/// The local path of a `file:` URI (`file:/path`, `file:///path`, `file://localhost/path`);
/// None for any other scheme.
pub(crate) fn file_uri_path(url: &str) -> Option<&str> {
    let path = url.strip_prefix("file:")?;
    Some(
        path.strip_prefix("//localhost")
            .or_else(|| path.strip_prefix("//"))
            .unwrap_or(path),
    )
}

/// The bytes at `url`: a `file:` URI is read directly (a FIFO or directory is not), anything
/// else with curl. None when it cannot be read or is empty.
pub(crate) fn fetch(url: &str, timeout: Duration) -> Option<Vec<u8>> {
    if let Some(path) = file_uri_path(url) {
        if !fs::metadata(path).is_ok_and(|m| m.is_file()) {
            return None;
        }
        return fs::read(path).ok().filter(|b| !b.is_empty());
    }
    let secs = timeout.as_secs().max(1).to_string();
    let connect = (timeout.as_secs() / 2).max(1).to_string();
    Cmd::new("curl")
        .args(["-fsSL", "--connect-timeout", &connect, "--max-time", &secs])
        .arg(url)
        .run()
        .ok()
        .map(|o| o.stdout)
        .filter(|b| !b.is_empty())
}

/// The digest of every suite, fetched in parallel: label → digest (or [`UNAVAILABLE`]).
pub fn digests(suites: &[Suite], timeout: Duration) -> BTreeMap<String, String> {
    std::thread::scope(|s| {
        let handles: Vec<_> = suites
            .iter()
            .map(|suite| s.spawn(move || (suite.label(), suite_digest(suite, timeout))))
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suite(uri: &str, suite: &str) -> Suite {
        Suite {
            uri: uri.into(),
            suite: suite.into(),
        }
    }

    #[test]
    fn one_line_sources_with_options_comments_and_flat_repositories() {
        assert_eq!(
            parse_one_line("deb http://m/debian bookworm main contrib"),
            Some(suite("http://m/debian", "bookworm"))
        );
        assert_eq!(
            parse_one_line(
                "deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://m/debian-security/ bookworm-security main # sec"
            ),
            Some(suite("http://m/debian-security", "bookworm-security"))
        );
        assert_eq!(
            parse_one_line("deb-src\thttp://m/debian  bookworm-updates main"),
            Some(suite("http://m/debian", "bookworm-updates"))
        );
        assert_eq!(
            parse_one_line("deb [trusted=yes] file:/srv/repo ./"),
            Some(suite("file:/srv/repo", "./"))
        );
        for no in [
            "",
            "# deb http://m/debian bookworm main",
            "deb http://m/debian",
            "rpm http://m/x y",
            "deb [arch=amd64 http://m/debian bookworm",
            "deb cdrom:[Debian]/ bookworm main",
        ] {
            assert_eq!(parse_one_line(no), None, "{no:?}");
        }
    }

    #[test]
    fn urls_for_suites_and_flat_repositories() {
        assert_eq!(
            suite("http://m/debian", "bookworm").urls(),
            [
                "http://m/debian/dists/bookworm/InRelease".to_string(),
                "http://m/debian/dists/bookworm/Release".to_string()
            ]
        );
        assert_eq!(
            suite("file:/srv/repo", "./").urls()[0],
            "file:/srv/repo/InRelease"
        );
        assert_eq!(
            suite("file:/srv/repo", "sub/").urls()[1],
            "file:/srv/repo/sub/Release"
        );
    }

    #[test]
    fn labels_never_carry_credentials() {
        assert_eq!(
            suite("http://user:secret@m.example/debian", "bookworm").label(),
            "bookworm http://m.example/debian"
        );
        assert_eq!(suite("file:/srv/repo", "./").label(), "./ file:/srv/repo");
    }

    #[test]
    fn deb822_stanzas() {
        let text = "Types: deb deb-src\nURIs: http://a/debian http://b/debian\nSuites: bookworm\n  bookworm-updates\nComponents: main\n\n# off\nTypes: deb\nURIs: http://c/debian\nSuites: sid\nEnabled: no\n\nTypes: deb\nURIs: http://d/debian-security\nSuites: bookworm-security\nComponents: main\n";
        let got = parse_sources_file(text);
        assert_eq!(
            got,
            vec![
                suite("http://a/debian", "bookworm"),
                suite("http://a/debian", "bookworm-updates"),
                suite("http://b/debian", "bookworm"),
                suite("http://b/debian", "bookworm-updates"),
                suite("http://d/debian-security", "bookworm-security"),
            ]
        );
    }

    #[test]
    fn every_suite_of_the_image_sources_debian_and_ubuntu() {
        let d = tempfile::tempdir().unwrap();
        let extra = d.path().join("extra.list");
        fs::write(&extra, "deb [trusted=yes] http://x/extra stable main\n").unwrap();
        let mut env = BTreeMap::new();
        env.insert("DIB_DISTRIBUTION_MIRROR".into(), "http://m/debian".into());
        env.insert("DIB_RELEASE".into(), "bookworm".into());
        env.insert(
            "DIB_APT_SOURCES_CONF".into(),
            "default:deb http://m/debian bookworm main\nupdates:deb http://m/debian bookworm-updates main\nsecurity:deb http://s/debian-security bookworm-security main".into(),
        );
        env.insert("DIB_APT_SOURCES".into(), extra.display().to_string());
        let labels: Vec<String> = image_suites(&env).iter().map(Suite::label).collect();
        assert_eq!(
            labels,
            [
                "bookworm http://m/debian",
                "bookworm-updates http://m/debian",
                "bookworm-security http://s/debian-security",
                "stable http://x/extra",
            ]
        );
        // Ubuntu: the pockets next to the release are what change after release.
        let mut env = BTreeMap::new();
        env.insert("DIB_DISTRIBUTION_MIRROR".into(), "http://u/ubuntu".into());
        env.insert("DIB_RELEASE".into(), "noble".into());
        env.insert(
            "DIB_APT_SOURCES_CONF".into(),
            "default:deb http://u/ubuntu noble main\nupdates:deb http://u/ubuntu noble-updates main\nsecurity:deb http://us/ubuntu noble-security main\nbackports:deb http://u/ubuntu noble-backports main".into(),
        );
        let suites: Vec<String> = image_suites(&env).into_iter().map(|s| s.suite).collect();
        assert_eq!(
            suites,
            [
                "noble",
                "noble-backports",
                "noble-updates",
                "noble-security"
            ]
        );
    }

    #[test]
    fn digests_of_file_mirrors_in_parallel() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let write = |p: &str, text: &str| {
            let p = root.join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        };
        write("dists/bookworm/InRelease", "main v1");
        write("dists/bookworm-security/Release", "security v1");
        let uri = format!("file://{}", root.display());
        let suites = vec![
            suite(&uri, "bookworm"),
            suite(&uri, "bookworm-security"),
            suite(&uri, "bookworm-updates"),
        ];
        let a = digests(&suites, FETCH_TIMEOUT);
        assert_eq!(a.len(), 3);
        assert_eq!(
            a[&suites[0].label()],
            hex::encode(Sha256::digest(b"main v1"))
        );
        assert_eq!(
            a[&suites[1].label()],
            hex::encode(Sha256::digest(b"security v1"))
        );
        assert_eq!(a[&suites[2].label()], UNAVAILABLE);
        // A security update changes that suite's digest and no other.
        write("dists/bookworm-security/Release", "security v2");
        let b = digests(&suites, FETCH_TIMEOUT);
        assert_eq!(a[&suites[0].label()], b[&suites[0].label()]);
        assert_ne!(a[&suites[1].label()], b[&suites[1].label()]);
        // file:/path (one slash) works too.
        let one = suite(&format!("file:{}", root.display()), "bookworm");
        assert_eq!(suite_digest(&one, FETCH_TIMEOUT), a[&suites[0].label()]);
    }

    #[test]
    fn http_mirrors_are_fetched_with_curl() {
        // A one-shot HTTP server on 127.0.0.1 serving one Release file.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            for _ in 0..2 {
                let (mut c, _) = listener.accept().unwrap();
                let mut buf = [0u8; 2048];
                let n = c.read(&mut buf).unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let reply = if req.starts_with("GET /debian/dists/trixie/Release ") {
                    "HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\nrelease".to_string()
                } else {
                    "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string()
                };
                c.write_all(reply.as_bytes()).unwrap();
            }
        });
        let s = suite(&format!("http://127.0.0.1:{port}/debian"), "trixie");
        assert_eq!(
            suite_digest(&s, Duration::from_secs(5)),
            hex::encode(Sha256::digest(b"release"))
        );
        server.join().unwrap();
    }
}
