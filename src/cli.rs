//! The command line of the bundled server: `serve`, `dev`, `send` and `handlers`.
//!
//! A binary is one line: `kinde_webhooks::cli::main(my_handlers::init)`, where `init` is
//! the user's start-up step that builds the application state handlers read.
//!
//! Exit codes: 0 success; 1 the work failed (the server stopped on an error, `send` got a
//! non-2xx answer); 2 the command line or the configuration is wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::routing::get;
use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::config::Config;
use crate::handler::{BoxError, State};
use crate::registry::{Pattern, Registry, any_matches};
use crate::server::{WEBHOOK_ID_HEADER, Webhooks, run_with};
use crate::signing::{SigningKey, complete_claims, new_webhook_id};
use crate::{EventType, samples, telemetry};

/// Where `dev` keeps its signing key unless told otherwise; git-ignored.
pub const DEFAULT_DEV_DIR: &str = ".kinde-dev";
const DEV_KEY_FILE: &str = "signing-key.pem";

/// Receive Kinde webhooks: verify each RS256-signed event and run the handlers registered
/// for its type.
#[derive(Debug, Parser)]
#[command(name = "kinde-webhooks", version, arg_required_else_help = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the receiver for a real Kinde tenant (set KINDE_ISSUER_URL).
    Serve {
        /// The configuration file [default: ./config.toml if it exists, else built-in defaults].
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the receiver with a built-in local issuer: no Kinde account needed. Sends one
    /// sample event per bundled handler at start-up, then keeps serving.
    Dev {
        /// The configuration file [default: ./config.toml if it exists].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the dev signing key is kept (created on first run).
        #[arg(long, env = "KINDE_WEBHOOKS_DEV_DIR", default_value = DEFAULT_DEV_DIR)]
        dir: PathBuf,
        /// Do not send the demo events at start-up.
        #[arg(long)]
        no_demo: bool,
    },
    /// Sign a Kinde-shaped event with the dev key and POST it to a receiver.
    Send {
        /// The event type, e.g. user.created; every known type has sample data. May be
        /// omitted when --payload holds a `type`.
        event_type: Option<String>,
        /// A JSON file (or - for stdin) holding the whole claims object; `event_id`,
        /// `timestamp` and `source` are filled in when missing.
        #[arg(long, value_name = "FILE")]
        payload: Option<String>,
        /// Where to POST [default: the first route of ./config.toml on its bind address].
        #[arg(long)]
        url: Option<String>,
        /// The webhook-id header [default: a fresh one].
        #[arg(long)]
        webhook_id: Option<String>,
        /// The event_id claim [default: the payload's, else a fresh one].
        #[arg(long)]
        event_id: Option<String>,
        /// Where the dev signing key is kept.
        #[arg(long, env = "KINDE_WEBHOOKS_DEV_DIR", default_value = DEFAULT_DEV_DIR)]
        dir: PathBuf,
    },
    /// Print the handler table: pattern -> handler (module).
    Handlers,
}

/// Parse the command line and run the command. `init` builds the application state once
/// at start-up (a database pool, an HTTP client) from the loaded configuration.
pub fn main<F>(init: F) -> ExitCode
where
    F: AsyncFn(&Config) -> Result<State, BoxError>,
{
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(1, format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Serve { config } => serve(config, init).await,
            Command::Dev {
                config,
                dir,
                no_demo,
            } => dev(config, &dir, !no_demo, init).await,
            Command::Send {
                event_type,
                payload,
                url,
                webhook_id,
                event_id,
                dir,
            } => send(event_type, payload, url, webhook_id, event_id, &dir).await,
            Command::Handlers => handlers(),
        }
    })
}

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}

/// The explicit path, else `./config.toml` when it exists, else none (defaults).
fn config_path(explicit: Option<PathBuf>) -> Option<PathBuf> {
    explicit.or_else(|| Some(PathBuf::from("config.toml")).filter(|p| p.exists()))
}

fn load_config(explicit: Option<PathBuf>) -> Result<Config, String> {
    Config::read(config_path(explicit).as_deref()).map_err(|e| e.to_string())
}

fn build_registry() -> Result<Registry, String> {
    Registry::from_inventory().map_err(|e| e.to_string())
}

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

