//! One grouped endpoint or split endpoints per group, configured from TOML (`[[routes]]`).
//!
//! The same two handlers (`user-directory` for `user.*`, `org-directory` for
//! `organization.*`) are served twice:
//!
//! 1. **grouped**: one endpoint, `/api/kinde-webhook`, accepting `*`. In Kinde: one
//!    webhook subscribed to every event you care about.
//! 2. **split**: `/hooks/users` accepting `user.*` and `/hooks/organizations` accepting
//!    `organization.*`. In Kinde: one webhook per group, each with its own URL.
//!
//! Which handlers run is decided by their patterns; a route only decides which events it
//! takes. An event a route does not accept (an organization event on `/hooks/users`,
//! because its Kinde webhook was subscribed to more than its URL is for) is acknowledged
//! with 200, so Kinde does not retry it for 36 hours, and no handler runs. The log line
//! and the `outcome="unrouted"` metric show it.
//!
//! Run it:
//!
//! ```sh
//! cargo run --example split_vs_grouped
//! ```
//!
//! No Kinde account and no network beyond loopback: the test kit's `TestIssuer` (feature
//! `testing`) stands in for Kinde. It serves a JWKS on `127.0.0.1` and signs events with
//! it, exactly as Kinde signs them; `deliver` below POSTs them as Kinde does. In your app,
//! the issuer is your Kinde domain (see `issuer_url` in `main`) and Kinde does the sending.

use std::sync::{Arc, Mutex};

use kinde_webhooks::handler::BoxError;
use kinde_webhooks::testing::TestIssuer;
use kinde_webhooks::{
    Config, Context, Event, EventHandler, HandlerError, Registry, State, Webhooks, async_trait,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// One endpoint for everything. Delivery is inline (handlers run before the reply) so the
/// reply shows how they went; the default, `inbox`, stores the event first.
const GROUPED: &str = r#"
[delivery]
mode = "inline"

[[routes]]
path = "/api/kinde-webhook"
patterns = ["*"]
"#;

/// One endpoint per group: give each Kinde webhook its own URL.
const SPLIT: &str = r#"
[delivery]
mode = "inline"

[[routes]]
path = "/hooks/users"
patterns = ["user.*"]

[[routes]]
path = "/hooks/organizations"
patterns = ["organization.*"]
"#;

/// The names of the handlers that ran, in order: the example prints it after each delivery.
#[derive(Debug, Clone, Default)]
struct Ran(Arc<Mutex<Vec<String>>>);

impl Ran {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Keeps your user directory in step with Kinde (here: says what it would do).
#[derive(Debug)]
struct UserDirectory;

#[async_trait]
impl EventHandler for UserDirectory {
    async fn handle(&self, event: &Event, ctx: &Context) -> Result<(), HandlerError> {
        let user = event.data["user"]["id"].as_str().unwrap_or("?");
        println!(
            "      {}: {} for user {user}",
            ctx.handler_name(),
            event.event_type
        );
        ctx.state::<Ran>()?
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ctx.handler_name().to_owned());
        Ok(())
    }
}

/// Keeps your organizations in step with Kinde (here: says what it would do).
#[derive(Debug)]
struct OrgDirectory;

#[async_trait]
impl EventHandler for OrgDirectory {
    async fn handle(&self, event: &Event, ctx: &Context) -> Result<(), HandlerError> {
        let code = event.data["organization"]["code"].as_str().unwrap_or("?");
        println!(
            "      {}: {} for organization {code}",
            ctx.handler_name(),
            event.event_type
        );
        ctx.state::<Ran>()?
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ctx.handler_name().to_owned());
        Ok(())
    }
}

/// A receiver serving on a loopback port until [`Running::stop`].
#[derive(Debug)]
struct Running {
    base: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn stop(self) -> Result<(), BoxError> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}

