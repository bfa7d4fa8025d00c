//! A test kit for your handlers (feature `testing`): a Kinde issuer of your own, the real
//! receiver on a loopback port, and a handler that records what it received.
//!
//! - [`TestIssuer`]: an RSA key whose JWKS is served on `127.0.0.1:0`; it signs
//!   Kinde-shaped events ([`TestEvent`]: any type, sample or custom `data`, chosen
//!   `event_id`, `webhook-id` and timestamp).
//! - [`TestServer`]: the real app (verification, routes, dedup, inbox) on `127.0.0.1:0`,
//!   trusting a `TestIssuer`, with the handlers and the application state the test chooses.
//!   It shuts down when dropped.
//! - [`Recorder`]: a handler that keeps every event it receives, to assert on.
//! - [`TestSchema`]: a PostgreSQL schema of its own for one test (`DATABASE_URL`),
//!   dropped afterwards, for tests of the shared store.
//!
//! Nothing here touches the network beyond loopback, and nothing needs a Kinde account.
//! The kit is for tests: set-up failures (no free port, a bad config) panic with the cause.
//!
//! Enable it for your tests only:
//!
//! ```toml
//! [dev-dependencies]
//! kinde-webhooks = { version = "0.1", features = ["testing"] }
//! ```
//!
//! # Example
//!
//! A handler of your own, its application state, and one event through the real server:
//!
//! ```
//! use kinde_webhooks::testing::{TestIssuer, TestServer};
//! use kinde_webhooks::{Context, Event, EventHandler, HandlerError, State, async_trait};
//! use std::sync::{Arc, Mutex};
//!
//! /// Your application state: here, the welcome mails "sent".
//! #[derive(Clone, Default)]
//! struct Outbox(Arc<Mutex<Vec<String>>>);
//!
//! struct Welcome;
//!
//! #[async_trait]
//! impl EventHandler for Welcome {
//!     async fn handle(&self, event: &Event, ctx: &Context) -> Result<(), HandlerError> {
//!         let user = event.data["user"]["email"].as_str().unwrap_or("someone");
//!         ctx.state::<Outbox>()?.0.lock().unwrap().push(user.to_owned());
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let issuer = TestIssuer::start().await;
//! let outbox = Outbox::default();
//! let server = TestServer::builder(&issuer)
//!     .handler("welcome", &["user.created"], Welcome)
//!     .state(State::new().with(outbox.clone()))
//!     .start()
//!     .await;
//!
//! let event = issuer
//!     .event("user.created")
//!     .data(serde_json::json!({ "user": { "id": "kp_1", "email": "ada@example.com" } }));
//! let (status, _body) = server.send(&event).await;
//!
//! assert_eq!(status, 200);
//! assert_eq!(*outbox.0.lock().unwrap(), ["ada@example.com"]);
//! # }
//! ```
//!
//! The server delivers inline by default, so a handler has run (and its failure shows as a
//! 500) by the time [`TestServer::send`] returns. A test of the durable inbox gives a
//! `[delivery]` mode and a `[store]` in [`TestServerBuilder::toml`] and waits with
//! [`Recorder::wait_for`].

mod postgres;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, FixedOffset};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::config::{Config, DEFAULT_ROUTE};
use crate::registry::{Registry, RegistryBuilder};
use crate::samples::sample_data;
use crate::server::{StartError, WEBHOOK_ID_HEADER, Webhooks};
use crate::signing::{SigningKey, complete_claims, new_event_id, new_webhook_id};
use crate::{Context, Event, EventHandler, HandlerError, State, async_trait};
pub use postgres::TestSchema;

/// The longest the kit waits for something to happen before it fails the test.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Poll `check` every 20 ms until it holds; panic naming `what` after [`DEADLINE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < DEADLINE,
            "gave up after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops a spawned server when dropped.
#[derive(Debug)]
struct Shutdown(Option<oneshot::Sender<()>>);

impl Shutdown {
    /// The guard, and the future that completes when it is dropped.
    fn new() -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (tx, rx) = oneshot::channel::<()>();
        (Self(Some(tx)), async move {
            let _ = rx.await;
        })
    }
}

