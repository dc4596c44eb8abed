//! Opening a connection: DNS, TCP, TLS and the HTTP/1.1 upgrade, each step bounded in
//! time and each failure reported as its own [`Error`] variant.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use ringcast_codec::deflate::{Compressor, DeflateParams};
use ringcast_codec::handshake::{ClientHandshake, ClientRequest};
use ringcast_codec::{Decoder, DecoderConfig, Role};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use crate::config::ClientConfig;
use crate::connection::{self, DriverConfig, Receiver, Sender};
use crate::error::{Error, Stage};
use crate::tls::{self, Recorder};

/// How long a silent server gets to show, on a second connection, what protocol it speaks.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TLS handshake may see no answer at all before the client checks, on a
/// second connection, whether the server is waiting for plain HTTP.
const TLS_SILENCE_PROBE_AFTER: Duration = Duration::from_secs(1);

/// Opens a connection and completes the opening handshake.
///
/// Returns only once the server has accepted the upgrade — the moment an event-driven
/// client calls "on connect" — so a [`Sender`] can only exist for a connection that is
/// ready. The connection is driven by a task spawned on the current tokio runtime.
///
/// Each step is bounded: DNS plus TCP by [`ClientConfig::connect_timeout`], TLS plus the
/// upgrade by [`ClientConfig::handshake_timeout`]. Failures come back as distinct
/// variants: [`Error::Dns`], [`Error::ConnectionRefused`], [`Error::Timeout`] with its
/// [`Stage`], [`Error::ServerSpeaksTls`], [`Error::ServerNotTls`], [`Error::Tls`],
/// [`Error::HandshakeRefused`] with the HTTP status, [`Error::BadAcceptKey`], ...
pub async fn connect(config: &ClientConfig) -> Result<(Sender, Receiver), Error> {
    config.validate()?;
    // TLS settings are checked before any traffic, so a bad root file fails at once.
    let tls = match config.tls {
        true => Some((tls::client_config(&config.tls_options)?, tls::server_name(&config.host)?)),
        false => None,
    };
    let connect_deadline = Instant::now() + config.connect_timeout;
    let addrs = resolve(&config.host, config.port, connect_deadline).await?;
    let (tcp, addr) = open(&addrs, connect_deadline).await?;
    let _ = tcp.set_nodelay(true);

    let handshake_deadline = Instant::now() + config.handshake_timeout;
    let offer = config.deflate.offer();
    let mut headers: Vec<(&str, &str)> = config.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    if let Some(offer) = &offer {
        headers.push(("Sec-WebSocket-Extensions", offer));
    }
    let request = ClientRequest {
        host: &config.host,
        port: config.port,
        secure: config.tls,
        path: &config.path,
        origin: config.origin.as_deref(),
        protocols: &[],
        headers: &headers,
    };
    let handshake = ClientHandshake::new(&request, rand::random()).map_err(|e| Error::InvalidConfig(e.to_string()))?;
    let driver = |deflate: Option<DeflateParams>| DriverConfig {
        decoder: Decoder::new(
            DecoderConfig::new(Role::Client)
                .max_message_size(config.max_message_size)
                .max_frame_size(config.max_message_size)
                .permessage_deflate(deflate.map(|params| params.incoming(Role::Client))),
        ),
        deflate: deflate.map(|params| {
            let compressor =
                Compressor::for_direction(config.deflate.compression_level(), params.outgoing(Role::Client));
            (params, compressor, config.deflate.min_message_size_limit())
        }),
        read_buffer_size: config.read_buffer_size,
        close_timeout: config.close_timeout,
        send_queue: config.send_queue,
        receive_queue: config.receive_queue,
    };

    match tls {
        None => {
            let mut tcp = tcp;
            match upgrade(&mut tcp, &handshake, config, handshake_deadline).await {
                Ok((leftover, deflate)) => Ok(connection::spawn(tcp, leftover, driver(deflate))),
                Err(Error::ClosedDuringHandshake { stage }) => {
                    // A TLS server that reads an HTTP request usually drops the connection
                    // without a word; ask it on a second connection whether it speaks TLS.
                    drop(tcp);
                    if probe_speaks_tls(addr, &config.host, handshake_deadline).await {
                        Err(Error::ServerSpeaksTls)
                    } else {
                        Err(Error::ClosedDuringHandshake { stage })
                    }
                }
                Err(e) => Err(e),
            }
        }
        Some((tls_config, name)) => {
            let connector = tokio_rustls::TlsConnector::from(tls_config);
            let stream = tls_handshake(connector, name, tcp, addr, handshake.request(), handshake_deadline).await?;
            let mut stream = stream;
            let (leftover, deflate) = upgrade(&mut stream, &handshake, config, handshake_deadline).await?;
            Ok(connection::spawn(stream, leftover, driver(deflate)))
        }
    }
}

