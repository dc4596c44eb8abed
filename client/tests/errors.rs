//! Every way connecting can fail: the error variant, and that it arrives within a bound.
//! Local listeners on 127.0.0.1 only; DNS failure uses a name under `.invalid`.

mod common;

use std::time::Duration;

use common::{Server, raw_server, read_head, within};
use ringcast_client::{ClientConfig, Error, Stage};
use tokio::io::AsyncWriteExt;

/// Errors must arrive well within this.
const BOUND: Duration = Duration::from_secs(5);

async fn connect_err(config: &ClientConfig) -> (Error, Duration) {
    let (result, took) = within(BOUND, ringcast_client::connect(config)).await;
    match result {
        Ok(_) => panic!("connected to {}", config.url()),
        Err(e) => (e, took),
    }
}

#[tokio::test]
async fn connection_refused() {
    let port = common::closed_port().await;
    let (error, _) = connect_err(&ClientConfig::new("127.0.0.1", port)).await;
    assert!(matches!(error, Error::ConnectionRefused { addr } if addr.port() == port), "{error:?}");
    assert!(error.is_connect_error());
}

#[tokio::test]
async fn connection_refused_on_every_address_of_localhost() {
    let port = common::closed_port().await;
    let (error, _) = connect_err(&ClientConfig::new("localhost", port)).await;
    assert!(matches!(error, Error::ConnectionRefused { .. }), "{error:?}");
}

#[tokio::test]
async fn dns_failure() {
    let (error, _) = connect_err(&ClientConfig::new("no-such-host.invalid", 80)).await;
    assert!(matches!(&error, Error::Dns { host, .. } if host == "no-such-host.invalid"), "{error:?}");
    let (error, _) = connect_err(&ClientConfig::from_url("wss://ringcast-test.invalid/x").unwrap()).await;
    assert!(matches!(error, Error::Dns { .. }), "{error:?}");
}

#[tokio::test]
async fn handshake_refused_with_the_http_status() {
    for status in [400u16, 403, 404, 426, 500] {
        let port = raw_server(move |mut tcp| async move {
            read_head(&mut tcp).await;
            let response = ringcast_codec::handshake::error_response(status, "", "go away");
            let _ = tcp.write_all(&response).await;
        })
        .await;
        let (error, _) = connect_err(&ClientConfig::new("127.0.0.1", port)).await;
        assert!(matches!(error, Error::HandshakeRefused { status: s } if s == status), "{error:?}");
        assert!(error.to_string().contains(&status.to_string()));
    }
}

#[tokio::test]
async fn wrong_accept_key() {
    let port = raw_server(|mut tcp| async move {
        read_head(&mut tcp).await;
        let response = ringcast_codec::handshake::accept_response("dGhpcyBpcyBub3QgdGhlIGtleQ==", None, "");
        let _ = tcp.write_all(&response).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
    })
    .await;
    let (error, _) = connect_err(&ClientConfig::new("127.0.0.1", port)).await;
    assert!(matches!(error, Error::BadAcceptKey), "{error:?}");
}

#[tokio::test]
async fn a_101_without_upgrade_headers() {
    let port = raw_server(|mut tcp| async move {
        read_head(&mut tcp).await;
        let _ = tcp.write_all(b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x\r\n\r\n").await;
        tokio::time::sleep(Duration::from_secs(10)).await;
    })
    .await;
    let (error, _) = connect_err(&ClientConfig::new("127.0.0.1", port)).await;
    assert!(matches!(error, Error::Handshake(_)), "{error:?}");
}

#[tokio::test]
async fn a_server_that_never_answers_the_upgrade_times_out() {
    let port = raw_server(|tcp| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(tcp);
    })
    .await;
    let config = ClientConfig::new("127.0.0.1", port).handshake_timeout(Duration::from_millis(300));
    let (error, took) = connect_err(&config).await;
    assert!(matches!(error, Error::Timeout { stage: Stage::Handshake }), "{error:?}");
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(2), "{took:?}");
}

#[tokio::test]
async fn a_server_that_hangs_up_without_answering() {
    // Not TLS either: the probe gets no TLS record back.
    let port = raw_server(|mut tcp| async move {
        read_head(&mut tcp).await;
    })
    .await;
    let (error, _) = connect_err(&ClientConfig::new("127.0.0.1", port)).await;
    assert!(matches!(error, Error::ClosedDuringHandshake { stage: Stage::Handshake }), "{error:?}");
}

#[tokio::test]
async fn tcp_connect_timeout() {
    // A listener whose accept queue is full drops further SYNs: the connect hangs.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => fillers.push(stream),
            _ => break,
        }
    }
    let config = ClientConfig::new("127.0.0.1", addr.port()).connect_timeout(Duration::from_millis(300));
    let (error, took) = connect_err(&config).await;
    assert!(matches!(error, Error::Timeout { stage: Stage::Connect }), "{error:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    drop(listener);
}

