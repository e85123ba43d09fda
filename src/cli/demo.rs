//! `ringfence demo`: a scripted sign-up against a temporary in-process instance —
//! create a key, start a verification, type a wrong code, read the right code from the
//! message sink, approve, bind the number to an account. Each exchange is printed with
//! the number masked.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::app::{AppOptions, Application, Settings};
use crate::clock::{Clock, SystemClock};
use crate::crypto::{self, Keyring};
use crate::delivery::{RecordingSink, WorkerSettings};
use crate::store::sqlite::SqliteStore;
use crate::store::{ApiKeyRecord, Scope, Store};

/// A number in a valid UK mobile range; shown masked in everything printed.
const DEMO_NUMBER: &str = "+44 7400 123456";

pub fn run() -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(demo())?;
    Ok(ExitCode::SUCCESS)
}

fn masked_json(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

struct Step<'a> {
    client: &'a reqwest::Client,
    base: String,
    key: String,
}

impl Step<'_> {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        shown_body: Option<Value>,
    ) -> anyhow::Result<Value> {
        println!("\n→ {method} {path}");
        if let Some(b) = &shown_body {
            println!("{}", masked_json(b));
        }
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await?;
        let status = res.status();
        let text = res.text().await?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        println!("← {status}");
        if !v.is_null() {
            println!("{}", masked_json(&v));
        }
        Ok(v)
    }
}

async fn wait_for_code(sink: &RecordingSink) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(m) = sink.messages().last() {
            let code: String = m.body.chars().filter(char::is_ascii_digit).collect();
            return Ok(code);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no message reached the sink within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn demo() -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let keys = Keyring::ephemeral();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(
        &dir.path().join("demo.db"),
        keys.codes.clone(),
        Default::default(),
    )?);
    let api_key = crypto::generate_api_key();
    store
        .create_api_key(ApiKeyRecord {
            id: api_key.id.clone(),
            name: "demo".into(),
            secret_hash: api_key.secret_hash.to_vec(),
            scopes: vec![Scope::Verify],
            created_at: SystemClock.now(),
            revoked_at: None,
        })
        .await?;
    let sink = RecordingSink::new();
    let app = Application::build(AppOptions {
        listen: "127.0.0.1:0".parse()?,
        store,
        keys,
        clock: Arc::new(SystemClock) as Arc<dyn Clock>,
        sink: Arc::new(sink.clone()),
        settings: Settings::default(),
        worker: WorkerSettings::default(),
        counters: Arc::new(crate::counters::MemoryCounters::default()),
        pumping: Default::default(),
    })
    .await?;
    let addr = app.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));

    println!("ringfence demo — a temporary instance on http://{addr}, database in a temporary directory.");
    println!(
        "1. An API key with the `verify` scope was created (shown here only by its id: {}).",
        api_key.id
    );
    let client = reqwest::Client::new();
    let step = Step {
        client: &client,
        base: format!("http://{addr}"),
        key: api_key.key.clone(),
    };
    let masked = ringfence_phone::E164::parse(DEMO_NUMBER, None)
        .map(|n| n.masked())
        .unwrap_or_default();

    println!("\n2. The sign-up form asks for a phone number; the backend starts a verification.");
    let start_body = json!({ "to": DEMO_NUMBER, "channel": "sms", "account_ref": "user-42", "purpose": "signup" });
    let shown =
        json!({ "to": masked, "channel": "sms", "account_ref": "user-42", "purpose": "signup" });
    let v = step
        .call(
            reqwest::Method::POST,
            "/v1/verifications",
            Some(start_body),
            Some(shown),
        )
        .await?;
    let id = v["id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("start failed: {v}"))?
        .to_owned();

    let code = wait_for_code(&sink).await?;
    println!(
        "\n3. The message reached the phone (the sink): \"{}\"",
        sink.messages()
            .last()
            .map(|m| m.body.clone())
            .unwrap_or_default()
    );

    println!("\n4. The person mistypes the code.");
    // The same code with its first digit changed.
    let first = if code.starts_with('0') { '1' } else { '0' };
    let wrong: String = std::iter::once(first).chain(code.chars().skip(1)).collect();
    let body = json!({ "code": wrong });
    step.call(
        reqwest::Method::POST,
        &format!("/v1/verifications/{id}/check"),
        Some(body.clone()),
        Some(body),
    )
    .await?;

    println!("\n5. The person types the right code.");
    let body = json!({ "code": code });
    let v = step
        .call(
            reqwest::Method::POST,
            &format!("/v1/verifications/{id}/check"),
            Some(body.clone()),
            Some(body),
        )
        .await?;
    anyhow::ensure!(v["status"] == "approved", "expected approval, got {v}");

    println!("\n6. The backend binds the verified number to the new account.");
    let body = json!({ "verification_id": id });
    step.call(
        reqwest::Method::PUT,
        "/v1/accounts/user-42/phone",
        Some(body.clone()),
        Some(body),
    )
    .await?;
    step.call(
        reqwest::Method::GET,
        "/v1/accounts/user-42/phone",
        None,
        None,
    )
    .await?;

    let _ = stop.send(());
    server.await??;
    println!(
        "\nDone in {} ms. The number was stored only encrypted; the code only as a keyed hash.",
        started.elapsed().as_millis()
    );
    Ok(())
}
