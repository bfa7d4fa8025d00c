//! The key store against a live JWKS endpoint: unknown kids, rotation, removal, and a
//! JWKS that is down.

use std::time::{Duration, Instant};

use kinde_webhooks::Registry;
use kinde_webhooks::signing::SigningKey;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::utils::{
    DEADLINE, JwksServer, ROUTE, Recorder, TestServer, error, event, eventually, key, ok, send,
    sign_event,
};

fn claims() -> Value {
    event("user.created", json!({"user": {"id": "kp_1"}}))
}

/// A receiver with one catch-all recorder and the given `[kinde]` settings.
async fn start(jwks: &JwksServer, kinde: &str) -> (TestServer, Recorder) {
    let all = Recorder::new();
    let registry = Registry::builder().handler("all", &["*"], all.clone());
    let server = TestServer::start(jwks.config(&format!("[kinde]\n{kinde}")), registry).await;
    (server, all)
}

/// Wait for the start-up fetch and check that a token signed with `key` is accepted.
async fn warm_up(jwks: &JwksServer, server: &TestServer, key: &SigningKey) {
    server.wait_for_keys().await;
    assert_eq!(jwks.fetches(), 1);
    assert_eq!(server.deliver(sign_event(key, claims())).await, (200, ok()));
    assert_eq!(jwks.fetches(), 1);
}

