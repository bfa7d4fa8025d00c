//! The storage contract of the inbox, so SQLite (embedded, the default) and PostgreSQL
//! (replicas) implement the same semantics.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

/// A verified event to keep before it is acknowledged.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The route it arrived on; part of the dedup key.
    pub route: String,
    /// The signed `event_id`; part of the dedup key.
    pub event_id: String,
    /// The `webhook-id` header, for correlation.
    pub webhook_id: Option<String>,
    /// The issuer whose keys verified it (handlers see it as `event.delivery.issuer`).
    pub issuer: String,
    /// The event type.
    pub event_type: String,
    /// The signed claims, as received.
    pub claims: Arc<str>,
    /// When it was received.
    pub received_at: DateTime<Utc>,
    /// The handlers that must run; empty: stored as `skipped`.
    pub handlers: Vec<Arc<str>>,
}

/// What `enqueue` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Newly stored, durably.
    Stored,
    /// (route, event_id) was already stored: nothing changed.
    Duplicate,
}

/// Identifies one claim of one (event, handler) job.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobKey {
    /// The stored event's row id.
    pub event_row: i64,
    /// The handler's name.
    pub handler: String,
    /// Which claim of the job this is (the store counts them). `finish` and `release` only
    /// touch the job while it is still held under this claim: once the lease expired and
    /// another worker (another replica) claimed it again, a late `finish` changes nothing.
    pub claim: i64,
}

/// A claimed job: the handler to run and the event to give it.
#[derive(Debug, Clone)]
pub struct Job {
    /// Which job.
    pub key: JobKey,
    /// Attempts made before this one.
    pub attempts: u32,
    /// The route the event arrived on.
    pub route: String,
    /// The `webhook-id` it arrived with.
    pub webhook_id: Option<String>,
    /// The issuer whose keys verified it; `None` for events stored before the store kept it.
    pub issuer: Option<String>,
    /// The signed claims.
    pub claims: String,
    /// When it was received.
    pub received_at: DateTime<Utc>,
}

/// How one attempt ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The handler succeeded.
    Done,
    /// It failed; try again at `due_at`.
    Retry {
        /// The error, for `inbox show`.
        error: String,
        /// When the next attempt is due.
        due_at: DateTime<Utc>,
    },
    /// It failed for good: out of attempts, or a permanent error.
    Dead {
        /// The last error.
        error: String,
    },
}

/// The result of one attempt, to record.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Which job.
    pub key: JobKey,
    /// How it ended.
    pub outcome: Outcome,
    /// When the attempt started.
    pub started_at: DateTime<Utc>,
    /// How long it ran.
    pub duration: Duration,
}

/// The status of an event, derived from its jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    /// Some handler has not run yet, or is running.
    Pending,
    /// Some handler failed and will be retried.
    Failed,
    /// Some handler is dead-lettered.
    Dead,
    /// Every handler succeeded.
    Done,
    /// No handler matched.
    Skipped,
}

impl EventStatus {
    /// The lowercase name used in the CLI and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Pending => "pending",
            EventStatus::Failed => "failed",
            EventStatus::Dead => "dead",
            EventStatus::Done => "done",
            EventStatus::Skipped => "skipped",
        }
    }

    /// Parse a CLI value.
    pub fn parse(s: &str) -> Option<EventStatus> {
        [
            Self::Pending,
            Self::Failed,
            Self::Dead,
            Self::Done,
            Self::Skipped,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

impl fmt::Display for EventStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of `inbox list`.
#[derive(Debug, Clone, Serialize)]
pub struct EventSummary {
    /// The store's row id.
    pub row: i64,
    /// The route it arrived on.
    pub route: String,
    /// The signed event id.
    pub event_id: String,
    /// The `webhook-id` header.
    pub webhook_id: Option<String>,
    /// The event type.
    pub event_type: String,
    /// When it was received.
    pub received_at: DateTime<Utc>,
    /// Derived from its jobs.
    pub status: EventStatus,
}

/// One (event, handler) job as `inbox show` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct JobDetail {
    /// The handler's name.
    pub handler: String,
    /// `pending`, `in_flight`, `failed`, `dead` or `done`.
    pub status: String,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due.
    pub due_at: DateTime<Utc>,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// Every attempt: start, duration, error.
    pub history: Vec<AttemptDetail>,
}

/// One attempt of one job.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptDetail {
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// How long it ran, in milliseconds.
    pub duration_ms: f64,
    /// Why it failed; `None` when it succeeded.
    pub error: Option<String>,
}

