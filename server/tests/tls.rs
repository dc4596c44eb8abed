//! wss:// end to end: the server's TLS layer against Python `websockets`, Node `ws`,
//! headless Chromium and `openssl s_client`, with certificates made at test time.

use std::path::Path;
use std::process::Command;

use ringcast::{Connection, Handler, IoBackend, Server, ServerHandle, StartError, Target, TlsFiles};
use testkit::browser::{PageOpts, run_page};
use testkit::tls::TestCerts;
use testkit::{ConnectOpts, Drain, Peer};

struct Echo;

impl Handler for Echo {
    type Data = ();

    fn on_handshake_response_sent(&self, conn: &mut Connection<'_, Self::Data>) {
        let _ = conn.send("welcome");
    }

    fn on_text(&self, conn: &mut Connection<'_, Self::Data>, text: &str) {
        if let Some(rest) = text.strip_prefix("broadcast:") {
            conn.send_to(Target::All, rest);
        } else {
            let _ = conn.send(text);
        }
    }

    fn on_binary(&self, conn: &mut Connection<'_, Self::Data>, data: &[u8]) {
        let _ = conn.send(data);
    }
}

fn start(files: TlsFiles, backend: IoBackend) -> ServerHandle<Echo> {
    Server::builder()
        .bind([127, 0, 0, 1].into())
        .port(0)
        .workers(2)
        .io_backend(backend)
        .tls(files)
        .start(Echo)
        .expect("start wss server")
}

fn files(certs: &TestCerts) -> TlsFiles {
    TlsFiles { certificate: certs.cert_file.clone(), private_key: certs.key_file.clone(), root_certificate: None }
}

const BACKENDS: [IoBackend; 2] = [IoBackend::IoUring, IoBackend::Epoll];

#[test]
fn python_and_node_clients_talk_wss_and_verify_the_certificate() {
    let certs = TestCerts::localhost();
    for backend in BACKENDS {
        let server = start(files(&certs), backend);
        let url = format!("wss://localhost:{}/", server.local_addr().port());
        for mut peer in [Peer::python(), Peer::node()] {
            let opts = ConnectOpts::new().ca_file(&certs.ca_file);
            peer.connect("c", &url, &opts);
            assert_eq!(peer.expect_text("c"), "welcome");
            peer.send_text("c", "over tls");
            assert_eq!(peer.expect_text("c"), "over tls");
            let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
            peer.send_binary("c", &big);
            assert_eq!(peer.expect_binary("c"), big, "{backend:?}: a message spanning many TLS records");
            // Without the CA the client must refuse the server's certificate.
            let untrusted = peer.try_connect("u", &url, &ConnectOpts::new());
            assert!(untrusted.is_err(), "{backend:?}: an unknown CA must be refused");
            peer.close("c", 1000, "done");
            assert_eq!(peer.expect_close("c").0, 1000);
        }
        server.stop();
    }
}

#[test]
fn broadcast_reaches_every_tls_client() {
    let certs = TestCerts::localhost();
    for backend in BACKENDS {
        let server = start(files(&certs), backend);
        let url = format!("wss://localhost:{}/", server.local_addr().port());
        let mut peer = Peer::python();
        peer.crowd("w", 30, &url, &ConnectOpts::new().ca_file(&certs.ca_file));
        peer.drain(&Drain::prefix("w").wait_count(1));
        for i in 0..20 {
            server.broadcast(&format!("b{i}"));
        }
        let drained = peer.drain(&Drain::prefix("w").wait_count(20));
        assert!(drained.satisfied, "{backend:?}: {:?}", drained.per_conn);
        assert_eq!(drained.total, 600);
        server.stop();
    }
}

#[test]
fn chromium_connects_over_wss() {
    let certs = TestCerts::localhost();
    let server = start(files(&certs), IoBackend::Auto);
    let page = format!(
        r#"<script>
        const ws = new WebSocket("wss://localhost:{port}/");
        const got = [];
        ws.onmessage = (e) => {{
            got.push(e.data);
            if (e.data === "welcome") ws.send("broadcast:hello from chromium");
            if (e.data === "hello from chromium") {{ window.__result = got; window.__done = true; ws.close(1000); }}
        }};
        ws.onerror = () => {{ window.__result = "error"; window.__done = true; }};
        </script>"#,
        port = server.local_addr().port()
    );
    let opts = PageOpts { ignore_certificate_errors: true, ..PageOpts::default() };
    let result = run_page(&page, &opts);
    assert_eq!(result.to_string(), r#"["welcome","hello from chromium"]"#);
    server.stop();
}

/// Writes a certificate and key made by openssl with `key_args` (e.g. an RSA PKCS#1 key),
/// signed by nobody (self-signed), returns (cert, key) paths.
fn openssl_cert(dir: &Path, name: &str, key_cmd: &[&str]) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.pem"));
    // `-out` goes right after the subcommand: genrsa takes the key size last.
    let status =
        Command::new("openssl").arg(key_cmd[0]).arg("-out").arg(&key).args(&key_cmd[1..]).status().expect("openssl");
    assert!(status.success());
    let status = Command::new("openssl")
        .args(["req", "-new", "-x509", "-days", "1", "-subj", "/CN=localhost", "-addext"])
        .arg("subjectAltName=DNS:localhost,IP:127.0.0.1")
        .arg("-key")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .status()
        .expect("openssl req");
    assert!(status.success());
    (cert, key)
}

