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
    tower_client::cli::init_logging();
    if let Command::Completions { shell } = &cli.command {
        clap_complete::generate(
            *shell,
            &mut Cli::command(),
            "leasectl",
            &mut std::io::stdout(),
        );
        return;
    }
    if let Command::Man { dir } = &cli.command {
        std::process::exit(man(dir.as_deref()));
    }
    // One thread: every command is a bounded sweep of sockets and /proc
    // (the /proc walks on the blocking pool). The current-thread runtime
    // also keeps tokio's multi-thread scheduler, and with it libm, out of a
    // shellper built in the same `cargo build --workspace` (BENCHMARKS.md).
    let rt = match tokio::runtime::Builder::new_current_thread()
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

/// `leasectl man`: the man page from the clap definition, so it never
/// drifts from `--help`. With a directory: leasectl.1 and one page per
/// subcommand (leasectl-list.1, …), as packagers install them.
fn man(dir: Option<&std::path::Path>) -> i32 {
    let cmd = Cli::command();
    let result = match dir {
        Some(dir) => std::fs::create_dir_all(dir)
            .and_then(|()| tower_client::manpage::generate_tree(cmd, dir))
            .map(drop)
            .map_err(|e| format!("writing man pages into {}: {e}", dir.display())),
        None => tower_client::manpage::render(cmd, &mut std::io::stdout())
            .map_err(|e| format!("writing the man page: {e}")),
    };
    match result {
        Ok(()) => leasectl::cli::EXIT_OK,
        Err(e) => {
            eprintln!("leasectl: {e}");
            EXIT_ERROR
        }
    }
}
