//! How settings are read and how a bad one is reported: durations, the listen address, and
//! errors that name what the user actually set (the environment variable beside the flag).

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, Parser};

use super::Cli;

/// The spelling every duration's error suggests, as the README writes them.
const DURATION_EXAMPLES: &str = "e.g. 500ms, 30s, 5m or 24h";

/// A duration: a number and a unit (`500ms`, `30s`, `5m`, `24h`, and the longer spellings
/// humantime accepts, `30sec` or `5min`).
pub fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|_| format!("not a duration: write a number and a unit, {DURATION_EXAMPLES}"))
}

/// An address to listen on: `IP:PORT`, or `HOST:PORT` resolved once at start (an IPv4
/// address preferred, as `localhost` usually means 127.0.0.1 to whoever writes it).
pub fn listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let unusable = || {
        "not an address: write IP:PORT or HOST:PORT, e.g. 127.0.0.1:8080, 0.0.0.0:8080 or localhost:8080"
            .to_string()
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(unusable)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(unusable());
    }
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| format!("the host name {host:?} does not resolve ({e}): use an IP address, e.g. 127.0.0.1:{port}"))?
        .collect();
    addrs
        .iter()
        .find(|addr| addr.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(unusable)
}

/// A request path of our own (the topic WebSocket's): `/` and then something, not a path
/// another endpoint already serves.
pub fn path(text: &str) -> Result<String, String> {
    const TAKEN: [&str; 7] = [
        "/cable",
        "/_broadcast",
        "/inspect",
        "/inspect/data",
        "/health",
        "/ready",
        "/metrics",
    ];
    if !text.starts_with('/') || text.len() < 2 || text.contains(['?', '#', ' ']) {
        return Err("not a path: write it with a leading slash, e.g. /ws".to_string());
    }
    if TAKEN.contains(&text) {
        return Err(format!(
            "{text} is another endpoint's path: choose another, e.g. /ws"
        ));
    }
    Ok(text.to_string())
}

/// Parses the command line and environment; on an error, says it naming both the flag and
/// its environment variable (a user who set `CABLE_PRESENCE_TTL` never typed
/// `--presence-ttl`), then exits as clap does.
pub fn parse() -> Cli {
    match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => {
            eprintln!("error: {}", explain(&e));
            std::process::exit(e.exit_code());
        }
    }
}

/// One line naming the setting (flag and variable) and what is wrong with it.
pub fn explain(e: &clap::Error) -> String {
    let context = |kind| e.get(kind).map(ContextValue::to_string);
    match e.kind() {
        ErrorKind::MissingRequiredArgument => {
            let missing = match e.get(ContextKind::InvalidArg) {
                Some(ContextValue::Strings(args)) => args.iter().map(|a| named(a)).collect(),
                _ => vec!["a setting".to_string()],
            };
            format!("{} must be set", missing.join(", "))
        }
        ErrorKind::InvalidValue | ErrorKind::ValueValidation => {
            let arg = context(ContextKind::InvalidArg).unwrap_or_default();
            let value = context(ContextKind::InvalidValue).unwrap_or_default();
            let reason = std::error::Error::source(e)
                .map(ToString::to_string)
                .or_else(|| {
                    context(ContextKind::ValidValue).map(|v| format!("expected one of {v}"))
                })
                .unwrap_or_else(|| "not a valid value".to_string());
            format!("invalid value {value:?} for {}: {reason}", named(&arg))
        }
        _ => {
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or_default();
            first.trim_start_matches("error: ").to_string()
        }
    }
}

/// `CABLE_PRESENCE_TTL (--presence-ttl)` for clap's `--presence-ttl <PRESENCE_TTL>`.
fn named(arg: &str) -> String {
    let long = arg.split_whitespace().next().unwrap_or(arg);
    let flag = long.trim_start_matches("--");
    let env = Cli::command().get_subcommands().find_map(|sub| {
        sub.get_arguments()
            .find(|a| a.get_long() == Some(flag))
            .and_then(|a| a.get_env())
            .map(|env| env.to_string_lossy().into_owned())
    });
    match env {
        Some(env) => format!("{env} (--{flag})"),
        None => long.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(args: &[&str]) -> String {
        let mut argv = vec!["cable-gateway"];
        argv.extend_from_slice(args);
        explain(&Cli::try_parse_from(argv).expect_err("refused"))
    }

    #[test]
    fn errors_name_the_variable_beside_the_flag() {
        let bad_ttl = error(&[
            "serve",
            "--database-url",
            "postgres://x/y",
            "--presence-ttl",
            "30x",
        ]);
        assert_eq!(
            bad_ttl,
            "invalid value \"30x\" for CABLE_PRESENCE_TTL (--presence-ttl): not a duration: \
             write a number and a unit, e.g. 500ms, 30s, 5m or 24h"
        );
        if std::env::var_os("DATABASE_URL").is_none() {
            assert_eq!(
                error(&["serve"]),
                "DATABASE_URL (--database-url) must be set"
            );
        }
        let bad_number = error(&[
            "serve",
            "--database-url",
            "x",
            "--max-subscriptions",
            "many",
        ]);
        assert!(
            bad_number.starts_with(
                "invalid value \"many\" for CABLE_MAX_SUBSCRIPTIONS (--max-subscriptions): "
            ),
            "{bad_number}"
        );
    }

    #[test]
    fn durations_take_the_readme_spelling_and_say_it() {
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(duration("30sec"), Ok(Duration::from_secs(30)));
        assert!(duration("30x").unwrap_err().contains("30s"));
        assert!(duration("30").unwrap_err().contains("a number and a unit"));
    }

    #[test]
    fn listen_takes_an_ip_or_a_host_name() {
        assert_eq!(
            listen("127.0.0.1:8082"),
            Ok("127.0.0.1:8082".parse().unwrap())
        );
        assert_eq!(listen("[::1]:0"), Ok("[::1]:0".parse().unwrap()));
        assert_eq!(
            listen("localhost:8082"),
            Ok("127.0.0.1:8082".parse().unwrap())
        );
        for bad in [
            "localhost",
            "8082",
            ":8082",
            "localhost:http",
            "localhost:70000",
        ] {
            assert!(
                listen(bad).unwrap_err().contains("IP:PORT or HOST:PORT"),
                "{bad}"
            );
        }
        assert!(listen("no-such-host.invalid:80")
            .unwrap_err()
            .contains("use an IP address"));
    }
}