async fn serve<F>(config: Option<PathBuf>, init: F) -> ExitCode
where
    F: AsyncFn(&Config) -> Result<State, BoxError>,
{
    let config = match load_config(config)
        .and_then(|c| c.validate().map(|()| c).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => return fail(2, e),
    };
    telemetry::init(&config.log);
    let registry = match build_registry() {
        Ok(r) => r,
        Err(e) => return fail(2, e),
    };
    let state = match init(&config).await {
        Ok(s) => s,
        Err(e) => return fail(1, format!("the init step failed: {e}")),
    };
    let webhooks = match Webhooks::open(&config, registry, state).await {
        Ok(w) => w,
        Err(e) => return fail(2, e),
    };
    let listener = match bind(&config.server.bind).await {
        Ok(l) => l,
        Err(e) => return fail(1, e),
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, jwks = %webhooks.keys().url(), "kinde-webhooks listening on http://{addr}");
    }
    match run_with(listener, webhooks, Router::new(), shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, format!("server error: {e}")),
    }
}

/// The dev signing key in `dir`, generated and saved on first use.
fn dev_key(dir: &Path) -> Result<SigningKey, String> {
    let path = dir.join(DEV_KEY_FILE);
    if path.exists() {
        let pem = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        return SigningKey::from_pem(&pem, None)
            .map_err(|e| format!("{}: {e}; delete it to make a new one", path.display()));
    }
    let key = SigningKey::generate().map_err(|e| e.to_string())?;
    let pem = key.to_pem().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    std::fs::write(&path, pem).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(key)
}

async fn dev<F>(config: Option<PathBuf>, dir: &Path, demo: bool, init: F) -> ExitCode
where
    F: AsyncFn(&Config) -> Result<State, BoxError>,
{
    let mut config = match load_config(config) {
        Ok(c) => c,
        Err(e) => return fail(2, e),
    };
    telemetry::init(&config.log);
    let key = match dev_key(dir) {
        Ok(k) => k,
        Err(e) => return fail(1, e),
    };
    let listener = match bind(&config.server.bind).await {
        Ok(l) => l,
        Err(e) => return fail(1, e),
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => return fail(1, e),
    };
    let base = format!("http://{}", loopback(addr));
    config.kinde.issuer_url = Some(base.clone());
    config.kinde.jwks_url = Some(format!("{base}/.well-known/jwks.json"));
    if let Err(e) = config.validate() {
        return fail(2, e);
    }
    let registry = match build_registry() {
        Ok(r) => r,
        Err(e) => return fail(2, e),
    };
    let state = match init(&config).await {
        Ok(s) => s,
        Err(e) => return fail(1, format!("the init step failed: {e}")),
    };
    let webhooks = match Webhooks::open(&config, registry, state).await {
        Ok(w) => w,
        Err(e) => return fail(2, e),
    };
    println!("kinde-webhooks dev listening on {base}");
    println!(
        "  local issuer: {base} (key {} in {})",
        key.kid(),
        dir.display()
    );
    for route in config.effective_routes() {
        println!(
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
        println!("dev: sending one signed sample event per bundled handler");
        for (event_type, url) in demo_events {
            let claims = samples::sample_claims(&event_type);
            let event_id = claims["event_id"].as_str().unwrap_or_default().to_owned();
            match post(&client, &url, &key.sign(&claims), &new_webhook_id()).await {
                Ok((status, body, _)) => {
                    println!("dev: {event_type} {event_id} -> {status} {body}")
                }
                Err(e) => println!("dev: {event_type} {event_id} -> request failed: {e}"),
            }
        }
        println!("dev: ready; try `cargo run -- send user.created` in another terminal");
    }
    match server.await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => fail(1, format!("server error: {e}")),
        Err(e) => fail(1, format!("server task failed: {e}")),
    }
}

