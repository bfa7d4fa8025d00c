//! `[[forward.nats]]`: publish each matching event to NATS JetStream and wait for the ack.
//!
//! The payload is the signed claims JSON as received; `Nats-Msg-Id` is the event's
//! `event_id`, the same on every Kinde retry and every webhook the event is sent to, so
//! JetStream stores one message per event however often it is published (within the
//! stream's duplicate window). `Kinde-Issuer` and `Kinde-Route` say which Kinde
//! environment and route it came from: several environments forward to the same subjects.
//! The connection is made lazily and kept up by the client:
//! a server that is down costs retries, never events.

use std::fmt;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{CreateStreamErrorKind, GetStreamErrorKind};
use async_nats::jetstream::{self, stream};
use async_nats::{ConnectOptions, HeaderMap, HeaderValue};
use async_trait::async_trait;
use tokio::sync::OnceCell;

use super::{ForwardError, ForwarderStatus};
use crate::config::NatsForwardConfig;
use crate::event::Event;
use crate::handler::{Context, EventHandler, HandlerError};
use crate::registry::Pattern;

/// How often start-up looks at the connection state while it waits for the server.
const CONNECT_POLL: Duration = Duration::from_millis(20);

/// One `[[forward.nats]]`, as a handler.
pub(super) struct NatsForwarder {
    config: NatsForwardConfig,
    /// The server URL without credentials, for logs and errors.
    shown_url: String,
    /// Connected on first use (start-up or the first event); reconnects by itself.
    js: OnceCell<jetstream::Context>,
    /// Set once the configured stream was found (or created) and takes the subjects.
    stream_ready: OnceCell<()>,
}

impl fmt::Debug for NatsForwarder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsForwarder")
            .field("name", &self.config.name)
            .field("url", &self.shown_url)
            .field("subject_prefix", &self.config.subject_prefix)
            .field("stream", &self.config.stream)
            .finish_non_exhaustive()
    }
}

/// `url` with any user name, password or token removed.
fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string().trim_end_matches('/').to_owned()
        }
        Err(_) => "<invalid url>".to_owned(),
    }
}

impl NatsForwarder {
    /// A forwarder for a validated `[[forward.nats]]`; nothing is connected yet.
    pub(super) fn new(config: NatsForwardConfig) -> Self {
        Self {
            shown_url: redacted(config.server_url()),
            config,
            js: OnceCell::new(),
            stream_ready: OnceCell::new(),
        }
    }

    pub(super) fn name(&self) -> &str {
        &self.config.name
    }

    pub(super) fn patterns(&self) -> &[String] {
        &self.config.patterns
    }

    /// The JetStream context, creating the client on first use. The client connects in the
    /// background and keeps reconnecting; only a URL it cannot use fails here.
    async fn jetstream(&self) -> Result<&jetstream::Context, String> {
        self.js
            .get_or_try_init(|| async {
                let client = ConnectOptions::new()
                    .name(format!("kinde-webhooks {}", self.config.name))
                    .retry_on_initial_connect()
                    .max_reconnects(None)
                    .connect(self.config.server_url())
                    .await
                    .map_err(|e| format!("cannot use NATS server {}: {e}", self.shown_url))?;
                let mut js = jetstream::new(client);
                js.set_timeout(self.config.ack_timeout);
                Ok(js)
            })
            .await
    }

    /// Connect, wait up to `ack_timeout` for the server, and check or create the stream.
    pub(super) async fn start(&self) -> Result<ForwarderStatus, ForwardError> {
        let fail = |message: String| ForwardError::Nats {
            name: self.config.name.clone(),
            message,
        };
        let js = self.jetstream().await.map_err(fail)?;
        let client = js.client();
        let deadline = Instant::now() + self.config.ack_timeout;
        while client.connection_state() != async_nats::connection::State::Connected
            && Instant::now() < deadline
        {
            tokio::time::sleep(CONNECT_POLL).await;
        }
        let name = self.config.name.clone();
        if client.connection_state() != async_nats::connection::State::Connected {
            let detail = format!(
                "NATS {} is not reachable yet; the forwarder keeps reconnecting and events are retried until it answers",
                self.shown_url
            );
            tracing::warn!(forwarder = %name, "{detail}");
            return Ok(ForwarderStatus {
                name,
                reachable: false,
                detail,
            });
        }
        self.stream_ready
            .get_or_try_init(|| self.ensure_stream(js))
            .await
            .map_err(fail)?;
        let detail = match &self.config.stream {
            Some(stream) => format!(
                "connected to NATS {}; stream {stream} takes {}",
                self.shown_url,
                self.needed_subjects().join(", ")
            ),
            None => format!("connected to NATS {}", self.shown_url),
        };
        tracing::info!(forwarder = %name, "{detail}");
        Ok(ForwarderStatus {
            name,
            reachable: true,
            detail,
        })
    }

