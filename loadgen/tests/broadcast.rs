//! The pipeline end to end: the real `ringcast serve` binary in broadcast mode and a small
//! `ringcast-loadgen broadcast` run against it (500 clients, 2 seconds). It asserts zero
//! loss, exit status 0 and that every output was written; it asserts no speed.
//!
//! `CARGO_BIN_EXE_ringcast` exists only for the service package's own tests, so the server
//! binary is found next to this test's directory (`target/<profile>/ringcast`, built by
//! the same `cargo test`/`nextest` run of the workspace), and built with
//! `cargo build -p ringcast-service --bin ringcast` when it is missing (`RINGCAST_BIN` overrides).
//! Running the real binary rather than an in-process server keeps the test honest about
//! what `make bench` measures.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the server even if the test fails.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ringcast_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("RINGCAST_BIN") {
        return path.into();
    }
    let test_exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<this test> → target/<profile>
    let profile_dir = test_exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps").to_owned();
    let binary = profile_dir.join("ringcast");
    if !binary.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut build = Command::new(cargo);
        build.current_dir(workspace).args(["build", "-p", "ringcast-service", "--bin", "ringcast"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("cargo build -p ringcast");
        assert!(status.success(), "cargo build -p ringcast failed");
    }
    assert!(binary.exists(), "{} not found", binary.display());
    binary
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

fn wait_for_port(port: u16) {
    let start = Instant::now();
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "the server did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn small_broadcast_against_ringcast_loses_nothing() {
    let port = free_port();
    let server = Command::new(ringcast_binary())
        .args(["serve", "--port", &port.to_string(), "--bind", "127.0.0.1", "--mode", "broadcast"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start ringcast serve");
    let server = Server(server);
    wait_for_port(port);

    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ringcast-loadgen"))
        .args(["broadcast", &format!("ws://127.0.0.1:{port}/"), "--clients", "500", "--payload", "256"])
        .args(["--rate", "100", "--warmup", "500ms", "--duration", "2s", "--drain", "10s"])
        .args(["--server-pid", &server.0.id().to_string(), "--server-name", "ringcast", "--progress", "none"])
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("run ringcast-loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "loadgen failed ({}):\n{stdout}\n{stderr}", output.status);

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("result.json")).unwrap()).unwrap();
    assert_eq!(json["connect"]["connected"], 500, "{stdout}");
    assert_eq!(json["lost"], 0, "{stdout}");
    assert_eq!(json["duplicates"], 0, "{stdout}");
    assert_eq!(json["passed"], true, "{stdout}");
    let sent = json["sent"].as_u64().unwrap();
    assert!(sent >= 250, "the publisher sent {sent} messages");
    assert_eq!(json["delivered"].as_u64(), Some(sent * 500));
    assert!(json["server_metrics"]["cpu_s"].as_f64().is_some());

    let csv = std::fs::read_to_string(out.path().join("result.csv")).unwrap();
    assert_eq!(csv.lines().count(), 2, "header and one row");
    assert!(csv.starts_with("server,setting,scenario,clients,payload"));
    let md = std::fs::read_to_string(out.path().join("result.md")).unwrap();
    assert!(md.contains("| result | PASS |"), "{md}");
    let svg = std::fs::read_to_string(out.path().join("latency.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("stroke=\"#1F77B4\""), "no latency curve in the SVG");
    assert!(svg.contains("percentile"));
    assert!(stdout.contains("PASS"));

    // The multi-run report reads what the run wrote.
    let report = Command::new(env!("CARGO_BIN_EXE_ringcast-loadgen"))
        .arg("report")
        .arg("--out")
        .arg(out.path().join("report"))
        .arg(out.path().join("result.json"))
        .output()
        .unwrap();
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    for file in ["report.json", "report.csv", "report.md", "latency.svg", "throughput.svg", "cpu.svg"] {
        assert!(out.path().join("report").join(file).exists(), "{file} missing");
    }

    // Every figure of a bench run, from variations of this run: a second frame-size
    // setting, a baseline, and an offered-load sweep of both servers.
    let variant = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut run = json.clone();
        edit(&mut run);
        let path = out.path().join(format!("{name}.json"));
        std::fs::write(&path, run.to_string()).unwrap();
        path
    };
    let split = variant("split", &|r| r["setting"] = "split 4 KiB".into());
    let baseline = variant("baseline", &|r| r["server"] = "other".into());
    let mut report = Command::new(env!("CARGO_BIN_EXE_ringcast-loadgen"));
    report.arg("report").arg("--out").arg(out.path().join("all"));
    report.arg(out.path().join("result.json")).arg(&split).arg(&baseline);
    for server in ["ringcast", "other"] {
        for (i, offered) in [50_000.0, 100_000.0, 200_000.0f64].iter().enumerate() {
            let run = variant(&format!("{server}-{i}"), &|r| {
                r["server"] = server.into();
                r["offered_per_s"] = (*offered).into();
                r["rate"] = (offered / 500.0).into();
                r["deliveries_per_s"] = offered.min(120_000.0).into();
            });
            report.arg("--offered-load").arg(run);
        }
    }
    let report = report.output().unwrap();
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    let read = |file: &str| std::fs::read_to_string(out.path().join("all").join(file)).unwrap();
    let md = read("report.md");
    for figure in ["offered.svg", "latency.svg", "throughput.svg", "cpu.svg", "frame-size.svg"] {
        assert!(md.contains(&format!("]({figure})")), "report.md links {figure}");
        assert!(read(figure).starts_with("<svg"), "{figure}");
    }
    assert!(md.contains("## Throughput against offered load"), "{md}");
    assert!(md.contains("| ringcast | 50,000 · "), "a row per server, a cell per offered rate: {md}");
    let offered = read("offered.svg");
    for label in ["ringcast", "other", "delivered = offered", "offered deliveries/s"] {
        assert!(offered.contains(label), "offered.svg shows {label}");
    }
    let frame_size = read("frame-size.svg");
    assert!(frame_size.contains("ringcast split 4 KiB") && !frame_size.contains(">\nother\n<"), "only ringcast");
}

/// `--deflate --payload-kind json`: every client negotiates permessage-deflate with the
/// service (on by default), every message arrives (its stamp read from the compressed
/// bytes), and the bytes on the wire per delivery are a fraction of the payload.
#[test]
fn compressed_broadcast_against_ringcast_loses_nothing() {
    let port = free_port();
    let server = Command::new(ringcast_binary())
        .args(["serve", "--port", &port.to_string(), "--bind", "127.0.0.1", "--mode", "broadcast"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start ringcast serve");
    let server = Server(server);
    wait_for_port(port);
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ringcast-loadgen"))
        .args(["broadcast", &format!("ws://127.0.0.1:{port}/"), "--clients", "200", "--payload", "4KiB"])
        .args(["--deflate", "--payload-kind", "json", "--rate", "50", "--warmup", "500ms", "--duration", "1s"])
        .args(["--drain", "10s", "--server-pid", &server.0.id().to_string(), "--progress", "none"])
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("run ringcast-loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "loadgen failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("result.json")).unwrap()).unwrap();
    assert_eq!(json["deflate_connections"], 200, "{stdout}");
    assert_eq!(json["lost"], 0, "{stdout}");
    assert_eq!(json["passed"], true, "{stdout}");
    let per_delivery = json["wire_bytes_per_delivery"].as_f64().unwrap();
    assert!(per_delivery > 0.0 && per_delivery < 4096.0 / 2.0, "{per_delivery} bytes on the wire per 4 KiB delivery");
}

/// The `reconnect` scenario against `ringcast serve` (history on by default): a fifth of
/// 200 clients drops its connection every 700 ms for 200 ms and resumes from its last
/// offset while the publisher sends 100 messages/s. Every client must hold every message
/// once, and every resumption must be complete. (Cross-node resumption, with Redis, is
/// `benches/history.py`'s and the service's tests' business.)
#[test]
fn reconnecting_clients_recover_every_message_from_ringcast() {
    let port = free_port();
    let server = Command::new(ringcast_binary())
        .args(["serve", "--port", &port.to_string(), "--bind", "127.0.0.1", "--workers", "2"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start ringcast serve");
    let server = Server(server);
    wait_for_port(port);
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ringcast-loadgen"))
        .args(["reconnect", &format!("ws://127.0.0.1:{port}/"), "--clients", "200", "--payload", "64"])
        .args(["--rate", "100", "--warmup", "300ms", "--duration", "2500ms", "--drain", "10s"])
        .args(["--fraction", "0.2", "--every", "700ms", "--away", "200ms", "--progress", "none"])
        .args(["--server-pid", &server.0.id().to_string()])
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("run ringcast-loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "loadgen failed ({}):\n{stdout}\n{stderr}", output.status);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("result.json")).unwrap()).unwrap();
    assert_eq!((json["lost"].as_u64(), json["duplicates"].as_u64()), (Some(0), Some(0)), "{stdout}");
    let sent = json["sent"].as_u64().unwrap();
    assert_eq!(json["delivered"].as_u64(), Some(sent * 200), "{stdout}");
    let reconnect = &json["reconnect"];
    assert_eq!(reconnect["clients_reconnecting"], 40, "{stdout}");
    let reconnects = reconnect["reconnects"].as_u64().unwrap();
    assert!(reconnects >= 40, "{stdout}");
    assert_eq!(reconnect["recoveries_complete"].as_u64(), Some(reconnects), "{stdout}");
    assert_eq!((reconnect["offset_gaps"].as_u64(), reconnect["epoch_changes"].as_u64()), (Some(0), Some(0)));
    assert!(reconnect["recovered_messages"].as_u64().unwrap() > 0, "messages were replayed: {stdout}");
    assert_eq!(reconnect["recovery_ms"]["count"].as_u64(), Some(reconnects), "a latency per recovery");
    assert_eq!(reconnect["per_client"].as_array().unwrap().len(), 40);
    assert!(stdout.contains("recovery latency"), "{stdout}");
}

/// Pub/sub with token auth and presence: every client connects with a token, subscribes
/// with `--subscribe` (text answers are skipped), and a topic publisher (the publish path
/// with `?topic=`) reaches all of them; the token comes from `ringcast token`.
#[test]
fn a_pubsub_topic_with_tokens_and_presence_loses_nothing() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ringcast.toml");
    std::fs::write(
        &config,
        "mode = \"pubsub\"\npublish_token = \"pub\"\n[auth]\nhmac_secret = \"loadgen-test-secret-0123456789\"\n\
         [[channels]]\npattern = \"bench:*\"\nsubscribe = \"authenticated\"\npresence = true\njoin_leave = true\n",
    )
    .unwrap();
    let minted = Command::new(ringcast_binary())
        .args(["token", "--secret", "loadgen-test-secret-0123456789", "--sub", "loadgen", "--ttl", "10m"])
        .output()
        .unwrap();
    assert!(minted.status.success(), "{}", String::from_utf8_lossy(&minted.stderr));
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
    let server = Command::new(ringcast_binary())
        .args(["serve", "--port", &port.to_string(), "--bind", "127.0.0.1", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start ringcast serve");
    let server = Server(server);
    wait_for_port(port);
    let output = Command::new(env!("CARGO_BIN_EXE_ringcast-loadgen"))
        .args(["broadcast", &format!("ws://127.0.0.1:{port}/?token={token}"), "--clients", "200"])
        .args(["--subscribe", r#"{"op":"subscribe","topic":"bench:1"}"#])
        .args(["--publish-path", "/publish?topic=bench:1&token=pub", "--payload", "64", "--rate", "50"])
        .args(["--warmup", "300ms", "--duration", "1s", "--drain", "10s", "--progress", "none"])
        .args(["--server-pid", &server.0.id().to_string()])
        .arg("--json")
        .arg(dir.path().join("result.json"))
        .output()
        .expect("run ringcast-loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "loadgen failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("result.json")).unwrap()).unwrap();
    assert_eq!(json["connect"]["connected"], 200, "{stdout}");
    assert_eq!((json["lost"].as_u64(), json["duplicates"].as_u64()), (Some(0), Some(0)), "{stdout}");
    let sent = json["sent"].as_u64().unwrap();
    assert!(sent >= 50, "the publisher sent {sent} messages");
    assert_eq!(json["delivered"].as_u64(), Some(sent * 200), "join events (text) were not taken for messages");
}
