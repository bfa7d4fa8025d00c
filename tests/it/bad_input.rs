//! Requests that are not a usable Kinde token: each gets its 4xx and reaches no handler;
//! a genuine token in an unusual wrapping is still accepted.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use kinde_webhooks::Registry;
use kinde_webhooks::signing::{SigningKey, complete_claims};
use serde_json::{Value, json};

use crate::utils::{
    JwksServer, ROUTE, Recorder, TestServer, error, event, key, ok, send, sign_event,
};

struct Setup {
    key: SigningKey,
    _jwks: JwksServer,
    server: TestServer,
    all: Recorder,
}

async fn start(toml: &str) -> Setup {
    let key = key();
    let jwks = JwksServer::start(&[&key]).await;
    let all = Recorder::new();
    let registry = Registry::builder().handler("all", &["*"], all.clone());
    let server = TestServer::start(jwks.config(toml), registry).await;
    Setup {
        key,
        _jwks: jwks,
        server,
        all,
    }
}

fn claims() -> Value {
    event("user.created", json!({"user": {"id": "kp_1"}}))
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_that_are_not_a_token_get_400_with_their_label() {
    let s = start("").await;
    let genuine = sign_event(&s.key, claims());
    let (header, rest) = genuine.split_once('.').unwrap();
    let (payload, _signature) = rest.split_once('.').unwrap();
    let cases = [
        ("empty body", String::new(), "malformed_token"),
        (
            "JSON body",
            r#"{"type":"user.created"}"#.to_owned(),
            "malformed_token",
        ),
        (
            "two segments",
            format!("{header}.{payload}"),
            "malformed_token",
        ),
        (
            "garbage",
            "this is not a token at all".to_owned(),
            "malformed_token",
        ),
        (
            "four segments",
            format!("{genuine}.{payload}"),
            "malformed_token",
        ),
        (
            "non-base64 header",
            format!("!!.{payload}.x"),
            "malformed_token",
        ),
        (
            "header not JSON",
            format!("{}.{payload}.x", B64.encode("not json")),
            "malformed_header",
        ),
        (
            "header an array",
            format!("{}.{payload}.x", B64.encode(r#"["RS256","k"]"#)),
            "malformed_header",
        ),
    ];
    for (what, body, reason) in cases {
        let answer = s.server.post(ROUTE, body, Some("msg_bad")).await;
        assert_eq!(answer, (400, error(reason)), "{what}");
    }
    assert_eq!(s.all.types(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_is_not_utf8_gets_400() {
    let s = start("").await;
    let answer = s
        .server
        .post(ROUTE, vec![0xff, 0xfe, b'.', 0x80], None)
        .await;
    assert_eq!(answer, (400, error("unreadable_body")));
    assert_eq!(s.all.types(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_the_limit_gets_413() {
    let s = start("[server]\nbody_limit = 8192").await;
    let answer = s.server.post(ROUTE, "a".repeat(16384), None).await;
    assert_eq!(answer, (413, error("payload_too_large")));
    assert_eq!(s.all.types(), Vec::<String>::new());
    // A real token fits well under the limit.
    let token = sign_event(&s.key, claims());
    assert!(token.len() < 8192);
    assert_eq!(s.server.deliver(token).await, (200, ok()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_in_whitespace_is_accepted_whatever_the_content_type() {
    let s = start("").await;
    for content_type in [Some("application/json"), Some("text/plain"), None] {
        let token = sign_event(&s.key, claims());
        let mut request = s
            .server
            .client()
            .post(s.server.url(ROUTE))
            .body(format!("\n  {token}\r\n\t\n"));
        if let Some(content_type) = content_type {
            request = request.header(reqwest::header::CONTENT_TYPE, content_type);
        }
        assert_eq!(send(request).await, (200, ok()), "{content_type:?}");
    }
    assert_eq!(s.all.types(), ["user.created"; 3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_answers_200() {
    let s = start("").await;
    let answer = send(s.server.client().get(s.server.url("/healthz"))).await;
    assert_eq!(answer, (200, Value::String("ok".into())));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_verified_payload_that_is_not_a_kinde_event_gets_400() {
    let s = start("").await;
    let mut no_event_id = complete_claims(claims());
    no_event_id.as_object_mut().unwrap().remove("event_id");
    let mut bad_timestamp = complete_claims(claims());
    bad_timestamp["timestamp"] = json!("yesterday");
    let mut no_type = complete_claims(claims());
    no_type.as_object_mut().unwrap().remove("type");
    for (what, claims) in [
        ("no event_id", no_event_id),
        ("bad timestamp", bad_timestamp),
        ("no type", no_type),
        ("not an object", json!(["user.created"])),
    ] {
        let answer = s.server.deliver(s.key.sign(&claims)).await;
        assert_eq!(answer, (400, error("invalid_payload")), "{what}");
    }
    assert_eq!(s.all.types(), Vec::<String>::new());
}