    /// The subjects this forwarder can publish to, as NATS filters: `kinde.user.created`,
    /// `kinde.user.>`, `kinde.>`.
    fn needed_subjects(&self) -> Vec<String> {
        let prefix = &self.config.subject_prefix;
        let mut subjects: Vec<String> = Vec::new();
        for pattern in self
            .config
            .patterns
            .iter()
            .filter_map(|p| Pattern::parse(p).ok())
        {
            let subject = match pattern {
                Pattern::Exact(t) => format!("{prefix}.{t}"),
                Pattern::Group(g) => format!("{prefix}.{g}>"),
                Pattern::All => format!("{prefix}.>"),
            };
            if !subjects.contains(&subject) {
                subjects.push(subject);
            }
        }
        subjects
    }

    /// Find the configured stream (creating it when asked) and check that it takes every
    /// subject this forwarder publishes to. Without a configured stream there is nothing to do.
    async fn ensure_stream(&self, js: &jetstream::Context) -> Result<(), String> {
        let Some(name) = &self.config.stream else {
            return Ok(());
        };
        let all = format!("{}.>", self.config.subject_prefix);
        let subjects = match js.get_stream(name).await {
            Ok(found) => found.cached_info().config.subjects.clone(),
            Err(e) if is_not_found(e.kind()) && self.config.create_stream => {
                let config = stream::Config {
                    name: name.clone(),
                    subjects: vec![all.clone()],
                    duplicate_window: self.config.duplicate_window,
                    ..Default::default()
                };
                match js.create_stream(config).await {
                    Ok(created) => {
                        tracing::info!(forwarder = %self.config.name, stream = %name, subjects = %all, "created the JetStream stream");
                        created.cached_info().config.subjects.clone()
                    }
                    // Another process created it first: check the one that exists.
                    Err(e) if is_already_exists(e.kind()) => js
                        .get_stream(name)
                        .await
                        .map_err(|e| format!("cannot look up stream {name}: {e}"))?
                        .cached_info()
                        .config
                        .subjects
                        .clone(),
                    Err(e) => {
                        return Err(format!(
                            "cannot create stream {name} with subjects {all:?}: {e}; \
                             create it yourself, or change `stream` / `subject_prefix`"
                        ));
                    }
                }
            }
            Err(e) if is_not_found(e.kind()) => {
                return Err(format!(
                    "stream {name} does not exist on NATS {}: create it with subjects {all:?} \
                     (`nats stream add {name} --subjects '{all}'`), or set create_stream = true",
                    self.shown_url
                ));
            }
            Err(e) => {
                return Err(format!(
                    "cannot look up stream {name} on NATS {} (is JetStream enabled, `nats-server -js`?): {e}",
                    self.shown_url
                ));
            }
        };
        for needed in self.needed_subjects() {
            if !subjects.iter().any(|s| covers(s, &needed)) {
                return Err(format!(
                    "stream {name} takes subjects {subjects:?}, none of which covers {needed:?}: \
                     add {all:?} to its subjects, or change subject_prefix"
                ));
            }
        }
        Ok(())
    }

    /// `<prefix>.<event type>`, or a permanent error for a type that cannot be a subject.
    fn subject(&self, event_type: &str) -> Result<String, HandlerError> {
        let fits = !event_type.is_empty()
            && event_type.split('.').all(|token| {
                !token.is_empty()
                    && token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
            });
        if !fits {
            return Err(HandlerError::permanent(format!(
                "event type {event_type:?} cannot be part of a NATS subject"
            )));
        }
        Ok(format!("{}.{event_type}", self.config.subject_prefix))
    }
}

/// The headers of one event's message.
fn headers(event: &Event) -> Result<HeaderMap, HandlerError> {
    let value = |v: &str| {
        v.parse::<HeaderValue>()
            .map_err(|_| HandlerError::permanent(format!("{v:?} cannot be a NATS header value")))
    };
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, value(&event.event_id)?);
    headers.insert("Kinde-Event-Id", value(&event.event_id)?);
    headers.insert("Kinde-Event-Type", value(&event.event_type)?);
    headers.insert("Content-Type", value("application/json")?);
    // One receiver may serve several Kinde environments into one subject: say whose it is.
    if !event.delivery.issuer.is_empty() {
        headers.insert("Kinde-Issuer", value(&event.delivery.issuer)?);
    }
    if !event.delivery.route.is_empty() {
        headers.insert("Kinde-Route", value(&event.delivery.route)?);
    }
    // Unsigned metadata: a value NATS cannot carry is left out rather than failing the event.
    if let Some(webhook_id) = &event.delivery.webhook_id
        && let Ok(v) = webhook_id.parse::<HeaderValue>()
    {
        headers.insert("Kinde-Webhook-Id", v);
    }
    Ok(headers)
}