impl Drop for Shutdown {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

async fn loopback() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    (listener, addr)
}

#[derive(Debug)]
struct JwksState {
    document: RwLock<Value>,
    up: AtomicBool,
    fetches: AtomicUsize,
    /// How long each answer takes, in milliseconds.
    delay_ms: AtomicU64,
}

async fn serve_jwks(axum::extract::State(state): axum::extract::State<Arc<JwksState>>) -> Response {
    state.fetches.fetch_add(1, Ordering::SeqCst);
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if !state.up.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down for the test").into_response();
    }
    let document = state.document.read().expect("JWKS lock").clone();
    axum::Json(document).into_response()
}

fn key_set(keys: &[&SigningKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
}

/// A tenant's JWKS endpoint on a loopback port (`/.well-known/jwks.json`), with the keys,
/// and the outages, the test chooses. Stops when dropped.
#[derive(Debug)]
pub struct JwksServer {
    addr: SocketAddr,
    state: Arc<JwksState>,
    _shutdown: Shutdown,
}

impl JwksServer {
    /// Serve a key set holding `keys`.
    pub async fn start(keys: &[&SigningKey]) -> Self {
        let state = Arc::new(JwksState {
            document: RwLock::new(key_set(keys)),
            up: AtomicBool::new(true),
            fetches: AtomicUsize::new(0),
            delay_ms: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/.well-known/jwks.json", get(serve_jwks))
            .with_state(state.clone());
        let (listener, addr) = loopback().await;
        let (shutdown, signal) = Shutdown::new();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
        });
        Self {
            addr,
            state,
            _shutdown: shutdown,
        }
    }

    /// The issuer URL: `http://127.0.0.1:PORT` (the key set is at
    /// `<issuer>/.well-known/jwks.json`).
    pub fn issuer_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many times the key set was requested, including answers of 503.
    pub fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    /// Answer 503 (`false`: the JWKS is down) or the key set (`true`).
    pub fn set_up(&self, up: bool) {
        self.state.up.store(up, Ordering::SeqCst);
    }

    /// Answer each request after `delay` (a slow JWKS endpoint).
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Replace the published keys (a rotation).
    pub fn set_keys(&self, keys: &[&SigningKey]) {
        *self.state.document.write().expect("JWKS lock") = key_set(keys);
    }

    /// A config from `toml` whose issuer is this server. Delivery is inline unless the TOML
    /// sets `[delivery] mode`: inline replies carry the handlers' outcome.
    pub fn config(&self, toml: &str) -> Config {
        test_config(toml, &self.issuer_url())
    }
}

/// Parse `toml` for a test: the issuer is `issuer`, delivery inline unless it says otherwise.
fn test_config(toml: &str, issuer: &str) -> Config {
    let mut table: toml::Table = toml
        .parse()
        .unwrap_or_else(|e| panic!("test config is not TOML: {e}"));
    let delivery = table
        .entry("delivery")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let Some(delivery) = delivery.as_table_mut() {
        delivery
            .entry("mode")
            .or_insert_with(|| toml::Value::String("inline".into()));
    }
    let text = toml::to_string(&table).expect("a TOML table serialises");
    let mut config =
        Config::from_toml(&text, "test").unwrap_or_else(|e| panic!("test config: {e}"));
    config.kinde.issuer_url = Some(issuer.to_owned());
    config
}

/// A Kinde environment of the test's own: a fresh RSA-2048 key with a Kinde-style `kid`,
/// its JWKS served on a loopback port, and events signed with it.
#[derive(Debug)]
pub struct TestIssuer {
    key: Arc<SigningKey>,
    jwks: JwksServer,
    client: reqwest::Client,
}

impl TestIssuer {
    /// Generate a key and serve its JWKS.
    pub async fn start() -> Self {
        let key = SigningKey::generate().expect("generate an RSA key");
        Self::with_key(key).await
    }

    /// Serve the JWKS of `key` (one loaded with [`SigningKey::from_pem`], say).
    pub async fn with_key(key: SigningKey) -> Self {
        let jwks = JwksServer::start(&[&key]).await;
        let client = reqwest::Client::builder()
            .timeout(DEADLINE)
            .build()
            .expect("HTTP client");
        Self {
            key: Arc::new(key),
            jwks,
            client,
        }
    }

    /// The issuer URL to configure: `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.jwks.issuer_url()
    }

    /// The signing key.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// The JWKS endpoint: take it down, rotate keys, count fetches.
    pub fn jwks(&self) -> &JwksServer {
        &self.jwks
    }

    /// An event of `event_type` with the sample `data` Kinde documents for it (a small
    /// stand-in for types without a published sample), a fresh `event_id` and
    /// `webhook-id`, and the current time.
    pub fn event(&self, event_type: &str) -> TestEvent {
        TestEvent::new(event_type)
    }

    /// The token Kinde would send for `event`.
    pub fn sign(&self, event: &TestEvent) -> String {
        self.key.sign(&event.claims)
    }

    /// Sign `event` and POST it to `url` as Kinde does (`Content-Type: application/jwt`,
    /// its `webhook-id`): for a receiver the test serves itself (a router mounted in its
    /// own app, say). The status, and the body as JSON (a JSON string when it is not JSON).
    pub async fn deliver(&self, url: &str, event: &TestEvent) -> (u16, Value) {
        let mut request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/jwt")
            .body(self.sign(event));
        if let Some(id) = event.delivery_id() {
            request = request.header(WEBHOOK_ID_HEADER, id);
        }
        send(request).await
    }

    /// Sign a whole claims object as it is (nothing added).
    pub fn sign_claims(&self, claims: &Value) -> String {
        self.key.sign(claims)
    }
}

