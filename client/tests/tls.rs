//! `wss://` against in-process rustls servers with certificates made at test time.

mod common;

use std::time::Duration;

use common::{Server, WAIT, within};
use ringcast_client::{ClientConfig, CloseCode, Message};
use tokio::net::TcpListener;

async fn next(receiver: &mut ringcast_client::Receiver) -> Message {
    tokio::time::timeout(WAIT, receiver.next()).await.unwrap().unwrap().unwrap()
}

async fn echo_once(config: &ClientConfig) {
    let (sender, mut receiver) = ringcast_client::connect(config).await.unwrap();
    sender.send_text("over tls").await.unwrap();
    sender.send_binary(vec![5u8; 100_000]).await.unwrap();
    assert_eq!(next(&mut receiver).await, Message::text("over tls"));
    assert_eq!(next(&mut receiver).await, Message::binary(vec![5u8; 100_000]));
    sender.disconnect().await;
    assert!(matches!(next(&mut receiver).await, Message::Close(Some(f)) if f.code == CloseCode::Normal));
    within(WAIT, sender.closed()).await;
}

#[tokio::test]
async fn trusts_an_extra_root_file_for_names_and_addresses() {
    let certs = testkit::tls::TestCerts::localhost();
    let port = Server::tls(common::server_config_from_pem(&certs.cert_pem, &certs.key_pem)).await.echo_all();
    for host in ["localhost", "127.0.0.1"] {
        let config = ClientConfig::new(host, port).tls(true).extra_root_file(&certs.ca_file);
        echo_once(&config).await;
    }
    let url = format!("wss://localhost:{port}/path");
    echo_once(&ClientConfig::from_url(&url).unwrap().platform_roots(false).extra_root_file(&certs.ca_file)).await;
}

#[tokio::test]
async fn trusts_an_extra_root_certificate_given_as_der() {
    let (cert, key) = common::self_signed();
    let port = Server::tls(common::server_config(vec![cert.clone()], key)).await.echo_all();
    echo_once(&ClientConfig::new("localhost", port).tls(true).extra_root_certificate(cert)).await;
}

#[tokio::test]
async fn the_opt_out_accepts_a_self_signed_certificate() {
    let (cert, key) = common::self_signed();
    let port = Server::tls(common::server_config(vec![cert], key)).await.echo_all();
    echo_once(&ClientConfig::new("127.0.0.1", port).tls(true).danger_accept_invalid_certs()).await;
}

#[tokio::test]
async fn sni_carries_the_host_name_but_not_an_ip_address() {
    let (cert, key) = common::self_signed();
    let acceptor = tokio_rustls::TlsAcceptor::from(common::server_config(vec![cert.clone()], key));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(tls) = acceptor.accept(tcp).await {
                let _ = tx.send(tls.get_ref().1.server_name().map(str::to_owned));
            }
        }
    });
    let config = |host: &str| ClientConfig::new(host, port).tls(true).extra_root_certificate(cert.clone());
    for (host, sni) in [("localhost", Some("localhost".to_owned())), ("127.0.0.1", None)] {
        // The test server never answers the upgrade: only the TLS handshake matters.
        let config = config(host).handshake_timeout(Duration::from_secs(2));
        let handle = tokio::spawn(async move { drop(ringcast_client::connect(&config).await) });
        assert_eq!(tokio::time::timeout(WAIT, rx.recv()).await.unwrap(), Some(sni));
        handle.abort();
    }
}

#[tokio::test]
async fn a_slow_tls_server_is_not_mistaken_for_a_plain_one() {
    // The server waits 1.5 s before its TLS handshake: longer than the silence after which
    // the client checks whether the port speaks plain HTTP. That check must neither fail
    // the connection nor hold the handshake up.
    let (cert, key) = common::self_signed();
    let acceptor = tokio_rustls::TlsAcceptor::from(common::server_config(vec![cert], key));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let conn = common::ServerStream::Tls(Box::new(tls));
                    if let Some(conn) = common::Conn::upgrade_stream(conn).await {
                        conn.echo().await;
                    }
                }
            });
        }
    });
    let config = ClientConfig::new("127.0.0.1", port).tls(true).danger_accept_invalid_certs();
    let (result, took) = within(WAIT, ringcast_client::connect(&config)).await;
    let (sender, mut receiver) = result.unwrap();
    assert!(took < Duration::from_millis(2500), "{took:?}");
    sender.send_text("late but fine").await.unwrap();
    assert_eq!(next(&mut receiver).await, Message::text("late but fine"));
}
