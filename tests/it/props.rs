//! Property tests: the token parser and the webhook endpoint fed hostile input.
//!
//! The pure parser (`parse`, `parse_with`, `check_signature`, `into_event`) gets 2,000
//! cases per property: arbitrary bytes, three base64url segments, JSON values encoded as
//! header and payload (checked against an independent model of the rules), and mutations
//! of genuine signed tokens. The endpoint gets 256 cases against one server.
//!
//! Set `PROPTEST_CASES` to run more (or fewer) cases. Failures are not persisted to a
//! regressions file: the failing input is printed, shrunk, in the panic message.

use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD as B64};
use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use jsonwebtoken::DecodingKey;
use kinde_webhooks::reply::Rejection;
use kinde_webhooks::signing::SigningKey;
use kinde_webhooks::verify::{TokenLimits, UnverifiedToken, parse, parse_with};
use kinde_webhooks::{Event, Registry, VerifyError};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseResult, TestRunner};
use serde_json::{Map, Value, json};

use crate::utils::{JwksServer, ROUTE, Recorder, TestServer, error, event, key, ok, sign_event};

// ---------------------------------------------------------------------------------------
// Shared fixture: one key, a few genuine tokens, a fixed "now".
// ---------------------------------------------------------------------------------------

struct Fixture {
    key: SigningKey,
    decoding: DecodingKey,
    /// Genuine tokens signed by `key`, each accepted by `pipeline` under `limits_d()`.
    tokens: Vec<String>,
    now: DateTime<Utc>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let key = key();
        let decoding = key.decoding_key();
        let tokens = genuine_tokens(&key);
        Fixture {
            key,
            decoding,
            tokens,
            now: Utc::now(),
        }
    })
}

/// A handful of genuine Kinde-shaped tokens (different types, sizes, registered claims).
fn genuine_tokens(key: &SigningKey) -> Vec<String> {
    let now = Utc::now().timestamp();
    vec![
        sign_event(key, event("user.created", json!({"user": {"id": "kp_1"}}))),
        sign_event(
            key,
            event(
                "organization.updated",
                json!({"organization": {"code": "org_1", "name": "Ünïcødé [{\"x\"}]"}}),
            ),
        ),
        sign_event(
            key,
            json!({"type": "user.deleted", "data": {"user": {"id": "kp_2"}},
                   "exp": now + 86_400, "nbf": now - 86_400, "iss": "x", "aud": ["y"]}),
        ),
        sign_event(
            key,
            event("role.created", json!({"role": {"key": "admin"}})),
        ),
    ]
}

/// Limits for the tokens built from generated JSON: room for a signature and a modest
/// payload, tight depth and kid.
const LIMITS_C: TokenLimits = TokenLimits {
    max_token_bytes: 2048,
    max_payload_bytes: 600,
    max_json_depth: 4,
    max_kid_bytes: 16,
};

/// Tight limits for the raw-input properties.
const LIMITS_TIGHT: TokenLimits = TokenLimits {
    max_token_bytes: 256,
    max_payload_bytes: 96,
    max_json_depth: 3,
    max_kid_bytes: 8,
};

/// Limits for the mutation property: the defaults, which every genuine token fits.
fn limits_d() -> TokenLimits {
    TokenLimits::default()
}

fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        failure_persistence: None,
        // ChaCha, the default, is most of the CPU time of these tests in a debug build.
        rng_algorithm: RngAlgorithm::XorShift,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The reason label a refusal gets on the wire.
fn label(e: VerifyError) -> &'static str {
    Rejection::Verify(e).reason()
}

/// Nesting depth of arrays and objects, as `too_deep` counts it (scalars are 0).
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// What every refusal of the pure parser must look like: a 4xx (never 503: no key store
/// is involved) with a label.
fn check_refusal(e: VerifyError) -> Result<&'static str, TestCaseError> {
    let shown = format!("{e:?}");
    let rejection = Rejection::Verify(e);
    let status = rejection.status().as_u16();
    prop_assert!(
        (400..500).contains(&status),
        "{shown} maps to {status}, not a 4xx"
    );
    Ok(rejection.reason())
}

/// What every token `parse_with` lets through must satisfy.
fn check_parsed(token: &str, t: &UnverifiedToken<'_>, limits: TokenLimits) -> TestCaseResult {
    prop_assert!(token.trim_ascii().len() <= limits.max_token_bytes);
    prop_assert!(!t.kid().is_empty());
    prop_assert!(t.kid().len() <= limits.max_kid_bytes);
    Ok(())
}

