//! Just enough HTTP/1.1 for the feed and its client: `Content-Length` bodies, keep-alive, and
//! loopback addresses only. No TLS, no chunking, no redirects.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

const MAX_LINE: usize = 8 * 1024;
const MAX_HEADERS: usize = 100;
const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// HTTP/1.1 keeps the connection open unless the client says otherwise.
    pub fn keep_alive(&self) -> bool {
        !self
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

impl Response {
    pub fn json(status: u16, body: &serde_json::Value) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn json_body(&self) -> Result<serde_json::Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("the feed sent invalid JSON: {e}"))
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads one CRLF- (or LF-) terminated line, refusing lines longer than [`MAX_LINE`].
/// `Ok(None)` means the peer closed the connection before sending anything.
fn read_line(r: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(bad(if n > MAX_LINE {
            "line too long"
        } else {
            "connection closed mid-line"
        }));
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| bad("line is not UTF-8"))
}

fn read_headers(r: &mut impl BufRead) -> io::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)?.ok_or_else(|| bad("connection closed in headers"))?;
        if line.is_empty() {
            return Ok(headers);
        }
        if headers.len() >= MAX_HEADERS {
            return Err(bad("too many headers"));
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| bad("malformed header"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
}

fn read_body(r: &mut impl BufRead, headers: &[(String, String)]) -> io::Result<Vec<u8>> {
    let Some(len) = header(headers, "content-length") else {
        return Ok(Vec::new());
    };
    let len: usize = len.parse().map_err(|_| bad("bad Content-Length"))?;
    if len > MAX_BODY {
        return Err(bad("body too large"));
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(body)
}

/// Reads one request; `Ok(None)` when the client closed an idle connection.
pub fn read_request(r: &mut impl BufRead) -> io::Result<Option<Request>> {
    let Some(line) = read_line(r)? else {
        return Ok(None);
    };
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad("only HTTP/1.x is spoken here"));
    }
    let headers = read_headers(r)?;
    if header(&headers, "transfer-encoding").is_some() {
        return Err(bad("chunked bodies are not supported"));
    }
    let body = read_body(r, &headers)?;
    Ok(Some(Request {
        method: method.to_string(),
        path: path.to_string(),
        headers,
        body,
    }))
}

pub fn write_response(w: &mut impl Write, resp: &Response, keep_alive: bool) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    head.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    let mut out = head.into_bytes();
    out.extend_from_slice(&resp.body);
    w.write_all(&out)?;
    w.flush()
}

/// Parses `http://HOST:PORT` (or `HOST:PORT`) and refuses anything that is not loopback.
pub fn loopback_addr(url: &str) -> Result<SocketAddr, String> {
    let rest = url.trim().trim_end_matches('/');
    let rest = rest.strip_prefix("http://").unwrap_or(rest);
    if rest.contains("://") {
        return Err(format!("{url:?}: only http:// is supported"));
    }
    let addrs: Vec<SocketAddr> = rest
        .to_socket_addrs()
        .map_err(|e| format!("{url:?}: expected http://127.0.0.1:PORT ({e})"))?
        .collect();
    let first = *addrs
        .first()
        .ok_or_else(|| format!("{url:?}: resolves to no address"))?;
    if addrs.iter().any(|a| !a.ip().is_loopback()) {
        return Err(format!(
            "{url:?}: hoops only talks to loopback addresses (127.0.0.1, ::1)"
        ));
    }
    Ok(first)
}

/// One pooled HTTP/1.1 client: a single keep-alive connection that is reused for every request
/// and re-opened once if the server closed it while idle.
pub struct Client {
    addr: SocketAddr,
    timeout: Duration,
    conn: Option<BufReader<TcpStream>>,
    /// How many TCP connections were opened (1 when keep-alive worked throughout).
    pub connects: u32,
    pub requests: u32,
}

