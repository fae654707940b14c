//! `leak-scan [--kill]`: the CI leak gate, run after the whole test suite.
//!
//! Prints every live process (zombies skipped, this process excluded) that
//! carries `SHELLPER_LEAK_TAG` in its environment or whose comm is one of our
//! binaries (`shellper`, `minitower`, `leasectl`), one per line. With `--kill`
//! it SIGKILLs them too. Exit status: 1 if it found any, 0 if none, 2 on a
//! usage error.

use std::collections::BTreeMap;
use std::process::ExitCode;

/// Comms of the workspace binaries: any of them alive after the suite is a
/// leak even if it somehow lost its tag (a test that forgot `apply`).
const OUR_COMMS: [&str; 3] = ["shellper", "minitower", "leasectl"];

fn main() -> ExitCode {
    let mut kill = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--kill" => kill = true,
            "-h" | "--help" => {
                println!(
                    "usage: leak-scan [--kill]\nexit 1 if leaked processes were found, 0 if none"
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("leak-scan: unknown argument {other:?} (usage: leak-scan [--kill])");
                return ExitCode::from(2);
            }
        }
    }
    let found = scan();
    for s in found.values() {
        println!("{s}");
    }
    if kill {
        for _ in 0..20 {
            let now = scan();
            if now.is_empty() {
                break;
            }
            for s in now.values() {
                shellper_testkit::kill_survivor(s);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let left = scan();
        if !left.is_empty() {
            eprintln!(
                "leak-scan: {} process(es) still alive after SIGKILL",
                left.len()
            );
        }
    }
    if found.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("leak-scan: {} leaked process(es)", found.len());
        ExitCode::from(1)
    }
}

fn scan() -> BTreeMap<i32, shellper_testkit::Survivor> {
    let me = std::process::id() as i32;
    let mut out: BTreeMap<i32, _> = shellper_testkit::scan_tagged(None)
        .into_iter()
        .map(|s| (s.pid, s))
        .collect();
    for s in shellper_testkit::scan_comm(&OUR_COMMS) {
        if s.pid != me {
            out.entry(s.pid).or_insert(s);
        }
    }
    out
}
