//! The durable inbox over real HTTP and a real SQLite file: store before the 200, dedup,
//! retries, dead letters, replay, isolation of slow and panicking handlers, a locked store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use kinde_webhooks::inbox::store::{EventStatus, ListFilter, NewEvent, ReplayTarget};
use kinde_webhooks::inbox::{SqliteStore, Store};
use kinde_webhooks::registry::RegistryBuilder;
use kinde_webhooks::signing::SigningKey;
use kinde_webhooks::{Config, Context, Event, EventHandler, HandlerError, Registry, async_trait};
use serde_json::json;
use sqlx::Connection;
use tempfile::TempDir;

use crate::utils::{JwksServer, Recorder, TestServer, error, eventually, key, ok, sign_event};

/// How a [`Scripted`] handler behaves on each call.
#[derive(Debug, Clone, Copy)]
enum Script {
    /// Fail this many times, then succeed.
    FailTimes(usize),
    /// Fail while the switch is off.
    UntilFixed,
    /// Fail with a permanent error.
    Permanent,
    /// Sleep far past any handler timeout.
    Hang,
}

/// A handler that counts its calls and successes and behaves as scripted.
#[derive(Debug, Clone)]
struct Scripted {
    script: Script,
    calls: Arc<AtomicUsize>,
    successes: Arc<AtomicUsize>,
    fixed: Arc<AtomicBool>,
}

