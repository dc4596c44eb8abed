//! Opening WebSocket connections: TCP (optionally from a chosen source address with
//! `IP_BIND_ADDRESS_NO_PORT`), TLS for wss://, and the upgrade, straight on
//! ringcast-codec's [`ClientHandshake`]. A connection is then just a stream and a
//! read buffer, which is what 10,000 receivers in one process can afford.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use ringcast_codec::handshake::{ClientHandshake, ClientRequest};
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

/// Where to connect: a parsed ws:// or wss:// URL and its resolved address.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    /// Host as written in the URL (sent in `Host` and used for TLS SNI).
    pub host: String,
    /// Port (default 80 for ws, 443 for wss).
    pub port: u16,
    /// Path and query of the URL (`/` if none).
    pub path: String,
    /// wss://
    pub tls: bool,
    /// The address connections go to (the first the host resolves to).
    pub addr: SocketAddr,
}

impl Target {
    /// Parses and resolves `ws://host[:port][/path]` or `wss://…`.
    pub fn parse(url: &str) -> Result<Target, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("ws://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("wss://") {
            (true, rest)
        } else {
            return Err(format!("{url}: the URL must start with ws:// or wss://"));
        };
        let (authority, path) = rest.find(['/', '?']).map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
        let path = if path.starts_with('?') { format!("/{path}") } else { path.to_owned() };
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| format!("{url}: unclosed [ in host"))?;
            let port = after.strip_prefix(':').map(str::parse).transpose().map_err(|_| format!("{url}: bad port"))?;
            (host.to_owned(), port.unwrap_or(default_port))
        } else if let Some((host, port)) = authority.rsplit_once(':') {
            (host.to_owned(), port.parse().map_err(|_| format!("{url}: bad port {port:?}"))?)
        } else {
            (authority.to_owned(), default_port)
        };
        if host.is_empty() {
            return Err(format!("{url}: no host"));
        }
        let addr = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| format!("{url}: cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{url}: {host} resolves to no address"))?;
        Ok(Target { host, port, path, tls, addr })
    }

    /// The URL with another path (the publisher's).
    pub fn with_path(&self, path: &str) -> Target {
        Target { path: path.to_owned(), ..self.clone() }
    }

    /// The URL as text.
    pub fn url(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        format!("{}://{host}:{}{}", if self.tls { "wss" } else { "ws" }, self.port, self.path)
    }

    pub(crate) fn handshake(&self, deflate: bool) -> Result<ClientHandshake, String> {
        let offer = [("Sec-WebSocket-Extensions", DEFLATE_OFFER)];
        let request = ClientRequest {
            host: &self.host,
            port: self.port,
            secure: self.tls,
            path: &self.path,
            headers: if deflate { &offer } else { &[] },
            ..Default::default()
        };
        ClientHandshake::new(&request, rand::random()).map_err(|e| format!("handshake: {e}"))
    }
}

/// The permessage-deflate offer browsers make.
const DEFLATE_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// How wss:// servers are verified.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TlsOptions {
    /// Extra root certificates (PEM), e.g. a test CA.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (self-signed test servers only).
    pub insecure: bool,
}

impl TlsOptions {
    /// A rustls client configuration: the platform's roots plus `ca_file`, or no checks.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let config = if self.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                .with_no_client_auth()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if let Some(path) = &self.ca_file {
                let mut reader =
                    io::BufReader::new(std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?);
                for cert in rustls_pemfile::certs(&mut reader) {
                    let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                    roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        Ok(Arc::new(config))
    }
}

/// `--insecure`: a verifier that accepts every certificate but still checks signatures.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A connected socket, plain or TLS.
#[derive(Debug)]
pub enum Stream {
    /// ws://
    Plain(TcpStream),
    /// wss://
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A TCP socket for `addr`, bound to `source` first if given. The bind sets
/// `IP_BIND_ADDRESS_NO_PORT`, so the port is picked at connect time per 4-tuple and each
/// source address gets the whole ephemeral range towards the server.
pub(crate) fn socket(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(source) = source {
        if source.is_ipv4() {
            nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::IpBindAddressNoPort, &true)
                .map_err(io::Error::from)?;
        }
        socket.bind(SocketAddr::new(source, 0))?;
    }
    Ok(socket)
}

/// Why a connection could not be opened; the text is the error's group in reports.
pub fn describe(stage: &str, e: &io::Error) -> String {
    let text = e.to_string();
    // Drop addresses so that equal errors group together.
    let text = text.split(" (os error").next().unwrap_or(&text);
    format!("{stage}: {text}")
}

