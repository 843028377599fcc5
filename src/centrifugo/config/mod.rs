//! The part of a Centrifugo v6 JSON configuration file the gateway reads (docs/reference.md
//! §11): the connection token's HMAC key, the server API's key, the connect proxy, and the
//! channel options of the top level and of each namespace. Every other key is collected, so
//! that one startup warning names them all.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

/// How long the connect proxy may take when the file does not say.
pub const DEFAULT_PROXY_TIMEOUT: Duration = Duration::from_secs(1);

/// A channel's options: a namespace's, or those of channels without one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelOptions {
    pub allow_subscribe_for_client: bool,
    pub allow_publish_for_subscriber: bool,
    pub allow_publish_for_client: bool,
    pub allow_presence_for_subscriber: bool,
    pub allow_history_for_subscriber: bool,
    pub presence: bool,
    pub join_leave: bool,
    pub force_push_join_leave: bool,
    pub history_size: usize,
    pub history_ttl: Duration,
    pub force_recovery: bool,
    pub allow_user_limited_channels: bool,
}

impl ChannelOptions {
    /// Whether its channels keep history (both a size and a time are needed, as in
    /// Centrifugo).
    pub fn keeps_history(&self) -> bool {
        self.history_size > 0 && !self.history_ttl.is_zero()
    }
}

/// The options of the built-in `account:<A>` channels: presence for their subscribers, joins
/// and leaves to those who ask. Who may subscribe is the account's membership, not an option.
pub const ACCOUNT_CHANNELS: ChannelOptions = ChannelOptions {
    allow_subscribe_for_client: false,
    allow_publish_for_subscriber: false,
    allow_publish_for_client: false,
    allow_presence_for_subscriber: true,
    allow_history_for_subscriber: false,
    presence: true,
    join_leave: true,
    force_push_join_leave: false,
    history_size: 0,
    history_ttl: Duration::ZERO,
    force_recovery: false,
    allow_user_limited_channels: false,
};

/// The connect proxy: where a connect without a token is sent, and how long it may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectProxy {
    pub endpoint: String,
    pub timeout: Duration,
}

/// What the gateway takes from a Centrifugo configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CentrifugoConfig {
    /// `client.token.hmac_secret_key`.
    pub token_hmac_secret_key: Option<String>,
    /// `http_api.key`.
    pub api_key: Option<String>,
    /// `client.proxy.connect`, when `enabled`.
    pub connect_proxy: Option<ConnectProxy>,
    /// `channel.without_namespace`.
    pub without_namespace: ChannelOptions,
    /// `channel.namespaces[]`, by name.
    pub namespaces: BTreeMap<String, ChannelOptions>,
    /// Every key of the file the gateway does not read, as a dotted path
    /// (`channel.namespaces[chat].allow_history_for_client`), sorted.
    pub ignored: Vec<String>,
}

/// Why a configuration file cannot be used; the message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct ConfigProblem {
    pub path: String,
    pub problem: String,
}

fn problem(path: &str, problem: impl Into<String>) -> ConfigProblem {
    ConfigProblem {
        path: path.to_string(),
        problem: problem.into(),
    }
}

/// Walks one JSON object, handing each key it knows to `read` and recording the others.
struct Walk<'a> {
    ignored: &'a mut Vec<String>,
}

impl Walk<'_> {
    fn object<'v>(
        &self,
        value: &'v Value,
        path: &str,
    ) -> Result<&'v Map<String, Value>, ConfigProblem> {
        value
            .as_object()
            .ok_or_else(|| problem(path, "must be an object"))
    }

    /// Calls `read(key, value, path)` for every key of `object`; `read` says whether it knew
    /// the key.
    fn keys(
        &mut self,
        object: &Map<String, Value>,
        path: &str,
        mut read: impl FnMut(&str, &Value, &str) -> Result<bool, ConfigProblem>,
    ) -> Result<(), ConfigProblem> {
        for (key, value) in object {
            let at = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            if !read(key, value, &at)? {
                self.ignored.push(at);
            }
        }
        Ok(())
    }
}

