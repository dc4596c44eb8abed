//! Where to connect and how: [`ClientConfig`].

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ringcast_codec::deflate::ClientDeflateConfig;
use rustls::pki_types::CertificateDer;

use crate::error::Error;

/// Default limit on one incoming message (all fragments together): 16 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 << 20;

/// Everything needed to open a connection, built in the style of a builder.
///
/// ```
/// use std::time::Duration;
/// use ringcast_client::ClientConfig;
///
/// let config = ClientConfig::new("localhost", 8888)
///     .path("/chat?room=1")
///     .origin("https://example.com")
///     .header("Authorization", "Bearer t0k3n")
///     .connect_timeout(Duration::from_secs(3));
/// assert_eq!(config.url(), "ws://localhost:8888/chat?room=1");
///
/// // The same from a URL; wss:// turns TLS on and defaults the port to 443.
/// let secure: ClientConfig = "wss://example.com/feed".parse()?;
/// assert!(secure.is_tls());
/// assert_eq!((secure.host(), secure.port()), ("example.com", 443));
/// # Ok::<(), ringcast_client::Error>(())
/// ```
///
/// Cloning is cheap enough to do per connection, and clones share the TLS settings
/// (root certificates are loaded once, on the first `wss` connection, then reused).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) path: String,
    pub(crate) tls: bool,
    pub(crate) origin: Option<String>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) connect_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) max_message_size: usize,
    pub(crate) read_buffer_size: usize,
    pub(crate) send_queue: usize,
    pub(crate) receive_queue: usize,
    pub(crate) tls_options: TlsOptions,
    pub(crate) deflate: ClientDeflateConfig,
}

/// How the server's certificate is checked. Changing any of it drops the cached
/// `rustls` configuration.
#[derive(Debug, Clone)]
pub(crate) struct TlsOptions {
    pub(crate) platform_roots: bool,
    pub(crate) extra_root_files: Vec<PathBuf>,
    pub(crate) extra_roots: Vec<CertificateDer<'static>>,
    pub(crate) accept_invalid_certs: bool,
    pub(crate) custom: Option<Arc<rustls::ClientConfig>>,
    pub(crate) cache: Arc<OnceLock<Arc<rustls::ClientConfig>>>,
}

