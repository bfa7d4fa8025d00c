//! The key store: fetches the tenant's JWKS, keeps the signing keys in memory, and refreshes
//! them when a token names a `kid` it does not hold.
//!
//! Fetches are single-flight (concurrent misses share one fetch) and spaced by a cooldown
//! (failed fetches too), so forged `kid`s cannot hammer the JWKS endpoint. A failed fetch
//! keeps the keys already held.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::DecodingKey;
use serde::Deserialize;

use crate::verify::VerifyError;

/// Connect timeout of a JWKS fetch.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Total timeout of a JWKS fetch.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest JWKS document read; a real one is a few KiB.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// The smallest RSA modulus accepted.
pub const MIN_RSA_BITS: usize = 2048;
/// The longest a request waits for a JWKS fetch another request started; a hanging JWKS
/// must not hold every unknown-kid request for the whole fetch timeout.
pub const FETCH_WAIT: Duration = Duration::from_secs(2);
/// The shortest refresh interval a JWKS's `Cache-Control: max-age` can ask for.
pub const MIN_REFRESH: Duration = Duration::from_secs(60);
/// The first retry delay while no key set has been loaded yet.
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// Why a JWKS fetch failed. The old keys stay in use.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// The request did not complete (connect, timeout, TLS).
    #[error("JWKS request to {url} failed: {source}")]
    Request {
        /// The JWKS URL.
        url: String,
        /// What reqwest said.
        #[source]
        source: reqwest::Error,
    },
    /// The endpoint answered with a non-2xx status.
    #[error("JWKS endpoint {url} answered {status}")]
    Status {
        /// The JWKS URL.
        url: String,
        /// The status it answered.
        status: u16,
    },
    /// The body was larger than [`MAX_JWKS_BYTES`].
    #[error("JWKS from {0} is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge(String),
    /// The body is not a JWKS document.
    #[error("JWKS from {url} is not a key set: {message}")]
    Invalid {
        /// The JWKS URL.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The set holds no RSA signing key.
    #[error("JWKS from {0} holds no usable RS256 signing key")]
    NoUsableKeys(String),
}

/// Signing keys by `kid`.
#[derive(Clone, Default)]
struct KeySet {
    keys: HashMap<String, Arc<DecodingKey>>,
    /// When this set was fetched; `None` before the first load.
    loaded_at: Option<Instant>,
}

/// When unknown kids last caused a fetch, for the cooldown.
#[derive(Debug, Default)]
struct FetchState {
    /// When an unknown `kid` last caused a fetch: the cooldown counts from here, so
    /// start-up and periodic refreshes do not delay picking up a rotated key.
    last_kid_fetch: Option<Instant>,
}

struct Inner {
    url: String,
    client: reqwest::Client,
    cooldown: Duration,
    keys: RwLock<Arc<KeySet>>,
    /// Bumped by every fetch attempt; a request that saw an older value knows a fetch
    /// happened after it looked, and does not fetch again.
    generation: AtomicU64,
    /// Held for the whole of a fetch (by the fetch's own task when an unknown kid started
    /// it), so fetches never overlap.
    fetch: Arc<tokio::sync::Mutex<FetchState>>,
    fetches: AtomicU64,
    /// The last JWKS response's `Cache-Control: max-age`, which paces the refresher.
    max_age: std::sync::Mutex<Option<Duration>>,
}

/// Cached signing keys of one issuer. Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct KeyStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Key material stays out of logs; the kids are public and useful.
        let kids: Vec<String> = self.read().keys.keys().cloned().collect();
        f.debug_struct("KeyStore")
            .field("url", &self.inner.url)
            .field("kids", &kids)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
}

/// Turn a JWKS document into signing keys. Keys that are not RS256 signing keys (other
/// `kty`, `use` other than `sig`, `alg` other than RS256, moduli under 2048 bits, no `kid`)
/// are skipped without spoiling the rest.
pub fn parse_jwks(body: &[u8]) -> Result<HashMap<String, DecodingKey>, String> {
    let set: JwkSet = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut keys = HashMap::new();
    for raw in set.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
            continue;
        };
        let usable = jwk.kty == "RSA"
            && jwk.use_.as_deref().is_none_or(|u| u == "sig")
            && jwk.alg.as_deref().is_none_or(|a| a == "RS256");
        let (true, Some(kid), Some(n), Some(e)) = (usable, jwk.kid, jwk.n, jwk.e) else {
            continue;
        };
        let Ok(modulus) = b64.decode(n.trim_end_matches('=')) else {
            continue;
        };
        let Ok(exponent) = b64.decode(e.trim_end_matches('=')) else {
            continue;
        };
        let significant = modulus.iter().skip_while(|b| **b == 0).count();
        if significant * 8 < MIN_RSA_BITS || exponent.is_empty() {
            tracing::warn!(%kid, bits = significant * 8, "JWKS key skipped: RSA modulus under 2048 bits");
            continue;
        }
        keys.insert(
            kid,
            DecodingKey::from_rsa_raw_components(&modulus, &exponent),
        );
    }
    Ok(keys)
}

