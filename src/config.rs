//! Configuration: defaults, then `config.toml`, then the environment, then [`Config::validate`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::registry::Pattern;

/// The default body limit: a real Kinde token is 1 to 4 KiB.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;
/// The default route when `config.toml` names none.
pub const DEFAULT_ROUTE: &str = "/api/kinde-webhook";

/// The whole configuration of the receiver.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`
    pub server: ServerConfig,
    /// `[kinde]`
    pub kinde: KindeConfig,
    /// `[[routes]]`: the webhook endpoints and the event types each accepts.
    pub routes: Vec<RouteConfig>,
    /// `[log]`
    pub log: LogConfig,
    /// `[delivery]`: store first (inbox) or handle before the reply (inline).
    pub delivery: DeliveryConfig,
    /// `[store]`: where the inbox (and inline dedup, when asked) keeps events.
    pub store: StoreConfig,
    /// `[inbox]`: workers, retries, retention.
    pub inbox: InboxConfig,
    /// `[limits]`: what one request may cost; every limit has a safe default.
    pub limits: LimitsConfig,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// `[handlers.<name>]`: each handler's own settings, read through `Context::settings`.
    pub handlers: HashMap<String, toml::Value>,
    /// `[[forward.nats]]`: handlers built from this file that pass events on elsewhere.
    pub forward: ForwardConfig,
    /// The folder of the config file, which relative paths are resolved against.
    #[serde(skip)]
    pub base_dir: Option<PathBuf>,
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `GET /metrics` (Prometheus text format).
    pub enabled: bool,
    /// Serve it on this address instead of the main one (keep it off the public port).
    pub bind: Option<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: None,
        }
    }
}

/// `[limits]`: bounds on what one request or client may cost the server.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request head (request line and headers), in bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// A client must send the whole request head within this; else the connection is closed.
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// A client must send the whole body within this; else 408.
    #[serde(deserialize_with = "duration")]
    pub body_read_timeout: Duration,
    /// The longest a request may take end to end; else 503 (the sender retries).
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// Webhook requests handled at once; more get 503 with `Retry-After` at once.
    pub max_concurrent_requests: usize,
    /// Open connections; more wait to be accepted.
    pub max_connections: usize,
    /// Longest token accepted (after trimming whitespace), in bytes; longer gets 413.
    pub max_token_bytes: usize,
    /// Largest decoded payload (the claims JSON), in bytes; larger gets 413.
    pub max_payload_bytes: usize,
    /// Deepest JSON nesting accepted in the token header and payload; deeper gets 400.
    pub max_json_depth: usize,
    /// Longest `kid` accepted, in bytes; longer gets 401 without a JWKS fetch.
    pub max_kid_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            max_concurrent_requests: 512,
            max_connections: 2048,
            max_token_bytes: 64 * 1024,
            max_payload_bytes: 32 * 1024,
            max_json_depth: 32,
            max_kid_bytes: 256,
        }
    }
}

/// When handlers run relative to the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    /// Commit the event durably, answer 200, then run handlers with the inbox's retries.
    #[default]
    Inbox,
    /// Run handlers before the reply: 500 when one fails, so Kinde retries.
    Inline,
}

/// Where inline mode remembers handled events, so a redelivery does not run them again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InlineDedup {
    /// A bounded in-memory set (lost on restart).
    #[default]
    Memory,
    /// The `[store]` database (survives restarts).
    Store,
    /// No dedup: every delivery runs the handlers.
    Off,
}

/// `[delivery]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// `inbox` or `inline`.
    pub mode: DeliveryMode,
    /// A handler call running longer is cancelled and counts as failed.
    #[serde(deserialize_with = "duration")]
    pub handler_timeout: Duration,
    /// Inline mode's dedup: `memory`, `store` or `off`.
    pub inline_dedup: InlineDedup,
    /// How many (route, event_id) keys the in-memory dedup keeps.
    pub inline_dedup_capacity: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            mode: DeliveryMode::Inbox,
            handler_timeout: Duration::from_secs(30),
            inline_dedup: InlineDedup::Memory,
            inline_dedup_capacity: 100_000,
        }
    }
}

/// The schema the PostgreSQL store keeps its tables in, unless `[store] schema` names another.
pub const DEFAULT_PG_SCHEMA: &str = "kinde_webhooks";

/// `[store]`
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite` (embedded file, one server) or `postgres` (shared by replicas).
    pub backend: String,
    /// SQLite: the file, relative to the config file's folder.
    pub path: PathBuf,
    /// SQLite: how long a write waits for a lock held elsewhere before the request gets 503.
    #[serde(deserialize_with = "duration")]
    pub busy_timeout: Duration,
    /// PostgreSQL: the connection URL. Env `DATABASE_URL` overrides it (for this backend only).
    pub url: Option<String>,
    /// PostgreSQL: the schema holding every table, so one database can serve several
    /// receivers (and tests) side by side. Created when missing.
    pub schema: String,
    /// PostgreSQL: the pool size of each process (the wake-up listener has one more).
    pub max_connections: u32,
    /// PostgreSQL: the server cancels any statement running longer (set on each connection).
    #[serde(deserialize_with = "duration")]
    pub statement_timeout: Duration,
    /// PostgreSQL: how long to wait for a connection (a new one, or a free one of the pool)
    /// before the request gets 503: a database that is down fails fast.
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: "sqlite".into(),
            path: PathBuf::from("kinde-webhooks.db"),
            busy_timeout: Duration::from_secs(5),
            url: None,
            schema: DEFAULT_PG_SCHEMA.into(),
            max_connections: 8,
            statement_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
        }
    }
}

impl std::fmt::Debug for StoreConfig {
    /// The URL's password stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("backend", &self.backend)
            .field("path", &self.path)
            .field("busy_timeout", &self.busy_timeout)
            .field("url", &self.url.as_deref().map(redact_url))
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("statement_timeout", &self.statement_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// A database URL without its password, for logs and messages.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "(not a URL)".into(),
    }
}

/// Whether `schema` is a plain lowercase SQL identifier that needs no quoting.
fn is_schema_name(schema: &str) -> bool {
    let mut chars = schema.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && schema.len() <= 48
        && !schema.starts_with("pg_")
}

/// `[inbox]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InboxConfig {
    /// How many handler calls run at once.
    pub workers: usize,
    /// Attempts per (event, handler) before it is dead-lettered.
    pub max_attempts: u32,
    /// The delay before the second attempt; it doubles after each failure.
    #[serde(deserialize_with = "duration")]
    pub retry_base: Duration,
    /// The longest delay between two attempts.
    #[serde(deserialize_with = "duration")]
    pub retry_cap: Duration,
    /// How long a claimed job is reserved for its worker; after that it is claimed again.
    #[serde(deserialize_with = "duration")]
    pub lease: Duration,
    /// How often idle workers look for due retries.
    #[serde(deserialize_with = "duration")]
    pub poll_interval: Duration,
    /// Finished and skipped events are purged after this long (dead ones are kept).
    #[serde(deserialize_with = "duration")]
    pub retention: Duration,
    /// On shutdown, how long running handlers may finish before their jobs are released.
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
}

