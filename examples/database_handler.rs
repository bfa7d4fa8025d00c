//! A handler that writes every event to your database: SQLite through `sqlx`.
//!
//! - The pool is built once at start-up and put in the application `State`; the handler
//!   reads it with `ctx.state::<SqlitePool>()?` (a missing pool is a `HandlerError`, not a
//!   panic).
//! - The insert is idempotent on the signed `event_id`
//!   (`INSERT ... ON CONFLICT (event_id) DO NOTHING`), so running the handler twice for one
//!   event stores one row. That happens: here the event has a second handler (`notify-crm`)
//!   whose service is down, the delivery gets 500, and Kinde's retry runs both handlers
//!   again (inline mode records an event as handled only once all its handlers succeeded).
//!   In inbox mode each handler is retried on its own, but a crash between your commit and
//!   the inbox recording success, or an `inbox replay`, runs it again too.
//! - At the end the example prints the table.
//!
//! Run it:
//!
//! ```sh
//! cargo run --example database_handler
//! ```
//!
//! The database is a temporary file, deleted at exit. (`sqlite::memory:` works too, with
//! `max_connections(1)`: each connection to it opens a database of its own.)
//!
//! **With PostgreSQL** the handler is the same with `sqlx::PgPool`
//! (`PgPool::connect(&std::env::var("DATABASE_URL")?)`, in `State` the same way), `$1..$5`
//! placeholders instead of `?`, and better column types (`occurred_at TIMESTAMPTZ`,
//! `claims JSONB`); `ON CONFLICT (event_id) DO NOTHING` is the same statement. The inbox
//! can live in that database too: `[store] backend = "postgres"`.
//!
//! No Kinde account and no network beyond loopback: the test kit's `TestIssuer` (feature
//! `testing`) stands in for Kinde. It serves a JWKS on `127.0.0.1` and signs events with
//! it, exactly as Kinde signs them; `deliver` below POSTs them as Kinde does. In your app,
//! the issuer is your Kinde domain (see `issuer_url` in `main`) and Kinde does the sending.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kinde_webhooks::handler::BoxError;
use kinde_webhooks::testing::{TestEvent, TestIssuer};
use kinde_webhooks::{
    Config, Context, Event, EventHandler, HandlerError, Registry, State, Webhooks, async_trait,
};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Inline delivery: the reply tells how the handlers went (a failure is a 500 and Kinde
/// retries). Log level `warn`: the failing handler is logged, routine lines are not.
const CONFIG: &str = r#"
[delivery]
mode = "inline"

[log]
level = "warn"
"#;

/// Your schema. The primary key on `event_id` is what makes the handler idempotent.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS kinde_events (
    event_id    TEXT PRIMARY KEY,
    event_type  TEXT NOT NULL,
    subject     TEXT,
    occurred_at TEXT NOT NULL,
    claims      TEXT NOT NULL
)";

/// Writes every event it receives to `kinde_events`, once.
#[derive(Debug)]
struct StoreEvent;

#[async_trait]
impl EventHandler for StoreEvent {
    async fn handle(&self, event: &Event, ctx: &Context) -> Result<(), HandlerError> {
        let pool = ctx.state::<SqlitePool>()?;
        // Who the event is about: a user id or an organization code (raw `data`, since this
        // handler takes every type; see the typed_handler example for typed payloads).
        let subject = event.data["user"]["id"]
            .as_str()
            .or_else(|| event.data["organization"]["code"].as_str());
        let inserted = sqlx::query(
            "INSERT INTO kinde_events (event_id, event_type, subject, occurred_at, claims)
             VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(&event.event_id)
        .bind(&event.event_type)
        .bind(subject)
        .bind(event.timestamp.to_rfc3339())
        .bind(&*event.claims)
        .execute(pool)
        .await
        // A database error is worth retrying (locked, disk full, connection lost).
        .map_err(HandlerError::other)?
        .rows_affected();
        if inserted == 1 {
            println!("      store-event: inserted {}", event.event_id);
        } else {
            println!(
                "      store-event: {} is already stored; nothing to do",
                event.event_id
            );
        }
        Ok(())
    }
}

/// Whether the (imaginary) CRM answers; the example switches it off for a while.
#[derive(Debug, Clone)]
struct CrmUp(Arc<AtomicBool>);

/// A second handler for user events, calling a CRM that is sometimes down.
#[derive(Debug)]
struct NotifyCrm;

#[async_trait]
impl EventHandler for NotifyCrm {
    async fn handle(&self, event: &Event, ctx: &Context) -> Result<(), HandlerError> {
        if !ctx.state::<CrmUp>()?.0.load(Ordering::SeqCst) {
            println!("      notify-crm: CRM unreachable");
            return Err(HandlerError::msg("CRM unreachable"));
        }
        println!("      notify-crm: told the CRM about {}", event.event_id);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let kinde = TestIssuer::start().await; // the stand-in for your Kinde environment
    // In your app: `Config::load(Some("config.toml".as_ref()))?`, with
    // `[kinde] issuer_url = "https://<your_subdomain>.kinde.com"` (or env KINDE_ISSUER_URL).
    let mut config = Config::from_toml(CONFIG, "example")?;
    config.kinde.issuer_url = Some(kinde.url());
    kinde_webhooks::telemetry::init(&config.log, kinde_webhooks::telemetry::Output::Stdout);

    // The init step: open the database once, migrate, put the pool in the state.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("app.db");
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?;
    sqlx::query(SCHEMA).execute(&pool).await?;
    println!("database: {}", path.display());
    let crm = CrmUp(Arc::new(AtomicBool::new(true)));
    let state = State::new().with(pool.clone()).with(crm.clone());

    let registry = Registry::builder()
        .handler("store-event", &["*"], StoreEvent)
        .handler("notify-crm", &["user.*"], NotifyCrm)
        .build()?;
    let webhooks = Webhooks::open(&config, registry, state).await?;
    let background = webhooks.spawn_background();
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

    let send = async |what: &str, event: &TestEvent| -> Result<(), BoxError> {
        let event_type = event.event_type();
        println!("  POST {what}{event_type} {}", event.id());
        let (status, body) = kinde.deliver(&url, event).await;
        println!("    <- {status} {body}");
        Ok(())
    };

    send("", &kinde.event("user.created")).await?;
    send("", &kinde.event("organization.created")).await?;

    println!("  -- the CRM goes down");
    crm.0.store(false, Ordering::SeqCst);
    let update = kinde.event("user.updated");
    send("", &update).await?;
    println!("  -- the CRM is back; Kinde retries the failed delivery");
    crm.0.store(true, Ordering::SeqCst);
    send("(Kinde's retry) ", &update).await?;
    println!("  -- and once more, as if our 200 had been lost: already handled, no handler runs");
    send("(Kinde's retry) ", &update).await?;

    let _ = stop.send(());
    server.await??;
    background.shutdown().await;

    println!("\nSELECT event_id, event_type, subject, occurred_at FROM kinde_events:");
    let rows: Vec<(String, String, Option<String>, String)> = sqlx::query_as(
        "SELECT event_id, event_type, subject, occurred_at FROM kinde_events ORDER BY rowid",
    )
    .fetch_all(&pool)
    .await?;
    for (event_id, event_type, subject, occurred_at) in &rows {
        let subject = subject.as_deref().unwrap_or("-");
        println!("  {event_id}  {event_type:<22} {subject:<36} {occurred_at}");
    }
    println!("{} rows for 3 events and 5 deliveries", rows.len());
    pool.close().await;
    Ok(())
}
