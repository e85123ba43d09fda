//! Configuration of `ringfence serve`: defaults in code → `ringfence.toml` →
//! `RINGFENCE_*` environment variables → command-line flags, each layer overriding the
//! one before. Validated at start; every message names the key and the fix.
//!
//! Flags and environment variables are read by clap (a flag wins over its variable);
//! the file fills what neither gave; the defaults fill the rest.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::delivery::SinkSpec;

/// The file's shape: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub database_pool_size: Option<u32>,
    pub database_statement_timeout_ms: Option<u64>,
    pub sms_sink: Option<String>,
    pub log_format: Option<String>,
    pub binding_window_seconds: Option<u32>,
    pub outbox_max_attempts: Option<u32>,
    pub durability: Option<String>,
    pub counters_url: Option<String>,
    pub outbox_lease_seconds: Option<u32>,
    pub pumping_mode: Option<String>,
    pub sms_price_micros: Option<u64>,
    pub daily_budget_micros: Option<u64>,
    pub country_daily_budget_micros: Option<u64>,
    /// Per country calling code (file only): `sms_prices_micros = { "44" = 40000 }`.
    pub sms_prices_micros: Option<std::collections::BTreeMap<String, u64>>,
    /// Per country calling code (file only), overriding `country_daily_budget_micros`.
    pub country_daily_budgets_micros: Option<std::collections::BTreeMap<String, u64>>,
}

/// What flags and environment variables gave (clap fills it).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// Configuration file [default: ./ringfence.toml if it exists]
    #[arg(long, env = "RINGFENCE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080]
    #[arg(long, env = "RINGFENCE_LISTEN")]
    pub listen: Option<String>,
    /// Directory for the SQLite database and generated secrets [default: ./ringfence-data]
    #[arg(long, env = "RINGFENCE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL: sqlite:PATH or postgres://… [default: sqlite in the data dir]
    #[arg(long, env = "RINGFENCE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// PostgreSQL: connections this instance keeps to the database [default: 16]
    #[arg(long, env = "RINGFENCE_DATABASE_POOL_SIZE")]
    pub database_pool_size: Option<u32>,
    /// PostgreSQL: milliseconds a statement may run before the server cancels it (the
    /// request then answers 503) [default: 5000]
    #[arg(long, env = "RINGFENCE_DATABASE_STATEMENT_TIMEOUT_MS")]
    pub database_statement_timeout_ms: Option<u64>,
    /// Where messages go: console | file:PATH [default: console]
    #[arg(long, env = "RINGFENCE_SMS_SINK")]
    pub sms_sink: Option<String>,
    /// Log format: pretty | json [default: json when stdout is not a terminal]
    #[arg(long, env = "RINGFENCE_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Seconds after approval during which a verification may be bound [default: 900]
    #[arg(long, env = "RINGFENCE_BINDING_WINDOW_SECONDS")]
    pub binding_window_seconds: Option<u32>,
    /// Delivery attempts per message before it fails [default: 5]
    #[arg(long, env = "RINGFENCE_OUTBOX_MAX_ATTEMPTS")]
    pub outbox_max_attempts: Option<u32>,
    /// SQLite durability: full (acknowledged = on disk) | normal (acknowledged = survives
    /// a process crash; a power cut may lose the last ~100 ms) [default: full]
    #[arg(long, env = "RINGFENCE_DURABILITY")]
    pub durability: Option<String>,
    /// Counters for metering and rate limits: memory | redis://HOST, redis://HOST:PORT
    /// [default: memory]
    #[arg(long, env = "RINGFENCE_COUNTERS_URL")]
    pub counters_url: Option<String>,
    /// Seconds a claimed message stays with its worker before another may take it over
    /// (a worker that died) [default: 30]
    #[arg(long, env = "RINGFENCE_OUTBOX_LEASE_SECONDS")]
    pub outbox_lease_seconds: Option<u32>,
    /// SMS-pumping detector: enforce (shadow-block closed prefixes) | monitor (only
    /// report) [default: enforce]
    #[arg(long, env = "RINGFENCE_PUMPING_MODE")]
    pub pumping_mode: Option<String>,
    /// Price of one message, in millionths of the currency unit, for the spend breaker
    /// and the statistics [default: 50000]
    #[arg(long, env = "RINGFENCE_SMS_PRICE_MICROS")]
    pub sms_price_micros: Option<u64>,
    /// Spend per UTC day on all countries after which sends are shadow-blocked until
    /// the day ends, in millionths [default: none]
    #[arg(long, env = "RINGFENCE_DAILY_BUDGET_MICROS")]
    pub daily_budget_micros: Option<u64>,
    /// The same per country calling code [default: none]
    #[arg(long, env = "RINGFENCE_COUNTRY_DAILY_BUDGET_MICROS")]
    pub country_daily_budget_micros: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    /// A `postgres://` URL; it may hold a password, so `Debug` hides it.
    Postgres(String),
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(p) => f.debug_tuple("Sqlite").field(p).finish(),
            Self::Postgres(_) => f.write_str("Postgres(<url>)"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database: DatabaseUrl,
    /// PostgreSQL's pool and statement timeout (unused on SQLite).
    pub postgres: crate::store::postgres::PgSettings,
    pub sms_sink: SinkSpec,
    pub log_format: LogFormat,
    pub binding_window_seconds: u32,
    pub outbox_max_attempts: u32,
    pub durability: crate::store::sqlite::Durability,
    pub counters: crate::counters::CountersSpec,
    pub outbox_lease_seconds: u32,
    /// The SMS-pumping detector's mode and the spend breaker.
    pub pumping: crate::abuse::pumping::PumpingPolicy,
    /// The file that was read, if any.
    pub file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[error("configuration key `{key}`: {problem}")]
pub struct ConfigError {
    pub key: &'static str,
    pub problem: String,
}

fn bad(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        problem: problem.into(),
    }
}

