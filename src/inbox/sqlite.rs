//! The embedded SQLite store: one file, WAL, `synchronous=FULL`, and group commit.
//!
//! Every write of the hot path (enqueue, claim, finish, release) goes to one writer task
//! that owns one connection. It takes whatever commands are waiting, runs them all in one
//! transaction and commits once: one fsync for the batch, and each caller hears back only
//! after the commit that made its own row durable.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Row, Sqlite};
use tokio::sync::{mpsc, oneshot};

use super::sql::{Reads, from_millis, late_finish, millis};
use super::store::*;

/// The most commands one transaction takes.
const MAX_BATCH: usize = 512;
/// Commands waiting for the writer before callers wait for room.
const QUEUE: usize = 4096;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    route       TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    webhook_id  TEXT,
    event_type  TEXT NOT NULL,
    claims      TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    UNIQUE (route, event_id)
);
CREATE INDEX events_received ON events (received_at);
CREATE INDEX events_event_id ON events (event_id);
CREATE TABLE jobs (
    event_row   INTEGER NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    handler     TEXT NOT NULL,
    status      TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    due_at      INTEGER NOT NULL,
    lease_until INTEGER,
    last_error  TEXT,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (event_row, handler)
);
CREATE INDEX jobs_due ON jobs (status, due_at);
CREATE TABLE attempts (
    event_row   INTEGER NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    handler     TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    duration_ms REAL NOT NULL,
    error       TEXT
);
CREATE INDEX attempts_job ON attempts (event_row, handler);
CREATE TABLE seen (
    route    TEXT NOT NULL,
    event_id TEXT NOT NULL,
    at       INTEGER NOT NULL,
    PRIMARY KEY (route, event_id)
);
"#,
    // 2: jobs that still have to run are waiting (`pending`, `failed`) or running (`in_flight`,
    // whose `due_at` becomes its lease expiry); a partial index covers exactly these, so
    // claiming stays cheap however many finished jobs the file keeps.
    r#"
DROP INDEX jobs_due;
UPDATE jobs SET due_at = lease_until WHERE status = 'in_flight' AND lease_until IS NOT NULL;
CREATE INDEX jobs_active ON jobs (due_at) WHERE status IN ('pending', 'failed', 'in_flight');
CREATE INDEX jobs_status ON jobs (status);
"#,
    // 3: every claim of a job gets the next number; `finish` and `release` name the claim
    // they hold, so a late one (after the lease expired and the job was claimed again)
    // changes nothing.
    r#"
ALTER TABLE jobs ADD COLUMN claim_seq INTEGER NOT NULL DEFAULT 0;
"#,
    // 4: the issuer that verified the event, so a route whose issuer changes later does
    // not tell handlers of older events the wrong environment.
    r#"
ALTER TABLE events ADD COLUMN issuer TEXT;
"#,
];

enum Command {
    Enqueue(NewEvent, oneshot::Sender<Result<Enqueued, StoreError>>),
    Claim(
        usize,
        Duration,
        oneshot::Sender<Result<Vec<Job>, StoreError>>,
    ),
    Finish(Finished, oneshot::Sender<Result<(), StoreError>>),
    Release(Vec<JobKey>, oneshot::Sender<Result<(), StoreError>>),
}

/// What a command produced inside the transaction, sent once it commits.
enum Produced {
    Enqueued(Enqueued),
    Claimed(Vec<Job>),
    Unit,
}

/// The SQLite inbox store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    writer: mpsc::Sender<Command>,
    path: PathBuf,
    /// Held while this process serves from the file (see [`SqliteStore::lock_for_serving`]).
    lock: Arc<Mutex<Option<std::fs::File>>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Enqueue(..) => "Enqueue",
            Command::Claim(..) => "Claim",
            Command::Finish(..) => "Finish",
            Command::Release(..) => "Release",
        })
    }
}

