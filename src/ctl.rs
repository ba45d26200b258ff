//! `switchyard ctl`: the admin API from the shell (stub until written).

use std::process::ExitCode;

/// Arguments of `switchyard ctl`.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The admin API's base URL.
    #[arg(long, default_value = "http://127.0.0.1:18080")]
    pub admin: String,
}

pub fn run(_args: CtlArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("ctl is not written yet")
}
