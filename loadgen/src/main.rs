//! `ringcast-loadgen`: opens thousands of WebSocket clients against a fan-out server and
//! measures delivery latency, throughput, loss and the server's cost. See `--help`.
#![forbid(unsafe_code)]

mod abuse;
mod churn;
mod cli;
mod clock;
mod conn;
mod group;
mod plot;
mod procfs;
mod progress;
mod publisher;
mod raw;
mod report;
mod run;
mod stats;
mod wire;
mod worker;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (result, common) = match &cli.command {
        Command::Worker => return worker::worker_main(),
        Command::Report(args) => {
            return match report::merge_main(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ringcast-loadgen: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Churn(args) => return churn::main(args),
        Command::Abuse(args) => return abuse::main(args),
        Command::Broadcast(args) => (run::broadcast(args), &args.common),
        Command::Echo(args) => (run::echo(args), &args.common),
        Command::Idle(args) => (run::idle(args), &args.common),
        Command::Reconnect(args) => (run::reconnect(args), &args.broadcast.common),
    };
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            eprintln!("ringcast-loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    print!("{}", report::human(&report));
    match report::write_outputs(&report, common) {
        Ok(files) if !files.is_empty() => eprintln!("ringcast-loadgen: wrote {}", files.join(", ")),
        Ok(_) => {}
        Err(e) => {
            eprintln!("ringcast-loadgen: {e}");
            return ExitCode::from(2);
        }
    }
    if report.passed { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