impl SqliteStore {
    /// Open (creating if needed) the store at `path` and apply migrations. `busy_timeout`
    /// bounds how long a write waits for a lock held elsewhere before failing (then 503).
    pub async fn open(path: &Path, busy_timeout: Duration) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Schema(format!("cannot create {}: {e}", dir.display())))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(busy_timeout);
        restrict_permissions(path)?;
        let mut writer = options.connect().await?;
        migrate(&mut writer).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_loop(writer, rx));
        Ok(SqliteStore {
            lock: Arc::default(),
            pool,
            writer: tx,
            path: path.to_owned(),
        })
    }

    /// Take the file's serving lock (`<path>.lock`), held until the process exits. An
    /// embedded inbox has one process working it: a second server on the same file would
    /// hand the first one's running jobs out again. `Ok(false)`: another process holds it.
    pub fn lock_for_serving(&self) -> Result<bool, StoreError> {
        let mut held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_some() {
            return Ok(true);
        }
        let lock_path = PathBuf::from(format!("{}.lock", self.path.display()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::Schema(format!("cannot open {}: {e}", lock_path.display())))?;
        match file.try_lock() {
            Ok(()) => {
                *held = Some(file);
                Ok(true)
            }
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Schema(format!(
                "cannot lock {}: {e}",
                lock_path.display()
            ))),
        }
    }

    /// The reads shared with the PostgreSQL store (on the reader pool).
    fn reads(&self) -> Reads<'_, sqlx::Sqlite> {
        Reads {
            pool: &self.pool,
            attempt_order: "rowid",
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hand every job left in flight by a crash back as due now. Call once at start-up,
    /// before workers start (this process owns the file).
    pub async fn recover_in_flight(&self) -> Result<u64, StoreError> {
        let now = millis(Utc::now());
        let r = sqlx::query("UPDATE jobs SET status = 'pending', lease_until = NULL, due_at = ?1, updated_at = ?1 WHERE status = 'in_flight'")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    async fn send<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(make(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

/// Create the database file readable by its owner only: it holds every event's payload
/// (emails, names). SQLite gives its `-wal` and `-shm` files the same mode.
fn restrict_permissions(path: &Path) -> Result<(), StoreError> {
    if path.exists() {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Schema(format!(
            "cannot create {}: {e}",
            path.display()
        ))),
    }
}

async fn migrate(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *conn)
        .await?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::Schema(e.to_string()))?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "PRAGMA user_version = {}",
            i + 1
        )))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    Ok(())
}

async fn write_loop(mut conn: SqliteConnection, mut rx: mpsc::Receiver<Command>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        run_batch(&mut conn, batch).await;
    }
}

async fn run_batch(conn: &mut SqliteConnection, batch: Vec<Command>) {
    let result: Result<Vec<Produced>, sqlx::Error> = async {
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let mut produced = Vec::with_capacity(batch.len());
        // Commands run in order; a run of enqueues (or of finishes) next to each other goes
        // in as one statement per table rather than one per command: the single writer
        // pays for every statement it steps.
        let mut rest = &batch[..];
        while let Some(cmd) = rest.first() {
            let taken = match cmd {
                Command::Enqueue(..) => {
                    let events = enqueue_run(rest);
                    for e in enqueue_all(&mut tx, &events).await? {
                        produced.push(Produced::Enqueued(e));
                    }
                    events.len()
                }
                Command::Finish(..) => {
                    let finished = finish_run(rest);
                    finish_all(&mut tx, &finished).await?;
                    produced.extend(finished.iter().map(|_| Produced::Unit));
                    finished.len()
                }
                Command::Claim(limit, lease, _) => {
                    produced.push(Produced::Claimed(claim(&mut tx, *limit, *lease).await?));
                    1
                }
                Command::Release(keys, _) => {
                    release(&mut tx, keys).await?;
                    produced.push(Produced::Unit);
                    1
                }
            };
            rest = &rest[taken..];
        }
        tx.commit().await?;
        Ok(produced)
    }
    .await;
    match result {
        Ok(produced) => {
            for (cmd, out) in batch.into_iter().zip(produced) {
                match (cmd, out) {
                    (Command::Enqueue(_, reply), Produced::Enqueued(e)) => drop(reply.send(Ok(e))),
                    (Command::Claim(_, _, reply), Produced::Claimed(jobs)) => {
                        drop(reply.send(Ok(jobs)))
                    }
                    (Command::Finish(_, reply), _) | (Command::Release(_, reply), _) => {
                        drop(reply.send(Ok(())))
                    }
                    _ => {}
                }
            }
        }
        Err(e) => {
            let message = e.to_string();
            tracing::error!(error = %message, commands = batch.len(), "store write failed; the batch was rolled back");
            let err = || StoreError::Database(sqlx::Error::Protocol(message.clone()));
            for cmd in batch {
                match cmd {
                    Command::Enqueue(_, reply) => drop(reply.send(Err(err()))),
                    Command::Claim(_, _, reply) => drop(reply.send(Err(err()))),
                    Command::Finish(_, reply) | Command::Release(_, reply) => {
                        drop(reply.send(Err(err())))
                    }
                }
            }
        }
    }
}

