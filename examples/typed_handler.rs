//! A typed handler: `data` arrives parsed as `UserPayload`, and the handler branches on
//! `EventType`.
//!
//! - `SyncUser` implements `TypedHandler<Payload = UserPayload>` and registers itself in
//!   one line with `register_handler!` (collected through `inventory`): part 1 builds the
//!   registry from those registrations, as the bundled server does.
//! - Part 2 registers the same handler explicitly with `Registry::builder().handler(..)`:
//!   no macro, the list written in code (useful in tests, or to pick handlers at start-up).
//! - A `data` that does not fit `UserPayload` never reaches `handle` and never panics: it
//!   becomes a `HandlerError` (`BadPayload`), logged with serde's message, and in inline
//!   mode the delivery gets 500 `{"error":"handler_failed"}` (the body never echoes
//!   internals). The server carries on with the next event.
//!
//! Run it:
//!
//! ```sh
//! cargo run --example typed_handler
//! ```
//!
//! No Kinde account and no network beyond loopback: the test kit's `TestIssuer` (feature
//! `testing`) stands in for Kinde. It serves a JWKS on `127.0.0.1` and signs events with
//! it, exactly as Kinde signs them; `deliver` below POSTs them as Kinde does. In your app,
//! the issuer is your Kinde domain (see `issuer_url` in `main`) and Kinde does the sending.

use kinde_webhooks::handler::BoxError;
use kinde_webhooks::payload::UserPayload;
use kinde_webhooks::testing::{TestEvent, TestIssuer};
use kinde_webhooks::{
    Config, Context, Event, EventType, HandlerError, Registry, State, Typed, TypedHandler,
    Webhooks, async_trait, register_handler,
};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Inline delivery, so a handler error shows in the reply (500) and Kinde would retry; the
/// default, `inbox`, would store the event and retry the handler itself.
/// Log level `warn`: the handler failure is logged, the routine lines are not.
const CONFIG: &str = r#"
[delivery]
mode = "inline"

[log]
level = "warn"
"#;

/// Keeps your own users table in step with Kinde (here: says what it would do).
#[derive(Debug)]
struct SyncUser;

#[async_trait]
impl TypedHandler for SyncUser {
    type Payload = UserPayload;

    async fn handle(
        &self,
        payload: UserPayload,
        event: &Event,
        ctx: &Context,
    ) -> Result<(), HandlerError> {
        let user = payload.user;
        let email = user.email.as_deref().unwrap_or("(no email)");
        match event.kind() {
            EventType::UserCreated => {
                println!(
                    "      {}: INSERT user {} <{email}>, {} organization(s)",
                    ctx.handler_name(),
                    user.id,
                    user.organizations.len()
                );
            }
            EventType::UserUpdated => {
                println!(
                    "      {}: UPDATE user {} <{email}> suspended={}",
                    ctx.handler_name(),
                    user.id,
                    user.is_suspended
                );
            }
            // Only reachable if the patterns below grow; `EventType` is non-exhaustive and
            // has `Unknown(..)` for types Kinde adds later. An error, never a panic.
            other => {
                return Err(HandlerError::permanent(format!(
                    "{} does not handle {other}",
                    ctx.handler_name()
                )));
            }
        }
        Ok(())
    }
}

// One line next to the handler: no central list to edit. `Typed` adapts the
// `TypedHandler` to `EventHandler` (it parses `data` before calling `handle`).
register_handler!(
    Typed(SyncUser),
    name = "sync-user",
    patterns = ["user.created", "user.updated"]
);

/// Serve `registry` on a loopback port, deliver each event, print what came back, stop.
async fn serve(
    config: &Config,
    kinde: &TestIssuer,
    registry: Registry,
    events: &[TestEvent],
) -> Result<(), BoxError> {
    for (pattern, handlers) in registry.table() {
        println!("  handler table: {pattern} -> {}", handlers.join(", "));
    }
    let webhooks = Webhooks::open(config, registry, State::new()).await?;
    let background = webhooks.spawn_background(); // JWKS refresh (and inbox workers)

    // Mounted in your own axum app, outside any auth layer (Kinde cannot authenticate).
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "my app" }))
        .merge(webhooks.app());
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

    for event in events {
        let data = serde_json::to_string(&event.claims()["data"])?;
        let event_type = event.event_type();
        println!("  POST {event_type}  data={data}");
        let (status, body) = kinde.deliver(&url, event).await;
        println!("    <- {status} {body}");
    }

    let _ = stop.send(());
    server.await??;
    background.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let kinde = TestIssuer::start().await; // the stand-in for your Kinde environment
    // In your app: `Config::load(Some("config.toml".as_ref()))?`, with
    // `[kinde] issuer_url = "https://<your_subdomain>.kinde.com"` (or env KINDE_ISSUER_URL).
    let mut config = Config::from_toml(CONFIG, "example")?;
    config.kinde.issuer_url = Some(kinde.url());
    kinde_webhooks::telemetry::init(&config.log, kinde_webhooks::telemetry::Output::Stdout);

    let ada = json!({ "user": {
        "id": "kp_0a1b2c3d4e5f60718293a4b5c6d7e8f9",
        "email": "ada@example.com",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "is_suspended": false,
        "organizations": [{ "code": "org_5a1b2c3d4e5", "roles": null, "permissions": null }]
    }});
    let mut suspended = ada.clone();
    suspended["user"]["is_suspended"] = true.into();

    println!("\n== 1. registered with register_handler! (Registry::from_inventory) ==");
    serve(
        &config,
        &kinde,
        Registry::from_inventory()?,
        &[
            kinde.event("user.created").data(ada.clone()),
            // A `data` that does not fit UserPayload (no `user.id`): a handler error.
            kinde
                .event("user.created")
                .data(json!({ "user": { "email": "no-id@example.com" } })),
            // The server is unharmed: the next event is handled.
            kinde.event("user.updated").data(suspended),
        ],
    )
    .await?;

    println!("\n== 2. the same handler, registered explicitly (Registry::builder) ==");
    let registry = Registry::builder()
        .handler(
            "sync-user",
            &["user.created", "user.updated"],
            Typed(SyncUser),
        )
        .build()?;
    serve(
        &config,
        &kinde,
        registry,
        &[kinde.event("user.created").data(ada)],
    )
    .await?;
    Ok(())
}
