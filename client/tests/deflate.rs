//! permessage-deflate from the client's side: what it offers and puts on the wire
//! (checked by a hand-written server that inflates with zlib through flate2), and
//! compressed round trips against Python `websockets`, Node `ws` and the ringcast
//! server.

use std::time::Duration;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use ringcast_client::{ClientConfig, ClientDeflateConfig, Message};
use ringcast_codec::frame::{FrameHeader, FrameRules, HeaderParse};
use ringcast_codec::handshake::{self, Request, RequestParse, UpgradeChecks};
use ringcast_codec::{OpCode, Role, apply_mask};
use testkit::{ListenOpts, Peer, PeerKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(10);
const RSV1: u8 = 0b100;

fn json_update(len: usize) -> String {
    let mut out = String::from("[");
    let mut i = 0;
    while out.len() < len {
        out.push_str(&format!(
            r#"{{"symbol":"SYM{}","price":{}.{:02},"side":"sell"}},"#,
            i % 40,
            100 + i % 900,
            i % 100
        ));
        i += 1;
    }
    out.truncate(len - 1);
    out.push(']');
    out
}

/// A server that accepts one upgrade, answering the extension offer with `answer`.
async fn accept_one(answer: &'static str) -> (u16, tokio::task::JoinHandle<(TcpStream, Request)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            if let RequestParse::Complete { request, .. } = Request::parse(&buf).unwrap() {
                let accept = handshake::validate_upgrade(&request, UpgradeChecks::default()).unwrap();
                let extra =
                    if answer.is_empty() { String::new() } else { format!("Sec-WebSocket-Extensions: {answer}\r\n") };
                tcp.write_all(&handshake::accept_response(&accept, None, &extra)).await.unwrap();
                return (tcp, request);
            }
        }
    });
    (port, task)
}

/// The next frame from the client: its header and unmasked payload.
async fn read_frame(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> (FrameHeader, Vec<u8>) {
    let rules = FrameRules { allowed_rsv: RSV1, ..FrameRules::for_role(Role::Server, 64 << 20) };
    loop {
        if let Ok(HeaderParse::Complete { header, header_len }) = FrameHeader::parse(buf, &rules) {
            let total = header_len + header.payload_len as usize;
            if buf.len() >= total {
                let mut payload = buf[header_len..total].to_vec();
                apply_mask(&mut payload, header.mask.expect("client frames are masked"), 0);
                buf.drain(..total);
                return (header, payload);
            }
        }
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk)).await.expect("a frame in time").unwrap();
        assert!(n > 0, "EOF");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn inflate(inflater: &mut Decompress, payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 20);
    let start = inflater.total_in();
    inflater.decompress_vec(&input, &mut out, FlushDecompress::Sync).unwrap();
    assert_eq!(inflater.total_in() - start, input.len() as u64, "the whole payload inflates");
    out
}