pub const DEFAULT_FILE: &str = "ringfence.toml";

impl Config {
    /// Resolves the layers. `stdout_is_terminal` picks the default log format.
    pub fn resolve(o: &Overrides, stdout_is_terminal: bool) -> Result<Self, ConfigError> {
        let (file, path) = match &o.config {
            Some(p) => (read_file(p)?, Some(p.clone())),
            None if Path::new(DEFAULT_FILE).exists() => (
                read_file(Path::new(DEFAULT_FILE))?,
                Some(DEFAULT_FILE.into()),
            ),
            None => (FileConfig::default(), None),
        };
        let listen_s = o
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen = listen_s.parse().map_err(|_| {
            bad(
                "listen",
                format!("`{listen_s}` is not an address such as 127.0.0.1:8080"),
            )
        })?;
        let data_dir = o
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| "ringfence-data".into());
        let database = match o.database_url.clone().or(file.database_url) {
            None => DatabaseUrl::Sqlite(data_dir.join("ringfence.db")),
            Some(url) => parse_database_url(&url)?,
        };
        let sink_s = o
            .sms_sink
            .clone()
            .or(file.sms_sink)
            .unwrap_or_else(|| "console".into());
        let sms_sink = sink_s.parse().map_err(|e: String| bad("sms_sink", e))?;
        let log_format = match o.log_format.clone().or(file.log_format).as_deref() {
            None => {
                if stdout_is_terminal {
                    LogFormat::Pretty
                } else {
                    LogFormat::Json
                }
            }
            Some("pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(bad(
                    "log_format",
                    format!("`{other}`: expected pretty or json"),
                ))
            }
        };
        let binding_window_seconds = o
            .binding_window_seconds
            .or(file.binding_window_seconds)
            .unwrap_or(900);
        if !(60..=86_400).contains(&binding_window_seconds) {
            return Err(bad(
                "binding_window_seconds",
                "must be between 60 and 86400",
            ));
        }
        let outbox_max_attempts = o
            .outbox_max_attempts
            .or(file.outbox_max_attempts)
            .unwrap_or(5);
        if !(1..=20).contains(&outbox_max_attempts) {
            return Err(bad("outbox_max_attempts", "must be between 1 and 20"));
        }
        let durability = match o.durability.clone().or(file.durability).as_deref() {
            None | Some("full") => crate::store::sqlite::Durability::Full,
            Some("normal") => crate::store::sqlite::Durability::Normal,
            Some(other) => {
                return Err(bad(
                    "durability",
                    format!("`{other}`: expected full or normal"),
                ))
            }
        };
        let counters = o
            .counters_url
            .clone()
            .or(file.counters_url)
            .unwrap_or_else(|| "memory".into())
            .parse()
            .map_err(|e: crate::counters::CountersSpecError| bad("counters_url", e.to_string()))?;
        let mut postgres = crate::store::postgres::PgSettings::default();
        if let Some(n) = o.database_pool_size.or(file.database_pool_size) {
            if !(1..=256).contains(&n) {
                return Err(bad("database_pool_size", "must be between 1 and 256"));
            }
            postgres.max_connections = n;
        }
        if let Some(ms) = o
            .database_statement_timeout_ms
            .or(file.database_statement_timeout_ms)
        {
            if !(100..=600_000).contains(&ms) {
                return Err(bad(
                    "database_statement_timeout_ms",
                    "must be between 100 and 600000",
                ));
            }
            postgres.statement_timeout = std::time::Duration::from_millis(ms);
        }
        let outbox_lease_seconds = o
            .outbox_lease_seconds
            .or(file.outbox_lease_seconds)
            .unwrap_or(30);
        if !(1..=3600).contains(&outbox_lease_seconds) {
            return Err(bad("outbox_lease_seconds", "must be between 1 and 3600"));
        }
        let mut pumping = crate::abuse::pumping::PumpingPolicy::default();
        pumping.mode = match o.pumping_mode.clone().or(file.pumping_mode).as_deref() {
            None | Some("enforce") => crate::abuse::pumping::Mode::Enforce,
            Some("monitor") => crate::abuse::pumping::Mode::Monitor,
            Some(other) => {
                return Err(bad(
                    "pumping_mode",
                    format!("`{other}`: expected enforce or monitor"),
                ))
            }
        };
        if let Some(price) = o.sms_price_micros.or(file.sms_price_micros) {
            pumping.spend.default_price_micros = price;
        }
        pumping.spend.global_budget_micros = o.daily_budget_micros.or(file.daily_budget_micros);
        pumping.spend.default_country_budget_micros = o
            .country_daily_budget_micros
            .or(file.country_daily_budget_micros);
        pumping.spend.prices_micros = by_country("sms_prices_micros", file.sms_prices_micros)?;
        pumping.spend.country_budgets_micros = by_country(
            "country_daily_budgets_micros",
            file.country_daily_budgets_micros,
        )?;
        if pumping.spend.global_budget_micros == Some(0)
            || pumping
                .spend
                .country_budgets_micros
                .values()
                .any(|&b| b == 0)
            || pumping.spend.default_country_budget_micros == Some(0)
        {
            return Err(bad(
                "daily_budget_micros",
                "a budget of 0 would stop every send; leave it out for no budget",
            ));
        }
        Ok(Self {
            listen,
            data_dir,
            database,
            postgres,
            sms_sink,
            log_format,
            binding_window_seconds,
            outbox_max_attempts,
            durability,
            counters,
            outbox_lease_seconds,
            pumping,
            file: path,
        })
    }
}

