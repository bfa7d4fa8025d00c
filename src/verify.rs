//! Token parsing and RS256 verification. Knows nothing of HTTP.
//!
//! The pure steps are synchronous: [`parse`] splits and decodes the token,
//! [`UnverifiedToken::check_signature`] checks it against one key, and
//! [`UnverifiedToken::into_event`] reads the claims. [`Verifier::verify`] is async only
//! because an unknown `kid` may refresh the key set.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use chrono::{DateTime, FixedOffset, Utc};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::Value;

use crate::event::{Delivery, Event, Source};
use crate::jwks::KeyStore;

/// Clock skew allowed on `exp` and `nbf` when a token carries them.
pub const CLOCK_LEEWAY: Duration = Duration::from_secs(60);
/// How far in the future a payload `timestamp` may be when a maximum age is set.
pub const FUTURE_SKEW: Duration = Duration::from_secs(5 * 60);

/// base64url as JWTs write it; padding is tolerated, not required.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a token was refused. Each variant maps to one status and reason label in
/// [`crate::reply`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// Not three base64url segments.
    #[error("token is not three base64url segments")]
    Malformed,
    /// The header is not a JSON object with a string `alg`.
    #[error("token header is not a JSON object with a string alg")]
    MalformedHeader,
    /// `alg` is anything but `RS256` (exact case); holds the value as JSON (a string quoted).
    #[error("algorithm {0} is not accepted; Kinde signs with RS256 only")]
    UnsupportedAlgorithm(String),
    /// A `crit` header: it names extensions this verifier does not implement.
    #[error("token has a crit header")]
    CriticalHeader,
    /// No `kid` in the header.
    #[error("token header has no kid")]
    MissingKid,
    /// The `kid` is not in the key set, even after a refresh.
    #[error("no signing key with kid {0:?} in the JWKS")]
    UnknownKey(String),
    /// No key set could be had: the JWKS endpoint is unreachable or broken.
    #[error("signing keys are unavailable: {0}")]
    KeysUnavailable(String),
    /// The signature does not match.
    #[error("signature does not verify")]
    BadSignature,
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not valid yet")]
    NotYetValid,
    /// `exp` or `nbf` is present but not a number.
    #[error("registered claim {0} is not a number")]
    BadClaim(&'static str),
    /// The verified payload is not a Kinde event envelope.
    #[error("payload is not a Kinde event: {0}")]
    InvalidPayload(String),
    /// The payload `timestamp` is older than the configured maximum age.
    #[error("event is older than the maximum event age")]
    EventTooOld,
    /// The payload `timestamp` is too far in the future.
    #[error("event timestamp is in the future")]
    EventInFuture,
    /// The token is longer than [`TokenLimits::max_token_bytes`].
    #[error("token is longer than the limit")]
    TokenTooLarge,
    /// The decoded payload is larger than [`TokenLimits::max_payload_bytes`].
    #[error("decoded payload is larger than the limit")]
    PayloadTooLarge,
    /// The header or payload JSON nests deeper than [`TokenLimits::max_json_depth`].
    #[error("JSON nests deeper than the limit")]
    TooDeep,
    /// The `kid` is longer than [`TokenLimits::max_kid_bytes`]: no key has such a kid.
    #[error("kid is longer than the limit")]
    KidTooLong,
}

/// What one token may cost to parse; see `[limits]` in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLimits {
    /// Longest token, in bytes.
    pub max_token_bytes: usize,
    /// Largest decoded payload, in bytes.
    pub max_payload_bytes: usize,
    /// Deepest JSON nesting in header and payload.
    pub max_json_depth: usize,
    /// Longest `kid`, in bytes.
    pub max_kid_bytes: usize,
}

impl Default for TokenLimits {
    fn default() -> Self {
        Self {
            max_token_bytes: 64 * 1024,
            max_payload_bytes: 32 * 1024,
            max_json_depth: 32,
            max_kid_bytes: 256,
        }
    }
}

/// Whether `json` nests arrays and objects deeper than `max` (strings are skipped), so a
/// hostile document is refused before a recursive parser walks it.
pub fn too_deep(json: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The JOSE header fields that matter here; everything else is ignored, and nothing in it
/// (`jku`, `x5u`, `jwk`, `x5c`) ever widens trust.
#[derive(Debug, Deserialize)]
struct Header {
    alg: Value,
    #[serde(default)]
    kid: Option<Value>,
    /// Present at all (even `null`) means the sender requires extensions we do not know.
    #[serde(default, deserialize_with = "present")]
    crit: Option<Value>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// A token split and its header read; neither signature nor claims checked yet.
#[derive(Debug)]
pub struct UnverifiedToken<'a> {
    limits: TokenLimits,
    kid: String,
    signing_input: &'a str,
    payload: &'a str,
    signature: &'a str,
}

/// [`parse_with`] under the default [`TokenLimits`].
pub fn parse(token: &str) -> Result<UnverifiedToken<'_>, VerifyError> {
    parse_with(token, TokenLimits::default())
}

