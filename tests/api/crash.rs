//! Durability and log hygiene with the real binary: `ringfence serve` is killed with
//! SIGKILL in the middle of a burst of starts, restarted on the same data directory,
//! and must still know every verification it acknowledged with a 201. Its debug-level
//! output, from both runs, must not contain any phone number or code.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_ringfence");
/// Concurrent clients in the burst.
const CLIENTS: usize = 16;
/// Acknowledged starts to wait for before the kill.
const KILL_AFTER: usize = 150;
/// Upper bound of numbers tried, so the burst ends even if the kill came late.
const MAX_NUMBERS: u32 = 5_000;

/// The burst's `n`th number: a UK mobile whose digits hold no long run of one digit.
/// (The logs are full of zero-padded counters: a request id ends in a random prefix and
/// twelve hex digits of a count, so `+447900000000` was "found" in one run in 256, the
/// one whose prefix ended in `79`.)
fn burst_number(n: u32) -> String {
    format!("+447{}", 912_345_000 + n)
}

/// The binary, run in `dir` and untouched by any `RINGFENCE_*` setting of the
/// environment the tests happen to run in.
fn ringfence(dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("RINGFENCE_") {
            c.env_remove(k);
        }
    }
    c
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

struct Serve {
    child: Child,
    base: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Serve {
    fn output(&self) -> String {
        let mut s = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        s.push_str(&std::fs::read_to_string(&self.stderr).unwrap_or_default());
        s
    }
}

impl Serve {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ringfence serve` on a free port with debug logging into files, and waits
/// (bounded) until `/healthz` answers. A port picked this way can be taken by someone
/// else before the server binds it; then it tries another.
async fn serve(work: &Path, data: &Path, run: &str) -> Serve {
    let client = http_client();
    for attempt in 1..=3 {
        let port = free_port();
        let stdout = work.join(format!("{run}-{attempt}.stdout"));
        let stderr = work.join(format!("{run}-{attempt}.stderr"));
        let child = ringfence(work)
            .arg("serve")
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--sms-sink")
            .arg(format!("file:{}", data.join("sms.jsonl").display()))
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("ringfence serve starts");
        let mut s = Serve {
            child,
            base: format!("http://127.0.0.1:{port}"),
            stdout,
            stderr,
        };
        let url = format!("{}/healthz", s.base);
        let up = eventually_within(Duration::from_secs(20), "ringfence serve to answer", || {
            let exited = matches!(s.child.try_wait(), Ok(Some(_)));
            let req = client.get(&url).send();
            async move {
                if exited {
                    return Some(false);
                }
                req.await.ok().filter(|r| r.status() == 200).map(|_| true)
            }
        })
        .await;
        if up {
            return s;
        }
        let output = s.output();
        assert!(
            output.contains("cannot bind") && attempt < 3,
            "ringfence serve exited:\n{output}"
        );
    }
    unreachable!("the loop returns or fails")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_starts_survive_a_kill_and_logs_hold_no_number_or_code() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");

    let out = ringfence(work.path())
        .args([
            "keys", "create", "--name", "t", "--scope", "verify", "--scope", "admin",
        ])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keys create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let key = stdout.lines().last().unwrap().trim().to_owned();
    assert!(
        key.starts_with("rfk_"),
        "the key is the last line: {stdout}"
    );

    let mut first = serve(work.path(), &data, "run1").await;
    let client = http_client();
    // Ten-digit codes, so a code found in the logs cannot be a coincidence (a log line
    // is full of shorter digit runs: timestamps, durations, ports).
    let r = fetch(
        client
            .patch(format!("{}/v1/services/default", first.base))
            .bearer_auth(&key)
            // Sequential numbers share their prefix: its rate limit is off for the burst.
            .json(
                &json!({ "code_length": 10, "abuse": { "limits": { "sends_per_prefix": null } } }),
            ),
    )
    .await;
    r.assert_status(200);

    let next = Arc::new(AtomicU32::new(0));
    let tried = Arc::new(Mutex::new(Vec::<String>::new()));
    let acked = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let url = format!("{}/v1/verifications", first.base);
    let burst: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (client, url, key) = (client.clone(), url.clone(), key.clone());
            let (next, tried, acked) = (next.clone(), tried.clone(), acked.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= MAX_NUMBERS {
                        return;
                    }
                    let number = burst_number(n);
                    tried.lock().unwrap().push(number.clone());
                    let sent = client
                        .post(&url)
                        .bearer_auth(&key)
                        .json(&json!({ "to": number }))
                        .send()
                        .await;
                    // Once the process is gone, requests fail: this client is done.
                    let Ok(res) = sent else { return };
                    let status = res.status();
                    let Ok(body) = res.json::<Value>().await else {
                        return;
                    };
                    assert_eq!(status, 201, "before the kill every start succeeds: {body}");
                    let id = body["id"].as_str().unwrap().to_owned();
                    acked.lock().unwrap().push((id, number));
                }
            })
        })
        .collect();

    eventually_within(Duration::from_secs(30), "the burst to get going", || {
        let n = acked.lock().unwrap().len();
        async move { (n >= KILL_AFTER).then_some(()) }
    })
    .await;
    // `Child::kill` is SIGKILL: no shutdown hook runs.
    first.kill();
    for task in burst {
        task.await.expect("a burst client panicked");
    }
    let acked = acked.lock().unwrap().clone();
    let tried = tried.lock().unwrap().clone();
    assert!(acked.len() >= KILL_AFTER);
    assert!(
        (acked.len() as u32) < MAX_NUMBERS,
        "the burst ended before the kill"
    );

    let mut second = serve(work.path(), &data, "run2").await;
    for (id, number) in &acked {
        let g = fetch(
            client
                .get(format!("{}/v1/verifications/{id}", second.base))
                .bearer_auth(&key),
        )
        .await;
        assert_eq!(g.status, 200, "acknowledged {id} was lost: {}", g.text);
        assert_eq!(g.str("to"), masked(number));
        assert_eq!(g.str("status"), "pending");
    }

    // The restarted instance still opens what the first one sealed: a code delivered
    // before the kill approves its verification now.
    let sms = std::fs::read_to_string(data.join("sms.jsonl")).unwrap();
    let lines: Vec<Value> = sms
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(!lines.is_empty(), "no message was delivered");
    let codes: Vec<String> = lines
        .iter()
        .map(|m| extract_code(m["body"].as_str().unwrap()).unwrap())
        .collect();
    assert!(codes.iter().all(|c| c.len() == 10));
    let delivered = &lines[0];
    let id = delivered["verification_id"].as_str().unwrap();
    let ok = fetch(
        client
            .post(format!("{}/v1/verifications/{id}/check", second.base))
            .bearer_auth(&key)
            .json(&json!({ "code": codes[0] })),
    )
    .await;
    assert_eq!(ok.str("status"), "approved", "{}", ok.text);
    second.kill();

    // Neither run wrote a number or a code anywhere in its output.
    let logs = first.output() + &second.output();
    assert!(
        logs.contains("request done"),
        "debug logging was not on; nothing was scanned"
    );
    for number in &tried {
        let n = ringfence_phone::E164::parse(number, None).unwrap();
        for form in [
            number.as_str(),
            &number[1..],
            n.national_significant_number(),
        ] {
            assert!(
                !logs.contains(form),
                "a phone number ({form}) is in the logs"
            );
        }
    }
    for code in &codes {
        assert!(
            !logs.contains(code.as_str()),
            "a code ({code}) is in the logs"
        );
    }
}
