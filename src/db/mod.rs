//! Connecting to PostgreSQL: one reading of `DATABASE_URL` for the pool (sqlx) and the LISTEN
//! connection (tokio-postgres), TLS included, with libpq's `sslmode` meanings.
//!
//! | `sslmode` | encrypted | certificate chain checked | host name checked |
//! |---|---|---|---|
//! | `disable` | no | – | – |
//! | `allow`, `prefer` (default) | if the server offers it | no | no |
//! | `require` | yes, or no connection | no | no |
//! | `verify-ca` | yes | yes, against `sslrootcert` | no |
//! | `verify-full` | yes | yes, against `sslrootcert` | yes |
//!
//! `sslmode` and `sslrootcert` come from the URL's query, else from `PGSSLMODE` and
//! `PGSSLROOTCERT`, as libpq reads them. Without `sslrootcert`, `verify-*` checks against the
//! public web roots (webpki-roots). libpq's `allow` tries plain first; here it behaves like
//! `prefer` (both accept either). TLS is rustls with the ring provider: no OpenSSL.
//!
//! Neither driver gets this right alone: tokio-postgres parses neither `verify-*` nor
//! `sslrootcert`, so the LISTEN connection's TLS is configured here from the parsed mode; and
//! a rustls name-mismatch error changed shape in rustls 0.23.24, so `verify-ca` needs a
//! verifier that ignores both shapes (sqlx 0.9 has one; ours is `tls::ChainOnly`).
//!
//! # Files
//! - `tls.rs`: the rustls configurations for each `sslmode`.
//! - `cause.rs`: why a connection failed, in a few words, and what fixes it.

mod cause;
mod tls;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

pub use cause::{cause, said, Cause};
use tls::{client_config, root_store};

/// The `application_name` of the gateway's connections, unless `DATABASE_URL` names one.
pub const APPLICATION_NAME: &str = "cable-gateway";

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<SslMode, ConfigError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(ConfigError::SslMode(other.to_string())),
        })
    }
}

/// Why `DATABASE_URL` (with its TLS settings) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("DATABASE_URL is not a valid postgres:// URL: {0}")]
    Url(String),
    #[error(
        "unknown sslmode {0:?}: use disable, allow, prefer, require, verify-ca or verify-full"
    )]
    SslMode(String),
    #[error("cannot read the TLS root certificate {path}: {reason}")]
    RootCert { path: String, reason: String },
}

/// The LISTEN connection's driver half (TLS or not, it is the rustls stream type).
pub type ListenConnection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <MakeRustlsConnect as MakeTlsConnect<tokio_postgres::Socket>>::Stream,
>;

/// How to reach the database, for both drivers.
#[derive(Clone)]
pub struct Database {
    url: String,
    mode: SslMode,
    pool: PgConnectOptions,
    listen: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

/// The URL's query parameters besides the TLS ones, and those.
fn split_tls_params(url: &str) -> Result<(String, Option<String>, Option<String>), ConfigError> {
    let mut parsed = url::Url::parse(url).map_err(|e| ConfigError::Url(e.to_string()))?;
    let mut mode = None;
    let mut root = None;
    let rest: Vec<(String, String)> = parsed
        .query_pairs()
        .filter_map(|(k, v)| match &*k {
            "sslmode" => {
                mode = Some(v.into_owned());
                None
            }
            "sslrootcert" => {
                root = Some(v.into_owned());
                None
            }
            _ => Some((k.into_owned(), v.into_owned())),
        })
        .collect();
    if rest.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(rest);
    }
    Ok((parsed.into(), mode, root))
}

impl Database {
    /// Reads `url` (and `PGSSLMODE`, `PGSSLROOTCERT` where the URL does not say).
    pub fn from_url(url: &str) -> Result<Database, ConfigError> {
        Database::from_url_and(url, |name| std::env::var(name).ok())
    }

