//! The webhook endpoints as an axum router, and `run` for the bundled server.
//!
//! Mount [`Webhooks::router`] in your own axum app (outside any auth layer: Kinde cannot
//! authenticate), or let [`run`] serve [`Webhooks::app`] on a listener.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use chrono::Utc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing::field::{Empty, display};

use crate::config::{Config, ConfigError, DeliveryMode, InlineDedup};
use crate::dedup::MemoryDedup;
use crate::dispatch::Dispatcher;
use crate::event::Event;
use crate::handler::State;
use crate::inbox::store::NewEvent;
use crate::inbox::{Enqueued, Inbox, SqliteStore, Store, StoreError};
use crate::jwks::KeyStore;
use crate::registry::{Pattern, Registry, any_matches};
use crate::reply::{self, Rejection};
use crate::verify::Verifier;

/// The header Kinde sets to the same value on every retry of one delivery.
pub const WEBHOOK_ID_HEADER: &str = "webhook-id";

/// A configured receiver: verifier, handlers, routes and delivery mode. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Webhooks {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    verifier: Verifier,
    dispatcher: Dispatcher,
    delivery: Delivery,
    routes: Vec<Route>,
    body_limit: usize,
    refresh_interval: Duration,
}

#[derive(Debug)]
enum Delivery {
    /// Handlers run before the reply; handled keys are remembered here.
    Inline(Dedup),
    /// The event is stored before the reply; workers run the handlers.
    Inbox(Inbox),
}

#[derive(Debug)]
enum Dedup {
    Off,
    Memory(MemoryDedup),
    Store(Arc<dyn Store>),
}

#[derive(Debug)]
struct Route {
    path: String,
    patterns: Vec<Pattern>,
}

/// Why the receiver could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    /// Another server process works this SQLite inbox.
    #[error(
        "another kinde-webhooks server is using the inbox {0}; an embedded inbox serves one process \
         (give each server its own [store] path)"
    )]
    StoreInUse(String),
}

impl Webhooks {
    /// Build the receiver as `config` says, opening the `[store]` database when the
    /// delivery mode (inbox, or inline with store dedup) needs it. Jobs a crash left in
    /// flight are handed back first: call this once per process that serves.
    pub async fn open(
        config: &Config,
        registry: Registry,
        state: State,
    ) -> Result<Self, StartError> {
        config.validate()?;
        let needs_store = config.delivery.mode == DeliveryMode::Inbox
            || config.delivery.inline_dedup == InlineDedup::Store;
        if !needs_store {
            return Ok(Self::new(config, registry, state)?);
        }
        let path = config.store_path();
        let store = SqliteStore::open(&path, config.store.busy_timeout).await?;
        if config.delivery.mode == DeliveryMode::Inbox {
            if !store.lock_for_serving()? {
                return Err(StartError::StoreInUse(path.display().to_string()));
            }
            let recovered = store.recover_in_flight().await?;
            if recovered > 0 {
                tracing::info!(
                    jobs = recovered,
                    "inbox: jobs left in flight by the last run are due again"
                );
            }
        }
        tracing::info!(path = %path.display(), "store opened");
        Ok(Self::with_store(config, registry, state, Arc::new(store))?)
    }

    /// Build a receiver that needs no store: inline delivery with in-memory or no dedup.
    pub fn new(config: &Config, registry: Registry, state: State) -> Result<Self, ConfigError> {
        Self::build(config, registry, state, None)
    }

    /// Build the receiver over an already opened store.
    pub fn with_store(
        config: &Config,
        registry: Registry,
        state: State,
        store: Arc<dyn Store>,
    ) -> Result<Self, ConfigError> {
        Self::build(config, registry, state, Some(store))
    }

    fn build(
        config: &Config,
        registry: Registry,
        state: State,
        store: Option<Arc<dyn Store>>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let jwks_url = config.jwks_url().ok_or_else(|| ConfigError::Invalid {
            key: "kinde.issuer_url".into(),
            message: "is not set: set KINDE_ISSUER_URL".into(),
        })?;
        let keys = KeyStore::new(jwks_url, config.kinde.jwks_refresh_cooldown);
        let dispatcher = Dispatcher::new(registry, state, config.handlers.clone())
            .with_timeout(Some(config.delivery.handler_timeout));
        let needs_store = |what: &str| ConfigError::Invalid {
            key: "delivery.mode".into(),
            message: format!(
                "{what} needs a store: build with Webhooks::open (opens [store]) or Webhooks::with_store"
            ),
        };
        let delivery = match (config.delivery.mode, config.delivery.inline_dedup, store) {
            (DeliveryMode::Inbox, _, Some(store)) => {
                Delivery::Inbox(Inbox::new(store, dispatcher.clone(), config.inbox.clone()))
            }
            (DeliveryMode::Inbox, _, None) => return Err(needs_store("delivery.mode = \"inbox\"")),
            (DeliveryMode::Inline, InlineDedup::Off, _) => Delivery::Inline(Dedup::Off),
            (DeliveryMode::Inline, InlineDedup::Memory, _) => Delivery::Inline(Dedup::Memory(
                MemoryDedup::new(config.delivery.inline_dedup_capacity),
            )),
            (DeliveryMode::Inline, InlineDedup::Store, Some(store)) => {
                Delivery::Inline(Dedup::Store(store))
            }
            (DeliveryMode::Inline, InlineDedup::Store, None) => {
                return Err(needs_store("delivery.inline_dedup = \"store\""));
            }
        };
        let routes = config
            .effective_routes()
            .into_iter()
            .map(|r| Route {
                // validate() already checked every pattern.
                patterns: r
                    .patterns
                    .iter()
                    .filter_map(|p| Pattern::parse(p).ok())
                    .collect(),
                path: r.path,
            })
            .collect();
        Ok(Self {
            shared: Arc::new(Shared {
                verifier: Verifier::new(keys, config.kinde.max_event_age),
                dispatcher,
                delivery,
                routes,
                body_limit: config.server.body_limit,
                refresh_interval: config.kinde.jwks_refresh_interval,
            }),
        })
    }

