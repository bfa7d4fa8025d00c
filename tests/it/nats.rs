//! `[[forward.nats]]` against the real NATS server named by env `NATS_URL` (JetStream on):
//! subjects, one message per event however often it is delivered, retries until NATS takes
//! the event, and the stream checks at start-up. Without `NATS_URL` each test says so and
//! passes. Each test has its own stream and subject prefix, deletes the stream at the end,
//! and runs alone (`SERIAL`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use kinde_webhooks::forward::{ForwardError, Forwarders};
use kinde_webhooks::inbox::store::{EventDetail, EventStatus};
use kinde_webhooks::signing::SigningKey;
use kinde_webhooks::{Config, Registry};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use crate::utils::{JwksServer, TestServer, key, ok, sign_event};

/// One NATS test at a time: they share the server and the retry timings are tight.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// How long a NATS test waits for something; longer than [`crate::utils::DEADLINE`] because
/// a reconnecting client backs off up to 4 s between attempts.
const NATS_DEADLINE: Duration = Duration::from_secs(30);

fn nats_url() -> Option<String> {
    match std::env::var("NATS_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            println!("skipped: NATS_URL not set");
            None
        }
    }
}

/// A stream name and subject prefix no other test (or run) uses.
fn unique() -> (String, String) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let tag = format!("{}_{n}_{nanos}", std::process::id());
    (format!("KWTEST_{tag}"), format!("kwtest_{tag}"))
}

/// The test's own view of NATS: its stream, deleted when dropped (even after a failure).
struct Nats {
    js: jetstream::Context,
    stream: String,
    prefix: String,
}

impl Nats {
    async fn connect(url: &str) -> Self {
        let client = async_nats::connect(url)
            .await
            .expect("the test reaches NATS");
        let (stream, prefix) = unique();
        Self {
            js: jetstream::new(client),
            stream,
            prefix,
        }
    }

    /// Create the test's stream, taking `<prefix>.>`.
    async fn create_stream(&self) {
        self.js
            .create_stream(stream::Config {
                name: self.stream.clone(),
                subjects: vec![format!("{}.>", self.prefix)],
                ..Default::default()
            })
            .await
            .expect("create the test stream");
    }

    async fn stream_subjects(&self) -> Option<Vec<String>> {
        let stream = self.js.get_stream(&self.stream).await.ok()?;
        Some(stream.cached_info().config.subjects.clone())
    }

    /// Every message in the test's stream, oldest first (none when it does not exist).
    async fn messages(&self) -> Vec<stream_message::Message> {
        let Ok(mut stream) = self.js.get_stream(&self.stream).await else {
            return Vec::new();
        };
        let state = stream.info().await.expect("stream info").state.clone();
        let mut messages = Vec::new();
        if state.messages == 0 {
            return messages;
        }
        for seq in state.first_sequence..=state.last_sequence {
            if let Ok(m) = stream.get_raw_message(seq).await {
                messages.push(stream_message::Message::from(m));
            }
        }
        messages
    }

    /// Wait until the stream holds `count` messages, and a little longer to see no more come.
    async fn wait_for_messages(&self, count: usize) -> Vec<stream_message::Message> {
        let started = Instant::now();
        loop {
            let messages = self.messages().await;
            if messages.len() >= count {
                tokio::time::sleep(Duration::from_millis(300)).await;
                return self.messages().await;
            }
            assert!(
                started.elapsed() < NATS_DEADLINE,
                "gave up waiting for {count} message(s) in {}; have {}",
                self.stream,
                messages.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let (js, stream) = (self.js.clone(), self.stream.clone());
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async move {
                let _ = js.delete_stream(&stream).await;
            })
        });
    }
}

/// What the tests read of a stored message.
mod stream_message {
    use async_nats::jetstream::message::StreamMessage;

    pub(super) struct Message {
        pub(super) subject: String,
        pub(super) headers: async_nats::HeaderMap,
        pub(super) payload: Vec<u8>,
    }

