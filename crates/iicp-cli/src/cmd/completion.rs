//! `completion bash|zsh|fish|powershell|elvish`.

use std::io::Write as _;

use clap_complete::Shell;

/// Arguments of `completion`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The shell.
    shell: Shell,
}

pub(crate) fn run(args: Args, bin: &str, cmd: &mut clap::Command) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, cmd, bin, &mut script);
    match std::io::stdout().write_all(&script) {
        // a closed pipe (`| head`) is not an error worth reporting
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
