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
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
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
fn serve_names_the_cause_of_an_unreachable_database_at_once_without_its_password() {
    // Port 1 on loopback: nothing listens there.
    let started = std::time::Instant::now();
    let refused = gateway(
        &["serve", "--listen", "127.0.0.1:0"],
        "postgres://app:s3cret@127.0.0.1:1/x",
    );
    let took = started.elapsed();
    assert!(!refused.status.success());
    let lines = stderr_lines(&refused);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("connection refused"), "{lines:?}");
    assert!(lines[0].contains("DATABASE_URL"), "{lines:?}");
    assert!(!lines[0].contains("s3cret"), "{lines:?}");
    // The cause is reported on the first failure, not after the pool's 5 s acquire timeout
    // (the old "pool timed out").
    assert!(!lines[0].contains("timed out"), "{lines:?}");
    assert!(took < std::time::Duration::from_secs(4), "took {took:?}");
}

#[test]
fn serve_and_migrate_name_a_missing_database() {
    let url = with_database(&admin_url(), "cable_t_no_such_database");
    for args in [&["serve", "--listen", "127.0.0.1:0"][..], &["migrate"][..]] {
        let refused = gateway(args, &url);
        assert!(!refused.status.success());
        let lines = stderr_lines(&refused);
        assert_eq!(lines.len(), 1, "{args:?}: {lines:?}");
        assert!(
            lines[0].contains("database does not exist"),
            "{args:?}: {lines:?}"
        );
    }
}

#[test]
fn a_bad_sslmode_is_refused_with_the_valid_ones_named() {
    for args in [&["serve", "--listen", "127.0.0.1:0"][..], &["migrate"][..]] {
        let refused = gateway(args, "postgres://u@127.0.0.1:1/x?sslmode=verify_full");
        assert!(!refused.status.success());
        let lines = stderr_lines(&refused);
        assert_eq!(lines.len(), 1, "{args:?}: {lines:?}");
        assert!(
            lines[0].contains("verify-full") && lines[0].contains("sslmode"),
            "{lines:?}"
        );
    }
}
