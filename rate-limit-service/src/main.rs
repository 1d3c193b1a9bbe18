//! Placeholder binary: the service arrives with its own issue.
#![forbid(unsafe_code)]

fn main() {
    eprintln!("not implemented yet");
    std::process::exit(1);
}
