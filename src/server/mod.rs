//! The webhook endpoints as an axum router, and `run` for the bundled server.
//!
//! Mount [`Webhooks::router`] in your own axum app (outside any auth layer: Kinde cannot
//! authenticate), or let [`run`] serve [`Webhooks::app`] on a listener.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{
    Config, ConfigError, DeliveryMode, InlineDedup, LimitsConfig, MetricsConfig, redact_url,
};
use crate::dedup::{KeyLocks, MemoryDedup};
use crate::dispatch::Dispatcher;
use crate::handler::State;
use crate::inbox::{Inbox, PgStore, SqliteStore, Store, StoreError};
use crate::jwks::KeyStore;
use crate::registry::{Pattern, Registry};
use crate::verify::{TokenLimits, Verifier};

mod listen;
mod receive;

pub use listen::{run, run_with};
use receive::receive;

/// The header Kinde sets to the same value on every retry of one delivery.
pub const WEBHOOK_ID_HEADER: &str = "webhook-id";

/// A configured receiver: verifier, handlers, routes and delivery mode. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Webhooks {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// One verifier per Kinde environment (distinct JWKS URL); routes point at theirs.
    issuers: Vec<Issuer>,
    dispatcher: Dispatcher,
    delivery: Delivery,
    routes: Vec<Route>,
    body_limit: usize,
    limits: LimitsConfig,
    /// One permit per webhook request being handled: `[limits] max_concurrent_requests`.
    in_flight: Arc<Semaphore>,
    refresh_interval: Duration,
    metrics: MetricsConfig,
    /// Inline mode: copies of one delivery arriving together run its handlers once.
    key_locks: KeyLocks,
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
    /// Index into `Shared::issuers`.
    issuer: usize,
}

/// A Kinde environment: its issuer URL (handlers see it) and the verifier of its keys.
#[derive(Debug)]
struct Issuer {
    url: String,
    verifier: Verifier,
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
    /// delivery mode (inbox, or inline with store dedup) needs it. SQLite: take the file's
    /// serving lock, and hand back jobs a crash left in flight: call this once per process
    /// that serves. PostgreSQL: other replicas may hold claims, so in-flight jobs are left
    /// to their leases, and any number of processes may serve one schema.
    pub async fn open(
        config: &Config,
        registry: Registry,
        state: State,
    ) -> Result<Self, StartError> {
        config.validate()?;
        if !config.needs_store() {
            return Ok(Self::new(config, registry, state)?);
        }
        let store: Arc<dyn Store> = if config.store.backend == "postgres" {
            let store = PgStore::open(&config.store).await?;
            let url = config.store.url.as_deref().map(redact_url);
            tracing::info!(
                backend = "postgres",
                url = url.as_deref().unwrap_or(""),
                schema = store.schema(),
                "store opened"
            );
            Arc::new(store)
        } else {
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
            tracing::info!(backend = "sqlite", path = %path.display(), "store opened");
            Arc::new(store)
        };
        Ok(Self::with_store(config, registry, state, store)?)
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
        if config.metrics.enabled {
            // Install the recorder before anything is counted (the first JWKS fetch).
            crate::metrics::handle();
        }
        let token_limits = TokenLimits {
            max_token_bytes: config.limits.max_token_bytes,
            max_payload_bytes: config.limits.max_payload_bytes,
            max_json_depth: config.limits.max_json_depth,
            max_kid_bytes: config.limits.max_kid_bytes,
        };
        let mut issuers: Vec<Issuer> = Vec::new();
        let mut routes = Vec::new();
        for r in config.effective_routes() {
            // validate() checked every URL and pattern, and that every route has an issuer.
            let missing = || ConfigError::Invalid {
                key: "kinde.issuer_url".into(),
                message: format!("is not set and route {} names no issuer_url", r.path),
            };
            let jwks_url = config.jwks_url_for(&r).ok_or_else(missing)?;
            let url = config.issuer_for(&r).unwrap_or_else(|| jwks_url.clone());
            let issuer = match issuers
                .iter()
                .position(|i| i.url == url && i.verifier.keys().url() == jwks_url)
            {
                Some(index) => index,
                None => {
                    let keys = KeyStore::new(jwks_url, config.kinde.jwks_refresh_cooldown);
                    let verifier =
                        Verifier::new(keys, config.kinde.max_event_age).with_limits(token_limits);
                    issuers.push(Issuer { url, verifier });
                    issuers.len() - 1
                }
            };
            routes.push(Route {
                patterns: r
                    .patterns
                    .iter()
                    .filter_map(|p| Pattern::parse(p).ok())
                    .collect(),
                path: r.path,
                issuer,
            });
        }
        config.check_handler_sections(registry.entries().iter().map(|e| &*e.name))?;
        let dispatcher = Dispatcher::new(registry, state, config.handlers.clone())
            .with_timeout(Some(config.delivery.handler_timeout));
        let needs_store = |what: &str| ConfigError::Invalid {
            key: "delivery.mode".into(),
            message: format!(
                "{what} needs a store: build with Webhooks::open (opens [store]) or Webhooks::with_store"
            ),
        };
        let delivery = match (config.delivery.mode, config.delivery.inline_dedup, store) {
            (DeliveryMode::Inbox, _, Some(store)) => Delivery::Inbox(
                Inbox::new(store, dispatcher.clone(), config.inbox.clone())
                    .with_route_issuers(config.route_issuers()),
            ),
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
        Ok(Self {
            shared: Arc::new(Shared {
                issuers,
                dispatcher,
                delivery,
                routes,
                body_limit: config.server.body_limit,
                limits: config.limits.clone(),
                in_flight: Arc::new(Semaphore::new(config.limits.max_concurrent_requests)),
                metrics: config.metrics.clone(),
                key_locks: KeyLocks::default(),
                refresh_interval: config.kinde.jwks_refresh_interval,
            }),
        })
    }

    /// The key store of the first route's issuer, e.g. to refresh it before serving.
    pub fn keys(&self) -> &KeyStore {
        self.shared.issuers[0].verifier.keys()
    }

    /// Every issuer (Kinde environment) served, with its key store, in route order.
    pub fn issuers(&self) -> impl Iterator<Item = (&str, &KeyStore)> {
        self.shared
            .issuers
            .iter()
            .map(|i| (i.url.as_str(), i.verifier.keys()))
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
            let issuer = &self.shared.issuers[route.issuer].url;
            tracing::info!(path = %route.path, patterns = %patterns.join(", "), %issuer, "webhook route");
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
                post(move |headers: HeaderMap, body: Body| async move {
                    receive(&shared, &shared.routes[index], &headers, body).await
                }),
            );
        }
        // The body is read (with its own limit and deadline) in `receive`.
        router.layer(DefaultBodyLimit::disable())
    }

    /// Start the background work a serving receiver needs: the JWKS refresher and, in
    /// inbox mode, the inbox's workers. Call it once when you mount [`Webhooks::router`]
    /// in your own app; [`run`] does it for the bundled server.
    pub fn spawn_background(&self) -> Background {
        let refreshers = self
            .issuers()
            .map(|(_, keys)| keys.spawn_refresher(self.shared.refresh_interval))
            .collect();
        let stop = CancellationToken::new();
        let workers = self.inbox().cloned().map(|inbox| {
            let stop = stop.clone();
            tokio::spawn(async move { inbox.run(stop).await })
        });
        Background {
            stop,
            workers,
            refreshers,
        }
    }

    /// The webhook routes plus `GET /healthz` (liveness), `GET /readyz` (keys loaded and
    /// the store writable) and, unless disabled or bound elsewhere, `GET /metrics`.
    pub fn app(&self) -> Router {
        let shared = self.shared.clone();
        let app = self
            .router()
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/readyz",
                get(move || async move { readiness(&shared).await }),
            );
        if self.shared.metrics.enabled && self.shared.metrics.bind.is_none() {
            app.merge(self.metrics_router())
        } else {
            app
        }
    }

    /// `GET /metrics` alone, for a separate `[metrics] bind`.
    pub fn metrics_router(&self) -> Router {
        let shared = self.shared.clone();
        crate::metrics::handle();
        Router::new().route(
            "/metrics",
            get(move || async move { render_metrics(&shared).await }),
        )
    }
}

