//! The `leasectl` binary: parses the command line, sets up logging on
//! stderr (RUST_LOG), runs the command and maps the outcome to the
//! documented exit codes (see `leasectl --help`).

use clap::{CommandFactory, Parser};
use leasectl::cli::{Cli, Command, EXIT_ERROR};

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Command::Completions { shell } = &cli.command {
        clap_complete::generate(
            *shell,
            &mut Cli::command(),
            "leasectl",
            &mut std::io::stdout(),
        );
        return;
    }
    eprintln!("leasectl: not implemented yet");
    std::process::exit(EXIT_ERROR);
}
