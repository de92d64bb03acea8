//! A stand-in for the Hugging Face hub on 127.0.0.1, serving a fixture directory in the hub's URL
//! layout: `/api/models/{repo}/revision/{rev}` (the listing with sizes and etags),
//! `/{repo}/resolve/{rev}/{file}` (ETag, X-Repo-Commit; LFS files redirect to `/cdn/{sha256}` on a
//! second port, another origin, as the hub redirects to its CDN), Range requests, and faults a test arms once: a connection cut
//! or stalled part-way, a damaged body. Every request is logged for the test to inspect.

use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct HubFile {
    pub name: String,
    pub bytes: Vec<u8>,
    pub sha256: String,
    pub git_sha1: String,
}

impl HubFile {
    /// The hub stores `*.safetensors` in LFS: named by sha256, served through the CDN.
    pub fn lfs(&self) -> bool {
        self.name.ends_with(".safetensors")
    }
    pub fn etag(&self) -> &str {
        if self.lfs() {
            &self.sha256
        } else {
            &self.git_sha1
        }
    }
}

#[derive(Clone, Debug)]
pub enum Fault {
    /// Send this many body bytes of the file, then close the connection.
    Cut(u64),
    /// Send this many body bytes, then nothing until the server stops.
    Stall(u64),
    /// Send the whole body with one byte changed.
    Damage,
    /// Answer with this status and no body.
    Status(u16),
    /// (The listing) give every file an etag that climbs out of the cache: `../../...`.
    EscapingEtags,
}

/// The name under which a fault applies to the repository listing (`/api/models/...`).
pub const LISTING: &str = "<listing>";

#[derive(Clone, Debug)]
pub struct Logged {
    pub path: String,
    pub range: Option<String>,
    pub auth: Option<String>,
}

#[derive(Default)]
struct State {
    log: Vec<Logged>,
    faults: Vec<(String, Fault)>,
    /// List files by name only, as a minimal mirror does (no sizes, no etags).
    bare_listing: bool,
}

pub struct HubServer {
    pub url: String,
    pub repo: String,
    pub commit: String,
    pub files: Arc<Vec<HubFile>>,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    ports: [u16; 2],
}

/// Repositories the server knows besides `repo`: `{repo}-gated` needs `Bearer {TOKEN}`.
pub const TOKEN: &str = "hf_test_token";

impl HubServer {
    /// Serves the top-level files of `dir` as `repo` at one commit (branch `main`).
    pub fn start(dir: &Path, repo: &str) -> HubServer {
        let mut files: Vec<HubFile> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_file())
            .map(|e| {
                let bytes = std::fs::read(e.path()).unwrap();
                let mut g = Sha1::new();
                g.update(format!("blob {}\0", bytes.len()).as_bytes());
                g.update(&bytes);
                HubFile {
                    name: e.file_name().into_string().unwrap(),
                    sha256: hex(&Sha256::digest(&bytes)),
                    git_sha1: hex(&g.finalize()),
                    bytes,
                }
            })
            .collect();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        // The hub and its CDN: two origins, so that clients treat the redirect as the hub's.
        let hub = TcpListener::bind("127.0.0.1:0").unwrap();
        let cdn = TcpListener::bind("127.0.0.1:0").unwrap();
        let ports = [
            hub.local_addr().unwrap().port(),
            cdn.local_addr().unwrap().port(),
        ];
        let url = format!("http://127.0.0.1:{}", ports[0]);
        let server = HubServer {
            url,
            repo: repo.to_string(),
            commit: hex(&Sha1::digest(repo.as_bytes())),
            files: Arc::new(files),
            state: Arc::default(),
            stop: Arc::default(),
            ports,
        };
        let ctx = Ctx {
            cdn: format!("http://127.0.0.1:{}", ports[1]),
            repo: server.repo.clone(),
            commit: server.commit.clone(),
            files: server.files.clone(),
            state: server.state.clone(),
            stop: server.stop.clone(),
        };
        for listener in [hub, cdn] {
            let ctx = ctx.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if ctx.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let ctx = ctx.clone();
                    std::thread::spawn(move || {
                        let _ = ctx.serve(conn);
                    });
                }
            });
        }
        server
    }

    /// Arms `fault` for the next body request of `file`.
    pub fn fault(&self, file: &str, fault: Fault) {
        self.state
            .lock()
            .unwrap()
            .faults
            .push((file.to_string(), fault));
    }

    /// From now on the listing names the files without sizes or etags.
    pub fn bare_listing(&self) {
        self.state.lock().unwrap().bare_listing = true;
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn file(&self, name: &str) -> &HubFile {
        self.files.iter().find(|f| f.name == name).unwrap()
    }

    /// Stops accepting connections: the port then refuses, like a machine without network.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loops so they see the flag and drop the listeners.
        for port in self.ports {
            let _ = TcpStream::connect(("127.0.0.1", port));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Clone)]
