//! ringcast client ↔ ringcast server, plain and wss: the two halves of the project
//! against each other (each is also tested against independent peers elsewhere).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ringcast::{
    Allow, CloseFrame, Connection, DisconnectReason, Handler, IoBackend, Request, Server, ServerHandle, TlsFiles,
};
use ringcast_client::{ClientConfig, CloseCode, Error, Message};
use testkit::tls::TestCerts;

/// Echoes messages, refuses `/forbidden`, records how connections ended.
#[derive(Default)]
struct Echo {
    closes: Mutex<Vec<Option<u16>>>,
    disconnects: Mutex<Vec<DisconnectReason>>,
}

impl Handler for Echo {
    type Data = ();

    fn allow(&self, request: &Request, _peer: std::net::SocketAddr) -> Allow {
        (request.path() != "/forbidden").into()
    }

    fn on_text(&self, conn: &mut Connection<'_, Self::Data>, text: &str) {
        let _ = conn.send(text);
    }

    fn on_binary(&self, conn: &mut Connection<'_, Self::Data>, data: &[u8]) {
        let _ = conn.send(data);
    }

    fn on_close(&self, _conn: &mut Connection<'_, Self::Data>, frame: Option<&CloseFrame>) {
        self.closes.lock().unwrap().push(frame.map(|f| u16::from(f.code)));
    }

    fn on_disconnect(&self, _conn: &mut Connection<'_, Self::Data>, reason: &DisconnectReason) {
        self.disconnects.lock().unwrap().push(reason.clone());
    }
}

fn server(tls: Option<&TestCerts>) -> ServerHandle<Echo> {
    let mut builder =
        Server::builder().bind([127, 0, 0, 1].into()).port(0).workers(2).idle_timeout(Some(Duration::from_millis(200)));
    if let Some(certs) = tls {
        builder = builder.tls(TlsFiles {
            certificate: certs.cert_file.clone(),
            private_key: certs.key_file.clone(),
            root_certificate: None,
        });
    }
    builder.io_backend(IoBackend::Auto).start(Echo::default()).unwrap()
}

fn config(server: &ServerHandle<Echo>, certs: Option<&TestCerts>) -> ClientConfig {
    let config = ClientConfig::new("localhost", server.local_addr().port());
    match certs {
        Some(certs) => config.tls(true).extra_root_file(&certs.ca_file),
        None => config,
    }
}

/// Waits (bounded) until `check` holds.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn echo_close_and_abrupt_end_plain_and_tls() {
    let certs = TestCerts::localhost();
    for tls in [None, Some(&certs)] {
        let server = server(tls);
        let (sender, mut receiver) = ringcast_client::connect(&config(&server, tls)).await.unwrap();
        sender.send_text("hello").await.unwrap();
        assert_eq!(receiver.next().await.unwrap().unwrap(), Message::text("hello"));
        let big: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i % 251) as u8).collect();
        sender.send_binary(big.clone()).await.unwrap();
        assert_eq!(receiver.next().await.unwrap().unwrap(), Message::Binary(big.into()));
        // With a close frame: the server sees 1000.
        sender.disconnect().await;
        let handler = server.handler();
        eventually("close 1000 at the server", || handler.closes.lock().unwrap().as_slice() == [Some(1000)]).await;
        eventually("disconnect", || {
            handler.disconnects.lock().unwrap().as_slice() == [DisconnectReason::Closed(CloseCode::Normal)]
        })
        .await;
        // Without: the TCP connection just ends.
        let (sender, _receiver) = ringcast_client::connect(&config(&server, tls)).await.unwrap();
        sender.abort().await;
        eventually("abrupt end at the server", || handler.disconnects.lock().unwrap().len() == 2).await;
        assert_eq!(handler.disconnects.lock().unwrap()[1], DisconnectReason::Eof, "tls: {}", tls.is_some());
        assert_eq!(handler.closes.lock().unwrap().len(), 1, "no second close frame");
        server.stop();
    }
}

#[tokio::test]
async fn server_close_pings_and_broadcasts_reach_the_client() {
    let server = server(None);
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(ringcast_client::connect(&config(&server, None)).await.unwrap());
    }
    // The server's idle pings (every 200 ms) are answered by the client: still open later.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(server.stats().websockets, 50);
    // A client ping gets a pong.
    let (sender, receiver) = &mut clients[0];
    sender.ping(b"p".to_vec()).await.unwrap();
    loop {
        match receiver.next().await.unwrap().unwrap() {
            Message::Pong(payload) => break assert_eq!(&payload[..], b"p"),
            Message::Ping(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    for i in 0..10 {
        server.broadcast(&format!("b{i}"));
    }
    for (_, receiver) in &mut clients {
        let mut got = Vec::new();
        while got.len() < 10 {
            match receiver.next().await.unwrap().unwrap() {
                Message::Text(text) => got.push(text.to_string()),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, (0..10).map(|i| format!("b{i}")).collect::<Vec<_>>());
    }
    // Stopping the server closes every client with 1001, which the client yields.
    let stop = std::thread::spawn(move || server.stop());
    for (_, receiver) in &mut clients {
        loop {
            match receiver.next().await.unwrap() {
                Ok(Message::Close(Some(frame))) => break assert_eq!(frame.code, CloseCode::Away),
                Ok(Message::Ping(_) | Message::Pong(_)) => {}
                other => panic!("expected close 1001, got {other:?}"),
            }
        }
    }
    stop.join().unwrap();
}

#[tokio::test]
async fn mismatched_tls_and_refusals_are_clear_errors() {
    let certs = TestCerts::localhost();
    let plain = server(None);
    let secure = server(Some(&certs));
    let started = Instant::now();
    let plain_to_tls = ringcast_client::connect(&ClientConfig::new("localhost", secure.local_addr().port())).await;
    assert!(matches!(plain_to_tls, Err(Error::ServerSpeaksTls)), "{plain_to_tls:?}");
    let tls_to_plain = ringcast_client::connect(&config(&plain, Some(&certs))).await;
    assert!(matches!(tls_to_plain, Err(Error::ServerNotTls)), "{tls_to_plain:?}");
    let refused = ringcast_client::connect(&config(&plain, None).path("/forbidden")).await;
    assert!(matches!(refused, Err(Error::HandshakeRefused { status: 403 })), "{refused:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "errors must come fast: {:?}", started.elapsed());
    plain.stop();
    secure.stop();
}
