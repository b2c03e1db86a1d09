//! `iicp`: the IICP operator CLI. Commands arrive with the CLI issue.
#![allow(clippy::print_stderr)]

fn main() -> std::process::ExitCode {
    eprintln!("iicp: not yet — the CLI lands with its own issue; see README.md");
    std::process::ExitCode::from(2)
}
