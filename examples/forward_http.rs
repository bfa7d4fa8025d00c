//! Forward every verified event to another service over HTTP, through the durable inbox.
//!
//! - `ForwardHttp` POSTs the signed claims JSON, as Kinde sent them, to a downstream URL
//!   read from its own config section (`[handlers.forward-http] url`, with
//!   `ctx.settings()`), with `Idempotency-Key: <event_id>` so the downstream can drop
//!   copies. The HTTP client is shared application state (`ctx.state()`).
//! - A 2xx is success. A 4xx (but 408 and 429) is `HandlerError::permanent`: the
//!   downstream refuses this event and will refuse it again, so the inbox dead-letters it
//!   at once (`inbox replay --dead` once fixed). Anything else (5xx, 408/429, no answer) is
//!   a retryable `HandlerError`.
//! - Delivery is `inbox` (the default) over a temporary SQLite file: each event is stored
//!   before Kinde gets its 200, then a worker runs the handler, retrying with backoff. So
//!   a downstream outage delays events, it does not lose them, and Kinde is never kept
//!   waiting. Here the downstream (a small axum service on `127.0.0.1:0`) fails its first
//!   request: the inbox retries, and the event arrives once.
//!
//! Run it:
//!
//! ```sh
//! cargo run --example forward_http
//! ```
//!
//! **No code at all for NATS**: the bundled forwarder publishes each event to NATS
//! JetStream from config alone, with the same retries and `Nats-Msg-Id = event_id`:
//!
//! ```toml
//! [[forward.nats]]
//! name = "nats"
//! patterns = ["user.*", "organization.*"]
//! url = "nats://127.0.0.1:4222"
//! ```
//!
//! No Kinde account and no network beyond loopback: the test kit's `TestIssuer` (feature
//! `testing`) stands in for Kinde. It serves a JWKS on `127.0.0.1` and signs events with
//! it, exactly as Kinde signs them; `deliver` below POSTs them as Kinde does. In your app,
//! the issuer is your Kinde domain (see `issuer_url` in `main`) and Kinde does the sending.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State as AxumState;
use axum::http::{HeaderMap, StatusCode};
use kinde_webhooks::handler::BoxError;
use kinde_webhooks::inbox::store::ListFilter;
use kinde_webhooks::testing::TestIssuer;
use kinde_webhooks::{
    Config, Context, Event, EventHandler, HandlerError, Registry, State, Webhooks, async_trait,
};
use serde::Deserialize;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The receiver's config. `{url}` is the downstream's address.
/// The retry timings are shortened so the demo's retry comes within a second (defaults:
/// `retry_base = "5s"`, `retry_cap = "1h"`, `poll_interval = "1s"`).
const CONFIG: &str = r#"
[delivery]
mode = "inbox"

[inbox]
retry_base = "300ms"
retry_cap = "2s"
poll_interval = "100ms"

[log]
level = "warn"

[handlers.forward-http]
url = "{url}"
"#;

/// `[handlers.forward-http]` in `config.toml`.
#[derive(Debug, Deserialize)]
struct ForwardSettings {
    /// Where each event is POSTed.
    url: String,
}

/// POSTs each event's claims to the downstream service.
#[derive(Debug)]
struct ForwardHttp;

