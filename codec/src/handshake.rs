//! The opening handshake (RFC 6455 §4): HTTP/1.1 upgrade requests and responses.
//!
//! The server side parses any HTTP/1.1 request head (so a server can also answer plain
//! HTTP such as `/metrics` on the same port), then [`validate_upgrade`] checks it as a
//! WebSocket upgrade. The client side builds a request and checks the `101` answer.

use std::fmt::Write as _;
use std::ops::Range;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use sha1::{Digest, Sha1};

/// The GUID appended to the client's key before hashing (RFC 6455 §1.3).
pub const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The largest request or response head accepted, in bytes.
pub const MAX_HEAD_LEN: usize = 8 * 1024;

/// The most header fields accepted in one head.
pub const MAX_HEADERS: usize = 64;

/// Computes `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
///
/// ```
/// // RFC 6455 §1.3
/// assert_eq!(ringcast_codec::handshake::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
/// ```
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WEBSOCKET_GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// Why a request could not be accepted as a WebSocket upgrade, with the HTTP status that
/// reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The bytes are not an HTTP/1.x request head.
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    /// The head exceeded [`MAX_HEAD_LEN`] bytes or [`MAX_HEADERS`] fields.
    #[error("request head too large")]
    HeadTooLarge,
    /// The method was not GET.
    #[error("method {0} not allowed for a WebSocket upgrade")]
    MethodNotAllowed(String),
    /// The request was HTTP/1.0.
    #[error("HTTP/1.1 or later is required")]
    HttpVersion,
    /// No `Host` header.
    #[error("missing Host header")]
    MissingHost,
    /// `Upgrade` does not list `websocket`.
    #[error("Upgrade header does not name websocket")]
    NotUpgrade,
    /// `Connection` does not list `Upgrade`.
    #[error("Connection header does not list Upgrade")]
    NoConnectionUpgrade,
    /// `Sec-WebSocket-Key` is missing or not 16 bytes in base64.
    #[error("missing or malformed Sec-WebSocket-Key")]
    BadKey,
    /// `Sec-WebSocket-Version` is missing or not 13.
    #[error("unsupported Sec-WebSocket-Version {0:?}; this server speaks 13")]
    UnsupportedVersion(Option<String>),
}

impl HandshakeError {
    /// The HTTP status that reports this error.
    pub const fn status(&self) -> u16 {
        match self {
            HandshakeError::HeadTooLarge => 431,
            HandshakeError::MethodNotAllowed(_) => 405,
            HandshakeError::UnsupportedVersion(_) => 426,
            _ => 400,
        }
    }

    /// A complete HTTP error response for this error (closing the connection).
    pub fn response(&self) -> Vec<u8> {
        let extra = match self {
            HandshakeError::UnsupportedVersion(_) => "Sec-WebSocket-Version: 13\r\n",
            HandshakeError::MethodNotAllowed(_) => "Allow: GET\r\n",
            _ => "",
        };
        error_response(self.status(), extra, &self.to_string())
    }
}

/// A plain HTTP error response with `status`, optional extra header lines (each ending
/// in `\r\n`) and a text body; it asks the client to close the connection.
pub fn error_response(status: u16, extra_headers: &str, body: &str) -> Vec<u8> {
    let mut out = String::with_capacity(128 + body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n{body}",
        reason_phrase(status),
        body.len()
    );
    out.into_bytes()
}

/// The standard reason phrase for the statuses a WebSocket endpoint sends.
pub const fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A parsed HTTP/1.1 request head, stored compactly: the raw bytes, re-parsed on demand.
///
/// Kept for the life of a connection (so handlers can inspect it), hence the layout: one
/// buffer rather than a string per header.
#[derive(Clone)]
pub struct Request {
    raw: Bytes,
    method: Range<u16>,
    target: Range<u16>,
    minor_version: u8,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method())
            .field("target", &self.target())
            .field("headers", &self.headers().collect::<Vec<_>>())
            .finish()
    }
}

/// What [`Request::parse`] found.
#[derive(Debug)]
pub enum RequestParse {
    /// A whole head of `head_len` bytes; anything after it belongs to the next protocol
    /// (a request body, or WebSocket frames).
    Complete {
        /// The request.
        request: Request,
        /// The length of the head, including the blank line.
        head_len: usize,
    },
    /// The head is not complete yet.
    Incomplete,
}