/// An error with its causes, `outer: inner: root`: reqwest keeps "connection refused" in
/// the source chain, not in its own message.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The HTTP client JWKS fetches use: connect and total timeouts, no redirects (keys come
/// from the configured URL only).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

/// Fetch and parse the JWKS at `url` under the size cap, with the response's
/// `Cache-Control: max-age`.
pub async fn fetch_key_set(
    client: &reqwest::Client,
    url: &str,
) -> Result<(HashMap<String, DecodingKey>, Option<Duration>), JwksError> {
    let url = &url.to_owned();
    let request = |source| JwksError::Request {
        url: url.clone(),
        source,
    };
    let mut response = client.get(url).send().await.map_err(request)?;
    if !response.status().is_success() {
        return Err(JwksError::Status {
            url: url.clone(),
            status: response.status().as_u16(),
        });
    }
    let max_age = response
        .headers()
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(cache_max_age);
    if response
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        return Err(JwksError::TooLarge(url.clone()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(request)? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge(url.clone()));
        }
        body.extend_from_slice(&chunk);
    }
    let keys = parse_jwks(&body).map_err(|message| JwksError::Invalid {
        url: url.clone(),
        message,
    })?;
    if keys.is_empty() {
        return Err(JwksError::NoUsableKeys(url.clone()));
    }
    Ok((keys, max_age))
}

/// `max-age` from a `Cache-Control` value; `no-cache`/`no-store` count as 0.
pub fn cache_max_age(value: &str) -> Option<Duration> {
    let mut age = None;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(Duration::ZERO);
        }
        if let Some(n) = lower.strip_prefix("max-age=") {
            age = n
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    age
}

impl KeyStore {
    /// A store for the JWKS at `url`, holding no keys until the first fetch.
    pub fn new(url: impl Into<String>, cooldown: Duration) -> Self {
        let client = client();
        Self {
            inner: Arc::new(Inner {
                url: url.into(),
                client,
                cooldown,
                keys: RwLock::new(Arc::default()),
                generation: AtomicU64::new(0),
                fetch: Arc::new(tokio::sync::Mutex::new(FetchState::default())),
                fetches: AtomicU64::new(0),
                max_age: std::sync::Mutex::new(None),
            }),
        }
    }

