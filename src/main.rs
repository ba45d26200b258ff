use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = switchyard::cli::Cli::parse();
    cli.init_logging();
    match switchyard::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            switchyard::logging::fatal(&format_args!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}
