//! Headless Chromium (playwright-core) against the Python and Node server peers.

use std::time::Duration;

use testkit::browser::{PageOpts, run_page, try_run_page};
use testkit::tls::TestCerts;
use testkit::{ListenOpts, Peer};

fn echo_page(ws_url: &str) -> String {
    format!(
        r#"<!doctype html><meta charset="utf-8"><script>
const r = window.__result = {{ got: [] }};
const ws = new WebSocket({ws_url:?}, ["chat.v1"]);
ws.binaryType = "arraybuffer";
ws.onopen = () => {{ r.protocol = ws.protocol; ws.send("hello ✓"); ws.send(new Uint8Array([1, 2, 255])); }};
ws.onmessage = (e) => {{
  r.got.push(typeof e.data === "string" ? e.data : Array.from(new Uint8Array(e.data)));
  if (r.got.length === 2) ws.close(4000, "page done");
}};
ws.onerror = () => {{ r.error = "websocket error"; }};
ws.onclose = (e) => {{ r.close = [e.code, e.reason, e.wasClean]; window.__done = true; }};
</script>"#
    )
}

#[test]
fn chromium_echo_against_python_server() {
    let mut server = Peer::python();
    let l = server.listen(&ListenOpts::echo().name("web").subprotocol("chat.v1"));
    let result = run_page(&echo_page(&format!("ws://127.0.0.1:{}/browser?v=1", l.port)), &PageOpts::default());
    assert_eq!(result["protocol"], "chat.v1", "{result}");
    assert_eq!(result["got"][0], "hello ✓", "{result}");
    assert_eq!(result["got"][1], serde_json::json!([1, 2, 255]), "{result}");
    assert_eq!(result["close"], serde_json::json!([4000, "page done", true]), "{result}");

    let acc = server.expect_accepted("web");
    assert_eq!(acc.path, "/browser?v=1");
    let origin = acc.origin.clone().unwrap_or_default();
    assert!(origin.starts_with("http://127.0.0.1:"), "origin {origin:?}");
    let ua = acc.headers.get("user-agent").cloned().unwrap_or_default();
    assert!(ua.contains("HeadlessChrome"), "user-agent {ua:?}");
    assert_eq!(server.expect_text(&acc.id), "hello ✓");
    assert_eq!(server.expect_binary(&acc.id), vec![1, 2, 255]);
    assert_eq!(server.expect_close(&acc.id), (4000, "page done".to_string()));
}

#[test]
fn chromium_wss_against_node_server() {
    let certs = TestCerts::localhost();
    let mut server = Peer::node();
    let l =
        server.listen(&ListenOpts::echo().name("tls").subprotocol("chat.v1").tls(&certs.cert_file, &certs.key_file));
    let opts = PageOpts { ignore_certificate_errors: true, ..PageOpts::default() };
    let result = run_page(&echo_page(&format!("wss://localhost:{}/secure", l.port)), &opts);
    assert_eq!(result["got"][0], "hello ✓", "{result}");
    assert_eq!(result["close"][0], 4000, "{result}");
    assert_eq!(server.expect_accepted("tls").path, "/secure");
}

#[test]
fn unfinished_page_fails_within_its_timeout() {
    let opts = PageOpts { timeout: Duration::from_millis(1500), ..PageOpts::default() };
    let t0 = std::time::Instant::now();
    let r = try_run_page("<script>window.__result = {partial: 1}; console.log('still running');</script>", &opts)
        .expect("the harness itself works");
    assert!(!r.ok);
    assert!(r.error.as_deref().unwrap_or("").contains("timeout"), "{r:?}");
    assert_eq!(r.result["partial"], 1);
    assert!(r.console.iter().any(|c| c.contains("still running")), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(30));
}

#[test]
fn done_when_result_and_screenshot_options_drive_a_page_that_knows_nothing_of_the_harness() {
    let page = r#"<!doctype html><meta charset="utf-8"><h1 id="n">0</h1><script>
window.ticks = 0;
setInterval(() => { window.ticks += 1; document.getElementById("n").textContent = window.ticks; }, 50);
</script>"#;
    let dir = testkit::temp_dir("screenshot");
    let png = dir.join("page.png");
    let opts = PageOpts {
        done_when: Some("window.ticks >= 3".into()),
        result: Some("({ ticks: window.ticks, shown: document.getElementById('n').textContent })".into()),
        screenshot: Some(png.clone()),
        viewport: Some((400, 300)),
        ..PageOpts::default()
    };
    let result = run_page(page, &opts);
    assert!(result["ticks"].as_u64().unwrap() >= 3, "{result}");
    assert_eq!(result["shown"].as_str().unwrap().parse::<u64>().ok(), result["ticks"].as_u64(), "{result}");
    let image = std::fs::read(&png).expect("screenshot written");
    assert!(image.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // The IHDR chunk holds the width: the viewport's (one device pixel per CSS pixel).
    assert_eq!(u32::from_be_bytes(image[16..20].try_into().unwrap()), 400);
    let _ = std::fs::remove_dir_all(dir);
}
