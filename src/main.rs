//! The `ringfence` binary: one executable for the service, its operator tasks and the
//! phone-number tools. All logic lives in the library; this file only hands over.

/// mimalloc instead of the system allocator: the request path allocates many small,
/// short-lived buffers across threads, which glibc's allocator serves slower.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ringfence::cli::main()
}
