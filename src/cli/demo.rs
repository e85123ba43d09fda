pub fn run() -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("todo")
}