/// 50 concurrent requests naming a kid the JWKS does not hold: every one gets 401, and
/// the storm ends with exactly one more JWKS fetch than it started with.
async fn unknown_kid_storm(jwks: &JwksServer, server: &TestServer) {
    let stranger = key();
    let token = sign_event(&stranger, claims());
    let before = jwks.fetches();
    let mut requests = JoinSet::new();
    for _ in 0..50 {
        let request = server.client().post(server.url(ROUTE)).body(token.clone());
        requests.spawn(send(request));
    }
    while let Some(answer) = requests.join_next().await {
        assert_eq!(answer.unwrap(), (401, error("unknown_key")));
    }
    assert_eq!(jwks.fetches(), before + 1, "50 unknown kids, one refresh");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_unknown_kids_cause_one_jwks_fetch() {
    let trusted = key();
    let jwks = JwksServer::start(&[&trusted]).await;
    let (server, all) = start(&jwks, r#"jwks_refresh_cooldown = "60s""#).await;
    warm_up(&jwks, &server, &trusted).await;
    // The start-up fetch was not caused by an unknown kid, so the first unknown kid may
    // refresh at once; the rest of the storm shares that fetch or waits out the cooldown.
    unknown_kid_storm(&jwks, &server).await;
    assert_eq!(all.types(), ["user.created"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_unknown_kids_after_the_cooldown_cause_one_jwks_fetch() {
    let trusted = key();
    let jwks = JwksServer::start(&[&trusted]).await;
    let (server, all) = start(&jwks, r#"jwks_refresh_cooldown = "2s""#).await;
    warm_up(&jwks, &server, &trusted).await;
    // Past any cooldown the start-up fetch may have begun; the storm ends well within the
    // cooldown its own fetch begins.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    unknown_kid_storm(&jwks, &server).await;
    assert_eq!(all.types(), ["user.created"]);
}

/// A receiver whose JWKS answers after `delay`, warmed up with the trusted key, and
/// `hang_up(server)`: a POST of a token with an unknown kid by a client that gives up after
/// 50 ms (its answer, if one came that soon).
struct SlowJwks {
    trusted: SigningKey,
    jwks: JwksServer,
    server: TestServer,
    all: Recorder,
    impatient: reqwest::Client,
    stranger: String,
}

impl SlowJwks {
    async fn start(cooldown: &str, delay: Duration) -> SlowJwks {
        let trusted = key();
        let jwks = JwksServer::start(&[&trusted]).await;
        let (server, all) = start(&jwks, &format!("jwks_refresh_cooldown = \"{cooldown}\"")).await;
        warm_up(&jwks, &server, &trusted).await;
        jwks.set_delay(delay);
        let impatient = reqwest::Client::builder()
            .timeout(Duration::from_millis(50))
            .build()
            .unwrap();
        let stranger = sign_event(&key(), claims());
        SlowJwks {
            trusted,
            jwks,
            server,
            all,
            impatient,
            stranger,
        }
    }

    async fn hang_up(&self) -> reqwest::Result<reqwest::Response> {
        let url = self.server.url(ROUTE);
        self.impatient
            .post(url)
            .body(self.stranger.clone())
            .send()
            .await
    }
}

/// Clients that hang up while their unknown kid is being looked up (the JWKS is slow) do
/// not get around the cooldown: the fetch they started runs to its end and spaces the next.
#[tokio::test(flavor = "multi_thread")]
async fn clients_hanging_up_mid_fetch_do_not_get_around_the_cooldown() {
    let slow = SlowJwks::start("60s", Duration::from_millis(400)).await;
    for i in 0..10 {
        match slow.hang_up().await {
            // The first one hangs up mid-fetch; the rest find the cooldown running (401 at
            // once) or hang up too.
            Err(e) => assert!(e.is_timeout(), "{e}"),
            Ok(answer) => {
                assert!(
                    i > 0,
                    "the first client gives up before the slow JWKS answers"
                );
                assert_eq!(answer.status(), 401);
            }
        }
    }
    // Long enough for any fetch these started to reach the JWKS.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(slow.jwks.fetches(), 2, "ten hang-ups, one refresh");
    slow.jwks.set_delay(Duration::ZERO);
    assert_eq!(
        slow.server
            .deliver(sign_event(&slow.trusted, claims()))
            .await,
        (200, ok())
    );
    assert_eq!(slow.all.types(), ["user.created"; 2]);
}

/// Fetches for unknown kids never overlap, also when every client hangs up mid-fetch: the
/// fetch holds its lock to its end, and the cooldown counts from there.
#[tokio::test(flavor = "multi_thread")]
async fn fetches_for_hung_up_clients_never_overlap() {
    let slow = SlowJwks::start("100ms", Duration::from_millis(600)).await;
    let started = Instant::now();
    // A hang-up every 150 ms for 1.5 s: past the cooldown each time, were it counted from
    // the start of a fetch that is still running.
    while started.elapsed() < Duration::from_millis(1500) {
        let _ = slow.hang_up().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    // One fetch at a time, each 600 ms plus the 100 ms cooldown: at most three in 1.5 s.
    let during = slow.jwks.fetches() - 1;
    assert!(
        (1..=3).contains(&during),
        "{during} fetches for the hang-ups of 1.5 s"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_key_verifies_without_a_restart() {
    let (old, new) = (key(), key());
    let jwks = JwksServer::start(&[&old]).await;
    let (server, all) = start(&jwks, r#"jwks_refresh_cooldown = "100ms""#).await;
    warm_up(&jwks, &server, &old).await;

    jwks.set_keys(&[&old, &new]);
    // Past any cooldown the start-up fetch may have begun.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        server.deliver(sign_event(&new, claims())).await,
        (200, ok())
    );
    assert_eq!(jwks.fetches(), 2);
    assert_eq!(
        server.deliver(sign_event(&old, claims())).await,
        (200, ok())
    );
    assert_eq!(all.types(), ["user.created"; 3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_removed_from_the_jwks_stops_verifying_after_a_refresh() {
    let (old, new) = (key(), key());
    let jwks = JwksServer::start(&[&old]).await;
    let (server, all) = start(&jwks, r#"jwks_refresh_cooldown = "100ms""#).await;
    warm_up(&jwks, &server, &old).await;

    jwks.set_keys(&[&new]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The new key's unknown kid refreshes the set, which no longer holds the old key.
    assert_eq!(
        server.deliver(sign_event(&new, claims())).await,
        (200, ok())
    );
    assert_eq!(jwks.fetches(), 2);
    let (status, body) = server.deliver(sign_event(&old, claims())).await;
    assert_eq!((status, body), (401, error("unknown_key")));
    assert_eq!(all.types(), ["user.created"; 2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jwks_down_at_start_up_gives_503_until_it_returns() {
    let key = key();
    let jwks = JwksServer::start(&[&key]).await;
    jwks.set_up(false);
    let (server, all) = start(&jwks, r#"jwks_refresh_cooldown = "100ms""#).await;
    eventually("a JWKS fetch attempt", || async { jwks.fetches() >= 1 }).await;

    let token = sign_event(&key, claims());
    let (status, body) = server.deliver(token.clone()).await;
    assert_eq!((status, body), (503, error("keys_unavailable")));
    assert_eq!(all.types(), Vec::<String>::new());

    jwks.set_up(true);
    let started = Instant::now();
    loop {
        match server.deliver(token.clone()).await {
            (200, body) => {
                assert_eq!(body, ok());
                break;
            }
            answer => assert_eq!(answer, (503, error("keys_unavailable"))),
        }
        assert!(
            started.elapsed() < DEADLINE,
            "still 503 after the JWKS came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(all.types(), ["user.created"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_held_keep_verifying_while_the_jwks_is_down() {
    let key = key();
    let jwks = JwksServer::start(&[&key]).await;
    let kinde = "jwks_refresh_cooldown = \"100ms\"\njwks_refresh_interval = \"1s\"";
    let (server, all) = start(&jwks, kinde).await;
    warm_up(&jwks, &server, &key).await;

    jwks.set_up(false);
    // Two background refreshes have failed (the second starts after the first is done).
    eventually("two failed refreshes", || async { jwks.fetches() >= 3 }).await;
    assert_eq!(
        server.deliver(sign_event(&key, claims())).await,
        (200, ok())
    );
    assert_eq!(all.types(), ["user.created"; 2]);
}
