//! An echo server: every message comes back to its sender, compressed with
//! permessage-deflate when the client offers it. The conformance suites (Autobahn) run
//! against it.
//!
//! ```text
//! cargo run --release --example echo -- --port 9001 [--workers N] [--deflate-level 0..9]
//! ```

use ringcast::{CompressionLevel, Connection, Handler, Server, ServerDeflateConfig};

struct Echo;

impl Handler for Echo {
    type Data = ();

    fn on_text(&self, conn: &mut Connection<'_, Self::Data>, text: &str) {
        let _ = conn.send(text);
    }

    fn on_binary(&self, conn: &mut Connection<'_, Self::Data>, data: &[u8]) {
        let _ = conn.send(data);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut port = ringcast::DEFAULT_PORT;
    let mut workers = None;
    let mut level = CompressionLevel::DEFAULT;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => port = args.next().ok_or("--port needs a value")?.parse()?,
            "--workers" => workers = Some(args.next().ok_or("--workers needs a value")?.parse()?),
            "--deflate-level" => {
                level = args.next().ok_or("--deflate-level needs a value")?.parse()?;
            }
            other => {
                return Err(format!(
                    "unknown argument {other}; usage: echo [--port N] [--workers N] [--deflate-level 0..9]"
                )
                .into());
            }
        }
    }
    // Autobahn's compression cases echo every size, so compress every size.
    let deflate = ServerDeflateConfig::new().min_message_size(0).level(level);
    let mut builder = Server::builder().port(port).permessage_deflate(deflate);
    if let Some(workers) = workers {
        builder = builder.workers(workers);
    }
    let server = builder.start(Echo)?;
    println!("echo server listening on {} ({:?})", server.local_addr(), server.backends());
    server.wait();
    Ok(())
}