/// Resolves `host`; IP literals skip the resolver, and names under `.invalid` fail at
/// once, as RFC 6761 §6.4 asks of resolver libraries.
async fn resolve(host: &str, port: u16, deadline: Instant) -> Result<Vec<SocketAddr>, Error> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let dns_error = |source: io::Error| Error::Dns { host: host.to_owned(), source };
    let lower = host.trim_end_matches('.').to_ascii_lowercase();
    if lower == "invalid" || lower.ends_with(".invalid") {
        return Err(dns_error(io::Error::new(
            io::ErrorKind::NotFound,
            "names under .invalid never resolve (RFC 6761)",
        )));
    }
    let addrs = timeout_at(deadline, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| Error::Timeout { stage: Stage::Dns })?
        .map_err(dns_error)?
        .collect::<Vec<_>>();
    if addrs.is_empty() {
        return Err(dns_error(io::Error::new(io::ErrorKind::NotFound, "no address found")));
    }
    Ok(addrs)
}

/// Tries each address in turn until one accepts.
async fn open(addrs: &[SocketAddr], deadline: Instant) -> Result<(TcpStream, SocketAddr), Error> {
    let mut last = None;
    for &addr in addrs {
        match timeout_at(deadline, TcpStream::connect(addr)).await {
            Err(_) => return Err(Error::Timeout { stage: Stage::Connect }),
            Ok(Ok(stream)) => return Ok((stream, addr)),
            Ok(Err(e)) => last = Some((addr, e)),
        }
    }
    Err(match last {
        Some((addr, e)) if e.kind() == io::ErrorKind::ConnectionRefused => Error::ConnectionRefused { addr },
        Some((addr, source)) => Error::Connect { addr, source },
        None => Error::Dns { host: String::new(), source: io::Error::new(io::ErrorKind::NotFound, "no address") },
    })
}

/// Sends the upgrade request and reads the answer. Returns the bytes that followed the
/// response head (the first frames, if the server was quick) and the permessage-deflate
/// parameters, if the server accepted the offer.
async fn upgrade<S>(
    io: &mut S,
    handshake: &ClientHandshake,
    config: &ClientConfig,
    deadline: Instant,
) -> Result<(BytesMut, Option<DeflateParams>), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let buffer = config.read_buffer_size;
    let exchange = async {
        let closed = Error::ClosedDuringHandshake { stage: Stage::Handshake };
        if io.write_all(handshake.request()).await.and(io.flush().await).is_err() {
            return Err(closed);
        }
        let mut buf = BytesMut::with_capacity(buffer.max(1024));
        loop {
            if buf.capacity() - buf.len() < 512 {
                buf.reserve(buffer.max(1024));
            }
            match io.read_buf(&mut buf).await {
                Ok(0) => return Err(closed),
                Ok(_) => {}
                Err(e) if buf.is_empty() && is_reset(&e) => return Err(closed),
                Err(e) => return Err(Error::Io(e)),
            }
            if tls::looks_like_tls(&buf) {
                return Err(Error::ServerSpeaksTls);
            }
            if let Some((response, head_len)) = handshake.parse_response(&buf)? {
                // RFC 6455 §4.1: an extension or subprotocol the client did not offer
                // must be refused. The only extension it offers is permessage-deflate.
                let deflate = config.deflate.accept_response_headers(&response.headers)?;
                if let Some(protocol) = response.protocol {
                    return Err(Error::NotOffered { what: "subprotocol", value: protocol });
                }
                buf.advance(head_len);
                return Ok((buf, deflate));
            }
        }
    };
    timeout_at(deadline, exchange).await.map_err(|_| Error::Timeout { stage: Stage::Handshake })?
}

fn is_reset(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe)
}

type TlsStream = tokio_rustls::client::TlsStream<Recorder<TcpStream>>;

