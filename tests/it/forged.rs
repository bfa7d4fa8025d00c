//! Forged and tampered tokens: each is refused with 401 and its reason, and no handler runs.

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use kinde_webhooks::Registry;
use kinde_webhooks::signing::{SigningKey, complete_claims};
use serde_json::{Value, json};

use crate::utils::{JwksServer, Recorder, TestServer, error, event, key, ok, sign_event};

/// A receiver trusting `key`, with one catch-all recorder.
struct Setup {
    key: SigningKey,
    _jwks: JwksServer,
    server: TestServer,
    all: Recorder,
}

impl Setup {
    async fn start() -> Self {
        let key = key();
        let jwks = JwksServer::start(&[&key]).await;
        let all = Recorder::new();
        let server = TestServer::with_handlers(
            &jwks,
            Registry::builder().handler("all", &["*"], all.clone()),
        )
        .await;
        Self {
            key,
            _jwks: jwks,
            server,
            all,
        }
    }

    /// `token` gets 401 with `reason` and reaches no handler.
    async fn refuse(&self, token: String, reason: &str) {
        assert_eq!(self.server.deliver(token).await, (401, error(reason)));
        assert_eq!(self.all.types(), Vec::<String>::new());
    }

    /// A genuine token still gets through, so the refusals were about the forged tokens
    /// and not the set-up.
    async fn genuine_is_accepted(&self) {
        let genuine = sign_event(&self.key, claims());
        assert_eq!(self.server.deliver(genuine).await, (200, ok()));
        assert_eq!(self.all.types(), ["user.created"]);
    }
}

fn claims() -> Value {
    complete_claims(event("user.created", json!({"user": {"id": "kp_1"}})))
}

fn segment(value: &Value) -> String {
    B64.encode(serde_json::to_vec(value).unwrap())
}

/// `header.payload` with no signature yet.
fn signing_input(header: &Value, claims: &Value) -> String {
    format!("{}.{}", segment(header), segment(claims))
}

fn hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    let input = signing_input(header, claims);
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), input.as_bytes());
    format!("{input}.{}", B64.encode(tag.as_ref()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_signature_is_refused() {
    let s = Setup::start().await;
    let token = sign_event(&s.key, claims());
    let (input, signature) = token.rsplit_once('.').unwrap();
    let mut signature = signature.as_bytes().to_vec();
    let middle = signature.len() / 2;
    signature[middle] = if signature[middle] == b'A' {
        b'B'
    } else {
        b'A'
    };
    let forged = format!("{input}.{}", String::from_utf8(signature).unwrap());
    assert_ne!(forged, token);
    s.refuse(forged, "invalid_signature").await;
    s.genuine_is_accepted().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_payload_is_refused() {
    let s = Setup::start().await;
    let token = sign_event(&s.key, claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let mut altered = claims();
    altered["data"]["user"]["id"] = json!("kp_attacker");
    let altered = segment(&altered);
    parts[1] = &altered;
    s.refuse(parts.join("."), "invalid_signature").await;
    s.genuine_is_accepted().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_outside_the_jwks_claiming_its_kid_is_refused() {
    let s = Setup::start().await;
    let attacker = key();
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": s.key.kid()});
    let forged = attacker.sign_with_header(&header, &claims());
    s.refuse(forged, "invalid_signature").await;
    s.genuine_is_accepted().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_named_in_the_token_are_never_trusted() {
    let s = Setup::start().await;
    let attacker = key();
    let header = json!({
        "alg": "RS256", "typ": "JWT", "kid": s.key.kid(),
        "jwk": attacker.jwk(),
        "jku": "http://127.0.0.1:9/.well-known/jwks.json",
        "x5u": "http://127.0.0.1:9/cert.pem",
    });
    let forged = attacker.sign_with_header(&header, &claims());
    s.refuse(forged, "invalid_signature").await;
    s.genuine_is_accepted().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn alg_none_with_an_empty_signature_is_refused() {
    let s = Setup::start().await;
    let header = json!({"alg": "none", "typ": "JWT", "kid": s.key.kid()});
    let forged = format!("{}.", signing_input(&header, &claims()));
    s.refuse(forged, "unsupported_algorithm").await;
    s.genuine_is_accepted().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hs256_keyed_with_the_public_key_is_refused() {
    let s = Setup::start().await;
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": s.key.kid()});
    let jwk = s.key.jwk();
    let n = jwk["n"].as_str().unwrap();
    let secrets = [
        serde_json::to_vec(&jwk).unwrap(),
        B64.decode(n).unwrap(),
        n.as_bytes().to_vec(),
    ];
    for secret in &secrets {
        let forged = hs256(secret, &header, &claims());
        s.refuse(forged, "unsupported_algorithm").await;
    }
    s.genuine_is_accepted().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_without_kid_is_refused() {
    let s = Setup::start().await;
    let forged = s
        .key
        .sign_with_header(&json!({"alg": "RS256", "typ": "JWT"}), &claims());
    s.refuse(forged, "missing_kid").await;
    s.genuine_is_accepted().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lower_case_rs256_is_refused() {
    let s = Setup::start().await;
    let header = json!({"alg": "rs256", "typ": "JWT", "kid": s.key.kid()});
    let forged = s.key.sign_with_header(&header, &claims());
    s.refuse(forged, "unsupported_algorithm").await;
    s.genuine_is_accepted().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crit_header_is_refused() {
    let s = Setup::start().await;
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": s.key.kid(), "crit": ["exp"]});
    let forged = s.key.sign_with_header(&header, &claims());
    s.refuse(forged, "unsupported_critical_header").await;
    s.genuine_is_accepted().await;
}
