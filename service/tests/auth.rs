//! Token auth, channel permissions and presence of the `ringcast` binary, driven by
//! independent peers: Python `websockets`, Node `ws`, headless Chromium (which cannot set
//! headers, so it sends its token as the first message), raw HTTP. Tokens are minted
//! here with `jsonwebtoken`, RSA and EC keys made with `openssl`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use testkit::browser::{PageOpts, run_page};
use testkit::{ChildGuard, ConnectOpts, Event, Peer, free_port, wait_for_port};

const SECRET: &str = "a-test-secret-of-32-bytes-length";

/// A running `ringcast serve` with a config file, killed on drop.
struct Service {
    _child: ChildGuard,
    port: u16,
    dir: PathBuf,
}

impl Service {
    /// Starts with `config` (TOML) and extra flags.
    fn start(config: &str, args: &[&str]) -> Service {
        let port = free_port();
        let dir = testkit::temp_dir("ringcast-auth");
        let file = dir.join("ringcast.toml");
        std::fs::write(&file, config).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .args(["serve", "--bind", "127.0.0.1", "--workers", "2", "--port", &port.to_string()])
            .args(["--config", file.to_str().unwrap()])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ringcast");
        wait_for_port(port, Duration::from_secs(10));
        Service { _child: ChildGuard::new(child), port, dir }
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
        (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
    }

    fn metric(&self, sample: &str) -> f64 {
        let (status, text) = self.http("GET", "/metrics", b"");
        assert_eq!(status, 200);
        text.lines()
            .find_map(|line| line.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
            .map_or_else(|| panic!("no sample {sample} in /metrics"), |v| v.parse().unwrap())
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn hs256(claims: Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// A connection token for `user`, valid for an hour, with extra claims.
fn token(user: &str, extra: Value) -> String {
    let mut claims = json!({"sub": user, "exp": now() + 3600});
    if let Value::Object(extra) = extra {
        claims.as_object_mut().unwrap().extend(extra);
    }
    hs256(claims)
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Sends one pub/sub message and returns the next text on `id`, parsed.
fn ask(peer: &mut Peer, id: &str, message: Value) -> Value {
    peer.send_text(id, &message.to_string());
    next(peer, id)
}

fn next(peer: &mut Peer, id: &str) -> Value {
    serde_json::from_str(&peer.expect_text(id)).unwrap()
}

/// A pub/sub delivery without its stream position (history is on by default).
fn without_position(mut delivery: Value) -> Value {
    let fields = delivery.as_object_mut().expect("a JSON object");
    assert!(fields.remove("offset").is_some_and(|o| o.is_u64()), "a delivery has an offset");
    assert!(fields.remove("epoch").is_some_and(|e| e.is_string()), "a delivery has an epoch");
    delivery
}

fn subscribe(peer: &mut Peer, id: &str, topic: &str) -> Value {
    ask(peer, id, json!({"op": "subscribe", "topic": topic}))
}

fn no_more_text(peer: &mut Peer, ids: &[&str]) {
    let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    peer.expect_no_event(move |e| matches!(e, Event::Text { id, .. } if ids.contains(id)), Duration::from_millis(300));
}

const HS256_PUBSUB: &str = "mode = \"pubsub\"\n[auth]\nhmac_secret = \"a-test-secret-of-32-bytes-length\"\n";

#[test]
fn upgrade_tokens_valid_expired_forged_wrong_algorithm_and_none() {
    let service = Service::start(HS256_PUBSUB, &[]);
    let mut python = Peer::python();
    let mut node = Peer::node();
    python.connect("query", &service.url(&format!("/?token={}", token("alice", json!({})))), &ConnectOpts::new());
    node.connect(
        "header",
        &service.url("/"),
        &ConnectOpts::new().header("Authorization", format!("Bearer {}", token("bob", json!({})))),
    );
    // The identity holds: each user reads its own first-message-free connection.
    assert_eq!(
        ask(&mut node, "header", json!({"op": "refresh", "token": token("bob", json!({}))}))["event"],
        "refreshed"
    );

    let exp = now() + 3600;
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "mallory", "exp": exp}),
        &EncodingKey::from_secret(b"not the server's secret, but long"),
    )
    .unwrap();
    let hs384 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS384),
        &json!({"sub": "mallory", "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let payload = b64(format!(r#"{{"sub":"admin","exp":{exp}}}"#).as_bytes());
    let none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    let none_upper = format!("{}.{payload}.", b64(br#"{"alg":"NONE"}"#));
    // The alg-confusion attempt: RS256 in the header, an HMAC over it with the secret.
    let confused = {
        let head = b64(br#"{"alg":"RS256","typ":"JWT"}"#);
        let good = hs256(json!({"sub": "admin", "exp": exp}));
        format!("{head}.{payload}.{}", good.rsplit('.').next().unwrap())
    };
    let expired = hs256(json!({"sub": "alice", "exp": now() - 30}));
    let tampered = {
        let good = token("alice", json!({}));
        let parts: Vec<&str> = good.split('.').collect();
        format!("{}.{payload}.{}", parts[0], parts[2])
    };
    for (name, bad) in [
        ("expired", expired.as_str()),
        ("forged", &forged),
        ("tampered", &tampered),
        ("hs384", &hs384),
        ("none", &none),
        ("NONE", &none_upper),
        ("confused", &confused),
        ("garbage", "not.a.token"),
    ] {
        let refused =
            python.try_connect(name, &service.url(&format!("/?token={bad}")), &ConnectOpts::new()).unwrap_err();
        assert_eq!(refused.status, Some(401), "{name}: 401 at the handshake");
        let refused = node
            .try_connect(name, &service.url("/"), &ConnectOpts::new().header("Authorization", format!("Bearer {bad}")))
            .unwrap_err();
        assert_eq!(refused.status, Some(401), "{name} as a header: 401 at the handshake");
    }
    for (reason, count) in [("expired", 2.0), ("signature", 4.0), ("algorithm", 8.0), ("malformed", 2.0)] {
        assert_eq!(service.metric(&format!("ringcast_auth_failures_total{{reason=\"{reason}\"}}")), count, "{reason}");
    }
    assert_eq!(service.metric("ringcast_auth_authenticated_total"), 3.0, "two connections and one refresh");
    assert_eq!(service.metric("ringcast_auth_sessions"), 2.0);

    // Other modes have no first message: no token is a 401 there.
    let broadcast = Service::start("[auth]\nhmac_secret = \"a-test-secret-of-32-bytes-length\"\n", &[]);
    assert_eq!(python.try_connect("no token", &broadcast.url("/"), &ConnectOpts::new()).unwrap_err().status, Some(401));
    python.connect("sub", &broadcast.url(&format!("/?token={}", token("carol", json!({})))), &ConnectOpts::new());
    // With auth on, publishing needs the publish token, which this server lacks.
    assert_eq!(broadcast.http("POST", "/publish", b"x").0, 403);
    assert_eq!(
        python.try_connect("pub", &broadcast.url("/publish"), &ConnectOpts::new()).unwrap_err().status,
        Some(403)
    );
    assert_eq!(broadcast.metric("ringcast_auth_failures_total{reason=\"missing\"}"), 1.0);
}

#[test]
fn auth_off_is_said_loudly_and_a_jwt_mode_without_key_does_not_start() {
    let port = free_port();
    let mut child = ChildGuard::new(
        Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .args(["serve", "--bind", "127.0.0.1", "--port", &port.to_string(), "--mode", "pubsub"])
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let warning = loop {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("a warning at start");
        if line.contains("AUTH IS OFF") {
            break line;
        }
    };
    assert!(warning.contains("WARN") && warning.contains("subscribe to any topic"), "{warning}");
    drop(child);

    let output = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["serve", "--port", &free_port().to_string(), "--auth", "jwt"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("needs a key"), "{output:?}");
}

/// Writes a PEM key pair with `openssl`: (private PKCS#8, public SPKI).
fn key_pair(dir: &Path, name: &str, kind: &[&str]) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let status = Command::new("openssl")
        .args(["genpkey", "-out", private.to_str().unwrap()])
        .args(kind)
        .stderr(Stdio::null())
        .status()
        .expect("openssl (installed by tools/setup.sh)");
    assert!(status.success());
    let status = Command::new("openssl")
        .args(["pkey", "-in", private.to_str().unwrap(), "-pubout", "-out", public.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    (private, public)
}

fn signed(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, user: &str) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &json!({"sub": user, "exp": now() + 600}), key).unwrap()
}

#[test]
fn rs256_and_es256_public_keys_and_a_jwks_file_that_is_reloaded() {
    let dir = testkit::temp_dir("ringcast-keys");
    let (rsa_key, rsa_pub) = key_pair(&dir, "rsa", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
    let (other_key, _) = key_pair(&dir, "other", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
    let (ec_key, ec_pub) = key_pair(&dir, "ec", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(&rsa_key).unwrap()).unwrap();
    let other = EncodingKey::from_rsa_pem(&std::fs::read(&other_key).unwrap()).unwrap();
    let ec = EncodingKey::from_ec_pem(&std::fs::read(&ec_key).unwrap()).unwrap();
    let mut peer = Peer::python();
    let opens = |peer: &mut Peer, service: &Service, token: &str| -> Option<u16> {
        let url = service.url(&format!("/?token={token}"));
        match peer.try_connect("c", &url, &ConnectOpts::new()) {
            Ok(_) => {
                peer.close("c", 1000, "");
                peer.expect_close("c");
                None
            }
            Err(e) => e.status,
        }
    };

    let rs = Service::start(&format!("[auth]\npublic_key = {:?}\n", rsa_pub.to_str().unwrap()), &[]);
    assert_eq!(opens(&mut peer, &rs, &signed(Algorithm::RS256, &rsa, None, "a")), None, "RS256 opens");
    assert_eq!(opens(&mut peer, &rs, &signed(Algorithm::RS256, &other, None, "a")), Some(401), "another key");
    assert_eq!(opens(&mut peer, &rs, &signed(Algorithm::PS256, &rsa, None, "a")), Some(401), "not accepted");
    assert_eq!(opens(&mut peer, &rs, &token("a", json!({}))), Some(401), "HS256 against a public key");
    assert_eq!(rs.metric("ringcast_auth_failures_total{reason=\"signature\"}"), 1.0);
    assert_eq!(rs.metric("ringcast_auth_failures_total{reason=\"algorithm\"}"), 2.0);

    let es = Service::start(&format!("[auth]\npublic_key = {:?}\n", ec_pub.to_str().unwrap()), &[]);
    assert_eq!(opens(&mut peer, &es, &signed(Algorithm::ES256, &ec, None, "a")), None, "ES256 opens");
    assert_eq!(opens(&mut peer, &es, &signed(Algorithm::RS256, &rsa, None, "a")), Some(401));

    // A JWKS file with the RSA key as "k1"; then replaced by one with the EC key as "k2".
    let jwks = dir.join("jwks.json");
    let write_jwks = |keys: Vec<Jwk>| std::fs::write(&jwks, serde_json::to_string(&JwkSet { keys }).unwrap()).unwrap();
    let with_kid = |key: &EncodingKey, alg: Algorithm, kid: &str| {
        let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
        jwk.common.key_id = Some(kid.into());
        jwk
    };
    write_jwks(vec![with_kid(&rsa, Algorithm::RS256, "k1")]);
    let set = Service::start(
        &format!(
            "[auth]\njwks_file = {:?}\njwks_reload = \"100ms\"\nalgorithms = [\"RS256\", \"ES256\"]\n",
            jwks.to_str().unwrap()
        ),
        &[],
    );
    assert_eq!(opens(&mut peer, &set, &signed(Algorithm::RS256, &rsa, Some("k1"), "a")), None, "k1 opens");
    assert_eq!(opens(&mut peer, &set, &signed(Algorithm::ES256, &ec, Some("k2"), "a")), Some(401), "k2 unknown yet");
    assert_eq!(opens(&mut peer, &set, &signed(Algorithm::RS256, &rsa, None, "a")), Some(401), "no kid");
    std::thread::sleep(Duration::from_millis(1100)); // a new modification time, whatever the file system's grain
    write_jwks(vec![with_kid(&ec, Algorithm::ES256, "k2")]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while opens(&mut peer, &set, &signed(Algorithm::ES256, &ec, Some("k2"), "a")).is_some() {
        assert!(Instant::now() < deadline, "the new JWKS file was never read");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(opens(&mut peer, &set, &signed(Algorithm::RS256, &rsa, Some("k1"), "a")), Some(401), "k1 is gone");
    assert!(set.metric("ringcast_auth_failures_total{reason=\"unknown_key\"}") >= 3.0);
    // A JWKS file that stops parsing keeps the keys read before it.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(&jwks, "{ not json").unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(opens(&mut peer, &set, &signed(Algorithm::ES256, &ec, Some("k2"), "a")), None, "k2 still opens");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&set.dir);
}

#[test]
fn chromium_sends_its_token_as_the_first_message() {
    let service = Service::start(
        &format!("{HS256_PUBSUB}timeout = \"1s\"\n[[channels]]\npattern = \"news:*\"\nsubscribe = \"authenticated\"\n"),
        &[],
    );
    let good = token("alice", json!({"publish": ["news:*"]}));
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "alice", "exp": now() + 60}),
        &EncodingKey::from_secret(b"a different secret, just as long"),
    )
    .unwrap();
    let page = format!(
        r#"<!doctype html><script>
const url = 'ws://127.0.0.1:{port}/';
function run(first, step) {{
  return new Promise((resolve) => {{
    const ws = new WebSocket(url);
    const got = [];
    ws.onopen = () => {{ if (first !== null) ws.send(first); }};
    ws.onmessage = (e) => {{ const m = JSON.parse(e.data); got.push(m); if (step) step(ws, m); }};
    ws.onclose = (e) => resolve({{ code: e.code, reason: e.reason, got }});
  }});
}}
const started = Date.now();
const good = run(JSON.stringify({{ op: 'auth', token: '{good}' }}), (ws, m) => {{
  if (m.event === 'authenticated') ws.send(JSON.stringify({{ op: 'subscribe', topic: 'news:uk' }}));
  else if (m.event === 'subscribed') ws.send(JSON.stringify({{ op: 'publish', topic: 'news:uk', data: {{ from: 'chromium' }} }}));
  else if (m.topic === 'news:uk') ws.close(1000, 'done');
}});
const silent = run(null).then((r) => ({{ ...r, after_ms: Date.now() - started }}));
const forged = run(JSON.stringify({{ op: 'auth', token: '{forged}' }}));
const early = run(JSON.stringify({{ op: 'subscribe', topic: 'news:uk' }}));
Promise.all([good, silent, forged, early]).then(([good, silent, forged, early]) => {{
  window.__result = {{ good, silent, forged, early }};
  window.__done = true;
}});
</script>"#,
        port = service.port
    );
    let result = run_page(&page, &PageOpts { timeout: Duration::from_secs(20), ..PageOpts::default() });
    let good = &result["good"];
    assert_eq!(good["code"], 1000, "{result}");
    assert_eq!(good["got"][0]["event"], "authenticated", "{result}");
    assert_eq!(good["got"][0]["user"], "alice");
    // History is on by default: the reply and deliveries carry the stream's position too.
    assert_eq!((&good["got"][1]["event"], &good["got"][1]["topic"]), (&json!("subscribed"), &json!("news:uk")));
    assert_eq!(good["got"][1]["offset"], 0, "{result}");
    assert_eq!((&good["got"][2]["topic"], &good["got"][2]["data"]), (&json!("news:uk"), &json!({"from": "chromium"})));
    assert_eq!(good["got"][2]["offset"], 1, "{result}");
    let silent = &result["silent"];
    assert_eq!(silent["code"], 4001, "no token within the deadline: {result}");
    assert!(silent["after_ms"].as_u64().unwrap() >= 900, "closed at the deadline, not before: {silent}");
    assert_eq!(result["forged"]["code"], 4002, "{result}");
    assert_eq!(result["forged"]["reason"], "bad signature");
    assert_eq!(result["early"]["code"], 4001, "anything but auth first: {result}");
    assert!(result["early"]["got"].as_array().unwrap().is_empty(), "nothing before the token: {result}");
    assert_eq!(service.metric("ringcast_auth_failures_total{reason=\"timeout\"}"), 1.0);
    assert_eq!(service.metric("ringcast_auth_failures_total{reason=\"signature\"}"), 1.0);
    assert_eq!(service.metric("ringcast_auth_sessions"), 0.0, "every session ended with its connection");
}

#[test]
fn a_token_expiring_during_the_connection_closes_it_unless_refreshed() {
    let service =
        Service::start(&format!("{HS256_PUBSUB}[[channels]]\npattern = \"feed:*\"\nsubscribe = \"claims\"\n"), &[]);
    let short = |user: &str, claims: Value| {
        let mut all = json!({"sub": user, "exp": now() + 2});
        all.as_object_mut().unwrap().extend(claims.as_object().unwrap().clone());
        hs256(all)
    };
    let mut python = Peer::python();
    let mut node = Peer::node();
    let started = Instant::now();
    python.connect("lapsing", &service.url(&format!("/?token={}", short("a", json!({})))), &ConnectOpts::new());
    node.connect(
        "renewed",
        &service.url(&format!("/?token={}", short("b", json!({"subscribe": ["feed:*"]})))),
        &ConnectOpts::new(),
    );
    assert_eq!(subscribe(&mut node, "renewed", "feed:one")["event"], "subscribed");
    // A refresh for someone else is refused and changes nothing.
    let other = ask(&mut node, "renewed", json!({"op": "refresh", "token": token("c", json!({}))}));
    assert_eq!((other["event"].as_str(), other["reason"].as_str()), (Some("error"), Some("claims")), "{other}");
    // A later token for the same user, without the feed claim: the subscription ends.
    let later = token("b", json!({}));
    let refreshed = ask(&mut node, "renewed", json!({"op": "refresh", "token": later}));
    assert_eq!(refreshed["event"], "refreshed", "{refreshed}");
    assert!(refreshed["expires_at"].as_u64().unwrap() > now() + 3000);
    assert_eq!(
        next(&mut node, "renewed"),
        json!({"event": "unsubscribed", "topic": "feed:one", "reason": "forbidden"})
    );

    assert_eq!(python.expect_close("lapsing"), (4003, "token expired".to_owned()));
    let after = started.elapsed();
    assert!(after >= Duration::from_millis(900) && after < Duration::from_secs(5), "closed at its exp: {after:?}");
    // The refreshed connection outlives its first token's exp.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()));
    assert_eq!(ask(&mut node, "renewed", json!({"op": "unsubscribe", "topic": "feed:one"}))["event"], "unsubscribed");
    assert_eq!(service.metric("ringcast_auth_expired_total"), 1.0);
    assert_eq!(service.metric("ringcast_auth_refreshed_total"), 1.0);
}

const RULES: &str = r#"
[[channels]]
pattern = "news:**"
subscribe = "anyone"
publish = "claims"
[[channels]]
pattern = "user:{sub}"
subscribe = "authenticated"
publish = "nobody"
[[channels]]
pattern = "vip:*"
subscribe = "token"
"#;

#[test]
fn namespace_rules_a_private_channel_and_nothing_leaks() {
    let service =
        Service::start(&format!("{HS256_PUBSUB}anonymous = true\n{RULES}"), &["--publish-token", "server-side"]);
    let mut peer = Peer::python();
    peer.connect(
        "alice",
        &service.url(&format!("/?token={}", token("alice", json!({"publish": ["news:*"]})))),
        &ConnectOpts::new(),
    );
    peer.connect("bob", &service.url(&format!("/?token={}", token("bob", json!({})))), &ConnectOpts::new());
    peer.connect("anon", &service.url("/"), &ConnectOpts::new());
    let refused = |answer: Value, reason: &str| {
        assert_eq!(answer["event"], "error", "{answer}");
        assert_eq!(answer["reason"], reason, "{answer}");
        assert!(!answer["error"].as_str().unwrap().is_empty());
    };
    // news: anyone reads; claims publish.
    assert_eq!(subscribe(&mut peer, "anon", "news:uk")["event"], "subscribed");
    assert_eq!(subscribe(&mut peer, "bob", "news:uk")["event"], "subscribed");
    refused(ask(&mut peer, "bob", json!({"op": "publish", "topic": "news:uk", "data": "forged"})), "forbidden");
    refused(
        ask(&mut peer, "anon", json!({"op": "publish", "topic": "news:uk", "data": "x"})),
        "authentication_required",
    );
    peer.send_text("alice", &json!({"op": "publish", "topic": "news:uk", "data": "scoop"}).to_string());
    for id in ["anon", "bob"] {
        assert_eq!(without_position(next(&mut peer, id)), json!({"topic": "news:uk", "data": "scoop"}), "{id}");
    }
    // user:{sub}: each user's own, never another's.
    assert_eq!(subscribe(&mut peer, "alice", "user:alice")["event"], "subscribed");
    refused(subscribe(&mut peer, "bob", "user:alice"), "forbidden");
    refused(subscribe(&mut peer, "anon", "user:alice"), "authentication_required");
    refused(ask(&mut peer, "alice", json!({"op": "publish", "topic": "user:alice", "data": "x"})), "forbidden");
    assert_eq!(service.http("POST", "/publish?topic=user:alice&token=server-side", br#""for alice""#).0, 202);
    assert_eq!(without_position(next(&mut peer, "alice")), json!({"topic": "user:alice", "data": "for alice"}));
    // vip:*: a subscription token, for this user and this channel.
    refused(subscribe(&mut peer, "alice", "vip:1"), "subscription_token_required");
    let grant = |user: &str, channel: &str| hs256(json!({"sub": user, "channel": channel, "exp": now() + 60}));
    let with = |token: String| json!({"op": "subscribe", "topic": "vip:1", "token": token});
    refused(ask(&mut peer, "alice", with(grant("bob", "vip:1"))), "invalid_subscription_token");
    refused(ask(&mut peer, "alice", with(grant("alice", "vip:2"))), "invalid_subscription_token");
    refused(ask(&mut peer, "alice", with(token("alice", json!({})))), "invalid_subscription_token");
    refused(ask(&mut peer, "anon", with(grant("alice", "vip:1"))), "invalid_subscription_token");
    assert_eq!(ask(&mut peer, "alice", with(grant("alice", "vip:1")))["event"], "subscribed");
    assert_eq!(service.http("POST", "/publish?topic=vip:1&token=server-side", b"1").0, 202);
    assert_eq!(without_position(next(&mut peer, "alice")), json!({"topic": "vip:1", "data": 1}));
    // Refused subscriptions hold nothing: only alice got the private messages.
    no_more_text(&mut peer, &["alice", "bob", "anon"]);
    assert_eq!(service.metric("ringcast_subscriptions_refused_total{reason=\"forbidden\"}"), 1.0);
    assert_eq!(service.metric("ringcast_subscriptions_refused_total{reason=\"authentication_required\"}"), 1.0);
    assert_eq!(service.metric("ringcast_subscriptions_refused_total{reason=\"subscription_token_required\"}"), 1.0);
    assert_eq!(service.metric("ringcast_subscriptions_refused_total{reason=\"invalid_subscription_token\"}"), 4.0);
    assert_eq!(service.metric("ringcast_publishes_refused_total{reason=\"forbidden\"}"), 2.0);
    // Publishing over HTTP with auth on takes the publish token.
    assert_eq!(service.http("POST", "/publish?topic=news:uk", b"1").0, 401);
    assert_eq!(service.http("POST", "/publish?topic=news:uk&token=nope", b"1").0, 403);
}

#[test]
fn presence_join_leave_and_queries_on_one_node() {
    let service = Service::start(
        &format!(
            "{HS256_PUBSUB}[[channels]]\npattern = \"chat:*\"\nsubscribe = \"authenticated\"\npresence = true\njoin_leave = true\n\
             [[channels]]\npattern = \"quiet:*\"\nsubscribe = \"authenticated\"\n"
        ),
        &["--admin-token", "look"],
    );
    let mut python = Peer::python();
    let mut node = Peer::node();
    python.connect(
        "alice",
        &service.url(&format!("/?token={}", token("alice", json!({"info": {"name": "Alice"}})))),
        &ConnectOpts::new(),
    );
    node.connect("bob", &service.url(&format!("/?token={}", token("bob", json!({})))), &ConnectOpts::new());
    assert_eq!(subscribe(&mut python, "alice", "chat:1")["event"], "subscribed");
    let alice_join = next(&mut python, "alice");
    assert_eq!(
        (alice_join["event"].as_str(), alice_join["user"].as_str()),
        (Some("join"), Some("alice")),
        "{alice_join}"
    );
    let alice_client = alice_join["client"].as_str().unwrap().to_owned();
    assert_eq!(subscribe(&mut node, "bob", "chat:1")["event"], "subscribed");
    let bob_join = next(&mut python, "alice");
    assert_eq!(bob_join["event"], "join");
    assert_eq!((bob_join["user"].as_str(), &bob_join["info"]), (Some("bob"), &Value::Null));
    let bob_client = bob_join["client"].as_str().unwrap().to_owned();
    assert_eq!(next(&mut node, "bob")["client"], bob_client.as_str(), "bob's own join");

    let presence = ask(&mut python, "alice", json!({"op": "presence", "topic": "chat:1"}));
    assert_eq!(presence["event"], "presence");
    assert_eq!(presence["clients"][&alice_client], json!({"user": "alice", "info": {"name": "Alice"}}), "{presence}");
    assert_eq!(presence["clients"][&bob_client], json!({"user": "bob", "info": null}), "{presence}");
    let stats = ask(&mut node, "bob", json!({"op": "presence_stats", "topic": "chat:1"}));
    assert_eq!(stats, json!({"event": "presence_stats", "topic": "chat:1", "clients": 2, "users": 2}));
    let off = ask(&mut node, "bob", json!({"op": "presence", "topic": "quiet:1"}));
    assert_eq!(off["reason"], "presence_disabled", "{off}");
    // Over HTTP, behind the admin token.
    let (status, body) = service.http("GET", "/presence?topic=chat:1&token=look", b"");
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["clients"].as_object().unwrap().len(), 2, "{body}");
    assert_eq!(
        service.http("GET", "/presence_stats?topic=chat:1&token=look", b"").1,
        r#"{"topic":"chat:1","clients":2,"users":2}"#
    );
    assert_eq!(service.http("GET", "/presence?topic=chat:1", b"").0, 401);
    assert_eq!(service.http("GET", "/presence?topic=chat:1&token=nope", b"").0, 403);
    assert_eq!(service.http("GET", "/presence?topic=quiet:1&token=look", b"").0, 404);
    assert_eq!(service.metric("ringcast_presence_clients"), 2.0);

    // Leaving: by unsubscribing, then by disconnecting.
    assert_eq!(ask(&mut node, "bob", json!({"op": "unsubscribe", "topic": "chat:1"}))["event"], "unsubscribed");
    let leave = next(&mut python, "alice");
    assert_eq!((leave["event"].as_str(), leave["client"].as_str()), (Some("leave"), Some(bob_client.as_str())));
    assert_eq!(subscribe(&mut node, "bob", "chat:1")["event"], "subscribed");
    assert_eq!(next(&mut python, "alice")["event"], "join");
    assert_eq!(next(&mut node, "bob")["event"], "join");
    node.close("bob", 1000, "");
    node.expect_close("bob");
    let leave = next(&mut python, "alice");
    assert_eq!((leave["event"].as_str(), leave["user"].as_str()), (Some("leave"), Some("bob")), "{leave}");
    let stats = ask(&mut python, "alice", json!({"op": "presence_stats", "topic": "chat:1"}));
    assert_eq!((stats["clients"].as_u64(), stats["users"].as_u64()), (Some(1), Some(1)));
    assert_eq!(service.metric("ringcast_presence_clients"), 1.0);
}
