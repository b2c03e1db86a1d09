//! `service install|status|restart|uninstall --node NAME`: run a saved node unattended
//! under the user's service manager (SEED-SDK.md §2.5 `service`).
//!
//! * systemd (Linux and other non-macOS Unix): a user unit
//!   `$XDG_CONFIG_HOME/systemd/user/iicp-node-NAME.service` (else
//!   `~/.config/systemd/user/`), `Type=notify` with the watchdog (`serve` sends
//!   `READY=1`, `STATUS=`, `WATCHDOG=1`, `STOPPING=1`), restarted on failure after
//!   [`RESTART_SEC`] with a start limit, hardening that a user manager can apply without
//!   privileges (seccomp-based settings and `NoNewPrivileges`, no mount namespaces).
//! * launchd (macOS): `~/Library/LaunchAgents/network.iicp.node.NAME.plist`, `RunAtLoad`,
//!   `KeepAlive` on failure, throttled to [`RESTART_SEC`], logs in the log directory.
//!
//! Both run `<this binary> serve --node NAME` in the foreground with `IICP_HOME` (the
//! configuration root this command used) and `IICP_LOG_DIR` (`<root>/logs/NAME`).
//! `install` refuses to replace a different existing file without `--force`, then runs
//! `systemctl --user daemon-reload` + `enable --now` (`launchctl bootstrap`) unless
//! `--no-start`, which only writes the file and prints the commands. `--dry-run` prints
//! the file and the commands and changes nothing. NAME must be a valid node name
//! (`^[a-z0-9][a-z0-9._-]{0,62}$`); `install` needs the saved profile except with
//! `--dry-run`. Exit codes: 0 done, 2 usage (bad name, no profile, a different file in
//! the way), 1 the service manager failed or is not usable (for example no systemd user
//! manager in a container: the message says so). `IICP_SYSTEMCTL` / `IICP_LAUNCHCTL`
//! name other binaries to call (tests, unusual installs).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use iicp_node::operator::Home;

use super::common::{home, operator_error};
use super::UsageError;

/// Seconds between a failure and the restart (systemd `RestartSec`, launchd
/// `ThrottleInterval`).
pub(crate) const RESTART_SEC: u32 = 10;
/// systemd restarts at most [`START_LIMIT_BURST`] times in this many seconds, then gives
/// up (the unit is `failed` until `service restart`).
pub(crate) const START_LIMIT_INTERVAL_SEC: u32 = 600;
/// See [`START_LIMIT_INTERVAL_SEC`].
pub(crate) const START_LIMIT_BURST: u32 = 5;
/// systemd `WatchdogSec`: `serve` pings every half of it.
pub(crate) const WATCHDOG_SEC: u32 = 30;

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Action {
    /// Write the unit and start it (enable at login).
    Install,
    /// Show the service manager's status of the unit.
    Status,
    /// Restart the service.
    Restart,
    /// Stop, disable and remove the unit.
    Uninstall,
}

/// The service manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Platform {
    /// launchd on macOS, else systemd.
    Auto,
    /// A systemd user unit.
    Systemd,
    /// A launchd user agent.
    Launchd,
}

/// Arguments of `service`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// install, status, restart or uninstall.
    #[arg(value_enum)]
    action: Action,
    /// Saved node name (created by `iicp init`).
    #[arg(long, env = "IICP_NODE_NAME", value_name = "NAME")]
    node: String,
    /// The service manager.
    #[arg(long, value_enum, default_value = "auto")]
    platform: Platform,
    /// Print what would be written and run; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// install: write the file only (print the commands that start it).
    #[arg(long)]
    no_start: bool,
    /// install: replace a different existing unit file.
    #[arg(long)]
    force: bool,
}

/// A unit to install: where it goes, what it holds, how the manager names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unit {
    pub(crate) platform: Platform,
    pub(crate) path: PathBuf,
    pub(crate) name: String,
    pub(crate) text: String,
    pub(crate) log_dir: PathBuf,
}

/// What a unit runs.
#[derive(Debug, Clone)]
pub(crate) struct Spec<'a> {
    pub(crate) node: &'a str,
    pub(crate) exe: &'a Path,
    pub(crate) home: &'a Path,
    pub(crate) log_dir: &'a Path,
}

fn resolve_platform(p: Platform) -> Platform {
    match p {
        Platform::Auto if cfg!(target_os = "macos") => Platform::Launchd,
        Platform::Auto => Platform::Systemd,
        other => other,
    }
}

