//! Builds every component, starts every task with exactly the handles it needs.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch, Notify};

use super::http::accept_loop;
use super::upgrade::Gate;
use super::{BroadcastRoute, CableRoute, Http, Readiness, Running, StartError, TopicsRoute};
use crate::actioncable::session::Services;
use crate::auth::batch::Batcher;
use crate::auth::jwt::Verifier;
use crate::auth::AuthCache;
use crate::config::tuning::{HISTORY_SWEEP, LISTEN_BACKLOG, POOL_ACQUIRE_TIMEOUT};
use crate::config::ServeConfig;
use crate::connection::slots::Slots;
use crate::connection::{Limits, Plumbing};
use crate::db::Database;
use crate::ingress::outbox;
use crate::ingress::postgres::PgAdapter;
use crate::ingress::redis::RedisIngress;
use crate::ingress::streams::Streams;
use crate::inspect::log::DisconnectLog;
use crate::inspect::{self, Inspector};
use crate::listen::Listen;
use crate::metrics::Metrics;
use crate::migrate::{self, MigrateError};
use crate::presence::chatwoot::ChatwootPresence;
use crate::presence::{self, Presence};
use crate::resume::replay::History;
use crate::resume::rings::Rings;
use crate::resume::sessions::{self, Sessions};
use crate::revalidate::{self, Revalidation};
use crate::router::Router;

