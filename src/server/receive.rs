//! One delivery: read the body, verify, route, then store or dispatch, and answer.

use std::time::Instant;

use axum::body::{Body, HttpBody};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use http_body_util::BodyExt;
use tracing::Instrument;
use tracing::field::{Empty, display};

use super::{Dedup, Delivery, Route, Shared, WEBHOOK_ID_HEADER};
use crate::event::Event;
use crate::inbox::Inbox;
use crate::inbox::store::{Enqueued, NewEvent};
use crate::metrics;
use crate::registry::any_matches;
use crate::reply::{self, Rejection};

/// Answer one webhook request; every refusal is logged here with its reason label.
pub(super) async fn receive(
    shared: &Shared,
    route: &Route,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let span = tracing::info_span!("webhook", route = %route.path, event_id = Empty, event_type = Empty, webhook_id = Empty);
    let outcome = async {
        let work = async {
            // The body first, under its own deadline and size limit: a slow sender holds
            // one of `max_connections`, never one of the permits real deliveries need.
            let body = read_body(shared, body).await?;
            // Shed load at once rather than queue: Kinde retries, a queue would only grow.
            let Ok(_permit) = shared.in_flight.clone().try_acquire_owned() else {
                return Err(Rejection::Overloaded);
            };
            handle(shared, route, headers, body).await
        };
        tokio::time::timeout(shared.limits.request_timeout, work)
            .await
            .unwrap_or(Err(Rejection::RequestTimeout))
    }
    .instrument(span.clone())
    .await;
    match outcome {
        Ok(outcome) => {
            metrics::request(&route.path, outcome.label());
            if outcome == Outcome::Duplicate {
                metrics::dedup_hit(&route.path);
            }
            reply::ok()
        }
        Err(rejection) => {
            metrics::request(&route.path, rejection.reason());
            let _enter = span.enter();
            let status = rejection.status();
            let reason = rejection.reason();
            if status.is_server_error() {
                tracing::warn!(status = status.as_u16(), reason, error = %rejection, "webhook not acknowledged");
            } else {
                tracing::info!(status = status.as_u16(), reason, error = %rejection, "webhook refused");
            }
            rejection.into_response()
        }
    }
}

/// How an acknowledged (200) delivery ended, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Stored (inbox) or handled by every matching handler (inline).
    Ok,
    /// Already stored or handled: nothing run again.
    Duplicate,
    /// The route does not accept the type.
    Unrouted,
    /// No handler matches the type (stored as skipped in inbox mode).
    Unhandled,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Duplicate => "duplicate",
            Outcome::Unrouted => "unrouted",
            Outcome::Unhandled => "unhandled",
        }
    }
}

/// Read the whole body within the body deadline and the size limit, into one buffer. A
/// declared `Content-Length` over the limit is refused before a byte is read. The frames
/// are copied as they come: kept as they arrive, a body sent one byte per chunk would hold
/// a piece of a read buffer per byte, megabytes for a 64 KiB body.
async fn read_body(shared: &Shared, mut body: Body) -> Result<axum::body::Bytes, Rejection> {
    let limit = shared.body_limit;
    // hyper has read and checked the `Content-Length`; the body's exact size hint is it.
    let declared = HttpBody::size_hint(&body).exact();
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Rejection::PayloadTooLarge);
    }
    let read = async {
        let mut buf = Vec::with_capacity(declared.map_or(4096, |n| n as usize));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| Rejection::UnreadableBody)?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(Rejection::PayloadTooLarge);
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(axum::body::Bytes::from(buf))
    };
    tokio::time::timeout(shared.limits.body_read_timeout, read)
        .await
        .unwrap_or(Err(Rejection::BodyTimeout))
}