/// The systemd unit name of node `name`.
pub(crate) fn systemd_name(node: &str) -> String {
    format!("iicp-node-{node}.service")
}

/// The launchd label of node `name`.
pub(crate) fn launchd_label(node: &str) -> String {
    format!("network.iicp.node.{node}")
}

/// One word of a systemd command line or assignment: double-quoted, with `\` and `"`
/// escaped, `%` doubled (specifiers) and, when `exec`, `$` doubled (variable
/// expansion). Control characters cannot be written.
fn systemd_quote(s: &str, exec: bool) -> Result<String, UsageError> {
    if s.chars().any(char::is_control) {
        return Err(UsageError(format!(
            "{s:?} has control characters and cannot be written to a unit"
        )));
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' if exec => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(out)
}

fn path_str<'p>(what: &str, p: &'p Path) -> Result<&'p str, UsageError> {
    p.to_str()
        .ok_or_else(|| UsageError(format!("the {what} path {} is not UTF-8", p.display())))
}

/// The systemd user unit of `spec`.
///
/// # Errors
/// A path that is not UTF-8 or has control characters.
pub(crate) fn render_systemd(spec: &Spec<'_>) -> Result<String, UsageError> {
    let exe = systemd_quote(path_str("binary", spec.exe)?, true)?;
    let env = |k: &str, v: &Path| -> Result<String, UsageError> {
        systemd_quote(&format!("{k}={}", path_str(k, v)?), false)
    };
    let node = spec.node;
    Ok(format!(
        "# Written by `iicp service install --node {node}`; `iicp service uninstall --node {node}` removes it.
[Unit]
Description=IICP provider node {node}
Documentation=https://github.com/iicp-rs/iicp
StartLimitIntervalSec={START_LIMIT_INTERVAL_SEC}
StartLimitBurst={START_LIMIT_BURST}

[Service]
Type=notify
NotifyAccess=main
ExecStart={exe} serve --node {node}
Environment={home}
Environment={log}
WatchdogSec={WATCHDOG_SEC}
Restart=on-failure
RestartSec={RESTART_SEC}
TimeoutStopSec=30
KillMode=mixed
UMask=0077
NoNewPrivileges=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
SystemCallArchitectures=native

[Install]
WantedBy=default.target
",
        home = env("IICP_HOME", spec.home)?,
        log = env("IICP_LOG_DIR", spec.log_dir)?,
    ))
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The launchd property list of `spec`.
///
/// # Errors
/// A path that is not UTF-8 or has control characters.
pub(crate) fn render_launchd(spec: &Spec<'_>) -> Result<String, UsageError> {
    let s = |what: &str, p: &Path| -> Result<String, UsageError> {
        let text = path_str(what, p)?;
        if text.chars().any(char::is_control) {
            return Err(UsageError(format!(
                "the {what} path has control characters"
            )));
        }
        Ok(xml_escape(text))
    };
    let exe = s("binary", spec.exe)?;
    let home = s("IICP_HOME", spec.home)?;
    let logs = s("log", spec.log_dir)?;
    let node = xml_escape(spec.node);
    let label = xml_escape(&launchd_label(spec.node));
    Ok(format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!-- Written by iicp service install; iicp service uninstall removes it. -->
<plist version="1.0">
<dict>
  <key>Label</key>
  <string>{label}</string>
  <key>ProgramArguments</key>
  <array>
    <string>{exe}</string>
    <string>serve</string>
    <string>--node</string>
    <string>{node}</string>
  </array>
  <key>EnvironmentVariables</key>
  <dict>
    <key>IICP_HOME</key>
    <string>{home}</string>
    <key>IICP_LOG_DIR</key>
    <string>{logs}</string>
  </dict>
  <key>RunAtLoad</key>
  <true/>
  <key>KeepAlive</key>
  <dict>
    <key>SuccessfulExit</key>
    <false/>
  </dict>
  <key>ThrottleInterval</key>
  <integer>{RESTART_SEC}</integer>
  <key>ProcessType</key>
  <string>Background</string>
  <key>StandardOutPath</key>
  <string>{logs}/stdout.log</string>
  <key>StandardErrorPath</key>
  <string>{logs}/stderr.log</string>
</dict>
</plist>
"#
    ))
}

/// The user's home directory.
fn user_home() -> anyhow::Result<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| UsageError("HOME is not set".to_owned()).into())
}