/// One Kinde event to sign and send: the claims and the `webhook-id` of its delivery.
///
/// Its `event_id` and `webhook-id` are fixed when it is made, so sending the same
/// `TestEvent` twice is what Kinde's retry looks like.
#[derive(Debug, Clone)]
pub struct TestEvent {
    claims: Value,
    webhook_id: Option<String>,
}

impl TestEvent {
    /// An event of `event_type` with sample data, a fresh `event_id` and `webhook-id`, now.
    pub fn new(event_type: &str) -> Self {
        let claims = json!({
            "type": event_type,
            "data": sample_data(event_type),
            "event_id": new_event_id(),
        });
        Self {
            claims: complete_claims(claims),
            webhook_id: Some(new_webhook_id()),
        }
    }

    /// An event from a whole claims object (a fixture, say); `event_id`, `timestamp` and
    /// `source` are filled in when missing.
    pub fn from_claims(claims: Value) -> Self {
        Self {
            claims: complete_claims(claims),
            webhook_id: Some(new_webhook_id()),
        }
    }

    /// Replace `data`.
    pub fn data(mut self, data: Value) -> Self {
        self.claims["data"] = data;
        self
    }

    /// Set the signed `event_id`.
    pub fn event_id(mut self, event_id: &str) -> Self {
        self.claims["event_id"] = event_id.into();
        self
    }

    /// Set the signed `timestamp`.
    pub fn timestamp(mut self, at: DateTime<FixedOffset>) -> Self {
        self.claims["timestamp"] = at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
            .into();
        self
    }

    /// Set any other claim (`source`, `ip_address`, a field Kinde may add).
    pub fn claim(mut self, name: &str, value: Value) -> Self {
        self.claims[name] = value;
        self
    }

    /// Set the `webhook-id` header; `None` sends none.
    pub fn webhook_id(mut self, webhook_id: Option<&str>) -> Self {
        self.webhook_id = webhook_id.map(str::to_owned);
        self
    }

    /// The claims that will be signed.
    pub fn claims(&self) -> &Value {
        &self.claims
    }

    /// The event type.
    pub fn event_type(&self) -> &str {
        self.claims["type"].as_str().unwrap_or_default()
    }

    /// The signed `event_id`.
    pub fn id(&self) -> &str {
        self.claims["event_id"].as_str().unwrap_or_default()
    }

