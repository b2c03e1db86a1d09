//! `iicp-cli`: the operator CLI (`iicp`, alias `iicp-node`).
//!
//! Thin by design (DESIGN.md §2, L4): each subcommand parses its flags (clap, with the
//! environment variables of SEED-SDK.md §2.2 as fallbacks: flag > env > default), calls
//! one library entry point, prints, and returns an exit code — 0 success, 2 usage or
//! invalid configuration (before any network I/O), 1 runtime failure. Logs go to stderr
//! through `tracing` (`-v`, `-q`, `RUST_LOG`); machine output (`--json`) to stdout.
//! No protocol, HTTP, CBOR or NAT logic lives here.
#![forbid(unsafe_code)]
// printing is this crate's job
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches as _, Parser, Subcommand};

mod cmd;
mod exit;
mod logfile;
mod prompt;
mod signal;

/// Exit code for usage errors and invalid configuration.
pub const EXIT_USAGE: u8 = 2;
/// Exit code for runtime failures.
pub const EXIT_FAILURE: u8 = 1;

/// The command line.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "IICP: route AI tasks by intent across a mesh of provider nodes",
    propagate_version = true
)]
struct Cli {
    /// More log output (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Runtime threads: 0 = the default — for `serve` the CPU cores less one (at least
    /// one; on two cores a single thread, the lowest CPU per task when the node shares
    /// its cores with the model server: ADR 0021, docs/PERFORMANCE.md), for other
    /// commands one per core; 1 = a single-threaded runtime.
    #[arg(
        long,
        global = true,
        env = "IICP_WORKER_THREADS",
        default_value_t = 0,
        value_parser = clap::value_parser!(u16).range(0..=1024)
    )]
    worker_threads: u16,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a provider node in front of a model server, registered with a directory.
    Serve(Box<cmd::serve::Args>),
    /// Create the operator identity and a saved node profile.
    Init(cmd::init::Args),
    /// The operator identity: show, rename, encrypt, decrypt.
    Operator(cmd::operator::Args),
    /// Send a chat through the mesh and print the answer.
    Chat(cmd::chat::Args),
    /// List the nodes a directory offers for an intent.
    Discover(cmd::discover::Args),
    /// Check backend, directory, port, NAT and operator identity.
    Doctor(cmd::doctor::Args),
    /// List the saved node profiles (~/.iicp/nodes) and which of them are serving.
    List(cmd::list::Args),
    /// Show a node's credit ledger from its directory.
    Credits(cmd::credits::Args),
    /// Check a serving node's runtime-health snapshot (exit 0 healthy, 1 unhealthy, 2 unknown).
    Healthcheck(cmd::healthcheck::Args),
    /// Start a private mesh on this machine (directory + nodes) and chat through it.
    Dev(cmd::dev::Args),
    /// Run a saved node unattended under systemd (user unit) or launchd: install,
    /// status, restart, uninstall.
    Service(cmd::service::Args),
    /// Node profile configuration: its JSON schema, a field-level check, and the
    /// effective settings of `serve` with their sources.
    Config(cmd::config::Args),
    /// Run the embedded IICP directory (a private mesh needs no outside service).
    Directory(cmd::directory::Args),
    /// Serve the mesh as a local OpenAI-compatible endpoint (port 9483).
    Proxy(cmd::proxy::Args),
    /// Print a shell completion script.
    Completion(cmd::completion::Args),
    /// Load-test an IICP node over HTTP or the native transport.
    Bench(cmd::bench::Args),
    /// Measure what the proxy costs: the same chats through it and through the client.
    BenchProxy(cmd::bench_proxy::Args),
    /// Measure what streaming costs: time to the first token through the mesh against
    /// the model server's own, and the node's CPU per streamed chunk.
    BenchStream(cmd::bench_stream::Args),
    /// Run a fast OpenAI-compatible stub model server (a benchmark backend).
    StubModel(cmd::stub_model::Args),
}

/// The name the program was invoked by: the file name of `argv[0]` (a symlink
/// `iicp-node` to `iicp` calls itself `iicp-node` in `--version`, usage and
/// completions), else `default` when that is missing or not a plain short name.
fn program_name(argv0: Option<&std::ffi::OsStr>, default: &'static str) -> String {
    argv0
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|f| f.to_str())
        .map(|n| n.strip_suffix(".exe").unwrap_or(n))
        .filter(|n| {
            !n.is_empty()
                && n.len() <= 64
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c))
        })
        .unwrap_or(default)
        .to_owned()
}

/// The runtime for `command` with `--worker-threads` `threads`: a node (`serve`)
/// defaults to the cores less one (ADR 0021), everything else to one worker per core.
fn runtime_for(command: &Command, threads: u16) -> tokio::runtime::Builder {
    let threads = match usize::from(threads) {
        0 if !matches!(command, Command::Serve(_)) => {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        }
        n => n,
    };
    iicp_node::runtime::builder(threads)
}

