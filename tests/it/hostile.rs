//! Hostile clients over real HTTP: a table of forged, confused, malformed and oversized
//! requests (each with its exact status and reason, none reaching a handler), oversized
//! heads, slow clients, a concurrency flood, an unknown-`kid` storm, replays and stale
//! events, and what must never reach the logs or a `Debug` string.
//!
//! Every wait has a deadline; every server listens on `127.0.0.1:0`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::hmac;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use kinde_webhooks::signing::{SigningKey, complete_claims};
use kinde_webhooks::{Context, Event, EventHandler, HandlerError, Registry, async_trait};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::utils::{
    DEADLINE, JwksServer, ROUTE, Recorder, TestServer, error, event, eventually, key, ok, send,
    sign_event,
};

// ---------------------------------------------------------------------------------------
// Token crafting
// ---------------------------------------------------------------------------------------

fn claims() -> Value {
    complete_claims(event("user.created", json!({"user": {"id": "kp_1"}})))
}

/// A genuine Kinde header for `key`.
fn header(key: &SigningKey) -> Value {
    json!({"alg": "RS256", "typ": "JWT", "kid": key.kid()})
}

/// `header` with `field` set to `value` (`Value::Null` is kept as JSON `null`).
fn header_with(key: &SigningKey, field: &str, value: Value) -> Value {
    let mut h = header(key);
    h[field] = value;
    h
}

/// `header` without `field`.
fn header_without(key: &SigningKey, field: &str) -> Value {
    let mut h = header(key);
    h.as_object_mut().expect("header object").remove(field);
    h
}

fn json_segment(value: &Value) -> String {
    B64.encode(serde_json::to_vec(value).expect("serialize"))
}

/// RS256-sign raw header and payload bytes with `key`: lets a test sign JSON that
/// `serde_json::Value` cannot hold (duplicate keys, trailing bytes, non-UTF-8).
fn sign_raw(key: &SigningKey, header: &[u8], payload: &[u8]) -> String {
    let input = format!("{}.{}", B64.encode(header), B64.encode(payload));
    let signature = key.sign_bytes(input.as_bytes());
    format!("{input}.{}", B64.encode(signature))
}

/// RS256-sign a raw payload under the genuine header of `key`.
fn sign_payload(key: &SigningKey, payload: &[u8]) -> String {
    let h = serde_json::to_vec(&header(key)).expect("serialize");
    sign_raw(key, &h, payload)
}

/// `header.payload.` with no signature.
fn unsigned(header: &Value, claims: &Value) -> String {
    format!("{}.{}.", json_segment(header), json_segment(claims))
}

/// An HMAC token keyed with `secret` (alg confusion: the public key as HMAC secret).
fn hmac_token(alg: hmac::Algorithm, secret: &[u8], header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", json_segment(header), json_segment(claims));
    let tag = hmac::sign(&hmac::Key::new(alg, secret), input.as_bytes());
    format!("{input}.{}", B64.encode(tag.as_ref()))
}

/// The public key as X.509 SubjectPublicKeyInfo DER.
fn public_der(key: &SigningKey) -> Vec<u8> {
    let pem_text = key.to_pem().expect("PEM");
    let block = pem::parse(pem_text).expect("parse PEM");
    let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(block.contents()).expect("PKCS#8");
    pair.public_key()
        .as_der()
        .expect("public key DER")
        .as_ref()
        .to_vec()
}

/// The public key as `-----BEGIN PUBLIC KEY-----` PEM, as a JWT library would read it.
fn public_pem(key: &SigningKey) -> String {
    pem::encode(&pem::Pem::new("PUBLIC KEY", public_der(key)))
}

/// `"[[[...]]]"`, `depth` deep.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// Claims whose `data` carries a `blob` of `len` bytes.
fn claims_with_blob(len: usize) -> Value {
    let mut c = claims();
    c["data"]["blob"] = json!("x".repeat(len));
    c
}

fn utf16le_with_bom(text: &str) -> Vec<u8> {
    let mut out = vec![0xff, 0xfe];
    out.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    out
}

