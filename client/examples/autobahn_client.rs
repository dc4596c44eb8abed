//! The Autobahn|Testsuite "testee client": echoes every message of every case.
//!
//! ```text
//! /work/shared/tools/autobahn.sh client -- cargo run --release -p ringcast-client --example autobahn_client
//! ```
//!
//! Reads `$AUTOBAHN_URL` (default `ws://127.0.0.1:9001`) and `$AUTOBAHN_AGENT` (default
//! `ringcast-client`), or the same as two arguments; `--deflate-level 0..9` sets the level of
//! the messages it compresses (default 6). Steps: `getCaseCount`, then
//! `runCase?case=i&agent=A` for every case (echo until closed, each bounded to 60 s),
//! then `updateReports?agent=A`.

use std::time::Duration;

use ringcast_client::{ClientConfig, ClientDeflateConfig, CompressionLevel, Message};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let mut level = CompressionLevel::DEFAULT;
    let mut positional = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--deflate-level" {
            level = args.next().ok_or("--deflate-level needs a value")?.parse()?;
        } else {
            positional.push(arg);
        }
    }
    let mut positional = positional.into_iter();
    let base = positional
        .next()
        .or_else(|| std::env::var("AUTOBAHN_URL").ok())
        .unwrap_or_else(|| "ws://127.0.0.1:9001".to_owned());
    let agent = positional
        .next()
        .or_else(|| std::env::var("AUTOBAHN_AGENT").ok())
        .unwrap_or_else(|| "ringcast-client".to_owned());
    let base = base.trim_end_matches('/');

    let count: usize = {
        let config = ClientConfig::from_url(&format!("{base}/getCaseCount"))?;
        let (_sender, mut receiver) = ringcast_client::connect(&config).await?;
        let mut count = None;
        while let Some(item) = receiver.next().await {
            if let Ok(Message::Text(text)) = item {
                count = Some(text.trim().parse()?);
            }
        }
        count.ok_or("no case count")?
    };
    println!("{count} cases");

    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={agent}");
        let config = ClientConfig::from_url(&url)?
            .max_message_size(64 << 20)
            .permessage_deflate(ClientDeflateConfig::new().level(level));
        if tokio::time::timeout(Duration::from_secs(300), echo(config)).await.is_err() {
            eprintln!("case {case}: timed out");
        }
    }

    let config = ClientConfig::from_url(&format!("{base}/updateReports?agent={agent}"))?
        .handshake_timeout(Duration::from_secs(120));
    let (_sender, mut receiver) = ringcast_client::connect(&config).await?;
    while receiver.next().await.is_some() {}
    Ok(())
}

/// Echoes text and binary messages until the connection ends.
async fn echo(config: ClientConfig) {
    let Ok((sender, mut receiver)) = ringcast_client::connect(&config).await else { return };
    while let Some(item) = receiver.next().await {
        match item {
            Ok(message @ (Message::Text(_) | Message::Binary(_))) => {
                if sender.send(message).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(_) => {}
        }
    }
}