/// What every event `into_event` returns must satisfy.
fn check_event(e: &Event, limits: TokenLimits) -> TestCaseResult {
    prop_assert!(!e.event_type.is_empty());
    prop_assert!(!e.event_id.is_empty());
    let claims: Value = serde_json::from_str(&e.claims).expect("claims are the JSON that parsed");
    prop_assert!(claims.is_object());
    prop_assert!(depth(&claims) <= limits.max_json_depth);
    // `into_event` estimates the decoded size from the base64 length (len / 4 * 3), so an
    // unpadded payload up to 2 bytes over `max_payload_bytes` passes.
    prop_assert!(e.claims.len() <= limits.max_payload_bytes + 2);
    Ok(())
}

/// The refusals `parse_with` itself may give; the others need the signature or claims.
const PARSE_LABELS: &[&str] = &[
    "token_too_large",
    "malformed_token",
    "malformed_header",
    "json_too_deep",
    "unsupported_algorithm",
    "unsupported_critical_header",
    "missing_kid",
    "invalid_kid",
];

/// Run the whole pure pipeline on `token` under `limits`: parse, then `check_signature`
/// against the issuer's key, then `into_event` whatever the signature said, checking
/// each step's result. Returns how far the token got, refusals as their labels.
fn pipeline(token: &str, limits: TokenLimits) -> Result<Outcome, TestCaseError> {
    let f = fixture();
    let t = match parse_with(token, limits) {
        Ok(t) => t,
        Err(e) => {
            let l = check_refusal(e)?;
            prop_assert!(PARSE_LABELS.contains(&l), "parse refused with {l}");
            return Ok(Outcome::NotParsed);
        }
    };
    check_parsed(token, &t, limits)?;
    let signature = t.check_signature(&f.decoding).map_err(label);
    if let Err(l) = signature {
        prop_assert_eq!(l, "invalid_signature");
    }
    let event = match t.into_event(f.now, None) {
        Ok(e) => {
            check_event(&e, limits)?;
            Ok(())
        }
        Err(e) => Err(check_refusal(e)?),
    };
    Ok(Outcome::Parsed { signature, event })
}

#[derive(Debug)]
enum Outcome {
    NotParsed,
    Parsed {
        signature: Result<(), &'static str>,
        event: Result<(), &'static str>,
    },
}

impl Outcome {
    /// Signature and claims both accepted: what the endpoint would answer 200 to.
    fn accepted(&self) -> bool {
        matches!(
            self,
            Outcome::Parsed {
                signature: Ok(()),
                event: Ok(())
            }
        )
    }
}

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

/// Strings that stress the depth scan and JSON escaping: brackets, quotes, backslashes.
fn tricky_string() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[\\[\\]{}\"\\\\:,a-z0-9 .=_-]{0,12}",
        2 => any::<String>(),
        1 => prop::sample::select(vec![
            "RS256", "alg", "kid", "crit", "type", "event_id", "timestamp",
        ])
        .prop_map(str::to_owned),
    ]
    .boxed()
}

fn json_leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        tricky_string().prop_map(Value::from),
    ]
    .boxed()
}

