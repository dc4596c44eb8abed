//! In-process servers for the client's tests, built on `ringcast-codec` and tokio: a
//! scriptable WebSocket server (plain or TLS) and raw TCP listeners that misbehave on
//! purpose. Everything listens on 127.0.0.1 only.
#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ringcast_codec::handshake::{self, Request, RequestParse, UpgradeChecks};
use ringcast_codec::{CloseCode, CloseFrame, Decoder, DecoderConfig, Incoming, PreparedMessage, ProtocolError, Role};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// Asserts that `f` finishes within `bound` and returns its output and the time it took.
pub async fn within<T>(bound: Duration, f: impl Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    match tokio::time::timeout(bound, f).await {
        Ok(out) => (out, start.elapsed()),
        Err(_) => panic!("did not finish within {bound:?}"),
    }
}

/// A stream that is either plain TCP or server-side TLS.
pub enum ServerStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for ServerStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A WebSocket server that hands each upgraded connection to the test.
pub struct Server {
    pub port: u16,
    conns: mpsc::UnboundedReceiver<Conn>,
}

impl Server {
    /// A plain `ws://` server on 127.0.0.1.
    pub async fn plain() -> Server {
        Self::start(None).await
    }

    /// A `wss://` server with this configuration.
    pub async fn tls(config: Arc<rustls::ServerConfig>) -> Server {
        Self::start(Some(tokio_rustls::TlsAcceptor::from(config))).await
    }

    async fn start(tls: Option<tokio_rustls::TlsAcceptor>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, conns) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let tls = tls.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let stream = match tls {
                        None => ServerStream::Plain(tcp),
                        Some(acceptor) => match acceptor.accept(tcp).await {
                            Ok(s) => ServerStream::Tls(Box::new(s)),
                            Err(_) => return,
                        },
                    };
                    if let Some(conn) = Conn::upgrade(stream).await {
                        let _ = tx.send(conn);
                    }
                });
            }
        });
        Server { port, conns }
    }

    /// The next upgraded connection.
    pub async fn accept(&mut self) -> Conn {
        tokio::time::timeout(WAIT, self.conns.recv()).await.expect("no connection in time").expect("server gone")
    }

    /// Serves every connection as an echo server, in the background.
    pub fn echo_all(mut self) -> u16 {
        let port = self.port;
        tokio::spawn(async move {
            while let Some(conn) = self.conns.recv().await {
                tokio::spawn(conn.echo());
            }
        });
        port
    }
}

/// One upgraded server-side connection, driven step by step by the test.
pub struct Conn {
    pub request: Request,
    pub io: ServerStream,
    buf: BytesMut,
    decoder: Decoder,
}

impl Conn {
    /// Runs the server side of the opening handshake on `io`.
    pub async fn upgrade_stream(io: ServerStream) -> Option<Conn> {
        Self::upgrade(io).await
    }

    async fn upgrade(mut io: ServerStream) -> Option<Conn> {
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            if io.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
            if let RequestParse::Complete { request, head_len } = Request::parse(&buf).ok()? {
                let accept = handshake::validate_upgrade(&request, UpgradeChecks::default()).ok()?;
                io.write_all(&handshake::accept_response(&accept, None, "")).await.ok()?;
                let _ = buf.split_to(head_len);
                let decoder = Decoder::new(DecoderConfig::new(Role::Server).max_message_size(64 << 20));
                return Some(Conn { request, io, buf, decoder });
            }
        }
    }

    /// The next event from the client: `None` at the end of the connection.
    pub async fn recv(&mut self) -> Option<Result<Incoming<'static>, ProtocolError>> {
        let step = async {
            loop {
                match self.decoder.decode_buf(&mut self.buf) {
                    Ok(Some(incoming)) => return Some(Ok(incoming)),
                    Ok(None) => {}
                    Err(e) => return Some(Err(e)),
                }
                match self.io.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(WAIT, step).await.expect("the client sent nothing in time")
    }

    /// The next event, which must be there.
    pub async fn expect(&mut self) -> Incoming<'static> {
        self.recv().await.expect("connection ended").expect("protocol error from the client")
    }

    /// Waits for the client's close frame and returns it.
    pub async fn expect_close(&mut self) -> Option<CloseFrame> {
        loop {
            match self.expect().await {
                Incoming::Close(frame) => return frame,
                _ => continue,
            }
        }
    }

    /// Waits for the end of the connection, and asserts no close frame came before it.
    pub async fn expect_abrupt_end(&mut self) {
        loop {
            match self.recv().await {
                None => return,
                Some(Ok(Incoming::Close(frame))) => panic!("expected no close frame, got {frame:?}"),
                Some(_) => continue,
            }
        }
    }

    /// Writes raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// Writes a prepared message.
    pub async fn send(&mut self, message: &PreparedMessage) {
        self.send_raw(message.as_bytes()).await;
    }

    /// Sends a close frame with `code` and `reason`.
    pub async fn close(&mut self, code: CloseCode, reason: &str) {
        self.send(&PreparedMessage::close(code, reason)).await;
    }

    /// Echoes text and binary messages and answers a close, until the client is gone.
    pub async fn echo(mut self) {
        while let Some(Ok(incoming)) = self.recv_unbounded().await {
            let reply = match incoming {
                Incoming::Text(text) => PreparedMessage::text(&text, ringcast_codec::Split::Whole),
                Incoming::Binary(data) => PreparedMessage::binary(&data, ringcast_codec::Split::Whole),
                Incoming::Ping(data) => PreparedMessage::pong(&data).unwrap(),
                Incoming::Close(frame) => {
                    let code = frame.map_or(CloseCode::Normal, |f| f.code);
                    let _ = self.io.write_all(PreparedMessage::close(code, "").as_bytes()).await;
                    let _ = self.io.shutdown().await;
                    return;
                }
                _ => continue,
            };
            if self.io.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    async fn recv_unbounded(&mut self) -> Option<Result<Incoming<'static>, ProtocolError>> {
        loop {
            match self.decoder.decode_buf(&mut self.buf) {
                Ok(Some(incoming)) => return Some(Ok(incoming)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}

/// A TCP listener on 127.0.0.1 whose every connection is handed to `serve`.
pub async fn raw_server<F, Fut>(serve: F) -> u16
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve(tcp));
        }
    });
    port
}

/// Reads an HTTP request head (up to the blank line) from `tcp`.
pub async fn read_head(tcp: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tcp.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    head
}

/// A port on 127.0.0.1 where nothing listens.
pub async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// A self-signed certificate for `localhost` and `127.0.0.1` and its key.
pub fn self_signed() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    (certified.cert.der().clone(), key)
}

/// A rustls server configuration (ring provider) serving `chain` with `key`.
pub fn server_config(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    Arc::new(config)
}

/// A server configuration from PEM files (as written by `testkit::tls::TestCerts`).
pub fn server_config_from_pem(cert_pem: &str, key_pem: &str) -> Arc<rustls::ServerConfig> {
    let chain = rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes()).unwrap().unwrap();
    server_config(chain, key)
}
