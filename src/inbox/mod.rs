//! The durable inbox: every verified event is stored before it is acknowledged, then
//! workers run its handlers with their own retries, so nothing answered 200 is lost.
//!
//! - [`store`]: the storage contract (and its types), so backends share semantics.
//! - [`sqlite`]: the embedded default, with group commit.
//! - [`postgres`]: one database shared by server replicas, with leases and wake-ups.
//! - `sql`: what the two share (time columns, the derived status, the reads).
//! - [`Inbox`]: the workers: claim due jobs, run each (event, handler) once per attempt
//!   with a timeout, retry with backoff and jitter, dead-letter, release on shutdown.

pub mod postgres;
mod sql;
pub mod sqlite;
pub mod store;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::Rng;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing::field::{Empty, display};

use crate::config::{Config, InboxConfig};
use crate::dispatch::Dispatcher;
use crate::handler::HandlerError;
use crate::verify::read_claims;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use store::{Enqueued, Store, StoreError};
use store::{Finished, Job, JobKey, Outcome};

/// How long to wait after the store failed before trying again.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// Jobs claimed per worker in one claim: fewer claims (commits) per job under load. Fewer
/// when the lease could not cover that many handler calls in a row (see [`Inbox::ahead`]).
const CLAIM_AHEAD: usize = 4;
/// How often finished and skipped events past retention are purged.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// The delay before attempt `attempt + 1`: `base * 2^(attempt-1)`, capped, with jitter in
/// `[delay/2, delay]` so that failures of many events do not retry in lockstep.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(30)));
    let delay = exp.min(cap);
    let half = delay / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

/// Open the `[store]` the configuration names (SQLite file or PostgreSQL schema), applying
/// migrations. Only opens it: a server also takes SQLite's serving lock and recovers jobs
/// left in flight (see `Webhooks::open`).
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match config.store.backend.as_str() {
        "postgres" => Arc::new(PgStore::open(&config.store).await?),
        "sqlite" => {
            Arc::new(SqliteStore::open(&config.store_path(), config.store.busy_timeout).await?)
        }
        other => {
            return Err(StoreError::Schema(format!(
                "[store] backend {other:?} is not \"sqlite\" or \"postgres\""
            )));
        }
    })
}

/// The inbox's workers over one store.
#[derive(Debug, Clone)]
pub struct Inbox {
    store: Arc<dyn Store>,
    dispatcher: Dispatcher,
    config: InboxConfig,
    wake: Arc<Notify>,
    /// The issuer of each route, by path: a stored event's issuer is its route's.
    issuers: Arc<HashMap<String, String>>,
}

impl Inbox {
    /// Workers over `store`, running the dispatcher's handlers.
    pub fn new(store: Arc<dyn Store>, dispatcher: Dispatcher, config: InboxConfig) -> Self {
        Self {
            store,
            dispatcher,
            config,
            wake: Arc::new(Notify::new()),
            issuers: Arc::default(),
        }
    }

