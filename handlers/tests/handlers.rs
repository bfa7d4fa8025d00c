//! The bundled handlers tested the way you test yours: the test kit's issuer signs an
//! event, the real server runs the registered handlers the test names, and the test reads
//! what each one was given and returned.

use kinde_webhooks::testing::{TestIssuer, TestServer};
use kinde_webhooks_handlers as _;
use serde_json::json;

#[tokio::test]
async fn the_organization_handler_takes_every_organization_event() {
    let issuer = TestIssuer::start().await;
    let server = TestServer::builder(&issuer)
        .registered_only(&["log-organization-events"])
        .start()
        .await;

    for event_type in [
        "organization.created",
        "organization.updated",
        "organization.deleted",
    ] {
        let (status, body) = server.send(&issuer.event(event_type)).await;
        assert_eq!(
            (status, body),
            (200, json!({ "status": "ok" })),
            "{event_type}"
        );
    }
    let (status, _) = server.send(&issuer.event("user.created")).await;
    assert_eq!(
        status, 200,
        "an event no chosen handler takes is still acknowledged"
    );

    let calls = server.calls();
    let types: Vec<&str> = calls.iter().map(|c| c.event.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "organization.created",
            "organization.updated",
            "organization.deleted"
        ]
    );
    assert!(calls.iter().all(|c| c.outcome.is_ok()), "{calls:?}");
}

#[tokio::test]
async fn a_user_created_event_without_a_user_is_refused_by_the_typed_handler() {
    let issuer = TestIssuer::start().await;
    let server = TestServer::builder(&issuer)
        .registered_only(&["log-user-created"])
        .start()
        .await;

    let (status, _) = server
        .send(&issuer.event("user.created").data(json!({ "nope": 1 })))
        .await;

    assert_eq!(
        status, 500,
        "a payload of the wrong shape is a handler error"
    );
    let call = &server.calls()[0];
    assert!(
        call.outcome.as_ref().unwrap_err().contains("user"),
        "{call:?}"
    );
}

#[tokio::test]
async fn every_registered_handler_can_run_together() {
    let issuer = TestIssuer::start().await;
    let server = TestServer::builder(&issuer).registered().start().await;

    assert_eq!(server.send(&issuer.event("user.updated")).await.0, 200);
    assert_eq!(server.received("log-user-updated").len(), 1);
    assert!(server.received("log-user-created").is_empty());
}