/// The client offers what browsers offer; compresses with RSV1 set once the server
/// agrees, keeping its window across messages (so a repeated message shrinks to a few
/// bytes) unless told `client_no_context_takeover`; leaves short messages plain; and
/// inflates what the server compresses.
#[tokio::test]
async fn the_client_compresses_what_it_sends_and_inflates_what_it_gets() {
    let text = json_update(8 << 10);
    for (answer, takeover) in [
        ("permessage-deflate; server_no_context_takeover", true),
        ("permessage-deflate; server_no_context_takeover; client_no_context_takeover", false),
    ] {
        let (port, server) = accept_one(answer).await;
        let (sender, mut receiver) = ringcast_client::connect(&ClientConfig::new("127.0.0.1", port)).await.unwrap();
        let (mut tcp, request) = server.await.unwrap();
        assert_eq!(request.header("sec-websocket-extensions"), Some("permessage-deflate; client_max_window_bits"));
        let params = sender.permessage_deflate().expect("negotiated");
        assert_eq!(params.client_no_context_takeover(), !takeover);

        let mut buf = Vec::new();
        let mut inflater = Decompress::new(false);
        let mut sizes = Vec::new();
        for _ in 0..2 {
            sender.send_text(&text).await.unwrap();
            let (header, payload) = read_frame(&mut tcp, &mut buf).await;
            assert_eq!((header.opcode, header.rsv, header.fin), (OpCode::Text, RSV1, true));
            if !takeover {
                inflater = Decompress::new(false);
            }
            assert_eq!(inflate(&mut inflater, &payload), text.as_bytes());
            sizes.push(payload.len());
        }
        assert!(sizes[0] * 3 < text.len(), "compressed to {} bytes", sizes[0]);
        if takeover {
            assert!(sizes[1] * 4 < sizes[0], "the second copy refers back to the first: {sizes:?}");
        } else {
            assert!(sizes[1] == sizes[0], "each message on its own: {sizes:?}");
        }
        sender.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
        let (header, payload) = read_frame(&mut tcp, &mut buf).await;
        assert_eq!((header.opcode, header.rsv, payload), (OpCode::Binary, 0, vec![1, 2, 3]), "short: plain");

        // A compressed message from the server.
        let mut deflate = Compress::new(Compression::default(), false);
        let mut compressed = Vec::with_capacity(text.len() + 64);
        deflate.compress_vec(text.as_bytes(), &mut compressed, FlushCompress::Sync).unwrap();
        compressed.truncate(compressed.len() - 4);
        let mut frame = vec![0x80 | (RSV1 << 4) | 0x1, 126];
        frame.extend_from_slice(&(compressed.len() as u16).to_be_bytes());
        frame.extend_from_slice(&compressed);
        tcp.write_all(&frame).await.unwrap();
        let got = tokio::time::timeout(WAIT, receiver.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(got, Message::text(text.clone()));
    }
}

/// A server that declines gets plain frames; `enabled(false)` offers nothing.
#[tokio::test]
async fn declined_or_disabled_means_plain_frames() {
    let (port, server) = accept_one("").await;
    let (sender, _receiver) = ringcast_client::connect(&ClientConfig::new("127.0.0.1", port)).await.unwrap();
    let (mut tcp, _) = server.await.unwrap();
    assert_eq!(sender.permessage_deflate(), None);
    sender.send_text(json_update(4096)).await.unwrap();
    let (header, payload) = read_frame(&mut tcp, &mut Vec::new()).await;
    assert_eq!((header.rsv, payload.len()), (0, 4096));

    let (port, server) = accept_one("").await;
    let off = ClientConfig::new("127.0.0.1", port).permessage_deflate(ClientDeflateConfig::new().enabled(false));
    let (_sender, _receiver) = ringcast_client::connect(&off).await.unwrap();
    let (_, request) = server.await.unwrap();
    assert_eq!(request.header("sec-websocket-extensions"), None);
}

/// Against Python `websockets` and Node `ws` servers with compression on: negotiated,
/// and compressed text and binary round-trip both ways.
fn peer_round_trip(kind: PeerKind) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let _guard = rt.enter();
    let mut peer = Peer::spawn(kind);
    let listening = peer.listen(&ListenOpts { compression: true, ..ListenOpts::echo() });
    let config = ClientConfig::new("127.0.0.1", listening.port);
    let (sender, mut receiver) = rt.block_on(ringcast_client::connect(&config)).unwrap();
    let accepted = peer.expect_accepted(&listening.server);
    let offer = accepted.headers.get("sec-websocket-extensions").cloned().unwrap_or_default();
    assert!(offer.starts_with("permessage-deflate"), "{kind}: offered {offer:?}");
    assert!(sender.permessage_deflate().is_some(), "{kind}: the server declined");
    let text = json_update(32 << 10);
    let binary: Vec<u8> = text.bytes().rev().collect();
    let mut next = || rt.block_on(tokio::time::timeout(WAIT, receiver.next())).unwrap().unwrap().unwrap();
    for message in [Message::text(text.clone()), Message::text("héllo"), Message::binary(binary.clone())] {
        rt.block_on(sender.send(message.clone())).unwrap();
        assert_eq!(next(), message, "{kind}: echo");
    }
    assert_eq!(peer.expect_text(&accepted.id), text, "{kind}: the peer inflated the text");
}

#[test]
fn python_server_with_compression() {
    peer_round_trip(PeerKind::Python);
}

#[test]
fn node_server_with_compression() {
    peer_round_trip(PeerKind::Node);
}

/// Against the ringcast server with permessage-deflate: both directions compressed, one
/// compression per echoed message.
#[test]
fn ringcast_server_with_compression() {
    use ringcast::{Connection, Handler, Server, ServerDeflateConfig};
    struct Echo;
    impl Handler for Echo {
        type Data = ();
        fn on_text(&self, conn: &mut Connection<'_, ()>, text: &str) {
            let _ = conn.send(text);
        }
    }
    let server = Server::builder()
        .bind([127, 0, 0, 1].into())
        .port(0)
        .workers(1)
        .permessage_deflate(ServerDeflateConfig::new())
        .start(Echo)
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let config = ClientConfig::new("127.0.0.1", server.local_addr().port());
        let (sender, mut receiver) = ringcast_client::connect(&config).await.unwrap();
        let params = sender.permessage_deflate().expect("negotiated");
        assert!(params.server_no_context_takeover() && params.client_no_context_takeover());
        let text = json_update(16 << 10);
        for _ in 0..3 {
            sender.send_text(&text).await.unwrap();
            let got = tokio::time::timeout(WAIT, receiver.next()).await.unwrap().unwrap().unwrap();
            assert_eq!(got.as_text(), Some(text.as_str()));
        }
    });
    assert_eq!(server.stats().compressions, 3);
    server.stop();
}
