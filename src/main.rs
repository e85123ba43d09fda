//! The `ringfence` binary: one executable for the service, its operator tasks and the
//! phone-number tools. All logic lives in the library; this file only hands over.

fn main() -> std::process::ExitCode {
    ringfence::cli::main()
}