    /// The key store, e.g. to refresh it before serving.
    pub fn keys(&self) -> &KeyStore {
        self.shared.verifier.keys()
    }

    /// The handler registry.
    pub fn registry(&self) -> &Registry {
        self.shared.dispatcher.registry()
    }

    /// The inbox, in inbox mode.
    pub fn inbox(&self) -> Option<&Inbox> {
        match &self.shared.delivery {
            Delivery::Inbox(inbox) => Some(inbox),
            Delivery::Inline(_) => None,
        }
    }

    /// Log the routes and the handler table, once at start-up.
    pub fn log_startup(&self) {
        let mode = if self.inbox().is_some() {
            "inbox"
        } else {
            "inline"
        };
        tracing::info!(mode, "delivery");
        for route in &self.shared.routes {
            let patterns: Vec<String> = route.patterns.iter().map(ToString::to_string).collect();
            tracing::info!(path = %route.path, patterns = %patterns.join(", "), "webhook route");
        }
        for (pattern, handlers) in self.registry().table() {
            tracing::info!(%pattern, handlers = %handlers.join(", "), "handler registered");
        }
    }

    /// Only the webhook routes (POST), each with the body limit. Mount it in your own app;
    /// in inbox mode also spawn [`Inbox::run`] (the bundled [`run`] does).
    pub fn router(&self) -> Router {
        let mut router = Router::new();
        for index in 0..self.shared.routes.len() {
            let shared = self.shared.clone();
            let path = shared.routes[index].path.clone();
            router = router.route(
                &path,
                post(
                    move |headers: HeaderMap, body: Result<Bytes, BytesRejection>| async move {
                        receive(&shared, &shared.routes[index], &headers, body).await
                    },
                ),
            );
        }
        router.layer(DefaultBodyLimit::max(self.shared.body_limit))
    }

    /// Start the background work a serving receiver needs: the JWKS refresher and, in
    /// inbox mode, the inbox's workers. Call it once when you mount [`Webhooks::router`]
    /// in your own app; [`run`] does it for the bundled server.
    pub fn spawn_background(&self) -> Background {
        let refresher = self.keys().spawn_refresher(self.shared.refresh_interval);
        let stop = CancellationToken::new();
        let workers = self.inbox().cloned().map(|inbox| {
            let stop = stop.clone();
            tokio::spawn(async move { inbox.run(stop).await })
        });
        Background {
            stop,
            workers,
            refresher,
        }
    }

    /// The webhook routes plus `GET /healthz`.
    pub fn app(&self) -> Router {
        self.router().route("/healthz", get(|| async { "ok" }))
    }
}

/// One delivery: read, verify, route, then store or dispatch, and answer.
async fn receive(
    shared: &Shared,
    route: &Route,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let span = tracing::info_span!("webhook", route = %route.path, event_id = Empty, event_type = Empty, webhook_id = Empty);
    match handle(shared, route, headers, body)
        .instrument(span.clone())
        .await
    {
        Ok(response) => response,
        Err(rejection) => {
            let _enter = span.enter();
            let status = rejection.status();
            let reason = rejection.reason();
            if status.is_server_error() {
                tracing::warn!(status = status.as_u16(), reason, error = %rejection, "webhook not acknowledged");
            } else {
                tracing::info!(status = status.as_u16(), reason, error = %rejection, "webhook refused");
            }
            axum::response::IntoResponse::into_response(rejection)
        }
    }
}

