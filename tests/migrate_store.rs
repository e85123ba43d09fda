//! `ringfence migrate-store` moves a SQLite deployment of 100,000 verifications and
//! bindings to PostgreSQL, verifies the copy, and the instance on PostgreSQL serves the
//! same verifications and bindings. Runs when `RINGFENCE_TEST_POSTGRES_URL` is set.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
mod common;

use common::{free_port, ringfence, TestDb};

const ROWS: i64 = 100_000;

struct Serve(Child, String);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn serve(data: &Path, extra: &[&str]) -> Serve {
    let port = free_port();
    let child = ringfence()
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--sms-sink",
        ])
        .arg(format!("file:{}", data.join("sms.jsonl").display()))
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let s = Serve(child, format!("http://127.0.0.1:{port}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = reqwest::get(format!("{}/readyz", s.1)).await {
            if r.status() == 200 {
                return s;
            }
        }
        assert!(Instant::now() < deadline, "serve did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_deployment_moves_to_postgres_whole() {
    let Ok(admin) = std::env::var("RINGFENCE_TEST_POSTGRES_URL") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = ringfence()
        .args(["keys", "create", "--name", "m"])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned();

    // A real verification and binding through the API, on SQLite.
    let client = reqwest::Client::new();
    let (id, masked) = {
        let s = serve(&data, &[]).await;
        let v: Value = client
            .post(format!("{}/v1/verifications", s.1))
            .bearer_auth(&key)
            .json(&json!({ "to": "+447400123456", "account_ref": "user-1" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = v["id"].as_str().unwrap().to_owned();
        let deadline = Instant::now() + Duration::from_secs(10);
        let code = loop {
            let text = std::fs::read_to_string(data.join("sms.jsonl")).unwrap_or_default();
            if let Some(line) = text.lines().last() {
                let m: Value = serde_json::from_str(line).unwrap();
                break m["body"]
                    .as_str()
                    .unwrap()
                    .chars()
                    .filter(char::is_ascii_digit)
                    .collect::<String>();
            }
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let r = client
            .post(format!("{}/v1/verifications/{id}/check", s.1))
            .bearer_auth(&key)
            .json(&json!({ "code": code }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = client
            .put(format!("{}/v1/accounts/user-1/phone", s.1))
            .bearer_auth(&key)
            .json(&json!({ "verification_id": id }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        (id, v["to"].as_str().unwrap().to_owned())
    };

    // Volume: 100,000 more subjects, verifications and bindings, written directly.
    {
        let mut c = rusqlite::Connection::open(data.join("ringfence.db")).unwrap();
        let tx = c.transaction().unwrap();
        let service: String = tx
            .query_row("SELECT id FROM services WHERE name = 'default'", [], |r| {
                r.get(0)
            })
            .unwrap();
        for i in 0..ROWS {
            let mut bi = [0u8; 32];
            bi[..8].copy_from_slice(&i.to_le_bytes());
            bi[8] = 0xAB;
            tx.execute(
                "INSERT INTO subjects (blind_index, wrapped_key, phone_ct, country_code, region, number_type, created_at)
                 VALUES (?1, ?2, ?3, 44, 'GB', 'mobile', ?4)",
                rusqlite::params![&bi[..], &[1u8; 73][..], &[2u8; 40][..], 1_000 + i],
            )
            .unwrap();
            let subject = tx.last_insert_rowid();
            let vid = format!("VE{:032x}", i);
            tx.execute(
                "INSERT INTO verifications (id, service_id, subject_id, status, channel, code_hash, sends, max_sends, attempts,
                    max_attempts, lockout_ms, test_number, created_at, updated_at, expires_at, last_sent_at, approved_at)
                 VALUES (?1, ?2, ?3, 'approved', 'sms', NULL, 1, 5, 0, 5, 900000, 0, ?4, ?4, ?4, ?4, ?4)",
                rusqlite::params![vid, service, subject, 2_000 + i],
            )
            .unwrap();
            tx.execute(
                "INSERT INTO bindings (account_ref, subject_id, verification_id, verified_at) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![format!("acct-{i}"), subject, vid, 2_000 + i],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }

    // An empty database to migrate into.
    let db = TestDb::create(&admin, "rf_migrate").await;
    let url = db.url.clone();

    let out = ringfence()
        .args(["migrate-store", "--to", &url])
        .arg("--from")
        .arg(format!("sqlite:{}", data.join("ringfence.db").display()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "verifications: {} rows copied and verified",
            ROWS + 1
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("bindings: {} rows copied and verified", ROWS + 1)),
        "{stdout}"
    );

    // Into a database that is not empty: refused.
    let again = ringfence()
        .args(["migrate-store", "--to", &url])
        .arg("--from")
        .arg(format!("sqlite:{}", data.join("ringfence.db").display()))
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    // The instance on PostgreSQL, with the same secrets, serves what SQLite held.
    {
        let s = serve(&data, &["--database-url", &url]).await;
        let v: Value = client
            .get(format!("{}/v1/verifications/{id}", s.1))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["status"], "approved");
        assert_eq!(v["to"], masked.as_str());
        let b: Value = client
            .get(format!("{}/v1/accounts/user-1/phone", s.1))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(b["phone"], masked.as_str());
        let b = client
            .get(format!("{}/v1/accounts/acct-99999/phone", s.1))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(b.status(), 200);
        // New rows continue after the copied ones.
        let r = client
            .post(format!("{}/v1/verifications", s.1))
            .bearer_auth(&key)
            .json(&json!({ "to": "+447911123456" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    db.drop_now().await;
}