/// The enqueues at the head of `commands`, up to the first command of another kind.
fn enqueue_run(commands: &[Command]) -> Vec<&NewEvent> {
    commands
        .iter()
        .map_while(|cmd| match cmd {
            Command::Enqueue(event, _) => Some(event),
            _ => None,
        })
        .collect()
}

/// Store `events` (one INSERT for the events, one for all their jobs) and say, for each in
/// order, whether it was new. A (route, event_id) already stored, or given earlier in
/// `events`, is a duplicate: the first one given is the one kept, as one by one.
async fn enqueue_all(
    tx: &mut SqliteConnection,
    events: &[&NewEvent],
) -> Result<Vec<Enqueued>, sqlx::Error> {
    let mut insert = QueryBuilder::<Sqlite>::new(
        "INSERT INTO events (route, event_id, webhook_id, event_type, claims, received_at, issuer) ",
    );
    insert.push_values(events, |mut row, e| {
        row.push_bind(&e.route)
            .push_bind(&e.event_id)
            .push_bind(&e.webhook_id)
            .push_bind(&e.event_type)
            .push_bind(&*e.claims)
            .push_bind(millis(e.received_at))
            .push_bind(&e.issuer);
    });
    insert.push(" ON CONFLICT (route, event_id) DO NOTHING RETURNING id, route, event_id");
    let mut stored = std::collections::HashMap::new();
    for row in insert.build().fetch_all(&mut *tx).await? {
        let key: (String, String) = (row.try_get(1)?, row.try_get(2)?);
        stored.insert(key, row.try_get::<i64, _>(0)?);
    }
    let mut outcomes = Vec::with_capacity(events.len());
    // Every job of every new event in one statement: [event row, handler, due] triples.
    let mut jobs = Vec::new();
    for e in events {
        // `remove`: a later copy of the same key in this run finds it gone, a duplicate.
        match stored.remove(&(e.route.clone(), e.event_id.clone())) {
            Some(row) => {
                let due = millis(e.received_at);
                jobs.extend(
                    e.handlers
                        .iter()
                        .map(|h| serde_json::json!([row, &**h, due])),
                );
                outcomes.push(Enqueued::Stored);
            }
            None => outcomes.push(Enqueued::Duplicate),
        }
    }
    if !jobs.is_empty() {
        sqlx::query(
            "INSERT INTO jobs (event_row, handler, status, attempts, due_at, updated_at)
             SELECT value ->> 0, value ->> 1, 'pending', 0, value ->> 2, value ->> 2 FROM json_each(?1)",
        )
        .bind(serde_json::Value::Array(jobs).to_string())
        .execute(&mut *tx)
        .await?;
    }
    Ok(outcomes)
}