/// Where the unit of `node` goes on `platform`.
fn unit_path(platform: Platform, node: &str) -> anyhow::Result<PathBuf> {
    Ok(match platform {
        Platform::Launchd => user_home()?
            .join("Library/LaunchAgents")
            .join(format!("{}.plist", launchd_label(node))),
        _ => {
            let config = match std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
                Some(x) if Path::new(&x).is_absolute() => PathBuf::from(x),
                _ => user_home()?.join(".config"),
            };
            config.join("systemd/user").join(systemd_name(node))
        }
    })
}

/// The unit of saved node `node` under configuration root `home`.
fn unit(platform: Platform, node: &str, home: &Home) -> anyhow::Result<Unit> {
    let exe = std::env::current_exe().context("locating the iicp binary")?;
    let root = std::path::absolute(home.root()).context("resolving IICP_HOME")?;
    let log_dir = root.join("logs").join(node);
    let spec = Spec {
        node,
        exe: &exe,
        home: &root,
        log_dir: &log_dir,
    };
    let (text, name) = match platform {
        Platform::Launchd => (render_launchd(&spec)?, launchd_label(node)),
        _ => (render_systemd(&spec)?, systemd_name(node)),
    };
    Ok(Unit {
        platform,
        path: unit_path(platform, node)?,
        name,
        text,
        log_dir,
    })
}

/// The service manager could not be used at all.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ManagerUnavailable(String);

/// A service-manager command line.
struct Call {
    program: OsString,
    args: Vec<String>,
}

impl Call {
    fn new(program: OsString, args: &[&str]) -> Self {
        Self {
            program,
            args: args.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn shown(&self) -> String {
        let mut s = self.program.to_string_lossy().into_owned();
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }

    /// Runs it with inherited output; a non-zero exit is an error naming the command.
    fn run(&self) -> anyhow::Result<()> {
        let status = Command::new(&self.program)
            .args(&self.args)
            .status()
            .map_err(|e| {
                ManagerUnavailable(format!(
                    "cannot run {}: {e}",
                    self.program.to_string_lossy()
                ))
            })?;
        if !status.success() {
            anyhow::bail!(
                "`{}` failed ({})",
                self.shown(),
                status
                    .code()
                    .map_or_else(|| "killed".to_owned(), |c| format!("exit {c}"))
            );
        }
        Ok(())
    }
}

fn tool(var: &str, default: &str) -> OsString {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.into())
}

/// `systemctl --user …`.
fn systemctl(args: &[&str]) -> Call {
    let mut all = vec!["--user"];
    all.extend_from_slice(args);
    Call::new(tool("IICP_SYSTEMCTL", "systemctl"), &all)
}

/// `launchctl …`.
fn launchctl(args: &[&str]) -> Call {
    Call::new(tool("IICP_LAUNCHCTL", "launchctl"), args)
}

/// Whether the systemd user manager answers; the reason when not.
fn systemd_usable() -> Result<(), ManagerUnavailable> {
    let program = tool("IICP_SYSTEMCTL", "systemctl");
    let shown = program.to_string_lossy().into_owned();
    match Command::new(&program)
        .args(["--user", "show-environment"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => {
            let why = String::from_utf8_lossy(&o.stderr);
            let why = why.lines().next().unwrap_or("").trim();
            Err(ManagerUnavailable(format!(
                "the systemd user manager is not usable here (`{shown} --user` said: {why}); \
                 it runs in a desktop or SSH login session, or for a user with lingering \
                 enabled (`loginctl enable-linger $USER`); without it, run `iicp serve --node NODE` \
                 in the foreground"
            )))
        }
        Err(e) => Err(ManagerUnavailable(format!(
            "systemctl is not usable here ({shown}: {e}); run `iicp serve --node NODE` in the foreground"
        ))),
    }
}

/// Creates `dir` (and its parents) readable by the user only.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        b.mode(0o700);
    }
    b.create(dir)
}

/// The `gui/<uid>` domain of launchd, from the owner of a file the user wrote.
#[cfg(unix)]
fn launchd_domain(owned: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::MetadataExt as _;
    let uid = std::fs::metadata(owned)
        .with_context(|| format!("reading {}", owned.display()))?
        .uid();
    Ok(format!("gui/{uid}"))
}

#[cfg(not(unix))]
fn launchd_domain(_owned: &Path) -> anyhow::Result<String> {
    Err(ManagerUnavailable("launchd exists on macOS only".to_owned()).into())
}

