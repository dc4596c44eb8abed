//! Baseline fan-out / echo WebSocket server built with tokio-tungstenite,
//! the way the crate's own examples do it:
//!
//! * broadcast mode follows `examples/server.rs` (the chat server): a shared
//!   `PeerMap` of `futures_channel::mpsc::UnboundedSender<Message>`, one per
//!   connection; the stream is `split()` and the receiving half of the
//!   channel is `forward()`ed into the sink.
//! * echo mode follows `examples/echo-server.rs`: `read.try_filter(..).forward(write)`.
//! * the request path is read with `accept_hdr_async` as in `examples/server-headers.rs`.
//!
//! See ../README.md for the command-line contract the load generator relies on.

use std::{
    collections::HashMap,
    io::{Error as IoError, Write},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use futures_channel::mpsc::{UnboundedSender, unbounded};
use futures_util::{StreamExt, TryStreamExt, future, pin_mut};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::{
    handshake::server::{Request, Response},
    protocol::{Message, WebSocketConfig},
};

type Tx = UnboundedSender<Message>;
type PeerMap = Arc<Mutex<HashMap<SocketAddr, Tx>>>;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Broadcast,
    Echo,
}

struct Args {
    bind: String,
    port: u16,
    mode: Mode,
}

fn parse_args() -> Args {
    let mut args = Args {
        bind: "127.0.0.1".into(),
        port: 8888,
        mode: Mode::Broadcast,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--bind" => args.bind = value(),
            "--port" => args.port = value().parse().unwrap_or_else(|_| usage("bad --port")),
            "--mode" => {
                args.mode = match value().as_str() {
                    "broadcast" => Mode::Broadcast,
                    "echo" => Mode::Echo,
                    _ => usage("--mode must be broadcast or echo"),
                }
            }
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    args
}

fn usage(err: &str) -> ! {
    eprintln!(
        "{err}\nusage: peer-tokio-tungstenite [--port P] [--mode broadcast|echo] [--bind ADDR]"
    );
    std::process::exit(2)
}

async fn handle_connection(peer_map: PeerMap, mode: Mode, raw_stream: TcpStream, addr: SocketAddr) {
    let _ = raw_stream.set_nodelay(true);
    let mut path = String::new();
    #[allow(clippy::result_large_err)] // the Err type is fixed by tungstenite's Callback trait
    let callback = |req: &Request, response: Response| {
        path = req.uri().path().to_owned();
        Ok(response)
    };
    // Defaults (64 MiB messages, no compression) except the frame limit, which is raised
    // from 16 MiB so that a 16 MiB message sent as one frame is accepted.
    let config = WebSocketConfig::default().max_frame_size(Some(64 << 20));
    let Ok(ws_stream) =
        tokio_tungstenite::accept_hdr_async_with_config(raw_stream, callback, Some(config)).await
    else {
        return; // failed handshake: drop the connection
    };
    let (outgoing, incoming) = ws_stream.split();

    if mode == Mode::Echo {
        // We should not forward messages other than text or binary.
        let _ = incoming
            .try_filter(|msg| future::ready(msg.is_text() || msg.is_binary()))
            .forward(outgoing)
            .await;
        return;
    }

    if path == "/publish" {
        // Publisher: broadcast every data message to all subscribers.
        let _ = incoming
            .try_for_each(|msg| {
                if msg.is_text() || msg.is_binary() {
                    for recp in peer_map.lock().unwrap().values() {
                        let _ = recp.unbounded_send(msg.clone());
                    }
                }
                future::ok(())
            })
            .await;
        return;
    }

    // Subscriber: insert the write part of this peer to the peer map.
    let (tx, rx) = unbounded();
    peer_map.lock().unwrap().insert(addr, tx);

    // Messages from subscribers are ignored, but the stream must still be polled so
    // that pings are answered and close handshakes completed.
    let drain_incoming = incoming.try_for_each(|_| future::ok(()));
    let receive_from_others = rx.map(Ok).forward(outgoing);

    pin_mut!(drain_incoming, receive_from_others);
    future::select(drain_incoming, receive_from_others).await;

    peer_map.lock().unwrap().remove(&addr);
}

#[tokio::main]
async fn main() -> Result<(), IoError> {
    let args = parse_args();
    // 10k+ connections need more than the usual 1024 fds: soft limit := hard limit.
    let _ = rlimit::increase_nofile_limit(u64::MAX);

    let state = PeerMap::new(Mutex::new(HashMap::new()));

    // Create the event loop and TCP listener we'll accept connections on.
    let listener = TcpListener::bind((args.bind.as_str(), args.port)).await?;
    let mode_name = if args.mode == Mode::Echo {
        "echo"
    } else {
        "broadcast"
    };
    println!("listening on {} mode={mode_name}", listener.local_addr()?);
    std::io::stdout().flush()?;

    // Let's spawn the handling of each connection in a separate task.
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                tokio::spawn(handle_connection(state.clone(), args.mode, stream, addr));
            }
            // e.g. EMFILE under overload: keep serving the connections we have.
            Err(e) => {
                eprintln!("accept error: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}