/// Any JSON value, up to 7 levels deep.
fn json_value() -> BoxedStrategy<Value> {
    let tree = json_leaf().prop_recursive(7, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((tricky_string(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    });
    prop_oneof![6 => tree, 1 => nested()].boxed()
}

/// A leaf under 1 to 8 levels of arrays and objects: either side of the depth limits.
fn nested() -> BoxedStrategy<Value> {
    (prop::collection::vec(any::<bool>(), 1..9), json_leaf())
        .prop_map(|(levels, leaf)| {
            levels.into_iter().fold(leaf, |v, array| {
                if array {
                    Value::Array(vec![v])
                } else {
                    json!({ "k": v })
                }
            })
        })
        .boxed()
}

/// A JOSE header: mostly objects with an `alg`, a `kid` and sometimes `crit`, any of
/// them possibly wrong; sometimes any JSON value at all.
fn header_value() -> BoxedStrategy<Value> {
    let alg = prop_oneof![
        12 => Just(json!("RS256")),
        1 => prop::sample::select(vec!["rs256", "none", "HS256", "RS512", "PS256", "RS256 ", ""])
            .prop_map(Value::from),
        1 => json_value(),
    ];
    let kid = prop_oneof![
        8 => "[a-f0-9:]{1,16}".prop_map(Value::from),
        1 => "[a-f0-9:]{17,24}".prop_map(Value::from),
        1 => Just(json!("")),
        1 => json_value(),
    ];
    let object = (
        prop::option::weighted(0.95, alg),
        prop::option::weighted(0.9, kid),
        prop::option::weighted(0.05, json_value()),
        prop::collection::vec((tricky_string(), json_value()), 0..2),
    )
        .prop_map(|(alg, kid, crit, extra)| {
            let mut o: Map<String, Value> = extra.into_iter().collect();
            for (name, v) in [("alg", alg), ("kid", kid), ("crit", crit)] {
                match v {
                    Some(v) => o.insert(name.to_owned(), v),
                    None => o.remove(name),
                };
            }
            Value::Object(o)
        });
    prop_oneof![6 => object, 1 => json_value()].boxed()
}

/// An RFC 3339 timestamp within `seconds` of the fixture's now, in some offset.
fn timestamp_near(seconds: i64) -> BoxedStrategy<Value> {
    (-seconds..seconds, -11i32..14)
        .prop_map(|(delta, hours)| {
            let offset = FixedOffset::east_opt(hours * 3600).expect("offset in range");
            let t = fixture().now + chrono::Duration::seconds(delta);
            json!(
                offset
                    .from_utc_datetime(&t.naive_utc())
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
            )
        })
        .boxed()
}

fn timestamp_value() -> BoxedStrategy<Value> {
    prop_oneof![
        20 => timestamp_near(3 * 3600),
        1 => Just(json!("2024-05-01T17:41:45.592145+10:00")),
        1 => prop::sample::select(vec![
            "yesterday", "", "2024-05-01", "2024-05-01T17:41:45", "2024-13-01T00:00:00Z",
            "2024-05-01 17:41:45Z", "9999-12-31T23:59:59-23:59", "0000-01-01T00:00:00+23:59",
        ])
        .prop_map(Value::from),
        1 => json_value(),
    ]
    .boxed()
}

/// `exp` / `nbf`: numbers around now (either side of the 60 s leeway), or not numbers
/// (`null` included, which is refused like any other).
fn registered_claim() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => (-7200i64..7200).prop_map(|d| json!(fixture().now.timestamp() + d)),
        1 => (-7200.0f64..7200.0).prop_map(|d| json!(fixture().now.timestamp() as f64 + d)),
        1 => Just(Value::Null),
        1 => json_value(),
    ]
    .boxed()
}

fn name_value() -> BoxedStrategy<Value> {
    prop_oneof![
        14 => "[a-z_.]{1,16}".prop_map(Value::from),
        1 => Just(json!("")),
        1 => json_value(),
    ]
    .boxed()
}

/// A claims object shaped like a Kinde envelope, each field present or not, right or
/// wrong; sometimes any JSON value at all.
fn payload_value() -> BoxedStrategy<Value> {
    let fields = (
        prop::option::weighted(0.97, name_value()),
        prop::option::weighted(0.97, name_value()),
        prop::option::weighted(0.97, timestamp_value()),
        prop::option::weighted(
            0.5,
            prop_oneof![
                8 => prop::sample::select(vec!["admin", "api", "user", "other"])
                    .prop_map(Value::from),
                1 => json_value(),
            ],
        ),
        prop::option::of(json_value()),
        prop::option::weighted(0.2, timestamp_value()),
        prop::option::weighted(
            0.2,
            prop_oneof![6 => Just(json!("192.0.2.1")), 1 => json_value()],
        ),
        prop::option::weighted(0.3, registered_claim()),
        prop::option::weighted(0.3, registered_claim()),
        prop::collection::vec((tricky_string(), json_value()), 0..3),
    );
    let object = fields.prop_map(
        |(ty, id, timestamp, source, data, event_timestamp, ip, exp, nbf, extra)| {
            let mut o: Map<String, Value> = extra.into_iter().collect();
            for (name, v) in [
                ("type", ty),
                ("event_id", id),
                ("timestamp", timestamp),
                ("source", source),
                ("data", data),
                ("event_timestamp", event_timestamp),
                ("ip_address", ip),
                ("exp", exp),
                ("nbf", nbf),
            ] {
                match v {
                    Some(v) => o.insert(name.to_owned(), v),
                    None => o.remove(name),
                };
            }
            Value::Object(o)
        },
    );
    prop_oneof![8 => object, 1 => json_value()].boxed()
}

/// One base64url-looking segment.
fn segment() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[A-Za-z0-9_=-]{0,48}",
        2 => prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| B64.encode(b)),
        2 => json_value().prop_map(|v| B64.encode(serde_json::to_vec(&v).expect("JSON"))),
        1 => "[A-Za-z0-9_=+/ .\t-]{0,12}",
    ]
    .boxed()
}

/// Bytes drawn mostly from the token alphabet, so they get past the splitting more often.
fn token_alphabet_bytes() -> BoxedStrategy<Vec<u8>> {
    let alphabet: Vec<u8> =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=.+/ \t\r\n{}[]\""
            .to_vec();
    prop::collection::vec(
        prop_oneof![8 => prop::sample::select(alphabet), 1 => any::<u8>()],
        0..400,
    )
    .boxed()
}

