//! `--cluster`: several ringcast processes behaving as one service through a real
//! `redis-server` (started here on a free loopback port and stopped by PID).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{ChildGuard, ConnectOpts, Drain, Peer, free_port, wait_for_port};

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

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (installed by .ci/run)");
        self.child = Some(ChildGuard::new(child));
        wait_for_port(self.port, Duration::from_secs(10));
    }

    fn kill(&mut self) {
        self.child = None; // ChildGuard kills by PID and waits
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

struct Node {
    _child: ChildGuard,
    port: u16,
}

impl Node {
    fn start(redis: &Redis, args: &[&str]) -> Node {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .args(["serve", "--bind", "127.0.0.1", "--workers", "2", "--port", &port.to_string()])
            .args(["--cluster", &redis.url()])
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("start ringcast");
        wait_for_port(port, Duration::from_secs(10));
        let node = Node { _child: ChildGuard::new(child), port };
        node.wait_metric("ringcast_cluster_up", 1.0);
        node
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
}

/// History off: the plain backbone (deliver locally, PUBLISH once, ignore the own echo).
/// With history, `history.rs` covers the cluster.
const NO_HISTORY: &[&str] = &["--history-size", "0"];

#[test]
fn a_broadcast_published_on_one_node_reaches_subscribers_of_both() {
    let redis = Redis::start();
    let a = Node::start(&redis, NO_HISTORY);
    let b = Node::start(&redis, NO_HISTORY);
    let mut peer = Peer::python();
    peer.crowd("a", 20, &a.url("/"), &ConnectOpts::new());
    peer.crowd("b", 20, &b.url("/"), &ConnectOpts::new());
    peer.connect("pub", &a.url("/publish"), &ConnectOpts::new());
    for i in 0..10 {
        peer.send_text("pub", &format!("ws {i}"));
    }
    assert_eq!(b.http("POST", "/publish", b"http on b").0, 202);
    for prefix in ["a", "b"] {
        let drained = peer.drain(&Drain::prefix(prefix).wait_count(11).list());
        assert!(drained.satisfied, "{prefix}: {:?}", drained.per_conn);
        assert_eq!(drained.total, 220, "{prefix}: every message exactly once (own echo ignored)");
    }
    assert_eq!(a.metric("ringcast_cluster_published_total"), 10.0);
    assert_eq!(b.metric("ringcast_cluster_received_total"), 10.0);
    assert_eq!(a.metric("ringcast_cluster_received_total"), 1.0);
    assert_eq!(a.metric("ringcast_cluster_gaps_total"), 0.0);
}

#[test]
fn topics_and_relay_span_nodes() {
    let redis = Redis::start();
    let a = Node::start(&redis, &["--mode", "pubsub", "--history-size", "0"]);
    let b = Node::start(&redis, &["--mode", "pubsub", "--history-size", "0"]);
    let mut peer = Peer::node();
    peer.connect("a_x", &a.url("/"), &ConnectOpts::new());
    peer.connect("b_x", &b.url("/"), &ConnectOpts::new());
    peer.connect("b_y", &b.url("/"), &ConnectOpts::new());
    for (id, topic) in [("a_x", "x"), ("b_x", "x"), ("b_y", "y")] {
        peer.send_text(id, &format!(r#"{{"op":"subscribe","topic":"{topic}"}}"#));
        assert!(peer.expect_text(id).contains("subscribed"));
    }
    // Subscriptions to Redis follow local interest: x on a; x and y on b.
    a.wait_metric("ringcast_cluster_channels", 1.0);
    b.wait_metric("ringcast_cluster_channels", 2.0);
    peer.send_text("a_x", r#"{"op":"publish","topic":"x","data":"to x"}"#);
    assert_eq!(peer.expect_text("a_x"), r#"{"topic":"x","data":"to x"}"#);
    assert_eq!(peer.expect_text("b_x"), r#"{"topic":"x","data":"to x"}"#);
    assert_eq!(a.http("POST", "/publish?topic=y", br#""to y""#).0, 202);
    assert_eq!(peer.expect_text("b_y"), r#"{"topic":"y","data":"to y"}"#);
    peer.expect_no_event(|e| matches!(e, testkit::Event::Text { .. }), Duration::from_millis(300));
    // Interest goes away with the last local subscriber.
    peer.send_text("b_y", r#"{"op":"unsubscribe","topic":"y"}"#);
    assert!(peer.expect_text("b_y").contains("unsubscribed"));
    b.wait_metric("ringcast_cluster_channels", 1.0);
    peer.close("b_x", 1000, "");
    peer.expect_close("b_x");
    b.wait_metric("ringcast_cluster_channels", 0.0);

    let relay_a = Node::start(&redis, &["--mode", "relay"]);
    let relay_b = Node::start(&redis, &["--mode", "relay"]);
    peer.connect("r1", &relay_a.url("/"), &ConnectOpts::new().collect());
    peer.connect("r2", &relay_b.url("/"), &ConnectOpts::new().collect());
    peer.send_text("r1", "hello other node");
    assert_eq!(peer.drain(&Drain::id("r2").wait_count(1)).total, 1);
    assert_eq!(peer.drain(&Drain::id("r1")).total, 0, "the sender does not get its own message");
}

#[test]
fn nodes_survive_a_redis_restart_and_count_what_was_lost() {
    let mut redis = Redis::start();
    let a = Node::start(&redis, NO_HISTORY);
    let b = Node::start(&redis, NO_HISTORY);
    let mut peer = Peer::python();
    peer.connect("sub_a", &a.url("/"), &ConnectOpts::new().collect());
    peer.connect("sub_b", &b.url("/"), &ConnectOpts::new().collect());
    // b's dashboard feed shows the backbone as the outage goes by.
    peer.connect("dashboard_b", &b.url("/_status"), &ConnectOpts::new());
    assert_eq!(backbone_state(&mut peer, "dashboard_b", |state| state.contains(r#""up":true"#)).0, "up");
    assert_eq!(a.http("POST", "/publish", b"before").0, 202);
    assert_eq!(peer.drain(&Drain::id("sub_b").wait_count(1)).total, 1);

    redis.kill();
    a.wait_metric("ringcast_cluster_up", 0.0);
    backbone_state(&mut peer, "dashboard_b", |state| state.contains(r#""up":false"#));
    // Local traffic continues during the outage; what cannot cross is counted.
    for _ in 0..3 {
        assert_eq!(a.http("POST", "/publish", b"during").0, 202);
    }
    assert_eq!(peer.drain(&Drain::id("sub_a").wait_count(4)).total, 4);
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.metric("ringcast_cluster_publish_failures_total") < 3.0 {
        assert!(Instant::now() < deadline, "publish failures not counted");
        std::thread::sleep(Duration::from_millis(50));
    }

    redis.restart();
    a.wait_metric("ringcast_cluster_up", 1.0);
    b.wait_metric("ringcast_cluster_up", 1.0);
    assert!(a.metric("ringcast_cluster_reconnects_total") >= 1.0);
    // The publisher's connection reconnects on its next attempt (after its backoff).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert_eq!(a.http("POST", "/publish", b"after").0, 202);
        if peer.drain(&Drain::id("sub_b").wait_count(1).timeout(Duration::from_millis(500))).total > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "b never received from a after the restart");
    }
    // b saw the sequence gap left by the messages a could not send.
    assert!(b.metric("ringcast_cluster_gaps_total") >= 3.0, "gaps: {}", b.metric("ringcast_cluster_gaps_total"));
    let (up, gaps, reconnects) = backbone_state(&mut peer, "dashboard_b", |state| {
        state.contains(r#""up":true"#) && !state.contains(r#""gaps":0,"#)
    });
    assert_eq!(up, "up");
    assert!(gaps >= 3, "the dashboard shows the gaps: {gaps}");
    assert!(reconnects >= 1, "and the reconnection: {reconnects}");
}

/// Reads the dashboard feed `id` until a snapshot's `"cluster":{...}` satisfies `wanted`
/// (bounded); returns its state, gaps and reconnects.
fn backbone_state(peer: &mut Peer, id: &str, wanted: impl Fn(&str) -> bool) -> (&'static str, u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let snapshot = peer.expect_text(id);
        if let Some(start) = snapshot.rfind(r#""cluster":{"#) {
            let state = &snapshot[start..start + snapshot[start..].find('}').unwrap()];
            if wanted(state) {
                let number = |key: &str| -> u64 {
                    let rest = &state[state.find(&format!("\"{key}\":")).unwrap() + key.len() + 3..];
                    rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len())].parse().unwrap()
                };
                let up = if state.contains(r#""up":true"#) { "up" } else { "down" };
                return (up, number("gaps"), number("reconnects"));
            }
        }
        assert!(Instant::now() < deadline, "no dashboard snapshot matched; last: {snapshot}");
    }
}

#[test]
fn no_redis_is_a_clear_error_at_start() {
    let port = free_port();
    let output = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["serve", "--port", &free_port().to_string(), "--cluster", &format!("redis://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("cannot reach Redis at redis://127.0.0.1:{port}")), "{stderr}");
}