fn is_not_found(kind: GetStreamErrorKind) -> bool {
    matches!(kind, GetStreamErrorKind::JetStream(e) if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

fn is_already_exists(kind: CreateStreamErrorKind) -> bool {
    matches!(kind, CreateStreamErrorKind::JetStream(e) if e.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST)
}

/// Whether the NATS filter `filter` (from a stream's subjects) takes every subject that
/// `subject` (a filter whose only wildcard is a final `>`) stands for.
fn covers(filter: &str, subject: &str) -> bool {
    let wanted: Vec<&str> = subject.split('.').collect();
    let mut tokens = filter.split('.');
    for (i, want) in wanted.iter().enumerate() {
        match tokens.next() {
            Some(">") => return true,
            Some("*") if *want != ">" => {}
            Some(token) if token == *want && *want != ">" => {}
            _ => return false,
        }
        if i == wanted.len() - 1 {
            return tokens.next().is_none();
        }
    }
    false
}

#[async_trait]
impl EventHandler for NatsForwarder {
    async fn handle(&self, event: &Event, _ctx: &Context) -> Result<(), HandlerError> {
        let subject = self.subject(&event.event_type)?;
        let headers = headers(event)?;
        let js = self.jetstream().await.map_err(HandlerError::msg)?;
        if self.config.stream.is_some() {
            self.stream_ready
                .get_or_try_init(|| self.ensure_stream(js))
                .await
                .map_err(HandlerError::msg)?;
        }
        let payload = event.claims.as_bytes().to_vec().into();
        let publish = async {
            js.publish_with_headers(subject.clone(), headers, payload)
                .await?
                .await
        };
        let failed = |why: String| {
            HandlerError::msg(format!(
                "publish {} to {subject} on NATS {}: {why}",
                event.event_id, self.shown_url
            ))
        };
        let ack = match tokio::time::timeout(self.config.ack_timeout, publish).await {
            Err(_) => {
                return Err(failed(format!(
                    "no JetStream ack within {:?}",
                    self.config.ack_timeout
                )));
            }
            Ok(Err(e)) => {
                let why = match e.kind() {
                    jetstream::context::PublishErrorKind::StreamNotFound => {
                        "no stream takes this subject".to_owned()
                    }
                    _ => e.to_string(),
                };
                return Err(failed(why));
            }
            Ok(Ok(ack)) => ack,
        };
        if let Some(stream) = &self.config.stream
            && ack.stream != *stream
        {
            tracing::warn!(forwarder = %self.config.name, expected = %stream, stored_in = %ack.stream, %subject, "another stream took the event");
        }
        tracing::debug!(
            forwarder = %self.config.name,
            %subject,
            stream = %ack.stream,
            sequence = ack.sequence,
            duplicate = ack.duplicate,
            "forwarded to NATS"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarder(patterns: &[&str]) -> NatsForwarder {
        NatsForwarder::new(NatsForwardConfig {
            name: "nats".into(),
            patterns: patterns.iter().map(|p| (*p).to_owned()).collect(),
            url: Some("nats://user:secret@127.0.0.1:4222".into()),
            subject_prefix: "kinde".into(),
            stream: Some("KINDE".into()),
            create_stream: false,
            ack_timeout: Duration::from_secs(5),
            duplicate_window: Duration::from_secs(120),
        })
    }

    #[test]
    fn filters_cover_subjects() {
        for (filter, subject, want) in [
            ("kinde.>", "kinde.>", true),
            (">", "kinde.user.>", true),
            ("kinde.>", "kinde.user.created", true),
            ("kinde.*.created", "kinde.user.created", true),
            ("kinde.*", "kinde.user.created", false),
            ("kinde.*.*", "kinde.user.>", false),
            ("kinde.user.*", "kinde.user.>", false),
            ("kinde.user.>", "kinde.>", false),
            ("kinde.user.created", "kinde.user.created", true),
            ("kinde.user.created.x", "kinde.user.created", false),
            ("other.>", "kinde.>", false),
        ] {
            assert_eq!(covers(filter, subject), want, "{filter} covers {subject}");
        }
    }

    #[test]
    fn subjects_from_patterns_and_types() {
        let f = forwarder(&["user.*", "organization.created", "user.*"]);
        assert_eq!(
            f.needed_subjects(),
            ["kinde.user.>", "kinde.organization.created"]
        );
        assert_eq!(forwarder(&["*"]).needed_subjects(), ["kinde.>"]);
        assert_eq!(f.subject("user.created").unwrap(), "kinde.user.created");
        for bad in ["", "user.*", "user.>", "user created", "user..created"] {
            let e = f.subject(bad).unwrap_err();
            assert!(e.is_permanent(), "{bad:?}: {e}");
        }
    }

    #[test]
    fn credentials_stay_out_of_logs() {
        let f = forwarder(&["*"]);
        assert_eq!(f.shown_url, "nats://127.0.0.1:4222");
        assert!(!format!("{f:?}").contains("secret"));
    }
}
