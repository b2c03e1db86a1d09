//! Who may call the node and how often (ADR 0008): `--auth`, `--node-token`,
//! `--rate-limit`, `--trust-forwarded-for`, resolved flag > environment > saved profile
//! (`auth/<name>.json`, written by `init`) > default (open, 120 tasks per 60 s).
//!
//! The access token is never printed. Given as a flag it is visible to every user of
//! the machine in `ps` and lands in shell history, so `serve` warns; through
//! `IICP_NODE_TOKEN` or the saved profile it is in no command line (serve starts no
//! other process). Token mode without a token is a usage error: `serve` never makes one
//! up, because a node locked with a credential nobody was told would refuse everyone;
//! `init --auth token` generates one and saves it (mode 0600) where the operator can
//! read it.

use std::time::Duration;

use iicp_node::operator::{Home, NodeAuth};
use iicp_node::{AuthMode, NodeBuilder, RateLimit};
use iicp_proto::secret::Secret;

use super::{operator_error, UsageError};

/// The environment variable of the access token.
pub(crate) const TOKEN_ENV: &str = "IICP_NODE_TOKEN";
/// Shortest access token accepted: a guessable credential is no lock.
pub(crate) const MIN_TOKEN_CHARS: usize = 16;
/// Longest access token accepted.
pub(crate) const MAX_TOKEN_CHARS: usize = 512;
/// Largest `--rate-limit` count.
const MAX_RATE: u32 = 1_000_000;
/// Longest `--rate-limit` window.
const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The access flags of `serve`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct AccessArgs {
    /// Who may submit tasks: open (anyone, rate-limited), token (callers present the
    /// node token), consumer (a directory-signed consumer token, else the node token)
    /// [default: the saved profile's, else open].
    #[arg(long, env = "IICP_NODE_AUTH", value_name = "MODE", value_parser = parse_auth)]
    pub(crate) auth: Option<AuthMode>,
    /// The token callers present in token mode (`Authorization: Bearer`,
    /// `auth.node_token`, native key 11). A flag is visible in `ps`: prefer the
    /// IICP_NODE_TOKEN environment variable or `iicp init --auth token`.
    #[arg(long, value_name = "TOKEN", value_parser = parse_secret)]
    pub(crate) node_token: Option<Secret>,
    /// Tasks accepted per caller (its Origin, else its address) and window, e.g. 120,
    /// 120/60s, 30/1m; 0 disables [default: 120/60s].
    #[arg(
        long,
        env = "IICP_TASK_RATE_LIMIT",
        value_name = "N[/WINDOW]",
        value_parser = parse_rate_limit
    )]
    pub(crate) rate_limit: Option<RateLimit>,
    /// Behind a reverse proxy: count tasks per client from X-Forwarded-For / Forwarded
    /// (the rightmost hop that is not a private address), not per proxy address. Only
    /// for a node that nothing but the proxy can reach.
    #[arg(long, env = "IICP_TRUST_FORWARDED_FOR", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) trust_forwarded_for: bool,
}

fn parse_auth(s: &str) -> Result<AuthMode, String> {
    s.parse()
        .map_err(|e: iicp_node::UnknownAuthMode| e.to_string())
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret::new(s))
}

/// `N` or `N/WINDOW` with WINDOW `<n>ms|s|m|h` (bare: seconds), 1 s to 24 h.
pub(crate) fn parse_rate_limit(s: &str) -> Result<RateLimit, String> {
    let (count, window) = match s.trim().split_once('/') {
        Some((c, w)) => (c.trim(), Some(w.trim())),
        None => (s.trim(), None),
    };
    let max_requests: u32 = count
        .parse()
        .ok()
        .filter(|n| *n <= MAX_RATE)
        .ok_or_else(|| format!("the count must be 0-{MAX_RATE} (0 disables the limit)"))?;
    let window = match window {
        None => RateLimit::default().window,
        Some(w) => parse_window(w).ok_or_else(|| {
            "the window must be a duration of 1s to 24h, like 60s, 1m or 1h".to_owned()
        })?,
    };
    Ok(RateLimit {
        max_requests,
        window,
    })
}

