//! Fuzz the webhook token parser: `parse_with`, `check_signature`, `into_event`, and the
//! depth scan `too_deep`, on arbitrary bytes. See `fuzz/README.md`.
//!
//! The first byte picks a mode; the rest is the input:
//! - bit 0 clear: the rest is the token itself (lossy UTF-8), as the endpoint receives it.
//! - bit 0 set: the rest is `header JSON` `\n` `payload JSON`; the target base64url-encodes
//!   both, so the fuzzer works on JSON directly, and (bit 1) signs them with the fixed key,
//!   so the claims are read after a signature that verifies.
//! - bit 2: tight limits instead of the defaults; bit 3: a maximum event age of an hour.
//!
//! Beyond "no panic", it checks: a token we signed verifies; a parsed token is within its
//! limits; an event has a non-empty type and id and claims within the depth limit; and
//! `too_deep` agrees with the nesting depth of any JSON document serde_json can read.

#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::{DateTime, TimeZone, Utc};
use jsonwebtoken::DecodingKey;
use kinde_webhooks::signing::SigningKey;
use kinde_webhooks::verify::{TokenLimits, parse_with, too_deep};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

struct Fixed {
    key: SigningKey,
    decoding: DecodingKey,
    now: DateTime<Utc>,
}

/// One key per fuzzing process: a crash never depends on which key (the claims are read
/// whatever the signature says), so none is kept on disk.
static FIXED: LazyLock<Fixed> = LazyLock::new(|| {
    let key = SigningKey::generate().expect("RSA key");
    let decoding = key.decoding_key();
    Fixed {
        key,
        decoding,
        // A fixed "now", so an input behaves the same on every run.
        now: Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap(),
    }
});

const TIGHT: TokenLimits = TokenLimits {
    max_token_bytes: 512,
    max_payload_bytes: 200,
    max_json_depth: 4,
    max_kid_bytes: 16,
};

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// `too_deep` must agree with the real nesting of every document serde_json accepts.
fn check_depth_scan(json: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<Value>(json) {
        let d = depth(&v);
        for max in [0, 1, 2, 3, 4, 8, 32] {
            assert_eq!(too_deep(json, max), d > max, "depth {d}, max {max}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = &*FIXED;
    let limits = if mode & 4 != 0 {
        TIGHT
    } else {
        TokenLimits::default()
    };
    let max_age = (mode & 8 != 0).then_some(Duration::from_secs(3600));
    let mut signed = false;
    let token = if mode & 1 == 0 {
        check_depth_scan(rest);
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let (header, payload) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &b"{}"[..]),
        };
        check_depth_scan(header);
        check_depth_scan(payload);
        let input = format!("{}.{}", B64.encode(header), B64.encode(payload));
        if mode & 2 != 0 && input.len() <= limits.max_token_bytes {
            signed = true;
            let signature = f.key.sign_bytes(input.as_bytes());
            format!("{input}.{}", B64.encode(signature))
        } else {
            format!("{input}.")
        }
    };

    let Ok(parsed) = parse_with(&token, limits) else {
        return;
    };
    assert!(token.trim_ascii().len() <= limits.max_token_bytes);
    assert!(!parsed.kid().is_empty() && parsed.kid().len() <= limits.max_kid_bytes);
    let verified = parsed.check_signature(&f.decoding).is_ok();
    if signed {
        assert!(verified, "a token signed by the key must verify");
    }
    if let Ok(event) = parsed.into_event(f.now, max_age) {
        assert!(!event.event_type.is_empty() && !event.event_id.is_empty());
        let claims: Value = serde_json::from_str(&event.claims).expect("claims are JSON");
        assert!(claims.is_object());
        assert!(depth(&claims) <= limits.max_json_depth);
        // The size check estimates from the base64 length: at most 2 bytes over.
        assert!(event.claims.len() <= limits.max_payload_bytes + 2);
    }
});