fn utf16be(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A real gzip member (RFC 1952) holding `data` in stored deflate blocks: what a client
/// sends with `Content-Encoding: gzip`, without a compression crate.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(0xffff).collect()
    };
    for (i, chunk) in chunks.iter().enumerate() {
        out.push(u8::from(i + 1 == chunks.len()));
        let len = u16::try_from(chunk.len()).expect("stored block length");
        out.extend(len.to_le_bytes());
        out.extend((!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend(crc32(data).to_le_bytes());
    out.extend(u32::try_from(data.len()).expect("size").to_le_bytes());
    out
}

// ---------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------

/// Which receiver a case is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum On {
    /// Default `[server]` and `[limits]`.
    Default,
    /// `server.body_limit = 256 KiB`, so the token limit (64 KiB) is reached first.
    BigBody,
    /// `body_limit = 256 KiB` and `max_token_bytes = 128 KiB`, so the decoded payload limit
    /// (48 KiB, the default) is reached first.
    BigToken,
}

const BIG_BODY: &str = "[server]\nbody_limit = 262144\n";
const BIG_TOKEN: &str = "[server]\nbody_limit = 262144\n[limits]\nmax_token_bytes = 131072\n";

struct Case {
    name: &'static str,
    body: Vec<u8>,
    on: On,
    /// Sent with `Content-Encoding: gzip`.
    gzip: bool,
    /// The status and reason the README's table promises.
    want: (u16, &'static str),
    /// The server does not answer `want` yet: run only by the ignored test of that bug.
    bug: Option<&'static str>,
}

fn case(name: &'static str, body: impl Into<Vec<u8>>, status: u16, reason: &'static str) -> Case {
    Case {
        name,
        body: body.into(),
        on: On::Default,
        gzip: false,
        want: (status, reason),
        bug: None,
    }
}

impl Case {
    fn on(mut self, on: On) -> Self {
        self.on = on;
        self
    }

    fn gzip(mut self) -> Self {
        self.gzip = true;
        self
    }

    fn bug(mut self, why: &'static str) -> Self {
        self.bug = Some(why);
        self
    }
}

/// A trusted key behind three receivers (default limits, a big body limit, a big token
/// limit) that share one catch-all recorder, and an attacker with a JWKS of their own.
struct Fixture {
    key: SigningKey,
    attacker: SigningKey,
    _jwks: JwksServer,
    attacker_jwks: JwksServer,
    default: TestServer,
    big_body: TestServer,
    big_token: TestServer,
    all: Recorder,
}

impl Fixture {
    async fn start() -> Self {
        let (key, attacker) = (key(), key());
        let jwks = JwksServer::start(&[&key]).await;
        let attacker_jwks = JwksServer::start(&[&attacker]).await;
        let all = Recorder::new();
        let registry = || Registry::builder().handler("all", &["*"], all.clone());
        let default = TestServer::start(jwks.config(""), registry()).await;
        let big_body = TestServer::start(jwks.config(BIG_BODY), registry()).await;
        let big_token = TestServer::start(jwks.config(BIG_TOKEN), registry()).await;
        for server in [&default, &big_body, &big_token] {
            server.wait_for_keys().await;
        }
        Self {
            key,
            attacker,
            _jwks: jwks,
            attacker_jwks,
            default,
            big_body,
            big_token,
            all,
        }
    }

    fn server(&self, on: On) -> &TestServer {
        match on {
            On::Default => &self.default,
            On::BigBody => &self.big_body,
            On::BigToken => &self.big_token,
        }
    }

    /// Sent over a raw connection: an HTTP client stops at the first failed body write
    /// (the receiver answers 413 and closes before a 10 MB body is sent) and loses the
    /// answer, which is what this reads.
    async fn answer(&self, case: &Case) -> (u16, Value) {
        let extra = if case.gzip {
            "Content-Encoding: gzip\r\n"
        } else {
            ""
        };
        match raw_post(self.server(case.on).addr(), extra, case.body.clone()).await {
            Ok(response) => (response.status, response.json()),
            Err(e) => (0, Value::String(format!("no response: {e}"))),
        }
    }

    /// Send every case (or every known-bug case); return the mismatches, one line each.
    async fn run(&self, cases: &[Case]) -> Vec<String> {
        let mut wrong = Vec::new();
        for case in cases {
            let got = self.answer(case).await;
            let want = (case.want.0, error(case.want.1));
            if got != want {
                wrong.push(format!("{}: got {got:?}, want {want:?}", case.name));
            }
            let seen = self.all.events();
            if !seen.is_empty() {
                wrong.push(format!(
                    "{}: dispatched {:?}",
                    case.name,
                    seen.iter().map(|e| &e.event_id).collect::<Vec<_>>()
                ));
            }
        }
        wrong
    }

    #[allow(clippy::too_many_lines)] // One line per hostile case reads best as one list.
    fn cases(&self) -> Vec<Case> {
        let (k, a) = (&self.key, &self.attacker);
        let c = claims();
        let genuine = sign_event(k, claims());
        let (input, signature) = genuine.rsplit_once('.').expect("three segments");
        let (header_seg, payload_seg) = input.split_once('.').expect("three segments");

        let mut flipped = signature.as_bytes().to_vec();
        let middle = flipped.len() / 2;
        flipped[middle] = if flipped[middle] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).expect("ASCII");

        let other_signature = sign_event(k, claims())
            .rsplit_once('.')
            .map(|(_, s)| s.to_owned())
            .expect("three segments");
        let mut altered = c.clone();
        altered["data"]["user"]["id"] = json!("kp_attacker");

        let jwk = k.jwk();
        let n_text = jwk["n"].as_str().expect("n").to_owned();
        let n_bytes = B64.decode(&n_text).expect("n is base64url");
        let jwk_json = serde_json::to_vec(&jwk).expect("serialize");
        let pem_text = public_pem(k);
        let hs_header = |alg: &str| header_with(k, "alg", json!(alg));

        let attacker_jwks_url =
            format!("{}/.well-known/jwks.json", self.attacker_jwks.issuer_url());
        let mut jku = header(a);
        jku["jku"] = json!(attacker_jwks_url);
        let mut x5u = header(k);
        x5u["x5u"] = json!(format!("{}/cert.pem", self.attacker_jwks.issuer_url()));
        let mut jwk_own_kid = header(a);
        jwk_own_kid["jwk"] = a.jwk();
        let mut jwk_trusted_kid = header(k);
        jwk_trusted_kid["jwk"] = a.jwk();
        let mut x5c = header(k);
        x5c["x5c"] = json!([STANDARD.encode(public_der(a))]);

        let now = chrono::Utc::now().timestamp();
        let mut expired = claims();
        expired["exp"] = json!(now - 3600);
        let mut not_yet = claims();
        not_yet["nbf"] = json!(now + 3600);
        let mut exp_string = claims();
        exp_string["exp"] = json!("soon");
        let mut nbf_string = claims();
        nbf_string["nbf"] = json!("later");
        let mut exp_null = claims();
        exp_null["exp"] = Value::Null;

        let mut type_number = claims();
        type_number["type"] = json!(5);
        let mut type_empty = claims();
        type_empty["type"] = json!("");
        let mut no_event_id = claims();
        no_event_id
            .as_object_mut()
            .expect("object")
            .remove("event_id");
        let mut event_id_number = claims();
        event_id_number["event_id"] = json!(12345);
        let mut garbage_timestamp = claims();
        garbage_timestamp["timestamp"] = json!("yesterday at noon");
        let mut no_timestamp = claims();
        no_timestamp
            .as_object_mut()
            .expect("object")
            .remove("timestamp");
        let mut deep_data = claims();
        deep_data["data"] = serde_json::from_str(&nested(100)).expect("nested array");

        let timestamp = c["timestamp"].as_str().expect("timestamp").to_owned();
        let duplicate_type = format!(
            r#"{{"type":"user.created","type":"user.deleted","event_id":"event_dup","timestamp":"{timestamp}","source":"admin","data":{{}}}}"#
        );
        let trailing = format!("{}xyz", serde_json::to_string(&c).expect("serialize"));
        let mut not_utf8 = vec![0xff, 0xfe];
        not_utf8.extend(serde_json::to_vec(&c).expect("serialize"));

        let deep_header = {
            let mut h = header(k);
            h["x"] = serde_json::from_str(&nested(40)).expect("nested array");
            h
        };
        let standard_b64 = genuine.replace('-', "+").replace('_', "/");
        assert_ne!(
            standard_b64, genuine,
            "the genuine token has a - or _ to swap"
        );
        let mut nul_inside = genuine.clone();
        nul_inside.insert(genuine.len() - 10, '\0');
        let mut not_utf8_body = genuine.clone().into_bytes();
        not_utf8_body.splice(20..20, [0xc3, 0x28]);
        let mut nbsp = vec![0xa0];
        nbsp.extend_from_slice(genuine.as_bytes());
        nbsp.push(0xa0);

        vec![
            // --- signatures and keys ---
            case(
                "signature with one character changed",
                format!("{input}.{flipped}"),
                401,
                "invalid_signature",
            ),
            case(
                "signature of another token by the same key",
                format!("{input}.{other_signature}"),
                401,
                "invalid_signature",
            ),
            case(
                "RS256 header with an empty signature",
                format!("{input}."),
                401,
                "invalid_signature",
            ),
            case(
                "payload changed after signing",
                format!("{header_seg}.{}.{signature}", json_segment(&altered)),
                401,
                "invalid_signature",
            ),
            case(
                "attacker key with its own kid (not in the JWKS)",
                sign_event(a, claims()),
                401,
                "unknown_key",
            ),
            case(
                "attacker key claiming the trusted kid",
                a.sign_with_header(&header(k), &c),
                401,
                "invalid_signature",
            ),
            // --- algorithms ---
            case(
                "alg none, empty signature",
                unsigned(&hs_header("none"), &c),
                401,
                "unsupported_algorithm",
            ),
            case(
                "alg None, empty signature",
                unsigned(&hs_header("None"), &c),
                401,
                "unsupported_algorithm",
            ),
            case(
                "alg NONE, empty signature",
                unsigned(&hs_header("NONE"), &c),
                401,
                "unsupported_algorithm",
            ),
            case(
                "alg none with the genuine signature kept",
                format!(
                    "{}.{payload_seg}.{signature}",
                    json_segment(&hs_header("none"))
                ),
                401,
                "unsupported_algorithm",
            ),
            case(
                "HS256 keyed with the modulus bytes",
                hmac_token(hmac::HMAC_SHA256, &n_bytes, &hs_header("HS256"), &c),
                401,
                "unsupported_algorithm",
            ),
            case(
                "HS256 keyed with the modulus as base64url text",
                hmac_token(
                    hmac::HMAC_SHA256,
                    n_text.as_bytes(),
                    &hs_header("HS256"),
                    &c,
                ),
                401,
                "unsupported_algorithm",
            ),
            case(
                "HS256 keyed with the JWK JSON",
                hmac_token(hmac::HMAC_SHA256, &jwk_json, &hs_header("HS256"), &c),
                401,
                "unsupported_algorithm",
            ),
            case(
                "HS256 keyed with the public key PEM",
                hmac_token(
                    hmac::HMAC_SHA256,
                    pem_text.as_bytes(),
                    &hs_header("HS256"),
                    &c,
                ),
                401,
                "unsupported_algorithm",
            ),
            case(
                "HS384 keyed with the public key PEM",
                hmac_token(
                    hmac::HMAC_SHA384,
                    pem_text.as_bytes(),
                    &hs_header("HS384"),
                    &c,
                ),
                401,
                "unsupported_algorithm",
            ),
            case(
                "alg RS512 (RS256 signature)",
                k.sign_with_header(&hs_header("RS512"), &c),
                401,
                "unsupported_algorithm",
            ),
            case(
                "alg PS256",
                k.sign_with_header(&hs_header("PS256"), &c),
                401,
                "unsupported_algorithm",
            ),
            case(
                "alg ES256",
                k.sign_with_header(&hs_header("ES256"), &c),
                401,
                "unsupported_algorithm",
            ),
            case(
                "alg rs256",
                k.sign_with_header(&hs_header("rs256"), &c),
                401,
                "unsupported_algorithm",
            ),
            case(
                "alg Rs256",
                k.sign_with_header(&hs_header("Rs256"), &c),
                401,
                "unsupported_algorithm",
            ),
            case(
                "alg \"RS256 \" (trailing space)",
                k.sign_with_header(&hs_header("RS256 "), &c),
                401,
                "unsupported_algorithm",
            ),
            case(
                "alg RS256 with a Cyrillic S",
                k.sign_with_header(&hs_header("R\u{0405}256"), &c),
                401,
                "unsupported_algorithm",
            ),
            case(
                "alg a number",
                k.sign_with_header(&header_with(k, "alg", json!(256)), &c),
                401,
                "unsupported_algorithm",
            ),
            case(
                "alg an array",
                k.sign_with_header(&header_with(k, "alg", json!(["RS256"])), &c),
                401,
                "unsupported_algorithm",
            ),
            case(
                "alg null",
                k.sign_with_header(&header_with(k, "alg", Value::Null), &c),
                401,
                "unsupported_algorithm",
            ),
            // RFC 7515 requires alg: a header without one is malformed (400), not an
            // algorithm we refuse (401).
            case(
                "alg missing",
                k.sign_with_header(&header_without(k, "alg"), &c),
                400,
                "malformed_header",
            ),
            // --- crit ---
            case(
                "crit [\"b64\"]",
                k.sign_with_header(&header_with(k, "crit", json!(["b64"])), &c),
                401,
                "unsupported_critical_header",
            ),
            case(
                "crit []",
                k.sign_with_header(&header_with(k, "crit", json!([])), &c),
                401,
                "unsupported_critical_header",
            ),
            case(
                "crit null",
                k.sign_with_header(&header_with(k, "crit", Value::Null), &c),
                401,
                "unsupported_critical_header",
            ),
            // --- keys named by the token (signed with the attacker's key) ---
            case(
                "jku to the attacker's JWKS, attacker kid",
                a.sign_with_header(&jku, &c),
                401,
                "unknown_key",
            ),
            case(
                "x5u to the attacker's server, trusted kid",
                a.sign_with_header(&x5u, &c),
                401,
                "invalid_signature",
            ),
            case(
                "embedded jwk of the attacker, attacker kid",
                a.sign_with_header(&jwk_own_kid, &c),
                401,
                "unknown_key",
            ),
            case(
                "embedded jwk of the attacker, trusted kid",
                a.sign_with_header(&jwk_trusted_kid, &c),
                401,
                "invalid_signature",
            ),
            case(
                "x5c with the attacker's public key, trusted kid",
                a.sign_with_header(&x5c, &c),
                401,
                "invalid_signature",
            ),
            // --- kid ---
            case(
                "kid missing",
                k.sign_with_header(&header_without(k, "kid"), &c),
                401,
                "missing_kid",
            ),
            case(
                "kid empty",
                k.sign_with_header(&header_with(k, "kid", json!("")), &c),
                401,
                "missing_kid",
            ),
            case(
                "kid null",
                k.sign_with_header(&header_with(k, "kid", Value::Null), &c),
                401,
                "missing_kid",
            ),
            case(
                "kid a number",
                k.sign_with_header(&header_with(k, "kid", json!(42)), &c),
                401,
                "missing_kid",
            ),
            case(
                "kid ../../etc/passwd",
                k.sign_with_header(&header_with(k, "kid", json!("../../etc/passwd")), &c),
                401,
                "unknown_key",
            ),
            case(
                "kid with CR LF (log injection)",
                k.sign_with_header(
                    &header_with(k, "kid", json!("x\r\nINFO forged log line")),
                    &c,
                ),
                401,
                "unknown_key",
            ),
            case(
                "kid of 300 bytes",
                k.sign_with_header(&header_with(k, "kid", json!("k".repeat(300))), &c),
                401,
                "invalid_kid",
            ),
            case(
                "kid of 100 KB (body over server.body_limit)",
                k.sign_with_header(&header_with(k, "kid", json!("k".repeat(100_000))), &c),
                413,
                "payload_too_large",
            ),
            case(
                "kid of 100 KB (body fits, token over max_token_bytes)",
                k.sign_with_header(&header_with(k, "kid", json!("k".repeat(100_000))), &c),
                413,
                "token_too_large",
            )
            .on(On::BigBody),
            // --- header structure ---
            case(
                "alg twice: none, then RS256",
                sign_raw(
                    k,
                    format!(
                        r#"{{"alg":"none","alg":"RS256","typ":"JWT","kid":"{}"}}"#,
                        k.kid()
                    )
                    .as_bytes(),
                    &serde_json::to_vec(&c).expect("serialize"),
                ),
                400,
                "malformed_header",
            ),
            case(
                "alg twice: RS256, then none",
                sign_raw(
                    k,
                    format!(
                        r#"{{"alg":"RS256","alg":"none","typ":"JWT","kid":"{}"}}"#,
                        k.kid()
                    )
                    .as_bytes(),
                    &serde_json::to_vec(&c).expect("serialize"),
                ),
                400,
                "malformed_header",
            ),
            case(
                "header a JSON array",
                format!(
                    "{}.{payload_seg}.{signature}",
                    B64.encode(r#"["RS256","k"]"#)
                ),
                400,
                "malformed_header",
            ),
            case(
                "header JSON null",
                format!("{}.{payload_seg}.{signature}", B64.encode("null")),
                400,
                "malformed_header",
            ),
            case(
                "header not JSON",
                format!("{}.{payload_seg}.{signature}", B64.encode("alg=RS256")),
                400,
                "malformed_header",
            ),
            case(
                "header nested 40 deep",
                k.sign_with_header(&deep_header, &c),
                400,
                "json_too_deep",
            ),
            case(
                "header segment empty",
                format!(".{payload_seg}.{signature}"),
                400,
                "malformed_token",
            ),
            // --- payloads under a valid signature ---
            case(
                "type twice in the signed payload",
                sign_payload(k, duplicate_type.as_bytes()),
                400,
                "invalid_payload",
            ),
            case(
                "type a number",
                k.sign(&type_number),
                400,
                "invalid_payload",
            ),
            case("type empty", k.sign(&type_empty), 400, "invalid_payload"),
            case(
                "event_id missing",
                k.sign(&no_event_id),
                400,
                "invalid_payload",
            ),
            case(
                "event_id a number",
                k.sign(&event_id_number),
                400,
                "invalid_payload",
            ),
            case(
                "timestamp garbage",
                k.sign(&garbage_timestamp),
                400,
                "invalid_payload",
            ),
            case(
                "timestamp missing",
                k.sign(&no_timestamp),
                400,
                "invalid_payload",
            ),
            case(
                "payload a JSON array",
                k.sign(&json!(["user.created", "event_1", timestamp])),
                400,
                "invalid_payload",
            ),
            case(
                "payload a JSON string",
                k.sign(&json!("user.created")),
                400,
                "invalid_payload",
            ),
            case(
                "payload not UTF-8",
                sign_payload(k, &not_utf8),
                400,
                "invalid_payload",
            ),
            case(
                "payload object followed by bytes",
                sign_payload(k, trailing.as_bytes()),
                400,
                "invalid_payload",
            ),
            case(
                "payload a 1,000-deep array",
                sign_payload(k, nested(1000).as_bytes()),
                400,
                "json_too_deep",
            ),
            case(
                "data nested 100 deep",
                k.sign(&deep_data),
                400,
                "json_too_deep",
            ),
            case(
                "payload segment not decodable base64url (signed)",
                {
                    let h = json_segment(&header(k));
                    let input = format!("{h}.A");
                    format!("{input}.{}", B64.encode(k.sign_bytes(input.as_bytes())))
                },
                400,
                "malformed_token",
            ),
            // --- sizes ---
            case(
                "10 MB data (body over server.body_limit)",
                sign_event(k, claims_with_blob(10 * 1024 * 1024)),
                413,
                "payload_too_large",
            ),
            case(
                "token of 70 KB (over max_token_bytes)",
                sign_event(k, claims_with_blob(52_000)),
                413,
                "token_too_large",
            )
            .on(On::BigBody),
            case(
                "decoded payload of 50 KB (over max_payload_bytes)",
                sign_event(k, claims_with_blob(50_000)),
                413,
                "payload_too_large",
            )
            .on(On::BigToken),
            // --- registered claims ---
            case("exp an hour ago", k.sign(&expired), 401, "token_expired"),
            case(
                "nbf in an hour",
                k.sign(&not_yet),
                401,
                "token_not_yet_valid",
            ),
            case("exp a string", k.sign(&exp_string), 401, "invalid_claims"),
            case("nbf a string", k.sign(&nbf_string), 401, "invalid_claims"),
            // README: exp/nbf "not numeric" is 401 invalid_claims; null is not numeric.
            case("exp null", k.sign(&exp_null), 401, "invalid_claims").bug(
                "exp: null is read as no exp (src/verify.rs Claims.exp is Option<Value> with \
                 serde default) and the event is accepted with 200",
            ),
            // --- encodings and framing of the body ---
            case(
                "UTF-8 BOM before the token",
                format!("\u{feff}{genuine}"),
                400,
                "malformed_token",
            ),
            case(
                "UTF-16LE with BOM",
                utf16le_with_bom(&genuine),
                400,
                "unreadable_body",
            ),
            case(
                "UTF-16BE without BOM (valid UTF-8 with NULs)",
                utf16be(&genuine),
                400,
                "malformed_token",
            ),
            case(
                "NUL inside the signature",
                nul_inside,
                400,
                "malformed_token",
            ),
            case(
                "NUL after the token",
                format!("{genuine}\0"),
                400,
                "malformed_token",
            ),
            case(
                "non-UTF-8 bytes inside the token",
                not_utf8_body,
                400,
                "unreadable_body",
            ),
            case(
                "Latin-1 no-break spaces around the token",
                nbsp,
                400,
                "unreadable_body",
            ),
            case(
                "token.junk",
                format!("{genuine}.junk"),
                400,
                "malformed_token",
            ),
            case(
                "token junk",
                format!("{genuine} junk"),
                400,
                "malformed_token",
            ),
            case(
                "token\\n\\njunk",
                format!("{genuine}\n\njunk"),
                400,
                "malformed_token",
            ),
            case(
                "two tokens concatenated",
                format!("{genuine}{genuine}"),
                400,
                "malformed_token",
            ),
            case(
                "two tokens on two lines",
                format!("{genuine}\n{}", sign_event(k, claims())),
                400,
                "malformed_token",
            ),
            case("empty body", Vec::new(), 400, "malformed_token"),
            case("whitespace only", " \r\n\t\n ", 400, "malformed_token"),
            case(
                "standard base64 (+ and /) instead of base64url",
                standard_b64,
                400,
                "malformed_token",
            ),
            case(
                "gzip-compressed body (Content-Encoding: gzip)",
                gzip(genuine.as_bytes()),
                400,
                "unreadable_body",
            )
            .gzip(),
            case(
                "token inside a JSON object",
                format!(r#"{{"token":"{genuine}"}}"#),
                400,
                "malformed_token",
            ),
            case(
                "token as a form field",
                format!("token={genuine}"),
                400,
                "malformed_token",
            ),
        ]
    }
}

/// The README's table, case by case, against running receivers; nothing is dispatched,
/// then a genuine event is.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_tokens_get_their_status_and_reason_and_reach_no_handler() {
    let fx = Fixture::start().await;
    let cases: Vec<Case> = fx.cases().into_iter().filter(|c| c.bug.is_none()).collect();
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names are unique");

    let wrong = fx.run(&cases).await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(
        fx.attacker_jwks.fetches(),
        0,
        "keys named by a token (jku, x5u) are never fetched"
    );

    let token = sign_event(&fx.key, claims());
    assert_eq!(fx.default.deliver(token).await, (200, ok()));
    assert_eq!(fx.all.only().event_type, "user.created");
}

/// The cases of the table the server does not answer as the README says (see each
/// case's `bug`).
#[tokio::test(flavor = "multi_thread")]
async fn hostile_tokens_known_bugs() {
    let fx = Fixture::start().await;
    let cases: Vec<Case> = fx.cases().into_iter().filter(|c| c.bug.is_some()).collect();
    assert!(!cases.is_empty());
    let wrong = fx.run(&cases).await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Raw HTTP
// ---------------------------------------------------------------------------------------

/// A response read off a raw connection.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    /// Lower-case names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Read one response with a `Content-Length` body (what the receiver sends).
async fn read_response(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<RawResponse> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(RawResponse {
        status,
        headers,
        body: buf[head_end..head_end + length].to_vec(),
    })
}

/// POST `body` to the default route over a fresh connection, with `extra` header lines
/// (each ending in CRLF), writing while reading so an early answer is not lost.
async fn raw_post(addr: SocketAddr, extra: &str, body: Vec<u8>) -> std::io::Result<RawResponse> {
    let (mut rd, mut wr) = connect(addr).await.into_split();
    let head = format!(
        "POST {ROUTE} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/jwt\r\n\
         Content-Length: {}\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    );
    // The write half is handed back, not dropped: dropping it would half-close the
    // connection, which the receiver takes for a client gone away.
    let writer = tokio::spawn(async move {
        if wr.write_all(head.as_bytes()).await.is_ok() {
            for chunk in body.chunks(64 * 1024) {
                if wr.write_all(chunk).await.is_err() {
                    break;
                }
            }
        }
        wr
    });
    let response = tokio::time::timeout(DEADLINE, read_response(&mut rd))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
    writer.abort();
    response
}

/// Read and discard until the peer closes the connection (EOF or reset); how long after
/// `since` that happened, or `None` if it was still open at `since + within`.
async fn closed_within(
    r: &mut (impl AsyncRead + Unpin),
    since: Instant,
    within: Duration,
) -> Option<Duration> {
    let deadline = tokio::time::Instant::from_std(since + within);
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, r.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => return Some(since.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

/// A complete webhook request for `token`.
fn request_bytes(token: &str) -> Vec<u8> {
    format!(
        "POST {ROUTE} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/jwt\r\n\
         Content-Length: {}\r\n\r\n{token}",
        token.len()
    )
    .into_bytes()
}

/// Limits that make slow clients show up within a second.
const SLOW: &str = "[limits]\nbody_read_timeout = \"1s\"\nheader_read_timeout = \"1s\"\n";

async fn slow_setup(toml: &str) -> (SigningKey, JwksServer, TestServer, Recorder) {
    let key = key();
    let jwks = JwksServer::start(&[&key]).await;
    let all = Recorder::new();
    let registry = Registry::builder().handler("all", &["*"], all.clone());
    let server = TestServer::start(jwks.config(toml), registry).await;
    server.wait_for_keys().await;
    (key, jwks, server, all)
}

async fn connect(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(DEADLINE, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect")
}

// ---------------------------------------------------------------------------------------
// Heads
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_request_head_over_max_header_bytes_gets_431() {
    let (key, _jwks, server, all) = slow_setup("").await;
    let big = format!("X-Padding: {}\r\n", "a".repeat(20 * 1024));
    let response = raw_post(server.addr(), &big, sign_event(&key, claims()).into_bytes())
        .await
        .expect("a response");
    assert_eq!(response.status, 431, "{response:?}");
    assert!(all.events().is_empty());

    // A 12 KB head is within the 16 KiB limit.
    let request = server
        .client()
        .post(server.url(ROUTE))
        .header("x-padding", "a".repeat(12 * 1024))
        .body(sign_event(&key, claims()));
    assert_eq!(send(request).await, (200, ok()));
    assert_eq!(all.types(), ["user.created"]);
}

// ---------------------------------------------------------------------------------------
// Slow clients
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_body_trickled_one_byte_every_300ms_gets_408_within_the_body_deadline() {
    let (_key, _jwks, server, all) = slow_setup(SLOW).await;
    let (mut rd, mut wr) = connect(server.addr()).await.into_split();
    wr.write_all(
        format!(
            "POST {ROUTE} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/jwt\r\n\
             Content-Length: 2000\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("send the head");
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if wr.write_all(b"e").await.is_err() {
                break;
            }
        }
    });
    let response = tokio::time::timeout(Duration::from_secs(5), read_response(&mut rd))
        .await
        .expect("an answer within 5 s")
        .expect("a response");
    let elapsed = started.elapsed();
    trickle.abort();
    assert_eq!(response.status, 408, "{response:?}");
    assert_eq!(response.json(), error("body_timeout"));
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(2500),
        "answered after {elapsed:?}; body_read_timeout is 1 s"
    );
    assert!(all.events().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_head_trickled_one_byte_every_300ms_is_disconnected_within_the_head_deadline() {
    let (_key, _jwks, server, all) = slow_setup(SLOW).await;
    let (mut rd, mut wr) = connect(server.addr()).await.into_split();
    wr.write_all(format!("POST {ROUTE} HTTP/1.1\r\n").as_bytes())
        .await
        .expect("send the request line");
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        for &b in b"Host: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if wr.write_all(&[b]).await.is_err() {
                break;
            }
        }
    });
    let closed = closed_within(&mut rd, started, Duration::from_secs(5)).await;
    trickle.abort();
    let closed = closed.expect("the server closed the connection within 5 s");
    assert!(
        closed < Duration::from_secs(3),
        "closed after {closed:?}; header_read_timeout is 1 s"
    );
    assert!(all.events().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_keep_alive_connection_is_closed_within_the_head_deadline() {
    let (key, _jwks, server, all) = slow_setup(SLOW).await;
    let mut stream = connect(server.addr()).await;
    stream
        .write_all(&request_bytes(&sign_event(&key, claims())))
        .await
        .expect("send a request");
    let response = tokio::time::timeout(DEADLINE, read_response(&mut stream))
        .await
        .expect("an answer in time")
        .expect("a response");
    assert_eq!((response.status, response.json()), (200, ok()));
    assert_ne!(response.header("connection"), Some("close"), "kept alive");
    let idle_since = Instant::now();
    let closed = closed_within(&mut stream, idle_since, Duration::from_secs(6))
        .await
        .expect("the idle connection was closed within 6 s");
    assert!(
        closed < Duration::from_secs(4),
        "closed after {closed:?} idle; header_read_timeout is 1 s"
    );
    assert_eq!(all.types(), ["user.created"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_sends_nothing_is_closed_within_the_head_deadline() {
    let (_key, _jwks, server, _all) = slow_setup(SLOW).await;
    let mut stream = connect(server.addr()).await;
    let started = Instant::now();
    let closed = closed_within(&mut stream, started, Duration::from_secs(6)).await;
    assert!(
        closed.is_some_and(|c| c < Duration::from_secs(4)),
        "a silent connection was still open after {:?} (closed: {closed:?}); header_read_timeout is 1 s",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_connections_cannot_lock_out_deliveries() {
    let toml = format!("{SLOW}max_connections = 4\n");
    let (key, _jwks, server, all) = slow_setup(&toml).await;
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(connect(server.addr()).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        server.deliver(sign_event(&key, claims())),
    )
    .await;
    assert!(
        matches!(answer, Ok((200, _))),
        "a delivery behind 4 silent connections got {answer:?} after {:?}",
        started.elapsed()
    );
    assert_eq!(all.types(), ["user.created"]);
    drop(silent);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_http2_connection_is_closed_within_a_few_seconds() {
    let (_key, _jwks, server, _all) = slow_setup(SLOW).await;
    let mut stream = connect(server.addr()).await;
    // The client preface and an empty SETTINGS frame, then nothing.
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
    stream.write_all(&preface).await.expect("send the preface");
    let started = Instant::now();
    let closed = closed_within(&mut stream, started, Duration::from_secs(6)).await;
    assert!(
        closed.is_some_and(|c| c < Duration::from_secs(4)),
        "an idle HTTP/2 connection was still open after {:?} (closed: {closed:?})",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_past_request_timeout_gets_503() {
    // The body deadline is longer than the request deadline, so the request one fires.
    let toml = "[limits]\nbody_read_timeout = \"10s\"\nrequest_timeout = \"1s\"\n\
                [delivery]\nmode = \"inline\"\nhandler_timeout = \"500ms\"\n";
    let (_key, _jwks, server, all) = slow_setup(toml).await;
    let (mut rd, mut wr) = connect(server.addr()).await.into_split();
    wr.write_all(
        format!("POST {ROUTE} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2000\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("send the head");
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if wr.write_all(b"e").await.is_err() {
                break;
            }
        }
    });
    let response = tokio::time::timeout(Duration::from_secs(5), read_response(&mut rd))
        .await
        .expect("an answer within 5 s")
        .expect("a response");
    let elapsed = started.elapsed();
    trickle.abort();
    assert_eq!(
        (response.status, response.json()),
        (503, error("request_timeout"))
    );
    assert!(
        elapsed < Duration::from_millis(2500),
        "answered after {elapsed:?}"
    );
    assert!(all.events().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_trickling_their_heads_cannot_lock_out_deliveries() {
    let toml = format!("{SLOW}max_connections = 4\n");
    let (key, _jwks, server, all) = slow_setup(&toml).await;
    let mut slow = JoinSet::new();
    for _ in 0..4 {
        let mut stream = connect(server.addr()).await;
        slow.spawn(async move {
            // Past the protocol sniffing, then nothing more.
            let _ = stream
                .write_all(format!("POST {ROUTE} HTTP/1.1\r\nHost: x").as_bytes())
                .await;
            let mut chunk = [0u8; 256];
            let _ = tokio::time::timeout(DEADLINE, stream.read(&mut chunk)).await;
        });
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        server.deliver(sign_event(&key, claims())),
    )
    .await;
    assert!(
        matches!(answer, Ok((200, _))),
        "a delivery behind 4 stalled heads got {answer:?} after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "served after {:?}",
        started.elapsed()
    );
    assert_eq!(all.types(), ["user.created"]);
    slow.abort_all();
}

/// A declared `Content-Length` over the body limit is refused at once with 413, not read
/// (nor waited for until the body deadline).
#[tokio::test(flavor = "multi_thread")]
async fn a_declared_length_over_the_limit_gets_413_at_once() {
    let (_key, _jwks, server, all) = slow_setup("[limits]\nbody_read_timeout = \"5s\"\n").await;
    let (mut rd, mut wr) = connect(server.addr()).await.into_split();
    let head = format!(
        "POST {ROUTE} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000000\r\n\r\nabc"
    );
    wr.write_all(head.as_bytes()).await.expect("send the head");
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(4), read_response(&mut rd))
        .await
        .expect("an answer before the body deadline")
        .expect("a response");
    assert_eq!(response.status, 413, "{response:?}");
    assert_eq!(response.json(), error("payload_too_large"));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "after {:?}",
        started.elapsed()
    );
    assert!(all.events().is_empty());
}

/// Bodies trickled by more senders than `max_concurrent_requests` hold connections, not the
/// permits real deliveries need: a delivery among them is answered at once.
#[tokio::test(flavor = "multi_thread")]
async fn bodies_trickled_past_max_concurrent_requests_cannot_lock_out_deliveries() {
    let toml =
        "[limits]\nbody_read_timeout = \"5s\"\nmax_concurrent_requests = 2\nmax_connections = 16\n";
    let (key, _jwks, server, all) = slow_setup(toml).await;
    let mut slow = JoinSet::new();
    for _ in 0..4 {
        let mut stream = connect(server.addr()).await;
        slow.spawn(async move {
            let head =
                format!("POST {ROUTE} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2000\r\n\r\n");
            let _ = stream.write_all(head.as_bytes()).await;
            for _ in 0..30 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if stream.write_all(b"e").await.is_err() {
                    break;
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(4),
        server.deliver(sign_event(&key, claims())),
    )
    .await;
    assert_eq!(answer.ok(), Some((200, ok())), "behind 4 trickled bodies");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "served after {:?}",
        started.elapsed()
    );
    assert_eq!(all.types(), ["user.created"]);
    slow.abort_all();
}

// ---------------------------------------------------------------------------------------
// Floods
// ---------------------------------------------------------------------------------------

/// A handler that waits until the test opens the gate (at most [`DEADLINE`]).
#[derive(Debug, Clone)]
struct Gate {
    entered: Arc<AtomicUsize>,
    open: Arc<Semaphore>,
}

impl Gate {
    fn new() -> Self {
        Self {
            entered: Arc::default(),
            open: Arc::new(Semaphore::new(0)),
        }
    }
}

#[async_trait]
impl EventHandler for Gate {
    async fn handle(&self, _event: &Event, _ctx: &Context) -> Result<(), HandlerError> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        match tokio::time::timeout(DEADLINE, self.open.acquire()).await {
            Ok(Ok(permit)) => {
                permit.forget();
                Ok(())
            }
            _ => Err(HandlerError::msg("the gate never opened")),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn past_max_concurrent_requests_the_next_gets_503_at_once_with_retry_after() {
    let key = key();
    let jwks = JwksServer::start(&[&key]).await;
    let gate = Gate::new();
    let registry = Registry::builder().handler("gate", &["*"], gate.clone());
    let server = TestServer::start(
        jwks.config("[limits]\nmax_concurrent_requests = 2"),
        registry,
    )
    .await;
    server.wait_for_keys().await;

    let mut slow = JoinSet::new();
    for _ in 0..2 {
        let request = server
            .client()
            .post(server.url(ROUTE))
            .body(sign_event(&key, claims()));
        slow.spawn(send(request));
    }
    eventually("two requests blocked in the handler", || async {
        gate.entered.load(Ordering::SeqCst) == 2
    })
    .await;

    let started = Instant::now();
    let response = server
        .client()
        .post(server.url(ROUTE))
        .body(sign_event(&key, claims()))
        .send()
        .await
        .expect("the third request is answered");
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let body: Value =
        serde_json::from_slice(&response.bytes().await.expect("body")).expect("JSON body");
    assert_eq!((status, body), (503, error("overloaded")));
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(
        elapsed < Duration::from_millis(500),
        "shed after {elapsed:?}, not queued"
    );
    assert_eq!(gate.entered.load(Ordering::SeqCst), 2, "not dispatched");

    gate.open.add_permits(3);
    while let Some(answer) = tokio::time::timeout(DEADLINE, slow.join_next())
        .await
        .expect("the slow requests finish")
    {
        assert_eq!(answer.expect("task"), (200, ok()));
    }
    assert_eq!(
        server.deliver(sign_event(&key, claims())).await,
        (200, ok())
    );
    assert_eq!(gate.entered.load(Ordering::SeqCst), 3);
}

/// At most this many JWKS fetches beyond the start-up one, for 1,000 unknown kids within
/// one cooldown: the first unknown kid may refresh at once; the rest share it or wait out
/// the cooldown. One is expected; two leaves room for the start-up fetch racing the first.
const MAX_EXTRA_FETCHES: usize = 2;

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_unknown_kids_cause_at_most_two_jwks_fetches() {
    let (trusted, attacker) = (key(), key());
    let jwks = JwksServer::start(&[&trusted]).await;
    let all = Recorder::new();
    let registry = Registry::builder().handler("all", &["*"], all.clone());
    let server = TestServer::start(
        jwks.config("[kinde]\njwks_refresh_cooldown = \"60s\""),
        registry,
    )
    .await;
    server.wait_for_keys().await;
    let at_start = jwks.fetches();
    assert_eq!(at_start, 1);

    let attacker = Arc::new(attacker);
    let mut signing = JoinSet::new();
    for batch in 0..10 {
        let attacker = attacker.clone();
        signing.spawn_blocking(move || {
            (0..100)
                .map(|i| {
                    let kid = format!("forged:{batch:02}:{i:03}");
                    let header = json!({"alg": "RS256", "typ": "JWT", "kid": kid});
                    attacker.sign_with_header(&header, &claims())
                })
                .collect::<Vec<String>>()
        });
    }
    let mut batches = Vec::new();
    while let Some(batch) = signing.join_next().await {
        batches.push(batch.expect("signing task"));
    }

    let started = Instant::now();
    let mut answers = 0;
    for batch in batches {
        let mut requests = JoinSet::new();
        for token in batch {
            let request = server.client().post(server.url(ROUTE)).body(token);
            requests.spawn(send(request));
        }
        while let Some(answer) = requests.join_next().await {
            assert_eq!(answer.expect("task"), (401, error("unknown_key")));
            answers += 1;
        }
    }
    assert_eq!(answers, 1000);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let extra = jwks.fetches() - at_start;
    assert!(
        extra <= MAX_EXTRA_FETCHES,
        "1,000 unknown kids caused {extra} JWKS fetches"
    );
    assert!(all.events().is_empty());
    assert_eq!(
        server.deliver(sign_event(&trusted, claims())).await,
        (200, ok())
    );
}

// ---------------------------------------------------------------------------------------
// A hostile JWKS endpoint
// ---------------------------------------------------------------------------------------

/// What the hostile JWKS endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JwksMode {
    /// The trusted key set.
    Good,
    /// 302 to the attacker's key set.
    Redirect,
    /// 200 with HTML.
    Garbage,
    /// The trusted key set padded past 256 KiB, with a Content-Length.
    Huge,
    /// The same, streamed without a Content-Length.
    HugeStreamed,
    /// Only keys that must not verify anything: symmetric, encryption, EC, weak RSA, HS256.
    NoSigningKeys,
}

const HOSTILE_MODES: [JwksMode; 5] = [
    JwksMode::Redirect,
    JwksMode::Garbage,
    JwksMode::Huge,
    JwksMode::HugeStreamed,
    JwksMode::NoSigningKeys,
];

#[derive(Clone)]
struct HostileJwks {
    mode: Arc<Mutex<JwksMode>>,
    good: Value,
    poisoned: Value,
    redirect_to: String,
}

async fn serve_hostile_jwks(
    axum::extract::State(s): axum::extract::State<HostileJwks>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mode = *s.mode.lock().expect("mode lock");
    let padded = || {
        let mut doc = s.good.clone();
        doc["padding"] = json!("x".repeat(300 * 1024));
        serde_json::to_vec(&doc).expect("serialize")
    };
    match mode {
        JwksMode::Good => axum::Json(s.good.clone()).into_response(),
        JwksMode::Redirect => (
            axum::http::StatusCode::FOUND,
            [(axum::http::header::LOCATION, s.redirect_to.clone())],
        )
            .into_response(),
        JwksMode::Garbage => "<html>not a key set</html>".into_response(),
        JwksMode::Huge => padded().into_response(),
        JwksMode::HugeStreamed => {
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                padded().chunks(16 * 1024).map(|c| Ok(c.to_vec())).collect();
            axum::body::Body::from_stream(futures_util::stream::iter(chunks)).into_response()
        }
        JwksMode::NoSigningKeys => axum::Json(s.poisoned.clone()).into_response(),
    }
}

/// A JWKS endpoint whose answer the test switches; trusts `trusted` in `Good` mode.
async fn hostile_jwks(
    trusted: &SigningKey,
    attacker: &SigningKey,
    redirect_to: String,
) -> (String, Arc<Mutex<JwksMode>>) {
    let mode = Arc::new(Mutex::new(JwksMode::Good));
    let mut enc = trusted.jwk();
    enc["use"] = json!("enc");
    let mut ec = trusted.jwk();
    ec["kty"] = json!("EC");
    let mut hs = trusted.jwk();
    hs["alg"] = json!("HS256");
    let mut weak = trusted.jwk();
    weak["n"] = json!(B64.encode([0xc5u8; 128])); // 1,024 bits
    let oct = json!({"kty": "oct", "kid": attacker.kid(), "k": B64.encode(b"attacker secret"), "alg": "HS256"});
    let state = HostileJwks {
        mode: mode.clone(),
        good: trusted.jwks(),
        poisoned: json!({"keys": [enc, ec, hs, weak, oct]}),
        redirect_to,
    };
    let app = axum::Router::new()
        .route("/jwks", axum::routing::get(serve_hostile_jwks))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let url = format!("http://{}/jwks", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, mode)
}

/// A receiver whose keys come from `jwks_url`, with a short unknown-kid cooldown.
async fn receiver_of(jwks: &JwksServer, jwks_url: &str) -> (TestServer, Recorder) {
    let all = Recorder::new();
    let registry = Registry::builder().handler("all", &["*"], all.clone());
    let mut config = jwks.config("[kinde]\njwks_refresh_cooldown = \"100ms\"");
    config.kinde.jwks_url = Some(jwks_url.to_owned());
    (TestServer::start(config, registry).await, all)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_jwks_at_start_up_yields_no_key() {
    let (trusted, attacker) = (key(), key());
    // The redirect leads to a key set holding the attacker's key.
    let attacker_jwks = JwksServer::start(&[&attacker]).await;
    let redirect_to = format!("{}/.well-known/jwks.json", attacker_jwks.issuer_url());
    let (url, mode) = hostile_jwks(&trusted, &attacker, redirect_to).await;
    for hostile in HOSTILE_MODES {
        *mode.lock().expect("mode lock") = hostile;
        let (server, all) = receiver_of(&attacker_jwks, &url).await;
        for _ in 0..3 {
            for (who, token) in [
                ("trusted", sign_event(&trusted, claims())),
                ("attacker", sign_event(&attacker, claims())),
            ] {
                assert_eq!(
                    server.deliver(token).await,
                    (503, error("keys_unavailable")),
                    "{hostile:?}, {who} key"
                );
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        assert!(!server.webhooks().keys().has_keys(), "{hostile:?}");
        assert!(all.events().is_empty(), "{hostile:?}");
    }
    assert_eq!(attacker_jwks.fetches(), 0, "redirects are not followed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jwks_turning_hostile_keeps_the_keys_held() {
    let (trusted, attacker) = (key(), key());
    let attacker_jwks = JwksServer::start(&[&attacker]).await;
    let redirect_to = format!("{}/.well-known/jwks.json", attacker_jwks.issuer_url());
    let (url, mode) = hostile_jwks(&trusted, &attacker, redirect_to).await;
    let (server, all) = receiver_of(&attacker_jwks, &url).await;
    server.wait_for_keys().await;
    for hostile in HOSTILE_MODES {
        *mode.lock().expect("mode lock") = hostile;
        // Past the cooldown, an unknown kid refetches the (now hostile) key set.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let fetches = server.webhooks().keys().fetch_count();
        assert_eq!(
            server.deliver(sign_event(&attacker, claims())).await,
            (401, error("unknown_key")),
            "{hostile:?}"
        );
        assert_eq!(
            server.webhooks().keys().fetch_count(),
            fetches + 1,
            "{hostile:?}: the unknown kid refetched"
        );
        assert_eq!(
            server.deliver(sign_event(&trusted, claims())).await,
            (200, ok()),
            "{hostile:?}: the key held still verifies"
        );
    }
    assert_eq!(all.events().len(), HOSTILE_MODES.len());
    assert_eq!(attacker_jwks.fetches(), 0, "redirects are not followed");
}

// ---------------------------------------------------------------------------------------
// Replays and stale events
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_token_runs_once_and_events_outside_max_event_age_are_refused() {
    let (key, _jwks, server, all) = slow_setup("[kinde]\nmax_event_age = \"1h\"").await;
    let token = sign_event(&key, claims());
    for webhook_id in ["msg_original", "msg_replayed_1", "msg_replayed_2"] {
        assert_eq!(
            server.post(ROUTE, token.clone(), Some(webhook_id)).await,
            (200, ok())
        );
    }
    assert_eq!(
        all.only().delivery.webhook_id.as_deref(),
        Some("msg_original")
    );

    let at = |offset: chrono::Duration| {
        let mut c = claims();
        c["timestamp"] = json!((chrono::Utc::now() + offset).to_rfc3339());
        sign_event(&key, c)
    };
    assert_eq!(
        server.deliver(at(chrono::Duration::hours(-2))).await,
        (400, error("event_too_old"))
    );
    assert_eq!(
        server.deliver(at(chrono::Duration::hours(2))).await,
        (400, error("event_in_future"))
    );
    assert_eq!(all.events().len(), 1);
    assert_eq!(
        server.deliver(at(chrono::Duration::minutes(-30))).await,
        (200, ok())
    );
    assert_eq!(all.events().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_replays_in_inline_mode_run_the_handlers_once() {
    let key = key();
    let jwks = JwksServer::start(&[&key]).await;
    let gate = Gate::new();
    let registry = Registry::builder().handler("gate", &["*"], gate.clone());
    let server = TestServer::start(jwks.config(""), registry).await;
    server.wait_for_keys().await;
    let token = sign_event(&key, claims());
    let mut replays = JoinSet::new();
    for i in 0..3 {
        let request = server
            .client()
            .post(server.url(ROUTE))
            .header("webhook-id", format!("msg_{i}"))
            .body(token.clone());
        replays.spawn(send(request));
    }
    eventually("the first copy in the handler", || async {
        gate.entered.load(Ordering::SeqCst) >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let entered_while_running = gate.entered.load(Ordering::SeqCst);
    gate.open.add_permits(3);
    while let Some(answer) = tokio::time::timeout(DEADLINE, replays.join_next())
        .await
        .expect("the copies are answered")
    {
        answer.expect("task");
    }
    assert_eq!(
        (entered_while_running, gate.entered.load(Ordering::SeqCst)),
        (1, 1),
        "one captured token sent 3 times at once ran the handler more than once"
    );
}

// ---------------------------------------------------------------------------------------
// Information leaks
// ---------------------------------------------------------------------------------------

/// Log lines written by the test's subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

/// The `it` binary's one global subscriber: everything `kinde_webhooks` logs, at TRACE,
/// from every thread. (A thread-local subscriber misses events whose callsites other
/// tests' threads cached as uninteresting under `cargo test`.)
fn global_logs() -> &'static Captured {
    static LOGS: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("kinde_webhooks=trace"))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("the only global subscriber of the it binary");
        captured
    })
}

/// Everything the receiver logs at TRACE while it accepts and refuses tokens: no token,
/// and no segment of one, appears.
#[tokio::test(flavor = "current_thread")]
async fn no_token_reaches_the_logs() {
    let captured = global_logs();
    let (key, attacker) = (key(), key());
    let jwks = JwksServer::start(&[&key]).await;
    let all = Recorder::new();
    let registry = Registry::builder().handler("all", &["*"], all.clone());
    let server = TestServer::start(jwks.config(""), registry).await;
    server.wait_for_keys().await;

    let genuine = sign_event(&key, claims());
    let (input, _) = genuine.rsplit_once('.').expect("three segments");
    let mut not_an_event = claims();
    not_an_event["type"] = json!(5);
    let mut expired = claims();
    expired["exp"] = json!(chrono::Utc::now().timestamp() - 3600);
    let tokens = [
        (genuine.clone(), 200),
        (format!("{input}.{}", B64.encode([7u8; 256])), 401),
        (sign_event(&attacker, claims()), 401),
        (key.sign(&not_an_event), 400),
        (key.sign(&expired), 401),
        (format!("{genuine}.junk"), 400),
        (
            key.sign_with_header(
                &header_with(&key, "kid", json!("x\r\nINFO forged log line")),
                &claims(),
            ),
            401,
        ),
    ];
    for (token, status) in &tokens {
        let (got, _) = server.post(ROUTE, token.clone(), Some("msg_log")).await;
        assert_eq!(got, *status, "{token}");
    }
    let logs = captured.text();
    assert!(
        logs.contains("webhook refused") && logs.contains("event handled"),
        "the subscriber saw the receiver's logs:\n{logs}"
    );
    assert!(
        !logs.contains("\nINFO forged log line"),
        "a kid broke a log line:\n{logs}"
    );
    for (token, _) in &tokens {
        for segment in token.split('.').filter(|s| s.len() >= 16) {
            assert!(
                !logs.contains(segment),
                "a token segment was logged: {segment}\n{logs}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn key_material_stays_out_of_debug_output() {
    let (key, _jwks, server, _all) = slow_setup("").await;
    let shown = format!("{:?} {key:?}", server.webhooks());
    assert!(shown.contains(key.kid()), "kids are shown: {shown}");
    let jwk = key.jwk();
    let n = jwk["n"].as_str().expect("n");
    assert!(!shown.contains(&n[..32]), "modulus leaked: {shown}");
    assert!(!shown.contains("PRIVATE"), "private key leaked: {shown}");
    let pem_text = key.to_pem().expect("PEM");
    let body_line = pem_text.lines().nth(1).expect("PEM body");
    assert!(!shown.contains(body_line), "private key leaked: {shown}");
}

// ---------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn the_inbox_database_and_its_wal_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;

    let key = key();
    let jwks = JwksServer::start(&[&key]).await;
    let dir = TempDir::new().expect("temporary folder");
    let mut config = jwks.config("[delivery]\nmode = \"inbox\"");
    config.store.path = dir.path().join("inbox.db");
    let all = Recorder::new();
    let registry = Registry::builder().handler("all", &["*"], all.clone());
    let server = TestServer::open(config, registry).await;
    server.wait_for_keys().await;
    assert_eq!(
        server.deliver(sign_event(&key, claims())).await,
        (200, ok())
    );
    eventually("the stored event is handled", || async {
        !all.events().is_empty()
    })
    .await;
    let mut checked = Vec::new();
    for name in ["inbox.db", "inbox.db-wal", "inbox.db-shm"] {
        let path = dir.path().join(name);
        if let Ok(meta) = std::fs::metadata(&path) {
            let mode = meta.permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name} has mode {mode:o}");
            checked.push(name);
        }
    }
    assert!(checked.contains(&"inbox.db"), "checked {checked:?}");
    assert!(checked.contains(&"inbox.db-wal"), "checked {checked:?}");
}
