//! A small HTTP/1.1 server and client over `std::net`: keep-alive, `Content-Length` and chunked
//! request bodies, `Expect: 100-continue`, bounded header and body sizes, a thread per connection
//! with a cap on connections. Enough for the inference protocol on a device, with no framework.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Largest request line plus headers.
const MAX_HEAD: usize = 64 * 1024;

pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
        Response { status, content_type, headers: vec![], body }
    }
    pub fn json(status: u16, v: &serde_json::Value) -> Response {
        Response::new(status, "application/json", v.to_string().into_bytes())
    }
    /// An error in the protocol's shape: `{"error": "..."}`.
    pub fn error(status: u16, msg: impl Into<String>) -> Response {
        Response::json(status, &serde_json::json!({ "error": msg.into() }))
    }
}

/// Why no request could be read.
pub enum ReadError {
    /// The peer closed the connection between requests (or timed out idle).
    Closed,
    /// A malformed request: answer with this status and message, then close.
    Bad(u16, String),
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Reads one CRLF- (or LF-) terminated line of at most `budget` bytes, without the terminator.
fn read_line(r: &mut impl BufRead, budget: &mut usize) -> Result<Option<String>, ReadError> {
    let mut buf = Vec::new();
    let n = r
        .take(*budget as u64 + 1)
        .read_until(b'\n', &mut buf)
        // An idle timeout or a reset between requests ends the connection quietly.
        .map_err(|_| ReadError::Closed)?;
    if n == 0 {
        return Ok(None);
    }
    if n > *budget || buf.last() != Some(&b'\n') {
        if n > *budget {
            return Err(ReadError::Bad(431, "request head too large".into()));
        }
        return Err(ReadError::Bad(400, "connection closed inside the request head".into()));
    }
    *budget -= n;
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| ReadError::Bad(400, "request head is not UTF-8".into()))
}

fn bad(msg: &str) -> ReadError {
    ReadError::Bad(400, msg.into())
}

/// Reads the next request from a keep-alive connection. `w` receives `100 Continue` when asked.
pub fn read_request(
    r: &mut impl BufRead,
    w: &mut impl Write,
    max_body: usize,
) -> Result<Request, ReadError> {
    let mut budget = MAX_HEAD;
    // Tolerate blank lines between requests (RFC 9112 2.2).
    let line = loop {
        match read_line(r, &mut budget)? {
            None => return Err(ReadError::Closed),
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ReadError::Bad(505, format!("unsupported protocol {version}")));
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    let mut headers = vec![];
    loop {
        let Some(l) = read_line(r, &mut budget)? else {
            return Err(bad("connection closed inside the request head"));
        };
        if l.is_empty() {
            break;
        }
        let Some((k, v)) = l.split_once(':') else {
            return Err(bad("malformed header line"));
        };
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        if headers.len() > 100 {
            return Err(ReadError::Bad(431, "too many headers".into()));
        }
    }
    let mut req = Request { method: method.to_string(), path, headers, body: vec![] };
    if req.header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        let _ = w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").and_then(|_| w.flush());
    }
    let chunked =
        req.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        req.body = read_chunked(r, max_body)?;
    } else if let Some(len) = req.header("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad Content-Length"))?;
        if len > max_body {
            return Err(ReadError::Bad(413, format!("body of {len} bytes exceeds {max_body}")));
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).map_err(|_| bad("connection closed inside the body"))?;
        req.body = body;
    }
    Ok(req)
}

fn read_chunked(r: &mut impl BufRead, max_body: usize) -> Result<Vec<u8>, ReadError> {
    let mut body = vec![];
    loop {
        let mut budget = 1024;
        let line = read_line(r, &mut budget)?.ok_or_else(|| bad("connection closed in a chunk"))?;
        let size = line.split(';').next().unwrap_or("").trim();
        let n = usize::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
        if n == 0 {
            // Trailers, up to the blank line.
            let mut budget = MAX_HEAD;
            while let Some(l) = read_line(r, &mut budget)? {
                if l.is_empty() {
                    break;
                }
            }
            return Ok(body);
        }
        if body.len() + n > max_body {
            return Err(ReadError::Bad(413, format!("body exceeds {max_body} bytes")));
        }
        let at = body.len();
        body.resize(at + n, 0);
        r.read_exact(&mut body[at..]).map_err(|_| bad("connection closed in a chunk"))?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf).map_err(|_| bad("connection closed in a chunk"))?;
    }
}

/// Writes a response (head and body in one write).
pub fn write_response(w: &mut impl Write, resp: &Response, keep_alive: bool) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&resp.body);
    w.write_all(&out)?;
    w.flush()
}

/// Serves connections from `listener` until `stop` is set (then one more connection, e.g. from
/// [`wake`], ends the accept loop). Each connection gets a thread; past `max_conns` open
/// connections a new one is answered 503 and closed.
pub fn serve<H>(listener: TcpListener, handler: Arc<H>, stop: Arc<AtomicBool>, max_conns: usize)
where
    H: Fn(&Request) -> Response + Send + Sync + 'static,
{
    let open = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(mut stream) = conn else { continue };
        let _ = stream.set_nodelay(true);
        if open.load(Ordering::SeqCst) >= max_conns {
            let r = Response::error(503, format!("too many connections (limit {max_conns})"));
            let _ = write_response(&mut stream, &r, false);
            continue;
        }
        open.fetch_add(1, Ordering::SeqCst);
        let (h, open2) = (handler.clone(), open.clone());
        let spawned = std::thread::Builder::new().name("ember-http".into()).spawn(move || {
            connection(stream, &*h);
            open2.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            open.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Unblocks a [`serve`] loop whose `stop` flag was just set.
pub fn wake(addr: SocketAddr) {
    let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
}

/// Largest request body accepted (a batch of inputs).
pub const MAX_BODY: usize = 256 << 20;

fn connection(stream: TcpStream, handler: &(impl Fn(&Request) -> Response + ?Sized)) {
    // An idle keep-alive connection is closed after a while (bounds the threads left behind).
    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    let Ok(mut w) = stream.try_clone() else { return };
    let mut r = BufReader::with_capacity(64 * 1024, stream);
    loop {
        match read_request(&mut r, &mut w, MAX_BODY) {
            Ok(req) => {
                let close =
                    req.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
                let resp = handler(&req);
                if write_response(&mut w, &resp, !close).is_err() || close {
                    return;
                }
            }
            Err(ReadError::Closed) => return,
            Err(ReadError::Bad(status, msg)) => {
                let _ = write_response(&mut w, &Response::error(status, msg), false);
                return;
            }
        }
    }
}

/// A response read by [`read_response`].
pub struct ClientResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ClientResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Reads one response (Content-Length bodies; what [`write_response`] sends).
pub fn read_response(r: &mut impl BufRead) -> io::Result<ClientResponse> {
    let invalid = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let mut budget = MAX_HEAD;
    let line = loop {
        match read_line(r, &mut budget) {
            Ok(Some(l)) if l.is_empty() => continue,
            Ok(Some(l)) => break l,
            _ => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed")),
        }
    };
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("malformed status line"))?;
    let mut headers = vec![];
    loop {
        match read_line(r, &mut budget) {
            Ok(Some(l)) if l.is_empty() => break,
            Ok(Some(l)) => {
                let (k, v) = l.split_once(':').ok_or_else(|| invalid("malformed header"))?;
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
            _ => return Err(invalid("connection closed inside the response head")),
        }
    }
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(ClientResponse { status, headers, body })
}