/// Split a compact JWT and check its header: three base64url segments, a JSON-object
/// header, `alg` exactly `RS256`, no `crit`, a string `kid`, all within `limits`.
/// Surrounding ASCII whitespace is tolerated.
pub fn parse_with(token: &str, limits: TokenLimits) -> Result<UnverifiedToken<'_>, VerifyError> {
    let token = token.trim_ascii();
    if token.len() > limits.max_token_bytes {
        return Err(VerifyError::TokenTooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed);
    };
    let is_b64 = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
    };
    if header.is_empty() || payload.is_empty() || !is_b64(payload) || !is_b64(signature) {
        return Err(VerifyError::Malformed);
    }
    let header_bytes = B64.decode(header).map_err(|_| VerifyError::Malformed)?;
    let header_len = header.len();
    if too_deep(&header_bytes, limits.max_json_depth) {
        return Err(VerifyError::TooDeep);
    }
    // A struct also deserializes from a JSON array: insist on an object.
    if header_bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(VerifyError::MalformedHeader);
    }
    let header: Header =
        serde_json::from_slice(&header_bytes).map_err(|_| VerifyError::MalformedHeader)?;
    match header.alg {
        Value::String(alg) if alg == "RS256" => {}
        // Anything else, a string in another case or not a string at all, is refused;
        // the message keeps a short prefix only, since the value is the sender's.
        other => {
            let shown: String = other.to_string().chars().take(32).collect();
            return Err(VerifyError::UnsupportedAlgorithm(shown));
        }
    }
    if header.crit.is_some() {
        return Err(VerifyError::CriticalHeader);
    }
    let kid = match header.kid {
        Some(Value::String(kid)) if kid.len() > limits.max_kid_bytes => {
            return Err(VerifyError::KidTooLong);
        }
        Some(Value::String(kid)) if !kid.is_empty() => kid,
        _ => return Err(VerifyError::MissingKid),
    };
    let signing_input = &token[..header_len + 1 + payload.len()];
    Ok(UnverifiedToken {
        limits,
        kid,
        signing_input,
        payload,
        signature,
    })
}

/// The envelope as Kinde signs it, plus the registered claims checked when present.
#[derive(Deserialize)]
struct Claims {
    #[serde(rename = "type")]
    event_type: String,
    event_id: String,
    timestamp: DateTime<FixedOffset>,
    #[serde(default)]
    source: Source,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    event_timestamp: Option<DateTime<FixedOffset>>,
    #[serde(default)]
    ip_address: Option<String>,
    /// Present at all (even `null`) means checked: a non-number is refused.
    #[serde(default, deserialize_with = "present")]
    exp: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    nbf: Option<Value>,
}

impl UnverifiedToken<'_> {
    /// The `kid` the token names.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Check the RS256 signature against `key`. The algorithm is pinned here, never read
    /// from the token or the key.
    pub fn check_signature(&self, key: &DecodingKey) -> Result<(), VerifyError> {
        match jsonwebtoken::crypto::verify(
            self.signature,
            self.signing_input.as_bytes(),
            key,
            Algorithm::RS256,
        ) {
            Ok(true) => Ok(()),
            _ => Err(VerifyError::BadSignature),
        }
    }

    /// Read the claims of a token whose signature was checked: `exp`/`nbf` when present,
    /// then the Kinde envelope (a string `type` and `event_id` of 1 to 256 bytes without
    /// control characters, an RFC 3339 `timestamp`). `now` is passed in so the pure part stays testable.
    pub fn into_event(
        self,
        now: DateTime<Utc>,
        max_event_age: Option<Duration>,
    ) -> Result<Event, VerifyError> {
        // base64 holds 3 bytes in 4 characters (padding aside): refuse, exactly, before decoding.
        if self.payload.trim_end_matches('=').len() * 3 / 4 > self.limits.max_payload_bytes {
            return Err(VerifyError::PayloadTooLarge);
        }
        let bytes = B64
            .decode(self.payload)
            .map_err(|_| VerifyError::Malformed)?;
        if too_deep(&bytes, self.limits.max_json_depth) {
            return Err(VerifyError::TooDeep);
        }
        let json = String::from_utf8(bytes)
            .map_err(|_| VerifyError::InvalidPayload("not UTF-8".into()))?;
        let (event, exp, nbf) = read_claims(json, now)?;
        let now_secs = now.timestamp() as f64;
        let leeway = CLOCK_LEEWAY.as_secs_f64();
        if let Some(exp) = exp {
            let exp = exp.as_f64().ok_or(VerifyError::BadClaim("exp"))?;
            if now_secs > exp + leeway {
                return Err(VerifyError::Expired);
            }
        }
        if let Some(nbf) = nbf {
            let nbf = nbf.as_f64().ok_or(VerifyError::BadClaim("nbf"))?;
            if now_secs + leeway < nbf {
                return Err(VerifyError::NotYetValid);
            }
        }
        if let Some(max_age) = max_event_age {
            let age = now.signed_duration_since(event.timestamp);
            if age.to_std().is_ok_and(|age| age > max_age) {
                return Err(VerifyError::EventTooOld);
            }
            if (-age).to_std().is_ok_and(|ahead| ahead > FUTURE_SKEW) {
                return Err(VerifyError::EventInFuture);
            }
        }
        Ok(event)
    }
}

