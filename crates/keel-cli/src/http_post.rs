//! Keel's one plain-HTTP client, for the two places `keel serve` posts JSON to a receiver of the
//! user's: alert webhooks and OTLP trace export. HTTP/1.1 over TCP, `http://` only, one request
//! per connection, each step bounded by a timeout; only the answer's status line is read.
//!
//! Errors name the host and port, never the path: a webhook's path is its secret.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// What is wrong with a URL's `host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorityProblem {
    /// `user:password@` in front of the host.
    Credentials,
    NoHost,
    /// The port is not a number up to 65535 (the text as written).
    BadPort(String),
    /// `[::1` without its `]`.
    UnclosedIpv6,
    /// Something other than `:PORT` after `[…]`.
    JunkAfterIpv6,
}

/// Splits `host[:port]` or `[ipv6][:port]`; the port is 80 when absent.
pub fn split_authority(authority: &str) -> Result<(String, u16), AuthorityProblem> {
    if authority.contains('@') {
        return Err(AuthorityProblem::Credentials);
    }
    let port_of = |port: &str| {
        port.parse::<u16>()
            .map_err(|_| AuthorityProblem::BadPort(port.to_string()))
    };
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((host, "")) => (host, 80),
            Some((host, rest)) => match rest.strip_prefix(':') {
                Some(port) => (host, port_of(port)?),
                None => return Err(AuthorityProblem::JunkAfterIpv6),
            },
            None => return Err(AuthorityProblem::UnclosedIpv6),
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, port_of(port)?),
            None => (authority, 80),
        },
    };
    if host.is_empty() {
        return Err(AuthorityProblem::NoHost);
    }
    Ok((host.to_string(), port))
}

/// One HTTP/1.1 POST of a JSON `body` to `path` on `host:port`, connecting, writing and reading
/// each bounded by `timeout`: the answer's status code. Blocking: call it off the runtime.
pub fn post_json(
    host: &str,
    port: u16,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<u16, String> {
    let addresses = (host, port)
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve {host}: {error}"))?;
    let mut last = format!("{host} resolves to no address");
    let mut stream = None;
    for address in addresses {
        match TcpStream::connect_timeout(&address, timeout) {
            Ok(connected) => {
                stream = Some(connected);
                break;
            }
            Err(error) => last = format!("cannot connect to {address}: {error}"),
        }
    }
    let mut stream = stream.ok_or(last)?;
    let io = |error: std::io::Error| format!("{error}");
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: keel\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).map_err(io)?;
    stream.write_all(body).map_err(io)?;
    // The status line is all that matters; it fits in the first bytes of the answer.
    let mut answer = Vec::new();
    let mut chunk = [0; 512];
    while !answer.contains(&b'\n') && answer.len() < 4096 {
        match stream.read(&mut chunk).map_err(io)? {
            0 => break,
            read => answer.extend_from_slice(&chunk[..read]),
        }
    }
    let status_line = String::from_utf8_lossy(&answer);
    status_line
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| "no HTTP answer".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split_into_host_and_port() {
        let split = |text: &str| split_authority(text);
        assert_eq!(split("relay"), Ok(("relay".into(), 80)));
        assert_eq!(split("127.0.0.1:9093"), Ok(("127.0.0.1".into(), 9093)));
        assert_eq!(split("[::1]"), Ok(("::1".into(), 80)));
        assert_eq!(split("[::1]:4318"), Ok(("::1".into(), 4318)));
        assert_eq!(split("u:p@host"), Err(AuthorityProblem::Credentials));
        assert_eq!(split(":80"), Err(AuthorityProblem::NoHost));
        assert_eq!(split(""), Err(AuthorityProblem::NoHost));
        assert_eq!(
            split("host:99999"),
            Err(AuthorityProblem::BadPort("99999".into()))
        );
        assert_eq!(split("[::1"), Err(AuthorityProblem::UnclosedIpv6));
        assert_eq!(split("[::1]x"), Err(AuthorityProblem::JunkAfterIpv6));
    }

    /// A real answer from a loopback server: the request it saw, and the status read back.
    #[test]
    fn a_post_sends_the_json_and_reads_the_status() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut connection, _) = listener.accept().unwrap();
            let mut seen = Vec::new();
            let mut chunk = [0; 1024];
            while !String::from_utf8_lossy(&seen).contains("{\"a\":1}") {
                let read = connection.read(&mut chunk).unwrap();
                seen.extend_from_slice(&chunk[..read]);
            }
            connection
                .write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
            String::from_utf8(seen).unwrap()
        });
        let status = post_json(
            "127.0.0.1",
            port,
            "/hook?x=1",
            b"{\"a\":1}",
            Duration::from_secs(5),
        );
        assert_eq!(status, Ok(202));
        let seen = server.join().unwrap();
        assert!(seen.starts_with("POST /hook?x=1 HTTP/1.1\r\n"), "{seen}");
        assert!(
            seen.contains("Content-Type: application/json\r\n"),
            "{seen}"
        );
        assert!(seen.contains("Content-Length: 7\r\n"), "{seen}");
    }

    #[test]
    fn a_refused_connection_names_the_address_not_the_path() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let error =
            post_json("127.0.0.1", port, "/SECRET", b"{}", Duration::from_secs(2)).unwrap_err();
        assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");
        assert!(!error.contains("SECRET"), "{error}");
    }
}
