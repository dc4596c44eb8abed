//! The reference component's relay: every message a client sends is forwarded to all
//! other clients, on every worker.
//!
//! ```text
//! cargo run --release --example chat -- --port 8888
//! ```

use ringcast::{Connection, Handler, Server, Target};

struct Chat;

impl Handler for Chat {
    type Data = ();

    fn on_text(&self, conn: &mut Connection<'_, Self::Data>, text: &str) {
        conn.send_to(Target::AllExcept(conn.id()), text);
    }

    fn on_binary(&self, conn: &mut Connection<'_, Self::Data>, data: &[u8]) {
        conn.send_to(Target::AllExcept(conn.id()), data);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = match std::env::args().skip(1).collect::<Vec<_>>().as_slice() {
        [] => ringcast::DEFAULT_PORT,
        [flag, value] if flag == "--port" => value.parse()?,
        _ => return Err("usage: chat [--port N]".into()),
    };
    let server = Server::builder().port(port).start(Chat)?;
    println!("chat relay listening on {}", server.local_addr());
    server.wait();
    Ok(())
}
