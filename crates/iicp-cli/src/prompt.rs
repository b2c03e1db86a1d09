//! Interactive input: questions with defaults (for `init`) and passphrases (for
//! `operator encrypt|decrypt`). Passphrases come from `IICP_OPERATOR_PASSPHRASE`, else
//! a no-echo prompt on the terminal, else one line of standard input when it is not a
//! terminal (scripts). They live in zeroizing buffers and are never printed.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use anyhow::{bail, Context as _};
use zeroize::Zeroizing;

/// The environment variable holding the operator passphrase.
pub(crate) const PASSPHRASE_ENV: &str = "IICP_OPERATOR_PASSPHRASE";

/// Whether standard input is a terminal.
pub(crate) fn interactive() -> bool {
    std::io::stdin().is_terminal()
}

/// Asks `question` on stderr and reads one line; empty input (or end of input) takes
/// `default`.
pub(crate) fn ask(question: &str, default: &str) -> anyhow::Result<String> {
    let mut err = std::io::stderr();
    if default.is_empty() {
        write!(err, "{question}: ")?;
    } else {
        write!(err, "{question} [{default}]: ")?;
    }
    err.flush()?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading standard input")?;
    let answer = line.trim();
    Ok(if answer.is_empty() {
        default.to_owned()
    } else {
        answer.to_owned()
    })
}

/// Asks a yes/no question (default no).
pub(crate) fn confirm(question: &str) -> anyhow::Result<bool> {
    let a = ask(&format!("{question} (y/N)"), "")?;
    Ok(matches!(a.to_ascii_lowercase().as_str(), "y" | "yes"))
}

/// The operator passphrase: `IICP_OPERATOR_PASSPHRASE`, else a no-echo prompt (asked
/// twice when `confirm`), else a line of non-terminal standard input.
pub(crate) fn passphrase(confirm: bool) -> anyhow::Result<Zeroizing<String>> {
    if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
        if !p.is_empty() {
            return Ok(Zeroizing::new(p));
        }
    }
    let pass = if interactive() {
        let first = Zeroizing::new(
            rpassword::prompt_password("Operator passphrase: ")
                .context("reading the passphrase")?,
        );
        if confirm {
            let again = Zeroizing::new(
                rpassword::prompt_password("Repeat passphrase: ")
                    .context("reading the passphrase")?,
            );
            if *first != *again {
                bail!("the passphrases do not match");
            }
        }
        first
    } else {
        let mut line = Zeroizing::new(String::new());
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the passphrase from standard input")?;
        Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_owned())
    };
    if pass.is_empty() {
        return Err(crate::exit::UsageError(format!(
            "no passphrase: set {PASSPHRASE_ENV} or run in a terminal"
        ))
        .into());
    }
    Ok(pass)
}