/// The longest `type` or `event_id` accepted, in bytes. Kinde's are under 40 (`event_` and
/// 32 hex digits); both are stored and indexed (PostgreSQL cannot index a key of more
/// than about 2.7 KB), logged, and turned into NATS subjects and headers.
pub const MAX_ENVELOPE_ID_BYTES: usize = 256;

/// Whether `value` can be an event's `type` or `event_id`: not empty, at most
/// [`MAX_ENVELOPE_ID_BYTES`], no control character (a NUL cannot be stored in PostgreSQL
/// TEXT, CR/LF would start forged log lines).
fn is_envelope_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_ENVELOPE_ID_BYTES
        && !value.chars().any(char::is_control)
}

/// Read a claims object into an [`Event`] (delivery facts left at their defaults, bar
/// `received_at`), returning `exp` and `nbf` for the caller to check. Also used to rebuild
/// an event from the claims kept in the inbox.
pub(crate) fn read_claims(
    json: String,
    received_at: DateTime<Utc>,
) -> Result<(Event, Option<Value>, Option<Value>), VerifyError> {
    // A struct also deserializes from a JSON array: insist on an object.
    if json.trim_ascii_start().as_bytes().first() != Some(&b'{') {
        return Err(VerifyError::InvalidPayload("not a JSON object".into()));
    }
    let claims: Claims =
        serde_json::from_str(&json).map_err(|e| VerifyError::InvalidPayload(e.to_string()))?;
    if !is_envelope_id(&claims.event_type) || !is_envelope_id(&claims.event_id) {
        return Err(VerifyError::InvalidPayload(format!(
            "type and event_id must be 1 to {MAX_ENVELOPE_ID_BYTES} bytes without control characters"
        )));
    }
    let event = Event {
        event_type: claims.event_type,
        event_id: claims.event_id,
        timestamp: claims.timestamp,
        source: claims.source,
        data: claims.data,
        event_timestamp: claims.event_timestamp,
        ip_address: claims.ip_address,
        delivery: Delivery {
            received_at,
            ..Delivery::default()
        },
        claims: Arc::from(json),
    };
    Ok((event, claims.exp, claims.nbf))
}

/// Verifies Kinde webhook tokens against a [`KeyStore`].
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: KeyStore,
    max_event_age: Option<Duration>,
    limits: TokenLimits,
}

impl Verifier {
    /// A verifier using `keys`, refusing events older than `max_event_age` when set.
    pub fn new(keys: KeyStore, max_event_age: Option<Duration>) -> Self {
        Self {
            keys,
            max_event_age,
            limits: TokenLimits::default(),
        }
    }

