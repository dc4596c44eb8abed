//! The client against independent servers: Python `websockets` and Node `ws`, plain and
//! `wss` (certificates made at test time), driven through `ringcast-testkit`.
//!
//! Needs the peers installed (`bash peers/setup.sh`); the testkit fails with that hint
//! otherwise.

use std::time::{Duration, Instant};

use ringcast_client::{ClientConfig, CloseCode, CloseFrame, Error, Message, Receiver};
use testkit::tls::TestCerts;
use testkit::{ListenOpts, Peer, PeerKind};
use tokio::runtime::Runtime;

const WAIT: Duration = Duration::from_secs(10);
/// Connect errors must arrive within this.
const ERROR_BOUND: Duration = Duration::from_secs(5);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn next(rt: &Runtime, receiver: &mut Receiver) -> Option<Result<Message, Error>> {
    rt.block_on(tokio::time::timeout(WAIT, receiver.next())).expect("no message in time")
}

fn next_message(rt: &Runtime, receiver: &mut Receiver) -> Message {
    next(rt, receiver).expect("stream ended").expect("error instead of a message")
}

/// A listener on `peer`, `wss` when `certs` are given, and a client configuration for it.
fn listen(peer: &mut Peer, certs: Option<&TestCerts>, opts: ListenOpts) -> (String, ClientConfig) {
    let opts = match certs {
        Some(certs) => opts.tls(&certs.cert_file, &certs.key_file),
        None => opts,
    };
    let listening = peer.listen(&opts);
    let mut config = ClientConfig::new("localhost", listening.port);
    if let Some(certs) = certs {
        config = config.tls(true).platform_roots(false).extra_root_file(&certs.ca_file);
    }
    (listening.server, config)
}

/// Messages, pings, fragments and both ways of disconnecting, against one peer server.
fn conversation(kind: PeerKind, tls: bool) {
    let rt = runtime();
    let _guard = rt.enter();
    let certs = tls.then(TestCerts::localhost);
    let mut peer = Peer::spawn(kind);
    let (server, config) = listen(&mut peer, certs.as_ref(), ListenOpts::echo());
    let config = config.path("/chat?room=1").origin("https://ringcast.test").header("X-Token", "t0k3n");

    let (sender, mut receiver) = rt.block_on(ringcast_client::connect(&config)).unwrap();
    let accepted = peer.expect_accepted(&server);
    assert_eq!(accepted.path, "/chat?room=1");
    assert_eq!(accepted.origin.as_deref(), Some("https://ringcast.test"));
    assert_eq!(accepted.headers.get("x-token").map(String::as_str), Some("t0k3n"));
    let id = accepted.id;

    // Echo: text (non-ASCII), binary, large, many.
    rt.block_on(sender.send_text("héllo wörld")).unwrap();
    assert_eq!(next_message(&rt, &mut receiver), Message::text("héllo wörld"));
    assert_eq!(peer.expect_text(&id), "héllo wörld");
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    rt.block_on(sender.send_binary(&data)).unwrap();
    assert_eq!(next_message(&rt, &mut receiver), Message::binary(data.clone()));
    assert_eq!(peer.expect_binary(&id), data);
    rt.block_on(async {
        for i in 0..200 {
            sender.send_text(format!("n{i}")).await.unwrap();
        }
    });
    for i in 0..200 {
        assert_eq!(next_message(&rt, &mut receiver).as_text(), Some(format!("n{i}").as_str()));
        assert_eq!(peer.expect_text(&id), format!("n{i}"));
    }

    // The server's ping is answered by the client; the client's ping by the server.
    peer.ping(&id, b"from server");
    assert_eq!(peer.expect_pong(&id), b"from server");
    assert_eq!(next_message(&rt, &mut receiver), Message::Ping(b"from server".to_vec().into()));
    rt.block_on(sender.ping(b"from client")).unwrap();
    assert_eq!(next_message(&rt, &mut receiver), Message::Pong(b"from client".to_vec().into()));
    assert_eq!(peer.expect_ping(&id), b"from client");

    // A fragmented message from the server arrives whole.
    peer.send_text_fragments(&id, &["frag", "men", "ted €"]);
    assert_eq!(next_message(&rt, &mut receiver), Message::text("fragmented €"));

    // Disconnect with a close frame: the server sees 1000.
    rt.block_on(sender.disconnect());
    assert_eq!(peer.expect_close(&id).0, 1000);
    assert!(matches!(
        next_message(&rt, &mut receiver),
        Message::Close(Some(CloseFrame { code: CloseCode::Normal, .. }))
    ));
    assert!(next(&rt, &mut receiver).is_none());
    rt.block_on(tokio::time::timeout(WAIT, sender.closed())).unwrap();

    // Disconnect without: the TCP connection just ends, the server sees 1006.
    let (sender, mut receiver) = rt.block_on(ringcast_client::connect(&config)).unwrap();
    let id = peer.expect_accepted(&server).id;
    rt.block_on(sender.send_text("bye")).unwrap();
    assert_eq!(peer.expect_text(&id), "bye");
    assert_eq!(next_message(&rt, &mut receiver), Message::text("bye"));
    rt.block_on(sender.abort());
    assert_eq!(peer.expect_close(&id).0, 1006);
    assert!(next(&rt, &mut receiver).is_none());

    // The server closes: the client sees its code and reason, and echoes the code.
    let (_sender, mut receiver) = rt.block_on(ringcast_client::connect(&config)).unwrap();
    let id = peer.expect_accepted(&server).id;
    peer.close(&id, 4001, "see you");
    assert_eq!(
        next_message(&rt, &mut receiver),
        Message::Close(Some(CloseFrame { code: CloseCode::Library(4001), reason: "see you".into() }))
    );
    assert!(next(&rt, &mut receiver).is_none());
    assert_eq!(peer.expect_close(&id).0, 4001);
}

