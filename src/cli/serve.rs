//! `ringfence serve` and the set-up shared by operator commands.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use crate::app::{AppOptions, Application, Settings};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, DatabaseUrl, LogFormat, Overrides};
use crate::crypto::{Keyring, SecretSource};
use crate::delivery::WorkerSettings;
use crate::store::sqlite::SqliteStore;
use crate::store::Store;

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .fmt_fields(super::log_fields::JsonSpanFields)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

/// Where each secret came from, for the start-up report.
pub type SecretReport = Vec<(&'static str, SecretSource)>;

/// Opens the configured store with the keyring; generates missing secrets.
pub async fn open_store(
    config: &Config,
) -> anyhow::Result<(Arc<dyn Store>, Keyring, SecretReport)> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        anyhow::anyhow!("data_dir: cannot create {}: {e}", config.data_dir.display())
    })?;
    let env = |k: &str| std::env::var(k).ok();
    let (keys, report) = Keyring::load(&config.data_dir, &env, true)?;
    let store: Arc<dyn Store> = match &config.database {
        DatabaseUrl::Sqlite(path) => Arc::new(SqliteStore::open(
            path,
            keys.codes.clone(),
            config.durability,
        )?),
        DatabaseUrl::Postgres(url) => Arc::new(
            crate::store::postgres::PgStore::connect(
                url,
                keys.codes.clone(),
                config.postgres.clone(),
            )
            .await?,
        ),
    };
    Ok((store, keys, report))
}

/// The SQLite backend serves exactly one instance: a second `serve` on the same
/// database is refused instead of silently sharing it.
fn lock_database(config: &Config) -> anyhow::Result<Option<std::fs::File>> {
    let DatabaseUrl::Sqlite(path) = &config.database else {
        // PostgreSQL serves many instances; nothing to lock.
        return Ok(None);
    };
    let lock_path = path.with_extension("lock");
    if let Some(dir) = lock_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)?;
    file.try_lock().map_err(|_| {
        anyhow::anyhow!(
            "another ringfence serve holds {}; the SQLite backend serves one instance",
            lock_path.display()
        )
    })?;
    Ok(Some(file))
}

pub fn run(overrides: Overrides) -> anyhow::Result<ExitCode> {
    let config = Config::resolve(&overrides, std::io::stdout().is_terminal())?;
    init_logging(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(config))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let _lock = lock_database(&config)?;
    let (store, keys, report) = open_store(&config).await?;
    for (name, source) in &report {
        if let SecretSource::Generated(_) = source {
            tracing::warn!(secret = name, source = %source, "generated a new secret; back it up, losing it makes stored numbers unreadable");
        } else {
            tracing::info!(secret = name, source = %source, "secret loaded");
        }
    }
    let app = Application::build(AppOptions {
        listen: config.listen,
        store: store.clone(),
        keys,
        clock: Arc::new(SystemClock) as Arc<dyn Clock>,
        sink: config.sms_sink.build()?,
        settings: Settings {
            binding_window_ms: i64::from(config.binding_window_seconds) * 1000,
            ..Settings::default()
        },
        counters: config
            .counters
            .build()
            .await
            .map_err(|e| anyhow::anyhow!("counters_url: {e}"))?,
        pumping: config.pumping.clone(),
        worker: WorkerSettings {
            lease: std::time::Duration::from_secs(u64::from(config.outbox_lease_seconds)),
            max_attempts: config.outbox_max_attempts,
            ..WorkerSettings::default()
        },
    })
    .await?;
    let addr = app.local_addr();
    let database = match &config.database {
        DatabaseUrl::Sqlite(db) => db.display().to_string(),
        DatabaseUrl::Postgres(_) => "postgresql".to_owned(),
    };
    tracing::info!(%addr, %database, sms_sink = %config.sms_sink, "ringfence is listening");
    let has_keys = store
        .list_api_keys()
        .await?
        .iter()
        .any(|k| k.revoked_at.is_none());
    eprintln!("ringfence listening on http://{addr}  (API reference: http://{addr}/docs)");
    eprintln!("messages go to: {}", config.sms_sink);
    if !has_keys {
        eprintln!(
            "no API key yet — create one with:\n  ringfence keys create --data-dir {} --name my-backend",
            config.data_dir.display()
        );
    }
    app.run_until_stopped(shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