fn boolean(value: &Value, path: &str) -> Result<bool, ConfigProblem> {
    value
        .as_bool()
        .ok_or_else(|| problem(path, "must be true or false"))
}

fn string(value: &Value, path: &str) -> Result<String, ConfigProblem> {
    value
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| problem(path, "must be a string"))
}

/// A Go duration as Centrifugo writes them (`"1s"`, `"500ms"`, `"1m30s"`, `"720h"`), or a
/// number of seconds.
fn duration(value: &Value, path: &str) -> Result<Duration, ConfigProblem> {
    match value {
        Value::Number(n) => n
            .as_f64()
            .filter(|s| *s >= 0.0 && s.is_finite())
            .map(Duration::from_secs_f64)
            .ok_or_else(|| problem(path, "must not be negative")),
        Value::String(text) => humantime::parse_duration(text).map_err(|_| {
            problem(
                path,
                "must be a duration such as \"1s\", \"500ms\" or \"1m30s\"",
            )
        }),
        _ => Err(problem(path, "must be a duration such as \"1s\"")),
    }
}

fn channel_options(
    walk: &mut Walk<'_>,
    object: &Map<String, Value>,
    path: &str,
    skip: &[&str],
) -> Result<ChannelOptions, ConfigProblem> {
    let mut options = ChannelOptions::default();
    walk.keys(object, path, |key, value, at| {
        if skip.contains(&key) {
            return Ok(true);
        }
        let flag = match key {
            "allow_subscribe_for_client" => &mut options.allow_subscribe_for_client,
            "allow_publish_for_subscriber" => &mut options.allow_publish_for_subscriber,
            "allow_publish_for_client" => &mut options.allow_publish_for_client,
            "allow_presence_for_subscriber" => &mut options.allow_presence_for_subscriber,
            "allow_history_for_subscriber" => &mut options.allow_history_for_subscriber,
            "presence" => &mut options.presence,
            "join_leave" => &mut options.join_leave,
            "force_push_join_leave" => &mut options.force_push_join_leave,
            "force_recovery" => &mut options.force_recovery,
            "allow_user_limited_channels" => &mut options.allow_user_limited_channels,
            "history_size" => {
                options.history_size = value
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| problem(at, "must be a number of publications"))?;
                return Ok(true);
            }
            "history_ttl" => {
                options.history_ttl = duration(value, at)?;
                return Ok(true);
            }
            _ => return Ok(false),
        };
        *flag = boolean(value, at)?;
        Ok(true)
    })?;
    Ok(options)
}

