//! `bench`: closed-loop load against one IICP node over HTTP (`POST /v1/task`) or the
//! native transport (`iicp://`), with throughput, latency quantiles, errors by code and
//! the generator's own CPU cost (`iicp_testkit::load`).

use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iicp_testkit::load::{self, LoadConfig, Progress, Report, Stop, Target};

use super::UsageError;

/// Arguments of `bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The node: `http://host:port` (POST /v1/task), a full task URL, or
    /// `iicp://host:port` (native CALLs).
    #[arg(long)]
    target: String,
    /// Concurrent closed-loop workers.
    #[arg(short, long, default_value_t = 64)]
    concurrency: usize,
    /// How long to measure (`10s`, `500ms`, `2m`; a bare number is seconds).
    #[arg(short, long, default_value = "10s", value_parser = parse_duration, conflicts_with = "requests")]
    duration: Duration,
    /// Measure this many requests instead of a duration.
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Load sent before measuring starts, not counted.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Approximate size of each task's chat payload, in bytes.
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Intent URN of the tasks.
    #[arg(long, default_value = iicp_client::CHAT_INTENT)]
    intent: String,
    /// Deadline of one task.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    /// Native connections the CALLs are spread over (iicp:// targets).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Also report the CPU time and memory of this process (the node under test);
    /// repeatable.
    #[arg(long = "watch-pid")]
    watch_pids: Vec<u32>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let value: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration unit in {s:?} (use ms, s, m or h)"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=7.0 * 86400.0).contains(&secs) {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let target: Target = args
        .target
        .parse()
        .map_err(|e: load::TargetError| UsageError(e.to_string()))?;
    let mut config = LoadConfig::new(target);
    config.concurrency = args.concurrency;
    config.stop = match args.requests {
        Some(n) => Stop::Requests(n),
        None => Stop::Duration(args.duration),
    };
    config.warmup = args.warmup;
    config.payload_bytes = args.payload_bytes;
    config.intent = args.intent.clone();
    config.timeout = args.timeout;
    config.connections = args.connections;
    config.watch_pids = args.watch_pids.clone();

    let progress = Arc::new(Progress::new());
    let ticker = std::io::stderr()
        .is_terminal()
        .then(|| tokio::spawn(show_progress(Arc::clone(&progress), config.stop)));
    let result = load::run(&config, Arc::clone(&progress)).await;
    if let Some(t) = ticker {
        t.abort();
        eprint!("\r\x1b[2K");
    }
    let report = result.map_err(|e| match e {
        load::LoadError::Config(_) | load::LoadError::Intent(_) => {
            anyhow::Error::from(UsageError(e.to_string()))
        }
        other => anyhow::Error::from(other),
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    if report.ok == 0 {
        anyhow::bail!("no task succeeded");
    }
    Ok(())
}

async fn show_progress(progress: Arc<Progress>, stop: Stop) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut measured_since: Option<Instant> = None;
    loop {
        tick.tick().await;
        let mut err = std::io::stderr().lock();
        if !progress.measuring() {
            let _ = write!(err, "\r\x1b[2Kwarming up…");
            let _ = err.flush();
            continue;
        }
        let since = *measured_since.get_or_insert_with(Instant::now);
        let secs = since.elapsed().as_secs_f64().max(1e-3);
        let (ok, errors) = (progress.ok(), progress.errors());
        let done = match stop {
            Stop::Duration(d) => (secs / d.as_secs_f64()).min(1.0),
            Stop::Requests(n) => ((ok + errors) as f64 / n.max(1) as f64).min(1.0),
            _ => 0.0,
        };
        let width = 24usize;
        let filled = (done * width as f64) as usize;
        let _ = write!(
            err,
            "\r\x1b[2K[{}{}] {:>3.0}%  {ok} ok  {errors} errors  {:.0} tasks/s",
            "#".repeat(filled),
            "-".repeat(width - filled),
            done * 100.0,
            ok as f64 / secs
        );
        let _ = err.flush();
    }
}

pub(crate) fn ms(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || "-".to_owned(),
        |b| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
    )
}

fn print_report(r: &Report) {
    let conns = if r.transport == "native" {
        format!(", {} connection(s)", r.connections)
    } else {
        String::new()
    };
    println!(
        "target       {} ({}, {} workers{conns}, payload {} B)",
        r.target, r.transport, r.concurrency, r.payload_bytes
    );
    println!(
        "requests     {} ok, {} errors in {:.2} s",
        r.ok, r.errors, r.elapsed_s
    );
    println!("throughput   {:.1} tasks/s", r.throughput_rps);
    let l = &r.latency;
    println!(
        "latency      p50 {}   p90 {}   p99 {}   max {}   (mean {}, min {})",
        ms(l.p50_us),
        ms(l.p90_us),
        ms(l.p99_us),
        ms(l.max_us),
        ms(l.mean_us),
        ms(l.min_us)
    );
    for (kind, n) in &r.errors_by_kind {
        println!("error        {n:>8}  {kind}");
    }
    if let Some(g) = &r.generator {
        println!(
            "generator    {:.2} CPU-s ({:.3} CPU-s per 1000 tasks, {:.2} cores), RSS {}",
            g.cpu_seconds,
            g.cpu_seconds_per_1000,
            g.cores,
            mib(g.rss_bytes)
        );
    }
    for w in &r.watched {
        println!(
            "pid {:<8} {:.2} CPU-s ({:.3} CPU-s per 1000 tasks: {:.3} user + {:.3} system; {:.2} cores), RSS {}",
            w.pid,
            w.cpu_seconds,
            w.cpu_seconds_per_1000,
            w.user_seconds_per_1000,
            w.system_seconds_per_1000,
            w.cores,
            mib(w.rss_bytes)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("-1").is_err());
    }
}