async fn handle(
    shared: &Shared,
    route: &Route,
    headers: &HeaderMap,
    body: axum::body::Bytes,
) -> Result<Outcome, Rejection> {
    let token = std::str::from_utf8(&body).map_err(|_| Rejection::UnreadableBody)?;
    let started = Instant::now();
    let issuer = &shared.issuers[route.issuer];
    let verified = issuer.verifier.verify(token).await;
    metrics::verified(started.elapsed());
    let mut event = verified?;
    event.delivery.webhook_id = headers
        .get(WEBHOOK_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    event.delivery.route = route.path.clone();
    event.delivery.issuer.clone_from(&issuer.url);
    event.delivery.received_at = Utc::now();

    let span = tracing::Span::current();
    span.record("event_id", display(&event.event_id));
    span.record("event_type", display(&event.event_type));
    if let Some(id) = &event.delivery.webhook_id {
        span.record("webhook_id", display(id));
    }

    let routed = any_matches(&route.patterns, &event.event_type);
    match &shared.delivery {
        Delivery::Inbox(inbox) => store_event(shared, inbox, event, routed).await,
        Delivery::Inline(dedup) => {
            if !routed {
                tracing::info!(
                    "event type not accepted on this route; acknowledged, not dispatched"
                );
                return Ok(Outcome::Unrouted);
            }
            handle_inline(shared, dedup, &event).await
        }
    }
}

/// Inbox mode: commit the event (with one job per matching handler) before the 200.
async fn store_event(
    shared: &Shared,
    inbox: &Inbox,
    event: Event,
    routed: bool,
) -> Result<Outcome, Rejection> {
    let handlers = if routed {
        shared
            .dispatcher
            .registry()
            .handlers_for(&event.event_type)
            .map(|e| e.name.clone())
            .collect()
    } else {
        Vec::new()
    };
    let skipped = handlers.is_empty();
    let new = NewEvent {
        route: event.delivery.route,
        event_id: event.event_id,
        webhook_id: event.delivery.webhook_id,
        issuer: event.delivery.issuer,
        event_type: event.event_type,
        claims: event.claims,
        received_at: event.delivery.received_at,
        handlers,
    };
    match inbox.store().enqueue(new).await {
        Ok(Enqueued::Stored) if skipped => {
            tracing::info!(routed, "no handler for this event; stored as skipped");
            Ok(if routed {
                Outcome::Unhandled
            } else {
                Outcome::Unrouted
            })
        }
        Ok(Enqueued::Stored) => {
            inbox.wake();
            tracing::info!("event stored");
            Ok(Outcome::Ok)
        }
        Ok(Enqueued::Duplicate) => {
            tracing::info!("duplicate delivery; already stored");
            Ok(Outcome::Duplicate)
        }
        Err(e) => Err(Rejection::StoreUnavailable(e.to_string())),
    }
}

/// Inline mode: run the handlers before the reply; remember the key only once all succeeded.
async fn handle_inline(
    shared: &Shared,
    dedup: &Dedup,
    event: &Event,
) -> Result<Outcome, Rejection> {
    let (route, id) = (event.delivery.route.as_str(), event.event_id.as_str());
    // Held until the key is recorded: a concurrent copy waits, then finds it handled.
    let _key = match dedup {
        Dedup::Off => None,
        _ => Some(shared.key_locks.lock(route, id).await),
    };
    let seen = match dedup {
        Dedup::Off => false,
        Dedup::Memory(set) => set.seen(route, id),
        Dedup::Store(store) => store.seen(route, id).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "dedup lookup failed; handling the event");
            false
        }),
    };
    if seen {
        tracing::info!("duplicate delivery; handlers not run again");
        return Ok(Outcome::Duplicate);
    }
    let report = shared.dispatcher.dispatch(event).await;
    if report.unhandled() {
        tracing::info!("no handler for this event type; acknowledged");
    } else if report.all_ok() {
        tracing::info!(handlers = report.outcomes.len(), "event handled");
    } else {
        let failed = report.outcomes.iter().filter(|o| o.result.is_err()).count();
        tracing::warn!(
            handlers = report.outcomes.len(),
            failed,
            "event not handled; Kinde will retry"
        );
        return Err(Rejection::HandlerFailed);
    }
    match dedup {
        Dedup::Off => {}
        Dedup::Memory(set) => set.record(route, id),
        Dedup::Store(store) => {
            if let Err(e) = store.mark_seen(route, id, event.delivery.received_at).await {
                tracing::warn!(error = %e, "could not record the event as handled; a redelivery would run it again");
            }
        }
    }
    Ok(if report.unhandled() {
        Outcome::Unhandled
    } else {
        Outcome::Ok
    })
}