#[async_trait]
impl EventHandler for ForwardHttp {
    async fn handle(&self, event: &Event, ctx: &Context) -> Result<(), HandlerError> {
        let settings: ForwardSettings = ctx.settings()?;
        let client = ctx.state::<reqwest::Client>()?;
        let response = client
            .post(&settings.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", &event.event_id)
            .body(event.claims.to_string())
            .send()
            .await
            // Refused, reset, timed out: the service may be back soon.
            .map_err(HandlerError::other)?;
        let status = response.status();
        let reason = || format!("{} answered {status}", settings.url);
        if status.is_success() {
            Ok(())
        } else if status.is_client_error()
            && status != StatusCode::REQUEST_TIMEOUT
            && status != StatusCode::TOO_MANY_REQUESTS
        {
            Err(HandlerError::permanent(reason()))
        } else {
            Err(HandlerError::msg(reason()))
        }
    }
}

/// The downstream service's memory: what it stored, by idempotency key.
#[derive(Debug, Default)]
struct Downstream {
    requests: AtomicUsize,
    stored: Mutex<HashMap<String, String>>,
}

/// The downstream service: `POST /kinde-events`. It is down for its first request, takes
/// `user.*` and `organization.*`, and refuses other types with 422.
async fn downstream(
    AxumState(service): AxumState<Arc<Downstream>>,
    headers: HeaderMap,
    axum::Json(claims): axum::Json<Value>,
) -> (StatusCode, &'static str) {
    let n = service.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let event_type = claims["type"].as_str().unwrap_or_default().to_owned();
    let (status, body) = if n == 1 {
        (StatusCode::SERVICE_UNAVAILABLE, "down for maintenance")
    } else if !(event_type.starts_with("user.") || event_type.starts_with("organization.")) {
        (StatusCode::UNPROCESSABLE_ENTITY, "unsupported event type")
    } else {
        let mut stored = service.stored.lock().unwrap_or_else(|e| e.into_inner());
        if stored.contains_key(&key) {
            (StatusCode::OK, "already have it")
        } else {
            stored.insert(key.clone(), event_type.clone());
            (StatusCode::CREATED, "stored")
        }
    };
    println!(
        "      downstream: request {n}: {event_type} Idempotency-Key={key} -> {status} {body}"
    );
    (status, body)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // The downstream service, standing in for yours.
    let service = Arc::new(Downstream::default());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let downstream_url = format!("http://{}/kinde-events", listener.local_addr()?);
    let downstream_app = axum::Router::new()
        .route("/kinde-events", axum::routing::post(downstream))
        .with_state(service.clone());
    tokio::spawn(async move { axum::serve(listener, downstream_app).await });
    println!("downstream service: POST {downstream_url}");

    let kinde = TestIssuer::start().await; // the stand-in for your Kinde environment
    // In your app: `Config::load(Some("config.toml".as_ref()))?`, with
    // `[kinde] issuer_url = "https://<your_subdomain>.kinde.com"` (or env KINDE_ISSUER_URL)
    // and `[store] path` where the inbox file should live.
    let mut config = Config::from_toml(&CONFIG.replace("{url}", &downstream_url), "example")?;
    config.kinde.issuer_url = Some(kinde.url());
    let inbox_dir = tempfile::tempdir()?;
    config.store.path = inbox_dir.path().join("inbox.db");
    kinde_webhooks::telemetry::init(&config.log, kinde_webhooks::telemetry::Output::Stdout);

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5)) // keep it under [delivery] handler_timeout
        .build()?;
    let registry = Registry::builder()
        .handler("forward-http", &["*"], ForwardHttp)
        .build()?;
    let webhooks = Webhooks::open(&config, registry, State::new().with(http)).await?;
    let background = webhooks.spawn_background(); // JWKS refresh + inbox workers
    let app = axum::Router::new().merge(webhooks.app());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/api/kinde-webhook", listener.local_addr()?);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });

    let created = kinde.event("user.created");
    let events = [
        ("", &created),
        ("", &kinde.event("organization.created")),
        ("", &kinde.event("role.created")),
        // Already stored: acknowledged at once, not forwarded again.
        ("(Kinde's retry) ", &created),
    ];
    for (what, event) in events {
        let event_type = event.event_type();
        let (status, body) = kinde.deliver(&url, event).await;
        println!(
            "  POST {what}{event_type} {} <- {status} {body}",
            event.id()
        );
    }

    // The 200s came as soon as each event was stored; wait for the inbox to finish.
    let store = webhooks.inbox().ok_or("inbox mode")?.store().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let depth = store.depth().await?;
        if depth.pending == 0 && depth.in_flight == 0 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err("the inbox did not finish in time".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    println!("\nthe inbox (`kinde-webhooks inbox list` / `inbox show`):");
    let filter = ListFilter {
        limit: 10,
        ..ListFilter::default()
    };
    let mut events = store.list(&filter).await?;
    events.reverse(); // oldest first
    for event in events {
        println!(
            "  {} {:<21} {}",
            event.event_id,
            event.event_type,
            event.status.as_str()
        );
        for detail in store.show(&event.event_id).await? {
            for job in detail.jobs {
                println!(
                    "      {}: {} after {} attempt(s)",
                    job.handler, job.status, job.attempts
                );
                for (n, attempt) in job.history.iter().enumerate() {
                    let outcome = attempt.error.as_deref().unwrap_or("ok");
                    println!("        attempt {}: {outcome}", n + 1);
                }
            }
        }
    }
    let stored = service
        .stored
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .len();
    let requests = service.requests.load(Ordering::SeqCst);
    println!("downstream: {requests} requests, {stored} events stored, each once");

    let _ = stop.send(());
    server.await??;
    background.shutdown().await;
    Ok(())
}
