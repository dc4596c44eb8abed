//! Headless Chromium against the server: the page connects, gets a welcome from the
//! handler, sends a message the handler observes (and relays back as a broadcast), then
//! receives a broadcast sent from the test thread and closes cleanly.

mod common;

use std::net::SocketAddr;

use common::*;
use ringcast::{CloseFrame, Connection, ConnectionId, Handler, IoBackend, Target};
use testkit::browser::{PageOpts, run_page};

#[derive(Clone, Default)]
struct Welcome {
    log: Log,
}

impl Handler for Welcome {
    type Data = ();

    fn on_connect(&self, id: ConnectionId, _peer: SocketAddr) {
        self.log.push(Ev::Connect(id));
    }

    fn on_handshake_response_sent(&self, conn: &mut Connection<'_, Self::Data>) {
        let origin = conn.request().and_then(|r| r.origin()).unwrap_or("").to_owned();
        self.log.push(Ev::Open(conn.id(), origin));
        conn.send("welcome").unwrap();
    }

    fn on_text(&self, conn: &mut Connection<'_, Self::Data>, text: &str) {
        self.log.push(Ev::Text(conn.id(), text.to_owned()));
        conn.send_to(Target::All, &format!("everyone: {text}"));
    }

    fn on_close(&self, conn: &mut Connection<'_, Self::Data>, frame: Option<&CloseFrame>) {
        self.log.push(Ev::Close(conn.id(), close_of(frame)));
    }
}

const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<script>
const out = { messages: [] };
const ws = new WebSocket("ws://127.0.0.1:PORT/page");
ws.onmessage = (e) => {
  out.messages.push(e.data);
  if (e.data === "welcome") ws.send("hello from the page ✓");
  if (e.data === "from the test") ws.close(1000, "done");
};
ws.onerror = () => { out.error = true; };
ws.onclose = (e) => {
  out.close = { code: e.code, reason: e.reason, clean: e.wasClean };
  window.__result = out;
  window.__done = true;
};
</script>"#;

fn chromium_page(backend: IoBackend) {
    let welcome = Welcome::default();
    let server = Running::start(builder(backend), welcome.clone());
    let page = PAGE.replace("PORT", &server.addr().port().to_string());
    let browser = std::thread::spawn(move || run_page(&page, &PageOpts::default()));

    let text = welcome.log.wait_for("the page's message", |e| matches!(e, Ev::Text(..)));
    let Ev::Text(id, text) = text else { unreachable!() };
    assert_eq!(text, "hello from the page ✓");
    server.broadcast("from the test");
    let result = browser.join().expect("browser thread");

    let messages: Vec<&str> = result["messages"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    assert_eq!(messages, ["welcome", "everyone: hello from the page ✓", "from the test"], "{result}");
    assert_eq!(result["close"]["code"], 1000, "{result}");
    assert_eq!(result["close"]["clean"], true, "{result}");
    assert!(result.get("error").is_none(), "{result}");
    let events = welcome.log.wait("the page's close", |evs| evs.iter().any(|e| matches!(e, Ev::Close(..))));
    assert!(events.contains(&Ev::Close(id, Some((1000, "done".into())))), "{events:#?}");
    let origin = events.iter().find_map(|e| if let Ev::Open(i, o) = e { (*i == id).then_some(o) } else { None });
    assert!(origin.is_some_and(|o| o.starts_with("http://127.0.0.1:")), "Origin {origin:?}");
    server.stop();
}

backends!(chromium_page);