/// A refused upgrade, and plain/TLS mismatches both ways: each error arrives fast.
fn refusals_and_mismatches(kind: PeerKind) {
    let rt = runtime();
    let _guard = rt.enter();
    let certs = TestCerts::localhost();
    let mut peer = Peer::spawn(kind);
    let connect_err = |config: &ClientConfig| {
        let start = Instant::now();
        let result = rt.block_on(tokio::time::timeout(ERROR_BOUND, ringcast_client::connect(config)));
        let error = match result {
            Err(_) => panic!("{kind}: no answer within {ERROR_BOUND:?} from {}", config.url()),
            Ok(Ok(_)) => panic!("{kind}: connected to {}", config.url()),
            Ok(Err(e)) => e,
        };
        eprintln!("{kind}: {} -> {error} after {:?}", config.url(), start.elapsed());
        (error, start.elapsed())
    };

    let (_, refusing) = listen(&mut peer, None, ListenOpts::echo().reject(403));
    let (error, _) = connect_err(&refusing);
    assert!(matches!(error, Error::HandshakeRefused { status: 403 }), "{kind}: {error:?}");

    let (_, secure) = listen(&mut peer, Some(&certs), ListenOpts::echo());
    let (error, took) = connect_err(&secure.clone().tls(false));
    assert!(matches!(error, Error::ServerSpeaksTls), "{kind}: plain client, TLS server: {error:?} after {took:?}");

    let (_, plain) = listen(&mut peer, None, ListenOpts::echo());
    let (error, took) = connect_err(&plain.clone().tls(true).platform_roots(false));
    assert!(matches!(error, Error::ServerNotTls), "{kind}: TLS client, plain server: {error:?} after {took:?}");

    // Without the test CA the certificate is not trusted.
    let untrusted = ClientConfig::new("localhost", secure.port()).tls(true);
    let (error, _) = connect_err(&untrusted);
    assert!(matches!(error, Error::Tls(rustls::Error::InvalidCertificate(_))), "{kind}: {error:?}");
}

#[test]
fn python_plain() {
    conversation(PeerKind::Python, false);
}

#[test]
fn python_tls() {
    conversation(PeerKind::Python, true);
}

#[test]
fn node_plain() {
    conversation(PeerKind::Node, false);
}

#[test]
fn node_tls() {
    conversation(PeerKind::Node, true);
}

#[test]
fn python_refusals_and_mismatches() {
    refusals_and_mismatches(PeerKind::Python);
}

#[test]
fn node_refusals_and_mismatches() {
    refusals_and_mismatches(PeerKind::Node);
}

/// The event-handler style against a real server.
#[test]
fn python_event_handler() {
    use std::sync::{Arc, Mutex};

    struct Chat(Arc<Mutex<Vec<String>>>);

    impl ringcast_client::EventHandler for Chat {
        async fn on_connect(&mut self, sender: ringcast_client::Sender) {
            sender.send_text("hi").await.unwrap();
        }
        async fn on_text(&mut self, text: ringcast_client::Utf8Bytes) {
            self.0.lock().unwrap().push(text.to_string());
        }
        async fn on_disconnect(&mut self, reason: &ringcast_client::DisconnectReason) {
            self.0.lock().unwrap().push(format!("{reason:?}"));
        }
    }

    let rt = runtime();
    let mut peer = Peer::python();
    let (server, config) = listen(&mut peer, None, ListenOpts::echo());
    let log = Arc::new(Mutex::new(Vec::new()));
    let _guard = rt.enter();
    let mut handle = ringcast_client::spawn(config, Chat(log.clone()));
    let id = peer.expect_accepted(&server).id;
    assert_eq!(peer.expect_text(&id), "hi");
    assert!(rt.block_on(handle.connected()).is_some());
    peer.close(&id, 1001, "going away");
    let (_, reason) = rt.block_on(tokio::time::timeout(WAIT, handle.join())).unwrap().unwrap();
    assert!(matches!(reason, ringcast_client::DisconnectReason::Closed(Some(ref f)) if f.code == CloseCode::Away));
    let log = log.lock().unwrap();
    assert_eq!(log[0], "hi");
    assert!(log[1].starts_with("Closed"), "{log:?}");
}
