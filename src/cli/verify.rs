//! `verify` and `check`: explain why a token is (not) accepted, and check a set-up.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::Utc;

use super::{build_registry, fail, load_config, out};
use crate::jwks::{client, fetch_key_set, parse_jwks};
use crate::reply::Rejection;
use crate::verify::{TokenLimits, VerifyError, parse_with};

/// Where `verify` takes the signing keys from.
#[derive(Debug)]
pub(super) enum KeySource {
    /// A JWKS URL to fetch.
    Url(String),
    /// A JWKS document on disk.
    File(PathBuf),
    /// The key set of the dev signing key in this folder (`kinde-webhooks dev`'s issuer).
    Dev(PathBuf),
}

/// Say what the server would answer for `e`, and exit 1.
fn refused(e: VerifyError) -> ExitCode {
    let rejection = Rejection::Verify(e);
    out!(
        "  the server answers {} {{\"error\":\"{}\"}} to this token",
        rejection.status().as_u16(),
        rejection.reason()
    );
    ExitCode::from(1)
}

/// Verify `token` (or stdin for `-` / none) step by step, saying what passed and what not.
pub(super) async fn verify(
    config: Option<PathBuf>,
    token: Option<String>,
    keys: Option<KeySource>,
    route: Option<String>,
) -> ExitCode {
    let token = match token.as_deref() {
        Some(t) if t != "-" => t.to_owned(),
        _ => {
            let mut text = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut text) {
                return fail(2, format!("cannot read the token from stdin: {e}"));
            }
            text
        }
    };
    if token.trim_ascii().is_empty() {
        return fail(
            2,
            "no token given: pass it as the argument, or on stdin (e.g. `kinde-webhooks send --print | kinde-webhooks verify`)",
        );
    }
    let config = load_config(config).unwrap_or_default();
    let routes = config.effective_routes();
    let keys = match (keys, route) {
        (Some(keys), _) => Some(keys),
        (None, Some(path)) => match routes.iter().find(|r| r.path == path) {
            Some(r) => config.jwks_url_for(r).map(KeySource::Url),
            None => {
                let paths: Vec<&str> = routes.iter().map(|r| r.path.as_str()).collect();
                return fail(
                    2,
                    format!(
                        "the config has no route {path}; its routes: {}",
                        paths.join(", ")
                    ),
                );
            }
        },
        // The default issuer, else the first route's own, else the dev key (a token from
        // `send --print`).
        (None, None) => config
            .jwks_url()
            .or_else(|| routes.iter().find_map(|r| config.jwks_url_for(r)))
            .map(KeySource::Url)
            .or_else(|| {
                let dir = std::env::var_os("KINDE_WEBHOOKS_DEV_DIR")
                    .map_or_else(|| PathBuf::from(super::DEFAULT_DEV_DIR), PathBuf::from);
                dir.join(super::DEV_KEY_FILE)
                    .exists()
                    .then_some(KeySource::Dev(dir))
            }),
    };
    let Some(keys) = keys else {
        return fail(
            2,
            "say where the keys are: --jwks-url URL, --jwks-file FILE, --issuer URL, --route PATH, or KINDE_ISSUER_URL \
             (with none of them, the dev key in .kinde-dev is used when `kinde-webhooks dev` made one here)",
        );
    };
    let used_url = match &keys {
        KeySource::Url(url) => Some(url.clone()),
        KeySource::File(_) | KeySource::Dev(_) => None,
    };
    out!("token: {} bytes", token.trim_ascii().len());

    // 1. Header.
    let parsed = match parse_with(&token, TokenLimits::default()) {
        Ok(p) => p,
        Err(e) => {
            out!("✗ header: {e}");
            out!(
                "  Kinde's header is {{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"<colon-hex>\"}} over base64url segments"
            );
            return refused(e);
        }
    };
    out!("✓ header: alg RS256, kid {:?}", parsed.kid());

    // 2. Keys.
    let (where_, found) = match &keys {
        KeySource::File(path) => match std::fs::read(path) {
            Ok(text) => (path.display().to_string(), parse_jwks(&text)),
            Err(e) => return fail(2, format!("cannot read {}: {e}", path.display())),
        },
        KeySource::Dev(dir) => match super::dev_key(dir, false) {
            Ok(key) => {
                let jwks = serde_json::to_vec(&key.jwks()).unwrap_or_default();
                (
                    format!("the dev key in {}", dir.display()),
                    parse_jwks(&jwks),
                )
            }
            Err(e) => return fail(2, e),
        },
        KeySource::Url(url) => match fetch_key_set(&client(), url).await {
            Ok((keys, _)) => (url.clone(), Ok(keys)),
            Err(e) => {
                out!("✗ keys: {}", crate::jwks::error_chain(&e));
                out!("  {}", fetch_hint(&e, url));
                return ExitCode::from(1);
            }
        },
    };
    let keys = match found {
        Ok(k) => k,
        Err(e) => {
            out!("✗ keys: {where_} is not a JWKS: {e}");
            return ExitCode::from(1);
        }
    };
    let mut kids: Vec<&String> = keys.keys().collect();
    kids.sort();
    out!(
        "  keys from {where_}: {} signing key(s): {kids:?}",
        keys.len()
    );
    let Some(key) = keys.get(parsed.kid()) else {
        out!(
            "✗ kid {:?} is not in that key set: the token was signed by another tenant or environment, or the key rotated",
            parsed.kid()
        );
        for route in &routes {
            if let Some(url) = config.jwks_url_for(route)
                && used_url.as_ref() != Some(&url)
            {
                out!(
                    "  route {} verifies against {url}: try --route {}",
                    route.path,
                    route.path
                );
            }
        }
        return refused(VerifyError::UnknownKey(parsed.kid().to_owned()));
    };
    out!("✓ kid found");

    // 3. Signature.
    if let Err(e) = parsed.check_signature(key) {
        out!(
            "✗ signature: {e} (the token was changed after signing, or signed by another key with the same kid)"
        );
        return refused(e);
    }
    out!("✓ signature verifies (RS256)");

    // 4. Payload.
    let event = match parsed.into_event(Utc::now(), config.kinde.max_event_age) {
        Ok(e) => e,
        Err(e) => {
            out!("✗ payload: {e}");
            return refused(e);
        }
    };
    out!(
        "✓ payload: type {}, event_id {}, timestamp {}, source {:?}",
        event.event_type,
        event.event_id,
        event.timestamp,
        event.source
    );

    // 5. Who would run it.
    for route in &routes {
        let verdict = if let Some(url) = &used_url
            && let Some(own) = config.jwks_url_for(route)
            && &own != url
        {
            let issuer = config.issuer_for(route).unwrap_or(own);
            format!(
                "verifies against another issuer ({issuer}): check with --route {}",
                route.path
            )
        } else if route.accepts(&event.event_type) {
            "accepts it".to_owned()
        } else {
            "does not accept it (acknowledged, not dispatched)".to_owned()
        };
        out!("  route {}: {verdict}", route.path);
    }
    match build_registry(&config) {
        Ok((registry, _)) => {
            let names: Vec<String> = registry
                .handlers_for(&event.event_type)
                .map(|e| e.name.to_string())
                .collect();
            if names.is_empty() {
                out!(
                    "  handlers: none match {} (it would be acknowledged and stored as skipped)",
                    event.event_type
                );
            } else {
                out!("  handlers that would run: {}", names.join(", "));
            }
        }
        Err(e) => out!("  handlers: {e}"),
    }
    ExitCode::SUCCESS
}

