//! A thin agent binary for the footprint benchmark (`bench/agent.sh`).
//!
//! It exists so that the benchmark can build the agent in release without
//! the server: a release build of the whole `custos` binary takes 25+
//! minutes on the project's machine (DataFusion), while this example links
//! only `custos-agent` and its dependencies. It runs exactly the code path
//! of `custos agent run` (without `--once`): load the configuration with
//! [`AgentConfig::from_path`], start a tokio runtime, flip a shutdown watch
//! channel on SIGTERM or Ctrl-C, and call [`custos_agent::run::run`] with
//! [`RunOptions::default`]; on shutdown it prints the run's summary as JSON.
//!
//! Differences from `custos agent run`, neither of which touches the
//! agent's work: no progress bar, and no tracing subscriber (custos-agent
//! does not depend on `tracing-subscriber`), so the agent's log lines are
//! discarded; errors are still printed, as the run's result.
//!
//! ```text
//! cargo build --release -p custos-agent --example agent
//! target/release/examples/agent --state-dir DIR --config FILE [--runtime multi-thread|current-thread]
//! ```
//!
//! `--runtime multi-thread` (the default) is the runtime `custos agent run`
//! uses (one worker per core); `current-thread` runs every task on the main
//! thread (blocking file and ledger I/O still go to tokio's blocking pool).
//! `--worker-threads N` (multi-thread only) and `--max-blocking-threads N`
//! bound the runtime's threads; by default they are tokio's defaults, as in
//! `custos agent run`. Each thread that allocates gets its own glibc malloc
//! arena (up to 8 per core), which is what these options are for measuring.
#![forbid(unsafe_code)]

use custos_agent::config::AgentConfig;
use custos_agent::run::RunOptions;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: agent --state-dir DIR --config FILE [--runtime multi-thread|current-thread] \
[--worker-threads N] [--max-blocking-threads N]";

/// Which tokio runtime to run the agent on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Runtime {
    MultiThread,
    CurrentThread,
}

struct Args {
    state_dir: PathBuf,
    config: PathBuf,
    runtime: Runtime,
    /// Workers of the multi-thread runtime (tokio's default: one per core).
    worker_threads: Option<usize>,
    /// Most threads of tokio's blocking pool (tokio's default: 512).
    max_blocking_threads: Option<usize>,
}

fn positive(name: &str, v: &std::ffi::OsStr) -> Result<usize, String> {
    match v.to_string_lossy().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{name} must be a positive integer, got {v:?}")),
    }
}

fn parse_args() -> Result<Args, String> {
    let mut state_dir = None;
    let mut config = None;
    let mut runtime = Runtime::MultiThread;
    let mut worker_threads = None;
    let mut max_blocking_threads = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        let a = a.to_string_lossy().into_owned();
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        };
        let mut value = |name: &str| -> Result<std::ffi::OsString, String> {
            match &inline {
                Some(v) => Ok(v.into()),
                None => args.next().ok_or_else(|| format!("{name} needs a value\n{USAGE}")),
            }
        };
        match flag.as_str() {
            "--state-dir" => state_dir = Some(PathBuf::from(value("--state-dir")?)),
            "--config" => config = Some(PathBuf::from(value("--config")?)),
            "--runtime" => {
                runtime = match value("--runtime")?.to_string_lossy().as_ref() {
                    "multi-thread" => Runtime::MultiThread,
                    "current-thread" => Runtime::CurrentThread,
                    other => {
                        return Err(format!(
                            "--runtime must be multi-thread or current-thread, got {other:?}"
                        ))
                    }
                }
            }
            "--worker-threads" => {
                worker_threads = Some(positive("--worker-threads", &value("--worker-threads")?)?)
            }
            "--max-blocking-threads" => {
                max_blocking_threads =
                    Some(positive("--max-blocking-threads", &value("--max-blocking-threads")?)?)
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(Args {
        state_dir: state_dir.ok_or_else(|| format!("--state-dir is required\n{USAGE}"))?,
        config: config.ok_or_else(|| format!("--config is required\n{USAGE}"))?,
        runtime,
        worker_threads,
        max_blocking_threads,
    })
}

/// Resolves on SIGTERM or Ctrl-C (as `custos agent run` does).
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

async fn run(args: &Args) -> Result<(), String> {
    let cfg = AgentConfig::from_path(&args.config).map_err(|e| e.to_string())?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = tx.send(true);
    });
    let summary = custos_agent::run::run(&args.state_dir, &cfg, RunOptions::default(), rx)
        .await
        .map_err(|e| {
            format!(
                "agent run with state dir {}: {}",
                args.state_dir.display(),
                custos_agent::error_chain(&e)
            )
        })?;
    let json = serde_json::to_string(&summary).map_err(|e| format!("printing the summary: {e}"))?;
    println!("{json}");
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut builder = match args.runtime {
        Runtime::MultiThread => tokio::runtime::Builder::new_multi_thread(),
        Runtime::CurrentThread => tokio::runtime::Builder::new_current_thread(),
    };
    if let Some(n) = args.worker_threads {
        if args.runtime == Runtime::MultiThread {
            builder.worker_threads(n);
        }
    }
    if let Some(n) = args.max_blocking_threads {
        builder.max_blocking_threads(n);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
