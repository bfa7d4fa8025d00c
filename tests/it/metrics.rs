//! `/metrics` and `/readyz` move as they should after valid, forged and failing events.
//! The recorder is process-wide, so each test uses routes and handler names of its own.

use kinde_webhooks::Registry;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::utils::{
    JwksServer, Recorder, TestServer, error, eventually, key, ok, send, sign_event,
};

/// The value of the sample whose line starts with `name{` and holds every label in `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn metrics(server: &TestServer) -> String {
    let response = server
        .client()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    response.text().await.expect("metrics text")
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_handlers_jwks_and_dedup_are_counted() {
    let k = key();
    let jwks = JwksServer::start(&[&k]).await;
    let config = jwks.config("[[routes]]\npath = \"/metrics-test\"\npatterns = [\"*\"]\n");
    let registry = Registry::builder()
        .handler("metrics-ok", &["user.created"], Recorder::new())
        .handler("metrics-fail", &["role.created"], Recorder::failing());
    let server = TestServer::start(config, registry).await;
    let route = "route=\"/metrics-test\"";

    let valid = sign_event(
        &k,
        json!({"type": "user.created", "event_id": "event_m1", "data": {"user": {"id": "kp_1"}}}),
    );
    assert_eq!(
        server.post("/metrics-test", valid.clone(), None).await,
        (200, ok())
    );
    assert_eq!(
        server.post("/metrics-test", valid.clone(), None).await,
        (200, ok()),
        "a duplicate"
    );
    let mut forged = valid.into_bytes();
    let last = forged.len() - 3;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    assert_eq!(
        server.post("/metrics-test", forged, None).await,
        (401, error("invalid_signature"))
    );
    let failing = sign_event(&k, json!({"type": "role.created", "data": {}}));
    assert_eq!(
        server.post("/metrics-test", failing, None).await,
        (500, error("handler_failed"))
    );

    let text = metrics(&server).await;
    let requests = |outcome: &str| {
        sample(
            &text,
            "kinde_webhooks_requests_total",
            &[route, &format!("outcome=\"{outcome}\"")],
        )
    };
    assert_eq!(requests("ok"), Some(1.0), "{text}");
    assert_eq!(requests("duplicate"), Some(1.0));
    assert_eq!(requests("invalid_signature"), Some(1.0));
    assert_eq!(requests("handler_failed"), Some(1.0));
    assert_eq!(
        sample(&text, "kinde_webhooks_dedup_hits_total", &[route]),
        Some(1.0)
    );
    let ok_handler = ["handler=\"metrics-ok\"", "event_type=\"user.created\""];
    assert_eq!(
        sample(&text, "kinde_webhooks_handler_seconds_count", &ok_handler),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "kinde_webhooks_handler_failures_total", &ok_handler),
        None
    );
    let failing_handler = ["handler=\"metrics-fail\"", "event_type=\"role.created\""];
    assert_eq!(
        sample(
            &text,
            "kinde_webhooks_handler_failures_total",
            &failing_handler
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &text,
            "kinde_webhooks_jwks_fetches_total",
            &["result=\"ok\""]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert!(sample(&text, "kinde_webhooks_verify_seconds_count", &[]).unwrap_or(0.0) >= 4.0);
    assert!(sample(&text, "kinde_webhooks_jwks_age_seconds", &[]).is_some());
    assert!(text.contains("# TYPE kinde_webhooks_verify_seconds histogram"));
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_needs_keys_and_a_writable_inbox() {
    let k = key();
    let jwks = JwksServer::start(&[&k]).await;
    jwks.set_up(false);
    let dir = TempDir::new().unwrap();
    let mut config = jwks.config(
        "[delivery]\nmode = \"inbox\"\n[kinde]\njwks_refresh_cooldown = \"100ms\"\n[store]\nbusy_timeout = \"100ms\"\n",
    );
    config.store.path = dir.path().join("inbox.db");
    let server = TestServer::open(
        config,
        Registry::builder().handler("ready-rec", &["*"], Recorder::new()),
    )
    .await;
    let readyz = || send(server.client().get(server.url("/readyz")));
    assert_eq!(
        readyz().await,
        (
            503,
            json!({"status": "not_ready", "reasons": ["no_signing_keys"]})
        )
    );
    assert_eq!(
        send(server.client().get(server.url("/healthz"))).await,
        (200, Value::String("ok".into()))
    );

    jwks.set_up(true);
    eventually("ready once keys arrive", || async {
        readyz().await.0 == 200
    })
    .await;
    assert_eq!(readyz().await, (200, json!({"status": "ready"})));

    let url = format!("sqlite://{}", dir.path().join("inbox.db").display());
    let mut other = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut other)
        .await
        .unwrap();
    assert_eq!(
        readyz().await,
        (
            503,
            json!({"status": "not_ready", "reasons": ["store_not_writable"]})
        )
    );
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    assert_eq!(readyz().await, (200, json!({"status": "ready"})));
}
