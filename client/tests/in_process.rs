//! The client against in-process servers written with the codec: messages, protocol
//! duties (masking, pongs, fragments, UTF-8, close), both API styles.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{Server, WAIT, within};
use ringcast_client::{
    ClientConfig, CloseCode, CloseFrame, DisconnectReason, Error, EventHandler, Message, ProtocolError, Sender, Stage,
    Utf8Bytes,
};
use ringcast_codec::{Incoming, OpCode, Payload, PreparedMessage, Split};

fn config(port: u16) -> ClientConfig {
    ClientConfig::new("127.0.0.1", port)
}

async fn next(receiver: &mut ringcast_client::Receiver) -> Option<Result<Message, Error>> {
    tokio::time::timeout(WAIT, receiver.next()).await.expect("no message in time")
}

#[tokio::test]
async fn echo_round_trips_text_and_binary_of_all_sizes() {
    let port = Server::plain().await.echo_all();
    let (sender, mut receiver) = ringcast_client::connect(&config(port)).await.unwrap();
    for len in [0, 1, 125, 126, 65535, 65536, 1 << 20] {
        let text = "é".repeat(len / 2);
        sender.send_text(&text).await.unwrap();
        assert_eq!(next(&mut receiver).await.unwrap().unwrap(), Message::text(text));
        let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
        sender.send_binary(&data).await.unwrap();
        assert_eq!(next(&mut receiver).await.unwrap().unwrap(), Message::binary(data));
    }
    // Many small messages queued at once arrive complete and in order.
    for i in 0..1000 {
        sender.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    for i in 0..1000 {
        assert_eq!(next(&mut receiver).await.unwrap().unwrap().as_text(), Some(format!("m{i}").as_str()));
    }
}

#[tokio::test]
async fn the_request_carries_path_origin_and_headers() {
    let mut server = Server::plain().await;
    let config = config(server.port)
        .path("/chat?room=7")
        .origin("https://app.example")
        .header("Authorization", "Bearer xyz")
        .header("X-Trace", "1");
    let (_sender, _receiver) = ringcast_client::connect(&config).await.unwrap();
    let conn = server.accept().await;
    assert_eq!(conn.request.target(), "/chat?room=7");
    assert_eq!(conn.request.origin(), Some("https://app.example"));
    assert_eq!(conn.request.header("authorization"), Some("Bearer xyz"));
    assert_eq!(conn.request.header("x-trace"), Some("1"));
    assert_eq!(conn.request.host(), Some(format!("127.0.0.1:{}", server.port).as_str()));
}

#[tokio::test]
async fn every_frame_is_masked_with_its_own_key() {
    let mut server = Server::plain().await;
    let (sender, _receiver) = ringcast_client::connect(&config(server.port)).await.unwrap();
    let mut conn = server.accept().await;
    for _ in 0..8 {
        sender.send_text("same payload").await.unwrap();
    }
    // The server-role decoder refuses unmasked frames; check the keys on the wire too.
    let mut keys = std::collections::HashSet::new();
    let mut raw = Vec::new();
    while raw.len() < 8 * (6 + 12) {
        let mut chunk = [0u8; 256];
        let n = tokio::io::AsyncReadExt::read(&mut conn.io, &mut chunk).await.unwrap();
        raw.extend_from_slice(&chunk[..n]);
    }
    for frame in raw.chunks(6 + 12) {
        assert_eq!(frame[0], 0x81);
        assert_eq!(frame[1], 0x80 | 12, "masked, 12 bytes");
        keys.insert([frame[2], frame[3], frame[4], frame[5]]);
    }
    assert!(keys.len() >= 7, "mask keys repeat: {keys:?}");
}

#[tokio::test]
async fn pings_are_answered_and_passed_on() {
    let mut server = Server::plain().await;
    let (_sender, mut receiver) = ringcast_client::connect(&config(server.port)).await.unwrap();
    let mut conn = server.accept().await;
    conn.send(&PreparedMessage::ping(b"are you there").unwrap()).await;
    assert_eq!(conn.expect().await, Incoming::Pong(Payload::Borrowed(b"are you there")));
    assert_eq!(next(&mut receiver).await.unwrap().unwrap(), Message::Ping(Bytes::from_static(b"are you there")));
}

#[tokio::test]
async fn pings_are_answered_even_when_nobody_reads() {
    let mut server = Server::plain().await;
    let (_sender, receiver) = ringcast_client::connect(&config(server.port)).await.unwrap();
    let mut conn = server.accept().await;
    for i in 0..3u8 {
        conn.send(&PreparedMessage::ping(&[i]).unwrap()).await;
        assert_eq!(conn.expect().await, Incoming::Pong(Payload::from(vec![i])));
    }
    drop(receiver);
    conn.send(&PreparedMessage::text("ignored", Split::Whole)).await;
    conn.send(&PreparedMessage::ping(b"still").unwrap()).await;
    assert_eq!(conn.expect().await, Incoming::Pong(Payload::Borrowed(b"still")));
}

#[tokio::test]
async fn client_pings_get_pongs() {
    let port = Server::plain().await.echo_all();
    let (sender, mut receiver) = ringcast_client::connect(&config(port)).await.unwrap();
    sender.ping(b"p1").await.unwrap();
    assert_eq!(next(&mut receiver).await.unwrap().unwrap(), Message::Pong(Bytes::from_static(b"p1")));
    assert!(matches!(sender.ping([0u8; 126]).await, Err(Error::InvalidMessage(_))));
}

#[tokio::test]
async fn fragments_are_reassembled_around_control_frames() {
    let mut server = Server::plain().await;
    let (_sender, mut receiver) = ringcast_client::connect(&config(server.port)).await.unwrap();
    let mut conn = server.accept().await;
    // "Hello" in three fragments with a ping in the middle, one byte at a time.
    let mut wire = Vec::new();
    wire.extend_from_slice(PreparedMessage::frame(OpCode::Text, false, b"He").as_bytes());
    wire.extend_from_slice(PreparedMessage::ping(b"mid").unwrap().as_bytes());
    wire.extend_from_slice(PreparedMessage::frame(OpCode::Continuation, false, "l€".as_bytes()).as_bytes());
    wire.extend_from_slice(PreparedMessage::frame(OpCode::Continuation, true, b"lo").as_bytes());
    for byte in wire {
        conn.send_raw(&[byte]).await;
    }
    assert_eq!(next(&mut receiver).await.unwrap().unwrap(), Message::Ping(Bytes::from_static(b"mid")));
    assert_eq!(next(&mut receiver).await.unwrap().unwrap(), Message::text("Hel€lo"));
    // A split message from the codec, too.
    let split = PreparedMessage::binary(&[9u8; 1000], Split::frame_size(100).unwrap());
    conn.send(&split).await;
    assert_eq!(next(&mut receiver).await.unwrap().unwrap(), Message::binary(vec![9u8; 1000]));
}

#[tokio::test]
async fn invalid_utf8_fails_the_connection_with_1007() {
    let mut server = Server::plain().await;
    let (_sender, mut receiver) = ringcast_client::connect(&config(server.port)).await.unwrap();
    let mut conn = server.accept().await;
    conn.send_raw(PreparedMessage::text("fine", Split::Whole).as_bytes()).await;
    conn.send_raw(PreparedMessage::frame(OpCode::Text, false, b"ok").as_bytes()).await;
    conn.send_raw(PreparedMessage::frame(OpCode::Continuation, true, b"\xff").as_bytes()).await;
    assert_eq!(next(&mut receiver).await.unwrap().unwrap(), Message::text("fine"));
    let error = next(&mut receiver).await.unwrap().unwrap_err();
    assert!(matches!(error, Error::Protocol(ProtocolError::InvalidUtf8)), "{error:?}");
    assert_eq!(error.close_code(), Some(CloseCode::Invalid));
    assert_eq!(conn.expect_close().await.map(|f| f.code), Some(CloseCode::Invalid));
    conn.close(CloseCode::Invalid, "").await;
    drop(conn);
    assert!(next(&mut receiver).await.is_none());
}

#[tokio::test]
async fn oversized_messages_fail_with_1009() {
    let mut server = Server::plain().await;
    let config = config(server.port).max_message_size(1000);
    let (_sender, mut receiver) = ringcast_client::connect(&config).await.unwrap();
    let mut conn = server.accept().await;
    conn.send(&PreparedMessage::binary(&[0; 1000], Split::Whole)).await;
    assert_eq!(next(&mut receiver).await.unwrap().unwrap(), Message::binary(vec![0; 1000]));
    // Fragmented, so that only the sum is over the limit.
    conn.send(&PreparedMessage::binary(&[0; 1001], Split::frame_size(600).unwrap())).await;
    let error = next(&mut receiver).await.unwrap().unwrap_err();
    assert!(matches!(error, Error::Protocol(ProtocolError::MessageTooLarge { .. })), "{error:?}");
    assert_eq!(conn.expect_close().await.map(|f| f.code), Some(CloseCode::Size));
}

#[tokio::test]
async fn protocol_violations_fail_with_1002() {
    let mut server = Server::plain().await;
    let (_sender, mut receiver) = ringcast_client::connect(&config(server.port)).await.unwrap();
    let mut conn = server.accept().await;
    // A masked frame from a server.
    conn.send_raw(&[0x81, 0x81, 1, 2, 3, 4, b'a' ^ 1]).await;
    let error = next(&mut receiver).await.unwrap().unwrap_err();
    assert!(matches!(error, Error::Protocol(ProtocolError::MaskedFrame)), "{error:?}");
    assert_eq!(conn.expect_close().await.map(|f| f.code), Some(CloseCode::Protocol));
}

#[tokio::test]
async fn answers_to_earlier_messages_go_out_before_the_failing_close() {
    let mut server = Server::plain().await;
    let (sender, mut receiver) = ringcast_client::connect(&config(server.port)).await.unwrap();
    let mut conn = server.accept().await;
    // A good message and a bad frame in one write: the client reads both at once.
    let mut wire = PreparedMessage::text("first", Split::Whole).as_bytes().to_vec();
    wire.extend_from_slice(&[0x83, 0x00]); // reserved opcode 3
    conn.send_raw(&wire).await;
    let first = next(&mut receiver).await.unwrap().unwrap();
    sender.send(first).await.unwrap();
    assert!(matches!(next(&mut receiver).await, Some(Err(Error::Protocol(ProtocolError::ReservedOpCode(3))))));
    assert_eq!(conn.expect().await, Incoming::Text("first".into()));
    assert_eq!(conn.expect_close().await.map(|f| f.code), Some(CloseCode::Protocol));
}

#[tokio::test]
async fn a_server_close_is_echoed_and_ends_the_stream() {
    let mut server = Server::plain().await;
    let (sender, mut receiver) = ringcast_client::connect(&config(server.port)).await.unwrap();
    let mut conn = server.accept().await;
    conn.send(&PreparedMessage::text("last words", Split::Whole)).await;
    conn.close(CloseCode::Away, "shutting down").await;
    assert_eq!(next(&mut receiver).await.unwrap().unwrap(), Message::text("last words"));
    assert_eq!(
        next(&mut receiver).await.unwrap().unwrap(),
        Message::Close(Some(CloseFrame { code: CloseCode::Away, reason: "shutting down".into() }))
    );
    assert_eq!(conn.expect_close().await.map(|f| f.code), Some(CloseCode::Away), "echoes the code");
    drop(conn);
    assert!(next(&mut receiver).await.is_none());
    within(WAIT, sender.closed()).await;
    assert!(matches!(sender.send_text("late").await, Err(Error::Closed)));
}

#[tokio::test]
async fn disconnect_with_close_sends_1000_and_waits_for_the_answer() {
    let mut server = Server::plain().await;
    let (sender, mut receiver) = ringcast_client::connect(&config(server.port)).await.unwrap();
    let mut conn = server.accept().await;
    sender.send_text("before").await.unwrap();
    sender.disconnect().await;
    assert_eq!(conn.expect().await, Incoming::Text("before".into()));
    assert_eq!(conn.expect_close().await.map(|f| f.code), Some(CloseCode::Normal));
    assert!(!sender.is_closed(), "the client waits for the server's answer");
    conn.close(CloseCode::Normal, "").await;
    assert!(matches!(
        next(&mut receiver).await,
        Some(Ok(Message::Close(Some(CloseFrame { code: CloseCode::Normal, .. }))))
    ));
    // RFC 6455 §7.1.1: the server closes TCP first; the client then lets go.
    drop(conn);
    assert!(next(&mut receiver).await.is_none());
    within(WAIT, sender.closed()).await;
}

#[tokio::test]
async fn disconnect_without_close_just_ends_the_connection() {
    let mut server = Server::plain().await;
    let (sender, mut receiver) = ringcast_client::connect(&config(server.port)).await.unwrap();
    let mut conn = server.accept().await;
    sender.send_text("queued first").await.unwrap();
    sender.abort().await;
    assert_eq!(conn.expect().await, Incoming::Text("queued first".into()));
    conn.expect_abrupt_end().await;
    assert!(next(&mut receiver).await.is_none(), "nothing to report: the client asked for it");
    within(WAIT, sender.closed()).await;
}

#[tokio::test]
async fn a_close_without_answer_times_out() {
    let mut server = Server::plain().await;
    let config = config(server.port).close_timeout(Duration::from_millis(200));
    let (sender, mut receiver) = ringcast_client::connect(&config).await.unwrap();
    let mut conn = server.accept().await;
    sender.close(CloseCode::Away, "going").await.unwrap();
    assert_eq!(
        conn.expect_close().await,
        Some(CloseFrame { code: CloseCode::Away, reason: "going".into() }),
        "close() sends the given code and reason"
    );
    let (item, took) = within(WAIT, receiver.next()).await;
    assert!(matches!(item, Some(Err(Error::Timeout { stage: Stage::Close }))), "{item:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    conn.expect_abrupt_end().await;
}

#[tokio::test]
async fn a_dropped_connection_is_reported_as_lost() {
    let mut server = Server::plain().await;
    let (sender, mut receiver) = ringcast_client::connect(&config(server.port)).await.unwrap();
    drop(server.accept().await);
    assert!(matches!(next(&mut receiver).await, Some(Err(Error::ConnectionLost))));
    assert!(next(&mut receiver).await.is_none());
    within(WAIT, sender.closed()).await;
    assert_eq!(Error::ConnectionLost.close_code(), Some(CloseCode::Abnormal));
}

#[tokio::test]
async fn dropping_every_handle_closes_with_1000() {
    let mut server = Server::plain().await;
    let (sender, receiver) = ringcast_client::connect(&config(server.port)).await.unwrap();
    let mut conn = server.accept().await;
    let second = sender.clone();
    drop(sender);
    drop(receiver);
    second.send_text("still open").await.unwrap();
    assert_eq!(conn.expect().await, Incoming::Text("still open".into()));
    drop(second);
    assert_eq!(conn.expect_close().await.map(|f| f.code), Some(CloseCode::Normal));
}

#[tokio::test]
async fn try_send_reports_a_full_queue() {
    let mut server = Server::plain().await;
    let config = config(server.port).send_queue(1);
    let (sender, _receiver) = ringcast_client::connect(&config).await.unwrap();
    let _conn = server.accept().await; // never reads: the socket buffers fill up
    let big = Message::binary(vec![0u8; 1 << 20]);
    let mut full = false;
    for _ in 0..200 {
        match sender.try_send(big.clone()) {
            Ok(()) => tokio::task::yield_now().await,
            Err(Error::QueueFull) => {
                full = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(full, "the queue never filled up");
}

#[derive(Default)]
struct Recorder {
    events: Arc<Mutex<Vec<String>>>,
    sender: Option<Sender>,
}

impl Recorder {
    fn log(&self, event: String) {
        self.events.lock().unwrap().push(event);
    }
}

impl EventHandler for Recorder {
    async fn on_connect(&mut self, sender: Sender) {
        self.log("connect".into());
        sender.send_text("hello from on_connect").await.unwrap();
        self.sender = Some(sender);
    }

    async fn on_text(&mut self, text: Utf8Bytes) {
        self.log(format!("text {text}"));
        if &*text == "reply please" {
            self.sender.as_ref().unwrap().send_text("replied").await.unwrap();
        }
    }

    async fn on_binary(&mut self, data: Bytes) {
        self.log(format!("binary {}", data.len()));
    }

    async fn on_ping(&mut self, payload: Bytes) {
        self.log(format!("ping {}", String::from_utf8_lossy(&payload)));
    }

    async fn on_pong(&mut self, payload: Bytes) {
        self.log(format!("pong {}", String::from_utf8_lossy(&payload)));
    }

    async fn on_close(&mut self, frame: Option<&CloseFrame>) {
        self.log(format!("close {:?}", frame.map(|f| u16::from(f.code))));
    }

    async fn on_disconnect(&mut self, reason: &DisconnectReason) {
        self.log(format!("disconnect {}", reason_name(reason)));
    }
}

fn reason_name(reason: &DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::ConnectFailed(_) => "connect-failed",
        DisconnectReason::Closed(_) => "closed",
        DisconnectReason::Aborted => "aborted",
        DisconnectReason::Failed(_) => "failed",
        _ => "other",
    }
}

#[tokio::test]
async fn the_event_handler_sees_every_event_in_order() {
    let mut server = Server::plain().await;
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut handle = ringcast_client::spawn(config(server.port), Recorder { events: events.clone(), sender: None });
    let mut conn = server.accept().await;
    assert_eq!(conn.expect().await, Incoming::Text("hello from on_connect".into()));
    let sender = within(WAIT, handle.connected()).await.0.expect("connected");
    assert!(handle.sender().is_some());
    conn.send(&PreparedMessage::text("reply please", Split::Whole)).await;
    assert_eq!(conn.expect().await, Incoming::Text("replied".into()));
    conn.send(&PreparedMessage::binary(&[1, 2, 3], Split::Whole)).await;
    conn.send(&PreparedMessage::ping(b"p").unwrap()).await;
    assert_eq!(conn.expect().await, Incoming::Pong(Payload::Borrowed(b"p")));
    sender.ping(b"q").await.unwrap();
    assert_eq!(conn.expect().await, Incoming::Ping(Payload::Borrowed(b"q")));
    conn.send(&PreparedMessage::pong(b"q").unwrap()).await;
    conn.close(CloseCode::Away, "bye").await;
    assert_eq!(conn.expect_close().await.map(|f| f.code), Some(CloseCode::Away));
    drop(conn);
    let (_handler, reason) = within(WAIT, handle.join()).await.0.unwrap();
    assert!(matches!(reason, DisconnectReason::Closed(Some(CloseFrame { code: CloseCode::Away, .. }))), "{reason:?}");
    assert_eq!(
        *events.lock().unwrap(),
        ["connect", "text reply please", "binary 3", "ping p", "pong q", "close Some(1001)", "disconnect closed"]
    );
}

#[tokio::test]
async fn the_handle_disconnects_with_or_without_close() {
    for send_close in [true, false] {
        let mut server = Server::plain().await;
        let events = Arc::new(Mutex::new(Vec::new()));
        let mut handle = ringcast_client::spawn(config(server.port), Recorder { events: events.clone(), sender: None });
        let mut conn = server.accept().await;
        assert!(within(WAIT, handle.connected()).await.0.is_some());
        if send_close {
            handle.disconnect()
        } else {
            handle.abort()
        }
        assert_eq!(conn.expect().await, Incoming::Text("hello from on_connect".into()));
        if send_close {
            assert_eq!(conn.expect_close().await.map(|f| f.code), Some(CloseCode::Normal));
            conn.close(CloseCode::Normal, "").await;
            drop(conn);
        } else {
            conn.expect_abrupt_end().await;
        }
        let (_handler, reason) = within(WAIT, handle.join()).await.0.unwrap();
        let expected = if send_close { "closed" } else { "aborted" };
        assert_eq!(reason_name(&reason), expected);
        assert_eq!(events.lock().unwrap().last().unwrap(), &format!("disconnect {expected}"));
    }
}

#[tokio::test]
async fn a_failed_connect_reaches_on_disconnect_and_join() {
    let port = common::closed_port().await;
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut handle = ringcast_client::spawn(config(port), Recorder { events: events.clone(), sender: None });
    assert!(within(WAIT, handle.connected()).await.0.is_none());
    let (_handler, reason) = within(WAIT, handle.join()).await.0.unwrap();
    assert!(matches!(reason, DisconnectReason::ConnectFailed(Error::ConnectionRefused { .. })), "{reason:?}");
    assert_eq!(*events.lock().unwrap(), ["disconnect connect-failed"]);
}

#[tokio::test]
async fn disconnecting_while_connecting_gives_up() {
    // A server that accepts TCP but never answers the upgrade.
    let port = common::raw_server(|tcp| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(tcp);
    })
    .await;
    let events = Arc::new(Mutex::new(Vec::new()));
    let handle = ringcast_client::spawn(config(port), Recorder { events: events.clone(), sender: None });
    tokio::time::sleep(Duration::from_millis(100)).await;
    handle.disconnect();
    let ((_, reason), took) = within(WAIT, async { handle.join().await.unwrap() }).await;
    assert!(matches!(reason, DisconnectReason::Aborted), "{reason:?}");
    assert!(took < Duration::from_secs(1));
    assert_eq!(*events.lock().unwrap(), ["disconnect aborted"]);
}

#[tokio::test]
async fn the_receiver_is_a_stream() {
    use futures_core::Stream;
    use std::pin::Pin;
    let port = Server::plain().await.echo_all();
    let (sender, mut receiver) = ringcast_client::connect(&config(port)).await.unwrap();
    sender.send_text("via poll_next").await.unwrap();
    let item = std::future::poll_fn(|cx| Pin::new(&mut receiver).poll_next(cx)).await;
    assert_eq!(item.unwrap().unwrap().as_text(), Some("via poll_next"));
}
