//! `ringfence phone …`: the phone-number layer as a command-line tool.

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum PhoneCommand {
    /// Check numbers given as arguments, on stdin, or in a CSV column.
    Check,
}

pub fn run(cmd: PhoneCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PhoneCommand::Check => anyhow::bail!("not implemented yet"),
    }
}