    /// Tell handlers which issuer each route's events came from
    /// ([`Config::route_issuers`](crate::Config::route_issuers)).
    pub fn with_route_issuers(mut self, issuers: HashMap<String, String>) -> Self {
        self.issuers = Arc::new(issuers);
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Tell idle workers new work was stored.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Run workers until `stop` is cancelled; then finish in-flight jobs within the
    /// shutdown grace and hand back (release) any that did not finish.
    pub async fn run(&self, stop: CancellationToken) {
        let workers = self.config.workers.max(1);
        let permits = Arc::new(Semaphore::new(workers));
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut running: HashMap<tokio::task::Id, JobKey> = HashMap::new();
        // Claimed jobs waiting for a worker, with when they were claimed: one claim (one
        // commit) serves several jobs, all under one lease.
        let mut queue: VecDeque<(Job, Instant)> = VecDeque::new();
        let ahead = self.ahead();
        let mut last_purge = Instant::now() - PURGE_EVERY;
        // Another replica stored work: claim now rather than at the next poll.
        let mut wake_ups = self.store.wake_ups();
        loop {
            while let Some(done) = tasks.try_join_next_with_id() {
                running.remove(&done.map(|(id, ())| id).unwrap_or_else(|e| e.id()));
            }
            if last_purge.elapsed() >= PURGE_EVERY {
                last_purge = Instant::now();
                self.purge_expired().await;
            }
            // Jobs whose lease no longer covers a whole handler call are not run: they could
            // still be running when another replica claims them again.
            let mut stale = Vec::new();
            while !queue.is_empty() {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    break;
                };
                let Some((job, claimed)) = queue.pop_front() else {
                    break;
                };
                if !self.lease_covers_a_run(claimed) {
                    stale.push(job.key);
                    continue;
                }
                let key = job.key.clone();
                let this = self.clone();
                let handle = tasks.spawn(async move {
                    this.run_job(job, claimed).await;
                    drop(permit);
                });
                running.insert(handle.id(), key);
            }
            // Not claimed again at once: if the store is that slow, the next poll is soon enough.
            let handed_back = !stale.is_empty();
            if handed_back {
                tracing::info!(
                    jobs = stale.len(),
                    lease = ?self.config.lease,
                    "inbox: claimed jobs waited too long to start within their lease; handed back"
                );
                if let Err(e) = self.store.release(stale).await {
                    tracing::warn!(error = %e, "inbox: release failed; the jobs are picked up when their lease expires");
                }
            }
            let mut wait = self.config.poll_interval;
            if queue.is_empty() && permits.available_permits() > 0 && !handed_back {
                // Taken before the claim, so never later than the store's own lease start.
                let claimed = Instant::now();
                match self.store.claim(workers * ahead, self.config.lease).await {
                    Ok(jobs) if !jobs.is_empty() => {
                        queue.extend(jobs.into_iter().map(|job| (job, claimed)));
                        continue;
                    }
                    Ok(_) => {
                        if let Ok(Some(due)) = self.store.next_due().await {
                            let until = (due - Utc::now()).to_std().unwrap_or_default();
                            wait = wait.min(until.max(Duration::from_millis(5)));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "inbox: cannot claim work; retrying");
                        wait = STORE_RETRY;
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.wake.notified() => {}
                changed = async {
                    match wake_ups.as_mut() {
                        Some(rx) => rx.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if changed.is_err() {
                        wake_ups = None;
                    }
                }
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    running.remove(&done.map(|(id, ())| id).unwrap_or_else(|e| e.id()));
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
        // Claimed but not started: hand back at once, so the next start runs them.
        if !queue.is_empty() {
            let keys: Vec<JobKey> = queue.drain(..).map(|(job, _)| job.key).collect();
            if let Err(e) = self.store.release(keys).await {
                tracing::warn!(error = %e, "inbox: release failed; the jobs are picked up when their lease expires");
            }
        }
        self.drain(tasks, running).await;
    }

    /// Jobs claimed per worker: [`CLAIM_AHEAD`], or fewer when the lease does not cover
    /// that many handler calls one after another (a worker's last queued job starts after
    /// the others ran), and at least one.
    fn ahead(&self) -> usize {
        match self.dispatcher.timeout() {
            Some(limit) if !limit.is_zero() => {
                let fits = self.config.lease.as_secs_f64() / limit.as_secs_f64();
                (fits.floor() as usize).clamp(1, CLAIM_AHEAD)
            }
            _ => CLAIM_AHEAD,
        }
    }

    /// Whether a job claimed at `claimed` can still run a whole handler call (up to the
    /// handler timeout) before its lease expires: else another replica may claim it again
    /// while it runs here, and the handler would run twice at once.
    fn lease_covers_a_run(&self, claimed: Instant) -> bool {
        let run = self.dispatcher.timeout().unwrap_or_default();
        claimed.elapsed() + run < self.config.lease
    }

    async fn drain(&self, mut tasks: JoinSet<()>, mut running: HashMap<tokio::task::Id, JobKey>) {
        let grace = self.config.shutdown_grace;
        let finished = tokio::time::timeout(grace, async {
            while let Some(done) = tasks.join_next_with_id().await {
                running.remove(&done.map(|(id, ())| id).unwrap_or_else(|e| e.id()));
            }
        })
        .await;
        if finished.is_err() {
            tasks.abort_all();
            let keys: Vec<JobKey> = running.into_values().collect();
            tracing::warn!(
                jobs = keys.len(),
                ?grace,
                "inbox: handlers still running at shutdown; released for the next start"
            );
            if let Err(e) = self.store.release(keys).await {
                tracing::warn!(error = %e, "inbox: release failed; the jobs are picked up when their lease expires");
            }
        }
    }

    /// Run every job that is due now, then return (`inbox replay` when no server runs).
    pub async fn run_due(&self) -> Result<usize, StoreError> {
        let mut ran = 0;
        loop {
            let claimed = Instant::now();
            let jobs = self
                .store
                .claim(self.config.workers.max(1), self.config.lease)
                .await?;
            if jobs.is_empty() {
                return Ok(ran);
            }
            ran += jobs.len();
            let runs = jobs.into_iter().map(|job| self.run_job(job, claimed));
            futures_util::future::join_all(runs).await;
        }
    }

    async fn purge_expired(&self) {
        let Ok(retention) = chrono::Duration::from_std(self.config.retention) else {
            return;
        };
        match self.store.purge(Utc::now() - retention, false).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "inbox: purged finished events past retention"),
            Err(e) => tracing::warn!(error = %e, "inbox: purge failed"),
        }
    }

    /// One attempt of one job (claimed at `claimed`), recorded in the store.
    async fn run_job(&self, job: Job, claimed: Instant) {
        let started_at = Utc::now();
        let clock = Instant::now();
        let attempt = job.attempts + 1;
        // Every line about this attempt, the handler's own included, carries the event's ids.
        let span = tracing::info_span!("inbox", handler = %job.key.handler, attempt, event_id = Empty,
            event_type = Empty, webhook_id = %job.webhook_id.as_deref().unwrap_or(""));
        let result = match read_claims(job.claims, job.received_at) {
            Ok((mut event, _, _)) => {
                span.record("event_id", display(&event.event_id));
                span.record("event_type", display(&event.event_type));
                // Stored with the event; for events stored before, the route's issuer now.
                match job.issuer {
                    Some(issuer) => event.delivery.issuer = issuer,
                    None => {
                        if let Some(issuer) = self.issuers.get(&job.route) {
                            event.delivery.issuer.clone_from(issuer);
                        }
                    }
                }
                event.delivery.route = job.route;
                event.delivery.webhook_id = job.webhook_id;
                let run = self
                    .dispatcher
                    .run_named(&job.key.handler, &event)
                    .instrument(span.clone())
                    .await;
                run.unwrap_or_else(|| {
                    Err(HandlerError::permanent(format!(
                        "handler {} is not registered",
                        job.key.handler
                    )))
                })
            }
            Err(e) => Err(HandlerError::permanent(format!(
                "stored claims are unreadable: {e}"
            ))),
        };
        let _in_span = span.enter();
        let outcome = match result {
            Ok(()) => Outcome::Done,
            Err(e) if e.is_permanent() || attempt >= self.config.max_attempts => {
                tracing::error!(error = %e, "inbox: dead-lettered; `inbox replay --dead` runs it again");
                Outcome::Dead {
                    error: e.to_string(),
                }
            }
            Err(e) => {
                let delay = backoff(attempt, self.config.retry_base, self.config.retry_cap);
                tracing::warn!(retry_in = ?delay, error = %e, "inbox: attempt failed; retrying");
                let due_at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                Outcome::Retry {
                    error: e.to_string(),
                    due_at,
                }
            }
        };
        drop(_in_span);
        let finished = Finished {
            key: job.key,
            outcome,
            started_at,
            duration: clock.elapsed(),
        };
        self.record(finished, claimed).instrument(span).await;
    }

    /// Record an attempt's outcome. While the store is unreachable, keep trying as long as
    /// the claim's lease holds (a late record is ignored, so trying is safe): the handler
    /// then does not run again just because the store blinked.
    async fn record(&self, finished: Finished, claimed: Instant) {
        loop {
            match self.store.finish(finished.clone()).await {
                Ok(()) => return,
                Err(e) if claimed.elapsed() + STORE_RETRY < self.config.lease => {
                    tracing::warn!(error = %e, "inbox: cannot record the outcome yet; retrying while the lease holds");
                    tokio::time::sleep(STORE_RETRY).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "inbox: cannot record the outcome; the job runs again after its lease");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        for attempt in 1..20 {
            let d = backoff(attempt, base, cap);
            let full = base.saturating_mul(1 << (attempt - 1).min(20)).min(cap);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} vs {full:?}"
            );
        }
        let samples: std::collections::HashSet<_> =
            (0..20).map(|_| backoff(5, base, cap)).collect();
        assert!(samples.len() > 1, "jitter");
    }

    /// Two workers over one store (two replicas): jobs a worker claimed ahead but could not
    /// start before their lease ran out are claimed again by the other; the first must not
    /// run them too, or the handler runs twice at once. Each job runs once here.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_claimed_ahead_is_not_run_past_its_lease() {
        use std::sync::Mutex;
        use std::sync::atomic::{AtomicUsize, Ordering};

        use crate::handler::{Context, EventHandler, State};
        use crate::inbox::store::NewEvent;
        use crate::{Event, Registry, async_trait};

        /// Takes 300 ms; counts runs per event and runs that overlapped another of the same.
        #[derive(Debug, Default)]
        struct Slow {
            running: Mutex<HashMap<String, usize>>,
            runs: Mutex<HashMap<String, usize>>,
            overlaps: AtomicUsize,
        }
        #[derive(Debug)]
        struct Handler(Arc<Slow>);
        #[async_trait]
        impl EventHandler for Handler {
            async fn handle(&self, event: &Event, _ctx: &Context) -> Result<(), HandlerError> {
                let id = event.event_id.clone();
                {
                    let mut running = self.0.running.lock().unwrap();
                    let now = running.entry(id.clone()).or_default();
                    *now += 1;
                    if *now > 1 {
                        self.0.overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                }
                *self.0.runs.lock().unwrap().entry(id.clone()).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
                *self.0.running.lock().unwrap().get_mut(&id).unwrap() -= 1;
                Ok(())
            }
        }

        let slow = Arc::new(Slow::default());
        let registry = Registry::builder()
            .handler("slow", &["user.created"], Handler(slow.clone()))
            .build()
            .unwrap();
        let dispatcher = Dispatcher::new(registry, State::new(), HashMap::new())
            .with_timeout(Some(Duration::from_millis(400)));
        let config = InboxConfig {
            workers: 1,
            lease: Duration::from_millis(500),
            poll_interval: Duration::from_millis(20),
            ..InboxConfig::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&dir.path().join("inbox.db"), Duration::from_secs(1))
                .await
                .unwrap(),
        );
        let ids: Vec<String> = (0..4).map(|i| format!("event_{i}")).collect();
        for id in &ids {
            let claims = serde_json::json!({"type": "user.created", "event_id": id,
                "timestamp": "2026-01-01T00:00:00Z", "data": {"user": {"id": "kp_1"}}});
            store
                .enqueue(NewEvent {
                    route: "/hook".into(),
                    event_id: id.clone(),
                    webhook_id: None,
                    issuer: String::new(),
                    event_type: "user.created".into(),
                    claims: claims.to_string().into(),
                    received_at: Utc::now(),
                    handlers: vec![Arc::from("slow")],
                })
                .await
                .unwrap();
        }
        // The first replica claims before the second one starts.
        let stop = CancellationToken::new();
        let first = Inbox::new(store.clone(), dispatcher.clone(), config.clone());
        let second = Inbox::new(store.clone(), dispatcher, config);
        let a = tokio::spawn({
            let stop = stop.clone();
            async move { first.run(stop).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let b = tokio::spawn({
            let stop = stop.clone();
            async move { second.run(stop).await }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let depth = store.depth().await.unwrap();
            if depth.pending == 0 && depth.in_flight == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "jobs left: {depth:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Anything still running (a second run of a job already done) shows in the counts.
        tokio::time::sleep(Duration::from_millis(400)).await;
        stop.cancel();
        a.await.unwrap();
        b.await.unwrap();
        let runs = slow.runs.lock().unwrap().clone();
        assert_eq!(
            slow.overlaps.load(Ordering::SeqCst),
            0,
            "runs at once: {runs:?}"
        );
        for id in &ids {
            assert_eq!(
                runs.get(id),
                Some(&1),
                "{id} ran {:?} times: {runs:?}",
                runs.get(id)
            );
        }
    }
}