impl Request {
    /// Parses a request head at the start of `buf`.
    pub fn parse(buf: &[u8]) -> Result<RequestParse, HandshakeError> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut fields);
        let head_len = match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_LEN => return Err(HandshakeError::HeadTooLarge),
            Ok(httparse::Status::Partial) => return Ok(RequestParse::Incomplete),
            Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::HeadTooLarge),
            Err(e) => return Err(HandshakeError::Malformed(e.to_string())),
        };
        if head_len > MAX_HEAD_LEN {
            return Err(HandshakeError::HeadTooLarge);
        }
        let base = buf.as_ptr() as usize;
        // httparse hands out subslices of `buf`; turn them back into offsets.
        let range = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            start as u16..(start + s.len()) as u16
        };
        let method = range(req.method.unwrap_or_default().as_bytes());
        let target = range(req.path.unwrap_or_default().as_bytes());
        let minor_version = req.version.unwrap_or(0);
        let raw = Bytes::copy_from_slice(&buf[..head_len]);
        Ok(RequestParse::Complete { request: Request { raw, method, target, minor_version }, head_len })
    }

    fn slice(&self, range: &Range<u16>) -> &[u8] {
        &self.raw[range.start as usize..range.end as usize]
    }

    fn text(&self, range: &Range<u16>) -> &str {
        // Method and target are ASCII tokens per httparse; fall back to "" otherwise.
        std::str::from_utf8(self.slice(range)).unwrap_or("")
    }

    /// The method, e.g. `GET`.
    pub fn method(&self) -> &str {
        self.text(&self.method)
    }

    /// The request target as sent: path plus query, e.g. `/chat?room=1`.
    pub fn target(&self) -> &str {
        self.text(&self.target)
    }

    /// The path without the query string.
    pub fn path(&self) -> &str {
        let target = self.target();
        target.split_once('?').map_or(target, |(path, _)| path)
    }

    /// The query string without `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.target().split_once('?').map(|(_, q)| q)
    }

    /// The value of the query parameter `name` (no percent-decoding).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }

    /// The HTTP minor version: 1 for HTTP/1.1.
    pub fn minor_version(&self) -> u8 {
        self.minor_version
    }

    /// Every header as (name, raw value), in order.
    ///
    /// The head is kept as raw bytes (one allocation per connection) and parsed again on
    /// demand: header lookups happen around the handshake, while idle connections are
    /// the common case and must stay small.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut fields);
        // The bytes parsed successfully once; they are immutable.
        let headers: Vec<(&str, &[u8])> = match request.parse(&self.raw) {
            Ok(_) => request.headers.iter().map(|h| (h.name, h.value)).collect(),
            Err(_) => Vec::new(),
        };
        headers.into_iter()
    }

    /// The first header named `name` (case-insensitive), as text if it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_bytes(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The first header named `name` (case-insensitive), raw.
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.headers().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// Whether any header named `name` lists `token` in its comma-separated value
    /// (case-insensitive), as `Connection: keep-alive, Upgrade` does.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .any(|(_, v)| v.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes())))
    }

    /// The `Origin` header, if any.
    pub fn origin(&self) -> Option<&str> {
        self.header("origin")
    }

    /// The `Host` header, if any.
    pub fn host(&self) -> Option<&str> {
        self.header("host")
    }

    /// Whether the client is attempting a WebSocket upgrade at all (as opposed to a plain
    /// HTTP request such as `GET /metrics`): it sent `Upgrade: websocket` or a
    /// `Sec-WebSocket-Key`. An upgrade to another protocol (`Upgrade: h2c`) is plain HTTP
    /// to us: RFC 9110 §7.8 lets a server ignore an upgrade it does not speak.
    pub fn wants_upgrade(&self) -> bool {
        self.has_token("upgrade", "websocket") || self.header_bytes("sec-websocket-key").is_some()
    }

    /// The subprotocols the client offers, in order of preference.
    pub fn protocols(&self) -> impl Iterator<Item = &str> {
        self.headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-protocol"))
            .flat_map(|(_, v)| std::str::from_utf8(v).unwrap_or("").split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
    }

    /// The raw request head.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }
}

/// Which checks [`validate_upgrade`] may skip.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpgradeChecks {
    /// Accept requests without `Upgrade: websocket` / `Connection: Upgrade`.
    pub skip_upgrade_check: bool,
    /// Accept any (or no) `Sec-WebSocket-Version`.
    pub skip_version_check: bool,
}