impl Default for InboxConfig {
    fn default() -> Self {
        Self {
            workers: 8,
            max_attempts: 8,
            retry_base: Duration::from_secs(5),
            retry_cap: Duration::from_secs(3600),
            lease: Duration::from_secs(300),
            poll_interval: Duration::from_secs(1),
            retention: Duration::from_secs(30 * 24 * 3600),
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. Env: `KINDE_WEBHOOKS_BIND`.
    pub bind: String,
    /// Largest request body accepted, in bytes; larger gets 413.
    pub body_limit: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:3000".into(),
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }
}

/// `[kinde]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KindeConfig {
    /// `https://<subdomain>.kinde.com`. Env: `KINDE_ISSUER_URL`.
    pub issuer_url: Option<String>,
    /// Defaults to `<issuer_url>/.well-known/jwks.json`.
    pub jwks_url: Option<String>,
    /// Least time between two JWKS fetches caused by unknown `kid`s.
    #[serde(deserialize_with = "duration")]
    pub jwks_refresh_cooldown: Duration,
    /// How often the key set is refreshed in the background.
    #[serde(deserialize_with = "duration")]
    pub jwks_refresh_interval: Duration,
    /// Refuse events whose payload `timestamp` is older than this. Off when absent.
    #[serde(deserialize_with = "opt_duration")]
    pub max_event_age: Option<Duration>,
}

impl Default for KindeConfig {
    fn default() -> Self {
        Self {
            issuer_url: None,
            jwks_url: None,
            jwks_refresh_cooldown: Duration::from_secs(10),
            jwks_refresh_interval: Duration::from_secs(3600),
            max_event_age: None,
        }
    }
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The path Kinde POSTs to, e.g. `/api/kinde-webhook`.
    pub path: String,
    /// The event types this route accepts; others are acknowledged and not dispatched.
    #[serde(default = "all_patterns")]
    pub patterns: Vec<String>,
    /// The Kinde environment (or business) this route takes events from, e.g.
    /// `https://acme-staging.kinde.com`: its events are verified against that issuer's
    /// JWKS only. Unset: `[kinde] issuer_url`.
    #[serde(default)]
    pub issuer_url: Option<String>,
    /// Where this route's issuer publishes its keys, when not at
    /// `<issuer_url>/.well-known/jwks.json`; needs `issuer_url`.
    #[serde(default)]
    pub jwks_url: Option<String>,
}

impl RouteConfig {
    /// Whether this route accepts `event_type` (patterns that do not parse match nothing;
    /// `validate` refuses them).
    pub fn accepts(&self, event_type: &str) -> bool {
        self.patterns
            .iter()
            .filter_map(|p| Pattern::parse(p).ok())
            .any(|p| p.matches(event_type))
    }
}

fn all_patterns() -> Vec<String> {
    vec!["*".into()]
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `kinde_webhooks=debug`. `RUST_LOG` wins.
    pub level: String,
    /// `human` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Human,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Why the configuration cannot be used. Each names the key and the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration.
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said, with the key and line.
        message: String,
    },
    /// A key holds a value that cannot work.
    #[error("config key {key}: {message}")]
    Invalid {
        /// The key, e.g. `kinde.issuer_url` or `routes[1].path`.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The longest duration a setting takes: beyond it date arithmetic overflows (and no
/// delay, lease or retention needs more).
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A duration like `30s`, `12h` or `30d`, at most [`MAX_DURATION`] (10 years).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like \"30s\": {e}"))?;
    if d > MAX_DURATION {
        return Err(format!("{s:?} is more than 10 years (\"3650d\")"));
    }
    Ok(d)
}

/// A duration as written: a string, or (a mistake worth naming) a bare number.
#[derive(Deserialize)]
#[serde(untagged)]
enum DurationText {
    Text(String),
    Number(f64),
}

impl DurationText {
    fn text<E: serde::de::Error>(self) -> Result<String, E> {
        match self {
            DurationText::Text(s) => Ok(s),
            DurationText::Number(n) => Err(E::custom(format!(
                "{n} is a bare number: write a duration as a string with its unit, like \"{n}s\""
            ))),
        }
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = DurationText::deserialize(d)?.text()?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = Option::<DurationText>::deserialize(d)?
        .map(DurationText::text)
        .transpose()?;
    match text {
        None => Ok(None),
        Some(s) if s.is_empty() || s == "off" => Ok(None),
        Some(s) => parse_duration(&s)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

impl Config {
    /// Parse TOML text (no environment, no validation).
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })
    }

