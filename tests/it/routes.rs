//! `[[routes]]`: each path accepts only the event types it lists, and handlers see the
//! route an event arrived on.

use kinde_webhooks::Registry;
use kinde_webhooks::signing::SigningKey;
use serde_json::json;

use crate::utils::{JwksServer, ROUTE, Recorder, TestServer, event, key, ok, sign_event};

const ROUTES: &str = r#"
[[routes]]
path = "/hooks/users"
patterns = ["user.*"]

[[routes]]
path = "/hooks/all"
patterns = ["*"]
"#;

struct Setup {
    key: SigningKey,
    _jwks: JwksServer,
    server: TestServer,
    users: Recorder,
    orgs: Recorder,
    all: Recorder,
}

async fn start() -> Setup {
    let key = key();
    let jwks = JwksServer::start(&[&key]).await;
    let (users, orgs, all) = (Recorder::new(), Recorder::new(), Recorder::new());
    let registry = Registry::builder()
        .handler("users", &["user.*"], users.clone())
        .handler("orgs", &["organization.*"], orgs.clone())
        .handler("all", &["*"], all.clone());
    let server = TestServer::start(jwks.config(ROUTES), registry).await;
    Setup {
        key,
        _jwks: jwks,
        server,
        users,
        orgs,
        all,
    }
}

fn routes_of(recorder: &Recorder) -> Vec<String> {
    recorder
        .events()
        .into_iter()
        .map(|e| e.delivery.route)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_type_outside_the_route_patterns_is_acknowledged_and_not_dispatched() {
    let s = start().await;
    let claims = event(
        "organization.created",
        json!({"organization": {"code": "org_1"}}),
    );
    let token = sign_event(&s.key, claims);

    let (status, body) = s
        .server
        .post("/hooks/users", token.clone(), Some("msg_1"))
        .await;
    assert_eq!((status, body), (200, ok()));
    assert_eq!(s.all.types(), Vec::<String>::new());
    assert_eq!(s.orgs.types(), Vec::<String>::new());
    assert_eq!(s.users.types(), Vec::<String>::new());

    let (status, body) = s.server.post("/hooks/all", token, Some("msg_2")).await;
    assert_eq!((status, body), (200, ok()));
    assert_eq!(s.orgs.types(), ["organization.created"]);
    assert_eq!(s.all.types(), ["organization.created"]);
    assert_eq!(s.users.types(), Vec::<String>::new());
    assert_eq!(routes_of(&s.orgs), ["/hooks/all"]);
    assert_eq!(s.orgs.only().delivery.webhook_id.as_deref(), Some("msg_2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn each_handler_sees_the_route_it_arrived_on() {
    let s = start().await;
    let token = sign_event(
        &s.key,
        event("user.created", json!({"user": {"id": "kp_1"}})),
    );

    assert_eq!(
        s.server.post("/hooks/users", token.clone(), None).await,
        (200, ok())
    );
    assert_eq!(s.server.post("/hooks/all", token, None).await, (200, ok()));

    assert_eq!(routes_of(&s.users), ["/hooks/users", "/hooks/all"]);
    assert_eq!(routes_of(&s.all), ["/hooks/users", "/hooks/all"]);
    assert_eq!(s.orgs.types(), Vec::<String>::new());
    // The same signed event both times; only the delivery facts differ.
    let seen = s.all.events();
    assert_eq!(seen[0].event_id, seen[1].event_id);
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_routes_replace_the_default_route() {
    let s = start().await;
    let token = sign_event(
        &s.key,
        event("user.created", json!({"user": {"id": "kp_1"}})),
    );
    let (status, _) = s.server.post(ROUTE, token, None).await;
    assert_eq!(status, 404);
    assert_eq!(s.all.types(), Vec::<String>::new());
}
