//! `cable-gateway serve | migrate`: wiring, telemetry, run until SIGTERM / Ctrl-C.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use cable_gateway::config::{Command, LogFormat};
use cable_gateway::db::{cause, said, Database};
use cable_gateway::migrate::{self, MigrateError};
use cable_gateway::server;
use tracing_subscriber::EnvFilter;

/// The allocator. Under glibc's malloc a connect storm left about 2 KB per connection of
/// freed memory resident (hyper's handshake buffers, token batches, presence answers), between
/// the few hundred bytes each connection keeps: the bench measured 6.3–7.0 KB per idle
/// connection against ~4.0 KB live. jemalloc keeps small objects of one size together and
/// gives freed pages back; with these settings the same storm leaves 4.8 KB (BENCHMARKS.md,
/// "The allocator, revalidation in chunks, writes to the descriptor").
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read when it starts (`_RJEM_MALLOC_CONF` in the environment overrides
/// them): a background thread returns freed pages after about a second (the default, 10 s,
/// keeps a storm's garbage resident ten times as long; without the thread, pages are returned
/// by whichever thread is allocating, the delivering ones included).
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: Option<&'static std::ffi::c_char> =
    // SAFETY: a pointer to the first byte of a NUL-terminated static string, as jemalloc reads it.
    Some(unsafe { &*c"background_thread:true,dirty_decay_ms:1000".as_ptr() });

fn init_tracing(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn terminated() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cable_gateway::config::parse();
    match cli.command {
        Command::Migrate(args) => {
            init_tracing(LogFormat::Text);
            let db = match Database::from_url(&args.database_url) {
                Ok(db) => db,
                Err(e) => {
                    eprintln!("error: {e}. Fix DATABASE_URL.");
                    return ExitCode::FAILURE;
                }
            };
            match migrate::apply(&db).await {
                Ok(applied) if applied.is_empty() => println!("migrations: nothing to apply"),
                Ok(applied) => println!("migrations: applied {}", applied.join(", ")),
                Err(MigrateError::Database(e)) => {
                    let cause = cause(&e);
                    eprintln!(
                        "error: migrating {} failed: {} ({}). {}",
                        db.redacted(),
                        cause.what,
                        said(&e),
                        cause.fix
                    );
                    return ExitCode::FAILURE;
                }
                Err(e) => {
                    eprintln!("error: migrating {} failed: {e}.", db.redacted());
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Command::Serve(config) => {
            init_tracing(config.log_format);
            let running = match server::start(*config).await {
                Ok(running) => running,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // The readiness line scripts and tests wait for.
            println!("cable-gateway listening on {}", running.addr);
            let _ = std::io::stdout().flush();
            terminated().await;
            running.shutdown().await;
            ExitCode::SUCCESS
        }
    }
}