/// One edit of a token's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    /// Flip one bit of one byte.
    FlipBit(Index, u8),
    /// Overwrite one byte.
    Replace(Index, u8),
    /// Insert one byte.
    Insert(Index, u8),
    /// Delete one byte.
    Delete(Index),
    /// Delete up to `n` bytes from a position.
    DeleteRange(Index, usize),
    /// Keep only a prefix.
    Truncate(Index),
    /// Swap two of the dot-separated segments.
    SwapSegments(usize, usize),
    /// Turn one `.` into `..`.
    DuplicateDot(Index),
    /// Drop one segment (and its dot).
    DropSegment(usize),
    /// Repeat one segment.
    DuplicateSegment(usize),
    /// Append 1 to 3 `=` to a segment: base64 padding, the same decoded bytes.
    Pad(usize, usize),
    /// Rewrite a segment in the standard alphabet (`+/`), padded or not.
    StandardAlphabet(usize, bool),
    /// Replace segment `i` by the same segment of another genuine token.
    Splice(usize, usize),
    /// Re-serialize the header or payload JSON with the same meaning, other text.
    Reserialize(usize),
    /// Surround with ASCII whitespace: the one edit the parser must ignore.
    Wrap(Vec<u8>, Vec<u8>),
}

fn interesting_byte() -> BoxedStrategy<u8> {
    prop_oneof![
        2 => any::<u8>(),
        3 => prop::sample::select(b"AZaz09-_=.+/ \t\r\n\x0c\x00".to_vec()),
    ]
    .boxed()
}

fn whitespace() -> BoxedStrategy<Vec<u8>> {
    prop::collection::vec(prop::sample::select(b" \t\r\n\x0c".to_vec()), 0..4).boxed()
}

fn mutation(tokens: usize) -> BoxedStrategy<Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<Index>(), interesting_byte()).prop_map(|(i, b)| Mutation::Replace(i, b)),
        2 => (any::<Index>(), interesting_byte()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => any::<Index>().prop_map(Mutation::Delete),
        1 => (any::<Index>(), 1usize..40).prop_map(|(i, n)| Mutation::DeleteRange(i, n)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (0usize..3, 0usize..3).prop_map(|(a, b)| Mutation::SwapSegments(a, b)),
        1 => any::<Index>().prop_map(Mutation::DuplicateDot),
        1 => (0usize..3).prop_map(Mutation::DropSegment),
        1 => (0usize..3).prop_map(Mutation::DuplicateSegment),
        2 => (0usize..3, 1usize..4).prop_map(|(s, n)| Mutation::Pad(s, n)),
        1 => (0usize..3, any::<bool>()).prop_map(|(s, p)| Mutation::StandardAlphabet(s, p)),
        2 => (0usize..3, 0..tokens).prop_map(|(s, t)| Mutation::Splice(s, t)),
        1 => (0usize..2).prop_map(Mutation::Reserialize),
        1 => (whitespace(), whitespace()).prop_map(|(a, b)| Mutation::Wrap(a, b)),
    ]
    .boxed()
}

fn segments(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes.split(|&b| b == b'.').map(<[u8]>::to_vec).collect()
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation, tokens: &[String]) {
    let len = bytes.len();
    match m {
        Mutation::FlipBit(i, bit) if len > 0 => bytes[i.index(len)] ^= 1 << bit,
        Mutation::Replace(i, b) if len > 0 => bytes[i.index(len)] = *b,
        Mutation::Insert(i, b) => bytes.insert(i.index(len + 1), *b),
        Mutation::Delete(i) if len > 0 => {
            bytes.remove(i.index(len));
        }
        Mutation::DeleteRange(i, n) if len > 0 => {
            let start = i.index(len);
            bytes.drain(start..(start + n).min(len));
        }
        Mutation::Truncate(i) => bytes.truncate(i.index(len + 1)),
        Mutation::DuplicateDot(i) => {
            let dots: Vec<usize> = (0..len).filter(|&k| bytes[k] == b'.').collect();
            if !dots.is_empty() {
                bytes.insert(dots[i.index(dots.len())], b'.');
            }
        }
        Mutation::SwapSegments(..)
        | Mutation::DropSegment(_)
        | Mutation::DuplicateSegment(_)
        | Mutation::Pad(..)
        | Mutation::StandardAlphabet(..)
        | Mutation::Splice(..)
        | Mutation::Reserialize(_) => {
            let mut segs = segments(bytes);
            edit_segments(&mut segs, m, tokens);
            *bytes = segs.join(&b'.');
        }
        Mutation::Wrap(before, after) => {
            let mut wrapped = before.clone();
            wrapped.append(bytes);
            wrapped.extend_from_slice(after);
            *bytes = wrapped;
        }
        _ => {}
    }
}