#[test]
fn rsa_pkcs1_and_ec_sec1_keys_are_accepted() {
    let dir = testkit::temp_dir("ringcast-keys");
    let cases: [(&str, &[&str], &str); 2] = [
        ("rsa", &["genrsa", "-traditional", "2048"], "-----BEGIN RSA PRIVATE KEY-----"),
        ("ec", &["ecparam", "-name", "prime256v1", "-genkey", "-noout"], "-----BEGIN EC PRIVATE KEY-----"),
    ];
    for (name, key_cmd, header) in cases {
        let (cert, key) = openssl_cert(&dir, name, key_cmd);
        let pem = std::fs::read_to_string(&key).unwrap();
        assert!(pem.starts_with(header), "{name}: {pem}");
        let server =
            start(TlsFiles { certificate: cert.clone(), private_key: key, root_certificate: None }, IoBackend::Auto);
        let mut peer = Peer::node();
        let url = format!("wss://localhost:{}/", server.local_addr().port());
        peer.connect("c", &url, &ConnectOpts::new().ca_file(&cert));
        assert_eq!(peer.expect_text("c"), "welcome", "{name} key");
        server.stop();
    }
}

/// `openssl s_client` negotiating one protocol version; returns its output.
fn s_client(port: u16, version_flag: &str) -> String {
    let output = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect", &format!("127.0.0.1:{port}"), version_flag, "-brief"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn tls_1_2_and_1_3_are_both_offered() {
    let certs = TestCerts::localhost();
    let server = start(files(&certs), IoBackend::Auto);
    let port = server.local_addr().port();
    assert!(s_client(port, "-tls1_3").contains("Protocol version: TLSv1.3"));
    assert!(s_client(port, "-tls1_2").contains("Protocol version: TLSv1.2"));
    server.stop();
}

#[test]
fn the_root_file_completes_the_served_chain() {
    let certs = TestCerts::localhost();
    let server = start(
        TlsFiles {
            certificate: certs.cert_file.clone(),
            private_key: certs.key_file.clone(),
            root_certificate: Some(certs.ca_file.clone()),
        },
        IoBackend::Auto,
    );
    let output = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect", &format!("127.0.0.1:{}", server.local_addr().port())])
        .args(["-showcerts", "-CAfile"])
        .arg(&certs.ca_file)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(text.matches("-----BEGIN CERTIFICATE-----").count(), 2, "leaf + root served:\n{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    server.stop();
}

#[test]
fn bad_tls_files_fail_at_start_naming_the_file() {
    let certs = TestCerts::localhost();
    let start_with = |files: TlsFiles| match Server::builder().port(0).tls(files).start(Echo) {
        Err(e) => e,
        Ok(server) => {
            server.stop();
            panic!("started with bad TLS files");
        }
    };
    let missing = start_with(TlsFiles {
        certificate: "/nonexistent/cert.pem".into(),
        private_key: certs.key_file.clone(),
        root_certificate: None,
    });
    assert!(matches!(missing, StartError::Tls(_)));
    assert!(missing.to_string().contains("/nonexistent/cert.pem"), "{missing}");
    let not_a_key = start_with(TlsFiles {
        certificate: certs.cert_file.clone(),
        private_key: certs.cert_file.clone(),
        root_certificate: None,
    });
    assert!(not_a_key.to_string().contains(certs.cert_file.to_str().unwrap()), "{not_a_key}");
    let other = TestCerts::localhost();
    let mismatched = start_with(TlsFiles {
        certificate: certs.cert_file.clone(),
        private_key: other.key_file.clone(),
        root_certificate: None,
    });
    assert!(mismatched.to_string().contains("do not form a valid pair"), "{mismatched}");
    let bad_root = start_with(TlsFiles { root_certificate: Some(certs.key_file.clone()), ..files(&certs) });
    assert!(bad_root.to_string().contains(certs.key_file.to_str().unwrap()), "{bad_root}");
}

#[test]
fn a_full_tls_server_closes_extra_connections_without_plain_http() {
    use std::io::Read;
    let certs = TestCerts::localhost();
    let server = Server::builder()
        .bind([127, 0, 0, 1].into())
        .port(0)
        .workers(2)
        .max_connections(1)
        .tls(files(&certs))
        .start(Echo)
        .expect("start wss server");
    let url = format!("wss://localhost:{}/", server.local_addr().port());
    let mut peer = Peer::node();
    peer.connect("first", &url, &ConnectOpts::new().ca_file(&certs.ca_file));
    // The next connection is closed at once: a plain "503" would be garbage to TLS.
    let mut extra = std::net::TcpStream::connect(server.local_addr()).unwrap();
    extra.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut bytes = Vec::new();
    let _ = extra.read_to_end(&mut bytes);
    assert!(bytes.is_empty(), "got {:?}", String::from_utf8_lossy(&bytes));
    assert!(peer.try_connect("second", &url, &ConnectOpts::new().ca_file(&certs.ca_file)).is_err());
    server.stop();
}