/// The commands that start an installed unit.
fn start_calls(u: &Unit, domain: &str) -> Vec<Call> {
    match u.platform {
        Platform::Launchd => vec![launchctl(&["bootstrap", domain, &u.path.to_string_lossy()])],
        _ => vec![
            systemctl(&["daemon-reload"]),
            systemctl(&["enable", "--now", &u.name]),
        ],
    }
}

fn manager_error(e: ManagerUnavailable, node: &str) -> anyhow::Error {
    anyhow::anyhow!(e.0.replace("NODE", node))
}

fn check_usable(platform: Platform, node: &str) -> anyhow::Result<()> {
    if platform == Platform::Systemd {
        systemd_usable().map_err(|e| manager_error(e, node))?;
    }
    Ok(())
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let home = home()?;
    // validates the name (safe characters only) before it reaches a path or a unit
    let profile_path = home.node_path(&args.node).map_err(operator_error)?;
    let platform = resolve_platform(args.platform);
    let u = unit(platform, &args.node, &home)?;
    match args.action {
        Action::Install => install(&args, &u, &profile_path),
        Action::Status | Action::Restart => {
            let domain = match platform {
                Platform::Launchd if u.path.exists() => launchd_domain(&u.path)?,
                Platform::Launchd => "gui/$(id -u)".to_owned(),
                _ => String::new(),
            };
            let call = match (platform, args.action) {
                (Platform::Launchd, Action::Status) => {
                    launchctl(&["print", &format!("{domain}/{}", u.name)])
                }
                (Platform::Launchd, _) => {
                    launchctl(&["kickstart", "-k", &format!("{domain}/{}", u.name)])
                }
                (_, Action::Status) => systemctl(&["status", "--no-pager", &u.name]),
                _ => systemctl(&["restart", &u.name]),
            };
            if args.dry_run {
                println!("would run: {}", call.shown());
                return Ok(());
            }
            if !u.path.exists() {
                return Err(UsageError(format!(
                    "node {} is not installed as a service ({} does not exist); run `iicp service install --node {}`",
                    args.node,
                    u.path.display(),
                    args.node
                ))
                .into());
            }
            check_usable(platform, &args.node)?;
            call.run()
        }
        Action::Uninstall => uninstall(&args, &u),
    }
}

fn install(args: &Args, u: &Unit, profile: &Path) -> anyhow::Result<()> {
    if !profile.exists() {
        if !args.dry_run {
            return Err(UsageError(format!(
                "no saved node {:?} (expected {}); run `iicp init` first",
                args.node,
                profile.display()
            ))
            .into());
        }
        eprintln!(
            "NOTE: no saved node {:?} yet ({}): the service would fail until `iicp init` creates it",
            args.node,
            profile.display()
        );
    }
    let existing = std::fs::read_to_string(&u.path).ok();
    let same = existing.as_deref() == Some(u.text.as_str());
    if existing.is_some() && !same && !args.force {
        return Err(UsageError(format!(
            "{} exists with other contents; pass --force to replace it",
            u.path.display()
        ))
        .into());
    }
    // the launchd domain is the user's: the owner of the file once written; shown
    // before that as the shell computes it
    let calls = start_calls(u, "gui/$(id -u)");
    if args.dry_run {
        println!("would write {}:", u.path.display());
        print!("{}", u.text);
        println!("would create the log directory {}", u.log_dir.display());
        if !args.no_start {
            for c in &calls {
                println!("would run: {}", c.shown());
            }
        }
        return Ok(());
    }
    if same {
        println!("{} is up to date", u.path.display());
    } else {
        if let Some(dir) = u.path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&u.path, &u.text)
            .with_context(|| format!("writing {}", u.path.display()))?;
        println!("wrote {}", u.path.display());
    }
    private_dir(&u.log_dir).with_context(|| format!("creating {}", u.log_dir.display()))?;
    if args.no_start {
        println!("not started (--no-start); to start it:");
        for c in &calls {
            println!("  {}", c.shown());
        }
        return Ok(());
    }
    check_usable(u.platform, &args.node)
        .map_err(|e| e.context(format!("{} is written but not started", u.path.display())))?;
    let domain = match u.platform {
        Platform::Launchd => launchd_domain(&u.path)?,
        _ => String::new(),
    };
    for c in &start_calls(u, &domain) {
        c.run()?;
    }
    println!(
        "started {}; see `iicp service status --node {}`",
        u.name, args.node
    );
    Ok(())
}