async fn handle(
    shared: &Shared,
    route: &Route,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Rejection> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Rejection::PayloadTooLarge
        } else {
            Rejection::UnreadableBody
        }
    })?;
    let token = std::str::from_utf8(&body).map_err(|_| Rejection::UnreadableBody)?;
    let mut event = shared.verifier.verify(token).await?;
    event.delivery.webhook_id = headers
        .get(WEBHOOK_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    event.delivery.route = route.path.clone();
    event.delivery.received_at = Utc::now();

    let span = tracing::Span::current();
    span.record("event_id", display(&event.event_id));
    span.record("event_type", display(&event.event_type));
    if let Some(id) = &event.delivery.webhook_id {
        span.record("webhook_id", display(id));
    }

    let routed = any_matches(&route.patterns, &event.event_type);
    match &shared.delivery {
        Delivery::Inbox(inbox) => store_event(shared, inbox, event, routed).await,
        Delivery::Inline(dedup) => {
            if !routed {
                tracing::info!(
                    "event type not accepted on this route; acknowledged, not dispatched"
                );
                return Ok(reply::ok());
            }
            handle_inline(shared, dedup, &event).await
        }
    }
}

/// Inbox mode: commit the event (with one job per matching handler) before the 200.
async fn store_event(
    shared: &Shared,
    inbox: &Inbox,
    event: Event,
    routed: bool,
) -> Result<Response, Rejection> {
    let handlers = if routed {
        shared
            .dispatcher
            .registry()
            .handlers_for(&event.event_type)
            .map(|e| e.name.clone())
            .collect()
    } else {
        Vec::new()
    };
    let skipped = handlers.is_empty();
    let new = NewEvent {
        route: event.delivery.route,
        event_id: event.event_id,
        webhook_id: event.delivery.webhook_id,
        event_type: event.event_type,
        claims: event.claims,
        received_at: event.delivery.received_at,
        handlers,
    };
    match inbox.store().enqueue(new).await {
        Ok(Enqueued::Stored) => {
            if skipped {
                tracing::info!(routed, "no handler for this event; stored as skipped");
            } else {
                inbox.wake();
                tracing::info!("event stored");
            }
            Ok(reply::ok())
        }
        Ok(Enqueued::Duplicate) => {
            tracing::info!("duplicate delivery; already stored");
            Ok(reply::ok())
        }
        Err(e) => Err(Rejection::StoreUnavailable(e.to_string())),
    }
}

/// Inline mode: run the handlers before the reply; remember the key only once all succeeded.
async fn handle_inline(
    shared: &Shared,
    dedup: &Dedup,
    event: &Event,
) -> Result<Response, Rejection> {
    let (route, id) = (event.delivery.route.as_str(), event.event_id.as_str());
    let seen = match dedup {
        Dedup::Off => false,
        Dedup::Memory(set) => set.seen(route, id),
        Dedup::Store(store) => store.seen(route, id).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "dedup lookup failed; handling the event");
            false
        }),
    };
    if seen {
        tracing::info!("duplicate delivery; handlers not run again");
        return Ok(reply::ok());
    }
    let report = shared.dispatcher.dispatch(event).await;
    if report.unhandled() {
        tracing::info!("no handler for this event type; acknowledged");
    } else if report.all_ok() {
        tracing::info!(handlers = report.outcomes.len(), "event handled");
    } else {
        let failed = report.outcomes.iter().filter(|o| o.result.is_err()).count();
        tracing::warn!(
            handlers = report.outcomes.len(),
            failed,
            "event not handled; Kinde will retry"
        );
        return Err(Rejection::HandlerFailed);
    }
    match dedup {
        Dedup::Off => {}
        Dedup::Memory(set) => set.record(route, id),
        Dedup::Store(store) => {
            if let Err(e) = store.mark_seen(route, id, event.delivery.received_at).await {
                tracing::warn!(error = %e, "could not record the event as handled; a redelivery would run it again");
            }
        }
    }
    Ok(reply::ok())
}

/// The receiver's background tasks; stop them with [`Background::shutdown`].
#[derive(Debug)]
pub struct Background {
    stop: CancellationToken,
    workers: Option<tokio::task::JoinHandle<()>>,
    refresher: tokio::task::JoinHandle<()>,
}

impl Background {
    /// Stop the workers (running handlers finish within `[inbox] shutdown_grace`, the
    /// rest are handed back to the store) and the key refresher.
    pub async fn shutdown(self) {
        self.stop.cancel();
        if let Some(workers) = self.workers {
            let _ = workers.await;
        }
        self.refresher.abort();
    }
}

/// Serve `webhooks.app()` on `listener` until `shutdown` completes, keeping the key set
/// fresh and, in inbox mode, running the inbox's workers. The first JWKS fetch happens
/// after the listener is serving, so a JWKS that is down does not stop the server from
/// starting (it answers 503 until keys arrive). On shutdown: stop accepting, finish the
/// requests in progress, then let the workers finish or release their jobs.
pub async fn run(
    listener: TcpListener,
    webhooks: Webhooks,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_with(listener, webhooks, Router::new(), shutdown).await
}

/// [`run`], with `extra` routes merged into the app (the `dev` server's JWKS).
pub async fn run_with(
    listener: TcpListener,
    webhooks: Webhooks,
    extra: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    webhooks.log_startup();
    let background = webhooks.spawn_background();
    let app = webhooks.app().merge(extra);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    background.shutdown().await;
    result
}
