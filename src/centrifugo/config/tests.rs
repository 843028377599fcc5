use super::*;

const FILE: &str = r#"{
  "client": {
    "token": {"hmac_secret_key": "secret"},
    "allowed_origins": ["http://localhost"],
    "proxy": {"connect": {"enabled": true, "endpoint": "http://127.0.0.1:3000/centrifugo/connect", "timeout": "2s"}}
  },
  "http_api": {"key": "api-key"},
  "admin": {"enabled": true},
  "channel": {
    "without_namespace": {"presence": true},
    "namespaces": [
      {"name": "tickets", "allow_subscribe_for_client": true, "history_size": 100, "history_ttl": "300s", "force_recovery": true},
      {"name": "user", "allow_user_limited_channels": true, "allow_history_for_client": true},
      {"name": "presence", "presence": true, "join_leave": true, "force_push_join_leave": true}
    ]
  }
}"#;

#[test]
fn the_read_keys_are_read_and_every_other_one_is_named() {
    let config = CentrifugoConfig::parse(FILE).unwrap();
    assert_eq!(config.token_hmac_secret_key.as_deref(), Some("secret"));
    assert_eq!(config.api_key.as_deref(), Some("api-key"));
    assert_eq!(
        config.connect_proxy,
        Some(ConnectProxy {
            endpoint: "http://127.0.0.1:3000/centrifugo/connect".into(),
            timeout: Duration::from_secs(2),
        })
    );
    assert!(config.without_namespace.presence);
    let tickets = &config.namespaces["tickets"];
    assert!(tickets.allow_subscribe_for_client && tickets.force_recovery);
    assert_eq!(tickets.history_size, 100);
    assert_eq!(tickets.history_ttl, Duration::from_secs(300));
    assert!(tickets.keeps_history());
    assert!(config.namespaces["user"].allow_user_limited_channels);
    let presence = &config.namespaces["presence"];
    assert!(presence.presence && presence.join_leave && presence.force_push_join_leave);
    assert_eq!(
        config.ignored,
        [
            "admin",
            "channel.namespaces[user].allow_history_for_client",
            "client.allowed_origins",
        ]
    );
}

#[test]
fn channels_take_their_namespaces_options() {
    let config = CentrifugoConfig::parse(FILE).unwrap();
    assert!(config.options("tickets:42").unwrap().keeps_history());
    assert!(config.options("news").unwrap().presence);
    assert!(config.options("voice:calls").is_none());
    assert!(!config.options("user:7#7").unwrap().presence);
}

#[test]
fn a_bad_value_names_its_key() {
    for (text, path) in [
        (
            r#"{"client": {"token": {"hmac_secret_key": 1}}}"#,
            "client.token.hmac_secret_key",
        ),
        (
            r#"{"channel": {"namespaces": [{"name": "a", "presence": "yes"}]}}"#,
            "channel.namespaces[a].presence",
        ),
        (
            r#"{"channel": {"namespaces": [{"presence": true}]}}"#,
            "channel.namespaces[0].name",
        ),
        (
            r#"{"channel": {"namespaces": [{"name": "a"}, {"name": "a"}]}}"#,
            "channel.namespaces[a]",
        ),
        (
            r#"{"channel": {"without_namespace": {"history_ttl": "soon"}}}"#,
            "channel.without_namespace.history_ttl",
        ),
        (
            r#"{"client": {"proxy": {"connect": {"enabled": true}}}}"#,
            "client.proxy.connect.endpoint",
        ),
        (r#"[]"#, "(file)"),
        (r#"{"#, "(file)"),
    ] {
        assert_eq!(
            CentrifugoConfig::parse(text).unwrap_err().path,
            path,
            "{text}"
        );
    }
}

#[test]
fn a_disabled_proxy_is_no_proxy() {
    let config = CentrifugoConfig::parse(
        r#"{"client": {"proxy": {"connect": {"enabled": false, "endpoint": "http://x"}}}}"#,
    )
    .unwrap();
    assert_eq!(config.connect_proxy, None);
    assert!(config.ignored.is_empty());
}
