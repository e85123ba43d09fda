//! PostgreSQL restarted under load: requests during the outage get 503 `unavailable`,
//! the service recovers by itself, and every acknowledged verification is still there.
//!
//! Runs when `RINGFENCE_TEST_POSTGRES_URL` and `RINGFENCE_TEST_POSTGRES_RESTART` (a shell
//! command that restarts the server, set by `.ci/run`) are both set. It is the only
//! test of its binary: cargo runs test binaries one after another, so no other test
//! sees the outage.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
mod common;

use common::{create_key, free_port, ringfence, TestDb};

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_gives_503s_then_recovers_without_losing_anything() {
    let (Some(admin), Some(restart)) = (
        std::env::var("RINGFENCE_TEST_POSTGRES_URL").ok(),
        std::env::var("RINGFENCE_TEST_POSTGRES_RESTART").ok(),
    ) else {
        return;
    };
    let db = TestDb::create(&admin, "rf_outage").await;
    let db_url = db.url.clone();

    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path(), &db_url, "outage", &["verify", "admin"]);
    let port = free_port();
    let base_url = format!("http://127.0.0.1:{port}");
    let _serve = Serve(
        ringfence()
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--database-url",
                &db_url,
            ])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--sms-sink")
            .arg(format!("file:{}", dir.path().join("sms.jsonl").display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("serve.stderr")).unwrap())
            .spawn()
            .unwrap(),
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client
        .get(format!("{base_url}/readyz"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "serve did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The clients' numbers are sequential: they share prefixes, whose limit is off here.
    let patched = client
        .patch(format!("{base_url}/v1/services/default"))
        .bearer_auth(&key)
        .json(&json!({ "abuse": { "limits": { "sends_per_prefix": null } } }))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);

    // Four clients start verifications for distinct numbers until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let unavailable = Arc::new(AtomicU32::new(0));
    let others = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for c in 0..4u32 {
        let (client, key, base_url) = (client.clone(), key.clone(), base_url.clone());
        let (stop, acknowledged, unavailable, others) = (
            stop.clone(),
            acknowledged.clone(),
            unavailable.clone(),
            others.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) && n < 20_000 {
                n += 1;
                let to = format!("+44790{c}{n:06}");
                match client
                    .post(format!("{base_url}/v1/verifications"))
                    .bearer_auth(&key)
                    .json(&json!({ "to": to }))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 201 => {
                        let v: Value = r.json().await.unwrap();
                        acknowledged
                            .lock()
                            .unwrap()
                            .push(v["id"].as_str().unwrap().to_owned());
                    }
                    Ok(r) if r.status() == 503 => {
                        let v: Value = r.json().await.unwrap();
                        assert_eq!(v["error"]["code"], "unavailable", "{v}");
                        unavailable.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Ok(r) => {
                        let line = format!("{} {}", r.status(), r.text().await.unwrap_or_default());
                        others.lock().unwrap().push(line);
                    }
                    Err(e) => others.lock().unwrap().push(format!("transport: {e}")),
                }
            }
        }));
    }
    let before = || acknowledged.lock().unwrap().len();
    while before() < 100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let status = Command::new("sh")
        .args(["-c", &restart])
        .status()
        .expect("the restart command runs");
    assert!(status.success(), "restart command failed: {restart}");

    // Recovery by itself: new acknowledgements after the restart.
    let after_restart = before();
    let deadline = Instant::now() + Duration::from_secs(60);
    while before() < after_restart + 200 {
        assert!(
            Instant::now() < deadline,
            "no recovery within 60 s of the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let others = others.lock().unwrap().clone();
    if !others.is_empty() {
        // What the server logged about them: the cause stays in its log, not the answer.
        let log = std::fs::read_to_string(dir.path().join("serve.stderr")).unwrap_or_default();
        let failed: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("request failed"))
            .collect();
        panic!(
            "answers other than 201 and 503: {others:?}\nthe server's log of failed requests:\n{}",
            failed.join("\n")
        );
    }

    // Every acknowledged verification is there.
    let ids = acknowledged.lock().unwrap().clone();
    for id in &ids {
        let r = client
            .get(format!("{base_url}/v1/verifications/{id}"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "acknowledged verification {id} is missing");
    }
    eprintln!(
        "acknowledged {} starts, {} answered 503 during the outage",
        ids.len(),
        unavailable.load(Ordering::Relaxed)
    );

    db.drop_now().await;
}
