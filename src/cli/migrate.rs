//! `ringfence migrate-store --from sqlite:PATH --to postgres://…`: moves a SQLite
//! deployment to PostgreSQL (see `store::migrate`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::crypto::{CodeHasher, KeyBytes};
use crate::store::postgres::{PgSettings, PgStore};

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The SQLite database: sqlite:PATH (stop the instance that uses it first).
    #[arg(long)]
    pub from: String,
    /// An empty PostgreSQL database: postgres://USER:PASSWORD@HOST/DB.
    #[arg(long)]
    pub to: String,
}

pub fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let source = args
        .from
        .strip_prefix("sqlite:")
        .map(|p| PathBuf::from(p.strip_prefix("//").unwrap_or(p)))
        .filter(|p| p.exists())
        .ok_or_else(|| anyhow::anyhow!("--from: expected sqlite:PATH of an existing database"))?;
    anyhow::ensure!(
        args.to.starts_with("postgres://") || args.to.starts_with("postgresql://"),
        "--to: expected a postgres:// URL"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // The copy never checks a code, so the store needs no real pepper.
        let codes = CodeHasher::new(KeyBytes::generate());
        let target = PgStore::connect(&args.to, codes, PgSettings::default()).await?;
        let show = std::io::stderr().is_terminal();
        let started = std::time::Instant::now();
        let reports = crate::store::migrate::migrate(&source, target.pool(), show).await?;
        for r in &reports {
            println!("{:>16}: {} rows copied and verified", r.table, r.rows);
        }
        println!(
            "migrated and verified in {:.1} s; start the instances with --database-url pointing at the new database and the same secrets",
            started.elapsed().as_secs_f64()
        );
        Ok(ExitCode::SUCCESS)
    })
}
