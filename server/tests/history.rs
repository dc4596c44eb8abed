//! History and recovery through the library API: a publisher at full speed, subscribers
//! that drop their connection and resubscribe from their last message in a loop, and
//! every subscriber's sequence gapless and without a duplicate across every switch from
//! history to live messages. Then the replies a subscription from a position gets.

mod common;

use std::time::{Duration, Instant};

use common::{RawClient, Running, builder};
use ringcast::{Connection, Epoch, Handler, HistoryConfig, IoBackend, Position, PreparedMessage, Since};

const TOPIC: &str = "stream";

/// Subscribes every connection on upgrade: `/?since=EPOCH:OFFSET`, `/?last=N`, or from
/// now. The first message is `status <recovered> <epoch> <offset> <replayed> <reason>`,
/// then the replay, then live messages `<epoch>:<offset>`.
struct Feed;

impl Handler for Feed {
    type Data = ();

    fn on_handshake_response_sent(&self, conn: &mut Connection<'_, ()>) {
        let request = conn.request();
        let since = request.and_then(|r| r.query_param("since")).and_then(|s| {
            let (epoch, offset) = s.split_once(':')?;
            Some(Since::Position(Position { epoch: epoch.parse().ok()?, offset: offset.parse().ok()? }))
        });
        let last = request.and_then(|r| r.query_param("last")).and_then(|n| n.parse().ok()).map(Since::Last);
        let recovery =
            conn.subscribe_from(TOPIC, since.or(last).unwrap_or(Since::Now)).expect("Feed lets every subscription in");
        let reason = recovery.outcome.as_ref().err().map_or("-", |e| e.code());
        let status = format!(
            "status {} {} {} {} {reason}",
            u8::from(recovery.recovered()),
            recovery.position.epoch,
            recovery.position.offset,
            recovery.replayed
        );
        let _ = conn.send(status.as_str());
    }
}

fn publish(server: &ringcast::Broadcaster<()>) -> Position {
    let split = server.split();
    server.publish(TOPIC, |at| PreparedMessage::text(&format!("{}:{}", at.epoch, at.offset), split))
}

struct Status {
    recovered: bool,
    position: Position,
    replayed: usize,
    reason: String,
}

fn read_status(client: &mut RawClient) -> Status {
    let text = client.read_text();
    let words: Vec<&str> = text.split(' ').collect();
    assert_eq!(words.len(), 6, "{text}");
    assert_eq!(words[0], "status", "{text}");
    Status {
        recovered: words[1] == "1",
        position: Position { epoch: words[2].parse().unwrap(), offset: words[3].parse().unwrap() },
        replayed: words[4].parse().unwrap(),
        reason: words[5].to_owned(),
    }
}

fn read_position(client: &mut RawClient) -> Position {
    let text = client.read_text();
    let (epoch, offset) = text.split_once(':').unwrap_or_else(|| panic!("not a stream message: {text}"));
    Position { epoch: epoch.parse().unwrap(), offset: offset.parse().unwrap() }
}