/// Everything the inbox holds about one stored event.
#[derive(Debug, Clone, Serialize)]
pub struct EventDetail {
    /// The summary line.
    #[serde(flatten)]
    pub summary: EventSummary,
    /// The signed claims.
    pub claims: serde_json::Value,
    /// Its jobs.
    pub jobs: Vec<JobDetail>,
}

/// What `inbox list` selects.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only events with this status.
    pub status: Option<EventStatus>,
    /// Only events of this type.
    pub event_type: Option<String>,
    /// At most this many, newest first.
    pub limit: u32,
}

/// What `inbox replay` re-runs.
#[derive(Debug, Clone)]
pub enum ReplayTarget {
    /// One event (on every route it arrived on).
    Event(String),
    /// Every event with a dead-lettered job.
    Dead,
    /// Every event stored as skipped.
    Skipped,
}

/// Counts by status, for readiness and metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Depth {
    /// Jobs waiting for their first or next attempt.
    pub pending: u64,
    /// Jobs running now.
    pub in_flight: u64,
    /// Jobs dead-lettered.
    pub dead: u64,
    /// Age of the oldest job still due, in seconds.
    pub oldest_pending_secs: Option<f64>,
}

/// Why the store failed. The HTTP layer answers 503 so Kinde retries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database refused or failed (disk full, read-only, locked, unreachable).
    #[error("store: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration could not be applied.
    #[error("store schema: {0}")]
    Schema(String),
    /// The store's writer has stopped (shutting down).
    #[error("store is shutting down")]
    Closed,
    /// The database answers but takes no writes (a read-only standby or transaction).
    #[error("store is read-only: {0}")]
    ReadOnly(String),
}

/// Signals that another process sharing the store added or rescheduled work: idle workers
/// claim at once instead of waiting for their next poll. The value carries nothing; each
/// change is one wake-up, and changes that arrive while the workers are busy coalesce.
pub type WakeUps = tokio::sync::watch::Receiver<()>;

/// Computes the handlers that now match an event (route, type), for replay.
pub type Matcher<'a> = &'a (dyn Fn(&str, &str) -> Vec<String> + Send + Sync);

/// Storage for the inbox. Every method is atomic.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Store an event with one pending job per handler, durably, unless (route, event_id)
    /// is already stored. Returns only once the row is durable.
    async fn enqueue(&self, event: NewEvent) -> Result<Enqueued, StoreError>;

    /// Claim up to `limit` due jobs (pending or failed and due, or in flight with an expired
    /// lease) for `lease`; a claimed job is not handed to anyone else until then.
    async fn claim(&self, limit: usize, lease: Duration) -> Result<Vec<Job>, StoreError>;

    /// Record the outcome of an attempt, if the job is still held under `finished.key`'s
    /// claim; otherwise (its lease expired and it was claimed again) change nothing, not even
    /// the attempt history: the new holder's attempt is the one recorded.
    async fn finish(&self, finished: Finished) -> Result<(), StoreError>;

    /// Hand claimed jobs back unrun (shutdown), due now, without counting an attempt; jobs
    /// no longer held under the key's claim are left alone.
    async fn release(&self, jobs: Vec<JobKey>) -> Result<(), StoreError>;

    /// When the next job falls due, if any is waiting.
    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Events, newest first.
    async fn list(&self, filter: &ListFilter) -> Result<Vec<EventSummary>, StoreError>;

    /// Everything about the events with this `event_id` (one per route).
    async fn show(&self, event_id: &str) -> Result<Vec<EventDetail>, StoreError>;

    /// Make the target's jobs due now, for every handler `matcher` says matches now.
    /// Returns how many jobs were scheduled.
    async fn replay(&self, target: &ReplayTarget, matcher: Matcher<'_>) -> Result<u64, StoreError>;

    /// Delete done and skipped events received before `before` (dead ones too when asked).
    async fn purge(&self, before: DateTime<Utc>, include_dead: bool) -> Result<u64, StoreError>;

    /// Whether (route, event_id) was recorded as handled (inline mode's dedup in the store).
    async fn seen(&self, route: &str, event_id: &str) -> Result<bool, StoreError>;

    /// Record (route, event_id) as handled (inline mode's dedup in the store).
    async fn mark_seen(
        &self,
        route: &str,
        event_id: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Job counts, for readiness and metrics.
    async fn depth(&self) -> Result<Depth, StoreError>;

    /// Whether a write could start now (readiness): the write lock can be taken.
    async fn writable(&self) -> Result<(), StoreError>;

    /// Wake-ups when another process adds work to this store (several replicas on one
    /// database). `None`, the default: only this process adds work, and [`Inbox::wake`]
    /// covers it.
    ///
    /// [`Inbox::wake`]: super::Inbox::wake
    fn wake_ups(&self) -> Option<WakeUps> {
        None
    }
}
