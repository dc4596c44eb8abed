//! Worker processes: past the per-process open-file limit, the coordinator runs groups of
//! clients in child processes (`ringcast-loadgen __worker`, the same binary). The parent
//! writes the [`GroupConfig`] and then each [`Phase`] as JSON lines on the child's stdin;
//! the child writes [`WorkerMessage`] lines on its stdout: progress five times a second,
//! then its [`GroupResult`], whose histograms travel in HdrHistogram's V2 encoding.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::group::{GroupConfig, LocalGroup, Phase, ProgressSnapshot, ShardProgress, read_progress};
use crate::stats::GroupResult;

/// A line a worker writes on its stdout.
#[derive(Debug, Serialize, Deserialize)]
pub enum WorkerMessage {
    /// Live counters.
    Progress(ProgressSnapshot),
    /// The final result; the worker exits after it.
    Result(Box<GroupResult>),
    /// The group could not start.
    Failed(String),
}

/// A group of clients, in this process or in a worker process.
pub enum Group {
    /// Threads of this process.
    Local(LocalGroup),
    /// A child process.
    Process(ProcessGroup),
}

impl Group {
    /// Starts `config` here (`in_process`) or in a new worker process.
    pub fn start(config: GroupConfig, in_process: bool) -> Result<Group, String> {
        if in_process {
            LocalGroup::start(config).map(Group::Local)
        } else {
            ProcessGroup::spawn(config).map(Group::Process)
        }
    }

    /// Live counters.
    pub fn progress(&self) -> ProgressSnapshot {
        match self {
            Group::Local(g) => g.progress(),
            Group::Process(g) => *g.progress.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// A reader of the live counters that stays usable while [`Group::wait`] runs.
    pub fn progress_reader(&self) -> ProgressReader {
        match self {
            Group::Local(g) => ProgressReader::Local(g.progress_handle()),
            Group::Process(g) => ProgressReader::Process(g.progress.clone()),
        }
    }

    /// Moves the group to `phase`.
    pub fn set_phase(&self, phase: Phase) {
        match self {
            Group::Local(g) => g.set_phase(phase),
            Group::Process(g) => g.send(&phase),
        }
    }

    /// The worker's PID (for its CPU time), if it is a process.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Group::Local(_) => None,
            Group::Process(g) => Some(g.child.id()),
        }
    }

    /// Waits for the result.
    pub fn wait(self) -> GroupResult {
        match self {
            Group::Local(g) => g.wait(),
            Group::Process(mut g) => {
                let result = g.results.recv().unwrap_or_else(|_| Err("worker process ended without a result".into()));
                drop(g.stdin);
                let _ = g.child.wait();
                result.unwrap_or_else(|e| {
                    let mut r = GroupResult::default();
                    r.error(format!("worker: {e}"));
                    r
                })
            }
        }
    }
}

/// See [`Group::progress_reader`].
#[derive(Clone)]
pub enum ProgressReader {
    /// Shards of this process.
    Local(Vec<Arc<ShardProgress>>),
    /// The last report of a worker process.
    Process(Arc<Mutex<ProgressSnapshot>>),
}

impl ProgressReader {
    /// The live counters.
    pub fn read(&self) -> ProgressSnapshot {
        match self {
            ProgressReader::Local(shards) => read_progress(shards),
            ProgressReader::Process(p) => *p.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

/// A group in a worker process.
pub struct ProcessGroup {
    child: Child,
    stdin: Mutex<ChildStdin>,
    progress: Arc<Mutex<ProgressSnapshot>>,
    results: mpsc::Receiver<Result<GroupResult, String>>,
}

impl ProcessGroup {
    fn spawn(config: GroupConfig) -> Result<ProcessGroup, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find my own executable: {e}"))?;
        let mut child = Command::new(exe)
            .arg("__worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start a worker process: {e}"))?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let line = serde_json::to_string(&config).expect("config serialises");
        writeln!(stdin, "{line}").map_err(|e| format!("worker stdin: {e}"))?;
        let progress = Arc::new(Mutex::new(ProgressSnapshot::default()));
        let (tx, results) = mpsc::channel();
        let shared = progress.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<WorkerMessage>(&line) {
                    Ok(WorkerMessage::Progress(p)) => *shared.lock().unwrap_or_else(|e| e.into_inner()) = p,
                    Ok(WorkerMessage::Result(r)) => {
                        let _ = tx.send(Ok(*r));
                        return;
                    }
                    Ok(WorkerMessage::Failed(e)) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(format!("unreadable worker output: {e}")));
                        return;
                    }
                }
            }
            let _ = tx.send(Err("worker process ended without a result".into()));
        });
        Ok(ProcessGroup { child, stdin: Mutex::new(stdin), progress, results })
    }

    fn send(&self, phase: &Phase) {
        let line = serde_json::to_string(phase).expect("phase serialises");
        let mut stdin = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(stdin, "{line}").and_then(|()| stdin.flush());
    }
}

/// `ringcast-loadgen __worker`: runs one group for the parent process.
pub fn worker_main() -> std::process::ExitCode {
    let out = |message: &WorkerMessage| {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{}", serde_json::to_string(message).expect("message serialises"));
        let _ = stdout.flush();
    };
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let mut first = String::new();
    let config: GroupConfig = match std::io::stdin().read_line(&mut first) {
        Ok(n) if n > 0 => match serde_json::from_str(&first) {
            Ok(config) => config,
            Err(e) => {
                out(&WorkerMessage::Failed(format!("bad configuration: {e}")));
                return std::process::ExitCode::FAILURE;
            }
        },
        _ => return std::process::ExitCode::FAILURE,
    };
    let group = match LocalGroup::start(config) {
        Ok(group) => group,
        Err(e) => {
            out(&WorkerMessage::Failed(e));
            return std::process::ExitCode::FAILURE;
        }
    };
    let phase = group.phase_sender();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line.ok().and_then(|l| serde_json::from_str::<Phase>(&l).ok()) {
                Some(p) => {
                    phase.send_replace(p);
                }
                None => break,
            }
        }
        // The parent is gone (or talks nonsense): stop.
        phase.send_replace(Phase::Stop);
    });
    while !group.is_finished() {
        out(&WorkerMessage::Progress(group.progress()));
        std::thread::sleep(Duration::from_millis(200));
    }
    out(&WorkerMessage::Progress(group.progress()));
    let mut result = group.wait();
    result.process_cpu_s = crate::procfs::sample(std::process::id()).map_or(0.0, |s| s.cpu_s);
    out(&WorkerMessage::Result(Box::new(result)));
    std::process::ExitCode::SUCCESS
}
