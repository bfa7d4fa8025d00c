//! The PostgreSQL store: one database shared by any number of server replicas.
//!
//! Same semantics as the SQLite store, made safe across processes:
//! - an event is committed before its 200; (route, event_id) is a UNIQUE constraint, so a
//!   duplicate arriving at two replicas at once is stored once (`ON CONFLICT DO NOTHING`);
//! - workers claim with `FOR UPDATE SKIP LOCKED` and a lease: a job is due when it is
//!   pending or failed and its time has come, or in flight with an expired lease, so the
//!   jobs of a replica that died mid-handler run elsewhere once their lease expires;
//! - each claim of a job gets the next number (`claim_seq`); `finish` and `release` only touch
//!   the job while it is still held under their claim, so a replica that finishes after its
//!   lease expired (and the job was claimed again) records nothing;
//! - new work is announced with `NOTIFY` in the transaction that stores it, and a listener
//!   wakes this process's idle workers (see [`Store::wake_ups`]);
//! - migrations are versioned in `<schema>.schema_migrations` and run in one transaction
//!   holding an advisory lock, so replicas starting together apply each exactly once.
//!
//! Times are milliseconds since the epoch from the servers' clocks, as in SQLite: keep the
//! replicas' clocks synchronised (NTP), well within the margin of `[inbox] lease` over
//! `[delivery] handler_timeout`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::watch;

use super::sql::{Reads, from_millis, late_finish, millis};
use super::store::*;
use crate::config::StoreConfig;

/// Schema migrations, applied in order inside the store's schema (it is first on the
/// `search_path`); `schema_migrations` records which ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE events (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    route       TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    webhook_id  TEXT,
    event_type  TEXT NOT NULL,
    claims      TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    CONSTRAINT events_route_event_id UNIQUE (route, event_id)
);
CREATE INDEX events_received ON events (received_at);
CREATE INDEX events_event_id ON events (event_id);
CREATE TABLE jobs (
    event_row   BIGINT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    handler     TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'in_flight', 'failed', 'dead', 'done')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    due_at      BIGINT NOT NULL,
    lease_until BIGINT,
    claim_seq   BIGINT NOT NULL DEFAULT 0,
    last_error  TEXT,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (event_row, handler)
);
CREATE INDEX jobs_active ON jobs (due_at) WHERE status IN ('pending', 'failed', 'in_flight');
CREATE INDEX jobs_status ON jobs (status);
CREATE TABLE attempts (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_row   BIGINT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    handler     TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    duration_ms DOUBLE PRECISION NOT NULL,
    error       TEXT
);
CREATE INDEX attempts_job ON attempts (event_row, handler);
CREATE TABLE seen (
    route    TEXT NOT NULL,
    event_id TEXT NOT NULL,
    at       BIGINT NOT NULL,
    PRIMARY KEY (route, event_id)
);
CREATE INDEX seen_at ON seen (at);
"#,
    // 2: the issuer that verified the event, so a route whose issuer changes later does
    // not tell handlers of older events the wrong environment.
    r#"
ALTER TABLE events ADD COLUMN issuer TEXT;
"#,
];

/// The first key of the migration lock (`pg_advisory_xact_lock(key, hashtext(schema))`),
/// so it does not collide with other applications' advisory locks.
const MIGRATION_LOCK: i32 = 0x6b77_6864; // "kwhd"

/// Rows deleted per purge statement.
const PURGE_BATCH: i64 = 1000;

/// The longest pause between two attempts to reconnect the wake-up listener.
const LISTEN_RETRY_CAP: Duration = Duration::from_secs(30);

/// The PostgreSQL inbox store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The `NOTIFY` channel: `<schema>.jobs`, so stores in other schemas do not wake us.
    channel: String,
    schema: String,
    /// Connects the wake-up listener (its own connection, outside the pool).
    listen_options: PgConnectOptions,
    connect_timeout: Duration,
    /// The listener's sender while one runs (see [`Store::wake_ups`]).
    wake: Arc<Mutex<Option<watch::Sender<()>>>>,
}