impl Client {
    pub fn new(url: &str, timeout: Duration) -> Result<Client, String> {
        Ok(Client {
            addr: loopback_addr(url)?,
            timeout,
            conn: None,
            connects: 0,
            requests: 0,
        })
    }

    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        self.request("GET", path, b"")
    }

    pub fn request(&mut self, method: &str, path: &str, body: &[u8]) -> io::Result<Response> {
        self.send(method, path, &[], body)
    }

    /// A request with headers of its own besides `Host`, `User-Agent`, `Accept` and
    /// `Content-Length`.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        self.requests += 1;
        if self.conn.is_some() {
            // A reused connection may have been closed by the server while idle: try once more
            // on a fresh one. Requests here are idempotent reads or whole-value writes.
            match self.exchange(method, path, headers, body) {
                Ok(resp) => return Ok(resp),
                Err(e) if stale_connection(&e) => self.conn = None,
                Err(e) => return Err(e),
            }
        }
        self.exchange(method, path, headers, body)
    }

    fn exchange(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        if self.conn.is_none() {
            let stream = TcpStream::connect_timeout(&self.addr, self.timeout)?;
            stream.set_read_timeout(Some(self.timeout))?;
            stream.set_write_timeout(Some(self.timeout))?;
            stream.set_nodelay(true)?;
            self.connects += 1;
            self.conn = Some(BufReader::new(stream));
        }
        let conn = self.conn.as_mut().expect("connected above");
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: hoops\r\nAccept: application/json\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        let result = (|| {
            conn.get_mut().write_all(&req)?;
            conn.get_mut().flush()?;
            let line = read_line(conn)?
                .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"))?;
            let mut parts = line.splitn(3, ' ');
            let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
                return Err(bad("malformed status line"));
            };
            if !version.starts_with("HTTP/1.") {
                return Err(bad("not an HTTP/1.x response"));
            }
            let status: u16 = code.parse().map_err(|_| bad("malformed status code"))?;
            let headers = read_headers(conn)?;
            let body = if header(&headers, "content-length").is_some() {
                read_body(conn, &headers)?
            } else {
                let mut body = Vec::new();
                conn.by_ref().take(MAX_BODY as u64).read_to_end(&mut body)?;
                body
            };
            Ok(Response {
                status,
                headers,
                body,
            })
        })();
        match result {
            Ok(resp) => {
                let close = resp
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                    || resp.header("content-length").is_none();
                if close {
                    self.conn = None;
                }
                Ok(resp)
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}

/// Errors that mean the server had closed an idle keep-alive connection, so the request never
/// reached it and can be sent again.
fn stale_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// A loopback server's accept thread and its shutdown flag, shared by the feed and the
/// service: stopped when asked or dropped.
pub struct Listening {
    addr: std::net::SocketAddr,
    shutdown: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Listening {
    /// Binds `addr` (loopback only; port 0 picks a free port) and serves each connection on a
    /// thread of its own with `serve` (given the shutdown flag, so it stops keeping connections
    /// alive), until stopped. `name` names the threads.
    pub fn start(
        addr: &str,
        name: &str,
        serve: impl Fn(std::net::TcpStream, &std::sync::atomic::AtomicBool) + Send + Sync + 'static,
    ) -> std::io::Result<Listening> {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let addr = loopback_addr(addr)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let listener = std::net::TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let shutdown = Arc::new(AtomicBool::new(false));
        let flag = shutdown.clone();
        let serve = Arc::new(serve);
        let (accept_name, connection_name) = (format!("{name}-accept"), format!("{name}-conn"));
        let accept = std::thread::Builder::new()
            .name(accept_name)
            .spawn(move || {
                for stream in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (serve, flag) = (serve.clone(), flag.clone());
                    let spawned = std::thread::Builder::new()
                        .name(connection_name.clone())
                        .spawn(move || serve(stream, &flag));
                    if let Err(e) = spawned {
                        eprintln!("{connection_name}: cannot start a connection thread: {e}");
                    }
                }
            })?;
        Ok(Listening {
            addr,
            shutdown,
            accept: Some(accept),
        })
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Blocks until the server is stopped (for a command that runs until killed).
    pub fn wait(mut self) {
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }

    pub fn stop(&mut self) {
        use std::sync::atomic::Ordering;
        if self.shutdown.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect_timeout(&self.addr, std::time::Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_request_with_a_body() {
        let raw = b"POST /control/faults HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n500=0.5GET / HTTP/1.1\r\n\r\n";
        let mut r = BufReader::new(&raw[..]);
        let req = read_request(&mut r).unwrap().unwrap();
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/control/faults");
        assert_eq!(req.body, b"500=0.5");
        assert!(req.keep_alive());
        let next = read_request(&mut r).unwrap().unwrap();
        assert_eq!(next.path, "/");
        assert!(read_request(&mut r).unwrap().is_none());
    }

    #[test]
    fn refuses_garbage() {
        for raw in [
            &b"NONSENSE\r\n\r\n"[..],
            b"GET / SPDY/3\r\n\r\n",
            b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
        ] {
            assert!(read_request(&mut BufReader::new(raw)).is_err());
        }
    }

    #[test]
    fn only_loopback() {
        assert!(loopback_addr("http://127.0.0.1:8080").is_ok());
        assert!(loopback_addr("127.0.0.1:8080/").is_ok());
        assert!(loopback_addr("http://[::1]:8080").is_ok());
        assert!(loopback_addr("http://10.0.0.1:8080").is_err());
        assert!(loopback_addr("https://127.0.0.1:8080").is_err());
        assert!(loopback_addr("http://127.0.0.1").is_err());
    }
}
