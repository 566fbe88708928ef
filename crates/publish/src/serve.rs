//! `kiln publish --serve`: the tree, read-only, over HTTP or HTTPS, for a try-out.
//!
//! A deliberately small static server: GET and HEAD only, one thread per connection, one
//! request per connection (`Connection: close`), no directory listings. Request paths are
//! split on `/` with empty and `.` segments dropped, so the doubled slash LXC's download
//! template sends (`//meta/1.0/index-system`) works; a `..` segment is refused; the file found
//! is canonicalised and must still lie inside the canonical tree, so a symlink cannot lead
//! out. HTTPS uses rustls with a PEM certificate chain and key (`--tls-cert`, `--tls-key`);
//! LXC's download template speaks HTTPS only. The loop stops when `stop` is set (the CLI sets
//! it on SIGINT and SIGTERM).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::{io_err, Error};

/// A PEM certificate chain and private key for HTTPS.
#[derive(Debug, Clone)]
pub struct Tls {
    /// The certificate chain, PEM.
    pub cert: PathBuf,
    /// The private key, PEM.
    pub key: PathBuf,
}

/// A bound server, ready to run.
pub struct Server {
    listener: TcpListener,
    root: PathBuf,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
            .field("root", &self.root)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Reads the TLS configuration from PEM files.
fn tls_config(tls: &Tls) -> Result<Arc<rustls::ServerConfig>, Error> {
    let bad = |path: &Path, message: String| Error::Tls {
        path: path.to_path_buf(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(Iterator::collect)
        .map_err(|e| {
            bad(
                &tls.cert,
                format!("cannot read a PEM certificate chain: {e}"),
            )
        })?;
    if certs.is_empty() {
        return Err(bad(&tls.cert, "holds no PEM CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| bad(&tls.key, format!("cannot read a PEM private key: {e}")))?;
    // ring lacks post-quantum key exchange (hence the deprecation); that is fine for a try-out
    // server, and aws-lc-rs, the other provider, needs cmake and a long C build.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&tls.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(&tls.key, format!("does not suit the certificate: {e}")))?;
    Ok(Arc::new(config))
}

impl Server {
    /// Binds `addr` (`127.0.0.1:8443`, `[::1]:0`) to serve `root`, over HTTPS with `tls`.
    pub fn bind(addr: &str, root: &Path, tls: Option<&Tls>) -> Result<Self, Error> {
        let root = root.canonicalize().map_err(io_err(root))?;
        let tls = tls.map(tls_config).transpose()?;
        let listener = TcpListener::bind(addr).map_err(|e| Error::Input {
            path: root.clone(),
            message: format!("cannot listen on {addr}: {e}"),
        })?;
        Ok(Self {
            listener,
            root,
            tls,
        })
    }

    /// The address it listens on (the port chosen when `:0` was asked).
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Whether it speaks HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `stop` is set.
    pub fn run(self, stop: &AtomicBool) -> Result<(), Error> {
        self.listener
            .set_nonblocking(true)
            .map_err(io_err(&self.root))?;
        let root = Arc::new(self.root);
        while !stop.load(Ordering::Relaxed) {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let root = Arc::clone(&root);
                    let tls = self.tls.clone();
                    std::thread::spawn(move || {
                        if let Err(e) = connection(stream, &root, tls) {
                            tracing::debug!("connection: {e}");
                        }
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(root.as_path())(e)),
            }
        }
        Ok(())
    }
}

fn connection(
    stream: TcpStream,
    root: &Path,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(120)))?;
    if let Some(config) = tls {
        let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
        let mut s = rustls::StreamOwned::new(conn, stream);
        handle(&mut s, root)?;
        s.conn.send_close_notify();
        s.flush()
    } else {
        let mut s = stream;
        handle(&mut s, root)
    }
}

/// The file a request path names inside `root`, or why not: 400 for `..`, 404 otherwise.
pub fn resolve(root: &Path, target: &str) -> Result<PathBuf, u16> {
    let path = target.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return Err(400);
    }
    let mut out = root.to_path_buf();
    for seg in path.split('/') {
        let seg = percent_decode(seg).ok_or(400u16)?;
        match seg.as_str() {
            "" | "." => {}
            ".." => return Err(400),
            s if s.contains('/') || s.contains('\0') => return Err(400),
            s => out.push(s),
        }
    }
    let real = out.canonicalize().map_err(|_| 404u16)?;
    if !real.starts_with(root) || !real.is_file() {
        return Err(404);
    }
    Ok(real)
}

/// Decodes `%XX` escapes; `None` on a malformed one or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => "application/json",
        Some("asc") => "application/pgp-signature",
        Some("xz") => "application/x-xz",
        Some("gz") => "application/gzip",
        _ if path
            .file_name()
            .is_some_and(|n| n == "SHA256SUMS" || n.to_string_lossy().starts_with("index-")) =>
        {
            "text/plain; charset=utf-8"
        }
        _ => "application/octet-stream",
    }
}

fn handle<S: Read + Write>(stream: &mut S, root: &Path) -> std::io::Result<()> {
    let mut reader = BufReader::new(&mut *stream);
    let mut line = String::new();
    // A request line and headers: at most 8 KiB each, 100 headers.
    reader.by_ref().take(8192).read_line(&mut line)?;
    let mut header = String::new();
    for _ in 0..100 {
        header.clear();
        if reader.by_ref().take(8192).read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    drop(reader);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let head = method == "HEAD";
    if method != "GET" && !head {
        return reply(stream, 405, "Method Not Allowed", "text/plain", None, head);
    }
    match resolve(root, target) {
        Ok(path) => {
            let mut file = std::fs::File::open(&path)?;
            let len = file.metadata()?.len();
            tracing::info!("200 {method} {target}");
            reply(stream, 200, "OK", content_type(&path), Some(len), head)?;
            if !head {
                std::io::copy(&mut file, stream)?;
            }
            stream.flush()
        }
        Err(code) => {
            tracing::info!("{code} {method} {target}");
            let reason = if code == 400 {
                "Bad Request"
            } else {
                "Not Found"
            };
            reply(stream, code, reason, "text/plain", None, head)
        }
    }
}

fn reply<S: Write>(
    stream: &mut S,
    code: u16,
    reason: &str,
    ctype: &str,
    len: Option<u64>,
    head: bool,
) -> std::io::Result<()> {
    let body = if len.is_none() && !head {
        format!("{code} {reason}\n")
    } else {
        String::new()
    };
    let length = len.unwrap_or(body.len() as u64);
    write!(
        stream,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {length}\r\n\
         Connection: close\r\nServer: kiln\r\n\r\n{body}"
    )?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_inside_the_tree_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("srv");
        std::fs::create_dir_all(root.join("meta/1.0")).unwrap();
        std::fs::write(root.join("meta/1.0/index-system"), "x").unwrap();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("out")).unwrap();
        std::os::unix::fs::symlink("meta/1.0/index-system", root.join("in")).unwrap();
        let root = root.canonicalize().unwrap();
        let index = root.join("meta/1.0/index-system");
        assert_eq!(resolve(&root, "/meta/1.0/index-system"), Ok(index.clone()));
        assert_eq!(resolve(&root, "//meta/1.0/index-system"), Ok(index.clone()));
        assert_eq!(
            resolve(&root, "/meta/./1.0//index-system?x=1"),
            Ok(index.clone())
        );
        assert_eq!(
            resolve(&root, "/meta/1.0/index%2Dsystem"),
            Ok(index.clone())
        );
        assert_eq!(resolve(&root, "/in"), Ok(index));
        assert_eq!(resolve(&root, "/../secret"), Err(400));
        assert_eq!(resolve(&root, "/meta/%2e%2e/../secret"), Err(400));
        assert_eq!(resolve(&root, "/meta%2f..%2f..%2fsecret"), Err(400));
        assert_eq!(resolve(&root, "/out"), Err(404));
        assert_eq!(resolve(&root, "/meta"), Err(404));
        assert_eq!(resolve(&root, "/nothing"), Err(404));
        assert_eq!(resolve(&root, "meta/1.0/index-system"), Err(400));
    }
}