/// `0.0.0.0:3000` is reachable as `127.0.0.1:3000`.
fn loopback(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
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
        let route = routes.iter().find(|r| {
            let patterns: Vec<Pattern> = r
                .patterns
                .iter()
                .filter_map(|p| Pattern::parse(p).ok())
                .collect();
            any_matches(&patterns, &event_type)
        });
        if let Some(route) = route
            && !plan.iter().any(|(t, _)| *t == event_type)
        {
            plan.push((event_type, format!("{base}{}", route.path)));
        }
    }
    plan
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    webhook_id: &str,
) -> Result<(u16, String, Duration), String> {
    let started = Instant::now();
    let response = client
        .post(url)
        .header("content-type", "application/jwt")
        .header(WEBHOOK_ID_HEADER, webhook_id)
        .body(token.to_owned())
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    Ok((status, body, started.elapsed()))
}

fn read_payload(source: &str) -> Result<Value, String> {
    let text = if source == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("cannot read stdin: {e}"))?
    } else {
        std::fs::read_to_string(source).map_err(|e| format!("cannot read {source}: {e}"))?
    };
    let value: Value =
        serde_json::from_str(&text).map_err(|e| format!("{source} is not JSON: {e}"))?;
    if !value.is_object() {
        return Err(format!(
            "{source} must hold the whole claims object ({{\"type\": ..., \"data\": ...}})"
        ));
    }
    Ok(value)
}

async fn send(
    event_type: Option<String>,
    payload: Option<String>,
    url: Option<String>,
    webhook_id: Option<String>,
    event_id: Option<String>,
    dir: &Path,
) -> ExitCode {
    let mut claims = match payload.as_deref().map(read_payload).transpose() {
        Ok(c) => c.unwrap_or_else(|| serde_json::json!({})),
        Err(e) => return fail(2, e),
    };
    if let Some(t) = event_type {
        claims["type"] = t.into();
    }
    let Some(event_type) = claims
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return fail(
            2,
            "give an event type (e.g. `send user.created`) or a --payload with a \"type\"",
        );
    };
    if claims.get("data").is_none() {
        claims["data"] = samples::sample_data(&event_type);
    }
    if let Some(id) = event_id {
        claims["event_id"] = id.into();
    }
    let claims = complete_claims(claims);
    let url = match url {
        Some(u) => u,
        None => match load_config(None) {
            Ok(c) => default_url(&c, &event_type),
            Err(e) => return fail(2, e),
        },
    };
    let key = match dev_key(dir) {
        Ok(k) => k,
        Err(e) => return fail(1, e),
    };
    let webhook_id = webhook_id.unwrap_or_else(new_webhook_id);
    let event_id = claims["event_id"].as_str().unwrap_or_default().to_owned();
    match post(
        &reqwest::Client::new(),
        &url,
        &key.sign(&claims),
        &webhook_id,
    )
    .await
    {
        Ok((status, body, elapsed)) => {
            println!(
                "{event_type} {event_id} (webhook-id {webhook_id}) -> {status} in {:.1} ms: {body}",
                elapsed.as_secs_f64() * 1e3
            );
            if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => fail(1, format!("{e}; is `kinde-webhooks dev` running?")),
    }
}

/// The first route of `config` that accepts `event_type`, on its bind address.
fn default_url(config: &Config, event_type: &str) -> String {
    let routes = config.effective_routes();
    let route = routes
        .iter()
        .find(|r| {
            let patterns: Vec<Pattern> = r
                .patterns
                .iter()
                .filter_map(|p| Pattern::parse(p).ok())
                .collect();
            any_matches(&patterns, event_type)
        })
        .unwrap_or(&routes[0]);
    let addr = config
        .bind_addr()
        .map(loopback)
        .map(|a| a.to_string())
        .unwrap_or_else(|_| config.server.bind.clone());
    format!("http://{addr}{}", route.path)
}

fn handlers() -> ExitCode {
    let registry = match build_registry() {
        Ok(r) => r,
        Err(e) => return fail(2, e),
    };
    let table = registry.table();
    let width = table.keys().map(String::len).max().unwrap_or(7).max(7);
    println!("{:width$}  HANDLER (MODULE)", "PATTERN");
    for (pattern, names) in table {
        for name in names {
            let module = registry
                .entries()
                .iter()
                .find(|e| *e.name == *name)
                .map(|e| e.module.as_str())
                .unwrap_or("");
            println!("{pattern:width$}  {name} ({module})");
        }
    }
    ExitCode::SUCCESS
}
