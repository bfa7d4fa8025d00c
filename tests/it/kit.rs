//! The public test kit (`kinde_webhooks::testing`) as a user's tests drive it: an issuer of
//! their own, the real server, and assertions on what each handler was given.

use chrono::DateTime;
use kinde_webhooks::Registry;
use kinde_webhooks::payload::UserPayload;
use kinde_webhooks::registry::RegistryError;
use kinde_webhooks::testing::{Recorder, TestEvent, TestIssuer, TestServer};
use serde_json::json;

use crate::utils::ok;

#[tokio::test]
async fn a_sample_event_reaches_the_handler_with_its_ids_and_timestamp() {
    let issuer = TestIssuer::start().await;
    let server = TestServer::builder(&issuer)
        .handler("users", &["user.*"], Recorder::new())
        .start()
        .await;
    let at = DateTime::parse_from_rfc3339("2026-05-01T10:00:00.123456+10:00").unwrap();
    let event = issuer
        .event("user.created")
        .event_id("event_0123456789abcdef0123456789abcdef")
        .webhook_id(Some("msg_kit_1"))
        .timestamp(at);

    assert_eq!(server.send(&event).await, (200, ok()));

    let received = server.received("users");
    assert_eq!(received.len(), 1);
    let got = &received[0];
    assert_eq!(got.event_type, "user.created");
    assert_eq!(got.event_id, "event_0123456789abcdef0123456789abcdef");
    assert_eq!(got.timestamp, at);
    assert_eq!(got.delivery.webhook_id.as_deref(), Some("msg_kit_1"));
    let user: UserPayload = got.payload().expect("the sample data is a user payload");
    assert_eq!(user.user.id, "kp_0f3c2a9b8e7d4c6b5a4f3e2d1c0b9a87");
}

#[tokio::test]
async fn custom_data_and_claims_are_signed_as_given() {
    let issuer = TestIssuer::start().await;
    let recorder = Recorder::new();
    let server = TestServer::builder(&issuer)
        .handler("all", &["*"], recorder.clone())
        .start()
        .await;
    let event = issuer
        .event("billing.plan_changed")
        .data(json!({ "plan": "pro", "added_later": [1, 2] }))
        .claim("source", json!("api"))
        .claim("ip_address", json!("203.0.113.9"));

    assert_eq!(server.send(&event).await.0, 200);

    let got = recorder.only();
    assert_eq!(got.data, json!({ "plan": "pro", "added_later": [1, 2] }));
    assert_eq!(got.ip_address.as_deref(), Some("203.0.113.9"));
    assert_eq!(got.event_id, event.id());
}

#[tokio::test]
async fn sending_the_same_test_event_again_is_a_retry_handled_once() {
    let issuer = TestIssuer::start().await;
    let server = TestServer::builder(&issuer)
        .handler("users", &["user.created"], Recorder::new())
        .start()
        .await;
    let event = issuer.event("user.created");
    for _ in 0..3 {
        assert_eq!(server.send(&event).await, (200, ok()));
    }
    assert_eq!(server.received("users").len(), 1);

    // A new event of the same type is a new event.
    assert_eq!(server.send(&issuer.event("user.created")).await.0, 200);
    assert_eq!(server.received("users").len(), 2);
}

#[tokio::test]
async fn a_failing_handler_shows_its_error_and_the_others_still_run() {
    let issuer = TestIssuer::start().await;
    let server = TestServer::builder(&issuer)
        .handler("flaky", &["user.created"], Recorder::failing())
        .handler("audit", &["*"], Recorder::new())
        .start()
        .await;

    let (status, _) = server.send(&issuer.event("user.created")).await;

    assert_eq!(
        status, 500,
        "inline delivery reports the failure so Kinde retries"
    );
    let calls = server.calls();
    let flaky = calls.iter().find(|c| c.handler == "flaky").unwrap();
    assert_eq!(flaky.outcome, Err("recorder told to fail".to_owned()));
    let audit = calls.iter().find(|c| c.handler == "audit").unwrap();
    assert_eq!(audit.outcome, Ok(()));
}

#[tokio::test]
async fn in_inbox_mode_the_test_waits_for_the_workers() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[delivery]\nmode = \"inbox\"\n[store]\npath = {:?}\n",
        dir.path().join("inbox.db")
    );
    let server = TestServer::builder(&issuer)
        .toml(&toml)
        .handler("orgs", &["organization.*"], Recorder::new())
        .start()
        .await;

    let event = issuer.event("organization.updated");
    assert_eq!(server.send(&event).await, (200, ok()));

    let got = server.wait_for("orgs", 1).await;
    assert_eq!(got[0].event_id, event.id());
}

#[tokio::test]
async fn events_signed_by_another_issuer_are_refused() {
    let issuer = TestIssuer::start().await;
    let stranger = TestIssuer::start().await;
    let server = TestServer::builder(&issuer)
        .handler("all", &["*"], Recorder::new())
        .start()
        .await;

    let token = stranger.sign(&stranger.event("user.created"));
    let (status, _) = server.deliver(token).await;

    assert_eq!(status, 401);
    assert!(server.calls().is_empty());
}

#[tokio::test]
async fn a_fixture_becomes_a_test_event() {
    let issuer = TestIssuer::start().await;
    let server = TestServer::builder(&issuer)
        .handler("all", &["*"], Recorder::new())
        .start()
        .await;
    let event = TestEvent::from_claims(crate::utils::fixture("organization.updated"));

    assert_eq!(server.send(&event).await.0, 200);
    assert_eq!(server.received("all")[0].event_type, "organization.updated");
}

#[test]
fn asking_for_a_handler_that_is_not_registered_names_it() {
    let err = Registry::builder()
        .inventory_named(&["welcome-mail"])
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, RegistryError::NotRegistered { name, .. } if name == "welcome-mail"),
        "{err}"
    );
    assert!(err.to_string().contains("register_handler!"), "{err}");
}