/// Connects, checks the schema, binds, builds every component and starts every task.
pub async fn start(config: ServeConfig) -> Result<Running, StartError> {
    let db = Database::from_url(&config.database.database_url)?;
    let centrifugo = super::centrifugo::read_config(&config)?;
    let database = |source| StartError::Database {
        url: db.redacted(),
        source,
    };
    let pool = db
        .connect_pool(config.db_pool_size, POOL_ACQUIRE_TIMEOUT)
        .await
        .map_err(database)?;
    match migrate::pending(&pool).await {
        Ok(pending) if pending.is_empty() => {}
        Ok(pending) => return Err(StartError::PendingMigrations(pending)),
        Err(MigrateError::Database(e)) => return Err(database(e)),
        Err(e) => return Err(StartError::Schema(e)),
    }
    let cursor = outbox::Cursor::now(&pool).await.map_err(database)?;
    let epoch: Arc<str> = outbox::epoch(&pool).await.map_err(database)?.into();
    let addr = config.listen;
    let listener = bind(addr).map_err(|source| StartError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;

    // The components.
    let metrics = Arc::new(Metrics::new());
    let rings = Arc::new(Rings::new(config.history_limit, config.history_ttl));
    let router = Arc::new(Router::new(metrics.clone(), rings.clone(), cursor.offset()));
    let (sessions, session_writes) = Sessions::new(pool.clone(), config.session_ttl);
    let rounds = Arc::new(Notify::new());
    let appender = outbox::Appender::new(pool.clone(), rounds.clone());
    let history = Arc::new(History {
        pool: pool.clone(),
        appender: appender.clone(),
        rings,
        queries: tokio::sync::Semaphore::new(crate::config::tuning::HISTORY_QUERIES_IN_FLIGHT),
        epoch,
        max_span: config.history_max_span,
        max_event_size: config.max_event_size,
        metrics: metrics.clone(),
    });
    let (batcher, batching) = Batcher::new(pool.clone(), metrics.clone());
    let auth = AuthCache::new(
        batcher,
        metrics.clone(),
        config.auth_cache_ttl,
        config.auth_negative_ttl,
        config.auth_cache_size,
    );
    let nonempty = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
    let redis_url = nonempty(&config.redis_url);
    let redis_client = match &redis_url {
        Some(url) => Some(crate::ingress::redis::client(
            url,
            config.redis_ca_cert.as_deref(),
        )?),
        None => None,
    };
    let (chatwoot, chatwoot_writer) = match redis_client.clone() {
        Some(client) if config.chatwoot_presence => {
            let (presence, writer) = ChatwootPresence::new(client);
            (Some(presence), Some(writer))
        }
        _ => (None, None),
    };
    let (presence, answers) = Presence::new(
        pool.clone(),
        config.presence_ttl,
        config.presence_push_budget,
        metrics.clone(),
        chatwoot,
    );
    let channel_presence =
        crate::centrifugo::presence::ChannelPresence::new(pool.clone(), config.presence_ttl);
    let centrifugo_clients =
        crate::centrifugo::clients::Clients::new(router.clone(), channel_presence.clone());
    let doorbell = Arc::new(Notify::new());
    let auth_changed = Arc::new(Notify::new());
    let mut listen = Listen::new(db.clone(), metrics.clone());
    {
        // A change to the identity tables: new subscribes must not be answered from the
        // cache, and live ones are re-checked.
        let (ring, cache) = (auth_changed.clone(), auth.clone());
        listen.channel(
            revalidate::CHANNEL,
            Box::new(move |_| {
                cache.invalidate_all();
                ring.notify_one();
            }),
        );
        let ring = doorbell.clone();
        listen.channel(outbox::CHANNEL, Box::new(move |_| ring.notify_one()));
        let ring = rounds.clone();
        listen.channel(outbox::ROUNDS_CHANNEL, Box::new(move |_| ring.notify_one()));
        let restored = sessions.clone();
        listen.channel(sessions::CHANNEL, Box::new(move |sid| restored.taken(sid)));
        let announced = presence.clone();
        listen.channel(presence::CHANNEL, Box::new(move |p| announced.changed(p)));
        let announced = channel_presence.clone();
        listen.channel(
            crate::centrifugo::presence::CHANNEL,
            Box::new(move |p| announced.announced(p)),
        );
        let ordered = centrifugo_clients.clone();
        listen.channel(
            crate::centrifugo::clients::CHANNEL,
            Box::new(move |p| ordered.announced(p)),
        );
        // Whatever was announced while the connection was down is lost: catch up.
        let (doorbell, presence, router) = (doorbell.clone(), presence.clone(), router.clone());
        let rounds = rounds.clone();
        let auth_changed = auth_changed.clone();
        listen.on_connect(Box::new(move || {
            doorbell.notify_one();
            rounds.notify_one();
            auth_changed.notify_one();
            presence.resync(router.accounts());
        }));
    }
    let streams = Arc::new(Streams::new(
        router.clone(),
        metrics.clone(),
        config.max_broadcast_size,
    ));
    let prefix = nonempty(&config.rails_channel_prefix);
    let rails_postgres = config.rails_postgres.then(|| {
        let adapter = PgAdapter::new(prefix.clone(), listen.handle(), streams.clone());
        let notified = adapter.clone();
        listen.on_channel(Box::new(move |channel, payload| {
            notified.notified(channel, payload)
        }));
        adapter
    });
    let listen_ready = listen.readiness();
    let (shutdown, shutting_down) = watch::channel(false);
    let redis = match (redis_client, &redis_url) {
        (Some(client), Some(url)) => Some(RedisIngress::new(
            client,
            url,
            prefix,
            streams.clone(),
            metrics.clone(),
        )),
        _ => None,
    };
    let mut ingress_ready = Vec::new();
    let slots = Slots::new(config.max_connections, config.db_pool_size);

    // The tasks, each with exactly what it needs.
    let mut tasks = vec![
        tokio::spawn(batching),
        tokio::spawn(listen.run()),
        tokio::spawn(appender.run(doorbell, config.outbox_poll)),
        tokio::spawn(outbox::run(
            pool.clone(),
            router.clone(),
            metrics.clone(),
            cursor,
            rounds,
            config.outbox_poll,
            config.max_event_size,
        )),
        tokio::spawn(session_writes),
        tokio::spawn({
            let router = router.clone();
            async move {
                let mut tick = tokio::time::interval(HISTORY_SWEEP);
                loop {
                    tick.tick().await;
                    router.sweep_history();
                }
            }
        }),
        tokio::spawn(outbox::prune(
            pool.clone(),
            metrics.clone(),
            config.event_retention,
        )),
        tokio::spawn(presence.clone().run(answers, router.clone())),
        tokio::spawn(revalidate::run(
            Revalidation {
                pool: pool.clone(),
                router: router.clone(),
                auth: auth.clone(),
                metrics: metrics.clone(),
            },
            revalidate::Schedule {
                interval: config.revalidate_interval,
                full_interval: config.revalidate_full_interval,
                changed: auth_changed,
                listening: listen_ready.clone(),
            },
        )),
    ];
    if let Some(writer) = chatwoot_writer {
        tasks.push(tokio::spawn(ChatwootPresence::run(writer)));
    }
    if let Some(redis) = redis {
        ingress_ready.push((crate::ingress::redis::INGRESS, redis.readiness()));
        tasks.push(tokio::spawn(redis.run()));
    }
    let disconnects = Arc::new(DisconnectLog::default());
    let pings = Arc::new(crate::connection::pings::Pings::default());
    tasks.push(tokio::spawn(pings.clone().run()));
    let inspector = nonempty(&config.admin_token).map(|token| {
        let inspector = Inspector::new(inspect::Sources {
            metrics: metrics.clone(),
            router: router.clone(),
            pool: pool.clone(),
            presence_ttl: config.presence_ttl,
            disconnects: disconnects.clone(),
            listen_ready: listen_ready.clone(),
            ingress_ready: ingress_ready.clone(),
            database: db.redacted(),
            redis: redis_url.as_deref().map(crate::db::redact),
            broadcast_api: nonempty(&config.broadcast_key).is_some(),
        });
        tasks.push(tokio::spawn(inspector.clone().sample()));
        (inspector, token)
    });
    let services = Arc::new(Services {
        plumbing: Plumbing {
            metrics: metrics.clone(),
            limits: Limits::from(&config),
            pings: pings.clone(),
            shutdown: shutting_down,
            disconnects,
        },
        router: router.clone(),
        auth: auth.clone(),
        presence: presence.clone(),
        rails_postgres: rails_postgres.clone(),
        sessions,
        history,
        typing: crate::typing::Publisher::new(pool.clone()),
    });
    let gate = || Gate {
        slots: slots.clone(),
        allowed_origins: config.allowed_origins.clone(),
    };
    let topics = Arc::new(crate::topics::session::Services {
        plumbing: Plumbing {
            metrics: metrics.clone(),
            limits: Limits::from(&config),
            pings: pings.clone(),
            shutdown: services.plumbing.shutdown.clone(),
            disconnects: services.plumbing.disconnects.clone(),
        },
        router: router.clone(),
        auth,
        pool: pool.clone(),
        presence: presence.clone(),
        rails_postgres,
        jwt: config.jwt_secret.as_deref().and_then(Verifier::new),
        max_topics: config.max_topics,
    });
    let (centrifugo, centrifugo_api) = super::centrifugo::routes(
        &config,
        centrifugo,
        super::centrifugo::Parts {
            plumbing: Plumbing {
                metrics: metrics.clone(),
                limits: Limits::from(&config),
                pings: pings.clone(),
                shutdown: topics.plumbing.shutdown.clone(),
                disconnects: topics.plumbing.disconnects.clone(),
            },
            router: router.clone(),
            auth: topics.auth.clone(),
            pool: pool.clone(),
            rails_postgres: topics.rails_postgres.clone(),
            presence: topics.presence.clone(),
            channel_presence: channel_presence.clone(),
            clients: centrifugo_clients,
            gate: gate(),
        },
    )?;
    if centrifugo.is_some() {
        // Its refresh and sweep queries only where Centrifugo's clients are served: the
        // processes that serve them sweep what a dead one left.
        tasks.push(tokio::spawn(channel_presence.clone().run()));
    }
    let http = Arc::new(Http {
        cable: CableRoute {
            services,
            gate: gate(),
            jwt: config.jwt_secret.as_deref().and_then(Verifier::new),
        },
        topics: TopicsRoute {
            path: config.topics_path.clone(),
            services: topics,
            gate: gate(),
        },
        centrifugo,
        centrifugo_api,
        readiness: Readiness {
            listen: listen_ready.clone(),
            ingress: ingress_ready.clone(),
            pool: pool.clone(),
        },
        broadcast: nonempty(&config.broadcast_key).map(|key| BroadcastRoute {
            key,
            max_size: config.max_broadcast_size,
            pool,
            metrics: metrics.clone(),
        }),
        inspector,
        metrics: metrics.clone(),
        first_bytes_timeout: config.first_bytes_timeout,
    });
    let (stop, stopped) = oneshot::channel();
    let accept = tokio::spawn(accept_loop(http, listener, stopped));
    tracing::info!(
        %addr,
        fd_limit = crate::connection::slots::fd_limit(),
        max_connections = slots.max(),
        "listening"
    );
    Ok(Running {
        addr,
        metrics,
        router,
        presence,
        slots,
        listen_ready,
        ingress_ready,
        shutdown,
        pings,
        stop,
        accept,
        tasks,
    })
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