    /// The JWKS URL.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// How many fetches were attempted so far.
    pub fn fetch_count(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    /// How long ago the key set was loaded, and how many keys it holds.
    pub fn age_and_count(&self) -> (Option<Duration>, usize) {
        let set = self.read();
        (set.loaded_at.map(|t| t.elapsed()), set.keys.len())
    }

    /// Whether any signing key is held.
    pub fn has_keys(&self) -> bool {
        !self.read().keys.is_empty()
    }

    fn read(&self) -> Arc<KeySet> {
        self.inner
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn lookup(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        self.inner
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys
            .get(kid)
            .cloned()
    }

    /// The key for `kid`. A miss triggers at most one refresh, shared by concurrent misses
    /// (each waits at most [`FETCH_WAIT`] for it) and spaced by the cooldown. A miss while
    /// no key is held at all (the JWKS has been unreachable) is
    /// [`VerifyError::KeysUnavailable`], so the sender retries; otherwise
    /// [`VerifyError::UnknownKey`].
    pub async fn key_for(&self, kid: &str) -> Result<Arc<DecodingKey>, VerifyError> {
        // Read the generation before the map: a fetch finishing in between is then seen.
        let seen = self.inner.generation.load(Ordering::Acquire);
        if let Some(key) = self.lookup(kid) {
            return Ok(key);
        }
        let refused = |store: &KeyStore| {
            // With keys held, an unknown kid is a forgery or a key we may not know yet: 401
            // (Kinde retries either way). Only with no key at all is it the JWKS's fault: 503.
            if store.has_keys() {
                VerifyError::UnknownKey(kid.chars().take(64).collect())
            } else {
                VerifyError::KeysUnavailable("no signing key could be fetched yet".into())
            }
        };
        let lock = self.inner.fetch.clone().lock_owned();
        let Ok(mut state) = tokio::time::timeout(FETCH_WAIT, lock).await else {
            return Err(refused(self));
        };
        if let Some(key) = self.lookup(kid) {
            return Ok(key);
        }
        let fetched_since = self.inner.generation.load(Ordering::Acquire) != seen;
        let cooling = state
            .last_kid_fetch
            .is_some_and(|t| t.elapsed() < self.inner.cooldown);
        if !fetched_since && !cooling {
            // The fetch runs in a task of its own that holds the fetch lock to its end: a
            // request given up midway (its client hung up) neither cuts it short nor lets
            // another start beside it. The cooldown counts from its end, so a slow JWKS
            // cannot be kept busy back to back.
            let store = self.clone();
            let fetch = tokio::spawn(async move {
                let result = store.fetch_locked(&mut state).await;
                state.last_kid_fetch = Some(Instant::now());
                result
            });
            match fetch.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %error_chain(&e), held = self.has_keys(), "JWKS refresh for an unknown kid failed");
                }
                Err(e) => tracing::warn!(error = %e, "JWKS refresh task failed"),
            }
            if let Some(key) = self.lookup(kid) {
                return Ok(key);
            }
        }
        Err(refused(self))
    }

    /// Fetch the key set now, whatever the cooldown (start-up and the periodic refresh).
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let mut state = self.inner.fetch.lock().await;
        self.fetch_locked(&mut state).await
    }

    /// Fetch and swap in the key set; `_locked` proves the caller holds the fetch lock.
    async fn fetch_locked(&self, _locked: &mut FetchState) -> Result<usize, JwksError> {
        self.inner.fetches.fetch_add(1, Ordering::Relaxed);
        let result = fetch_key_set(&self.inner.client, &self.inner.url).await;
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        crate::metrics::jwks_fetch(result.is_ok());
        let (keys, max_age) = result?;
        *self.inner.max_age.lock().unwrap_or_else(|e| e.into_inner()) = max_age;
        let count = keys.len();
        let set = KeySet {
            keys: keys.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
            loaded_at: Some(Instant::now()),
        };
        *self.inner.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        tracing::info!(url = %self.inner.url, keys = count, "JWKS loaded");
        Ok(count)
    }

    /// When to refresh next: the JWKS's `max-age` within [`MIN_REFRESH`, `interval`], else
    /// `interval`.
    fn refresh_after(&self, interval: Duration) -> Duration {
        let max_age = *self.inner.max_age.lock().unwrap_or_else(|e| e.into_inner());
        max_age.map_or(interval, |age| {
            age.clamp(MIN_REFRESH.min(interval), interval)
        })
    }

    /// Keep the key set fresh in the background: fetch now, retry with backoff (up to the
    /// cooldown) while no key set is held, then refresh every `interval`.
    pub fn spawn_refresher(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut retry = FIRST_RETRY;
            loop {
                let wait = match store.refresh().await {
                    Ok(_) => {
                        retry = FIRST_RETRY;
                        store.refresh_after(interval)
                    }
                    Err(e) => {
                        if store.has_keys() {
                            tracing::warn!(error = %error_chain(&e), retry_in = ?retry, "JWKS fetch failed; keeping the keys held");
                        } else {
                            tracing::warn!(error = %error_chain(&e), retry_in = ?retry,
                                "JWKS fetch failed; no signing key yet, so webhooks get 503 until one succeeds");
                        }
                        let wait = if store.has_keys() {
                            retry.max(store.inner.cooldown)
                        } else {
                            retry
                        };
                        retry = (retry * 2).min(store.inner.cooldown.max(FIRST_RETRY));
                        wait
                    }
                };
                tokio::time::sleep(wait).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::SigningKey;
    use serde_json::json;

    #[test]
    fn non_signing_and_weak_keys_are_skipped_without_spoiling_the_set() {
        let good = SigningKey::generate().unwrap();
        let mut enc = good.jwk();
        enc["use"] = json!("enc");
        enc["kid"] = json!("enc");
        let mut ec = good.jwk();
        ec["kty"] = json!("EC");
        ec["kid"] = json!("ec");
        let mut weak = good.jwk();
        weak["n"] = json!("AQAB");
        weak["kid"] = json!("weak");
        let mut no_use = good.jwk();
        no_use.as_object_mut().unwrap().remove("use");
        no_use["kid"] = json!("no-use");
        let body = json!({"keys": [good.jwk(), enc, ec, weak, no_use, "garbage", {"kty": 1}]});
        let keys = parse_jwks(&serde_json::to_vec(&body).unwrap()).unwrap();
        let mut kids: Vec<_> = keys.keys().cloned().collect();
        kids.sort();
        assert_eq!(kids, vec![good.kid().to_owned(), "no-use".to_owned()]);
    }

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            cache_max_age("public, max-age=3600"),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(cache_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(cache_max_age("public"), None);
        assert_eq!(cache_max_age("max-age=abc"), None);
    }

    #[test]
    fn garbage_is_not_a_key_set() {
        assert!(parse_jwks(b"<html>").is_err());
        assert!(parse_jwks(b"{\"keys\": 5}").is_err());
    }
}