#[tokio::test]
async fn plain_client_against_a_tls_server_that_sends_an_alert() {
    // rustls answers an HTTP request with a TLS alert record.
    let (cert, key) = common::self_signed();
    let server = Server::tls(common::server_config(vec![cert], key)).await;
    let (error, took) = connect_err(&ClientConfig::new("127.0.0.1", server.port)).await;
    assert!(matches!(error, Error::ServerSpeaksTls), "{error:?}");
    assert!(error.to_string().contains("wss://"));
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[tokio::test]
async fn plain_client_against_a_tls_server_that_hangs_up() {
    // OpenSSL-based servers drop an HTTP request without a word; the client then asks on
    // a second connection and gets a TLS answer to a ClientHello.
    let port = raw_server(|mut tcp| async move {
        let mut first = [0u8; 5];
        if tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut first).await.is_err() {
            return;
        }
        if first[0] == 0x16 {
            // A ServerHello-looking record header, then nothing.
            let _ = tcp.write_all(&[0x16, 0x03, 0x03, 0x00, 0x31]).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        // An HTTP request: hang up.
    })
    .await;
    let (error, took) = connect_err(&ClientConfig::new("127.0.0.1", port)).await;
    assert!(matches!(error, Error::ServerSpeaksTls), "{error:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[tokio::test]
async fn tls_client_against_a_plain_server_that_answers_400() {
    let port = raw_server(|mut tcp| async move {
        let mut buf = [0u8; 1024];
        let _ = tokio::io::AsyncReadExt::read(&mut tcp, &mut buf).await;
        let _ = tcp.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n").await;
    })
    .await;
    let config = ClientConfig::new("127.0.0.1", port).tls(true).platform_roots(false);
    let (error, took) = connect_err(&config).await;
    assert!(matches!(error, Error::ServerNotTls), "{error:?}");
    assert!(error.to_string().contains("ws://"));
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[tokio::test]
async fn tls_client_against_a_plain_websocket_server() {
    // The codec-based server answers a ClientHello with 400 (not a valid request).
    let port = raw_server(|mut tcp| async move {
        let mut buf = bytes::BytesMut::with_capacity(4096);
        let _ = tokio::io::AsyncReadExt::read_buf(&mut tcp, &mut buf).await;
        if let Err(e) = ringcast_codec::handshake::Request::parse(&buf) {
            let _ = tcp.write_all(&e.response()).await;
        }
    })
    .await;
    let (error, _) = connect_err(&ClientConfig::new("localhost", port).tls(true)).await;
    assert!(matches!(error, Error::ServerNotTls), "{error:?}");
}

#[tokio::test]
async fn tls_client_against_a_plain_server_that_waits_for_more() {
    // Some HTTP servers wait for the end of the "request line" that a ClientHello never
    // finishes; the client notices the silence and asks with a plain request.
    let port = raw_server(|mut tcp| async move {
        let head = read_head(&mut tcp).await;
        if head.starts_with(b"GET ") {
            let _ = tcp.write_all(b"HTTP/1.1 426 Upgrade Required\r\n\r\n").await;
        }
    })
    .await;
    let config = ClientConfig::new("127.0.0.1", port).tls(true).platform_roots(false);
    let (error, took) = connect_err(&config).await;
    assert!(matches!(error, Error::ServerNotTls), "{error:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn tls_handshake_timeout() {
    let port = raw_server(|tcp| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(tcp);
    })
    .await;
    let config = ClientConfig::new("127.0.0.1", port)
        .tls(true)
        .platform_roots(false)
        .handshake_timeout(Duration::from_millis(1500));
    let (error, took) = connect_err(&config).await;
    assert!(matches!(error, Error::Timeout { stage: Stage::Tls }), "{error:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn untrusted_certificate() {
    let (cert, key) = common::self_signed();
    let server = Server::tls(common::server_config(vec![cert], key)).await;
    let config = ClientConfig::new("localhost", server.port).tls(true);
    let (error, _) = connect_err(&config).await;
    assert!(matches!(error, Error::Tls(rustls::Error::InvalidCertificate(_))), "{error:?}");
    assert!(error.is_connect_error());
}

#[tokio::test]
async fn certificate_for_another_name() {
    let certs = testkit::tls::TestCerts::generate(&["example.test"]);
    let server = Server::tls(common::server_config_from_pem(&certs.cert_pem, &certs.key_pem)).await;
    let config = ClientConfig::new("localhost", server.port).tls(true).extra_root_file(&certs.ca_file);
    let (error, _) = connect_err(&config).await;
    assert!(
        matches!(
            error,
            Error::Tls(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. } | rustls::CertificateError::NotValidForName
            ))
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn invalid_configuration_fails_before_any_traffic() {
    let port = common::closed_port().await;
    for config in [
        ClientConfig::new("127.0.0.1", port).header("X-Evil", "a\r\nInjected: 1"),
        ClientConfig::new("127.0.0.1", port).header("Sec-WebSocket-Key", "mine"),
        ClientConfig::new("127.0.0.1", port).tls(true).platform_roots(false).extra_root_file("/nonexistent.pem"),
    ] {
        let (error, _) = connect_err(&config).await;
        assert!(matches!(error, Error::InvalidConfig(_)), "{error:?}");
    }
    assert!(matches!(ClientConfig::from_url("http://example.com/"), Err(Error::InvalidConfig(_))));
}