    /// The `webhook-id` header it is sent with.
    pub fn delivery_id(&self) -> Option<&str> {
        self.webhook_id.as_deref()
    }
}

#[derive(Debug, Clone, Copy)]
enum Behaviour {
    Succeed,
    Fail,
    Panic,
}

/// A handler that records every event it receives, then succeeds, fails or panics.
///
/// Clones share one record: register a clone, keep one to assert on.
#[derive(Debug, Clone)]
pub struct Recorder {
    seen: Arc<Mutex<Vec<Event>>>,
    behaviour: Behaviour,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    fn with(behaviour: Behaviour) -> Self {
        Self {
            seen: Arc::default(),
            behaviour,
        }
    }

    /// Records and succeeds.
    pub fn new() -> Self {
        Self::with(Behaviour::Succeed)
    }

    /// Records, then fails (`HandlerError::msg`), so the delivery is retried.
    pub fn failing() -> Self {
        Self::with(Behaviour::Fail)
    }

    /// Records, then panics.
    pub fn panicking() -> Self {
        Self::with(Behaviour::Panic)
    }

    /// Every event received so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.seen.lock().expect("recorder lock").clone()
    }

    /// The types of every event received so far, in order.
    pub fn types(&self) -> Vec<String> {
        self.events().into_iter().map(|e| e.event_type).collect()
    }

    /// How many events it received.
    pub fn len(&self) -> usize {
        self.seen.lock().expect("recorder lock").len()
    }

    /// Whether it received nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The one event received; panics unless there was exactly one.
    pub fn only(&self) -> Event {
        let mut events = self.events();
        assert_eq!(
            events.len(),
            1,
            "expected exactly one event, got {events:?}"
        );
        events.remove(0)
    }

    /// Wait until it has received at least `n` events (the inbox runs handlers after the
    /// reply), then return them; panics after [`DEADLINE`].
    pub async fn wait_for(&self, n: usize) -> Vec<Event> {
        eventually(&format!("{n} events to reach the recorder"), || async {
            self.len() >= n
        })
        .await;
        self.events()
    }
}

#[async_trait]
impl EventHandler for Recorder {
    async fn handle(&self, event: &Event, _ctx: &Context) -> Result<(), HandlerError> {
        self.seen.lock().expect("recorder lock").push(event.clone());
        match self.behaviour {
            Behaviour::Succeed => Ok(()),
            Behaviour::Fail => Err(HandlerError::msg("recorder told to fail")),
            Behaviour::Panic => panic!("recorder told to panic"),
        }
    }
}

/// One call of one handler, as the [`TestServer`] saw it.
#[derive(Debug, Clone)]
pub struct Call {
    /// The handler's name.
    pub handler: String,
    /// The event it was given.
    pub event: Event,
    /// `Ok`, or the error it returned (a panic shows as no call outcome: see
    /// [`TestServer::calls`]).
    pub outcome: Result<(), String>,
}

/// Every handler call of one server, in the order they finished.
type CallLog = Arc<Mutex<Vec<Call>>>;

/// Runs a handler and writes its call into the server's log.
struct Spy {
    name: String,
    inner: Arc<dyn EventHandler>,
    log: CallLog,
}

#[async_trait]
impl EventHandler for Spy {
    async fn handle(&self, event: &Event, ctx: &Context) -> Result<(), HandlerError> {
        let result = self.inner.handle(event, ctx).await;
        if let Err(e) = &result {
            // In the test's output (shown when it fails): why the reply was a 500.
            println!(
                "test server: handler {} failed on {} {}: {e}",
                self.name, event.event_type, event.event_id
            );
        }
        self.log.lock().expect("call log lock").push(Call {
            handler: self.name.clone(),
            event: event.clone(),
            outcome: result.as_ref().map(|_| ()).map_err(ToString::to_string),
        });
        result
    }
}

/// Sets up a [`TestServer`]: its config, its handlers, its application state.
#[derive(Debug)]
pub struct TestServerBuilder {
    issuer: String,
    key: Arc<SigningKey>,
    toml: String,
    registry: RegistryBuilder,
    state: State,
}