    impl From<StreamMessage> for Message {
        fn from(m: StreamMessage) -> Self {
            Self {
                subject: m.subject.to_string(),
                headers: m.headers,
                payload: m.payload.to_vec(),
            }
        }
    }

    impl Message {
        pub(super) fn header(&self, name: &str) -> Option<String> {
            self.headers.get(name).map(|v| v.as_str().to_owned())
        }
    }
}

/// A config whose issuer is `jwks`, with `[[forward.nats]]` named "nats" from `forward`
/// (TOML keys), and `delivery` (TOML keys) with fast inbox retries.
fn config(jwks: &JwksServer, dir: &tempfile::TempDir, delivery: &str, forward: &str) -> Config {
    let mut config = jwks.config(&format!(
        "[delivery]\n{delivery}\n\
         [inbox]\nretry_base = \"50ms\"\nretry_cap = \"200ms\"\nmax_attempts = 1000\npoll_interval = \"20ms\"\n\
         [[forward.nats]]\nname = \"nats\"\n{forward}"
    ));
    config.store.path = dir.path().join("inbox.db");
    config
}

/// The forwarders of `config`, started, as a registry builder.
async fn forwarders(config: &Config) -> kinde_webhooks::registry::RegistryBuilder {
    let forwarders = Forwarders::from_config(config).expect("forward config is valid");
    forwarders.start().await.expect("forwarders start");
    Registry::builder().configured(forwarders.handlers())
}

async fn detail(server: &TestServer, event_id: &str) -> Option<EventDetail> {
    let store = server.webhooks().inbox().expect("inbox mode").store();
    store.show(event_id).await.expect("show").into_iter().next()
}