fn parse_window(w: &str) -> Option<Duration> {
    let split = w.find(|c: char| !c.is_ascii_digit()).unwrap_or(w.len());
    let (digits, unit) = w.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    };
    (Duration::from_secs(1)..=MAX_WINDOW)
        .contains(&d)
        .then_some(d)
}

/// Whether `token` may serve as an access token; the reason when not (never the
/// token itself).
pub(crate) fn check_token(token: &str) -> Result<(), String> {
    let n = token.chars().count();
    if !(MIN_TOKEN_CHARS..=MAX_TOKEN_CHARS).contains(&n) {
        return Err(format!(
            "the node token must be {MIN_TOKEN_CHARS}-{MAX_TOKEN_CHARS} characters (it has {n})"
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "the node token must be printable ASCII without spaces (it travels in an HTTP header)"
                .into(),
        );
    }
    Ok(())
}

/// A fresh access token: 32 random bytes as 64 hex digits.
pub(crate) fn generate_token() -> Secret {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, bytes.as_mut());
    let mut text = String::with_capacity(64);
    for b in bytes.iter() {
        text.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        text.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    Secret::new(text)
}

/// The access token from `IICP_NODE_TOKEN`, when set and not empty.
pub(crate) fn token_from_env() -> Option<Secret> {
    std::env::var(TOKEN_ENV)
        .ok()
        .filter(|t| !t.trim().is_empty())
        .map(Secret::new)
}

/// Printed when the token came as a flag.
/// The token the operator gives for `mode`: `--node-token` (warned about: it shows in
/// `ps`), else `IICP_NODE_TOKEN`; a usage error with the `open` mode, which would leave
/// the node open although the operator meant to lock it. The saved token is the caller's.
pub(crate) fn given_token(
    flag: Option<&Secret>,
    mode: AuthMode,
) -> Result<Option<Secret>, UsageError> {
    if flag.is_some() {
        warn_token_flag();
    }
    let given = flag
        .filter(|t| !t.is_empty())
        .cloned()
        .or_else(token_from_env);
    if given.is_some() && mode == AuthMode::Open {
        return Err(UsageError(format!(
            "a node token is set (--node-token or {TOKEN_ENV}) but the auth mode is open: \
             pass --auth token to lock the node, or unset the token"
        )));
    }
    Ok(given)
}

pub(crate) fn warn_token_flag() {
    eprintln!(
        "WARNING: --node-token is visible to other users in `ps` and in your shell history; \
         set {TOKEN_ENV} or save it with `iicp init --auth token` instead"
    );
}

/// The saved auth settings of node `name`.
pub(crate) fn load(home: Option<&Home>, name: Option<&str>) -> anyhow::Result<Option<NodeAuth>> {
    match (home, name) {
        (Some(h), Some(n)) => h.load_node_auth(n).map_err(operator_error),
        _ => Ok(None),
    }
}

/// The resolved access settings of a node.
pub(crate) struct Access {
    pub(crate) mode: AuthMode,
    token: Option<Secret>,
    rate_limit: RateLimit,
    trust_forwarded_for: bool,
}

impl Access {
    /// flag > env > saved > default, validated (usage errors). `directory`: whether the
    /// node has a directory to take consumer-token keys from.
    pub(crate) fn resolve(
        args: &AccessArgs,
        saved: Option<&NodeAuth>,
        directory: bool,
        origins: &mut super::Origins,
    ) -> anyhow::Result<Self> {
        let mode = origins
            .pick("auth", args.auth, saved.map(|s| s.mode))
            .unwrap_or_default();
        let given = given_token(args.node_token.as_ref(), mode)?;
        let token = origins.pick("node_token", given, saved.and_then(|s| s.api_token.clone()));
        if let Some(t) = &token {
            check_token(t.expose()).map_err(UsageError)?;
        }
        match mode {
            AuthMode::Token if token.is_none() => {
                return Err(UsageError(format!(
                    "--auth token needs the token callers must present: set {TOKEN_ENV} \
                     (or --node-token), or save one with `iicp init --node NAME --auth token` \
                     and serve with --node NAME"
                ))
                .into())
            }
            AuthMode::Consumer if token.is_none() && !directory => {
                return Err(UsageError(
                    "--auth consumer checks tokens the directory signs: it needs a directory \
                     (drop --skip-registration) or a node token to fall back to"
                        .into(),
                )
                .into())
            }
            _ => {}
        }
        Ok(Self {
            mode,
            token: if mode == AuthMode::Open { None } else { token },
            rate_limit: args.rate_limit.unwrap_or_default(),
            trust_forwarded_for: args.trust_forwarded_for,
        })
    }

    /// Configures `builder` with these settings.
    pub(crate) fn apply(&self, builder: NodeBuilder) -> NodeBuilder {
        let mut b = builder
            .auth(self.mode)
            .rate_limit(self.rate_limit)
            .trust_forwarded_for(self.trust_forwarded_for);
        if let Some(t) = &self.token {
            b = b.api_token(t.clone());
        }
        b
    }

    /// For a node that does not register: consumer mode then has no directory key to
    /// verify consumer tokens with, and without a node token it refuses every task.
    pub(crate) fn warn_without_directory(&self) {
        if self.mode == AuthMode::Consumer && self.token.is_none() {
            tracing::warn!(
                "--auth consumer on a node that does not register: no consumer token can be verified and no node token is set, so every task will be refused (set {TOKEN_ENV}, or register)"
            );
        }
    }

    /// Whether callers may present an access token (the token itself is never shown).
    pub(crate) fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The summary's `auth` value (no secret).
    pub(crate) fn describe(&self) -> String {
        match self.mode {
            AuthMode::Token => {
                "token (callers send the node token: Authorization: Bearer)".to_owned()
            }
            AuthMode::Consumer => format!(
                "consumer (a directory-signed X-IICP-Consumer-Token{})",
                if self.token.is_some() {
                    ", or the node token"
                } else {
                    ""
                }
            ),
            _ => "open (anyone may submit tasks; --auth token locks the node)".to_owned(),
        }
    }

    /// The summary's `rate limit` value.
    pub(crate) fn describe_limit(&self) -> String {
        let l = self.rate_limit;
        if l.max_requests == 0 {
            return "off".to_owned();
        }
        let w = l.window;
        let window = if w.subsec_millis() != 0 {
            format!("{}ms", w.as_millis())
        } else {
            format!("{}s", w.as_secs())
        };
        format!(
            "{} tasks per {window} per Origin, else per client address{}",
            l.max_requests,
            if self.trust_forwarded_for {
                " (from X-Forwarded-For / Forwarded)"
            } else {
                ""
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits() {
        let rl = |s: &str| parse_rate_limit(s).map(|r| (r.max_requests, r.window.as_secs()));
        assert_eq!(rl("120"), Ok((120, 60)));
        assert_eq!(rl("0"), Ok((0, 60)));
        assert_eq!(rl("30/1m"), Ok((30, 60)));
        assert_eq!(rl("5/10s"), Ok((5, 10)));
        assert_eq!(rl(" 5 / 2h "), Ok((5, 7200)));
        assert_eq!(rl("5/90"), Ok((5, 90)));
        assert_eq!(rl("5/1500ms"), Ok((5, 1)));
        for bad in [
            "",
            "x",
            "-1",
            "1.5",
            "5/",
            "5/0s",
            "5/500ms",
            "5/25h",
            "5/1d",
            "5/m",
            "2000000",
            "5/99999999999999999999h",
        ] {
            assert!(parse_rate_limit(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens() {
        assert!(check_token("0123456789abcdef").is_ok());
        for bad in ["short", "0123456789abcdef ghij", "0123456789abcdéf"] {
            let e = check_token(bad).expect_err(bad);
            assert!(!e.contains(bad), "{e}");
        }
        assert!(check_token(&"a".repeat(513)).is_err());
        let (a, b) = (generate_token(), generate_token());
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 64);
        assert!(check_token(a.expose()).is_ok());
    }
}
