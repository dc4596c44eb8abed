//! End-to-end test harness for ringcast: drives real, independent WebSocket peers.
//!
//! * [`Peer`]: a running `peers/ws_peer.py` (Python `websockets`) or `peers/ws_peer.js`
//!   (Node `ws`) process, client and/or server, scripted over JSON lines
//!   (protocol: `peers/README.md`).
//! * [`browser::run_page`]: loads a page in headless Chromium (playwright-core) and
//!   returns its `window.__result`.
//! * [`tls::TestCerts`]: a throw-away CA and server certificate for `wss://` tests.
//! * [`net`]: free loopback ports, waiting for a port, kill-on-drop children.
//!
//! Plain std (threads and processes), usable from any test. Nothing is skipped
//! silently: a missing peer fails with "run peers/setup.sh". Every wait is bounded.
//!
//! ```no_run
//! use testkit::{ConnectOpts, ListenOpts, Peer};
//! let mut server = Peer::python();
//! let l = server.listen(&ListenOpts::echo());
//! let mut client = Peer::node();
//! client.connect("a", &format!("ws://127.0.0.1:{}/", l.port), &ConnectOpts::new());
//! client.send_text("a", "hi");
//! assert_eq!(client.expect_text("a"), "hi");
//! client.close("a", 4000, "bye");
//! let conn = server.expect_accepted(&l.server).id;
//! assert_eq!(server.expect_close(&conn), (4000, "bye".to_string()));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod browser;
pub mod event;
pub mod net;
pub mod paths;
mod peer;
pub mod tls;

use std::time::Duration;

pub use event::{
    Accepted, ConnStatus, CrowdError, CrowdOpen, Drained, Event, Headers, Listening, Message, Opened, Payload,
    PeerError, Rejected,
};
pub use net::{ChildGuard, free_port, port_accepts, try_wait_for_port, wait_for_port};
pub use peer::{ConnectOpts, Drain, ListenOpts, Peer, PeerInfo, PeerKind, ServerMode};

/// A harness failure that is not a panic (missing installation, failed start, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    /// An error with this message.
    pub fn new(msg: impl Into<String>) -> Self {
        Error(msg.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// Multiplies a default timeout by `$RINGCAST_TIMEOUT_SCALE` (a positive number, default 1),
/// for slow machines. Explicit timeouts given to the API are used as they are.
pub fn scaled(d: Duration) -> Duration {
    let f = std::env::var("RINGCAST_TIMEOUT_SCALE")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|f| f.is_finite() && *f > 0.0)
        .unwrap_or(1.0);
    d.mul_f64(f)
}

/// A fresh, empty directory under the system temp dir (not removed automatically).
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "ringcast-{tag}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}
