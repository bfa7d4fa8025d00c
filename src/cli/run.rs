//! `serve` and `dev`: run the receiver.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use axum::Json;
use axum::Router;
use axum::routing::get;

use super::send::post;
use super::{build_registry, dev_key, fail, load_config, loopback, out};
use crate::EventType;
use crate::config::Config;
use crate::handler::{BoxError, State};
use crate::registry::{Pattern, Registry};
use crate::samples;
use crate::server::{StartError, Webhooks, run_with};
use crate::signing::new_webhook_id;
use crate::telemetry::{self, Output};

async fn bind(addr: &str) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        format!("cannot listen on {addr}: {e}; set KINDE_WEBHOOKS_BIND (or [server] bind) to a free address")
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

pub(super) async fn serve<F>(config: Option<PathBuf>, init: F) -> ExitCode
where
    F: AsyncFn(&Config) -> Result<State, BoxError>,
{
    let config = match load_config(config)
        .and_then(|c| c.validate().map(|()| c).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => return fail(2, e),
    };
    telemetry::init(&config.log, Output::Stdout);
    for warning in config.warnings() {
        tracing::warn!("config: {warning}");
    }
    let webhooks = match open(&config, init).await {
        Ok(w) => w,
        Err(code) => return code,
    };
    let listener = match bind(&config.server.bind).await {
        Ok(l) => l,
        Err(e) => return fail(1, e),
    };
    if let Ok(addr) = listener.local_addr() {
        let jwks: Vec<&str> = webhooks.issuers().map(|(_, keys)| keys.url()).collect();
        tracing::info!(%addr, jwks = %jwks.join(", "), "kinde-webhooks listening on http://{addr}");
    }
    match run_with(listener, webhooks, Router::new(), shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, format!("server error: {e}")),
    }
}

/// The registry, the user's init step and the receiver, as `serve` and `dev` both start them.
async fn open<F>(config: &Config, init: F) -> Result<Webhooks, ExitCode>
where
    F: AsyncFn(&Config) -> Result<State, BoxError>,
{
    let (registry, forwarders) = build_registry(config).map_err(|e| fail(2, e))?;
    // A NATS server that is down is logged and retried; one that refuses the stream stops us.
    forwarders.start().await.map_err(|e| fail(1, e))?;
    let state = init(config)
        .await
        .map_err(|e| fail(1, format!("the init step failed: {e}")))?;
    Webhooks::open(config, registry, state)
        .await
        .map_err(|e| match e {
            StartError::Config(_) => fail(2, e),
            _ => fail(1, e),
        })
}

pub(super) async fn dev<F>(config: Option<PathBuf>, dir: &Path, demo: bool, init: F) -> ExitCode
where
    F: AsyncFn(&Config) -> Result<State, BoxError>,
{
    let mut config = match load_config(config) {
        Ok(c) => c,
        Err(e) => return fail(2, e),
    };
    telemetry::init(&config.log, Output::Stdout);
    for warning in config.warnings() {
        tracing::warn!("config: {warning}");
    }
    // Bind first: a port in use must not leave a key or an inbox file behind.
    let listener = match bind(&config.server.bind).await {
        Ok(l) => l,
        Err(e) => return fail(1, e),
    };
    let key = match dev_key(dir, true) {
        Ok(k) => k,
        Err(e) => return fail(1, e),
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => return fail(1, e),
    };
    let base = format!("http://{}", loopback(addr));
    config.kinde.issuer_url = Some(base.clone());
    config.kinde.jwks_url = Some(format!("{base}/.well-known/jwks.json"));
    // Every route is served by the local issuer, also those naming their own environment.
    for route in &mut config.routes {
        if let Some(issuer) = route.issuer_url.take() {
            out!("  route {}: local issuer instead of {issuer}", route.path);
        }
        route.jwks_url = None;
    }
    if let Err(e) = config.validate() {
        return fail(2, e);
    }
    let webhooks = match open(&config, init).await {
        Ok(w) => w,
        Err(code) => return code,
    };
    out!("kinde-webhooks dev listening on {base}");
    out!(
        "  local issuer: {base} (key {} in {})",
        key.kid(),
        dir.display()
    );
    for route in config.effective_routes() {
        out!(
            "  webhook route: POST {base}{} accepts {}",
            route.path,
            route.patterns.join(", ")
        );
    }
    let demo_events = if demo {
        demo_plan(webhooks.registry(), &config, &base)
    } else {
        Vec::new()
    };
    let jwks = key.jwks();
    let extra = Router::new().route(
        "/.well-known/jwks.json",
        get(move || async move { Json(jwks) }),
    );
    let server = tokio::spawn(run_with(listener, webhooks, extra, shutdown_signal()));
    if !demo_events.is_empty() {
        let client = reqwest::Client::new();
        out!("dev: sending one signed sample event per bundled handler");
        for (event_type, url) in demo_events {
            let claims = samples::sample_claims(&event_type);
            let event_id = claims["event_id"].as_str().unwrap_or_default().to_owned();
            match post(&client, &url, &key.sign(&claims), &new_webhook_id()).await {
                Ok((status, body, _)) => {
                    out!("dev: {event_type} {event_id} -> {status} {body}")
                }
                Err(e) => out!("dev: {event_type} {event_id} -> request failed: {e}"),
            }
        }
    }
    // `send` finds the server from the config and KINDE_WEBHOOKS_BIND; say --url when it would not.
    let route = config
        .effective_routes()
        .first()
        .map(|r| r.path.clone())
        .unwrap_or_default();
    let url = format!("{base}{route}");
    let hint = match load_config(None) {
        Ok(c) if super::send::default_url(&c, "user.created") == url => String::new(),
        _ => format!(" --url {url}"),
    };
    out!("dev: ready; try `cargo run -- send user.created{hint}` in another terminal");
    match server.await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => fail(1, format!("server error: {e}")),
        Err(e) => fail(1, format!("server task failed: {e}")),
    }
}

/// One (event type, URL) per handler: its exact type, else the first known type of its
/// group, else `user.created`; sent to the first route that accepts that type.
fn demo_plan(registry: &Registry, config: &Config, base: &str) -> Vec<(String, String)> {
    let routes = config.effective_routes();
    let mut plan = Vec::new();
    for entry in registry.entries() {
        let event_type = entry
            .patterns
            .iter()
            .find_map(|p| match p {
                Pattern::Exact(t) => Some(t.clone()),
                Pattern::Group(_) => EventType::KNOWN
                    .iter()
                    .map(|t| t.as_str())
                    .find(|t| p.matches(t))
                    .map(str::to_owned),
                Pattern::All => None,
            })
            .unwrap_or_else(|| "user.created".to_owned());
        let route = routes.iter().find(|r| r.accepts(&event_type));
        if let Some(route) = route
            && !plan.iter().any(|(t, _)| *t == event_type)
        {
            plan.push((event_type, format!("{base}{}", route.path)));
        }
    }
    plan
}