    /// Load `path` (the defaults when it is `None`), apply the environment, validate.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let config = Config::read(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Load `path` (the defaults when it is `None`) and apply the environment, without
    /// validating (the `dev` server fills in its own issuer first).
    pub fn read(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                let mut config = Config::from_toml(&text, &path.display().to_string())?;
                config.base_dir = path.parent().map(Path::to_path_buf);
                config
            }
            None => Config::default(),
        };
        config.apply_env(|name| std::env::var(name).ok());
        Ok(config)
    }

    /// Apply `KINDE_ISSUER_URL`, `KINDE_WEBHOOKS_BIND` and, when `[store] backend` is
    /// `postgres`, `DATABASE_URL` (empty values are ignored). `DATABASE_URL` never moves a
    /// SQLite inbox: it is often set for other tools.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) {
        let var = |name| var(name).filter(|v| !v.trim().is_empty());
        if let Some(issuer) = var("KINDE_ISSUER_URL") {
            self.kinde.issuer_url = Some(issuer);
        }
        if let Some(bind) = var("KINDE_WEBHOOKS_BIND") {
            self.server.bind = bind;
        }
        if self.store.backend == "postgres"
            && let Some(url) = var("DATABASE_URL")
        {
            self.store.url = Some(url);
        }
        self.forward.apply_env(var("NATS_URL"));
    }

    /// The routes, with the default one when none is configured.
    pub fn effective_routes(&self) -> Vec<RouteConfig> {
        if self.routes.is_empty() {
            vec![RouteConfig {
                path: DEFAULT_ROUTE.into(),
                patterns: all_patterns(),
                issuer_url: None,
                jwks_url: None,
            }]
        } else {
            self.routes.clone()
        }
    }

    /// The JWKS URL: `jwks_url`, or `<issuer_url>/.well-known/jwks.json`.
    pub fn jwks_url(&self) -> Option<String> {
        self.kinde.jwks_url.clone().or_else(|| {
            let issuer = self.kinde.issuer_url.as_deref()?;
            Some(format!(
                "{}/.well-known/jwks.json",
                issuer.trim_end_matches('/')
            ))
        })
    }

    /// Whether the delivery mode keeps events in the `[store]` (inbox mode, or inline mode
    /// with `inline_dedup = "store"`).
    pub fn needs_store(&self) -> bool {
        self.delivery.mode == DeliveryMode::Inbox
            || self.delivery.inline_dedup == InlineDedup::Store
    }

    /// The issuer a route's events are verified against: its own `issuer_url`, else
    /// `[kinde] issuer_url` (without a trailing `/`).
    pub fn issuer_for(&self, route: &RouteConfig) -> Option<String> {
        let issuer = route
            .issuer_url
            .as_deref()
            .or(self.kinde.issuer_url.as_deref())?;
        Some(issuer.trim_end_matches('/').to_owned())
    }

    /// The JWKS URL of a route: its own `jwks_url`, its own issuer's well-known key set,
    /// else [`Config::jwks_url`].
    pub fn jwks_url_for(&self, route: &RouteConfig) -> Option<String> {
        match (&route.jwks_url, &route.issuer_url) {
            (Some(url), _) => Some(url.clone()),
            (None, Some(issuer)) => Some(format!(
                "{}/.well-known/jwks.json",
                issuer.trim_end_matches('/')
            )),
            (None, None) => self.jwks_url(),
        }
    }

    /// The issuer of every route, by path (an event read back from the inbox learns its
    /// issuer from the route it arrived on).
    pub fn route_issuers(&self) -> std::collections::HashMap<String, String> {
        self.effective_routes()
            .into_iter()
            .filter_map(|r| Some((r.path.clone(), self.issuer_for(&r)?)))
            .collect()
    }

    /// The SQLite file: `[store] path`, relative to the config file's folder.
    pub fn store_path(&self) -> PathBuf {
        match &self.base_dir {
            Some(dir) if self.store.path.is_relative() => dir.join(&self.store.path),
            _ => self.store.path.clone(),
        }
    }

    /// Check that every `[handlers.<name>]` section names a registered handler, so a typo
    /// is a start-up error rather than a handler failing on its first event.
    pub fn check_handler_sections<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ConfigError> {
        let names: Vec<&str> = names.into_iter().collect();
        for section in self.handlers.keys() {
            if !names.contains(&section.as_str()) {
                return Err(invalid(
                    format!("handlers.{section}"),
                    format!(
                        "no handler is named {section:?}; registered: {}",
                        names.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The listen address, parsed.
    pub fn bind_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server.bind.parse().map_err(|_| {
            invalid(
                "server.bind",
                format!(
                    "{:?} is not an address like \"127.0.0.1:3000\" (env KINDE_WEBHOOKS_BIND)",
                    self.server.bind
                ),
            )
        })
    }

    /// Check that the configuration can work; each error names the key and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.bind_addr()?;
        if self.server.body_limit < MIN_TOKEN_ROOM {
            return Err(invalid(
                "server.body_limit",
                "must be at least 8192 bytes; Kinde tokens are 1 to 4 KiB (default 65536)",
            ));
        }
        // Routes may each name their issuer; one that does not needs [kinde] issuer_url.
        let without_issuer = self.routes.iter().find(|r| r.issuer_url.is_none());
        match self.kinde.issuer_url.as_deref() {
            None if self.kinde.jwks_url.is_none()
                && (self.routes.is_empty() || without_issuer.is_some()) =>
            {
                let message = match without_issuer {
                    Some(route) if self.routes.iter().any(|r| r.issuer_url.is_some()) => format!(
                        "is not set, and route {} names no issuer_url of its own: give it one, or set \
                         KINDE_ISSUER_URL (or run `kinde-webhooks dev` for a local issuer)",
                        route.path
                    ),
                    _ => "is not set: set KINDE_ISSUER_URL=https://<your_subdomain>.kinde.com, or issuer_url in config.toml \
                          (or run `kinde-webhooks dev` for a local issuer)"
                        .to_owned(),
                };
                return Err(invalid("kinde.issuer_url", message));
            }
            Some(url) => check_issuer("kinde.issuer_url", url)?,
            None => {}
        }
        if let Some(url) = &self.kinde.jwks_url {
            check_url("kinde.jwks_url", url)?;
        }
        if self.kinde.jwks_refresh_cooldown.is_zero() {
            return Err(invalid(
                "kinde.jwks_refresh_cooldown",
                "must be more than 0 (default \"10s\"): without it every unknown kid is a fetch from the issuer",
            ));
        }
        if self.kinde.jwks_refresh_cooldown > Duration::from_secs(3600) {
            return Err(invalid(
                "kinde.jwks_refresh_cooldown",
                "over 1h would leave rotated keys unknown for too long (default \"10s\")",
            ));
        }
        if self.kinde.jwks_refresh_interval < Duration::from_secs(1) {
            return Err(invalid(
                "kinde.jwks_refresh_interval",
                "must be at least \"1s\" (default \"1h\")",
            ));
        }
        if self
            .kinde
            .max_event_age
            .is_some_and(|a| a < Duration::from_secs(60))
        {
            return Err(invalid(
                "kinde.max_event_age",
                "under 1m refuses Kinde's own retries; use at least \"36h\" or leave it unset",
            ));
        }
        self.validate_delivery()?;
        self.validate_limits()?;
        self.forward.validate(self.delivery.handler_timeout)?;
        if !is_log_filter(&self.log.level) {
            return Err(invalid(
                "log.level",
                format!(
                    "{:?} is not a log filter like \"info\" or \"kinde_webhooks=debug,warn\"",
                    self.log.level
                ),
            ));
        }
        if let Some(bind) = &self.metrics.bind
            && bind.parse::<SocketAddr>().is_err()
        {
            return Err(invalid(
                "metrics.bind",
                format!("{bind:?} is not an address like \"127.0.0.1:9000\""),
            ));
        }
        if let (Some(bind), Ok(server)) = (&self.metrics.bind, self.bind_addr())
            && bind.parse::<SocketAddr>().ok() == Some(server)
            && server.port() != 0
        {
            return Err(invalid(
                "metrics.bind",
                format!(
                    "{bind:?} is the server's own address: give /metrics another port, or leave metrics.bind unset to serve it beside the webhooks"
                ),
            ));
        }
        let routes = self.effective_routes();
        for (i, route) in routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            // `:` opens a path parameter in axum, which would take any segment.
            if !route.path.starts_with('/')
                || route.path.contains(['{', '}', '*', '?', '#', ' '])
                || route
                    .path
                    .split('/')
                    .any(|segment| segment.starts_with(':'))
            {
                return Err(invalid(
                    format!("{key}.path"),
                    format!(
                        "{:?} must be a plain path starting with '/', without {{ }} * ? # spaces or a segment starting with ':' (no path parameters)",
                        route.path
                    ),
                ));
            }
            if matches!(
                route.path.as_str(),
                "/healthz" | "/readyz" | "/metrics" | "/.well-known/jwks.json"
            ) {
                return Err(invalid(
                    format!("{key}.path"),
                    format!("{} is reserved by the server", route.path),
                ));
            }
            if routes[..i].iter().any(|r| r.path == route.path) {
                return Err(invalid(
                    format!("{key}.path"),
                    format!("{} is used by two routes: merge their patterns", route.path),
                ));
            }
            if route.patterns.is_empty() {
                return Err(invalid(
                    format!("{key}.patterns"),
                    "is empty: list the types it accepts, or [\"*\"]",
                ));
            }
            for p in &route.patterns {
                Pattern::parse(p)
                    .map_err(|e| invalid(format!("{key}.patterns"), format!("{p:?} {e}")))?;
            }
            if let Some(url) = &route.issuer_url {
                check_issuer(&format!("{key}.issuer_url"), url)?;
            }
            match (&route.jwks_url, &route.issuer_url) {
                (Some(url), Some(_)) => check_url(&format!("{key}.jwks_url"), url)?,
                (Some(_), None) => {
                    return Err(invalid(
                        format!("{key}.jwks_url"),
                        "needs the route's issuer_url too (the issuer a handler is told about)",
                    ));
                }
                (None, _) => {}
            }
        }
        Ok(())
    }
}

impl Config {
    fn validate_limits(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        if l.max_header_bytes < 8192 {
            return Err(invalid(
                "limits.max_header_bytes",
                "must be at least 8192 (default 16384)",
            ));
        }
        for (key, value) in [
            ("limits.header_read_timeout", l.header_read_timeout),
            ("limits.body_read_timeout", l.body_read_timeout),
            ("limits.request_timeout", l.request_timeout),
        ] {
            if value < Duration::from_millis(100) {
                return Err(invalid(key, "must be at least \"100ms\""));
            }
        }
        if l.request_timeout < Duration::from_secs(1) {
            return Err(invalid(
                "limits.request_timeout",
                "must be at least \"1s\": a delivery verifies a signature and commits a row (default \"60s\")",
            ));
        }
        if self.delivery.mode == DeliveryMode::Inline
            && l.request_timeout <= self.delivery.handler_timeout
        {
            return Err(invalid(
                "limits.request_timeout",
                "must exceed delivery.handler_timeout in inline mode, so a slow handler is reported as a handler failure",
            ));
        }
        for (key, value) in [
            ("limits.max_concurrent_requests", l.max_concurrent_requests),
            ("limits.max_connections", l.max_connections),
        ] {
            if value == 0 || value > MAX_PERMITS {
                return Err(invalid(
                    key,
                    format!(
                        "must be 1 to {MAX_PERMITS} (defaults: 512 requests, 2048 connections)"
                    ),
                ));
            }
        }
        for (key, value) in [
            ("limits.max_token_bytes", l.max_token_bytes),
            ("limits.max_payload_bytes", l.max_payload_bytes),
        ] {
            if value < MIN_TOKEN_ROOM {
                return Err(invalid(
                    key,
                    "must be at least 8192; Kinde tokens are 1 to 4 KiB, and a 4xx to a real one is never retried",
                ));
            }
        }
        if l.max_json_depth < 4 || l.max_json_depth > 128 {
            return Err(invalid(
                "limits.max_json_depth",
                "must be 4 to 128 (default 32); Kinde payloads nest 5 deep",
            ));
        }
        if l.max_kid_bytes < 16 {
            return Err(invalid(
                "limits.max_kid_bytes",
                "must be at least 16 (default 256); Kinde kids are 47 bytes",
            ));
        }
        Ok(())
    }

    /// Settings that work but are risky, for start-up to log.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(age) = self.kinde.max_event_age
            && age < Duration::from_secs(36 * 3600)
        {
            warnings.push(format!(
                "kinde.max_event_age = {:?} is shorter than Kinde's 36 h of retries: a delivery that fails for longer \
                 is refused (400) when Kinde retries it; dedup, not the age window, is the defence against replays",
                humantime::format_duration(age).to_string()
            ));
        }
        if self.store.backend == "postgres"
            && self.delivery.mode == DeliveryMode::Inline
            && self.delivery.inline_dedup == InlineDedup::Store
        {
            warnings.push(
                "delivery.mode = \"inline\" with inline_dedup = \"store\" on PostgreSQL: copies of one delivery \
                 reaching two replicas at the same moment may both run the handlers (the key lock is per \
                 process); use mode = \"inbox\" for once-only handling across replicas"
                    .to_owned(),
            );
        }
        warnings
    }

    fn validate_store(&self) -> Result<(), ConfigError> {
        let s = &self.store;
        match s.backend.as_str() {
            "sqlite" if s.path.as_os_str().is_empty() => Err(invalid(
                "store.path",
                "is empty; name the SQLite file (default \"kinde-webhooks.db\")",
            )),
            "sqlite" => Ok(()),
            "postgres" => {
                let Some(url) = s.url.as_deref() else {
                    return Err(invalid(
                        "store.url",
                        "is not set: backend = \"postgres\" needs url = \"postgres://user@host:5432/db\" \
                         (or the env DATABASE_URL)",
                    ));
                };
                // The message never repeats the URL: it may hold a password.
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
                    || url.parse::<sqlx::postgres::PgConnectOptions>().is_err()
                {
                    return Err(invalid(
                        "store.url",
                        "is not a PostgreSQL URL like \"postgres://user:password@host:5432/db\"",
                    ));
                }
                if !is_schema_name(&s.schema) {
                    return Err(invalid(
                        "store.schema",
                        format!(
                            "{:?} is not a schema name: use lowercase letters, digits and _, starting with a letter \
                             or _, at most 48 characters, not pg_* (default \"{DEFAULT_PG_SCHEMA}\")",
                            s.schema
                        ),
                    ));
                }
                if s.max_connections == 0 || s.max_connections > 1000 {
                    return Err(invalid(
                        "store.max_connections",
                        "must be 1 to 1000 (default 8)",
                    ));
                }
                for (key, value) in [
                    ("store.statement_timeout", s.statement_timeout),
                    ("store.connect_timeout", s.connect_timeout),
                ] {
                    // PostgreSQL takes at most INT_MAX milliseconds (~24.8 days).
                    if value < Duration::from_millis(1) || value > Duration::from_secs(3600) {
                        return Err(invalid(key, "must be between \"1ms\" and \"1h\""));
                    }
                }
                Ok(())
            }
            other => Err(invalid(
                "store.backend",
                format!("{other:?} is not a backend; use \"sqlite\" or \"postgres\""),
            )),
        }
    }

    fn validate_delivery(&self) -> Result<(), ConfigError> {
        let d = &self.delivery;
        if d.handler_timeout.is_zero() {
            return Err(invalid(
                "delivery.handler_timeout",
                "must be more than 0 (default \"30s\")",
            ));
        }
        if d.mode == DeliveryMode::Inline
            && d.inline_dedup == InlineDedup::Memory
            && d.inline_dedup_capacity == 0
        {
            return Err(invalid(
                "delivery.inline_dedup_capacity",
                "must be at least 1, or set inline_dedup = \"off\"",
            ));
        }
        self.validate_store()?;
        let i = &self.inbox;
        if i.workers == 0 || i.workers > 1024 {
            return Err(invalid("inbox.workers", "must be 1 to 1024 (default 8)"));
        }
        if i.max_attempts == 0 {
            return Err(invalid(
                "inbox.max_attempts",
                "must be at least 1 (default 8)",
            ));
        }
        if i.retry_base.is_zero() || i.retry_cap < i.retry_base {
            return Err(invalid(
                "inbox.retry_cap",
                "must be at least inbox.retry_base, and retry_base more than 0",
            ));
        }
        if i.lease <= d.handler_timeout {
            return Err(invalid(
                "inbox.lease",
                "must be longer than delivery.handler_timeout, or a slow handler's job is claimed twice",
            ));
        }
        if i.poll_interval.is_zero() {
            return Err(invalid(
                "inbox.poll_interval",
                "must be more than 0 (default \"1s\")",
            ));
        }
        // Dedup lives as long as the stored events: it must outlive every event still accepted.
        let accepted_for = self
            .kinde
            .max_event_age
            .unwrap_or_default()
            .max(Duration::from_secs(36 * 3600));
        if i.retention < accepted_for {
            return Err(invalid(
                "inbox.retention",
                "must outlive kinde.max_event_age and Kinde's 36 h of retries, or a late redelivery runs the handlers again",
            ));
        }
        Ok(())
    }
}

/// The NATS server a `[[forward.nats]]` without `url` (and without env `NATS_URL`) uses.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// `[forward]`: handlers built from this file that pass each matching event on to another
/// system. They are named, subscribe to patterns, and run (and are retried) like any handler.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardConfig {
    /// `[[forward.nats]]`: publish events to NATS JetStream (cargo feature `nats`).
    pub nats: Vec<NatsForwardConfig>,
}