/// A table keyed by country calling code (`"44"`), as the file gives it.
fn by_country(
    key: &'static str,
    table: Option<std::collections::BTreeMap<String, u64>>,
) -> Result<std::collections::HashMap<u16, u64>, ConfigError> {
    table
        .unwrap_or_default()
        .into_iter()
        .map(|(cc, v)| match cc.parse::<u16>() {
            Ok(n) if (1..=999).contains(&n) => Ok((n, v)),
            _ => Err(bad(
                key,
                format!("`{cc}` is not a country calling code (1 to 999)"),
            )),
        })
        .collect()
}

fn read_file(p: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(p)
        .map_err(|e| bad("config", format!("cannot read {}: {e}", p.display())))?;
    toml::from_str(&text).map_err(|e| bad("config", format!("{}: {}", p.display(), e.message())))
}

fn parse_database_url(url: &str) -> Result<DatabaseUrl, ConfigError> {
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let path = rest.strip_prefix("//").unwrap_or(rest);
        if path.is_empty() {
            return Err(bad(
                "database_url",
                "sqlite: needs a file path, e.g. sqlite:./ringfence-data/ringfence.db",
            ));
        }
        return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
    }
    let scheme = url.split(':').next().unwrap_or("");
    if scheme == "postgres" || scheme == "postgresql" {
        return Ok(DatabaseUrl::Postgres(url.to_owned()));
    }
    Err(bad(
        "database_url",
        "expected sqlite:PATH or postgres://USER@HOST/DB",
    ))
}

/// A commented example file, printed by `ringfence config example`.
pub const EXAMPLE: &str = r#"# ringfence.toml — every key is optional; RINGFENCE_<KEY> environment variables and
# --<key> flags override what is written here.

