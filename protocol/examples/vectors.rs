//! Prints the golden byte vectors (one sample frame of every type) as the
//! Markdown table used in SPEC.md.
use shellper_protocol::samples::{hex, sample_frames};

fn main() {
    println!("| type | name | frame bytes (hex) |");
    println!("|---|---|---|");
    for (name, frame) in sample_frames() {
        let bytes = frame.to_bytes().expect("samples encode");
        println!(
            "| 0x{:02x} | {} | `{}` |",
            frame.type_byte(),
            name,
            hex(&bytes)
        );
    }
}
