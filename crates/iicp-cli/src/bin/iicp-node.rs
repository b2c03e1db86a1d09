//! `iicp-node`: alias of `iicp` so the seed SDK's command lines work verbatim.
#![allow(clippy::print_stderr)]

fn main() -> std::process::ExitCode {
    eprintln!("iicp-node: not yet — the CLI lands with its own issue; see README.md");
    std::process::ExitCode::from(2)
}
