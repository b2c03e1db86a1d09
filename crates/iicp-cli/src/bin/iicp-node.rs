//! `iicp-node`: alias of `iicp`, so the TypeScript SDK's documented command lines
//! (`iicp-node serve --model qwen2.5:0.5b`) work verbatim.

fn main() -> std::process::ExitCode {
    iicp_cli::run("iicp-node")
}
