//! Baseline fan-out / echo WebSocket server built with fastwebsockets + hyper 1,
//! the way the crate's docs and examples do it:
//!
//! * HTTP upgrade through hyper's `http1` server and `fastwebsockets::upgrade::upgrade`
//!   with `.with_upgrades()`, the handler spawned under `tokio::task::unconstrained`,
//!   as in `examples/echo_server.rs`.
//! * echo mode and the publisher use `FragmentCollector` (whole messages, automatic
//!   pong and close replies), exactly like `examples/echo_server.rs`.
//! * subscribers must be written to from outside their read loop, so they are
//!   `split(tokio::io::split)` with a `FragmentCollectorRead` over the read half, as in
//!   `examples/echo_server_split.rs`; the write half is owned by a writer task fed by an
//!   unbounded channel that holds both broadcast messages and the read half's obligated
//!   sends (pong / close replies), the `send_fn` contract of `FragmentCollectorRead`.
//!
//! See ../README.md for the command-line contract the load generator relies on.

use std::{
    collections::HashMap,
    io::Write,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use fastwebsockets::{
    FragmentCollector, FragmentCollectorRead, Frame, OpCode, Payload, WebSocket, WebSocketError,
    upgrade,
};
use http_body_util::Empty;
use hyper::{
    Request, Response, body::Incoming, server::conn::http1, service::service_fn, upgrade::Upgraded,
};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::mpsc};

type Tx = mpsc::UnboundedSender<(OpCode, Bytes)>;
type PeerMap = Arc<Mutex<HashMap<u64, Tx>>>;

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

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
    eprintln!("{err}\nusage: peer-fastwebsockets [--port P] [--mode broadcast|echo] [--bind ADDR]");
    std::process::exit(2)
}

/// A received payload as shareable `Bytes`, without copying where possible.
fn into_bytes(payload: Payload) -> Bytes {
    match payload {
        Payload::Bytes(b) => b.freeze(),
        Payload::Owned(v) => v.into(),
        other => Bytes::copy_from_slice(&other),
    }
}

async fn handle_client(
    fut: upgrade::UpgradeFut,
    path: String,
    mode: Mode,
    peers: PeerMap,
) -> Result<(), WebSocketError> {
    let ws = fut.await?;
    if mode == Mode::Broadcast && path != "/publish" {
        return subscriber(ws, peers).await;
    }
    // Echo connection or publisher. Default limits: 64 MiB messages; no compression.
    let mut ws = FragmentCollector::new(ws);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary if mode == Mode::Echo => ws.write_frame(frame).await?,
            op @ (OpCode::Text | OpCode::Binary) => {
                let data = into_bytes(frame.payload);
                for tx in peers.lock().unwrap().values() {
                    let _ = tx.send((op, data.clone()));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

async fn subscriber(
    ws: WebSocket<TokioIo<Upgraded>>,
    peers: PeerMap,
) -> Result<(), WebSocketError> {
    let (rx, mut tx) = ws.split(tokio::io::split);
    let mut rx = FragmentCollectorRead::new(rx);
    let (out, mut queue) = mpsc::unbounded_channel::<(OpCode, Bytes)>();
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    peers.lock().unwrap().insert(id, out.clone());

    // The writer task is the only user of the write half. It ends after sending a close
    // reply, on a write error, or once every sender (peer map entry + `out`) is gone.
    tokio::spawn(async move {
        while let Some((opcode, data)) = queue.recv().await {
            let frame = Frame::new(true, opcode, None, Payload::Borrowed(&data));
            if tx.write_frame(frame).await.is_err() || opcode == OpCode::Close {
                break;
            }
        }
    });

    // Messages from subscribers are ignored; reading goes on so that pings are answered
    // and the close handshake completed (through `send_fn`, i.e. the writer task).
    let mut send_fn = |frame: Frame| {
        let _ = out.send((frame.opcode, Bytes::copy_from_slice(&frame.payload)));
        async { Ok::<_, WebSocketError>(()) }
    };
    let result = loop {
        match rx.read_frame(&mut send_fn).await {
            Ok(frame) if frame.opcode == OpCode::Close => break Ok(()),
            Ok(_) => {}
            Err(e) => break Err(e),
        }
    };
    peers.lock().unwrap().remove(&id);
    result
}

async fn server_upgrade(
    mut req: Request<Incoming>,
    mode: Mode,
    peers: PeerMap,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let path = req.uri().path().to_owned();
    let (response, fut) = upgrade::upgrade(&mut req)?;

    tokio::task::spawn(async move {
        // Peers vanish mid-benchmark all the time; errors are not worth a log line.
        let _ = tokio::task::unconstrained(handle_client(fut, path, mode, peers)).await;
    });

    Ok(response)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = parse_args();
    // 10k+ connections need more than the usual 1024 fds: soft limit := hard limit.
    let _ = rlimit::increase_nofile_limit(u64::MAX);

    let peers = PeerMap::default();
    let mode = args.mode;
    let listener = TcpListener::bind((args.bind.as_str(), args.port)).await?;
    let mode_name = if mode == Mode::Echo {
        "echo"
    } else {
        "broadcast"
    };
    println!("listening on {} mode={mode_name}", listener.local_addr()?);
    std::io::stdout().flush()?;

    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // e.g. EMFILE under overload: keep serving the connections we have.
            Err(e) => {
                eprintln!("accept error: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let peers = peers.clone();
        tokio::spawn(async move {
            let io = TokioIo::new(stream);
            let conn_fut = http1::Builder::new()
                .serve_connection(
                    io,
                    service_fn(move |req| server_upgrade(req, mode, peers.clone())),
                )
                .with_upgrades();
            let _ = conn_fut.await;
        });
    }
}
