//! `shellper`: see the library docs and `shellper --help`.

fn main() {
    // Before any thread: fixed allocator thresholds, one arena, so memory
    // freed after a burst can go back to the system (issue 18).
    shellper_leased::mem::tune();
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(shellper::main_entry(args));
}
