//! `cable-bench`: drives a running cable-gateway (or the Rails ActionCable peer) with real
//! WebSocket clients and prints what it measured as JSON. `scripts/bench` runs it.
//!
//! - `cable-bench run`: one server, N connections, every scenario (see [`scenario`]).
//! - `cable-bench seed`: create the bench's tokens (also done by `run`).
//! - `cable-bench report`: the Markdown table and PNG chart from a results directory.
//! - `cable-bench client`: a client process; `run` spawns these itself.

mod client;
mod cluster;
mod db;
mod fleet;
mod floor;
mod frame;
mod layout;
mod listen_scale;
mod probe;
mod report;
mod resume;
mod scenario;
mod wire;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cable-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every scenario against one server.
    Run(Box<scenario::RunArgs>),
    /// Create the bench's users, memberships, contacts and contact sessions.
    Seed {
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// How many clients to create tokens for.
        #[arg(long, short = 'n')]
        connections: usize,
    },
    /// Write results.md and chart.png from the <target>-<n>.json files in a directory.
    Report {
        #[arg(long, default_value = "bench/results")]
        dir: std::path::PathBuf,
    },
    /// The machine's floor: a minimal server writing one ready-made frame to N sockets per
    /// event, nothing else; gateway fan-out figures are quoted against it.
    Floor(Box<floor::FloorArgs>),
    /// Reliable streams under churn: extended-protocol clients drop and restore their
    /// sessions while events flow; checks exactly-once delivery and reports the cost.
    Resume(Box<resume::ResumeArgs>),
    /// Scale-out: several gateway processes on one database share the connections; every
    /// event must reach every connection once; reports each process's CPU and the database's.
    Cluster(Box<cluster::ClusterArgs>),
    /// What many LISTENed channels cost PostgreSQL (LISTEN time, notification delivery).
    ListenScale {
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Numbers of channels to listen on, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "100,5000,20000")]
        sizes: Vec<usize>,
        /// Notifications in the burst (one per recipient of an event, as Rails sends them).
        #[arg(long, default_value_t = 1000)]
        burst: usize,
        /// Write the JSON results here.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// A client process (spawned by `run`; speaks JSON lines on stdin/stdout).
    #[command(hide = true)]
    Client {
        #[arg(long)]
        url: String,
        #[arg(long)]
        first: usize,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 4000)]
        per_address: usize,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Run(args) => match runtime(1).block_on(scenario::run(*args)) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cable-bench: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Floor(args) => match runtime(2).block_on(floor::run(*args)) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cable-bench: floor: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Cluster(args) => {
            match runtime(2).block_on(cluster::run(*args)) {
                Ok(result) if result["exact"] == true => ExitCode::SUCCESS,
                Ok(_) => {
                    eprintln!("cable-bench: cluster: some connection did not get every event exactly once");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("cable-bench: cluster: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Resume(args) => match runtime(2).block_on(resume::run(*args)) {
            Ok(result) if result["all_exact"] == true => ExitCode::SUCCESS,
            Ok(_) => {
                eprintln!("cable-bench: resume: some client did not get every event exactly once");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("cable-bench: resume: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Seed {
            database_url,
            connections,
        } => {
            let seeded = runtime(1).block_on(async {
                let db = db::connect(&database_url).await?;
                db::seed(&db, connections).await
            });
            match seeded {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cable-bench: seeding failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::ListenScale {
            database_url,
            sizes,
            burst,
            out,
        } => match runtime(2).block_on(listen_scale::run(&database_url, &sizes, burst)) {
            Ok(results) => {
                if let Some(out) = out {
                    let text = serde_json::to_string_pretty(&results).expect("json") + "\n";
                    if let Err(e) = std::fs::write(&out, text) {
                        eprintln!("cable-bench: writing {}: {e}", out.display());
                        return ExitCode::FAILURE;
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cable-bench: listen-scale: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Report { dir } => match report::write(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cable-bench: report: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Client {
            url,
            first,
            count,
            per_address,
            threads,
        } => {
            let args = client::ClientArgs {
                url,
                first,
                count,
                per_address,
            };
            match runtime(threads).block_on(client::serve(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cable-bench client: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