/// One `[[forward.nats]]`: publish each matching event to JetStream and wait for its ack.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsForwardConfig {
    /// The handler's name: it keys the inbox's jobs, the logs and the metrics.
    pub name: String,
    /// The event types to forward: `user.created`, `user.*` or `*`.
    pub patterns: Vec<String>,
    /// The server, `nats://host:4222` (`tls://` for TLS; credentials as `nats://user:pass@host`).
    /// When absent: env `NATS_URL`, else [`DEFAULT_NATS_URL`]. The environment fills in a
    /// missing `url` but does not replace a written one, since forwarders may use different servers.
    #[serde(default)]
    pub url: Option<String>,
    /// Events go to `<subject_prefix>.<event type>`, e.g. `kinde.user.created`.
    #[serde(default = "default_subject_prefix")]
    pub subject_prefix: String,
    /// The JetStream stream expected to take the subjects, checked (or created) at start-up.
    /// When absent, any stream covering the subjects will do; none is a publish failure.
    #[serde(default)]
    pub stream: Option<String>,
    /// Create `stream` (subjects `<subject_prefix>.>`) when it is missing; otherwise a missing
    /// stream, or one that does not take the subjects, stops start-up.
    #[serde(default)]
    pub create_stream: bool,
    /// How long a publish waits for JetStream's ack; no ack in time is a handler failure,
    /// retried like any other (the message id keeps a late-arriving copy from counting twice).
    #[serde(default = "default_ack_timeout", deserialize_with = "duration")]
    pub ack_timeout: Duration,
    /// The stream's duplicate window when this forwarder creates it: copies of one event
    /// published within it are stored once.
    #[serde(default = "default_duplicate_window", deserialize_with = "duration")]
    pub duplicate_window: Duration,
}

