//! Headless Chromium pages, through `peers/browser.js` (playwright-core, Debian's
//! `/usr/bin/chromium`; no browser download ever).
//!
//! The page reports back by setting `window.__result = ...` (any JSON value) and then
//! `window.__done = true`; a test of a page it does not control (a server's own page)
//! gives [`PageOpts::done_when`] and [`PageOpts::result`] expressions instead.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use crate::{Error, paths};

/// How to run a page.
#[derive(Debug, Clone)]
pub struct PageOpts {
    /// Bound on loading the page and waiting for `window.__done` (default 15 s).
    pub timeout: Duration,
    /// Start Chromium with `--ignore-certificate-errors` (for `wss://` with a test CA).
    pub ignore_certificate_errors: bool,
    /// Extra Chromium flags.
    pub chromium_args: Vec<String>,
    /// A JavaScript expression polled until it is true, instead of `window.__done === true`.
    pub done_when: Option<String>,
    /// A JavaScript expression whose (JSON) value is the result, instead of `window.__result`.
    pub result: Option<String>,
    /// Save a full-page PNG here once the page is done (or timed out).
    pub screenshot: Option<PathBuf>,
    /// The window's size in CSS pixels (default 1280 × 720).
    pub viewport: Option<(u32, u32)>,
}

impl Default for PageOpts {
    fn default() -> Self {
        PageOpts {
            timeout: Duration::from_secs(15),
            ignore_certificate_errors: false,
            chromium_args: Vec::new(),
            done_when: None,
            result: None,
            screenshot: None,
            viewport: None,
        }
    }
}

/// Everything `browser.js` reported about a page run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PageReport {
    /// `window.__done` was set in time.
    pub ok: bool,
    /// `window.__result` (`null` if unset).
    #[serde(default)]
    pub result: Value,
    /// Console messages, as `"<type>: <text>"`.
    #[serde(default)]
    pub console: Vec<String>,
    /// Uncaught page errors.
    #[serde(default)]
    pub page_errors: Vec<String>,
    /// The URL loaded (for HTML, `http://127.0.0.1:<port>/`: the page's origin).
    #[serde(default)]
    pub url: Option<String>,
    /// Wall time in milliseconds.
    #[serde(default)]
    pub ms: u64,
    /// Why it failed, when `ok` is false.
    #[serde(default)]
    pub error: Option<String>,
}

/// Runs `page` in a fresh headless Chromium and returns the whole report.
///
/// `page` is a URL if it starts with `http://`, `https://` or `file://`; otherwise it
/// is an HTML document, served from `http://127.0.0.1:<random port>/`.
/// `Err` means the harness could not run the page at all (not installed, crashed, ...);
/// a page that did not finish is `Ok` with `ok == false`.
pub fn try_run_page(page: &str, opts: &PageOpts) -> Result<PageReport, Error> {
    paths::require_chromium()?;
    paths::require_node_package("playwright-core")?;
    let script = paths::peers_src_dir().join("browser.js");
    let mut cmd = Command::new(paths::node_bin());
    cmd.arg(&script)
        .current_dir(paths::peers_src_dir())
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .arg("--timeout-ms")
        .arg(opts.timeout.as_millis().max(1).to_string());
    let mut html_dir = None;
    if ["http://", "https://", "file://"].iter().any(|p| page.starts_with(p)) {
        cmd.arg("--url").arg(page);
    } else {
        let dir = crate::temp_dir("page");
        let file = dir.join("page.html");
        std::fs::write(&file, page).map_err(|e| Error::new(format!("write {}: {e}", file.display())))?;
        cmd.arg("--html-file").arg(&file);
        html_dir = Some(dir);
    }
    if opts.ignore_certificate_errors {
        cmd.arg("--ignore-certificate-errors");
    }
    for a in &opts.chromium_args {
        cmd.arg("--chromium-arg").arg(a);
    }
    if let Some(expression) = &opts.done_when {
        cmd.arg("--done-when").arg(expression);
    }
    if let Some(expression) = &opts.result {
        cmd.arg("--result").arg(expression);
    }
    if let Some(path) = &opts.screenshot {
        cmd.arg("--screenshot").arg(path);
    }
    if let Some((width, height)) = opts.viewport {
        cmd.arg("--viewport").arg(format!("{width}x{height}"));
    }
    let result = run_browser(cmd, opts.timeout + Duration::from_secs(40));
    if let Some(d) = html_dir {
        let _ = std::fs::remove_dir_all(d);
    }
    result
}

fn run_browser(mut cmd: Command, hard_limit: Duration) -> Result<PageReport, Error> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::new(format!("cannot start node peers/browser.js: {e} (run peers/setup.sh)")))?;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + hard_limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    let Some(status) = status else {
        return Err(Error::new(format!("browser.js did not exit within {hard_limit:?}; stderr:\n{stderr}")));
    };
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{'));
    match line.map(serde_json::from_str::<PageReport>) {
        Some(Ok(r)) => Ok(r),
        _ => Err(Error::new(format!("browser.js ({status}) printed no report; stdout:\n{stdout}\nstderr:\n{stderr}"))),
    }
}

/// Runs `page` (URL or HTML, see [`try_run_page`]) and returns its `window.__result`.
///
/// # Panics
/// If Chromium or playwright-core is missing ("run peers/setup.sh"), or the page does
/// not set `window.__done` within `opts.timeout`; the message includes the console
/// output, page errors and the partial result.
#[track_caller]
pub fn run_page(page: &str, opts: &PageOpts) -> Value {
    let r = match try_run_page(page, opts) {
        Ok(r) => r,
        Err(e) => panic!("browser: {e}"),
    };
    if !r.ok {
        panic!(
            "browser: page did not finish: {}\n  url: {:?}\n  partial window.__result: {}\n  console:\n    {}\n  page errors:\n    {}",
            r.error.as_deref().unwrap_or("?"),
            r.url,
            r.result,
            r.console.join("\n    "),
            r.page_errors.join("\n    ")
        );
    }
    r.result
}