/// The TLS handshake, with the failures that mean "this server does not speak TLS" told
/// apart from the others.
async fn tls_handshake(
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
    tcp: TcpStream,
    addr: SocketAddr,
    upgrade_request: &[u8],
    deadline: Instant,
) -> Result<TlsStream, Error> {
    let handshake = connector.connect(name, Recorder::new(tcp)).into_fallible();
    tokio::pin!(handshake);
    let timeout = tokio::time::sleep_until(deadline);
    tokio::pin!(timeout);
    // A plain HTTP server may wait for the end of a "request" that never comes; if the
    // server says nothing for a while, ask it on a second connection what it speaks. The
    // probe runs beside the handshake, so a slow TLS server is not held up by it.
    let silence_probe = async {
        tokio::time::sleep(TLS_SILENCE_PROBE_AFTER).await;
        probe_speaks_http(addr, upgrade_request, deadline).await
    };
    tokio::pin!(silence_probe);
    let mut probed = false;
    let result = loop {
        tokio::select! {
            result = &mut handshake => break result,
            () = &mut timeout => return Err(Error::Timeout { stage: Stage::Tls }),
            speaks_http = &mut silence_probe, if !probed => {
                probed = true;
                if speaks_http {
                    return Err(Error::ServerNotTls);
                }
            }
        }
    };
    match result {
        Ok(mut stream) => {
            stream.get_mut().0.stop_recording();
            Ok(stream)
        }
        Err((e, recorder)) => {
            if tls::looks_like_http(recorder.head()) {
                return Err(Error::ServerNotTls);
            }
            if let Some(tls_error) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
                return Err(Error::Tls(tls_error.clone()));
            }
            if recorder.head().is_empty() && (e.kind() == io::ErrorKind::UnexpectedEof || is_reset(&e)) {
                drop(recorder);
                if probe_speaks_http(addr, upgrade_request, deadline).await {
                    return Err(Error::ServerNotTls);
                }
                return Err(Error::ClosedDuringHandshake { stage: Stage::Tls });
            }
            Err(Error::Io(e))
        }
    }
}

/// Sends `hello` on a fresh connection to `addr` and returns the first bytes of the answer
/// (at most `N`), if any arrive in time.
async fn probe<const N: usize>(addr: SocketAddr, hello: &[u8], deadline: Instant) -> Option<([u8; N], usize)> {
    let limit = deadline.min(Instant::now() + PROBE_TIMEOUT);
    timeout_at(limit, async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(hello).await.ok()?;
        let mut head = [0u8; N];
        let mut len = 0;
        while len < N {
            match stream.read(&mut head[len..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => len += n,
            }
        }
        Some((head, len))
    })
    .await
    .ok()
    .flatten()
}

/// Whether the server at `addr` answers a TLS ClientHello with a TLS record.
async fn probe_speaks_tls(addr: SocketAddr, host: &str, deadline: Instant) -> bool {
    let Some(hello) = tls::server_name(host).ok().and_then(tls::client_hello) else { return false };
    matches!(probe::<2>(addr, &hello, deadline).await, Some((head, 2)) if tls::looks_like_tls(&head))
}

