//! Helpers shared by the tests that run the `ringfence` binary against PostgreSQL
//! (each test binary uses some of them).
#![allow(dead_code)]

use std::process::Command;

use sqlx::Connection;

/// The server the PostgreSQL tests use, when `RINGFENCE_TEST_POSTGRES_URL` is set.
pub fn postgres_url() -> Option<String> {
    std::env::var("RINGFENCE_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// The binary under test.
pub fn ringfence() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ringfence"))
}

/// `ringfence keys create` against `db_url`, with `dir/data` as the data dir; the new
/// key's secret.
pub fn create_key(dir: &std::path::Path, db_url: &str, name: &str, scopes: &[&str]) -> String {
    let mut cmd = ringfence();
    cmd.current_dir(dir)
        .args(["keys", "create", "--name", name, "--database-url", db_url]);
    for scope in scopes {
        cmd.args(["--scope", scope]);
    }
    let out = cmd
        .arg("--data-dir")
        .arg(dir.join("data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned()
}

/// A loopback port free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A database of its own for one test on the server of `admin_url`, dropped by
/// `drop_now`. Fails (never skips) when the server does not answer.
pub struct TestDb {
    admin_url: String,
    name: String,
    pub url: String,
}

impl TestDb {
    /// Connections open to this database, the caller's own excepted.
    #[allow(dead_code)] // not every test binary that shares this module uses it
    pub async fn connections(&self) -> i64 {
        let mut conn = sqlx::PgConnection::connect(&self.admin_url).await.unwrap();
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&self.name)
        .fetch_one(&mut conn)
        .await
        .unwrap()
    }

    pub async fn create(admin_url: &str, prefix: &str) -> Self {
        let name = format!(
            "{prefix}_{}",
            hex::encode(ringfence::crypto::random_bytes::<6>())
        );
        let mut conn = sqlx::PgConnection::connect(admin_url)
            .await
            .expect("RINGFENCE_TEST_POSTGRES_URL is set but PostgreSQL does not answer");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let base = admin_url.split('?').next().unwrap();
        let (server, _) = base.rsplit_once('/').expect("the URL names a database");
        Self {
            admin_url: admin_url.to_owned(),
            url: format!("{server}/{name}"),
            name,
        }
    }

    pub async fn drop_now(self) {
        if let Ok(mut conn) = sqlx::PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn)
            .await;
        }
    }
}
