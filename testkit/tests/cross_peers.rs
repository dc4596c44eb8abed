//! The harness against itself: Python `websockets` and Node `ws` peers talk to each
//! other, each in both roles. This proves the peers and the Rust driver work before
//! any ringcast code is involved.

use std::time::Duration;

use testkit::tls::TestCerts;
use testkit::{ConnectOpts, Drain, ListenOpts, Payload, Peer, PeerKind, PeerKind::*};

/// Runs `body(server_kind, client_kind)` as two tests: Python server ↔ Node client and
/// Node server ↔ Python client.
macro_rules! both_directions {
    ($name:ident, $body:path) => {
        mod $name {
            use super::*;
            #[test]
            fn python_server_node_client() {
                $body(Python, Node);
            }
            #[test]
            fn node_server_python_client() {
                $body(Node, Python);
            }
        }
    };
}

fn url(port: u16, path: &str) -> String {
    format!("ws://127.0.0.1:{port}{path}")
}

fn echo_roundtrip(sk: PeerKind, ck: PeerKind) {
    let mut server = Peer::spawn(sk);
    let mut client = Peer::spawn(ck);
    let mut lo = ListenOpts::echo().name("e").subprotocol("chat.v2").subprotocol("chat.v1");
    lo.response_headers.push(("X-Ringcast".into(), "yes".into()));
    let l = server.listen(&lo);
    assert_eq!(l.server, "e");

    let opened = client.connect(
        "a",
        &url(l.port, "/room/1?x=y"),
        &ConnectOpts::new()
            .origin("http://example.test")
            .header("X-Test", "1")
            .subprotocol("nope")
            .subprotocol("chat.v1"),
    );
    assert_eq!(opened.subprotocol.as_deref(), Some("chat.v1"));
    assert_eq!(opened.headers.get("x-ringcast").map(String::as_str), Some("yes"));

    let acc = server.expect_accepted("e");
    assert_eq!(acc.id, "e.1");
    assert_eq!(acc.path, "/room/1?x=y");
    assert_eq!(acc.origin.as_deref(), Some("http://example.test"));
    assert_eq!(acc.headers.get("x-test").map(String::as_str), Some("1"));
    assert_eq!(acc.subprotocol.as_deref(), Some("chat.v1"));
    assert!(acc.remote.as_deref().unwrap_or("").starts_with("127.0.0.1:"), "{acc:?}");

    let text = "héllo ✓ 🚀";
    client.send_text("a", text);
    assert_eq!(server.expect_text(&acc.id), text);
    assert_eq!(client.expect_text("a"), text);

    let bin = [0u8, 1, 2, 253, 254, 255];
    client.send_binary("a", &bin);
    assert_eq!(server.expect_binary(&acc.id), bin);
    assert_eq!(client.expect_binary("a"), bin);

    client.send_text("a", "");
    assert_eq!(client.expect_text("a"), "");
    client.send_binary("a", &[]);
    assert_eq!(client.expect_binary("a"), Vec::<u8>::new());

    client.send_text_fragments("a", &["frag", "men", "ted ✓"]);
    assert_eq!(client.expect_text("a"), "fragmented ✓");
    client.send_binary_fragments("a", &[&[1, 2], &[3], &[4, 5, 6]]);
    assert_eq!(client.expect_binary("a"), vec![1, 2, 3, 4, 5, 6]);

    let big: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    client.send_binary("a", &big);
    assert_eq!(client.expect_binary("a"), big);

    client.ping("a", b"hb");
    assert_eq!(server.expect_ping(&acc.id), b"hb");
    assert_eq!(client.expect_pong("a"), b"hb");
    server.pong(&acc.id, b"unsolicited");
    assert_eq!(client.expect_pong("a"), b"unsolicited");

    client.close("a", 4001, "bye");
    assert_eq!(server.expect_close(&acc.id), (4001, "bye".to_string()));
    assert_eq!(client.expect_close("a"), (4001, "bye".to_string()));
    let st = client.status("a").expect("status of a");
    assert_eq!((st.state.as_str(), st.close_code), ("closed", Some(4001)));
}
both_directions!(echo_roundtrip_and_close_code, echo_roundtrip);