impl CentrifugoConfig {
    /// Reads a configuration file's text.
    pub fn parse(text: &str) -> Result<CentrifugoConfig, ConfigProblem> {
        let root: Value =
            serde_json::from_str(text).map_err(|e| problem("(file)", format!("not JSON: {e}")))?;
        let mut config = CentrifugoConfig::default();
        let mut ignored = Vec::new();
        let mut walk = Walk {
            ignored: &mut ignored,
        };
        let root = walk.object(&root, "(file)")?.clone();
        let mut client = None;
        let mut http_api = None;
        let mut channel = None;
        walk.keys(&root, "", |key, value, _| {
            match key {
                "client" => client = Some(value.clone()),
                "http_api" => http_api = Some(value.clone()),
                "channel" => channel = Some(value.clone()),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        if let Some(client) = client {
            config.read_client(&mut walk, &client)?;
        }
        if let Some(http_api) = http_api {
            let object = walk.object(&http_api, "http_api")?.clone();
            walk.keys(&object, "http_api", |key, value, at| {
                if key != "key" {
                    return Ok(false);
                }
                config.api_key = Some(string(value, at)?).filter(|k| !k.is_empty());
                Ok(true)
            })?;
        }
        if let Some(channel) = channel {
            config.read_channel(&mut walk, &channel)?;
        }
        ignored.sort();
        config.ignored = ignored;
        Ok(config)
    }

    fn read_client(&mut self, walk: &mut Walk<'_>, client: &Value) -> Result<(), ConfigProblem> {
        let object = walk.object(client, "client")?.clone();
        let mut token = None;
        let mut proxy = None;
        walk.keys(&object, "client", |key, value, _| {
            match key {
                "token" => token = Some(value.clone()),
                "proxy" => proxy = Some(value.clone()),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        if let Some(token) = token {
            let object = walk.object(&token, "client.token")?.clone();
            walk.keys(&object, "client.token", |key, value, at| {
                if key != "hmac_secret_key" {
                    return Ok(false);
                }
                self.token_hmac_secret_key = Some(string(value, at)?).filter(|k| !k.is_empty());
                Ok(true)
            })?;
        }
        if let Some(proxy) = proxy {
            let object = walk.object(&proxy, "client.proxy")?.clone();
            let mut connect = None;
            walk.keys(&object, "client.proxy", |key, value, _| {
                if key != "connect" {
                    return Ok(false);
                }
                connect = Some(value.clone());
                Ok(true)
            })?;
            if let Some(connect) = connect {
                let object = walk.object(&connect, "client.proxy.connect")?.clone();
                let (mut enabled, mut endpoint, mut timeout) = (false, None, DEFAULT_PROXY_TIMEOUT);
                walk.keys(&object, "client.proxy.connect", |key, value, at| {
                    match key {
                        "enabled" => enabled = boolean(value, at)?,
                        "endpoint" => endpoint = Some(string(value, at)?),
                        "timeout" => timeout = duration(value, at)?,
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?;
                if enabled {
                    let endpoint = endpoint.filter(|e| !e.is_empty()).ok_or_else(|| {
                        problem("client.proxy.connect.endpoint", "is required when enabled")
                    })?;
                    self.connect_proxy = Some(ConnectProxy { endpoint, timeout });
                }
            }
        }
        Ok(())
    }

    fn read_channel(&mut self, walk: &mut Walk<'_>, channel: &Value) -> Result<(), ConfigProblem> {
        let object = walk.object(channel, "channel")?.clone();
        let mut without = None;
        let mut namespaces = None;
        walk.keys(&object, "channel", |key, value, _| {
            match key {
                "without_namespace" => without = Some(value.clone()),
                "namespaces" => namespaces = Some(value.clone()),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        if let Some(without) = without {
            let object = walk.object(&without, "channel.without_namespace")?.clone();
            self.without_namespace =
                channel_options(walk, &object, "channel.without_namespace", &[])?;
        }
        if let Some(namespaces) = namespaces {
            let list = namespaces
                .as_array()
                .ok_or_else(|| problem("channel.namespaces", "must be a list"))?;
            for (n, namespace) in list.iter().enumerate() {
                let at = format!("channel.namespaces[{n}]");
                let object = walk.object(namespace, &at)?.clone();
                let name = object
                    .get("name")
                    .and_then(Value::as_str)
                    .filter(|name| valid_namespace(name))
                    .ok_or_else(|| {
                        problem(
                            &format!("{at}.name"),
                            "must be letters, digits, '_', '-' or '.'",
                        )
                    })?;
                let at = format!("channel.namespaces[{name}]");
                let options = channel_options(walk, &object, &at, &["name"])?;
                if self.namespaces.insert(name.to_string(), options).is_some() {
                    return Err(problem(&at, "is defined twice"));
                }
            }
        }
        Ok(())
    }

    /// The options of `channel`'s namespace (the part before its first `:`), or `None` when
    /// that namespace is not configured. The built-in `account:<A>` channels, unless the file
    /// configures an `account` namespace, keep presence ([`ACCOUNT_CHANNELS`]).
    pub fn options(&self, channel: &str) -> Option<&ChannelOptions> {
        match channel.split_once(':') {
            Some((namespace, _)) => self
                .namespaces
                .get(namespace)
                .or((namespace == "account").then_some(&ACCOUNT_CHANNELS)),
            None => Some(&self.without_namespace),
        }
    }
}

fn valid_namespace(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests;