/// Validate the configuration, reach the JWKS once and start each forwarder (connect, and
/// check or create its stream as `serve` would); exit 0 only when all of it works.
pub(super) async fn check(config: Option<PathBuf>) -> ExitCode {
    let config = match load_config(config) {
        Ok(c) => c,
        Err(e) => return fail(2, e),
    };
    if let Err(e) = config.validate() {
        return fail(2, e);
    }
    // `[handlers.<name>]` sections are part of the configuration: checked against the
    // registry before the configuration is called valid.
    let (registry, forwarders) = match build_registry(&config).and_then(|(r, f)| {
        config
            .check_handler_sections(r.entries().iter().map(|e| &*e.name))
            .map(|()| (r, f))
            .map_err(|e| e.to_string())
    }) {
        Ok(built) => built,
        Err(e) => return fail(2, e),
    };
    out!("✓ configuration is valid");
    for warning in config.warnings() {
        out!("! {warning}");
    }
    out!("✓ {} handler(s) registered", registry.entries().len());
    let mut failed = false;
    match forwarders.start().await {
        Ok(statuses) => {
            for s in statuses {
                let mark = if s.reachable { "✓" } else { "✗" };
                failed |= !s.reachable;
                out!("{mark} forwarder {}: {}", s.name, s.detail);
            }
        }
        Err(e) => {
            out!("✗ {e}");
            failed = true;
        }
    }
    // A shared store must be reachable and take writes (SQLite is a local file: `serve`
    // creates it). Opening it applies pending migrations, as `serve` would.
    if config.store.backend == "postgres" && config.needs_store() {
        match crate::inbox::PgStore::open(&config.store).await {
            Ok(store) => {
                use crate::inbox::Store as _;
                match store.writable().await {
                    Ok(()) => out!(
                        "✓ store: PostgreSQL schema {} reachable and writable",
                        store.schema()
                    ),
                    Err(e) => {
                        out!(
                            "✗ store: PostgreSQL schema {} does not take writes: {e}",
                            store.schema()
                        );
                        failed = true;
                    }
                }
                store.close().await;
            }
            Err(e) => {
                out!("✗ store: {e}");
                failed = true;
            }
        }
    }
    // Every issuer the routes verify against, once each.
    let mut urls: Vec<String> = Vec::new();
    for route in config.effective_routes() {
        match config.jwks_url_for(&route) {
            Some(url) if !urls.contains(&url) => urls.push(url),
            Some(_) => {}
            None => return fail(2, "no JWKS URL: set KINDE_ISSUER_URL"),
        }
    }
    let client = client();
    let mut code = if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    };
    for url in urls {
        match fetch_key_set(&client, &url).await {
            Ok((keys, max_age)) => {
                let mut kids: Vec<&String> = keys.keys().collect();
                kids.sort();
                let cache = match max_age {
                    Some(age) => format!(
                        "the server asks for a refresh every {}",
                        humantime::format_duration(age)
                    ),
                    None => {
                        "no Cache-Control max-age, so refreshed every [kinde] jwks_refresh_interval"
                            .to_owned()
                    }
                };
                out!(
                    "✓ JWKS {url}: {} signing key(s) {}; {cache}",
                    keys.len(),
                    kids.iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            Err(e) => {
                out!("✗ JWKS {url}: {}", crate::jwks::error_chain(&e));
                out!("  {}", fetch_hint(&e, &url));
                code = ExitCode::from(1);
            }
        }
    }
    code
}

/// What to try when a key set could not be fetched.
fn fetch_hint(e: &crate::jwks::JwksError, url: &str) -> String {
    use crate::jwks::JwksError;
    match e {
        JwksError::Request { .. } => format!(
            "fix: check the issuer is your Kinde domain (https://<your_subdomain>.kinde.com, \
             or your custom domain) and that this machine reaches it: curl -sS {url}"
        ),
        JwksError::Status { status: 404, .. } => format!(
            "fix: nothing is published at {url}; the issuer is the domain only, the keys are \
             at <issuer>/.well-known/jwks.json"
        ),
        _ => format!(
            "fix: check what {url} serves (curl -sS {url}); it must be a JWKS with an RS256 key"
        ),
    }
}
