//! `shellper`: see the library docs and `shellper --help`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(shellper::app::main_entry(args));
}