fn edit_segments(segs: &mut Vec<Vec<u8>>, m: &Mutation, tokens: &[String]) {
    let n = segs.len();
    match *m {
        Mutation::SwapSegments(a, b) if a < n && b < n => segs.swap(a, b),
        Mutation::DropSegment(s) if s < n => {
            segs.remove(s);
        }
        Mutation::DuplicateSegment(s) if s < n => {
            let copy = segs[s].clone();
            segs.insert(s, copy);
        }
        Mutation::Pad(s, k) if s < n => segs[s].extend(std::iter::repeat_n(b'=', k)),
        Mutation::StandardAlphabet(s, padded) if s < n => {
            if let Ok(raw) = B64.decode(&segs[s]) {
                segs[s] = if padded {
                    base64::engine::general_purpose::STANDARD.encode(raw)
                } else {
                    STANDARD_NO_PAD.encode(raw)
                }
                .into_bytes();
            }
        }
        Mutation::Splice(s, t) if s < n => {
            if let Some(other) = tokens[t].split('.').nth(s) {
                segs[s] = other.as_bytes().to_vec();
            }
        }
        Mutation::Reserialize(s) if s < n => {
            let json = B64
                .decode(&segs[s])
                .ok()
                .and_then(|raw| serde_json::from_slice::<Value>(&raw).ok());
            if let Some(v) = json {
                let pretty = serde_json::to_vec_pretty(&v).expect("JSON");
                segs[s] = B64.encode(pretty).into_bytes();
            }
        }
        _ => {}
    }
}

/// A genuine token (by index) and the edits to make to it.
fn mutated_token(tokens: usize) -> BoxedStrategy<(usize, Vec<Mutation>)> {
    (0..tokens, prop::collection::vec(mutation(tokens), 1..4)).boxed()
}

fn mutate(original: &str, edits: &[Mutation], tokens: &[String]) -> Vec<u8> {
    let mut bytes = original.as_bytes().to_vec();
    for m in edits {
        apply(&mut bytes, m, tokens);
    }
    bytes
}