impl TestServerBuilder {
    /// Read the config from `toml` (the issuer is always the `TestIssuer`; delivery is
    /// inline unless the TOML sets `[delivery] mode`).
    pub fn toml(mut self, toml: &str) -> Self {
        toml.clone_into(&mut self.toml);
        self
    }

    /// Add a handler of the test's own under `name` for `patterns`.
    pub fn handler<H: EventHandler>(mut self, name: &str, patterns: &[&str], handler: H) -> Self {
        self.registry = self.registry.handler(name, patterns, handler);
        self
    }

    /// Add every handler registered with [`register_handler!`](crate::register_handler)
    /// in the crates linked into the test (`use my_handlers as _;`).
    pub fn registered(mut self) -> Self {
        self.registry = self.registry.inventory();
        self
    }

    /// Add the registered handlers with these names only; starting fails if one is not
    /// registered.
    pub fn registered_only(mut self, names: &[&str]) -> Self {
        self.registry = self.registry.inventory_named(names);
        self
    }

    /// The application state handlers read with [`Context::state`].
    pub fn state(mut self, state: State) -> Self {
        self.state = state;
        self
    }

    /// Start the server; panics with the cause, at the test's line, when the config or the
    /// registry is wrong.
    #[track_caller]
    pub fn start(self) -> impl Future<Output = TestServer> + Send {
        let config = match Config::from_toml(&self.toml, "test") {
            Ok(_) => test_config(&self.toml, &self.issuer),
            Err(e) => panic!("test config: {e}"),
        };
        let TestServerBuilder {
            key,
            registry,
            state,
            ..
        } = self;
        let registry = match registry.build() {
            Ok(registry) => registry,
            Err(e) => panic!("test registry: {e}"),
        };
        launch(config, registry, key, state)
    }
}

/// The second half of [`TestServerBuilder::start`]: the call log around every handler, then
/// the server.
async fn launch(
    config: Config,
    registry: Registry,
    key: Arc<SigningKey>,
    state: State,
) -> TestServer {
    let calls = CallLog::default();
    let registry = registry.wrap(|entry| {
        Arc::new(Spy {
            name: entry.name.to_string(),
            inner: entry.handler.clone(),
            log: calls.clone(),
        })
    });
    let mut server = TestServer::open_with(config, registry, state).await;
    server.key = Some(key);
    server.calls = calls;
    server
}

/// The receiver, served on a loopback port until dropped.
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    webhooks: Webhooks,
    client: reqwest::Client,
    key: Option<Arc<SigningKey>>,
    calls: CallLog,
    _shutdown: Shutdown,
}

impl TestServer {
    /// Set up a server that trusts `issuer`, without handlers yet.
    pub fn builder(issuer: &TestIssuer) -> TestServerBuilder {
        TestServerBuilder {
            issuer: issuer.url(),
            key: issuer.key.clone(),
            toml: String::new(),
            registry: Registry::builder(),
            state: State::new(),
        }
    }

    /// Start the receiver for `config` (which needs no store) with the handlers in
    /// `registry`.
    pub async fn start(config: Config, registry: RegistryBuilder) -> Self {
        let registry = registry.build().expect("test registry builds");
        let webhooks =
            Webhooks::new(&config, registry, State::new()).expect("test config is valid");
        Self::serve(webhooks).await
    }

    /// Start the receiver as [`Webhooks::open`] does for `config` (inbox mode opens its
    /// `[store]`). Retries while a previous server on the same SQLite file shuts down.
    pub async fn open(config: Config, registry: RegistryBuilder) -> Self {
        let registry = registry.build().expect("test registry builds");
        Self::open_with(config, registry, State::new()).await
    }

    async fn open_with(config: Config, registry: Registry, state: State) -> Self {
        let started = Instant::now();
        let webhooks = loop {
            match Webhooks::open(&config, registry.clone(), state.clone()).await {
                Ok(w) => break w,
                Err(StartError::StoreInUse(_)) if started.elapsed() < DEADLINE => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("test receiver does not start: {e}"),
            }
        };
        Self::serve(webhooks).await
    }