fn uninstall(args: &Args, u: &Unit) -> anyhow::Result<()> {
    let stop = match u.platform {
        Platform::Launchd => {
            let domain = launchd_domain(&u.path).unwrap_or_else(|_| "gui/$(id -u)".to_owned());
            vec![launchctl(&["bootout", &format!("{domain}/{}", u.name)])]
        }
        _ => vec![systemctl(&["disable", "--now", &u.name])],
    };
    let reload = (u.platform == Platform::Systemd).then(|| systemctl(&["daemon-reload"]));
    if args.dry_run {
        for c in &stop {
            println!("would run: {}", c.shown());
        }
        println!("would remove {}", u.path.display());
        if let Some(r) = &reload {
            println!("would run: {}", r.shown());
        }
        return Ok(());
    }
    if !u.path.exists() {
        println!(
            "{} is not installed ({} does not exist)",
            u.name,
            u.path.display()
        );
        return Ok(());
    }
    // without a usable manager nothing runs under it: removing the file is enough
    let usable = match u.platform {
        Platform::Systemd => match systemd_usable() {
            Ok(()) => true,
            Err(e) => {
                eprintln!("NOTE: {}", manager_error(e, &args.node));
                false
            }
        },
        _ => true,
    };
    if usable {
        for c in &stop {
            c.run()?;
        }
    }
    std::fs::remove_file(&u.path).with_context(|| format!("removing {}", u.path.display()))?;
    println!("removed {}", u.path.display());
    if let (true, Some(r)) = (usable, reload) {
        r.run()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(exe: &'a Path, home: &'a Path, logs: &'a Path) -> Spec<'a> {
        Spec {
            node: "n1",
            exe,
            home,
            log_dir: logs,
        }
    }

    #[test]
    fn systemd_words_are_quoted_and_specifiers_escaped() {
        assert_eq!(
            systemd_quote("/opt/my iicp/100%/$HOME\\\"x", true).expect("ok"),
            "\"/opt/my iicp/100%%/$$HOME\\\\\\\"x\""
        );
        assert_eq!(systemd_quote("K=a%b$c", false).expect("ok"), "\"K=a%%b$c\"");
        assert!(systemd_quote("a\nb", false).is_err());
    }

    #[test]
    fn the_systemd_unit_runs_serve_in_the_foreground_with_notify_and_watchdog() {
        let (exe, home, logs) = (
            Path::new("/opt/i i/iicp"),
            Path::new("/h/.iicp"),
            Path::new("/h/.iicp/logs/n1"),
        );
        let text = render_systemd(&spec(exe, home, logs)).expect("unit");
        let lines: Vec<&str> = text.lines().collect();
        for want in [
            "Type=notify",
            "NotifyAccess=main",
            "ExecStart=\"/opt/i i/iicp\" serve --node n1",
            "Environment=\"IICP_LOG_DIR=/h/.iicp/logs/n1\"",
            "Environment=\"IICP_HOME=/h/.iicp\"",
            "Restart=on-failure",
            "WantedBy=default.target",
        ] {
            assert!(lines.contains(&want), "{want} missing:\n{text}");
        }
        assert!(lines.contains(&format!("WatchdogSec={WATCHDOG_SEC}").as_str()));
        assert!(lines.contains(&format!("RestartSec={RESTART_SEC}").as_str()));
        assert!(lines.contains(&format!("StartLimitBurst={START_LIMIT_BURST}").as_str()));
    }

    #[test]
    fn the_plist_escapes_xml() {
        let text = render_launchd(&spec(
            Path::new("/Apps/A&B <x>/iicp"),
            Path::new("/h"),
            Path::new("/h/logs/n1"),
        ))
        .expect("plist");
        assert!(text.contains("<string>/Apps/A&amp;B &lt;x&gt;/iicp</string>"));
        assert!(!text.contains("A&B"));
    }

    #[test]
    fn platform_auto_follows_the_os() {
        let want = if cfg!(target_os = "macos") {
            Platform::Launchd
        } else {
            Platform::Systemd
        };
        assert_eq!(resolve_platform(Platform::Auto), want);
        assert_eq!(resolve_platform(Platform::Launchd), Platform::Launchd);
        assert_eq!(systemd_name("n1"), "iicp-node-n1.service");
        assert_eq!(launchd_label("n1"), "network.iicp.node.n1");
    }
}
