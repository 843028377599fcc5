//! Centrifugo's routes as the process builds them (docs/reference.md §11): its configuration
//! file read and checked at start, the connect proxy, the token key, and what
//! `/connection/websocket` and `/api/` need.

use std::sync::Arc;

use super::upgrade::Gate;
use super::{CentrifugoRoute, StartError};
use crate::centrifugo::api::Api;
use crate::centrifugo::clients::Clients;
use crate::centrifugo::config::CentrifugoConfig;
use crate::centrifugo::presence::ChannelPresence;
use crate::centrifugo::session::Services;
use crate::centrifugo::token::Tokens;
use crate::config::ServeConfig;
use crate::connection::Plumbing;

/// What Centrifugo's connections share with the rest of the process.
pub(super) struct Parts {
    pub(super) plumbing: Plumbing,
    pub(super) router: Arc<crate::router::Router>,
    pub(super) auth: crate::auth::AuthCache,
    pub(super) pool: sqlx::PgPool,
    pub(super) rails_postgres: Option<Arc<crate::ingress::postgres::PgAdapter>>,
    pub(super) presence: Arc<crate::presence::Presence>,
    pub(super) channel_presence: Arc<ChannelPresence>,
    pub(super) clients: Arc<Clients>,
    pub(super) gate: Gate,
}

/// `/connection/websocket` (when a token key or a connect proxy is configured) and the
/// server API (when an API key is).
pub(super) fn routes(
    config: &ServeConfig,
    file: CentrifugoConfig,
    parts: Parts,
) -> Result<(Option<CentrifugoRoute>, Option<Api>), StartError> {
    let tokens = config
        .jwt_secret
        .as_deref()
        .filter(|secret| !secret.is_empty())
        .or(file.token_hmac_secret_key.as_deref())
        .and_then(Tokens::new);
    crate::centrifugo::wire::set_ping_interval(
        u32::try_from(config.centrifugo_ping.as_secs()).unwrap_or(u32::MAX),
    );
    let api = config
        .centrifugo_api_key
        .clone()
        .filter(|key| !key.is_empty())
        .or_else(|| file.api_key.clone())
        .map(|key| Api {
            key,
            presence: parts.channel_presence.clone(),
            config: file.clone(),
            pool: parts.pool.clone(),
            metrics: parts.plumbing.metrics.clone(),
            max_size: config.max_broadcast_size,
            started: std::time::Instant::now(),
        });
    let proxy = proxy(config, &file)?;
    if tokens.is_none() && proxy.is_none() {
        return Ok((None, api));
    }
    let route = CentrifugoRoute {
        services: Arc::new(Services {
            plumbing: parts.plumbing,
            router: parts.router,
            auth: parts.auth,
            pool: parts.pool,
            rails_postgres: parts.rails_postgres,
            presence: parts.presence,
            channel_presence: parts.channel_presence,
            clients: parts.clients,
            tokens,
            proxy,
            config: file,
            max_publish: config.max_broadcast_size,
        }),
        gate: parts.gate,
    };
    Ok((Some(route), api))
}

/// The Centrifugo configuration file named by `CABLE_CENTRIFUGO_CONFIG`, read and checked
/// (its ignored keys named in one warning); an empty one without it.
pub(super) fn read_config(config: &ServeConfig) -> Result<CentrifugoConfig, StartError> {
    let Some(path) = &config.centrifugo_config else {
        return Ok(Default::default());
    };
    let problem = |problem: String| StartError::CentrifugoConfig {
        path: path.display().to_string(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| problem(e.to_string()))?;
    let parsed = CentrifugoConfig::parse(&text).map_err(|e| problem(e.to_string()))?;
    if !parsed.ignored.is_empty() {
        tracing::warn!(
            file = %path.display(),
            ignored = parsed.ignored.join(", "),
            "CABLE_CENTRIFUGO_CONFIG: these keys are not read by the gateway"
        );
    }
    Ok(parsed)
}

/// The connect proxy: `CABLE_CENTRIFUGO_CONNECT_PROXY_URL`, else the file's (its timeout
/// either way when the file gives one).
fn proxy(
    config: &ServeConfig,
    file: &CentrifugoConfig,
) -> Result<Option<crate::centrifugo::proxy::ConnectProxy>, StartError> {
    use crate::centrifugo::{config::DEFAULT_PROXY_TIMEOUT, proxy::ConnectProxy};
    let timeout = file
        .connect_proxy
        .as_ref()
        .map_or(DEFAULT_PROXY_TIMEOUT, |proxy| proxy.timeout);
    let endpoint = config
        .centrifugo_connect_proxy_url
        .clone()
        .filter(|url| !url.is_empty())
        .or_else(|| {
            file.connect_proxy
                .as_ref()
                .map(|proxy| proxy.endpoint.clone())
        });
    endpoint
        .map(|endpoint| {
            ConnectProxy::new(&endpoint, timeout).map_err(|e| StartError::CentrifugoConfig {
                path: "CABLE_CENTRIFUGO_CONNECT_PROXY_URL or client.proxy.connect.endpoint".into(),
                problem: e.to_string(),
            })
        })
        .transpose()
}