fn default_subject_prefix() -> String {
    "kinde".into()
}

fn default_ack_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_duplicate_window() -> Duration {
    Duration::from_secs(120)
}

impl NatsForwardConfig {
    /// The server to connect to: `url`, else [`DEFAULT_NATS_URL`].
    pub fn server_url(&self) -> &str {
        self.url.as_deref().unwrap_or(DEFAULT_NATS_URL)
    }
}

impl ForwardConfig {
    /// Fill in `url` from env `NATS_URL` where a forwarder names none.
    fn apply_env(&mut self, nats_url: Option<String>) {
        if let Some(url) = nats_url {
            for nats in &mut self.nats {
                nats.url.get_or_insert_with(|| url.clone());
            }
        }
    }

    /// Check every forwarder; errors name the key (`forward.nats[0].stream`) and the fix.
    pub fn validate(&self, handler_timeout: Duration) -> Result<(), ConfigError> {
        for (i, nats) in self.nats.iter().enumerate() {
            let key = |field: &str| format!("forward.nats[{i}].{field}");
            let name = &nats.name;
            let valid_name = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
            if !valid_name {
                return Err(invalid(
                    key("name"),
                    format!(
                        "{name:?} is not a handler name: use 1 to 64 of a-z, 0-9, '-', '_' and '.'"
                    ),
                ));
            }
            if self.nats[..i].iter().any(|n| n.name == *name) {
                return Err(invalid(
                    key("name"),
                    format!("{name:?} names two [[forward.nats]]: handler names must be unique"),
                ));
            }
            if nats.patterns.is_empty() {
                return Err(invalid(
                    key("patterns"),
                    "is empty: list the types to forward, e.g. [\"user.*\"], or [\"*\"]",
                ));
            }
            for p in &nats.patterns {
                Pattern::parse(p).map_err(|e| invalid(key("patterns"), format!("{p:?} {e}")))?;
            }
            let url = nats.server_url();
            let parsed = reqwest::Url::parse(url).map_err(|e| {
                invalid(
                    key("url"),
                    format!("{url:?} is not a URL like \"nats://127.0.0.1:4222\": {e}"),
                )
            })?;
            if !matches!(parsed.scheme(), "nats" | "tls")
                || parsed.host_str().is_none_or(str::is_empty)
            {
                return Err(invalid(
                    key("url"),
                    format!("{url:?} must be nats://host:port (or tls://host:port for TLS)"),
                ));
            }
            let prefix = &nats.subject_prefix;
            let valid_prefix = !prefix.is_empty()
                && prefix.split('.').all(|token| {
                    !token.is_empty()
                        && token
                            .bytes()
                            .all(|b| b.is_ascii_graphic() && !b"*>".contains(&b))
                });
            if !valid_prefix {
                return Err(invalid(
                    key("subject_prefix"),
                    format!(
                        "{prefix:?} is not a NATS subject like \"kinde\" or \"acme.kinde\": dot-separated, \
                         no empty token, no spaces, no '*' or '>'"
                    ),
                ));
            }
            match &nats.stream {
                Some(stream)
                    if stream.is_empty()
                        || !stream
                            .bytes()
                            .all(|b| b.is_ascii_graphic() && !b".*>/\\".contains(&b)) =>
                {
                    return Err(invalid(
                        key("stream"),
                        format!(
                            "{stream:?} is not a stream name like \"KINDE\": no spaces, '.', '*', '>', '/' or '\\'"
                        ),
                    ));
                }
                None if nats.create_stream => {
                    return Err(invalid(
                        key("create_stream"),
                        "needs `stream`: name the stream to create, e.g. stream = \"KINDE\"",
                    ));
                }
                _ => {}
            }
            if nats.ack_timeout < Duration::from_millis(100) || nats.ack_timeout >= handler_timeout
            {
                return Err(invalid(
                    key("ack_timeout"),
                    "must be at least \"100ms\" and less than delivery.handler_timeout (default \"5s\")",
                ));
            }
            if nats.duplicate_window.is_zero() {
                return Err(invalid(
                    key("duplicate_window"),
                    "must be more than 0 (default \"2m\")",
                ));
            }
        }
        Ok(())
    }
}

