//! End-to-end tests of the `ringcast` binary, run as a subprocess and driven by
//! independent peers (Python `websockets`, Node `ws`, headless Chromium, raw HTTP).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use testkit::browser::{PageOpts, run_page};
use testkit::{ChildGuard, ConnectOpts, Drain, Payload, Peer, free_port, wait_for_port};

/// A running `ringcast serve` process, killed on drop.
struct Service {
    child: ChildGuard,
    port: u16,
}

impl Service {
    fn start(args: &[&str]) -> Service {
        let port = free_port();
        Self::start_on(port, &[&["--port", &port.to_string()], args].concat())
    }

    fn start_on(port: u16, args: &[&str]) -> Service {
        let child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .arg("serve")
            .args(["--bind", "127.0.0.1", "--workers", "2"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ringcast");
        wait_for_port(port, Duration::from_secs(10));
        Service { child: ChildGuard::new(child), port }
    }

    fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    /// One HTTP/1.1 request; returns (status, body).
    fn http(&self, method: &str, target: &str, body: &[u8]) -> (u16, String) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let head = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n", body.len());
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }

    fn metric(&self, name: &str) -> f64 {
        let (status, text) = self.http("GET", "/metrics", b"");
        assert_eq!(status, 200);
        text.lines()
            .filter(|line| line.starts_with(name) && line[name.len()..].starts_with([' ', '{']))
            .map(|line| line.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
            .sum()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "ringcast did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn texts(peer: &mut Peer, prefix: &str, each: usize) -> Vec<(String, Vec<String>)> {
    let drained = peer.drain(&Drain::prefix(prefix).wait_count(each).list());
    assert!(drained.satisfied, "{prefix}: wanted {each} each, got {:?}", drained.per_conn);
    let mut by_conn: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for message in drained.messages {
        if let Payload::Text(text) = message.payload {
            by_conn.entry(message.id).or_default().push(text);
        }
    }
    by_conn.into_iter().collect()
}

#[test]
fn broadcast_mode_fans_out_websocket_and_http_publishes_to_every_subscriber() {
    let service = Service::start(&["--publish-token", "s3cret"]);
    let mut subscribers = Peer::python();
    subscribers.crowd("sub", 50, &service.url("/"), &ConnectOpts::new());
    let mut publisher = Peer::node();
    publisher.connect("pub", &service.url("/publish?token=s3cret"), &ConnectOpts::new().collect());
    for i in 0..20 {
        publisher.send_text("pub", &format!("ws {i}"));
    }
    // Two publishers are not ordered with each other: let the first one's messages land.
    subscribers.drain(&Drain::prefix("sub").wait_count(20).keep());
    let (status, _) = service.http("POST", "/publish?token=s3cret", b"over http");
    assert_eq!(status, 202);
    let mut expected: Vec<String> = (0..20).map(|i| format!("ws {i}")).collect();
    expected.push("over http".into());
    let received = texts(&mut subscribers, "sub", 21);
    assert_eq!(received.len(), 50);
    for (id, messages) in received {
        assert_eq!(messages, expected, "{id}: every message once, in order");
    }
    let (status, _) = service.http("POST", "/publish?token=s3cret&binary=1", &[0, 1, 2, 255]);
    assert_eq!(status, 202);
    let drained = subscribers.drain(&Drain::prefix("sub").wait_count(1).list());
    assert_eq!(drained.binary, 50);
    assert!(drained.messages.iter().all(|m| m.payload == Payload::Binary(vec![0, 1, 2, 255])));
    // Publishers are not subscribers.
    assert_eq!(publisher.drain(&Drain::id("pub")).total, 0);
}

#[test]
fn publish_token_is_required_on_websocket_and_http() {
    let service = Service::start(&["--publish-token", "s3cret"]);
    let mut peer = Peer::python();
    let missing = peer.try_connect("a", &service.url("/publish"), &ConnectOpts::new()).unwrap_err();
    assert_eq!(missing.status, Some(401));
    let wrong = peer.try_connect("b", &service.url("/publish?token=nope"), &ConnectOpts::new()).unwrap_err();
    assert_eq!(wrong.status, Some(403));
    peer.connect("c", &service.url("/publish"), &ConnectOpts::new().header("Authorization", "Bearer s3cret"));
    assert_eq!(service.http("POST", "/publish", b"x").0, 401);
    assert_eq!(service.http("POST", "/publish?token=nope", b"x").0, 403);
    assert_eq!(service.http("POST", "/publish?token=s3cret", b"x").0, 202);
    // Subscribers need no token; unknown paths are 404.
    peer.connect("sub", &service.url("/"), &ConnectOpts::new());
    assert_eq!(peer.try_connect("d", &service.url("/elsewhere"), &ConnectOpts::new()).unwrap_err().status, Some(404));
    assert!(service.metric("ringcast_handshakes_total{result=\"refused\"}") >= 3.0);
}

#[test]
fn relay_mode_forwards_to_everyone_but_the_sender() {
    let service = Service::start(&["--mode", "relay"]);
    let mut peer = Peer::node();
    for id in ["a", "b", "c"] {
        peer.connect(id, &service.url("/"), &ConnectOpts::new().collect());
    }
    peer.send_text("a", "from a");
    peer.send_binary("b", b"from b");
    let b = peer.drain(&Drain::id("b").wait_count(1).list());
    let c = peer.drain(&Drain::id("c").wait_count(2).list());
    let a = peer.drain(&Drain::id("a").wait_count(1).list());
    assert_eq!(b.messages.iter().map(|m| &m.payload).collect::<Vec<_>>(), [&Payload::Text("from a".into())]);
    assert_eq!(a.messages.iter().map(|m| &m.payload).collect::<Vec<_>>(), [&Payload::Binary(b"from b".to_vec())]);
    assert_eq!(c.total, 2);
}

#[test]
fn pubsub_topics_are_isolated_and_malformed_json_is_answered() {
    // History off: deliveries without offsets (`history.rs` tests them with).
    let service = Service::start(&["--mode", "pubsub", "--history-size", "0"]);
    let mut peer = Peer::python();
    for id in ["a1", "a2", "b1", "p"] {
        peer.connect(id, &service.url("/"), &ConnectOpts::new());
    }
    for (id, topic) in [("a1", "a"), ("a2", "a"), ("b1", "b")] {
        peer.send_text(id, &format!(r#"{{"op":"subscribe","topic":"{topic}"}}"#));
        assert_eq!(peer.expect_text(id), format!(r#"{{"event":"subscribed","topic":"{topic}"}}"#));
    }
    peer.send_text("p", r#"{"op":"publish","topic":"a","data":{"n":1}}"#);
    peer.send_text("p", r#"{"op":"publish","topic":"b","data":"for b"}"#);
    assert_eq!(peer.expect_text("a1"), r#"{"topic":"a","data":{"n":1}}"#);
    assert_eq!(peer.expect_text("a2"), r#"{"topic":"a","data":{"n":1}}"#);
    assert_eq!(peer.expect_text("b1"), r#"{"topic":"b","data":"for b"}"#);
    // Over HTTP too.
    assert_eq!(service.http("POST", "/publish?topic=b", br#"[1,2]"#).0, 202);
    assert_eq!(peer.expect_text("b1"), r#"{"topic":"b","data":[1,2]}"#);
    // Malformed control messages get an error and the connection stays usable.
    peer.send_text("p", "{not json");
    assert!(peer.expect_text("p").starts_with(r#"{"event":"error","error":"malformed JSON"#));
    peer.send_text("p", r#"{"op":"dance","topic":"a"}"#);
    assert!(peer.expect_text("p").contains("unknown op"));
    peer.send_binary("p", b"\x00");
    assert!(peer.expect_text("p").contains("JSON text"));
    peer.send_text("a2", r#"{"op":"unsubscribe","topic":"a"}"#);
    assert_eq!(peer.expect_text("a2"), r#"{"event":"unsubscribed","topic":"a"}"#);
    peer.send_text("p", r#"{"op":"publish","topic":"a","data":2}"#);
    assert_eq!(peer.expect_text("a1"), r#"{"topic":"a","data":2}"#);
    // Neither the unsubscribed a2 nor b1 (topic b) nor the publisher saw anything more.
    peer.expect_no_event(|e| matches!(e, testkit::Event::Text { .. }), Duration::from_millis(300));
    assert_eq!(service.metric("ringcast_bad_requests_total"), 3.0);
}

#[test]
fn metrics_move_as_traffic_flows() {
    let service = Service::start(&[]);
    let (status, healthz) = service.http("GET", "/healthz", b"");
    assert_eq!((status, healthz.as_str()), (200, "ok\n"));
    let sent_before = service.metric("ringcast_messages_sent_total");
    let mut peer = Peer::python();
    peer.crowd("s", 10, &service.url("/"), &ConnectOpts::new());
    assert_eq!(service.metric("ringcast_websockets"), 10.0);
    peer.connect("pub", &service.url("/publish"), &ConnectOpts::new());
    for i in 0..5 {
        peer.send_text("pub", &format!("m{i}"));
    }
    peer.drain(&Drain::prefix("s").wait_count(5));
    assert_eq!(service.metric("ringcast_messages_sent_total") - sent_before, 50.0);
    assert_eq!(service.metric("ringcast_published_messages_total"), 5.0);
    assert_eq!(service.metric("ringcast_messages_received_total"), 5.0);
    assert!(service.metric("ringcast_publish_to_write_seconds_count") >= 50.0);
    assert_eq!(service.metric("ringcast_websockets"), 11.0, "10 subscribers and the publisher");
    // Plus this /metrics request, and possibly earlier ones still closing.
    assert!(service.metric("ringcast_connections") >= 12.0);
    assert_eq!(service.metric("ringcast_io_backend"), 2.0);
}

#[test]
fn sigterm_closes_every_client_with_1001_and_exits_zero() {
    let mut service = Service::start(&[]);
    let mut python = Peer::python();
    python.crowd("p", 20, &service.url("/"), &ConnectOpts::new());
    let mut node = Peer::node();
    node.connect("n", &service.url("/"), &ConnectOpts::new());
    let status = service.terminate();
    assert!(status.success(), "exit status {status}");
    assert_eq!(node.expect_close("n").0, 1001);
    let drained = python.drain(&Drain::prefix("p"));
    assert_eq!(drained.closed.len(), 20, "{:?}", drained.closed);
    assert!(drained.closed.values().all(|&code| code == 1001), "{:?}", drained.closed);
}

#[test]
fn config_file_settings_apply_and_flags_override_them() {
    let port = free_port();
    let dir = testkit::temp_dir("ringcast-config");
    let file = dir.join("ringcast.toml");
    std::fs::write(&file, format!("port = {port}\nmode = \"echo\"\nsplit_frame_size = 64\npath = \"/ws\"\n")).unwrap();
    // The file alone: echo mode on /ws.
    {
        let service = Service::start_on(port, &["--config", file.to_str().unwrap()]);
        let mut peer = Peer::node();
        peer.connect("e", &service.url("/ws"), &ConnectOpts::new());
        let long = "x".repeat(1000);
        peer.send_text("e", &long);
        assert_eq!(peer.expect_text("e"), long, "split into 64-byte frames and reassembled");
    }
    // A flag overrides the file's mode; the file's port and path still apply.
    let service = Service::start_on(port, &["--config", file.to_str().unwrap(), "--mode", "relay"]);
    let mut peer = Peer::node();
    peer.connect("a", &service.url("/ws"), &ConnectOpts::new().collect());
    peer.connect("b", &service.url("/ws"), &ConnectOpts::new().collect());
    peer.send_text("a", "relayed");
    assert_eq!(peer.drain(&Drain::id("b").wait_count(1)).total, 1);
    assert_eq!(peer.drain(&Drain::id("a")).total, 0, "relay does not echo");
}

#[test]
fn bad_config_file_fails_with_a_message_naming_it() {
    let dir = testkit::temp_dir("ringcast-bad-config");
    let file = dir.join("bad.toml");
    std::fs::write(&file, "prot = 1\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["serve", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.toml") && stderr.contains("prot"), "{stderr}");
    let missing = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["serve", "--config", Path::new("/nonexistent/ringcast.toml").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn missing_tls_files_fail_at_start_naming_the_file() {
    let output = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["serve", "--port", &free_port().to_string(), "--tls-cert", "/nonexistent/cert.pem"])
        .args(["--tls-key", "/nonexistent/key.pem"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/cert.pem"), "{stderr}");
}

/// Every tile's number and caption on the dashboard, by element id.
const SHOWN_NUMBERS: &str =
    "Object.fromEntries([...document.querySelectorAll('.tile .value, .tile .sub')].map(e => [e.id, e.textContent]))";

/// The first number in a caption such as "12,345 in all".
fn leading_number(text: &str) -> u64 {
    let digits: String = text.chars().take_while(|c| c.is_ascii_digit() || *c == ',').filter(|c| *c != ',').collect();
    digits.parse().unwrap_or_else(|_| panic!("no number at the start of {text:?}"))
}

#[test]
fn dashboard_under_load_fills_its_charts_and_its_numbers_move_in_chromium() {
    let service = Service::start(&["--mode", "pubsub", "--admin-token", "look"]);
    let mut subscribers = Peer::python();
    for (prefix, count, topic) in [("p", 30, "prices"), ("n", 5, "news")] {
        subscribers.crowd(prefix, count, &service.url("/"), &ConnectOpts::new());
        subscribers.send_text_to_prefix(prefix, &format!(r#"{{"op":"subscribe","topic":"{topic}"}}"#));
        assert!(subscribers.drain(&Drain::prefix(prefix).wait_count(1)).satisfied, "{topic}: subscribed");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (stop, url) = (stop.clone(), service.url("/"));
        std::thread::spawn(move || {
            let mut peer = Peer::node();
            peer.connect("pub", &url, &ConnectOpts::new().collect());
            let pad = "x".repeat(200);
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let topic = if sent % 10 == 9 { "news" } else { "prices" };
                peer.send_text(
                    "pub",
                    &format!(r#"{{"op":"publish","topic":"{topic}","data":{{"n":{sent},"pad":"{pad}"}}}}"#),
                );
                sent += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            sent
        })
    };
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("test-output").join("dashboard.png");
    std::fs::create_dir_all(screenshot.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&screenshot);
    // Waits for two updates, notes what the tiles show, then waits for five more.
    let opts = PageOpts {
        timeout: Duration::from_secs(30),
        done_when: Some(format!(
            "(() => {{ const d = window.dashboard; if (!d || d.updates < 2) return false; \
             if (!window.__first) window.__first = {{ at: d.updates, shown: {SHOWN_NUMBERS} }}; \
             return d.updates >= window.__first.at + 5; }})()"
        )),
        result: Some(format!(
            "({{ first: window.__first.shown, last: {SHOWN_NUMBERS}, \
             charts: Object.fromEntries(Object.entries(window.dashboard.charts).map(([name, u]) => [name, {{ \
               points: u.data[0].length, \
               values: u.data.slice(1).map(s => s.filter(v => v != null).length), \
               max: u.data.slice(1).map(s => Math.max(0, ...s.filter(v => v != null))), \
               axes: u.axes.slice(1).map(a => a.label), width: u.width }}])), \
             workers: [...document.querySelectorAll('#workers tr')].map(r => [...r.cells].map(c => c.textContent)), \
             topics: [...document.querySelectorAll('#topics tr')].map(r => [...r.cells].map(c => c.textContent)), \
             cluster: document.getElementById('cluster').textContent }})"
        )),
        screenshot: Some(screenshot.clone()),
        viewport: Some((1400, 1000)),
        ..PageOpts::default()
    };
    let result = run_page(&format!("http://127.0.0.1:{}/?token=look", service.port), &opts);
    stop.store(true, Ordering::Relaxed);
    let published = publisher.join().unwrap();
    assert!(published > 100, "the publisher kept the load on: {published} messages");

    for (name, chart) in result["charts"].as_object().unwrap() {
        assert!(chart["points"].as_u64().unwrap() >= 6, "{name}: {chart}");
        assert!(chart["width"].as_u64().unwrap() >= 300, "{name}: {chart}");
        for (series, values) in chart["values"].as_array().unwrap().iter().enumerate() {
            assert!(values.as_u64().unwrap() >= 5, "{name} series {series} has data points: {chart}");
        }
        assert!(chart["axes"].as_array().unwrap().iter().all(|l| !l.as_str().unwrap_or("").is_empty()), "{chart}");
    }
    let charts = &result["charts"];
    assert_eq!(charts.as_object().unwrap().len(), 6, "{charts}");
    assert!(
        charts["connections"]["max"][0].as_f64().unwrap() >= 37.0,
        "35 subscribers, the publisher, the page: {charts}"
    );
    assert!(charts["messages"]["max"][0].as_f64().unwrap() >= 1000.0, "deliveries/s under load: {charts}");
    assert!(charts["messages"]["max"][1].as_f64().unwrap() >= 50.0, "publishes/s received: {charts}");
    assert!(charts["bytes"]["max"][0].as_f64().unwrap() >= 100_000.0, "{charts}");
    assert!(charts["latency"]["max"][1].as_f64().unwrap() > 0.0, "p99 in ms: {charts}");
    assert_eq!(charts["messages"]["axes"][0], "deliveries / s");
    assert_eq!(charts["latency"]["axes"][0], "latency");

    // The numbers move: more deliveries and bytes shown at the end than five updates earlier.
    let (first, last) = (&result["first"], &result["last"]);
    for caption in ["s-out", "s-in", "s-bytes"] {
        assert_ne!(first[caption], last[caption], "{caption} did not move: {first} → {last}");
    }
    assert!(leading_number(last["s-out"].as_str().unwrap()) > leading_number(first["s-out"].as_str().unwrap()));
    assert_eq!(last["v-websockets"], "37", "{last}");

    assert_eq!(result["workers"].as_array().unwrap().len(), 2, "one row per worker: {result}");
    assert!(["io_uring", "epoll"].contains(&result["workers"][0][1].as_str().unwrap()), "backend: {result}");
    assert_eq!(result["topics"].to_string(), r#"[["prices","30"],["news","5"]]"#, "busiest first: {result}");
    assert!(result["cluster"].as_str().unwrap().contains("Not in a cluster"), "{result}");

    let png = std::fs::read(&screenshot).expect("screenshot saved");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "a real screenshot: {} bytes", png.len());
    eprintln!("dashboard screenshot: {}", screenshot.display());
}

#[test]
fn admin_token_guards_the_dashboard_and_its_feed() {
    let service = Service::start(&["--admin-token", "look"]);
    assert_eq!(service.http("GET", "/", b"").0, 401);
    assert_eq!(service.http("GET", "/?token=nope", b"").0, 403);
    let (status, body) = service.http("GET", "/?token=look", b"");
    assert_eq!(status, 200);
    assert!(
        body.contains("<title>ringcast dashboard</title>") && body.contains("uPlot"),
        "the page, with uPlot inlined"
    );
    assert!(!body.contains("<script src=") && !body.contains("<link"), "nothing loaded from elsewhere");
    let mut peer = Peer::python();
    assert_eq!(peer.try_connect("a", &service.url("/_status"), &ConnectOpts::new()).unwrap_err().status, Some(401));
    assert_eq!(
        peer.try_connect("b", &service.url("/_status?token=no"), &ConnectOpts::new()).unwrap_err().status,
        Some(403)
    );
    peer.connect("c", &service.url("/_status"), &ConnectOpts::new().header("Authorization", "Bearer look"));
    let history = peer.expect_text("c");
    assert!(history.starts_with(r#"{"history":["#), "{history}");
    let live = peer.expect_text("c");
    assert!(live.starts_with(r#"{"time_ms":"#) && live.contains(r#""mode":"broadcast""#), "{live}");
    // The token guards the dashboard only.
    assert_eq!(service.http("GET", "/metrics", b"").0, 200);
    drop(service);

    let open = Service::start(&[]);
    assert_eq!(open.http("GET", "/", b"").0, 200, "no token configured: open");
    drop(open);
    let quiet = Service::start(&["--status-page", "false"]);
    assert_eq!(quiet.http("GET", "/", b"").0, 426, "a plain GET on the WebSocket path asks for an upgrade");
}

/// permessage-deflate is on by default: Chromium, Python `websockets` and Node `ws`
/// negotiate it, and a JSON update published over HTTP reaches all three, compressed
/// once for them all. `--permessage-deflate false` declines every offer.
#[test]
fn permessage_deflate_is_negotiated_by_browsers_and_peers_and_compressed_once() {
    let service = Service::start(&[]);
    let page = r#"<!doctype html><script>
const out = { messages: [] };
const ws = new WebSocket("ws://127.0.0.1:PORT/");
ws.onopen = () => { out.extensions = ws.extensions; };
ws.onmessage = (e) => { out.messages.push(e.data); ws.close(1000); };
ws.onclose = () => { window.__result = out; window.__done = true; };
</script>"#
        .replace("PORT", &service.port.to_string());
    let mut peers = [Peer::python(), Peer::node()];
    for peer in &mut peers {
        let opened = peer.connect("s", &service.url("/"), &ConnectOpts::new().compression());
        let answer = opened.extensions.unwrap_or_default();
        assert!(answer.starts_with("permessage-deflate; server_no_context_takeover"), "answered {answer:?}");
    }
    let browser = std::thread::spawn(move || run_page(&page, &PageOpts::default()));
    let deadline = Instant::now() + Duration::from_secs(15);
    while service.metric("ringcast_websockets") < 3.0 {
        assert!(Instant::now() < deadline, "the page did not connect");
        std::thread::sleep(Duration::from_millis(20));
    }
    let update = format!("[{}]", r#"{"symbol":"ABC","price":101.25,"volume":1200},"#.repeat(40).trim_end_matches(','));
    assert_eq!(service.http("POST", "/publish", update.as_bytes()).0, 202);
    for peer in &mut peers {
        assert_eq!(peer.expect_text("s"), update);
    }
    let result = browser.join().expect("browser thread");
    assert_eq!(result["messages"][0].as_str(), Some(update.as_str()), "{result}");
    let extensions = result["extensions"].as_str().unwrap_or_default();
    assert!(extensions.starts_with("permessage-deflate"), "the page saw Sec-WebSocket-Extensions {extensions:?}");
    assert_eq!(service.metric("ringcast_compressions_total"), 1.0, "one compression for three subscribers");

    let plain = Service::start(&["--permessage-deflate", "false"]);
    let mut peer = Peer::python();
    assert_eq!(peer.connect("p", &plain.url("/"), &ConnectOpts::new().compression()).extensions, None);
}

#[test]
fn echo_mode_answers_python_and_node() {
    let service = Service::start(&["--mode", "echo"]);
    for mut peer in [Peer::python(), Peer::node()] {
        peer.connect("e", &service.url("/"), &ConnectOpts::new());
        peer.send_text("e", "héllo");
        assert_eq!(peer.expect_text("e"), "héllo");
        peer.send_binary("e", &[9; 70_000]);
        assert_eq!(peer.expect_binary("e"), vec![9; 70_000]);
    }
}