/// Checks `request` as a WebSocket upgrade (RFC 6455 §4.2.1) and returns the
/// `Sec-WebSocket-Accept` value to answer with.
pub fn validate_upgrade(request: &Request, checks: UpgradeChecks) -> Result<String, HandshakeError> {
    if request.method() != "GET" {
        return Err(HandshakeError::MethodNotAllowed(request.method().to_owned()));
    }
    if request.minor_version() < 1 {
        return Err(HandshakeError::HttpVersion);
    }
    if request.host().is_none_or(str::is_empty) {
        return Err(HandshakeError::MissingHost);
    }
    if !checks.skip_upgrade_check {
        if !request.has_token("upgrade", "websocket") {
            return Err(HandshakeError::NotUpgrade);
        }
        if !request.has_token("connection", "upgrade") {
            return Err(HandshakeError::NoConnectionUpgrade);
        }
    }
    let key = request.header_bytes("sec-websocket-key").map(<[u8]>::trim_ascii).ok_or(HandshakeError::BadKey)?;
    match BASE64.decode(key) {
        Ok(nonce) if nonce.len() == 16 => {}
        _ => return Err(HandshakeError::BadKey),
    }
    if !checks.skip_version_check {
        let version = request.header("sec-websocket-version").map(str::trim);
        if version != Some("13") {
            return Err(HandshakeError::UnsupportedVersion(version.map(str::to_owned)));
        }
    }
    Ok(accept_key(key))
}

/// Builds the `101 Switching Protocols` response, with an optional subprotocol and extra
/// header lines (each ending in `\r\n`).
pub fn accept_response(accept: &str, protocol: Option<&str>, extra_headers: &str) -> Vec<u8> {
    let mut out = String::with_capacity(160 + extra_headers.len());
    out.push_str(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.push_str(accept);
    out.push_str("\r\n");
    if let Some(protocol) = protocol {
        let _ = write!(out, "Sec-WebSocket-Protocol: {protocol}\r\n");
    }
    out.push_str(extra_headers);
    out.push_str("\r\n");
    out.into_bytes()
}

/// A client's opening handshake: the request to send and the accept key to expect.
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    request: Vec<u8>,
    expected_accept: String,
}

/// Settings for a client's upgrade request.
#[derive(Debug, Clone, Default)]
pub struct ClientRequest<'a> {
    /// Host name (or address) of the server, sent in `Host`.
    pub host: &'a str,
    /// Port; omitted from `Host` when it is the scheme's default.
    pub port: u16,
    /// Whether the connection is wss (default port 443 instead of 80).
    pub secure: bool,
    /// Request target, e.g. `/chat?room=1`; empty means `/`.
    pub path: &'a str,
    /// `Origin` header, if any.
    pub origin: Option<&'a str>,
    /// Subprotocols to offer.
    pub protocols: &'a [&'a str],
    /// Extra header fields.
    pub headers: &'a [(&'a str, &'a str)],
}

/// A client request setting that cannot be sent as-is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidRequest {
    /// The host is empty or contains characters not allowed in a `Host` header.
    #[error("invalid host {0:?}")]
    Host(String),
    /// The path does not start with `/` or contains spaces or control characters.
    #[error("invalid request path {0:?}: it must start with '/' and contain no spaces or control characters")]
    Path(String),
    /// A header name is not an HTTP token.
    #[error("invalid header name {0:?}")]
    HeaderName(String),
    /// A header value (or the origin) contains CR, LF or NUL.
    #[error("invalid value for header {0:?}: CR, LF and NUL are not allowed")]
    HeaderValue(String),
    /// A subprotocol is not an HTTP token.
    #[error("invalid subprotocol {0:?}")]
    Protocol(String),
}

/// RFC 9110 `tchar`.
fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_field_value(text: &str) -> bool {
    !text.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

impl ClientRequest<'_> {
    fn validate(&self) -> Result<(), InvalidRequest> {
        let host_ok = !self.host.is_empty()
            && (self.host.parse::<std::net::Ipv6Addr>().is_ok()
                || self.host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b)));
        if !host_ok {
            return Err(InvalidRequest::Host(self.host.to_owned()));
        }
        if !self.path.is_empty() && (!self.path.starts_with('/') || self.path.bytes().any(|b| b <= b' ' || b == 0x7f)) {
            return Err(InvalidRequest::Path(self.path.to_owned()));
        }
        if let Some(origin) = self.origin
            && !is_field_value(origin)
        {
            return Err(InvalidRequest::HeaderValue("Origin".to_owned()));
        }
        if let Some(protocol) = self.protocols.iter().find(|p| !is_token(p)) {
            return Err(InvalidRequest::Protocol((*protocol).to_owned()));
        }
        for (name, value) in self.headers {
            if !is_token(name) {
                return Err(InvalidRequest::HeaderName((*name).to_owned()));
            }
            if !is_field_value(value) {
                return Err(InvalidRequest::HeaderValue((*name).to_owned()));
            }
        }
        Ok(())
    }
}

