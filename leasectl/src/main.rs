//! The `leasectl` binary: parses the command line, sets up logging on
//! stderr (RUST_LOG), runs the command and maps the outcome to the
//! documented exit codes (see `leasectl --help`).

use clap::{CommandFactory, Parser};
use leasectl::cli::{Cli, Command, EXIT_ERROR};
use leasectl::commands;

fn main() {
    // Like other Unix tools, die quietly on a closed pipe (`leasectl list |
    // head`) instead of reporting a write error.
    // SAFETY: called before any thread exists; SIG_DFL is a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
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
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("leasectl: cannot start the async runtime: {e}");
            std::process::exit(EXIT_ERROR);
        }
    };
    let code = match rt.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(e) => commands::report_error(&e),
    };
    // Background work (a blocked /proc read, a query past its deadline) must
    // not delay the exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(code);
}
