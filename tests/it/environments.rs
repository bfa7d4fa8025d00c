//! Several Kinde environments in one receiver: each route names its issuer, its events are
//! verified against that issuer's keys only, and handlers are told which issuer it was.

use kinde_webhooks::Config;
use kinde_webhooks::config::ConfigError;
use kinde_webhooks::testing::{TestIssuer, TestServer, eventually, send};

use crate::utils::{error, ok};

fn two_routes(staging: &TestIssuer, production: &TestIssuer, extra: &str) -> String {
    format!(
        "{extra}\n\
         [[routes]]\npath = \"/kinde/staging\"\nissuer_url = \"{}\"\n\
         [[routes]]\npath = \"/kinde/production\"\nissuer_url = \"{}\"\n",
        staging.url(),
        production.url()
    )
}

#[tokio::test]
async fn each_route_verifies_against_its_own_issuer_and_tells_the_handler() {
    let staging = TestIssuer::start().await;
    let production = TestIssuer::start().await;
    let server = TestServer::builder(&staging)
        .toml(&two_routes(&staging, &production, ""))
        .handler("all", &["*"], kinde_webhooks::testing::Recorder::new())
        .start()
        .await;

    let from_staging = staging.event("user.created");
    let from_production = production.event("user.created");
    assert_eq!(
        server
            .send_from(&staging, "/kinde/staging", &from_staging)
            .await,
        (200, ok())
    );
    assert_eq!(
        server
            .send_from(&production, "/kinde/production", &from_production)
            .await,
        (200, ok())
    );
    // A token of one environment on the other's route is not Kinde's for that route.
    let crossed = production.event("user.created");
    assert_eq!(
        server
            .send_from(&production, "/kinde/staging", &crossed)
            .await,
        (401, error("unknown_key"))
    );
    let crossed = staging.event("user.created");
    assert_eq!(
        server
            .send_from(&staging, "/kinde/production", &crossed)
            .await,
        (401, error("unknown_key"))
    );

    let received = server.received("all");
    assert_eq!(received.len(), 2);
    let by_id = |id: &str| received.iter().find(|e| e.event_id == id).unwrap();
    let s = by_id(from_staging.id());
    assert_eq!(
        (s.delivery.issuer.as_str(), s.delivery.route.as_str()),
        (staging.url().as_str(), "/kinde/staging")
    );
    let p = by_id(from_production.id());
    assert_eq!(p.delivery.issuer, production.url());
    assert_eq!(p.delivery.route, "/kinde/production");
}

#[tokio::test]
async fn one_environment_s_jwks_outage_leaves_the_other_serving() {
    let staging = TestIssuer::start().await;
    let production = TestIssuer::start().await;
    staging.jwks().set_up(false);
    let server = TestServer::builder(&staging)
        .toml(&two_routes(&staging, &production, ""))
        .handler("all", &["*"], kinde_webhooks::testing::Recorder::new())
        .start()
        .await;

    let (status, body) = server
        .send_from(&staging, "/kinde/staging", &staging.event("user.created"))
        .await;
    assert_eq!((status, body), (503, error("keys_unavailable")));
    let (status, _) = server
        .send_from(
            &production,
            "/kinde/production",
            &production.event("user.created"),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = send(server.client().get(server.url("/readyz"))).await;
    assert_eq!(
        status, 503,
        "not ready while one environment has no keys: {body}"
    );

    staging.jwks().set_up(true);
    let retry = staging.event("user.created");
    eventually("the staging keys to load", || async {
        server.send_from(&staging, "/kinde/staging", &retry).await.0 == 200
    })
    .await;
    assert_eq!(
        send(server.client().get(server.url("/readyz"))).await.0,
        200
    );
}

#[tokio::test]
async fn the_inbox_tells_handlers_the_issuer_of_the_route() {
    let staging = TestIssuer::start().await;
    let production = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[delivery]\nmode = \"inbox\"\n[store]\npath = {:?}\n",
        dir.path().join("inbox.db")
    );
    let server = TestServer::builder(&staging)
        .toml(&two_routes(&staging, &production, &extra))
        .handler("all", &["*"], kinde_webhooks::testing::Recorder::new())
        .start()
        .await;

    let event = production.event("organization.created");
    assert_eq!(
        server
            .send_from(&production, "/kinde/production", &event)
            .await,
        (200, ok())
    );
    let got = server.wait_for("all", 1).await;
    assert_eq!(got[0].delivery.issuer, production.url());
}

fn invalid_key(toml: &str) -> String {
    match Config::from_toml(toml, "test").unwrap().validate() {
        Err(ConfigError::Invalid { key, .. }) => key,
        other => panic!("expected an invalid key for {toml}, got {other:?}"),
    }
}

#[test]
fn routes_with_their_own_issuers_need_no_default_and_are_checked() {
    let both = "[[routes]]\npath = \"/a\"\nissuer_url = \"https://a.kinde.com\"\n\
                [[routes]]\npath = \"/b\"\nissuer_url = \"https://b.kinde.com/\"\n";
    let config = Config::from_toml(both, "test").unwrap();
    config.validate().expect("every route has its issuer");
    let issuers = config.route_issuers();
    assert_eq!(issuers["/b"], "https://b.kinde.com");
    let routes = config.effective_routes();
    assert_eq!(
        config.jwks_url_for(&routes[0]).unwrap(),
        "https://a.kinde.com/.well-known/jwks.json"
    );

    let one_without = "[[routes]]\npath = \"/a\"\nissuer_url = \"https://a.kinde.com\"\n\
                       [[routes]]\npath = \"/b\"\n";
    assert_eq!(invalid_key(one_without), "kinde.issuer_url");
    let plain_http = "[[routes]]\npath = \"/a\"\nissuer_url = \"http://a.kinde.com\"\n";
    assert_eq!(invalid_key(plain_http), "routes[0].issuer_url");
    let jwks_alone = "[kinde]\nissuer_url = \"https://x.kinde.com\"\n\
                      [[routes]]\npath = \"/a\"\njwks_url = \"https://a.kinde.com/keys\"\n";
    assert_eq!(invalid_key(jwks_alone), "routes[0].jwks_url");
}
