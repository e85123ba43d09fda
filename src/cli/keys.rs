//! `ringfence keys …`: API keys. A key is shown once, at creation, as the last line of
//! standard output; only the SHA-256 of its secret part is stored.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Subcommand;

use crate::clock::{rfc3339, Clock, SystemClock};
use crate::config::{Config, Overrides};
use crate::crypto;
use crate::store::{ApiKeyRecord, Scope};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key and print it (once).
    Create {
        #[command(flatten)]
        config: Overrides,
        /// A name saying who uses the key.
        #[arg(long)]
        name: String,
        /// `verify` (start/check verifications, bind accounts) or `admin` (services).
        /// Repeat for both. [default: verify]
        #[arg(long = "scope", value_parser = parse_scope)]
        scopes: Vec<Scope>,
    },
    /// List API keys (never their secrets).
    List {
        #[command(flatten)]
        config: Overrides,
    },
    /// Revoke an API key by id; running instances stop accepting it within seconds.
    Revoke {
        #[command(flatten)]
        config: Overrides,
        id: String,
    },
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    Scope::parse(s).ok_or_else(|| format!("unknown scope `{s}`: expected verify or admin"))
}

pub fn run(cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cmd {
            KeysCommand::Create { config, name, mut scopes } => {
                let config = Config::resolve(&config, std::io::stdout().is_terminal())?;
                if name.trim().is_empty() || name.len() > 100 {
                    anyhow::bail!("--name: 1 to 100 characters");
                }
                if scopes.is_empty() {
                    scopes.push(Scope::Verify);
                }
                scopes.dedup();
                let (store, _, _) = super::serve::open_store(&config).await?;
                let key = crypto::generate_api_key();
                store
                    .create_api_key(ApiKeyRecord {
                        id: key.id.clone(),
                        name: name.clone(),
                        secret_hash: key.secret_hash.to_vec(),
                        scopes: scopes.clone(),
                        created_at: SystemClock.now(),
                        revoked_at: None,
                    })
                    .await?;
                let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
                println!("Created API key {} ({name}; scopes: {}).", key.id, scopes.join(", "));
                println!("Store it now: it is shown only this once. Send it as `Authorization: Bearer <key>`.");
                println!("{}", key.key);
                Ok(ExitCode::SUCCESS)
            }
            KeysCommand::List { config } => {
                let config = Config::resolve(&config, true)?;
                let (store, _, _) = super::serve::open_store(&config).await?;
                for k in store.list_api_keys().await? {
                    let scopes: Vec<&str> = k.scopes.iter().map(|s| s.as_str()).collect();
                    let state = k.revoked_at.map_or("active".to_owned(), |t| format!("revoked {}", rfc3339(t)));
                    println!("{}\t{}\t{}\tcreated {}\t{}", k.id, k.name, scopes.join(","), rfc3339(k.created_at), state);
                }
                Ok(ExitCode::SUCCESS)
            }
            KeysCommand::Revoke { config, id } => {
                let config = Config::resolve(&config, true)?;
                let (store, _, _) = super::serve::open_store(&config).await?;
                if store.revoke_api_key(&id, SystemClock.now()).await? {
                    println!("revoked {id}");
                    Ok(ExitCode::SUCCESS)
                } else {
                    eprintln!("no active key with id {id}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    })
}