async fn claim(
    tx: &mut SqliteConnection,
    limit: usize,
    lease: Duration,
) -> Result<Vec<Job>, sqlx::Error> {
    let now = millis(Utc::now());
    let until = now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
    let rows = sqlx::query(
        "UPDATE jobs SET status = 'in_flight', due_at = ?2, lease_until = ?2, claim_seq = claim_seq + 1, updated_at = ?1
         WHERE rowid IN (
             SELECT rowid FROM jobs INDEXED BY jobs_active WHERE status IN ('pending', 'failed', 'in_flight') AND due_at <= ?1
             ORDER BY due_at LIMIT ?3)
         RETURNING event_row, handler, attempts, claim_seq",
    )
    .bind(now)
    .bind(until)
    .bind(limit as i64)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // The claimed jobs' events in one query (not one per job): the writer is the bottleneck.
    let ids = rows
        .iter()
        .map(|row| row.try_get::<i64, _>(0))
        .collect::<Result<Vec<_>, _>>()?;
    let ids_json = serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into());
    let events = sqlx::query(
        "SELECT id, route, webhook_id, claims, received_at, issuer FROM events
         WHERE id IN (SELECT value FROM json_each(?1))",
    )
    .bind(ids_json)
    .fetch_all(&mut *tx)
    .await?;
    let mut by_id = std::collections::HashMap::with_capacity(events.len());
    for event in &events {
        by_id.insert(event.try_get::<i64, _>(0)?, event);
    }
    let mut jobs = Vec::with_capacity(rows.len());
    for (row, event_row) in rows.iter().zip(ids) {
        // Jobs reference their event (foreign key, same transaction): it is there.
        let Some(event) = by_id.get(&event_row) else {
            return Err(sqlx::Error::RowNotFound);
        };
        jobs.push(Job {
            key: JobKey {
                event_row,
                handler: row.try_get(1)?,
                claim: row.try_get(3)?,
            },
            attempts: row.try_get::<i64, _>(2)? as u32,
            route: event.try_get(1)?,
            webhook_id: event.try_get(2)?,
            issuer: event.try_get(5)?,
            claims: event.try_get(3)?,
            received_at: from_millis(event.try_get(4)?),
        });
    }
    Ok(jobs)
}

/// The finishes at the head of `commands`, up to the first command of another kind or the
/// first that names a job already in the run (that one goes in the next statement, so it
/// sees the first one's outcome, as one by one).
fn finish_run(commands: &[Command]) -> Vec<&Finished> {
    let mut keys = std::collections::HashSet::new();
    commands
        .iter()
        .map_while(|cmd| match cmd {
            Command::Finish(f, _) if keys.insert((f.key.event_row, &f.key.handler)) => Some(f),
            _ => None,
        })
        .collect()
}

/// Record the outcomes (one UPDATE for the jobs, one INSERT for their attempts). A job no
/// longer held under the finished claim records nothing.
async fn finish_all(tx: &mut SqliteConnection, finished: &[&Finished]) -> Result<(), sqlx::Error> {
    let now = millis(Utc::now());
    /// The job's new status, its error and when it is due again.
    fn outcome(f: &Finished) -> (&'static str, Option<&str>, Option<i64>) {
        match &f.outcome {
            Outcome::Done => ("done", None, None),
            Outcome::Retry { error, due_at } => ("failed", Some(error), Some(millis(*due_at))),
            Outcome::Dead { error } => ("dead", Some(error), None),
        }
    }
    let mut update =
        QueryBuilder::<Sqlite>::new("WITH f (event_row, handler, claim, status, error, due) AS (");
    update.push_values(finished, |mut row, f| {
        let (status, error, due) = outcome(f);
        row.push_bind(f.key.event_row)
            .push_bind(&f.key.handler)
            .push_bind(f.key.claim)
            .push_bind(status)
            .push_bind(error)
            .push_bind(due);
    });
    update.push(
        ") UPDATE jobs SET status = f.status, attempts = attempts + 1, last_error = f.error,
             due_at = COALESCE(f.due, jobs.due_at), lease_until = NULL, updated_at = ",
    );
    update.push_bind(now);
    update.push(
        " FROM f WHERE jobs.event_row = f.event_row AND jobs.handler = f.handler
             AND jobs.status = 'in_flight' AND jobs.claim_seq = f.claim
         RETURNING jobs.event_row, jobs.handler",
    );
    let mut held = std::collections::HashSet::new();
    for row in update.build().fetch_all(&mut *tx).await? {
        held.insert((row.try_get::<i64, _>(0)?, row.try_get::<String, _>(1)?));
    }
    let (recorded, late): (Vec<&Finished>, Vec<&Finished>) = finished
        .iter()
        .partition(|f| held.contains(&(f.key.event_row, f.key.handler.clone())));
    for f in late {
        late_finish(&f.key);
    }
    if recorded.is_empty() {
        return Ok(());
    }
    let mut attempts = QueryBuilder::<Sqlite>::new(
        "INSERT INTO attempts (event_row, handler, started_at, duration_ms, error) ",
    );
    attempts.push_values(recorded, |mut row, f| {
        row.push_bind(f.key.event_row)
            .push_bind(&f.key.handler)
            .push_bind(millis(f.started_at))
            .push_bind(f.duration.as_secs_f64() * 1e3)
            .push_bind(outcome(f).1);
    });
    attempts.build().execute(&mut *tx).await?;
    Ok(())
}

