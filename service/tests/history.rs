//! Message history end to end: the `ringcast` binary as a subprocess, Python `websockets`
//! and Node `ws` clients that reconnect with `since`, a restart that changes the epoch,
//! the history's bounds, and a cluster of two nodes on a real `redis-server` (killed and
//! restarted) where a client of one node recovers from the other.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::{ChildGuard, ConnectOpts, Peer, free_port, wait_for_port};

/// A running `ringcast serve`, killed on drop.
struct Node {
    child: ChildGuard,
    port: u16,
}

impl Node {
    fn start(args: &[&str]) -> Node {
        Self::start_on(free_port(), args)
    }

    fn start_on(port: u16, args: &[&str]) -> Node {
        let child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .args(["serve", "--bind", "127.0.0.1", "--workers", "2", "--port", &port.to_string()])
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("start ringcast");
        wait_for_port(port, Duration::from_secs(10));
        Node { child: ChildGuard::new(child), port }
    }

    fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    fn http(&self, method: &str, target: &str, body: &[u8]) -> (u16, String) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let head = format!("{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
    }

    fn publish(&self, topic: &str, data: &str) {
        assert_eq!(self.http("POST", &format!("/publish?topic={topic}"), data.as_bytes()).0, 202);
    }

    fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.http("GET", "/metrics", b"");
        text.lines()
            .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .map_or(f64::NAN, |v| v.parse().unwrap())
    }

    fn wait_metric(&self, name: &str, want: f64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.metric(name) != want {
            assert!(Instant::now() < deadline, "{name} never became {want} (is {})", self.metric(name));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn terminate(mut self) {
        let killed = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "ringcast did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Sends a signal to a node's process (by its PID).
fn signal(node: &Node, name: &str) {
    let sent = Command::new("kill").args([&format!("-{name}"), &node.child.id().to_string()]).status().unwrap();
    assert!(sent.success(), "kill -{name}");
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn subscribe(peer: &mut Peer, id: &str, topic: &str, extra: &str) -> Value {
    peer.send_text(id, &format!(r#"{{"op":"subscribe","topic":"{topic}"{extra}}}"#));
    let reply = json(&peer.expect_text(id));
    assert_eq!(reply["event"], "subscribed", "{reply}");
    reply
}

/// The next `n` deliveries on `id`: (offset, epoch, data).
fn deliveries(peer: &mut Peer, id: &str, n: usize) -> Vec<(u64, String, Value)> {
    (0..n)
        .map(|_| {
            let message = json(&peer.expect_text(id));
            (
                message["offset"].as_u64().unwrap(),
                message["epoch"].as_str().unwrap().to_owned(),
                message["data"].clone(),
            )
        })
        .collect()
}

fn offsets(got: &[(u64, String, Value)]) -> Vec<u64> {
    got.iter().map(|(offset, _, _)| *offset).collect()
}

#[test]
fn a_python_client_reconnects_with_since_and_gets_exactly_the_missed_messages() {
    let node = Node::start(&["--mode", "pubsub"]);
    let mut peer = Peer::python();
    peer.connect("a", &node.url("/"), &ConnectOpts::new());
    let reply = subscribe(&mut peer, "a", "t", "");
    assert_eq!((reply["offset"].as_u64(), reply["replayed"].as_u64()), (Some(0), Some(0)), "{reply}");
    let epoch = reply["epoch"].as_str().unwrap().to_owned();
    for i in 1..=5 {
        node.publish("t", &format!("{{\"n\":{i}}}"));
    }
    let got = deliveries(&mut peer, "a", 5);
    assert_eq!(offsets(&got), [1, 2, 3, 4, 5]);
    assert!(got.iter().all(|(_, e, _)| *e == epoch));
    assert_eq!(got[4].2["n"], 5);
    // Away for five messages.
    peer.abort("a");
    for i in 6..=10 {
        node.publish("t", &format!("{{\"n\":{i}}}"));
    }
    peer.connect("a2", &node.url("/"), &ConnectOpts::new());
    let reply = subscribe(&mut peer, "a2", "t", &format!(r#","since":{{"offset":5,"epoch":"{epoch}"}}"#));
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!((reply["offset"].as_u64(), reply["replayed"].as_u64()), (Some(10), Some(5)), "{reply}");
    node.publish("t", r#"{"n":11}"#);
    let got = deliveries(&mut peer, "a2", 6);
    assert_eq!(offsets(&got), [6, 7, 8, 9, 10, 11], "the missed ones, then live, once each");
    assert_eq!(got.iter().map(|(_, _, d)| d["n"].as_u64().unwrap()).collect::<Vec<_>>(), [6, 7, 8, 9, 10, 11]);
    // A plain subscribe may ask for the last K; a bad `since` gets a clear error.
    peer.connect("b", &node.url("/"), &ConnectOpts::new());
    let reply = subscribe(&mut peer, "b", "t", r#","last":3"#);
    assert_eq!(reply["replayed"], 3, "{reply}");
    assert_eq!(offsets(&deliveries(&mut peer, "b", 3)), [9, 10, 11]);
    peer.send_text("b", r#"{"op":"subscribe","topic":"u","since":{"offset":1}}"#);
    let error = json(&peer.expect_text("b"));
    assert!(error["error"].as_str().unwrap().contains("epoch"), "{error}");
    peer.expect_no_event(|e| matches!(e, testkit::Event::Text { .. }), Duration::from_millis(200));
}

#[test]
fn broadcast_subscribers_opt_into_the_envelope_and_recover_from_node() {
    let node = Node::start(&[]);
    let mut peer = Peer::node();
    peer.connect("raw", &node.url("/"), &ConnectOpts::new().collect());
    peer.connect("s", &node.url("/?offsets=1"), &ConnectOpts::new());
    let reply = json(&peer.expect_text("s"));
    assert_eq!((reply["event"].as_str(), reply["offset"].as_u64()), (Some("subscribed"), Some(0)), "{reply}");
    let epoch = reply["epoch"].as_str().unwrap().to_owned();
    assert_eq!(node.http("POST", "/publish", b"one \"text\"").0, 202);
    assert_eq!(node.http("POST", "/publish?binary=1", &[7, 8]).0, 202);
    let text = json(&peer.expect_text("s"));
    assert_eq!((text["offset"].as_u64(), text["data"].as_str()), (Some(1), Some("one \"text\"")), "{text}");
    let binary = peer.expect_binary("s");
    assert_eq!(&binary[..8], &2u64.to_be_bytes(), "offset, big-endian");
    assert_eq!(&binary[8..16], &u64::from_str_radix(&epoch, 16).unwrap().to_be_bytes(), "then the epoch");
    assert_eq!(&binary[16..], [7, 8]);
    // Raw subscribers get the messages as published, as before.
    assert_eq!(peer.drain(&testkit::Drain::id("raw").wait_count(2)).total, 2);
    peer.abort("s");
    assert_eq!(node.http("POST", "/publish", b"three").0, 202);
    peer.connect("s2", &node.url(&format!("/?since=1&epoch={epoch}")), &ConnectOpts::new());
    let reply = json(&peer.expect_text("s2"));
    assert_eq!((reply["recovered"].as_bool(), reply["replayed"].as_u64()), (Some(true), Some(2)), "{reply}");
    assert_eq!(&peer.expect_binary("s2")[..8], &2u64.to_be_bytes());
    assert_eq!(json(&peer.expect_text("s2"))["data"], "three");
    // A malformed position is refused at the handshake.
    let refused = peer.try_connect("bad", &node.url("/?since=1"), &ConnectOpts::new()).unwrap_err();
    assert_eq!(refused.status, Some(400));
}

#[test]
fn a_restart_changes_the_epoch_and_the_subscriber_is_told() {
    let port = free_port();
    let node = Node::start_on(port, &["--mode", "pubsub"]);
    let mut peer = Peer::python();
    peer.connect("a", &node.url("/"), &ConnectOpts::new());
    let epoch = subscribe(&mut peer, "a", "t", "")["epoch"].as_str().unwrap().to_owned();
    node.publish("t", "1");
    assert_eq!(offsets(&deliveries(&mut peer, "a", 1)), [1]);
    node.terminate();
    assert_eq!(peer.expect_close("a").0, 1001);
    let node = Node::start_on(port, &["--mode", "pubsub"]);
    peer.connect("a2", &node.url("/"), &ConnectOpts::new());
    let reply = subscribe(&mut peer, "a2", "t", &format!(r#","since":{{"offset":1,"epoch":"{epoch}"}}"#));
    assert_eq!(
        (reply["recovered"].as_bool(), reply["reason"].as_str()),
        (Some(false), Some("epoch changed")),
        "{reply}"
    );
    assert_ne!(reply["epoch"].as_str().unwrap(), epoch);
    node.publish("t", "2");
    let got = deliveries(&mut peer, "a2", 1);
    assert_eq!((got[0].0, got[0].1.as_str()), (1, reply["epoch"].as_str().unwrap()), "the new epoch's first message");
}

#[test]
fn history_bounds_hold_for_count_age_and_memory() {
    let node = Node::start(&["--mode", "pubsub", "--history-size", "5", "--history-ttl", "1500ms"]);
    let mut peer = Peer::python();
    peer.connect("a", &node.url("/"), &ConnectOpts::new());
    let epoch = subscribe(&mut peer, "a", "t", "")["epoch"].as_str().unwrap().to_owned();
    for i in 1..=12 {
        node.publish("t", &i.to_string());
    }
    deliveries(&mut peer, "a", 12);
    // Count: five kept, and the reply says how many are gone.
    peer.connect("b", &node.url("/"), &ConnectOpts::new());
    let reply = subscribe(&mut peer, "b", "t", &format!(r#","since":{{"offset":2,"epoch":"{epoch}"}}"#));
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!((reply["reason"].as_str(), reply["missed"].as_u64()), (Some("history too short"), Some(5)), "{reply}");
    assert_eq!(offsets(&deliveries(&mut peer, "b", 5)), [8, 9, 10, 11, 12]);
    assert_eq!(node.metric("ringcast_history_messages"), 5.0);
    // Age: after the TTL nothing is left to replay.
    std::thread::sleep(Duration::from_millis(1700));
    peer.connect("c", &node.url("/"), &ConnectOpts::new());
    assert_eq!(subscribe(&mut peer, "c", "t", r#","last":5"#)["replayed"], 0);
    let reply = subscribe(&mut peer, "c", "t2", &format!(r#","since":{{"offset":12,"epoch":"{epoch}"}}"#));
    assert_eq!(reply["recovered"], false, "t2 is another stream, with its own epoch: {reply}");
    drop(node);

    // Memory: 40 topics × 10 messages of ~1 KB against a 16 KiB cap.
    let cap = 16 * 1024;
    let node = Node::start(&["--mode", "pubsub", "--history-memory", &cap.to_string()]);
    let data = format!("\"{}\"", "x".repeat(1000));
    for round in 0..10 {
        for topic in 0..40 {
            node.publish(&format!("m{topic}"), &data);
        }
        let used = node.metric("ringcast_history_bytes");
        assert!(used <= cap as f64, "round {round}: {used} bytes kept over a {cap}-byte cap");
    }
    let kept = node.metric("ringcast_history_messages");
    assert!((10.0..=16.0).contains(&kept), "about cap / message size kept: {kept}");
    // The newest survive: the last topic published still replays its last message.
    peer.connect("d", &node.url("/"), &ConnectOpts::new());
    assert_eq!(subscribe(&mut peer, "d", "m39", r#","last":1"#)["replayed"], 1);
    assert_eq!(offsets(&deliveries(&mut peer, "d", 1)), [10]);
    assert_eq!(subscribe(&mut peer, "d", "m0", r#","last":1"#)["replayed"], 0);
}

struct Redis {
    child: Option<ChildGuard>,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let mut redis = Redis { child: None, port: free_port() };
        redis.restart();
        redis
    }

    /// Without persistence: a restart loses every key, as a crashed cache would.
    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (installed by tools/setup.sh)");
        self.child = Some(ChildGuard::new(child));
        wait_for_port(self.port, Duration::from_secs(10));
    }

    fn kill(&mut self) {
        self.child = None;
    }

    /// One command through `redis-cli` (it comes with redis-server).
    fn cli(&self, args: &[&str]) {
        let done =
            Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output().expect("redis-cli");
        assert!(done.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&done.stderr));
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

#[test]
fn in_a_cluster_a_client_of_node_a_recovers_from_node_b_and_redis_outages_are_reported() {
    let mut redis = Redis::start();
    // (A send queue large enough for the burst of big messages below.)
    let cluster = ["--mode", "pubsub", "--cluster", &redis.url(), "--send-queue-limit", "67108864"];
    let a = Node::start(&cluster);
    let b = Node::start(&cluster);
    a.wait_metric("ringcast_cluster_up", 1.0);
    b.wait_metric("ringcast_cluster_up", 1.0);
    let mut peer = Peer::python();
    peer.connect("on_a", &a.url("/"), &ConnectOpts::new());
    let epoch = subscribe(&mut peer, "on_a", "t", "")["epoch"].as_str().unwrap().to_owned();
    a.wait_metric("ringcast_cluster_channels", 1.0);
    for i in 1..=5 {
        a.publish("t", &i.to_string());
    }
    let got = deliveries(&mut peer, "on_a", 5);
    assert_eq!(offsets(&got), [1, 2, 3, 4, 5]);
    // Offsets come from Redis, so the epoch is the cluster's (not the one a's empty
    // stream had when the client subscribed).
    let epoch_redis = got[0].1.clone();
    assert!(got.iter().all(|(_, e, _)| *e == epoch_redis));
    let _ = epoch;
    peer.abort("on_a");
    for i in 6..=8 {
        a.publish("t", &i.to_string());
    }
    // b has no subscriber of t: its history has nothing, Redis has it all.
    peer.connect("on_b", &b.url("/"), &ConnectOpts::new());
    let since = format!(r#","since":{{"offset":5,"epoch":"{epoch_redis}"}}"#);
    let reply = subscribe(&mut peer, "on_b", "t", &since);
    assert_eq!((reply["recovered"].as_bool(), reply["replayed"].as_u64()), (Some(true), Some(3)), "{reply}");
    a.publish("t", "9");
    let got = deliveries(&mut peer, "on_b", 4);
    assert_eq!(offsets(&got), [6, 7, 8, 9], "missed from Redis, then live through b");
    assert_eq!(b.metric("ringcast_history_fetches_total"), 1.0);

    // b falls behind (stopped) until Redis drops its subscription for an overflowing
    // output buffer, while a publishes: once b is back, the next message shows the gap, b
    // reads what it missed from Redis, and its subscriber gets every offset, in order.
    redis.cli(&["CONFIG", "SET", "client-output-buffer-limit", "pubsub 256 256 0"]);
    let reconnects = b.metric("ringcast_cluster_reconnects_total");
    signal(&b, "STOP");
    // Past what the kernel's socket buffers hold for b: 10 × 512 KiB.
    let filler = "x".repeat(512 << 10);
    for i in 10..=19 {
        a.publish("t", &format!("\"{i} {filler}\""));
    }
    std::thread::sleep(Duration::from_millis(200));
    signal(&b, "CONT");
    b.wait_metric("ringcast_cluster_reconnects_total", reconnects + 1.0);
    redis.cli(&["CONFIG", "SET", "client-output-buffer-limit", "pubsub 33554432 8388608 60"]);
    a.publish("t", "20");
    let got = deliveries(&mut peer, "on_b", 11);
    assert_eq!(offsets(&got), (10..=20).collect::<Vec<_>>(), "nothing lost while b was cut off");
    assert!(got[0].2.as_str().unwrap().starts_with("10 "), "{:?}", got[0]);
    assert_eq!(b.metric("ringcast_history_fetches_total"), 2.0, "the gap was filled from Redis");

    // Redis down: a position b's own history cannot serve is "not recovered", and why.
    redis.kill();
    b.wait_metric("ringcast_cluster_up", 0.0);
    peer.connect("late", &b.url("/"), &ConnectOpts::new());
    let reply = subscribe(&mut peer, "late", "t", &format!(r#","since":{{"offset":1,"epoch":"{epoch_redis}"}}"#));
    assert_eq!(reply["recovered"], false, "{reply}");
    assert!(reply["reason"].as_str().unwrap().starts_with("history unavailable: Redis"), "{reply}");
    // Local traffic continues on a in an epoch of a's own, which b never sees.
    peer.connect("a_live", &a.url("/"), &ConnectOpts::new());
    subscribe(&mut peer, "a_live", "t", "");
    a.publish("t", "\"during\"");
    let during = deliveries(&mut peer, "a_live", 1);
    assert_ne!(during[0].1, epoch_redis, "not the cluster's epoch: {during:?}");

    // Redis back, empty: the next publish starts a new epoch everywhere, and a client
    // resuming from the old one is told the epoch changed.
    redis.restart();
    a.wait_metric("ringcast_cluster_up", 1.0);
    b.wait_metric("ringcast_cluster_up", 1.0);
    // a's publisher reconnects on its next attempt, after its backoff.
    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        a.publish("t", "\"after\"");
        let wait = Instant::now() + Duration::from_millis(500);
        let mut got = None;
        while got.is_none() && Instant::now() < wait {
            if let Some(testkit::Event::Text { id, data }) = peer.next_event(Duration::from_millis(100))
                && id == "on_b"
            {
                got = Some(json(&data));
            }
        }
        if let Some(message) = got {
            break message;
        }
        assert!(Instant::now() < deadline, "b never delivered after the restart");
    };
    // (b may have resubscribed after a's first publishes: its subscriber then starts
    // later in the new epoch, and sees that it did.)
    assert_eq!(after["data"].as_str(), Some("after"), "{after}");
    let epoch_new = after["epoch"].as_str().unwrap().to_owned();
    assert_ne!(epoch_new, epoch_redis);
    peer.connect("again", &b.url("/"), &ConnectOpts::new());
    let reply = subscribe(&mut peer, "again", "t", &format!(r#","since":{{"offset":9,"epoch":"{epoch_redis}"}}"#));
    assert_eq!(
        (reply["recovered"].as_bool(), reply["reason"].as_str()),
        (Some(false), Some("epoch changed")),
        "{reply}"
    );
    assert_eq!(reply["epoch"].as_str(), Some(epoch_new.as_str()));
}
