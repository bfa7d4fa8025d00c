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
use tracing::Instrument;
use tracing::field::{Empty, display};

use crate::config::{Config, ConfigError};
use crate::dispatch::Dispatcher;
use crate::handler::State;
use crate::jwks::KeyStore;
use crate::registry::{Pattern, Registry, any_matches};
use crate::reply::{self, Rejection};
use crate::verify::Verifier;

/// The header Kinde sets to the same value on every retry of one delivery.
pub const WEBHOOK_ID_HEADER: &str = "webhook-id";

/// A configured receiver: verifier, handlers and routes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Webhooks {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    verifier: Verifier,
    dispatcher: Dispatcher,
    routes: Vec<Route>,
    body_limit: usize,
    refresh_interval: Duration,
}

#[derive(Debug)]
struct Route {
    path: String,
    patterns: Vec<Pattern>,
}

impl Webhooks {
    /// Build the receiver from a validated config, the handler registry and the
    /// application state the handlers read.
    pub fn new(config: &Config, registry: Registry, state: State) -> Result<Self, ConfigError> {
        config.validate()?;
        let jwks_url = config.jwks_url().ok_or_else(|| ConfigError::Invalid {
            key: "kinde.issuer_url".into(),
            message: "is not set: set KINDE_ISSUER_URL".into(),
        })?;
        let keys = KeyStore::new(jwks_url, config.kinde.jwks_refresh_cooldown);
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
                dispatcher: Dispatcher::new(registry, state, config.handlers.clone()),
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

    /// Log the routes and the handler table, once at start-up.
    pub fn log_startup(&self) {
        for route in &self.shared.routes {
            let patterns: Vec<String> = route.patterns.iter().map(ToString::to_string).collect();
            tracing::info!(path = %route.path, patterns = %patterns.join(", "), "webhook route");
        }
        for (pattern, handlers) in self.registry().table() {
            tracing::info!(%pattern, handlers = %handlers.join(", "), "handler registered");
        }
    }

    /// Only the webhook routes (POST), each with the body limit. Mount it in your own app.
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

    /// The webhook routes plus `GET /healthz`.
    pub fn app(&self) -> Router {
        self.router().route("/healthz", get(|| async { "ok" }))
    }
}

/// One delivery: read, verify, route, dispatch, answer.
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

    if !any_matches(&route.patterns, &event.event_type) {
        tracing::info!("event type not accepted on this route; acknowledged, not dispatched");
        return Ok(reply::ok());
    }
    let report = shared.dispatcher.dispatch(&event).await;
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
    Ok(reply::ok())
}

/// Serve `webhooks.app()` on `listener` until `shutdown` completes, keeping the key set
/// fresh in the background. The first JWKS fetch happens after the listener is serving,
/// so a JWKS that is down does not stop the server from starting (it answers 503 until
/// keys arrive).
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
    let refresher = webhooks
        .keys()
        .spawn_refresher(webhooks.shared.refresh_interval);
    let app = webhooks.app().merge(extra);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    refresher.abort();
    result
}