/// Parses the command line and runs it; `bin` names the program when `argv[0]` does
/// not.
pub fn run(bin: &'static str) -> ExitCode {
    let argv0 = std::env::args_os().next();
    // clap wants a 'static name; one short string per process
    let bin: &'static str = Box::leak(program_name(argv0.as_deref(), bin).into_boxed_str());
    let parsed = Cli::command()
        .name(bin)
        .bin_name(bin)
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // the dev mesh prints its own summary; its expected warnings (loopback endpoints,
    // plaintext native) would only be noise there
    let quiet_default = matches!(
        cli.command,
        Command::Dev(_) | Command::BenchProxy(_) | Command::BenchStream(_)
    );
    init_logging(cli.verbose, cli.quiet, quiet_default);
    let runtime = match runtime_for(&cli.command, cli.worker_threads).build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ERROR: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => cmd::serve::run(*args).await,
            Command::Init(args) => cmd::init::run(args),
            Command::Operator(args) => cmd::operator::run(args).await,
            Command::Chat(args) => cmd::chat::run(args).await,
            Command::Discover(args) => cmd::discover::run(args).await,
            Command::Doctor(args) => cmd::doctor::run(args).await,
            Command::List(args) => cmd::list::run(args),
            Command::Credits(args) => cmd::credits::run(args).await,
            Command::Healthcheck(args) => cmd::healthcheck::run(args),
            Command::Dev(args) => cmd::dev::run(args).await,
            Command::Service(args) => cmd::service::run(args),
            Command::Config(args) => cmd::config::run(args, matches.subcommand_matches("config")),
            Command::Directory(args) => cmd::directory::run(args).await,
            Command::Proxy(args) => cmd::proxy::run(args).await,
            Command::Bench(args) => cmd::bench::run(args).await,
            Command::BenchProxy(args) => cmd::bench_proxy::run(args).await,
            Command::BenchStream(args) => cmd::bench_stream::run(args).await,
            Command::StubModel(args) => cmd::stub_model::run(args).await,
            Command::Completion(args) => {
                cmd::completion::run(args, bin, &mut Cli::command().name(bin))
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<cmd::Exit>().is_some() => {
            ExitCode::from(e.downcast_ref::<cmd::Exit>().map_or(EXIT_FAILURE, |x| x.0))
        }
        Err(e) => {
            let code = e
                .downcast_ref::<cmd::UsageError>()
                .map_or(EXIT_FAILURE, |_| EXIT_USAGE);
            eprintln!("ERROR: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn init_logging(verbose: u8, quiet: bool, quiet_default: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) if quiet_default => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = |default: &str| {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
    };
    use std::io::IsTerminal as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let ansi = std::io::stderr().is_terminal();
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .with_filter(filter(default));
    // `serve --log-dir`: the same log at info level or more, whatever -q says
    let file = tracing_subscriber::fmt::layer()
        .with_writer(logfile::FileSlot)
        .with_target(false)
        .with_ansi(false)
        .with_filter(filter(if verbose == 0 { "info" } else { default }));
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::{program_name, runtime_for, Cli};
    use clap::Parser as _;
    use std::ffi::OsStr;

    #[test]
    fn program_name_is_argv0_file_name() {
        let name = |a: &str| program_name(Some(OsStr::new(a)), "iicp");
        assert_eq!(name("/usr/local/bin/iicp-node"), "iicp-node");
        assert_eq!(name("iicp"), "iicp");
        assert_eq!(name("./bin/my-iicp"), "my-iicp");
        assert_eq!(name("C:/x/iicp-node.exe"), "iicp-node");
        assert_eq!(name("/weird/na me"), "iicp");
        assert_eq!(name("/"), "iicp");
        assert_eq!(name(&"x".repeat(65)), "iicp");
        assert_eq!(program_name(None, "iicp-node"), "iicp-node");
    }

    #[test]
    fn serve_leaves_a_core_and_other_commands_take_them_all() {
        let cli = |args: &[&str]| Cli::try_parse_from(args).unwrap();
        let workers = |c: Cli| {
            runtime_for(&c.command, c.worker_threads)
                .build()
                .unwrap()
                .metrics()
                .num_workers()
        };
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let serve = ["iicp", "serve", "--backend-url", "http://127.0.0.1:1/v1"];
        assert_eq!(workers(cli(&serve)), cores.saturating_sub(1).max(1));
        assert_eq!(workers(cli(&["iicp", "list"])), cores);
        // an explicit count wins for every command
        let mut three = vec!["iicp", "--worker-threads", "3"];
        three.extend_from_slice(&serve[1..]);
        assert_eq!(workers(cli(&three)), 3);
        assert_eq!(workers(cli(&["iicp", "--worker-threads", "1", "list"])), 1);
    }
}