# Address of the HTTP API.
listen = "127.0.0.1:8080"

# Holds the SQLite database and, unless given through the environment, the secrets
# (secrets/kek, secrets/blind_index_key, secrets/code_pepper; mode 0600).
data_dir = "./ringfence-data"

# sqlite:PATH (default: <data_dir>/ringfence.db) or postgres://USER:PASSWORD@HOST/DB
# for several instances sharing one database.
# database_url = "sqlite:./ringfence-data/ringfence.db"

# PostgreSQL only: the connections this instance keeps (each kind of batched write uses
# one or two at a time; reads take the rest), and how long a statement may run before
# the server cancels it and the request answers 503 `unavailable`.
database_pool_size = 16
database_statement_timeout_ms = 5000

# Where messages go: "console" (development) or "file:PATH" (one JSON object per line).
sms_sink = "console"

# "pretty" or "json" (default: json when stdout is not a terminal).
# log_format = "json"

# Seconds after approval during which a verification may be bound to an account.
binding_window_seconds = 900

# Delivery attempts per message before it is marked failed.
outbox_max_attempts = 5

# Seconds a claimed message stays with the instance that claimed it; after that (the
# instance died mid-send) another instance sends it, as a new attempt.
outbox_lease_seconds = 30

# When a write is acknowledged. "full": only once it is on disk (survives a power
# cut). "normal": once the operating system has it (survives a crash of ringfence;
# a power cut or kernel crash may lose the last ~100 ms of acknowledged writes), for
# more throughput on disks whose flushes are slow. See docs/operations.md.
durability = "full"

# Counters for metering and rate limits: "memory" (one instance) or a Redis URL shared by
# every instance, e.g. "redis://127.0.0.1:6379". Sending fails closed (503) while Redis
# is unreachable; checks keep working.
counters_url = "memory"

# The SMS-pumping detector: "enforce" shadow-blocks prefixes whose codes nobody enters
# (answered as if sent, nothing sent); "monitor" only reports them. See docs/abuse.md.
pumping_mode = "enforce"

# Price of one message in millionths of the currency unit (50000 = 0.05), for the spend
# breaker and the statistics' cost estimates.
sms_price_micros = 50000

# Spend per UTC day after which sends are shadow-blocked until the day ends: in all, and
# per country calling code (millionths of the currency unit). No budget when absent.
# daily_budget_micros = 500000000
# country_daily_budget_micros = 100000000

