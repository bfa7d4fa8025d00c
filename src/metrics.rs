//! Prometheus metrics: what the receiver counts and times, and the `/metrics` text.
//!
//! Every label value is bounded: routes and handler names come from configuration and
//! code, outcomes are the fixed reason labels, event types are those of verified events.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::inbox::store::Depth;

/// Requests by route and outcome (`ok`, `duplicate`, `unrouted`, `unhandled`, or a reason label).
pub const REQUESTS: &str = "kinde_webhooks_requests_total";
/// Time to verify one token (parse, key lookup, signature, claims), in seconds.
pub const VERIFY_SECONDS: &str = "kinde_webhooks_verify_seconds";
/// Time of one handler call, in seconds, by handler and event type.
pub const HANDLER_SECONDS: &str = "kinde_webhooks_handler_seconds";
/// Failed handler calls (errors, panics, timeouts), by handler and event type.
pub const HANDLER_FAILURES: &str = "kinde_webhooks_handler_failures_total";
/// JWKS fetches by result (`ok`, `error`).
pub const JWKS_FETCHES: &str = "kinde_webhooks_jwks_fetches_total";
/// Seconds since the key set was last loaded; absent before the first load.
pub const JWKS_AGE: &str = "kinde_webhooks_jwks_age_seconds";
/// Keys held.
pub const JWKS_KEYS: &str = "kinde_webhooks_jwks_keys";
/// Deliveries answered as duplicates, by route.
pub const DEDUP_HITS: &str = "kinde_webhooks_dedup_hits_total";
/// Inbox jobs by status (`pending` includes failed jobs waiting for a retry).
pub const INBOX_JOBS: &str = "kinde_webhooks_inbox_jobs";
/// Age of the oldest job still to run, in seconds (0 when none).
pub const INBOX_OLDEST: &str = "kinde_webhooks_inbox_oldest_pending_seconds";

/// Latency buckets, in seconds: from 50 µs (a verify) to 30 s (a handler timeout).
const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

/// The process-wide recorder, installed on first use. Shared by every receiver in the
/// process (tests run several; their routes and handler names tell them apart).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("static buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder installed first (an embedding app's) keeps working; ours then
        // only renders what it records through the handle, which is nothing: say so.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "a metrics recorder was already installed; /metrics shows only its own output"
            );
        }
        describe();
        handle
    })
}

fn describe() {
    describe_counter!(REQUESTS, "Webhook requests by route and outcome.");
    describe_histogram!(
        VERIFY_SECONDS,
        metrics::Unit::Seconds,
        "Token verification time."
    );
    describe_histogram!(
        HANDLER_SECONDS,
        metrics::Unit::Seconds,
        "Handler call time."
    );
    describe_counter!(
        HANDLER_FAILURES,
        "Failed handler calls (errors, panics, timeouts)."
    );
    describe_counter!(JWKS_FETCHES, "JWKS fetches by result.");
    describe_gauge!(
        JWKS_AGE,
        metrics::Unit::Seconds,
        "Seconds since the key set was loaded."
    );
    describe_gauge!(JWKS_KEYS, "Signing keys held.");
    describe_counter!(DEDUP_HITS, "Deliveries answered as duplicates.");
    describe_gauge!(INBOX_JOBS, "Inbox jobs by status.");
    describe_gauge!(
        INBOX_OLDEST,
        metrics::Unit::Seconds,
        "Age of the oldest job still to run."
    );
}

/// One answered webhook request.
pub fn request(route: &str, outcome: &'static str) {
    counter!(REQUESTS, "route" => route.to_owned(), "outcome" => outcome).increment(1);
}

/// One verification, successful or not.
pub fn verified(elapsed: Duration) {
    histogram!(VERIFY_SECONDS).record(elapsed.as_secs_f64());
}

/// One handler call.
pub fn handler_call(handler: &str, event_type: &str, elapsed: Duration, ok: bool) {
    let labels = [
        ("handler", handler.to_owned()),
        ("event_type", event_type.to_owned()),
    ];
    histogram!(HANDLER_SECONDS, &labels).record(elapsed.as_secs_f64());
    if !ok {
        counter!(HANDLER_FAILURES, &labels).increment(1);
    }
}

/// One JWKS fetch.
pub fn jwks_fetch(ok: bool) {
    counter!(JWKS_FETCHES, "result" => if ok { "ok" } else { "error" }).increment(1);
}

/// One delivery answered as a duplicate.
pub fn dedup_hit(route: &str) {
    counter!(DEDUP_HITS, "route" => route.to_owned()).increment(1);
}

/// The key set's state, set at scrape time.
pub fn jwks_state(age: Option<Duration>, keys: usize) {
    if let Some(age) = age {
        gauge!(JWKS_AGE).set(age.as_secs_f64());
    }
    gauge!(JWKS_KEYS).set(keys as f64);
}

/// The inbox's depth, set at scrape time.
pub fn inbox_depth(depth: &Depth) {
    gauge!(INBOX_JOBS, "status" => "pending").set(depth.pending as f64);
    gauge!(INBOX_JOBS, "status" => "in_flight").set(depth.in_flight as f64);
    gauge!(INBOX_JOBS, "status" => "dead").set(depth.dead as f64);
    gauge!(INBOX_OLDEST).set(depth.oldest_pending_secs.unwrap_or(0.0).max(0.0));
}