fn close_variants(sk: PeerKind, ck: PeerKind) {
    let mut server = Peer::spawn(sk);
    let mut client = Peer::spawn(ck);
    let l = server.listen(&ListenOpts::manual().name("m"));
    let u = url(l.port, "/");

    // Server-initiated close with a code.
    client.connect("a", &u, &ConnectOpts::new());
    let a = server.expect_accepted("m").id;
    server.close(&a, 4002, "server bye");
    assert_eq!(client.expect_close("a"), (4002, "server bye".to_string()));
    assert_eq!(server.expect_close(&a), (4002, "server bye".to_string()));

    // Close frame without a status code: the other side sees 1005.
    client.connect("b", &u, &ConnectOpts::new());
    let b = server.expect_accepted("m").id;
    client.close_without_status("b");
    assert_eq!(server.expect_close(&b).0, 1005);
    assert_eq!(client.expect_close("b").0, 1005);

    // Client drops TCP: the server sees 1006.
    client.connect("c", &u, &ConnectOpts::new());
    let c = server.expect_accepted("m").id;
    client.abort("c");
    assert_eq!(server.expect_close(&c).0, 1006);
    assert_eq!(client.expect_close("c").0, 1006);

    // Server drops TCP: the client sees 1006.
    client.connect("d", &u, &ConnectOpts::new());
    let d = server.expect_accepted("m").id;
    server.abort(&d);
    assert_eq!(client.expect_close("d").0, 1006);

    // Ids can be reused once closed; server-side messages in manual mode.
    client.connect("a", &u, &ConnectOpts::new());
    let a2 = server.expect_accepted("m").id;
    server.send_text(&a2, "from server");
    assert_eq!(client.expect_text("a"), "from server");
    client.expect_no_event(|e| e.id() == Some("a"), Duration::from_millis(200));

    // Stopping the listener closes its connections with 1001 (going away).
    server.stop("m");
    assert_eq!(client.expect_close("a").0, 1001);
    assert!(client.try_connect("z", &u, &ConnectOpts::new()).is_err(), "listener is gone");
}
both_directions!(close_codes_seen_by_the_other_side, close_variants);

fn crowd_broadcast(sk: PeerKind, ck: PeerKind) {
    const N: usize = 100;
    const M: usize = 20;
    let mut server = Peer::spawn(sk);
    let mut client = Peer::spawn(ck);
    let l = server.listen(&ListenOpts::broadcast().name("b").quiet().collect());
    let crowd = client.crowd("c", N, &url(l.port, "/feed"), &ConnectOpts::new());
    assert_eq!((crowd.opened, crowd.failed), (N, 0));
    server.wait_open_conns("b.", N, Duration::from_secs(10));

    for i in 0..M {
        assert_eq!(server.publish_text("b", &format!("m{i}")), N);
    }
    assert_eq!(server.publish_binary("b", &[9, 9, 9]), N);

    // One connection in detail (kept, so the crowd-wide drain below still counts it).
    let one = client.drain(&Drain::id("c42").wait_count(M + 1).list().keep());
    let got: Vec<Payload> = one.messages.into_iter().map(|m| m.payload).collect();
    let mut want: Vec<Payload> = (0..M).map(|i| Payload::Text(format!("m{i}"))).collect();
    want.push(Payload::Binary(vec![9, 9, 9]));
    assert_eq!(got, want);

    let d = client.drain(&Drain::prefix("c").wait_count(M + 1));
    assert!(d.satisfied && !d.timed_out, "{d:?}");
    assert_eq!((d.conns, d.min, d.max), (N, M + 1, M + 1));
    assert_eq!((d.text, d.binary), (N * M, N));
    let bytes: usize = (0..M).map(|i| format!("m{i}").len()).sum::<usize>() + 3;
    assert_eq!(d.bytes, (N * bytes) as u64);
    assert_eq!(client.drain(&Drain::prefix("c")).total, 0, "drained messages are gone");

    // Upstream: every client sends once; the server collected one per connection.
    client.send_text_to_prefix("c", "up");
    let up = server.drain(&Drain::prefix("b.").wait_count(1));
    assert_eq!((up.conns, up.min, up.max, up.total), (N, 1, 1, N));

    // Everyone leaves with 1000; the server saw each close code.
    client.close_prefix("c", 1000, "");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let d = server.drain(&Drain::prefix("b."));
        if d.closed.len() == N {
            assert!(d.closed.values().all(|&c| c == 1000), "{:?}", d.closed);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "only {} closed", d.closed.len());
        std::thread::sleep(Duration::from_millis(50));
    }
}
both_directions!(crowd_of_100_with_broadcast_from_publish, crowd_broadcast);

fn rejection(sk: PeerKind, ck: PeerKind) {
    let mut server = Peer::spawn(sk);
    let mut client = Peer::spawn(ck);
    let l = server.listen(&ListenOpts::echo().name("r").reject(403));
    let err = client
        .try_connect("x", &url(l.port, "/private"), &ConnectOpts::new().origin("http://evil.test"))
        .expect_err("handshake must be refused");
    assert_eq!(err.status, Some(403), "{err:?}");
    let rej = server.expect_rejected("r");
    assert_eq!((rej.path.as_str(), rej.status), ("/private", 403));
    assert_eq!(rej.origin.as_deref(), Some("http://evil.test"));

    // Nothing listens on a fresh port: an error without status.
    let err =
        client.try_connect("y", &url(testkit::free_port(), "/"), &ConnectOpts::new()).expect_err("connection refused");
    assert_eq!(err.status, None);
}
both_directions!(refused_handshake_and_seen_origin, rejection);

