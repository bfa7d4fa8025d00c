//! What the integration tests share beyond the public test kit
//! (`kinde_webhooks::testing`): raw signing for hand-made tokens, the fixture files and the
//! reply bodies.

use std::path::PathBuf;

use kinde_webhooks::config::DEFAULT_ROUTE;
use kinde_webhooks::signing::{SigningKey, complete_claims};
pub(crate) use kinde_webhooks::testing::{
    DEADLINE, JwksServer, Recorder, TestServer, eventually, send,
};
use serde_json::{Value, json};

/// The route a server without `[[routes]]` serves.
pub(crate) const ROUTE: &str = DEFAULT_ROUTE;

/// A fresh RSA-2048 signing key with a Kinde-style `kid`.
pub(crate) fn key() -> SigningKey {
    SigningKey::generate().expect("generate an RSA key")
}

/// A Kinde event of `event_type` with `data`; `event_id`, `timestamp` and `source` are
/// filled in by [`sign_event`].
pub(crate) fn event(event_type: &str, data: Value) -> Value {
    json!({ "type": event_type, "data": data })
}

/// Sign `claims` as Kinde does, completing `event_id`, `timestamp` and `source` if missing.
pub(crate) fn sign_event(key: &SigningKey, claims: Value) -> String {
    key.sign(&complete_claims(claims))
}

/// The acknowledgement body.
pub(crate) fn ok() -> Value {
    json!({ "status": "ok" })
}

/// A refusal body with its reason label.
pub(crate) fn error(reason: &str) -> Value {
    json!({ "error": reason })
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The sample payload `tests/fixtures/<name>.json`.
pub(crate) fn fixture(name: &str) -> Value {
    let path = fixtures_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse fixture {}: {e}", path.display()))
}

/// The names of every fixture, sorted, without `.json`.
pub(crate) fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .expect("read tests/fixtures")
        .map(|entry| {
            entry
                .expect("fixture entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter_map(|name| name.strip_suffix(".json").map(str::to_owned))
        .collect();
    names.sort();
    names
}