// ---------------------------------------------------------------------------------------
// The pure parser
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(2000))]

    /// (a) Arbitrary bytes, read as lossy UTF-8: no panic under the default or tight
    /// limits; every refusal is a 4xx with a label; nothing verifies against the key.
    #[test]
    fn parser_survives_arbitrary_bytes(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..600),
            token_alphabet_bytes(),
        ]
    ) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse(&text).map(|t| t.into_event(fixture().now, Some(Duration::from_secs(3600))));
        for limits in [limits_d(), LIMITS_TIGHT] {
            let outcome = pipeline(&text, limits)?;
            if let Outcome::Parsed { signature, .. } = &outcome {
                prop_assert!(signature.is_err(), "random bytes verified: {text:?}");
            }
        }
    }

    /// (b) Three arbitrary base64url-ish segments joined by dots (sometimes in
    /// whitespace): no panic; refusals are 4xx; the signature never verifies.
    #[test]
    fn parser_survives_three_base64url_segments(
        header in segment(),
        payload in segment(),
        signature in segment(),
        before in whitespace(),
        after in whitespace(),
    ) {
        let token = format!(
            "{}{header}.{payload}.{signature}{}",
            String::from_utf8_lossy(&before),
            String::from_utf8_lossy(&after),
        );
        for limits in [limits_d(), LIMITS_TIGHT] {
            let outcome = pipeline(&token, limits)?;
            if let Outcome::Parsed { signature, .. } = &outcome {
                prop_assert!(signature.is_err(), "junk verified: {token:?}");
            }
        }
    }

    /// (c) Arbitrary JSON as header and payload, signed with the real key (or given a
    /// junk signature). The outcome of each step must match a model of the documented
    /// rules, written independently of `verify.rs`: header (depth, object, `alg` exactly
    /// "RS256", no `crit`, a non-empty string `kid` within the limit), signature (valid
    /// exactly when we signed), claims (size, depth, object, a string `type` and `event_id`
    /// of 1 to 256 bytes without control characters, a `timestamp`, `source`/`ip_address` strings or null, numeric
    /// `exp`/`nbf` within the leeway, the maximum event age). An accepted event carries
    /// exactly the claims signed.
    #[test]
    fn parser_matches_the_model_on_arbitrary_json(
        header in header_value(),
        claims in payload_value(),
        signed in prop::bool::weighted(0.8),
        junk_signature in "[A-Za-z0-9_-]{0,40}",
        max_age in prop::option::of(Just(Duration::from_secs(3600))),
        use_kid in any::<bool>(),
    ) {
        let f = fixture();
        let mut header = header;
        if use_kid && header.get("kid").is_some_and(Value::is_string) {
            header["kid"] = json!(f.key.kid().chars().take(16).collect::<String>());
        }
        let token = if signed {
            f.key.sign_with_header(&header, &claims)
        } else {
            format!(
                "{}.{}.{junk_signature}",
                B64.encode(serde_json::to_vec(&header).expect("JSON")),
                B64.encode(serde_json::to_vec(&claims).expect("JSON")),
            )
        };
        let limits = LIMITS_C;
        let expected = if token.len() > limits.max_token_bytes {
            Err("token_too_large")
        } else {
            model_header(&header, limits)
        };
        let t = match parse_with(&token, limits) {
            Ok(t) => {
                prop_assert_eq!(expected, Ok(()), "parsed, the model refuses");
                t
            }
            Err(e) => {
                let l = check_refusal(e)?;
                prop_assert_eq!(expected, Err(l), "the model disagrees on the header");
                return Ok(());
            }
        };
        prop_assert_eq!(t.kid(), header["kid"].as_str().expect("the model wants a string kid"));
        prop_assert_eq!(
            t.check_signature(&f.decoding).is_ok(),
            signed,
            "a signature verifies exactly when it was made by the key"
        );
        let payload_json = serde_json::to_vec(&claims).expect("JSON");
        let expected = model_claims(&claims, payload_json.len(), limits, f.now, max_age);
        match t.into_event(f.now, max_age) {
            Ok(e) => {
                check_event(&e, limits)?;
                prop_assert!(
                    expected.is_none_or(|x| x.is_ok()),
                    "accepted, the model says {expected:?}"
                );
                prop_assert_eq!(e.claims.as_bytes(), payload_json.as_slice());
                prop_assert_eq!(Some(&json!(e.event_type)), claims.get("type"));
                prop_assert_eq!(Some(&json!(e.event_id)), claims.get("event_id"));
            }
            Err(e) => {
                let l = check_refusal(e)?;
                prop_assert!(
                    expected.is_none_or(|x| x == Err(l)),
                    "refused as {l}, the model says {expected:?}"
                );
            }
        }
    }

    /// (d) Mutations of a genuine signed token (flip, insert, delete bytes; swap, drop,
    /// repeat, pad, re-encode segments; splice in segments of the other genuine tokens;
    /// truncate; double dots; surrounding whitespace). The invariant: a mutated token `m`
    /// is accepted (parse + `check_signature` with the issuer's key + `into_event` all
    /// Ok) if and only if `m.trim_ascii()` is byte-for-byte one of the genuine tokens the
    /// key signed: the original (a no-op edit) or, by splicing all three segments,
    /// another one (a replay, which only the `event_id` dedup can tell).
    ///
    /// Why no other "no-op on the decoded bytes" may pass: RS256 signs the literal ASCII
    /// text `header.payload`, not the decoded JSON, so padding `=`, the `+/` alphabet,
    /// other trailing bits or JSON re-serialized with the same meaning all change what
    /// is verified; and the signature segment is decoded strictly (URL_SAFE_NO_PAD: no
    /// padding, non-zero trailing bits refused), so it has a single spelling too. The
    /// only rewrite the parser documents as tolerated is surrounding ASCII whitespace.
    #[test]
    fn mutated_tokens_verify_only_when_byte_identical_to_a_signed_token(
        (which, edits) in mutated_token(4),
    ) {
        let f = fixture();
        let original = &f.tokens[which];
        let bytes = mutate(original, &edits, &f.tokens);
        let text = String::from_utf8_lossy(&bytes);
        let unchanged = f.tokens.iter().any(|t| text.trim_ascii() == t.as_str());
        let outcome = pipeline(&text, limits_d())?;
        prop_assert_eq!(
            outcome.accepted(),
            unchanged,
            "accepted = {}, mutated token {:?} (from token {})",
            outcome.accepted(), text, which
        );
        if !unchanged {
            // Under tight limits too, and whatever the outcome, nothing panics.
            pipeline(&text, LIMITS_TIGHT)?;
        }
    }
}

/// The model of the header rules, in the order the parser applies them.
fn model_header(header: &Value, limits: TokenLimits) -> Result<(), &'static str> {
    if depth(header) > limits.max_json_depth {
        return Err("json_too_deep");
    }
    let Some(o) = header.as_object() else {
        return Err("malformed_header");
    };
    match o.get("alg") {
        None => return Err("malformed_header"),
        Some(alg) if alg != "RS256" => return Err("unsupported_algorithm"),
        Some(_) => {}
    }
    if o.contains_key("crit") {
        return Err("unsupported_critical_header");
    }
    match o.get("kid") {
        Some(Value::String(k)) if k.len() > limits.max_kid_bytes => Err("invalid_kid"),
        Some(Value::String(k)) if !k.is_empty() => Ok(()),
        _ => Err("missing_kid"),
    }
}