struct Ctx {
    /// The CDN's origin, where LFS files redirect.
    cdn: String,
    repo: String,
    commit: String,
    files: Arc<Vec<HubFile>>,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

struct Request {
    method: String,
    path: String,
    range: Option<String>,
    auth: Option<String>,
}

impl Ctx {
    fn serve(&self, conn: TcpStream) -> std::io::Result<()> {
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let mut parts = line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            return Ok(());
        };
        let mut req = Request {
            method: method.to_string(),
            path: target.split('?').next().unwrap_or("").to_string(),
            range: None,
            auth: None,
        };
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "range" => req.range = Some(v.trim().to_string()),
                    "authorization" => req.auth = Some(v.trim().to_string()),
                    _ => {}
                }
            }
        }
        self.state.lock().unwrap().log.push(Logged {
            path: req.path.clone(),
            range: req.range.clone(),
            auth: req.auth.clone(),
        });
        self.route(&req, conn)
    }

    /// The first fault armed for `name`, disarmed.
    fn take_fault(&self, name: &str) -> Option<Fault> {
        let mut st = self.state.lock().unwrap();
        let i = st.faults.iter().position(|(n, _)| n == name)?;
        Some(st.faults.remove(i).1)
    }

    /// The repositories this hub has: the fixture, and a gated copy of it.
    /// Whether `repo` may be read, as the hub decides it: an unknown repository is a 401 with
    /// `X-Error-Code: RepoNotFound` to an anonymous client (the hub does not say whether a
    /// private one exists); the gated copy lists freely but refuses its files without the token.
    fn known(&self, repo: &str, req: &Request, file: bool) -> Result<(), (u16, &'static str)> {
        if repo == self.repo {
            return Ok(());
        }
        if repo == format!("{}-gated", self.repo) {
            return match (file, req.auth.as_deref()) {
                (false, _) => Ok(()),
                (true, Some(a)) if a == format!("Bearer {TOKEN}") => Ok(()),
                (true, Some(_)) => Err((403, "GatedRepo")),
                (true, None) => Err((401, "GatedRepo")),
            };
        }
        Err((401, "RepoNotFound"))
    }

    fn route(&self, req: &Request, mut conn: TcpStream) -> std::io::Result<()> {
        let p = req.path.trim_start_matches('/');
        if let Some(rest) = p.strip_prefix("api/models/") {
            // {org}/{name}/revision/{rev}
            let segs: Vec<&str> = rest.split('/').collect();
            let (repo, rev) = match segs.as_slice() {
                [o, n, "revision", rev] => (format!("{o}/{n}"), *rev),
                [o, n] => (format!("{o}/{n}"), "main"),
                _ => return reply(&mut conn, 404, &[], b"{}"),
            };
            if let Err((code, err)) = self.known(&repo, req, false) {
                return reply(&mut conn, code, &[("X-Error-Code", err.into())], b"{}");
            }
            if rev != "main" && rev != self.commit {
                return reply(
                    &mut conn,
                    404,
                    &[("X-Error-Code", "RevisionNotFound".into())],
                    b"{}",
                );
            }
            let fault = self.take_fault(LISTING);
            let escaping = matches!(fault, Some(Fault::EscapingEtags));
            match fault {
                Some(Fault::Status(code)) => return reply(&mut conn, code, &[], b""),
                Some(Fault::Stall(_)) => {
                    while !self.stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    return Ok(());
                }
                _ => {}
            }
            let bare = self.state.lock().unwrap().bare_listing;
            let siblings: Vec<serde_json::Value> = self
                .files
                .iter()
                .map(|f| {
                    if bare {
                        return serde_json::json!({ "rfilename": f.name });
                    }
                    let mut s = serde_json::json!({
                        "rfilename": f.name, "size": f.bytes.len(), "blobId": f.git_sha1,
                    });
                    if escaping {
                        s["blobId"] = "../../../../outside".into();
                    }
                    if f.lfs() {
                        s["lfs"] = serde_json::json!({"sha256": f.sha256, "size": f.bytes.len(), "pointerSize": 134});
                    }
                    s
                })
                .collect();
            let body = serde_json::json!({"id": repo, "sha": self.commit, "siblings": siblings});
            return reply(
                &mut conn,
                200,
                &[("Content-Type", "application/json".into())],
                body.to_string().as_bytes(),
            );
        }
        if let Some(sha) = p.strip_prefix("cdn/") {
            let Some(f) = self.files.iter().find(|f| f.sha256 == sha) else {
                return reply(&mut conn, 404, &[], b"");
            };
            return self.body(req, f, &mut conn, vec![]);
        }
        // {org}/{name}/resolve/{rev}/{file}
        let segs: Vec<&str> = p.splitn(5, '/').collect();
        let [o, n, "resolve", rev, file] = segs.as_slice() else {
            return reply(&mut conn, 404, &[], b"");
        };
        if let Err((code, err)) = self.known(&format!("{o}/{n}"), req, true) {
            return reply(&mut conn, code, &[("X-Error-Code", err.into())], b"");
        }
        let Some(f) = self.files.iter().find(|f| f.name == *file) else {
            return reply(
                &mut conn,
                404,
                &[("X-Error-Code", "EntryNotFound".into())],
                b"",
            );
        };
        if *rev != "main" && *rev != self.commit {
            return reply(
                &mut conn,
                404,
                &[("X-Error-Code", "RevisionNotFound".into())],
                b"",
            );
        }
        let mut headers = vec![("X-Repo-Commit", self.commit.clone())];
        if f.lfs() {
            headers.push(("X-Linked-Etag", format!("\"{}\"", f.sha256)));
            headers.push(("X-Linked-Size", f.bytes.len().to_string()));
            headers.push(("ETag", format!("\"{}\"", f.git_sha1)));
            headers.push(("Location", format!("{}/cdn/{}", self.cdn, f.sha256)));
            return reply(&mut conn, 302, &headers, b"");
        }
        headers.push(("ETag", format!("\"{}\"", f.git_sha1)));
        self.body(req, f, &mut conn, headers)
    }

    /// The file's bytes, honouring Range, with an armed fault applied to a body request.
    fn body(
        &self,
        req: &Request,
        f: &HubFile,
        conn: &mut TcpStream,
        mut headers: Vec<(&'static str, String)>,
    ) -> std::io::Result<()> {
        let len = f.bytes.len() as u64;
        let (start, end) = match req.range.as_deref().and_then(parse_range) {
            Some((s, e)) => (s, e.unwrap_or(len - 1).min(len - 1)),
            None => (0, len - 1),
        };
        if start >= len {
            return reply(
                conn,
                416,
                &[("Content-Range", format!("bytes */{len}"))],
                b"",
            );
        }
        let status = if req.range.is_some() { 206 } else { 200 };
        if req.range.is_some() {
            headers.push(("Content-Range", format!("bytes {start}-{end}/{len}")));
        }
        headers.push(("Accept-Ranges", "bytes".into()));
        let mut body = f.bytes[start as usize..=end as usize].to_vec();
        // The metadata probe (`bytes=0-0`) never trips a fault; the download does.
        let probe = end == 0;
        let fault = (!probe && req.method == "GET")
            .then(|| self.take_fault(&f.name))
            .flatten();
        if req.method == "HEAD" {
            return head(conn, status, &headers, body.len());
        }
        match fault {
            // A listing's fault; a body is served as it is.
            None | Some(Fault::EscapingEtags) => reply(conn, status, &headers, &body),
            Some(Fault::Status(code)) => reply(conn, code, &[], b""),
            Some(Fault::Damage) => {
                let mid = body.len() / 2;
                body[mid] ^= 0x5a;
                reply(conn, status, &headers, &body)
            }
            Some(Fault::Cut(n)) | Some(Fault::Stall(n)) => {
                let stall = matches!(fault, Some(Fault::Stall(_)));
                head(conn, status, &headers, body.len())?;
                conn.write_all(&body[..(n as usize).min(body.len())])?;
                conn.flush()?;
                if stall {
                    while !self.stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                conn.shutdown(std::net::Shutdown::Both)
            }
        }
    }
}

fn parse_range(v: &str) -> Option<(u64, Option<u64>)> {
    let (a, b) = v.strip_prefix("bytes=")?.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()))
}

fn head(
    conn: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    len: usize,
) -> std::io::Result<()> {
    let mut h = format!("HTTP/1.1 {status} X\r\nContent-Length: {len}\r\nConnection: close\r\n");
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    conn.write_all(h.as_bytes())
}

fn reply(
    conn: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    head(conn, status, headers, body.len())?;
    conn.write_all(body)?;
    conn.flush()?;
    // Read what is left of the request so closing does not reset the connection.
    let _ = conn.set_read_timeout(Some(Duration::from_millis(20)));
    let _ = conn.read(&mut [0u8; 1024]);
    Ok(())
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