fn reconnecting_subscribers_see_every_offset_once_while_a_publisher_runs_flat_out(backend: IoBackend) {
    let history = HistoryConfig::new().max_messages(100_000).max_age(Duration::from_secs(60));
    let server = Running::start(builder(backend).keep_request(true).history(history), Feed);
    let broadcaster = server.broadcaster();
    const TOTAL: u64 = 20_000;
    // Bursts of 20 back to back, a millisecond apart: the readers keep up on average, so
    // no send queue overflows, and many resubscriptions land inside a burst.
    let publisher = {
        std::thread::spawn(move || {
            let mut epoch = None;
            for i in 0..TOTAL {
                let at = publish(&broadcaster);
                assert_eq!(at.offset, i + 1);
                epoch.get_or_insert(at.epoch);
                if i % 20 == 19 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            epoch.unwrap()
        })
    };
    let addr = server.addr();
    let clients: Vec<_> = (0..6u64)
        .map(|c| {
            std::thread::spawn(move || {
                let mut client = RawClient::open(addr, "/");
                let mut last = read_status(&mut client).position;
                let (mut resubscriptions, mut replayed) = (0u64, 0u64);
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    // Read a few messages (a different number each time), then drop the
                    // connection without a closing handshake and resubscribe.
                    let quota = 20 + (resubscriptions * 37 + c * 11) % 400;
                    for _ in 0..quota {
                        if last.offset >= TOTAL {
                            break;
                        }
                        let got = read_position(&mut client);
                        assert_eq!(got.epoch, last.epoch, "client {c}: the epoch stays");
                        assert_eq!(
                            got.offset,
                            last.offset + 1,
                            "client {c}: after {} came {}",
                            last.offset,
                            got.offset
                        );
                        last = got;
                    }
                    if last.offset >= TOTAL {
                        break;
                    }
                    assert!(Instant::now() < deadline, "client {c} stuck at {}", last.offset);
                    drop(client);
                    client = RawClient::open(addr, &format!("/?since={}:{}", last.epoch, last.offset));
                    let status = read_status(&mut client);
                    assert!(status.recovered, "client {c}: recovery from {} failed: {}", last.offset, status.reason);
                    assert_eq!(status.position.epoch, last.epoch);
                    assert_eq!(status.replayed as u64, status.position.offset - last.offset, "client {c}");
                    resubscriptions += 1;
                    replayed += status.replayed as u64;
                }
                (resubscriptions, replayed)
            })
        })
        .collect();
    let epoch: Epoch = publisher.join().unwrap();
    let mut total_resubscriptions = 0;
    let mut total_replayed = 0;
    for client in clients {
        let (resubscriptions, replayed) = client.join().unwrap();
        total_resubscriptions += resubscriptions;
        total_replayed += replayed;
    }
    assert!(total_resubscriptions >= 6 * 20, "{total_resubscriptions} resubscriptions");
    assert!(total_replayed > 0, "some resubscriptions caught up from the history");
    eprintln!(
        "{backend:?}: {total_resubscriptions} resubscriptions, {total_replayed} messages replayed, epoch {epoch}"
    );
    let usage = server.broadcaster().history_usage();
    assert_eq!((usage.messages, usage.streams), (TOTAL as usize, 1));
    server.stop();
}

fn a_subscription_from_a_position_says_what_it_could_recover(backend: IoBackend) {
    let history = HistoryConfig::new().max_messages(5);
    let server = Running::start(builder(backend).keep_request(true).history(history), Feed);
    let broadcaster = server.broadcaster();
    let mut live = RawClient::open(server.addr(), "/");
    let start = read_status(&mut live);
    assert_eq!((start.position.offset, start.replayed, start.recovered), (0, 0, true));
    for _ in 0..8 {
        publish(&broadcaster);
    }
    for offset in 1..=8 {
        assert_eq!(read_position(&mut live).offset, offset);
    }
    let epoch = start.position.epoch;
    // Within the history: exactly what followed.
    let mut client = RawClient::open(server.addr(), &format!("/?since={epoch}:5"));
    let status = read_status(&mut client);
    assert_eq!((status.recovered, status.replayed, status.position.offset), (true, 3, 8));
    assert_eq!((6..=8).map(|_| read_position(&mut client).offset).collect::<Vec<_>>(), [6, 7, 8]);
    // Older than the five kept: what is left, and why it is not all.
    let mut client = RawClient::open(server.addr(), &format!("/?since={epoch}:1"));
    let status = read_status(&mut client);
    assert_eq!((status.recovered, status.replayed, status.reason.as_str()), (false, 5, "history_too_short"));
    assert_eq!(read_position(&mut client).offset, 4);
    // Another epoch (a restart): nothing replayed, live from here.
    let other = Epoch::from_u64(epoch.as_u64().wrapping_add(1));
    let mut client = RawClient::open(server.addr(), &format!("/?since={other}:3"));
    let status = read_status(&mut client);
    assert_eq!((status.recovered, status.replayed, status.reason.as_str()), (false, 0, "epoch_changed"));
    publish(&broadcaster);
    assert_eq!(read_position(&mut client), Position { epoch, offset: 9 });
    // The last N.
    let mut client = RawClient::open(server.addr(), "/?last=2");
    let status = read_status(&mut client);
    assert_eq!((status.recovered, status.replayed), (true, 2));
    assert_eq!([read_position(&mut client).offset, read_position(&mut client).offset], [8, 9]);
    server.stop();
}

backends!(
    reconnecting_subscribers_see_every_offset_once_while_a_publisher_runs_flat_out,
    a_subscription_from_a_position_says_what_it_could_recover
);