impl Scripted {
    fn new(script: Script) -> Self {
        Self {
            script,
            calls: Arc::default(),
            successes: Arc::default(),
            fixed: Arc::default(),
        }
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn successes(&self) -> usize {
        self.successes.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl EventHandler for Scripted {
    async fn handle(&self, _event: &Event, _ctx: &Context) -> Result<(), HandlerError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let result = match self.script {
            Script::FailTimes(n) if call <= n => {
                Err(HandlerError::msg(format!("failure {call} of {n}")))
            }
            Script::UntilFixed if !self.fixed.load(Ordering::SeqCst) => {
                Err(HandlerError::msg("not fixed yet"))
            }
            Script::Permanent => Err(HandlerError::permanent("this record can never be valid")),
            Script::Hang => {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(())
            }
            _ => Ok(()),
        };
        if result.is_ok() {
            self.successes.fetch_add(1, Ordering::SeqCst);
        }
        result
    }
}

/// A signing key, a JWKS server publishing it, and a folder for the store.
async fn setup() -> (SigningKey, JwksServer, TempDir) {
    let k = key();
    let jwks = JwksServer::start(&[&k]).await;
    (k, jwks, TempDir::new().expect("temporary folder"))
}

/// An inbox-mode config with fast retries, its store in `dir`.
fn inbox_config(jwks: &JwksServer, dir: &TempDir, extra: &str) -> Config {
    let mut config = jwks.config(&format!(
        "[delivery]\nmode = \"inbox\"\nhandler_timeout = \"300ms\"\n\
         [inbox]\nretry_base = \"20ms\"\nretry_cap = \"50ms\"\nmax_attempts = 3\npoll_interval = \"20ms\"\n\
         lease = \"30s\"\n{extra}"
    ));
    config.store.path = dir.path().join("inbox.db");
    config
}

async fn status_of(server: &TestServer, event_id: &str) -> Option<EventStatus> {
    let store = server
        .webhooks()
        .inbox()
        .expect("inbox mode")
        .store()
        .clone();
    store
        .show(event_id)
        .await
        .expect("show")
        .first()
        .map(|d| d.summary.status)
}

async fn wait_status(server: &TestServer, event_id: &str, want: EventStatus) {
    eventually(&format!("{event_id} to be {want}"), || async {
        status_of(server, event_id).await == Some(want)
    })
    .await;
}

fn user_created(id: &str) -> serde_json::Value {
    json!({"type": "user.created", "event_id": id, "data": {"user": {"id": "kp_1"}}})
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_delivery_five_times_runs_the_handlers_once() {
    let (k, jwks, dir) = setup().await;
    let recorder = Recorder::new();
    let registry = Registry::builder().handler("rec", &["user.*"], recorder.clone());
    let server = TestServer::open(inbox_config(&jwks, &dir, ""), registry).await;
    let token = sign_event(&k, user_created("event_dup1"));

    for i in 0..5 {
        let webhook_id = format!("msg_{i}");
        assert_eq!(
            server
                .post("/api/kinde-webhook", token.clone(), Some(&webhook_id))
                .await,
            (200, ok())
        );
    }
    let concurrent = (0..5).map(|i| {
        let (server, token) = (&server, token.clone());
        async move {
            server
                .post("/api/kinde-webhook", token, Some(&format!("msg_c{i}")))
                .await
        }
    });
    for answer in futures_util::future::join_all(concurrent).await {
        assert_eq!(answer, (200, ok()));
    }
    wait_status(&server, "event_dup1", EventStatus::Done).await;
    // A fresh event after the duplicates proves the workers moved on; still one run of the first.
    let token2 = sign_event(&k, user_created("event_dup2"));
    assert_eq!(
        server.post("/api/kinde-webhook", token2, None).await,
        (200, ok())
    );
    wait_status(&server, "event_dup2", EventStatus::Done).await;
    let ids: Vec<String> = recorder.events().into_iter().map(|e| e.event_id).collect();
    assert_eq!(ids, ["event_dup1", "event_dup2"]);
    assert_eq!(
        recorder.events()[0].delivery.webhook_id.as_deref(),
        Some("msg_0"),
        "the first delivery is kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_that_fails_twice_is_handled_once_after_three_attempts() {
    let (k, jwks, dir) = setup().await;
    let flaky = Scripted::new(Script::FailTimes(2));
    let registry = Registry::builder().handler("flaky", &["user.created"], flaky.clone());
    let server = TestServer::open(inbox_config(&jwks, &dir, ""), registry).await;

    let token = sign_event(&k, user_created("event_flaky"));
    assert_eq!(
        server.deliver(token).await,
        (200, ok()),
        "a failing handler no longer changes the reply"
    );
    wait_status(&server, "event_flaky", EventStatus::Done).await;
    assert_eq!((flaky.calls(), flaky.successes()), (3, 1));
    let detail = server
        .webhooks()
        .inbox()
        .unwrap()
        .store()
        .show("event_flaky")
        .await
        .unwrap()
        .remove(0);
    let job = &detail.jobs[0];
    assert_eq!(
        (job.handler.as_str(), job.status.as_str(), job.attempts),
        ("flaky", "done", 3)
    );
    let errors: Vec<_> = job.history.iter().map(|a| a.error.clone()).collect();
    assert_eq!(
        errors,
        [
            Some("failure 1 of 2".to_owned()),
            Some("failure 2 of 2".to_owned()),
            None
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_always_failing_handler_is_dead_lettered_and_replay_runs_it_once_fixed() {
    let (k, jwks, dir) = setup().await;
    let broken = Scripted::new(Script::UntilFixed);
    let fine = Recorder::new();
    let registry = Registry::builder()
        .handler("broken", &["user.created"], broken.clone())
        .handler("fine", &["*"], fine.clone());
    let server = TestServer::open(inbox_config(&jwks, &dir, ""), registry).await;

    assert_eq!(
        server
            .deliver(sign_event(&k, user_created("event_dead")))
            .await,
        (200, ok())
    );
    wait_status(&server, "event_dead", EventStatus::Dead).await;
    let store = server.webhooks().inbox().unwrap().store().clone();
    let detail = store.show("event_dead").await.unwrap().remove(0);
    let by_name = |n: &str| detail.jobs.iter().find(|j| j.handler == n).unwrap().clone();
    assert_eq!(
        (
            by_name("broken").status.as_str(),
            by_name("broken").attempts
        ),
        ("dead", 3)
    );
    assert_eq!(
        by_name("broken").last_error.as_deref(),
        Some("not fixed yet")
    );
    assert_eq!(
        (by_name("fine").status.as_str(), by_name("fine").attempts),
        ("done", 1)
    );
    assert_eq!(broken.calls(), 3, "max_attempts = 3");

    broken.fixed.store(true, Ordering::SeqCst);
    let registry = server.webhooks().registry().clone();
    let matcher = move |_: &str, t: &str| {
        registry
            .handlers_for(t)
            .map(|e| e.name.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        store.replay(&ReplayTarget::Dead, &matcher).await.unwrap(),
        1,
        "only the dead job"
    );
    server.webhooks().inbox().unwrap().wake();
    wait_status(&server, "event_dead", EventStatus::Done).await;
    assert_eq!((broken.calls(), broken.successes()), (4, 1));
    assert_eq!(
        fine.events().len(),
        1,
        "the handler that succeeded is not run again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permanent_error_is_dead_lettered_after_one_attempt() {
    let (k, jwks, dir) = setup().await;
    let doomed = Scripted::new(Script::Permanent);
    let registry = Registry::builder().handler("doomed", &["user.created"], doomed.clone());
    let server = TestServer::open(inbox_config(&jwks, &dir, ""), registry).await;
    assert_eq!(
        server
            .deliver(sign_event(&k, user_created("event_perm")))
            .await,
        (200, ok())
    );
    wait_status(&server, "event_perm", EventStatus::Dead).await;
    let detail = server
        .webhooks()
        .inbox()
        .unwrap()
        .store()
        .show("event_perm")
        .await
        .unwrap()
        .remove(0);
    assert_eq!(detail.jobs[0].attempts, 1);
    assert_eq!(doomed.calls(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn panicking_and_hanging_handlers_are_isolated() {
    let (k, jwks, dir) = setup().await;
    let hang = Scripted::new(Script::Hang);
    let fine = Recorder::new();
    let registry = Registry::builder()
        .handler("hang", &["user.created"], hang.clone())
        .handler("panics", &["user.created"], Recorder::panicking())
        .handler("fine", &["user.created"], fine.clone());
    let server = TestServer::open(inbox_config(&jwks, &dir, ""), registry).await;
    assert_eq!(
        server
            .deliver(sign_event(&k, user_created("event_iso")))
            .await,
        (200, ok())
    );
    wait_status(&server, "event_iso", EventStatus::Dead).await;
    let detail = server
        .webhooks()
        .inbox()
        .unwrap()
        .store()
        .show("event_iso")
        .await
        .unwrap()
        .remove(0);
    let job = |n: &str| detail.jobs.iter().find(|j| j.handler == n).unwrap().clone();
    assert_eq!(job("fine").status, "done");
    assert!(
        job("hang")
            .history
            .iter()
            .all(|a| a.error.as_deref() == Some("handler timed out after 300ms")),
        "{:?}",
        job("hang")
    );
    assert!(
        job("panics")
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("recorder told to panic"))
    );
    assert_eq!(fine.events().len(), 1);
    // The server still serves.
    assert_eq!(
        server
            .deliver(sign_event(&k, user_created("event_iso2")))
            .await,
        (200, ok())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_cannot_be_written_gets_503_and_no_handler_runs() {
    let (k, jwks, dir) = setup().await;
    let recorder = Recorder::new();
    let registry = Registry::builder().handler("rec", &["*"], recorder.clone());
    let mut config = inbox_config(&jwks, &dir, "");
    config.store.busy_timeout = Duration::from_millis(200);
    let server = TestServer::open(config, registry).await;
    server.wait_for_keys().await;

    // Another process holds the database's write lock.
    let url = format!("sqlite://{}", dir.path().join("inbox.db").display());
    let mut other = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut other)
        .await
        .unwrap();
    let token = sign_event(&k, user_created("event_locked"));
    assert_eq!(
        server.deliver(token.clone()).await,
        (503, error("store_unavailable"))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        recorder.events().is_empty(),
        "nothing runs for an event that was not stored"
    );

    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    assert_eq!(
        server.deliver(token).await,
        (200, ok()),
        "Kinde's retry succeeds"
    );
    wait_status(&server, "event_locked", EventStatus::Done).await;
    assert_eq!(recorder.events().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unhandled_type_is_skipped_and_replayed_once_a_handler_exists() {
    let (k, jwks, dir) = setup().await;
    let users = Recorder::new();
    let first = TestServer::open(
        inbox_config(&jwks, &dir, ""),
        Registry::builder().handler("users", &["user.*"], users.clone()),
    )
    .await;
    let role = json!({"type": "role.created", "event_id": "event_role1",
                      "data": {"role": {"id": "r", "key": "k", "name": "n", "is_default_role": false}}});
    assert_eq!(first.deliver(sign_event(&k, role)).await, (200, ok()));
    assert_eq!(
        status_of(&first, "event_role1").await,
        Some(EventStatus::Skipped)
    );
    let filter = ListFilter {
        status: Some(EventStatus::Skipped),
        limit: 10,
        ..ListFilter::default()
    };
    let skipped = first
        .webhooks()
        .inbox()
        .unwrap()
        .store()
        .list(&filter)
        .await
        .unwrap();
    assert_eq!(skipped.len(), 1);
    drop(first);

    // A new release adds a handler for roles; replaying the skipped events reaches it.
    let roles = Recorder::new();
    let registry: RegistryBuilder = Registry::builder()
        .handler("users", &["user.*"], users.clone())
        .handler("roles", &["role.*"], roles.clone());
    let second = TestServer::open(inbox_config(&jwks, &dir, ""), registry).await;
    let registry = second.webhooks().registry().clone();
    let matcher = move |_: &str, t: &str| {
        registry
            .handlers_for(t)
            .map(|e| e.name.to_string())
            .collect::<Vec<_>>()
    };
    let store = second.webhooks().inbox().unwrap().store().clone();
    assert_eq!(
        store
            .replay(&ReplayTarget::Skipped, &matcher)
            .await
            .unwrap(),
        1
    );
    wait_status(&second, "event_role1", EventStatus::Done).await;
    assert_eq!(roles.only().event_id, "event_role1");
    assert!(users.events().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_left_in_flight_by_a_crash_run_at_the_next_start() {
    let (_k, jwks, dir) = setup().await;
    let path = dir.path().join("inbox.db");
    {
        // A previous process stored the event and claimed its job, then died.
        let store = SqliteStore::open(&path, Duration::from_secs(1))
            .await
            .unwrap();
        let claims = json!({"type": "user.created", "event_id": "event_crash", "timestamp": "2026-01-01T00:00:00Z",
                            "data": {"user": {"id": "kp_1"}}});
        let new = NewEvent {
            route: "/api/kinde-webhook".into(),
            event_id: "event_crash".into(),
            webhook_id: Some("msg_crash".into()),
            issuer: String::new(),
            event_type: "user.created".into(),
            claims: claims.to_string().into(),
            received_at: chrono::Utc::now(),
            handlers: vec!["rec".into()],
        };
        store.enqueue(new).await.unwrap();
        assert_eq!(
            store
                .claim(10, Duration::from_secs(3600))
                .await
                .unwrap()
                .len(),
            1
        );
    }
    let recorder = Recorder::new();
    let server = TestServer::open(
        inbox_config(&jwks, &dir, ""),
        Registry::builder().handler("rec", &["*"], recorder.clone()),
    )
    .await;
    wait_status(&server, "event_crash", EventStatus::Done).await;
    let event = recorder.only();
    assert_eq!(
        (
            event.event_id.as_str(),
            event.delivery.webhook_id.as_deref()
        ),
        ("event_crash", Some("msg_crash"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn inline_mode_failure_gets_500_and_kindes_retry_runs_the_handlers_again() {
    let (k, jwks, _dir) = setup().await;
    let toggle = Scripted::new(Script::UntilFixed);
    let server = TestServer::start(
        jwks.config("[delivery]\nmode = \"inline\"\n"),
        Registry::builder().handler("toggle", &["user.created"], toggle.clone()),
    )
    .await;
    let token = sign_event(&k, user_created("event_inline"));
    assert_eq!(
        server.deliver(token.clone()).await,
        (500, error("handler_failed"))
    );
    toggle.fixed.store(true, Ordering::SeqCst);
    assert_eq!(server.deliver(token.clone()).await, (200, ok()));
    assert_eq!((toggle.calls(), toggle.successes()), (2, 1));
    assert_eq!(
        server.deliver(token).await,
        (200, ok()),
        "a duplicate of a handled event"
    );
    assert_eq!(toggle.calls(), 2, "is not run again");
}
