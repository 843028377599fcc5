//! TLS to PostgreSQL, against a real server with `ssl=on` and certificates made here: a test
//! CA, and a server certificate for the name `localhost` only (not for `127.0.0.1`).
//!
//! The test turns TLS on in the private cluster's configuration, so `scripts/test` runs it
//! alone after the others (stage 2b), on its own cluster only.

mod common;

use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cable_gateway::db::{cause, Database};
use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use sqlx::Row;

/// A CA and, when `server` names hosts, a certificate for them signed by it.
struct Pki {
    ca_pem: String,
    server_pem: String,
    server_key_pem: String,
}

fn pki(server: &[&str]) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "cable-gateway test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(server.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let server_cert = params.signed_by(&server_key, &issuer).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        server_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
    }
}

/// Writes `contents` as the data directory's owner could (the server reads it), mode 0600.
fn write_for_server(data: &Path, name: &str, contents: &str) {
    let path = data.join(name);
    std::fs::write(&path, contents).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let owner = std::fs::metadata(data).unwrap();
    chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
}

/// Sets `ssl` (with the files named) and waits until a new session sees it in force.
async fn set_ssl(admin: &sqlx::PgPool, on: bool) {
    let statements: &[&str] = if on {
        &[
            "ALTER SYSTEM SET ssl_cert_file = 'cable-test-server.crt'",
            "ALTER SYSTEM SET ssl_key_file = 'cable-test-server.key'",
            "ALTER SYSTEM SET ssl = on",
        ]
    } else {
        &[
            "ALTER SYSTEM RESET ssl",
            "ALTER SYSTEM RESET ssl_cert_file",
            "ALTER SYSTEM RESET ssl_key_file",
        ]
    };
    for statement in statements {
        sqlx::query(*statement).execute(admin).await.unwrap();
    }
    sqlx::query("SELECT pg_reload_conf()")
        .execute(admin)
        .await
        .unwrap();
    let want = if on { "on" } else { "off" };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // A reload is applied by each backend when it next starts a command; a fresh
        // connection sees the state the postmaster has.
        let mut conn = admin.acquire().await.unwrap();
        let ssl: String = sqlx::query_scalar("SHOW ssl")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        conn.detach();
        if ssl == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ssl did not become {want} after a reload (see the cluster's server.log)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `postgres://postgres@<host>:<port>/<db>?<query>`.
fn url(host: &str, db: &str, query: &str) -> String {
    let port = std::env::var("PG_CLUSTER_PORT").expect("run through scripts/test");
    format!("postgres://postgres@{host}:{port}/{db}?{query}")
}

/// Whether the session behind `pool` is encrypted, as the server sees it.
async fn encrypted(pool: &sqlx::PgPool) -> bool {
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Connects as the gateway would with `url`: whether the session is encrypted, or why it
/// could not connect. The connection is closed again.
async fn probe(url: &str) -> Result<bool, sqlx::Error> {
    let pool = Database::from_url(url)
        .expect("a valid URL")
        .connect_pool(1, Duration::from_secs(5))
        .await?;
    let encrypted = encrypted(&pool).await;
    pool.close().await;
    Ok(encrypted)
}

#[tokio::test]
#[ignore = "turns TLS on in the cluster: scripts/test runs it alone on its private cluster"]
async fn postgres_over_tls_follows_libpq_sslmode() {
    assert!(
        std::env::var_os("CABLE_PG_RESTARTABLE").is_some(),
        "run through scripts/test, which owns the cluster it reconfigures"
    );
    let data = PathBuf::from(std::env::var("PG_CLUSTER_DIR").unwrap()).join("data");
    let good = pki(&["localhost"]);
    let stranger = pki(&[]);
    write_for_server(&data, "cable-test-server.crt", &good.server_pem);
    write_for_server(&data, "cable-test-server.key", &good.server_key_pem);
    let dir = std::env::temp_dir().join(format!("cable-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let root = dir.join("root.pem");
    let wrong_root = dir.join("wrong-root.pem");
    std::fs::write(&root, &good.ca_pem).unwrap();
    std::fs::write(&wrong_root, &stranger.ca_pem).unwrap();
    let (root, wrong_root) = (root.display().to_string(), wrong_root.display().to_string());

    let admin = sqlx::PgPool::connect(&admin_url()).await.unwrap();
    set_ssl(&admin, true).await;
    let db = TestDb::new().await;
    let name = db.name.as_str();

    // disable: plain; prefer (the default) and require: encrypted, certificate not checked.
    let plain = probe(&url("127.0.0.1", name, "sslmode=disable")).await;
    assert!(!plain.unwrap(), "sslmode=disable");
    for query in ["", "sslmode=prefer", "sslmode=require"] {
        let encrypted = probe(&url("127.0.0.1", name, query)).await;
        assert!(encrypted.unwrap(), "{query:?} encrypts");
    }

    // verify-full: the chain and the host name.
    let full = |host, root: &str| {
        url(
            host,
            name,
            &format!("sslmode=verify-full&sslrootcert={root}"),
        )
    };
    assert!(probe(&full("localhost", &root)).await.unwrap());
    let wrong_host = probe(&full("127.0.0.1", &root)).await.unwrap_err();
    assert_eq!(
        cause(&wrong_host).what,
        "TLS failed",
        "a certificate for localhost is refused for 127.0.0.1: {wrong_host}"
    );
    let untrusted = probe(&full("localhost", &wrong_root)).await.unwrap_err();
    assert_eq!(cause(&untrusted).what, "TLS failed", "{untrusted}");

    // verify-ca: the chain, not the host name.
    let ca = |host, root: &str| url(host, name, &format!("sslmode=verify-ca&sslrootcert={root}"));
    let encrypted = probe(&ca("127.0.0.1", &root)).await;
    assert!(encrypted.unwrap(), "verify-ca ignores the host name");
    let untrusted = probe(&ca("127.0.0.1", &wrong_root)).await.unwrap_err();
    assert_eq!(cause(&untrusted).what, "TLS failed", "{untrusted}");

    // `serve` with the wrong host name under verify-full: one line naming the cause.
    let config = cable_gateway::config::ServeConfig::new(full("127.0.0.1", &root));
    let refused = match cable_gateway::server::start(config).await {
        Ok(_) => panic!("verify-full must refuse a certificate for another name"),
        Err(e) => e.to_string(),
    };
    assert!(!refused.contains('\n'), "{refused}");
    assert!(
        refused.contains("TLS failed") && refused.contains("sslrootcert"),
        "{refused}"
    );

    // A gateway under verify-full: every connection it holds is encrypted, the LISTEN one
    // included, and events flow through it.
    let mut config = db.config();
    config.database.database_url = full("localhost", &root);
    let gw = start(config).await;
    let mut client = Client::ready(gw.addr).await;
    client.subscribe_ok(&user("demo-user-alice", 1, 1)).await;
    db.publish(
        1,
        "message.created",
        serde_json::json!({"over": "tls"}),
        serde_json::json!({}),
    )
    .await;
    let (_, message) = client.event().await;
    assert_eq!(message["data"]["over"], "tls");
    let rows = sqlx::query(
        "SELECT a.query, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
          WHERE a.datname = $1 AND a.application_name = $2",
    )
    .bind(name)
    .bind(cable_gateway::db::APPLICATION_NAME)
    .fetch_all(&admin)
    .await
    .unwrap();
    let gateway: Vec<(String, bool)> = rows
        .iter()
        .map(|r| (r.get::<String, _>(0), r.get::<bool, _>(1)))
        .collect();
    let listen = gateway
        .iter()
        .filter(|(q, _)| q.starts_with("LISTEN"))
        .count();
    assert_eq!(listen, 1, "one LISTEN connection: {gateway:?}");
    assert!(gateway.len() >= 2, "the pool and LISTEN: {gateway:?}");
    assert!(
        gateway.iter().all(|(_, ssl)| *ssl),
        "every gateway connection is encrypted: {gateway:?}"
    );
    gw.shutdown().await;

    set_ssl(&admin, false).await;
    let _ = std::fs::remove_dir_all(&dir);
}