async fn release(tx: &mut SqliteConnection, keys: &[JobKey]) -> Result<(), sqlx::Error> {
    let now = millis(Utc::now());
    for key in keys {
        sqlx::query(
            "UPDATE jobs SET status = 'pending', lease_until = NULL, due_at = ?3, updated_at = ?3
             WHERE event_row = ?1 AND handler = ?2 AND status = 'in_flight' AND claim_seq = ?4",
        )
        .bind(key.event_row)
        .bind(&key.handler)
        .bind(now)
        .bind(key.claim)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn enqueue(&self, event: NewEvent) -> Result<Enqueued, StoreError> {
        self.send(|reply| Command::Enqueue(event, reply)).await
    }

    async fn claim(&self, limit: usize, lease: Duration) -> Result<Vec<Job>, StoreError> {
        self.send(|reply| Command::Claim(limit, lease, reply)).await
    }

    async fn finish(&self, finished: Finished) -> Result<(), StoreError> {
        self.send(|reply| Command::Finish(finished, reply)).await
    }

    async fn release(&self, jobs: Vec<JobKey>) -> Result<(), StoreError> {
        self.send(|reply| Command::Release(jobs, reply)).await
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let due: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(due_at) FROM jobs INDEXED BY jobs_active WHERE status IN ('pending', 'failed', 'in_flight')",
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
                "SELECT id, route, event_type FROM events WHERE event_id = ?1",
                Some(id.as_str()),
            ),
            ReplayTarget::Dead => (
                "SELECT id, route, event_type FROM events e WHERE ?1 IS NULL AND EXISTS
                 (SELECT 1 FROM jobs j WHERE j.event_row = e.id AND j.status = 'dead')",
                None,
            ),
            ReplayTarget::Skipped => (
                "SELECT id, route, event_type FROM events e WHERE ?1 IS NULL AND NOT EXISTS
                 (SELECT 1 FROM jobs j WHERE j.event_row = e.id)",
                None,
            ),
        };
        // Only dead jobs are reset by --dead; a named event re-runs all of its handlers.
        let reset_only_dead = matches!(target, ReplayTarget::Dead);
        // IMMEDIATE: take the write lock up front (waiting out busy_timeout), rather than
        // fail with SQLITE_BUSY when a read transaction cannot be upgraded.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let events = sqlx::query(select).bind(arg).fetch_all(&mut *tx).await?;
        let now = millis(Utc::now());
        let mut scheduled = 0;
        for e in events {
            let (row, route, event_type): (i64, String, String) =
                (e.try_get(0)?, e.try_get(1)?, e.try_get(2)?);
            for handler in matcher(&route, &event_type) {
                let r = sqlx::query(
                    "INSERT INTO jobs (event_row, handler, status, attempts, due_at, updated_at) VALUES (?1, ?2, 'pending', 0, ?3, ?3)
                     ON CONFLICT (event_row, handler) DO UPDATE SET status = 'pending', attempts = 0, due_at = ?3,
                         lease_until = NULL, updated_at = ?3
                     WHERE jobs.status <> 'in_flight' AND (?4 = 0 OR jobs.status = 'dead')",
                )
                .bind(row)
                .bind(&handler)
                .bind(now)
                .bind(reset_only_dead as i64)
                .execute(&mut *tx)
                .await?;
                scheduled += r.rows_affected();
            }
        }
        tx.commit().await?;
        Ok(scheduled)
    }

    async fn purge(&self, before: DateTime<Utc>, include_dead: bool) -> Result<u64, StoreError> {
        let before = millis(before);
        // IMMEDIATE: take the write lock up front (waiting out busy_timeout), rather than
        // fail with SQLITE_BUSY when a read transaction cannot be upgraded.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let r = sqlx::query(
            "DELETE FROM events WHERE received_at < ?1 AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.event_row = events.id
                 AND j.status <> 'done' AND (?2 = 0 OR j.status <> 'dead'))",
        )
        .bind(before)
        .bind(include_dead as i64)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM seen WHERE at < ?1")
            .bind(before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected())
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
        let mut conn = self.pool.acquire().await?;
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        sqlx::query("ROLLBACK").execute(&mut *conn).await?;
        Ok(())
    }
}