/// Build the receiver from `toml` and serve it as the bundled server does.
async fn serve(
    toml: &str,
    issuer_url: &str,
    registry: Registry,
    state: State,
) -> Result<Running, BoxError> {
    // In your app: `Config::load(Some("config.toml".as_ref()))?`, with
    // `[kinde] issuer_url = "https://<your_subdomain>.kinde.com"` in the file (or the env
    // KINDE_ISSUER_URL). Here the issuer is the local stand-in.
    let mut config = Config::from_toml(toml, "example")?;
    config.kinde.issuer_url = Some(issuer_url.to_owned());
    let webhooks = Webhooks::open(&config, registry, state).await?;

    // In production: `TcpListener::bind("0.0.0.0:3000")` behind your load balancer.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = oneshot::channel::<()>();
    // `run` serves `webhooks.app()` with the connection limits, keeps the JWKS fresh and
    // runs the inbox workers; it logs the routes and the handler table at start.
    let task = tokio::spawn(kinde_webhooks::run(listener, webhooks, async {
        let _ = stopped.await;
    }));
    // Ready once the issuer's keys are loaded: what a load balancer's check would wait for.
    let client = reqwest::Client::new();
    while client.get(format!("{base}/readyz")).send().await?.status() != 200 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(Running { base, stop, task })
}

/// Deliver `event_type` to `path` and print the reply and the handlers that ran.
async fn show(
    kinde: &TestIssuer,
    server: &Running,
    path: &str,
    event_type: &str,
    ran: &Ran,
) -> Result<(), BoxError> {
    let event = kinde.event(event_type);
    println!("  POST {path}  {event_type}");
    let (status, body) = kinde
        .deliver(&format!("{}{path}", server.base), &event)
        .await;
    let handlers = ran.take();
    let handlers = if handlers.is_empty() {
        "none".to_owned()
    } else {
        handlers.join(", ")
    };
    println!("    <- {status} {body}   handlers run: {handlers}");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Logs as the bundled server writes them: the route table at start, and one line per
    // event (`RUST_LOG=warn` to quiet them).
    kinde_webhooks::telemetry::init(
        &Config::default().log,
        kinde_webhooks::telemetry::Output::Stdout,
    );

    let kinde = TestIssuer::start().await; // the stand-in for your Kinde environment
    let client = reqwest::Client::new();
    let ran = Ran::default();
    let state = State::new().with(ran.clone());

    // The handlers, and what they subscribe to, are the same for both set-ups.
    let registry = Registry::builder()
        .handler("user-directory", &["user.*"], UserDirectory)
        .handler("org-directory", &["organization.*"], OrgDirectory)
        .build()?;

    println!("\n== 1. grouped: one endpoint accepting every event ==");
    let server = serve(GROUPED, &kinde.url(), registry.clone(), state.clone()).await?;
    let route = "/api/kinde-webhook";
    show(&kinde, &server, route, "user.created", &ran).await?;
    show(&kinde, &server, route, "organization.created", &ran).await?;
    // Accepted by the route, but no handler subscribed: acknowledged, nothing runs.
    show(&kinde, &server, route, "role.created", &ran).await?;
    server.stop().await?;

    println!("\n== 2. split: one endpoint per group ==");
    let server = serve(SPLIT, &kinde.url(), registry, state).await?;
    show(&kinde, &server, "/hooks/users", "user.created", &ran).await?;
    show(&kinde, &server, "/hooks/users", "user.updated", &ran).await?;
    let orgs = "/hooks/organizations";
    show(&kinde, &server, orgs, "organization.updated", &ran).await?;
    println!("  -- an organization event on the users' endpoint: acknowledged, not dispatched");
    show(
        &kinde,
        &server,
        "/hooks/users",
        "organization.created",
        &ran,
    )
    .await?;

    println!("\n== the requests counter (GET /metrics) ==");
    let metrics = client
        .get(format!("{}/metrics", server.base))
        .send()
        .await?
        .text()
        .await?;
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("kinde_webhooks_requests_total"))
    {
        println!("  {line}");
    }
    server.stop().await?;
    Ok(())
}