/// Why a server's answer to the opening handshake was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientHandshakeError {
    /// The answer is not an HTTP/1.1 response head.
    #[error("malformed HTTP response: {0}")]
    Malformed(String),
    /// The head exceeded [`MAX_HEAD_LEN`] bytes or [`MAX_HEADERS`] fields.
    #[error("response head too large")]
    HeadTooLarge,
    /// The server answered with a status other than 101.
    #[error("server refused the upgrade with HTTP {status}")]
    Refused {
        /// The HTTP status code.
        status: u16,
    },
    /// The 101 lacked `Upgrade: websocket` or `Connection: Upgrade`.
    #[error("101 response without Upgrade: websocket / Connection: Upgrade")]
    NotUpgraded,
    /// `Sec-WebSocket-Accept` was missing or did not match the key.
    #[error("Sec-WebSocket-Accept does not match the key sent")]
    BadAccept,
}

/// A server's successful `101` response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Header fields as (name, value).
    pub headers: Vec<(String, String)>,
    /// The subprotocol the server chose, if any.
    pub protocol: Option<String>,
}

impl ClientHandshake {
    /// Builds a request around `nonce`, which must be 16 random bytes fresh for this
    /// connection (the caller owns the random source; the codec does no I/O).
    ///
    /// # Errors
    /// A host, path, header, origin or subprotocol that would break the request line or
    /// inject header lines (CR, LF, spaces where they are not allowed, non-token names).
    pub fn new(request: &ClientRequest<'_>, nonce: [u8; 16]) -> Result<Self, InvalidRequest> {
        request.validate()?;
        let key = BASE64.encode(nonce);
        let default_port = if request.secure { 443 } else { 80 };
        let host = if request.host.parse::<std::net::Ipv6Addr>().is_ok() {
            format!("[{}]", request.host)
        } else {
            request.host.to_owned()
        };
        let path = if request.path.is_empty() { "/" } else { request.path };
        let mut out = String::with_capacity(256);
        let _ = write!(out, "GET {path} HTTP/1.1\r\nHost: {host}");
        if request.port != default_port {
            let _ = write!(out, ":{}", request.port);
        }
        let _ = write!(
            out,
            "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        );
        if let Some(origin) = request.origin {
            let _ = write!(out, "Origin: {origin}\r\n");
        }
        if !request.protocols.is_empty() {
            let _ = write!(out, "Sec-WebSocket-Protocol: {}\r\n", request.protocols.join(", "));
        }
        for (name, value) in request.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        out.push_str("\r\n");
        Ok(ClientHandshake { expected_accept: accept_key(key.as_bytes()), request: out.into_bytes() })
    }

    /// The request bytes to send.
    pub fn request(&self) -> &[u8] {
        &self.request
    }

    /// Parses and checks the server's answer at the start of `buf`. `Ok(None)` means the
    /// head is incomplete; `Ok(Some((response, head_len)))` means the upgrade succeeded
    /// and WebSocket frames start at `head_len`.
    pub fn parse_response(&self, buf: &[u8]) -> Result<Option<(Response, usize)>, ClientHandshakeError> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut fields);
        let head_len = match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) if n > MAX_HEAD_LEN => return Err(ClientHandshakeError::HeadTooLarge),
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_LEN => {
                return Err(ClientHandshakeError::HeadTooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(ClientHandshakeError::HeadTooLarge),
            Err(e) => return Err(ClientHandshakeError::Malformed(e.to_string())),
        };
        let status = resp.code.unwrap_or(0);
        if status != 101 {
            return Err(ClientHandshakeError::Refused { status });
        }
        let headers: Vec<(String, String)> =
            resp.headers.iter().map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned())).collect();
        let find = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        let lists = |name: &str, token: &str| {
            headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        };
        if !lists("upgrade", "websocket") || !lists("connection", "upgrade") {
            return Err(ClientHandshakeError::NotUpgraded);
        }
        if find("sec-websocket-accept").map(str::trim) != Some(self.expected_accept.as_str()) {
            return Err(ClientHandshakeError::BadAccept);
        }
        let protocol = find("sec-websocket-protocol").map(str::to_owned);
        Ok(Some((Response { headers, protocol }, head_len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\n\
Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn parse(buf: &[u8]) -> Request {
        match Request::parse(buf).unwrap() {
            RequestParse::Complete { request, head_len } => {
                assert_eq!(head_len, buf.len());
                request
            }
            RequestParse::Incomplete => panic!("incomplete"),
        }
    }

    fn with_headers(lines: &str) -> Request {
        parse(format!("GET /x?a=1&b HTTP/1.1\r\n{lines}\r\n").as_bytes())
    }

    const GOOD: &str = "Host: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

    #[test]
    fn rfc_section_1_3_handshake() {
        let request = parse(RFC_REQUEST);
        assert_eq!(request.path(), "/chat");
        assert_eq!(request.origin(), Some("http://example.com"));
        assert_eq!(request.protocols().collect::<Vec<_>>(), ["chat", "superchat"]);
        let accept = validate_upgrade(&request, UpgradeChecks::default()).unwrap();
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let response = accept_response(&accept, Some("chat"), "");
        assert_eq!(
            response,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
        );
    }

    #[test]
    fn incomplete_heads_wait_and_oversized_heads_fail() {
        for cut in 0..RFC_REQUEST.len() {
            assert!(matches!(Request::parse(&RFC_REQUEST[..cut]), Ok(RequestParse::Incomplete)), "cut {cut}");
        }
        let huge = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD_LEN));
        assert_eq!(Request::parse(huge.as_bytes()).unwrap_err(), HandshakeError::HeadTooLarge);
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(MAX_HEADERS + 1));
        assert_eq!(Request::parse(many.as_bytes()).unwrap_err().status(), 431);
        assert_eq!(Request::parse(b"\x16\x03\x01\x02\x00").unwrap_err().status(), 400); // a TLS hello
    }

    #[test]
    fn tokens_are_case_insensitive_comma_lists() {
        let request = with_headers(
            "Host: h\r\nupgrade: WebSocket\r\nCONNECTION: keep-alive, upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n",
        );
        assert!(validate_upgrade(&request, UpgradeChecks::default()).is_ok());
        assert_eq!(request.query_param("a"), Some("1"));
        assert_eq!(request.query_param("b"), Some(""));
        assert_eq!(request.query_param("c"), None);
    }

    #[test]
    fn each_check_fails_with_its_status() {
        let check = |lines: &str| validate_upgrade(&with_headers(lines), UpgradeChecks::default());
        assert_eq!(check(&GOOD.replace("Host: h\r\n", "")).unwrap_err(), HandshakeError::MissingHost);
        assert_eq!(check(&GOOD.replace("websocket", "h2c")).unwrap_err(), HandshakeError::NotUpgrade);
        assert_eq!(check(&GOOD.replace("Connection: Upgrade", "Connection: close")).unwrap_err().status(), 400);
        assert_eq!(check(&GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=")).unwrap_err(), HandshakeError::BadKey);
        let version = check(&GOOD.replace(": 13", ": 8")).unwrap_err();
        assert_eq!(version, HandshakeError::UnsupportedVersion(Some("8".into())));
        assert_eq!(version.status(), 426);
        let response = String::from_utf8(version.response()).unwrap();
        assert!(response.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{response}");
        assert!(response.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{response}");
        let post = parse(format!("POST / HTTP/1.1\r\n{GOOD}\r\n").as_bytes());
        assert_eq!(validate_upgrade(&post, UpgradeChecks::default()).unwrap_err().status(), 405);
        let old = parse(format!("GET / HTTP/1.0\r\n{GOOD}\r\n").as_bytes());
        assert_eq!(validate_upgrade(&old, UpgradeChecks::default()).unwrap_err(), HandshakeError::HttpVersion);
    }

    #[test]
    fn skip_options_turn_checks_off() {
        let no_upgrade = with_headers(&GOOD.replace("Upgrade: websocket\r\nConnection: Upgrade\r\n", ""));
        let skip_upgrade = UpgradeChecks { skip_upgrade_check: true, ..Default::default() };
        assert_eq!(validate_upgrade(&no_upgrade, UpgradeChecks::default()).unwrap_err(), HandshakeError::NotUpgrade);
        assert!(validate_upgrade(&no_upgrade, skip_upgrade).is_ok());
        let old_version = with_headers(&GOOD.replace(": 13", ": 8"));
        let skip_version = UpgradeChecks { skip_version_check: true, ..Default::default() };
        assert!(validate_upgrade(&old_version, skip_version).is_ok());
    }

    #[test]
    fn plain_http_is_told_apart_from_upgrades() {
        let metrics = parse(b"GET /metrics HTTP/1.1\r\nHost: h\r\n\r\n");
        assert!(!metrics.wants_upgrade());
        let h2c = parse(b"GET /metrics HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n");
        assert!(!h2c.wants_upgrade());
        assert!(with_headers(GOOD).wants_upgrade());
    }

    #[test]
    fn client_handshake_round_trip() {
        let handshake = ClientHandshake::new(
            &ClientRequest {
                host: "example.com",
                port: 8888,
                path: "/chat",
                origin: Some("http://example.com"),
                headers: &[("X-Token", "t")],
                ..Default::default()
            },
            *b"the sample nonce",
        )
        .unwrap();
        let request = parse(handshake.request());
        assert_eq!(request.host(), Some("example.com:8888"));
        assert_eq!(request.header("x-token"), Some("t"));
        assert_eq!(request.origin(), Some("http://example.com"));
        let accept = validate_upgrade(&request, UpgradeChecks::default()).unwrap();
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let mut answer = accept_response(&accept, None, "");
        answer.extend_from_slice(b"\x81\x00");
        let (_, head_len) = handshake.parse_response(&answer).unwrap().unwrap();
        assert_eq!(&answer[head_len..], b"\x81\x00");
        assert_eq!(handshake.parse_response(&answer[..20]), Ok(None));
        let wrong = accept_response("AAAAAAAAAAAAAAAAAAAAAAAAAAA=", None, "");
        assert_eq!(handshake.parse_response(&wrong), Err(ClientHandshakeError::BadAccept));
        assert_eq!(
            handshake.parse_response(&HandshakeError::BadKey.response()),
            Err(ClientHandshakeError::Refused { status: 400 })
        );
        let plain =
            ClientHandshake::new(&ClientRequest { host: "::1", port: 80, ..Default::default() }, [0; 16]).unwrap();
        assert!(String::from_utf8_lossy(plain.request()).contains("Host: [::1]\r\n"));
        // Oversized heads are refused however the bytes arrive.
        let padded =
            accept_response("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", None, &format!("X-Pad: {}\r\n", "a".repeat(10_000)));
        assert_eq!(handshake.parse_response(&padded), Err(ClientHandshakeError::HeadTooLarge));
    }

    #[test]
    fn client_requests_cannot_inject_headers() {
        let base = ClientRequest { host: "example.com", port: 80, ..Default::default() };
        let build = |request: ClientRequest<'_>| ClientHandshake::new(&request, [0; 16]).map(|_| ());
        assert_eq!(
            build(ClientRequest { host: "h\r\nX-Injected: 1", ..base.clone() }),
            Err(InvalidRequest::Host("h\r\nX-Injected: 1".into()))
        );
        assert!(matches!(build(ClientRequest { path: "/a b", ..base.clone() }), Err(InvalidRequest::Path(_))));
        assert!(matches!(build(ClientRequest { path: "no-slash", ..base.clone() }), Err(InvalidRequest::Path(_))));
        assert!(matches!(
            build(ClientRequest { headers: &[("X\r\nY", "v")], ..base.clone() }),
            Err(InvalidRequest::HeaderName(_))
        ));
        assert!(matches!(
            build(ClientRequest { headers: &[("X", "v\r\nY: z")], ..base.clone() }),
            Err(InvalidRequest::HeaderValue(_))
        ));
        assert!(matches!(
            build(ClientRequest { origin: Some("o\n"), ..base.clone() }),
            Err(InvalidRequest::HeaderValue(_))
        ));
        assert!(matches!(
            build(ClientRequest { protocols: &["a b"], ..base.clone() }),
            Err(InvalidRequest::Protocol(_))
        ));
        // A name with a colon is not an IPv6 literal: it is refused, not bracketed.
        assert!(matches!(
            build(ClientRequest { host: "example.com:8080", ..base.clone() }),
            Err(InvalidRequest::Host(_))
        ));
        assert!(build(ClientRequest { path: "/chat?room=a%20b", headers: &[("X-Token", "t t")], ..base }).is_ok());
    }
}
