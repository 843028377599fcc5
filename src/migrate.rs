//! The embedded migrations (`migrations/`), applied and checked by the gateway itself.
//!
//! sqlx embeds and checksums the files; applying them is done here so that the bookkeeping
//! table is the gateway's own (`cable_schema_migrations`) — on a shared Chatwoot database the
//! gateway adds nothing that is not named `cable_*`.

use sqlx::migrate::Migrator;
use sqlx::{Connection, PgConnection, PgPool};

use crate::db::Database;

pub static MIGRATOR: Migrator = sqlx::migrate!();

const LOCK_KEY: i64 = 0x6361_626c_655f_6777; // "cable_gw": one migrating process at a time

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("migration {version} ({description}) was changed after it was applied")]
    Changed { version: i64, description: String },
}

async fn ensure_table(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS cable_schema_migrations (
           version bigint PRIMARY KEY,
           description text NOT NULL,
           checksum bytea NOT NULL,
           applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn applied(conn: &mut PgConnection) -> Result<Vec<(i64, Vec<u8>)>, sqlx::Error> {
    let exists: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('cable_schema_migrations')::text")
            .fetch_one(&mut *conn)
            .await?;
    if exists.is_none() {
        return Ok(Vec::new());
    }
    sqlx::query_as("SELECT version, checksum FROM cable_schema_migrations ORDER BY version")
        .fetch_all(&mut *conn)
        .await
}

/// The migrations not yet applied, as `<version>_<description>`. Errors if an applied one changed.
pub async fn pending(pool: &PgPool) -> Result<Vec<String>, MigrateError> {
    let mut conn = pool.acquire().await?;
    let done = applied(&mut conn).await?;
    let mut missing = Vec::new();
    for m in MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
    {
        match done.iter().find(|(v, _)| *v == m.version) {
            Some((_, checksum)) if checksum.as_slice() != &*m.checksum => {
                return Err(MigrateError::Changed {
                    version: m.version,
                    description: m.description.to_string(),
                })
            }
            Some(_) => {}
            None => missing.push(format!("{}_{}", m.version, m.description)),
        }
    }
    Ok(missing)
}

/// Applies every pending migration, each in its own transaction. Returns what was applied.
pub async fn apply(db: &Database) -> Result<Vec<String>, MigrateError> {
    let mut conn = db.connect().await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(LOCK_KEY)
        .execute(&mut conn)
        .await?;
    let mut result = apply_locked(&mut conn).await;
    if result.is_ok() {
        if let Err(e) = install_triggers(&mut conn).await {
            result = Err(e.into());
        }
    }
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .execute(&mut conn)
        .await;
    result
}

/// Adds the identity tables' change triggers that are missing (migration 0007), every run: a
/// first run without the privilege to add them installs none, and a later run as the tables'
/// owner adds them. Without them the gateway polls (see [`crate::revalidate`]).
async fn install_triggers(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let installed: bool = sqlx::query_scalar("SELECT cable_install_auth_triggers()")
        .fetch_one(&mut *conn)
        .await?;
    if !installed {
        eprintln!(
            "warning: no permission to add the cable_auth_changed triggers to the identity \
             tables: the gateway will re-check live subscriptions every \
             CABLE_REVALIDATE_INTERVAL instead of on change. Run `cable-gateway migrate` as \
             the tables' owner to add them."
        );
    }
    Ok(())
}

async fn apply_locked(conn: &mut PgConnection) -> Result<Vec<String>, MigrateError> {
    ensure_table(conn).await?;
    let done = applied(conn).await?;
    let mut ran = Vec::new();
    for m in MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
    {
        if let Some((_, checksum)) = done.iter().find(|(v, _)| *v == m.version) {
            if checksum.as_slice() != &*m.checksum {
                return Err(MigrateError::Changed {
                    version: m.version,
                    description: m.description.to_string(),
                });
            }
            continue;
        }
        let mut tx = conn.begin().await?;
        // Our own embedded migration files, not input.
        sqlx::raw_sql(m.sql.clone()).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO cable_schema_migrations (version, description, checksum) VALUES ($1, $2, $3)")
            .bind(m.version)
            .bind(&*m.description)
            .bind(&*m.checksum)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        ran.push(format!("{}_{}", m.version, m.description));
    }
    Ok(ran)
}
