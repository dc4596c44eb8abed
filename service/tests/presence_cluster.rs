//! Presence across `--cluster` nodes through a real `redis-server` (started here on a
//! free loopback port): joins, leaves and queries on two nodes, and a killed node's
//! clients vanishing within the presence TTL.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use testkit::{ChildGuard, ConnectOpts, Peer, free_port, wait_for_port};

const SECRET: &str = "a-test-secret-of-32-bytes-length";
const CONFIG: &str = r#"mode = "pubsub"
admin_token = "look"
[auth]
hmac_secret = "a-test-secret-of-32-bytes-length"
[presence]
ttl = "1500ms"
[[channels]]
pattern = "room:*"
subscribe = "authenticated"
presence = true
join_leave = true
"#;

struct Node {
    child: Option<ChildGuard>,
    port: u16,
}

impl Node {
    fn start(redis: u16, config: &std::path::Path) -> Node {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .args(["serve", "--bind", "127.0.0.1", "--workers", "2", "--port", &port.to_string()])
            .args(["--cluster", &format!("redis://127.0.0.1:{redis}"), "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .spawn()
            .expect("start ringcast");
        wait_for_port(port, Duration::from_secs(10));
        let node = Node { child: Some(ChildGuard::new(child)), port };
        node.wait_for("presence backbone", |n| n.metric("ringcast_presence_backbone_up") == 1.0);
        node.wait_for("topic backbone", |n| n.metric("ringcast_cluster_up") == 1.0);
        node
    }

    fn url(&self, token: &str) -> String {
        format!("ws://127.0.0.1:{}/?token={token}", self.port)
    }

    fn http(&self, target: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
    }

    fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.http("/metrics");
        text.lines()
            .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .map_or(f64::NAN, |v| v.parse().unwrap())
    }

    fn presence(&self) -> Value {
        let (status, body) = self.http("/presence?topic=room:1&token=look");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    fn wait_for(&self, what: &str, mut done: impl FnMut(&Node) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !done(self) {
            assert!(Instant::now() < deadline, "{what} never happened");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn token(user: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    let claims = json!({"sub": user, "exp": exp, "info": {"node_user": user}});
    jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

fn next(peer: &mut Peer, id: &str) -> Value {
    serde_json::from_str(&peer.expect_text(id)).unwrap()
}

fn users(presence: &Value) -> Vec<String> {
    let mut users: Vec<String> = presence["clients"]
        .as_object()
        .unwrap_or_else(|| panic!("no clients in {presence}"))
        .values()
        .map(|m| m["user"].as_str().unwrap().to_owned())
        .collect();
    users.sort();
    users
}

#[test]
fn presence_spans_two_nodes_and_a_killed_nodes_clients_expire() {
    let redis_port = free_port();
    let _redis = ChildGuard::new(
        Command::new("redis-server")
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (installed by tools/setup.sh)"),
    );
    wait_for_port(redis_port, Duration::from_secs(10));
    let dir = testkit::temp_dir("ringcast-presence");
    let config = dir.join("ringcast.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let mut a = Node::start(redis_port, &config);
    let b = Node::start(redis_port, &config);

    let mut peer = Peer::python();
    peer.connect("alice", &a.url(&token("alice")), &ConnectOpts::new());
    peer.connect("bob", &b.url(&token("bob")), &ConnectOpts::new());
    let subscribe = json!({"op": "subscribe", "topic": "room:1"}).to_string();
    peer.send_text("alice", &subscribe);
    assert_eq!(next(&mut peer, "alice")["event"], "subscribed");
    assert_eq!(next(&mut peer, "alice")["user"], "alice", "alice's own join");
    // Node a listens to room:1 on Redis once alice is there; then bob joins on b.
    a.wait_for("a's interest in room:1", |n| n.metric("ringcast_cluster_channels") == 1.0);
    peer.send_text("bob", &subscribe);
    assert_eq!(next(&mut peer, "bob")["event"], "subscribed");
    assert_eq!(next(&mut peer, "bob")["user"], "bob");
    let joined = next(&mut peer, "alice");
    assert_eq!(
        (joined["event"].as_str(), joined["user"].as_str()),
        (Some("join"), Some("bob")),
        "across nodes: {joined}"
    );

    // Either node answers for both, over WebSocket and HTTP.
    peer.send_text("bob", &json!({"op": "presence", "topic": "room:1"}).to_string());
    let presence = next(&mut peer, "bob");
    assert_eq!(presence["event"], "presence");
    assert_eq!(users(&presence), ["alice", "bob"], "{presence}");
    let alice_entry = presence["clients"].as_object().unwrap().values().find(|m| m["user"] == "alice").unwrap();
    assert_eq!(alice_entry["info"], json!({"node_user": "alice"}));
    assert_eq!(users(&a.presence()), ["alice", "bob"]);
    peer.send_text("alice", &json!({"op": "presence_stats", "topic": "room:1"}).to_string());
    assert_eq!(
        next(&mut peer, "alice"),
        json!({"event": "presence_stats", "topic": "room:1", "clients": 2, "users": 2})
    );

    // A leave crosses nodes too.
    peer.send_text("bob", &json!({"op": "unsubscribe", "topic": "room:1"}).to_string());
    assert_eq!(next(&mut peer, "bob")["event"], "unsubscribed");
    let left = next(&mut peer, "alice");
    assert_eq!((left["event"].as_str(), left["user"].as_str()), (Some("leave"), Some("bob")), "{left}");
    assert_eq!(users(&b.presence()), ["alice"]);
    peer.send_text("bob", &subscribe);
    assert_eq!(next(&mut peer, "bob")["event"], "subscribed");
    assert_eq!(next(&mut peer, "bob")["event"], "join");
    assert_eq!(next(&mut peer, "alice")["event"], "join");
    b.wait_for("bob back in presence", |n| users(&n.presence()) == ["alice", "bob"]);

    // Node a dies without a word (SIGKILL): alice vanishes from b's presence within the
    // TTL (1.5 s), once her entry's last refresh has expired.
    a.child = None;
    let killed = Instant::now();
    b.wait_for("alice's entry to expire", |n| users(&n.presence()) == ["bob"]);
    let gone = killed.elapsed();
    assert!(gone <= Duration::from_millis(1500 + 3000), "gone after {gone:?}, TTL 1.5 s");
    peer.send_text("bob", &json!({"op": "presence_stats", "topic": "room:1"}).to_string());
    assert_eq!(next(&mut peer, "bob"), json!({"event": "presence_stats", "topic": "room:1", "clients": 1, "users": 1}));
    let _ = std::fs::remove_dir_all(&dir);
}