/// Whether `filter` reads as tracing directives: `level`, `target`, or `target=level`,
/// comma-separated (span filters in `[...]` are left to the filter parser). Stricter than
/// the parser itself, which takes almost anything as a target name.
pub fn is_log_filter(filter: &str) -> bool {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let is_level = |s: &str| LEVELS.contains(&s.to_ascii_lowercase().as_str());
    let is_target = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_:-.".contains(c))
    };
    !filter.trim().is_empty()
        && filter
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .all(|directive| {
                if directive.contains('[') {
                    return tracing_subscriber::EnvFilter::try_new(directive).is_ok();
                }
                match directive.split_once('=') {
                    Some((target, level)) => is_target(target) && is_level(level),
                    None => is_level(directive) || is_target(directive),
                }
            })
}

fn check_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        let hint = if !url.contains("://") {
            format!(" (with its scheme: \"https://{url}\")")
        } else {
            String::new()
        };
        invalid(key, format!("{url:?} is not a URL: {e}{hint}"))
    })?;
    let loopback = matches!(parsed.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(invalid(
            key,
            format!("{url:?} must be https (plain http only on loopback)"),
        )),
    }
}

/// The least room a body, token or payload limit leaves: twice Kinde's largest tokens.
const MIN_TOKEN_ROOM: usize = 8192;