    async fn serve(webhooks: Webhooks) -> Self {
        let (listener, addr) = loopback().await;
        let (shutdown, signal) = Shutdown::new();
        tokio::spawn(crate::run(listener, webhooks.clone(), signal));
        let client = reqwest::Client::builder()
            .timeout(DEADLINE)
            .build()
            .expect("HTTP client");
        Self {
            addr,
            webhooks,
            client,
            key: None,
            calls: CallLog::default(),
            _shutdown: shutdown,
        }
    }

    /// The receiver with the default route only, the handlers in `registry` and the keys
    /// of `jwks`.
    pub async fn with_handlers(jwks: &JwksServer, registry: RegistryBuilder) -> Self {
        Self::start(jwks.config(""), registry).await
    }

    /// The webhooks served (their store, their keys).
    pub fn webhooks(&self) -> &Webhooks {
        &self.webhooks
    }

    /// The loopback address it listens on, for tests that speak raw TCP.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The HTTP client, for requests the helpers here do not make.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sign `event` with the server's [`TestIssuer`] and POST it to the default route, as
    /// Kinde does. Returns the status and the body as JSON.
    pub async fn send(&self, event: &TestEvent) -> (u16, Value) {
        self.send_to(DEFAULT_ROUTE, event).await
    }

    /// [`send`](Self::send) to the route at `path`.
    pub async fn send_to(&self, path: &str, event: &TestEvent) -> (u16, Value) {
        let key = self
            .key
            .as_ref()
            .expect("send needs a server built with TestServer::builder(&issuer)");
        let token = key.sign(&event.claims);
        self.post(path, token, event.delivery_id()).await
    }

    /// Sign `event` with another issuer's key and POST it to the route at `path` (a route
    /// that names that issuer in its `issuer_url`, or a test of a foreign signature).
    pub async fn send_from(
        &self,
        issuer: &TestIssuer,
        path: &str,
        event: &TestEvent,
    ) -> (u16, Value) {
        self.post(path, issuer.sign(event), event.delivery_id())
            .await
    }

    /// POST `body` to `path` as Kinde does (`Content-Type: application/jwt`, a `webhook-id`
    /// header when given). Returns the status and the body as JSON (a JSON string when the
    /// body is not JSON).
    pub async fn post(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
        webhook_id: Option<&str>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .post(self.url(path))
            .header(reqwest::header::CONTENT_TYPE, "application/jwt")
            .body(body);
        if let Some(id) = webhook_id {
            request = request.header(WEBHOOK_ID_HEADER, id);
        }
        send(request).await
    }

    /// POST a token to the default route without a `webhook-id`.
    pub async fn deliver(&self, token: String) -> (u16, Value) {
        self.post(DEFAULT_ROUTE, token, None).await
    }

    /// Every handler call that returned so far, in order (servers made with
    /// [`TestServer::builder`]; a handler that panicked or timed out made no call).
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("call log lock").clone()
    }

    /// The events the handler `name` was given, in order, whatever it returned.
    pub fn received(&self, name: &str) -> Vec<Event> {
        self.calls()
            .into_iter()
            .filter(|c| c.handler == name)
            .map(|c| c.event)
            .collect()
    }

    /// Wait until the handler `name` has returned `n` times (the inbox runs handlers after
    /// the reply), then return what it was given; panics after [`DEADLINE`].
    pub async fn wait_for(&self, name: &str, n: usize) -> Vec<Event> {
        eventually(&format!("{n} calls of handler {name}"), || async {
            self.received(name).len() >= n
        })
        .await;
        self.received(name)
    }

    /// Wait until the key store holds keys (its first fetch succeeded).
    pub async fn wait_for_keys(&self) {
        let keys = self.webhooks.keys();
        eventually("the first JWKS fetch", || async { keys.has_keys() }).await;
    }
}

/// Send `request`; the status, and the body as JSON (a JSON string when it is not JSON).
pub async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("request reaches the server");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("response body");
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, body)
}