/// Opens one WebSocket connection: TCP connect, TLS, upgrade, offering permessage-deflate
/// if `deflate`. Returns the stream, the bytes already read past the `101` head and
/// whether the server accepted permessage-deflate.
pub async fn open(
    target: &Target,
    source: Option<IpAddr>,
    tls: Option<&tokio_rustls::TlsConnector>,
    deflate: bool,
) -> Result<(Stream, BytesMut, bool), String> {
    let tcp = socket(target.addr, source).map_err(|e| describe("socket", &e))?;
    let tcp = tcp.connect(target.addr).await.map_err(|e| describe("connect", &e))?;
    tcp.set_nodelay(true).map_err(|e| describe("connect", &e))?;
    let mut stream = match tls {
        None => Stream::Plain(tcp),
        Some(connector) => {
            let name = ServerName::try_from(target.host.clone()).map_err(|e| format!("tls: {e}"))?;
            Stream::Tls(Box::new(connector.connect(name, tcp).await.map_err(|e| describe("tls", &e))?))
        }
    };
    let handshake = target.handshake(deflate)?;
    stream.write_all(handshake.request()).await.map_err(|e| describe("handshake", &e))?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if stream.read_buf(&mut buf).await.map_err(|e| describe("handshake", &e))? == 0 {
            return Err("handshake: connection closed by the server".into());
        }
        if let Some((response, head_len)) = handshake.parse_response(&buf).map_err(|e| format!("handshake: {e}"))? {
            buf.advance(head_len);
            let accepted = accepted_deflate(&response.headers)?;
            if accepted && !deflate {
                return Err("handshake: the server enabled permessage-deflate, which was not offered".into());
            }
            return Ok((stream, buf, accepted));
        }
    }
}

/// Whether the `101` agreed to permessage-deflate, checked against the offer: the load
/// generator reads compressed messages only if the server compresses each on its own.
fn accepted_deflate(headers: &[(String, String)]) -> Result<bool, String> {
    let config = ringcast_codec::deflate::ClientDeflateConfig::new();
    match config.accept_response_headers(headers) {
        Ok(None) => Ok(false),
        Ok(Some(params)) if params.server_no_context_takeover() => Ok(true),
        Ok(Some(_)) => Err(
            "handshake: permessage-deflate without server_no_context_takeover is not supported by the load generator"
                .into(),
        ),
        Err(e) => Err(format!("handshake: {e}")),
    }
}

/// A blocking stream for the publisher thread.
pub enum BlockingStream {
    /// ws://
    Plain(std::net::TcpStream),
    /// wss://
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>>),
}

impl Read for BlockingStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BlockingStream::Plain(s) => s.read(buf),
            BlockingStream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for BlockingStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            BlockingStream::Plain(s) => s.write(buf),
            BlockingStream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            BlockingStream::Plain(s) => s.flush(),
            BlockingStream::Tls(s) => s.flush(),
        }
    }
}

/// Opens a blocking WebSocket connection (the publisher's).
pub fn open_blocking(target: &Target, tls: Option<Arc<rustls::ClientConfig>>) -> Result<BlockingStream, String> {
    let tcp = std::net::TcpStream::connect_timeout(&target.addr, std::time::Duration::from_secs(10))
        .map_err(|e| describe("connect", &e))?;
    tcp.set_nodelay(true).map_err(|e| describe("connect", &e))?;
    let mut stream = match tls {
        None => BlockingStream::Plain(tcp),
        Some(config) => {
            let name = ServerName::try_from(target.host.clone()).map_err(|e| format!("tls: {e}"))?;
            let conn = rustls::ClientConnection::new(config, name).map_err(|e| format!("tls: {e}"))?;
            BlockingStream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
        }
    };
    let handshake = target.handshake(false)?;
    stream.write_all(handshake.request()).map_err(|e| describe("handshake", &e))?;
    stream.flush().map_err(|e| describe("handshake", &e))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).map_err(|e| describe("handshake", &e))?;
        if n == 0 {
            return Err("handshake: connection closed by the server".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if handshake.parse_response(&buf).map_err(|e| format!("handshake: {e}"))?.is_some() {
            return Ok(stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = Target::parse("ws://127.0.0.1:9000/x?y=1").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str(), t.tls), ("127.0.0.1", 9000, "/x?y=1", false));
        let t = Target::parse("wss://127.0.0.1").unwrap();
        assert_eq!((t.port, t.path.as_str(), t.tls), (443, "/", true));
        let t = Target::parse("ws://[::1]:8888").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 8888));
        assert_eq!(t.with_path("/publish").url(), "ws://[::1]:8888/publish");
        assert!(Target::parse("http://x").is_err());
        assert!(Target::parse("ws://127.0.0.1:x").is_err());
    }
}
