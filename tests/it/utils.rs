//! The test kit: signing keys, a JWKS server the test controls, a recording handler and a
//! real webhook server on a loopback port.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kinde_webhooks::config::{DEFAULT_ROUTE, DeliveryMode};
use kinde_webhooks::registry::RegistryBuilder;
use kinde_webhooks::server::WEBHOOK_ID_HEADER;
use kinde_webhooks::signing::{SigningKey, complete_claims};
use kinde_webhooks::{
    Config, Context, Event, EventHandler, HandlerError, State, Webhooks, async_trait,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The route a server without `[[routes]]` serves.
pub(crate) const ROUTE: &str = DEFAULT_ROUTE;
/// The longest any test waits for something to happen.
pub(crate) const DEADLINE: Duration = Duration::from_secs(10);

/// A fresh RSA-2048 signing key with a Kinde-style `kid`.
pub(crate) fn key() -> SigningKey {
    SigningKey::generate().expect("generate an RSA key")
}

/// A Kinde event of `event_type` with `data`; `event_id`, `timestamp` and `source` are
/// filled in by [`sign_event`].
pub(crate) fn event(event_type: &str, data: Value) -> Value {
    json!({ "type": event_type, "data": data })
}

/// Sign `claims` as Kinde does, completing `event_id`, `timestamp` and `source` if missing.
pub(crate) fn sign_event(key: &SigningKey, claims: Value) -> String {
    key.sign(&complete_claims(claims))
}

/// The acknowledgement body.
pub(crate) fn ok() -> Value {
    json!({ "status": "ok" })
}

/// A refusal body with its reason label.
pub(crate) fn error(reason: &str) -> Value {
    json!({ "error": reason })
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The sample payload `tests/fixtures/<name>.json`.
pub(crate) fn fixture(name: &str) -> Value {
    let path = fixtures_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse fixture {}: {e}", path.display()))
}

/// The names of every fixture, sorted, without `.json`.
pub(crate) fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .expect("read tests/fixtures")
        .map(|entry| {
            entry
                .expect("fixture entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter_map(|name| name.strip_suffix(".json").map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// Poll `check` every 50 ms until it holds; panic after [`DEADLINE`].
pub(crate) async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < DEADLINE, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops a spawned server when dropped.
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

struct JwksState {
    document: RwLock<Value>,
    up: AtomicBool,
    fetches: AtomicUsize,
}

async fn serve_jwks(axum::extract::State(state): axum::extract::State<Arc<JwksState>>) -> Response {
    state.fetches.fetch_add(1, Ordering::SeqCst);
    if !state.up.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down for the test").into_response();
    }
    let document = state.document.read().expect("JWKS lock").clone();
    axum::Json(document).into_response()
}

/// A tenant's JWKS endpoint, served on a loopback port at `/.well-known/jwks.json`.
pub(crate) struct JwksServer {
    addr: SocketAddr,
    state: Arc<JwksState>,
    _shutdown: Shutdown,
}

impl JwksServer {
    /// Serve a key set holding `keys`.
    pub(crate) async fn start(keys: &[&SigningKey]) -> Self {
        let state = Arc::new(JwksState {
            document: RwLock::new(jwks(keys)),
            up: AtomicBool::new(true),
            fetches: AtomicUsize::new(0),
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

    /// The issuer URL: `http://127.0.0.1:PORT`.
    pub(crate) fn issuer_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many times the key set was requested, including answers of 503.
    pub(crate) fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    /// Answer 503 (`false`) or the key set (`true`).
    pub(crate) fn set_up(&self, up: bool) {
        self.state.up.store(up, Ordering::SeqCst);
    }

    /// Replace the published keys (rotation).
    pub(crate) fn set_keys(&self, keys: &[&SigningKey]) {
        *self.state.document.write().expect("JWKS lock") = jwks(keys);
    }

    /// A config from `toml` whose issuer is this server. Delivery is inline unless the TOML
    /// names a `[delivery]` mode: these tests read the handlers' outcome in the reply, which
    /// the inbox mode gives before any handler runs.
    pub(crate) fn config(&self, toml: &str) -> Config {
        let mut config = Config::from_toml(toml, "test").expect("test config parses");
        config.kinde.issuer_url = Some(self.issuer_url());
        if !toml.contains("[delivery]") {
            config.delivery.mode = DeliveryMode::Inline;
        }
        config
    }
}

fn jwks(keys: &[&SigningKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
}

#[derive(Debug, Clone, Copy)]
enum Behaviour {
    Succeed,
    Fail,
    Panic,
}

/// A handler that records every event it receives, then succeeds, fails or panics.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    seen: Arc<Mutex<Vec<Event>>>,
    behaviour: Behaviour,
}

impl Recorder {
    fn with(behaviour: Behaviour) -> Self {
        Self {
            seen: Arc::default(),
            behaviour,
        }
    }

    /// Records and succeeds.
    pub(crate) fn new() -> Self {
        Self::with(Behaviour::Succeed)
    }

    /// Records, then returns `HandlerError::msg`.
    pub(crate) fn failing() -> Self {
        Self::with(Behaviour::Fail)
    }

    /// Records, then panics.
    pub(crate) fn panicking() -> Self {
        Self::with(Behaviour::Panic)
    }

    /// Every event received so far, in order.
    pub(crate) fn events(&self) -> Vec<Event> {
        self.seen.lock().expect("recorder lock").clone()
    }

    /// The types of every event received so far, in order.
    pub(crate) fn types(&self) -> Vec<String> {
        self.events().into_iter().map(|e| e.event_type).collect()
    }

    /// The one event received; panics unless there was exactly one.
    pub(crate) fn only(&self) -> Event {
        let mut events = self.events();
        assert_eq!(
            events.len(),
            1,
            "expected exactly one event, got {events:?}"
        );
        events.remove(0)
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

/// The receiver, served by `kinde_webhooks::run` on a loopback port until dropped.
pub(crate) struct TestServer {
    addr: SocketAddr,
    webhooks: Webhooks,
    client: reqwest::Client,
    _shutdown: Shutdown,
}

impl TestServer {
    /// Start the receiver for `config` with the handlers in `registry`.
    pub(crate) async fn start(config: Config, registry: RegistryBuilder) -> Self {
        let registry = registry.build().expect("test registry builds");
        let webhooks =
            Webhooks::new(&config, registry, State::new()).expect("test config is valid");
        Self::serve(webhooks).await
    }

    /// Start the receiver as [`Webhooks::open`] does for `config` (inbox mode opens the
    /// `[store]` file), serving until dropped. Retries while a previous server on the same
    /// store file is still shutting down.
    pub(crate) async fn open(config: Config, registry: RegistryBuilder) -> Self {
        let registry = registry.build().expect("test registry builds");
        let started = Instant::now();
        let webhooks = loop {
            match Webhooks::open(&config, registry.clone(), State::new()).await {
                Ok(w) => break w,
                Err(kinde_webhooks::StartError::StoreInUse(_)) if started.elapsed() < DEADLINE => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("test receiver opens: {e}"),
            }
        };
        Self::serve(webhooks).await
    }

    /// The webhooks served by this server (its store, its keys).
    pub(crate) fn webhooks(&self) -> &Webhooks {
        &self.webhooks
    }

    async fn serve(webhooks: Webhooks) -> Self {
        let (listener, addr) = loopback().await;
        let (shutdown, signal) = Shutdown::new();
        tokio::spawn(kinde_webhooks::run(listener, webhooks.clone(), signal));
        let client = reqwest::Client::builder()
            .timeout(DEADLINE)
            .build()
            .expect("HTTP client");
        Self {
            addr,
            webhooks,
            client,
            _shutdown: shutdown,
        }
    }

    /// The receiver with the default route only, the handlers in `registry` and the keys
    /// of `jwks`.
    pub(crate) async fn with_handlers(jwks: &JwksServer, registry: RegistryBuilder) -> Self {
        Self::start(jwks.config(""), registry).await
    }

    /// The loopback address it listens on, for tests that speak raw TCP.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT<path>`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The HTTP client, for requests `post` does not make.
    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// POST `body` to `path` as Kinde does (`Content-Type: application/jwt`, a `webhook-id`
    /// header when given). Returns the status and the body as JSON.
    pub(crate) async fn post(
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
    pub(crate) async fn deliver(&self, token: String) -> (u16, Value) {
        self.post(ROUTE, token, None).await
    }

    /// Wait until the key store holds keys (its first fetch succeeded).
    pub(crate) async fn wait_for_keys(&self) {
        let keys = self.webhooks.keys();
        eventually("the first JWKS fetch", || async { keys.has_keys() }).await;
    }
}

/// Send `request`; the status, and the body as JSON (a JSON string when it is not JSON).
pub(crate) async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("request reaches the server");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("response body");
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, body)
}