/// Wait until `check` holds for the stored event, with the NATS deadline.
async fn wait_detail(
    server: &TestServer,
    event_id: &str,
    what: &str,
    check: impl Fn(&EventDetail) -> bool,
) {
    let started = Instant::now();
    loop {
        if detail(server, event_id).await.as_ref().is_some_and(&check) {
            return;
        }
        assert!(
            started.elapsed() < NATS_DEADLINE,
            "gave up waiting for {event_id}: {what}; now {:?}",
            detail(server, event_id).await.map(|d| d.jobs)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn signed(k: &SigningKey, event_type: &str, event_id: &str) -> (String, Value) {
    let claims = kinde_webhooks::signing::complete_claims(json!({
        "type": event_type,
        "event_id": event_id,
        "data": {"user": {"id": "kp_1"}},
    }));
    (sign_event(k, claims.clone()), claims)
}

#[tokio::test(flavor = "multi_thread")]
async fn events_arrive_once_each_on_their_subject_in_a_stream_made_at_start_up() {
    let Some(url) = nats_url() else { return };
    let _serial = SERIAL.lock().await;
    let nats = Nats::connect(&url).await;
    let k = key();
    let jwks = JwksServer::start(&[&k]).await;
    let dir = tempfile::TempDir::new().expect("temporary folder");
    let config = config(
        &jwks,
        &dir,
        "mode = \"inbox\"",
        &format!(
            "patterns = [\"user.*\", \"organization.*\"]\nurl = \"{url}\"\nsubject_prefix = \"{}\"\n\
             stream = \"{}\"\ncreate_stream = true\nack_timeout = \"2s\"",
            nats.prefix, nats.stream
        ),
    );
    assert_eq!(nats.stream_subjects().await, None, "a fresh stream name");
    let registry = forwarders(&config).await;
    assert_eq!(
        nats.stream_subjects().await,
        Some(vec![format!("{}.>", nats.prefix)]),
        "start-up created the stream"
    );
    let server = TestServer::open(config, registry).await;
    let entry = &server.webhooks().registry().entries()[0];
    assert_eq!(
        (&*entry.name, entry.module.as_str()),
        ("nats", "config: [[forward.nats]]")
    );

    let (user, user_claims) = signed(&k, "user.created", "event_nats_user");
    let (org, _) = signed(&k, "organization.created", "event_nats_org");
    let (role, _) = signed(&k, "role.created", "event_nats_role");
    for (token, webhook_id) in [(user, "msg_u"), (org, "msg_o"), (role, "msg_r")] {
        let reply = server
            .post("/api/kinde-webhook", token, Some(webhook_id))
            .await;
        assert_eq!(reply, (200, ok()));
    }

    let messages = nats.wait_for_messages(2).await;
    assert_eq!(messages.len(), 2, "role.created is not forwarded");
    let mut subjects: Vec<&str> = messages.iter().map(|m| m.subject.as_str()).collect();
    subjects.sort();
    assert_eq!(
        subjects,
        [
            format!("{}.organization.created", nats.prefix),
            format!("{}.user.created", nats.prefix)
        ]
    );
    let user_message = messages
        .iter()
        .find(|m| m.subject.ends_with("user.created"))
        .expect("the user.created message");
    let payload: Value = serde_json::from_slice(&user_message.payload).expect("JSON payload");
    assert_eq!(payload, user_claims, "the payload is the signed claims");
    assert_eq!(
        user_message.header("Nats-Msg-Id").as_deref(),
        Some("event_nats_user")
    );
    assert_eq!(
        user_message.header("Kinde-Event-Type").as_deref(),
        Some("user.created")
    );
    assert_eq!(
        user_message.header("Kinde-Webhook-Id").as_deref(),
        Some("msg_u")
    );
    wait_detail(&server, "event_nats_user", "done", |d| {
        d.summary.status == EventStatus::Done
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_event_delivered_three_times_is_one_message() {
    let Some(url) = nats_url() else { return };
    let _serial = SERIAL.lock().await;
    let nats = Nats::connect(&url).await;
    nats.create_stream().await;
    let k = key();
    let jwks = JwksServer::start(&[&k]).await;
    let dir = tempfile::TempDir::new().expect("temporary folder");
    // Inline mode without dedup: every delivery runs the forwarder, which publishes each time.
    let config = config(
        &jwks,
        &dir,
        "mode = \"inline\"\ninline_dedup = \"off\"",
        &format!(
            "patterns = [\"*\"]\nurl = \"{url}\"\nsubject_prefix = \"{}\"\nstream = \"{}\"",
            nats.prefix, nats.stream
        ),
    );
    let registry = forwarders(&config).await;
    let server = TestServer::start(config, registry).await;
    let (token, _) = signed(&k, "user.updated", "event_nats_thrice");
    for webhook_id in ["msg_1", "msg_1", "msg_2"] {
        let reply = server
            .post("/api/kinde-webhook", token.clone(), Some(webhook_id))
            .await;
        assert_eq!(reply, (200, ok()), "each delivery is forwarded and acked");
    }
    let messages = nats.wait_for_messages(1).await;
    assert_eq!(messages.len(), 1, "Nats-Msg-Id keeps one copy");
    assert_eq!(
        messages[0].header("Nats-Msg-Id").as_deref(),
        Some("event_nats_thrice")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_no_stream_takes_is_retried_until_one_does() {
    let Some(url) = nats_url() else { return };
    let _serial = SERIAL.lock().await;
    let nats = Nats::connect(&url).await;
    let k = key();
    let jwks = JwksServer::start(&[&k]).await;
    let dir = tempfile::TempDir::new().expect("temporary folder");
    // No `stream`: nothing is checked at start-up, and no stream takes the subject yet.
    let config = config(
        &jwks,
        &dir,
        "mode = \"inbox\"",
        &format!(
            "patterns = [\"user.*\"]\nurl = \"{url}\"\nsubject_prefix = \"{}\"\nack_timeout = \"1s\"",
            nats.prefix
        ),
    );
    let registry = forwarders(&config).await;
    let server = TestServer::open(config, registry).await;
    let (token, claims) = signed(&k, "user.created", "event_nats_later");
    assert_eq!(server.deliver(token).await, (200, ok()));
    wait_detail(&server, "event_nats_later", "failed twice", |d| {
        d.summary.status == EventStatus::Failed && d.jobs[0].attempts >= 2
    })
    .await;
    let error = detail(&server, "event_nats_later")
        .await
        .and_then(|d| d.jobs[0].last_error.clone())
        .unwrap_or_default();
    assert!(error.contains("no stream takes this subject"), "{error}");

    nats.create_stream().await;
    wait_detail(&server, "event_nats_later", "done", |d| {
        d.summary.status == EventStatus::Done
    })
    .await;
    let messages = nats.wait_for_messages(1).await;
    assert_eq!(messages.len(), 1);
    let payload: Value = serde_json::from_slice(&messages[0].payload).expect("JSON payload");
    assert_eq!(payload, claims);
}

/// Forward every connection accepted on `listener` to `target`, until the test ends.
fn proxy(listener: TcpListener, target: String) {
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_server_is_retried_until_it_answers() {
    let Some(url) = nats_url() else { return };
    let _serial = SERIAL.lock().await;
    let nats = Nats::connect(&url).await;
    let target = reqwest::Url::parse(&url)
        .ok()
        .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port().unwrap_or(4222))))
        .expect("NATS_URL is nats://host:port");
    // A loopback port nobody listens on (yet).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let k = key();
    let jwks = JwksServer::start(&[&k]).await;
    let dir = tempfile::TempDir::new().expect("temporary folder");
    let config = config(
        &jwks,
        &dir,
        "mode = \"inbox\"",
        &format!(
            "patterns = [\"*\"]\nurl = \"nats://127.0.0.1:{port}\"\nsubject_prefix = \"{}\"\n\
             stream = \"{}\"\ncreate_stream = true\nack_timeout = \"500ms\"",
            nats.prefix, nats.stream
        ),
    );
    let forwarders = Forwarders::from_config(&config).expect("forward config is valid");
    let statuses = forwarders
        .start()
        .await
        .expect("an unreachable server does not stop start-up");
    assert!(!statuses[0].reachable, "{statuses:?}");
    let registry = Registry::builder().configured(forwarders.handlers());
    let server = TestServer::open(config, registry).await;
    let (token, _) = signed(&k, "user.deleted", "event_nats_down");
    assert_eq!(server.deliver(token).await, (200, ok()));
    wait_detail(&server, "event_nats_down", "failed twice", |d| {
        d.summary.status == EventStatus::Failed && d.jobs[0].attempts >= 2
    })
    .await;
    assert_eq!(nats.messages().await.len(), 0);

    // NATS comes up on that port: the client reconnects, creates the stream, publishes.
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the reserved port");
    proxy(listener, target);
    wait_detail(&server, "event_nats_down", "done", |d| {
        d.summary.status == EventStatus::Done
    })
    .await;
    let messages = nats.wait_for_messages(1).await;
    assert_eq!(messages.len(), 1, "one message, however many attempts");
    assert_eq!(messages[0].subject, format!("{}.user.deleted", nats.prefix));
}

#[tokio::test(flavor = "multi_thread")]
async fn start_up_refuses_a_missing_stream_or_one_that_misses_the_subjects() {
    let Some(url) = nats_url() else { return };
    let _serial = SERIAL.lock().await;
    let nats = Nats::connect(&url).await;
    let jwks = JwksServer::start(&[&key()]).await;
    let dir = tempfile::TempDir::new().expect("temporary folder");
    let forward = |prefix: &str| {
        format!(
            "patterns = [\"user.*\"]\nurl = \"{url}\"\nsubject_prefix = \"{prefix}\"\nstream = \"{}\"",
            nats.stream
        )
    };
    let missing = config(&jwks, &dir, "mode = \"inbox\"", &forward(&nats.prefix));
    let started = Forwarders::from_config(&missing)
        .expect("forward config is valid")
        .start()
        .await;
    match started {
        Err(ForwardError::Nats { name, message }) => {
            assert_eq!(name, "nats");
            assert!(
                message.contains("does not exist") && message.contains("create_stream = true"),
                "{message}"
            );
        }
        other => panic!("a missing stream must stop start-up: {other:?}"),
    }
    assert_eq!(nats.stream_subjects().await, None, "nothing was created");

    // The stream exists but takes `<prefix>.>`, not the other prefix's subjects.
    nats.create_stream().await;
    let elsewhere = config(
        &jwks,
        &dir,
        "mode = \"inbox\"",
        &forward(&format!("{}_other", nats.prefix)),
    );
    let started = Forwarders::from_config(&elsewhere)
        .expect("forward config is valid")
        .start()
        .await;
    match started {
        Err(ForwardError::Nats { message, .. }) => {
            assert!(message.contains("none of which covers"), "{message}")
        }
        other => panic!("a stream missing the subjects must stop start-up: {other:?}"),
    }
}

/// Two Kinde environments (staging and production routes, each with its own issuer) and one
/// forwarder: both environments' events land on the same `<prefix>.<type>` subject. The
/// messages carried nothing telling them apart, so a consumer could act on a staging event
/// as if production had sent it. Each message now names its issuer and route.
#[tokio::test(flavor = "multi_thread")]
async fn events_of_two_environments_name_their_issuer_and_route() {
    let Some(url) = nats_url() else { return };
    let _serial = SERIAL.lock().await;
    let nats = Nats::connect(&url).await;
    nats.create_stream().await;
    let production = key();
    let staging = key();
    let production_jwks = JwksServer::start(&[&production]).await;
    let staging_jwks = JwksServer::start(&[&staging]).await;
    let dir = tempfile::TempDir::new().expect("temporary folder");
    let config = config(
        &production_jwks,
        &dir,
        &format!(
            "mode = \"inbox\"\n[[routes]]\npath = \"/kinde/production\"\n\
             [[routes]]\npath = \"/kinde/staging\"\nissuer_url = \"{}\"",
            staging_jwks.issuer_url()
        ),
        &format!(
            "patterns = [\"*\"]\nurl = \"{url}\"\nsubject_prefix = \"{}\"\nack_timeout = \"2s\"",
            nats.prefix
        ),
    );
    config.validate().expect("valid config");
    let server = TestServer::open(config.clone(), forwarders(&config).await).await;
    let (from_production, _) = signed(&production, "user.created", "event_env_production");
    let (from_staging, _) = signed(&staging, "user.created", "event_env_staging");
    assert_eq!(
        server
            .post("/kinde/production", from_production, None)
            .await,
        (200, ok())
    );
    assert_eq!(
        server.post("/kinde/staging", from_staging, None).await,
        (200, ok())
    );
    let messages = nats.wait_for_messages(2).await;
    assert_eq!(messages.len(), 2);
    let by_id = |id: &str| {
        messages
            .iter()
            .find(|m| m.header("Nats-Msg-Id").as_deref() == Some(id))
            .expect("the event's message")
    };
    for (id, issuer, route) in [
        (
            "event_env_production",
            production_jwks.issuer_url(),
            "/kinde/production",
        ),
        (
            "event_env_staging",
            staging_jwks.issuer_url(),
            "/kinde/staging",
        ),
    ] {
        let message = by_id(id);
        assert_eq!(message.subject, format!("{}.user.created", nats.prefix));
        assert_eq!(message.header("Kinde-Issuer"), Some(issuer), "{id}");
        assert_eq!(
            message.header("Kinde-Route").as_deref(),
            Some(route),
            "{id}"
        );
    }
}
