//! Command-line edge: parses arguments with clap and hands over to the domain.
//! `anyhow` is allowed here, nowhere below.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod phone;

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
    /// Validate, normalise and classify phone numbers.
    #[command(subcommand)]
    Phone(phone::PhoneCommand),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
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