/// The most requests or connections a limit takes (far below the semaphore's own bound).
const MAX_PERMITS: usize = 1_000_000;

/// An issuer URL: a [`check_url`] naming the tenant's domain, not its JWKS (the keys are
/// fetched from `<issuer_url>/.well-known/jwks.json`).
fn check_issuer(key: &str, url: &str) -> Result<(), ConfigError> {
    check_url(key, url)?;
    if url.contains("/.well-known/") {
        let domain = url.split("/.well-known/").next().unwrap_or(url);
        return Err(invalid(
            key,
            format!(
                "{url:?} is a key set's URL; the issuer is the domain only ({domain:?}), \
                 the keys are fetched from <issuer_url>/.well-known/jwks.json (or set jwks_url)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_issuer(text: &str) -> Config {
        let mut c = Config::from_toml(text, "test").unwrap();
        c.kinde
            .issuer_url
            .get_or_insert_with(|| "https://acme.kinde.com".into());
        c
    }

    #[test]
    fn defaults_and_env() {
        let mut c = Config::default();
        assert!(
            matches!(c.validate(), Err(ConfigError::Invalid { key, message }) if key == "kinde.issuer_url" && message.contains("KINDE_ISSUER_URL"))
        );
        c.apply_env(|k| match k {
            "KINDE_ISSUER_URL" => Some("https://acme.kinde.com/".into()),
            "KINDE_WEBHOOKS_BIND" => Some("0.0.0.0:8080".into()),
            _ => None,
        });
        c.validate().unwrap();
        assert_eq!(
            c.jwks_url().unwrap(),
            "https://acme.kinde.com/.well-known/jwks.json"
        );
        assert_eq!(c.server.bind, "0.0.0.0:8080");
        assert_eq!(c.effective_routes()[0].path, DEFAULT_ROUTE);
        assert_eq!(c.server.body_limit, 65536);
    }

    #[test]
    fn validation_names_the_key() {
        let cases = [
            ("[server]\nbind = \"nope\"", "server.bind"),
            (
                "[kinde]\nissuer_url = \"http://acme.kinde.com\"",
                "kinde.issuer_url",
            ),
            ("[kinde]\nmax_event_age = \"5s\"", "kinde.max_event_age"),
            (
                "[kinde]\nissuer_url = \"https://acme.kinde.com/.well-known/jwks.json\"",
                "kinde.issuer_url",
            ),
            (
                "[[routes]]\npath = \"/a\"\nissuer_url = \"https://b.kinde.com/.well-known/jwks.json\"",
                "routes[0].issuer_url",
            ),
            (
                "[kinde]\njwks_refresh_cooldown = \"0s\"",
                "kinde.jwks_refresh_cooldown",
            ),
            ("[[routes]]\npath = \"/hooks/:id\"", "routes[0].path"),
            ("[server]\nbody_limit = 1024", "server.body_limit"),
            ("[limits]\nmax_token_bytes = 1024", "limits.max_token_bytes"),
            (
                "[limits]\nmax_payload_bytes = 4096",
                "limits.max_payload_bytes",
            ),
            (
                "[limits]\nrequest_timeout = \"1ns\"",
                "limits.request_timeout",
            ),
            (
                "[server]\nbind = \"127.0.0.1:3000\"\n[metrics]\nbind = \"127.0.0.1:3000\"",
                "metrics.bind",
            ),
            (
                "[[forward.nats]]\nname = \"n\"\npatterns = [\"*\"]\nack_timeout = \"1ns\"",
                "forward.nats[0].ack_timeout",
            ),
            ("[[routes]]\npath = \"/metrics\"", "routes[0].path"),
            (
                "[limits]\nmax_connections = 2305843009213693952",
                "limits.max_connections",
            ),
            (
                "[limits]\nmax_concurrent_requests = 0",
                "limits.max_concurrent_requests",
            ),
            ("[[routes]]\npath = \"users\"", "routes[0].path"),
            (
                "[[routes]]\npath = \"/a\"\npatterns = [\"user*\"]",
                "routes[0].patterns",
            ),
            (
                "[[routes]]\npath = \"/a\"\n[[routes]]\npath = \"/a\"",
                "routes[1].path",
            ),
            ("[kinde]\nmax_event_age = \"40d\"", "inbox.retention"),
            ("[inbox]\nretention = \"1h\"", "inbox.retention"),
            ("[inbox]\nlease = \"10s\"", "inbox.lease"),
            ("[inbox]\nworkers = 0", "inbox.workers"),
            ("[store]\nbackend = \"mysql\"", "store.backend"),
            ("[store]\nbackend = \"postgres\"", "store.url"),
            (
                "[store]\nbackend = \"postgres\"\nurl = \"mysql://x\"",
                "store.url",
            ),
            (
                "[store]\nbackend = \"postgres\"\nurl = \"postgres://h/db\"\nschema = \"Bad-Name\"",
                "store.schema",
            ),
            (
                "[store]\nbackend = \"postgres\"\nurl = \"postgres://h/db\"\nmax_connections = 0",
                "store.max_connections",
            ),
            (
                "[store]\nbackend = \"postgres\"\nurl = \"postgres://h/db\"\nstatement_timeout = \"0s\"",
                "store.statement_timeout",
            ),
            (
                "[store]\nbackend = \"postgres\"\nurl = \"postgres://h/db\"\nstatement_timeout = \"30d\"",
                "store.statement_timeout",
            ),
            ("[log]\nlevel = \"verbose!!\"", "log.level"),
            (NATS_NO_PATTERNS, "forward.nats[0].patterns"),
            (
                "[[forward.nats]]\nname = \"n\"\npatterns = [\"*\"]\nurl = \"http://x:4222\"",
                "forward.nats[0].url",
            ),
            (
                "[[forward.nats]]\nname = \"n\"\npatterns = [\"*\"]\nsubject_prefix = \"a..b\"",
                "forward.nats[0].subject_prefix",
            ),
            (
                "[[forward.nats]]\nname = \"n\"\npatterns = [\"*\"]\nstream = \"a.b\"",
                "forward.nats[0].stream",
            ),
            (
                "[[forward.nats]]\nname = \"n\"\npatterns = [\"*\"]\ncreate_stream = true",
                "forward.nats[0].create_stream",
            ),
            (
                "[[forward.nats]]\nname = \"n\"\npatterns = [\"*\"]\nack_timeout = \"1m\"",
                "forward.nats[0].ack_timeout",
            ),
            (
                "[[forward.nats]]\nname = \"N\"\npatterns = [\"*\"]",
                "forward.nats[0].name",
            ),
            (
                "[[forward.nats]]\nname = \"n\"\npatterns = [\"*\"]\n[[forward.nats]]\nname = \"n\"\npatterns = [\"*\"]",
                "forward.nats[1].name",
            ),
        ];
        for (text, want) in cases {
            match with_issuer(text).validate() {
                Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, want, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    const NATS_NO_PATTERNS: &str = "[[forward.nats]]\nname = \"n\"\npatterns = []";

    #[test]
    fn nats_forwarders_default_and_nats_url_fills_a_missing_url() {
        let text = "[[forward.nats]]\nname = \"nats\"\npatterns = [\"user.*\"]\n\
                    [[forward.nats]]\nname = \"other\"\npatterns = [\"*\"]\nurl = \"nats://10.0.0.1:4222\"";
        let mut c = with_issuer(text);
        c.validate().unwrap();
        let n = &c.forward.nats[0];
        assert_eq!(n.server_url(), DEFAULT_NATS_URL);
        assert_eq!(n.subject_prefix, "kinde");
        assert_eq!(n.ack_timeout, Duration::from_secs(5));
        assert!(n.stream.is_none() && !n.create_stream);
        c.apply_env(|k| (k == "NATS_URL").then(|| "nats://nats.internal:4222".into()));
        assert_eq!(c.forward.nats[0].server_url(), "nats://nats.internal:4222");
        assert_eq!(c.forward.nats[1].server_url(), "nats://10.0.0.1:4222");
        assert!(Config::from_toml("[[forward.nats]]\nname = \"n\"", "t").is_err());
        assert!(Config::from_toml("[[forward.kafka]]\nname = \"n\"", "t").is_err());
    }

    #[test]
    fn database_url_moves_only_a_postgres_store() {
        let env = |k: &str| (k == "DATABASE_URL").then(|| "postgres://env@h/db".to_owned());
        let mut sqlite = with_issuer("");
        sqlite.apply_env(env);
        assert_eq!(sqlite.store.url, None);
        sqlite.validate().unwrap();
        let mut pg = with_issuer("[store]\nbackend = \"postgres\"\nurl = \"postgres://file@h/db\"");
        pg.apply_env(env);
        assert_eq!(pg.store.url.as_deref(), Some("postgres://env@h/db"));
        pg.validate().unwrap();
        assert_eq!(pg.store.schema, DEFAULT_PG_SCHEMA);
    }

    #[test]
    fn the_database_password_stays_out_of_debug_output() {
        let c = with_issuer("[store]\nbackend = \"postgres\"\nurl = \"postgres://u:hunter2@h/db\"");
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("***"),
            "{shown}"
        );
    }

    #[test]
    fn a_route_accepts_what_its_patterns_match() {
        let route = RouteConfig {
            path: "/u".into(),
            patterns: vec!["user.*".into(), "role.created".into()],
            issuer_url: None,
            jwks_url: None,
        };
        assert!(route.accepts("user.created") && route.accepts("role.created"));
        assert!(!route.accepts("role.deleted") && !route.accepts("organization.created"));
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_parse_errors() {
        assert!(Config::from_toml("[server]\nbnd = \"x\"", "t").is_err());
        assert!(Config::from_toml("[kinde]\njwks_refresh_cooldown = \"soon\"", "t").is_err());
        let err = Config::from_toml("[delivery]\nhandler_timeout = 30", "t").unwrap_err();
        assert!(err.to_string().contains(r#"like "30s""#), "{err}");
        let err = Config::from_toml("[kinde]\nmax_event_age = 36", "t").unwrap_err();
        assert!(err.to_string().contains(r#"like "36s""#), "{err}");
        let err = with_issuer("[kinde]\nissuer_url = \"acme.kinde.com\"").validate();
        let err = err.unwrap_err().to_string();
        assert!(err.contains(r#""https://acme.kinde.com""#), "{err}");
        // Beyond 10 years date arithmetic would overflow: refused where it is read.
        for key in ["retention", "retry_base", "retry_cap", "lease"] {
            let text = format!("[inbox]\n{key} = \"300000years\"");
            let err = Config::from_toml(&text, "t").unwrap_err().to_string();
            assert!(err.contains("more than 10 years"), "{key}: {err}");
        }
        let text = "[kinde]\nmax_event_age = \"3650d\"\n[inbox]\nretention = \"3650d\"";
        assert!(Config::from_toml(text, "t").is_ok());
        let c =
            with_issuer("[kinde]\nmax_event_age = \"36h\"\n[handlers.audit]\ntable = \"events\"");
        assert_eq!(c.kinde.max_event_age, Some(Duration::from_secs(36 * 3600)));
        assert!(c.handlers.contains_key("audit"));
    }

    #[test]
    fn inline_store_dedup_on_postgres_warns_about_replicas() {
        let c = Config::from_toml(
            "[delivery]\nmode = \"inline\"\ninline_dedup = \"store\"\n\
             [store]\nbackend = \"postgres\"\nurl = \"postgres://h/db\"",
            "test",
        )
        .unwrap();
        assert!(
            c.warnings().iter().any(|w| w.contains("replicas")),
            "{:?}",
            c.warnings()
        );
        assert!(Config::default().warnings().is_empty());
    }
}
