//! Several `ringfence serve` processes sharing one PostgreSQL: the guarantees hold
//! across instances. Runs when `RINGFENCE_TEST_POSTGRES_URL` is set (CI sets it) and
//! fails, never skips, if that database does not answer.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::{create_key, free_port, postgres_url, ringfence, TestDb};

struct Instance {
    child: Child,
    base: String,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_instance_with(dir: &Path, db_url: &str, name: &str, extra: &[&str]) -> Instance {
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let port = free_port();
        let child = ringfence()
            .current_dir(dir)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--database-url",
                db_url,
            ])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--sms-sink")
            .arg(format!(
                "file:{}",
                dir.join(format!("sms-{name}.jsonl")).display()
            ))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.stderr"))).unwrap())
            .spawn()
            .unwrap();
        let mut inst = Instance {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = inst.child.try_wait() {
                break;
            }
            if let Ok(r) = client.get(format!("{}/readyz", inst.base)).send().await {
                if r.status() == 200 {
                    return inst;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = inst.child.kill();
    }
    panic!(
        "ringfence serve did not come up: {}",
        std::fs::read_to_string(dir.join(format!("{name}.stderr"))).unwrap_or_default()
    );
}

async fn code_from_sinks(dir: &Path, to: &str) -> String {
    code_in_sinks(dir, |m| m["to"] == to).await
}

/// The code sent for verification `id`, from whichever instance's sink has it.
async fn code_of_verification(dir: &Path, id: &str) -> String {
    code_in_sinks(dir, |m| m["verification_id"] == id).await
}

/// The code of the latest message `wanted` of either instance's sink (waits for one).
async fn code_in_sinks(dir: &Path, wanted: impl Fn(&Value) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        for name in ["a", "b"] {
            let text =
                std::fs::read_to_string(dir.join(format!("sms-{name}.jsonl"))).unwrap_or_default();
            for line in text.lines().rev() {
                let m: Value = serde_json::from_str(line).unwrap();
                if wanted(&m) {
                    let body = m["body"].as_str().unwrap();
                    return body.chars().filter(char::is_ascii_digit).collect();
                }
            }
        }
        assert!(Instant::now() < deadline, "no such message reached a sink");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two instances sharing PostgreSQL and, for their counters, the Redis of
/// `RINGFENCE_TEST_REDIS_URL`, with a key that may also administer services; `None`
/// when either URL is unset.
async fn setup_with_redis() -> Option<(tempfile::TempDir, TestDb, String, Instance, Instance)> {
    let redis = std::env::var("RINGFENCE_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())?;
    setup_with_counters(&["--counters-url", redis.as_str()]).await
}

/// Two instances sharing PostgreSQL, started with `counters` (none: each its own in
/// memory), with a key that may also administer services; `None` when PostgreSQL's
/// URL is unset.
async fn setup_with_counters(
    counters: &[&str],
) -> Option<(tempfile::TempDir, TestDb, String, Instance, Instance)> {
    let admin = postgres_url()?;
    let db = TestDb::create(&admin, "rf_multi").await;
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path(), &db.url, "ops", &["verify", "admin"]);
    let a = start_instance_with(dir.path(), &db.url, "a", counters).await;
    let b = start_instance_with(dir.path(), &db.url, "b", counters).await;
    Some((dir, db, key, a, b))
}

/// POSTs `body` to `url` with `key`: the status and the JSON answer.
async fn post_json(client: &reqwest::Client, key: &str, url: String, body: Value) -> (u16, Value) {
    let r = client
        .post(url)
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json::<Value>().await.unwrap())
}

/// Creates the service `body` describes, sending to every region on every channel.
async fn create_open_service(client: &reqwest::Client, key: &str, base: &str, mut body: Value) {
    let all = json!({ "allow_by_default": { "disallowed_regions": [] } });
    body["abuse"]["geo"] = json!({ "sms": all, "voice": all, "whatsapp": all });
    let (status, answer) = post_json(client, key, format!("{base}/v1/services"), body).await;
    assert_eq!(status, 201, "{answer}");
}

/// A client that keeps enough idle connections for the tests' bursts of requests.
fn client_for_many() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

/// Two instances sharing PostgreSQL, each with its counters in memory.
async fn setup() -> Option<(tempfile::TempDir, TestDb, String, Instance, Instance)> {
    setup_with_counters(&[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_correct_checks_over_two_instances_approve_exactly_once() {
    let Some((dir, db, key, a, b)) = setup().await else {
        return;
    };
    let client = client_for_many();
    let to = "+447400123456";
    let started: Value = client
        .post(format!("{}/v1/verifications", a.base))
        .bearer_auth(&key)
        .json(&json!({ "to": to }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = started["id"].as_str().expect("started").to_owned();
    let code = code_from_sinks(dir.path(), to).await;

    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let base = if i % 2 == 0 {
                a.base.clone()
            } else {
                b.base.clone()
            };
            let (client, key, id, code) = (client.clone(), key.clone(), id.clone(), code.clone());
            tokio::spawn(async move {
                let r = client
                    .post(format!("{base}/v1/verifications/{id}/check"))
                    .bearer_auth(key)
                    .json(&json!({ "code": code }))
                    .send()
                    .await
                    .unwrap();
                r.status().as_u16()
            })
        })
        .collect();
    let mut approved = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => approved += 1,
            // Not pending any more: the first right code compared approved it.
            409 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(approved, 1, "exactly one check approves");
    assert_eq!(refused, 999);
    drop((a, b));
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_limits_hold_across_instances() {
    let Some((_dir, db, key, a, b)) = setup().await else {
        return;
    };
    let client = reqwest::Client::new();
    let to = "+447911123456";
    let start = |base: String| {
        let (client, key) = (client.clone(), key.clone());
        async move {
            let r = client
                .post(format!("{base}/v1/verifications"))
                .bearer_auth(key)
                .json(&json!({ "to": to }))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (status, body)
        }
    };
    let (s1, first) = start(a.base.clone()).await;
    assert_eq!(s1, 201);
    // A re-send through the other instance is still inside the cooldown.
    let (s2, second) = start(b.base.clone()).await;
    assert_eq!(s2, 429, "{second}");
    assert_eq!(second["error"]["code"], "resend_cooldown");
    // Racing starts on both instances: one verification, never two pending ones.
    let racers: Vec<_> = (0..20)
        .map(|i| {
            tokio::spawn(start(if i % 2 == 0 {
                a.base.clone()
            } else {
                b.base.clone()
            }))
        })
        .collect();
    for r in racers {
        let (status, body) = r.await.unwrap();
        assert_eq!(status, 429, "{body}");
    }
    let id = first["id"].as_str().unwrap();
    let got: Value = client
        .get(format!("{}/v1/verifications/{id}", b.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["send_attempts"], 1);
    drop((a, b));
    db.drop_now().await;
}

/// Every line of the instances' sink files that parses (a killed instance may leave a
/// torn last line).
fn sink_lines(dir: &Path) -> Vec<Value> {
    ["a", "b"]
        .iter()
        .flat_map(|name| {
            std::fs::read_to_string(dir.join(format!("sms-{name}.jsonl")))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_instance_loses_no_acknowledged_start_and_its_messages_go_out_once_per_attempt()
{
    let Some(admin) = postgres_url() else { return };
    let db = TestDb::create(&admin, "rf_multi").await;
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path(), &db.url, "multi", &[]);
    let lease = ["--outbox-lease-seconds", "2"];
    let mut a = start_instance_with(dir.path(), &db.url, "a", &lease).await;
    let b = start_instance_with(dir.path(), &db.url, "b", &lease).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // Eight clients start verifications on instance a; a is killed in the middle.
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for c in 0..8u32 {
        let (client, key, base, acknowledged) = (
            client.clone(),
            key.clone(),
            a.base.clone(),
            acknowledged.clone(),
        );
        clients.push(tokio::spawn(async move {
            for n in 0..400u32 {
                let to = format!("+44790{c}{n:06}");
                let Ok(r) = client
                    .post(format!("{base}/v1/verifications"))
                    .bearer_auth(&key)
                    .json(&json!({ "to": to }))
                    .send()
                    .await
                else {
                    return; // the instance is gone
                };
                if r.status() == 201 {
                    let v: Value = r.json().await.unwrap();
                    acknowledged
                        .lock()
                        .unwrap()
                        .push(v["id"].as_str().unwrap().to_owned());
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while acknowledged.lock().unwrap().len() < 300 {
        assert!(Instant::now() < deadline, "the burst did not get going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.child.kill().unwrap(); // SIGKILL
    a.child.wait().unwrap();
    for c in clients {
        c.await.unwrap();
    }
    let ids = acknowledged.lock().unwrap().clone();

    // Every acknowledged verification is there, and its message reaches a sink: the ones
    // a had claimed but not sent are taken over by b once their lease ends.
    for id in &ids {
        let r = client
            .get(format!("{}/v1/verifications/{id}", b.base))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "acknowledged verification {id} is missing");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sent: std::collections::HashSet<String> = sink_lines(dir.path())
            .iter()
            .filter_map(|m| m["verification_id"].as_str().map(str::to_owned))
            .collect();
        let missing = ids.iter().filter(|id| !sent.contains(*id)).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged verifications never got their message"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // No send repeated: each (message, attempt) reached a sink at most once.
    let lines = sink_lines(dir.path());
    let mut seen = std::collections::HashSet::new();
    for m in &lines {
        let pair = (
            m["message_id"].as_i64().unwrap(),
            m["attempt"].as_u64().unwrap(),
        );
        assert!(
            seen.insert(pair),
            "message {} attempt {} was sent twice",
            pair.0,
            pair.1
        );
    }
    drop(b);
    db.drop_now().await;
}

/// The anti-abuse engine's limits live in Redis when instances share it: a per-IP send
/// limit and a number's guess budget hold across two instances, whichever instance a
/// request reaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_abuse_limits_hold_across_instances_sharing_redis() {
    let Some((dir, db, key, a, b)) = setup_with_redis().await else {
        return;
    };
    let client = reqwest::Client::new();
    create_open_service(
        &client,
        &key,
        &a.base,
        json!({
            "name": "shared",
            "resend_cooldown_seconds": 0,
            "max_check_attempts": 20,
            "abuse": {
                "limits": {
                    "sends_per_ip": { "limit": 2, "period_seconds": 300 },
                    "wrong_codes_per_number": { "limit": 3, "period_seconds": 86400 }
                }
            }
        }),
    )
    .await;
    let post = |base: &str, path: &str, body: Value| {
        post_json(&client, &key, format!("{base}{path}"), body)
    };
    // One /64, three addresses, two instances: the third start is over the limit.
    let start =
        |n: u32, ip: &str| json!({ "to": format!("+447911{n:06}"), "service": "shared", "ip": ip });
    assert_eq!(
        post(&a.base, "/v1/verifications", start(1, "2001:db8:7::1"))
            .await
            .0,
        201
    );
    let (s, first) = post(&b.base, "/v1/verifications", start(2, "2001:db8:7::2")).await;
    assert_eq!(s, 201, "{first}");
    let (s, refused) = post(&a.base, "/v1/verifications", start(3, "2001:db8:7::3")).await;
    assert_eq!(s, 429, "{refused}");
    assert_eq!(refused["error"]["code"], "rate_limited");
    // Queued while its decision was made, the refused start was withdrawn: it left no
    // verification, on either instance, and no message.
    for base in [&a.base, &b.base] {
        let check = json!({ "to": "+447911000003", "code": "000000", "service": "shared" });
        let (s, none) = post(base, "/v1/verification-checks", check).await;
        assert_eq!(
            (s, &none["error"]["code"]),
            (404, &json!("verification_not_found")),
            "{none}"
        );
    }

    // Wrong codes for one number, alternating instances: three are compared, then none.
    let id = first["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/verifications/{id}/check");
    let code = code_from_sinks(dir.path(), "+447911000002").await;
    assert!(
        !sink_lines(dir.path())
            .iter()
            .any(|m| m["to"] == "+447911000003"),
        "a refused start sent nothing"
    );
    let wrong: String = code
        .bytes()
        .map(|b| char::from(b'0' + (b - b'0' + 1) % 10))
        .collect();
    let mut statuses = Vec::new();
    for i in 0..5 {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        statuses.push(post(base, &path, json!({ "code": wrong })).await.0);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    drop((a, b));
    db.drop_now().await;
}

/// A number's guess budget against racing guesses spread over two instances sharing
/// PostgreSQL and Redis. The budget is kept beside the verifications: a wrong code
/// spends a unit, a right one needs one left and spends none, and a code counts only if
/// its verification is written as it was read, so no other code of the number counted
/// in between. So with one unit left, of many racing guesses with the right code among
/// them exactly one is compared, whichever it is — racing buys an attacker nothing —
/// and someone who always types the right code is never limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_guesses_over_two_instances_compare_one_code_per_unit_of_the_budget() {
    racing_guesses(false, true).await;
}

/// The same with no counters shared (each instance's in memory, as when Redis is
/// down): the budget lives in PostgreSQL, so it holds across instances all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_guesses_over_two_instances_sharing_no_counters_compare_one_code_per_unit_of_the_budget(
) {
    racing_guesses(false, false).await;
}

/// The same with checks by number (`POST /v1/verification-checks`), which find the
/// verification by its number and service first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_guesses_by_number_over_two_instances_compare_one_code_per_unit_of_the_budget() {
    racing_guesses(true, true).await;
}

async fn racing_guesses(by_number: bool, shared_counters: bool) {
    let set_up = if shared_counters {
        setup_with_redis().await
    } else {
        setup_with_counters(&[]).await
    };
    let Some((dir, db, key, a, b)) = set_up else {
        return;
    };
    let client = client_for_many();
    create_open_service(
        &client,
        &key,
        &a.base,
        json!({
            "name": "race",
            "resend_cooldown_seconds": 0,
            "max_check_attempts": 20,
            "max_sends": 20,
            "abuse": {
                "limits": {
                    "sends_per_number": null,
                    "wrong_codes_per_number": { "limit": 3, "period_seconds": 86400 }
                }
            }
        }),
    )
    .await;
    let post = |base: String, path: String, body: Value| {
        post_json(&client, &key, format!("{base}{path}"), body)
    };
    let bases = [a.base.clone(), b.base.clone()];
    let start = |to: &'static str, i: usize| {
        let body = json!({ "to": to, "service": "race" });
        let started = post(bases[i % 2].clone(), "/v1/verifications".into(), body);
        async move {
            let (s, v) = started.await;
            assert_eq!(s, 201, "{v}");
            v["id"].as_str().unwrap().to_owned()
        }
    };

    // A check of `id` (of the number `to`) with `code`, on instance `i % 2`.
    let check = |i: usize, to: &'static str, id: &str, code: String| {
        let (path, body) = if by_number {
            let body = json!({ "to": to, "code": code, "service": "race" });
            ("/v1/verification-checks".to_owned(), body)
        } else {
            (
                format!("/v1/verifications/{id}/check"),
                json!({ "code": code }),
            )
        };
        post(bases[i % 2].clone(), path, body)
    };
    // What a check answers once the verification is approved.
    let after_approval = if by_number { 404 } else { 409 };

    // Right codes spend nothing: five verifications of one number, each approved at
    // once, on a budget of three.
    for i in 0..5 {
        let to = "+447911200001";
        let id = start(to, i).await;
        let code = code_of_verification(dir.path(), &id).await;
        let (s, v) = check(i + 1, to, &id, code).await;
        assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    }

    // Another number: two wrong codes leave one unit, then 40 racing guesses, the
    // right code among them, over both instances.
    let to = "+447911200002";
    let id = start(to, 0).await;
    let code = code_of_verification(dir.path(), &id).await;
    let wrong = |k: usize| -> String {
        let n: u64 = code.parse().unwrap();
        let m = 10u64.pow(code.len() as u32);
        format!("{:0w$}", (n + 1 + k as u64) % m, w = code.len())
    };
    for k in 0..2 {
        let (s, v) = check(k, to, &id, wrong(k)).await;
        assert_eq!((s, v["status"].as_str()), (200, Some("pending")), "{v}");
    }
    let guesses = (0..40).map(|k| {
        let guess = if k == 17 { code.clone() } else { wrong(2 + k) };
        check(k, to, &id, guess)
    });
    let answers = futures::future::join_all(guesses).await;
    let compared: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(compared.len(), 1, "exactly one guess compared: {answers:?}");
    for (s, v) in &answers {
        // Refused by the budget, or (after the right code won) not pending any more.
        assert!(
            *s == 200
                || (*s == 429 && v["error"]["code"] == "rate_limited")
                || *s == after_approval,
            "{s} {v}"
        );
    }
    let (s, v) = check(1, to, &id, code.clone()).await;
    if compared[0]["status"] == "approved" {
        assert_eq!(s, after_approval, "{v}");
    } else {
        // A wrong guess took the last unit: the right code is refused as any guess.
        assert_eq!(compared[0]["status"], "pending");
        assert_eq!(
            (s, &v["error"]["code"]),
            (429, &json!("rate_limited")),
            "{v}"
        );
    }
    drop((a, b));
    db.drop_now().await;
}

/// `--database-pool-size` bounds the connections an instance keeps: under 80
/// concurrent requests an instance with a pool of 3 never holds more than 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_keeps_at_most_its_pool_size_of_connections() {
    let Some(admin) = postgres_url() else { return };
    let db = TestDb::create(&admin, "rf_multi").await;
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path(), &db.url, "pool", &[]);
    let a = start_instance_with(dir.path(), &db.url, "a", &["--database-pool-size", "3"]).await;
    let client = client_for_many();
    let starts = (0..80).map(|n| {
        let req = client
            .post(format!("{}/v1/verifications", a.base))
            .bearer_auth(&key)
            .json(&json!({ "to": format!("+447700{n:06}") }));
        async move { req.send().await.unwrap().status().as_u16() }
    });
    let (statuses, most) = tokio::join!(futures::future::join_all(starts), async {
        let mut most = 0;
        for _ in 0..20 {
            most = most.max(db.connections().await);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        most
    });
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    let most = most.max(db.connections().await);
    assert!((1..=3).contains(&most), "{most} connections");
    drop(a);
    db.drop_now().await;
}
