//! Which handlers run for an event, and what a failing or panicking handler does to the
//! answer and to the others.

use kinde_webhooks::{EventType, Registry};
use serde_json::json;

use crate::utils::{JwksServer, ROUTE, Recorder, TestServer, error, event, key, ok, sign_event};

#[tokio::test(flavor = "multi_thread")]
async fn group_exact_and_catch_all_subscriptions() {
    let key = key();
    let jwks = JwksServer::start(&[&key]).await;
    let (users, created, orgs, all) = (
        Recorder::new(),
        Recorder::new(),
        Recorder::new(),
        Recorder::new(),
    );
    let registry = Registry::builder()
        .handler("users", &["user.*"], users.clone())
        .handler("created", &["user.created"], created.clone())
        .handler("orgs", &["organization.*"], orgs.clone())
        .handler("all", &["*"], all.clone());
    let server = TestServer::with_handlers(&jwks, registry).await;

    let token = sign_event(&key, event("user.created", json!({"user": {"id": "kp_1"}})));
    assert_eq!(server.deliver(token).await, (200, ok()));
    let token = sign_event(&key, event("user.deleted", json!({"user": {"id": "kp_1"}})));
    assert_eq!(server.deliver(token).await, (200, ok()));
    let token = sign_event(&key, event("role.created", json!({})));
    assert_eq!(server.deliver(token).await, (200, ok()));

    assert_eq!(users.types(), ["user.created", "user.deleted"]);
    assert_eq!(created.types(), ["user.created"]);
    assert_eq!(orgs.types(), Vec::<String>::new());
    assert_eq!(
        all.types(),
        ["user.created", "user.deleted", "role.created"]
    );
    assert_eq!(users.events()[0].data, json!({"user": {"id": "kp_1"}}));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_handlers_on_one_type_both_run() {
    let key = key();
    let jwks = JwksServer::start(&[&key]).await;
    let (first, second) = (Recorder::new(), Recorder::new());
    let registry = Registry::builder()
        .handler("first", &["organization.created"], first.clone())
        .handler("second", &["organization.created"], second.clone());
    let server = TestServer::with_handlers(&jwks, registry).await;

    let claims = event(
        "organization.created",
        json!({"organization": {"code": "org_1"}}),
    );
    let (status, body) = server
        .post(ROUTE, sign_event(&key, claims), Some("msg_1"))
        .await;
    assert_eq!((status, body), (200, ok()));

    let (a, b) = (first.only(), second.only());
    assert_eq!(a.event_type, "organization.created");
    assert_eq!(a.event_id, b.event_id);
    assert_eq!(a.delivery.webhook_id.as_deref(), Some("msg_1"));
    assert_eq!(b.delivery.webhook_id.as_deref(), Some("msg_1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_handler_gives_500_and_the_other_still_runs() {
    let key = key();
    let jwks = JwksServer::start(&[&key]).await;
    let (failing, healthy) = (Recorder::failing(), Recorder::new());
    let registry = Registry::builder()
        .handler("failing", &["user.created"], failing.clone())
        .handler("healthy", &["user.*"], healthy.clone());
    let server = TestServer::with_handlers(&jwks, registry).await;

    let token = sign_event(&key, event("user.created", json!({"user": {"id": "kp_1"}})));
    assert_eq!(server.deliver(token).await, (500, error("handler_failed")));
    assert_eq!(failing.types(), ["user.created"]);
    assert_eq!(healthy.types(), ["user.created"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_handler_gives_500_and_the_server_keeps_serving() {
    let key = key();
    let jwks = JwksServer::start(&[&key]).await;
    let (panicking, healthy) = (Recorder::panicking(), Recorder::new());
    let registry = Registry::builder()
        .handler("panicking", &["user.created"], panicking.clone())
        .handler("healthy", &["*"], healthy.clone());
    let server = TestServer::with_handlers(&jwks, registry).await;

    let token = sign_event(&key, event("user.created", json!({"user": {"id": "kp_1"}})));
    assert_eq!(server.deliver(token).await, (500, error("handler_failed")));
    assert_eq!(panicking.types(), ["user.created"]);
    assert_eq!(healthy.types(), ["user.created"]);

    // The panic harmed nothing: the next deliveries are served, the panicking one included.
    let token = sign_event(&key, event("role.created", json!({})));
    assert_eq!(server.deliver(token).await, (200, ok()));
    let token = sign_event(&key, event("user.created", json!({"user": {"id": "kp_2"}})));
    assert_eq!(server.deliver(token).await, (500, error("handler_failed")));
    assert_eq!(panicking.types(), ["user.created", "user.created"]);
    assert_eq!(
        healthy.types(),
        ["user.created", "role.created", "user.created"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_type_is_acknowledged_and_reaches_catch_all_handlers_only() {
    let key = key();
    let jwks = JwksServer::start(&[&key]).await;
    let (users, widgets, all) = (Recorder::new(), Recorder::new(), Recorder::new());
    let registry = Registry::builder()
        .handler("users", &["user.*"], users.clone())
        .handler("widgets", &["widget.created"], widgets.clone())
        .handler("all", &["*"], all.clone());
    let server = TestServer::with_handlers(&jwks, registry).await;

    let token = sign_event(&key, event("widget.exploded", json!({"widget": {"id": 7}})));
    assert_eq!(server.deliver(token).await, (200, ok()));

    let seen = all.only();
    assert_eq!(seen.kind(), EventType::Unknown("widget.exploded".into()));
    assert_eq!(seen.data, json!({"widget": {"id": 7}}));
    assert_eq!(users.types(), Vec::<String>::new());
    assert_eq!(widgets.types(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_no_handler_wants_is_acknowledged() {
    let key = key();
    let jwks = JwksServer::start(&[&key]).await;
    let users = Recorder::new();
    let registry = Registry::builder().handler("users", &["user.*"], users.clone());
    let server = TestServer::with_handlers(&jwks, registry).await;

    let token = sign_event(&key, event("role.created", json!({})));
    assert_eq!(server.deliver(token).await, (200, ok()));
    assert_eq!(users.types(), Vec::<String>::new());
}