/// The model of the claims rules. `None`: either answer is right (the payload size is
/// within the 2 bytes the base64 estimate cannot tell apart).
fn model_claims(
    claims: &Value,
    decoded_len: usize,
    limits: TokenLimits,
    now: DateTime<Utc>,
    max_age: Option<Duration>,
) -> Option<Result<(), &'static str>> {
    if decoded_len > limits.max_payload_bytes + 2 {
        return Some(Err("payload_too_large"));
    }
    if decoded_len > limits.max_payload_bytes {
        return None;
    }
    Some(model_envelope(claims, limits, now, max_age))
}

fn model_envelope(
    claims: &Value,
    limits: TokenLimits,
    now: DateTime<Utc>,
    max_age: Option<Duration>,
) -> Result<(), &'static str> {
    if depth(claims) > limits.max_json_depth {
        return Err("json_too_deep");
    }
    let Some(o) = claims.as_object() else {
        return Err("invalid_payload");
    };
    fn time(v: &Value) -> Option<DateTime<FixedOffset>> {
        v.as_str().and_then(|s| s.parse().ok())
    }
    // 1 to 256 bytes, no control character (NUL, CR/LF, tab, ...).
    let envelope_id = |name| {
        o.get(name)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control))
    };
    let null_or = |name, ok: fn(&Value) -> bool| o.get(name).is_none_or(|v| v.is_null() || ok(v));
    let timestamp = o.get("timestamp").and_then(time);
    let envelope = envelope_id("type")
        && envelope_id("event_id")
        && timestamp.is_some()
        && null_or("source", Value::is_string)
        && null_or("ip_address", Value::is_string)
        && null_or("event_timestamp", |v| time(v).is_some());
    let Some(timestamp) = timestamp.filter(|_| envelope) else {
        return Err("invalid_payload");
    };
    let now_secs = now.timestamp() as f64;
    for name in ["exp", "nbf"] {
        // Present at all, even `null`, means checked.
        let Some(v) = o.get(name) else {
            continue;
        };
        let Some(n) = v.as_f64() else {
            return Err("invalid_claims");
        };
        if name == "exp" && now_secs > n + 60.0 {
            return Err("token_expired");
        }
        if name == "nbf" && now_secs + 60.0 < n {
            return Err("token_not_yet_valid");
        }
    }
    if let Some(max_age) = max_age {
        let age = now.signed_duration_since(timestamp);
        if age > chrono::TimeDelta::from_std(max_age).expect("an hour") {
            return Err("event_too_old");
        }
        if -age > chrono::TimeDelta::minutes(5) {
            return Err("event_in_future");
        }
    }
    Ok(())
}

/// Decoded-equivalent spellings of a genuine token are refused, each with
/// `invalid_signature`: padding on any segment, the standard alphabet, re-serialized JSON.
#[test]
fn spellings_with_the_same_decoded_bytes_do_not_verify() {
    let f = fixture();
    let token = &f.tokens[0];
    let segs: Vec<&str> = token.split('.').collect();
    let (h, p, s) = (segs[0], segs[1], segs[2]);
    let padded = |seg: &str| URL_SAFE.encode(B64.decode(seg).expect("base64url"));
    let mut variants = vec![
        format!("{}.{p}.{s}", padded(h)),
        format!("{h}.{}.{s}", padded(p)),
        format!("{h}.{p}.{}", padded(s)),
        format!("{h}.{p}.{s}="),
        format!("{h}=.{p}.{s}"),
    ];
    for m in [
        Mutation::StandardAlphabet(1, false),
        Mutation::StandardAlphabet(2, false),
        Mutation::Reserialize(0),
        Mutation::Reserialize(1),
    ] {
        variants.push(String::from_utf8(mutate(token, &[m], &f.tokens)).expect("ASCII"));
    }
    // A segment whose length is a multiple of 4 has no padding to add.
    variants.retain(|v| v != token);
    assert!(variants.len() >= 8, "{variants:?}");
    for v in variants {
        // The standard alphabet is refused outright in the signature segment (`+`, `/`).
        let t = match parse(&v) {
            Ok(t) => t,
            Err(VerifyError::Malformed) if v.contains(['+', '/']) => continue,
            Err(e) => panic!("{v:?} should parse: {e}"),
        };
        assert!(
            matches!(
                t.check_signature(&f.decoding),
                Err(VerifyError::BadSignature)
            ),
            "{v:?} verified"
        );
    }
    // And the one tolerated rewrite.
    let wrapped = format!(" \t\r\n{token}\n\x0c");
    let t = parse(&wrapped).expect("whitespace is tolerated");
    t.check_signature(&f.decoding).expect("same signing input");
    t.into_event(f.now, None).expect("a genuine event");
}