# Prices and budgets per country calling code (this file only), overriding the above.
# [sms_prices_micros]
# "1" = 8000
# "44" = 40000
# [country_daily_budgets_micros]
# "44" = 200000000
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_pumping_detector_and_the_spend_breaker_are_configured() {
        let base = || Overrides {
            data_dir: Some("d".into()),
            ..Default::default()
        };
        let c = Config::resolve(&base(), true).unwrap();
        assert_eq!(c.pumping.mode, crate::abuse::pumping::Mode::Enforce);
        assert_eq!(c.pumping.spend.default_price_micros, 50_000);
        assert_eq!(c.pumping.spend.global_budget_micros, None);
        let c = Config::resolve(
            &Overrides {
                pumping_mode: Some("monitor".into()),
                sms_price_micros: Some(8_000),
                daily_budget_micros: Some(1_000_000),
                country_daily_budget_micros: Some(200_000),
                ..base()
            },
            true,
        )
        .unwrap();
        assert_eq!(c.pumping.mode, crate::abuse::pumping::Mode::Monitor);
        assert_eq!(c.pumping.spend.price_micros(44), 8_000);
        assert_eq!(c.pumping.spend.global_budget_micros, Some(1_000_000));
        assert_eq!(c.pumping.spend.country_budget_micros(44), Some(200_000));
        let e = Config::resolve(
            &Overrides {
                pumping_mode: Some("off".into()),
                ..base()
            },
            true,
        )
        .unwrap_err();
        assert_eq!(e.key, "pumping_mode");
        let e = Config::resolve(
            &Overrides {
                daily_budget_micros: Some(0),
                ..base()
            },
            true,
        )
        .unwrap_err();
        assert_eq!(e.key, "daily_budget_micros");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ringfence.toml");
        std::fs::write(
            &file,
            "[sms_prices_micros]\n\"44\" = 40000\n[country_daily_budgets_micros]\n\"1\" = 900\n",
        )
        .unwrap();
        let c = Config::resolve(
            &Overrides {
                config: Some(file.clone()),
                ..base()
            },
            true,
        )
        .unwrap();
        assert_eq!(c.pumping.spend.price_micros(44), 40_000);
        assert_eq!(
            c.pumping.spend.price_micros(33),
            50_000,
            "the default price"
        );
        assert_eq!(c.pumping.spend.country_budget_micros(1), Some(900));
        std::fs::write(&file, "[sms_prices_micros]\n\"UK\" = 1\n").unwrap();
        let e = Config::resolve(
            &Overrides {
                config: Some(file),
                ..base()
            },
            true,
        )
        .unwrap_err();
        assert_eq!(e.key, "sms_prices_micros");
    }

    #[test]
    fn defaults_apply_without_file_or_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let o = Overrides {
            config: Some(dir.path().join("none.toml")),
            ..Default::default()
        };
        assert!(Config::resolve(&o, true)
            .unwrap_err()
            .to_string()
            .contains("cannot read"));
        let c = Config::resolve(
            &Overrides {
                data_dir: Some("d".into()),
                ..Default::default()
            },
            true,
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            c.database,
            DatabaseUrl::Sqlite(PathBuf::from("d/ringfence.db"))
        );
        assert_eq!(c.sms_sink, SinkSpec::Console);
        assert_eq!(c.log_format, LogFormat::Pretty);
    }

    #[test]
    fn flags_override_the_file_and_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("r.toml");
        std::fs::write(
            &f,
            "listen = \"127.0.0.1:9000\"\nsms_sink = \"file:/tmp/x.jsonl\"\n",
        )
        .unwrap();
        let o = Overrides {
            config: Some(f.clone()),
            listen: Some("127.0.0.1:9100".into()),
            ..Default::default()
        };
        let c = Config::resolve(&o, false).unwrap();
        assert_eq!(c.listen.port(), 9100);
        assert_eq!(c.sms_sink, SinkSpec::File("/tmp/x.jsonl".into()));
        assert_eq!(c.log_format, LogFormat::Json);

        std::fs::write(&f, "lisen = \"x\"\n").unwrap();
        let e = Config::resolve(
            &Overrides {
                config: Some(f.clone()),
                ..Default::default()
            },
            true,
        )
        .unwrap_err();
        assert!(e.to_string().contains("lisen"), "{e}");
        let e = Config::resolve(
            &Overrides {
                listen: Some("nope".into()),
                ..Default::default()
            },
            true,
        )
        .unwrap_err();
        assert_eq!(e.key, "listen");
        let e = Config::resolve(
            &Overrides {
                sms_sink: Some("smtp".into()),
                ..Default::default()
            },
            true,
        )
        .unwrap_err();
        assert_eq!(e.key, "sms_sink");
        let e = Config::resolve(
            &Overrides {
                database_url: Some("mysql://x".into()),
                ..Default::default()
            },
            true,
        )
        .unwrap_err();
        assert_eq!(e.key, "database_url");
    }

    #[test]
    fn postgres_pool_and_timeout_have_defaults_and_bounds() {
        let c = Config::resolve(&Overrides::default(), true).unwrap();
        assert_eq!(c.postgres.max_connections, 16);
        assert_eq!(c.postgres.statement_timeout, Duration::from_secs(5));
        let c = Config::resolve(
            &Overrides {
                database_pool_size: Some(4),
                database_statement_timeout_ms: Some(1500),
                ..Default::default()
            },
            true,
        )
        .unwrap();
        assert_eq!(c.postgres.max_connections, 4);
        assert_eq!(c.postgres.statement_timeout, Duration::from_millis(1500));
        for (o, key) in [
            (
                Overrides {
                    database_pool_size: Some(0),
                    ..Default::default()
                },
                "database_pool_size",
            ),
            (
                Overrides {
                    database_statement_timeout_ms: Some(10),
                    ..Default::default()
                },
                "database_statement_timeout_ms",
            ),
        ] {
            assert_eq!(Config::resolve(&o, true).unwrap_err().key, key);
        }
    }

    #[test]
    fn example_parses() {
        let f: FileConfig = toml::from_str(EXAMPLE).unwrap();
        assert_eq!(f.listen.as_deref(), Some("127.0.0.1:8080"));
    }
}
