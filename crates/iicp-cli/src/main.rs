//! `iicp`: the IICP operator CLI. All of it lives in the `iicp_cli` library so the
//! `iicp-node` alias binary runs exactly the same code.

fn main() -> std::process::ExitCode {
    iicp_cli::run("iicp")
}
