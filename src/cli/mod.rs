//! Command-line edge: parses arguments with clap and hands over to the domain.
//! `anyhow` is allowed here, nowhere below.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod demo;
pub mod keys;
pub mod log_fields;
pub mod migrate;
pub mod phone;
pub mod serve;

#[derive(Debug, Parser)]
#[command(
    name = "ringfence",
    version,
    about = "Phone verification, anti-abuse and privacy rights in one binary"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (embedded SQLite and a console message sink by default).
    Serve(crate::config::Overrides),
    /// Walk through a sign-up against a temporary in-process instance.
    Demo,
    /// Manage API keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Copy a SQLite database into an empty PostgreSQL database and verify the copy.
    MigrateStore(migrate::MigrateArgs),
    /// Show or check configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Validate, normalise and classify phone numbers.
    #[command(subcommand)]
    Phone(phone::PhoneCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print a commented example ringfence.toml.
    Example,
    /// Resolve defaults, file, environment and flags, and print the result.
    Check(Box<crate::config::Overrides>),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(o) => serve::run(o),
        Command::Demo => demo::run(),
        Command::Keys(cmd) => keys::run(cmd),
        Command::MigrateStore(args) => migrate::run(args),
        Command::Config(ConfigCommand::Example) => {
            print!("{}", crate::config::EXAMPLE);
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check(o)) => crate::config::Config::resolve(&o, true)
            .map(|c| {
                println!("{c:#?}");
                ExitCode::SUCCESS
            })
            .map_err(Into::into),
        Command::Phone(cmd) => phone::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