/// 200 when every issuer's signing keys are loaded and (inbox mode) the store takes writes; else 503 with
/// the reasons, as fixed labels.
async fn readiness(shared: &Shared) -> Response {
    let mut reasons = Vec::new();
    if !shared.issuers.iter().all(|i| i.verifier.keys().has_keys()) {
        reasons.push("no_signing_keys");
    }
    if let Delivery::Inbox(inbox) = &shared.delivery
        && let Err(e) = inbox.store().writable().await
    {
        tracing::warn!(error = %e, "readiness: the store does not take writes");
        reasons.push("store_not_writable");
    }
    if reasons.is_empty() {
        (StatusCode::OK, Json(json!({ "status": "ready" }))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "reasons": reasons })),
        )
            .into_response()
    }
}

/// The Prometheus text, with the gauges read at scrape time.
async fn render_metrics(shared: &Shared) -> Response {
    // With several issuers, the stalest key set and the smallest count: what can go wrong.
    let states = shared
        .issuers
        .iter()
        .map(|i| i.verifier.keys().age_and_count());
    let (age, keys) = states.fold((None, usize::MAX), |(worst, fewest), (age, keys)| {
        (worst.max(age), fewest.min(keys))
    });
    crate::metrics::jwks_state(age, keys);
    if let Delivery::Inbox(inbox) = &shared.delivery {
        match inbox.store().depth().await {
            Ok(depth) => crate::metrics::inbox_depth(&depth),
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read the inbox depth"),
        }
    }
    let handle = crate::metrics::handle();
    handle.run_upkeep();
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

/// The receiver's background tasks; stop them with [`Background::shutdown`].
#[derive(Debug)]
pub struct Background {
    stop: CancellationToken,
    workers: Option<tokio::task::JoinHandle<()>>,
    refreshers: Vec<tokio::task::JoinHandle<()>>,
}

impl Background {
    /// Stop the workers (running handlers finish within `[inbox] shutdown_grace`, the
    /// rest are handed back to the store) and the key refresher.
    pub async fn shutdown(self) {
        self.stop.cancel();
        if let Some(workers) = self.workers {
            let _ = workers.await;
        }
        for refresher in self.refreshers {
            refresher.abort();
        }
    }
}