impl PgStore {
    /// Connect as `[store]` says (`url`, `schema`, pool size, timeouts), create the schema
    /// if needed and apply migrations. Fails after `connect_timeout` when the database
    /// cannot be reached.
    pub async fn open(config: &StoreConfig) -> Result<PgStore, StoreError> {
        let url = config.url.as_deref().ok_or_else(|| {
            StoreError::Schema("[store] url is not set: set it, or the env DATABASE_URL".into())
        })?;
        let options: PgConnectOptions = url
            .parse()
            .map_err(|_| StoreError::Schema("[store] url is not a PostgreSQL URL".into()))?;
        let options = options.application_name("kinde-webhooks");
        let schema = config.schema.clone();
        // A plain identifier: validated by the config, checked again because it is spliced.
        if schema.is_empty()
            || !schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(StoreError::Schema(format!(
                "{schema:?} is not a schema name"
            )));
        }
        let setup = format!(
            "SET search_path TO \"{schema}\"; SET statement_timeout = {}",
            config.statement_timeout.as_millis().max(1)
        );
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .acquire_timeout(config.connect_timeout)
            .after_connect(move |conn, _meta| {
                let setup = setup.clone();
                Box::pin(async move {
                    // Two statements: the simple protocol, not a prepared statement.
                    sqlx::raw_sql(sqlx::AssertSqlSafe(setup))
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            })
            .connect_with(options.clone())
            .await?;
        let store = PgStore {
            pool,
            channel: format!("{schema}.jobs"),
            schema,
            listen_options: options,
            connect_timeout: config.connect_timeout,
            wake: Arc::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The reads shared with the SQLite store.
    fn reads(&self) -> Reads<'_, sqlx::Postgres> {
        Reads {
            pool: &self.pool,
            attempt_order: "id",
        }
    }

    /// The schema holding the tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Close the pool's connections (waits for those in use to come back).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let schema = &self.schema;
        let mut tx = self.pool.begin().await?;
        // `IF NOT EXISTS` says "already exists" as a notice on every start: not worth a log line.
        sqlx::query("SET LOCAL client_min_messages = warning")
            .execute(&mut *tx)
            .await?;
        // Replicas starting together wait here for the first one's migrations.
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(MIGRATION_LOCK)
            .bind(schema)
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
             SET LOCAL search_path TO \"{schema}\";
             CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    INTEGER PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             );"
        )))
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::Schema(format!("cannot create schema {schema}: {e}")))?;
        let version: i32 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
                .fetch_one(&mut *tx)
                .await?;
        if version as usize > MIGRATIONS.len() {
            tracing::warn!(
                version,
                known = MIGRATIONS.len(),
                "store: the schema is newer than this build (a newer replica migrated it)"
            );
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
            sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::Schema(format!("migration {}: {e}", i + 1)))?;
            sqlx::query("INSERT INTO schema_migrations (version) VALUES ($1)")
                .bind(i as i32 + 1)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Keep a `LISTEN` on the channel while anyone subscribes; reconnect with backoff when
    /// the database goes away. Every notification, and every (re)connection (notifications
    /// sent meanwhile are lost), wakes the subscribers.
    async fn listen(self, tx: watch::Sender<()>) {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.connect_timeout)
            .connect_lazy_with(self.listen_options.clone());
        let mut pause = Duration::from_millis(100);
        loop {
            let connected = async {
                let mut listener = PgListener::connect_with(&pool).await?;
                listener.listen(&self.channel).await?;
                Ok::<_, sqlx::Error>(listener)
            };
            let outcome = tokio::select! {
                _ = tx.closed() => None,
                c = connected => Some(c),
            };
            let mut listener = match outcome {
                None if self.stop_listening(&tx) => return,
                None => continue,
                Some(Ok(listener)) => listener,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, retry_in = ?pause, "store: cannot listen for new work; idle workers poll meanwhile");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(LISTEN_RETRY_CAP);
                    continue;
                }
            };
            pause = Duration::from_millis(100);
            tx.send_replace(());
            loop {
                tokio::select! {
                    _ = tx.closed() => {
                        if self.stop_listening(&tx) {
                            return;
                        }
                    }
                    received = listener.try_recv() => match received {
                        // A notification, or a lost connection already re-established.
                        Ok(_) => {
                            tx.send_replace(());
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "store: lost the wake-up listener; reconnecting");
                            break;
                        }
                    },
                }
            }
        }
    }

    /// Whether the listener may stop: nobody subscribes, and (under the lock that
    /// `wake_ups` takes) nobody can start to before it is forgotten.
    fn stop_listening(&self, tx: &watch::Sender<()>) -> bool {
        let mut held = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        if tx.receiver_count() > 0 {
            return false;
        }
        *held = None;
        true
    }
}