fn tls(sk: PeerKind, ck: PeerKind) {
    let certs = TestCerts::localhost();
    let mut server = Peer::spawn(sk);
    let mut client = Peer::spawn(ck);
    let l = server.listen(&ListenOpts::echo().name("t").tls(&certs.cert_file, &certs.key_file));
    let wss = format!("wss://localhost:{}/secure", l.port);

    client.connect("a", &wss, &ConnectOpts::new().ca_file(&certs.ca_file));
    client.send_text("a", "over tls");
    assert_eq!(client.expect_text("a"), "over tls");
    assert_eq!(server.expect_accepted("t").path, "/secure");

    let err = client.try_connect("b", &wss, &ConnectOpts::new()).expect_err("an unknown CA must be refused");
    assert!(err.message.to_lowercase().contains("cert"), "{err:?}");

    client.connect("c", &wss, &ConnectOpts::new().insecure());
    client.send_binary("c", b"\x00tls");
    assert_eq!(client.expect_binary("c"), b"\x00tls");
}
both_directions!(wss_with_test_ca, tls);

fn max_size(sk: PeerKind, ck: PeerKind) {
    let mut server = Peer::spawn(sk);
    let mut client = Peer::spawn(ck);
    let l = server.listen(&ListenOpts::echo().name("s"));
    client.connect("a", &url(l.port, "/"), &ConnectOpts::new().max_size(1024));
    let acc = server.expect_accepted("s").id;
    client.send_text("a", &"x".repeat(1024));
    assert_eq!(client.expect_text("a").len(), 1024);
    client.send_text("a", &"y".repeat(2048)); // echoed back: too big for the client
    assert_eq!(server.expect_close(&acc).0, 1009, "the client closes with 1009");
    // The client failed the connection itself and stopped reading: it received no
    // close frame, so both libraries report 1006 on their own side.
    assert_eq!(client.expect_close("a").0, 1006);
}
both_directions!(client_max_size_closes_with_1009, max_size);

fn pause_resume(sk: PeerKind, ck: PeerKind) {
    let mut server = Peer::spawn(sk);
    let mut client = Peer::spawn(ck);
    let l = server.listen(&ListenOpts::broadcast().name("p"));
    client.connect("a", &url(l.port, "/"), &ConnectOpts::new().collect());
    server.wait_open_conns("p.", 1, Duration::from_secs(5));
    client.pause("a");
    assert!(client.status("a").expect("status").paused);
    let payload = "z".repeat(1000);
    server.publish_text_n("p", &payload, 50);
    std::thread::sleep(Duration::from_millis(200));
    client.resume("a");
    let d = client.drain(&Drain::id("a").wait_count(50));
    assert_eq!((d.total, d.bytes), (50, 50_000), "{d:?}");
}
both_directions!(pause_then_resume_delivers_everything, pause_resume);

#[test]
fn peers_identify_themselves() {
    let py = Peer::python();
    assert_eq!(py.info().library, "websockets");
    let major: u32 = py.info().version.split('.').next().unwrap().parse().unwrap();
    assert!(major >= 14, "websockets {} < 14", py.info().version);
    let node = Peer::node();
    assert_eq!(node.info().library, "ws");
}

#[test]
fn failed_command_is_reported_not_hung() {
    let mut p = Peer::python();
    let err = p.request(serde_json::json!({"cmd": "send", "id": "nope", "text": "x"})).expect_err("unknown id");
    assert!(err.message.contains("unknown connection"), "{err:?}");
    let mut n = Peer::node();
    let err = n.request(serde_json::json!({"cmd": "bogus"})).expect_err("unknown command");
    assert!(err.message.contains("unknown command"), "{err:?}");
}

fn compression_and_digest(sk: PeerKind, ck: PeerKind) {
    let mut server = Peer::spawn(sk);
    let mut client = Peer::spawn(ck);
    let l = server.listen(&ListenOpts { compression: true, ..ListenOpts::echo().name("z") });
    let opened = client.connect("a", &url(l.port, "/"), &ConnectOpts::new().compression().digest());
    let ext = opened.extensions.unwrap_or_default();
    assert!(ext.contains("permessage-deflate"), "extensions {ext:?}");
    let acc = server.expect_accepted("z");
    assert!(acc.headers.get("sec-websocket-extensions").is_some_and(|e| e.contains("permessage-deflate")));
    let text = "compressible ".repeat(10_000);
    client.send_text("a", &text);
    match client.expect_event(|e| e.id() == Some("a"), client.timeout()) {
        testkit::Event::Digest { binary, len, sha256, .. } => {
            assert!(!binary);
            assert_eq!(len, text.len());
            assert_eq!(sha256.len(), 64);
        }
        other => panic!("expected a digest, got {other:?}"),
    }
    // Without compression offered, none is negotiated.
    let plain = client.connect("b", &url(l.port, "/"), &ConnectOpts::new());
    assert_eq!(plain.extensions, None);
}
both_directions!(permessage_deflate_and_digest_events, compression_and_digest);
