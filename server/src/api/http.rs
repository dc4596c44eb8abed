//! Plain HTTP on the WebSocket port: requests without upgrade headers.
//!
//! Enough HTTP/1.1 for operational endpoints (`/metrics`, `/healthz`, a status page,
//! `POST /publish`): one request per connection, a `Content-Length` body, and a response
//! with `Connection: close`.

use std::fmt::Write as _;
use std::net::SocketAddr;

use ringcast_codec::handshake::{Request, reason_phrase};

use crate::api::broadcaster::Broadcaster;

/// A plain HTTP request, passed to [`Handler::on_http`](crate::Handler::on_http).
pub struct HttpRequest<'a, D> {
    pub(crate) request: &'a Request,
    pub(crate) body: &'a [u8],
    pub(crate) peer: SocketAddr,
    pub(crate) broadcaster: &'a Broadcaster<D>,
}

impl<D> HttpRequest<'_, D> {
    /// The request head: method, target, headers.
    pub fn head(&self) -> &Request {
        self.request
    }

    /// The request body (empty without `Content-Length`).
    pub fn body(&self) -> &[u8] {
        self.body
    }

    /// The client's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// A handle to send to WebSocket connections, e.g. to publish the body.
    pub fn broadcaster(&self) -> &Broadcaster<D> {
        self.broadcaster
    }
}

/// A response to a plain HTTP request; the connection closes after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpResponse {
    /// An empty response with `status`.
    pub fn new(status: u16) -> Self {
        HttpResponse { status, headers: Vec::new(), body: Vec::new() }
    }

    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::new(status).header("Content-Type", "text/plain; charset=utf-8").body(body.into().into_bytes())
    }

    /// A `text/html` response.
    pub fn html(status: u16, body: impl Into<String>) -> Self {
        Self::new(status).header("Content-Type", "text/html; charset=utf-8").body(body.into().into_bytes())
    }

    /// An `application/json` response.
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Self::new(status).header("Content-Type", "application/json").body(body.into().into_bytes())
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The answer to a plain request the handler does not serve.
    pub(crate) fn upgrade_required() -> Self {
        Self::text(426, "this endpoint speaks WebSocket\n")
            .header("Upgrade", "websocket")
            .header("Connection", "Upgrade, close")
            .header("Sec-WebSocket-Version", "13")
    }

    /// The bytes on the wire.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut head = String::with_capacity(128);
        let _ = write!(head, "HTTP/1.1 {} {}\r\n", self.status, reason_phrase(self.status));
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        let _ = write!(head, "Content-Length: {}\r\n", self.body.len());
        // Every response ends its connection; a handler may name more options.
        if !self.headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("connection")) {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_encode_with_length_and_close() {
        let bytes = HttpResponse::text(200, "ok").header("X-A", "1").encode();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nX-A: 1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        );
        let upgrade = String::from_utf8(HttpResponse::upgrade_required().encode()).unwrap();
        assert!(upgrade.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(upgrade.contains("\r\nConnection: Upgrade, close\r\n"), "{upgrade}");
        assert_eq!(upgrade.matches("Connection:").count(), 1);
    }
}
