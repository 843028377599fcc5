//! Why a connection to PostgreSQL failed, in a few words, and what fixes it: the one-line
//! errors of `serve` and `migrate`.

/// Why a connection failed, in a few words, and what fixes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cause {
    pub what: &'static str,
    pub fix: &'static str,
}

fn tls_failed() -> Cause {
    Cause {
        what: "TLS failed",
        fix: "Check sslmode and sslrootcert: verify-ca needs the server's certificate to chain to sslrootcert, verify-full also needs it to name the host.",
    }
}

/// What went wrong in one line: for an error the server returned, its own message (sqlx's
/// rendering adds the source line of PostgreSQL's C code, "at line 948", which tells a user
/// nothing); otherwise the error as sqlx says it.
pub fn said(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_string(),
        other => other.to_string(),
    }
}

/// Names the cause of a failed connection: refused, host not found, TLS, authentication…
pub fn cause(e: &sqlx::Error) -> Cause {
    use std::io::ErrorKind;
    let cause = |what, fix| Cause { what, fix };
    // A failed handshake reaches us as an I/O error around rustls' own (sqlx 0.9).
    let tls = |io: &std::io::Error| {
        io.get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
    };
    match e {
        sqlx::Error::Tls(_) => tls_failed(),
        sqlx::Error::Io(io) if tls(io) => tls_failed(),
        sqlx::Error::Io(io) if io.kind() == ErrorKind::ConnectionRefused => cause(
            "connection refused",
            "Start PostgreSQL or fix the host and port in DATABASE_URL.",
        ),
        sqlx::Error::Io(io) if io.kind() == ErrorKind::TimedOut => cause(
            "connection timed out",
            "Check that the host is reachable and the port open.",
        ),
        sqlx::Error::Io(io) if io.to_string().contains("lookup") => {
            cause("host name not found", "Fix the host name in DATABASE_URL.")
        }
        sqlx::Error::Io(_) => cause("network error", "Check the host and port in DATABASE_URL."),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("28P01") | Some("28000") => cause(
                "authentication failed",
                "Fix the user or password in DATABASE_URL (or the server's pg_hba.conf).",
            ),
            Some("3D000") => cause(
                "database does not exist",
                "Create it, or fix the database name in DATABASE_URL.",
            ),
            Some("57P03") => cause(
                "the server is starting up or shutting down",
                "Wait for PostgreSQL to accept connections.",
            ),
            _ => cause("refused by the server", "See the server's message."),
        },
        sqlx::Error::Configuration(_) => cause("invalid settings", "Fix DATABASE_URL."),
        sqlx::Error::PoolTimedOut => cause(
            "no connection within the pool's timeout",
            "Check that PostgreSQL accepts connections (max_connections).",
        ),
        _ => cause(
            "failed",
            "Check that PostgreSQL is running and DATABASE_URL is right.",
        ),
    }
}