/// `value` as PostgreSQL TEXT can hold it: a NUL (which TEXT refuses, failing the whole
/// statement) is written `\0`. For handler errors, which may quote anything: a refused
/// `finish` would leave the job in flight, to run again after every lease, never counted.
fn text(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains('\0') {
        value.replace('\0', "\\0").into()
    } else {
        value.into()
    }
}

#[async_trait]
impl Store for PgStore {
    async fn enqueue(&self, event: NewEvent) -> Result<Enqueued, StoreError> {
        let handlers: Vec<&str> = event.handlers.iter().map(|h| &**h).collect();
        // One statement, so one implicit transaction: the event, its jobs and the
        // notification commit together (NOTIFY is delivered on commit).
        let row: Option<i64> = sqlx::query_scalar(
            "WITH ev AS (
                 INSERT INTO events (route, event_id, webhook_id, event_type, claims, received_at, issuer)
                 VALUES ($1, $2, $3, $4, $5, $6, $9) ON CONFLICT (route, event_id) DO NOTHING RETURNING id),
             jb AS (
                 INSERT INTO jobs (event_row, handler, status, attempts, due_at, updated_at)
                 SELECT ev.id, h, 'pending', 0, $6, $6 FROM ev, UNNEST($7::text[]) AS h RETURNING event_row)
             SELECT ev.id, (SELECT pg_notify($8, '')::text FROM jb LIMIT 1) AS woke FROM ev",
        )
        .bind(&event.route)
        .bind(&event.event_id)
        .bind(&event.webhook_id)
        .bind(&event.event_type)
        .bind(&*event.claims)
        .bind(millis(event.received_at))
        .bind(&handlers)
        .bind(&self.channel)
        .bind(&event.issuer)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(_) => Enqueued::Stored,
            None => Enqueued::Duplicate,
        })
    }

    async fn claim(&self, limit: usize, lease: Duration) -> Result<Vec<Job>, StoreError> {
        let now = millis(Utc::now());
        let until = now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        // SKIP LOCKED: concurrent claimers (other workers, other replicas) each take other
        // rows, without waiting for one another.
        let rows = sqlx::query(
            "WITH due AS (
                 SELECT event_row, handler FROM jobs
                 WHERE status IN ('pending', 'failed', 'in_flight') AND due_at <= $1
                 ORDER BY due_at LIMIT $3
                 FOR UPDATE SKIP LOCKED),
             claimed AS (
                 UPDATE jobs j SET status = 'in_flight', due_at = $2, lease_until = $2,
                     claim_seq = j.claim_seq + 1, updated_at = $1
                 FROM due WHERE j.event_row = due.event_row AND j.handler = due.handler
                 RETURNING j.event_row, j.handler, j.attempts, j.claim_seq, j.due_at)
             SELECT c.event_row, c.handler, c.attempts, c.claim_seq, e.route, e.webhook_id, e.claims, e.received_at, e.issuer
             FROM claimed c JOIN events e ON e.id = c.event_row
             ORDER BY c.event_row, c.handler",
        )
        .bind(now)
        .bind(until)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Job {
                    key: JobKey {
                        event_row: row.try_get(0)?,
                        handler: row.try_get(1)?,
                        claim: row.try_get(3)?,
                    },
                    attempts: row.try_get::<i32, _>(2)?.max(0) as u32,
                    route: row.try_get(4)?,
                    webhook_id: row.try_get(5)?,
                    issuer: row.try_get(8)?,
                    claims: row.try_get(6)?,
                    received_at: from_millis(row.try_get(7)?),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    async fn finish(&self, f: Finished) -> Result<(), StoreError> {
        let (status, error, due) = match &f.outcome {
            Outcome::Done => ("done", None, None),
            Outcome::Retry { error, due_at } => {
                ("failed", Some(text(error)), Some(millis(*due_at)))
            }
            Outcome::Dead { error } => ("dead", Some(text(error)), None),
        };
        // The attempt is recorded only when the update found the job held under this claim.
        let recorded = sqlx::query(
            "WITH held AS (
                 UPDATE jobs SET status = $4, attempts = attempts + 1, last_error = $5,
                     due_at = COALESCE($6, due_at), lease_until = NULL, updated_at = $7
                 WHERE event_row = $1 AND handler = $2 AND claim_seq = $3 AND status = 'in_flight'
                 RETURNING event_row, handler)
             INSERT INTO attempts (event_row, handler, started_at, duration_ms, error)
             SELECT event_row, handler, $8, $9, $5 FROM held",
        )
        .bind(f.key.event_row)
        .bind(&f.key.handler)
        .bind(f.key.claim)
        .bind(status)
        .bind(error.as_deref())
        .bind(due)
        .bind(millis(Utc::now()))
        .bind(millis(f.started_at))
        .bind(f.duration.as_secs_f64() * 1e3)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if recorded == 0 {
            late_finish(&f.key);
        }
        Ok(())
    }

    async fn release(&self, jobs: Vec<JobKey>) -> Result<(), StoreError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let rows: Vec<i64> = jobs.iter().map(|k| k.event_row).collect();
        let handlers: Vec<&str> = jobs.iter().map(|k| k.handler.as_str()).collect();
        let claims: Vec<i64> = jobs.iter().map(|k| k.claim).collect();
        // Another replica may take them at once: announce them.
        sqlx::query(
            "WITH released AS (
                 UPDATE jobs j SET status = 'pending', lease_until = NULL, due_at = $4, updated_at = $4
                 FROM UNNEST($1::bigint[], $2::text[], $3::bigint[]) AS k(event_row, handler, claim_seq)
                 WHERE j.event_row = k.event_row AND j.handler = k.handler AND j.claim_seq = k.claim_seq
                     AND j.status = 'in_flight'
                 RETURNING 1)
             SELECT pg_notify($5, '')::text FROM released LIMIT 1",
        )
        .bind(&rows)
        .bind(&handlers)
        .bind(&claims)
        .bind(millis(Utc::now()))
        .bind(&self.channel)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let due: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(due_at) FROM jobs WHERE status IN ('pending', 'failed', 'in_flight')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(due.map(from_millis))
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<EventSummary>, StoreError> {
        self.reads().list(filter).await
    }

    async fn show(&self, event_id: &str) -> Result<Vec<EventDetail>, StoreError> {
        self.reads().show(event_id).await
    }

    async fn replay(&self, target: &ReplayTarget, matcher: Matcher<'_>) -> Result<u64, StoreError> {
        let (select, arg) = match target {
            ReplayTarget::Event(id) => (
                "SELECT id, route, event_type FROM events WHERE event_id = $1",
                Some(id.as_str()),
            ),
            ReplayTarget::Dead => (
                "SELECT id, route, event_type FROM events e WHERE $1::text IS NULL AND EXISTS
                 (SELECT 1 FROM jobs j WHERE j.event_row = e.id AND j.status = 'dead') ORDER BY id",
                None,
            ),
            ReplayTarget::Skipped => (
                "SELECT id, route, event_type FROM events e WHERE $1::text IS NULL AND NOT EXISTS
                 (SELECT 1 FROM jobs j WHERE j.event_row = e.id) ORDER BY id",
                None,
            ),
        };
        // Only dead jobs are reset by --dead; a named event re-runs all of its handlers.
        let reset_only_dead = matches!(target, ReplayTarget::Dead);
        let mut tx = self.pool.begin().await?;
        let events = sqlx::query(select).bind(arg).fetch_all(&mut *tx).await?;
        let now = millis(Utc::now());
        let mut scheduled = 0;
        for e in events {
            let (row, route, event_type): (i64, String, String) =
                (e.try_get(0)?, e.try_get(1)?, e.try_get(2)?);
            for handler in matcher(&route, &event_type) {
                // A job in flight (here or on another replica) is left to its holder.
                let r = sqlx::query(
                    "INSERT INTO jobs (event_row, handler, status, attempts, due_at, updated_at) VALUES ($1, $2, 'pending', 0, $3, $3)
                     ON CONFLICT (event_row, handler) DO UPDATE SET status = 'pending', attempts = 0, due_at = $3,
                         lease_until = NULL, updated_at = $3
                     WHERE jobs.status <> 'in_flight' AND (NOT $4 OR jobs.status = 'dead')",
                )
                .bind(row)
                .bind(&handler)
                .bind(now)
                .bind(reset_only_dead)
                .execute(&mut *tx)
                .await?;
                scheduled += r.rows_affected();
            }
        }
        if scheduled > 0 {
            sqlx::query("SELECT pg_notify($1, '')::text")
                .bind(&self.channel)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(scheduled)
    }

    async fn purge(&self, before: DateTime<Utc>, include_dead: bool) -> Result<u64, StoreError> {
        let before = millis(before);
        // In batches, each its own short transaction: a large backlog never runs into
        // `statement_timeout`, and replicas keep storing meanwhile.
        let mut purged = 0;
        loop {
            let r = sqlx::query(
                "DELETE FROM events WHERE id IN (
                     SELECT id FROM events e WHERE e.received_at < $1 AND NOT EXISTS (
                         SELECT 1 FROM jobs j WHERE j.event_row = e.id
                             AND j.status <> 'done' AND (NOT $2 OR j.status <> 'dead'))
                     LIMIT $3)",
            )
            .bind(before)
            .bind(include_dead)
            .bind(PURGE_BATCH)
            .execute(&self.pool)
            .await?;
            purged += r.rows_affected();
            if r.rows_affected() < PURGE_BATCH as u64 {
                break;
            }
        }
        loop {
            let r = sqlx::query(
                "DELETE FROM seen WHERE (route, event_id) IN (SELECT route, event_id FROM seen WHERE at < $1 LIMIT $2)",
            )
            .bind(before)
            .bind(PURGE_BATCH)
            .execute(&self.pool)
            .await?;
            if r.rows_affected() < PURGE_BATCH as u64 {
                break;
            }
        }
        Ok(purged)
    }

    async fn seen(&self, route: &str, event_id: &str) -> Result<bool, StoreError> {
        self.reads().seen(route, event_id).await
    }

    async fn mark_seen(
        &self,
        route: &str,
        event_id: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.reads().mark_seen(route, event_id, at).await
    }

    async fn depth(&self) -> Result<Depth, StoreError> {
        self.reads().depth().await
    }

    async fn writable(&self) -> Result<(), StoreError> {
        // A connection within connect_timeout, on a primary that takes writes.
        let read_only: bool = sqlx::query_scalar(
            "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'",
        )
        .fetch_one(&self.pool)
        .await?;
        if read_only {
            return Err(StoreError::ReadOnly(
                "the database is a standby or read-only".into(),
            ));
        }
        Ok(())
    }

    fn wake_ups(&self) -> Option<WakeUps> {
        let mut held = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = held.as_ref() {
            return Some(tx.subscribe());
        }
        // No runtime (a synchronous caller): no wake-ups, the workers poll.
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = watch::channel(());
        *held = Some(tx.clone());
        runtime.spawn(self.clone().listen(tx));
        Some(rx)
    }
}
