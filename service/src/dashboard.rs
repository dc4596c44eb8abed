//! The operator's dashboard at `GET /`: live charts (connections, messages in and out,
//! bytes, publish-to-write latency, slow consumers, queued bytes), the workers, the busiest
//! topics and the cluster backbone.
//!
//! The page is one HTML document compiled into the binary, with uPlot (MIT, vendored in
//! `dashboard/`) inlined: no build step, nothing fetched from elsewhere. A thread samples
//! the server's [`Stats`](ringcast::Stats) every second and pushes a JSON [`Snapshot`] to
//! every open page over the WebSocket at [`FEED_PATH`]; a page that connects first gets the
//! last five minutes. With an admin token configured, the page and its feed need it
//! (`?token=` or `Authorization: Bearer`).

mod snapshot;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ringcast::{Allow, Broadcaster, HttpResponse, PreparedMessage, Request, Selector, Split, Target};

use snapshot::{Context, Snapshot};

use crate::service::{Peer, Role, Service, TokenCheck, check_token};

/// The WebSocket path of the page's live feed.
pub const FEED_PATH: &str = "/_status";

/// Snapshots kept for pages that connect later: five minutes, one a second.
const HISTORY: usize = 300;

const PAGE_TEMPLATE: &str = include_str!("dashboard/page.html");
const UPLOT_JS: &str = include_str!("dashboard/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("dashboard/uPlot.min.css");

/// The dashboard's state inside the service.
pub struct Dashboard {
    admin_token: Option<String>,
    page: String,
    history: Mutex<VecDeque<String>>,
    started: Instant,
}

impl Dashboard {
    /// A dashboard; `admin_token` protects the page and its feed.
    pub fn new(admin_token: Option<String>) -> Dashboard {
        let uplot = format!("<style>{UPLOT_CSS}</style>\n<script>{UPLOT_JS}</script>");
        Dashboard {
            admin_token,
            page: PAGE_TEMPLATE.replacen("<!-- uPlot -->", &uplot, 1),
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
            started: Instant::now(),
        }
    }

    /// `GET /`: the page, or 401/403 without the right admin token.
    pub fn page(&self, request: &Request) -> HttpResponse {
        match check_token(request, self.admin_token.as_deref()) {
            TokenCheck::Ok => HttpResponse::html(200, self.page.clone()).header("Cache-Control", "no-store"),
            TokenCheck::Missing => HttpResponse::text(401, "admin token required: open /?token=...\n")
                .header("WWW-Authenticate", "Bearer realm=\"ringcast\""),
            TokenCheck::Wrong => HttpResponse::text(403, "wrong admin token\n"),
        }
    }

    /// The upgrade to the feed, with the same token rule as the page.
    pub fn allow_feed(&self, request: &Request) -> Allow {
        match check_token(request, self.admin_token.as_deref()) {
            TokenCheck::Ok => Allow::Yes,
            TokenCheck::Missing => Allow::Status(401),
            TokenCheck::Wrong => Allow::Status(403),
        }
    }

    /// The first message of a new feed connection: `{"history": [snapshot, …]}`.
    pub fn history_message(&self) -> String {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::with_capacity(16 + history.iter().map(|s| s.len() + 1).sum::<usize>());
        out.push_str("{\"history\":[");
        for (i, snapshot) in history.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(snapshot);
        }
        out.push_str("]}");
        out
    }

    fn remember(&self, snapshot: &str) {
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(snapshot.to_owned());
    }
}

/// Starts the thread that samples the server every second and feeds the open pages.
pub fn start_feed(broadcaster: Broadcaster<Peer>, service: Arc<Service>) -> std::io::Result<()> {
    std::thread::Builder::new().name("ringcast-dashboard".into()).spawn(move || feed(broadcaster, service))?;
    Ok(())
}

fn feed(broadcaster: Broadcaster<Peer>, service: Arc<Service>) {
    let Some(dashboard) = &service.dashboard else { return };
    let pages: Selector<Peer> = Arc::new(|c| c.data().role == Role::StatusFeed);
    let mut before = broadcaster.stats();
    let mut before_time = Instant::now();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = broadcaster.stats();
        let elapsed = before_time.elapsed();
        before_time = Instant::now();
        let context = Context {
            time_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            uptime_s: dashboard.started.elapsed().as_secs(),
            mode: service.mode.name(),
            published: service.counters.published.load(std::sync::atomic::Ordering::Relaxed),
            topics: &service.topics,
            cluster: service.cluster.as_ref().map(|c| &*c.metrics),
        };
        let json = Snapshot::between(&before, &now, elapsed.as_secs_f64(), &context).to_json();
        dashboard.remember(&json);
        broadcaster.send(Target::Select(pages.clone()), &PreparedMessage::text(&json, Split::Whole));
        before = now;
    }
}