/// Whether the server at `addr` answers a plain upgrade request with HTTP.
async fn probe_speaks_http(addr: SocketAddr, request: &[u8], deadline: Instant) -> bool {
    matches!(probe::<5>(addr, request, deadline).await, Some((head, 5)) if tls::looks_like_http(&head))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn invalid_names_fail_without_a_lookup() {
        let deadline = Instant::now() + Duration::from_secs(5);
        for host in ["nothing.invalid", "a.b.INVALID.", "invalid"] {
            assert!(matches!(resolve(host, 80, deadline).await, Err(Error::Dns { .. })), "{host}");
        }
        assert_eq!(resolve("127.0.0.1", 80, deadline).await.unwrap(), vec!["127.0.0.1:80".parse().unwrap()]);
        assert_eq!(resolve("::1", 80, deadline).await.unwrap(), vec!["[::1]:80".parse().unwrap()]);
    }

    #[tokio::test]
    async fn upgrade_reads_a_split_response_and_keeps_leftover_bytes() {
        use ringcast_codec::handshake::{self, Request, RequestParse, UpgradeChecks};
        let handshake =
            ClientHandshake::new(&ClientRequest { host: "h", port: 80, ..Default::default() }, [7; 16]).unwrap();
        let (mut client, mut server) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = server.read(&mut buf).await.unwrap();
            let RequestParse::Complete { request, .. } = Request::parse(&buf[..n]).unwrap() else { panic!() };
            let accept = handshake::validate_upgrade(&request, UpgradeChecks::default()).unwrap();
            let mut response = handshake::accept_response(&accept, None, "");
            response.extend_from_slice(b"\x81\x02hi");
            let (a, b) = response.split_at(10);
            server.write_all(a).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            server.write_all(b).await.unwrap();
            server
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let (leftover, deflate) = upgrade(&mut client, &handshake, &plain(), deadline).await.unwrap();
        assert_eq!(&leftover[..], b"\x81\x02hi");
        assert_eq!(deflate, None, "no extension header: the offer was declined");
        drop(server.await.unwrap());
    }

    fn plain() -> ClientConfig {
        ClientConfig::new("h", 80)
    }

    /// Runs an upgrade against a server that answers with `protocol` and the `extra`
    /// header lines.
    async fn upgrade_answered(
        config: &ClientConfig,
        protocol: Option<&'static str>,
        extra: &'static str,
    ) -> Result<(BytesMut, Option<DeflateParams>), Error> {
        use ringcast_codec::handshake::{self, Request, RequestParse, UpgradeChecks};
        let handshake =
            ClientHandshake::new(&ClientRequest { host: "h", port: 80, ..Default::default() }, [7; 16]).unwrap();
        let (mut client, mut server) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = server.read(&mut buf).await.unwrap();
            let RequestParse::Complete { request, .. } = Request::parse(&buf[..n]).unwrap() else { panic!() };
            let accept = handshake::validate_upgrade(&request, UpgradeChecks::default()).unwrap();
            server.write_all(&handshake::accept_response(&accept, protocol, extra)).await.unwrap();
            server
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let result = upgrade(&mut client, &handshake, config, deadline).await;
        drop(server.await.unwrap());
        result
    }

    #[tokio::test]
    async fn upgrade_refuses_extensions_and_subprotocols_not_offered() {
        use ringcast_codec::deflate::{ClientDeflateConfig, ExtensionResponseError as E};
        let off = plain().permessage_deflate(ClientDeflateConfig::new().enabled(false));
        let deflate = "Sec-WebSocket-Extensions: permessage-deflate\r\n";
        let result = upgrade_answered(&off, None, deflate).await;
        assert!(matches!(result, Err(Error::Extension(E::NotOffered))), "{result:?}");
        let result = upgrade_answered(&plain(), None, "Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n").await;
        assert!(matches!(result, Err(Error::Extension(E::UnexpectedExtension(_)))), "{result:?}");
        let result = upgrade_answered(&plain(), Some("chat"), "").await;
        assert!(matches!(result, Err(Error::NotOffered { what: "subprotocol", .. })), "{result:?}");
    }

    #[tokio::test]
    async fn upgrade_takes_accepted_deflate_and_refuses_answers_it_did_not_ask_for() {
        use ringcast_codec::deflate::{ClientDeflateConfig, ExtensionResponseError as E, WindowBits};
        let line =
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_max_window_bits=10\r\n";
        let (_, params) = upgrade_answered(&plain(), None, line).await.unwrap();
        let params = params.expect("accepted");
        assert!(params.server_no_context_takeover());
        assert_eq!(params.client_max_window_bits().get(), 10);

        for (line, what) in [
            ("Sec-WebSocket-Extensions: permessage-deflate; mystery\r\n", "unknown parameter"),
            (
                "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; server_no_context_takeover\r\n",
                "duplicate",
            ),
            ("Sec-WebSocket-Extensions: permessage-deflate, permessage-deflate\r\n", "twice"),
            ("Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=16\r\n", "bad window"),
            ("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n", "window without value"),
        ] {
            let result = upgrade_answered(&plain(), None, line).await;
            assert!(matches!(result, Err(Error::Extension(_))), "{what}: {result:?}");
        }
        // Asked for a window of 10 bits, answered with 12 (or not at all): refused.
        let ask =
            plain().permessage_deflate(ClientDeflateConfig::new().request_server_max_window_bits(WindowBits::new(10)));
        let line = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=12\r\n";
        let result = upgrade_answered(&ask, None, line).await;
        assert!(matches!(result, Err(Error::Extension(E::ServerWindowTooLarge { .. }))), "{result:?}");
        let result = upgrade_answered(&ask, None, "Sec-WebSocket-Extensions: permessage-deflate\r\n").await;
        assert!(matches!(result, Err(Error::Extension(E::MissingParameter(_)))), "{result:?}");
    }

    #[tokio::test]
    async fn upgrade_recognises_tls_records_and_silence() {
        let handshake =
            ClientHandshake::new(&ClientRequest { host: "h", port: 80, ..Default::default() }, [7; 16]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let (mut client, mut server) = tokio::io::duplex(4096);
        server.write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32]).await.unwrap();
        assert!(matches!(upgrade(&mut client, &handshake, &plain(), deadline).await, Err(Error::ServerSpeaksTls)));
        let (mut client, server) = tokio::io::duplex(4096);
        drop(server);
        assert!(matches!(
            upgrade(&mut client, &handshake, &plain(), deadline).await,
            Err(Error::ClosedDuringHandshake { stage: Stage::Handshake })
        ));
        let (mut client, _server) = tokio::io::duplex(4096);
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(matches!(
            upgrade(&mut client, &handshake, &plain(), soon).await,
            Err(Error::Timeout { stage: Stage::Handshake })
        ));
    }
}