impl ClientConfig {
    /// A plain (`ws://`) connection to `host` (a name or an IP address; IPv6 without
    /// brackets) on `port`, path `/`, with default limits: 10 s to connect, 10 s for the
    /// TLS and WebSocket handshakes, 5 s for the closing handshake, 16 MiB messages.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        let mut host = host.into();
        if host.starts_with('[') && host.ends_with(']') {
            host = host[1..host.len() - 1].to_owned();
        }
        ClientConfig {
            host,
            port,
            path: "/".to_owned(),
            tls: false,
            origin: None,
            headers: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            read_buffer_size: 4096,
            send_queue: 256,
            receive_queue: 256,
            tls_options: TlsOptions {
                platform_roots: true,
                extra_root_files: Vec::new(),
                extra_roots: Vec::new(),
                accept_invalid_certs: false,
                custom: None,
                cache: Arc::default(),
            },
            deflate: ClientDeflateConfig::new(),
        }
    }

    /// Parses a `ws://` or `wss://` URL: `ws://host[:port][/path][?query]`. IPv6 hosts go
    /// in brackets. The port defaults to 80 (`ws`) or 443 (`wss`). User information and
    /// fragments are refused (RFC 6455 §3).
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::InvalidConfig(format!("{why} in URL {url:?}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let tls = if scheme.eq_ignore_ascii_case("ws") {
            false
        } else if scheme.eq_ignore_ascii_case("wss") {
            true
        } else {
            return Err(bad("scheme other than ws:// or wss://"));
        };
        if rest.contains('#') {
            return Err(bad("a fragment"));
        }
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        if authority.contains('@') {
            return Err(bad("user information"));
        }
        let (host, port) = if let Some(after) = authority.strip_prefix('[') {
            let (host, tail) = after.split_once(']').ok_or_else(|| bad("an unclosed '['"))?;
            match tail {
                "" => (host, None),
                _ => (host, Some(tail.strip_prefix(':').ok_or_else(|| bad("garbage after ']'"))?)),
            }
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None | Some("") => {
                if tls {
                    443
                } else {
                    80
                }
            }
            Some(port) => port.parse().map_err(|_| bad("an invalid port"))?,
        };
        let path = match target {
            "" => "/".to_owned(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_owned(),
        };
        Ok(ClientConfig::new(host, port).tls(tls).path(path))
    }

    /// The request target: a path, optionally with a query string (`/chat?room=1`).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        let path = path.into();
        self.path = if path.starts_with('/') { path } else { format!("/{path}") };
        self
    }

    /// Whether to speak TLS (`wss`). Does not change the port.
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// The `Origin` header, for servers that check where a connection comes from.
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// Adds a header to the upgrade request (`Authorization`, `Cookie`, ...). The headers
    /// the handshake manages itself (`Host`, `Upgrade`, `Connection`, `Origin`,
    /// `Sec-WebSocket-Key`, `Sec-WebSocket-Version`, and `Sec-WebSocket-Extensions`, which
    /// [`permessage_deflate`](Self::permessage_deflate) sets) are refused when connecting.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// permessage-deflate (RFC 7692): offered by default the way browsers offer it
    /// (`permessage-deflate; client_max_window_bits`), level 6, messages from 256 bytes
    /// compressed. `ClientDeflateConfig::new().enabled(false)` offers nothing.
    ///
    /// A server that declines gets an uncompressed connection; one that answers with
    /// parameters the client did not offer or ask for fails the handshake with
    /// [`Error::Extension`](crate::Error::Extension).
    ///
    /// ```
    /// use ringcast_client::{ClientConfig, ClientDeflateConfig};
    /// let config = ClientConfig::new("localhost", 8888)
    ///     .permessage_deflate(ClientDeflateConfig::new().request_server_no_context_takeover(true));
    /// # let _ = config;
    /// ```
    pub fn permessage_deflate(mut self, deflate: ClientDeflateConfig) -> Self {
        self.deflate = deflate;
        self
    }

    /// The limit on resolving the host name and opening the TCP connection (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The limit on the TLS handshake plus the HTTP upgrade (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How long to wait for the server to answer a close frame and end the connection
    /// before dropping it (default 5 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// The largest incoming message, all fragments together (default 16 MiB). A larger
    /// one fails the connection with close code 1009.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes.max(1);
        self
    }

    /// The size of each socket read (default 4 KiB; a larger frame gets a buffer of its
    /// own size). Smaller saves memory across many idle connections, larger saves system
    /// calls under a flood of small messages.
    pub fn read_buffer_size(mut self, bytes: usize) -> Self {
        self.read_buffer_size = bytes.clamp(256, 16 << 20);
        self
    }

    /// How many outgoing messages may wait for the socket before `send` waits (default 256).
    pub fn send_queue(mut self, messages: usize) -> Self {
        self.send_queue = messages.max(1);
        self
    }

    /// How many incoming messages may wait for the application before the client stops
    /// reading from the socket (default 256).
    pub fn receive_queue(mut self, messages: usize) -> Self {
        self.receive_queue = messages.max(1);
        self
    }

    /// Whether to trust the platform's root certificates (default `true`; loaded with
    /// `rustls-native-certs` once per process).
    pub fn platform_roots(mut self, on: bool) -> Self {
        self.tls_options.platform_roots = on;
        self.tls_changed()
    }

    /// Also trusts the certificates in this PEM file, for example a private CA or a test
    /// server's self-signed certificate. Read when the first `wss` connection is made.
    pub fn extra_root_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_options.extra_root_files.push(path.into());
        self.tls_changed()
    }

    /// Also trusts this DER-encoded certificate.
    pub fn extra_root_certificate(mut self, certificate: CertificateDer<'static>) -> Self {
        self.tls_options.extra_roots.push(certificate);
        self.tls_changed()
    }

    /// **Turns off certificate verification**: any certificate, for any name, self-signed
    /// or expired, is accepted. Only for test servers with throw-away certificates; a
    /// connection made this way can be intercepted by anyone on the path.
    pub fn danger_accept_invalid_certs(mut self) -> Self {
        self.tls_options.accept_invalid_certs = true;
        self.tls_changed()
    }

    /// Uses this `rustls` configuration as it is, instead of one built from the settings
    /// above (for client certificates, pinned roots, other protocol versions).
    pub fn rustls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls_options.custom = Some(config);
        self.tls_changed()
    }

    fn tls_changed(mut self) -> Self {
        self.tls_options.cache = Arc::default();
        self
    }

    /// The host name or address to connect to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The request target.
    pub fn request_path(&self) -> &str {
        &self.path
    }

    /// Whether the connection speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The configured limit on incoming messages.
    pub fn max_message_size_limit(&self) -> usize {
        self.max_message_size
    }

    /// The configuration as a URL, e.g. `wss://example.com:8443/chat`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        format!("{scheme}://{host}:{}{}", self.port, self.path)
    }

    /// Checks what can only be checked as a whole, before any network traffic.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let bad = |why: String| Err(Error::InvalidConfig(why));
        if self.host.is_empty()
            || self.host.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b"/?#@[]".contains(&b))
        {
            return bad(format!("invalid host {:?}", self.host));
        }
        if self.path.bytes().any(|b| b == b' ' || b.is_ascii_control() || b == b'#') {
            return bad(format!("invalid request path {:?}", self.path));
        }
        if let Some(origin) = &self.origin
            && !is_header_value(origin)
        {
            return bad(format!("invalid Origin {origin:?}"));
        }
        const MANAGED: [&str; 7] = [
            "host",
            "upgrade",
            "connection",
            "origin",
            "sec-websocket-key",
            "sec-websocket-version",
            "sec-websocket-extensions",
        ];
        for (name, value) in &self.headers {
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return bad(format!("invalid header name {name:?}"));
            }
            if MANAGED.iter().any(|m| m.eq_ignore_ascii_case(name)) {
                return bad(format!("header {name:?} is set by the handshake itself"));
            }
            if !is_header_value(value) {
                return bad(format!("invalid value for header {name:?}"));
            }
        }
        Ok(())
    }
}