// ---------------------------------------------------------------------------------------
// The HTTP endpoint
// ---------------------------------------------------------------------------------------

/// Every label the endpoint may send with a 4xx, and its status (the README's table).
const LABELS: &[(&str, u16)] = &[
    ("malformed_token", 400),
    ("malformed_header", 400),
    ("unreadable_body", 400),
    ("invalid_payload", 400),
    ("json_too_deep", 400),
    ("event_too_old", 400),
    ("event_in_future", 400),
    ("unsupported_algorithm", 401),
    ("unsupported_critical_header", 401),
    ("missing_kid", 401),
    ("invalid_kid", 401),
    ("unknown_key", 401),
    ("invalid_signature", 401),
    ("token_expired", 401),
    ("token_not_yet_valid", 401),
    ("invalid_claims", 401),
    ("body_timeout", 408),
    ("payload_too_large", 413),
    ("token_too_large", 413),
];

#[derive(Debug, Clone)]
enum Body {
    Bytes(Vec<u8>),
    Mutated(usize, Vec<Mutation>),
}

/// One receiver (inline mode, a recorder on `*`) for all 256 cases, on one runtime: every
/// body that is not a genuine token gets a 4xx `{"error": <label>}` whose label matches
/// its status, never a 200 or a 5xx, and no handler ever runs. A genuine token is then
/// accepted, so the refusals were not the server being unable to accept anything.
#[test]
fn endpoint_refuses_hostile_bodies_with_a_labelled_4xx_and_runs_no_handler() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (key, _jwks, server, all) = rt.block_on(async {
        let key = key();
        let jwks = JwksServer::start(&[&key]).await;
        let all = Recorder::new();
        let registry = Registry::builder().handler("all", &["*"], all.clone());
        let server = TestServer::with_handlers(&jwks, registry).await;
        server.wait_for_keys().await;
        (key, jwks, server, all)
    });
    let tokens = genuine_tokens(&key);
    let bodies = prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..1024).prop_map(Body::Bytes),
        2 => token_alphabet_bytes().prop_map(Body::Bytes),
        1 => (segment(), segment(), segment())
            .prop_map(|(h, p, s)| Body::Bytes(format!("{h}.{p}.{s}").into_bytes())),
        1 => (header_value(), payload_value()).prop_map(|(h, p)| {
            let enc = |v: &Value| B64.encode(serde_json::to_vec(v).expect("JSON"));
            Body::Bytes(format!("{}.{}.", enc(&h), enc(&p)).into_bytes())
        }),
        6 => mutated_token(tokens.len()).prop_map(|(t, m)| Body::Mutated(t, m)),
    ];

    let mut runner = TestRunner::new(config(256));
    let result = runner.run(&bodies, |body| {
        let bytes = match &body {
            Body::Bytes(b) => b.clone(),
            Body::Mutated(t, edits) => {
                let bytes = mutate(&tokens[*t], edits, &tokens);
                // Whitespace around a genuine token, or splicing in all of another one, is
                // accepted: the parser property covers those.
                prop_assume!(tokens.iter().all(|g| bytes.trim_ascii() != g.as_bytes()));
                bytes
            }
        };
        let (status, reply) = rt.block_on(server.post(ROUTE, bytes.clone(), None));
        let shown = String::from_utf8_lossy(&bytes);
        prop_assert!(
            (400..500).contains(&status),
            "{status} {reply} for {shown:?}"
        );
        let reason = reply.get("error").and_then(Value::as_str);
        prop_assert_eq!(
            reply.as_object().map(Map::len),
            Some(1),
            "{} {} for {:?}",
            status,
            reply,
            shown
        );
        let listed = LABELS.iter().find(|(l, _)| Some(*l) == reason);
        prop_assert_eq!(
            listed.map(|(_, s)| *s),
            Some(status),
            "{} {} for {:?}",
            status,
            reply,
            shown
        );
        prop_assert!(all.events().is_empty(), "a handler ran for {shown:?}");
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }

    // The same server accepts a genuine token: the refusals above were for their input.
    let genuine = sign_event(&key, event("user.created", json!({"user": {"id": "kp_9"}})));
    let answer = rt.block_on(server.deliver(genuine));
    assert_eq!(answer, (200, ok()));
    assert_eq!(all.types(), ["user.created"]);
    let junk = rt.block_on(server.deliver("a.b.c".into()));
    assert_eq!(junk, (400, error("malformed_token")));
}