    /// Parse tokens under `limits` instead of the defaults.
    pub fn with_limits(mut self, limits: TokenLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The key store behind this verifier.
    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    /// Verify a token and return its event. The delivery facts other than `received_at`
    /// are left for the caller to fill in.
    pub async fn verify(&self, token: &str) -> Result<Event, VerifyError> {
        let token = parse_with(token, self.limits)?;
        let key = self.keys.key_for(token.kid()).await?;
        token.check_signature(&key)?;
        token.into_event(Utc::now(), self.max_event_age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::SigningKey;
    use serde_json::json;

    fn claims() -> Value {
        json!({"type": "user.created", "event_id": "event_1", "timestamp": "2024-05-01T17:41:45.592145+10:00",
               "source": "admin", "data": {"user": {"id": "kp_1"}}})
    }

    fn b64(v: &Value) -> String {
        B64.encode(serde_json::to_vec(v).unwrap())
    }

    fn key() -> (SigningKey, DecodingKey) {
        let k = SigningKey::generate().unwrap();
        let d = k.decoding_key();
        (k, d)
    }

    #[test]
    fn a_signed_kinde_token_verifies_without_registered_claims() {
        let (k, d) = key();
        let token = k.sign(&claims());
        let padded = format!("  {token}\n");
        let t = parse(&padded).unwrap();
        assert_eq!(t.kid(), k.kid());
        t.check_signature(&d).unwrap();
        let e = t.into_event(Utc::now(), None).unwrap();
        assert_eq!(e.event_type, "user.created");
        assert_eq!(e.timestamp.offset().local_minus_utc(), 10 * 3600);
        assert_eq!(e.source, Source::Admin);
    }

    #[test]
    fn malformed_tokens() {
        for t in ["", "abc", "a.b", "a.b.c.d", "!!.e30.x", ".e30.x"] {
            assert!(matches!(parse(t), Err(VerifyError::Malformed)), "{t:?}");
        }
        let not_object = format!("{}.{}.sig", B64.encode("[1]"), b64(&claims()));
        assert!(matches!(
            parse(&not_object),
            Err(VerifyError::MalformedHeader)
        ));
    }

    #[test]
    fn only_rs256_in_exact_case() {
        for alg in [
            json!("none"),
            json!("HS256"),
            json!("rs256"),
            json!("RS512"),
            json!("PS256"),
            json!(256),
            json!(["RS256"]),
        ] {
            let t = format!(
                "{}.{}.",
                b64(&json!({"alg": alg, "kid": "k"})),
                b64(&claims())
            );
            assert!(
                matches!(parse(&t), Err(VerifyError::UnsupportedAlgorithm(_))),
                "{alg}"
            );
        }
        let t = format!("{}.{}.", b64(&json!({"alg": "HS256"})), b64(&claims()));
        let message = parse(&t).unwrap_err().to_string();
        assert_eq!(
            message,
            r#"algorithm "HS256" is not accepted; Kinde signs with RS256 only"#
        );
    }

    #[test]
    fn missing_kid_and_crit() {
        let t = format!("{}.{}.x", b64(&json!({"alg": "RS256"})), b64(&claims()));
        assert!(matches!(parse(&t), Err(VerifyError::MissingKid)));
        for crit in [json!(["b64"]), json!([]), json!(null)] {
            let header = json!({"alg": "RS256", "kid": "k", "crit": crit});
            let t = format!("{}.{}.x", b64(&header), b64(&claims()));
            assert!(
                matches!(parse(&t), Err(VerifyError::CriticalHeader)),
                "{crit}"
            );
        }
    }

    #[test]
    fn bad_signature() {
        let (k, _) = key();
        let (_, other) = key();
        let token = k.sign(&claims());
        assert!(matches!(
            parse(&token).unwrap().check_signature(&other),
            Err(VerifyError::BadSignature)
        ));
    }

    #[test]
    fn exp_and_nbf_are_checked_when_present() {
        let (k, _) = key();
        let now = Utc::now();
        let mut c = claims();
        c["exp"] = json!(now.timestamp() - 3600);
        let t = k.sign(&c);
        assert!(matches!(
            parse(&t).unwrap().into_event(now, None),
            Err(VerifyError::Expired)
        ));
        let mut c = claims();
        c["nbf"] = json!(now.timestamp() + 3600);
        let t = k.sign(&c);
        assert!(matches!(
            parse(&t).unwrap().into_event(now, None),
            Err(VerifyError::NotYetValid)
        ));
        for bad in [json!(null), json!("soon")] {
            let mut c = claims();
            c["nbf"] = bad;
            assert!(matches!(
                parse(&k.sign(&c)).unwrap().into_event(now, None),
                Err(VerifyError::BadClaim("nbf"))
            ));
        }
        let mut c = claims();
        c["exp"] = json!(null);
        assert!(matches!(
            parse(&k.sign(&c)).unwrap().into_event(now, None),
            Err(VerifyError::BadClaim("exp"))
        ));
        let mut c = claims();
        c["exp"] = json!("soon");
        let t = k.sign(&c);
        assert!(matches!(
            parse(&t).unwrap().into_event(now, None),
            Err(VerifyError::BadClaim("exp"))
        ));
        let mut c = claims();
        c["aud"] = json!("someone");
        c["iss"] = json!("elsewhere");
        assert!(parse(&k.sign(&c)).unwrap().into_event(now, None).is_ok());
    }

    #[test]
    fn payload_must_be_a_kinde_envelope() {
        let (k, _) = key();
        for bad in [
            json!([1]),
            // The envelope's fields in order, as an array: serde would take it for the struct.
            json!([
                "user.created",
                "event_1",
                "2024-05-01T00:00:00Z",
                "admin",
                {},
                null,
                null,
                null,
                null
            ]),
            json!({"type": "", "event_id": "e", "timestamp": "2024-05-01T00:00:00Z"}),
            json!({"type": 5, "event_id": "e", "timestamp": "2024-05-01T00:00:00Z"}),
            json!({"type": "user.created", "timestamp": "2024-05-01T00:00:00Z"}),
            json!({"type": "user.created", "event_id": "e\u{0}", "timestamp": "2024-05-01T00:00:00Z"}),
            json!({"type": "user\ncreated", "event_id": "e", "timestamp": "2024-05-01T00:00:00Z"}),
            json!({"type": "user.created", "event_id": "e".repeat(257), "timestamp": "2024-05-01T00:00:00Z"}),
            json!({"type": "u".repeat(257), "event_id": "e", "timestamp": "2024-05-01T00:00:00Z"}),
        ] {
            let r = parse(&k.sign(&bad)).unwrap().into_event(Utc::now(), None);
            assert!(matches!(r, Err(VerifyError::InvalidPayload(_))), "{bad}");
        }
        let longest = json!({"type": "u".repeat(256), "event_id": "é".repeat(128), "timestamp": "2024-05-01T00:00:00Z"});
        assert!(
            parse(&k.sign(&longest))
                .unwrap()
                .into_event(Utc::now(), None)
                .is_ok()
        );
    }

    #[test]
    fn limits_refuse_before_any_key_is_looked_up() {
        let (k, _) = key();
        let tight = TokenLimits {
            max_token_bytes: 1024,
            max_payload_bytes: 1024,
            max_json_depth: 8,
            max_kid_bytes: 64,
        };
        let mut big = claims();
        big["data"]["blob"] = json!("x".repeat(2000));
        assert!(matches!(
            parse_with(&k.sign(&big), tight),
            Err(VerifyError::TokenTooLarge)
        ));
        let loose = TokenLimits {
            max_token_bytes: 1 << 20,
            ..tight
        };
        let t = k.sign(&big);
        assert!(matches!(
            parse_with(&t, loose).unwrap().into_event(Utc::now(), None),
            Err(VerifyError::PayloadTooLarge)
        ));
        let mut deep = claims();
        deep["data"]["nest"] =
            serde_json::from_str(&format!("{}{}", "[".repeat(20), "]".repeat(20))).unwrap();
        let t = k.sign(&deep);
        assert!(matches!(
            parse_with(&t, tight).unwrap().into_event(Utc::now(), None),
            Err(VerifyError::TooDeep)
        ));
        let header = json!({"alg": "RS256", "kid": "k".repeat(100)});
        assert!(matches!(
            parse_with(&k.sign_with_header(&header, &claims()), tight),
            Err(VerifyError::KidTooLong)
        ));
        let header = json!({"alg": "RS256", "kid": "k", "x": [[[[[[[[[[[]]]]]]]]]]]});
        assert!(matches!(
            parse_with(&k.sign_with_header(&header, &claims()), tight),
            Err(VerifyError::TooDeep)
        ));
    }

    #[test]
    fn depth_scan_skips_strings() {
        assert!(!too_deep(br#"{"a":"[[[[[[[[[[[[[[[[[[[[\"["}"#, 2));
        assert!(too_deep(b"[[[1]]]", 2));
        assert!(!too_deep(b"[[1],[2],[3]]", 2));
    }

    #[test]
    fn maximum_event_age() {
        let (k, _) = key();
        let now = Utc::now();
        let mut c = claims();
        c["timestamp"] = json!((now - chrono::Duration::hours(2)).to_rfc3339());
        let t = k.sign(&c);
        let hour = Some(Duration::from_secs(3600));
        assert!(matches!(
            parse(&t).unwrap().into_event(now, hour),
            Err(VerifyError::EventTooOld)
        ));
        assert!(parse(&t).unwrap().into_event(now, None).is_ok());
        c["timestamp"] = json!((now + chrono::Duration::hours(2)).to_rfc3339());
        let t = k.sign(&c);
        assert!(matches!(
            parse(&t).unwrap().into_event(now, hour),
            Err(VerifyError::EventInFuture)
        ));
    }
}
