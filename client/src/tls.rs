//! TLS with `rustls` and its `ring` provider: root certificates, the loudly named opt-out,
//! and the recording stream that lets a failed handshake tell "not a TLS server" apart.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::TlsOptions;
use crate::error::Error;

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

/// The platform's trusted roots, loaded once per process.
fn platform_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

/// The `rustls` configuration for `options`, built on first use and shared by clones.
pub(crate) fn client_config(options: &TlsOptions) -> Result<Arc<rustls::ClientConfig>, Error> {
    if let Some(custom) = &options.custom {
        return Ok(custom.clone());
    }
    if let Some(config) = options.cache.get() {
        return Ok(config.clone());
    }
    let config = Arc::new(build(options)?);
    Ok(options.cache.get_or_init(|| config).clone())
}

fn build(options: &TlsOptions) -> Result<rustls::ClientConfig, Error> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(Error::Tls)?;
    let mut config = if options.accept_invalid_certs {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        if options.platform_roots {
            roots.add_parsable_certificates(platform_roots().iter().cloned());
        }
        for path in &options.extra_root_files {
            let pem = std::fs::read(path).map_err(|e| {
                Error::InvalidConfig(format!("cannot read root certificate file {}: {e}", path.display()))
            })?;
            let mut found = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| Error::InvalidConfig(format!("bad PEM in {}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| Error::InvalidConfig(format!("bad certificate in {}: {e}", path.display())))?;
                found += 1;
            }
            if found == 0 {
                return Err(Error::InvalidConfig(format!("no certificate in {}", path.display())));
            }
        }
        for cert in &options.extra_roots {
            roots.add(cert.clone()).map_err(|e| Error::InvalidConfig(format!("bad extra root certificate: {e}")))?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The name to send in SNI and to check the certificate against; an IP address for IP
/// literals (which are not sent in SNI).
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, Error> {
    ServerName::try_from(host.to_owned())
        .map_err(|_| Error::InvalidConfig(format!("{host:?} is neither a DNS name nor an IP address usable for TLS")))
}

/// The bytes of a TLS ClientHello for `name`, to ask a silent server whether it speaks TLS.
pub(crate) fn client_hello(name: ServerName<'static>) -> Option<Vec<u8>> {
    let options = TlsOptions {
        platform_roots: false,
        extra_root_files: Vec::new(),
        extra_roots: Vec::new(),
        accept_invalid_certs: true,
        custom: None,
        cache: Arc::default(),
    };
    let config = Arc::new(build(&options).ok()?);
    let mut connection = rustls::ClientConnection::new(config, name).ok()?;
    let mut hello = Vec::new();
    while connection.wants_write() {
        connection.write_tls(&mut hello).ok()?;
    }
    Some(hello)
}

/// Whether the first bytes of an answer are a TLS record header: a handshake (0x16) or
/// alert (0x15) record of any TLS/SSL 3 version (0x03 0x..).
pub(crate) fn looks_like_tls(head: &[u8]) -> bool {
    matches!(head, [0x15 | 0x16, 0x03, ..])
}

/// Whether the first bytes of an answer are an HTTP/1.x status line.
pub(crate) fn looks_like_http(head: &[u8]) -> bool {
    head.starts_with(b"HTTP/")
}

/// The verifier behind [`ClientConfig::danger_accept_invalid_certs`](crate::ClientConfig::danger_accept_invalid_certs):
/// accepts any certificate but still checks that the server holds its key.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A stream that keeps a copy of the first bytes it reads while `recording`, so that a
/// failed TLS handshake can tell whether the server answered in plain HTTP.
#[derive(Debug)]
pub(crate) struct Recorder<S> {
    inner: S,
    head: [u8; 8],
    head_len: u8,
    recording: bool,
}

impl<S> Recorder<S> {
    pub(crate) fn new(inner: S) -> Self {
        Recorder { inner, head: [0; 8], head_len: 0, recording: true }
    }

    /// The first bytes read while recording.
    pub(crate) fn head(&self) -> &[u8] {
        &self.head[..self.head_len as usize]
    }

    pub(crate) fn stop_recording(&mut self) {
        self.recording = false;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorder<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.recording && (this.head_len as usize) < this.head.len() {
            let fresh = &buf.filled()[before..];
            let at = this.head_len as usize;
            let take = fresh.len().min(this.head.len() - at);
            this.head[at..at + take].copy_from_slice(&fresh[..take]);
            this.head_len += take as u8;
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recorder<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn record_headers_are_recognised() {
        assert!(looks_like_tls(&[0x15, 0x03, 0x03, 0x00, 0x02]));
        assert!(looks_like_tls(&[0x16, 0x03, 0x01]));
        assert!(!looks_like_tls(b"HTTP/1.1 400"));
        assert!(!looks_like_tls(&[0x16]));
        assert!(looks_like_http(b"HTTP/1.1 400 Bad Request"));
        assert!(!looks_like_http(b"HTTP"));
    }

    #[test]
    fn server_names_for_dns_and_ip() {
        assert!(matches!(server_name("example.com"), Ok(ServerName::DnsName(_))));
        assert!(matches!(server_name("127.0.0.1"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name("::1"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name("bad name!"), Err(Error::InvalidConfig(_))));
    }

    #[test]
    fn client_hello_is_a_handshake_record() {
        let hello = client_hello(server_name("localhost").unwrap()).unwrap();
        assert!(looks_like_tls(&hello), "{:?}", &hello[..5]);
    }

    #[test]
    fn a_missing_root_file_is_a_config_error() {
        let config = crate::ClientConfig::new("h", 1).platform_roots(false).extra_root_file("/nonexistent/ca.pem");
        assert!(matches!(client_config(&config.tls_options), Err(Error::InvalidConfig(_))));
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let config = crate::ClientConfig::new("h", 1).platform_roots(false).extra_root_file(&empty);
        assert!(matches!(client_config(&config.tls_options), Err(Error::InvalidConfig(_))));
    }

    #[test]
    fn configs_are_cached_across_clones() {
        let config = crate::ClientConfig::new("h", 1).platform_roots(false);
        let a = client_config(&config.tls_options).unwrap();
        let b = client_config(&config.clone().tls_options).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
    }

    #[tokio::test]
    async fn recorder_keeps_the_first_bytes_only_while_recording() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut recorder = Recorder::new(client);
        server.write_all(b"HTTP/1.1 400 Bad Request").await.unwrap();
        let mut buf = [0u8; 4];
        recorder.read_exact(&mut buf).await.unwrap();
        assert_eq!(recorder.head(), b"HTTP");
        recorder.read_exact(&mut buf).await.unwrap();
        assert_eq!(recorder.head(), b"HTTP/1.1");
        recorder.stop_recording();
        recorder.read_exact(&mut buf).await.unwrap();
        assert_eq!(recorder.head(), b"HTTP/1.1");
    }
}