    /// [`Database::from_url`] with the environment given by `env`.
    pub fn from_url_and(
        url: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Database, ConfigError> {
        let env = |name: &str| env(name).filter(|v| !v.is_empty());
        let (plain, mode, root) = split_tls_params(url)?;
        let mode: SslMode = match mode.or_else(|| env("PGSSLMODE")) {
            Some(mode) => mode.parse()?,
            None => SslMode::Prefer,
        };
        let root = root.or_else(|| env("PGSSLROOTCERT")).map(PathBuf::from);
        let roots = root_store(root.as_deref())?;

        let mut pool = PgConnectOptions::from_str(&plain)
            .map_err(|e| ConfigError::Url(e.to_string()))?
            .ssl_mode(match mode {
                SslMode::Disable => PgSslMode::Disable,
                SslMode::Prefer => PgSslMode::Prefer,
                SslMode::Require => PgSslMode::Require,
                SslMode::VerifyCa => PgSslMode::VerifyCa,
                SslMode::VerifyFull => PgSslMode::VerifyFull,
            });
        if let Some(root) = &root {
            pool = pool.ssl_root_cert(root);
        }
        // Statement logging would log every outbox read at info.
        pool = pool.log_statements(tracing::log::LevelFilter::Debug);

        let mut listen = tokio_postgres::Config::from_str(&plain)
            .map_err(|e| ConfigError::Url(e.to_string()))?;
        // Operators find the gateway's connections in pg_stat_activity by this name.
        if listen.get_application_name().is_none() {
            listen.application_name(APPLICATION_NAME);
            pool = pool.application_name(APPLICATION_NAME);
        }
        listen.ssl_mode(match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let tls = MakeRustlsConnect::new(client_config(mode, roots));
        Ok(Database {
            url: url.to_string(),
            mode,
            pool,
            listen,
            tls,
        })
    }

    /// The URL with its password masked, for messages.
    pub fn redacted(&self) -> String {
        redact(&self.url)
    }

    pub fn ssl_mode(&self) -> SslMode {
        self.mode
    }

    /// One connection (migrations).
    pub async fn connect(&self) -> Result<PgConnection, sqlx::Error> {
        PgConnection::connect_with(&self.pool).await
    }

    /// One connection attempt, so that a failure reports its real cause (refused, DNS, TLS,
    /// authentication) at once instead of "pool timed out" after the acquire timeout, then
    /// the pool.
    pub async fn connect_pool(&self, size: u32, acquire: Duration) -> Result<PgPool, sqlx::Error> {
        self.connect().await?.close().await?;
        PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(acquire)
            .connect_with(self.pool.clone())
            .await
    }

    /// A connection for LISTEN: the client, and the connection to drive.
    pub async fn connect_listen(
        &self,
    ) -> Result<(tokio_postgres::Client, ListenConnection), tokio_postgres::Error> {
        self.listen.connect(self.tls.clone()).await
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // Fails only for URLs that cannot have a password, and this one has one.
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        // What does not parse is not shown if it may hold a password.
        Err(_) if url.contains('@') => "(a URL that does not parse; not shown)".to_string(),
        Err(_) => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_the_url() {
        let (plain, mode, root) = split_tls_params(
            "postgres://u:p@db.example.com:5433/app?sslmode=verify-full&application_name=gw&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(
            plain,
            "postgres://u:p@db.example.com:5433/app?application_name=gw"
        );
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        let (plain, mode, _) = split_tls_params("postgres://localhost/x?sslmode=require").unwrap();
        assert_eq!(plain, "postgres://localhost/x");
        assert_eq!(mode.as_deref(), Some("require"));
    }

    #[test]
    fn every_libpq_mode_parses_and_others_are_refused() {
        for (text, mode) in [
            ("disable", SslMode::Disable),
            ("allow", SslMode::Prefer),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            assert_eq!(text.parse::<SslMode>().unwrap(), mode);
        }
        let err = "verify_full".parse::<SslMode>().unwrap_err().to_string();
        assert!(err.contains("verify-full"), "{err}");
    }

    #[test]
    fn the_url_wins_over_the_environment() {
        let env = |name: &str| match name {
            "PGSSLMODE" => Some("disable".to_string()),
            _ => None,
        };
        let from_env = Database::from_url_and("postgres://h/db", env).unwrap();
        assert_eq!(from_env.ssl_mode(), SslMode::Disable);
        let from_url = Database::from_url_and("postgres://h/db?sslmode=require", env).unwrap();
        assert_eq!(from_url.ssl_mode(), SslMode::Require);
        let default = Database::from_url_and("postgres://h/db", |_| None).unwrap();
        assert_eq!(default.ssl_mode(), SslMode::Prefer);
        let missing =
            Database::from_url_and("postgres://h/db?sslrootcert=/nonexistent.pem", |_| None);
        assert!(matches!(missing, Err(ConfigError::RootCert { .. })));
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(redact("postgres:///x"), "postgres:///x");
        assert_eq!(
            redact("postgres://app:p%40ss:w@db/x?sslmode=require"),
            "postgres://app:***@db/x?sslmode=require"
        );
        assert_eq!(
            redact("rediss://:s3cret@cache:6380/0"),
            "rediss://:***@cache:6380/0"
        );
        let unparsable = redact("postgres://app:s3cret@db:port/x");
        assert!(!unparsable.contains("s3cret"), "{unparsable}");
    }
}