impl FromStr for ClientConfig {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self, Error> {
        ClientConfig::from_url(url)
    }
}

impl TryFrom<&str> for ClientConfig {
    type Error = Error;

    fn try_from(url: &str) -> Result<Self, Error> {
        ClientConfig::from_url(url)
    }
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_header_value(value: &str) -> bool {
    value.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(url: &str) -> (bool, String, u16, String) {
        let c = ClientConfig::from_url(url).unwrap();
        (c.tls, c.host, c.port, c.path)
    }

    #[test]
    fn urls_parse_with_defaults() {
        assert_eq!(parts("ws://example.com"), (false, "example.com".into(), 80, "/".into()));
        assert_eq!(parts("wss://example.com"), (true, "example.com".into(), 443, "/".into()));
        assert_eq!(parts("WS://h:8888/chat?x=1"), (false, "h".into(), 8888, "/chat?x=1".into()));
        assert_eq!(parts("wss://h:9?q"), (true, "h".into(), 9, "/?q".into()));
        assert_eq!(parts("ws://[::1]:9001/"), (false, "::1".into(), 9001, "/".into()));
        assert_eq!(parts("ws://[::1]"), (false, "::1".into(), 80, "/".into()));
        assert_eq!(parts("ws://127.0.0.1:1/a/b"), (false, "127.0.0.1".into(), 1, "/a/b".into()));
    }

    #[test]
    fn bad_urls_are_refused() {
        for url in [
            "http://h/",
            "h:80",
            "ws://",
            "ws://:80/",
            "ws://h:99999/",
            "ws://h:x/",
            "ws://u:p@h/",
            "ws://h/#frag",
            "ws://[::1/",
            "ws://[::1]x/",
        ] {
            assert!(matches!(ClientConfig::from_url(url), Err(Error::InvalidConfig(_))), "{url}");
        }
    }

    #[test]
    fn url_round_trips() {
        for url in ["ws://h:80/", "wss://[::1]:8443/chat?x=1"] {
            assert_eq!(ClientConfig::from_url(url).unwrap().url(), url);
        }
        assert_eq!(ClientConfig::new("[::1]", 1).host(), "::1");
        assert_eq!(ClientConfig::new("h", 1).path("chat").request_path(), "/chat");
    }

    #[test]
    fn validation_refuses_injection_and_managed_headers() {
        let ok = ClientConfig::new("h", 1).header("X-Token", "abc def").origin("http://o");
        assert!(ok.validate().is_ok());
        for bad in [
            ClientConfig::new("h", 1).header("X-Token", "a\r\nEvil: 1"),
            ClientConfig::new("h", 1).header("Bad Name", "v"),
            ClientConfig::new("h", 1).header("", "v"),
            ClientConfig::new("h", 1).header("Sec-WebSocket-Key", "v"),
            ClientConfig::new("h", 1).header("host", "v"),
            ClientConfig::new("h", 1).origin("o\n"),
            ClientConfig::new("h", 1).path("/a b"),
            ClientConfig::new("h h", 1),
            ClientConfig::new("", 1),
        ] {
            assert!(matches!(bad.validate(), Err(Error::InvalidConfig(_))), "{bad:?}");
        }
    }

    #[test]
    fn tls_settings_reset_the_cache() {
        let config = ClientConfig::new("h", 1);
        let cache = config.tls_options.cache.clone();
        assert!(Arc::ptr_eq(&cache, &config.clone().tls_options.cache));
        assert!(!Arc::ptr_eq(&cache, &config.danger_accept_invalid_certs().tls_options.cache));
    }
}
