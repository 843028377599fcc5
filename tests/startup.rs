//! Start-up: `migrate` applies the migrations and exits 0; `serve` refuses to start, with
//! one line naming the fix, when migrations are pending or the database is unreachable.

mod common;

use std::process::{Command, Output};

use common::*;

fn gateway(args: &[&str], database_url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cable-gateway"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs")
}

fn stderr_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn serve_refuses_pending_migrations_and_migrate_fixes_it() {
    let name = format!("cable_t_startup_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&admin_url()).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    let url = with_database(&admin_url(), &name);

    let refused = gateway(&["serve", "--listen", "127.0.0.1:0"], &url);
    assert!(!refused.status.success());
    let lines = stderr_lines(&refused);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("pending") && lines[0].contains("cable-gateway migrate"),
        "{lines:?}"
    );

    let migrated = gateway(&["migrate"], &url);
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    assert!(String::from_utf8_lossy(&migrated.stdout).contains("applied"));
    let again = gateway(&["migrate"], &url);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to apply"));
}

#[test]
fn serve_refuses_an_unreachable_database_without_showing_its_password() {
    // Port 1 on loopback: nothing listens there.
    let refused = gateway(
        &["serve", "--listen", "127.0.0.1:0"],
        "postgres://app:s3cret@127.0.0.1:1/x",
    );
    assert!(!refused.status.success());
    let lines = stderr_lines(&refused);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("DATABASE_URL"), "{lines:?}");
    assert!(!lines[0].contains("s3cret"), "{lines:?}");
}
